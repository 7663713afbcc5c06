//! Static element-type and shape inference over a finished ONNX model.
//!
//! The one place that knows each op's output type and shape: the builder asks it for every node it
//! emits ([`super::builder::Graph::node`]), and the graph passes ([`super::cost`],
//! [`super::precision`]) run it over finished or loaded models, whose files declare only their inputs
//! and outputs. It covers the ops our builder emits, plus `Cast` and the Q/DQ pair the INT8 pass
//! inserts. Shape arguments that ONNX passes as tensors (Reshape shape, Slice bounds, TopK k, ...) must
//! be initializers, which is what the builder always emits.

use crate::error::{Error, Result};
use std::collections::HashMap;
use tract_onnx::pb;

/// ONNX element type numbers used by the passes.
pub mod elem {
    /// float32
    pub const F32: i32 = 1;
    /// uint8
    pub const U8: i32 = 2;
    /// int8
    pub const I8: i32 = 3;
    /// int32
    pub const I32: i32 = 6;
    /// int64
    pub const I64: i32 = 7;
    /// bool
    pub const BOOL: i32 = 9;
    /// float16
    pub const F16: i32 = 10;
    /// bfloat16
    pub const BF16: i32 = 16;

    /// Whether `t` is a floating-point element type.
    pub fn is_float(t: i32) -> bool {
        matches!(t, F32 | F16 | BF16 | 11)
    }

    /// Bytes per element (0 for unknown types).
    pub fn size(t: i32) -> usize {
        match t {
            F32 | I32 => 4,
            F16 | BF16 => 2,
            I64 | 11 => 8,
            U8 | I8 | BOOL => 1,
            _ => 0,
        }
    }
}

/// Element type and static shape of one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorType {
    /// ONNX element type number (see [`elem`]).
    pub elem: i32,
    /// Static shape.
    pub shape: Vec<usize>,
}

impl TensorType {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Types of every tensor of a model, keyed by tensor name.
pub type TypeMap = HashMap<String, TensorType>;

/// Reads an attribute of a node.
pub fn attr<'a>(n: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

/// An integer attribute, or `default`.
pub fn attr_i(n: &pb::NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map(|a| a.i).unwrap_or(default)
}

/// An integer-list attribute (empty when absent).
pub fn attr_ints(n: &pb::NodeProto, name: &str) -> Vec<i64> {
    attr(n, name).map(|a| a.ints.clone()).unwrap_or_default()
}

/// The int64 values of an initializer (raw or typed storage).
pub fn init_i64(t: &pb::TensorProto) -> Option<Vec<i64>> {
    if t.data_type != elem::I64 {
        return None;
    }
    if !t.raw_data.is_empty() {
        Some(
            t.raw_data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        )
    } else {
        Some(t.int64_data.clone())
    }
}

/// The f32 values of a float32 initializer (raw or typed storage).
pub fn init_f32(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != elem::F32 {
        return None;
    }
    if !t.raw_data.is_empty() {
        Some(
            t.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        )
    } else {
        Some(t.float_data.clone())
    }
}

/// The bytes of an int8 / uint8 initializer (raw or `int32_data` storage).
pub fn init_bytes(t: &pb::TensorProto) -> Option<Vec<u8>> {
    if t.data_type != elem::I8 && t.data_type != elem::U8 {
        return None;
    }
    if !t.raw_data.is_empty() {
        Some(t.raw_data.clone())
    } else {
        Some(t.int32_data.iter().map(|&v| v as u8).collect())
    }
}

/// Number of elements an initializer holds according to its dims.
pub fn init_numel(t: &pb::TensorProto) -> usize {
    t.dims.iter().map(|&d| d.max(0) as usize).product()
}

fn value_info_type(v: &pb::ValueInfoProto) -> Option<TensorType> {
    use pb::tensor_shape_proto::dimension::Value as D;
    let pb::type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
    let shape = t
        .shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match d.value {
            Some(D::DimValue(x)) if x >= 0 => Some(x as usize),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(TensorType {
        elem: t.elem_type,
        shape,
    })
}

/// Builds a `ValueInfoProto` with a static shape.
pub fn value_info(name: &str, t: &TensorType) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension, Dimension};
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: t.elem,
                shape: Some(pb::TensorShapeProto {
                    dim: t
                        .shape
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

fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let db = if i + b.len() >= r {
                b[i + b.len() - r]
            } else {
                1
            };
            if da == db || db == 1 {
                Some(da)
            } else if da == 1 {
                Some(db)
            } else {
                None
            }
        })
        .collect()
}

/// Axis `a` (negative counts from the end) of a rank-`rank` tensor, or an error when out of range.
fn axis(a: i64, rank: usize) -> std::result::Result<usize, String> {
    let ax = norm(a, rank);
    if ax < rank {
        Ok(ax)
    } else {
        Err(format!("axis {a} out of range for rank {rank}"))
    }
}

