//! Speed of the custom-op kernels at the shapes of `/work/shared/BASELINE.md` (Swin-T, 360×640).
//!
//! `RAYON_NUM_THREADS=2 cargo bench --bench ops -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion};
use referdino::ops::{ms_deform_attn, query_prune, MsDeformDims};
use std::hint::black_box;

/// Small deterministic generator (xorshift) so runs are comparable.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

struct MsdaCase {
    value: Vec<f32>,
    shapes: Vec<i64>,
    starts: Vec<i64>,
    locs: Vec<f32>,
    attn: Vec<f32>,
    dims: MsDeformDims,
    out: Vec<f32>,
}

fn msda_case(levels: &[(i64, i64)], num_query: usize, points: usize) -> MsdaCase {
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let (heads, head_dim) = (8, 32);
    let shapes: Vec<i64> = levels.iter().flat_map(|&(h, w)| [h, w]).collect();
    let mut starts = Vec::new();
    let mut s = 0;
    for &(h, w) in levels {
        starts.push(s);
        s += h * w;
    }
    let dims = MsDeformDims {
        batch: 1,
        num_value: s as usize,
        heads,
        head_dim,
        num_query,
        levels: levels.len(),
        points,
    };
    let taps = num_query * heads * levels.len() * points;
    let value = (0..dims.num_value * heads * head_dim)
        .map(|_| rng.uniform() - 0.5)
        .collect();
    // About 17 % of points outside the map, as in the fixtures.
    let locs = (0..2 * taps).map(|_| rng.uniform() * 1.2 - 0.1).collect();
    let norm = 1.0 / (levels.len() * points) as f32;
    let attn = (0..taps).map(|_| rng.uniform() * 2.0 * norm).collect();
    MsdaCase {
        value,
        shapes,
        starts,
        locs,
        attn,
        dims,
        out: vec![0.0; num_query * heads * head_dim],
    }
}

fn bench_msda(c: &mut Criterion) {
    let swin = [(45, 80), (23, 40), (12, 20), (6, 10)];
    let cases = [
        ("ms_deform_attn/encoder_4820q", msda_case(&swin, 4820, 4)),
        ("ms_deform_attn/decoder_900q", msda_case(&swin, 900, 4)),
        (
            "ms_deform_attn/mask_decoder_15q_16p",
            msda_case(&[(90, 160)], 15, 16),
        ),
    ];
    for (name, mut k) in cases {
        c.bench_function(name, |b| {
            b.iter(|| {
                ms_deform_attn(
                    black_box(&k.value),
                    &k.shapes,
                    &k.starts,
                    black_box(&k.locs),
                    black_box(&k.attn),
                    k.dims,
                    &mut k.out,
                )
                .unwrap();
                black_box(&k.out);
            })
        });
    }
}

fn bench_prune(c: &mut Criterion) {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let (n, lt, keep, tokens) = (900, 256, 450, 10);
    // Official class logits have 256 token columns, padded ones −inf.
    let logits: Vec<f32> = (0..n * lt)
        .map(|i| {
            if i % lt < tokens {
                rng.uniform() * 8.0 - 4.0
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    let mut attn: Vec<f32> = (0..n * n).map(|_| rng.uniform()).collect();
    for row in attn.chunks_exact_mut(n) {
        let s: f32 = row.iter().sum();
        row.iter_mut().for_each(|x| *x /= s);
    }
    let mut keep_idx = vec![0i64; keep];
    let mut gate = vec![0.0f32; n];
    c.bench_function("query_prune/900_to_450", |b| {
        b.iter(|| {
            query_prune(
                black_box(&logits),
                black_box(&attn),
                1,
                n,
                lt,
                keep,
                &mut keep_idx,
                &mut gate,
            )
            .unwrap();
            black_box(&keep_idx);
        })
    });
}

criterion_group!(benches, bench_msda, bench_prune);
criterion_main!(benches);
