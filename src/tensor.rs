//! A small owned host tensor: a shape and a typed, row-major buffer.
//!
//! This is the exchange type between checkpoint readers, the graph builder (initializers), the
//! backends and the tests. It is deliberately plain: no strides, no views, no broadcasting.

use crate::error::{Error, Result};
use half::{bf16, f16};

/// Element type of a [`Tensor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer.
    I32,
    /// Unsigned byte.
    U8,
    /// Boolean (one byte each).
    Bool,
}

impl DType {
    /// Every element type, in declaration order.
    pub const ALL: [DType; 7] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::I32,
        DType::U8,
        DType::Bool,
    ];

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
            DType::U8 | DType::Bool => 1,
        }
    }
}

/// Typed storage of a [`Tensor`].
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    BF16(Vec<bf16>),
    /// i64 elements.
    I64(Vec<i64>),
    /// i32 elements.
    I32(Vec<i32>),
    /// u8 elements.
    U8(Vec<u8>),
    /// bool elements.
    Bool(Vec<bool>),
}

/// An owned, row-major host tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Data,
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// Builds a tensor, checking that the buffer length matches the shape.
    pub fn new(shape: Vec<usize>, data: Data) -> Result<Self> {
        let len = match &data {
            Data::F32(v) => v.len(),
            Data::F16(v) => v.len(),
            Data::BF16(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::U8(v) => v.len(),
            Data::Bool(v) => v.len(),
        };
        if len != numel(&shape) {
            return Err(Error::shape_mismatch(
                format!("tensor buffer for shape {shape:?}"),
                numel(&shape),
                len,
            ));
        }
        Ok(Tensor { shape, data })
    }

    /// An f32 tensor; panics only on a programming error (length mismatch), so use for literals.
    pub fn from_f32(shape: &[usize], v: Vec<f32>) -> Result<Self> {
        Self::new(shape.to_vec(), Data::F32(v))
    }

    /// An i64 tensor.
    pub fn from_i64(shape: &[usize], v: Vec<i64>) -> Result<Self> {
        Self::new(shape.to_vec(), Data::I64(v))
    }

    /// A zero-filled tensor of the given type.
    pub fn zeros(shape: &[usize], dtype: DType) -> Self {
        let n = numel(shape);
        let data = match dtype {
            DType::F32 => Data::F32(vec![0.0; n]),
            DType::F16 => Data::F16(vec![f16::ZERO; n]),
            DType::BF16 => Data::BF16(vec![bf16::ZERO; n]),
            DType::I64 => Data::I64(vec![0; n]),
            DType::I32 => Data::I32(vec![0; n]),
            DType::U8 => Data::U8(vec![0; n]),
            DType::Bool => Data::Bool(vec![false; n]),
        };
        Tensor {
            shape: shape.to_vec(),
            data,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        match self.data {
            Data::F32(_) => DType::F32,
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
            Data::I64(_) => DType::I64,
            Data::I32(_) => DType::I32,
            Data::U8(_) => DType::U8,
            Data::Bool(_) => DType::Bool,
        }
    }

    /// The typed storage.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// The mutable typed storage (shape stays fixed).
    pub fn data_mut(&mut self) -> &mut Data {
        &mut self.data
    }

    /// Consumes the tensor into shape and storage.
    pub fn into_parts(self) -> (Vec<usize>, Data) {
        (self.shape, self.data)
    }

    /// Same data, new shape of the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        if numel(shape) != self.numel() {
            return Err(Error::Shape(format!(
                "cannot reshape {:?} to {:?}",
                self.shape, shape
            )));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// The f32 buffer, or an error naming the actual dtype.
    pub fn f32s(&self) -> Result<&[f32]> {
        match &self.data {
            Data::F32(v) => Ok(v),
            _ => Err(Error::Shape(format!(
                "expected f32, found {:?}",
                self.dtype()
            ))),
        }
    }

    /// The mutable f32 buffer.
    pub fn f32s_mut(&mut self) -> Result<&mut [f32]> {
        let dt = self.dtype();
        match &mut self.data {
            Data::F32(v) => Ok(v),
            _ => Err(Error::Shape(format!("expected f32, found {dt:?}"))),
        }
    }

    /// The i64 buffer, or an error naming the actual dtype.
    pub fn i64s(&self) -> Result<&[i64]> {
        match &self.data {
            Data::I64(v) => Ok(v),
            _ => Err(Error::Shape(format!(
                "expected i64, found {:?}",
                self.dtype()
            ))),
        }
    }

    /// Converts any float type to an f32 tensor (copy); integers and bools convert by value.
    pub fn to_f32(&self) -> Tensor {
        let v: Vec<f32> = match &self.data {
            Data::F32(v) => v.clone(),
            Data::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Data::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
            Data::I32(v) => v.iter().map(|&x| x as f32).collect(),
            Data::U8(v) => v.iter().map(|&x| x as f32).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as u8 as f32).collect(),
        };
        Tensor {
            shape: self.shape.clone(),
            data: Data::F32(v),
        }
    }

    /// Little-endian raw bytes of the storage (bools as 0/1 bytes).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match &self.data {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::U8(v) => v.clone(),
            Data::Bool(v) => v.iter().map(|&b| b as u8).collect(),
        }
    }

    /// Builds a tensor from little-endian bytes of the given dtype.
    pub fn from_le_bytes(shape: &[usize], dtype: DType, bytes: &[u8]) -> Result<Self> {
        let n = numel(shape);
        if bytes.len() != n * dtype.size() {
            return Err(Error::Shape(format!(
                "{} bytes do not hold {n} elements of {dtype:?} (shape {shape:?})",
                bytes.len()
            )));
        }
        macro_rules! conv {
            ($t:ty, $w:expr) => {
                bytes
                    .chunks_exact($w)
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk width")))
                    .collect()
            };
        }
        let data = match dtype {
            DType::F32 => Data::F32(conv!(f32, 4)),
            DType::F16 => Data::F16(conv!(f16, 2)),
            DType::BF16 => Data::BF16(conv!(bf16, 2)),
            DType::I64 => Data::I64(conv!(i64, 8)),
            DType::I32 => Data::I32(conv!(i32, 4)),
            DType::U8 => Data::U8(bytes.to_vec()),
            DType::Bool => Data::Bool(bytes.iter().map(|&b| b != 0).collect()),
        };
        Tensor::new(shape.to_vec(), data)
    }
}

