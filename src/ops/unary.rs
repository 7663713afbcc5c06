//! Element-wise sine, cosine and exact GELU of f32 tensors, in place: what the CPU backend runs for
//! tract's `Sin`, `Cos` and `GeluExact` nodes.
//!
//! Why our own: tract evaluates `Sin` and `Cos` with one libm call per element on one thread
//! (≈ 30 ns each): the decoder's query sine embeddings, `[N, 4, 64]` angles for N = 900, 450, 225
//! and 113 queries, cost ≈ 21 ms of the Swin-T frame engine (benches/README.md, "Element-wise
//! sine, cosine and GELU"). `GeluExact` (Swin's MLPs, 5.5 M elements at stage 1) runs on one
//! thread. Here each is one branch-free pass that the compiler vectorises, split over the rayon
//! pool.
//!
//! - **Sine and cosine**: `x = j·π/2 + r` with `j` the nearest integer to `x·2/π` and `π/2` in three
//!   parts of 12 significant bits (`j·part` is exact for `|j| < 2^12`, so `r` carries no
//!   cancellation error), `|r| ≤ π/4`; then the Taylor series of `sin r` to `r^9` and `cos r` to
//!   `r^10` (truncation below 2e-9) and the quadrant `j mod 4` picks `±sin r` or `±cos r`. Within
//!   2 ulp of 1 (0.8 measured) for `|x| ≤` [`TRIG_RANGE`]; a block of 256 elements holding
//!   a larger or non-finite value is computed by the standard library instead.
//! - **GELU**: `x·(1 + erf(x/√2))/2`, with `1 + erf(z) = erfc(−z)` for `z < 0` and `2 − erfc(z)`
//!   otherwise, so the negative tail keeps its relative precision. `erfc(a)` for `a ≥ 0` is
//!   `e^(−a²)·Σₖ cₖ·tᵏ` (k = 1..7), `t = 1/(1 + p·a)`: `p` and `cₖ` are a weighted least-squares
//!   fit (this module's own, over 20001 points of `a ∈ [0, 9.4]`; relative error weighted for
//!   `erfc > 1e-4`, absolute below): absolute error 1.5e-8, relative 1.2e-7 for `a ≤ 3` before
//!   rounding. `e^(−a²)` is the softmax's exponential ([`exp_nonpositive_split`]), its argument
//!   `−x²/2` carried in two parts. Within 5 ulp of the value (4 measured) for `x ≥ −4.24`
//!   (`erfc ≥ 2e-5`), and of `max(|value|, 1e-3)` everywhere; tract's `(1 + erf)` loses the
//!   negative tail's relative precision to cancellation.
//!
//! No fused multiply-add is used, so the results are the same bit for bit on every instruction set
//! and for every thread count.

use super::softmax::exp_nonpositive_split;
use rayon::prelude::*;

/// Elements below which a call stays on the calling thread.
const MIN_PARALLEL: usize = 32 * 1024;

/// Elements a sine or cosine checks for range at once (a block with one value out of range is
/// computed by the standard library).
const BLOCK: usize = 256;

/// Largest `|x|` the vectorised sine and cosine reduce exactly (`|x·2/π| < 2^12`).
pub const TRIG_RANGE: f32 = 6000.0;

/// An element-wise function that [`apply_in_place`] evaluates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    /// `sin x`.
    Sin,
    /// `cos x`.
    Cos,
    /// `x·(1 + erf(x/√2))/2` (GELU without the tanh approximation).
    GeluExact,
}

impl Unary {
    /// The op's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Unary::Sin => "Sin",
            Unary::Cos => "Cos",
            Unary::GeluExact => "GeluExact",
        }
    }
}

/// Replaces every element of `data` by `f` of it. Threads: the rayon pool the caller runs in.
pub fn apply_in_place(f: Unary, data: &mut [f32]) {
    if data.len() <= MIN_PARALLEL || rayon::current_num_threads() < 2 {
        dispatch(f, data);
    } else {
        // Whole blocks per task, so that the range check sees the same blocks whatever the split.
        data.par_chunks_mut(MIN_PARALLEL)
            .for_each(|chunk| dispatch(f, chunk));
    }
}

/// Replaces every element of `data` by `f` of it on the calling thread, on the widest instruction
/// set available: for epilogues that run inside a parallel task of their own (a caller compiled
/// without AVX-512 would otherwise evaluate `f` four lanes at a time).
pub fn apply_serial(f: Unary, data: &mut [f32]) {
    dispatch(f, data);
}

