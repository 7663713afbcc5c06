//! Pixel-format conversion into RGB8 and the model's input preprocessing.
//!
//! Conversions write into caller-owned buffers and allocate nothing. The [`Preprocessor`] reproduces the
//! official transform (docs/model.md: Image preprocessing): torchvision `Resize(360)` on a PIL image, i.e. PIL's
//! antialiased bilinear resampling (a triangle filter whose support widens with the downscale factor),
//! computed in PIL's 8-bit fixed point with a horizontal pass followed by a vertical pass; then `/255`
//! and ImageNet mean/std normalisation into a channel-first `f32` buffer.

use crate::{Error, Result};

/// Pixel formats a capture device can deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Packed 4:2:2 `Y0 U Y1 V`, 2 bytes per pixel.
    Yuyv,
    /// Motion JPEG: each frame a JPEG image.
    Mjpeg,
    /// Packed 8-bit RGB, 3 bytes per pixel (V4L2 `RGB3`).
    Rgb24,
    /// Packed 8-bit BGR, 3 bytes per pixel (V4L2 `BGR3`).
    Bgr24,
}

impl PixelFormat {
    /// The V4L2 FourCC code of the format.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Mjpeg => *b"MJPG",
            PixelFormat::Rgb24 => *b"RGB3",
            PixelFormat::Bgr24 => *b"BGR3",
        }
    }

    /// Parses a V4L2 FourCC code; `None` for formats we cannot convert.
    pub fn from_fourcc(code: [u8; 4]) -> Option<Self> {
        match &code {
            b"YUYV" => Some(PixelFormat::Yuyv),
            b"MJPG" | b"JPEG" => Some(PixelFormat::Mjpeg),
            b"RGB3" => Some(PixelFormat::Rgb24),
            b"BGR3" => Some(PixelFormat::Bgr24),
            _ => None,
        }
    }
}

/// Converts packed YUYV (BT.601 limited range, the V4L2 default for webcams) into RGB8.
///
/// `src` holds `height` rows of `stride` bytes (stride ≥ 2·width); `dst` receives `width*height*3` bytes.
pub fn yuyv_to_rgb(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    dst: &mut [u8],
) -> Result<()> {
    let (w, h) = (width as usize, height as usize);
    if w % 2 != 0 {
        return Err(Error::Source(format!("YUYV width {w} must be even")));
    }
    if stride < 2 * w || src.len() < stride * (h.max(1) - 1) + 2 * w || dst.len() < w * h * 3 {
        return Err(Error::Source(format!(
            "YUYV {w}x{h}: buffer of {} bytes (stride {stride}) or output of {} bytes too small",
            src.len(),
            dst.len()
        )));
    }
    for y in 0..h {
        let row = &src[y * stride..y * stride + 2 * w];
        let out = &mut dst[y * w * 3..(y + 1) * w * 3];
        for (quad, px) in row.chunks_exact(4).zip(out.chunks_exact_mut(6)) {
            let (y0, u, y1, v) = (quad[0], quad[1], quad[2], quad[3]);
            let (r, g, b) = yuv_px(y0, u, v);
            px[0] = r;
            px[1] = g;
            px[2] = b;
            let (r, g, b) = yuv_px(y1, u, v);
            px[3] = r;
            px[4] = g;
            px[5] = b;
        }
    }
    Ok(())
}

/// BT.601 limited-range YCbCr → RGB in 16.16 fixed point.
#[inline]
fn yuv_px(y: u8, u: u8, v: u8) -> (u8, u8, u8) {
    let c = (y as i32 - 16).max(0) * 76309; // 1.164 * 65536
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    let r = (c + 104597 * e + 32768) >> 16; // 1.596
    let g = (c - 25675 * d - 53279 * e + 32768) >> 16; // 0.392, 0.813
    let b = (c + 132201 * d + 32768) >> 16; // 2.017
    (clamp8(r), clamp8(g), clamp8(b))
}

#[inline]
fn clamp8(x: i32) -> u8 {
    x.clamp(0, 255) as u8
}

/// Copies packed RGB24 (with a row stride) into a tight RGB8 buffer; `bgr` swaps R and B.
pub fn rgb24_to_rgb(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    bgr: bool,
    dst: &mut [u8],
) -> Result<()> {
    packed_to_rgb(src, (width, height, stride), 3, bgr, dst)
}

