//! Streaming calibration statistics: the streaming collection (`collect_activations`, which drops each
//! engine run's activations as soon as they are binned) gives exactly the histograms and scale tables of
//! the in-memory reference (`collect_activations_in_memory`, which holds a whole clip's activations),
//! for every calibration method, on the bundled fixture with several clips and prompts; what the
//! streaming collection holds does not grow with the calibration set; and the taps an engine lends as
//! it computes them (`Engine::run_taps`, what a trace sink receives) are bit for bit the taps copied
//! into the session's buffers, on the CPU backend's tap plan and on the trait's default alike.

use referdino::backend::{host_view, Engine, TensorSpec, View, ViewMut};
use referdino::calibration::cpu_engine_set;
use referdino::calibration::frames::{
    collect_activations_in_memory, collect_activations_stats, recipe_clips, Clip,
};
use referdino::config::ModelConfig;
use referdino::graph::engines::{ExportOptions, Geometry};
use referdino::onnx::precision::with_outputs;
use referdino::pipeline::post::Selection;
use referdino::pipeline::session::{EngineSet, Session, Trace, TraceSink};
use referdino::quant::collect::Collector;
use referdino::quant::engines::{all_calibration_tensors, fp32_models};
use referdino::quant::recipe::Recipe;
use referdino::quant::{CalibMethod, ScaleTable, TensorScale};
use referdino::weights::Checkpoint;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

const GEO: Geometry = Geometry {
    height: 70,
    width: 118,
    max_text: 12,
    window: 3,
};

fn model() -> (Checkpoint, ModelConfig) {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/referdino-tiny");
    let ck = Checkpoint::load(&fx.join("weights.safetensors")).unwrap();
    let cfg = ModelConfig::from_file(&fx.join("config.json")).unwrap();
    (ck, cfg)
}

/// The fixture recipe's 3 frames × 2 prompts, cut into clips of 2 frames (two clips of 2 and 1 frames).
fn clips(cfg: &ModelConfig) -> Vec<Clip> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let recipe = Recipe::load(&root.join("calib/referdino-tiny.toml")).unwrap();
    let clips = recipe_clips(&recipe, root, &GEO, cfg, 2).unwrap();
    assert_eq!(clips.len(), 2);
    assert_eq!(clips[0].frames.len(), 2);
    assert!(clips.iter().all(|c| c.captions.len() == 2));
    clips
}

fn methods() -> [CalibMethod; 3] {
    [
        CalibMethod::Max,
        CalibMethod::Percentile { percentile: 99.99 },
        CalibMethod::Entropy,
    ]
}

