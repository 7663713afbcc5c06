//! Checkpoint readers (safetensors and PyTorch `.pth` zip), the official key map, LoRA folding and
//! validation against a [`ModelConfig`].
//!
//! [`Checkpoint::load`] detects the format from the file's first bytes, resolves aliases (tensors the
//! official state dict repeats under several names), converts floats to f32 and folds every LoRA pair
//! into its base weight (`W + B·A / r`, docs/model.md: Weights), so that [`Checkpoint::get`] hands out exactly the
//! weights the official model uses after `eval()`.

pub mod inventory;
pub mod keymap;
pub mod pickle;
mod pth;
pub mod random;
mod st;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What a reader hands to [`Checkpoint`]: tensors in file order (each stored once), aliases
/// (`alias → stored key`), source dtypes, and an optional full key order.
#[derive(Debug, Default)]
pub(crate) struct RawCheckpoint {
    pub tensors: Vec<(String, Tensor)>,
    pub aliases: Vec<(String, String)>,
    pub source_dtypes: HashMap<String, String>,
    pub key_order: Option<Vec<String>>,
    pub note: String,
}

/// On-disk format of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// safetensors.
    Safetensors,
    /// PyTorch zip (`torch.save`).
    Pth,
}

/// One entry as it was in the file (before folding), for inventories and validation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RawEntry {
    /// Official key.
    pub key: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// dtype in the file (`float32`, `float16`, `int64`, …).
    pub dtype: String,
    /// The key whose tensor this one shares, if any.
    pub alias_of: Option<String>,
}

/// LoRA state of a checkpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoraInfo {
    /// LoRA pairs found (shared modules counted once).
    pub pairs: usize,
    /// Ranks seen (one for official checkpoints).
    pub ranks: Vec<usize>,
}

/// A loaded checkpoint: f32 weights under their official keys, LoRA folded.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    format: Format,
    note: String,
    /// Stored tensors (canonical keys), LoRA folded, floats as f32.
    tensors: HashMap<String, Tensor>,
    /// alias → canonical key.
    aliases: HashMap<String, String>,
    /// All keys (canonical and aliases, no LoRA factors), in state-dict order.
    order: Vec<String>,
    /// Every entry as in the file, LoRA factors included.
    raw: Vec<RawEntry>,
    lora: LoraInfo,
}