/// Copies packed 4-byte RGBx/RGBA (with a row stride) into a tight RGB8 buffer, dropping the fourth
/// byte; `bgr` reads BGRx/BGRA (what Jetson's `nvvidconv` and most hardware converters emit).
pub fn rgbx_to_rgb(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    bgr: bool,
    dst: &mut [u8],
) -> Result<()> {
    packed_to_rgb(src, (width, height, stride), 4, bgr, dst)
}

/// Packed 8-bit RGB or BGR pixels of `bytes` bytes each (3, or 4 with one ignored), rows of `stride`
/// bytes → tight RGB8.
fn packed_to_rgb(
    src: &[u8],
    (width, height, stride): (u32, u32, usize),
    bytes: usize,
    bgr: bool,
    dst: &mut [u8],
) -> Result<()> {
    let (w, h) = (width as usize, height as usize);
    let row_bytes = bytes * w;
    if stride < row_bytes
        || src.len() < stride * (h.max(1) - 1) + row_bytes
        || dst.len() < w * h * 3
    {
        return Err(Error::Source(format!(
            "{} {w}x{h}: buffer of {} bytes (stride {stride}) or output of {} bytes too small",
            if bytes == 3 { "RGB24" } else { "RGBx" },
            src.len(),
            dst.len()
        )));
    }
    let (r, b) = if bgr { (2, 0) } else { (0, 2) };
    for y in 0..h {
        let row = &src[y * stride..y * stride + row_bytes];
        let out = &mut dst[y * w * 3..(y + 1) * w * 3];
        if bytes == 3 && !bgr {
            out.copy_from_slice(row);
            continue;
        }
        for (s, d) in row.chunks_exact(bytes).zip(out.chunks_exact_mut(3)) {
            d[0] = s[r];
            d[1] = s[1];
            d[2] = s[b];
        }
    }
    Ok(())
}

/// Layout of the chroma of a planar 4:2:0 frame (tight rows, even width and height).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chroma420 {
    /// One interleaved `U V` plane after the luma plane (NV12: hardware decoders, Jetson's buffers).
    Nv12,
    /// A `U` plane, then a `V` plane (I420 / `yuv420p`: software decoders, ffmpeg).
    I420,
}

/// Converts a tight planar 4:2:0 frame (BT.601 limited range, the same per-pixel maths as
/// [`yuyv_to_rgb`]) into RGB8. Each 2×2 block of luma shares one chroma sample.
pub fn yuv420_to_rgb(
    src: &[u8],
    width: u32,
    height: u32,
    chroma: Chroma420,
    dst: &mut [u8],
) -> Result<()> {
    let (w, h) = (width as usize, height as usize);
    if w % 2 != 0 || h % 2 != 0 {
        return Err(Error::Source(format!(
            "4:2:0 frame {w}x{h}: width and height must be even"
        )));
    }
    let (luma, quarter) = (w * h, (w / 2) * (h / 2));
    if src.len() < luma + 2 * quarter || dst.len() < w * h * 3 {
        return Err(Error::Source(format!(
            "4:2:0 {w}x{h}: buffer of {} bytes or output of {} bytes too small",
            src.len(),
            dst.len()
        )));
    }
    let (ys, cs) = src.split_at(luma);
    for y in 0..h {
        let row = &ys[y * w..(y + 1) * w];
        let out = &mut dst[y * w * 3..(y + 1) * w * 3];
        let c = (y / 2) * (w / 2);
        for (x2, (pair, px)) in row.chunks_exact(2).zip(out.chunks_exact_mut(6)).enumerate() {
            let (u, v) = match chroma {
                Chroma420::Nv12 => (cs[2 * (c + x2)], cs[2 * (c + x2) + 1]),
                Chroma420::I420 => (cs[c + x2], cs[quarter + c + x2]),
            };
            let (r, g, b) = yuv_px(pair[0], u, v);
            px[0] = r;
            px[1] = g;
            px[2] = b;
            let (r, g, b) = yuv_px(pair[1], u, v);
            px[3] = r;
            px[4] = g;
            px[5] = b;
        }
    }
    Ok(())
}