/// Runs `f` over `data` on the widest instruction set available at run time.
fn dispatch(f: Unary, data: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            unsafe { run_avx512(f, data) };
            return;
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { run_avx2(f, data) };
            return;
        }
    }
    run_generic(f, data);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn run_avx512(f: Unary, data: &mut [f32]) {
    run_generic(f, data);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn run_avx2(f: Unary, data: &mut [f32]) {
    run_generic(f, data);
}

#[inline(always)]
fn run_generic(f: Unary, data: &mut [f32]) {
    match f {
        Unary::Sin => trig(data, 0, f32::sin),
        Unary::Cos => trig(data, 1, f32::cos),
        Unary::GeluExact => data.iter_mut().for_each(|x| *x = gelu_exact(*x)),
    }
}

/// Sine (`shift` 0) or cosine (`shift` 1: `cos x = sin(x + π/2)`, one more quadrant) block by
/// block, `exact` for blocks the reduction does not cover.
#[inline(always)]
fn trig(data: &mut [f32], shift: u32, exact: fn(f32) -> f32) {
    for block in data.chunks_mut(BLOCK) {
        // ±∞ compare above the range; NaN is caught on its own.
        if block
            .iter()
            .fold(false, |o, &x| o | (x.abs() > TRIG_RANGE) | x.is_nan())
        {
            block.iter_mut().for_each(|x| *x = exact(*x));
        } else {
            block.iter_mut().for_each(|x| *x = sin_quadrant(*x, shift));
        }
    }
}

/// `sin(x + shift·π/2)` for `|x| ≤` [`TRIG_RANGE`] (the module documentation says how).
#[inline(always)]
fn sin_quadrant(x: f32, shift: u32) -> f32 {
    // π/2 = P1 + P2 + P3, P1 and P2 with 12 significant bits.
    const P1: f32 = 1.570_800_8;
    const P2: f32 = -4.453_584_6e-6;
    const P3: f32 = -8.705_516e-10;
    const TWO_OVER_PI: f32 = std::f32::consts::FRAC_2_PI;
    // 1.5·2^23: adding it rounds to an integer (nearest, ties to even) held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let t = x * TWO_OVER_PI + ROUND;
    let j = t - ROUND;
    let r = ((x - j * P1) - j * P2) - j * P3;
    let r2 = r * r;
    let s = r + r * r2 * (-1.0 / 6.0 + r2 * (1.0 / 120.0 + r2 * (-1.0 / 5040.0 + r2 / 362_880.0)));
    let c = 1.0
        + r2 * (-0.5
            + r2 * (1.0 / 24.0 + r2 * (-1.0 / 720.0 + r2 * (1.0 / 40_320.0 - r2 / 3_628_800.0))));
    // j sits in t's low mantissa bits (t = 1.5·2^23 + j): its bits minus ROUND's are j itself.
    let q = (t.to_bits().wrapping_sub(ROUND.to_bits())).wrapping_add(shift);
    // Quadrants 1 and 3 take the cosine, 2 and 3 the negative.
    let v = if q & 1 == 0 { s } else { c };
    f32::from_bits(v.to_bits() ^ ((q & 2) << 30))
}

/// `x·(1 + erf(x/√2))/2` (the module documentation says how; −∞ gives −0, NaN stays NaN).
#[inline(always)]
pub fn gelu_exact(x: f32) -> f32 {
    const P: f32 = 0.348;
    const C: [f32; 7] = [
        0.191_006_87,
        0.253_668_77,
        -0.077_159_26,
        0.813_059,
        -0.817_989_4,
        0.848_585_6,
        -0.211_171_55,
    ];
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let t = 1.0 / (1.0 + P * a);
    let mut p = C[6];
    for &c in C[..6].iter().rev() {
        p = p * t + c;
    }
    // erfc(a); e^(−a²) is 0 beyond a ≈ 9.3, where erfc(a) is below f32's normal range too.
    // a² = x²/2 from x itself, not from the rounded z, and not rounded to one f32 (either would
    // cost up to a²·2^−24 relative in e^(−a²), 5 ulp at a = 2.3): |x| = h + l with h its 12
    // leading bits, so h² is exact and x² = h² + l·(|x| + h), the small part passed as a tail.
    let ax = x.abs();
    let h = f32::from_bits(ax.to_bits() & 0xFFFF_F000);
    let l = ax - h;
    let m = p * t * exp_nonpositive_split(-0.5 * (h * h), -0.5 * (l * (ax + h)));
    let one_plus_erf = if z < 0.0 { m } else { 2.0 - m };
    if one_plus_erf == 0.0 {
        // x·0 would be NaN for x = −∞; the limit is 0.
        -0.0
    } else {
        0.5 * x * one_plus_erf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Largest error of `f` against `want` in units of `f32::EPSILON · max(|want|, floor)` over
    /// `xs`.
    fn worst(f: Unary, xs: &[f32], want: impl Fn(f64) -> f64, floor: f64) -> (f64, f32) {
        let mut got = xs.to_vec();
        apply_in_place(f, &mut got);
        let mut w = (0.0, 0.0);
        for (&x, &g) in xs.iter().zip(&got) {
            let r = want(x as f64);
            let e = (g as f64 - r).abs() / (r.abs().max(floor) * f32::EPSILON as f64);
            if e > w.0 {
                w = (e, x);
            }
        }
        w
    }

    fn grid(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32)
            .collect()
    }

    #[test]
    fn sine_and_cosine_are_within_two_ulp_of_one() {
        // The sine embeddings' angles (2π·[0, 1] / 10000^(2k/F)), then the whole reduced range.
        for xs in [
            grid(0.0, std::f32::consts::TAU, 100_003),
            grid(-TRIG_RANGE, TRIG_RANGE, 400_009),
        ] {
            let (e, at) = worst(Unary::Sin, &xs, f64::sin, 1.0);
            assert!(e <= 2.0, "sin: {e} ulp at {at}");
            let (e, at) = worst(Unary::Cos, &xs, f64::cos, 1.0);
            assert!(e <= 2.0, "cos: {e} ulp at {at}");
        }
        // Near zero the sine is relatively exact too (r is x itself).
        let tiny = grid(-1e-3, 1e-3, 10_001);
        let (e, at) = worst(Unary::Sin, &tiny, f64::sin, 0.0);
        assert!(e <= 1.0, "sin near 0: {e} ulp of the value at {at}");
    }

    #[test]
    fn sine_and_cosine_outside_the_range_are_the_standard_librarys() {
        // Whole blocks with one large, infinite or NaN value go through the standard library.
        let mut xs = grid(-3.0, 3.0, 3 * BLOCK);
        xs[BLOCK + 7] = 1.0e6;
        xs[2 * BLOCK + 1] = f32::INFINITY;
        xs[5] = f32::NAN;
        for (f, exact) in [
            (Unary::Sin, f32::sin as fn(f32) -> f32),
            (Unary::Cos, f32::cos),
        ] {
            let mut got = xs.clone();
            apply_in_place(f, &mut got);
            for (&x, &g) in xs.iter().zip(&got) {
                let want = exact(x);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "{}({x}) = {g}, want {want}",
                    f.name()
                );
            }
        }
    }

    #[test]
    fn gelu_matches_the_definition() {
        let gelu = |x: f64| 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        // Relative to the value where it is not tiny, absolute (scaled by 1e-3) in the far tail.
        let xs = grid(-12.0, 12.0, 480_001);
        let (e, at) = worst(Unary::GeluExact, &xs, gelu, 1e-3);
        assert!(e <= 5.0, "gelu: {e} ulp at {at}");
        // The negative tail keeps relative precision down to where erfc(a) is 2e-5 (x = -4.24).
        let tail = grid(-4.24, -0.5, 100_001);
        let (e, at) = worst(Unary::GeluExact, &tail, gelu, 0.0);
        assert!(e <= 5.0, "gelu tail: {e} ulp of the value at {at}");
        let mut special = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e30,
            -1e30,
        ];
        apply_in_place(Unary::GeluExact, &mut special);
        assert_eq!(special[0], 0.0);
        assert_eq!(special[1], 0.0);
        assert_eq!(special[2], f32::INFINITY);
        assert_eq!(special[3], 0.0);
        assert!(special[4].is_nan());
        assert_eq!(special[5], 1e30);
        assert_eq!(special[6], 0.0);
    }

    #[test]
    fn threads_and_instruction_sets_change_no_bit() {
        let xs = grid(-20.0, 20.0, 3 * MIN_PARALLEL + 17);
        for f in [Unary::Sin, Unary::Cos, Unary::GeluExact] {
            let mut one = xs.clone();
            run_generic(f, &mut one);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap();
            let mut three = xs.clone();
            pool.install(|| apply_in_place(f, &mut three));
            assert!(
                one.iter()
                    .zip(&three)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{}: the vectorised, threaded result differs from the scalar one",
                f.name()
            );
        }
    }
}
