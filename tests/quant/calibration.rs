//! Calibration maths, scale tables and fake quantization (src/quant), checked on data whose answer is
//! known independently of our code.

use referdino::quant::calibrate::{entropy_amax, percentile_amax, percentile_exact, CalibMethod};
use referdino::quant::collect::{collect_from_safetensors, sqnr_db, Collector};
use referdino::quant::fake::{dequantize, fake_quant, fake_quant_per_channel, quantize};
use referdino::quant::histogram::Histogram;
use referdino::quant::recipe::{FrameSource, Recipe};
use referdino::quant::scale::{per_channel_scales, ScaleTable, TensorScale};
use std::path::Path;

/// xorshift64* — a fixed, dependency-free generator so the data is the same on every machine.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn gaussian(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    fn laplace(&mut self) -> f64 {
        let u = self.uniform() - 0.5;
        -u.signum() * (1.0 - 2.0 * u.abs()).ln()
    }
}

fn hist_of(v: &[f32]) -> Histogram {
    let mut h = Histogram::new(2048).unwrap();
    // Several batches, so range doubling is part of what is tested.
    for chunk in v.chunks(50_000) {
        h.add(chunk);
    }
    h
}

const N: usize = 1_000_000;

#[test]
fn entropy_keeps_the_whole_range_of_uniform_data() {
    // Uniform data has no tail: clipping anything only adds error, so the KL optimum is (close to) max.
    let mut r = Rng(7);
    let v: Vec<f32> = (0..N).map(|_| (2.0 * r.uniform() - 1.0) as f32).collect();
    let h = hist_of(&v);
    let amax = entropy_amax(&h);
    assert!(
        amax > 0.95 * h.max_abs() && amax <= h.max_abs(),
        "amax {amax}, max {}",
        h.max_abs()
    );
}

#[test]
fn entropy_clips_the_gaussian_tail_but_not_the_bulk() {
    // N(0,1), 1e6 samples: max |x| is about 4.9σ. The threshold must clip the sparse tail (below max) but
    // not the bulk: above the 99.9th percentile of |x| (3.29σ).
    let mut r = Rng(11);
    let v: Vec<f32> = (0..N).map(|_| r.gaussian() as f32).collect();
    let h = hist_of(&v);
    let amax = entropy_amax(&h);
    assert!(h.max_abs() > 4.5, "max {}", h.max_abs());
    assert!(
        amax > 3.29 && amax < 0.97 * h.max_abs(),
        "gaussian entropy amax {amax}, max {}",
        h.max_abs()
    );
}

#[test]
fn entropy_clips_a_far_outlier_to_the_edge_of_the_bulk() {
    // A smooth bulk over the first 512 of 2048 bins (counts falling linearly) and one value in the last
    // bin. Keeping the outlier costs resolution over the bulk (16 bins per INT8 level instead of 4);
    // any threshold between the bulk's edge and the outlier folds the outlier into an empty bin, which Q
    // cannot represent. So the minimum lies at the bulk's edge: 512 bins, within one INT8 level (4 bins).
    let mut counts = vec![0u64; 2048];
    for (b, c) in counts.iter_mut().enumerate().take(512) {
        *c = 10_000 - 19 * b as u64;
    }
    counts[2047] = 1;
    let h = Histogram::from_counts(counts, 2048.0).unwrap();
    let amax = entropy_amax(&h);
    assert!((508.0..=516.0).contains(&amax), "amax {amax} (bin units)");
}

#[test]
fn entropy_clips_heavier_tails_harder() {
    // Laplace(0,1) has a heavier tail than a Gaussian: relative to its maximum, the threshold is lower.
    let mut r = Rng(13);
    let g: Vec<f32> = (0..N).map(|_| r.gaussian() as f32).collect();
    let l: Vec<f32> = (0..N).map(|_| r.laplace() as f32).collect();
    let (hg, hl) = (hist_of(&g), hist_of(&l));
    let rg = entropy_amax(&hg) / hg.max_abs();
    let rl = entropy_amax(&hl) / hl.max_abs();
    assert!(rl < rg, "laplace ratio {rl} vs gaussian ratio {rg}");
}