/// Decodes one MJPEG frame into RGB8. The JPEG decoder keeps internal scratch buffers, so unlike the
/// other conversions this one allocates per frame (inside the decoder); the output goes to `dst`.
pub fn mjpeg_to_rgb(src: &[u8], width: u32, height: u32, dst: &mut [u8]) -> Result<()> {
    use image::ImageDecoder;
    let dec = image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(src))
        .map_err(|e| Error::Source(format!("MJPEG frame: {e}")))?;
    let (w, h) = dec.dimensions();
    if (w, h) != (width, height) {
        return Err(Error::Source(format!(
            "MJPEG frame is {w}x{h}, the negotiated size is {width}x{height}"
        )));
    }
    let need = w as usize * h as usize * 3;
    match dec.color_type() {
        image::ColorType::Rgb8 => {
            if dst.len() < need {
                return Err(Error::Source("MJPEG output buffer too small".into()));
            }
            dec.read_image(&mut dst[..need])
                .map_err(|e| Error::Source(format!("MJPEG frame: {e}")))
        }
        other => Err(Error::Source(format!(
            "MJPEG frame has colour type {other:?}, expected RGB"
        ))),
    }
}

/// ImageNet mean used by the official transform.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet std used by the official transform.
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// PIL's fixed-point precision for 8-bit resampling (the GPU preprocessing kernel shifts by the same).
pub const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Read-only view of one axis' resampling taps, for a GPU implementation of the same filter: output `i`
/// reads inputs `start[i] .. start[i] + len[i]` with weights `weights[i * ksize ..][.. len[i]]` (fixed
/// point, [`PRECISION_BITS`]).
#[derive(Debug, Clone, Copy)]
pub struct TapsView<'a> {
    /// First input index per output index.
    pub start: &'a [u32],
    /// Number of taps per output index.
    pub len: &'a [u32],
    /// `ksize` weights per output index.
    pub weights: &'a [i32],
    /// Row length of `weights`.
    pub ksize: usize,
}

/// Precomputed resampling taps along one axis.
#[derive(Debug, Clone)]
struct Taps {
    /// First input index per output index.
    start: Vec<u32>,
    /// Number of taps per output index.
    len: Vec<u32>,
    /// `ksize` fixed-point weights per output index.
    weights: Vec<i32>,
    ksize: usize,
}

impl Taps {
    fn view(&self) -> TapsView<'_> {
        TapsView {
            start: &self.start,
            len: &self.len,
            weights: &self.weights,
            ksize: self.ksize,
        }
    }

    /// Triangle-filter taps for resampling `in_size` → `out_size` samples, as PIL computes them.
    fn new(in_size: u32, out_size: u32) -> Taps {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filterscale; // the triangle filter has support 1
        let ksize = support.ceil() as usize * 2 + 1;
        let mut start = Vec::with_capacity(out_size as usize);
        let mut len = Vec::with_capacity(out_size as usize);
        let mut weights = vec![0i32; out_size as usize * ksize];
        let mut k = vec![0f64; ksize];
        for xx in 0..out_size as usize {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C-style truncation toward zero, then clamping, as PIL does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin).min(ksize);
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(n) {
                let t = ((x + xmin) as f64 - center + 0.5) * ss;
                let w = triangle(t);
                *kx = w;
                ww += w;
            }
            let row = &mut weights[xx * ksize..(xx + 1) * ksize];
            for x in 0..n {
                let w = if ww != 0.0 { k[x] / ww } else { k[x] };
                let f = w * (1u64 << PRECISION_BITS) as f64;
                row[x] = if w < 0.0 {
                    (f - 0.5) as i32
                } else {
                    (f + 0.5) as i32
                };
            }
            start.push(xmin as u32);
            len.push(n as u32);
        }
        Taps {
            start,
            len,
            weights,
            ksize,
        }
    }
}

#[inline]
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

