//! Concatenation of ranges of f32 tensors along one axis: what the CPU backend runs for tract's
//! `Slice` (one range of one tensor), `Concat` (whole tensors) and a `Concat` of slices, which Swin's
//! cyclic shift is (`roll` of a window grid by 3: two slices of one tensor joined in the other order,
//! twice per shifted block and axis). tract copies each slice into a new tensor and then all of them
//! into the concatenation, on one thread (≈ 17 ms of the Swin-T frame engine); here the output is
//! written once, straight from the sources, in chunks spread over the rayon pool.
//!
//! Every source has the output's shape except along `axis`; a piece `(source, start, end)` takes
//! `start..end` of that source along `axis`; the output along `axis` is the pieces one after the
//! other.

use crate::error::{Error, Result};
use rayon::prelude::*;

/// Output elements per task.
const CHUNK: usize = 32 * 1024;

/// One piece of the output: `start..end` of source `source` along the axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Piece {
    /// Index into the sources.
    pub source: usize,
    /// First index along the axis.
    pub start: usize,
    /// One past the last index along the axis.
    pub end: usize,
}

/// Writes the pieces of `sources` (each `(data, shape)`) along `axis` one after the other into
/// `out`, whose shape is `shape` (the sources' shape off `axis`, the pieces' total along it).
/// Threads: the rayon pool the caller runs in.
pub fn concat_ranges(
    sources: &[(&[f32], &[usize])],
    pieces: &[Piece],
    axis: usize,
    shape: &[usize],
    out: &mut [f32],
) -> Result<()> {
    let bad = |why: String| Error::Shape(format!("concat ranges along axis {axis}: {why}"));
    if axis >= shape.len() {
        return Err(bad(format!("output shape {shape:?}")));
    }
    for (i, (data, s)) in sources.iter().enumerate() {
        if s.len() != shape.len()
            || s[..axis] != shape[..axis]
            || s[axis + 1..] != shape[axis + 1..]
        {
            return Err(bad(format!(
                "source {i} of shape {s:?} for output {shape:?}"
            )));
        }
        let n = s.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        super::check_len(
            "concat ranges",
            "source",
            data.len(),
            n.ok_or_else(|| bad("overflow".into()))?,
        )?;
    }
    let mut along = 0usize;
    for p in pieces {
        let ok = sources
            .get(p.source)
            .is_some_and(|(_, s)| p.start <= p.end && p.end <= s[axis]);
        if !ok {
            return Err(bad(format!("piece {p:?}")));
        }
        along += p.end - p.start;
    }
    if along != shape[axis] {
        return Err(bad(format!(
            "pieces {along} long for an output {} long",
            shape[axis]
        )));
    }
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    super::check_len(
        "concat ranges",
        "output",
        out.len(),
        n.ok_or_else(|| bad("overflow".into()))?,
    )?;
    if out.is_empty() {
        return Ok(());
    }
    let inner: usize = shape[axis + 1..].iter().product();
    let row = along * inner;
    // Fills `dst` with the output from flat index `first` on.
    let fill = |first: usize, dst: &mut [f32]| {
        let (mut o, mut r) = (first / row, first % row);
        let mut done = 0;
        while done < dst.len() {
            // The piece holding offset `r` of output row `o`.
            let mut at = 0;
            for p in pieces {
                let w = (p.end - p.start) * inner;
                if r < at + w {
                    let (data, s) = sources[p.source];
                    let src = (o * s[axis] + p.start) * inner + (r - at);
                    let take = (at + w - r).min(dst.len() - done);
                    dst[done..done + take].copy_from_slice(&data[src..src + take]);
                    done += take;
                    r += take;
                    break;
                }
                at += w;
            }
            if r == row {
                o += 1;
                r = 0;
            }
        }
    };
    if out.len() <= CHUNK || rayon::current_num_threads() < 2 {
        fill(0, out);
    } else {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(t, dst)| fill(t * CHUNK, dst));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: output index `(o, j, i)` reads the piece holding `j`.
    fn reference(
        sources: &[(&[f32], &[usize])],
        pieces: &[Piece],
        axis: usize,
        shape: &[usize],
    ) -> Vec<f32> {
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        let mut out = Vec::new();
        for o in 0..outer {
            for p in pieces {
                let (data, s) = sources[p.source];
                for j in p.start..p.end {
                    for i in 0..inner {
                        out.push(data[(o * s[axis] + j) * inner + i]);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_for_slices_rolls_and_concatenations() {
        let a_shape = [2usize, 91, 23, 96];
        let b_shape = [2usize, 5, 23, 96];
        let na: usize = a_shape.iter().product();
        let a: Vec<f32> = (0..na).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..2 * 5 * 23 * 96).map(|i| -(i as f32)).collect();
        let sources: [(&[f32], &[usize]); 2] = [(&a, &a_shape), (&b, &b_shape)];
        let p = |source, start, end| Piece { source, start, end };
        let cases: Vec<(Vec<Piece>, usize)> = vec![
            // Swin's un-pad, its roll by 3, a plain concatenation, an empty piece, one row.
            (vec![p(0, 0, 90)], 90),
            (vec![p(0, 3, 91), p(0, 0, 3)], 91),
            (vec![p(0, 0, 91), p(1, 0, 5)], 96),
            (vec![p(1, 2, 2), p(0, 10, 11)], 1),
        ];
        for (pieces, len) in cases {
            let shape = [2, len, 23, 96];
            let want = reference(&sources, &pieces, 1, &shape);
            for threads in [1, 3] {
                let mut out = vec![f32::NAN; want.len()];
                crate::ops::on_threads(threads, || {
                    concat_ranges(&sources, &pieces, 1, &shape, &mut out)
                })
                .unwrap();
                assert_eq!(out, want, "{pieces:?}, {threads} threads");
            }
        }
        // The last axis (runs of one element each) and the first.
        let x: Vec<f32> = (0..60).map(|i| i as f32).collect();
        let src: [(&[f32], &[usize]); 1] = [(&x, &[3, 20])];
        let pieces = [p(0, 15, 20), p(0, 0, 15)];
        let mut out = vec![0.0; 60];
        concat_ranges(&src, &pieces, 1, &[3, 20], &mut out).unwrap();
        assert_eq!(out, reference(&src, &pieces, 1, &[3, 20]));
        let pieces = [p(0, 2, 3), p(0, 0, 2)];
        concat_ranges(&src, &pieces, 0, &[3, 20], &mut out).unwrap();
        assert_eq!(out, reference(&src, &pieces, 0, &[3, 20]));
    }

    #[test]
    fn bad_pieces_and_shapes_are_errors() {
        let x = vec![0.0f32; 12];
        let src: [(&[f32], &[usize]); 1] = [(&x, &[3, 4])];
        let p = |source, start, end| Piece { source, start, end };
        let mut out = vec![0.0f32; 6];
        assert!(concat_ranges(&src, &[p(0, 1, 3)], 1, &[3, 2], &mut out).is_ok());
        assert!(concat_ranges(&src, &[p(0, 3, 5)], 1, &[3, 2], &mut out).is_err());
        assert!(concat_ranges(&src, &[p(1, 0, 2)], 1, &[3, 2], &mut out).is_err());
        assert!(concat_ranges(&src, &[p(0, 0, 3)], 1, &[3, 2], &mut out).is_err());
        assert!(concat_ranges(&src, &[p(0, 0, 2)], 1, &[2, 3], &mut out).is_err());
        assert!(concat_ranges(&src, &[p(0, 0, 2)], 2, &[3, 2], &mut out).is_err());
        assert!(concat_ranges(&src, &[p(0, 0, 2)], 1, &[3, 2], &mut out[1..]).is_err());
    }
}
