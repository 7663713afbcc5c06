//! A host INT8 engine's products rewritten for the CPU backend's integer kernel
//! ([`crate::ops::qlinear`]): what tract would otherwise evaluate in float.
//!
//! A host INT8 engine ([`super::precision::insert_qdq`] with `activation_u8`) computes each
//! quantized linear layer as
//!
//! ```text
//! x ─ QuantizeLinear(s_x, 128 u8) ─ DequantizeLinear ─┐
//! W ─ QuantizeLinear(s_w[n], 0 i8, axis 1) ─ DequantizeLinear ─ MatMul ─ (Add bias)
//! ```
//!
//! [`fuse_int8_products`] turns the activation's `QuantizeLinear` into [`QUANTIZE_OP`] (same
//! inputs and output: ONNX `QuantizeLinear` to uint8 with zero point 128, done by
//! [`crate::ops::qlinear::quantize_u8`]) and each such `MatMul` by a 2-D weight, with the bias
//! `Add` right after it when there is one, into one [`PRODUCT_OP`] node reading the uint8
//! activation: inputs `(x_q, s_x, W_q, s_w[, bias])`, `W_q` the weight quantized here exactly as
//! the graph's `QuantizeLinear` would (an int8 initializer), output the `MatMul`'s (or the
//! `Add`'s) f32 tensor. Nodes and initializers nothing reads any more are dropped. Products of two
//! activations (attention) and convolutions keep their dequantized float form.
//!
//! The activation `QuantizeLinear → DequantizeLinear` pairs left (operands of products of two
//! activations, of convolutions) become one [`FAKE_QUANTIZE_OP`] node each: the same f32 values in
//! one pass.
//!
//! The new ops are in the `referdino` domain (so only our CPU backend runs the result; ONNX
//! Runtime runs the Q/DQ graph as it is).

use super::builder::CUSTOM_DOMAIN;
use super::infer::{attr_i, elem, init_bytes, init_f32};
use crate::error::{Error, Result};
use crate::ops::qlinear::{QPackedWeights, ZERO_POINT};
use std::collections::{HashMap, HashSet};
use tract_onnx::pb;

/// Op type of the fused product: `y = (x_q − 128) · W_q · (s_x · s_w) (+ bias)`.
pub const PRODUCT_OP: &str = "QLinear";
/// Op type of the activation quantization (ONNX `QuantizeLinear`, uint8, zero point 128).
pub const QUANTIZE_OP: &str = "QuantizeU8";
/// Op type of an activation's quantize → dequantize pair in one pass (f32 in, f32 out:
/// [`crate::ops::qlinear::fake_quantize_u8`]).
pub const FAKE_QUANTIZE_OP: &str = "FakeQuantU8";

/// What [`fuse_int8_products`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fused {
    /// Products now [`PRODUCT_OP`] nodes.
    pub products: usize,
    /// Of them, with their bias folded in.
    pub with_bias: usize,
    /// Activation quantizations now [`QUANTIZE_OP`] nodes.
    pub quantizations: usize,
    /// Other activation Q → DQ pairs (the operands of products of two activations and of
    /// convolutions) now one [`FAKE_QUANTIZE_OP`] node each.
    pub fake_quantizations: usize,
}

/// Whether `model` holds any `DequantizeLinear` (a quantized engine).
pub fn is_quantized(model: &pb::ModelProto) -> bool {
    model
        .graph
        .as_ref()
        .is_some_and(|g| g.node.iter().any(|n| n.op_type == "DequantizeLinear"))
}

/// The scale of a `QuantizeLinear` / `DequantizeLinear` node of the host form's activations: a
/// scalar f32 scale (finite, > 0) and a scalar uint8 zero point of 128.
fn u8_activation_scale(n: &pb::NodeProto, inits: &HashMap<&str, &pb::TensorProto>) -> Option<f32> {
    if n.input.len() != 3 || !n.domain.is_empty() {
        return None;
    }
    let t = inits.get(n.input[1].as_str())?;
    let v = init_f32(t)?;
    let s = (t.dims.is_empty() && v.len() == 1).then(|| v[0])?;
    let z = inits.get(n.input[2].as_str())?;
    let zp_128 = z.data_type == elem::U8 && z.dims.is_empty() && init_bytes(z)? == [ZERO_POINT];
    (zp_128 && s.is_finite() && s > 0.0).then_some(s)
}

/// The activation side: `DequantizeLinear(QuantizeLinear(x, s, 128), s, 128)` ([`u8_activation_scale`]
/// on both, the same scale). Returns (Q node index, scale name).
fn activation_pair(
    g: &pb::GraphProto,
    producer: &HashMap<&str, usize>,
    inits: &HashMap<&str, &pb::TensorProto>,
    name: &str,
) -> Option<(usize, String)> {
    let dq = &g.node[*producer.get(name)?];
    if dq.op_type != "DequantizeLinear" {
        return None;
    }
    let qi = *producer.get(dq.input.first()?.as_str())?;
    let q = &g.node[qi];
    if q.op_type != "QuantizeLinear" || q.output.len() != 1 {
        return None;
    }
    let s = u8_activation_scale(q, inits)?;
    (u8_activation_scale(dq, inits)? == s).then(|| (qi, q.input[1].clone()))
}

