//! Weights named where they are used: a [`Scope`] is a weight source seen under a key prefix (in the style
//! of candle's `VarBuilder::pp`), and every read through it states the shape the caller expects.
//!
//! The paper modules of `crate::graph` walk the official state-dict tree with [`Scope::pp`]
//! (`root.pp("transformer").pp("decoder").pp("layers").pp(i)`), so a key is spelled once, where the tensor
//! is used, and a checkpoint whose tensor has another shape fails at that line with both shapes named.
//! A source that only collects declarations ([`Weights::declares_only`]) turns a graph build into the
//! list of every tensor the model reads and its shape: the key map of the official checkpoint is that list
//! plus what the graph cannot say (see `crate::weights::keymap`).

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Display;

/// A source of weights by official state-dict key (f32, LoRA folded, aliases resolved). The graph reads
/// it through a [`Scope`], which declares each tensor's shape before reading it.
pub trait Weights {
    /// The tensor stored under `key`, or an error naming the key.
    fn tensor(&self, key: &str) -> Result<&Tensor>;

    /// Told of every tensor the graph reads, with the shape and type it expects, before the read.
    fn declare(&self, _key: &str, _shape: &[usize], _dtype: DType) {}

    /// True for a source that holds no data and only collects declarations: the graph then builds
    /// shapes without reading, copying or transforming any weight.
    fn declares_only(&self) -> bool {
        false
    }
}

impl Weights for HashMap<String, Tensor> {
    fn tensor(&self, key: &str) -> Result<&Tensor> {
        self.get(key).ok_or_else(|| Error::MissingTensor {
            origin: "weight map".into(),
            name: key.to_string(),
            hint: String::new(),
        })
    }
}

/// A weight source under a key prefix.
#[derive(Clone)]
pub struct Scope<'a> {
    src: &'a dyn Weights,
    prefix: String,
}

impl<'a> Scope<'a> {
    /// The root scope of a source (empty prefix).
    pub fn new(src: &'a dyn Weights) -> Self {
        Scope {
            src,
            prefix: String::new(),
        }
    }

    /// The sub-scope `name` (`a.b` → `a.b.name`); numbers index module lists (`layers.3`).
    pub fn pp(&self, name: impl Display) -> Scope<'a> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Scope {
            src: self.src,
            prefix,
        }
    }

    /// The prefix of this scope, without a trailing dot.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full key of `name` in this scope.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Whether the source only collects declarations (reads return zeros).
    pub fn declares_only(&self) -> bool {
        self.src.declares_only()
    }

    /// Declares the f32 tensor `name` of `shape` and reads it; an error names the key and both shapes
    /// when the source holds another shape. A declaring source gets zeros.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Cow<'a, Tensor>> {
        self.get_typed(name, shape, DType::F32)
    }

    /// [`Scope::get`] for a tensor of another element type (the integer buffers of Swin).
    pub fn get_typed(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Cow<'a, Tensor>> {
        let key = self.key(name);
        self.src.declare(&key, shape, dtype);
        if self.src.declares_only() {
            return Ok(Cow::Owned(Tensor::zeros(shape, dtype)));
        }
        let t = self.src.tensor(&key)?;
        if t.dtype() != dtype {
            return Err(Error::Checkpoint(format!(
                "tensor `{key}` is {:?}, expected {dtype:?} after loading",
                t.dtype()
            )));
        }
        if t.shape() != shape {
            return Err(Error::shape_mismatch(
                format!("checkpoint tensor `{key}`"),
                shape,
                t.shape(),
            ));
        }
        Ok(Cow::Borrowed(t))
    }

    /// A tensor the source may lack (a buffer some checkpoints omit because it is recomputable): `None`
    /// when absent, and always `None` from a declaring source (the declaration is still recorded).
    pub fn get_optional(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Option<Cow<'a, Tensor>>> {
        let key = self.key(name);
        self.src.declare(&key, shape, dtype);
        if self.src.declares_only() {
            return Ok(None);
        }
        match self.src.tensor(&key) {
            Ok(t) if t.shape() == shape => Ok(Some(Cow::Borrowed(t))),
            Ok(t) => Err(Error::shape_mismatch(
                format!("checkpoint tensor `{key}`"),
                shape,
                t.shape(),
            )),
            Err(_) => Ok(None),
        }
    }
}

/// One tensor the graph declared: key, shape and element type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declared {
    /// Official state-dict key.
    pub key: String,
    /// Shape the graph expects.
    pub shape: Vec<usize>,
    /// Element type the graph expects.
    pub dtype: DType,
}

/// A source that holds no data and records every declaration, in order, once per key.
#[derive(Default)]
pub struct Declarations {
    seen: RefCell<Vec<Declared>>,
}

impl Declarations {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// The declarations, in the order the graph made them, without repeats.
    pub fn into_list(self) -> Vec<Declared> {
        self.seen.into_inner()
    }
}

impl Weights for Declarations {
    fn tensor(&self, key: &str) -> Result<&Tensor> {
        Err(Error::Graph(format!(
            "`{key}` read from a declaration-only weight source"
        )))
    }

    fn declare(&self, key: &str, shape: &[usize], dtype: DType) {
        let mut seen = self.seen.borrow_mut();
        if !seen.iter().any(|d| d.key == key) {
            seen.push(Declared {
                key: key.to_string(),
                shape: shape.to_vec(),
                dtype,
            });
        }
    }

    fn declares_only(&self) -> bool {
        true
    }
}
