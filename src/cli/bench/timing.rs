//! The engines-one-by-one benchmark ([`bench()`]): random weights, export, GMAC per stage, each
//! backend's four engines loaded and run once in order, then the selected engines timed, alternating
//! the backends run by run.

use crate::backend::cpu::{available_threads, CpuBackend, CpuEngine, OpTime};
use crate::backend::kind::{auto_plan, BackendKind, EnginePlan, HostKind, Precision, AUTO_PLAN};
use crate::backend::{Engine, View, ViewMut};
use crate::graph::engines::{names, ExportOptions, Geometry};
use crate::graph::export::export_engines;
use crate::onnx::cost::{cost_report_with_params, StageRule, SPEC_8_2_SWIN_T_360X640};
use crate::pipeline::session::{view, view_mut};
use crate::tensor::Tensor;
use crate::weights::random::random_weights;
use anyhow::{bail, Context};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::args::{check_sizes, resolve_config, BenchArgs};
use super::inputs::{input_value, load_image, prompt_inputs, synthetic};
use super::machine::{cpu_model, load_average, peak_rss_mib, rss_mib};
use super::official::official_compare;
use super::report::{
    fastest_per_engine, per_frame_of, BackendBench, BenchReport, EngineBench, ExportedEngine,
    GmacRow, Latency,
};
use super::ENGINES;

/// A loaded engine: tract's concrete type (for `--profile`) or any other backend's.
enum Loaded {
    Cpu(Box<CpuEngine>),
    Other(Box<dyn Engine>),
}

impl Loaded {
    fn engine(&mut self) -> &mut dyn Engine {
        match self {
            Loaded::Cpu(e) => e.as_mut(),
            Loaded::Other(e) => e.as_mut(),
        }
    }
}

/// One engine of one backend with its input and output buffers.
struct Slot {
    name: String,
    backend: HostKind,
    engine: Loaded,
    ins: Vec<Tensor>,
    outs: Vec<Tensor>,
    load_seconds: f64,
    rss_after_load: f64,
    synthetic_inputs: Vec<String>,
    runs: Vec<f64>,
    profile: Option<Vec<OpTime>>,
}

impl Slot {
    fn run(&mut self) -> anyhow::Result<f64> {
        let views: Vec<View<'_>> = self.ins.iter().map(view).collect();
        let mut outv: Vec<ViewMut<'_>> = self.outs.iter_mut().map(view_mut).collect();
        let t0 = Instant::now();
        self.engine.engine().run(&views, &mut outv)?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }
}

/// One backend's four engines, ready to time.
struct Prepared {
    backend: String,
    threads: usize,
    export: String,
    plan: EnginePlan,
    slots: Vec<Slot>,
    rss_added_mib: f64,
}