#[test]
fn histogram_percentile_matches_exact_percentile_within_one_bin() {
    let mut r = Rng(17);
    let v: Vec<f32> = (0..200_000).map(|_| r.gaussian() as f32).collect();
    let h = hist_of(&v);
    for p in [50.0, 99.0, 99.9, 99.99, 100.0] {
        let exact = percentile_exact(&v, p).unwrap();
        let approx = percentile_amax(&h, p).unwrap();
        // The histogram answer is the upper edge of the bin holding the exact answer.
        assert!(
            approx >= exact && approx - exact <= h.bin_width() * 1.0001,
            "p{p}: exact {exact}, histogram {approx}, bin {}",
            h.bin_width()
        );
    }
    // Gaussian: the 99.9th percentile of |x| is 3.29σ (two-sided 0.1 %).
    let p999 = percentile_exact(&v, 99.9).unwrap();
    assert!((p999 - 3.29).abs() < 0.1, "p99.9 {p999}");
}

#[test]
fn max_method_is_the_largest_value() {
    let h = hist_of(&[0.5, -3.25, 2.0]);
    assert_eq!(CalibMethod::Max.amax(&h).unwrap(), 3.25);
}

#[test]
fn fake_quant_round_trips_grid_values_and_bounds_the_error() {
    let scale = 0.05f32;
    // Values on the INT8 grid come back unchanged.
    let grid: Vec<f32> = (-128..=127).map(|k| k as f32 * scale).collect();
    let mut g = grid.clone();
    fake_quant(&mut g, scale).unwrap();
    assert_eq!(g, grid);
    // quantize → dequantize equals fake_quant; in-range error is at most half a step.
    let mut r = Rng(23);
    let x: Vec<f32> = (0..10_000)
        .map(|_| (r.uniform() as f32 - 0.5) * 12.0)
        .collect();
    let mut q = vec![0i8; x.len()];
    quantize(&x, scale, &mut q).unwrap();
    let mut dq = vec![0f32; x.len()];
    dequantize(&q, scale, &mut dq).unwrap();
    let mut fq = x.clone();
    fake_quant(&mut fq, scale).unwrap();
    assert_eq!(dq, fq);
    for (&a, &b) in x.iter().zip(&fq) {
        assert!((a - b).abs() <= scale * 0.5 + 1e-6, "{a} → {b}");
    }
    // Saturation: beyond ±range the value clips to the end levels.
    let mut big = [100.0f32, -100.0];
    fake_quant(&mut big, scale).unwrap();
    assert_eq!(big, [127.0 * scale, -128.0 * scale]);
}

#[test]
fn per_channel_fake_quant_equals_per_tensor_on_each_slice() {
    // Weight [out=3, in=4] quantized per output channel (axis 0).
    let w: Vec<f32> = vec![
        0.10, -0.20, 0.30, 0.04, //
        5.0, -2.5, 1.25, 0.3, //
        -0.001, 0.002, 0.0, 0.0005,
    ];
    let scales = per_channel_scales(&w, &[3, 4], 0).unwrap();
    assert_eq!(scales, vec![0.30 / 127.0, 5.0 / 127.0, 0.002 / 127.0]);
    let mut pc = w.clone();
    fake_quant_per_channel(&mut pc, &[3, 4], 0, &scales).unwrap();
    for c in 0..3 {
        let mut row = w[c * 4..c * 4 + 4].to_vec();
        fake_quant(&mut row, scales[c]).unwrap();
        assert_eq!(&pc[c * 4..c * 4 + 4], &row[..]);
    }
    // The channel maximum is representable exactly.
    assert!((pc[2] - 0.30).abs() < 1e-7 && (pc[4] - 5.0).abs() < 1e-6);
    assert!(fake_quant_per_channel(&mut pc, &[3, 4], 1, &scales).is_err());
}

