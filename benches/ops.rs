//! Speed of the custom-op kernels, and of the CPU backend's linear-layer and convolution kernels, at
//! ReferDINO's Swin-T shapes (360×640 input).
//!
//! `RAYON_NUM_THREADS=2 cargo bench --bench ops -- --warm-up-time 1 --measurement-time 3`
//! (`-- linear` for the linear layers and convolutions alone; each on every product kernel this CPU
//! runs, `…/avx2` and `…/avx512`)
//!
//! Every case is measured twice: wall-clock time (group `wall`) and CPU time of the whole process,
//! summed over threads (group `cpu`). On a shared, overloaded machine the wall time mostly measures
//! the other tenants; CPU time per call stays close to what an idle machine gives on one thread.

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput};
use referdino::ops::conv::{conv2d, Conv2dGeometry};
use referdino::ops::linear::{with_kernel, Kernel};
use referdino::ops::{linear, ms_deform_attn, query_prune, Epilogue, MsDeformDims, PackedWeights};
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

/// Where the sampling points of each query lie.
#[derive(Clone, Copy)]
enum Locations {
    /// Encoder self-attention: query `q` is pixel `q` of the flattened levels and samples every level
    /// within ±4 pixels of that level around its own position (offsets are in level pixels).
    EncoderLocal,
    /// Decoder / mask decoder: each query has a random box (centre in [0,1], size 0.02–0.3) and samples
    /// inside it, as `ref + Δ/P·wh/2` does.
    InBox,
    /// Worst case for caches: every point uniform in [−0.1, 1.1]².
    Uniform,
}