/// Removes the temporary export directory however the benchmark ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the benchmark and returns the report (also printed; written as JSON with `--json`).
pub fn bench(a: &BenchArgs) -> anyhow::Result<BenchReport> {
    let load_start = load_average();
    let cfg = resolve_config(&a.config)?;
    check_sizes(a, &cfg)?;
    for e in &a.engines {
        if !ENGINES.contains(&e.as_str()) {
            bail!("--engines: unknown engine {e:?}; choose from {ENGINES:?}");
        }
    }
    let geo = Geometry {
        height: a.height,
        width: a.width,
        max_text: a.max_text,
        window: a.window,
    };
    // The pure backends to time, and the per-engine choice (`auto` or a mix) with its label.
    let (pure_cpu, pure_ort, choice) = match a.backend.to_ascii_lowercase().as_str() {
        "cpu" | "tract" => (true, false, None),
        "ort" | "onnxruntime" => (false, true, None),
        "all" => {
            let ort = crate::backend::ort_available();
            // Without ONNX Runtime, `auto` is tract on every engine: nothing more to time.
            let auto = ort.then(|| ("auto".to_string(), AUTO_PLAN));
            (true, ort, auto)
        }
        other => match BackendKind::parse(other) {
            Ok(k @ (BackendKind::Auto | BackendKind::Mix(_))) => {
                let (plan, why) = k.plan()?;
                if let Some(why) = why {
                    log::info!("bench: ONNX Runtime unavailable ({why}); auto runs tract");
                }
                (false, false, Some((k.to_string(), plan)))
            }
            Ok(k) => bail!("--backend {k}: bench times the host backends; choose cpu, ort, auto, all or a per-engine mix"),
            Err(e) => bail!("--backend: {e}; bench also takes `all`"),
        },
    };
    if a.backend.eq_ignore_ascii_case("all") && !pure_ort {
        log::info!("bench: ONNX Runtime not available (ORT_DYLIB_PATH or `pip install onnxruntime`); timing tract only");
    }
    let want_cpu = pure_cpu || choice.as_ref().is_some_and(|c| c.1.uses(HostKind::Cpu));
    let want_ort = pure_ort || choice.as_ref().is_some_and(|c| c.1.uses(HostKind::Ort));
    let cpu = if want_cpu {
        let mut b = CpuBackend::with_threads(a.threads)?;
        if a.single_thread_matmul {
            b = b.single_thread_matmul();
        }
        if a.tract_softmax {
            b = b.tract_softmax();
        }
        if a.tract_layer_norm {
            b = b.tract_layer_norm();
        }
        if a.tract_matmul {
            b = b.tract_matmul();
        }
        if a.tract_add {
            b = b.tract_add();
        }
        if a.tract_unary {
            b = b.tract_unary();
        }
        if a.no_pool {
            b = b.pool_bytes(0);
        }
        if a.tract_transpose {
            b = b.tract_transpose();
        }
        if a.tract_order {
            b = b.tract_order();
        }
        if a.float_int8 {
            b = b.float_int8();
        }
        Some(b)
    } else {
        None
    };
    let ort = if want_ort {
        Some(BackendKind::Ort.host_backend(Some(a.threads))?)
    } else {
        None
    };
    let threads = cpu
        .as_ref()
        .map(|b| b.threads())
        .or_else(|| ort.as_ref().map(|b| b.threads()))
        .unwrap_or(1);
    log::info!(
        "bench {} {}x{} Lm {} window {}: {} threads, load average {:?}",
        a.config,
        geo.height,
        geo.width,
        geo.max_text,
        geo.window,
        threads,
        load_start
    );

    // Weights and export.
    let t0 = Instant::now();
    let w = random_weights(&cfg, a.seed)?;
    let weights_seconds = t0.elapsed().as_secs_f64();
    let sizes: HashMap<String, usize> = w.iter().map(|(k, v)| (k.clone(), v.numel())).collect();
    let mparams = sizes.values().sum::<usize>() as f64 / 1e6;
    let (dir, _cleanup) = match &a.onnx_dir {
        Some(d) => (d.clone(), None),
        None => {
            let d = std::env::temp_dir().join(format!("referdino-bench-{}", std::process::id()));
            (d.clone(), Some(RemoveOnDrop(d)))
        }
    };
    let t0 = Instant::now();
    let manifest = export_engines(&w, &cfg, &geo, &ExportOptions::default(), &dir)
        .context("exporting the engines")?;
    let export_seconds = t0.elapsed().as_secs_f64();
    let decomposed_dir = dir.join("decomposed");
    if pure_ort {
        let opts = ExportOptions {
            decompose_custom_ops: true,
            ..Default::default()
        };
        export_engines(&w, &cfg, &geo, &opts, &decomposed_dir)
            .context("exporting the decomposed engines")?;
    }
    let int8_dir = dir.join("int8");
    let want_int8 = a.int8.is_some() || a.int8_self;
    if want_int8 {
        if !pure_cpu && !pure_ort {
            bail!("--int8 times the INT8 engines on tract and ONNX Runtime: use --backend cpu, ort or all");
        }
        let (table, path) = match &a.int8 {
            Some(t) => (crate::quant::ScaleTable::load(t)?, t.clone()),
            None => {
                let t = self_calibrate(a, &w, &cfg, &geo)?;
                let p = dir.join("int8-self.scales.json");
                t.save(&p)?;
                (t, p)
            }
        };
        crate::quant::engines::export_with_precision(
            &w,
            &cfg,
            &geo,
            &ExportOptions::default(),
            crate::onnx::precision::Precision::Int8,
            Some((&table, path.as_path())),
            false,
            &int8_dir,
        )
        .context("exporting the INT8 engines")?;
    }
    drop(w);
    let exported: Vec<ExportedEngine> = manifest
        .engines
        .iter()
        .map(|e| ExportedEngine {
            name: e.name.clone(),
            bytes: e.bytes,
            nodes: e.nodes,
        })
        .collect();

    // GMAC per stage over the files just written.
    let rules = StageRule::spec_rows();
    let mut stage_sum: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for e in &manifest.engines {
        let p = dir.join(&e.file);
        let bytes = std::fs::read(&p).with_context(|| p.display().to_string())?;
        let model = <tract_onnx::pb::ModelProto as prost::Message>::decode(bytes.as_slice())
            .with_context(|| format!("decoding {}", p.display()))?;
        drop(bytes);
        let r = cost_report_with_params(&model, &rules, 1, &sizes)?;
        for s in &r.stages {
            let v = stage_sum.entry(s.name.clone()).or_default();
            v.0 += s.counts.macs as f64 / 1e9;
            v.1 += s.counts.params as f64 / 1e6;
        }
    }
    let comparable =
        matches!(a.config.as_str(), "swin-t" | "swin_t") && geo.height == 360 && geo.width == 640;
    let mut gmac = Vec::new();
    let mut order: Vec<String> = rules.iter().map(|r| r.stage.clone()).collect();
    order.extend(
        stage_sum
            .keys()
            .filter(|k| !order.contains(k))
            .cloned()
            .collect::<Vec<_>>(),
    );
    for stage in order {
        let Some(&(g, p)) = stage_sum.get(&stage) else {
            continue;
        };
        let spec = SPEC_8_2_SWIN_T_360X640
            .iter()
            .find(|r| r.0 == stage)
            .filter(|_| comparable);
        gmac.push(GmacRow {
            stage,
            gmac: g,
            mparams: p,
            spec_gmac: spec.map(|r| r.1),
            spec_mparams: spec.map(|r| r.2),
        });
    }
    let gmac_total = gmac.iter().map(|r| r.gmac).sum();

    // Each backend loads its four engines (a session holds all four) and runs them once in order, so
    // that every engine gets its upstream engine's outputs; then the selected engines are timed,
    // alternating the backends run by run.
    let (prompt_pool, prompt_tokens, caption) = prompt_inputs(&a.prompt, geo.max_text)?;
    let (img, image_src) = load_image(a.image.as_deref(), geo.height, geo.width)?;
    let image = Tensor::from_f32(&[1, 3, geo.height, geo.width], img)?;
    let mut prepared: Vec<Prepared> = Vec::new();
    // (label, export, files, backend of each engine)
    let mut targets: Vec<(String, &str, &Path, EnginePlan)> = Vec::new();
    if pure_cpu {
        let plan = EnginePlan::uniform(HostKind::Cpu);
        targets.push(("cpu".into(), "native", dir.as_path(), plan));
    }
    if pure_ort {
        // Our kernels as custom operators, and the standard-ONNX yardstick.
        let plan = EnginePlan::uniform(HostKind::Ort);
        targets.push(("ort".into(), "native", dir.as_path(), plan));
        targets.push(("ort".into(), "decomposed", decomposed_dir.as_path(), plan));
    }
    if want_int8 && pure_cpu {
        let plan = EnginePlan::uniform(HostKind::Cpu);
        targets.push(("cpu".into(), "int8", int8_dir.as_path(), plan));
    }
    if want_int8 && pure_ort {
        let plan = EnginePlan::uniform(HostKind::Ort);
        targets.push(("ort".into(), "int8", int8_dir.as_path(), plan));
    }
    if let Some((label, plan)) = &choice {
        // Each engine on its own backend, run in sequence as a session runs them.
        targets.push((label.clone(), "native", dir.as_path(), *plan));
    }
    for (kind, export, edir, plan) in targets {
        let rss0 = rss_mib();
        let mut pool = prompt_pool.clone();
        pool.insert(names::IMAGE.to_string(), image.clone());
        let mut slots = Vec::new();
        for name in ENGINES {
            let p = edir.join(format!("{name}.onnx"));
            let t0 = Instant::now();
            let on = plan.of(name).unwrap_or(HostKind::Cpu);
            let mut engine = match (on, &cpu, &ort) {
                (HostKind::Ort, _, Some(b)) => Loaded::Other(b.load(&p)?),
                (HostKind::Cpu, Some(c), _) => Loaded::Cpu(Box::new(c.load_cpu(&p)?)),
                _ => bail!("no {} backend to load {name} on", on.name()),
            };
            let load_seconds = t0.elapsed().as_secs_f64();
            log::info!("{kind} ({export}): loaded {name} in {load_seconds:.1} s");
            let e = engine.engine();
            let mut synthetic_inputs = Vec::new();
            let mut ins = Vec::with_capacity(e.inputs().len());
            for s in e.inputs() {
                match input_value(s, &pool, cfg.hidden_dim)? {
                    Some(t) => ins.push(t),
                    None => {
                        synthetic_inputs.push(s.name.clone());
                        ins.push(synthetic(s));
                    }
                }
            }
            let outs: Vec<Tensor> = e
                .outputs()
                .iter()
                .map(|s| Tensor::zeros(&s.shape, s.dtype))
                .collect();
            let out_names: Vec<String> = e.outputs().iter().map(|s| s.name.clone()).collect();
            let mut slot = Slot {
                name: name.to_string(),
                backend: on,
                engine,
                ins,
                outs,
                load_seconds,
                rss_after_load: peak_rss_mib(),
                synthetic_inputs,
                runs: Vec::new(),
                profile: None,
            };
            // An untimed engine still runs once so the next one gets realistic inputs.
            let timed = a.engines.iter().any(|x| x == name);
            let warm = if timed { a.warmup.max(1) } else { 1 };
            for _ in 0..warm {
                slot.run()?;
            }
            for (n, t) in out_names.into_iter().zip(&slot.outs) {
                pool.insert(n, t.clone());
            }
            slots.push(slot);
        }
        prepared.push(Prepared {
            backend: kind,
            threads,
            export: export.to_string(),
            plan,
            slots,
            rss_added_mib: rss_mib() - rss0,
        });
    }
    for i in 0..a.iters {
        for p in prepared.iter_mut() {
            for slot in p.slots.iter_mut() {
                if !a.engines.iter().any(|x| x == &slot.name) {
                    continue;
                }
                let ms = slot.run()?;
                log::info!(
                    "{} ({}) {} run {}/{}: {ms:.1} ms",
                    p.backend,
                    p.export,
                    slot.name,
                    i + 1,
                    a.iters
                );
                slot.runs.push(ms);
            }
        }
    }
    if a.profile {
        for p in prepared.iter_mut() {
            for slot in p.slots.iter_mut() {
                if !a.engines.iter().any(|x| x == &slot.name) {
                    continue;
                }
                if let Loaded::Cpu(e) = &mut slot.engine {
                    let views: Vec<View<'_>> = slot.ins.iter().map(view).collect();
                    let mut outv: Vec<ViewMut<'_>> = slot.outs.iter_mut().map(view_mut).collect();
                    slot.profile = Some(e.profile(&views, &mut outv, a.profile_shapes)?);
                }
            }
        }
    }
    let backends: Vec<BackendBench> = prepared
        .into_iter()
        .map(|p| {
            let engines: Vec<EngineBench> = p
                .slots
                .into_iter()
                .filter(|s| a.engines.iter().any(|x| x == &s.name))
                .map(|s| EngineBench {
                    name: s.name,
                    backend: s.backend.name().to_string(),
                    load_seconds: s.load_seconds,
                    peak_rss_mib_after_load: s.rss_after_load,
                    latency: Latency::of(s.runs),
                    synthetic_inputs: s.synthetic_inputs,
                    profile: s.profile,
                })
                .collect();
            let per_frame = per_frame_of(&engines, geo.window);
            BackendBench {
                backend: p.backend,
                threads: p.threads,
                export: p.export,
                plan: p.plan.to_string(),
                engines,
                per_frame,
                rss_added_mib: p.rss_added_mib,
            }
        })
        .collect();
    let fastest = fastest_per_engine(&backends, "native", AUTO_PLAN);
    let fastest_int8 = fastest_per_engine(&backends, "int8", auto_plan(Precision::Int8));
    let official = match &a.official {
        Some(f) => Some(official_compare(f, threads, &backends)?),
        None => None,
    };
    let (engines, per_frame) = backends
        .first()
        .map(|b| (b.engines.clone(), b.per_frame.clone()))
        .unwrap_or_default();
    let report = BenchReport {
        config: a.config.clone(),
        backbone: cfg.backbone.clone(),
        geometry: geo,
        threads,
        single_thread_matmul: a.single_thread_matmul,
        tract_softmax: a.tract_softmax,
        tract_layer_norm: a.tract_layer_norm,
        tract_matmul: a.tract_matmul,
        tract_add: a.tract_add,
        tract_unary: a.tract_unary,
        no_pool: a.no_pool,
        tract_transpose: a.tract_transpose,
        tract_order: a.tract_order,
        profile_shapes: a.profile_shapes,
        available_cores: available_threads(),
        // The engines run at least once before timing (the next engine's inputs come from it).
        warmup: a.warmup.max(1),
        iters: a.iters,
        prompt: caption,
        prompt_tokens,
        image: image_src,
        load_average_start: load_start,
        load_average_end: load_average(),
        weights_seconds,
        mparams,
        export_seconds,
        exported,
        engines,
        per_frame,
        backends,
        fastest,
        fastest_int8,
        cpu_model: cpu_model(),
        cpu_kernel: crate::ops::linear::kernel().name().into(),
        gmac,
        gmac_total,
        official,
        peak_rss_mib: peak_rss_mib(),
    };
    Ok(report)
}

