//! Overlays people can look at: masks blended on frames with a distinct colour per track, boxes,
//! scores and the prompt, drawn with a small built-in 5x7 bitmap font (no font files). Written as
//! PNG frames plus an animated GIF, and a frames x tracks grid for reports.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use crate::{Error, Result};

/// The built-in font: printable ASCII, 5 columns x 7 rows, bit 4 = leftmost column. The letters
/// with descenders (g, p, q, y) are drawn two rows lower, so a line of text is 9 rows tall.
mod font {
    pub const W: u32 = 5;
    /// Line height in font pixels, descenders included.
    pub const H: u32 = 9;
    const FIRST: u8 = b' ';
    #[rustfmt::skip]
    const GLYPHS: [[u8; 7]; 95] = [
        [0x00,0x00,0x00,0x00,0x00,0x00,0x00], // ' '
        [0x04,0x04,0x04,0x04,0x04,0x00,0x04], // !
        [0x0A,0x0A,0x00,0x00,0x00,0x00,0x00], // "
        [0x0A,0x0A,0x1F,0x0A,0x1F,0x0A,0x0A], // #
        [0x04,0x0F,0x14,0x0E,0x05,0x1E,0x04], // $
        [0x18,0x19,0x02,0x04,0x08,0x13,0x03], // %
        [0x0C,0x12,0x14,0x08,0x15,0x12,0x0D], // &
        [0x04,0x04,0x00,0x00,0x00,0x00,0x00], // '
        [0x02,0x04,0x08,0x08,0x08,0x04,0x02], // (
        [0x08,0x04,0x02,0x02,0x02,0x04,0x08], // )
        [0x00,0x04,0x15,0x0E,0x15,0x04,0x00], // *
        [0x00,0x04,0x04,0x1F,0x04,0x04,0x00], // +
        [0x00,0x00,0x00,0x00,0x0C,0x04,0x08], // ,
        [0x00,0x00,0x00,0x1F,0x00,0x00,0x00], // -
        [0x00,0x00,0x00,0x00,0x00,0x0C,0x0C], // .
        [0x00,0x01,0x02,0x04,0x08,0x10,0x00], // /
        [0x0E,0x11,0x13,0x15,0x19,0x11,0x0E], // 0
        [0x04,0x0C,0x04,0x04,0x04,0x04,0x0E], // 1
        [0x0E,0x11,0x01,0x02,0x04,0x08,0x1F], // 2
        [0x1F,0x02,0x04,0x02,0x01,0x11,0x0E], // 3
        [0x02,0x06,0x0A,0x12,0x1F,0x02,0x02], // 4
        [0x1F,0x10,0x1E,0x01,0x01,0x11,0x0E], // 5
        [0x06,0x08,0x10,0x1E,0x11,0x11,0x0E], // 6
        [0x1F,0x01,0x02,0x04,0x08,0x08,0x08], // 7
        [0x0E,0x11,0x11,0x0E,0x11,0x11,0x0E], // 8
        [0x0E,0x11,0x11,0x0F,0x01,0x02,0x0C], // 9
        [0x00,0x0C,0x0C,0x00,0x0C,0x0C,0x00], // :
        [0x00,0x0C,0x0C,0x00,0x0C,0x04,0x08], // ;
        [0x02,0x04,0x08,0x10,0x08,0x04,0x02], // <
        [0x00,0x00,0x1F,0x00,0x1F,0x00,0x00], // =
        [0x08,0x04,0x02,0x01,0x02,0x04,0x08], // >
        [0x0E,0x11,0x01,0x02,0x04,0x00,0x04], // ?
        [0x0E,0x11,0x01,0x0D,0x15,0x15,0x0E], // @
        [0x0E,0x11,0x11,0x11,0x1F,0x11,0x11], // A
        [0x1E,0x11,0x11,0x1E,0x11,0x11,0x1E], // B
        [0x0E,0x11,0x10,0x10,0x10,0x11,0x0E], // C
        [0x1C,0x12,0x11,0x11,0x11,0x12,0x1C], // D
        [0x1F,0x10,0x10,0x1E,0x10,0x10,0x1F], // E
        [0x1F,0x10,0x10,0x1E,0x10,0x10,0x10], // F
        [0x0E,0x11,0x10,0x17,0x11,0x11,0x0F], // G
        [0x11,0x11,0x11,0x1F,0x11,0x11,0x11], // H
        [0x0E,0x04,0x04,0x04,0x04,0x04,0x0E], // I
        [0x07,0x02,0x02,0x02,0x02,0x12,0x0C], // J
        [0x11,0x12,0x14,0x18,0x14,0x12,0x11], // K
        [0x10,0x10,0x10,0x10,0x10,0x10,0x1F], // L
        [0x11,0x1B,0x15,0x15,0x11,0x11,0x11], // M
        [0x11,0x11,0x19,0x15,0x13,0x11,0x11], // N
        [0x0E,0x11,0x11,0x11,0x11,0x11,0x0E], // O
        [0x1E,0x11,0x11,0x1E,0x10,0x10,0x10], // P
        [0x0E,0x11,0x11,0x11,0x15,0x12,0x0D], // Q
        [0x1E,0x11,0x11,0x1E,0x14,0x12,0x11], // R
        [0x0F,0x10,0x10,0x0E,0x01,0x01,0x1E], // S
        [0x1F,0x04,0x04,0x04,0x04,0x04,0x04], // T
        [0x11,0x11,0x11,0x11,0x11,0x11,0x0E], // U
        [0x11,0x11,0x11,0x11,0x11,0x0A,0x04], // V
        [0x11,0x11,0x11,0x15,0x15,0x15,0x0A], // W
        [0x11,0x11,0x0A,0x04,0x0A,0x11,0x11], // X
        [0x11,0x11,0x11,0x0A,0x04,0x04,0x04], // Y
        [0x1F,0x01,0x02,0x04,0x08,0x10,0x1F], // Z
        [0x0E,0x08,0x08,0x08,0x08,0x08,0x0E], // [
        [0x00,0x10,0x08,0x04,0x02,0x01,0x00], // backslash
        [0x0E,0x02,0x02,0x02,0x02,0x02,0x0E], // ]
        [0x04,0x0A,0x11,0x00,0x00,0x00,0x00], // ^
        [0x00,0x00,0x00,0x00,0x00,0x00,0x1F], // _
        [0x08,0x04,0x02,0x00,0x00,0x00,0x00], // `
        [0x00,0x00,0x0E,0x01,0x0F,0x11,0x0F], // a
        [0x10,0x10,0x16,0x19,0x11,0x11,0x1E], // b
        [0x00,0x00,0x0E,0x10,0x10,0x11,0x0E], // c
        [0x01,0x01,0x0D,0x13,0x11,0x11,0x0F], // d
        [0x00,0x00,0x0E,0x11,0x1F,0x10,0x0E], // e
        [0x06,0x09,0x08,0x1C,0x08,0x08,0x08], // f
        [0x0F,0x11,0x11,0x11,0x0F,0x01,0x0E], // g (descender)
        [0x10,0x10,0x16,0x19,0x11,0x11,0x11], // h
        [0x04,0x00,0x0C,0x04,0x04,0x04,0x0E], // i
        [0x02,0x00,0x06,0x02,0x02,0x12,0x0C], // j
        [0x10,0x10,0x12,0x14,0x18,0x14,0x12], // k
        [0x0C,0x04,0x04,0x04,0x04,0x04,0x0E], // l
        [0x00,0x00,0x1A,0x15,0x15,0x11,0x11], // m
        [0x00,0x00,0x16,0x19,0x11,0x11,0x11], // n
        [0x00,0x00,0x0E,0x11,0x11,0x11,0x0E], // o
        [0x1E,0x11,0x11,0x11,0x1E,0x10,0x10], // p (descender)
        [0x0F,0x11,0x11,0x11,0x0F,0x01,0x01], // q (descender)
        [0x00,0x00,0x16,0x19,0x10,0x10,0x10], // r
        [0x00,0x00,0x0E,0x10,0x0E,0x01,0x1E], // s
        [0x08,0x08,0x1C,0x08,0x08,0x09,0x06], // t
        [0x00,0x00,0x11,0x11,0x11,0x13,0x0D], // u
        [0x00,0x00,0x11,0x11,0x11,0x0A,0x04], // v
        [0x00,0x00,0x11,0x11,0x15,0x15,0x0A], // w
        [0x00,0x00,0x11,0x0A,0x04,0x0A,0x11], // x
        [0x11,0x11,0x11,0x11,0x0F,0x01,0x0E], // y (descender)
        [0x00,0x00,0x1F,0x02,0x04,0x08,0x1F], // z
        [0x02,0x04,0x04,0x08,0x04,0x04,0x02], // {
        [0x04,0x04,0x04,0x04,0x04,0x04,0x04], // |
        [0x08,0x04,0x04,0x02,0x04,0x04,0x08], // }
        [0x00,0x00,0x08,0x15,0x02,0x00,0x00], // ~
    ];

