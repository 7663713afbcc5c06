//! Timing of the CUDA kernels at ReferDINO's real sizes (feature `cuda`, needs a GPU):
//! optimized vs naive (one thread per output) MSDeformAttn kernel vs the main crate's CPU kernel, fp32
//! and fp16, and QueryPrune GPU vs CPU. Run: `cargo bench -p referdino-plugins --features cuda --bench cuda_kernels`.
//! Prints one line per case; exits 0 with a message when there is no GPU.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::*;
use referdino::ops::msdeform::{ms_deform_attn, MsDeformDims};
use referdino::ops::prune::query_prune;
use referdino_plugins::kernels::{IndexType, MsdaVariant};

/// Mean milliseconds per call of `f` after warm-up, over about `budget_ms` of work.
fn time_ms(mut f: impl FnMut(), budget_ms: f64) -> f64 {
    f();
    let t0 = Instant::now();
    f();
    let one = t0.elapsed().as_secs_f64() * 1e3;
    let iters = ((budget_ms / one.max(1e-3)) as usize).clamp(3, 2000);
    let t0 = Instant::now();
    for _ in 0..iters {
        f();
    }
    t0.elapsed().as_secs_f64() * 1e3 / iters as f64
}

fn main() {
    let g = match gpu() {
        Ok(g) => g,
        Err(reason) => {
            println!("cuda_kernels bench skipped: {reason}");
            return;
        }
    };
    let name = g.ctx.name().unwrap_or_default();
    println!(
        "device: {name} ({}), kernels compiled by NVRTC for {}",
        g.ctx.cu_device(),
        g.kernels.arch()
    );
    println!(
        "{:<36} {:>12} {:>12} {:>12} {:>12} {:>9}",
        "MSDeformAttn case", "opt f32 ms", "naive f32 ms", "opt f16 ms", "CPU ms", "naive/opt"
    );
    for (case_name, c) in MsdaCase::real_sizes() {
        let mut f32dev = MsdaDev::<f32>::upload(&g, &c, IndexType::I64);
        let mut f16dev = MsdaDev::<half::f16>::upload(&g, &c, IndexType::I64);
        let sync = || g.stream.synchronize().unwrap();
        let opt = time_ms(
            || {
                f32dev.launch(&g, MsdaVariant::Optimized);
                sync();
            },
            300.0,
        );
        let naive = time_ms(
            || {
                f32dev.launch(&g, MsdaVariant::Naive);
                sync();
            },
            300.0,
        );
        let half = time_ms(
            || {
                f16dev.launch(&g, MsdaVariant::Optimized);
                sync();
            },
            300.0,
        );
        let d = c.dims;
        let dims = MsDeformDims {
            batch: d.batch,
            num_value: d.num_value,
            heads: d.heads,
            head_dim: d.head_dim,
            num_query: d.num_query,
            levels: d.levels,
            points: d.points,
        };
        let mut out = vec![0f32; d.out_len()];
        let cpu = time_ms(
            || {
                ms_deform_attn(
                    &c.value, &c.shapes, &c.starts, &c.loc, &c.weights, dims, &mut out,
                )
                .unwrap()
            },
            1000.0,
        );
        println!(
            "{case_name:<36} {opt:>12.4} {naive:>12.4} {half:>12.4} {cpu:>12.3} {:>9.2}",
            naive / opt
        );
    }
    println!(
        "{:<36} {:>12} {:>12}",
        "QueryPrune case", "GPU ms", "CPU ms"
    );
    let mut n: usize = 900;
    while n > 15 {
        let keep = n.div_ceil(2);
        let c = PruneCase::random(1, n, 256, 12, keep, n as u64);
        let mut dev = PruneDev::upload(&g, &c);
        let gpu_ms = time_ms(
            || {
                dev.launch(&g);
                g.stream.synchronize().unwrap();
            },
            200.0,
        );
        let (mut k, mut gt) = (vec![0i64; keep], vec![0f32; n]);
        let cpu_ms = time_ms(
            || query_prune(&c.logits, &c.attn, 1, n, 256, keep, &mut k, &mut gt).unwrap(),
            300.0,
        );
        println!(
            "{:<36} {gpu_ms:>12.4} {cpu_ms:>12.3}",
            format!("N={n} K={keep} Lt=256")
        );
        n = keep;
    }
    println!(
        "(GPU times include one stream synchronize per call: launch latency is part of the number)"
    );
}
