//! A mixed engine set (text and frame engines on ONNX Runtime, temporal and head engines on tract,
//! as `--backend auto` runs them) in the streaming session: the engines of both backends read and
//! write the session's host tensors directly, so nothing is converted or copied into new buffers
//! between them. Every engine is wrapped in a meter that counts the allocations (all threads) made
//! during its runs; per steady-state frame, everything outside the engines' runs allocates nothing,
//! and each engine's own count is steady (ONNX Runtime's output map: the same few blocks every run;
//! tract's intermediates: the same up to rayon's queue blocks, as in `backend_cpu.rs`). The counts are
//! printed (`--nocapture`). The test runs in a process of its own so no other test thread allocates
//! while counting. Skipped without the library unless `REFERDINO_REQUIRE_ORACLES=1`.
#![cfg(feature = "ort")]

use crate::counter::{all_threads, in_own_process};
use crate::support::common;
use referdino::backend::kind::BackendKind;
use referdino::backend::ort::ort_available;
use referdino::backend::{Engine, TensorSpec, View, ViewMut};
use referdino::camera::Preprocessor;
use referdino::config::ModelConfig;
use referdino::graph::engines::{ExportOptions, Geometry};
use referdino::pipeline::session::EngineSet;
use referdino::pipeline::stream::{StreamConfig, StreamSession};
use referdino::tensor::Data;
use referdino::weights::Checkpoint;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// An engine that adds the allocations (blocks, all threads) made during its runs to a shared tally.
struct Metered {
    inner: Box<dyn Engine>,
    blocks: Arc<AtomicUsize>,
}

impl Engine for Metered {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn inputs(&self) -> &[TensorSpec] {
        self.inner.inputs()
    }
    fn outputs(&self) -> &[TensorSpec] {
        self.inner.outputs()
    }
    fn run(&mut self, inputs: &[View<'_>], outputs: &mut [ViewMut<'_>]) -> referdino::Result<()> {
        let (a0, _) = all_threads();
        let r = self.inner.run(inputs, outputs);
        let (a1, _) = all_threads();
        self.blocks.fetch_add(a1 - a0, Ordering::SeqCst);
        r
    }
}

fn metered(e: Box<dyn Engine>) -> (Box<dyn Engine>, Arc<AtomicUsize>) {
    let blocks = Arc::new(AtomicUsize::new(0));
    let m = Metered {
        inner: e,
        blocks: blocks.clone(),
    };
    (Box::new(m), blocks)
}

#[test]
fn mixed_set_host_path_allocates_nothing_between_engines() {
    if !in_own_process(concat!(
        module_path!(),
        "::mixed_set_host_path_allocates_nothing_between_engines"
    )) {
        return;
    }
    if !ort_available() {
        let msg =
            "ONNX Runtime library not found (set ORT_DYLIB_PATH or `pip install onnxruntime`)";
        assert!(
            std::env::var("REFERDINO_REQUIRE_ORACLES").as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("skipped: {msg}");
        return;
    }
    let ck = Checkpoint::load(&common::fixture("referdino-tiny/weights.safetensors")).unwrap();
    let cfg = ModelConfig::from_file(&common::fixture("referdino-tiny/config.json")).unwrap();
    let inputs = common::tiny_inputs();
    let clip = &inputs["frames_uint8"];
    let (t, h, w) = (clip.shape()[0], clip.shape()[1], clip.shape()[2]);
    let Data::U8(px) = clip.data() else { panic!() };
    let geo = Geometry {
        height: h,
        width: w,
        max_text: 16,
        window: 2,
    };
    let kind = BackendKind::parse("text=ort,frame=ort,temporal=cpu,head=cpu").unwrap();
    let set = EngineSet::build(kind, Some(2), &ck, &cfg, &geo, &ExportOptions::default()).unwrap();
    let (text, _) = metered(set.text);
    let (frame, m_frame) = metered(set.frame);
    let (temporal, m_temporal) = metered(set.temporal);
    let (head, m_head) = metered(set.head);
    let meters = [m_frame, m_temporal, m_head];
    let engines_total = || {
        meters
            .iter()
            .map(|m| m.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    let mut s = StreamSession::new(
        EngineSet {
            text,
            frame,
            temporal,
            head,
        },
        StreamConfig::for_model(&cfg),
        (h, w),
    )
    .unwrap();
    s.set_prompt("the red ball rolling to the left").unwrap();
    let mut pre = Preprocessor::new(w as u32, h as u32, h.min(w) as u32);
    let mut mask = vec![0u8; h * w];
    let mut frame_no = 0usize;
    let mut step = |s: &mut StreamSession| {
        let f = frame_no % t;
        frame_no += 1;
        pre.run(
            &px[f * h * w * 3..(f + 1) * h * w * 3],
            s.image_mut().unwrap(),
        )
        .unwrap();
        s.step(&mut mask).unwrap()
    };
    // Warm-up: ONNX Runtime's arena, tract's scratch and rayon's per-thread state are sized here.
    for _ in 0..6 {
        step(&mut s);
    }
    let mut per_frame = Vec::new();
    let mut tracks = 0;
    for _ in 0..12 {
        let e0: Vec<usize> = meters.iter().map(|m| m.load(Ordering::SeqCst)).collect();
        let (a0, _) = all_threads();
        let r = step(&mut s);
        let (a1, _) = all_threads();
        tracks += r.tracks.len();
        let engines: Vec<usize> = meters
            .iter()
            .zip(&e0)
            .map(|(m, b)| m.load(Ordering::SeqCst) - b)
            .collect();
        let host = (a1 - a0) - engines.iter().sum::<usize>();
        per_frame.push((host, engines));
    }
    assert!(engines_total() > 0, "the meters counted nothing");
    eprintln!(
        "RESULT mixed set (text+frame ort, temporal+head tract, 2 threads), 12 steady frames, \
         (host blocks, [frame, temporal, head] blocks): {per_frame:?}"
    );
    assert!(tracks >= 12, "every frame reports at least one track");
    for (i, (host, _)) in per_frame.iter().enumerate() {
        assert_eq!(
            *host, 0,
            "frame {i}: {host} allocations outside the engines' runs: {per_frame:?}"
        );
    }
    // Each engine's own allocations per run: ONNX Runtime's output map is the same every run;
    // tract's varies at most by rayon's queue blocks.
    for (k, name) in ["frame (ort)", "temporal (tract)", "head (tract)"]
        .iter()
        .enumerate()
    {
        let counts: Vec<usize> = per_frame.iter().map(|(_, e)| e[k]).collect();
        let (lo, hi) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        if k == 0 {
            assert_eq!(lo, hi, "{name}: not steady: {counts:?}");
        } else {
            assert!(
                hi <= lo + lo / 50 + 32,
                "{name}: varies beyond rayon noise: {counts:?}"
            );
        }
    }
}
