//! COCO run-length encoded masks (MeViS `mask_dict.json`).
//!
//! Runs alternate background / foreground starting with background, in column-major order. The
//! compressed string form stores each run (after the second, as a difference to the run two back)
//! in 5-bit groups offset by ASCII 48, with bit 0x20 meaning "more groups follow" and bit 0x10 of the
//! last group the sign.

use crate::{Error, Result};

/// Decodes the compressed counts string into run lengths.
pub fn counts_from_string(s: &str) -> Result<Vec<u64>> {
    let b = s.as_bytes();
    let mut counts: Vec<i64> = Vec::with_capacity(b.len());
    let mut p = 0usize;
    while p < b.len() {
        let mut x: i64 = 0;
        let mut k = 0u32;
        loop {
            let c = b[p].wrapping_sub(48) as i64;
            if !(0..64).contains(&c) {
                return Err(Error::Eval(format!(
                    "RLE counts string has an invalid character {:?} at {p}",
                    b[p] as char
                )));
            }
            // 12 groups hold 60 bits, far more than any mask's pixel count; a longer number would
            // shift past the 64 bits of `x`.
            if k == 12 {
                return Err(Error::Eval(format!(
                    "RLE counts string has a number of more than 12 groups at {p}"
                )));
            }
            x |= (c & 0x1f) << (5 * k);
            let more = c & 0x20 != 0;
            p += 1;
            k += 1;
            if !more {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
            if p >= b.len() {
                return Err(Error::Eval("RLE counts string ends inside a number".into()));
            }
        }
        if counts.len() > 2 {
            x = x
                .checked_add(counts[counts.len() - 2])
                .ok_or_else(|| Error::Eval(format!("RLE run {} overflows", counts.len() + 1)))?;
        }
        counts.push(x);
    }
    counts
        .into_iter()
        .map(|c| {
            u64::try_from(c).map_err(|_| Error::Eval(format!("RLE run length {c} is negative")))
        })
        .collect()
}

/// Expands run lengths into a row-major `width * height` 0/1 mask.
pub fn decode(counts: &[u64], width: usize, height: usize) -> Result<Vec<u8>> {
    let n = width
        .checked_mul(height)
        .ok_or_else(|| Error::Eval(format!("mask size {width}x{height} overflows")))?;
    // Checked: hostile counts must not wrap to the right total and then run past the mask.
    let covered = counts.iter().try_fold(0u64, |t, &c| t.checked_add(c));
    if covered != Some(n as u64) {
        let covered = covered.map_or_else(|| "more than 2^64".to_string(), |t| t.to_string());
        return Err(Error::Eval(format!(
            "RLE covers {covered} pixels but the mask is {width}x{height} = {n}"
        )));
    }
    let mut out = vec![0u8; n];
    let mut i = 0usize; // column-major position
    for (k, &c) in counts.iter().enumerate() {
        let c = c as usize;
        if k % 2 == 1 {
            for p in i..i + c {
                let (x, y) = (p / height, p % height);
                out[y * width + x] = 1;
            }
        }
        i += c;
    }
    Ok(out)
}

/// Encodes a row-major mask as compressed COCO counts (used by the synthetic benchmark writer).
pub fn encode_string(mask: &[u8], width: usize, height: usize) -> String {
    let mut counts: Vec<i64> = Vec::new();
    let mut cur = 0u8;
    let mut run = 0i64;
    for x in 0..width {
        for y in 0..height {
            let v = (mask[y * width + x] != 0) as u8;
            if v != cur {
                counts.push(run);
                run = 0;
                cur = v;
            }
            run += 1;
        }
    }
    counts.push(run);
    let mut s = String::new();
    for i in 0..counts.len() {
        let mut x = counts[i];
        if i > 2 {
            x -= counts[i - 2];
        }
        loop {
            let mut c = x & 0x1f;
            x >>= 5;
            let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                c |= 0x20;
            }
            s.push((c as u8 + 48) as char);
            if !more {
                break;
            }
        }
    }
    s
}
