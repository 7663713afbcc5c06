//! Streaming calibration statistics: the streaming collection (`collect_activations`, which drops each
//! engine run's activations as soon as they are binned) gives exactly the histograms and scale tables of
//! the in-memory reference (`collect_activations_in_memory`, which holds a whole clip's activations),
//! for every calibration method, on the bundled fixture with several clips and prompts; and what the
//! streaming collection holds does not grow with the calibration set.

use referdino::config::ModelConfig;
use referdino::graph::engines::{ExportOptions, Geometry};
use referdino::quant::collect::Collector;
use referdino::quant::frames::{
    collect_activations_in_memory, collect_activations_stats, recipe_clips, Clip,
};
use referdino::quant::recipe::Recipe;
use referdino::quant::{CalibMethod, ScaleTable, TensorScale};
use referdino::weights::Checkpoint;
use std::collections::HashSet;
use std::path::Path;

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