    /// Rows a glyph is drawn below the top of the line.
    pub fn drop(c: char) -> u32 {
        if matches!(c, 'g' | 'p' | 'q' | 'y') {
            2
        } else {
            0
        }
    }

    /// Rows of the glyph for `c`; characters outside printable ASCII draw as '?'.
    pub fn glyph(c: char) -> &'static [u8; 7] {
        let b = c as u32;
        if (FIRST as u32..FIRST as u32 + 95).contains(&b) {
            &GLYPHS[(b - FIRST as u32) as usize]
        } else {
            &GLYPHS[(b'?' - FIRST) as usize]
        }
    }
}

/// Pixel size of `text` drawn at integer `scale` (one column of spacing between glyphs).
pub fn text_size(text: &str, scale: u32) -> (u32, u32) {
    let n = text.chars().count() as u32;
    let w = if n == 0 {
        0
    } else {
        (n * (font::W + 1) - 1) * scale
    };
    (w, font::H * scale)
}

/// Draws `text` with its top-left corner at `(x, y)`; pixels outside the image are skipped.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, colour: [u8; 3], scale: u32) {
    let s = scale.max(1) as i64;
    let mut cx = x;
    for c in text.chars() {
        let g = font::glyph(c);
        let drop = font::drop(c) as i64;
        for (row, bits) in g.iter().enumerate() {
            for col in 0..font::W as i64 {
                if bits & (0x10 >> col) != 0 {
                    fill_rect(
                        img,
                        cx + col * s,
                        y + (row as i64 + drop) * s,
                        s as u32,
                        s as u32,
                        colour,
                    );
                }
            }
        }
        cx += (font::W as i64 + 1) * s;
    }
}

