//! Test data shared by the GPU tests, the CUDA bench and the CPU emulation of the kernels
//! (`plugins/emu`): fixtures, a deterministic RNG, random cases at ReferDINO's sizes. No CUDA here.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use referdino::ops::msdeform::{ms_deform_attn, MsDeformDims};
use referdino_plugins::dims::{MsdaDims, PruneDims};
use safetensors::SafeTensors;

/// `tests/fixtures` at the workspace root.
pub fn fixtures() -> PathBuf {
    // The first ancestor of the crate holding tests/fixtures: plugins/ and plugins/emu/ both use this.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("tests/fixtures"))
        .find(|d| d.join("referdino-tiny").is_dir())
        .expect("tests/fixtures/referdino-tiny above the crate")
}

/// A safetensors file held in memory.
pub struct Fixture(Vec<u8>);

impl Fixture {
    pub fn load(rel: &str) -> Fixture {
        Fixture::load_path(&fixtures().join(rel))
    }
    pub fn load_path(p: &Path) -> Fixture {
        Fixture(std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
    }
    fn raw(&self, key: &str) -> (Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.0).expect("safetensors header");
        let t = st
            .tensor(key)
            .unwrap_or_else(|e| panic!("fixture key {key}: {e}"));
        (t.shape().to_vec(), t.data().to_vec())
    }
    pub fn f32(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        let (s, b) = self.raw(key);
        (
            s,
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }
    pub fn i64(&self, key: &str) -> (Vec<usize>, Vec<i64>) {
        let (s, b) = self.raw(key);
        (
            s,
            b.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }
}

/// xorshift64*: deterministic test data without extra dependencies.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32) / (1u64 << 24) as f32
    }
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }
}

/// Divides every row of `len` values by its sum (a softmax of values already exponentiated).
fn normalise_rows(v: &mut [f32], len: usize) {
    for row in v.chunks_mut(len) {
        let sum: f32 = row.iter().sum();
        row.iter_mut().for_each(|x| *x /= sum);
    }
}

/// Feature-map levels of a 360x640 frame (strides 8, 16, 32, 64).
pub const ENCODER_LEVELS: [(i64, i64); 4] = [(45, 80), (23, 40), (12, 20), (6, 10)];

/// Random MSDeformAttn inputs: values N(0,1)-ish, locations in [-0.1, 1.1] (some outside), weights
/// softmax-normalised over L*P like the model's.
pub struct MsdaCase {
    pub dims: MsdaDims,
    pub shapes: Vec<i64>,
    pub starts: Vec<i64>,
    pub value: Vec<f32>,
    pub loc: Vec<f32>,
    pub weights: Vec<f32>,
}

impl MsdaCase {
    pub fn random(
        levels: &[(i64, i64)],
        batch: usize,
        heads: usize,
        head_dim: usize,
        num_query: usize,
        points: usize,
        seed: u64,
    ) -> MsdaCase {
        let mut rng = Rng::new(seed);
        let shapes: Vec<i64> = levels.iter().flat_map(|&(h, w)| [h, w]).collect();
        let mut starts = Vec::new();
        let mut s = 0;
        for &(h, w) in levels {
            starts.push(s);
            s += h * w;
        }
        let dims = MsdaDims {
            batch,
            num_value: s as usize,
            heads,
            head_dim,
            num_query,
            levels: levels.len(),
            points,
        };
        let value = (0..dims.value_len())
            .map(|_| rng.range(-2.0, 2.0))
            .collect();
        let loc = (0..dims.locations_len())
            .map(|_| rng.range(-0.1, 1.1))
            .collect();
        let lp = levels.len() * points;
        let mut weights: Vec<f32> = (0..dims.weights_len())
            .map(|_| rng.range(-2.0, 2.0).exp())
            .collect();
        normalise_rows(&mut weights, lp);
        MsdaCase {
            dims,
            shapes,
            starts,
            value,
            loc,
            weights,
        }
    }

