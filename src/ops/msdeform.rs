//! Multi-scale deformable attention sampling (the ONNX `referdino::MSDeformAttn` op), docs/model.md: Multi-scale deformable attention.
//!
//! For every batch `b`, query `q` and head `h`, the output channels `out[b, q, h·Dh .. (h+1)·Dh]` are
//! `Σ_l Σ_p a[b,q,h,l,p] · bilinear(value level l, head h, loc[b,q,h,l,p])`, where the location `(x, y)`
//! in `[0, 1]` maps to pixel `(x·W_l − 0.5, y·H_l − 0.5)` (`grid_sample`, `align_corners = false`) and
//! taps outside the map read zero.
//!
//! Layout matters for speed: `value` is `[B, S, H, Dh]`, so the `Dh` channels of one tap are contiguous
//! and each tap is a short axpy over `Dh` that the compiler vectorises. The work is split over
//! `B·Q` output rows, with rayon or the caller's executor ([`ParallelFor`]); nothing is allocated
//! per call.

use super::check_len;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Dimensions of one [`ms_deform_attn`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsDeformDims {
    /// Batch size `B`.
    pub batch: usize,
    /// Number of value rows `S` (all levels flattened).
    pub num_value: usize,
    /// Attention heads `H`.
    pub heads: usize,
    /// Channels per head `Dh`.
    pub head_dim: usize,
    /// Queries `Q`.
    pub num_query: usize,
    /// Feature levels `L`.
    pub levels: usize,
    /// Sampling points per level `P`.
    pub points: usize,
}

impl MsDeformDims {
    /// The dimensions of an op whose operands have these shapes (`value [B,S,H,Dh]`,
    /// `spatial_shapes [L,2]`, `level_start_index [L]`, `sampling_locations [B,Q,H,L,P,2]`,
    /// `attention_weights [B,Q,H,L,P]`), every shape checked against the others: each backend
    /// calls this, so a damaged engine is refused alike on all of them (the lengths alone would
    /// let `[B,Q,H,P,L]` weights or swapped batch and heads through).
    pub fn from_shapes(
        value: &[usize],
        spatial_shapes: &[usize],
        level_start_index: &[usize],
        sampling_locations: &[usize],
        attention_weights: &[usize],
    ) -> Result<Self> {
        let bad = || {
            Error::Shape(format!(
                "ms_deform_attn: operand shapes value {value:?}, spatial_shapes {spatial_shapes:?}, \
                 level_start_index {level_start_index:?}, sampling_locations {sampling_locations:?}, \
                 attention_weights {attention_weights:?} do not agree (expected [B,S,H,Dh], [L,2], \
                 [L], [B,Q,H,L,P,2], [B,Q,H,L,P])"
            ))
        };
        let [b, s, h, dh] = <[usize; 4]>::try_from(value).map_err(|_| bad())?;
        let [b2, q, h2, l, p, two] =
            <[usize; 6]>::try_from(sampling_locations).map_err(|_| bad())?;
        if (b2, h2, two) != (b, h, 2)
            || attention_weights != [b, q, h, l, p]
            || spatial_shapes != [l, 2]
            || level_start_index != [l]
        {
            return Err(bad());
        }
        Ok(MsDeformDims {
            batch: b,
            num_value: s,
            heads: h,
            head_dim: dh,
            num_query: q,
            levels: l,
            points: p,
        })
    }
}

/// Read-only operands shared by all worker chunks.
#[derive(Clone, Copy)]
struct Operands<'a> {
    value: &'a [f32],
    shapes: &'a [i64],
    starts: &'a [i64],
    locs: &'a [f32],
    attn: &'a [f32],
    d: MsDeformDims,
}

/// Multi-scale deformable attention on the CPU.
///
/// Shapes: `value [B,S,H,Dh]`, `spatial_shapes [L,2]` as `(h, w)`, `level_start_index [L]`,
/// `sampling_locations [B,Q,H,L,P,2]` as `(x, y)`, `attention_weights [B,Q,H,L,P]` (already
/// softmaxed), `out [B,Q,H·Dh]` (every element written, its contents never read). Level `l` occupies value rows
/// `level_start_index[l] .. level_start_index[l] + h_l·w_l`; they must lie inside `S`.
/// Locations that are NaN or whose bilinear footprint is entirely outside the map contribute zero.
pub fn ms_deform_attn(
    value: &[f32],
    spatial_shapes: &[i64],
    level_start_index: &[i64],
    sampling_locations: &[f32],
    attention_weights: &[f32],
    dims: MsDeformDims,
    out: &mut [f32],
) -> Result<()> {
    ms_deform_attn_on(
        &Rayon,
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        dims,
        out,
    )
}

