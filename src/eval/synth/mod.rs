//! A small synthetic benchmark for tests and CI: a few videos of coloured squares moving over a
//! gradient, written in the Ref-DAVIS17 layout (JPEG frames, palette PNG annotations,
//! `meta_expressions.json` with four annotators per object) or the MeViS layout (RLE `mask_dict.json`
//! and one multi-object expression per video).

pub mod clips;

use std::path::Path;

use serde_json::{json, Map, Value};

use super::rle::encode_string;
use crate::output::png::write_palette_png;
use crate::{Error, Result};

/// Size of the synthetic benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthSpec {
    /// Number of videos.
    pub videos: usize,
    /// Frames per video.
    pub frames: usize,
    /// Frame width.
    pub width: usize,
    /// Frame height.
    pub height: usize,
    /// Objects per video (at most 4).
    pub objects: usize,
}

impl Default for SynthSpec {
    fn default() -> Self {
        Self {
            videos: 2,
            frames: 6,
            width: 96,
            height: 64,
            objects: 2,
        }
    }
}

/// Side of every square.
pub const SQUARE: usize = 12;

const COLOURS: [(&str, [u8; 3]); 4] = [
    ("red", [220, 30, 30]),
    ("green", [30, 200, 40]),
    ("blue", [40, 60, 230]),
    ("yellow", [235, 220, 30]),
];

/// Top-left corner of object `k` in frame `t` of video `v`: each moves one pixel right and down per
/// frame (video index adds an offset so videos differ).
pub fn square_origin(v: usize, k: usize, t: usize) -> (usize, usize) {
    (4 + k * 20 + t + v, 6 + t + 2 * v)
}

/// 0/1 mask of object `k` in frame `t` of video `v`.
pub fn square_mask(spec: &SynthSpec, v: usize, k: usize, t: usize) -> Vec<u8> {
    let (x0, y0) = square_origin(v, k, t);
    let mut m = vec![0u8; spec.width * spec.height];
    for y in y0..(y0 + SQUARE).min(spec.height) {
        for x in x0..(x0 + SQUARE).min(spec.width) {
            m[y * spec.width + x] = 1;
        }
    }
    m
}

/// Video folder name.
pub fn video_name(v: usize) -> String {
    format!("synth-{v:02}")
}

/// Referring text of object `k` as written by annotator `a`.
pub fn expression_text(k: usize, a: usize) -> String {
    let c = COLOURS[k].0;
    match a {
        0 => format!("the {c} square"),
        1 => format!("a {c} box moving down"),
        2 => format!("{c} block"),
        _ => format!("the square that is {c}"),
    }
}

fn check(spec: &SynthSpec) -> Result<()> {
    if spec.objects == 0 || spec.objects > COLOURS.len() || spec.videos == 0 || spec.frames == 0 {
        return Err(Error::Eval(format!(
            "synthetic spec needs 1..=4 objects and at least one video and frame: {spec:?}"
        )));
    }
    let (x, y) = square_origin(spec.videos - 1, spec.objects - 1, spec.frames - 1);
    if x + SQUARE + 1 >= spec.width || y + SQUARE + 1 >= spec.height {
        return Err(Error::Eval(format!(
            "synthetic squares leave a {}x{} frame; make it larger",
            spec.width, spec.height
        )));
    }
    Ok(())
}

fn write_frames(dir: &Path, spec: &SynthSpec, v: usize) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for t in 0..spec.frames {
        let mut img = image::RgbImage::from_fn(spec.width as u32, spec.height as u32, |x, y| {
            image::Rgb([
                (40 + x * 120 / spec.width as u32) as u8,
                (60 + y * 100 / spec.height as u32) as u8,
                90,
            ])
        });
        for (k, (_, colour)) in COLOURS.iter().enumerate().take(spec.objects) {
            let (x0, y0) = square_origin(v, k, t);
            for y in y0..y0 + SQUARE {
                for x in x0..x0 + SQUARE {
                    img.put_pixel(x as u32, y as u32, image::Rgb(*colour));
                }
            }
        }
        let p = dir.join(format!("{t:05}.jpg"));
        img.save(&p)
            .map_err(|e| Error::Eval(format!("{}: cannot write JPEG: {e}", p.display())))?;
    }
    Ok(())
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Eval(e.to_string()))?;
    std::fs::write(path, s).map_err(|e| Error::io(path, e))
}

