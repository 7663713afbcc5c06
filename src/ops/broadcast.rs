//! `a += b` with numpy broadcasting of `b` into `a`'s shape, in place: what the CPU backend runs
//! for the f32 `Add` nodes that tract leaves on its generic broadcasting path.
//!
//! Why our own: after its optimisation tract still runs Swin's window-attention `Add`s (the
//! relative position bias `[1, H, 49, 49]` and the shift mask over `[windows, H, 49, 49]` scores)
//! as an element-by-element walk with index arithmetic: ≈ 50 ms for 30 nodes of the Swin-T frame
//! engine (benches/README.md, "Linear layers, convolutions and broadcast Add"). Here neighbouring
//! axes are merged where every operand steps through them alike, the innermost merged axis is one
//! contiguous (or constant) run of each operand, and the leading axes are walked once per run with
//! the offsets kept incrementally (`merge` and `walk`, shared with [`binary_broadcast`] and
//! [`select_broadcast`]); each element is one f32 operation, so the results are the textbook ones.

use crate::error::{Error, Result};
use rayon::prelude::*;

/// Elements below which a call stays on the calling thread.
const MIN_PARALLEL: usize = 64 * 1024;

/// Whether a tensor of shape `from` broadcasts into `to` without changing it: same rank, each axis
/// equal to `to`'s or 1.
pub fn broadcasts_into(from: &[usize], to: &[usize]) -> bool {
    from.len() == to.len() && from.iter().zip(to).all(|(&e, &d)| e == d || e == 1)
}

/// Adds `b` (shape `b_shape`, each axis equal to `shape`'s or 1, same rank) into `a` (row-major,
/// shape `shape`). Threads: the rayon pool the caller runs in.
pub fn add_broadcast_in_place(
    a: &mut [f32],
    shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
) -> Result<()> {
    binary_broadcast_in_place(BinaryOp::Add, a, shape, b, b_shape)
}

/// `a = a ∘ b` with `b` (shape `b_shape`, each axis equal to `shape`'s or 1, same rank) broadcast
/// into `a` (row-major, shape `shape`). Threads: the rayon pool the caller runs in.
pub fn binary_broadcast_in_place(
    op: BinaryOp,
    a: &mut [f32],
    shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
) -> Result<()> {
    if !broadcasts_into(b_shape, shape) {
        return Err(Error::Shape(format!(
            "broadcast {}: {b_shape:?} does not broadcast to {shape:?}",
            op.name()
        )));
    }
    // `a` is its own output: its offsets are the walk's own, only b's are kept.
    let m = merge("broadcast in place", [shape, b_shape], [a.len(), b.len()])?;
    if m.total == 0 {
        return Ok(());
    }
    let (run, [_, rb]) = m.axes()[m.len - 1];
    walk(&m, a, |x, [_, ob]| {
        if rb == 0 {
            let y = b[ob];
            x.iter_mut().for_each(|x| *x = op.apply(*x, y));
        } else {
            for (x, &y) in x.iter_mut().zip(&b[ob..ob + run]) {
                *x = op.apply(*x, y);
            }
        }
    });
    Ok(())
}

/// An element-wise binary operation [`binary_broadcast`] evaluates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a − b`.
    Sub,
    /// `a · b`.
    Mul,
    /// `a / b`.
    Div,
}

impl BinaryOp {
    /// The op's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "Add",
            BinaryOp::Sub => "Sub",
            BinaryOp::Mul => "Mul",
            BinaryOp::Div => "Div",
        }
    }

    #[inline(always)]
    fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
        }
    }
}

/// Most axes [`binary_broadcast`] and [`select_broadcast`] walk after merging neighbours.
const MAX_AXES: usize = 8;

/// Output axes of a broadcast of `N` same-rank operands: (size, each operand's element stride, 0
/// where it is broadcast), axes of size 1 dropped and neighbours merged where every operand's
/// stride continues across them; innermost last, at least one axis. Fixed-size: building it
/// allocates nothing (it is built on every run).
struct Merged<const N: usize> {
    axes: [(usize, [usize; N]); MAX_AXES],
    len: usize,
    total: usize,
}

