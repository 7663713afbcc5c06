//! A symbolic batch axis for a graph the builder wrote with static shapes.
//!
//! The builder knows every shape when it emits a node, so a graph built for `B` objects carries `B` in
//! its bindings and in the shape constants of its Reshape / Expand nodes. TensorRT serves several
//! object counts from one plan through an optimization profile (min / opt / max), which needs the
//! batch axis symbolic in the ONNX it parses. Rather than teach every op helper symbolic sizes, the
//! graph is built three times at different batches and the builds are compared:
//!
//! - every node (op, inputs, outputs, attributes) and every non-integer initializer must be identical
//!   (a batch-generic graph: the batch only appears in shapes), otherwise the graph is refused with
//!   the first node or tensor that differs;
//! - an int64 shape constant whose entries differ must be affine in the batch, `v = k·B + c`, fitted
//!   on two builds and checked on the third (so `B²` or `min(B, n)` is caught, not extrapolated);
//!   a Reshape target with one such entry (`c = 0`) becomes `-1` there, any other becomes
//!   `Add(Mul(B, k), c)` computed from the batch input's `Shape` at run time;
//! - binding dims that differ become the symbolic dimension `dim_param` (they must be the batch itself,
//!   `k = 1, c = 0`); intermediate shape hints (`value_info`) that differ are dropped.
//!
//! The result runs at any batch: a test runs it at batches it was not built for and compares each
//! output with a static build of that batch (`tests/graph/batch_axis.rs`).

use super::infer::{elem, init_i64};
use crate::error::{Error, Result};
use std::collections::HashMap;
use tract_onnx::pb;

/// One build of the graph and the batch it was built for.
pub struct Build {
    /// The batch size the graph was built at.
    pub batch: usize,
    /// The finished model.
    pub model: pb::ModelProto,
}

/// `v = k·B + c` for one integer that varies with the batch (`k = 0`: constant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Affine {
    k: i64,
    c: i64,
}

/// Fits `v = k·B + c` to three (batch, value) pairs; `None` if they are not on one line.
fn fit(b: [i64; 3], v: [i64; 3]) -> Option<Affine> {
    if v[0] == v[1] && v[1] == v[2] {
        return Some(Affine { k: 0, c: v[0] });
    }
    let (db, dv) = (b[1] - b[0], v[1] - v[0]);
    if db == 0 || dv % db != 0 {
        return None;
    }
    let k = dv / db;
    let c = v[0] - k * b[0];
    (k * b[2] + c == v[2]).then_some(Affine { k, c })
}

fn not_generic(what: String) -> Error {
    Error::Graph(format!(
        "dynamic batch: the graph is not batch-generic: {what} (the batch may only appear in shapes)"
    ))
}

