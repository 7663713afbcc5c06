//! `ms_deform_attn` against the official PyTorch fixtures (`tests/fixtures/msdeform`, all cases).

use crate::support::common;

use common::{f32s, i64s};

use referdino::ops::{ms_deform_attn, MsDeformDims};
use safetensors::SafeTensors;
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/msdeform")
}

/// Runs one fixture file; returns (max abs error, our output).
fn run_case(file: &str) -> (f32, Vec<f32>) {
    let bytes = std::fs::read(fixture_dir().join(file)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (vs, value) = f32s(&st, "value");
    let (_, shapes) = i64s(&st, "spatial_shapes");
    let (_, starts) = i64s(&st, "level_start_index");
    let (ls, locs) = f32s(&st, "sampling_locations");
    let (_, attn) = f32s(&st, "attention_weights");
    let (os, want) = f32s(&st, "output");
    // The fixture's level_start_index is the running sum of h·w (the official function ignores it).
    let mut acc = 0;
    for l in 0..starts.len() {
        assert_eq!(starts[l], acc, "{file}: level_start_index[{l}]");
        acc += shapes[2 * l] * shapes[2 * l + 1];
    }
    assert_eq!(acc as usize, vs[1], "{file}: levels cover the value rows");
    let dims = MsDeformDims {
        batch: vs[0],
        num_value: vs[1],
        heads: vs[2],
        head_dim: vs[3],
        num_query: ls[1],
        levels: ls[3],
        points: ls[4],
    };
    assert_eq!(
        os,
        vec![dims.batch, dims.num_query, dims.heads * dims.head_dim]
    );
    let mut out = vec![f32::NAN; want.len()];
    ms_deform_attn(&value, &shapes, &starts, &locs, &attn, dims, &mut out).unwrap();
    let err = out
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    (err, out)
}

fn case_files() -> Vec<String> {
    let text = std::fs::read_to_string(fixture_dir().join("cases.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let files: Vec<String> = cases
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["file"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(files.len(), 3, "cases.json lists the three fixture cases");
    files
}

#[test]
fn matches_all_official_fixtures() {
    for file in case_files() {
        let (err, _) = run_case(&file);
        eprintln!("{file}: max abs error {err:e}");
        assert!(err <= 1e-5, "{file}: max abs error {err:e} > 1e-5");
    }
}

/// Every output row is computed by one thread in a fixed order, so thread count cannot change bits.
#[test]
fn thread_count_does_not_change_results() {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let three = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let (_, a) = one.install(|| run_case("realistic.safetensors"));
    let (_, b) = three.install(|| run_case("realistic.safetensors"));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}