    /// The CPU kernel (`referdino::ops::msdeform::ms_deform_attn`) on this case, into `out`.
    pub fn cpu_into(&self, out: &mut [f32]) {
        let d = self.dims;
        let dims = MsDeformDims {
            batch: d.batch,
            num_value: d.num_value,
            heads: d.heads,
            head_dim: d.head_dim,
            num_query: d.num_query,
            levels: d.levels,
            points: d.points,
        };
        ms_deform_attn(
            &self.value,
            &self.shapes,
            &self.starts,
            &self.loc,
            &self.weights,
            dims,
            out,
        )
        .expect("CPU ms_deform_attn");
    }

    /// The three call shapes of ReferDINO at 360x640 (Swin-T, 256 wide, 8 heads): the encoder's
    /// self-attention over 45x80 + 23x40 + 12x20 + 6x10 = 4820 tokens, the decoder's cross-attention of
    /// 900 queries, the mask decoder's 15 queries over the 90x160 map.
    pub fn real_sizes() -> Vec<(&'static str, MsdaCase)> {
        vec![
            (
                "encoder self-attn Q=4820 L=4 P=4",
                MsdaCase::random(&ENCODER_LEVELS, 1, 8, 32, 4820, 4, 11),
            ),
            (
                "decoder cross-attn Q=900 L=4 P=4",
                MsdaCase::random(&ENCODER_LEVELS, 1, 8, 32, 900, 4, 12),
            ),
            (
                "mask decoder Q=15 L=1 P=16",
                MsdaCase::random(&[(90, 160)], 1, 8, 32, 15, 16, 13),
            ),
        ]
    }
}

/// Random QueryPrune inputs: logits with `valid_tokens` finite columns (rest -inf), row-softmax attention.
pub struct PruneCase {
    pub dims: PruneDims,
    pub logits: Vec<f32>,
    pub attn: Vec<f32>,
}

impl PruneCase {
    pub fn random(
        batch: usize,
        n: usize,
        n_tokens: usize,
        valid_tokens: usize,
        keep: usize,
        seed: u64,
    ) -> PruneCase {
        let mut rng = Rng::new(seed);
        let mut logits = Vec::with_capacity(batch * n * n_tokens);
        for _ in 0..batch * n {
            for k in 0..n_tokens {
                logits.push(if k < valid_tokens {
                    rng.range(-6.0, 6.0)
                } else {
                    f32::NEG_INFINITY
                });
            }
        }
        let mut attn: Vec<f32> = (0..batch * n * n)
            .map(|_| rng.range(-3.0, 3.0).exp())
            .collect();
        normalise_rows(&mut attn, n);
        PruneCase {
            dims: PruneDims {
                batch,
                n,
                n_tokens,
                keep,
            },
            logits,
            attn,
        }
    }
}

/// Max |a-b| and the max allowed by |a-b| <= atol + rtol*|b|; panics with context when exceeded.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut max = 0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        assert!(
            d <= atol + rtol * w.abs(),
            "{what}: element {i}: got {g}, want {w} (|diff| {d})"
        );
        max = max.max(d);
    }
    max
}

pub fn cpu_msda(c: &MsdaCase) -> Vec<f32> {
    let mut out = vec![0f32; c.dims.out_len()];
    c.cpu_into(&mut out);
    out
}

pub fn fixture_case(file: &str) -> (MsdaCase, Vec<f32>) {
    msda_case_from(&Fixture::load(&format!("msdeform/{file}")))
}

/// An MSDeformAttn case and its expected output from a safetensors file with the op's input names.
pub fn msda_case_from(f: &Fixture) -> (MsdaCase, Vec<f32>) {
    let (vs, value) = f.f32("value");
    let (_, shapes) = f.i64("spatial_shapes");
    let (_, starts) = f.i64("level_start_index");
    let (ls, loc) = f.f32("sampling_locations");
    let (_, weights) = f.f32("attention_weights");
    let (_, out) = f.f32("output");
    let dims = MsdaDims {
        batch: vs[0],
        num_value: vs[1],
        heads: vs[2],
        head_dim: vs[3],
        num_query: ls[1],
        levels: ls[3],
        points: ls[4],
    };
    (
        MsdaCase {
            dims,
            shapes,
            starts,
            value,
            loc,
            weights,
        },
        out,
    )
}

