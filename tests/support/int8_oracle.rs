//! Helpers shared by the precision tests (tests/quant/): the ONNX checker and
//! ONNX Runtime through `tests/tools/onnx_oracle.py` ([`super::onnx_oracle`]), plain-tract FP32 runs, output comparison with the
//! FP16 / INT8 tolerances, synthetic engine inputs.
//!
//! Without python/onnx/onnxruntime the ORT parts are skipped with a message, unless
//! `REFERDINO_REQUIRE_ORACLES=1`, which makes that a failure.
#![allow(dead_code)]

use prost::Message;
use referdino::onnx::infer::{elem, infer_types};
use referdino::onnx::run::run_plain;
use referdino::tensor::{read_npy, write_npy, DType, Data, Tensor};
use std::path::{Path, PathBuf};
use tract_onnx::pb;

pub struct Rng(pub u64);
impl Rng {
    pub fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                lo + (hi - lo) * ((self.0 >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    }
}

/// FP16 tolerance against FP32: max|err| ≤ 5e-3·max|ref| + 1e-3 (fp16 has a 2^-11 ≈ 4.9e-4 relative
/// step; measured ≤ 1.5e-3·max|ref| here).
pub const FP16_TOL: (f32, f32) = (5e-3, 1e-3);
/// INT8 Q/DQ tolerance against FP32: max|err| ≤ 0.1·max|ref| + 1e-3 (per-tensor max-abs activations
/// lose up to half a step of max|x|/127 per element and errors add over layers; measured ≤ 5.6e-2).
pub const INT8_TOL: (f32, f32) = (0.1, 1e-3);

pub fn output_names(m: &pb::ModelProto) -> Vec<String> {
    m.graph
        .as_ref()
        .unwrap()
        .output
        .iter()
        .map(|o| o.name.clone())
        .collect()
}

pub fn tract(m: &pb::ModelProto, inputs: &[(String, Tensor)]) -> Vec<Tensor> {
    let ins: Vec<Tensor> = inputs.iter().map(|(_, t)| t.clone()).collect();
    run_plain(&m.encode_to_vec(), &ins).expect("tract runs the fp32 graph")
}

pub use super::onnx_oracle::oracle;

pub fn save(dir: &Path, m: &pb::ModelProto, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    p
}

/// ONNX checker on `m`; `false` when oracles are unavailable (and optional).
pub fn check(dir: &Path, m: &pb::ModelProto, name: &str) -> bool {
    let p = save(dir, m, name);
    oracle(&["check", p.to_str().unwrap()]).is_some()
}

/// Runs `m` in ONNX Runtime (CPU); outputs in graph order.
pub fn ort(
    dir: &Path,
    m: &pb::ModelProto,
    name: &str,
    inputs: &[(String, Tensor)],
) -> Option<Vec<Tensor>> {
    let p = save(dir, m, name);
    let (ind, outd) = (
        dir.join(format!("{name}.in")),
        dir.join(format!("{name}.out")),
    );
    std::fs::create_dir_all(&ind).unwrap();
    for (n, t) in inputs {
        write_npy(&ind.join(format!("{}.npy", n.replace('/', "_"))), t).unwrap();
    }
    oracle(&[
        "run",
        p.to_str().unwrap(),
        ind.to_str().unwrap(),
        outd.to_str().unwrap(),
    ])?;
    Some(
        output_names(m)
            .iter()
            .map(|n| read_npy(&outd.join(format!("{}.npy", n.replace('/', "_")))).unwrap())
            .collect(),
    )
}

/// Max abs error and max |ref| (matching infinities ignored).
pub fn err(got: &Tensor, want: &Tensor) -> (f32, f32) {
    assert_eq!(got.shape(), want.shape());
    let (g, w) = (got.to_f32(), want.to_f32());
    let mut e = 0f32;
    let mut m = 0f32;
    for (a, b) in g.f32s().unwrap().iter().zip(w.f32s().unwrap()) {
        if a.is_infinite() && b.is_infinite() && a.signum() == b.signum() {
            continue;
        }
        e = e.max((a - b).abs());
        if b.is_finite() {
            m = m.max(b.abs());
        }
    }
    (e, m)
}

/// Compares every output: float within `rel·max|ref| + abs`, integer outputs identical (unless listed in
/// `loose_ints`, which are only reported).
pub fn compare(
    names: &[String],
    got: &[Tensor],
    want: &[Tensor],
    rel: f32,
    abs: f32,
    loose_ints: &[&str],
) -> Vec<String> {
    let mut fails = Vec::new();
    for ((n, g), w) in names.iter().zip(got).zip(want) {
        if w.dtype() == DType::I64 {
            let same = g.i64s().unwrap() == w.i64s().unwrap();
            eprintln!("  {n}: indices identical = {same}");
            if !same && !loose_ints.contains(&n.as_str()) {
                fails.push(format!("{n}: {:?} vs {:?}", g.i64s(), w.i64s()));
            }
            continue;
        }
        let (e, m) = err(g, w);
        let tol = rel * m + abs;
        eprintln!(
            "  {n}: max abs err {e:.3e}, max|ref| {m:.3e}, rel {:.3e} (tol {tol:.3e})",
            e / m.max(1e-30)
        );
        if e.is_nan() || e > tol {
            fails.push(format!("{n}: {e:e} > {tol:e}"));
        }
    }
    fails
}

/// Synthetic inputs for an engine from its input specs (names decide the value ranges).
pub fn engine_inputs(m: &pb::ModelProto, r: &mut Rng) -> Vec<(String, Tensor)> {
    let types = infer_types(m).unwrap();
    m.graph
        .as_ref()
        .unwrap()
        .input
        .iter()
        .map(|i| {
            let t = &types[&i.name];
            let n = t.numel();
            let v = match t.elem {
                elem::F32 => {
                    let (lo, hi) = match i.name.as_str() {
                        "refs" => (0.2, 0.8),
                        "image" => (-2.0, 2.0),
                        _ => (-1.0, 1.0),
                    };
                    Tensor::from_f32(&t.shape, r.uniform(n, lo, hi)).unwrap()
                }
                elem::I64 => {
                    let last = *t.shape.last().unwrap_or(&1);
                    let v: Vec<i64> = match i.name.as_str() {
                        "input_ids" => r
                            .uniform(n, 1000.0, 2000.0)
                            .iter()
                            .map(|&x| x as i64)
                            .collect(),
                        "position_ids" => (0..n).map(|k| (k % last) as i64).collect(),
                        _ => vec![0; n],
                    };
                    Tensor::from_i64(&t.shape, v).unwrap()
                }
                elem::BOOL => Tensor::new(t.shape.clone(), Data::Bool(vec![true; n])).unwrap(),
                e => panic!("input {} has element type {e}", i.name),
            };
            (i.name.clone(), v)
        })
        .collect()
}

/// Frame-engine outputs that depend on which queries the two-stage TopK / pruning picked.
pub fn selection_dependent(n: &str) -> bool {
    matches!(
        n,
        "objects" | "refs" | "query_selection.refpoint_unsig" | "query_selection.init_box_proposal"
    ) || n.starts_with("decoder.")
        || n.starts_with("objects.")
}