impl Checkpoint {
    /// Loads a `.safetensors` or PyTorch `.pth` zip checkpoint, recognised by its first bytes (not
    /// its extension). Top-level `model_state_dict` / `model` / `state_dict` or a bare state dict;
    /// a leading `module.` is stripped; profiler and BERT id buffers are dropped.
    pub fn load(p: &Path) -> Result<Self> {
        let file = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
        let meta = file.metadata().map_err(|e| Error::io(p, e))?;
        if meta.is_dir() {
            return Err(Error::Checkpoint(format!(
                "{} is a directory; a checkpoint is one file (.pth or .safetensors)",
                p.display()
            )));
        }
        let len = meta.len();
        // Map instead of read: official checkpoints are ~1 GB and every tensor is copied out once
        // (f32 conversion). The readers convert straight from the mapping (safetensors, and the
        // stored records torch.save writes), so the heap holds the converted tensors and not a
        // second copy of the file. An empty file cannot be mapped.
        let map;
        let bytes: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: `Mmap::map` requires that the file not change while the mapping lives, and
            // nothing here can enforce that: if another process truncates the file meanwhile, a
            // read of a vanished page raises SIGBUS (the process dies), and if it rewrites the file
            // in place, bytes we already checked may change under the `&[u8]`, which is undefined
            // behaviour. We accept that, as for a shared library the process maps: a checkpoint is
            // installed before the runtime starts and replaced by renaming a new file over it
            // (which leaves this mapping on the old inode), never rewritten in place while loaded.
            // Within that, the mapping is read-only and dropped before `load` returns.
            map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(p, e))?;
            &map
        };
        Self::from_bytes(p, bytes)
    }

    /// Parses a checkpoint held in memory (the bytes of a `.safetensors` or `.pth` file); `p` only
    /// names it in errors and in [`Checkpoint::path`].
    pub fn from_bytes(p: &Path, bytes: &[u8]) -> Result<Self> {
        let ctx = |e: Error| match e {
            Error::Checkpoint(m) => Error::Checkpoint(format!("{}: {m}", p.display())),
            e => e,
        };
        let format = detect(bytes).map_err(ctx)?;
        let raw = match format {
            Format::Safetensors => st::read(bytes),
            Format::Pth => pth::read(bytes),
        }
        .map_err(ctx)?;
        Self::from_raw(p.to_path_buf(), format, raw).map_err(ctx)
    }

    fn from_raw(path: PathBuf, format: Format, raw: RawCheckpoint) -> Result<Self> {
        let strip = |k: &str| k.strip_prefix("module.").unwrap_or(k).to_string();
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        let mut file_order = Vec::new();
        let mut dropped = Vec::new();
        let mut dtypes: HashMap<String, String> = HashMap::new();
        for (k, t) in raw.tensors {
            let key = strip(&k);
            if keymap::is_ignorable(&key) {
                dropped.push(key);
                continue;
            }
            if let Some(dt) = raw.source_dtypes.get(&k) {
                dtypes.insert(key.clone(), dt.clone());
            }
            let t = match t.dtype() {
                DType::F16 | DType::BF16 => t.to_f32(),
                // The official integer buffers are int64; a converter may have narrowed them
                // (int32, or int16/int8 read as i32). Widen, as floats are widened to f32, so the
                // graph sees one integer type.
                DType::I32 => match t.into_parts() {
                    (shape, crate::tensor::Data::I32(v)) => {
                        Tensor::from_i64(&shape, v.into_iter().map(i64::from).collect())
                            .map_err(|e| Error::Checkpoint(format!("{key}: {e}")))?
                    }
                    (shape, data) => Tensor::new(shape, data)
                        .map_err(|e| Error::Checkpoint(format!("{key}: {e}")))?,
                },
                _ => t,
            };
            if tensors.insert(key.clone(), t).is_some() {
                return Err(Error::Checkpoint(format!("key {key} appears twice")));
            }
            file_order.push(key);
        }
        let mut aliases = HashMap::new();
        for (a, target) in raw.aliases {
            let (a, target) = (strip(&a), strip(&target));
            if keymap::is_ignorable(&a) {
                continue;
            }
            if !tensors.contains_key(&target) {
                return Err(Error::Checkpoint(format!(
                    "alias {a} points to {target}, which the file does not hold"
                )));
            }
            if tensors.contains_key(&a) {
                return Err(Error::Checkpoint(format!(
                    "{a} is both stored and an alias"
                )));
            }
            aliases.insert(a, target);
        }
        if !dropped.is_empty() {
            log::debug!(
                "ignoring {} bookkeeping key(s): {}",
                dropped.len(),
                dropped.join(", ")
            );
        }
        // Full key order: the writer's `key_order` when given, else file order with aliases after.
        let mut all_keys: Vec<String> = match raw.key_order {
            Some(o) => o
                .iter()
                .map(|k| strip(k))
                .filter(|k| !keymap::is_ignorable(k))
                .collect(),
            None => {
                let mut v = file_order.clone();
                let mut al: Vec<&String> = aliases.keys().collect();
                al.sort();
                v.extend(al.into_iter().cloned());
                v
            }
        };
        // `key_order` must list the held keys as a set: each exactly once. Comparing counts alone
        // let a duplicate hide an extra tensor from validation (and a duplicate name broke
        // `write_safetensors`).
        let known: HashSet<&String> = tensors.keys().chain(aliases.keys()).collect();
        let mut listed: HashSet<&String> = HashSet::with_capacity(all_keys.len());
        for k in &all_keys {
            if !known.contains(k) {
                return Err(Error::Checkpoint(format!(
                    "key_order lists {k}, which the file does not hold"
                )));
            }
            if !listed.insert(k) {
                return Err(Error::Checkpoint(format!("key_order lists {k} twice")));
            }
        }
        if listed.len() != known.len() {
            let mut unlisted: Vec<&&String> = known.difference(&listed).collect();
            unlisted.sort();
            return Err(Error::Checkpoint(format!(
                "key_order leaves out {} key(s) the file holds: {}",
                unlisted.len(),
                unlisted
                    .iter()
                    .take(10)
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let raw_entries: Vec<RawEntry> = all_keys
            .iter()
            .map(|k| {
                let canon = aliases.get(k).unwrap_or(k);
                let t = &tensors[canon];
                RawEntry {
                    key: k.clone(),
                    shape: t.shape().to_vec(),
                    dtype: dtypes
                        .get(canon)
                        .cloned()
                        .unwrap_or_else(|| format!("{:?}", t.dtype()).to_lowercase()),
                    alias_of: aliases.get(k).cloned(),
                }
            })
            .collect();

        let lora = fold_lora(&mut tensors)?;
        aliases.retain(|_, target| tensors.contains_key(target));
        all_keys.retain(|k| tensors.contains_key(k) || aliases.contains_key(k));
        Ok(Checkpoint {
            path,
            format,
            note: raw.note,
            tensors,
            aliases,
            order: all_keys,
            raw: raw_entries,
            lora,
        })
    }

    /// The tensor under an official key (aliases resolved), f32 for float weights (int32 buffers
    /// widened to i64, other integer buffers keep their type), LoRA folded. The error names the key.
    pub fn get(&self, key: &str) -> Result<&Tensor> {
        let canon = self.aliases.get(key).map(String::as_str).unwrap_or(key);
        self.tensors.get(canon).ok_or_else(|| {
            let hint = if key.ends_with(".lora_A") || key.ends_with(".lora_B") {
                " (LoRA factors are folded into the base weight at load)"
            } else {
                ""
            };
            Error::MissingTensor {
                origin: self.path.display().to_string(),
                name: key.to_string(),
                hint: hint.to_string(),
            }
        })
    }

    /// The key whose tensor `key` names: itself, or the key it aliases (a module shared by two names).
    pub fn canonical<'a>(&'a self, key: &'a str) -> &'a str {
        self.aliases.get(key).map(String::as_str).unwrap_or(key)
    }

    /// Whether `key` (or an alias of it) is present (LoRA factors are not: they are folded).
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key) || self.aliases.contains_key(key)
    }

    /// Every key (aliases included, LoRA factors excluded) in state-dict order.
    pub fn keys(&self) -> Vec<&str> {
        self.order.iter().map(String::as_str).collect()
    }

    /// The file's entries before folding (LoRA factors included).
    pub fn raw_entries(&self) -> &[RawEntry] {
        &self.raw
    }

    /// LoRA pairs found and folded.
    pub fn lora(&self) -> &LoraInfo {
        &self.lora
    }

    /// The on-disk format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// A one-line description of the container (e.g. top-level keys of a `.pth`).
    pub fn note(&self) -> &str {
        &self.note
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the loaded weights (LoRA folded, f32, integer buffers as loaded) as safetensors:
    /// each tensor once under its canonical key, with `aliases` and `key_order` metadata so that
    /// [`Checkpoint::load`] gives back the same keys and tensors (a deployable, pickle-free copy).
    pub fn write_safetensors(&self, p: &Path) -> Result<()> {
        use safetensors::tensor::{Dtype, TensorView};
        let canon: Vec<&String> = self
            .order
            .iter()
            .filter(|k| self.tensors.contains_key(*k))
            .collect();
        let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = canon
            .iter()
            .map(|k| {
                let t = &self.tensors[*k];
                let dt = match t.dtype() {
                    DType::F32 => Dtype::F32,
                    DType::F16 => Dtype::F16,
                    DType::BF16 => Dtype::BF16,
                    DType::I64 => Dtype::I64,
                    DType::I32 => Dtype::I32,
                    DType::U8 => Dtype::U8,
                    DType::Bool => Dtype::BOOL,
                };
                ((*k).clone(), dt, t.shape().to_vec(), t.to_le_bytes())
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(k, dt, shape, b)| {
                TensorView::new(*dt, shape.clone(), b)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| Error::Checkpoint(format!("{k}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let aliases: BTreeMap<&String, &String> = self.aliases.iter().collect();
        let mut meta = HashMap::new();
        let json = |v: serde_json::Result<String>| v.map_err(|e| Error::Other(e.to_string()));
        meta.insert(
            "aliases".to_string(),
            json(serde_json::to_string(&aliases))?,
        );
        meta.insert(
            "key_order".to_string(),
            json(serde_json::to_string(&self.order))?,
        );
        meta.insert(
            "note".to_string(),
            format!(
                "written by referdino from {} (LoRA folded)",
                self.path.display()
            ),
        );
        safetensors::serialize_to_file(views, Some(meta), p)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", p.display())))
    }

    /// The key this alias resolves to, if `key` is an alias.
    pub fn alias_target(&self, key: &str) -> Option<&str> {
        self.aliases.get(key).map(String::as_str)
    }

    /// Checks the file against the key map of `cfg`: every missing, unexpected or wrongly shaped
    /// tensor is named in one error. LoRA factors may be absent altogether (already merged), but
    /// when present they must be complete and of rank `cfg.lora_rank`.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let report = self.check(cfg)?;
        if report.is_ok() {
            return Ok(());
        }
        Err(Error::Checkpoint(format!(
            "{} does not match the {} configuration:\n{}",
            self.path.display(),
            cfg.label(),
            report.describe(40)
        )))
    }

    /// The comparison behind [`Checkpoint::validate`], as data.
    pub fn check(&self, cfg: &ModelConfig) -> Result<Mismatch> {
        let expected = keymap::expected_keys(cfg)?;
        let have: HashMap<&str, &RawEntry> = self.raw.iter().map(|e| (e.key.as_str(), e)).collect();
        let has_lora = self.lora.pairs > 0;
        let mut m = Mismatch::default();
        let mut expected_set = HashSet::new();
        for e in &expected {
            expected_set.insert(e.key.as_str());
            match have.get(e.key.as_str()) {
                None => {
                    if !e.lora_factor || has_lora {
                        m.missing.push(e.key.clone());
                    }
                }
                Some(h) => {
                    let int_file = matches!(
                        h.dtype.as_str(),
                        "int64" | "int32" | "int16" | "int8" | "uint8" | "bool"
                    );
                    let kind_ok = (e.kind == keymap::Kind::Int) == int_file;
                    if h.shape != e.shape || !kind_ok {
                        m.wrong_shape.push(format!(
                            "{}: expected {:?} {}, found {:?} {}",
                            e.key,
                            e.shape,
                            if e.kind == keymap::Kind::Int {
                                "int"
                            } else {
                                "float"
                            },
                            h.shape,
                            h.dtype
                        ));
                    }
                }
            }
        }
        for e in &self.raw {
            if !expected_set.contains(e.key.as_str()) {
                m.unexpected.push(format!("{} {:?}", e.key, e.shape));
            }
        }
        Ok(m)
    }
}

/// The graph reads a checkpoint by official key (LoRA folded, aliases resolved at load).
impl crate::onnx::Weights for Checkpoint {
    fn tensor(&self, key: &str) -> Result<&Tensor> {
        self.get(key)
    }
}

/// Differences between a checkpoint and a key map.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Mismatch {
    /// Expected keys the file lacks.
    pub missing: Vec<String>,
    /// Keys the file holds that the configuration does not have (with shapes).
    pub unexpected: Vec<String>,
    /// Keys with another shape or value kind (expected vs found).
    pub wrong_shape: Vec<String>,
}

impl Mismatch {
    /// No differences.
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.wrong_shape.is_empty()
    }

    /// A multi-line listing, at most `limit` names per category.
    pub fn describe(&self, limit: usize) -> String {
        let mut s = String::new();
        for (title, list) in [
            ("missing", &self.missing),
            ("unexpected", &self.unexpected),
            ("wrong shape", &self.wrong_shape),
        ] {
            if list.is_empty() {
                continue;
            }
            s.push_str(&format!("  {} {title}:\n", list.len()));
            for k in list.iter().take(limit) {
                s.push_str(&format!("    {k}\n"));
            }
            if list.len() > limit {
                s.push_str(&format!("    … and {} more\n", list.len() - limit));
            }
        }
        s.trim_end().to_string()
    }
}

/// A tensor from little-endian bytes, floats converted to f32 on the way (checkpoints hand out f32):
/// f32 is a plain copy on little-endian hosts, f16/bf16 widen directly without an intermediate.
pub(crate) fn tensor_from_le(shape: &[usize], dtype: DType, bytes: &[u8]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    if bytes.len() != n * dtype.size() {
        return Err(Error::Shape(format!(
            "{} bytes do not hold {n} elements of {dtype:?} (shape {shape:?})",
            bytes.len()
        )));
    }
    let v: Vec<f32> = match dtype {
        DType::F32 if cfg!(target_endian = "little") => {
            let mut v = vec![0f32; n];
            bytemuck::cast_slice_mut::<f32, u8>(&mut v).copy_from_slice(bytes);
            v
        }
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return Tensor::from_le_bytes(shape, dtype, bytes),
    };
    Tensor::from_f32(shape, v)
}

/// Detects the container from magic bytes.
fn detect(bytes: &[u8]) -> Result<Format> {
    if bytes.is_empty() {
        return Err(Error::Checkpoint("file is empty".into()));
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Ok(Format::Pth);
    }
    if bytes.len() >= 9 {
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        if bytes[8] == b'{' && n >= 2 && n <= (bytes.len() - 8) as u64 {
            return Ok(Format::Safetensors);
        }
        if bytes[8] == b'{' {
            return Err(Error::Checkpoint(format!(
                "safetensors header claims {n} bytes but the file has {}: truncated",
                bytes.len()
            )));
        }
    }
    if bytes.starts_with(&[0x80]) && bytes.len() > 1 && bytes[1] <= 5 {
        return Err(Error::Checkpoint(
            "legacy (pre-1.6, non-zip) torch.save format is not supported: re-save it with \
             torch.save(..., _use_new_zipfile_serialization=True) or convert it to safetensors"
                .into(),
        ));
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(Error::Checkpoint(format!(
        "unrecognised file format (first bytes {}): expected safetensors or a PyTorch zip checkpoint",
        head.join(" ")
    )))
}

/// Folds every `<m>.lora_A` / `<m>.lora_B` pair into `<m>.weight` (`W += B·A · (1/r)`, loralib
/// with `lora_alpha = 1`) and removes the factors.
fn fold_lora(tensors: &mut HashMap<String, Tensor>) -> Result<LoraInfo> {
    let mut bases: Vec<String> = tensors
        .keys()
        .filter_map(|k| {
            k.strip_suffix(".lora_A")
                .or_else(|| k.strip_suffix(".lora_B"))
        })
        .map(str::to_string)
        .collect();
    bases.sort();
    bases.dedup();
    let mut ranks = BTreeMap::new();
    for base in &bases {
        let (ka, kb, kw) = (
            format!("{base}.lora_A"),
            format!("{base}.lora_B"),
            format!("{base}.weight"),
        );
        let a = tensors.remove(&ka);
        let b = tensors.remove(&kb);
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (Some(_), None) => return Err(Error::Checkpoint(format!("{ka} has no matching {kb}"))),
            (None, _) => return Err(Error::Checkpoint(format!("{kb} has no matching {ka}"))),
        };
        let w = tensors.get_mut(&kw).ok_or_else(|| {
            Error::Checkpoint(format!("LoRA factors {ka} have no base weight {kw}"))
        })?;
        let (ash, bsh, wsh) = (a.shape().to_vec(), b.shape().to_vec(), w.shape().to_vec());
        if ash.len() != 2
            || bsh.len() != 2
            || wsh.len() != 2
            || ash[0] != bsh[1]
            || bsh[0] != wsh[0]
            || ash[1] != wsh[1]
        {
            return Err(Error::Checkpoint(format!(
                "{base}: LoRA shapes do not fit: weight {wsh:?}, lora_A {ash:?}, lora_B {bsh:?} (expected [r, in], [out, r])"
            )));
        }
        let r = ash[0];
        if r == 0 {
            return Err(Error::Checkpoint(format!("{ka}: LoRA rank 0")));
        }
        *ranks.entry(r).or_insert(0usize) += 1;
        let (out, inp) = (wsh[0], wsh[1]);
        let (av, bv) = (a.to_f32(), b.to_f32());
        let (av, bv) = (av.f32s()?, bv.f32s()?);
        let scale = 1.0f32 / r as f32;
        let wv = w.f32s_mut().map_err(|_| {
            Error::Checkpoint(format!("{kw}: LoRA base weight is not a float tensor"))
        })?;
        for o in 0..out {
            for i in 0..inp {
                // (B·A)[o,i] in f32 as torch does, then the scaling, then the add.
                let mut acc = 0.0f32;
                for k in 0..r {
                    acc += bv[o * r + k] * av[k * inp + i];
                }
                wv[o * inp + i] += acc * scale;
            }
        }
    }
    if !bases.is_empty() {
        log::debug!("folded {} LoRA pairs (ranks {:?})", bases.len(), ranks);
    }
    Ok(LoraInfo {
        pairs: bases.len(),
        ranks: ranks.into_keys().collect(),
    })
}