impl<const N: usize> Merged<N> {
    fn axes(&self) -> &[(usize, [usize; N])] {
        &self.axes[..self.len]
    }
}

/// The size of axis `i` of the broadcast of `shapes` (each equal to it or 1), if they broadcast.
fn broadcast_dim(shapes: &[&[usize]], i: usize) -> Option<usize> {
    let mut d = 1;
    for s in shapes {
        match (d, s[i]) {
            (x, y) if x == y || y == 1 => {}
            (1, y) => d = y,
            _ => return None,
        }
    }
    Some(d)
}

/// The shape same-rank `shapes` broadcast to, or why they do not.
pub fn broadcast_shape(shapes: &[&[usize]]) -> Result<Vec<usize>> {
    let bad = || Error::Shape(format!("broadcast: {shapes:?} do not broadcast together"));
    let rank = shapes.first().map_or(0, |s| s.len());
    if shapes.iter().any(|s| s.len() != rank) {
        return Err(bad());
    }
    (0..rank)
        .map(|i| broadcast_dim(shapes, i).ok_or_else(bad))
        .collect()
}

/// [`Merged`] axes of `shapes` (each axis equal to the output's or 1), or why they do not broadcast
/// together; `lens` are the operands' slice lengths, checked against their shapes.
fn merge<const N: usize>(what: &str, shapes: [&[usize]; N], lens: [usize; N]) -> Result<Merged<N>> {
    let bad = || Error::Shape(format!("{what}: {shapes:?} do not broadcast together"));
    let rank = shapes[0].len();
    if shapes.iter().any(|s| s.len() != rank) {
        return Err(bad());
    }
    let overflow = || Error::Shape(format!("{what}: {shapes:?} overflow"));
    let mut m = Merged {
        axes: [(1, [0; N]); MAX_AXES],
        len: 0,
        total: 1,
    };
    let mut steps = [1usize; N];
    for i in (0..rank).rev() {
        let d = broadcast_dim(&shapes, i).ok_or_else(bad)?;
        m.total = m.total.checked_mul(d).ok_or_else(overflow)?;
        let mut st = [0usize; N];
        for (k, s) in shapes.iter().enumerate() {
            st[k] = if s[i] == 1 { 0 } else { steps[k] };
            steps[k] = steps[k].checked_mul(s[i]).ok_or_else(overflow)?;
        }
        if d == 1 {
            continue;
        }
        match m.len.checked_sub(1).map(|l| &mut m.axes[l]) {
            Some((n, prev)) if (0..N).all(|k| st[k] == prev[k] * *n) => *n *= d,
            _ if m.len == MAX_AXES => {
                return Err(Error::Shape(format!(
                    "{what}: {shapes:?} leave more than {MAX_AXES} axes"
                )))
            }
            _ => {
                m.axes[m.len] = (d, st);
                m.len += 1;
            }
        }
    }
    for (&len, &want) in lens.iter().zip(&steps) {
        super::check_len(what, "operand", len, want)?;
    }
    m.axes[..m.len].reverse();
    if m.len == 0 {
        m.len = 1;
    }
    Ok(m)
}