/// A quantized weight operand: `W` `[k, n]` and its column scales `s`, by initializer name.
struct WeightPair {
    w_name: String,
    k: usize,
    n: usize,
    w: Vec<f32>,
    s_name: String,
    s: Vec<f32>,
}

/// The weight side: `DequantizeLinear(QuantizeLinear(W, s_w, 0), s_w, 0)` along axis 1 of a 2-D
/// f32 initializer `W`.
fn weight_pair(
    g: &pb::GraphProto,
    producer: &HashMap<&str, usize>,
    inits: &HashMap<&str, &pb::TensorProto>,
    name: &str,
) -> Option<WeightPair> {
    let dq = &g.node[*producer.get(name)?];
    if dq.op_type != "DequantizeLinear" || dq.input.len() != 3 || attr_i(dq, "axis", 1) != 1 {
        return None;
    }
    let q = &g.node[*producer.get(dq.input.first()?.as_str())?];
    if q.op_type != "QuantizeLinear" || q.input.len() != 3 || attr_i(q, "axis", 1) != 1 {
        return None;
    }
    let wt = inits.get(q.input[0].as_str())?;
    if wt.dims.len() != 2 || wt.dims.iter().any(|&d| d <= 0) {
        return None;
    }
    let (k, n) = (
        usize::try_from(wt.dims[0]).ok()?,
        usize::try_from(wt.dims[1]).ok()?,
    );
    let w = init_f32(wt).filter(|w| Some(w.len()) == k.checked_mul(n))?;
    if q.input[1] != dq.input[1] || q.input[2] != dq.input[2] {
        return None;
    }
    let s = init_f32(inits.get(q.input[1].as_str())?).filter(|s| s.len() == n)?;
    let zt = inits.get(q.input[2].as_str())?;
    let zeros = zt.data_type == elem::I8 && init_bytes(zt)?.iter().all(|&b| b == 0);
    (zeros && s.iter().all(|v| v.is_finite() && *v > 0.0)).then(|| WeightPair {
        w_name: q.input[0].clone(),
        k,
        n,
        w,
        s_name: q.input[1].clone(),
        s,
    })
}

