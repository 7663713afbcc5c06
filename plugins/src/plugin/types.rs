//! C-layout mirrors of the few TensorRT values the plugin logic needs. The shim `static_assert`s that
//! every numeric value here equals TensorRT's own enum, so a header mismatch fails the C++ build.

use std::ffi::{c_char, c_void};

/// `nvinfer1::DataType` values used by the plugins.
pub mod dtype {
    /// kFLOAT.
    pub const FLOAT: i32 = 0;
    /// kHALF.
    pub const HALF: i32 = 1;
    /// kINT32.
    pub const INT32: i32 = 3;
    /// kINT64.
    pub const INT64: i32 = 8;

    /// Readable name of a DataType value for error messages.
    pub fn name(t: i32) -> &'static str {
        match t {
            0 => "float32",
            1 => "float16",
            2 => "int8",
            3 => "int32",
            4 => "bool",
            5 => "uint8",
            6 => "fp8",
            7 => "bfloat16",
            8 => "int64",
            9 => "int4",
            _ => "other",
        }
    }
}

/// `nvinfer1::TensorFormat::kLINEAR`.
pub const FORMAT_LINEAR: i32 = 0;

/// `nvinfer1::PluginFieldType` values used for attributes.
pub mod field_type {
    /// kINT8.
    pub const INT8: i32 = 3;
    /// kINT16.
    pub const INT16: i32 = 4;
    /// kINT32.
    pub const INT32: i32 = 5;
    /// kINT64.
    pub const INT64: i32 = 10;
}

/// Most dimensions a TensorRT tensor can have (`Dims::MAX_DIMS`).
pub const MAX_DIMS: usize = 8;

/// One plugin input/output as TensorRT describes it (`PluginTensorDesc` without the scale).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorDesc {
    /// DataType value.
    pub dtype: i32,
    /// TensorFormat value.
    pub format: i32,
    /// Rank.
    pub nb_dims: i32,
    /// Extents; -1 where unknown at build time.
    pub dims: [i64; MAX_DIMS],
}

impl TensorDesc {
    /// A linear tensor of `dtype` and `shape` (test and shim helper).
    pub fn new(dtype: i32, shape: &[i64]) -> Self {
        let mut dims = [0; MAX_DIMS];
        dims[..shape.len()].copy_from_slice(shape);
        TensorDesc {
            dtype,
            format: FORMAT_LINEAR,
            nb_dims: shape.len() as i32,
            dims,
        }
    }

    /// The extents as a slice (empty for a bad rank).
    pub fn shape(&self) -> &[i64] {
        let n = usize::try_from(self.nb_dims).unwrap_or(0).min(MAX_DIMS);
        &self.dims[..n]
    }
}

/// How one output dimension is computed from the inputs' symbolic dimensions.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DimExpr {
    /// 0 = constant `value`, 1 = `inputs[a_input].d[a_dim]`, 2 = product of that and `inputs[b_input].d[b_dim]`.
    pub kind: i32,
    /// First operand input index.
    pub a_input: i32,
    /// First operand dimension.
    pub a_dim: i32,
    /// Second operand input index (kind 2).
    pub b_input: i32,
    /// Second operand dimension (kind 2).
    pub b_dim: i32,
    /// Constant (kind 0).
    pub value: i64,
}

impl DimExpr {
    /// A constant dimension.
    pub const fn constant(value: i64) -> Self {
        DimExpr {
            kind: 0,
            a_input: 0,
            a_dim: 0,
            b_input: 0,
            b_dim: 0,
            value,
        }
    }
    /// A copy of an input dimension.
    pub const fn input(input: i32, dim: i32) -> Self {
        DimExpr {
            kind: 1,
            a_input: input,
            a_dim: dim,
            b_input: 0,
            b_dim: 0,
            value: 0,
        }
    }
    /// The product of two input dimensions.
    pub const fn product(a: (i32, i32), b: (i32, i32)) -> Self {
        DimExpr {
            kind: 2,
            a_input: a.0,
            a_dim: a.1,
            b_input: b.0,
            b_dim: b.1,
            value: 0,
        }
    }

    /// Evaluates against concrete input shapes (tests and runtime checks).
    pub fn eval(&self, inputs: &[&[i64]]) -> Option<i64> {
        let get = |i: i32, d: i32| {
            inputs
                .get(i as usize)
                .and_then(|s| s.get(d as usize))
                .copied()
        };
        match self.kind {
            0 => Some(self.value),
            1 => get(self.a_input, self.a_dim),
            2 => Some(get(self.a_input, self.a_dim)? * get(self.b_input, self.b_dim)?),
            _ => None,
        }
    }
}

/// An output shape as a list of [`DimExpr`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeRecipe {
    /// Rank.
    pub nb_dims: i32,
    /// The first `nb_dims` entries are meaningful.
    pub dims: [DimExpr; MAX_DIMS],
}

impl ShapeRecipe {
    /// Builds a recipe from a list of expressions (at most [`MAX_DIMS`]).
    pub fn new(exprs: &[DimExpr]) -> Self {
        let mut dims = [DimExpr::constant(0); MAX_DIMS];
        dims[..exprs.len()].copy_from_slice(exprs);
        ShapeRecipe {
            nb_dims: exprs.len() as i32,
            dims,
        }
    }

    /// Evaluates every dimension against concrete input shapes.
    pub fn eval(&self, inputs: &[&[i64]]) -> Option<Vec<i64>> {
        self.dims[..self.nb_dims as usize]
            .iter()
            .map(|d| d.eval(inputs))
            .collect()
    }
}

/// One attribute as a `PluginField` carries it (name, raw data, PluginFieldType, element count).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// NUL-terminated name.
    pub name: *const c_char,
    /// Element data, or null in an attribute schema.
    pub data: *const c_void,
    /// PluginFieldType value.
    pub field_type: i32,
    /// Element count.
    pub length: i32,
}