/// Merges three builds of one graph (distinct batches) into one with a symbolic batch axis named
/// `dim_param`; see the module documentation. The first build's data is kept.
pub fn symbolic_batch(builds: [Build; 3], dim_param: &str) -> Result<pb::ModelProto> {
    let b = [
        builds[0].batch as i64,
        builds[1].batch as i64,
        builds[2].batch as i64,
    ];
    if b[0] == b[1] || b[1] == b[2] || b[0] == b[2] {
        return Err(Error::Config(format!(
            "dynamic batch: the three builds need distinct batches, got {b:?}"
        )));
    }
    let [m0, m1, m2] = builds.map(|x| x.model);
    let graph_of = |m: &pb::ModelProto| -> Result<pb::GraphProto> {
        m.graph
            .clone()
            .ok_or_else(|| Error::Graph("dynamic batch: model without a graph".into()))
    };
    let (g1, g2) = (graph_of(&m1)?, graph_of(&m2)?);
    drop((m1, m2));
    let mut out = m0;
    let g0 = out
        .graph
        .as_mut()
        .ok_or_else(|| Error::Graph("dynamic batch: model without a graph".into()))?;

    // Nodes: identical in every build.
    if g0.node.len() != g1.node.len() || g0.node.len() != g2.node.len() {
        return Err(not_generic(format!(
            "{} / {} / {} nodes at batches {b:?}",
            g0.node.len(),
            g1.node.len(),
            g2.node.len()
        )));
    }
    for ((n0, n1), n2) in g0.node.iter().zip(&g1.node).zip(&g2.node) {
        if n0 != n1 || n0 != n2 {
            return Err(not_generic(format!(
                "node `{}` ({}) differs between batches",
                n0.name, n0.op_type
            )));
        }
    }

    // Which (node, input) pairs read each name.
    let mut consumers: HashMap<&str, Vec<(&str, usize)>> = HashMap::new();
    for n in &g1.node {
        for (i, name) in n.input.iter().enumerate() {
            consumers
                .entry(name.as_str())
                .or_default()
                .push((n.op_type.as_str(), i));
        }
    }

    // Initializers: identical, or int64 shape vectors affine in the batch.
    if g0.initializer.len() != g1.initializer.len() || g0.initializer.len() != g2.initializer.len()
    {
        return Err(not_generic("the initializers differ in number".into()));
    }
    let mut computed: Vec<(String, Vec<Affine>)> = Vec::new();
    let mut drop_init = Vec::new();
    for (idx, ((t0, t1), t2)) in g0
        .initializer
        .iter_mut()
        .zip(&g1.initializer)
        .zip(&g2.initializer)
        .enumerate()
    {
        if t0.name != t1.name || t0.name != t2.name {
            return Err(not_generic(format!(
                "initializer `{}` / `{}` / `{}` at one position",
                t0.name, t1.name, t2.name
            )));
        }
        if *t0 == *t1 && *t0 == *t2 {
            continue;
        }
        let vals = [init_i64(t0), init_i64(t1), init_i64(t2)];
        let [Some(v0), Some(v1), Some(v2)] = vals else {
            return Err(not_generic(format!(
                "tensor `{}` (type {}, dims {:?} / {:?} / {:?}) holds batch-dependent data",
                t0.name, t0.data_type, t0.dims, t1.dims, t2.dims
            )));
        };
        if t0.dims.len() != 1 || t0.dims != t1.dims || t0.dims != t2.dims {
            return Err(not_generic(format!(
                "int64 tensor `{}` changes its dims {:?} / {:?} / {:?} with the batch",
                t0.name, t0.dims, t1.dims, t2.dims
            )));
        }
        let mut entries = Vec::with_capacity(v0.len());
        for j in 0..v0.len() {
            let a = fit(b, [v0[j], v1[j], v2[j]]).ok_or_else(|| {
                not_generic(format!(
                    "entry {j} of `{}` is {}, {}, {} at batches {b:?}: not affine in the batch",
                    t0.name, v0[j], v1[j], v2[j]
                ))
            })?;
            entries.push(a);
        }
        let uses = consumers.get(t0.name.as_str()).cloned().unwrap_or_default();
        let varying: Vec<usize> = (0..entries.len()).filter(|&j| entries[j].k != 0).collect();
        let reshape_only =
            !uses.is_empty() && uses.iter().all(|&(op, i)| op == "Reshape" && i == 1);
        let one_batch_entry = varying.len() == 1 && entries[varying[0]].c == 0;
        let plain = entries.iter().all(|a| a.k != 0 || a.c > 0);
        if reshape_only && one_batch_entry && plain {
            // Reshape infers the one varying size from the element count.
            let target: Vec<i64> = entries
                .iter()
                .map(|a| if a.k != 0 { -1 } else { a.c })
                .collect();
            t0.raw_data = target.iter().flat_map(|x| x.to_le_bytes()).collect();
            t0.int64_data.clear();
        } else {
            computed.push((t0.name.clone(), entries));
            drop_init.push(idx);
        }
    }

    // The batch at run time: `Shape(input)[axis]` of the first input whose dim is the batch.
    let mut batch_source: Option<(String, usize)> = None;
    let io_dims = |v: &pb::ValueInfoProto| -> Vec<Option<i64>> {
        use pb::tensor_shape_proto::dimension::Value as D;
        let Some(pb::type_proto::Value::TensorType(t)) =
            v.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Vec::new();
        };
        t.shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(D::DimValue(x)) => Some(x),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let index = |vs: &[pb::ValueInfoProto]| -> HashMap<String, Vec<Option<i64>>> {
        vs.iter().map(|v| (v.name.clone(), io_dims(v))).collect()
    };
    let (in1, in2) = (index(&g1.input), index(&g2.input));
    let (out1, out2) = (index(&g1.output), index(&g2.output));
    let (vi1, vi2) = (index(&g1.value_info), index(&g2.value_info));
    let symbolise = |v: &mut pb::ValueInfoProto,
                     d1: Option<&Vec<Option<i64>>>,
                     d2: Option<&Vec<Option<i64>>>,
                     binding: bool|
     -> Result<Vec<usize>> {
        use pb::tensor_shape_proto::dimension::Value as D;
        let d0 = io_dims(v);
        let (Some(d1), Some(d2)) = (d1, d2) else {
            return Err(not_generic(format!("`{}` is missing from a build", v.name)));
        };
        if d0.len() != d1.len() || d0.len() != d2.len() {
            return Err(not_generic(format!(
                "`{}` changes rank with the batch",
                v.name
            )));
        }
        let mut axes = Vec::new();
        let Some(pb::type_proto::Value::TensorType(t)) =
            v.r#type.as_mut().and_then(|t| t.value.as_mut())
        else {
            return Ok(axes);
        };
        let Some(shape) = t.shape.as_mut() else {
            return Ok(axes);
        };
        for (j, dim) in shape.dim.iter_mut().enumerate() {
            let (Some(x0), Some(x1), Some(x2)) = (d0[j], d1[j], d2[j]) else {
                continue;
            };
            let a = fit(b, [x0, x1, x2]).ok_or_else(|| {
                not_generic(format!(
                    "dim {j} of `{}` is {x0}, {x1}, {x2} at batches {b:?}",
                    v.name
                ))
            })?;
            if a.k == 0 {
                continue;
            }
            if binding && (a.k != 1 || a.c != 0) {
                return Err(not_generic(format!(
                    "dim {j} of binding `{}` is {}·batch + {}: a binding's dim must be the batch itself",
                    v.name, a.k, a.c
                )));
            }
            dim.value = Some(D::DimParam(dim_param.to_string()));
            axes.push(j);
        }
        Ok(axes)
    };
    for v in g0.input.iter_mut() {
        let axes = symbolise(v, in1.get(&v.name), in2.get(&v.name), true)?;
        if batch_source.is_none() {
            if let Some(&a) = axes.first() {
                batch_source = Some((v.name.clone(), a));
            }
        }
    }
    for v in g0.output.iter_mut() {
        symbolise(v, out1.get(&v.name), out2.get(&v.name), true)?;
    }
    // Intermediate shapes are hints; the ones that vary with the batch are dropped rather than made
    // symbolic (a consumer that fixes the inputs' batch, as tract does, would otherwise meet an
    // unbound symbol), after checking they are affine like the rest.
    let mut keep = Vec::with_capacity(g0.value_info.len());
    for mut v in std::mem::take(&mut g0.value_info) {
        let (d1, d2) = (vi1.get(&v.name), vi2.get(&v.name));
        if symbolise(&mut v, d1, d2, false)?.is_empty() {
            keep.push(v);
        }
    }
    g0.value_info = keep;

    if computed.is_empty() {
        return Ok(out);
    }
    let (src, axis) = batch_source.ok_or_else(|| {
        not_generic("shape constants depend on the batch but no input carries it".into())
    })?;
    // Dropped initializers become node outputs of the same name, computed before any node runs.
    drop_init.sort_unstable();
    for &i in drop_init.iter().rev() {
        g0.initializer.remove(i);
    }
    let i64_init = |name: String, v: Vec<i64>| pb::TensorProto {
        dims: vec![v.len() as i64],
        data_type: elem::I64,
        name,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], output: &str| pb::NodeProto {
        op_type: op.into(),
        name: format!("{output}.{op}"),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        ..Default::default()
    };
    let shape_out = format!("{dim_param}.shape");
    let axis_name = format!("{dim_param}.axis");
    let batch = format!("{dim_param}.size");
    let mut front = vec![
        node("Shape", &[&src], &shape_out),
        node("Gather", &[&shape_out, &axis_name], &batch),
    ];
    g0.initializer
        .push(i64_init(axis_name.clone(), vec![axis as i64]));
    for (name, entries) in computed {
        let (k, c): (Vec<i64>, Vec<i64>) = entries.iter().map(|a| (a.k, a.c)).unzip();
        let (kn, cn, prod) = (
            format!("{name}.k"),
            format!("{name}.c"),
            format!("{name}.kb"),
        );
        g0.initializer.push(i64_init(kn.clone(), k));
        g0.initializer.push(i64_init(cn.clone(), c));
        front.push(node("Mul", &[&batch, &kn], &prod));
        front.push(node("Add", &[&prod, &cn], &name));
    }
    front.append(&mut g0.node);
    g0.node = front;
    Ok(out)
}