fn msda_case(
    levels: &[(i64, i64)],
    num_query: usize,
    points: usize,
    where_: Locations,
) -> MsdaCase {
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
    let nl = levels.len();
    let taps = num_query * heads * nl * points;
    let value = (0..dims.num_value * heads * head_dim)
        .map(|_| rng.uniform() - 0.5)
        .collect();
    let mut locs = vec![0.0f32; 2 * taps];
    for q in 0..num_query {
        // Centre (normalised) and spread (normalised, per level) of this query's points.
        let (cx, cy, box_w, box_h) = match where_ {
            Locations::EncoderLocal => {
                let (mut lq, mut i) = (0, q as i64);
                while lq + 1 < nl && i >= levels[lq].0 * levels[lq].1 {
                    i -= levels[lq].0 * levels[lq].1;
                    lq += 1;
                }
                let (h, w) = levels[lq];
                (
                    ((i % w) as f32 + 0.5) / w as f32,
                    ((i / w) as f32 + 0.5) / h as f32,
                    0.0,
                    0.0,
                )
            }
            Locations::InBox => (
                rng.uniform(),
                rng.uniform(),
                0.02 + 0.28 * rng.uniform(),
                0.02 + 0.28 * rng.uniform(),
            ),
            Locations::Uniform => (0.0, 0.0, 0.0, 0.0),
        };
        for h in 0..heads {
            for (l, &(lh, lw)) in levels.iter().enumerate() {
                for p in 0..points {
                    let t = ((q * heads + h) * nl + l) * points + p;
                    let (du, dv) = (rng.uniform() - 0.5, rng.uniform() - 0.5);
                    let (x, y) = match where_ {
                        Locations::EncoderLocal => {
                            (cx + 8.0 * du / lw as f32, cy + 8.0 * dv / lh as f32)
                        }
                        Locations::InBox => (cx + du * box_w, cy + dv * box_h),
                        Locations::Uniform => (1.2 * du + 0.5, 1.2 * dv + 0.5),
                    };
                    locs[2 * t] = x;
                    locs[2 * t + 1] = y;
                }
            }
        }
    }
    let norm = 1.0 / (nl * points) as f32;
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

/// Process CPU time (all threads), in nanoseconds.
struct CpuTime;

fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_PROCESS_CPUTIME_ID is always supported on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        process_cpu_ns()
    }
    fn end(&self, i: u64) -> u64 {
        process_cpu_ns().saturating_sub(i)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (div, unit) = if typical < 1e3 {
            (1.0, "ns cpu")
        } else if typical < 1e6 {
            (1e3, "µs cpu")
        } else {
            (1e6, "ms cpu")
        };
        values.iter_mut().for_each(|v| *v /= div);
        unit
    }
    fn scale_throughputs(
        &self,
        _typical: f64,
        _t: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        values.iter_mut().for_each(|v| *v = f64::NAN);
        "n/a"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn bench_msda<M: Measurement + 'static>(c: &mut Criterion<M>, tag: &str) {
    let swin = [(45, 80), (23, 40), (12, 20), (6, 10)];
    let cases = [
        (
            "ms_deform_attn/encoder_4820q",
            msda_case(&swin, 4820, 4, Locations::EncoderLocal),
        ),
        (
            "ms_deform_attn/encoder_4820q_uniform",
            msda_case(&swin, 4820, 4, Locations::Uniform),
        ),
        (
            "ms_deform_attn/decoder_900q",
            msda_case(&swin, 900, 4, Locations::InBox),
        ),
        (
            "ms_deform_attn/mask_decoder_15q_16p",
            msda_case(&[(90, 160)], 15, 16, Locations::InBox),
        ),
    ];
    for (name, mut k) in cases {
        c.bench_function(&format!("{tag}/{name}"), |b| {
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

fn bench_prune<M: Measurement + 'static>(c: &mut Criterion<M>, tag: &str) {
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
    c.bench_function(&format!("{tag}/query_prune/900_to_450"), |b| {
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

/// The product kernels this CPU runs, other than the portable one (AVX2 against AVX-512 in one
/// sitting where both run).
fn kernels() -> Vec<Kernel> {
    [Kernel::Avx2, Kernel::Avx512]
        .into_iter()
        .filter(|k| k.available())
        .collect()
}

/// The frame engine's largest linear layers: name, tokens, k, n, ReLU after the bias.
const LINEAR_SHAPES: &[(&str, usize, usize, usize, bool)] = &[
    ("encoder_ffn1_4820x256x2048_relu", 4820, 256, 2048, true),
    ("encoder_ffn2_4820x2048x256", 4820, 2048, 256, false),
    ("encoder_proj_4820x256x256", 4820, 256, 256, false),
    ("swin_qkv_1176x384x1152", 1176, 384, 1152, false),
];

/// The frame engine's largest linear layers (`[tokens, k] · [k, n]` + bias) and its two
/// convolutions that tract ran as direct convolutions (src/ops/linear/, src/ops/conv.rs).
fn bench_linear<M: Measurement + 'static>(c: &mut Criterion<M>, tag: &str) {
    let mut rng = Rng(0x853c49e6748fea9b);
    for &(name, m, k, n, relu) in LINEAR_SHAPES {
        let x: Vec<f32> = (0..m * k).map(|_| rng.uniform() - 0.5).collect();
        let w: Vec<f32> = (0..k * n).map(|_| rng.uniform() - 0.5).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.uniform() - 0.5).collect();
        let w = PackedWeights::pack(&w, k, n).unwrap();
        let mut y = vec![0.0f32; m * n];
        let mut g = c.benchmark_group(format!("{tag}/linear"));
        g.throughput(Throughput::Elements((m * k * n) as u64));
        for kernel in kernels() {
            g.bench_function(format!("{name}/{}", kernel.name()), |bch| {
                bch.iter(|| {
                    let ep = Epilogue {
                        bias: Some(&b),
                        relu,
                        ..Epilogue::default()
                    };
                    with_kernel(kernel, || linear(black_box(&x), m, &w, ep, &mut y).unwrap())
                        .unwrap();
                    black_box(&y);
                })
            });
        }
        g.finish();
    }
    let conv = |c_in, h, w, c_out, k, s, p| Conv2dGeometry {
        n: 1,
        c_in,
        h,
        w,
        c_out,
        kh: k,
        kw: k,
        stride: [s, s],
        dilation: [1, 1],
        pad: [p, p],
        oh: (h + 2 * p - k) / s + 1,
        ow: (w + 2 * p - k) / s + 1,
    };
    for (name, g) in [
        (
            "conv_patch_embed_3x360x640_4x4s4",
            conv(3, 360, 640, 96, 4, 4, 0),
        ),
        ("conv_3x3_16to256_90x160", conv(16, 90, 160, 256, 3, 1, 1)),
    ] {
        let x: Vec<f32> = (0..g.c_in * g.h * g.w)
            .map(|_| rng.uniform() - 0.5)
            .collect();
        let kern: Vec<f32> = (0..g.c_out * g.patch())
            .map(|_| rng.uniform() - 0.5)
            .collect();
        let mut scratch = vec![0.0f32; g.scratch_len()];
        let mut y = vec![0.0f32; g.c_out * g.oh * g.ow];
        for kernel in kernels() {
            c.bench_function(&format!("{tag}/linear/{name}/{}", kernel.name()), |bch| {
                bch.iter(|| {
                    with_kernel(kernel, || {
                        conv2d(black_box(&x), &g, &kern, None, &mut scratch, &mut y).unwrap()
                    })
                    .unwrap();
                    black_box(&y);
                })
            });
        }
    }
}

/// The same linear layers on the integer kernels (src/ops/qlinear.rs): the activation's
/// quantization, then the product with the uint8 input, each kernel this CPU runs.
fn bench_qlinear<M: Measurement + 'static>(c: &mut Criterion<M>, tag: &str) {
    use referdino::ops::qlinear::{qlinear_on, quantize_u8, QKernel, QPackedWeights};
    let mut rng = Rng(0x2545f4914f6cdd1d);
    for &(name, m, k, n, relu) in LINEAR_SHAPES {
        let x: Vec<f32> = (0..m * k).map(|_| rng.uniform() - 0.5).collect();
        let w: Vec<f32> = (0..k * n).map(|_| rng.uniform() - 0.5).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.uniform() - 0.5).collect();
        let w = QPackedWeights::quantize(&w, k, n, &vec![0.5 / 127.0; n]).unwrap();
        let mut xq = vec![0u8; m * k];
        let mut y = vec![0.0f32; m * n];
        let mut g = c.benchmark_group(format!("{tag}/qlinear"));
        g.throughput(Throughput::Elements((m * k * n) as u64));
        g.bench_function(format!("{name}/quantize"), |bch| {
            bch.iter(|| quantize_u8(black_box(&x), 0.5 / 127.0, &mut xq).unwrap())
        });
        for kernel in [QKernel::Vnni512, QKernel::Amx] {
            if !kernel.available() {
                continue;
            }
            g.bench_function(format!("{name}/{}", kernel.name()), |bch| {
                bch.iter(|| {
                    let ep = Epilogue {
                        bias: Some(&b),
                        relu,
                        ..Epilogue::default()
                    };
                    qlinear_on(kernel, black_box(&xq), m, &w, 0.5 / 127.0, ep, &mut y).unwrap();
                    black_box(&y);
                })
            });
        }
        g.finish();
    }
}

/// The attention products of an INT8 engine (src/ops/qmatmul.rs): float products of the two
/// fake-quantized operands (what tract ran before) against the integer product that quantizes and
/// packs them itself, at Swin-T's and the decoder's shapes (`kᵀ` read as a transposed view).
fn bench_qmatmul<M: Measurement + 'static>(c: &mut Criterion<M>, tag: &str) {
    use referdino::ops::matmul::{matmul_strided, Layout, MatMulShapes};
    use referdino::ops::qlinear::QKernel;
    use referdino::ops::qmatmul::{qmatmul_strided, scratch_len};
    let mut rng = Rng(0x9e3779b97f4a7c15);
    // (name, a shape, b shape, b a transposed view)
    let shapes: [(&str, [usize; 3], [usize; 3], bool); 4] = [
        ("swin_qk_897x49x32x49", [897, 49, 32], [897, 32, 49], true),
        ("swin_av_897x49x49x32", [897, 49, 49], [897, 49, 32], false),
        ("decoder_qk_8x900x32x900", [8, 900, 32], [8, 32, 900], true),
        (
            "decoder_av_8x900x900x32",
            [8, 900, 900],
            [8, 900, 32],
            false,
        ),
    ];
    for (name, sa, sb, transposed) in shapes {
        let s = MatMulShapes::new(&sa, &sb).unwrap();
        let a: Vec<f32> = (0..sa.iter().product::<usize>())
            .map(|_| rng.uniform() - 0.5)
            .collect();
        let b: Vec<f32> = (0..sb.iter().product::<usize>())
            .map(|_| rng.uniform() - 0.5)
            .collect();
        let la = s.a_layout();
        let lb = if transposed {
            Layout {
                batch: vec![s.k * s.n],
                row: 1,
                col: s.k,
            }
        } else {
            s.b_layout()
        };
        let mut scratch = vec![0.0f32; scratch_len(&s).max(s.scratch_len())];
        let mut y = vec![0.0f32; s.items() * s.m * s.n];
        let mut g = c.benchmark_group(format!("{tag}/qmatmul"));
        g.throughput(Throughput::Elements((s.items() * s.m * s.k * s.n) as u64));
        g.bench_function(format!("{name}/f32"), |bch| {
            bch.iter(|| {
                matmul_strided(black_box(&a), &la, &b, &lb, &s, &mut scratch, &mut y).unwrap();
                black_box(&y);
            })
        });
        for kernel in [QKernel::Vnni512, QKernel::Amx, QKernel::Dotprod] {
            if !kernel.available() {
                continue;
            }
            g.bench_function(format!("{name}/{}", kernel.name()), |bch| {
                bch.iter(|| {
                    let (sa, sb) = (0.5 / 127.0, 0.5 / 127.0);
                    qmatmul_strided(
                        kernel,
                        black_box(&a),
                        &la,
                        sa,
                        &b,
                        &lb,
                        sb,
                        &s,
                        &mut scratch,
                        &mut y,
                    )
                    .unwrap();
                    black_box(&y);
                })
            });
        }
        g.finish();
    }
}

fn main() {
    let mut wall: Criterion<WallTime> = Criterion::default().configure_from_args();
    let mut cpu: Criterion<CpuTime> = Criterion::default()
        .with_measurement(CpuTime)
        .configure_from_args();
    eprintln!(
        "RAYON_NUM_THREADS={}, rayon threads {}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into()),
        rayon::current_num_threads()
    );
    bench_msda(&mut wall, "wall");
    bench_prune(&mut wall, "wall");
    bench_linear(&mut wall, "wall");
    bench_qlinear(&mut wall, "wall");
    bench_qmatmul(&mut wall, "wall");
    bench_msda(&mut cpu, "cpu");
    bench_prune(&mut cpu, "cpu");
    bench_linear(&mut cpu, "cpu");
    bench_qlinear(&mut cpu, "cpu");
    bench_qmatmul(&mut cpu, "cpu");
    wall.final_summary();
    cpu.final_summary();
}
