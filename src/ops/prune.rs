//! Confidence-aware query pruning (the ONNX `referdino::QueryPrune` op), docs/model.md: Decoder with confidence-aware pruning.
//!
//! Per batch item, for each of the `N` current queries `j`:
//! `gate_j = ½·softmax_j(max_k logits[j,k]) + ½·softmax_j(Σ_{i≠j} attn[i,j])`, and the `K` kept queries
//! are the top-K of `gate`, in descending gate order. **Ties** (equal gates) keep the lower index first,
//! so the order is a strict total order and the result is deterministic.
//!
//! Softmax sums are taken in f64. Nothing is allocated: the gate buffer holds the column sums while
//! they are needed and `keep_idx` doubles as the heap of the top-K selection.

use super::check_len;
use crate::error::{Error, Result};

/// Computes the pruning gate and the kept query indices.
///
/// Shapes: `class_logits [B,N,Lt]` (padded tokens −inf), `self_attn [B,N,N]` (head-averaged
/// probabilities, rows = targets `i`, columns = sources `j`), `keep_idx [B,K]` (written, descending
/// gate, ties → lower index first), `gate [B,N]` (written). Errors on length mismatch, `keep > n`, a
/// query whose logits are all −inf in every row, or a non-finite gate (NaN inputs).
#[allow(clippy::too_many_arguments)] // the signature is the op contract shared with the CUDA plugin
pub fn query_prune(
    class_logits: &[f32],
    self_attn: &[f32],
    batch: usize,
    n: usize,
    n_tokens: usize,
    keep: usize,
    keep_idx: &mut [i64],
    gate: &mut [f32],
) -> Result<()> {
    const OP: &str = "query_prune";
    check_len(OP, "class_logits", class_logits.len(), batch * n * n_tokens)?;
    check_len(OP, "self_attn", self_attn.len(), batch * n * n)?;
    check_len(OP, "keep_idx", keep_idx.len(), batch * keep)?;
    check_len(OP, "gate", gate.len(), batch * n)?;
    if keep > n {
        return Err(Error::Shape(format!(
            "{OP}: cannot keep {keep} of {n} queries"
        )));
    }
    if n_tokens == 0 && n > 0 {
        return Err(Error::Shape(format!(
            "{OP}: class_logits has no token columns"
        )));
    }
    if n == 0 {
        return Ok(());
    }
    for b in 0..batch {
        let logits = &class_logits[b * n * n_tokens..(b + 1) * n * n_tokens];
        let attn = &self_attn[b * n * n..(b + 1) * n * n];
        let g = &mut gate[b * n..(b + 1) * n];
        gate_one(logits, attn, n, n_tokens, g).map_err(|e| match e {
            Error::Shape(m) => Error::Shape(format!("{OP}: batch {b}: {m}")),
            Error::ShapeMismatch {
                what,
                expected,
                found,
            } => Error::ShapeMismatch {
                what: format!("{OP}: batch {b}: {what}"),
                expected,
                found,
            },
            e => e,
        })?;
        top_k(g, &mut keep_idx[b * keep..(b + 1) * keep]);
    }
    Ok(())
}

/// Maximum that propagates NaN (so bad inputs surface as an error instead of being skipped).
#[inline]
fn nan_max(m: f32, x: f32) -> f32 {
    if x > m || x.is_nan() {
        x
    } else {
        m
    }
}

/// Text term: the best token logit of query `j` (NaN if any logit is NaN). Eight independent lanes
/// so the compiler vectorises it.
#[inline]
fn max_logit(logits: &[f32], n_tokens: usize, j: usize) -> f32 {
    let row = &logits[j * n_tokens..(j + 1) * n_tokens];
    let mut m = [f32::NEG_INFINITY; 8];
    let mut nan = [false; 8];
    let chunks = row.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            m[k] = if c[k] > m[k] { c[k] } else { m[k] };
            nan[k] |= c[k].is_nan();
        }
    }
    let best = rest
        .iter()
        .chain(&m)
        .fold(f32::NEG_INFINITY, |b, &x| nan_max(b, x));
    if nan.iter().any(|&n| n) {
        f32::NAN
    } else {
        best
    }
}

fn gate_one(logits: &[f32], attn: &[f32], n: usize, n_tokens: usize, g: &mut [f32]) -> Result<()> {
    // Attention received by each source j from all other targets, accumulated row by row so the
    // reads stay contiguous; the diagonal is skipped.
    g.fill(0.0);
    for (i, row) in attn.chunks_exact(n).enumerate() {
        for (gj, &a) in g[..i].iter_mut().zip(&row[..i]) {
            *gj += a;
        }
        for (gj, &a) in g[i + 1..].iter_mut().zip(&row[i + 1..]) {
            *gj += a;
        }
    }
    let att_max = g.iter().fold(f32::NEG_INFINITY, |m, &x| nan_max(m, x)) as f64;
    let att_sum: f64 = g.iter().map(|&s| (s as f64 - att_max).exp()).sum();
    // Online softmax normaliser (running max and rescaled sum) so the logits are scanned once here.
    let (mut txt_max, mut txt_sum) = (f64::NEG_INFINITY, 0.0f64);
    for j in 0..n {
        let m = max_logit(logits, n_tokens, j) as f64;
        if m.is_nan() {
            return Err(Error::Shape(format!(
                "class logits of query {j} contain NaN"
            )));
        }
        if m > txt_max {
            txt_sum = txt_sum * (txt_max - m).exp() + 1.0;
            txt_max = m;
        } else if m > f64::NEG_INFINITY {
            txt_sum += (m - txt_max).exp();
        }
    }
    if txt_max == f64::NEG_INFINITY {
        return Err(Error::Shape("every class logit is -inf".into()));
    }
    for (j, gj) in g.iter_mut().enumerate() {
        let txt = (max_logit(logits, n_tokens, j) as f64 - txt_max).exp() / txt_sum;
        let att = (*gj as f64 - att_max).exp() / att_sum;
        *gj = (0.5 * (txt + att)) as f32;
        if !gj.is_finite() {
            return Err(Error::Shape(format!(
                "gate of query {j} is not finite (NaN or infinite inputs)"
            )));
        }
    }
    Ok(())
}

