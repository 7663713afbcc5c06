//! The human-readable report of `referdino bench`: engines, per-frame total, backends side by side,
//! the official comparison, GMAC per stage and op profiles.

use super::report::{BackendBench, BenchReport};
use super::ENGINES;

/// The human-readable report.
pub fn render(r: &BenchReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let g = &r.geometry;
    let _ = writeln!(
        s,
        "referdino bench: {} ({}), {}x{}, max text {}, window {}; {} threads of {} cores; {} warm-up + {} timed runs",
        r.config, r.backbone, g.height, g.width, g.max_text, g.window, r.threads, r.available_cores, r.warmup, r.iters
    );
    let _ = writeln!(
        s,
        "cpu: {}; the CPU backend's products on its {} kernel",
        r.cpu_model, r.cpu_kernel
    );
    if r.single_thread_matmul {
        let _ = writeln!(s, "(tract MatMul on one thread: --single-thread-matmul)");
    }
    if r.tract_softmax {
        let _ = writeln!(s, "(tract's own Softmax: --tract-softmax)");
    }
    if r.tract_layer_norm {
        let _ = writeln!(s, "(tract's own LayerNormalization: --tract-layer-norm)");
    }
    if r.tract_add {
        let _ = writeln!(s, "(tract's own broadcasting Add: --tract-add)");
    }
    if r.tract_unary {
        let _ = writeln!(s, "(tract's own Sin, Cos and GeluExact: --tract-unary)");
    }
    if r.tract_transpose {
        let _ = writeln!(s, "(tract's own MoveAxis: --tract-transpose)");
    }
    if r.tract_order {
        let _ = writeln!(s, "(tract's own evaluation order: --tract-order)");
    }
    if r.no_pool {
        let _ = writeln!(s, "(no buffer pool: --no-pool)");
    }
    if r.tract_matmul {
        let _ = writeln!(
            s,
            "(tract's own MatMul by weights and Conv: --tract-matmul)"
        );
    }
    let _ = writeln!(
        s,
        "prompt {:?} ({} tokens); image: {}",
        r.prompt, r.prompt_tokens, r.image
    );
    let la = |l: &[f64; 3]| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]);
    let _ = writeln!(
        s,
        "load average: start {}, end {}",
        la(&r.load_average_start),
        la(&r.load_average_end)
    );
    let _ = writeln!(
        s,
        "random weights: {:.1} M elements (aliases included) in {:.1} s; export of 4 engines: {:.1} s\n",
        r.mparams, r.weights_seconds, r.export_seconds
    );
    let _ = writeln!(
        s,
        "{:<9} {:>10} {:>7} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "engine", "ONNX MiB", "nodes", "load s", "RSS MiB", "median ms", "min ms", "p90 ms"
    );
    for e in &r.exported {
        let t = r.engines.iter().find(|b| b.name == e.name);
        let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
        let _ = writeln!(
            s,
            "{:<9} {:>10.1} {:>7} {:>8} {:>10} {:>10} {:>10} {:>10}",
            e.name,
            e.bytes as f64 / 1048576.0,
            e.nodes,
            f(t.map(|t| t.load_seconds), 1),
            f(t.map(|t| t.peak_rss_mib_after_load), 0),
            f(t.map(|t| t.latency.median_ms), 1),
            f(t.map(|t| t.latency.min_ms), 1),
            f(t.map(|t| t.latency.p90_ms), 1),
        );
    }
    for e in &r.engines {
        if !e.synthetic_inputs.is_empty() {
            let _ = writeln!(s, "  ({}: synthetic {:?})", e.name, e.synthetic_inputs);
        }
    }
    if let Some(pf) = &r.per_frame {
        let _ = writeln!(
            s,
            "\nper frame: frame {:.1} + temporal {:.1} + head {:.1} + text {:.1}/{} = {:.1} ms; one-frame clip (text once) {:.1} ms",
            pf.frame_ms,
            pf.temporal_ms,
            pf.head_ms,
            pf.text_ms,
            pf.text_amortised_over,
            pf.total_ms,
            pf.single_frame_clip_ms
        );
    }
    if r.backends.len() > 1 {
        let _ = writeln!(
            s,
            "\nside by side (same process, runs alternating {}):",
            r.backends
                .iter()
                .map(|b| format!("{} ({})", b.backend, b.export))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut head = format!("{:<22}", "median ms");
        for b in &r.backends {
            head += &format!(" {:>16}", format!("{} ({})", b.backend, b.export));
        }
        let short = |b: &BackendBench| match b.export.as_str() {
            "native" => b.backend.clone(),
            "decomposed" => format!("{}-dec", b.backend),
            other => format!("{}-{other}", b.backend),
        };
        let first = short(&r.backends[0]);
        for b in &r.backends[1..] {
            head += &format!(" {:>12}", format!("{first}/{}", short(b)));
        }
        let _ = writeln!(s, "{head}");
        let mut row = |label: &str, get: &dyn Fn(&BackendBench) -> Option<f64>, ratio: bool| {
            let vals: Vec<Option<f64>> = r.backends.iter().map(get).collect();
            let mut line = format!("{label:<22}");
            for v in &vals {
                line += &format!(" {:>16}", v.map_or("-".into(), |x| format!("{x:.1}")));
            }
            if ratio {
                for v in &vals[1..] {
                    let q = vals[0]
                        .zip(*v)
                        .filter(|(_, y)| *y > 0.0)
                        .map(|(x, y)| x / y);
                    line += &format!(" {:>12}", q.map_or("-".into(), |x| format!("{x:.2}x")));
                }
            }
            let _ = writeln!(s, "{line}");
        };
        for name in ENGINES {
            row(
                name,
                &|b: &BackendBench| {
                    b.engines
                        .iter()
                        .find(|e| e.name == name)
                        .map(|e| e.latency.median_ms)
                },
                true,
            );
        }
        row(
            "per frame",
            &|b: &BackendBench| b.per_frame.as_ref().map(|p| p.total_ms),
            true,
        );
        row(
            "one-frame clip",
            &|b: &BackendBench| b.per_frame.as_ref().map(|p| p.single_frame_clip_ms),
            true,
        );
        row(
            "RSS added (MiB)",
            &|b: &BackendBench| Some(b.rss_added_mib),
            false,
        );
        for b in &r.backends {
            if b.backend != "cpu" && b.backend != "ort" {
                let _ = writeln!(s, "{} runs {}", b.backend, b.plan);
            }
        }
    } else if let Some(b) = r.backends.first() {
        let _ = writeln!(
            s,
            "backend {} ({} export: {}), {} threads; RSS added by its engines {:.0} MiB",
            b.backend, b.export, b.plan, b.threads, b.rss_added_mib
        );
    }
    for (fastest, export, rule) in [
        (&r.fastest, "native export", "auto's rule"),
        (&r.fastest_int8, "INT8 engines", "auto's INT8 rule"),
    ] {
        if fastest.is_empty() {
            continue;
        }
        let list: Vec<String> = fastest
            .iter()
            .map(|f| format!("{} {} {:.2}x", f.engine, f.backend, f.speedup))
            .collect();
        let differ: Vec<&str> = fastest
            .iter()
            .filter(|f| !f.auto_agrees)
            .map(|f| f.engine.as_str())
            .collect();
        let verdict = if differ.is_empty() {
            format!("{rule} agrees")
        } else {
            format!(
                "{rule} differs on {} (override with --backend ENGINE=BACKEND,...)",
                differ.join(", ")
            )
        };
        let _ = writeln!(
            s,
            "faster per engine here ({export}): {}; {verdict}",
            list.join(", ")
        );
    }
    if let Some(o) = &r.official {
        let f = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |x| format!("{x:.0}{unit}"));
        let _ = writeln!(
            s,
            "\nofficial ReferDINO infer (PyTorch {}, {} threads, {}; same CPU: {}):",
            o.torch, o.threads, o.file, o.cpu_model
        );
        let _ = writeln!(
            s,
            "  one-frame clip {}, text stages {}, frame stages {}, peak RSS {}",
            f(o.single_frame_clip_ms, " ms"),
            f(o.text_ms, " ms"),
            f(o.frame_ms, " ms"),
            f(o.peak_rss_mib, " MiB")
        );
        for (t, ms) in &o.clips {
            let _ = writeln!(s, "  {t}-frame clip: {ms:.0} ms per frame");
        }
        let x = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2}x"));
        for q in &o.ratios {
            let _ = writeln!(
                s,
                "  official / ours ({}): one-frame clip {}, text {}, frame {}",
                q.backend,
                x(q.single_frame_clip),
                x(q.text),
                x(q.frame)
            );
        }
    }
    let _ = writeln!(s, "peak RSS {:.0} MiB\n", r.peak_rss_mib);
    let _ = writeln!(
        s,
        "{:<40} {:>9} {:>10} {:>7} {:>9} {:>8}",
        "stage (all engines, one frame)", "GMAC", "spec GMAC", "ratio", "M params", "spec M"
    );
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
    for row in &r.gmac {
        let ratio = row.spec_gmac.filter(|&x| x > 0.0).map(|x| row.gmac / x);
        let _ = writeln!(
            s,
            "{:<40} {:>9.3} {:>10} {:>7} {:>9.3} {:>8}",
            row.stage,
            row.gmac,
            f(row.spec_gmac, 2),
            f(ratio, 3),
            row.mparams,
            f(row.spec_mparams, 2)
        );
    }
    let _ = writeln!(s, "{:<40} {:>9.3}", "total", r.gmac_total);
    if r.gmac.iter().any(|x| x.spec_gmac.is_some()) && g.max_text != 11 {
        let _ = writeln!(
            s,
            "(docs/model.md's compute budget is at L = 11 text tokens; text-dependent rows scale with --max-text {})",
            g.max_text
        );
    }
    if g.window > 1 {
        let _ = writeln!(
            s,
            "(the temporal row is the temporal engine over its whole {}-frame window, which the streaming runtime runs per frame; the spec counts one frame's share)",
            g.window
        );
    }
    // The first backend's engines, then those of the others side by side (e.g. `cpu (int8)`).
    let others = r.backends.iter().skip(1).flat_map(|b| {
        b.engines
            .iter()
            .map(move |e| (e, format!(", {} ({})", b.backend, b.export)))
    });
    for (e, on) in r.engines.iter().map(|e| (e, String::new())).chain(others) {
        if let Some(p) = &e.profile {
            let total: f64 = p.iter().map(|o| o.seconds).sum();
            let _ = writeln!(
                s,
                "\nprofile {}{on} ({:.1} ms in ops):",
                e.name,
                total * 1e3
            );
            let rows = if r.profile_shapes { 400 } else { 40 };
            for o in p.iter().take(rows) {
                let _ = writeln!(
                    s,
                    "  {:<28} {:>5} nodes {:>9.1} ms {:>5.1} %",
                    o.op,
                    o.count,
                    o.seconds * 1e3,
                    100.0 * o.seconds / total.max(1e-12)
                );
            }
        }
    }
    s
}
