//! Readers for the referring video segmentation benchmarks.
//!
//! Layouts (as the official ReferDINO / ReferFormer tooling prepares them):
//!
//! * **Ref-DAVIS17** and **Ref-YouTube-VOS**: `ROOT/meta_expressions/SPLIT/meta_expressions.json`,
//!   frames `ROOT/SPLIT/JPEGImages/VIDEO/FRAME.jpg`, palette annotations
//!   `ROOT/SPLIT/Annotations/VIDEO/FRAME.png` whose palette index is the object id. Each expression
//!   has `exp` and (where ground truth exists) `obj_id`.
//! * **MeViS**: `ROOT/SPLIT/meta_expressions.json`, frames `ROOT/SPLIT/JPEGImages/VIDEO/FRAME.jpg`,
//!   ground truth `ROOT/SPLIT/mask_dict.json` mapping each `anno_id` to one COCO RLE (or null) per
//!   frame. Expressions carry lists `obj_id` and `anno_id`: a target can be several objects.
//!
//! `meta_expressions.json` is `{"videos": {VIDEO: {"frames": [...], "expressions": {ID: {...}}}}}`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::rle;
use crate::output::png::read_label_png;
use crate::{Error, Result};

/// Which benchmark layout a root folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum DatasetKind {
    /// Ref-DAVIS17 (converted to the Ref-YouTube-VOS layout).
    #[value(name = "ref-davis17", alias = "davis")]
    RefDavis17,
    /// Ref-YouTube-VOS.
    #[value(name = "ref-youtube-vos", alias = "ytvos")]
    RefYoutubeVos,
    /// MeViS (multi-object targets).
    #[value(name = "mevis")]
    Mevis,
}

impl DatasetKind {
    /// Command-line name.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::RefDavis17 => "ref-davis17",
            DatasetKind::RefYoutubeVos => "ref-youtube-vos",
            DatasetKind::Mevis => "mevis",
        }
    }
}

/// One referring expression of a video.
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    /// Expression id as written in the metadata (used in output paths).
    pub id: String,
    /// The referring text.
    pub text: String,
    /// Target object ids (palette indices for DAVIS / YouTube-VOS; MeViS object ids).
    pub obj_ids: Vec<u32>,
    /// MeViS annotation ids into `mask_dict.json` (empty for the other datasets).
    pub anno_ids: Vec<String>,
}

/// One video with its frames and expressions.
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    /// Folder name.
    pub name: String,
    /// Frame names without extension, in temporal order.
    pub frames: Vec<String>,
    /// Expressions in id order (numeric ids sorted numerically).
    pub expressions: Vec<Expression>,
}

type MaskDict = HashMap<String, Vec<Option<Value>>>;

/// An opened benchmark split.
#[derive(Debug)]
pub struct Dataset {
    /// Layout.
    pub kind: DatasetKind,
    /// Root folder given by the user.
    pub root: PathBuf,
    /// Split name (`valid`, `train`, `valid_u`, ...).
    pub split: String,
    /// Videos sorted by name.
    pub videos: Vec<Video>,
    frames_dir: PathBuf,
    ann_dir: Option<PathBuf>,
    mask_dict: Option<MaskDict>,
    /// `root` with every symbolic link resolved: nothing is read from outside it.
    root_canon: PathBuf,
}

/// Checks that a name taken from the metadata (a video, frame, expression or annotation id) is one
/// plain path component: not empty, not `.` or `..`, no `/`, `\` or NUL. Such names are joined to
/// dataset folders (and, by the runner, to the output folder), so anything else could step outside.
pub fn check_component(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(eval_err(format!(
            "{what} {name:?} is not a plain file name (empty, '.', '..', or contains a path \
             separator); refusing to read outside the dataset root"
        )));
    }
    Ok(())
}

/// Checks that `p`, with symbolic links resolved, lies inside `root_canon`. A path that does not
/// exist passes (the caller reports it as missing).
fn check_inside(root_canon: &Path, p: &Path) -> Result<()> {
    match p.canonicalize() {
        Ok(c) if !c.starts_with(root_canon) => Err(eval_err(format!(
            "{} resolves to {}, outside the dataset root {}; refusing to read it",
            p.display(),
            c.display(),
            root_canon.display()
        ))),
        _ => Ok(()),
    }
}

