//! Calibration recipes (`calib/*.toml`): which frames and prompts to run, which method, where the scale
//! table goes. Relative paths are resolved against a root directory given by the caller (the CLI uses the
//! current directory, so recipes are written relative to the repository root).
//!
//! ```toml
//! name = "referdino-tiny"
//! model = "referdino-tiny"               # label stored in the scale table
//! output = "calib/referdino-tiny.scales.json"
//! bins = 2048                            # histogram bins (even, 128..=65536)
//! method = "entropy"                     # "entropy" | "percentile" (+ percentile = 99.99) | "max"
//!
//! [[samples]]                            # frames + prompts; every frame is run with every prompt
//! frames = "tests/fixtures/referdino-tiny/inputs.safetensors#frames_uint8"   # or a folder / an image
//! prompts = ["the red ball rolling to the left"]
//!
//! [geometry]                             # optional: export size (or --profile P on the command line)
//! height = 360
//! width = 640
//! max_text = 32
//! window = 36
//!
//! [activations]                          # optional: statistics from an activation dump
//! file = "tests/fixtures/referdino-tiny/outputs.safetensors"
//! include = ["backbone.", "encoder."]    # name prefixes; empty = every f32 tensor
//! ```

use super::calibrate::CalibMethod;
use super::histogram::DEFAULT_BINS;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One group of calibration frames and the prompts run on each of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Frame source: `FILE.safetensors#KEY` (uint8 `[T,H,W,3]`), a folder of images, or one image file.
    pub frames: String,
    /// Prompts run on every frame of this group.
    pub prompts: Vec<String>,
    /// Use at most this many frames of the source (evenly spaced); all when absent.
    #[serde(default)]
    pub max_frames: Option<usize>,
}

/// An activation dump to calibrate from instead of running the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationDump {
    /// safetensors file of named activations.
    pub file: PathBuf,
    /// Name prefixes to keep; empty keeps every f32 tensor.
    #[serde(default)]
    pub include: Vec<String>,
}

/// A calibration recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Recipe name (stored in the scale table's `calibration_set`).
    pub name: String,
    /// Model label stored in the scale table.
    pub model: String,
    /// Where the scale table is written.
    pub output: PathBuf,
    /// Histogram bins.
    #[serde(default = "default_bins")]
    pub bins: usize,
    /// Activation amax method.
    #[serde(flatten)]
    pub method: CalibMethod,
    /// Frames and prompts.
    #[serde(default)]
    pub samples: Vec<Sample>,
    /// Optional activation dump.
    #[serde(default)]
    pub activations: Option<ActivationDump>,
    /// Export geometry to calibrate at (`[geometry]` with `height`, `width`, `max_text`, `window`);
    /// `referdino calibrate --profile P` takes it from the engine profile instead. Tensor names depend
    /// on it, so it must be the geometry the INT8 engines are built at.
    #[serde(default)]
    pub geometry: Option<crate::graph::engines::Geometry>,
}

fn default_bins() -> usize {
    DEFAULT_BINS
}

/// Where one sample's frames come from, parsed from [`Sample::frames`].
#[derive(Debug, Clone, PartialEq)]
pub enum FrameSource {
    /// A uint8 `[T,H,W,3]` tensor inside a safetensors file.
    Safetensors {
        /// File.
        file: PathBuf,
        /// Tensor key.
        key: String,
    },
    /// Every `.png`/`.jpg`/`.jpeg` in a folder, in name order.
    Folder(PathBuf),
    /// One image file.
    Image(PathBuf),
}

impl Recipe {
    /// Parses a recipe from TOML text and validates it.
    pub fn from_toml(text: &str) -> Result<Self> {
        let r: Recipe =
            toml::from_str(text).map_err(|e| Error::Config(format!("calibration recipe: {e}")))?;
        r.validate()?;
        Ok(r)
    }