pub const MSDA_FIXTURES: [&str; 3] = [
    "small.safetensors",
    "single_level_16pts.safetensors",
    "realistic.safetensors",
];

/// Checks `keep` against `want_keep`, allowing a swap only between queries whose reference gates are equal
/// within float noise (the two implementations sum in different orders).
pub fn assert_keep_matches(what: &str, keep: &[i64], want_keep: &[i64], want_gate: &[f32]) {
    for (r, (&a, &b)) in keep.iter().zip(want_keep).enumerate() {
        if a != b {
            assert!(a >= 0, "{what}: rank {r} not written");
            let (ga, gb) = (want_gate[a as usize], want_gate[b as usize]);
            assert!(
                (ga - gb).abs() <= 1e-7 * ga.abs().max(gb.abs()) + 1e-12,
                "{what}: rank {r}: got query {a} (gate {ga}), want {b} (gate {gb})"
            );
        }
    }
}

/// A frame of random bytes in `format` with `pad` extra bytes per row, and the tight RGB8 image the CPU
/// path makes of it.
pub fn random_frame(
    format: referdino_plugins::dims::FrameFormat,
    w: usize,
    h: usize,
    pad: usize,
    seed: u64,
) -> (Vec<u8>, usize, Vec<u8>) {
    use referdino::camera::convert::{rgb24_to_rgb, rgbx_to_rgb, yuyv_to_rgb};
    use referdino_plugins::dims::FrameFormat;
    let mut rng = Rng::new(seed);
    let stride = w * format.bytes_per_pixel() + pad;
    // Smooth-ish content (a gradient plus noise) so that the resize taps see realistic neighbours.
    let frame: Vec<u8> = (0..stride * h)
        .map(|i| {
            ((i % stride) as f32 * 0.37 + (i / stride) as f32 * 0.11 + rng.range(0.0, 60.0)) as u32
                as u8
        })
        .collect();
    let mut rgb = vec![0u8; w * h * 3];
    match format {
        FrameFormat::Yuyv => yuyv_to_rgb(&frame, w as u32, h as u32, stride, &mut rgb).unwrap(),
        FrameFormat::Rgb24 | FrameFormat::Bgr24 => rgb24_to_rgb(
            &frame,
            w as u32,
            h as u32,
            stride,
            format == FrameFormat::Bgr24,
            &mut rgb,
        )
        .unwrap(),
        FrameFormat::Rgbx | FrameFormat::Bgrx => rgbx_to_rgb(
            &frame,
            w as u32,
            h as u32,
            stride,
            format == FrameFormat::Bgrx,
            &mut rgb,
        )
        .unwrap(),
    }
    (frame, stride, rgb)
}

/// Random logit maps around 0 (about half the pixels on), `tracks` of them.
pub fn random_logits(tracks: usize, h: usize, w: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    // A smooth blob per track plus noise, so that masks have edges where upsampling matters.
    let mut v = Vec::with_capacity(tracks * h * w);
    for t in 0..tracks {
        let (cy, cx) = (rng.range(0.0, h as f32), rng.range(0.0, w as f32));
        let r = rng.range(0.2, 0.6) * h.min(w) as f32;
        for y in 0..h {
            for x in 0..w {
                let d = ((y as f32 - cy).powi(2) + (x as f32 - cx).powi(2)).sqrt();
                v.push((r - d) / r * 4.0 + rng.range(-0.5, 0.5) + t as f32 * 1e-3);
            }
        }
    }
    v
}

/// A QueryPrune case at one of ReferDINO's sizes and the CPU kernel's answer to it.
pub struct PruneReference {
    pub case: PruneCase,
    pub keep: Vec<i64>,
    pub gate: Vec<f32>,
}