#[test]
fn sqnr_of_8_bit_uniform_quantization_matches_theory() {
    // Uniform data on [-a, a] quantized with step Δ = a/127 (nothing clipped): signal power a²/3, noise
    // power Δ²/12, so SQNR = 4·127² = 64516 → 48.10 dB.
    let mut r = Rng(29);
    let a = 1.0f32;
    let v: Vec<f32> = (0..N)
        .map(|_| (2.0 * r.uniform() - 1.0) as f32 * a)
        .collect();
    let db = sqnr_db(&v, a / 127.0).unwrap();
    assert!((db - 48.10).abs() < 0.1, "sqnr {db}");
}

#[test]
fn scale_table_json_round_trip_and_validation() {
    let mut t = ScaleTable::new(
        "tiny",
        CalibMethod::Percentile { percentile: 99.99 },
        "unit test",
    );
    t.tensors
        .insert("enc.0.x".into(), TensorScale::from_amax(2.54));
    t.tensors.insert(
        "enc.0.w".into(),
        TensorScale::PerChannel {
            axis: 1,
            scales: vec![0.01, 0.02],
        },
    );
    t.tensors
        .insert("zeros".into(), TensorScale::from_amax(0.0));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub/scales.json");
    t.save(&p).unwrap();
    let back = ScaleTable::load(&p).unwrap();
    assert_eq!(back, t);
    assert!((back.activation_scale("enc.0.x").unwrap() - 0.02).abs() < 1e-7);
    assert_eq!(back.activation_scale("zeros").unwrap(), 1.0);
    let e = back.activation_scale("enc.0.w").unwrap_err().to_string();
    assert!(e.contains("per-channel"), "{e}");
    let e = back.activation_scale("nope").unwrap_err().to_string();
    assert!(e.contains("no entry for tensor nope"), "{e}");
    // Zero / negative scales and unknown versions are rejected on load.
    let text = t.to_json().unwrap();
    let bad = text.replace("0.02", "0.0");
    assert!(ScaleTable::from_json(&bad).is_err());
    let bad = text.replace("\"version\": 1", "\"version\": 9");
    assert!(ScaleTable::from_json(&bad)
        .unwrap_err()
        .to_string()
        .contains("version 9"));
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn collector_on_the_official_fixture_activations() {
    let dump = root().join("tests/fixtures/referdino-tiny/outputs.safetensors");
    let c = collect_from_safetensors(&dump, &["backbone.".into(), "encoder.memory".into()], 2048)
        .unwrap();
    let names: Vec<&String> = c.histograms().keys().collect();
    assert!(names.iter().any(|n| *n == "encoder.memory"), "{names:?}");
    assert!(names
        .iter()
        .all(|n| n.starts_with("backbone.") || n.starts_with("encoder.memory")));
    for method in [
        CalibMethod::Entropy,
        CalibMethod::Percentile { percentile: 99.99 },
        CalibMethod::Max,
    ] {
        let t = c.scale_table("tiny", method, "fixture").unwrap();
        t.validate().unwrap();
        for (name, h) in c.histograms() {
            let s = t.activation_scale(name).unwrap();
            assert!(s > 0.0 && s * 127.0 <= h.max_abs() * 1.0001, "{name}: {s}");
        }
    }
    // Unmatched prefixes are an error, not an empty table.
    assert!(collect_from_safetensors(&dump, &["nothing.".into()], 2048).is_err());
    assert!(Collector::new(100).is_err());
}

#[test]
fn shipped_recipes_parse_and_the_example_frames_load() {
    for name in ["referdino-tiny", "swin-t", "swin-b"] {
        Recipe::load(&root().join(format!("calib/{name}.toml"))).unwrap();
    }
    let r = Recipe::load(&root().join("calib/referdino-tiny.toml")).unwrap();
    assert_eq!(r.method, CalibMethod::Percentile { percentile: 99.99 });
    let src = FrameSource::parse(&r.samples[0].frames, root()).unwrap();
    let frames = src.load().unwrap();
    // The fixture video: 3 frames of 118×70.
    assert_eq!(frames.len(), 3);
    assert_eq!((frames[0].width(), frames[0].height()), (118, 70));
    // The produced example table loads and validates.
    let t = ScaleTable::load(&root().join("calib/referdino-tiny.scales.json")).unwrap();
    assert!(t.tensors.keys().any(|k| k.starts_with("encoder/enc0/")));
    assert_eq!(t.geometry, r.geometry);
}