/// Fills a rectangle, clipped to the image.
pub fn fill_rect(img: &mut RgbImage, x: i64, y: i64, w: u32, h: u32, colour: [u8; 3]) {
    let (iw, ih) = (img.width() as i64, img.height() as i64);
    let (x0, y0) = (x.max(0), y.max(0));
    let (x1, y1) = ((x + w as i64).min(iw), (y + h as i64).min(ih));
    for yy in y0..y1 {
        for xx in x0..x1 {
            img.put_pixel(xx as u32, yy as u32, Rgb(colour));
        }
    }
}

/// Draws a rectangle outline `thickness` pixels wide inside the box `[x0, y0, x1, y1]` (inclusive).
pub fn draw_box(img: &mut RgbImage, b: [i64; 4], colour: [u8; 3], thickness: u32) {
    let [x0, y0, x1, y1] = b;
    let (w, h) = ((x1 - x0 + 1).max(1) as u32, (y1 - y0 + 1).max(1) as u32);
    let t = thickness.max(1);
    fill_rect(img, x0, y0, w, t, colour);
    fill_rect(img, x0, y1 + 1 - t as i64, w, t, colour);
    fill_rect(img, x0, y0, t, h, colour);
    fill_rect(img, x1 + 1 - t as i64, y0, t, h, colour);
}