fn eval_err(msg: impl Into<String>) -> Error {
    Error::Eval(msg.into())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| eval_err(format!("{}: invalid JSON: {e}", path.display())))
}

/// Accepts `3`, `"3"` or a list of those.
fn ids_of(v: Option<&Value>) -> std::result::Result<Vec<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => a.iter().map(scalar_id).collect(),
        Some(x) => Ok(vec![scalar_id(x)?]),
    }
}

fn scalar_id(v: &Value) -> std::result::Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!("expected an id, found {other}")),
    }
}

fn sort_ids(ids: &mut [(String, Value)]) {
    ids.sort_by(|a, b| match (a.0.parse::<u64>(), b.0.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.0.cmp(&b.0),
    });
}

impl Dataset {
    /// Opens `root` as a `kind` benchmark, split `split`, checking the metadata and that every
    /// video's frame folder exists. Frames and annotations are read lazily.
    pub fn open(kind: DatasetKind, root: &Path, split: &str) -> Result<Self> {
        if !root.is_dir() {
            return Err(eval_err(format!(
                "{} dataset root {} is not a directory",
                kind.name(),
                root.display()
            )));
        }
        let root_canon = root.canonicalize().map_err(|e| Error::io(root, e))?;
        for part in split.split('/') {
            check_component("split", part)?;
        }
        let (meta_path, split_dir) = match kind {
            DatasetKind::Mevis => (
                root.join(split).join("meta_expressions.json"),
                root.join(split),
            ),
            _ => (
                root.join("meta_expressions")
                    .join(split)
                    .join("meta_expressions.json"),
                root.join(split),
            ),
        };
        if !meta_path.is_file() {
            return Err(eval_err(format!(
                "{} layout expects {} (missing)",
                kind.name(),
                meta_path.display()
            )));
        }
        let frames_dir = split_dir.join("JPEGImages");
        if !frames_dir.is_dir() {
            return Err(eval_err(format!(
                "{} layout expects frames in {} (missing)",
                kind.name(),
                frames_dir.display()
            )));
        }
        check_inside(&root_canon, &meta_path)?;
        check_inside(&root_canon, &frames_dir)?;
        let meta = read_json(&meta_path)?;
        let videos_v = meta
            .get("videos")
            .and_then(Value::as_object)
            .ok_or_else(|| eval_err(format!("{}: no \"videos\" object", meta_path.display())))?;
        let mut videos = Vec::with_capacity(videos_v.len());
        for (name, v) in videos_v {
            let ctx = |m: &str| eval_err(format!("{}: video {name}: {m}", meta_path.display()));
            check_component("video name", name).map_err(|e| ctx(&e.to_string()))?;
            let mut frames: Vec<String> = v
                .get("frames")
                .and_then(Value::as_array)
                .ok_or_else(|| ctx("no \"frames\" list"))?
                .iter()
                .map(|f| scalar_id(f).map_err(|e| ctx(&e)))
                .collect::<Result<_>>()?;
            if kind != DatasetKind::Mevis {
                // The reference loaders sort DAVIS / YouTube-VOS frame names.
                frames.sort();
            }
            if frames.is_empty() {
                return Err(ctx("empty \"frames\" list"));
            }
            for f in &frames {
                check_component("frame name", f).map_err(|e| ctx(&e.to_string()))?;
            }
            let exps = v
                .get("expressions")
                .and_then(Value::as_object)
                .ok_or_else(|| ctx("no \"expressions\" object"))?;
            let mut items: Vec<(String, Value)> =
                exps.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            sort_ids(&mut items);
            let mut expressions = Vec::with_capacity(items.len());
            for (id, e) in items {
                check_component("expression id", &id).map_err(|e| ctx(&e.to_string()))?;
                let text = e
                    .get("exp")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ctx(&format!("expression {id} has no \"exp\" text")))?
                    .to_string();
                let obj_ids = ids_of(e.get("obj_id"))
                    .map_err(|m| ctx(&format!("expression {id}: obj_id: {m}")))?
                    .iter()
                    .map(|s| {
                        s.parse::<u32>().map_err(|_| {
                            ctx(&format!("expression {id}: obj_id {s:?} is not a number"))
                        })
                    })
                    .collect::<Result<Vec<u32>>>()?;
                let anno_ids = ids_of(e.get("anno_id"))
                    .map_err(|m| ctx(&format!("expression {id}: anno_id: {m}")))?;
                for a in &anno_ids {
                    check_component("anno_id", a).map_err(|e| ctx(&e.to_string()))?;
                }
                expressions.push(Expression {
                    id,
                    text,
                    obj_ids,
                    anno_ids,
                });
            }
            let dir = frames_dir.join(name);
            check_inside(&root_canon, &dir).map_err(|e| ctx(&e.to_string()))?;
            if !dir.is_dir() {
                return Err(ctx(&format!("frame folder {} is missing", dir.display())));
            }
            videos.push(Video {
                name: name.clone(),
                frames,
                expressions,
            });
        }
        videos.sort_by(|a, b| a.name.cmp(&b.name));
        let ann_dir = Some(split_dir.join("Annotations")).filter(|p| p.is_dir());
        if let Some(d) = &ann_dir {
            check_inside(&root_canon, d)?;
        }
        let mask_dict = if kind == DatasetKind::Mevis {
            let p = split_dir.join("mask_dict.json");
            if p.is_file() {
                check_inside(&root_canon, &p)?;
                let v = read_json(&p)?;
                let md: MaskDict = serde_json::from_value(v)
                    .map_err(|e| eval_err(format!("{}: unexpected layout: {e}", p.display())))?;
                Some(md)
            } else {
                None
            }
        } else {
            None
        };
        log::info!(
            "{} {}: {} videos, {} expressions, ground truth {}",
            kind.name(),
            split,
            videos.len(),
            videos.iter().map(|v| v.expressions.len()).sum::<usize>(),
            if ann_dir.is_some() || mask_dict.is_some() {
                "present"
            } else {
                "absent"
            }
        );
        Ok(Self {
            kind,
            root: root.to_path_buf(),
            split: split.to_string(),
            videos,
            frames_dir,
            ann_dir,
            mask_dict,
            root_canon,
        })
    }

    /// Total number of expressions.
    pub fn num_expressions(&self) -> usize {
        self.videos.iter().map(|v| v.expressions.len()).sum()
    }

    /// Whether ground-truth masks are available for scoring.
    pub fn has_ground_truth(&self) -> bool {
        match self.kind {
            DatasetKind::Mevis => self.mask_dict.is_some(),
            _ => self.ann_dir.is_some(),
        }
    }

    /// Path of one frame's JPEG.
    pub fn frame_path(&self, video: &Video, frame: &str) -> PathBuf {
        self.frames_dir
            .join(&video.name)
            .join(format!("{frame}.jpg"))
    }

    /// Reads every frame of a video as RGB8, checking they share one size.
    pub fn load_frames(&self, video: &Video) -> Result<Vec<image::RgbImage>> {
        use rayon::prelude::*;
        let frames: Vec<image::RgbImage> = video
            .frames
            .par_iter()
            .map(|f| {
                let p = self.frame_path(video, f);
                check_inside(&self.root_canon, &p)?;
                image::open(&p)
                    .map(|i| i.to_rgb8())
                    .map_err(|e| eval_err(format!("{}: cannot read frame: {e}", p.display())))
            })
            .collect::<Result<_>>()?;
        let (w, h) = frames[0].dimensions();
        if let Some((i, f)) = frames
            .iter()
            .enumerate()
            .find(|(_, f)| f.dimensions() != (w, h))
        {
            return Err(eval_err(format!(
                "video {}: frame {} is {}x{} but frame {} is {w}x{h}",
                video.name,
                video.frames[i],
                f.width(),
                f.height(),
                video.frames[0]
            )));
        }
        Ok(frames)
    }

    /// Ground-truth masks (0/1, one per frame, `width * height`) of an expression: the union of
    /// its target objects. `None` when the split has no ground truth.
    pub fn ground_truth(
        &self,
        video: &Video,
        expr: &Expression,
        width: usize,
        height: usize,
    ) -> Result<Option<Vec<Vec<u8>>>> {
        match self.kind {
            DatasetKind::Mevis => {
                let Some(md) = &self.mask_dict else {
                    return Ok(None);
                };
                if expr.anno_ids.is_empty() {
                    return Err(eval_err(format!(
                        "video {} expression {}: no anno_id, cannot build its ground truth",
                        video.name, expr.id
                    )));
                }
                let mut masks = vec![vec![0u8; width * height]; video.frames.len()];
                for a in &expr.anno_ids {
                    let per_frame = md.get(a).ok_or_else(|| {
                        eval_err(format!(
                            "video {} expression {}: anno_id {a} missing from mask_dict.json",
                            video.name, expr.id
                        ))
                    })?;
                    if per_frame.len() != video.frames.len() {
                        return Err(eval_err(format!(
                            "anno_id {a}: {} masks for {} frames of video {}",
                            per_frame.len(),
                            video.frames.len(),
                            video.name
                        )));
                    }
                    for (t, r) in per_frame.iter().enumerate() {
                        if let Some(r) = r {
                            let m = decode_rle_value(r, width, height)
                                .map_err(|e| eval_err(format!("anno_id {a} frame {t}: {e}")))?;
                            for (o, v) in masks[t].iter_mut().zip(m) {
                                *o |= v;
                            }
                        }
                    }
                }
                Ok(Some(masks))
            }
            _ => {
                let Some(dir) = &self.ann_dir else {
                    return Ok(None);
                };
                if expr.obj_ids.is_empty() {
                    return Err(eval_err(format!(
                        "video {} expression {}: no obj_id, cannot build its ground truth",
                        video.name, expr.id
                    )));
                }
                let ids: Vec<u8> = expr
                    .obj_ids
                    .iter()
                    .map(|&i| {
                        u8::try_from(i).map_err(|_| eval_err(format!("object id {i} exceeds 255")))
                    })
                    .collect::<Result<_>>()?;
                use rayon::prelude::*;
                video
                    .frames
                    .par_iter()
                    .map(|f| {
                        let p = dir.join(&video.name).join(format!("{f}.png"));
                        check_inside(&self.root_canon, &p)?;
                        if !p.is_file() {
                            return Err(eval_err(format!(
                                "missing annotation {} for video {} frame {f}",
                                p.display(),
                                video.name
                            )));
                        }
                        let lm = read_label_png(&p)?;
                        if (lm.width, lm.height) != (width, height) {
                            return Err(eval_err(format!(
                                "{} is {}x{} but the frames are {width}x{height}",
                                p.display(),
                                lm.width,
                                lm.height
                            )));
                        }
                        Ok(lm.data.iter().map(|v| ids.contains(v) as u8).collect())
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some)
            }
        }
    }
}

