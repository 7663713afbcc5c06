//! ONNX QuantizeLinear → DequantizeLinear pairs from a [`TensorScale`], ready for the graph builder to
//! splice in front of a MatMul/Gemm/Conv input (see [`super::policy`]). Symmetric INT8: the zero point is
//! an int8 0 (per tensor, or one per channel with the `axis` attribute), which is what TensorRT's explicit
//! quantization accepts on TensorRT 10.3 and 11.x.

use super::scale::TensorScale;
use crate::error::{Error, Result};
use tract_onnx::pb;

/// ONNX `TensorProto.DataType` values used here.
const ONNX_FLOAT: i32 = 1;
const ONNX_INT8: i32 = 3;

/// Nodes and initializers of one Q/DQ pair; `output` is the dequantized tensor to feed the consumer.
#[derive(Debug, Clone)]
pub struct QdqPair {
    /// QuantizeLinear then DequantizeLinear.
    pub nodes: Vec<pb::NodeProto>,
    /// Scale (f32) and zero point (int8) initializers.
    pub initializers: Vec<pb::TensorProto>,
    /// Name of the DequantizeLinear output.
    pub output: String,
}

fn f32_init(name: &str, dims: &[i64], v: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: ONNX_FLOAT,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn i8_zeros(name: &str, dims: &[i64], n: usize) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: ONNX_INT8,
        raw_data: vec![0u8; n],
        ..Default::default()
    }
}

fn axis_attr(axis: usize) -> pb::AttributeProto {
    pb::AttributeProto {
        name: "axis".into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: axis as i64,
        ..Default::default()
    }
}

/// A Q/DQ pair on tensor `input`; node and initializer names start with `name`.
pub fn qdq(input: &str, scale: &TensorScale, name: &str) -> Result<QdqPair> {
    scale.validate(input)?;
    let (s_name, z_name) = (format!("{name}.scale"), format!("{name}.zero_point"));
    let (inits, attrs) = match scale {
        TensorScale::PerTensor { scale, .. } => (
            vec![f32_init(&s_name, &[], &[*scale]), i8_zeros(&z_name, &[], 1)],
            vec![],
        ),
        TensorScale::PerChannel { axis, scales } => {
            let c = scales.len() as i64;
            (
                vec![
                    f32_init(&s_name, &[c], scales),
                    i8_zeros(&z_name, &[c], scales.len()),
                ],
                vec![axis_attr(*axis)],
            )
        }
    };
    if input.is_empty() {
        return Err(Error::Graph("Q/DQ on a tensor with an empty name".into()));
    }
    let (q_out, dq_out) = (format!("{name}.q"), format!("{name}.dq"));
    let node = |op: &str, suffix: &str, first: &str, out: &str| pb::NodeProto {
        input: vec![first.into(), s_name.clone(), z_name.clone()],
        output: vec![out.into()],
        name: format!("{name}.{suffix}"),
        op_type: op.into(),
        domain: String::new(),
        attribute: attrs.clone(),
        doc_string: String::new(),
    };
    Ok(QdqPair {
        nodes: vec![
            node("QuantizeLinear", "quantize", input, &q_out),
            node("DequantizeLinear", "dequantize", &q_out, &dq_out),
        ],
        initializers: inits,
        output: dq_out,
    })
}
