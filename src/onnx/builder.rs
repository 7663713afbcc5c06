//! A small ONNX graph builder with static shape inference.
//!
//! Network modules (`swin.rs`, `bert.rs`, ...) describe the model with calls such as
//! `g.linear(&x, "transformer.decoder.layers.0.linear1")` or `g.softmax(&s, -1)`. Every call appends one or
//! more ONNX nodes and returns a [`Value`] that knows its static shape and element type, so a module can
//! compute reshape dimensions from its inputs and shape errors surface at export time with the op and its
//! inputs, not at run time inside a backend. The output types come from [`super::infer`], the same
//! inference the graph passes run over finished models: each op's shape rule is written once.
//!
//! Weights come from a [`Weights`](super::scope::Weights) source by official state-dict key and become initializers (each key once).
//! Parity taps ([`Graph::tap`]) expose intermediate tensors as extra outputs under the official fixture
//! key names when [`GraphOptions::taps`] is on; they cost nothing otherwise.

use super::infer;
use super::scope::Scope;
use crate::error::{Error, Result};
use crate::tensor::TensorSpec;
use crate::tensor::{DType, Tensor};
use std::collections::HashMap;
use std::sync::Arc;
use tract_onnx::pb;

/// ONNX opset of the default domain.
pub const OPSET: i64 = 17;
/// Domain of our custom ops.
pub const CUSTOM_DOMAIN: &str = "referdino";

/// How [`Graph::resize`] interpolates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interp {
    /// Nearest neighbour with PyTorch's legacy floor mapping (`src = floor(dst · in / out)`).
    Nearest,
    /// Bilinear with `align_corners = false` (half-pixel centres).
    Bilinear,
}

/// Whether a Linear or Conv layer adds a learned bias (`name.bias`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bias {
    /// `y = W·x + b`.
    With,
    /// `y = W·x` (no `name.bias` tensor).
    Without,
}

/// A symbolic tensor in the graph under construction.
#[derive(Clone, Debug)]
pub struct Value {
    /// ONNX value name.
    pub name: Arc<str>,
    /// Static shape.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
}

impl Value {
    /// Rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Size of axis `a` (negative counts from the end).
    pub fn dim(&self, a: i64) -> usize {
        self.shape[norm_axis(a, self.rank())]
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Options that change what the builder emits.
#[derive(Clone, Debug, Default)]
pub struct GraphOptions {
    /// Expose [`Graph::tap`] tensors as extra outputs (parity runs).
    pub taps: bool,
    /// Emit the custom ops as standard ONNX subgraphs (GridSample, TopK, ...) so any runtime can run them.
    pub decompose_custom_ops: bool,
}

/// Normalises a possibly negative axis.
pub fn norm_axis(a: i64, rank: usize) -> usize {
    if a < 0 {
        (rank as i64 + a) as usize
    } else {
        a as usize
    }
}

fn onnx_dtype(dt: DType) -> i32 {
    use pb::tensor_proto::DataType as D;
    (match dt {
        DType::F32 => D::Float,
        DType::F16 => D::Float16,
        DType::BF16 => D::Bfloat16,
        DType::I64 => D::Int64,
        DType::I32 => D::Int32,
        DType::U8 => D::Uint8,
        DType::Bool => D::Bool,
    }) as i32
}

/// The [`DType`] of an ONNX element type number (the types the builder emits).
fn dtype_from_onnx(e: i32) -> Result<DType> {
    DType::ALL
        .into_iter()
        .find(|&d| onnx_dtype(d) == e)
        .ok_or_else(|| Error::Graph(format!("ONNX element type {e} has no tensor type here")))
}

/// The ONNX element type number of a [`DType`].
pub fn dtype_to_onnx(dt: DType) -> i32 {
    onnx_dtype(dt)
}

fn value_info(name: &str, dtype: DType, shape: &[usize]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension, Dimension};
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: onnx_dtype(dtype),
                shape: Some(pb::TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|&d| Dimension {
                            denotation: String::new(),
                            value: Some(dimension::Value::DimValue(d as i64)),
                        })
                        .collect(),
                }),
            })),
        }),
        doc_string: String::new(),
    }
}

/// An ONNX attribute value.
#[derive(Clone, Debug)]
pub enum Attr {
    /// int
    Int(i64),
    /// float
    Float(f32),
    /// ints
    Ints(Vec<i64>),
    /// string
    Str(String),
}

fn attribute(name: &str, a: &Attr) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType as A;
    let mut p = pb::AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match a {
        Attr::Int(i) => {
            p.r#type = A::Int as i32;
            p.i = *i;
        }
        Attr::Float(f) => {
            p.r#type = A::Float as i32;
            p.f = *f;
        }
        Attr::Ints(v) => {
            p.r#type = A::Ints as i32;
            p.ints = v.clone();
        }
        Attr::Str(s) => {
            p.r#type = A::String as i32;
            p.s = s.as_bytes().to_vec();
        }
    }
    p
}