/// Decodes one `{"size": [h, w], "counts": ...}` RLE value.
/// Decodes one COCO RLE mask (`{"size": [h, w], "counts": ...}`) of a `width` × `height` frame.
pub(crate) fn decode_rle_value(v: &Value, width: usize, height: usize) -> Result<Vec<u8>> {
    let size = v
        .get("size")
        .and_then(Value::as_array)
        .ok_or_else(|| eval_err("RLE has no \"size\""))?;
    let dims: Vec<u64> = size.iter().filter_map(Value::as_u64).collect();
    if dims != [height as u64, width as u64] {
        return Err(eval_err(format!(
            "RLE size {size:?} does not match the frames ({height}, {width})"
        )));
    }
    let counts = match v.get("counts") {
        Some(Value::String(s)) => rle::counts_from_string(s)?,
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .ok_or_else(|| eval_err("RLE count is not a number"))
            })
            .collect::<Result<_>>()?,
        _ => return Err(eval_err("RLE has no \"counts\"")),
    };
    rle::decode(&counts, width, height)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::synth::{self, SynthSpec};

    /// Rewrites the synthetic benchmark's metadata with `edit` applied to the JSON.
    fn with_meta(edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        synth::write_ref_davis17(dir.path(), &SynthSpec::default()).unwrap();
        let p = dir
            .path()
            .join("meta_expressions/valid/meta_expressions.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
        dir
    }

    fn open_err(dir: &Path) -> String {
        Dataset::open(DatasetKind::RefDavis17, dir, "valid")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn names_with_path_parts_are_refused() {
        // A video named "..": its frame folder would be the split folder's parent.
        let dir = with_meta(|v| {
            let videos = v["videos"].as_object_mut().unwrap();
            let first = videos.remove("synth-00").unwrap();
            videos.insert("..".into(), first);
        });
        let e = open_err(dir.path());
        assert!(
            e.contains("video name \"..\"") && e.contains("outside"),
            "{e}"
        );

        for bad in ["../../../etc/passwd", "/etc/passwd", "a/b", "", "x\\y"] {
            let dir = with_meta(|v| {
                v["videos"]["synth-00"]["frames"][0] = Value::String(bad.into());
            });
            let e = open_err(dir.path());
            assert!(
                e.contains("frame name") && e.contains("not a plain"),
                "{bad}: {e}"
            );
        }

        let dir = with_meta(|v| {
            let exps = v["videos"]["synth-00"]["expressions"]
                .as_object_mut()
                .unwrap();
            let e0 = exps.remove("0").unwrap();
            exps.insert("../../escape".into(), e0);
        });
        let e = open_err(dir.path());
        assert!(e.contains("expression id"), "{e}");

        let dir = with_meta(|v| {
            v["videos"]["synth-00"]["expressions"]["0"]["anno_id"] = serde_json::json!(["/abs"]);
        });
        assert!(open_err(dir.path()).contains("anno_id"));

        let dir = with_meta(|_| {});
        let e = Dataset::open(DatasetKind::RefDavis17, dir.path(), "../valid")
            .unwrap_err()
            .to_string();
        assert!(e.contains("split"), "{e}");
        // The untouched layout still opens.
        assert!(Dataset::open(DatasetKind::RefDavis17, dir.path(), "valid").is_ok());
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        // A video frame folder that is a link to a folder outside the root.
        let dir = with_meta(|_| {});
        let frames = dir.path().join("valid/JPEGImages/synth-00");
        let moved = outside.path().join("frames");
        std::fs::rename(&frames, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &frames).unwrap();
        let e = open_err(dir.path());
        assert!(e.contains("outside the dataset root"), "{e}");

        // One annotation file that is a link to a file outside the root.
        let dir = with_meta(|_| {});
        let ann = dir.path().join("valid/Annotations/synth-00/00001.png");
        let secret = outside.path().join("secret.png");
        std::fs::rename(&ann, &secret).unwrap();
        std::os::unix::fs::symlink(&secret, &ann).unwrap();
        let ds = Dataset::open(DatasetKind::RefDavis17, dir.path(), "valid").unwrap();
        let v = &ds.videos[0];
        let e = ds
            .ground_truth(v, &v.expressions[0], 96, 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the dataset root"), "{e}");

        // One frame that is a link out of the root.
        let frame = dir.path().join("valid/JPEGImages/synth-01/00002.jpg");
        let stolen = outside.path().join("stolen.jpg");
        std::fs::rename(&frame, &stolen).unwrap();
        std::os::unix::fs::symlink(&stolen, &frame).unwrap();
        let e = ds.load_frames(&ds.videos[1]).unwrap_err().to_string();
        assert!(e.contains("outside the dataset root"), "{e}");

        // A root that is itself a link is fine: links inside the resolved root are followed.
        let link_root = outside.path().join("root-link");
        let ok = with_meta(|_| {});
        std::os::unix::fs::symlink(ok.path(), &link_root).unwrap();
        assert!(Dataset::open(DatasetKind::RefDavis17, &link_root, "valid").is_ok());
    }
}
