//! Hand-built PyTorch checkpoints: a zip in torch.save's layout and a pickle writer for state
//! dicts, for tests of the `.pth` reader (bad input, allocation bounds). Binaries include this
//! file alone (`#[path = "../support/pth.rs"] mod pth;`), and each uses part of it.
#![allow(dead_code)]

use std::io::Write;

/// A zip in torch's layout (`archive/…`, stored entries).
pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opt =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        w.start_file(*name, opt).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A minimal protocol-2 pickle writer producing what torch.save writes for a state dict.
pub struct Pkl(pub Vec<u8>);

impl Pkl {
    pub fn new() -> Self {
        Pkl(vec![0x80, 2])
    }
    pub fn s(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn int(&mut self, v: u32) -> &mut Self {
        self.0.push(b'J');
        self.0.extend_from_slice(&(v as i32).to_le_bytes());
        self
    }
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn ints(&mut self, v: &[usize]) -> &mut Self {
        self.raw(b"(");
        for &x in v {
            self.int(x as u32);
        }
        self.raw(b"t")
    }
    /// `_rebuild_tensor_v2(('storage', torch.<ty>, key, 'cpu', numel), offset, size, stride, False, OrderedDict())`
    pub fn tensor(
        &mut self,
        ty: &str,
        key: &str,
        numel: usize,
        offset: usize,
        size: &[usize],
        stride: &[usize],
    ) -> &mut Self {
        self.raw(b"ctorch._utils\n_rebuild_tensor_v2\n((")
            .s("storage");
        self.raw(format!("ctorch\n{ty}\n").as_bytes())
            .s(key)
            .s("cpu")
            .int(numel as u32)
            .raw(b"tQ");
        self.int(offset as u32).ints(size).ints(stride);
        self.raw(b"\x89ccollections\nOrderedDict\n)RtR")
    }
}

pub fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A state dict `{name: tensor, ...}` pickle from `(name, storage type, key, numel, offset, size,
/// stride)` rows.
pub type Row<'a> = (
    &'a str,
    &'a str,
    &'a str,
    usize,
    usize,
    &'a [usize],
    &'a [usize],
);

pub fn state_dict(rows: &[Row]) -> Vec<u8> {
    let mut p = Pkl::new();
    p.raw(b"}(");
    for (name, ty, key, numel, offset, size, stride) in rows {
        p.s(name).tensor(ty, key, *numel, *offset, size, stride);
    }
    p.raw(b"u.");
    p.0
}

/// A checkpoint whose 8192x8192 zero-stride tensor `w` views a 1-element storage, beside a storage
/// `decoy` declared as 2^26 elements (256 MiB) that has no record: a loader that budgets views by
/// declared sizes would fund the view; every storage must be checked before any tensor is built.
pub fn zero_stride_decoy() -> Vec<u8> {
    zip_of(&[
        ("archive/data.pkl", &zero_stride_decoy_pkl()),
        ("archive/data/0", &le_f32(&[1.0])),
    ])
}

/// The pickle of [`zero_stride_decoy`] (for variants of its records).
pub fn zero_stride_decoy_pkl() -> Vec<u8> {
    state_dict(&[
        ("w", "FloatStorage", "0", 1, 0, &[8192, 8192], &[0, 0]),
        ("decoy", "FloatStorage", "1", 1 << 26, 0, &[1 << 26], &[1]),
    ])
}