/// [`ms_deform_attn`] with its row chunks spread by `par_for` (e.g. a host runtime's own thread
/// pool, so the kernel does not compete with that runtime's spinning workers).
#[allow(clippy::too_many_arguments)] // the op's five operands, dims and output, plus the executor
pub fn ms_deform_attn_on(
    par_for: &dyn ParallelFor,
    value: &[f32],
    spatial_shapes: &[i64],
    level_start_index: &[i64],
    sampling_locations: &[f32],
    attention_weights: &[f32],
    dims: MsDeformDims,
    out: &mut [f32],
) -> Result<()> {
    let d = dims;
    const OP: &str = "ms_deform_attn";
    // Checked products: the unsafe chunking below relies on `out` holding `rows · row` floats,
    // which a wrapped product would fake.
    let mul = |xs: &[usize]| {
        xs.iter()
            .try_fold(1usize, |a, &x| a.checked_mul(x))
            .ok_or_else(|| Error::Shape(format!("{OP}: dimensions {d:?} overflow")))
    };
    let row = mul(&[d.heads, d.head_dim])?;
    let rows = mul(&[d.batch, d.num_query])?;
    let taps = mul(&[rows, d.heads, d.levels, d.points])?;
    check_len(OP, "value", value.len(), mul(&[d.batch, d.num_value, row])?)?;
    check_len(
        OP,
        "spatial_shapes",
        spatial_shapes.len(),
        mul(&[d.levels, 2])?,
    )?;
    check_len(OP, "level_start_index", level_start_index.len(), d.levels)?;
    check_len(
        OP,
        "sampling_locations",
        sampling_locations.len(),
        mul(&[taps, 2])?,
    )?;
    check_len(OP, "attention_weights", attention_weights.len(), taps)?;
    check_len(OP, "out", out.len(), mul(&[rows, row])?)?;
    for l in 0..d.levels {
        let (h, w, s) = (
            spatial_shapes[2 * l],
            spatial_shapes[2 * l + 1],
            level_start_index[l],
        );
        let end = h.checked_mul(w).and_then(|n| n.checked_add(s));
        if h <= 0 || w <= 0 || s < 0 || end.is_none_or(|e| e > d.num_value as i64) {
            return Err(Error::Shape(format!(
                "{OP}: level {l} has shape ({h}, {w}) starting at value row {s}, \
                 which does not fit in {} value rows",
                d.num_value
            )));
        }
        // The levels lie one after the other, as the model flattens them (the official code
        // splits the value rows by the shapes): a start elsewhere reads another level's rows.
        let want = if l == 0 {
            0
        } else {
            level_start_index[l - 1] + spatial_shapes[2 * l - 2] * spatial_shapes[2 * l - 1]
        };
        if s != want {
            return Err(Error::Shape(format!(
                "{OP}: level {l} starts at value row {s}, but the levels before it end at row \
                 {want}"
            )));
        }
    }
    if out.is_empty() {
        return Ok(());
    }
    let ops = Operands {
        value,
        shapes: spatial_shapes,
        starts: level_start_index,
        locs: sampling_locations,
        attn: attention_weights,
        d,
    };
    let workers = par_for.threads().max(1);
    // A few chunks per thread balance the uneven cost of rows (out-of-map taps are skipped).
    let chunk_rows = rows.div_ceil(workers * 4).max(4);
    if chunk_rows >= rows {
        run_rows(&ops, 0, out);
        return Ok(());
    }
    let chunks = rows.div_ceil(chunk_rows);
    let base = OutPtr(out.as_mut_ptr());
    let run_chunk = |c: usize| {
        if c >= chunks {
            return;
        }
        let first = c * chunk_rows;
        let n = chunk_rows.min(rows - first);
        // SAFETY: chunk `c < chunks` covers rows `first .. first + n` of `out` (`rows · row`
        // floats, checked above); distinct chunks are disjoint, a `ParallelFor` never runs one
        // index twice at once (its safety contract), and `out` stays borrowed mutably by this
        // function until every chunk has returned (ditto).
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(first * row), n * row) };
        run_rows(&ops, first, chunk);
    };
    par_for.run(chunks, &run_chunk);
    Ok(())
}