/// `--int8-self`: a scale table calibrated on the bench's own image and prompt (one frame, percentile
/// 99.99, the native export at the bench geometry), for timing the INT8 engines in one command.
fn self_calibrate(
    a: &BenchArgs,
    w: &dyn crate::onnx::Weights,
    cfg: &crate::config::ModelConfig,
    geo: &Geometry,
) -> anyhow::Result<crate::quant::ScaleTable> {
    use crate::calibration::frames::{collect_activations, Clip};
    use crate::quant::collect::Collector;
    use crate::quant::CalibMethod;
    let t0 = Instant::now();
    let (img, _) = load_image(a.image.as_deref(), geo.height, geo.width)?;
    let caption = crate::text::Tokenizer::bundled()?.encode_prompt(&a.prompt, geo.max_text)?;
    let clip = Clip {
        label: "bench".into(),
        frames: vec![img],
        captions: vec![caption],
    };
    let opts = ExportOptions::default();
    let mut c = Collector::new(2048)?;
    let (_, use_max) = collect_activations(w, cfg, geo, &opts, &[clip], &mut c)
        .context("calibrating on the bench image (--int8-self)")?;
    let method = CalibMethod::Percentile { percentile: 99.99 };
    let mut table = c.scale_table_with("bench", method, "the bench image and prompt", &use_max)?;
    table.custom_ops = Some(crate::quant::engines::custom_ops_label(&opts).into());
    table.geometry = Some(*geo);
    log::info!(
        "--int8-self: {} activation scales in {:.1} s",
        table.tensors.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(table)
}