/// Calls `f(run, offsets)` for every innermost run of `out` (the last merged axis) with each
/// operand's offset at its start, spreading the runs over the rayon pool the caller runs in.
fn walk<const N: usize>(m: &Merged<N>, out: &mut [f32], f: impl Fn(&mut [f32], [usize; N]) + Sync) {
    let (run, _) = m.axes()[m.len - 1];
    let lead = &m.axes()[..m.len - 1];
    let per_task = (MIN_PARALLEL / run).max(1);
    let body = |(t, chunk): (usize, &mut [f32])| {
        // Multi-index of run `t·per_task` over the leading axes, and the operands' offsets there.
        let mut idx = [0usize; MAX_AXES];
        let mut rem = t * per_task;
        for (i, &(d, _)) in lead.iter().enumerate().rev() {
            idx[i] = rem % d;
            rem /= d;
        }
        let mut off = [0usize; N];
        for (ax, &j) in lead.iter().zip(&idx) {
            for (o, &st) in off.iter_mut().zip(&ax.1) {
                *o += j * st;
            }
        }
        for y in chunk.chunks_exact_mut(run) {
            f(y, off);
            // Next multi-index (odometer), keeping the offsets.
            for (i, &(d, st)) in lead.iter().enumerate().rev() {
                idx[i] += 1;
                for k in 0..N {
                    off[k] += st[k];
                }
                if idx[i] < d {
                    break;
                }
                for k in 0..N {
                    off[k] -= st[k] * d;
                }
                idx[i] = 0;
            }
        }
    };
    if m.total <= MIN_PARALLEL || m.total == run || rayon::current_num_threads() < 2 {
        out.chunks_mut(per_task * run).enumerate().for_each(body);
    } else {
        out.par_chunks_mut(per_task * run)
            .enumerate()
            .for_each(body);
    }
}

/// `out = a ∘ b` with numpy broadcasting of both operands (same rank; each axis of `a` and `b`
/// equal to the output's or 1), `out` row-major of the broadcast shape. Used where neither operand
/// has the output's shape (the sine embedding's angles `[.., n, 1, 1] / [F/2, 1]`), which tract
/// walks element by element. Axes are merged where both operands step through them alike, so the
/// innermost loop runs over a contiguous (or constant) stretch of each. Threads: the rayon pool the
/// caller runs in.
pub fn binary_broadcast(
    op: BinaryOp,
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out: &mut [f32],
) -> Result<()> {
    let m = merge("broadcast binary", [a_shape, b_shape], [a.len(), b.len()])?;
    super::check_len("broadcast binary", "out", out.len(), m.total)?;
    if m.total == 0 {
        return Ok(());
    }
    let (run, [ra, rb]) = m.axes()[m.len - 1];
    walk(&m, out, |y, [oa, ob]| match (ra, rb) {
        (0, 0) => y.fill(op.apply(a[oa], b[ob])),
        (0, _) => {
            let x = a[oa];
            for (y, &v) in y.iter_mut().zip(&b[ob..ob + run]) {
                *y = op.apply(x, v);
            }
        }
        (_, 0) => {
            let v = b[ob];
            for (y, &x) in y.iter_mut().zip(&a[oa..oa + run]) {
                *y = op.apply(x, v);
            }
        }
        _ => {
            for ((y, &x), &v) in y.iter_mut().zip(&a[oa..oa + run]).zip(&b[ob..ob + run]) {
                *y = op.apply(x, v);
            }
        }
    });
    Ok(())
}

/// `a ∘ b` of two operands of one shape, written over one of them: over `acc` (then `acc` was
/// the left operand `a` and `other` is `b`) when `acc_is_left`, else `acc` was `b` and `other` is
/// `a`. Lets the CPU backend compute an element-wise node in the memory of whichever input no
/// other node still reads (tract always writes over the first and copies it when it is shared).
/// Threads: the rayon pool the caller runs in.
pub fn unicast_in_place(
    op: BinaryOp,
    acc: &mut [f32],
    other: &[f32],
    acc_is_left: bool,
) -> Result<()> {
    super::check_len("unicast", "operand", other.len(), acc.len())?;
    let body = |(y, x): (&mut [f32], &[f32])| {
        // One branch per chunk and op, so each loop is a plain vectorisable one.
        macro_rules! each {
            ($f:expr) => {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = $f(*y, x);
                }
            };
        }
        match (op, acc_is_left) {
            (BinaryOp::Add, _) => each!(|y: f32, x: f32| y + x),
            (BinaryOp::Mul, _) => each!(|y: f32, x: f32| y * x),
            (BinaryOp::Sub, true) => each!(|y: f32, x: f32| y - x),
            (BinaryOp::Sub, false) => each!(|y: f32, x: f32| x - y),
            (BinaryOp::Div, true) => each!(|y: f32, x: f32| y / x),
            (BinaryOp::Div, false) => each!(|y: f32, x: f32| x / y),
        }
    };
    if acc.len() <= MIN_PARALLEL || rayon::current_num_threads() < 2 {
        body((acc, other));
    } else {
        acc.par_chunks_mut(MIN_PARALLEL)
            .zip(other.par_chunks(MIN_PARALLEL))
            .for_each(body);
    }
    Ok(())
}

