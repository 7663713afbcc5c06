//! PyTorch zip checkpoints (`torch.save`, PyTorch ≥ 1.6): `<name>/data.pkl` (restricted pickle,
//! see [`super::pickle`]), `<name>/data/<key>` raw storages, `<name>/byteorder`. Storages that
//! torch.save stores uncompressed are read in place from the file's bytes (the loader maps the
//! file), so loading holds the converted tensors on the heap, not a copy of the storages beside them.

use super::pickle::{unpickle, Obj, Pickle, StorageType, TensorRef};
use super::RawCheckpoint;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use std::borrow::Cow;
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
    let pkl = read_entry(&mut zip, &pkl_name, MAX_PICKLE_BYTES, "a pickle")?;
    let big_endian = match zip.by_name(&format!("{prefix}byteorder")) {
        Ok(f) => {
            let mut s = String::new();
            // "little" or "big": a few bytes; never inflate more.
            f.take(64)
                .read_to_string(&mut s)
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

    // Each storage key must name one (type, element count) throughout: torch.save refuses to save
    // one storage as two types, and the bytes are checked against the first use only.
    let mut kinds: HashMap<&str, (&str, &TensorRef)> = HashMap::new();
    for (key, t) in &entries {
        let (first_key, first) = *kinds.entry(t.storage.key.as_str()).or_insert((key, t));
        if (first.storage.ty, first.storage.numel) != (t.storage.ty, t.storage.numel) {
            return Err(Error::Checkpoint(format!(
                "storage {prefix}data/{} is named as {} {} elements by {first_key} {:?} but as {} {} \
                 elements by {key} {:?}: inconsistent checkpoint",
                t.storage.key,
                first.storage.numel,
                first.storage.ty.torch_name(),
                first.size,
                t.storage.numel,
                t.storage.ty.torch_name(),
                t.size
            )));
        }
    }
    // Every referenced storage is checked against its zip record before any tensor is built, so
    // the view budget below counts bytes the file holds: sizes the pickle merely declares (a
    // storage with no record) would let a zero-stride view allocate gigabytes before the missing
    // record is noticed. Stored records (what torch.save writes) are borrowed from `bytes`, so no
    // storage is copied onto the heap; compressed ones are inflated here and each is freed after
    // the last tensor that uses it.
    let mut storages: HashMap<&str, Cow<'_, [u8]>> = HashMap::new();
    let mut last_use: HashMap<&str, usize> = HashMap::new();
    for (i, (key, t)) in entries.iter().enumerate() {
        let skey = t.storage.key.as_str();
        last_use.insert(skey, i);
        if storages.contains_key(skey) {
            continue;
        }
        let name = format!("{prefix}data/{skey}");
        let need = t
            .storage
            .numel
            .checked_mul(t.storage.ty.elem_size())
            .ok_or_else(|| {
                Error::Checkpoint(format!(
                    "{key} {:?}: storage {name} of {} elements overflows",
                    t.size, t.storage.numel
                ))
            })?;
        let what = format!("storage of {key} {:?}", t.size);
        let data = storage_record(&mut zip, bytes, &name, need, &what)?;
        if data.len() < need {
            return Err(Error::Checkpoint(format!(
                "{key} {:?}: storage {name} has {} bytes, fewer than its {} {} elements need \
                 (truncated file?)",
                t.size,
                data.len(),
                t.storage.numel,
                t.storage.ty.torch_name()
            )));
        }
        storages.insert(skey, data);
    }
    // Bound the bytes materialised from views: the storages' bytes ×4 plus 64 MiB. A legitimate
    // view never needs more: views of distinct storages add up to at most the storages, overlapping
    // views (expanded buffers saved with zero strides, such as BERT's position_ids) are rare and
    // small. Without it a 1-element storage viewed as 65536×65536 with stride 0 asks for 16 GiB.
    let storage_bytes = storages
        .values()
        .map(|d| d.len())
        .fold(0usize, usize::saturating_add);
    let budget = storage_bytes
        .saturating_mul(4)
        .saturating_add(MIN_VIEW_BUDGET);
    let mut materialized = 0usize;

    let mut seen: HashMap<(String, usize, Vec<usize>, Vec<usize>), String> = HashMap::new();
    let mut out = RawCheckpoint {
        note: format!(
            "PyTorch zip checkpoint (top-level keys: {})",
            top_keys.join(", ")
        ),
        ..Default::default()
    };
    // The pickle's order is the state-dict order; keep it, aliases included.
    out.key_order = Some(entries.iter().map(|(k, _)| k.clone()).collect());
    for (i, (key, t)) in entries.iter().enumerate() {
        let skey = t.storage.key.as_str();
        let view = (
            t.storage.key.clone(),
            t.offset,
            t.size.clone(),
            t.stride.clone(),
        );
        if let Some(first) = seen.get(&view) {
            // The same view of the same storage: a shared module saved under several names.
            out.aliases.push((key.clone(), first.clone()));
        } else {
            let es = t.storage.ty.elem_size();
            let view_bytes = t
                .size
                .iter()
                .try_fold(es, |a, &b| a.checked_mul(b))
                .unwrap_or(usize::MAX);
            materialized = materialized.saturating_add(view_bytes);
            if materialized > budget {
                return Err(Error::Checkpoint(format!(
                    "{key}: view {:?} (stride {:?}) of a {}-element storage would bring the \
                     tensors to {materialized} bytes, more than the {budget} bytes allowed for \
                     {storage_bytes} bytes of storages (4x plus {} MiB): refusing an amplifying \
                     (zero-stride) view",
                    t.size,
                    t.stride,
                    t.storage.numel,
                    MIN_VIEW_BUDGET >> 20
                )));
            }
            let data = storages.get(skey).ok_or_else(|| {
                Error::Checkpoint(format!("{key}: storage {skey} was released early"))
            })?;
            let tensor = materialize(key, t, data, big_endian)?;
            out.source_dtypes
                .insert(key.clone(), t.storage.ty.torch_name().to_string());
            seen.insert(view, key.clone());
            out.tensors.push((key.clone(), tensor));
        }
        // An inflated storage is freed once its last tensor is built, so the heap holds the
        // converted tensors plus the storages still to come, not every storage until the end.
        if last_use.get(skey) == Some(&i) {
            storages.remove(skey);
        }
    }
    Ok(out)
}

/// Largest `data.pkl` inflated: a Swin-B checkpoint's is well under 1 MiB.
const MAX_PICKLE_BYTES: usize = 256 << 20;

/// Bytes every checkpoint may materialise from views beyond 4x its storages (see `read`).
const MIN_VIEW_BUDGET: usize = 64 << 20;

/// Inflates zip record `name`, at most `max` bytes: a record holding more than its reader needs
/// (`what`, for the message) is refused rather than inflated without limit (a zip bomb).
fn read_entry(
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    max: usize,
    what: &str,
) -> Result<Vec<u8>> {
    let f = zip
        .by_name(name)
        .map_err(|e| Error::Checkpoint(format!("zip record {name} ({what}): {e}")))?;
    let too_big = |n: String| {
        Error::Checkpoint(format!(
            "zip record {name} holds {n} bytes, more than the {max} bytes {what} may need"
        ))
    };
    if f.size() > max as u64 {
        return Err(too_big(f.size().to_string()));
    }
    // The declared size is only a hint (and may lie): cap the up-front allocation, and read one
    // byte past `max` to notice excess. Reading to the end checks the record's CRC.
    let mut buf = Vec::with_capacity(f.size().min(1 << 26) as usize);
    f.take(max as u64 + 1).read_to_end(&mut buf).map_err(|e| {
        Error::Checkpoint(format!(
            "zip record {name}: {e} (corrupted or truncated file?)"
        ))
    })?;
    if buf.len() > max {
        return Err(too_big(format!("over {max}")));
    }
    Ok(buf)
}

/// The bytes of storage record `name`, at most `max` (`what` names its reader in messages). A
/// stored record (no compression: what torch.save writes) is borrowed from the file's `bytes`
/// after the same checks the zip reader makes (size and CRC); any other record is inflated.
fn storage_record<'a>(
    zip: &mut zip::ZipArchive<Cursor<&'a [u8]>>,
    bytes: &'a [u8],
    name: &str,
    max: usize,
    what: &str,
) -> Result<Cow<'a, [u8]>> {
    let stored = {
        let f = zip
            .by_name(name)
            .map_err(|e| Error::Checkpoint(format!("zip record {name} ({what}): {e}")))?;
        (f.compression() == zip::CompressionMethod::Stored && !f.encrypted())
            .then(|| (f.data_start(), f.compressed_size(), f.size(), f.crc32()))
    };
    let Some((start, packed, size, crc)) = stored else {
        return read_entry(zip, name, max, what).map(Cow::Owned);
    };
    if size > max as u64 {
        return Err(Error::Checkpoint(format!(
            "zip record {name} holds {size} bytes, more than the {max} bytes {what} may need"
        )));
    }
    if packed != size {
        return Err(Error::Checkpoint(format!(
            "zip record {name} is stored uncompressed but its sizes differ ({packed} in the \
             archive, {size} uncompressed): corrupted file?"
        )));
    }
    let data = usize::try_from(start)
        .ok()
        .and_then(|s| bytes.get(s..s.checked_add(size as usize)?))
        .ok_or_else(|| {
            Error::Checkpoint(format!(
                "zip record {name}: its {size} bytes at offset {start} run past the end of the \
                 {}-byte file (truncated file?)",
                bytes.len()
            ))
        })?;
    if crc32fast::hash(data) != crc {
        return Err(Error::Checkpoint(format!(
            "zip record {name}: CRC mismatch (corrupted file?)"
        )));
    }
    Ok(Cow::Borrowed(data))
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
            Obj::Tensor(t) => out.push((key.to_string(), (**t).clone())),
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
    let mut owned = Vec::new();
    let mut borrowed: &[u8] = &[];
    if numel > 0 {
        // Last element's index must lie inside the storage.
        let mut last = t.offset;
        for (&s, &st) in t.size.iter().zip(&t.stride) {
            last = (s - 1)
                .checked_mul(st)
                .and_then(|x| x.checked_add(last))
                .ok_or_else(|| Error::Checkpoint(format!("{key}: stride overflow")))?;
        }
        // `last < numel` and the storage's bytes were checked against its numel when read; the
        // bytes test is kept so that a slip there can never index past the data.
        if last >= t.storage.numel
            || last
                .checked_add(1)
                .and_then(|n| n.checked_mul(es))
                .is_none_or(|n| n > data.len())
        {
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
            borrowed = &data[t.offset * es..(t.offset + numel) * es];
        } else {
            owned.reserve(numel * es);
            // Walk the index space in row-major order.
            let rank = t.size.len();
            let mut idx = vec![0usize; rank];
            for _ in 0..numel {
                let e: usize =
                    t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
                owned.extend_from_slice(&data[e * es..(e + 1) * es]);
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
            if owned.is_empty() {
                owned = borrowed.to_vec();
            }
            for c in owned.chunks_exact_mut(es) {
                c.reverse();
            }
        }
    }
    // Contiguous little-endian views convert straight from the storage, without a copy.
    let bytes = if owned.is_empty() { borrowed } else { &owned };
    to_tensor(key, t.storage.ty, &t.size, bytes)
}

fn to_tensor(key: &str, ty: StorageType, shape: &[usize], bytes: &[u8]) -> Result<Tensor> {
    let r = match ty.dtype() {
        Some(dt) => super::tensor_from_le(shape, dt, bytes),
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