    /// Reads and validates a recipe file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Checks values that serde cannot (bins, percentile, non-empty lists).
    pub fn validate(&self) -> Result<()> {
        super::histogram::Histogram::new(self.bins)?;
        if let CalibMethod::Percentile { percentile } = self.method {
            if !(percentile > 0.0 && percentile <= 100.0) {
                return Err(Error::Config(format!(
                    "calibration recipe {}: percentile must be in (0, 100], got {percentile}",
                    self.name
                )));
            }
        }
        if self.samples.is_empty() && self.activations.is_none() {
            return Err(Error::Config(format!(
                "calibration recipe {}: needs at least one [[samples]] entry or an [activations] dump",
                self.name
            )));
        }
        for (i, s) in self.samples.iter().enumerate() {
            if s.prompts.iter().all(|p| p.trim().is_empty()) {
                return Err(Error::Config(format!(
                    "calibration recipe {}: samples[{i}] has no prompt",
                    self.name
                )));
            }
            if s.max_frames == Some(0) {
                return Err(Error::Config(format!(
                    "calibration recipe {}: samples[{i}].max_frames must be > 0",
                    self.name
                )));
            }
            FrameSource::parse(&s.frames, Path::new("."))?;
        }
        Ok(())
    }

    /// Short description for the scale table (`name: N frame groups, M prompts`).
    pub fn describe(&self) -> String {
        let prompts: usize = self.samples.iter().map(|s| s.prompts.len()).sum();
        format!(
            "{}: {} frame groups, {} prompts{}",
            self.name,
            self.samples.len(),
            prompts,
            if self.activations.is_some() {
                ", activation dump"
            } else {
                ""
            }
        )
    }
}

impl FrameSource {
    /// Parses a frame spec and resolves it against `root`.
    pub fn parse(spec: &str, root: &Path) -> Result<Self> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(Error::Config("calibration frames: empty path".into()));
        }
        if let Some((file, key)) = spec.split_once('#') {
            if !file.ends_with(".safetensors") || key.is_empty() {
                return Err(Error::Config(format!(
                    "calibration frames {spec:?}: FILE#KEY needs a .safetensors file and a tensor key"
                )));
            }
            return Ok(FrameSource::Safetensors {
                file: root.join(file),
                key: key.to_string(),
            });
        }
        let p = root.join(spec);
        let lower = spec.to_ascii_lowercase();
        if [".png", ".jpg", ".jpeg"].iter().any(|e| lower.ends_with(e)) {
            Ok(FrameSource::Image(p))
        } else {
            Ok(FrameSource::Folder(p))
        }
    }

    /// Number of frames, without decoding any (a folder is listed, a safetensors clip's header read).
    pub fn count(&self) -> Result<usize> {
        match self {
            FrameSource::Safetensors { file, key } => Ok(safetensors_frames(file, key)?.0),
            FrameSource::Image(_) => Ok(1),
            FrameSource::Folder(dir) => Ok(folder_images(dir)?.len()),
        }
    }

    /// Loads the frames as RGB8 images.
    pub fn load(&self) -> Result<Vec<image::RgbImage>> {
        Ok(self.load_spaced(None)?.into_iter().map(|f| f.1).collect())
    }

    /// Loads the `max` evenly spaced frames [`spaced_indices`] picks (all without `max`), each with
    /// its index among all frames. Only those are decoded: a folder of thousands of frames
    /// calibrated on eight holds eight in memory.
    pub fn load_spaced(&self, max: Option<usize>) -> Result<Vec<(usize, image::RgbImage)>> {
        match self {
            FrameSource::Safetensors { file, key } => load_safetensors_frames(file, key, max),
            FrameSource::Image(p) => Ok(vec![(0, open_rgb(p)?)]),
            FrameSource::Folder(dir) => {
                let files = folder_images(dir)?;
                spaced_indices(files.len(), max)
                    .into_iter()
                    .map(|i| Ok((i, open_rgb(&files[i])?)))
                    .collect()
            }
        }
    }
}

