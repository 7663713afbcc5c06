//! `referdino bench`: full-size export and CPU latency of the four engines with random weights.
//!
//! Builds seeded random weights for a configuration (`swin-t`, `swin-b` or a config file), exports the
//! four engines, loads them on the CPU backend and times each on realistic inputs: a real tokenized
//! prompt, an image (the bundled clip's first frame resized to the model size, or `--image`), and each
//! engine fed with the outputs of the one before it. Reports ONNX sizes and node counts, export and load
//! times, peak RSS, median/min/p90 latency per engine, the per-frame total, the GMAC per stage from
//! [`crate::onnx::cost`] next to the model's reference figures (docs/model.md). A human table goes to stdout, the same figures as JSON with
//! `--json`.
//!
//! **Backends side by side.** `--backend all` (the default) times tract on the native export and, when
//! its library loads, ONNX Runtime on the native export (our kernels as custom operators) and on the
//! decomposed export (standard ONNX only: what any ONNX Runtime user gets from our files) in the same
//! process, alternating run by run (A B C A B C) so that drift on a shared machine hits all alike.
//!
//! **Ratios only from this machine.** `--official FILE.json` reads what the official-code harness
//! (`bench_official.py`) wrote on this machine; the file is refused when its CPU model differs from this
//! machine's, so a ratio never compares figures from two machines.
//!
//! **Files.** `args` holds the flags and their checks, `inputs` the engines' realistic inputs (prompt,
//! image, upstream values), `timing` the engines-one-by-one benchmark (export, GMAC, load, timed runs),
//! `report` the report's structs and the figures derived from the timings, `render` the human table,
//! `official` the comparison with the official-code harness, `machine` what this process and machine
//! report (/proc); `--objects`/`--streams` hand over to [`crate::cli::bench_multi`].

mod args;
mod inputs;
mod machine;
mod official;
mod render;
mod report;
mod timing;

pub use args::BenchArgs;
pub use machine::{cpu_model, load_average, peak_rss_mib};
pub use official::official_compare;
pub use render::render;
pub use report::{
    BackendBench, BenchReport, EngineBench, ExportedEngine, FastestEngine, GmacRow, Latency,
    OfficialCompare, OfficialRatio, PerFrame,
};
pub use timing::bench;

use crate::graph::engines::{names, Geometry};
use anyhow::Context;

use args::{check_sizes, resolve_config};
use inputs::load_image;

/// The engines in run order.
const ENGINES: [&str; 4] = [names::TEXT, names::FRAME, names::TEMPORAL, names::HEAD];

/// CLI entry.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if !a.objects.is_empty() || !a.streams.is_empty() {
        let load0 = load_average();
        let cfg = resolve_config(&a.config)?;
        check_sizes(&a, &cfg)?;
        super::bench_multi::check_grid(&a.objects, &a.streams, a.cross_batch, a.image_batch)?;
        let (image, what) = load_image(a.image.as_deref(), a.height, a.width)?;
        log::info!("bench: image {what}");
        // `all`: tract, and the default (`auto`) beside it when ONNX Runtime loads.
        let backends = match a.backend.to_ascii_lowercase().as_str() {
            "all" if crate::backend::ort_available() => vec!["cpu".to_string(), "auto".to_string()],
            "all" => vec!["cpu".to_string()],
            _ => vec![a.backend.clone()],
        };
        let p = super::bench_multi::MultiParams {
            config_name: a.config.clone(),
            cfg,
            geo: Geometry {
                height: a.height,
                width: a.width,
                max_text: a.max_text,
                window: a.window,
            },
            seed: a.seed,
            threads: a.threads,
            backends,
            iters: a.iters,
            warmup: a.warmup,
            objects: a.objects.clone(),
            streams: a.streams.clone(),
            cross_batch: a.cross_batch,
            image_batch: a.image_batch,
            unsplit: a.unsplit,
            image,
        };
        let mut r = super::bench_multi::bench_multi(&p, load0)?;
        r.load[1] = load_average();
        print!("{}", super::bench_multi::render_multi(&r));
        if let Some(p) = &a.json {
            let j = serde_json::to_string_pretty(&r)?;
            std::fs::write(p, j).with_context(|| p.display().to_string())?;
            println!("wrote {}", p.display());
        }
        return Ok(());
    }
    let r = bench(&a)?;
    print!("{}", render(&r));
    if let Some(p) = &a.json {
        let j = serde_json::to_string_pretty(&r)?;
        std::fs::write(p, j).with_context(|| p.display().to_string())?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