fn amaxes(t: &ScaleTable) -> Vec<(String, u32, u32)> {
    t.tensors
        .iter()
        .map(|(k, v)| match v {
            TensorScale::PerTensor { scale, amax } => (k.clone(), scale.to_bits(), amax.to_bits()),
            other => panic!("{k}: unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn streaming_tables_equal_the_in_memory_tables_for_every_method() {
    let (ck, cfg) = model();
    let clips = clips(&cfg);
    let opts = ExportOptions::default();

    let mut held = Collector::new(2048).unwrap();
    let (runs_ref, max_ref) =
        collect_activations_in_memory(&ck, &cfg, &GEO, &opts, &clips, &mut held).unwrap();
    let mut streamed = Collector::new(2048).unwrap();
    let (stats, max_st) =
        collect_activations_stats(&ck, &cfg, &GEO, &opts, &clips, &mut streamed).unwrap();

    assert_eq!(runs_ref, 4);
    assert_eq!(stats.runs, 4);
    assert_eq!(streamed.samples(), held.samples());
    assert_eq!(max_ref, max_st);
    assert!(!max_st.is_empty(), "the fixture has softmax outputs");
    assert!(
        held.histograms().len() > 100,
        "the fixture quantizes ~300 tensors"
    );
    // Same tensors, same bins, same counts, same range and max.
    assert_eq!(
        held.histograms().keys().collect::<Vec<_>>(),
        streamed.histograms().keys().collect::<Vec<_>>()
    );
    for (name, h) in held.histograms() {
        assert_eq!(
            Some(h),
            streamed.histograms().get(name),
            "histogram of {name}"
        );
    }

    let mut per_method = Vec::new();
    for m in methods() {
        for use_max in [HashSet::new(), max_st.clone()] {
            let a = held.scale_table_with("tiny", m, "set", &use_max).unwrap();
            let b = streamed
                .scale_table_with("tiny", m, "set", &use_max)
                .unwrap();
            assert_eq!(amaxes(&a), amaxes(&b), "{}", m.label());
            assert_eq!(
                serde_json::to_string(&a).unwrap(),
                serde_json::to_string(&b).unwrap()
            );
            if use_max.is_empty() {
                per_method.push(amaxes(&a));
            }
        }
    }
    // The comparison has teeth: the three methods give three different tables.
    assert_ne!(per_method[0], per_method[1]);
    assert_ne!(per_method[0], per_method[2]);
    assert_ne!(per_method[1], per_method[2]);
}

#[test]
fn streaming_memory_does_not_grow_with_the_calibration_set() {
    let (ck, cfg) = model();
    let base = clips(&cfg);
    let opts = ExportOptions::default();
    // One clip × one prompt, then the whole set three times over (12 runs).
    let one = vec![Clip {
        captions: vec![base[0].captions[0].clone()],
        ..base[0].clone()
    }];
    let many: Vec<Clip> = (0..3).flat_map(|_| base.iter().cloned()).collect();

    let mut c1 = Collector::new(2048).unwrap();
    let (s1, _) = collect_activations_stats(&ck, &cfg, &GEO, &opts, &one, &mut c1).unwrap();
    let mut c2 = Collector::new(2048).unwrap();
    let (s2, _) = collect_activations_stats(&ck, &cfg, &GEO, &opts, &many, &mut c2).unwrap();
    assert_eq!(s1.runs, 1);
    assert_eq!(s2.runs, 12);
    // Histograms: one per tensor, whatever was observed.
    assert!(s1.histogram_bytes_per_run >= c1.histograms().len() * 2048 * 8);
    assert_eq!(s1.histogram_bytes_per_run, s2.histogram_bytes_per_run);
    assert_eq!(c1.held_bytes(), c2.held_bytes());
    // Activation bytes held outside the engines: bounded by one clip, never the set. The longest clip
    // here has 2 frames, as does the single-clip run.
    assert_eq!(s1.peak_held_bytes, s2.peak_held_bytes);
    // The data went through: 12 runs count far more values than one.
    let total = |c: &Collector| c.histograms().values().map(|h| h.total()).sum::<u64>();
    assert!(total(&c2) > 6 * total(&c1));
}

/// Every value of a view as bits, with its element type (so equal means bit-identical).
fn bits(v: View<'_>) -> (String, Vec<u64>) {
    let dt = format!("{:?}", v.dtype());
    let b = match v {
        View::F32(x) => x.iter().map(|f| f.to_bits() as u64).collect(),
        View::F16(x) => x.iter().map(|f| f.to_bits() as u64).collect(),
        View::I64(x) => x.iter().map(|&i| i as u64).collect(),
        View::U8(x) => x.iter().map(|&i| i as u64).collect(),
        View::Bool(x) => x.iter().map(|&i| i as u64).collect(),
        View::Device(_) => panic!("device view"),
    };
    (dt, b)
}

type Recorded = Arc<Mutex<BTreeMap<String, Vec<(String, Vec<u64>)>>>>;

/// A sink that keeps a copy of everything it is lent.
struct Record(Recorded);

impl TraceSink for Record {
    fn take(&mut self, key: &str, t: View<'_>) {
        let mut m = self.0.lock().unwrap();
        m.entry(key.to_string()).or_default().push(bits(t));
    }
}

/// An engine that implements only the required methods, so `run_taps` is the trait's default.
struct Plain(Box<dyn Engine>);

impl Engine for Plain {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn inputs(&self) -> &[TensorSpec] {
        self.0.inputs()
    }
    fn outputs(&self) -> &[TensorSpec] {
        self.0.outputs()
    }
    fn run(
        &mut self,
        inputs: &[View<'_>],
        outputs: &mut [ViewMut<'_>],
    ) -> referdino::error::Result<()> {
        self.0.run(inputs, outputs)
    }
}

/// The fixture's four engines with every quantized activation exposed, as calibration loads them.
fn tapped_engines(ck: &Checkpoint, cfg: &ModelConfig) -> EngineSet {
    let models = fp32_models(ck, cfg, &GEO, &ExportOptions::default()).unwrap();
    let wanted = all_calibration_tensors(&models).unwrap();
    let tapped: Vec<_> = models
        .iter()
        .zip(&wanted)
        .map(|(m, names)| with_outputs(m, names).unwrap().0)
        .collect();
    cpu_engine_set(&tapped).unwrap()
}

#[test]
fn lent_taps_equal_the_buffered_taps_bit_for_bit() {
    let (ck, cfg) = model();
    let clips = clips(&cfg);
    // Two frames in a window of three: the temporal engine's frame-major taps are cropped.
    let (clip, cap) = (&clips[0], &clips[0].captions[0]);
    let size = (GEO.height, GEO.width);

    let mut session = Session::new(tapped_engines(&ck, &cfg), cfg.tracking_alpha).unwrap();
    session.trace = Some(Trace::default());
    let r_buf = session
        .run_video(cap, &clip.frames, size, Selection::Single)
        .unwrap();
    let parts = session.trace.take().unwrap().parts;
    let buffered: BTreeMap<String, Vec<(String, Vec<u64>)>> = parts
        .iter()
        .map(|(k, v)| (k.clone(), v.iter().map(|t| bits(host_view(t))).collect()))
        .collect();
    assert!(buffered.len() > 100, "the fixture exposes ~300 taps");

    // The CPU backend's tap plan, then the trait's default (run into temporary buffers), each run
    // twice on the same engines (the plan is built once and reused).
    let plain = {
        let e = tapped_engines(&ck, &cfg);
        EngineSet {
            text: Box::new(Plain(e.text)),
            frame: Box::new(Plain(e.frame)),
            temporal: Box::new(Plain(e.temporal)),
            head: Box::new(Plain(e.head)),
        }
    };
    let mut plain = Session::new(plain, cfg.tracking_alpha).unwrap();
    for (what, s) in [("tap plan", &mut session), ("default", &mut plain)] {
        for run in 0..2 {
            let rec: Recorded = Default::default();
            s.trace = Some(Trace {
                sink: Some(Box::new(Record(rec.clone()))),
                ..Default::default()
            });
            let r = s
                .run_video(cap, &clip.frames, size, Selection::Single)
                .unwrap();
            let t = s.trace.take().unwrap();
            assert!(t.parts.is_empty(), "a sink holds nothing in the trace");
            let lent = rec.lock().unwrap();
            assert_eq!(
                buffered.keys().collect::<Vec<_>>(),
                lent.keys().collect::<Vec<_>>(),
                "{what} run {run}: same keys"
            );
            for (k, v) in &buffered {
                assert!(lent[k] == *v, "{what} run {run}: tap {k} differs");
            }
            // The contract outputs are unchanged too.
            assert_eq!(r.logits, r_buf.logits, "{what} run {run}");
            assert_eq!(r.boxes, r_buf.boxes, "{what} run {run}");
            assert_eq!(r.mask_logits, r_buf.mask_logits, "{what} run {run}");
            assert_eq!(r.masks, r_buf.masks, "{what} run {run}");
        }
    }
}

/// The full-size check behind calib/README.md's Swin-T figures: the tables `referdino calibrate`
/// computes (taps lent by the engines) equal the in-memory reference's (taps copied into the session's
/// buffers and held for the clip), every method, at 360×640. Needs a Swin-T checkpoint
/// (`REFERDINO_CALIB_CKPT`, e.g. from `cargo run --example random_checkpoint -- swin-t ckpt.safetensors 7`),
/// a recipe (`REFERDINO_CALIB_RECIPE`, frame paths absolute or relative to the working directory) and
/// about 11 GB of memory for the reference.
#[test]
#[ignore = "needs REFERDINO_CALIB_CKPT, REFERDINO_CALIB_RECIPE and ~11 GB of memory"]
fn swin_t_streamed_tables_equal_the_in_memory_tables() {
    use referdino::calibration::frames::CALIBRATION_CLIP_FRAMES;
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("set {k}"));
    let ck = Checkpoint::load(Path::new(&var("REFERDINO_CALIB_CKPT"))).unwrap();
    let cfg = ModelConfig::swin_t();
    let recipe = Recipe::load(Path::new(&var("REFERDINO_CALIB_RECIPE"))).unwrap();
    let geo = Geometry {
        height: 360,
        width: 640,
        max_text: 32,
        window: 36,
    };
    let clips = recipe_clips(&recipe, Path::new("."), &geo, &cfg, CALIBRATION_CLIP_FRAMES).unwrap();
    let opts = ExportOptions {
        taps: false,
        ..Default::default()
    };
    let mut streamed = Collector::new(recipe.bins).unwrap();
    let (_, max_st) =
        collect_activations_stats(&ck, &cfg, &geo, &opts, &clips, &mut streamed).unwrap();
    let mut held = Collector::new(recipe.bins).unwrap();
    let (_, max_ref) =
        collect_activations_in_memory(&ck, &cfg, &geo, &opts, &clips, &mut held).unwrap();
    assert_eq!(max_ref, max_st);
    assert_eq!(held.histograms(), streamed.histograms());
    for m in methods() {
        let a = held.scale_table_with("swin-t", m, "set", &max_st).unwrap();
        let b = streamed
            .scale_table_with("swin-t", m, "set", &max_st)
            .unwrap();
        assert_eq!(amaxes(&a), amaxes(&b), "{}", m.label());
    }
}
