//! `query_prune` against the model fixture (`tests/fixtures/referdino-tiny/outputs.safetensors`).

use referdino::ops::query_prune;
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

fn outputs() -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/referdino-tiny/outputs.safetensors");
    std::fs::read(p).unwrap()
}

fn f32s(st: &SafeTensors, key: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{key}");
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), v)
}

fn i64s(st: &SafeTensors, key: &str) -> (Vec<usize>, Vec<i64>) {
    let t = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    assert_eq!(t.dtype(), Dtype::I64, "{key}");
    let v = t
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), v)
}

#[test]
fn reproduces_official_gate_and_keep_idx() {
    let bytes = outputs();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for l in 0..2 {
        let (ls, logits) = f32s(&st, &format!("decoder.layer{l}.class_logits"));
        let (as_, attn) = f32s(&st, &format!("decoder.layer{l}.self_attn_weights"));
        let (_, want_gate) = f32s(&st, &format!("decoder.layer{l}.gate"));
        let (ks, want_keep) = i64s(&st, &format!("decoder.layer{l}.keep_idx"));
        let (b, n, lt) = (ls[0], ls[1], ls[2]);
        assert_eq!(as_, vec![b, n, n]);
        let keep = ks[1];
        assert_eq!(keep, n.div_ceil(2), "query_decay 0.5");
        let mut gate = vec![f32::NAN; b * n];
        let mut keep_idx = vec![-1i64; b * keep];
        query_prune(&logits, &attn, b, n, lt, keep, &mut keep_idx, &mut gate).unwrap();
        let err = gate
            .iter()
            .zip(&want_gate)
            .map(|(a, w)| (a - w).abs())
            .fold(0.0f32, f32::max);
        eprintln!("layer {l}: gate max abs error {err:e}");
        assert!(err <= 1e-6, "layer {l}: gate error {err:e}");
        assert_eq!(keep_idx, want_keep, "layer {l}: keep_idx");
    }
}
