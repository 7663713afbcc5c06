//! PNG mask files: label maps read with their raw palette indices, palette and binary writers.
//!
//! The `image` crate expands palette PNGs to RGB, which loses the object ids that DAVIS-style
//! annotations store as palette indices, so label maps go through the `png` crate directly.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use crate::{Error, Result};

/// A per-pixel label map (`width * height` bytes; 0 = background).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Row-major labels.
    pub data: Vec<u8>,
}

impl LabelMap {
    /// Binary mask (0/1) of the pixels equal to `id`.
    pub fn object(&self, id: u8) -> Vec<u8> {
        self.data.iter().map(|&v| (v == id) as u8).collect()
    }

    /// Binary mask (0/1) of every non-zero pixel.
    pub fn foreground(&self) -> Vec<u8> {
        self.data.iter().map(|&v| (v != 0) as u8).collect()
    }
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Eval(format!("{}: {msg}", path.display()))
}

/// Reads a mask PNG as labels.
///
/// Palette images give their palette indices (DAVIS object ids), grayscale images their gray value
/// (16-bit: the high byte), and colour images 1 for any non-black pixel and 0 for black.
pub fn read_label_png(path: &Path) -> Result<LabelMap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut dec = png::Decoder::new(BufReader::new(file));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec
        .read_info()
        .map_err(|e| bad(path, format!("not a readable PNG: {e}")))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad(path, "PNG too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(path, format!("corrupt PNG data: {e}")))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let bits = info.bit_depth as usize;
    let line = info.line_size;
    use png::ColorType::*;
    let channels = match info.color_type {
        Grayscale | Indexed => 1,
        GrayscaleAlpha => 2,
        Rgb => 3,
        Rgba => 4,
    };
    let mut data = vec![0u8; w * h];
    for y in 0..h {
        let row = &buf[y * line..(y + 1) * line];
        let out = &mut data[y * w..(y + 1) * w];
        match (info.color_type, bits) {
            (Grayscale | Indexed, 1 | 2 | 4) => {
                let per = 8 / bits;
                let mask = (1u8 << bits) - 1;
                for (x, o) in out.iter_mut().enumerate() {
                    let byte = row[x / per];
                    let shift = 8 - bits * (x % per + 1);
                    *o = (byte >> shift) & mask;
                }
            }
            (Grayscale | Indexed | GrayscaleAlpha, 8) => {
                for (x, o) in out.iter_mut().enumerate() {
                    *o = row[x * channels];
                }
            }
            (Grayscale | GrayscaleAlpha, 16) => {
                for (x, o) in out.iter_mut().enumerate() {
                    *o = row[x * channels * 2];
                }
            }
            (Rgb | Rgba, 8 | 16) => {
                let bpc = bits / 8;
                for (x, o) in out.iter_mut().enumerate() {
                    let px = &row[x * channels * bpc..x * channels * bpc + 3 * bpc];
                    *o = px.iter().any(|&v| v != 0) as u8;
                }
            }
            (ct, b) => return Err(bad(path, format!("unsupported PNG format {ct:?} {b}-bit"))),
        }
    }
    Ok(LabelMap {
        width: w,
        height: h,
        data,
    })
}

/// The DAVIS / PASCAL VOC colour map: 256 RGB entries, index 0 black.
pub fn davis_palette() -> [u8; 768] {
    let mut p = [0u8; 768];
    for i in 0..256usize {
        let (mut r, mut g, mut b) = (0u8, 0u8, 0u8);
        let mut c = i;
        for j in 0..8 {
            r |= ((c & 1) as u8) << (7 - j);
            g |= (((c >> 1) & 1) as u8) << (7 - j);
            b |= (((c >> 2) & 1) as u8) << (7 - j);
            c >>= 3;
        }
        p[i * 3] = r;
        p[i * 3 + 1] = g;
        p[i * 3 + 2] = b;
    }
    p
}

fn check_len(path: &Path, width: usize, height: usize, data: &[u8]) -> Result<()> {
    if width == 0 || height == 0 || data.len() != width * height {
        return Err(bad(
            path,
            format!("mask has {} bytes, expected {width}x{height}", data.len()),
        ));
    }
    Ok(())
}

fn write_png(
    path: &Path,
    width: usize,
    height: usize,
    color: png::ColorType,
    palette: Option<&[u8]>,
    data: &[u8],
) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut enc = png::Encoder::new(BufWriter::new(file), width as u32, height as u32);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    if let Some(p) = palette {
        enc.set_palette(p.to_vec());
    }
    let mut w = enc
        .write_header()
        .map_err(|e| bad(path, format!("cannot write PNG: {e}")))?;
    w.write_image_data(data)
        .map_err(|e| bad(path, format!("cannot write PNG: {e}")))?;
    w.finish()
        .map_err(|e| bad(path, format!("cannot write PNG: {e}")))
}

/// Writes a label map as an 8-bit palette PNG with the DAVIS colour map (object id = index).
pub fn write_palette_png(path: &Path, width: usize, height: usize, labels: &[u8]) -> Result<()> {
    check_len(path, width, height, labels)?;
    write_png(
        path,
        width,
        height,
        png::ColorType::Indexed,
        Some(&davis_palette()),
        labels,
    )
}

/// Writes a binary mask (any non-zero = object) as an 8-bit grayscale PNG with values 0 / 255,
/// the layout the Ref-YouTube-VOS and MeViS servers accept.
pub fn write_binary_png(path: &Path, width: usize, height: usize, mask: &[u8]) -> Result<()> {
    check_len(path, width, height, mask)?;
    let data: Vec<u8> = mask.iter().map(|&v| if v != 0 { 255 } else { 0 }).collect();
    write_png(path, width, height, png::ColorType::Grayscale, None, &data)
}