/// N = 900, 450, ... 29 (K = N/2 rounded up), each as (B = 1, Lt = 256, 12 valid tokens) and (B = 2,
/// Lt = 16, all valid), with `referdino::ops::prune::query_prune`'s keep_idx and gates.
pub fn prune_real_sizes() -> Vec<PruneReference> {
    let mut out = Vec::new();
    let mut n: usize = 900;
    let mut seed = 100;
    while n > 15 {
        let keep = n.div_ceil(2);
        for (batch, n_tokens, valid) in [(1, 256, 12), (2, 16, 16)] {
            let case = PruneCase::random(batch, n, n_tokens, valid, keep, seed);
            seed += 1;
            let mut want_keep = vec![0i64; batch * keep];
            let mut want_gate = vec![0f32; batch * n];
            referdino::ops::prune::query_prune(
                &case.logits,
                &case.attn,
                batch,
                n,
                n_tokens,
                keep,
                &mut want_keep,
                &mut want_gate,
            )
            .expect("CPU query_prune");
            out.push(PruneReference {
                case,
                keep: want_keep,
                gate: want_gate,
            });
        }
        n = n.div_ceil(2);
    }
    out
}

/// Checks a kernel's keep_idx and gates against the CPU kernel's for every batch item.
pub fn assert_prune_matches(what: &str, r: &PruneReference, keep: &[i64], gate: &[f32]) {
    let d = r.case.dims;
    assert_close(&format!("gate {what}"), gate, &r.gate, 1e-7, 1e-5);
    for b in 0..d.batch {
        let k = b * d.keep..(b + 1) * d.keep;
        assert_keep_matches(
            &format!("{what} b={b}"),
            &keep[k.clone()],
            &r.keep[k],
            &r.gate[b * d.n..(b + 1) * d.n],
        );
    }
}

/// A mask composition case (logit maps, labels, scores with a tie between the first two tracks) and
/// the CPU upsampler's masks, first-wins and best-score.
pub struct LabelCase {
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub tracks: usize,
    pub logits: Vec<f32>,
    pub labels: Vec<u8>,
    pub scores: Vec<f32>,
    pub up: referdino::pipeline::labels::LabelUpsampler,
    pub want_first: Vec<u8>,
    pub want_scored: Vec<u8>,
}

/// The mask cases of the GPU and emulation tests: the head's 90x160 maps to 360x640 with 3 and 15
/// tracks (one of them 92x160 to 368x640), a small odd geometry, and no track at all.
pub fn label_cases() -> Vec<LabelCase> {
    let sizes = [
        (90, 160, 360, 640, 3),
        (18, 30, 70, 118, 1),
        (92, 160, 368, 640, 15),
        (45, 80, 360, 640, 0),
    ];
    sizes
        .iter()
        .enumerate()
        .map(|(ci, &(ih, iw, oh, ow, tracks))| {
            let logits = random_logits(tracks, ih, iw, 900 + ci as u64);
            let labels: Vec<u8> = (1..=tracks as u8).collect();
            // Scores with a tie between the first two tracks: the earlier one must win there.
            let mut rng = Rng::new(77 + ci as u64);
            let mut scores: Vec<f32> = (0..tracks).map(|_| rng.range(0.0, 1.0)).collect();
            if tracks > 1 {
                scores[1] = scores[0];
            }
            let mut up = referdino::pipeline::labels::LabelUpsampler::new(ih, iw, oh, ow).unwrap();
            let plane = ih * iw;
            let mut want_first = vec![0u8; oh * ow];
            let mut want_scored = vec![0u8; oh * ow];
            let mut owner = vec![f32::NEG_INFINITY; oh * ow];
            for t in 0..tracks {
                let m = &logits[t * plane..(t + 1) * plane];
                up.label(m, &mut want_first, labels[t]).unwrap();
                up.label_scored(m, &mut want_scored, &mut owner, labels[t], scores[t])
                    .unwrap();
            }
            LabelCase {
                in_h: ih,
                in_w: iw,
                out_h: oh,
                out_w: ow,
                tracks,
                logits,
                labels,
                scores,
                up,
                want_first,
                want_scored,
            }
        })
        .collect()
}