fn norm(a: i64, rank: usize) -> usize {
    if a < 0 {
        (rank as i64 + a).max(0) as usize
    } else {
        a as usize
    }
}

/// Infers the type of every tensor of `model` (inputs, initializers and node outputs).
///
/// Fails with the node's name on an op it does not know, a missing input, or inconsistent shapes.
pub fn infer_types(model: &pb::ModelProto) -> Result<TypeMap> {
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Graph("model has no graph".into()))?;
    let mut types = TypeMap::new();
    let mut consts: HashMap<&str, Vec<i64>> = HashMap::new();
    for t in &g.initializer {
        types.insert(
            t.name.clone(),
            TensorType {
                elem: t.data_type,
                shape: t.dims.iter().map(|&d| d as usize).collect(),
            },
        );
        if let Some(v) = init_i64(t) {
            consts.insert(t.name.as_str(), v);
        }
    }
    for i in &g.input {
        let t = value_info_type(i).ok_or_else(|| {
            Error::Graph(format!(
                "graph input `{}` has no static tensor type",
                i.name
            ))
        })?;
        types.insert(i.name.clone(), t);
    }
    for n in &g.node {
        let outs = node_types(n, &types, &consts).map_err(|e| {
            Error::Graph(format!(
                "type inference at node `{}` ({}): {e}",
                n.name, n.op_type
            ))
        })?;
        for (name, t) in n.output.iter().zip(outs) {
            if !name.is_empty() {
                types.insert(name.clone(), t);
            }
        }
    }
    Ok(types)
}

