//! GMAC per engine and CPU time per frame of the split frame engine (`image` once + `cross` batched
//! over B objects) against the `frame` engine, at Swin-T 360×640 with seeded random weights.
//!
//! `cargo run --release --example split_cost -- [THREADS] [ITERS] [BATCHES]`
//! (defaults: 2 threads, 3 timed iterations after one warm-up, batches `1,2,4`). Prints one table.

use referdino::backend::cpu::CpuBackend;
use referdino::config::ModelConfig;
use referdino::graph::engines::{
    build_cross, build_frame, build_image, names as n, Geometry, NetParams,
};
use referdino::onnx::builder::{Graph, GraphOptions};
use referdino::onnx::cost::{cost_report, StageRule};
use referdino::pipeline::session::Bound;
use referdino::tensor::{Data, Tensor};
use referdino::weights::random::random_weights;
use std::time::Instant;

/// 10 real tokens of an 11-token profile: `[CLS] w1..w8 . [SEP]`-like, one pad.
const TOKENS: usize = 10;
const MAX_TEXT: usize = 11;

/// GMAC of a graph (a second build of it: building consumes the graph).
fn gmac(g: Graph) -> f64 {
    let model = g.into_model();
    let r = cost_report(&model, &StageRule::spec_rows(), 1).expect("cost report");
    r.total.macs as f64 / 1e9
}

fn fill(t: &mut Tensor, seed: u64) {
    let mut s = seed;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let shape = t.shape().to_vec();
    let lm = MAX_TEXT;
    let data = match t.data() {
        Data::F32(v) => Data::F32((0..v.len()).map(|_| next()).collect()),
        // text_token_mask [B,Lm]: TOKENS real; self-attention mask [B,Lm,Lm]: one sub-sentence
        Data::Bool(v) if shape.len() == 2 => {
            Data::Bool((0..v.len()).map(|i| i % lm < TOKENS).collect())
        }
        Data::Bool(v) => Data::Bool(
            (0..v.len())
                .map(|i| {
                    let (a, b) = ((i / lm) % lm, i % lm);
                    a == b || (a < TOKENS && b < TOKENS)
                })
                .collect(),
        ),
        Data::I64(v) => Data::I64(
            (0..v.len())
                .map(|i| ((i % lm) as i64).min(TOKENS as i64 - 1))
                .collect(),
        ),
        other => other.clone(),
    };
    *t = Tensor::new(shape, data).expect("same shape");
}

/// CPU time of this process (all threads), in milliseconds.
fn cpu_ms() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is a valid, writable `rusage`; getrusage only writes into it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return f64::NAN;
    }
    // SAFETY: getrusage returned 0, so it filled the struct (and it was zeroed before).
    let ru = unsafe { ru.assume_init() };
    let t = |v: libc::timeval| v.tv_sec as f64 * 1e3 + v.tv_usec as f64 / 1e3;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Median wall-clock and median CPU milliseconds (all threads) of `iters` runs after one warm-up. On a
/// shared machine the CPU time is the steadier measure of the work an engine does.
fn time(b: &mut Bound, iters: usize) -> (f64, f64) {
    b.run().expect("warm-up run");
    let (mut wall, mut cpu): (Vec<f64>, Vec<f64>) = (0..iters)
        .map(|_| {
            let (t, c) = (Instant::now(), cpu_ms());
            b.run().expect("run");
            (t.elapsed().as_secs_f64() * 1e3, cpu_ms() - c)
        })
        .unzip();
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    (wall[wall.len() / 2], cpu[cpu.len() / 2])
}

fn load(cpu: &CpuBackend, g: Graph) -> Bound {
    let name = g.name().to_string();
    let specs: Vec<String> = g.input_specs().iter().map(|s| s.name.clone()).collect();
    let mut b = Bound::new(cpu.load_bytes(&name, &g.to_bytes()).expect("load"));
    for (i, k) in specs.iter().enumerate() {
        fill(b.input_mut(k).expect("input"), 17 + i as u64);
    }
    b
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let iters: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3).max(1);
    let batches: Vec<usize> = args
        .get(3)
        .map(|a| a.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4]);
    let cfg = ModelConfig::swin_t();
    let geo = Geometry {
        height: 360,
        width: 640,
        max_text: MAX_TEXT,
        window: 36,
    };
    let w = random_weights(&cfg, 7).unwrap();
    let p = NetParams::new(&cfg, &geo).expect("params");
    let opts = GraphOptions {
        taps: false,
        decompose_custom_ops: false,
    };
    let cpu = CpuBackend::with_threads(threads).expect("cpu backend");
    println!("Swin-T 360x640, {TOKENS} tokens (max_text {MAX_TEXT}), random weights, CPU backend {threads} threads, median of {iters} runs (wall ms, CPU ms of all threads)");
    println!(
        "{:<16} {:>8} {:>12} {:>12}",
        "engine", "GMAC", "wall ms", "CPU ms"
    );

    let frame_gmac = gmac(build_frame(&w, &p, &geo, &opts).expect("frame"));
    let mut fb = load(&cpu, build_frame(&w, &p, &geo, &opts).expect("frame"));
    let (fm, fc) = time(&mut fb, iters);
    drop(fb);
    println!(
        "{:<16} {:>8.2} {:>12.1} {:>12.1}",
        "frame (B=1)", frame_gmac, fm, fc
    );

    let image_gmac = gmac(build_image(&w, &p, &geo, &opts).expect("image"));
    let mut ib = load(&cpu, build_image(&w, &p, &geo, &opts).expect("image"));
    let (im, ic) = time(&mut ib, iters);
    let tokens = ib.output(n::IMAGE_TOKENS).expect("tokens").clone();
    let s4 = ib.output(n::STRIDE4).expect("stride4").clone();
    drop(ib);
    println!(
        "{:<16} {:>8.2} {:>12.1} {:>12.1}",
        "image", image_gmac, im, ic
    );

    let mut one = None;
    for &b in &batches {
        let cg = gmac(build_cross(&w, &p, &geo, b, &opts).expect("cross"));
        let mut cb = load(&cpu, build_cross(&w, &p, &geo, b, &opts).expect("cross"));
        *cb.input_mut(n::IMAGE_TOKENS).expect("tokens") = tokens.clone();
        *cb.input_mut(n::STRIDE4).expect("stride4") = s4.clone();
        let (cm, cc) = time(&mut cb, iters);
        drop(cb);
        let (wall, cpu) = (im + cm, ic + cc);
        let (w1, c1) = *one.get_or_insert((wall, cpu));
        println!(
            "{:<16} {:>8.2} {:>12.1} {:>12.1}   image+cross: GMAC {:.2} ({:.2}x frame); wall {:.0} ms ({:.2}x frame, {:.2}x one object); CPU {:.0} ms ({:.2}x frame, {:.2}x one object)",
            format!("cross B={b}"),
            cg,
            cm,
            cc,
            image_gmac + cg,
            (image_gmac + cg) / frame_gmac,
            wall,
            wall / fm,
            wall / w1,
            cpu,
            cpu / fc,
            cpu / c1,
        );
    }
}