#[inline]
fn clip_fixed(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Model input size for a frame: the shorter side becomes `short_side`, the longer side
/// `int(short_side * long / short)` (truncated), as torchvision's `Resize(int)` computes it. `None`
/// when a size is 0 or the longer side does not fit in a `u32` (a 1x11930466 frame at 360 would be
/// 360x4294967760); [`resized_size_wide`] gives that size unbounded, for error messages and limits.
pub fn resized_size(in_w: u32, in_h: u32, short_side: u32) -> Option<(u32, u32)> {
    let (w, h) = resized_size_wide(in_w, in_h, short_side)?;
    Some((u32::try_from(w).ok()?, u32::try_from(h).ok()?))
}

/// [`resized_size`] in `u64`, which holds every result exactly; `None` only when a size is 0.
pub fn resized_size_wide(in_w: u32, in_h: u32, short_side: u32) -> Option<(u64, u64)> {
    if in_w == 0 || in_h == 0 || short_side == 0 {
        return None;
    }
    let (short, long) = (in_w.min(in_h) as u64, in_w.max(in_h) as u64);
    // At most (2^32 - 1)^2: no overflow in u64.
    let long_out = short_side as u64 * long / short;
    Some(if in_w <= in_h {
        (short_side as u64, long_out)
    } else {
        (long_out, short_side as u64)
    })
}

/// Resize + normalise for one fixed input size; all buffers and filter taps are built at construction,
/// so [`Preprocessor::run`] allocates nothing.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    in_w: u32,
    in_h: u32,
    out_w: u32,
    out_h: u32,
    htaps: Taps,
    vtaps: Taps,
    /// Horizontal pass output: `in_h` rows of `out_w` RGB pixels.
    tmp: Vec<u8>,
    /// Final resized RGB8 image (`out_h × out_w × 3`).
    resized: Vec<u8>,
    /// Per-channel lookup table: byte value → normalised float.
    lut: [[f32; 256]; 3],
}

