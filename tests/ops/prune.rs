//! `query_prune` against the model fixture (`tests/fixtures/referdino-tiny/outputs.safetensors`).

use crate::support::common;

use common::{f32s, i64s};

use referdino::ops::query_prune;
use safetensors::SafeTensors;
use std::path::PathBuf;

fn outputs() -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/referdino-tiny/outputs.safetensors");
    std::fs::read(p).unwrap()
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
