//! PyTorch zip checkpoints (`torch.save`, PyTorch ≥ 1.6): `<name>/data.pkl` (restricted pickle,
//! see [`super::pickle`]), `<name>/data/<key>` raw storages, `<name>/byteorder`.

use super::pickle::{unpickle, Obj, Pickle, StorageType, TensorRef};
use super::RawCheckpoint;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use std::collections::HashMap;
use std::io::{Cursor, Read};

/// Largest tensor we materialise (4 G elements): guards against hostile shapes with zero strides.
const MAX_ELEMENTS: usize = 1 << 32;

/// Keys under which training scripts nest the model's state dict, in the order they are tried.
const STATE_DICT_KEYS: [&str; 3] = ["model_state_dict", "model", "state_dict"];

/// Reads a zip checkpoint already in memory.
pub fn read(bytes: &[u8]) -> Result<RawCheckpoint> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| Error::Checkpoint(format!("not a readable zip archive: {e}")))?;
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let pkls: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .collect();
    let pkl_name = match pkls.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(Error::Checkpoint(
                "zip archive has no <name>/data.pkl: not a PyTorch checkpoint".into(),
            ))
        }
        many => {
            return Err(Error::Checkpoint(format!(
                "zip archive has {} data.pkl records ({}): ambiguous",
                many.len(),
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let pkl = read_entry(&mut zip, &pkl_name)?;
    let big_endian = match zip.by_name(&format!("{prefix}byteorder")) {
        Ok(mut f) => {
            let mut s = String::new();
            f.read_to_string(&mut s)
                .map_err(|e| Error::Checkpoint(format!("{prefix}byteorder: {e}")))?;
            match s.trim() {
                "little" => false,
                "big" => true,
                other => {
                    return Err(Error::Checkpoint(format!(
                        "{prefix}byteorder says {other:?} (expected little or big)"
                    )))
                }
            }
        }
        // Old writers omit it; they were little-endian.
        Err(_) => false,
    };
    let pk = unpickle(&pkl).map_err(|e| match e {
        Error::Checkpoint(m) => Error::Checkpoint(format!("{pkl_name}: {m}")),
        e => e,
    })?;
    let (entries, top_keys) = state_dict_entries(&pk)?;

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut seen: HashMap<(String, usize, Vec<usize>, Vec<usize>), String> = HashMap::new();
    let mut out = RawCheckpoint {
        note: format!(
            "PyTorch zip checkpoint (top-level keys: {})",
            top_keys.join(", ")
        ),
        ..Default::default()
    };
    for (key, t) in entries {
        let view = (
            t.storage.key.clone(),
            t.offset,
            t.size.clone(),
            t.stride.clone(),
        );
        if let Some(first) = seen.get(&view) {
            // The same view of the same storage: a shared module saved under several names.
            out.aliases.push((key, first.clone()));
            continue;
        }
        if !storages.contains_key(&t.storage.key) {
            let name = format!("{prefix}data/{}", t.storage.key);
            let data = read_entry(&mut zip, &name)?;
            let need = t.storage.numel.checked_mul(t.storage.ty.elem_size());
            if need.is_none_or(|n| data.len() < n) {
                return Err(Error::Checkpoint(format!(
                    "storage {name} has {} bytes, fewer than its {} {} elements need (truncated file?)",
                    data.len(),
                    t.storage.numel,
                    t.storage.ty.torch_name()
                )));
            }
            storages.insert(t.storage.key.clone(), data);
        }
        let data = &storages[&t.storage.key];
        let tensor = materialize(&key, &t, data, big_endian)?;
        out.source_dtypes
            .insert(key.clone(), t.storage.ty.torch_name().to_string());
        seen.insert(view, key.clone());
        out.tensors.push((key, tensor));
    }
    Ok(out)
}

fn read_entry(zip: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str) -> Result<Vec<u8>> {
    let mut f = zip
        .by_name(name)
        .map_err(|e| Error::Checkpoint(format!("zip record {name}: {e}")))?;
    // The declared size is only a hint (and may lie): cap the up-front allocation.
    let mut buf = Vec::with_capacity(f.size().min(1 << 26) as usize);
    f.read_to_end(&mut buf).map_err(|e| {
        Error::Checkpoint(format!(
            "zip record {name}: {e} (corrupted or truncated file?)"
        ))
    })?;
    Ok(buf)
}

/// Finds the state dict in the unpickled root and returns its tensor entries in order, plus the
/// root's keys (for messages).
/// Tensor entries of a state dict, in order.
type Entries = Vec<(String, TensorRef)>;

fn state_dict_entries(pk: &Pickle) -> Result<(Entries, Vec<String>)> {
    let Obj::Dict(root) = pk.get(pk.root) else {
        return Err(Error::Checkpoint(
            "the pickled object is not a dict (expected a state dict or a dict holding one)".into(),
        ));
    };
    let top_keys: Vec<String> = root
        .iter()
        .map(|(k, _)| pk.as_str(*k).unwrap_or("<non-string>").to_string())
        .collect();
    let mut sd = root;
    for name in STATE_DICT_KEYS {
        if let Some((_, v)) = root.iter().find(|(k, _)| pk.as_str(*k) == Some(name)) {
            match pk.get(*v) {
                Obj::Dict(d) => {
                    log::debug!("state dict found under `{name}`");
                    sd = d;
                    break;
                }
                _ => continue,
            }
        }
    }
    let mut out = Vec::with_capacity(sd.len());
    let mut skipped = Vec::new();
    for (k, v) in sd {
        let key = pk
            .as_str(*k)
            .ok_or_else(|| Error::Checkpoint("state dict has a non-string key".into()))?;
        match pk.get(*v) {
            Obj::Tensor(t) => out.push((key.to_string(), t.clone())),
            _ => skipped.push(key.to_string()),
        }
    }
    if !skipped.is_empty() {
        log::debug!(
            "skipping {} non-tensor entries: {}",
            skipped.len(),
            skipped.join(", ")
        );
    }
    if out.is_empty() {
        return Err(Error::Checkpoint(format!(
            "no tensors found (top-level keys: {}); expected a state dict, or one under {}",
            top_keys.join(", "),
            STATE_DICT_KEYS.join("/")
        )));
    }
    Ok((out, top_keys))
}

/// Copies a (possibly strided) view out of its storage into a row-major tensor.
fn materialize(key: &str, t: &TensorRef, data: &[u8], big_endian: bool) -> Result<Tensor> {
    let es = t.storage.ty.elem_size();
    let numel: usize = t
        .size
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or_else(|| Error::Checkpoint(format!("{key}: shape {:?} overflows", t.size)))?;
    if numel > MAX_ELEMENTS {
        return Err(Error::Checkpoint(format!(
            "{key}: shape {:?} has {numel} elements, more than any plausible weight",
            t.size
        )));
    }
    let mut bytes = Vec::with_capacity(numel * es);
    if numel > 0 {
        // Last element's index must lie inside the storage.
        let mut last = t.offset;
        for (&s, &st) in t.size.iter().zip(&t.stride) {
            last = (s - 1)
                .checked_mul(st)
                .and_then(|x| x.checked_add(last))
                .ok_or_else(|| Error::Checkpoint(format!("{key}: stride overflow")))?;
        }
        if last >= t.storage.numel {
            return Err(Error::Checkpoint(format!(
                "{key}: view (offset {}, size {:?}, stride {:?}) reaches element {last} of a {}-element storage",
                t.offset, t.size, t.stride, t.storage.numel
            )));
        }
        let contiguous = {
            let mut expect = 1usize;
            let mut ok = true;
            for (&s, &st) in t.size.iter().zip(&t.stride).rev() {
                if s != 1 && st != expect {
                    ok = false;
                    break;
                }
                expect *= s;
            }
            ok
        };
        if contiguous {
            bytes.extend_from_slice(&data[t.offset * es..(t.offset + numel) * es]);
        } else {
            // Walk the index space in row-major order.
            let rank = t.size.len();
            let mut idx = vec![0usize; rank];
            for _ in 0..numel {
                let e: usize =
                    t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
                bytes.extend_from_slice(&data[e * es..(e + 1) * es]);
                for d in (0..rank).rev() {
                    idx[d] += 1;
                    if idx[d] < t.size[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
        }
        if big_endian && es > 1 {
            for c in bytes.chunks_exact_mut(es) {
                c.reverse();
            }
        }
    }
    to_tensor(key, t.storage.ty, &t.size, &bytes)
}

fn to_tensor(key: &str, ty: StorageType, shape: &[usize], bytes: &[u8]) -> Result<Tensor> {
    let r = match ty.dtype() {
        Some(dt) => Tensor::from_le_bytes(shape, dt, bytes),
        None => match ty {
            StorageType::Double => Tensor::from_f32(
                shape,
                bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
            ),
            StorageType::Short => Tensor::new(
                shape.to_vec(),
                crate::tensor::Data::I32(
                    bytes
                        .chunks_exact(2)
                        .map(|c| i16::from_le_bytes([c[0], c[1]]) as i32)
                        .collect(),
                ),
            ),
            StorageType::Char => Tensor::new(
                shape.to_vec(),
                crate::tensor::Data::I32(bytes.iter().map(|&b| b as i8 as i32).collect()),
            ),
            _ => Tensor::from_le_bytes(shape, DType::U8, bytes),
        },
    };
    r.map_err(|e| Error::Checkpoint(format!("{key}: {e}")))
}
