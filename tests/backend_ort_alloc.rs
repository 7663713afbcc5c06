//! Heap allocations per run of an ONNX Runtime engine (feature `ort`), counted with a global allocator.
//!
//! Every binding is an ONNX Runtime tensor allocated and bound once at load time, so a run copies the
//! caller's buffers in and out and allocates nothing for its I/O. ONNX Runtime's own intermediates come
//! from its C++ arena (not this allocator); what reaches the Rust allocator per run is the `ort` crate's
//! output map of the bound run: a few blocks, the same every run. The counts are printed
//! (`--nocapture`) for the report. This file holds a single test so no other test thread allocates while
//! counting. Skipped without the library unless `REFERDINO_REQUIRE_ORACLES=1`.
#![cfg(feature = "ort")]

use referdino::backend::ort::{ort_available, OrtBackend};
use referdino::backend::{Engine, View, ViewMut};
use referdino::config::ModelConfig;
use referdino::graph::engines::{build_engines, ExportOptions, Geometry};
use referdino::tensor::{Data, Tensor};
use referdino::weights::random::random_weights;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator with the caller's arguments unchanged; the
// counters are atomics and never affect the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        BYTES.fetch_add(l.size(), Ordering::SeqCst);
        // SAFETY: forwarded as received (the caller upholds `GlobalAlloc::alloc`'s contract).
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from this allocator, i.e. from `System`, with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        BYTES.fetch_add(n, Ordering::SeqCst);
        // SAFETY: `p` came from `System` with layout `l`; forwarded as received.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn view(t: &Tensor) -> View<'_> {
    match t.data() {
        Data::F32(v) => View::F32(v),
        Data::I64(v) => View::I64(v),
        Data::Bool(v) => View::Bool(v),
        d => panic!("unexpected input type {d:?}"),
    }
}

fn view_mut(t: &mut Tensor) -> ViewMut<'_> {
    match t.data_mut() {
        Data::F32(v) => ViewMut::F32(v),
        Data::I64(v) => ViewMut::I64(v),
        Data::Bool(v) => ViewMut::Bool(v),
        d => panic!("unexpected output type {d:?}"),
    }
}

/// Deterministic inputs: small floats, masks all true, valid ids.
fn inputs_for(e: &dyn Engine) -> Vec<Tensor> {
    e.inputs()
        .iter()
        .map(|s| {
            let mut t = Tensor::zeros(&s.shape, s.dtype);
            match t.data_mut() {
                Data::F32(v) => v
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, x)| *x = ((i * 37) % 101) as f32 / 101.0 - 0.5),
                // Token ids in the vocabulary; type and position ids 0 (always valid indices).
                Data::I64(v) if s.name == "input_ids" => v
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, x)| *x = 1000 + i as i64 % 7),
                Data::Bool(v) => v.iter_mut().for_each(|x| *x = true),
                _ => {}
            }
            t
        })
        .collect()
}

/// (blocks, bytes) allocated by each of `runs` runs.
fn per_run(
    e: &mut dyn Engine,
    ins: &[Tensor],
    outs: &mut [Tensor],
    runs: usize,
) -> Vec<(usize, usize)> {
    let views: Vec<View<'_>> = ins.iter().map(view).collect();
    let mut outv: Vec<ViewMut<'_>> = outs.iter_mut().map(view_mut).collect();
    (0..runs)
        .map(|_| {
            let (a0, b0) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
            e.run(&views, &mut outv).unwrap();
            (
                ALLOCS.load(Ordering::SeqCst) - a0,
                BYTES.load(Ordering::SeqCst) - b0,
            )
        })
        .collect()
}

#[test]
fn ort_allocations_per_run_are_few_and_steady() {
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
    let cfg = ModelConfig::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/referdino-tiny/config.json"),
    )
    .unwrap();
    let geo = Geometry {
        height: 70,
        width: 118,
        max_text: 16,
        window: 3,
    };
    let w = random_weights(&cfg, 5);
    let opts = ExportOptions {
        decompose_custom_ops: true,
        ..Default::default()
    };
    let graphs = build_engines(&w, &cfg, &geo, &opts).unwrap();
    drop(w);
    let backend = OrtBackend::new(2).unwrap();
    for g in graphs {
        let name = g.name().to_string();
        let mut e = backend.load_bytes(&name, &g.to_bytes()).unwrap();
        let ins = inputs_for(e.as_ref());
        let mut outs: Vec<Tensor> = e
            .outputs()
            .iter()
            .map(|s| Tensor::zeros(&s.shape, s.dtype))
            .collect();
        per_run(e.as_mut(), &ins, &mut outs, 3);
        let steady = per_run(e.as_mut(), &ins, &mut outs, 6);
        eprintln!("{name:<8} ort, 2 threads: per run (blocks, bytes) {steady:?}");
        // The I/O is bound once: what is left per run is the crate's output map, a few dozen blocks
        // at most whatever the engine's size, and the same every run.
        assert!(
            steady.iter().all(|&(b, _)| b <= 4 * e.outputs().len() + 16),
            "{name}: more than the output map allocates per run: {steady:?}"
        );
        assert!(
            steady.iter().all(|s| *s == steady[0]),
            "{name}: allocations per run not steady: {steady:?}"
        );
        // The outputs were written (the run did something).
        assert!(
            outs.iter().any(|t| match t.data() {
                Data::F32(v) => v.iter().any(|&x| x != 0.0),
                _ => false,
            }),
            "{name}: all outputs zero"
        );
    }
}
