//! `Hungarian` against brute force and the fixture tracker permutations.

use crate::support::common;

use common::{f32s, i64s};

use referdino::ops::Hungarian;
use safetensors::SafeTensors;
use std::path::PathBuf;

/// Minimum total cost over all permutations (Heap's algorithm).
fn brute_force(cost: &[f32], n: usize) -> f64 {
    let mut p: Vec<usize> = (0..n).collect();
    let total = |p: &[usize]| (0..n).map(|i| cost[i * n + p[i]] as f64).sum::<f64>();
    let mut best = total(&p);
    let mut c = vec![0usize; n];
    let mut i = 0;
    while i < n {
        if c[i] < i {
            if i % 2 == 0 {
                p.swap(0, i);
            } else {
                p.swap(c[i], i);
            }
            best = best.min(total(&p));
            c[i] += 1;
            i = 0;
        } else {
            c[i] = 0;
            i += 1;
        }
    }
    best
}

#[test]
fn optimal_against_brute_force() {
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut rnd = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for n in 1..=7 {
        let mut h = Hungarian::new(n);
        for trial in 0..60 {
            // Alternate continuous costs and small integers (many ties, several optima).
            let cost: Vec<f32> = (0..n * n)
                .map(|_| {
                    let r = rnd();
                    if trial % 2 == 0 {
                        (r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
                    } else {
                        (r % 4) as f32
                    }
                })
                .collect();
            let mut p = vec![usize::MAX; n];
            h.solve(&cost, &mut p).unwrap();
            let mut seen = vec![false; n];
            for &j in &p {
                assert!(j < n && !seen[j], "not a permutation: {p:?}");
                seen[j] = true;
            }
            let got: f64 = (0..n).map(|i| cost[i * n + p[i]] as f64).sum();
            let best = brute_force(&cost, n);
            assert!(
                (got - best).abs() < 1e-9,
                "n={n} trial={trial}: {got} vs optimum {best}"
            );
        }
    }
}

/// F.normalize(eps = 1e-12) then 1 − dot, as the official tracker does.
fn cosine_cost(mem: &[f32], obj: &[f32], n: usize, d: usize) -> Vec<f32> {
    let unit = |v: &[f32]| {
        let norm = v
            .iter()
            .map(|&x| (x as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        v.iter().map(|&x| x as f64 / norm).collect::<Vec<f64>>()
    };
    let m: Vec<Vec<f64>> = mem.chunks_exact(d).map(unit).collect();
    let o: Vec<Vec<f64>> = obj.chunks_exact(d).map(unit).collect();
    let mut c = vec![0.0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            c[i * n + j] = (1.0 - m[i].iter().zip(&o[j]).map(|(a, b)| a * b).sum::<f64>()) as f32;
        }
    }
    c
}

#[test]
fn reproduces_fixture_tracker_permutations() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/referdino-tiny/outputs.safetensors");
    let bytes = std::fs::read(p).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (hs_shape, hs) = f32s(&st, "objects.hs");
    let (t_frames, n, d) = (hs_shape[0], hs_shape[1], hs_shape[2]);
    assert_eq!(t_frames, 3);
    let mut h = Hungarian::new(n);
    for t in 1..t_frames {
        let (ms, mem) = f32s(&st, &format!("tracker.step{t}.memory_in"));
        assert_eq!(ms, vec![n, d]);
        let (_, want) = i64s(&st, &format!("tracker.step{t}.perm"));
        let cost = cosine_cost(&mem, &hs[t * n * d..(t + 1) * n * d], n, d);
        let mut perm = vec![0usize; n];
        h.solve(&cost, &mut perm).unwrap();
        let got: Vec<i64> = perm.iter().map(|&j| j as i64).collect();
        // Neither fixture permutation is the identity, so this cannot pass by accident.
        assert!(want.iter().enumerate().any(|(i, &j)| j != i as i64));
        assert_eq!(got, want, "step {t}");
    }
}