/// The output buffer's address, shared by the chunk workers (each writes its own rows).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: workers only write disjoint row ranges through the pointer (see `ms_deform_attn_on`).
unsafe impl Send for OutPtr {}
// SAFETY: as above; the pointer itself is only read.
unsafe impl Sync for OutPtr {}

/// Runs `f(0) … f(n − 1)`, possibly in parallel, returning when all have run.
///
/// # Safety
///
/// Kernels hand each index a disjoint part of one output through a raw pointer, so an
/// implementation must: call `f` with every index in `0..n` at least once and with no other;
/// never run two calls with the same index at the same time; and return from `run` only once every
/// call has returned. (Running an index again after its first call returned is allowed: the
/// kernels' chunks are idempotent.)
pub unsafe trait ParallelFor {
    /// Workers available (sizes the chunks).
    fn threads(&self) -> usize;
    /// Runs every index.
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync));
}

/// The rayon pool the caller runs in (`rayon::current_num_threads` workers).
pub struct Rayon;

// SAFETY: rayon's `for_each` over `0..n` calls each index exactly once and returns after all.
unsafe impl ParallelFor for Rayon {
    fn threads(&self) -> usize {
        rayon::current_num_threads()
    }

    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..n).into_par_iter().for_each(f);
    }
}

/// Dispatches to the best instruction set available at run time.
fn run_rows(ops: &Operands<'_>, first_row: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            unsafe { rows_avx2_fma(ops, first_row, out) };
            return;
        }
        rows_by_head_dim::<false>(ops, first_row, out);
    }
    // aarch64 has fused multiply-add in its base instruction set.
    #[cfg(target_arch = "aarch64")]
    rows_by_head_dim::<true>(ops, first_row, out);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    rows_by_head_dim::<false>(ops, first_row, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rows_avx2_fma(ops: &Operands<'_>, first_row: usize, out: &mut [f32]) {
    rows_by_head_dim::<true>(ops, first_row, out);
}

/// Compile-time head widths let the per-head accumulator live in registers (Swin-T/B use 32, the
/// tiny fixture 16); other widths take the generic path.
#[inline(always)]
fn rows_by_head_dim<const FMA: bool>(ops: &Operands<'_>, first_row: usize, out: &mut [f32]) {
    match ops.d.head_dim {
        32 => rows_kernel::<FMA, 32>(ops, first_row, out),
        16 => rows_kernel::<FMA, 16>(ops, first_row, out),
        64 => rows_kernel::<FMA, 64>(ops, first_row, out),
        _ => rows_kernel::<FMA, 0>(ops, first_row, out),
    }
}

/// `o += w · v` (fused when `FMA`).
#[inline(always)]
fn axpy<const FMA: bool>(o: &mut [f32], w: f32, v: &[f32]) {
    for (o, &v) in o.iter_mut().zip(v) {
        *o = if FMA { v.mul_add(w, *o) } else { *o + w * v };
    }
}

/// `o += (w0·v0 + w1·v1) + (w2·v2 + w3·v3)`: all four bilinear taps in one pass over `o`. The two
/// independent pairs keep the dependency chain on `o` to one add per tap.
#[inline(always)]
fn axpy4<const FMA: bool>(o: &mut [f32], w: [f32; 4], v: [&[f32]; 4]) {
    let n = o.len();
    let (v0, v1, v2, v3) = (&v[0][..n], &v[1][..n], &v[2][..n], &v[3][..n]);
    for i in 0..n {
        let s = if FMA {
            v1[i].mul_add(w[1], v0[i] * w[0]) + v3[i].mul_add(w[3], v2[i] * w[2])
        } else {
            (w[0] * v0[i] + w[1] * v1[i]) + (w[2] * v2[i] + w[3] * v3[i])
        };
        o[i] += s;
    }
}

/// Computes output rows `first_row ..` into `out` (a whole number of `[H·Dh]` rows). `D` is the head
/// width when known at compile time, 0 otherwise.
#[inline(always)]
fn rows_kernel<const FMA: bool, const D: usize>(
    ops: &Operands<'_>,
    first_row: usize,
    out: &mut [f32],
) {
    let d = ops.d;
    let dh = if D > 0 { D } else { d.head_dim };
    for (k, orow) in out.chunks_exact_mut(d.heads * dh).enumerate() {
        let r = first_row + k;
        for (h, o) in orow.chunks_exact_mut(dh).enumerate() {
            if D > 0 {
                // Accumulate in a local array (registers) and store once per head.
                let mut acc = [0.0f32; D];
                head_taps::<FMA>(ops, r, h, &mut acc);
                o.copy_from_slice(&acc);
            } else {
                o.fill(0.0);
                head_taps::<FMA>(ops, r, h, o);
            }
        }
    }
}

/// Adds all `L·P` weighted bilinear samples of output row `r` (= b·Q + q), head `h` into `acc`
/// (`Dh` long).
#[inline(always)]
fn head_taps<const FMA: bool>(ops: &Operands<'_>, r: usize, h: usize, acc: &mut [f32]) {
    let d = ops.d;
    let (nh, nl, np) = (d.heads, d.levels, d.points);
    let dh = acc.len();
    let b = r / d.num_query;
    let batch_stride = d.num_value * nh * dh;
    let vb = &ops.value[b * batch_stride..(b + 1) * batch_stride];
    let tap0 = (r * nh + h) * nl * np;
    for l in 0..nl {
        // Validated in `ms_deform_attn`: positive sizes, level inside the value rows.
        let hl = ops.shapes[2 * l] as usize;
        let wl = ops.shapes[2 * l + 1] as usize;
        let start = ops.starts[l] as usize;
        let (hf, wf) = (hl as f32, wl as f32);
        // Value offset of pixel (y, x) of this level for head h.
        let at = |y: usize, x: usize| ((start + y * wl + x) * nh + h) * dh;
        let ts = tap0 + l * np..tap0 + (l + 1) * np;
        for (&a, loc) in ops.attn[ts.clone()]
            .iter()
            .zip(ops.locs[2 * ts.start..2 * ts.end].chunks_exact(2))
        {
            let x = loc[0] * wf - 0.5;
            let y = loc[1] * hf - 0.5;
            // Footprint entirely outside (or NaN): contributes zero.
            if !(x > -1.0 && y > -1.0 && x < wf && y < hf) {
                continue;
            }
            let (x0f, y0f) = (x.floor(), y.floor());
            let (fx, fy) = (x - x0f, y - y0f);
            let (x0, y0) = (x0f as isize, y0f as isize);
            let w = [
                (1.0 - fx) * (1.0 - fy) * a,
                fx * (1.0 - fy) * a,
                (1.0 - fx) * fy * a,
                fx * fy * a,
            ];
            let x_in = [x0 >= 0, x0 + 1 < wl as isize];
            let y_in = [y0 >= 0, y0 + 1 < hl as isize];
            if x_in[0] && x_in[1] && y_in[0] && y_in[1] {
                // One bounds check for the 2×2 block; the corners sit at fixed strides in it.
                let (px, row) = (nh * dh, wl * nh * dh);
                let i00 = at(y0 as usize, x0 as usize);
                let blk = &vb[i00..i00 + row + px + dh];
                axpy4::<FMA>(
                    acc,
                    w,
                    [
                        &blk[..dh],
                        &blk[px..px + dh],
                        &blk[row..row + dh],
                        &blk[row + px..row + px + dh],
                    ],
                );
            } else {
                for (cy, &yok) in y_in.iter().enumerate() {
                    for (cx, &xok) in x_in.iter().enumerate() {
                        if yok && xok {
                            let i = at((y0 + cy as isize) as usize, (x0 + cx as isize) as usize);
                            axpy::<FMA>(acc, w[2 * cy + cx], &vb[i..i + dh]);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims() -> MsDeformDims {
        MsDeformDims {
            batch: 1,
            num_value: 6,
            heads: 1,
            head_dim: 2,
            num_query: 1,
            levels: 1,
            points: 1,
        }
    }

    #[test]
    fn dimensions_whose_sizes_overflow_are_refused() {
        // rows · row = 16 · (2^60 + 1) · 1 wraps to 16 in usize: a wrapped check would accept
        // this 16-float output and the chunks would then write far past it.
        let d = MsDeformDims {
            batch: 1,
            num_value: 0,
            heads: 1,
            head_dim: (1 << 60) + 1,
            num_query: 16,
            levels: 0,
            points: 1,
        };
        let mut out = [0.0f32; 16];
        let e = ms_deform_attn(&[], &[], &[], &[], &[], d, &mut out).unwrap_err();
        assert!(e.to_string().contains("overflow"), "{e}");
    }

    #[test]
    fn operand_shapes_must_agree() {
        let ok = MsDeformDims::from_shapes(
            &[1, 6, 2, 4],
            &[1, 2],
            &[1],
            &[1, 5, 2, 1, 3, 2],
            &[1, 5, 2, 1, 3],
        )
        .unwrap();
        assert_eq!(
            (
                ok.batch,
                ok.num_value,
                ok.heads,
                ok.head_dim,
                ok.num_query,
                ok.levels,
                ok.points
            ),
            (1, 6, 2, 4, 5, 1, 3)
        );
        // Batch and heads swapped in the locations (the lengths all agree), points and levels
        // swapped in the weights, shapes of another level count, a rank short.
        for (v, ss, st, loc, att) in [
            (
                &[1, 4, 2, 2][..],
                &[1, 2][..],
                &[1][..],
                &[2, 1, 1, 1, 1, 2][..],
                &[2, 1, 1, 1, 1][..],
            ),
            (
                &[1, 6, 1, 2],
                &[2, 2],
                &[2],
                &[1, 1, 1, 2, 3, 2],
                &[1, 1, 1, 3, 2],
            ),
            (
                &[1, 6, 1, 2],
                &[3, 2],
                &[2],
                &[1, 1, 1, 2, 1, 2],
                &[1, 1, 1, 2, 1],
            ),
            (
                &[6, 1, 2],
                &[1, 2],
                &[1],
                &[1, 1, 1, 1, 1, 2],
                &[1, 1, 1, 1, 1],
            ),
        ] {
            let e = MsDeformDims::from_shapes(v, ss, st, loc, att).unwrap_err();
            assert!(e.to_string().contains("do not agree"), "{e}");
        }
    }

    #[test]
    fn levels_must_follow_one_another() {
        // Two 1×2 levels in 4 value rows: the second must start at row 2.
        let d = MsDeformDims {
            num_value: 4,
            levels: 2,
            ..dims()
        };
        let value = vec![1.0f32; 8];
        let (loc, att) = ([0.5f32; 4], [0.5f32; 2]);
        let mut out = [0.0; 2];
        ms_deform_attn(&value, &[1, 2, 1, 2], &[0, 2], &loc, &att, d, &mut out).unwrap();
        let e =
            ms_deform_attn(&value, &[1, 2, 1, 2], &[0, 1], &loc, &att, d, &mut out).unwrap_err();
        assert!(e.to_string().contains("end at row 2"), "{e}");
    }

    #[test]
    fn pixel_centre_reads_the_pixel() {
        // 2×3 map, channel 0 = pixel index, channel 1 = 10 × pixel index.
        let value: Vec<f32> = (0..6).flat_map(|i| [i as f32, 10.0 * i as f32]).collect();
        // Centre of pixel (row 1, col 2): x = (2 + 0.5) / 3, y = (1 + 0.5) / 2.
        let loc = [2.5 / 3.0, 0.75];
        let mut out = [0.0; 2];
        ms_deform_attn(&value, &[2, 3], &[0], &loc, &[0.5], dims(), &mut out).unwrap();
        assert!(
            (out[0] - 2.5).abs() < 1e-6 && (out[1] - 25.0).abs() < 1e-5,
            "{out:?}"
        );
    }

    #[test]
    fn outside_reads_zero_and_half_pixel_outside_halves() {
        let value = vec![1.0f32; 12];
        let mut out = [9.0; 2];
        ms_deform_attn(
            &value,
            &[2, 3],
            &[0],
            &[-2.0, 3.0],
            &[1.0],
            dims(),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [0.0, 0.0]);
        // x = 0 is half a pixel left of the first centre: half the left column's weight.
        ms_deform_attn(&value, &[2, 3], &[0], &[0.0, 0.5], &[1.0], dims(), &mut out).unwrap();
        assert!((out[0] - 0.5).abs() < 1e-6, "{out:?}");
        ms_deform_attn(
            &value,
            &[2, 3],
            &[0],
            &[f32::NAN, 0.5],
            &[1.0],
            dims(),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [0.0, 0.0]);
    }

    /// Plain per-corner reference, written independently of the kernel's fast paths.
    fn naive(ops: &Operands<'_>) -> Vec<f32> {
        let d = ops.d;
        let mut out = vec![0.0f32; d.batch * d.num_query * d.heads * d.head_dim];
        for b in 0..d.batch {
            for q in 0..d.num_query {
                for h in 0..d.heads {
                    for l in 0..d.levels {
                        let (hl, wl) = (ops.shapes[2 * l], ops.shapes[2 * l + 1]);
                        for p in 0..d.points {
                            let t = (((b * d.num_query + q) * d.heads + h) * d.levels + l)
                                * d.points
                                + p;
                            let x = ops.locs[2 * t] as f64 * wl as f64 - 0.5;
                            let y = ops.locs[2 * t + 1] as f64 * hl as f64 - 0.5;
                            let (x0, y0) = (x.floor() as i64, y.floor() as i64);
                            for (yy, wy) in [(y0, 1.0 - (y - y0 as f64)), (y0 + 1, y - y0 as f64)] {
                                for (xx, wx) in
                                    [(x0, 1.0 - (x - x0 as f64)), (x0 + 1, x - x0 as f64)]
                                {
                                    if yy < 0 || xx < 0 || yy >= hl || xx >= wl {
                                        continue;
                                    }
                                    let s = (ops.starts[l] + yy * wl + xx) as usize;
                                    for c in 0..d.head_dim {
                                        let v = ops.value[((b * d.num_value + s) * d.heads + h)
                                            * d.head_dim
                                            + c];
                                        let o = &mut out[((b * d.num_query + q) * d.heads + h)
                                            * d.head_dim
                                            + c];
                                        *o += (ops.attn[t] as f64 * wy * wx * v as f64) as f32;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Every code path (fused or not, compile-time or run-time head width) against the naive loop.
    #[test]
    fn all_paths_match_naive_reference() {
        let mut state = 99u64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        for head_dim in [32, 16, 5] {
            let d = MsDeformDims {
                batch: 2,
                num_value: 5 * 7 + 2 * 3,
                heads: 3,
                head_dim,
                num_query: 9,
                levels: 2,
                points: 3,
            };
            let taps = d.batch * d.num_query * d.heads * d.levels * d.points;
            let value: Vec<f32> = (0..d.batch * d.num_value * d.heads * head_dim)
                .map(|_| rnd() - 0.5)
                .collect();
            let locs: Vec<f32> = (0..2 * taps).map(|_| rnd() * 1.4 - 0.2).collect();
            let attn: Vec<f32> = (0..taps).map(|_| rnd()).collect();
            let (shapes, starts) = ([5i64, 7, 2, 3], [0i64, 35]);
            let ops = Operands {
                value: &value,
                shapes: &shapes,
                starts: &starts,
                locs: &locs,
                attn: &attn,
                d,
            };
            let want = naive(&ops);
            let n = want.len();
            let mut paths: Vec<(&str, Vec<f32>)> = Vec::new();
            let mut o = vec![f32::NAN; n];
            rows_by_head_dim::<false>(&ops, 0, &mut o);
            paths.push(("plain", o));
            let mut o = vec![f32::NAN; n];
            rows_kernel::<false, 0>(&ops, 0, &mut o);
            paths.push(("plain, run-time width", o));
            let mut o = vec![f32::NAN; n];
            rows_kernel::<true, 0>(&ops, 0, &mut o);
            paths.push(("fused, run-time width", o));
            let mut o = vec![f32::NAN; n];
            ms_deform_attn(&value, &shapes, &starts, &locs, &attn, d, &mut o).unwrap();
            paths.push(("dispatched", o));
            for (name, got) in paths {
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(err < 1e-5, "head_dim {head_dim}, {name}: error {err}");
            }
        }
    }

    #[test]
    fn bad_lengths_and_levels_are_errors() {
        let value = vec![0.0f32; 12];
        let mut out = [0.0; 2];
        let e = ms_deform_attn(
            &value[..11],
            &[2, 3],
            &[0],
            &[0.5, 0.5],
            &[1.0],
            dims(),
            &mut out,
        );
        let m = e.unwrap_err().to_string();
        assert!(m.contains("value") && m.contains("found 11"), "{m}");
        let e = ms_deform_attn(&value, &[3, 3], &[0], &[0.5, 0.5], &[1.0], dims(), &mut out);
        assert!(e.unwrap_err().to_string().contains("level 0"));
        let e = ms_deform_attn(
            &value,
            &[2, 3],
            &[-1],
            &[0.5, 0.5],
            &[1.0],
            dims(),
            &mut out,
        );
        assert!(e.is_err());
        let e = ms_deform_attn(
            &value,
            &[2, 3],
            &[0],
            &[0.5, 0.5],
            &[1.0],
            dims(),
            &mut out[..1],
        );
        assert!(e.unwrap_err().to_string().contains("out"));
    }
}
