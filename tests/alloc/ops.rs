//! The kernels allocate nothing per call (checked with a counting global allocator, after warm-up,
//! including the multi-threaded rayon path). The test runs alone in a process of its own so no other
//! test thread allocates while counting.

use crate::counter::{all_threads, in_own_process};
use referdino::ops::{ms_deform_attn, query_prune, Hungarian, MsDeformDims};

#[test]
fn kernels_do_not_allocate_per_call() {
    if !in_own_process(concat!(
        module_path!(),
        "::kernels_do_not_allocate_per_call"
    )) {
        return;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    // MSDA: 2 levels, enough queries for several parallel chunks.
    let d = MsDeformDims {
        batch: 1,
        num_value: 20 * 30 + 10 * 15,
        heads: 8,
        head_dim: 32,
        num_query: 300,
        levels: 2,
        points: 4,
    };
    let taps = d.num_query * d.heads * d.levels * d.points;
    let value = vec![0.5f32; d.num_value * d.heads * d.head_dim];
    let locs: Vec<f32> = (0..2 * taps).map(|i| (i % 97) as f32 / 90.0).collect();
    let attn = vec![0.125f32; taps];
    let (shapes, starts) = ([20i64, 30, 10, 15], [0i64, 600]);
    let mut out = vec![0.0f32; d.num_query * d.heads * d.head_dim];
    // Prune: N = 40 → 20.
    let (n, lt, keep) = (40, 12, 20);
    let logits: Vec<f32> = (0..n * lt)
        .map(|i| ((i * 37) % 101) as f32 / 10.0)
        .collect();
    let sa: Vec<f32> = (0..n * n)
        .map(|i| ((i * 13) % 31) as f32 / 31.0 / n as f32)
        .collect();
    let (mut idx, mut gate) = (vec![0i64; keep], vec![0f32; n]);
    // Hungarian 15×15.
    let cost: Vec<f32> = (0..225)
        .map(|i| ((i * 7919) % 113) as f32 / 113.0)
        .collect();
    let mut h = Hungarian::new(15);
    let mut perm = vec![0usize; 15];

    pool.install(|| {
        // Warm-up: lazy CPU-feature detection and the rayon workers' first steals (per-thread
        // registration in the work-stealing deques allocates once per thread).
        for _ in 0..10 {
            ms_deform_attn(&value, &shapes, &starts, &locs, &attn, d, &mut out).unwrap();
            query_prune(&logits, &sa, 1, n, lt, keep, &mut idx, &mut gate).unwrap();
            h.solve(&cost, &mut perm).unwrap();
        }
        let count = |f: &mut dyn FnMut()| {
            let before = all_threads().0;
            for _ in 0..20 {
                f();
            }
            all_threads().0 - before
        };
        let m = count(&mut || {
            ms_deform_attn(&value, &shapes, &starts, &locs, &attn, d, &mut out).unwrap()
        });
        let q =
            count(&mut || query_prune(&logits, &sa, 1, n, lt, keep, &mut idx, &mut gate).unwrap());
        let s = count(&mut || h.solve(&cost, &mut perm).unwrap());
        assert_eq!(
            (m, q, s),
            (0, 0, 0),
            "allocations in 20 calls of msda, prune, hungarian"
        );
    });
    assert!(out.iter().any(|&x| x != 0.0), "the MSDA call did work");
}