/// The .png/.jpg/.jpeg files of `dir`, sorted by name; an error without any.
fn folder_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
                .unwrap_or(false)
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Config(format!(
            "calibration frames: no .png/.jpg images in {}",
            dir.display()
        )));
    }
    Ok(files)
}

fn open_rgb(p: &Path) -> Result<image::RgbImage> {
    image::open(p)
        .map(|i| i.to_rgb8())
        .map_err(|e| Error::Config(format!("calibration frame {}: {e}", p.display())))
}

/// The frame count, height and width of `file#key`, a uint8 `[T,H,W,3]` tensor, read from the
/// header alone.
fn safetensors_frames(file: &Path, key: &str) -> Result<(usize, usize, usize)> {
    let mut f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let mut len = [0u8; 8];
    std::io::Read::read_exact(&mut f, &mut len).map_err(|e| Error::io(file, e))?;
    let n = u64::from_le_bytes(len);
    // The format caps its JSON header at 100 MB.
    if n > 100_000_000 {
        return Err(Error::Config(format!(
            "{}: not a safetensors file (header of {n} bytes)",
            file.display()
        )));
    }
    let mut header = vec![0u8; n as usize];
    std::io::Read::read_exact(&mut f, &mut header).map_err(|e| Error::io(file, e))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| Error::Config(format!("{}: header: {e}", file.display())))?;
    let t = v
        .get(key)
        .ok_or_else(|| Error::Config(format!("{}: no tensor {key:?}", file.display())))?;
    let shape: Vec<usize> = t
        .get("shape")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default();
    if t.get("dtype").and_then(|d| d.as_str()) != Some("U8") || shape.len() != 4 || shape[3] != 3 {
        return Err(Error::Shape(format!(
            "{}#{key}: frames must be uint8 [T,H,W,3], got {} {:?}",
            file.display(),
            t.get("dtype").unwrap_or(&serde_json::Value::Null),
            shape
        )));
    }
    Ok((shape[0], shape[1], shape[2]))
}

fn load_safetensors_frames(
    file: &Path,
    key: &str,
    max: Option<usize>,
) -> Result<Vec<(usize, image::RgbImage)>> {
    let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
    let t = st
        .tensor(key)
        .map_err(|e| Error::Config(format!("{}: no tensor {key:?} ({e})", file.display())))?;
    let shape = t.shape();
    if t.dtype() != safetensors::Dtype::U8 || shape.len() != 4 || shape[3] != 3 {
        return Err(Error::Shape(format!(
            "{}#{key}: frames must be uint8 [T,H,W,3], got {:?} {:?}",
            file.display(),
            t.dtype(),
            shape
        )));
    }
    let (n, h, w) = (shape[0], shape[1], shape[2]);
    let per = h * w * 3;
    spaced_indices(n, max)
        .into_iter()
        .map(|i| {
            let frame = t.data().get(i * per..(i + 1) * per).map(<[u8]>::to_vec);
            frame
                .and_then(|f| image::RgbImage::from_raw(w as u32, h as u32, f))
                .map(|img| (i, img))
                .ok_or_else(|| {
                    Error::Shape(format!("{}#{key}: frame {i} is truncated", file.display()))
                })
        })
        .collect()
}