/// A distinct, saturated colour for track `id` (a fixed high-contrast list, then golden-ratio hues).
pub fn track_colour(id: u32) -> [u8; 3] {
    const BASE: [[u8; 3]; 10] = [
        [230, 25, 75],
        [60, 180, 75],
        [0, 130, 200],
        [255, 225, 25],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
    ];
    if (id as usize) < BASE.len() {
        return BASE[id as usize];
    }
    let h = (id as f32 * 0.618_034).fract() * 6.0;
    let x = 1.0 - (h % 2.0 - 1.0).abs();
    let (r, g, b) = match h as u32 {
        0 => (1.0, x, 0.0),
        1 => (x, 1.0, 0.0),
        2 => (0.0, 1.0, x),
        3 => (0.0, x, 1.0),
        4 => (x, 0.0, 1.0),
        _ => (1.0, 0.0, x),
    };
    [
        (r * 230.0) as u8 + 25,
        (g * 230.0) as u8 + 25,
        (b * 230.0) as u8 + 25,
    ]
}

/// Tight box `[x0, y0, x1, y1]` (inclusive pixels) of a mask's non-zero pixels.
pub fn mask_bbox(mask: &[u8], width: usize, height: usize) -> Option<[u32; 4]> {
    bbox_where(mask, width, height, |v| v != 0)
}

/// The tight box of the pixels of `mask` for which `hit` holds.
fn bbox_where(
    mask: &[u8],
    width: usize,
    height: usize,
    hit: impl Fn(u8) -> bool,
) -> Option<[u32; 4]> {
    let mut b: Option<[u32; 4]> = None;
    for y in 0..height {
        let row = &mask[y * width..(y + 1) * width];
        let Some(first) = row.iter().position(|&v| hit(v)) else {
            continue;
        };
        let last = row.iter().rposition(|&v| hit(v)).unwrap_or(first);
        let (y, first, last) = (y as u32, first as u32, last as u32);
        b = Some(match b {
            None => [first, y, last, y],
            Some([x0, y0, x1, _]) => [x0.min(first), y0, x1.max(last), y],
        });
    }
    b
}

/// One tracked object to draw on a frame.
#[derive(Debug, Clone, Copy)]
pub struct Track<'a> {
    /// Track id; picks the colour.
    pub id: u32,
    /// `width * height` mask, non-zero = object (may be empty to draw only the box); with
    /// `mask_label`, a label mask shared by several tracks.
    pub mask: &'a [u8],
    /// `Some(v)`: `mask` is a label mask and this track covers its pixels equal to `v` (several
    /// tracks then share one mask, blended in one pass); `None`: its non-zero pixels.
    pub mask_label: Option<u8>,
    /// Detection score shown next to the id.
    pub score: Option<f32>,
    /// Box `[x0, y0, x1, y1]` in pixels; the mask's tight box when `None`.
    pub bbox: Option<[f32; 4]>,
    /// Text shown instead of `#id` (e.g. the object's id and prompt); the score follows it.
    pub label: Option<&'a str>,
}

/// How overlays look.
#[derive(Debug, Clone, Copy)]
pub struct OverlayStyle {
    /// Mask opacity (0 = invisible, 1 = solid colour).
    pub alpha: f32,
    /// Text scale; 0 picks one from the frame height (at least 2 pixels per font pixel at 480p).
    pub text_scale: u32,
    /// Box line width in pixels; 0 picks one from the frame size.
    pub box_thickness: u32,
}

impl Default for OverlayStyle {
    fn default() -> Self {
        Self {
            alpha: 0.5,
            text_scale: 0,
            box_thickness: 0,
        }
    }
}

