//! Small helpers on engine buffers shared by the files of this module: a binding's dimension, and
//! writing one row of a batched `[B, ...]` buffer.

use crate::error::{Error, Result};
use crate::pipeline::stream::bools_mut;
use crate::tensor::Tensor;

pub(super) fn shape_of(t: &Tensor, i: usize) -> usize {
    t.shape().get(i).copied().unwrap_or(0)
}

/// The first `len` values of an f32 buffer (row 0 of a batched binding).
pub(super) fn row0(t: &mut Tensor, len: usize) -> Result<&mut [f32]> {
    t.f32s_mut()?
        .get_mut(..len)
        .ok_or_else(|| Error::Shape(format!("buffer shorter than {len}")))
}

/// Writes `v` into row `row` of a `[B, ...]` bool buffer.
pub(super) fn set_bool_row(t: &mut Tensor, row: usize, v: &[bool]) -> Result<()> {
    let d = bools_mut(t)?;
    let (n, len) = (v.len(), d.len());
    let dst = d
        .get_mut(row * n..(row + 1) * n)
        .ok_or_else(|| Error::Shape(format!("bool row {row} of {n} in {len}")))?;
    dst.copy_from_slice(v);
    Ok(())
}

/// Writes `v` into row `row` of a `[B, ...]` i64 buffer.
pub(super) fn set_i64_row(t: &mut Tensor, row: usize, v: &[i64]) -> Result<()> {
    match t.data_mut() {
        crate::tensor::Data::I64(d) => {
            let n = v.len();
            let len = d.len();
            let dst = d
                .get_mut(row * n..(row + 1) * n)
                .ok_or_else(|| Error::Shape(format!("i64 row {row} of {n} in {len}")))?;
            dst.copy_from_slice(v);
            Ok(())
        }
        _ => Err(Error::Shape("expected an i64 buffer".into())),
    }
}
