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
            return Err(Error::Shape(format!(
                "buffer of {len} elements does not fit shape {shape:?}"
            )));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_each_dtype() {
        for dt in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::I64,
            DType::I32,
            DType::U8,
            DType::Bool,
        ] {
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