/// Writes the benchmark under `root` in the Ref-DAVIS17 (= Ref-YouTube-VOS) layout, split `valid`:
/// expression id `4k + a` is object `k + 1` described by annotator `a`.
pub fn write_ref_davis17(root: &Path, spec: &SynthSpec) -> Result<()> {
    check(spec)?;
    let mut videos = Map::new();
    for v in 0..spec.videos {
        let name = video_name(v);
        write_frames(&root.join("valid/JPEGImages").join(&name), spec, v)?;
        for t in 0..spec.frames {
            let mut labels = vec![0u8; spec.width * spec.height];
            for k in 0..spec.objects {
                for (l, m) in labels.iter_mut().zip(square_mask(spec, v, k, t)) {
                    if m != 0 {
                        *l = (k + 1) as u8;
                    }
                }
            }
            let p = root
                .join("valid/Annotations")
                .join(&name)
                .join(format!("{t:05}.png"));
            write_palette_png(&p, spec.width, spec.height, &labels)?;
        }
        let mut exps = Map::new();
        for k in 0..spec.objects {
            for a in 0..4 {
                exps.insert(
                    (4 * k + a).to_string(),
                    json!({"exp": expression_text(k, a), "obj_id": (k + 1).to_string()}),
                );
            }
        }
        let frames: Vec<String> = (0..spec.frames).map(|t| format!("{t:05}")).collect();
        videos.insert(name, json!({"expressions": exps, "frames": frames}));
    }
    write_json(
        &root.join("meta_expressions/valid/meta_expressions.json"),
        &json!({ "videos": videos }),
    )
}

/// Writes the benchmark under `root` in the MeViS layout, split `valid_u`: one expression per object
/// and a final one, "all the squares", whose target is every object.
pub fn write_mevis(root: &Path, spec: &SynthSpec) -> Result<()> {
    check(spec)?;
    let split = root.join("valid_u");
    let mut videos = Map::new();
    let mut mask_dict = Map::new();
    let mut next_anno = 0usize;
    for v in 0..spec.videos {
        let name = video_name(v);
        write_frames(&split.join("JPEGImages").join(&name), spec, v)?;
        let mut exps = Map::new();
        let mut annos = Vec::new();
        for k in 0..spec.objects {
            let a = next_anno;
            next_anno += 1;
            annos.push(a);
            let rles: Vec<Value> = (0..spec.frames)
                .map(|t| {
                    json!({"size": [spec.height, spec.width],
                           "counts": encode_string(&square_mask(spec, v, k, t), spec.width, spec.height)})
                })
                .collect();
            mask_dict.insert(a.to_string(), Value::Array(rles));
            exps.insert(
                k.to_string(),
                json!({"exp": expression_text(k, 0), "obj_id": [k], "anno_id": [a]}),
            );
        }
        exps.insert(
            spec.objects.to_string(),
            json!({"exp": "all the squares", "obj_id": (0..spec.objects).collect::<Vec<_>>(), "anno_id": annos}),
        );
        let frames: Vec<String> = (0..spec.frames).map(|t| format!("{t:05}")).collect();
        videos.insert(name, json!({"expressions": exps, "frames": frames}));
    }
    write_json(
        &split.join("meta_expressions.json"),
        &json!({ "videos": videos }),
    )?;
    write_json(&split.join("mask_dict.json"), &Value::Object(mask_dict))
}