/// The graph under construction.
pub struct Graph {
    name: String,
    /// Emission options.
    pub opts: GraphOptions,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
    tap_outputs: Vec<pb::ValueInfoProto>,
    input_specs: Vec<TensorSpec>,
    output_specs: Vec<TensorSpec>,
    tap_specs: Vec<TensorSpec>,
    weight_cache: HashMap<String, Value>,
    const_cache: HashMap<(Vec<usize>, Vec<u8>, u8), Value>,
    /// The values of the i64 initializers (shape operands), which shape inference reads.
    i64_consts: HashMap<String, Vec<i64>>,
    used_names: HashMap<String, usize>,
    scope: Vec<String>,
    uses_custom: bool,
    /// Type and shape of every node output, written into the model's `value_info`: runtimes cannot
    /// infer the shapes past our custom ops, and without them ONNX Runtime skips shape-dependent
    /// fusions downstream (a 3-D MatMul + bias Add stays two kernels instead of one Gemm).
    value_infos: Vec<pb::ValueInfoProto>,
}

impl Graph {
    /// A new, empty graph.
    pub fn new(name: &str, opts: GraphOptions) -> Self {
        Graph {
            name: name.to_string(),
            opts,
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            tap_outputs: Vec::new(),
            input_specs: Vec::new(),
            output_specs: Vec::new(),
            tap_specs: Vec::new(),
            weight_cache: HashMap::new(),
            const_cache: HashMap::new(),
            i64_consts: HashMap::new(),
            used_names: HashMap::new(),
            scope: Vec::new(),
            uses_custom: false,
            value_infos: Vec::new(),
        }
    }

    /// Runs `f` with `name` pushed on the naming scope (node names read `scope/op_n`).
    pub fn scoped<T>(&mut self, name: &str, f: impl FnOnce(&mut Graph) -> Result<T>) -> Result<T> {
        self.scope.push(name.to_string());
        let r = f(self);
        self.scope.pop();
        r
    }

    fn fresh(&mut self, hint: &str) -> String {
        let base = if self.scope.is_empty() {
            hint.to_string()
        } else {
            format!("{}/{}", self.scope.join("/"), hint)
        };
        let n = self.used_names.entry(base.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            base
        } else {
            format!("{base}_{}", *n - 1)
        }
    }