/// A frame of one layout and geometry, the CPU preprocessor for it and its output.
pub struct PreCase {
    pub format: referdino_plugins::dims::FrameFormat,
    /// Frame size and model input size.
    pub size: (usize, usize, usize, usize),
    /// Bytes per frame row (padding included).
    pub stride: usize,
    pub frame: Vec<u8>,
    pub pre: referdino::camera::convert::Preprocessor,
    pub want: Vec<f32>,
}

/// The preprocessing cases of the GPU and emulation tests: down- and up-scaling and the identity, every
/// frame layout, padded rows.
pub fn pre_cases() -> Vec<PreCase> {
    use referdino_plugins::dims::FrameFormat as F;
    let cases = [
        (F::Rgb24, 1280, 720, 640, 360, 0),
        (F::Bgr24, 640, 480, 480, 360, 12),
        (F::Yuyv, 1920, 1080, 640, 360, 64),
        (F::Yuyv, 640, 360, 640, 360, 0),
        (F::Rgb24, 320, 180, 640, 360, 4),
        (F::Yuyv, 118, 70, 118, 70, 2),
        (F::Bgrx, 1280, 720, 640, 360, 0),
        (F::Rgbx, 330, 190, 640, 360, 8),
    ];
    cases
        .iter()
        .enumerate()
        .map(|(i, &(format, w, h, ow, oh, pad))| {
            let (frame, stride, rgb) = random_frame(format, w, h, pad, 500 + i as u64);
            let mut pre = referdino::camera::convert::Preprocessor::to_size(
                w as u32, h as u32, ow as u32, oh as u32,
            );
            let mut want = vec![0f32; pre.out_len()];
            pre.run(&rgb, &mut want).unwrap();
            PreCase {
                format,
                size: (w, h, ow, oh),
                stride,
                frame,
                pre,
                want,
            }
        })
        .collect()
}

/// Asserts that `got` and `want` hold the same values (`key`: what "the same" compares, e.g. a
/// float's bits), saying how many differ.
pub fn assert_identical<T, K: PartialEq>(what: &str, got: &[T], want: &[T], key: impl Fn(&T) -> K) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let diff = got
        .iter()
        .zip(want)
        .filter(|(a, b)| key(a) != key(b))
        .count();
    assert_eq!(
        diff,
        0,
        "{what}: {diff} of {} values differ from the CPU",
        want.len()
    );
}

/// All-equal inputs (N = 40, K = 20): every gate ties at 1/N, so keep_idx must be 0..K (lower index
/// first).
pub fn tie_case() -> PruneCase {
    let n = 40;
    PruneCase {
        dims: PruneDims {
            batch: 1,
            n,
            n_tokens: 3,
            keep: 20,
        },
        logits: vec![0.5; n * 3],
        attn: vec![1.0 / n as f32; n * n],
    }
}

/// The two pruning layers of the tiny model's official reference outputs: each as a case and the
/// official gates and keep_idx.
pub fn prune_fixture_layers() -> Vec<(String, PruneCase, Vec<f32>, Vec<i64>)> {
    let f = Fixture::load("referdino-tiny/outputs.safetensors");
    (0..2)
        .map(|layer| {
            let key = |s: &str| format!("decoder.layer{layer}.{s}");
            let (ls, logits) = f.f32(&key("class_logits"));
            let (_, attn) = f.f32(&key("self_attn_weights"));
            let (_, want_gate) = f.f32(&key("gate"));
            let (ks, want_keep) = f.i64(&key("keep_idx"));
            let case = PruneCase {
                dims: PruneDims {
                    batch: ls[0],
                    n: ls[1],
                    n_tokens: ls[2],
                    keep: ks[1],
                },
                logits,
                attn,
            };
            (format!("decoder.layer{layer}"), case, want_gate, want_keep)
        })
        .collect()
}
