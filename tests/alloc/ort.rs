//! Heap allocations per run of an ONNX Runtime engine (feature `ort`), counted with the binary's counting allocator.
//!
//! Every binding is an ONNX Runtime tensor allocated and bound once at load time, so a run copies the
//! caller's buffers in and out and allocates nothing for its I/O. ONNX Runtime's own intermediates come
//! from its C++ arena (not this allocator); what reaches the Rust allocator per run is the `ort` crate's
//! output map of the bound run: a few blocks, the same every run. The counts are printed
//! (`--nocapture`) for the report. The test runs in a process of its own so no other test thread allocates
//! while counting. Skipped without the library unless `REFERDINO_REQUIRE_ORACLES=1`.
#![cfg(feature = "ort")]

use crate::backend_cpu::{inputs_for, per_run};
use crate::counter::in_own_process;
use referdino::backend::ort::{ort_available, OrtBackend};
use referdino::config::ModelConfig;
use referdino::graph::engines::{build_engines, ExportOptions, Geometry};
use referdino::tensor::{Data, Tensor};
use referdino::weights::random::random_weights;
use std::path::Path;

#[test]
fn ort_allocations_per_run_are_few_and_steady() {
    if !in_own_process(concat!(
        module_path!(),
        "::ort_allocations_per_run_are_few_and_steady"
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
    let w = random_weights(&cfg, 5).unwrap();
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