impl Preprocessor {
    /// A preprocessor for `in_w × in_h` RGB8 frames whose shorter side is resized to `short_side`.
    ///
    /// # Panics
    /// For sizes [`Preprocessor::try_new`] refuses (a zero size, buffers over the limit); sizes from
    /// outside the program (frames of a source) go through `try_new`.
    pub fn new(in_w: u32, in_h: u32, short_side: u32) -> Self {
        Self::try_new(in_w, in_h, short_side).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A preprocessor for `in_w × in_h` RGB8 frames whose shorter side is resized to `short_side`;
    /// an error, before anything is allocated, for a zero size, a resized side that does not fit in
    /// a `u32`, or a buffer over [`crate::limits::MAX_IMAGE_PIXELS`] pixels (see
    /// [`Preprocessor::try_to_size`]).
    pub fn try_new(in_w: u32, in_h: u32, short_side: u32) -> Result<Self> {
        let Some((out_w, out_h)) = resized_size(in_w, in_h, short_side) else {
            let what = match resized_size_wide(in_w, in_h, short_side) {
                Some((w, h)) => format!("resizes to {w}x{h}, a side over {} pixels", u32::MAX),
                None => "has no pixels".to_string(),
            };
            return Err(Error::BadInput {
                origin: format!("preprocessing a {in_w}x{in_h} frame (shorter side {short_side})"),
                reason: format!("the frame {what}"),
            });
        };
        Self::try_to_size(in_w, in_h, out_w, out_h)
    }

    /// A preprocessor for `in_w × in_h` RGB8 frames resized to exactly `out_w × out_h` (same filter and
    /// normalisation as [`Preprocessor::new`]; used where the engine's input size is fixed).
    ///
    /// # Panics
    /// For sizes [`Preprocessor::try_to_size`] refuses.
    pub fn to_size(in_w: u32, in_h: u32, out_w: u32, out_h: u32) -> Self {
        Self::try_to_size(in_w, in_h, out_w, out_h).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Preprocessor::to_size`], or an error before anything is allocated when a size is 0 or one
    /// of its buffers (the input, the horizontal pass's `in_h × out_w`, the output) would hold more
    /// than [`crate::limits::MAX_IMAGE_PIXELS`] pixels (a 1x1000000 frame at shorter side 360 asked
    /// for tens of GB).
    pub fn try_to_size(in_w: u32, in_h: u32, out_w: u32, out_h: u32) -> Result<Self> {
        let bad = |reason: String| Error::BadInput {
            origin: format!("preprocessing a {in_w}x{in_h} frame to {out_w}x{out_h}"),
            reason,
        };
        if in_w == 0 || in_h == 0 || out_w == 0 || out_h == 0 {
            return Err(bad("a size is 0".into()));
        }
        let max = crate::limits::MAX_IMAGE_PIXELS;
        for (what, a, b) in [
            ("input", in_w, in_h),
            ("horizontal pass", out_w, in_h),
            ("output", out_w, out_h),
        ] {
            // Both below 2^32: the product fits in u64.
            let pixels = a as u64 * b as u64;
            if pixels > max {
                return Err(bad(format!(
                    "its {what} buffer ({a}x{b}) would hold {pixels} pixels, more than the limit of {max}"
                )));
            }
        }
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, slot) in table.iter_mut().enumerate() {
                // Same float32 expression as ToTensor followed by Normalize.
                *slot = (v as f32 / 255.0 - MEAN[c]) / STD[c];
            }
        }
        Ok(Preprocessor {
            in_w,
            in_h,
            out_w,
            out_h,
            htaps: Taps::new(in_w, out_w),
            vtaps: Taps::new(in_h, out_h),
            tmp: vec![0; in_h as usize * out_w as usize * 3],
            resized: vec![0; out_h as usize * out_w as usize * 3],
            lut,
        })
    }

    /// Input size this preprocessor was built for.
    pub fn in_size(&self) -> (u32, u32) {
        (self.in_w, self.in_h)
    }

    /// Output `(width, height)`.
    pub fn out_size(&self) -> (u32, u32) {
        (self.out_w, self.out_h)
    }

    /// Number of `f32` values [`Preprocessor::run`] writes (`3 × out_h × out_w`).
    pub fn out_len(&self) -> usize {
        3 * self.out_w as usize * self.out_h as usize
    }

    /// The horizontal (`in_w → out_w`) and vertical (`in_h → out_h`) taps, so that a GPU kernel can
    /// resample with exactly this filter.
    pub fn taps(&self) -> (TapsView<'_>, TapsView<'_>) {
        (self.htaps.view(), self.vtaps.view())
    }

    /// Byte value → normalised float, per channel (R, G, B): the exact values [`Preprocessor::run`] writes.
    pub fn lut(&self) -> &[[f32; 256]; 3] {
        &self.lut
    }

    /// The 8-bit resized image of the last [`Preprocessor::resize`] or [`Preprocessor::run`] call.
    pub fn resized_rgb(&self) -> &[u8] {
        &self.resized
    }

    /// Resizes `rgb` (tight RGB8, `in_w × in_h`) into the internal 8-bit buffer, bit-compatible with
    /// PIL's `Image.resize(size, BILINEAR)`.
    pub fn resize(&mut self, rgb: &[u8]) -> Result<&[u8]> {
        let (iw, ih) = (self.in_w as usize, self.in_h as usize);
        let (ow, oh) = (self.out_w as usize, self.out_h as usize);
        if rgb.len() != iw * ih * 3 {
            return Err(Error::ShapeMismatch {
                what: "preprocess: frame bytes".into(),
                expected: format!("{iw}x{ih}x3 = {}", iw * ih * 3),
                found: rgb.len().to_string(),
            });
        }
        if (iw, ih) == (ow, oh) {
            // The filter is the identity at scale 1; skip the passes.
            self.resized.copy_from_slice(rgb);
            return Ok(&self.resized);
        }
        let half = 1i32 << (PRECISION_BITS - 1);
        // Horizontal pass: every input row, out_w pixels.
        let ht = &self.htaps;
        for y in 0..ih {
            let src = &rgb[y * iw * 3..(y + 1) * iw * 3];
            let dst = &mut self.tmp[y * ow * 3..(y + 1) * ow * 3];
            for x in 0..ow {
                let s = ht.start[x] as usize;
                let n = ht.len[x] as usize;
                let k = &ht.weights[x * ht.ksize..x * ht.ksize + n];
                let (mut a0, mut a1, mut a2) = (half, half, half);
                for (i, &w) in k.iter().enumerate() {
                    let p = &src[(s + i) * 3..(s + i) * 3 + 3];
                    a0 += p[0] as i32 * w;
                    a1 += p[1] as i32 * w;
                    a2 += p[2] as i32 * w;
                }
                dst[x * 3] = clip_fixed(a0);
                dst[x * 3 + 1] = clip_fixed(a1);
                dst[x * 3 + 2] = clip_fixed(a2);
            }
        }
        // Vertical pass: accumulate whole rows so the inner loop runs over contiguous bytes.
        let vt = &self.vtaps;
        let row_len = ow * 3;
        for y in 0..oh {
            let s = vt.start[y] as usize;
            let n = vt.len[y] as usize;
            let k = &vt.weights[y * vt.ksize..y * vt.ksize + n];
            let dst = &mut self.resized[y * row_len..(y + 1) * row_len];
            for (j, d) in dst.iter_mut().enumerate() {
                let mut acc = half;
                for (i, &w) in k.iter().enumerate() {
                    acc += self.tmp[(s + i) * row_len + j] as i32 * w;
                }
                *d = clip_fixed(acc);
            }
        }
        Ok(&self.resized)
    }

    /// Resizes and normalises `rgb` into `out_chw` (`[3, out_h, out_w]`, channel-first `f32`).
    pub fn run(&mut self, rgb: &[u8], out_chw: &mut [f32]) -> Result<()> {
        if out_chw.len() != self.out_len() {
            return Err(Error::ShapeMismatch {
                what: "preprocess: output floats".into(),
                expected: format!("3x{}x{} = {}", self.out_h, self.out_w, self.out_len()),
                found: out_chw.len().to_string(),
            });
        }
        self.resize(rgb)?;
        let plane = self.out_w as usize * self.out_h as usize;
        let (r, rest) = out_chw.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        // Zipped iterators: no bounds checks in the per-pixel loop (it runs 230 400 times at 360×640).
        let [lr, lg, lb] = &self.lut;
        let planes = r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut());
        for (px, ((r, g), b)) in self.resized.chunks_exact(3).zip(planes) {
            *r = lr[px[0] as usize];
            *g = lg[px[1] as usize];
            *b = lb[px[2] as usize];
        }
        Ok(())
    }
}

/// Converts a tight frame of `layout` into tight RGB8 (`dst`: `width × height × 3` bytes).
pub fn layout_to_rgb(
    layout: super::Layout,
    src: &[u8],
    width: u32,
    height: u32,
    dst: &mut [u8],
) -> Result<()> {
    let need = layout.frame_bytes(width, height);
    if Some(src.len()) != need || super::Layout::Rgb.frame_bytes(width, height).is_none() {
        return Err(Error::Source(format!(
            "{} frame {width}x{height}: {} bytes, {} expected",
            layout.name(),
            src.len(),
            need.map_or_else(|| "more than can be addressed".into(), |n| n.to_string())
        )));
    }
    let stride = width as usize * layout.bytes_per_pixel();
    match layout {
        super::Layout::Rgb | super::Layout::Bgr => rgb24_to_rgb(
            src,
            width,
            height,
            stride,
            layout == super::Layout::Bgr,
            dst,
        ),
        super::Layout::Yuyv => yuyv_to_rgb(src, width, height, stride, dst),
        super::Layout::Rgbx | super::Layout::Bgrx => rgbx_to_rgb(
            src,
            width,
            height,
            stride,
            layout == super::Layout::Bgrx,
            dst,
        ),
    }
}

/// Nearest-neighbour resize of a frame (any layout) into RGB8 `out` (resized to `w × h × 3`; no
/// allocation once it has that size). An error if the frame's pixels are not a whole frame, or it
/// has none (a 0-pixel frame would leave `out` as it was: an older frame under the new one's id).
pub fn resize_nearest(f: &super::Frame<'_>, w: u32, h: u32, out: &mut Vec<u8>) -> Result<()> {
    use super::Layout;
    let (sw, sh) = (f.width as usize, f.height as usize);
    if sw == 0 || sh == 0 {
        return Err(Error::Source(format!(
            "{} frame {sw}x{sh} has no pixels",
            f.layout.name()
        )));
    }
    if Some(f.pixels.len()) != f.layout.frame_bytes(f.width, f.height)
        || (f.layout == Layout::Yuyv && sw % 2 != 0)
    {
        return Err(Error::Source(format!(
            "{} frame {sw}x{sh}: {} bytes is not a whole frame",
            f.layout.name(),
            f.pixels.len()
        )));
    }
    let (w, h) = (w as usize, h as usize);
    out.resize(w * h * 3, 0);
    let bpp = f.layout.bytes_per_pixel();
    for y in 0..h {
        let row = &f.pixels[(y * sh / h) * sw * bpp..][..sw * bpp];
        for (x, d) in out[y * w * 3..(y + 1) * w * 3]
            .chunks_exact_mut(3)
            .enumerate()
        {
            let sx = x * sw / w;
            let px = match f.layout {
                Layout::Rgb => [row[sx * 3], row[sx * 3 + 1], row[sx * 3 + 2]],
                Layout::Bgr => [row[sx * 3 + 2], row[sx * 3 + 1], row[sx * 3]],
                Layout::Rgbx => [row[sx * 4], row[sx * 4 + 1], row[sx * 4 + 2]],
                Layout::Bgrx => [row[sx * 4 + 2], row[sx * 4 + 1], row[sx * 4]],
                Layout::Yuyv => {
                    // Each pair of pixels shares its U and V.
                    let q = &row[(sx & !1) * 2..][..4];
                    let (r, g, b) = yuv_px(row[sx * 2], q[1], q[3]);
                    [r, g, b]
                }
            };
            d.copy_from_slice(&px);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_sizes_match_spec_examples() {
        assert_eq!(resized_size(1280, 720, 360), Some((640, 360)));
        assert_eq!(resized_size(1920, 1080, 360), Some((640, 360)));
        assert_eq!(resized_size(854, 480, 360), Some((640, 360)));
        assert_eq!(resized_size(720, 1280, 360), Some((360, 640)));
        assert_eq!(resized_size(640, 360, 360), Some((640, 360)));
    }

    /// Sizes whose longer side overflows a `u32` are refused, not wrapped: 1x11930466 at 360 used to
    /// wrap to exactly 360x464 (a valid-looking input) and 1x67108864 to a size whose buffers took
    /// terabytes; a preprocessor for them, or for a 16x1000000 raw frame (24 GB of output), is an
    /// error before anything is allocated.
    #[test]
    fn huge_or_degenerate_sizes_are_refused_not_wrapped() {
        assert_eq!(resized_size(1, 11_930_466, 360), None);
        assert_eq!(
            resized_size_wide(1, 11_930_466, 360),
            Some((360, 4_294_967_760))
        );
        assert_eq!(resized_size(1, 67_108_864, 360), None);
        assert_eq!(resized_size(67_108_864, 1, 360), None);
        assert_eq!(resized_size(16, 1_000_000, 360), Some((360, 22_500_000)));
        assert_eq!(resized_size(0, 10, 360), None);
        assert_eq!(resized_size(10, 10, 0), None);
        for (w, h) in [(1, 11_930_466), (1, 67_108_864), (16, 1_000_000), (0, 0)] {
            let e = Preprocessor::try_new(w, h, 360).unwrap_err().to_string();
            assert!(e.contains(&format!("{w}x{h}")), "{e}");
        }
        let e = Preprocessor::try_new(1, 11_930_466, 360)
            .unwrap_err()
            .to_string();
        assert!(e.contains("360x4294967760"), "{e}");
        let e = Preprocessor::try_new(16, 1_000_000, 360)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than the limit"), "{e}");
        assert!(Preprocessor::try_to_size(640, 360, 0, 360).is_err());
        assert_eq!(
            Preprocessor::try_new(1280, 720, 360).unwrap().out_size(),
            (640, 360)
        );
    }

    #[test]
    fn taps_sum_to_one_and_identity_at_scale_one() {
        for (i, o) in [
            (1280u32, 640u32),
            (854, 640),
            (100, 37),
            (37, 100),
            (640, 640),
        ] {
            let t = Taps::new(i, o);
            for x in 0..o as usize {
                let n = t.len[x] as usize;
                let s: i64 = t.weights[x * t.ksize..x * t.ksize + n]
                    .iter()
                    .map(|&w| w as i64)
                    .sum();
                assert!(
                    (s - (1i64 << PRECISION_BITS)).abs() <= n as i64,
                    "{i}->{o} x={x} sum={s}"
                );
                assert!(t.start[x] as usize + n <= i as usize);
            }
        }
        let t = Taps::new(640, 640);
        for x in 0..640usize {
            assert_eq!(t.start[x] as usize, x);
            assert_eq!(t.weights[x * t.ksize], 1 << PRECISION_BITS);
        }
    }

    #[test]
    fn downscale_by_two_averages_pairs() {
        // 2:1 triangle filter with support 2 around centres at 1, 3, 5…: weights 1/8, 3/8, 3/8, 1/8.
        let (w, h) = (8u32, 720u32);
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        for y in 0..h as usize {
            for x in 0..w as usize {
                let v = (x * 20) as u8;
                rgb[(y * w as usize + x) * 3..][..3].copy_from_slice(&[v, v, v]);
            }
        }
        let mut p = Preprocessor::new(w, h, 4); // 8x720 -> short side 8 -> 4: out 4 x 360
        assert_eq!(p.out_size(), (4, 360));
        let out = p.resize(&rgb).unwrap().to_vec();
        // x=1 centre at 3 (input px 1..4): (20*1 + 40*3 + 60*3 + 80*1)/8 = 50.
        assert_eq!(out[3], 50);
        // x=0 at the border: taps 0..2 with weights 3/8,3/8,1/8 renormalised -> (0*3+20*3+40)/7 = 14.3
        assert_eq!(out[0], 14);
    }

    #[test]
    fn normalisation_matches_formula_and_rejects_bad_sizes() {
        let mut p = Preprocessor::new(4, 2, 2);
        assert_eq!(p.out_size(), (4, 2));
        let rgb: Vec<u8> = (0..24).map(|i| (i * 10) as u8).collect();
        let mut out = vec![0f32; p.out_len()];
        p.run(&rgb, &mut out).unwrap();
        let expect = |v: u8, c: usize| (v as f32 / 255.0 - MEAN[c]) / STD[c];
        assert_eq!(out[0], expect(0, 0));
        assert_eq!(out[8 + 1], expect(40, 1));
        assert_eq!(out[16 + 7], expect(230, 2));
        assert!(p.run(&rgb[..10], &mut out).is_err());
        let mut short = vec![0f32; 3];
        let e = p.run(&rgb, &mut short).unwrap_err().to_string();
        assert!(e.contains("expected 3x2x4"), "{e}");
    }

    #[test]
    fn yuyv_and_rgb_conversions() {
        // Two pixels: white (Y=235) and black (Y=16), neutral chroma.
        let src = [235u8, 128, 16, 128];
        let mut dst = [0u8; 6];
        yuyv_to_rgb(&src, 2, 1, 4, &mut dst).unwrap();
        assert_eq!(dst, [255, 255, 255, 0, 0, 0]);
        // Pure red in BT.601 limited range: Y=81, U=90, V=240.
        let src = [81u8, 90, 81, 240];
        yuyv_to_rgb(&src, 2, 1, 4, &mut dst).unwrap();
        assert!(dst[0] >= 250 && dst[1] <= 3 && dst[2] <= 3, "{dst:?}");
        assert!(yuyv_to_rgb(&src, 3, 1, 6, &mut dst).is_err());
        assert!(yuyv_to_rgb(&src, 2, 2, 4, &mut dst).is_err());
        let bgr = [1u8, 2, 3, 9, 4, 5, 6, 9];
        let mut out = [0u8; 3];
        rgb24_to_rgb(&bgr, 1, 2, 4, true, &mut [0u8; 6]).unwrap();
        rgb24_to_rgb(&bgr, 1, 1, 4, true, &mut out).unwrap();
        assert_eq!(out, [3, 2, 1]);
        assert_eq!(PixelFormat::from_fourcc(*b"YUYV"), Some(PixelFormat::Yuyv));
        assert_eq!(PixelFormat::from_fourcc(*b"NV12"), None);
        assert_eq!(PixelFormat::Mjpeg.fourcc(), *b"MJPG");
    }

    #[test]
    fn mjpeg_decodes_and_checks_size() {
        let (w, h) = (16u32, 8u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode(&rgb, w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        let mut out = vec![0u8; (w * h * 3) as usize];
        mjpeg_to_rgb(&jpeg, w, h, &mut out).unwrap();
        let mad: f64 = rgb
            .iter()
            .zip(&out)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / out.len() as f64;
        assert!(mad < 20.0, "mean abs diff {mad}");
        let e = mjpeg_to_rgb(&jpeg, 8, 8, &mut out).unwrap_err().to_string();
        assert!(e.contains("16x8"), "{e}");
        assert!(mjpeg_to_rgb(b"garbage", w, h, &mut out).is_err());
    }
}