/// True when query `a` ranks before query `b`: higher gate, ties → lower index.
#[inline]
fn before(g: &[f32], a: i64, b: i64) -> bool {
    let (ga, gb) = (g[a as usize], g[b as usize]);
    ga > gb || (ga == gb && a < b)
}

/// Restores the heap property below `root` of a heap whose root is the *worst-ranked* entry.
fn sift_down(g: &[f32], heap: &mut [i64], mut root: usize) {
    let n = heap.len();
    loop {
        let l = 2 * root + 1;
        if l >= n {
            return;
        }
        let mut worst = l;
        if l + 1 < n && before(g, heap[l], heap[l + 1]) {
            worst = l + 1;
        }
        if before(g, heap[worst], heap[root]) {
            return;
        }
        heap.swap(root, worst);
        root = worst;
    }
}

/// Writes the `out.len()` best-ranked indices of `g` into `out`, best first (O(N log K)).
fn top_k(g: &[f32], out: &mut [i64]) {
    let k = out.len();
    if k == 0 {
        return;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = i as i64;
    }
    for root in (0..k / 2).rev() {
        sift_down(g, out, root);
    }
    for j in k..g.len() {
        if before(g, j as i64, out[0]) {
            out[0] = j as i64;
            sift_down(g, out, 0);
        }
    }
    // Heap sort: moving the worst entry to the end each time leaves the best first.
    for end in (1..k).rev() {
        out.swap(0, end);
        sift_down(g, &mut out[..end], 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: full stable sort by (gate desc, index asc).
    fn reference(g: &[f32], k: usize) -> Vec<i64> {
        let mut idx: Vec<i64> = (0..g.len() as i64).collect();
        idx.sort_by(|&a, &b| {
            g[b as usize]
                .partial_cmp(&g[a as usize])
                .unwrap()
                .then(a.cmp(&b))
        });
        idx.truncate(k);
        idx
    }

    #[test]
    fn top_k_matches_sort_with_ties() {
        let mut state = 12345u64;
        for n in 1..40 {
            for k in 0..=n {
                // Few distinct values, so ties are common.
                let g: Vec<f32> = (0..n)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((state >> 33) % 5) as f32
                    })
                    .collect();
                let mut out = vec![-1i64; k];
                top_k(&g, &mut out);
                assert_eq!(out, reference(&g, k), "n={n} k={k} g={g:?}");
            }
        }
    }

    #[test]
    fn gate_by_hand() {
        // N = 2, one token. logits (0, ln 3) → text softmax (1/4, 3/4).
        // attn [[.5,.5],[.2,.8]]: received from others: j0 ← .2, j1 ← .5.
        let logits = [0.0, 3f32.ln()];
        let attn = [0.5, 0.5, 0.2, 0.8];
        let (mut keep, mut gate) = ([0i64; 1], [0f32; 2]);
        query_prune(&logits, &attn, 1, 2, 1, 1, &mut keep, &mut gate).unwrap();
        let e = (0.3f64).exp();
        let att1 = e / (1.0 + e);
        let want = [0.5 * (0.25 + 1.0 - att1), 0.5 * (0.75 + att1)];
        assert!((gate[0] as f64 - want[0]).abs() < 1e-7 && (gate[1] as f64 - want[1]).abs() < 1e-7);
        assert_eq!(keep, [1]);
    }

    #[test]
    fn bad_input_is_error() {
        let (mut keep, mut gate) = ([0i64; 3], [0f32; 2]);
        assert!(query_prune(&[0.0; 2], &[0.0; 4], 1, 2, 1, 3, &mut keep, &mut gate).is_err());
        assert!(query_prune(&[0.0; 3], &[0.0; 4], 1, 2, 1, 1, &mut keep[..1], &mut gate).is_err());
        let inf = f32::NEG_INFINITY;
        let e = query_prune(
            &[inf, inf],
            &[0.0; 4],
            1,
            2,
            1,
            1,
            &mut keep[..1],
            &mut gate,
        );
        assert!(e.unwrap_err().to_string().contains("-inf"));
        let e = query_prune(
            &[0.0, f32::NAN],
            &[0.0; 4],
            1,
            2,
            1,
            1,
            &mut keep[..1],
            &mut gate,
        );
        assert!(e.is_err());
    }
}