/// Draws `tracks` and `prompt` on a copy of `frame`.
pub fn draw_overlay(
    frame: &RgbImage,
    tracks: &[Track<'_>],
    prompt: &str,
    style: &OverlayStyle,
) -> Result<RgbImage> {
    let mut img = frame.clone();
    draw_overlay_on(&mut img, tracks, prompt, style)?;
    Ok(img)
}

/// Draws `tracks` and `prompt` on `img` in place (a sink reuses one image frame after frame).
pub fn draw_overlay_on(
    img: &mut RgbImage,
    tracks: &[Track<'_>],
    prompt: &str,
    style: &OverlayStyle,
) -> Result<()> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let scale = if style.text_scale > 0 {
        style.text_scale
    } else {
        ((h as u32 + 90) / 160).clamp(1, 4)
    };
    let thick = if style.box_thickness > 0 {
        style.box_thickness
    } else {
        ((w.min(h) as u32) / 200).clamp(1, 4)
    };
    let a = style.alpha.clamp(0.0, 1.0);
    for t in tracks {
        if !t.mask.is_empty() && t.mask.len() != w * h {
            return Err(Error::Other(format!(
                "overlay: track {} mask has {} bytes, frame is {w}x{h}",
                t.id,
                t.mask.len()
            )));
        }
    }
    let blend = |v: u8, c: u8| (v as f32 * (1.0 - a) + c as f32 * a).round() as u8;
    let shared = tracks.first().map(|t| t.mask).filter(|m| !m.is_empty());
    let one_label_mask = shared.is_some_and(|m| {
        tracks
            .iter()
            .all(|t| t.mask_label.is_some() && std::ptr::eq(t.mask, m))
    });
    if let (true, Some(labels)) = (one_label_mask, shared) {
        // One pass over the shared label mask, each label's colour from a table.
        let mut colour: [Option<[u8; 3]>; 256] = [None; 256];
        for t in tracks {
            if let Some(v) = t.mask_label.filter(|&v| v != 0) {
                colour[v as usize] = Some(track_colour(t.id));
            }
        }
        for (px, &l) in img.pixels_mut().zip(labels) {
            if let Some(c) = colour[l as usize] {
                px.0 = [
                    blend(px.0[0], c[0]),
                    blend(px.0[1], c[1]),
                    blend(px.0[2], c[2]),
                ];
            }
        }
    } else {
        for t in tracks {
            let c = track_colour(t.id);
            for (px, &m) in img.pixels_mut().zip(t.mask) {
                if covers(t, m) {
                    for (v, &ck) in px.0.iter_mut().zip(&c) {
                        *v = blend(*v, ck);
                    }
                }
            }
        }
    }
    let banner = draw_banner(img, prompt, scale) as i64;
    // Boxes and labels after all masks so no mask covers another track's text.
    for t in tracks {
        let c = track_colour(t.id);
        let b = match t.bbox {
            Some([x0, y0, x1, y1]) => Some([x0 as i64, y0 as i64, x1 as i64, y1 as i64]),
            None if !t.mask.is_empty() => bbox_where(t.mask, w, h, |m| covers(t, m))
                .map(|[a, b, c, d]| [a as i64, b as i64, c as i64, d as i64]),
            None => None,
        };
        let Some(b) = b else { continue };
        draw_box(img, b, c, thick);
        let name = match t.label {
            Some(l) => l.to_string(),
            None => format!("#{}", t.id),
        };
        let label = match t.score {
            Some(s) => format!("{name} {s:.2}"),
            None => name,
        };
        let (tw, th) = text_size(&label, scale);
        let pad = scale as i64;
        let lh = th as i64 + 2 * pad;
        // Above the box when there is room below the prompt banner, otherwise inside its top edge.
        let ly = if b[1] - lh >= banner {
            b[1] - lh
        } else {
            b[1].max(banner)
        };
        let lx = b[0].min(w as i64 - tw as i64 - 2 * pad).max(0);
        fill_rect(img, lx, ly, tw + 2 * pad as u32, lh as u32, c);
        draw_text(img, lx + pad, ly + pad, &label, contrast_text(c), scale);
    }
    Ok(())
}

/// Whether mask value `m` is one of `t`'s pixels.
fn covers(t: &Track<'_>, m: u8) -> bool {
    match t.mask_label {
        Some(v) => m == v,
        None => m != 0,
    }
}

/// Black or white, whichever reads better on `bg`.
fn contrast_text(bg: [u8; 3]) -> [u8; 3] {
    let l = 0.299 * bg[0] as f32 + 0.587 * bg[1] as f32 + 0.114 * bg[2] as f32;
    if l > 140.0 {
        [0, 0, 0]
    } else {
        [255, 255, 255]
    }
}

/// The prompt in white on a dark strip at the top, shortened with "..." to fit the width.
/// Returns the strip's height.
fn draw_banner(img: &mut RgbImage, prompt: &str, scale: u32) -> u32 {
    if prompt.is_empty() {
        return 0;
    }
    let pad = 2 * scale;
    let max_chars = ((img.width().saturating_sub(2 * pad) / scale + 1) / (font::W + 1)) as usize;
    let mut text: String = prompt.chars().take(max_chars).collect();
    if prompt.chars().count() > max_chars && max_chars > 3 {
        text = prompt.chars().take(max_chars - 3).collect::<String>() + "...";
    }
    let (_, th) = text_size(&text, scale);
    let bh = th + 2 * pad;
    // Darken rather than paint over so the frame stays visible under the strip.
    for y in 0..bh.min(img.height()) {
        for x in 0..img.width() {
            let p = img.get_pixel_mut(x, y);
            for v in p.0.iter_mut() {
                *v /= 4;
            }
        }
    }
    draw_text(img, pad as i64, pad as i64, &text, [255, 255, 255], scale);
    bh
}

/// Writes overlay frames as `DIR/NNNNN.png` and an animated `DIR/overlay.gif` (looping, `delay_ms`
/// per frame, scaled down to at most `gif_max_width` pixels wide). Returns the GIF path.
pub fn write_sequence(
    dir: &Path,
    frames: &[RgbImage],
    delay_ms: u32,
    gif_max_width: u32,
) -> Result<PathBuf> {
    use rayon::prelude::*;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    frames.par_iter().enumerate().try_for_each(|(i, f)| {
        let p = dir.join(format!("{i:05}.png"));
        write_png(&p, f)
    })?;
    let gif = dir.join("overlay.gif");
    write_gif(&gif, frames, delay_ms, gif_max_width)?;
    Ok(gif)
}

/// Writes `img` as a PNG through an explicitly flushed writer: `RgbImage::save` drops its buffer
/// unflushed and so loses the error of the last write (a full disk).
pub fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    let err = |e: String| Error::Other(format!("{}: cannot write PNG: {e}", path.display()));
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = std::io::BufWriter::new(file);
    img.write_to(&mut w, image::ImageFormat::Png)
        .map_err(|e| err(e.to_string()))?;
    std::io::Write::flush(&mut w).map_err(|e| err(e.to_string()))
}

