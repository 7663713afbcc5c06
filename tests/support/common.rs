//! Helpers shared by the integration tests: fixture loading and the parity tolerance.
#![allow(dead_code)]

use referdino::tensor::{read_safetensors, Tensor};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Every reference tensor of the tiny model fixture, by key.
pub fn tiny_outputs() -> BTreeMap<String, Tensor> {
    read_safetensors(&fixture("referdino-tiny/outputs.safetensors"))
        .expect("outputs")
        .0
}

/// The tiny model fixture's inputs.
pub fn tiny_inputs() -> BTreeMap<String, Tensor> {
    read_safetensors(&fixture("referdino-tiny/inputs.safetensors"))
        .expect("inputs")
        .0
}

/// Tiny model weights with aliases resolved and LoRA folded (W + B·A / rank), as the model runs in eval().
///
/// Test-side loader kept deliberately independent from `referdino::weights`, so the two check each other.
/// The tiny fixture's model configuration.
pub fn tiny_config() -> referdino::config::ModelConfig {
    referdino::config::ModelConfig::from_file(&fixture("referdino-tiny/config.json"))
        .expect("config")
}

pub fn tiny_weights() -> HashMap<String, Tensor> {
    let (mut t, meta) =
        read_safetensors(&fixture("referdino-tiny/weights.safetensors")).expect("weights");
    let aliases: HashMap<String, String> =
        serde_json::from_str(meta.get("aliases").expect("aliases")).expect("aliases json");
    for (alias, stored) in aliases {
        let v = t[&stored].clone();
        t.insert(alias, v);
    }
    let lora: Vec<String> = t
        .keys()
        .filter_map(|k| k.strip_suffix(".lora_A").map(|s| s.to_string()))
        .collect();
    for base in lora {
        let a = t.remove(&format!("{base}.lora_A")).unwrap();
        let b = t.remove(&format!("{base}.lora_B")).unwrap();
        let (r, inp) = (a.shape()[0], a.shape()[1]);
        let out = b.shape()[0];
        let (av, bv) = (a.f32s().unwrap(), b.f32s().unwrap());
        let scale = 1.0 / r as f32;
        let w = t.get_mut(&format!("{base}.weight")).unwrap();
        let wv = w.f32s_mut().unwrap();
        for o in 0..out {
            for i in 0..inp {
                let mut s = 0f32;
                for k in 0..r {
                    s += bv[o * r + k] * av[k * inp + i];
                }
                wv[o * inp + i] += s * scale;
            }
        }
    }
    t.into_iter().collect()
}

/// Max abs difference and max |reference| of two f32 tensors of the same shape.
pub fn max_err(got: &Tensor, want: &Tensor) -> (f32, f32) {
    assert_eq!(got.shape(), want.shape(), "shape mismatch");
    let g = got.to_f32();
    let w = want.to_f32();
    let (g, w) = (g.f32s().unwrap(), w.f32s().unwrap());
    let mut err = 0f32;
    let mut mx = 0f32;
    for (a, b) in g.iter().zip(w) {
        if a.is_infinite() && b.is_infinite() && a.signum() == b.signum() {
            continue;
        }
        err = err.max((a - b).abs());
        if b.is_finite() {
            mx = mx.max(b.abs());
        }
    }
    (err, mx)
}

/// The parity rule of the project: max abs error ≤ 1e-4 · max|reference| + 1e-5.
pub fn assert_close(key: &str, got: &Tensor, want: &Tensor) {
    let (err, mx) = max_err(got, want);
    let tol = 1e-4 * mx + 1e-5;
    assert!(
        err <= tol,
        "{key}: max abs error {err:e} > tolerance {tol:e} (max|ref| {mx})"
    );
    eprintln!("{key}: max abs error {err:.3e} (tol {tol:.3e})");
}

/// Shape and f32 values of one tensor of a parsed safetensors file (panics naming the key).
pub fn f32s(st: &SafeTensors, key: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{key}");
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), v)
}

/// Shape and i64 values of one tensor of a parsed safetensors file (panics naming the key).
pub fn i64s(st: &SafeTensors, key: &str) -> (Vec<usize>, Vec<i64>) {
    let t = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    assert_eq!(t.dtype(), Dtype::I64, "{key}");
    let v = t
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), v)
}

/// Whether ONNX Runtime's library loads (`ORT_DYLIB_PATH` or the `onnxruntime` wheel); when it does not,
/// says that `test` is skipped, or fails under `REFERDINO_REQUIRE_ORACLES=1` (CI).
#[cfg(feature = "ort")]
pub fn have_ort(test: &str) -> bool {
    if referdino::backend::ort::ort_available() {
        return true;
    }
    let msg = format!(
        "{test}: ONNX Runtime library not found (set ORT_DYLIB_PATH or `pip install onnxruntime`)"
    );
    assert!(
        std::env::var("REFERDINO_REQUIRE_ORACLES").map_or(true, |v| v != "1"),
        "{msg}"
    );
    eprintln!("skipped: {msg}");
    false
}