pub(crate) fn node_types(
    n: &pb::NodeProto,
    types: &TypeMap,
    consts: &HashMap<&str, Vec<i64>>,
) -> std::result::Result<Vec<TensorType>, String> {
    let inp = |i: usize| -> std::result::Result<&TensorType, String> {
        let name = n
            .input
            .get(i)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("input {i} missing"))?;
        types
            .get(name)
            .ok_or_else(|| format!("input `{name}` is not defined before use"))
    };
    let cst = |i: usize| -> std::result::Result<&Vec<i64>, String> {
        let name = n.input.get(i).ok_or_else(|| format!("input {i} missing"))?;
        consts
            .get(name.as_str())
            .ok_or_else(|| format!("input `{name}` must be an int64 initializer"))
    };
    let same = |t: &TensorType, shape: Vec<usize>| TensorType {
        elem: t.elem,
        shape,
    };
    let x = inp(0)?;
    let one = |t: TensorType| Ok(vec![t]);
    match n.op_type.as_str() {
        "Add" | "Sub" | "Mul" | "Div" | "Max" | "Min" | "Pow" | "And" | "Or" | "Equal" | "Less"
        | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Mod" => {
            let b = inp(1)?;
            let s = broadcast(&x.shape, &b.shape)
                .ok_or_else(|| format!("cannot broadcast {:?} with {:?}", x.shape, b.shape))?;
            let e = if matches!(
                n.op_type.as_str(),
                "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual"
            ) {
                elem::BOOL
            } else {
                x.elem
            };
            one(TensorType { elem: e, shape: s })
        }
        "Where" => {
            let (a, b) = (inp(1)?, inp(2)?);
            let s = broadcast(&x.shape, &a.shape)
                .and_then(|s| broadcast(&s, &b.shape))
                .ok_or_else(|| "Where: shapes do not broadcast".to_string())?;
            one(same(a, s))
        }
        "Relu" | "Sigmoid" | "Exp" | "Log" | "Sqrt" | "Sin" | "Cos" | "Neg" | "Erf" | "Not"
        | "Tanh" | "Abs" | "Reciprocal" | "Floor" | "Ceil" | "Round" | "Sign" | "Identity"
        | "Clip" | "Softmax" | "LayerNormalization" | "CumSum" => one(x.clone()),
        "Cast" => one(TensorType {
            elem: attr_i(n, "to", 0) as i32,
            shape: x.shape.clone(),
        }),
        "QuantizeLinear" => {
            let e = match n.input.get(2).filter(|s| !s.is_empty()) {
                Some(_) => inp(2)?.elem,
                None => elem::U8,
            };
            one(TensorType {
                elem: e,
                shape: x.shape.clone(),
            })
        }
        "DequantizeLinear" => one(TensorType {
            elem: inp(1)?.elem,
            shape: x.shape.clone(),
        }),
        "MatMul" => {
            let b = inp(1)?;
            if x.shape.len() < 2 || b.shape.len() < 2 {
                return Err(format!("rank < 2: {:?} × {:?}", x.shape, b.shape));
            }
            let (ra, rb) = (x.shape.len(), b.shape.len());
            if x.shape[ra - 1] != b.shape[rb - 2] {
                return Err(format!("inner dims {:?} × {:?}", x.shape, b.shape));
            }
            let mut s = broadcast(&x.shape[..ra - 2], &b.shape[..rb - 2])
                .ok_or_else(|| "batch dims do not broadcast".to_string())?;
            s.push(x.shape[ra - 2]);
            s.push(b.shape[rb - 1]);
            one(same(x, s))
        }
        "Conv" => {
            let w = inp(1)?;
            if x.shape.len() != 4 || w.shape.len() != 4 {
                return Err("Conv supports 2-D (NCHW) only".into());
            }
            let st = attr_ints(n, "strides");
            let pd = attr_ints(n, "pads");
            let dl = attr_ints(n, "dilations");
            let mut s = vec![x.shape[0], w.shape[0]];
            for a in 0..2 {
                let stride = *st.get(a).unwrap_or(&1) as usize;
                let dil = *dl.get(a).unwrap_or(&1) as usize;
                let p = (*pd.get(a).unwrap_or(&0) + *pd.get(a + 2).unwrap_or(&0)) as usize;
                let k = (w.shape[2 + a] - 1) * dil + 1;
                let inp = x.shape[2 + a] + p;
                if inp < k {
                    return Err("Conv kernel larger than input".into());
                }
                s.push((inp - k) / stride + 1);
            }
            one(same(x, s))
        }
        "Reshape" => {
            let dims = cst(1)?;
            let mut s: Vec<i64> = dims
                .iter()
                .enumerate()
                .map(|(i, &d)| match d {
                    0 => x.shape.get(i).map_or(-2, |&s| s as i64),
                    d => d,
                })
                .collect();
            if s.iter().any(|&d| d < -1) {
                return Err(format!("reshape {:?} → {dims:?}", x.shape));
            }
            if let Some(p) = s.iter().position(|&d| d == -1) {
                let known: i64 = s.iter().filter(|&&d| d != -1).product();
                s[p] = x.numel() as i64 / known.max(1);
            }
            let s: Vec<usize> = s.iter().map(|&d| d as usize).collect();
            if s.iter().product::<usize>() != x.numel() {
                return Err(format!("reshape {:?} → {s:?}", x.shape));
            }
            one(same(x, s))
        }
        "Transpose" => {
            let p = attr_ints(n, "perm");
            let p: Vec<usize> = if p.is_empty() {
                (0..x.shape.len()).rev().collect()
            } else {
                p.iter().map(|&a| a as usize).collect()
            };
            let s = p
                .iter()
                .map(|&a| x.shape.get(a).copied())
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| format!("perm {p:?} for shape {:?}", x.shape))?;
            one(same(x, s))
        }
        "Concat" => {
            let ax = axis(attr_i(n, "axis", 0), x.shape.len())?;
            let mut s = x.shape.clone();
            s[ax] = 0;
            for i in 0..n.input.len() {
                let t = inp(i)?;
                if t.shape.len() != s.len() {
                    return Err(format!("Concat of ranks {} and {}", s.len(), t.shape.len()));
                }
                s[ax] += t.shape[ax];
            }
            one(same(x, s))
        }
        "Slice" => {
            let (st, en) = (cst(1)?, cst(2)?);
            let axes: Vec<i64> = if n.input.len() > 3 && !n.input[3].is_empty() {
                cst(3)?.clone()
            } else {
                (0..st.len() as i64).collect()
            };
            let steps: Vec<i64> = if n.input.len() > 4 && !n.input[4].is_empty() {
                cst(4)?.clone()
            } else {
                vec![1; st.len()]
            };
            if en.len() != st.len() || axes.len() != st.len() || steps.len() != st.len() {
                return Err("Slice: starts, ends, axes and steps differ in length".into());
            }
            let mut s = x.shape.clone();
            for i in 0..st.len() {
                let a = axis(axes[i], s.len())?;
                let d = x.shape[a] as i64;
                let c = |v: i64| if v < 0 { (v + d).max(0) } else { v.min(d) };
                let (b, e) = (c(st[i]), c(en[i]));
                if steps[i] != 1 {
                    return Err("Slice with step ≠ 1".into());
                }
                s[a] = (e - b).max(0) as usize;
            }
            one(same(x, s))
        }
        "Gather" => {
            let ax = axis(attr_i(n, "axis", 0), x.shape.len())?;
            let idx = inp(1)?;
            let mut s = x.shape[..ax].to_vec();
            s.extend_from_slice(&idx.shape);
            s.extend_from_slice(&x.shape[ax + 1..]);
            one(same(x, s))
        }
        "GatherElements" => one(same(x, inp(1)?.shape.clone())),
        "Expand" => {
            let d: Vec<usize> = cst(1)?.iter().map(|&d| d as usize).collect();
            one(same(
                x,
                broadcast(&x.shape, &d).ok_or_else(|| "Expand: bad shape".to_string())?,
            ))
        }
        "Unsqueeze" => {
            let axes = cst(1)?;
            let r = x.shape.len() + axes.len();
            let ax: Vec<usize> = axes.iter().map(|&a| norm(a, r)).collect();
            let mut it = x.shape.iter();
            let s = (0..r)
                .map(|i| {
                    if ax.contains(&i) {
                        1
                    } else {
                        *it.next().unwrap_or(&1)
                    }
                })
                .collect();
            one(same(x, s))
        }
        "Squeeze" => {
            let axes: Vec<usize> = cst(1)?.iter().map(|&a| norm(a, x.shape.len())).collect();
            let s = x
                .shape
                .iter()
                .enumerate()
                .filter(|(i, _)| !axes.contains(i))
                .map(|(_, &d)| d)
                .collect();
            one(same(x, s))
        }
        "ReduceMax" | "ReduceMean" | "ReduceSum" | "ReduceMin" => {
            let axes: Vec<i64> = if n.op_type == "ReduceSum" && n.input.len() > 1 {
                cst(1)?.clone()
            } else {
                attr_ints(n, "axes")
            };
            let ax: Vec<usize> = if axes.is_empty() {
                (0..x.shape.len()).collect()
            } else {
                axes.iter().map(|&a| norm(a, x.shape.len())).collect()
            };
            let keep = attr_i(n, "keepdims", 1) != 0;
            let mut s = Vec::new();
            for (i, &d) in x.shape.iter().enumerate() {
                if !ax.contains(&i) {
                    s.push(d);
                } else if keep {
                    s.push(1);
                }
            }
            one(same(x, s))
        }
        "TopK" => {
            let k = *cst(1)?.first().ok_or("TopK: empty k")? as usize;
            let ax = axis(attr_i(n, "axis", -1), x.shape.len())?;
            let mut s = x.shape.clone();
            s[ax] = k;
            Ok(vec![
                same(x, s.clone()),
                TensorType {
                    elem: elem::I64,
                    shape: s,
                },
            ])
        }
        "Resize" => {
            if n.input.len() > 3 && !n.input[3].is_empty() {
                let s = cst(3)?.iter().map(|&d| d as usize).collect();
                one(same(x, s))
            } else {
                Err("Resize without `sizes` is not supported".into())
            }
        }
        "Pad" => {
            let p = cst(1)?;
            let r = x.shape.len();
            if p.len() != 2 * r {
                return Err("Pad: pads length".into());
            }
            let s = (0..r)
                .map(|i| (x.shape[i] as i64 + p[i] + p[i + r]) as usize)
                .collect();
            one(same(x, s))
        }
        "GridSample" => {
            let gr = inp(1)?;
            if x.shape.len() != 4 || gr.shape.len() != 4 {
                return Err("GridSample supports 4-D only".into());
            }
            one(same(
                x,
                vec![x.shape[0], x.shape[1], gr.shape[1], gr.shape[2]],
            ))
        }
        "MSDeformAttn" => {
            let loc = inp(3)?;
            match (&x.shape[..], &loc.shape[..]) {
                ([b, _, h, dh], [_, q, ..]) => one(same(x, vec![*b, *q, h * dh])),
                _ => Err("MSDeformAttn: bad input ranks".into()),
            }
        }
        "QueryPrune" => {
            let keep = attr_i(n, "keep", 0) as usize;
            let [b, nq, _] = x.shape[..] else {
                return Err("QueryPrune: class logits must be [B, N, L]".into());
            };
            Ok(vec![
                TensorType {
                    elem: elem::I64,
                    shape: vec![b, keep],
                },
                same(x, vec![b, nq]),
            ])
        }
        op => Err(format!("op `{op}` is not known to the graph passes")),
    }
}

/// Replaces the model's `value_info` with the inferred type of every intermediate tensor, so the file is
/// self-describing (the ONNX checker's full check then compares its own inference with ours).
pub fn annotate(model: &mut pb::ModelProto) -> Result<()> {
    let types = infer_types(model)?;
    let g = model
        .graph
        .as_mut()
        .ok_or_else(|| Error::Graph("model has no graph".into()))?;
    let skip: std::collections::HashSet<&str> = g
        .input
        .iter()
        .chain(&g.output)
        .map(|v| v.name.as_str())
        .chain(g.initializer.iter().map(|t| t.name.as_str()))
        .collect();
    let mut vi = Vec::new();
    for n in &g.node {
        for o in &n.output {
            if !o.is_empty() && !skip.contains(o.as_str()) {
                if let Some(t) = types.get(o) {
                    vi.push(value_info(o, t));
                }
            }
        }
    }
    g.value_info = vi;
    Ok(())
}