/// `out` = `x` (shape `x_shape`, each axis equal to `shape`'s or 1, same rank) repeated into
/// `shape` (row-major): what the CPU backend runs for tract's `MultiBroadcastTo` of f32 tensors
/// (the deformable attention's reference points `[1, 4820, 1, 4, 1, 2]` over heads and points),
/// which tract copies through a generic strided view on one thread. Contiguous runs of `x` are
/// copied whole, broadcast ones filled. Threads: the rayon pool the caller runs in.
pub fn broadcast_to(x: &[f32], x_shape: &[usize], shape: &[usize], out: &mut [f32]) -> Result<()> {
    if !broadcasts_into(x_shape, shape) {
        return Err(Error::Shape(format!(
            "broadcast to: {x_shape:?} does not broadcast to {shape:?}"
        )));
    }
    let m = merge("broadcast to", [shape, x_shape], [out.len(), x.len()])?;
    if m.total == 0 {
        return Ok(());
    }
    let (run, [_, rx]) = m.axes()[m.len - 1];
    walk(&m, out, |y, [_, ox]| {
        if rx == 0 {
            y.fill(x[ox]);
        } else {
            y.copy_from_slice(&x[ox..ox + run]);
        }
    });
    Ok(())
}

/// `out = cond ? a : b` element by element with numpy broadcasting of all three (same rank), `out`
/// row-major of the broadcast shape: what the CPU backend runs for tract's `Iff` (ONNX `Where`),
/// which tract walks element by element where any operand is broadcast (the text-image fusion's
/// `[1, 1, 1, L]` caption mask over `[1, 4820, 4, L]` scores, ≈ 9 ms of the Swin-T frame engine).
/// Threads: the rayon pool the caller runs in.
#[allow(clippy::too_many_arguments)]
pub fn select_broadcast(
    cond: &[bool],
    c_shape: &[usize],
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out: &mut [f32],
) -> Result<()> {
    let m = merge(
        "broadcast select",
        [c_shape, a_shape, b_shape],
        [cond.len(), a.len(), b.len()],
    )?;
    super::check_len("broadcast select", "out", out.len(), m.total)?;
    if m.total == 0 {
        return Ok(());
    }
    let (run, [sc, sa, sb]) = m.axes()[m.len - 1];
    walk(&m, out, |y, [oc, oa, ob]| {
        if sc == 0 {
            // One condition for the whole run: a copy or a fill.
            let (v, o, s) = if cond[oc] { (a, oa, sa) } else { (b, ob, sb) };
            if s == 0 {
                y.fill(v[o]);
            } else {
                y.copy_from_slice(&v[o..o + run]);
            }
            return;
        }
        for (i, y) in y.iter_mut().enumerate() {
            *y = if cond[oc + i * sc] {
                a[oa + i * sa]
            } else {
                b[ob + i * sb]
            };
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where element `i` of a row-major tensor of `shape` reads an operand of shape `s` broadcast
    /// into it (the definition the kernels are checked against).
    fn offset(i: usize, shape: &[usize], s: &[usize]) -> usize {
        let (mut rem, mut off, mut stride) = (i, 0, 1);
        for ax in (0..shape.len()).rev() {
            let ix = rem % shape[ax];
            rem /= shape[ax];
            if s[ax] != 1 {
                off += ix * stride;
            }
            stride *= s[ax];
        }
        off
    }

    /// The definition: every element of `a` plus `b` at the broadcast index.
    fn reference(a: &[f32], shape: &[usize], b: &[f32], b_shape: &[usize]) -> Vec<f32> {
        let mut out = a.to_vec();
        for (i, v) in out.iter_mut().enumerate() {
            *v += b[offset(i, shape, b_shape)];
        }
        out
    }

    #[test]
    fn matches_the_definition_on_every_broadcast_pattern() {
        let cases: &[(&[usize], &[usize])] = &[
            // Swin: relative position bias over the windows, then the shift mask over the heads.
            (&[30, 3, 49, 49], &[1, 3, 49, 49]),
            (&[2, 15, 3, 49, 49], &[1, 15, 1, 49, 49]),
            // Per-row and per-column, scalar, equal shapes, size-1 axes of a, rank 1.
            (&[7, 300], &[7, 1]),
            (&[7, 300], &[1, 300]),
            (&[4, 5, 6], &[1, 1, 1]),
            (&[4, 5, 6], &[4, 5, 6]),
            (&[3, 1, 5, 1, 2], &[1, 1, 5, 1, 1]),
            (&[1, 9], &[1, 9]),
            (&[100_000], &[1]),
            (&[2, 70_000], &[2, 1]),
            (&[0, 4], &[1, 4]),
        ];
        for &(shape, b_shape) in cases {
            let n: usize = shape.iter().product();
            let a: Vec<f32> = (0..n).map(|i| (i % 113) as f32 * 0.5 - 20.0).collect();
            let bn: usize = b_shape.iter().product();
            let b: Vec<f32> = (0..bn).map(|i| (i % 71) as f32 * 0.25 - 3.0).collect();
            let want = reference(&a, shape, &b, b_shape);
            let mut got = a.clone();
            add_broadcast_in_place(&mut got, shape, &b, b_shape).unwrap();
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{shape:?} + {b_shape:?}"
            );
        }
    }

    #[test]
    fn unicast_in_place_computes_into_either_operand() {
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
            for n in [0usize, 5, 200_000] {
                let a: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 0.25 - 11.0).collect();
                let b: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.5 + 0.125).collect();
                let want: Vec<f32> = a.iter().zip(&b).map(|(&x, &y)| op.apply(x, y)).collect();
                let mut into_a = a.clone();
                unicast_in_place(op, &mut into_a, &b, true).unwrap();
                let mut into_b = b.clone();
                unicast_in_place(op, &mut into_b, &a, false).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&into_a), bits(&want), "{op:?} into a, {n}");
                assert_eq!(bits(&into_b), bits(&want), "{op:?} into b, {n}");
            }
        }
        assert!(unicast_in_place(BinaryOp::Add, &mut [0.0; 3], &[0.0; 2], true).is_err());
    }

    #[test]
    fn broadcast_to_matches_the_definition() {
        let cases: &[(&[usize], &[usize])] = &[
            // The deformable reference points over heads and points.
            (&[1, 70, 1, 4, 1, 2], &[1, 70, 8, 4, 4, 2]),
            (&[7, 1], &[7, 300]),
            (&[1, 300], &[7, 300]),
            (&[1, 1, 1], &[4, 5, 6]),
            (&[4, 5, 6], &[4, 5, 6]),
            (&[1, 90_000], &[2, 90_000]),
            (&[1, 4], &[0, 4]),
        ];
        for &(x_shape, shape) in cases {
            let xn: usize = x_shape.iter().product();
            let x: Vec<f32> = (0..xn).map(|i| i as f32 * 0.5 - 7.0).collect();
            let n: usize = shape.iter().product();
            let want: Vec<f32> = (0..n).map(|i| x[offset(i, shape, x_shape)]).collect();
            let mut got = vec![f32::NAN; n];
            broadcast_to(&x, x_shape, shape, &mut got).unwrap();
            assert_eq!(got, want, "{x_shape:?} → {shape:?}");
        }
        let mut out = vec![0.0f32; 12];
        assert!(broadcast_to(&[0.0; 2], &[1, 2], &[3, 4], &mut out).is_err());
        assert!(broadcast_to(&[0.0; 4], &[4], &[3, 4], &mut out).is_err());
        assert!(broadcast_to(&[0.0; 4], &[1, 4], &[3, 4], &mut out[..11]).is_err());
    }

    #[test]
    fn in_place_broadcasts_match_the_definition() {
        // GroupNorm's per-channel scale and shift, the decoder's scores by one scalar.
        let cases: &[(&[usize], &[usize])] = &[
            (&[1, 256, 45, 80], &[1, 256, 1, 1]),
            (&[1, 1, 900, 900], &[1, 1, 1, 1]),
            (&[6, 7, 300], &[6, 7, 1]),
        ];
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
            for &(shape, b_shape) in cases {
                let n: usize = shape.iter().product();
                let a: Vec<f32> = (0..n).map(|i| (i % 113) as f32 * 0.5 - 20.0).collect();
                let bn: usize = b_shape.iter().product();
                let b: Vec<f32> = (0..bn).map(|i| (i % 71) as f32 * 0.25 + 0.5).collect();
                let want: Vec<f32> = (0..n)
                    .map(|i| op.apply(a[i], b[offset(i, shape, b_shape)]))
                    .collect();
                let mut got = a.clone();
                binary_broadcast_in_place(op, &mut got, shape, &b, b_shape).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{op:?} {shape:?} by {b_shape:?}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut a = vec![0.0f32; 12];
        assert!(add_broadcast_in_place(&mut a, &[3, 4], &[0.0; 2], &[1, 2]).is_err());
        assert!(add_broadcast_in_place(&mut a, &[3, 4], &[0.0; 4], &[4]).is_err());
        assert!(add_broadcast_in_place(&mut a, &[3, 4], &[0.0; 3], &[1, 4]).is_err());
        assert!(add_broadcast_in_place(&mut a[..11], &[3, 4], &[0.0; 4], &[1, 4]).is_err());
        // Ten axes alternating broadcast and not: nine leading axes, more than the walk keeps.
        let shape = [2usize; 10];
        let b_shape = [1usize, 2, 1, 2, 1, 2, 1, 2, 1, 2];
        let mut a = vec![0.0f32; 1024];
        assert!(add_broadcast_in_place(&mut a, &shape, &[0.0; 32], &b_shape).is_err());
    }

    /// The definition of `a ∘ b` with both broadcast, in f32.
    fn reference_binary(
        op: BinaryOp,
        a: &[f32],
        a_shape: &[usize],
        b: &[f32],
        b_shape: &[usize],
    ) -> Vec<f32> {
        let shape: Vec<usize> = a_shape
            .iter()
            .zip(b_shape)
            .map(|(&d, &e)| if d == 1 { e } else { d })
            .collect();
        let n: usize = shape.iter().product();
        let at = |i: usize, s: &[usize]| offset(i, &shape, s);
        (0..n)
            .map(|i| op.apply(a[at(i, a_shape)], b[at(i, b_shape)]))
            .collect()
    }

    #[test]
    fn binary_broadcast_matches_the_definition() {
        let cases: &[(&[usize], &[usize])] = &[
            // The sine embedding's angles, the deformable offsets' normaliser.
            (&[1, 900, 4, 1, 1], &[1, 1, 1, 64, 1]),
            (&[1, 900, 8, 4, 4, 2], &[1, 1, 1, 4, 1, 2]),
            // Outer product, either side full, equal, scalars, size-1 output, rank 1, empty.
            (&[300, 1], &[1, 200]),
            (&[1, 7, 1, 5], &[3, 7, 4, 5]),
            (&[3, 7, 4, 5], &[3, 1, 4, 1]),
            (&[4, 5, 6], &[4, 5, 6]),
            (&[1, 1], &[1, 1]),
            (&[70_000], &[1]),
            (&[1], &[70_001]),
            (&[0, 3], &[1, 3]),
        ];
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
            for &(a_shape, b_shape) in cases {
                let an: usize = a_shape.iter().product();
                let bn: usize = b_shape.iter().product();
                let a: Vec<f32> = (0..an).map(|i| (i % 113) as f32 * 0.5 - 20.0).collect();
                let b: Vec<f32> = (0..bn).map(|i| (i % 71) as f32 * 0.25 + 0.125).collect();
                let want = reference_binary(op, &a, a_shape, &b, b_shape);
                let mut got = vec![f32::NAN; want.len()];
                binary_broadcast(op, &a, a_shape, &b, b_shape, &mut got).unwrap();
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{a_shape:?} {} {b_shape:?}",
                    op.name()
                );
            }
        }
        let mut out = vec![0.0f32; 6];
        let e = binary_broadcast(
            BinaryOp::Mul,
            &[0.0; 2],
            &[2, 1],
            &[0.0; 3],
            &[1, 4],
            &mut out,
        );
        assert!(e.is_err());
        assert!(
            binary_broadcast(BinaryOp::Mul, &[0.0; 2], &[2], &[0.0; 3], &[1, 3], &mut out).is_err()
        );
        assert!(binary_broadcast(
            BinaryOp::Mul,
            &[0.0; 2],
            &[2, 1],
            &[0.0; 3],
            &[1, 3],
            &mut out[..5]
        )
        .is_err());
    }

    #[test]
    fn select_broadcast_matches_the_definition() {
        // (cond, a, b): the fusion's caption mask with a constant, every operand broadcast somewhere,
        // equal shapes, empty.
        let cases: &[(&[usize], &[usize], &[usize])] = &[
            (&[1, 1, 1, 11], &[1, 70, 4, 11], &[1, 1, 1, 1]),
            (&[3, 1, 5], &[1, 4, 5], &[3, 4, 1]),
            // One condition per run (a copy of a run of `a`, a fill from `b`, and the reverse).
            (&[2, 3, 1], &[2, 3, 40], &[1, 1, 1]),
            (&[2, 3, 1], &[1, 1, 1], &[2, 3, 40]),
            (&[2, 3], &[2, 3], &[2, 3]),
            (&[1, 1], &[1, 1], &[1, 1]),
            (&[0, 2], &[1, 2], &[1, 1]),
        ];
        for &(c_shape, a_shape, b_shape) in cases {
            let n = |s: &[usize]| s.iter().product::<usize>();
            let cond: Vec<bool> = (0..n(c_shape)).map(|i| i % 3 != 1).collect();
            let a: Vec<f32> = (0..n(a_shape)).map(|i| i as f32).collect();
            let b: Vec<f32> = (0..n(b_shape)).map(|i| -1.0 - i as f32).collect();
            let shape: Vec<usize> = (0..c_shape.len())
                .map(|i| {
                    let d = [c_shape[i], a_shape[i], b_shape[i]];
                    if d.contains(&0) {
                        0
                    } else {
                        *d.iter().max().unwrap()
                    }
                })
                .collect();
            let at = |i: usize, s: &[usize]| offset(i, &shape, s);
            let want: Vec<f32> = (0..n(&shape))
                .map(|i| {
                    if cond[at(i, c_shape)] {
                        a[at(i, a_shape)]
                    } else {
                        b[at(i, b_shape)]
                    }
                })
                .collect();
            let mut got = vec![f32::NAN; want.len()];
            select_broadcast(&cond, c_shape, &a, a_shape, &b, b_shape, &mut got).unwrap();
            assert_eq!(got, want, "{c_shape:?} {a_shape:?} {b_shape:?}");
        }
        let mut out = vec![0.0f32; 6];
        assert!(select_broadcast(
            &[true; 2],
            &[2, 1],
            &[0.0; 3],
            &[1, 3],
            &[0.0; 4],
            &[1, 4],
            &mut out
        )
        .is_err());
        assert!(select_broadcast(
            &[true; 2],
            &[2, 1],
            &[0.0; 3],
            &[1, 3],
            &[0.0],
            &[1, 1],
            &mut out[..5]
        )
        .is_err());
    }
}
