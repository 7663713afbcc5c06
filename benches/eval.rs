//! J&F speed on DAVIS-sized (480x854) frame pairs.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use referdino::eval::metrics::FrameScorer;
use referdino::eval::score_sequence;

const W: usize = 854;
const H: usize = 480;

fn ellipse(cx: i64, cy: i64, a: i64, b: i64) -> Vec<u8> {
    let mut m = vec![0u8; W * H];
    for y in 0..H as i64 {
        for x in 0..W as i64 {
            m[y as usize * W + x as usize] =
                ((x - cx).pow(2) * b * b + (y - cy).pow(2) * a * a <= a * a * b * b) as u8;
        }
    }
    m
}

fn bench(c: &mut Criterion) {
    let gt = ellipse(400, 240, 150, 90);
    let pred = ellipse(412, 233, 150, 90);
    // A ragged prediction: the ellipse with 5 % of pixels flipped (many boundary pixels).
    let noisy: Vec<u8> = gt
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            v ^ ((((i as u64 * 1_103_515_245 + 12345) % (1 << 31)) >> 8) % 100 < 5) as u8
        })
        .collect();
    let mut s = FrameScorer::new(W, H).unwrap();
    c.bench_function("jf_480x854_ellipse_pair", |b| {
        b.iter(|| s.score(black_box(&pred), black_box(&gt)).unwrap())
    });
    c.bench_function("jf_480x854_noisy_pair", |b| {
        b.iter(|| s.score(black_box(&noisy), black_box(&gt)).unwrap())
    });
    let preds: Vec<Vec<u8>> = (0..32).map(|_| pred.clone()).collect();
    let gts: Vec<Vec<u8>> = (0..32).map(|_| gt.clone()).collect();
    c.bench_function("jf_480x854_sequence_32_frames_rayon", |b| {
        b.iter(|| score_sequence(black_box(&preds), black_box(&gts), W, H).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
