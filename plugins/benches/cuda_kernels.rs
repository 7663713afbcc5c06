//! Timing of the CUDA kernels at ReferDINO's real sizes (feature `cuda`, needs a GPU): MSDeformAttn
//! (optimized fp32/fp16, naive fp32, and the main crate's CPU kernel), QueryPrune (GPU and CPU), the frame
//! preprocessing and the mask composition (into device memory and into mapped host memory).
//!
//! Run: `cargo bench -p referdino-plugins --features cuda --bench cuda_kernels`; the GPU check kit
//! (`plugins/gpu-kit/`) runs the prebuilt binary. Prints a table; with `REFERDINO_BENCH_JSON=PATH` also
//! writes every figure there. Exits 0 with a message when there is no GPU.
//!
//! GPU times are kernel time per call from CUDA events around a run of back-to-back launches (median of 5
//! runs), the same method the kit uses for the official kernel, so the two are comparable.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::*;
use cudarc::driver::sys::CUevent_flags;
use referdino::camera::convert::Preprocessor;
use referdino::ops::prune::query_prune;
use referdino::pipeline::labels::LabelUpsampler;
use referdino_plugins::dims::FrameFormat;
use referdino_plugins::kernels::{IndexType, MsdaVariant, TrackTable};
use serde_json::{json, Value};

/// Microseconds per call of `f` (which only enqueues work on the bench stream): median over 5 runs of
/// back-to-back launches between two CUDA events, each run about 50 ms long.
fn gpu_us(g: &Gpu, mut f: impl FnMut()) -> f64 {
    let ev = || {
        g.ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap()
    };
    let (start, end) = (ev(), ev());
    let mut run = |n: usize| {
        start.record(&g.stream).unwrap();
        for _ in 0..n {
            f();
        }
        end.record(&g.stream).unwrap();
        start.elapsed_ms(&end).unwrap() as f64 * 1e3 / n as f64
    };
    run(3);
    let one = run(5).max(0.5);
    let n = ((50_000.0 / one) as usize).clamp(5, 20_000);
    let mut v: Vec<f64> = (0..5).map(|_| run(n)).collect();
    v.sort_by(f64::total_cmp);
    v[2]
}

/// Mean milliseconds per call of a CPU function over about `budget_ms`.
fn cpu_ms(mut f: impl FnMut(), budget_ms: f64) -> f64 {
    f();
    let t0 = Instant::now();
    f();
    let one = t0.elapsed().as_secs_f64() * 1e3;
    let iters = ((budget_ms / one.max(1e-3)) as usize).clamp(2, 2000);
    let t0 = Instant::now();
    for _ in 0..iters {
        f();
    }
    t0.elapsed().as_secs_f64() * 1e3 / iters as f64
}

fn msda(g: &Gpu) -> Vec<Value> {
    println!(
        "{:<34} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9} {:>9}",
        "MSDeformAttn",
        "opt f32 us",
        "f32 vec1",
        "naive f32",
        "opt f16 us",
        "f16 vec1",
        "CPU ms",
        "naive/opt"
    );
    let mut rows = Vec::new();
    for (case_name, c) in MsdaCase::real_sizes() {
        let mut f32dev = MsdaDev::<f32>::upload(g, &c, IndexType::I64);
        let mut f16dev = MsdaDev::<half::f16>::upload(g, &c, IndexType::I64);
        let opt = gpu_us(g, || f32dev.launch(g, MsdaVariant::Optimized));
        let naive = gpu_us(g, || f32dev.launch(g, MsdaVariant::Naive));
        let half = gpu_us(g, || f16dev.launch(g, MsdaVariant::Optimized));
        // One channel per thread: the kernel before vectorized loads, for a same-sitting ratio.
        let opt1 = gpu_us(g, || f32dev.launch_vec(g, 1));
        let half1 = gpu_us(g, || f16dev.launch_vec(g, 1));
        let d = c.dims;
        let mut out = vec![0f32; d.out_len()];
        let cpu = cpu_ms(|| c.cpu_into(&mut out), 300.0);
        println!(
            "{case_name:<34} {opt:>11.2} {opt1:>11.2} {naive:>11.2} {half:>11.2} {half1:>11.2} {cpu:>9.3} {:>9.2}",
            naive / opt
        );
        rows.push(json!({
            "case": case_name, "num_query": d.num_query, "num_value": d.num_value, "levels": d.levels,
            "points": d.points, "heads": d.heads, "head_dim": d.head_dim,
            "opt_f32_us": opt, "naive_f32_us": naive, "opt_f16_us": half, "cpu_ms": cpu,
            "opt_f32_vec1_us": opt1, "opt_f16_vec1_us": half1,
        }));
    }
    rows
}