/// `f` scaled down to `max_width` pixels wide (aspect kept), as a GIF frame; narrower frames and
/// `max_width` 0 keep their size. Sinks keep GIF frames at this size, not the camera's.
pub fn gif_frame(f: &RgbImage, max_width: u32) -> RgbImage {
    if max_width > 0 && f.width() > max_width {
        let h = (f.height() as u64 * max_width as u64 / f.width() as u64).max(1) as u32;
        image::imageops::resize(f, max_width, h, image::imageops::FilterType::Triangle)
    } else {
        f.clone()
    }
}

/// Writes an animated, looping GIF of `frames` (each scaled down to `max_width` as [`gif_frame`]).
pub fn write_gif(path: &Path, frames: &[RgbImage], delay_ms: u32, max_width: u32) -> Result<()> {
    use image::codecs::gif::{GifEncoder, Repeat};
    use rayon::prelude::*;
    let err =
        |e: image::ImageError| Error::Other(format!("{}: cannot write GIF: {e}", path.display()));
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut out = std::io::BufWriter::new(file);
    {
        let mut enc = GifEncoder::new_with_speed(&mut out, 10);
        enc.set_repeat(Repeat::Infinite).map_err(err)?;
        let delay = image::Delay::from_numer_denom_ms(delay_ms.max(10), 1);
        let scaled: Vec<image::RgbaImage> = frames
            .par_iter()
            .map(|f| image::DynamicImage::ImageRgb8(gif_frame(f, max_width)).to_rgba8())
            .collect();
        for f in scaled {
            enc.encode_frame(image::Frame::from_parts(f, 0, 0, delay))
                .map_err(err)?;
        }
        // Dropping the encoder writes the trailer into `out`'s buffer (its error, if any, is
        // dropped there, but a buffered one-byte write does not fail); the flush below reports
        // what reaching the disk did.
    }
    std::io::Write::flush(&mut out).map_err(|e| Error::io(path, e))
}

