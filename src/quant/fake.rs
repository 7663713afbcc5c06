//! Fake quantization: QuantizeLinear followed by DequantizeLinear, in f32, exactly as ONNX defines them
//! for INT8 with zero point 0: `q = saturate_int8(round_half_to_even(x / scale))`, `y = q · scale`.
//! A CPU run with these applied at every Q/DQ point predicts what an explicit-INT8 engine computes (up to
//! the INT8 kernels' accumulation order), so the accuracy cost of INT8 is known before a board is touched.

use crate::error::{Error, Result};

/// Smallest INT8 value (ONNX QuantizeLinear saturates to the full int8 range).
pub const Q_MIN: f32 = -128.0;
/// Largest INT8 value.
pub const Q_MAX: f32 = 127.0;

fn check_scale(scale: f32) -> Result<()> {
    if scale.is_finite() && scale > 0.0 {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "quantization scale must be finite and > 0, got {scale}"
        )))
    }
}

/// INT8 level of one value (ONNX QuantizeLinear, zero point 0). NaN maps to 0, as an `as` cast does.
#[inline]
pub fn quantize_one(x: f32, scale: f32) -> i8 {
    (x / scale).round_ties_even().clamp(Q_MIN, Q_MAX) as i8
}

/// Quantizes `x` into `out` (same length). Allocation-free.
pub fn quantize(x: &[f32], scale: f32, out: &mut [i8]) -> Result<()> {
    check_scale(scale)?;
    if x.len() != out.len() {
        return Err(Error::Shape(format!(
            "quantize: {} inputs but {} outputs",
            x.len(),
            out.len()
        )));
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_one(v, scale);
    }
    Ok(())
}

/// Dequantizes INT8 levels into `out` (same length).
pub fn dequantize(q: &[i8], scale: f32, out: &mut [f32]) -> Result<()> {
    check_scale(scale)?;
    if q.len() != out.len() {
        return Err(Error::Shape(format!(
            "dequantize: {} inputs but {} outputs",
            q.len(),
            out.len()
        )));
    }
    for (o, &v) in out.iter_mut().zip(q) {
        *o = v as f32 * scale;
    }
    Ok(())
}

/// Fake-quantizes `x` in place with one per-tensor scale (activations). Values beyond the representable
/// range saturate to `-128·scale` / `127·scale`; NaN stays NaN.
pub fn fake_quant(x: &mut [f32], scale: f32) -> Result<()> {
    check_scale(scale)?;
    for v in x.iter_mut() {
        *v = (*v / scale).round_ties_even().clamp(Q_MIN, Q_MAX) * scale;
    }
    Ok(())
}

/// Fake-quantizes a row-major tensor in place with one scale per slice along `axis` (weights).
pub fn fake_quant_per_channel(
    x: &mut [f32],
    shape: &[usize],
    axis: usize,
    scales: &[f32],
) -> Result<()> {
    if axis >= shape.len() || shape[axis] != scales.len() {
        return Err(Error::Shape(format!(
            "per-channel fake-quant: axis {axis} of shape {shape:?} does not match {} scales",
            scales.len()
        )));
    }
    let numel: usize = shape.iter().product();
    if numel != x.len() {
        return Err(Error::Shape(format!(
            "per-channel fake-quant: shape {shape:?} holds {numel} elements, got {}",
            x.len()
        )));
    }
    for &s in scales {
        check_scale(s)?;
    }
    let inner: usize = shape[axis + 1..].iter().product();
    let channels = scales.len();
    for (i, v) in x.iter_mut().enumerate() {
        let s = scales[(i / inner) % channels];
        *v = (*v / s).round_ties_even().clamp(Q_MIN, Q_MAX) * s;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_and_saturates() {
        let mut x = [0.5, 1.5, 2.5, -0.5, -1.5, 200.0, -200.0];
        fake_quant(&mut x, 1.0).unwrap();
        assert_eq!(x, [0.0, 2.0, 2.0, -0.0, -2.0, 127.0, -128.0]);
    }

    #[test]
    fn invalid_scale_is_an_error() {
        let mut x = [1.0];
        assert!(fake_quant(&mut x, 0.0).is_err());
        assert!(fake_quant(&mut x, f32::NAN).is_err());
        assert!(fake_quant(&mut x, -1.0).is_err());
    }
}