fn prune(g: &Gpu) -> Vec<Value> {
    println!(
        "{:<34} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "QueryPrune", "1-block us", "spread us", "stats us", "select us", "CPU ms"
    );
    let mut rows = Vec::new();
    let mut n: usize = 900;
    while n > 15 {
        let keep = n.div_ceil(2);
        let c = PruneCase::random(1, n, 256, 12, keep, n as u64);
        let mut dev = PruneDev::upload(g, &c);
        let gpu = gpu_us(g, || dev.launch(g));
        let spread = gpu_us(g, || dev.launch_spread(g));
        // The spread variant's two kernels apart: where its time goes.
        let stats = gpu_us(g, || dev.launch_stage(g, 1));
        let select = gpu_us(g, || dev.launch_stage(g, 2));
        let (mut k, mut gt) = (vec![0i64; keep], vec![0f32; n]);
        let cpu = cpu_ms(
            || query_prune(&c.logits, &c.attn, 1, n, 256, keep, &mut k, &mut gt).unwrap(),
            200.0,
        );
        let name = format!("N={n} K={keep} Lt=256");
        println!("{name:<34} {gpu:>11.2} {spread:>11.2} {stats:>11.2} {select:>11.2} {cpu:>11.3}");
        rows.push(json!({
            "case": name, "n": n, "keep": keep, "gpu_us": gpu, "spread_us": spread,
            "stats_us": stats, "select_us": select, "cpu_ms": cpu,
        }));
        n = keep;
    }
    rows
}

fn preprocess(g: &Gpu) -> Vec<Value> {
    println!(
        "{:<34} {:>11} {:>11}",
        "preprocess (frame in mapped mem)", "GPU us", "CPU ms"
    );
    let mut rows = Vec::new();
    for (format, w, h) in [
        (FrameFormat::Yuyv, 1280, 720),
        (FrameFormat::Rgb24, 1920, 1080),
        (FrameFormat::Yuyv, 640, 360),
    ] {
        let (frame, stride, rgb) = random_frame(format, w, h, 0, 3);
        let mut pre = Preprocessor::to_size(w as u32, h as u32, 640, 360);
        let mut dev = PreDev::new(g, &pre, format, stride);
        dev.frame.bytes().copy_from_slice(&frame);
        let gpu = gpu_us(g, || dev.launch(g));
        let mut out = vec![0f32; pre.out_len()];
        let cpu = cpu_ms(|| pre.run(&rgb, &mut out).unwrap(), 200.0);
        let name = format!("{format:?} {w}x{h} -> 640x360");
        println!("{name:<34} {gpu:>11.2} {cpu:>11.3}");
        rows.push(json!({"case": name, "gpu_us": gpu, "cpu_ms_after_decode": cpu}));
    }
    rows
}

fn labels(g: &Gpu) -> Vec<Value> {
    println!(
        "{:<34} {:>11} {:>11} {:>11}",
        "mask labels 90x160 -> 360x640", "device us", "mapped us", "CPU ms"
    );
    let mut rows = Vec::new();
    for tracks in [1usize, 3, 15] {
        let mut rng = Rng::new(tracks as u64);
        let logits: Vec<f32> = (0..tracks * 90 * 160)
            .map(|_| rng.range(-1.0, 1.0))
            .collect();
        let mut up = LabelUpsampler::new(90, 160, 360, 640).unwrap();
        let mut dev = LabelDev::new(g, &up, &logits, tracks);
        let ids: Vec<u8> = (1..=tracks as u8).collect();
        let scores: Vec<f32> = (0..tracks).map(|t| t as f32 * 0.1).collect();
        let table = TrackTable::best_score(&ids, &scores).unwrap();
        let mut in_dev = g.stream.alloc_zeros::<u8>(360 * 640).unwrap();
        let mapped = Mapped::new(g, 360 * 640);
        let dptr = {
            use cudarc::driver::DevicePtrMut;
            in_dev.device_ptr_mut(&g.stream).0
        };
        // SAFETY: both targets hold 360*640 bytes and outlive the timed launches (synchronised by
        // the events before they drop).
        let device = gpu_us(g, || unsafe { dev.launch(g, &table, dptr) });
        // SAFETY: as above.
        let host = gpu_us(g, || unsafe { dev.launch(g, &table, mapped.dev) });
        let mut mask = vec![0u8; 360 * 640];
        let mut owner = vec![f32::NEG_INFINITY; 360 * 640];
        let cpu = cpu_ms(
            || {
                mask.fill(0);
                owner.fill(f32::NEG_INFINITY);
                for t in 0..tracks {
                    let m = &logits[t * 14400..(t + 1) * 14400];
                    up.label_scored(m, &mut mask, &mut owner, ids[t], scores[t])
                        .unwrap();
                }
            },
            200.0,
        );
        let name = format!("{tracks} track(s)");
        println!("{name:<34} {device:>11.2} {host:>11.2} {cpu:>11.3}");
        rows.push(json!({"case": name, "tracks": tracks, "device_us": device, "mapped_us": host, "cpu_ms": cpu}));
    }
    rows
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
        "device: {name}, kernels compiled by NVRTC {:?} for {}",
        referdino_plugins::kernels::nvrtc_version().ok(),
        g.kernels.arch()
    );
    let report = json!({
        "device": name,
        "arch": g.kernels.arch(),
        "nvrtc": referdino_plugins::kernels::nvrtc_version().ok(),
        "cpu_threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "msdeform": msda(&g),
        "query_prune": prune(&g),
        "preprocess": preprocess(&g),
        "mask_labels": labels(&g),
    });
    if let Ok(path) = std::env::var("REFERDINO_BENCH_JSON") {
        std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap())
            .unwrap_or_else(|e| panic!("write {path}: {e}"));
        println!("wrote {path}");
    }
}