/// The model with every binding dim named `dim_param` fixed to `batch` (for runtimes that take static
/// shapes, or that plan better with them: tract, our CPU and ONNX Runtime backends load the object
/// engines this way at the batch of the engine set). Errors when no binding carries `dim_param`.
pub fn fix_batch(mut m: pb::ModelProto, dim_param: &str, batch: usize) -> Result<pb::ModelProto> {
    use pb::tensor_shape_proto::dimension::Value as D;
    if batch == 0 {
        return Err(Error::Config("batch must be at least 1".into()));
    }
    let g = m
        .graph
        .as_mut()
        .ok_or_else(|| Error::Graph("model without a graph".into()))?;
    let mut fixed = 0;
    for v in g.input.iter_mut().chain(g.output.iter_mut()) {
        if let Some(pb::type_proto::Value::TensorType(t)) =
            v.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            for d in t.shape.iter_mut().flat_map(|s| s.dim.iter_mut()) {
                if matches!(&d.value, Some(D::DimParam(p)) if p == dim_param) {
                    d.value = Some(D::DimValue(batch as i64));
                    fixed += 1;
                }
            }
        }
    }
    if fixed == 0 {
        return Err(Error::Graph(format!(
            "model {}: no binding has the symbolic dim `{dim_param}`",
            g.name
        )));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_checks_the_third_point() {
        assert_eq!(fit([5, 7, 11], [5, 7, 11]), Some(Affine { k: 1, c: 0 }));
        assert_eq!(fit([5, 7, 11], [16, 22, 34]), Some(Affine { k: 3, c: 1 }));
        assert_eq!(fit([5, 7, 11], [4, 4, 4]), Some(Affine { k: 0, c: 4 }));
        // B²: on a line through the first two, not the third.
        assert_eq!(fit([5, 7, 11], [25, 49, 121]), None);
        // min(B, 6): looks constant-ish, is not affine.
        assert_eq!(fit([5, 7, 11], [5, 6, 6]), None);
    }
}