    /// Graph name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of nodes so far.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, dtype: DType, shape: &[usize]) -> Value {
        self.inputs.push(value_info(name, dtype, shape));
        self.input_specs.push(TensorSpec {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
        });
        self.used_names.insert(name.to_string(), 1);
        Value {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// Declares `v` as a graph output called `name` (a contract output: these come before any tap).
    pub fn output(&mut self, name: &str, v: &Value) -> Result<()> {
        self.add_output(name, v, false)
    }

    fn add_output(&mut self, name: &str, v: &Value, tap: bool) -> Result<()> {
        if self
            .output_specs
            .iter()
            .chain(&self.tap_specs)
            .any(|s| s.name == name)
        {
            return Err(Error::Graph(format!("duplicate output name `{name}`")));
        }
        let is_input = self.input_specs.iter().any(|s| *s.name == *v.name);
        if *v.name != *name || is_input {
            self.nodes.push(pb::NodeProto {
                input: vec![v.name.to_string()],
                output: vec![name.to_string()],
                name: format!("output/{name}"),
                op_type: "Identity".into(),
                ..Default::default()
            });
        }
        let spec = TensorSpec {
            name: name.to_string(),
            dtype: v.dtype,
            shape: v.shape.clone(),
        };
        if tap {
            self.tap_outputs.push(value_info(name, v.dtype, &v.shape));
            self.tap_specs.push(spec);
        } else {
            self.outputs.push(value_info(name, v.dtype, &v.shape));
            self.output_specs.push(spec);
        }
        Ok(())
    }

    /// Exposes `v` as an extra output named `key` when taps are enabled (parity runs); otherwise nothing.
    /// Taps always follow the contract outputs in the finished model.
    pub fn tap(&mut self, key: &str, v: &Value) -> Result<()> {
        if self.opts.taps {
            self.add_output(key, v, true)?;
        }
        Ok(())
    }

    /// Input specs in declaration order.
    pub fn input_specs(&self) -> &[TensorSpec] {
        &self.input_specs
    }

    /// Output specs: contract outputs, then taps, as in the finished model.
    pub fn output_specs(&self) -> Vec<TensorSpec> {
        self.output_specs
            .iter()
            .chain(&self.tap_specs)
            .cloned()
            .collect()
    }

    /// Number of contract (non-tap) outputs.
    pub fn contract_outputs(&self) -> usize {
        self.output_specs.len()
    }

    /// Adds an initializer holding `t` and returns it as a value.
    pub fn constant(&mut self, hint: &str, t: &Tensor) -> Value {
        let name = self.fresh(hint);
        if let Ok(v) = t.i64s() {
            self.i64_consts.insert(name.clone(), v.to_vec());
        }
        self.initializers.push(pb::TensorProto {
            dims: t.shape().iter().map(|&d| d as i64).collect(),
            data_type: onnx_dtype(t.dtype()),
            name: name.clone(),
            raw_data: t.to_le_bytes(),
            ..Default::default()
        });
        Value {
            name: name.into(),
            shape: t.shape().to_vec(),
            dtype: t.dtype(),
        }
    }

    fn cached_constant(&mut self, hint: &str, t: Tensor) -> Value {
        let key = (t.shape().to_vec(), t.to_le_bytes(), t.dtype() as u8);
        if let Some(v) = self.const_cache.get(&key) {
            return v.clone();
        }
        let v = self.constant(hint, &t);
        self.const_cache.insert(key, v.clone());
        v
    }

    /// An f32 constant (deduplicated).
    pub fn const_f32(&mut self, shape: &[usize], data: Vec<f32>) -> Result<Value> {
        let t = Tensor::from_f32(shape, data)?;
        Ok(self.cached_constant("const", t))
    }

    /// A scalar f32 constant (rank 0).
    pub fn scalar(&mut self, x: f32) -> Value {
        self.cached_constant("scalar", Tensor::from_f32(&[], vec![x]).expect("scalar"))
    }

    /// An i64 constant (deduplicated).
    pub fn const_i64(&mut self, shape: &[usize], data: Vec<i64>) -> Result<Value> {
        let t = Tensor::from_i64(shape, data)?;
        Ok(self.cached_constant("const_i64", t))
    }

    fn shape_const(&mut self, dims: &[i64]) -> Value {
        self.const_i64(&[dims.len()], dims.to_vec())
            .expect("shape constant")
    }

    /// The checkpoint tensor `name` of scope `s`, of `shape`, added once as an initializer named by its
    /// official key. A declaring source adds no data (the graph is then only built for its shapes).
    pub fn weight(&mut self, s: &Scope<'_>, name: &str, shape: &[usize]) -> Result<Value> {
        let key = s.key(name);
        if let Some(v) = self.weight_cache.get(&key) {
            return Ok(v.clone());
        }
        let t = s.get(name, shape)?;
        if !s.declares_only() {
            self.push_initializer(&key, &t);
        }
        let v = Value {
            name: key.as_str().into(),
            shape: shape.to_vec(),
            dtype: DType::F32,
        };
        self.weight_cache.insert(key, v.clone());
        Ok(v)
    }

    /// A weight of `shape` transformed on the host by `f` into a tensor of `out_shape` before it becomes an
    /// initializer (e.g. a transposed Linear weight). `tag` names the transform; a declaring source
    /// skips `f`.
    pub fn derived_weight(
        &mut self,
        s: &Scope<'_>,
        name: &str,
        shape: &[usize],
        tag: &str,
        out_shape: &[usize],
        f: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Value> {
        let cache_key = format!("{}#{tag}", s.key(name));
        if let Some(v) = self.weight_cache.get(&cache_key) {
            return Ok(v.clone());
        }
        let t = s.get(name, shape)?;
        let dtype = if s.declares_only() {
            DType::F32
        } else {
            let d = f(&t)?;
            if d.shape() != out_shape {
                return Err(Error::shape_mismatch(
                    format!("`{cache_key}` (derived weight)"),
                    out_shape,
                    d.shape(),
                ));
            }
            self.push_initializer(&cache_key, &d);
            d.dtype()
        };
        let v = Value {
            name: cache_key.as_str().into(),
            shape: out_shape.to_vec(),
            dtype,
        };
        self.weight_cache.insert(cache_key, v.clone());
        Ok(v)
    }

    fn push_initializer(&mut self, name: &str, t: &Tensor) {
        self.initializers.push(pb::TensorProto {
            dims: t.shape().iter().map(|&d| d as i64).collect(),
            data_type: onnx_dtype(t.dtype()),
            name: name.to_string(),
            raw_data: t.to_le_bytes(),
            ..Default::default()
        });
        self.used_names.insert(name.to_string(), 1);
    }

    /// Appends a node with `outputs` outputs, whose types and shapes come from shape inference
    /// ([`crate::onnx::infer`], the one place that knows each op's output shape); the general escape
    /// hatch used by the op helpers. Fails with the op and its inputs when inference does.
    pub fn node(
        &mut self,
        op: &str,
        domain: &str,
        inputs: &[&Value],
        attrs: &[(&str, Attr)],
        outputs: usize,
    ) -> Result<Vec<Value>> {
        let base = self.fresh(&op.to_lowercase());
        let out_names: Vec<String> = (0..outputs)
            .map(|i| {
                if outputs == 1 {
                    base.clone()
                } else {
                    format!("{base}:{i}")
                }
            })
            .collect();
        let proto = pb::NodeProto {
            input: inputs.iter().map(|v| v.name.to_string()).collect(),
            output: out_names.clone(),
            name: base.clone(),
            op_type: op.to_string(),
            domain: domain.to_string(),
            attribute: attrs.iter().map(|(n, a)| attribute(n, a)).collect(),
            doc_string: String::new(),
        };
        let types: infer::TypeMap = inputs
            .iter()
            .map(|v| {
                let t = infer::TensorType {
                    elem: onnx_dtype(v.dtype),
                    shape: v.shape.clone(),
                };
                (v.name.to_string(), t)
            })
            .collect();
        let consts: HashMap<&str, Vec<i64>> = inputs
            .iter()
            .filter_map(|v| Some((&*v.name, self.i64_consts.get(&*v.name)?.clone())))
            .collect();
        let inferred = infer::node_types(&proto, &types, &consts).map_err(|e| {
            let args: Vec<String> = inputs
                .iter()
                .map(|v| format!("`{}` {:?}", v.name, v.shape))
                .collect();
            Error::Graph(format!("{op} of {}: {e}", args.join(", ")))
        })?;
        if inferred.len() != outputs {
            return Err(Error::Graph(format!(
                "{op}: {outputs} outputs asked for, the op has {}",
                inferred.len()
            )));
        }
        let mut out = Vec::with_capacity(outputs);
        for (n, t) in out_names.into_iter().zip(inferred) {
            let dtype = dtype_from_onnx(t.elem)?;
            self.value_infos.push(value_info(&n, dtype, &t.shape));
            out.push(Value {
                name: n.into(),
                shape: t.shape,
                dtype,
            });
        }
        if domain == CUSTOM_DOMAIN {
            self.uses_custom = true;
        }
        self.nodes.push(proto);
        Ok(out)
    }

    /// [`Graph::node`] with one output.
    fn one(&mut self, op: &str, inputs: &[&Value], attrs: &[(&str, Attr)]) -> Result<Value> {
        let mut o = self.node(op, "", inputs, attrs, 1)?;
        o.pop()
            .ok_or_else(|| Error::Graph(format!("{op}: no output")))
    }

    // ---- element-wise -------------------------------------------------------------------------

    fn binary(&mut self, op: &str, a: &Value, b: &Value) -> Result<Value> {
        if a.dtype != b.dtype {
            return Err(Error::Graph(format!(
                "{op}: dtype mismatch {:?} ({}) vs {:?} ({})",
                a.dtype, a.name, b.dtype, b.name
            )));
        }
        self.one(op, &[a, b], &[])
    }

    /// a + b (broadcasting).
    pub fn add(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Add", a, b)
    }
    /// a − b.
    pub fn sub(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Sub", a, b)
    }
    /// a · b (element-wise).
    pub fn mul(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Mul", a, b)
    }
    /// a / b.
    pub fn div(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Div", a, b)
    }
    /// max(a, b).
    pub fn max2(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Max", a, b)
    }
    /// min(a, b).
    pub fn min2(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Min", a, b)
    }
    /// a == b → bool.
    pub fn equal(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Equal", a, b)
    }
    /// a < b → bool.
    pub fn less(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Less", a, b)
    }
    /// a > b → bool.
    pub fn greater(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Greater", a, b)
    }
    /// Logical and of two bool tensors.
    pub fn and(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("And", a, b)
    }
    /// Logical or of two bool tensors.
    pub fn or(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Or", a, b)
    }
    /// x + c for an f32 scalar c.
    pub fn add_scalar(&mut self, x: &Value, c: f32) -> Result<Value> {
        let s = self.scalar(c);
        self.add(x, &s)
    }
    /// x · c for an f32 scalar c.
    pub fn mul_scalar(&mut self, x: &Value, c: f32) -> Result<Value> {
        let s = self.scalar(c);
        self.mul(x, &s)
    }

    fn unary(&mut self, op: &str, x: &Value) -> Result<Value> {
        self.one(op, &[x], &[])
    }
    /// ReLU.
    pub fn relu(&mut self, x: &Value) -> Result<Value> {
        self.unary("Relu", x)
    }
    /// Logistic sigmoid.
    pub fn sigmoid(&mut self, x: &Value) -> Result<Value> {
        self.unary("Sigmoid", x)
    }
    /// exp.
    pub fn exp(&mut self, x: &Value) -> Result<Value> {
        self.unary("Exp", x)
    }
    /// Natural log.
    pub fn log(&mut self, x: &Value) -> Result<Value> {
        self.unary("Log", x)
    }
    /// Square root.
    pub fn sqrt(&mut self, x: &Value) -> Result<Value> {
        self.unary("Sqrt", x)
    }
    /// sin.
    pub fn sin(&mut self, x: &Value) -> Result<Value> {
        self.unary("Sin", x)
    }
    /// cos.
    pub fn cos(&mut self, x: &Value) -> Result<Value> {
        self.unary("Cos", x)
    }
    /// −x.
    pub fn neg(&mut self, x: &Value) -> Result<Value> {
        self.unary("Neg", x)
    }
    /// erf.
    pub fn erf(&mut self, x: &Value) -> Result<Value> {
        self.unary("Erf", x)
    }
    /// Logical not.
    pub fn not(&mut self, x: &Value) -> Result<Value> {
        self.unary("Not", x)
    }
    /// Exact (erf) GELU: x · ½ · (1 + erf(x/√2)), written with opset-17 ops. The division (not a
    /// multiplication by 1/√2) is the form ONNX Runtime's and TensorRT's GELU fusions recognise: one
    /// kernel instead of five passes over the tensor.
    pub fn gelu(&mut self, x: &Value) -> Result<Value> {
        let r2 = self.scalar(std::f32::consts::SQRT_2);
        let s = self.div(x, &r2)?;
        let e = self.erf(&s)?;
        let e1 = self.add_scalar(&e, 1.0)?;
        let h = self.mul_scalar(x, 0.5)?;
        self.mul(&h, &e1)
    }
    /// Clamp to [lo, hi].
    pub fn clip(&mut self, x: &Value, lo: f32, hi: f32) -> Result<Value> {
        let lo = self.scalar(lo);
        let hi = self.scalar(hi);
        self.one("Clip", &[x, &lo, &hi], &[])
    }
    /// Element type conversion.
    pub fn cast(&mut self, x: &Value, to: DType) -> Result<Value> {
        if x.dtype == to {
            return Ok(x.clone());
        }
        self.one("Cast", &[x], &[("to", Attr::Int(onnx_dtype(to) as i64))])
    }
    /// cond ? a : b.
    pub fn where_(&mut self, cond: &Value, a: &Value, b: &Value) -> Result<Value> {
        if a.dtype != b.dtype || cond.dtype != DType::Bool {
            return Err(Error::Graph("Where: bad dtypes".into()));
        }
        self.one("Where", &[cond, a, b], &[])
    }

    // ---- linear algebra ----------------------------------------------------------------------

    /// Batched matrix product with numpy broadcasting of the leading axes.
    pub fn matmul(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.one("MatMul", &[a, b], &[])
    }

    /// `nn.Linear` of scope `s` (`weight [out, in]`, transposed once on the host; `bias [out]`).
    pub fn linear(&mut self, s: &Scope<'_>, x: &Value, out: usize, bias: Bias) -> Result<Value> {
        let inp = x.dim(-1);
        let wt = self.derived_weight(s, "weight", &[out, inp], "T", &[inp, out], transpose2d)?;
        let y = self.matmul(x, &wt)?;
        match bias {
            Bias::With => {
                let b = self.weight(s, "bias", &[out])?;
                self.add(&y, &b)
            }
            Bias::Without => Ok(y),
        }
    }

    /// `nn.LayerNorm` over the last axis with `weight`/`bias` of scope `s`.
    pub fn layer_norm(&mut self, s: &Scope<'_>, x: &Value, eps: f32) -> Result<Value> {
        let d = x.dim(-1);
        let sc = self.weight(s, "weight", &[d])?;
        let b = self.weight(s, "bias", &[d])?;
        self.one(
            "LayerNormalization",
            &[x, &sc, &b],
            &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
        )
    }

    /// GroupNorm on `[N, C, ...]` with `groups` groups and the per-channel affine `weight`/`bias [C]` of
    /// scope `s`, written as reshape → mean/variance → normalise → affine (opset 17 has no
    /// GroupNormalization).
    pub fn group_norm(
        &mut self,
        s: &Scope<'_>,
        x: &Value,
        groups: usize,
        eps: f32,
    ) -> Result<Value> {
        let n = x.dim(0);
        let c = x.dim(1);
        if !c.is_multiple_of(groups) {
            return Err(Error::Graph(format!(
                "GroupNorm `{}`: {c} channels, {groups} groups",
                s.prefix()
            )));
        }
        let xr = self.reshape(x, &[n, groups, x.numel() / n / groups])?;
        let mean = self.reduce_mean(&xr, &[2], true)?;
        let d = self.sub(&xr, &mean)?;
        let d2 = self.mul(&d, &d)?;
        let var = self.reduce_mean(&d2, &[2], true)?;
        let ve = self.add_scalar(&var, eps)?;
        let sd = self.sqrt(&ve)?;
        let xn = self.div(&d, &sd)?;
        let xn = self.reshape(&xn, &x.shape)?;
        let mut aff = vec![1usize; x.rank()];
        aff[1] = c;
        let sw = self.weight(s, "weight", &[c])?;
        let sb = self.weight(s, "bias", &[c])?;
        let sw = self.reshape(&sw, &aff)?;
        let sb = self.reshape(&sb, &aff)?;
        let y = self.mul(&xn, &sw)?;
        self.add(&y, &sb)
    }

    /// Softmax along `axis`.
    pub fn softmax(&mut self, x: &Value, axis: i64) -> Result<Value> {
        self.one("Softmax", &[x], &[("axis", Attr::Int(axis))])
    }

    /// 2-D convolution (NCHW) of scope `s`: `weight [out, C_in, kernel, kernel]` and, with
    /// [`Bias::With`], `bias [out]`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        &mut self,
        s: &Scope<'_>,
        x: &Value,
        out: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        bias: Bias,
    ) -> Result<Value> {
        let k = self.weight(s, "weight", &[out, x.dim(1), kernel, kernel])?;
        let attrs = [
            ("kernel_shape", Attr::Ints(vec![kernel as i64; 2])),
            ("strides", Attr::Ints(vec![stride as i64; 2])),
            ("pads", Attr::Ints(vec![pad as i64; 4])),
        ];
        match bias {
            Bias::With => {
                let b = self.weight(s, "bias", &[out])?;
                self.one("Conv", &[x, &k, &b], &attrs)
            }
            Bias::Without => self.one("Conv", &[x, &k], &attrs),
        }
    }

    // ---- shape ops -------------------------------------------------------------------------------

    /// Reshape to a static shape of the same element count.
    pub fn reshape(&mut self, x: &Value, shape: &[usize]) -> Result<Value> {
        let n: usize = shape.iter().product();
        if n != x.numel() {
            return Err(Error::Graph(format!(
                "reshape `{}` {:?} → {shape:?}: element counts differ",
                x.name, x.shape
            )));
        }
        if shape == x.shape.as_slice() {
            return Ok(x.clone());
        }
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let s = self.shape_const(&dims);
        self.one("Reshape", &[x, &s], &[])
    }

    /// Permutes axes.
    pub fn transpose(&mut self, x: &Value, perm: &[usize]) -> Result<Value> {
        if perm.len() != x.rank() {
            return Err(Error::Graph(format!(
                "transpose perm {perm:?} for rank {}",
                x.rank()
            )));
        }
        let mut seen = vec![false; perm.len()];
        for &p in perm {
            if p >= perm.len() || std::mem::replace(&mut seen[p], true) {
                return Err(Error::Graph(format!(
                    "transpose perm {perm:?} is not a permutation"
                )));
            }
        }
        self.one(
            "Transpose",
            &[x],
            &[("perm", Attr::Ints(perm.iter().map(|&p| p as i64).collect()))],
        )
    }

    /// Concatenates along `axis`.
    pub fn concat(&mut self, xs: &[&Value], axis: i64) -> Result<Value> {
        let first = xs
            .first()
            .ok_or_else(|| Error::Graph("concat of nothing".into()))?;
        let ax = norm_axis(axis, first.rank());
        for x in xs {
            if x.rank() != first.rank() || x.dtype != first.dtype {
                return Err(Error::Graph("concat: rank/dtype mismatch".into()));
            }
            for (i, (&a, &b)) in x.shape.iter().zip(&first.shape).enumerate() {
                if i != ax && a != b {
                    return Err(Error::Graph(format!(
                        "concat on axis {ax}: {:?} vs {:?}",
                        x.shape, first.shape
                    )));
                }
            }
        }
        self.one("Concat", xs, &[("axis", Attr::Int(ax as i64))])
    }

    /// `x[.., start:end, ..]` on one axis (step 1).
    pub fn slice(&mut self, x: &Value, axis: i64, start: usize, end: usize) -> Result<Value> {
        let ax = norm_axis(axis, x.rank());
        if start > end || end > x.shape[ax] {
            return Err(Error::Graph(format!(
                "slice {start}..{end} of axis {ax} (size {})",
                x.shape[ax]
            )));
        }
        if start == 0 && end == x.shape[ax] {
            return Ok(x.clone());
        }
        let st = self.shape_const(&[start as i64]);
        let en = self.shape_const(&[end as i64]);
        let ax_v = self.shape_const(&[ax as i64]);
        self.one("Slice", &[x, &st, &en, &ax_v], &[])
    }

    /// Inserts size-1 axes.
    pub fn unsqueeze(&mut self, x: &Value, axes: &[i64]) -> Result<Value> {
        let rank = x.rank() + axes.len();
        let mut ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, rank)).collect();
        ax.sort();
        let mut shape = Vec::with_capacity(rank);
        let mut it = x.shape.iter();
        for i in 0..rank {
            if ax.contains(&i) {
                shape.push(1);
            } else {
                shape.push(
                    *it.next()
                        .ok_or_else(|| Error::Graph("unsqueeze axes".into()))?,
                );
            }
        }
        self.reshape(x, &shape)
    }

    /// Gathers rows of `x` along `axis` with i64 `indices` (ONNX Gather).
    pub fn gather(&mut self, x: &Value, indices: &Value, axis: i64) -> Result<Value> {
        let ax = norm_axis(axis, x.rank());
        self.one("Gather", &[x, indices], &[("axis", Attr::Int(ax as i64))])
    }

    /// Gathers rows `idx [B, K]` of `x [B, N, C]` → `[B, K, C]`, per batch item (GatherElements over
    /// the indices broadcast along `C`).
    pub fn gather_rows(&mut self, x: &Value, idx: &Value) -> Result<Value> {
        let (b, k, c) = (idx.dim(0), idx.dim(1), x.dim(2));
        let i = self.unsqueeze(idx, &[-1])?;
        let i = self.expand(&i, &[b, k, c])?;
        self.gather_elements(x, &i, 1)
    }

    /// ONNX GatherElements (indices of the output's shape).
    pub fn gather_elements(&mut self, x: &Value, indices: &Value, axis: i64) -> Result<Value> {
        let ax = norm_axis(axis, x.rank());
        self.one(
            "GatherElements",
            &[x, indices],
            &[("axis", Attr::Int(ax as i64))],
        )
    }

    /// Broadcasts to `shape`.
    pub fn expand(&mut self, x: &Value, shape: &[usize]) -> Result<Value> {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let sc = self.shape_const(&dims);
        let y = self.one("Expand", &[x, &sc], &[])?;
        // Expand broadcasts both ways; here the target must be the result.
        if y.shape != shape {
            return Err(Error::Graph(format!("expand {:?} to {shape:?}", x.shape)));
        }
        Ok(y)
    }

    fn reduce(&mut self, op: &str, x: &Value, axes: &[i64], keepdims: bool) -> Result<Value> {
        let ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, x.rank())).collect();
        let attrs = [
            ("axes", Attr::Ints(ax.iter().map(|&a| a as i64).collect())),
            ("keepdims", Attr::Int(keepdims as i64)),
        ];
        if op == "ReduceSum" {
            // Opset 13+: ReduceSum takes axes as an input.
            let a = self.shape_const(&ax.iter().map(|&a| a as i64).collect::<Vec<_>>());
            return self.one(op, &[x, &a], &attrs[1..]);
        }
        self.one(op, &[x], &attrs)
    }
    /// Max over axes.
    pub fn reduce_max(&mut self, x: &Value, axes: &[i64], keepdims: bool) -> Result<Value> {
        self.reduce("ReduceMax", x, axes, keepdims)
    }
    /// Mean over axes.
    pub fn reduce_mean(&mut self, x: &Value, axes: &[i64], keepdims: bool) -> Result<Value> {
        self.reduce("ReduceMean", x, axes, keepdims)
    }
    /// Sum over axes.
    pub fn reduce_sum(&mut self, x: &Value, axes: &[i64], keepdims: bool) -> Result<Value> {
        self.reduce("ReduceSum", x, axes, keepdims)
    }

    /// Largest `k` along `axis`, sorted descending: (values, i64 indices).
    pub fn topk(&mut self, x: &Value, k: usize, axis: i64) -> Result<(Value, Value)> {
        let ax = norm_axis(axis, x.rank());
        if k > x.shape[ax] {
            return Err(Error::Graph(format!(
                "TopK k={k} > axis size {}",
                x.shape[ax]
            )));
        }
        let kv = self.shape_const(&[k as i64]);
        let mut o = self.node(
            "TopK",
            "",
            &[x, &kv],
            &[
                ("axis", Attr::Int(ax as i64)),
                ("largest", Attr::Int(1)),
                ("sorted", Attr::Int(1)),
            ],
            2,
        )?;
        match (o.pop(), o.pop()) {
            (Some(i), Some(v)) => Ok((v, i)),
            _ => Err(Error::Graph("TopK: two outputs expected".into())),
        }
    }

    /// Resize NCHW to (h, w) with `mode`.
    pub fn resize(&mut self, x: &Value, h: usize, w: usize, mode: Interp) -> Result<Value> {
        if x.rank() != 4 {
            return Err(Error::Graph("resize needs NCHW".into()));
        }
        let empty = self.const_f32(&[0], vec![])?;
        let sizes = self.shape_const(&[x.dim(0) as i64, x.dim(1) as i64, h as i64, w as i64]);
        let attrs: Vec<(&str, Attr)> = if mode == Interp::Bilinear {
            vec![
                ("mode", Attr::Str("linear".into())),
                (
                    "coordinate_transformation_mode",
                    Attr::Str("half_pixel".into()),
                ),
            ]
        } else {
            vec![
                ("mode", Attr::Str("nearest".into())),
                (
                    "coordinate_transformation_mode",
                    Attr::Str("asymmetric".into()),
                ),
                ("nearest_mode", Attr::Str("floor".into())),
            ]
        };
        self.one("Resize", &[x, &empty, &empty, &sizes], &attrs)
    }

    /// Zero-pads the last two axes of NCHW: (top, bottom, left, right).
    pub fn pad_hw(
        &mut self,
        x: &Value,
        top: usize,
        bottom: usize,
        left: usize,
        right: usize,
    ) -> Result<Value> {
        if top + bottom + left + right == 0 {
            return Ok(x.clone());
        }
        let r = x.rank();
        let mut pads = vec![0i64; 2 * r];
        pads[r - 2] = top as i64;
        pads[r - 1] = left as i64;
        pads[2 * r - 2] = bottom as i64;
        pads[2 * r - 1] = right as i64;
        let p = self.shape_const(&pads);
        self.one("Pad", &[x, &p], &[("mode", Attr::Str("constant".into()))])
    }

    // ---- serialisation ---------------------------------------------------------------------------

    /// Finishes the graph as an ONNX model.
    pub fn into_model(self) -> pb::ModelProto {
        let mut opset = vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }];
        if self.uses_custom {
            opset.push(pb::OperatorSetIdProto {
                domain: CUSTOM_DOMAIN.into(),
                version: 1,
            });
        }
        let output: Vec<pb::ValueInfoProto> =
            self.outputs.into_iter().chain(self.tap_outputs).collect();
        // Intermediates only: graph outputs are declared in `output`.
        let declared: std::collections::HashSet<&str> =
            output.iter().map(|v| v.name.as_str()).collect();
        let value_info = self
            .value_infos
            .into_iter()
            .filter(|v| !declared.contains(v.name.as_str()))
            .collect();
        pb::ModelProto {
            ir_version: 8,
            opset_import: opset,
            producer_name: "referdino".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(pb::GraphProto {
                node: self.nodes,
                name: self.name,
                initializer: self.initializers,
                input: self.inputs,
                output,
                value_info,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Serialises the model to ONNX protobuf bytes.
    pub fn to_bytes(self) -> Vec<u8> {
        use prost::Message;
        self.into_model().encode_to_vec()
    }
}

/// Transposes a 2-D f32 tensor (host side, for Linear weights).
pub fn transpose2d(t: &Tensor) -> Result<Tensor> {
    let s = t.shape();
    if s.len() != 2 {
        return Err(Error::Shape(format!("expected a 2-D weight, found {s:?}")));
    }
    let (r, c) = (s[0], s[1]);
    let v = t.f32s()?;
    let mut o = vec![0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            o[j * r + i] = v[i * c + j];
        }
    }
    Tensor::from_f32(&[c, r], o)
}

// ---- custom ops ------------------------------------------------------------------------------------

impl Graph {
    /// Multi-scale deformable attention core (docs/model.md: Multi-scale deformable attention; contract in plugins/MSDeformAttn/README.md).
    ///
    /// `value [B,S,H,Dh]`, `sampling_locations [B,Q,H,L,P,2]` (x, y in `[0, 1]`), `attention_weights
    /// [B,Q,H,L,P]` (softmaxed) → `[B,Q,H·Dh]`. `shapes` are the static (h, w) of the levels. Emitted as the
    /// custom op `referdino::MSDeformAttn`, or as one GridSample per level when decomposing.
    pub fn ms_deform_attn(
        &mut self,
        value: &Value,
        shapes: &[(usize, usize)],
        sampling_locations: &Value,
        attention_weights: &Value,
    ) -> Result<Value> {
        let (b, s, h, dh) = match value.shape[..] {
            [b, s, h, dh] => (b, s, h, dh),
            _ => {
                return Err(Error::Graph(format!(
                    "MSDeformAttn value {:?}",
                    value.shape
                )))
            }
        };
        let total: usize = shapes.iter().map(|(a, c)| a * c).sum();
        let (q, l, p) = match sampling_locations.shape[..] {
            [b2, q, h2, l, p, 2] if b2 == b && h2 == h => (q, l, p),
            _ => {
                return Err(Error::Graph(format!(
                    "MSDeformAttn sampling_locations {:?} for value {:?}",
                    sampling_locations.shape, value.shape
                )))
            }
        };
        if total != s || l != shapes.len() || attention_weights.shape != [b, q, h, l, p] {
            return Err(Error::Graph(format!(
                "MSDeformAttn: levels {shapes:?} (sum {total}) vs S={s}, weights {:?}",
                attention_weights.shape
            )));
        }
        if !self.opts.decompose_custom_ops {
            let ss: Vec<i64> = shapes
                .iter()
                .flat_map(|&(a, c)| [a as i64, c as i64])
                .collect();
            let mut start = Vec::with_capacity(l);
            let mut acc = 0i64;
            for &(a, c) in shapes {
                start.push(acc);
                acc += (a * c) as i64;
            }
            let ss = self.const_i64(&[l, 2], ss)?;
            let st = self.const_i64(&[l], start)?;
            let mut out = self.node(
                "MSDeformAttn",
                CUSTOM_DOMAIN,
                &[value, &ss, &st, sampling_locations, attention_weights],
                &[],
                1,
            )?;
            return out
                .pop()
                .ok_or_else(|| Error::Graph("MSDeformAttn: no output".into()));
        }
        // Decomposed: per level, value → [B·H, Dh, h, w] image, grid = 2·loc − 1 → [B·H, Q, P, 2].
        let loc = self.transpose(sampling_locations, &[0, 2, 1, 3, 4, 5])?; // [B,H,Q,L,P,2]
        let loc = self.mul_scalar(&loc, 2.0)?;
        let loc = self.add_scalar(&loc, -1.0)?;
        let mut sampled = Vec::with_capacity(l);
        let mut start = 0;
        for (li, &(lh, lw)) in shapes.iter().enumerate() {
            let v = self.slice(value, 1, start, start + lh * lw)?;
            start += lh * lw;
            let v = self.transpose(&v, &[0, 2, 3, 1])?; // [B,H,Dh,hw]
            let v = self.reshape(&v, &[b * h, dh, lh, lw])?;
            let g = self.slice(&loc, 3, li, li + 1)?; // [B,H,Q,1,P,2]
            let g = self.reshape(&g, &[b * h, q, p, 2])?;
            let o = self.one(
                "GridSample",
                &[&v, &g],
                &[
                    ("mode", Attr::Str("bilinear".into())),
                    ("padding_mode", Attr::Str("zeros".into())),
                    ("align_corners", Attr::Int(0)),
                ],
            )?;
            sampled.push(o);
        }
        let refs: Vec<&Value> = sampled.iter().collect();
        let cat = self.concat(&refs, 3)?; // [B·H, Dh, Q, L·P]
        let w = self.transpose(attention_weights, &[0, 2, 1, 3, 4])?; // [B,H,Q,L,P]
        let w = self.reshape(&w, &[b * h, 1, q, l * p])?;
        let prod = self.mul(&cat, &w)?;
        let summed = self.reduce_sum(&prod, &[3], false)?; // [B·H, Dh, Q]
        let r = self.reshape(&summed, &[b, h * dh, q])?;
        self.transpose(&r, &[0, 2, 1])
    }

    /// Confidence-aware query pruning gate and selection (docs/model.md: Decoder with confidence-aware pruning).
    ///
    /// `class_logits [B,N,Lt]` (−inf on padded tokens), `self_attn [B,N,N]` (head-averaged, rows = targets)
    /// → (`keep_idx [B,K]` i64 sorted by descending gate, `gate [B,N]`). Emitted as the custom op
    /// `referdino::QueryPrune`, or as ReduceMax/ReduceSum/Softmax/TopK when decomposing.
    pub fn query_prune(
        &mut self,
        class_logits: &Value,
        self_attn: &Value,
        keep: usize,
    ) -> Result<(Value, Value)> {
        let (b, n) = (class_logits.dim(0), class_logits.dim(1));
        if self_attn.shape != [b, n, n] || keep == 0 || keep > n {
            return Err(Error::Graph(format!(
                "QueryPrune: logits {:?}, attn {:?}, keep {keep}",
                class_logits.shape, self_attn.shape
            )));
        }
        if !self.opts.decompose_custom_ops {
            let mut o = self.node(
                "QueryPrune",
                CUSTOM_DOMAIN,
                &[class_logits, self_attn],
                &[("keep", Attr::Int(keep as i64))],
                2,
            )?;
            return match (o.pop(), o.pop()) {
                (Some(gate), Some(idx)) => Ok((idx, gate)),
                _ => Err(Error::Graph("QueryPrune: two outputs expected".into())),
            };
        }
        let txt = self.reduce_max(class_logits, &[2], false)?; // [B,N]
        let txt = self.softmax(&txt, -1)?;
        let mut off = vec![1f32; n * n];
        for i in 0..n {
            off[i * n + i] = 0.0;
        }
        let off = self.const_f32(&[1, n, n], off)?;
        let a = self.mul(self_attn, &off)?;
        let recv = self.reduce_sum(&a, &[1], false)?; // Σ_i attn[i, j]
        let recv = self.softmax(&recv, -1)?;
        let g = self.add(&txt, &recv)?;
        let gate = self.mul_scalar(&g, 0.5)?;
        let (_, idx) = self.topk(&gate, keep, -1)?;
        Ok((idx, gate))
    }
}