/// Indices of `max` evenly spaced frames out of `n` (all when `max >= n`).
pub fn spaced_indices(n: usize, max: Option<usize>) -> Vec<usize> {
    match max {
        Some(m) if m < n => (0..m).map(|i| i * n / m).collect(),
        _ => (0..n).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_methods_and_defaults() {
        let r = Recipe::from_toml(
            "name='a'\nmodel='m'\noutput='o.json'\nmethod='percentile'\npercentile=99.9\n\
             [[samples]]\nframes='x.safetensors#f'\nprompts=['p']\n",
        )
        .unwrap();
        assert_eq!(r.method, CalibMethod::Percentile { percentile: 99.9 });
        assert_eq!(r.bins, DEFAULT_BINS);
        let r = Recipe::from_toml(
            "name='a'\nmodel='m'\noutput='o.json'\nmethod='entropy'\n[activations]\nfile='d.safetensors'\n",
        )
        .unwrap();
        assert_eq!(r.method, CalibMethod::Entropy);
    }

    #[test]
    fn rejects_bad_recipes() {
        let base = "name='a'\nmodel='m'\noutput='o.json'\n";
        // no samples and no dump
        assert!(Recipe::from_toml(&format!("{base}method='max'\n")).is_err());
        // percentile out of range
        let s = "[[samples]]\nframes='d'\nprompts=['p']\n";
        assert!(
            Recipe::from_toml(&format!("{base}method='percentile'\npercentile=101.0\n{s}"))
                .is_err()
        );
        // unknown method
        assert!(Recipe::from_toml(&format!("{base}method='kl'\n{s}")).is_err());
        // empty prompt
        assert!(Recipe::from_toml(&format!(
            "{base}method='max'\n[[samples]]\nframes='d'\nprompts=['  ']\n"
        ))
        .is_err());
        // bad FILE#KEY
        assert!(Recipe::from_toml(&format!(
            "{base}method='max'\n[[samples]]\nframes='d.bin#k'\nprompts=['p']\n"
        ))
        .is_err());
    }

    #[test]
    fn spaced_indices_are_even() {
        assert_eq!(spaced_indices(10, Some(3)), vec![0, 3, 6]);
        assert_eq!(spaced_indices(2, Some(3)), vec![0, 1]);
        assert_eq!(spaced_indices(3, None), vec![0, 1, 2]);
    }

    #[test]
    fn only_the_spaced_frames_are_decoded() {
        let dir = tempfile::tempdir().unwrap();
        for k in 0..5 {
            let p = dir.path().join(format!("{k:03}.png"));
            if k == 1 {
                // Not picked by 2 of 5 (frames 0 and 2): never decoded.
                std::fs::write(&p, b"not a png").unwrap();
            } else {
                image::RgbImage::from_pixel(4, 2, image::Rgb([k as u8 * 10, 0, 0]))
                    .save(&p)
                    .unwrap();
            }
        }
        let src = FrameSource::Folder(dir.path().to_path_buf());
        assert_eq!(src.count().unwrap(), 5);
        let got = src.load_spaced(Some(2)).unwrap();
        assert_eq!(got.iter().map(|f| f.0).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(got[1].1.get_pixel(0, 0).0, [20, 0, 0]);
        let e = src.load().unwrap_err().to_string();
        assert!(e.contains("001.png"), "{e}");

        // A safetensors clip: the count from the header, the picked frames from the data.
        let frames: Vec<u8> = (0..4u8).flat_map(|t| [t; 2 * 3 * 3]).collect();
        let t =
            crate::tensor::Tensor::new(vec![4, 2, 3, 3], crate::tensor::Data::U8(frames)).unwrap();
        let f = dir.path().join("clip.safetensors");
        let tensors = std::collections::BTreeMap::from([("v".to_string(), t)]);
        crate::tensor::write_safetensors(&f, &tensors, None).unwrap();
        let src = FrameSource::Safetensors {
            file: f,
            key: "v".into(),
        };
        assert_eq!(src.count().unwrap(), 4);
        let got = src.load_spaced(Some(2)).unwrap();
        assert_eq!(
            got.iter()
                .map(|f| (f.0, f.1.get_pixel(0, 0).0[0]))
                .collect::<Vec<_>>(),
            vec![(0, 0), (2, 2)]
        );
        let bad = FrameSource::Safetensors {
            file: dir.path().join("clip.safetensors"),
            key: "w".into(),
        };
        assert!(bad.count().unwrap_err().to_string().contains("no tensor"));
    }
}