/// Rewrites the host INT8 products of `model` (see the module docs). A model without them comes
/// back unchanged with zero counts.
pub fn fuse_int8_products(model: &pb::ModelProto) -> Result<(pb::ModelProto, Fused)> {
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Graph("model has no graph".into()))?;
    let producer: HashMap<&str, usize> = g
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for s in &n.input {
            readers.entry(s.as_str()).or_default().push(i);
        }
    }
    let inits: HashMap<&str, &pb::TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    let taken: HashSet<&str> = g
        .initializer
        .iter()
        .map(|t| t.name.as_str())
        .chain(producer.keys().copied())
        .collect();

    let mut fused = Fused::default();
    let mut nodes: Vec<Option<pb::NodeProto>> = g.node.iter().cloned().map(Some).collect();
    let mut new_inits: Vec<pb::TensorProto> = Vec::new();
    // int8 weight initializer per (W, s_w): a weight read by several products is quantized once.
    let mut quantized: HashMap<(String, String), String> = HashMap::new();
    let mut quantize_nodes: HashSet<usize> = HashSet::new();
    for (i, n) in g.node.iter().enumerate() {
        if n.op_type != "MatMul"
            || n.input.len() != 2
            || n.output.len() != 1
            || !n.domain.is_empty()
        {
            continue;
        }
        let Some((qi, x_scale)) = activation_pair(g, &producer, &inits, &n.input[0]) else {
            continue;
        };
        let Some(WeightPair {
            w_name: wname,
            k,
            n: nn,
            w,
            s_name,
            s,
        }) = weight_pair(g, &producer, &inits, &n.input[1])
        else {
            continue;
        };
        let wq_name = match quantized.get(&(wname.clone(), s_name.clone())) {
            Some(q) => q.clone(),
            None => {
                let packed = QPackedWeights::quantize(&w, k, nn, &s)?;
                let mut name = format!("{wname}::int8");
                while taken.contains(name.as_str()) {
                    name.push('_');
                }
                new_inits.push(pb::TensorProto {
                    dims: vec![k as i64, nn as i64],
                    data_type: elem::I8,
                    name: name.clone(),
                    raw_data: packed.unpack().into_iter().map(|v| v as u8).collect(),
                    ..Default::default()
                });
                quantized.insert((wname, s_name.clone()), name.clone());
                name
            }
        };
        let q_out = g.node[qi].output[0].clone();
        let mut inputs = vec![q_out, x_scale, wq_name, s_name];
        let mut output = n.output[0].clone();
        // The bias `Add` right after it, if it is the product's only reader.
        let bias_add = match readers.get(n.output[0].as_str()).map(Vec::as_slice) {
            Some(&[j]) if !outputs.contains(n.output[0].as_str()) => {
                let a = &g.node[j];
                let other = a.input.iter().find(|s| **s != n.output[0]);
                let bias = other.and_then(|b| inits.get(b.as_str()));
                let is_bias = bias.is_some_and(|t| {
                    t.data_type == elem::F32
                        && t.dims.iter().rev().skip(1).all(|&d| d == 1)
                        && t.dims.last() == Some(&(nn as i64))
                });
                let add = a.op_type == "Add" && a.input.len() == 2 && a.output.len() == 1;
                (add && a.domain.is_empty() && is_bias).then_some(j)
            }
            _ => None,
        };
        if let Some(j) = bias_add {
            let a = &g.node[j];
            let b = a
                .input
                .iter()
                .find(|s| **s != n.output[0])
                .expect("checked");
            // A bias of rank > 1 ([1, n]) would broadcast the output's rank up: keep it apart.
            if inits[b.as_str()].dims.len() == 1 {
                inputs.push(b.clone());
                output = a.output[0].clone();
                nodes[j] = None;
                fused.with_bias += 1;
            }
        }
        nodes[i] = Some(pb::NodeProto {
            input: inputs,
            output: vec![output],
            name: format!("{}::int8", n.name),
            op_type: PRODUCT_OP.into(),
            domain: CUSTOM_DOMAIN.into(),
            ..Default::default()
        });
        quantize_nodes.insert(qi);
        fused.products += 1;
    }
    // Activation Q → DQ pairs left (read by products of two activations and by convolutions):
    // one pass instead of a uint8 tensor written and read back.
    for (qi, q) in g.node.iter().enumerate() {
        if q.op_type != "QuantizeLinear" || q.output.len() != 1 || quantize_nodes.contains(&qi) {
            continue;
        }
        let Some(s) = u8_activation_scale(q, &inits) else {
            continue;
        };
        let (Some(&[dqi]), false) = (
            readers.get(q.output[0].as_str()).map(Vec::as_slice),
            outputs.contains(q.output[0].as_str()),
        ) else {
            continue;
        };
        let dq = &g.node[dqi];
        if dq.op_type != "DequantizeLinear" || u8_activation_scale(dq, &inits) != Some(s) {
            continue;
        }
        nodes[qi] = Some(pb::NodeProto {
            input: q.input[..2].to_vec(),
            output: dq.output.clone(),
            name: q.name.clone(),
            op_type: FAKE_QUANTIZE_OP.into(),
            domain: CUSTOM_DOMAIN.into(),
            ..Default::default()
        });
        nodes[dqi] = None;
        fused.fake_quantizations += 1;
    }
    if fused.products == 0 && fused.fake_quantizations == 0 {
        return Ok((model.clone(), fused));
    }
    for &qi in &quantize_nodes {
        let q = g.node[qi].clone();
        nodes[qi] = Some(pb::NodeProto {
            input: q.input[..2].to_vec(),
            output: q.output,
            name: q.name,
            op_type: QUANTIZE_OP.into(),
            domain: CUSTOM_DOMAIN.into(),
            ..Default::default()
        });
        fused.quantizations += 1;
    }
    let mut out = model.clone();
    let og = out.graph.as_mut().expect("graph checked above");
    og.node = live_nodes(nodes, &outputs);
    og.initializer.extend(new_inits);
    let read: HashSet<String> = og.node.iter().flat_map(|n| n.input.clone()).collect();
    og.initializer
        .retain(|t| read.contains(&t.name) || outputs.contains(t.name.as_str()));
    og.value_info.clear();
    if !out.opset_import.iter().any(|o| o.domain == CUSTOM_DOMAIN) {
        out.opset_import.push(pb::OperatorSetIdProto {
            domain: CUSTOM_DOMAIN.into(),
            version: 1,
        });
    }
    Ok((out, fused))
}

/// The nodes some graph output depends on, in their order.
fn live_nodes(nodes: Vec<Option<pb::NodeProto>>, outputs: &HashSet<&str>) -> Vec<pb::NodeProto> {
    let nodes: Vec<pb::NodeProto> = nodes.into_iter().flatten().collect();
    let mut needed: HashSet<&str> = outputs.clone();
    let mut live = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o.as_str())) {
            live[i] = true;
            needed.extend(n.input.iter().map(String::as_str));
        }
    }
    nodes
        .iter()
        .zip(live)
        .filter(|(_, l)| *l)
        .map(|(n, _)| n.clone())
        .collect()
}