/// Name, element type and static shape of one engine binding.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorSpec {
    /// Binding name (as in the ONNX graph and the engine manifest).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Static shape.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_each_dtype() {
        for dt in DType::ALL {
            let t = Tensor::zeros(&[2, 3], dt);
            let b = t.to_le_bytes();
            assert_eq!(b.len(), 6 * dt.size());
            assert_eq!(Tensor::from_le_bytes(&[2, 3], dt, &b).unwrap(), t);
        }
    }

    #[test]
    fn length_mismatch_is_an_error() {
        assert!(Tensor::from_f32(&[2, 2], vec![1.0; 3]).is_err());
        assert!(Tensor::from_le_bytes(&[2], DType::F32, &[0; 7]).is_err());
        assert!(Tensor::zeros(&[4], DType::F32).reshape(&[3]).is_err());
    }
}

/// Reads every tensor of a safetensors file (any supported dtype) keyed by name, plus its metadata.
///
/// This is the raw reader shared by the checkpoint loader and the fixture-based tests; it performs no
/// key mapping or LoRA folding.
pub fn read_safetensors(
    path: &std::path::Path,
) -> Result<(
    std::collections::BTreeMap<String, Tensor>,
    std::collections::HashMap<String, String>,
)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_safetensors(&bytes).map_err(|e| match e {
        Error::Checkpoint(m) => Error::Checkpoint(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Parses safetensors bytes (see [`read_safetensors`]).
pub fn parse_safetensors(
    bytes: &[u8],
) -> Result<(
    std::collections::BTreeMap<String, Tensor>,
    std::collections::HashMap<String, String>,
)> {
    use safetensors::{tensor::Dtype as S, SafeTensors};
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::Checkpoint(format!("not a valid safetensors file: {e}")))?;
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::Checkpoint(format!("not a valid safetensors file: {e}")))?;
    let mut out = std::collections::BTreeMap::new();
    for (name, view) in st.tensors() {
        let dt = match view.dtype() {
            S::F32 => DType::F32,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::I64 => DType::I64,
            S::I32 => DType::I32,
            S::U8 => DType::U8,
            S::BOOL => DType::Bool,
            other => {
                return Err(Error::Checkpoint(format!(
                    "tensor `{name}` has unsupported dtype {other:?}"
                )))
            }
        };
        let t = Tensor::from_le_bytes(view.shape(), dt, view.data())
            .map_err(|e| Error::Checkpoint(format!("tensor `{name}`: {e}")))?;
        out.insert(name, t);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Writes tensors (and string metadata) as a safetensors file.
pub fn write_safetensors(
    path: &std::path::Path,
    tensors: &std::collections::BTreeMap<String, Tensor>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    use safetensors::tensor::{Dtype as S, TensorView};
    let bytes: Vec<(String, Vec<u8>, S, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| {
            let dt = match t.dtype() {
                DType::F32 => S::F32,
                DType::F16 => S::F16,
                DType::BF16 => S::BF16,
                DType::I64 => S::I64,
                DType::I32 => S::I32,
                DType::U8 => S::U8,
                DType::Bool => S::BOOL,
            };
            (k.clone(), t.to_le_bytes(), dt, t.shape().to_vec())
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(k, b, dt, s)| {
            TensorView::new(*dt, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::Other(format!("safetensors view `{k}`: {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, metadata, path)
        .map_err(|e| Error::Other(format!("{}: {e}", path.display())))
}

/// Writes a tensor as a NumPy `.npy` file (format 1.0, little endian, C order).
pub fn write_npy(path: &std::path::Path, t: &Tensor) -> Result<()> {
    let descr = match t.dtype() {
        DType::F32 => "<f4",
        DType::F16 => "<f2",
        DType::I64 => "<i8",
        DType::I32 => "<i4",
        DType::U8 => "|u1",
        DType::Bool => "|b1",
        DType::BF16 => return Err(Error::Shape("npy has no bfloat16".into())),
    };
    let shape = match t.shape() {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.numel() * t.dtype().size());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&t.to_le_bytes());
    std::fs::write(path, out).map_err(|e| Error::io(path, e))
}

/// Reads a NumPy `.npy` file written in C order with a little-endian f32/f16/i64/i32/u8/bool dtype.
pub fn read_npy(path: &std::path::Path) -> Result<Tensor> {
    let b = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: &str| Error::Shape(format!("{}: {m}", path.display()));
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad("not an npy file"));
    }
    let (hlen, off) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        _ => return Err(bad("unsupported npy version")),
    };
    let header = std::str::from_utf8(
        b.get(off..off + hlen)
            .ok_or_else(|| bad("truncated header"))?,
    )
    .map_err(|_| bad("header is not UTF-8"))?;
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran order is not supported"));
    }
    let field = |name: &str| -> Result<&str> {
        let i = header
            .find(name)
            .ok_or_else(|| bad("header field missing"))?
            + name.len();
        Ok(header[i..].trim_start_matches([':', ' ', '\'']))
    };
    let descr = field("'descr'")?;
    let dt = if descr.starts_with("<f4") {
        DType::F32
    } else if descr.starts_with("<f2") {
        DType::F16
    } else if descr.starts_with("<i8") {
        DType::I64
    } else if descr.starts_with("<i4") {
        DType::I32
    } else if descr.starts_with("|u1") {
        DType::U8
    } else if descr.starts_with("|b1") {
        DType::Bool
    } else {
        return Err(bad("unsupported dtype"));
    };
    let s = field("'shape'")?;
    let s = &s
        [s.find('(').ok_or_else(|| bad("shape"))? + 1..s.find(')').ok_or_else(|| bad("shape"))?];
    let shape: Vec<usize> = s
        .split(',')
        .map(|x| x.trim())
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().map_err(|_| bad("shape")))
        .collect::<Result<_>>()?;
    Tensor::from_le_bytes(&shape, dt, &b[off + hlen..])
}

#[cfg(test)]
mod io_tests {
    use super::*;

    #[test]
    fn npy_and_safetensors_round_trip() {
        let dir = std::env::temp_dir().join(format!("referdino-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = Tensor::from_f32(&[2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-7, 9.0]).unwrap();
        let b = Tensor::new(vec![3], Data::Bool(vec![true, false, true])).unwrap();
        let c = Tensor::from_i64(&[], vec![42]).unwrap();
        for t in [&a, &b, &c] {
            let p = dir.join("t.npy");
            write_npy(&p, t).unwrap();
            assert_eq!(&read_npy(&p).unwrap(), t);
        }
        let mut m = std::collections::BTreeMap::new();
        m.insert("a".to_string(), a.clone());
        m.insert("b".to_string(), b.clone());
        let p = dir.join("t.safetensors");
        write_safetensors(&p, &m, None).unwrap();
        assert_eq!(read_safetensors(&p).unwrap().0, m);
        assert!(read_npy(&dir.join("missing.npy")).is_err());
        std::fs::write(dir.join("bad.npy"), b"garbage").unwrap();
        assert!(read_npy(&dir.join("bad.npy")).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