/// A grid for reports: one row per frame, one column per track, each cell scaled to `cell_width`
/// pixels wide, separated by 2-pixel gaps. `cells[row][col]`; rows may be ragged (gaps stay dark).
pub fn grid_image(cells: &[Vec<RgbImage>], cell_width: u32) -> Result<RgbImage> {
    let cols = cells.iter().map(Vec::len).max().unwrap_or(0);
    let first = cells
        .iter()
        .flatten()
        .next()
        .ok_or_else(|| Error::Other("grid_image: no cells".into()))?;
    let cw = cell_width.max(1);
    let ch = (first.height() as u64 * cw as u64 / first.width().max(1) as u64).max(1) as u32;
    let gap = 2u32;
    let (gw, gh) = (
        cols as u32 * (cw + gap) + gap,
        cells.len() as u32 * (ch + gap) + gap,
    );
    let mut grid = RgbImage::from_pixel(gw, gh, Rgb([24, 24, 24]));
    for (r, row) in cells.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let cell = image::imageops::resize(img, cw, ch, image::imageops::FilterType::Triangle);
            image::imageops::replace(
                &mut grid,
                &cell,
                (gap + c as u32 * (cw + gap)) as i64,
                (gap + r as u32 * (ch + gap)) as i64,
            );
        }
    }
    Ok(grid)
}

/// Draws every frame with its tracks and the prompt (in parallel), then writes the PNG frames and
/// the animated GIF into `dir`, as `demo` and `run --save-dir` do. `tracks[t]` are frame `t`'s
/// tracks. Returns the GIF path.
pub fn render_video(
    dir: &Path,
    frames: &[RgbImage],
    tracks: &[Vec<Track<'_>>],
    prompt: &str,
    style: &OverlayStyle,
    delay_ms: u32,
) -> Result<PathBuf> {
    use rayon::prelude::*;
    if frames.len() != tracks.len() {
        return Err(Error::Other(format!(
            "overlay: {} frames but tracks for {}",
            frames.len(),
            tracks.len()
        )));
    }
    let drawn = frames
        .par_iter()
        .zip(tracks.par_iter())
        .map(|(f, t)| draw_overlay(f, t, prompt, style))
        .collect::<Result<Vec<_>>>()?;
    write_sequence(dir, &drawn, delay_ms, 640)
}

/// A frames x tracks grid: cell `(t, k)` is frame `t` with only track `k` drawn (prompt on top).
/// At most `max_rows` frames, evenly spaced, are shown.
pub fn track_grid(
    frames: &[RgbImage],
    tracks: &[Vec<Track<'_>>],
    prompt: &str,
    cell_width: u32,
    max_rows: usize,
) -> Result<RgbImage> {
    use rayon::prelude::*;
    if frames.is_empty() || frames.len() != tracks.len() {
        return Err(Error::Other(format!(
            "track grid: {} frames, tracks for {}",
            frames.len(),
            tracks.len()
        )));
    }
    let n = frames.len();
    let rows = max_rows.clamp(1, n);
    let picks: Vec<usize> = (0..rows)
        .map(|i| {
            if rows == 1 {
                0
            } else {
                i * (n - 1) / (rows - 1)
            }
        })
        .collect();
    let mut ids: Vec<u32> = tracks.iter().flatten().map(|t| t.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let style = OverlayStyle::default();
    let cells = picks
        .par_iter()
        .map(|&t| {
            if ids.is_empty() {
                return Ok(vec![draw_overlay(&frames[t], &[], prompt, &style)?]);
            }
            ids.iter()
                .map(|id| {
                    let only: Vec<Track> =
                        tracks[t].iter().filter(|k| k.id == *id).copied().collect();
                    draw_overlay(&frames[t], &only, prompt, &style)
                })
                .collect()
        })
        .collect::<Result<Vec<Vec<RgbImage>>>>()?;
    grid_image(&cells, cell_width)
}
