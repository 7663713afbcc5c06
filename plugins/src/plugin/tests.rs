use super::*;

fn field<'a>(name: &'a str, field_type: i32, data: &'a [u8]) -> FieldIn<'a> {
    FieldIn {
        name,
        field_type,
        length: 1,
        data,
    }
}

fn msda_descs(vt: i32, it: i32) -> (Vec<TensorDesc>, Vec<TensorDesc>) {
    let ins = vec![
        TensorDesc::new(vt, &[1, 4795, 8, 32]),
        TensorDesc::new(it, &[4, 2]),
        TensorDesc::new(it, &[4]),
        TensorDesc::new(dtype::FLOAT, &[1, 900, 8, 4, 4, 2]),
        TensorDesc::new(dtype::FLOAT, &[1, 900, 8, 4, 4]),
    ];
    (ins, vec![TensorDesc::new(vt, &[1, 900, 256])])
}

fn prune(keep: i32) -> Plugin {
    Plugin::create(
        Op::QueryPrune,
        &[field("keep", field_type::INT32, &keep.to_le_bytes())],
    )
    .unwrap()
}

#[test]
fn op_names_and_counts() {
    assert_eq!(Op::MsDeformAttn.name(), c"MSDeformAttn");
    assert_eq!(Op::QueryPrune.name(), c"QueryPrune");
    assert_eq!(PLUGIN_VERSION, c"1");
    assert_eq!(Op::from_index(1), Some(Op::QueryPrune));
    assert_eq!(Op::from_index(2), None);
    assert_eq!(Op::QueryPrune.attribute_schema().len(), 1);
    assert!(Op::MsDeformAttn.attribute_schema().is_empty());
}

#[test]
fn keep_attribute_parsing_and_serialization_round_trip() {
    let p = prune(450);
    assert_eq!(p.keep(), 450);
    let f = p.fields_to_serialize();
    assert_eq!(f.len(), 1);
    // SAFETY: a serialized field's name points to a 'static NUL-terminated C string literal.
    assert_eq!(unsafe { CStr::from_ptr(f[0].name) }, c"keep");
    assert_eq!((f[0].field_type, f[0].length), (field_type::INT32, 1));
    // Deserialization (runtime createPlugin) reads the serialized field back.
    // SAFETY: the field is one INT32 (checked above), stored in `p`, which is alive here: 4 readable
    // bytes, and u8 has no alignment requirement.
    let bytes = unsafe { std::slice::from_raw_parts(f[0].data.cast::<u8>(), 4) };
    let back = Plugin::create(Op::QueryPrune, &[field("keep", f[0].field_type, bytes)]).unwrap();
    assert_eq!(back.keep(), 450);
    // A clone owns its own storage.
    let c = p.clone();
    drop(p);
    assert_eq!(
        // SAFETY: `Plugin::clone` rebuilds the plugin with `with_keep`, which boxes its own i32 and
        // points the field at it: aligned, initialised, and alive as long as `c`.
        unsafe { *c.fields_to_serialize()[0].data.cast::<i32>() },
        450
    );
    // int64 and int16 attributes are accepted too.
    assert_eq!(
        Plugin::create(
            Op::QueryPrune,
            &[field("keep", field_type::INT64, &15i64.to_le_bytes())]
        )
        .unwrap()
        .keep(),
        15
    );
    assert_eq!(
        Plugin::create(
            Op::QueryPrune,
            &[field("keep", field_type::INT16, &7i16.to_le_bytes())]
        )
        .unwrap()
        .keep(),
        7
    );
}

#[test]
fn bad_attributes_are_errors() {
    assert!(Plugin::create(Op::QueryPrune, &[])
        .unwrap_err()
        .to_string()
        .contains("missing attribute `keep`"));
    assert!(Plugin::create(
        Op::QueryPrune,
        &[field("keep", field_type::INT32, &0i32.to_le_bytes())]
    )
    .is_err());
    assert!(Plugin::create(
        Op::QueryPrune,
        &[field("keep", field_type::INT32, &(-3i32).to_le_bytes())]
    )
    .is_err());
    assert!(Plugin::create(
        Op::QueryPrune,
        &[field("keep", 1 /* kFLOAT32 */, &1f32.to_le_bytes())]
    )
    .is_err());
    assert!(Plugin::create(Op::QueryPrune, &[field("keep", field_type::INT32, &[1, 0])]).is_err());
    // Unknown attributes are ignored.
    let p = Plugin::create(
        Op::MsDeformAttn,
        &[field(
            "im2col_step",
            field_type::INT32,
            &64i32.to_le_bytes(),
        )],
    )
    .unwrap();
    assert_eq!(p.op(), Op::MsDeformAttn);
}

#[test]
fn output_types() {
    let m = Plugin::create(Op::MsDeformAttn, &[]).unwrap();
    let mut out = [0; 1];
    m.output_types(
        &[
            dtype::HALF,
            dtype::INT64,
            dtype::INT64,
            dtype::FLOAT,
            dtype::FLOAT,
        ],
        &mut out,
    )
    .unwrap();
    assert_eq!(out, [dtype::HALF]);
    m.output_types(
        &[
            dtype::FLOAT,
            dtype::INT32,
            dtype::INT32,
            dtype::FLOAT,
            dtype::FLOAT,
        ],
        &mut out,
    )
    .unwrap();
    assert_eq!(out, [dtype::FLOAT]);
    assert!(m
        .output_types(&[dtype::INT32, 8, 8, 0, 0], &mut out)
        .is_err());
    assert!(m.output_types(&[dtype::FLOAT; 4], &mut out).is_err());
    let mut out2 = [0; 2];
    prune(3)
        .output_types(&[dtype::FLOAT, dtype::FLOAT], &mut out2)
        .unwrap();
    assert_eq!(out2, [dtype::INT64, dtype::FLOAT]);
}

#[test]
fn output_shapes_follow_the_contract() {
    let m = Plugin::create(Op::MsDeformAttn, &[]).unwrap();
    let (ins, _) = msda_descs(dtype::FLOAT, dtype::INT64);
    let mut out = [ShapeRecipe::new(&[])];
    m.output_shapes(&[4, 2, 1, 6, 5], &mut out).unwrap();
    let shapes: Vec<&[i64]> = ins.iter().map(TensorDesc::shape).collect();
    assert_eq!(out[0].eval(&shapes).unwrap(), vec![1, 900, 256]);
    assert!(m.output_shapes(&[4, 2, 1, 5, 5], &mut out).is_err());

    let p = prune(113);
    let mut out2 = [ShapeRecipe::new(&[]); 2];
    p.output_shapes(&[3, 3], &mut out2).unwrap();
    let ins: [&[i64]; 2] = [&[1, 225, 256], &[1, 225, 225]];
    assert_eq!(out2[0].eval(&ins).unwrap(), vec![1, 113]);
    assert_eq!(out2[1].eval(&ins).unwrap(), vec![1, 225]);
    assert_eq!(
        out2[0].dims[1],
        DimExpr::constant(113),
        "K must be a build-time constant"
    );
}

#[test]
fn format_negotiation() {
    let m = Plugin::create(Op::MsDeformAttn, &[]).unwrap();
    for (vt, it) in [
        (dtype::FLOAT, dtype::INT64),
        (dtype::HALF, dtype::INT64),
        (dtype::HALF, dtype::INT32),
    ] {
        let (ins, outs) = msda_descs(vt, it);
        let all: Vec<TensorDesc> = ins.iter().chain(&outs).copied().collect();
        assert!((0..6).all(|p| m.supports(p, &all, 5)), "{vt} {it}");
        m.configure(&ins, &outs).unwrap();
    }
    let (ins, outs) = msda_descs(dtype::HALF, dtype::INT64);
    let mut all: Vec<TensorDesc> = ins.iter().chain(&outs).copied().collect();
    all[5].dtype = dtype::FLOAT; // output type must follow value
    assert!(!m.supports(5, &all, 5));
    all[2].dtype = dtype::INT32; // level_start must match spatial_shapes
    assert!(!m.supports(2, &all, 5));
    all[3].dtype = dtype::HALF; // locations stay f32
    assert!(!m.supports(3, &all, 5));
    all[0].format = 1; // non-linear layouts are refused
    assert!(!m.supports(0, &all, 5));
    assert!(!m.supports(6, &all, 5));

    let p = prune(2);
    let all = [
        TensorDesc::new(dtype::FLOAT, &[1, 4, 3]),
        TensorDesc::new(dtype::FLOAT, &[1, 4, 4]),
        TensorDesc::new(dtype::INT64, &[1, 2]),
        TensorDesc::new(dtype::FLOAT, &[1, 4]),
    ];
    assert!((0..4).all(|i| p.supports(i, &all, 2)));
    let mut bad = all;
    bad[2].dtype = dtype::INT32;
    assert!(!p.supports(2, &bad, 2));
    bad[0].dtype = dtype::HALF;
    assert!(!p.supports(0, &bad, 2));
}

#[test]
fn configure_checks_shapes() {
    let m = Plugin::create(Op::MsDeformAttn, &[]).unwrap();
    let (ins, mut outs) = msda_descs(dtype::FLOAT, dtype::INT64);
    // Build time: unknown extents are accepted.
    let mut dynamic = ins.clone();
    dynamic[3].dims[1] = -1;
    dynamic[4].dims[1] = -1;
    outs[0].dims[1] = -1;
    m.configure(&dynamic, &outs).unwrap();
    // Run time: a wrong output extent is refused.
    outs[0] = TensorDesc::new(dtype::FLOAT, &[1, 900, 128]);
    assert!(m
        .configure(&ins, &outs)
        .unwrap_err()
        .to_string()
        .contains("output 0"));
    // Inconsistent heads between value and locations.
    let (mut ins, outs) = msda_descs(dtype::FLOAT, dtype::INT64);
    ins[0].dims[2] = 4;
    assert!(m.configure(&ins, &outs).is_err());

    let p = prune(5);
    let ins = [
        TensorDesc::new(dtype::FLOAT, &[1, 4, 3]),
        TensorDesc::new(dtype::FLOAT, &[1, 4, 4]),
    ];
    let outs = [
        TensorDesc::new(dtype::INT64, &[1, 5]),
        TensorDesc::new(dtype::FLOAT, &[1, 4]),
    ];
    assert!(
        p.configure(&ins, &outs)
            .unwrap_err()
            .to_string()
            .contains("keep"),
        "K > N must be refused"
    );
    assert_eq!(p.workspace_size(&ins, &outs), 0);
    assert_eq!(Plugin::io_bytes(&ins).unwrap(), vec![48, 64]);
}

#[test]
fn query_prune_asks_for_the_spread_kernels_workspace() {
    let p = prune(450);
    let ins = [
        TensorDesc::new(dtype::FLOAT, &[2, 900, 256]),
        TensorDesc::new(dtype::FLOAT, &[2, 900, 900]),
    ];
    let outs = [
        TensorDesc::new(dtype::INT64, &[2, 450]),
        TensorDesc::new(dtype::FLOAT, &[2, 900]),
    ];
    p.configure(&ins, &outs).unwrap();
    // [B, 2, N] floats of per-query statistics.
    assert_eq!(p.workspace_size(&ins, &outs), 2 * 2 * 900 * 4);
    // Too few descriptors or shapes that do not fit: no workspace (configure reports why).
    assert_eq!(p.workspace_size(&ins[..1], &outs), 0);
    let bad = [ins[0], TensorDesc::new(dtype::FLOAT, &[2, 900, 899])];
    assert_eq!(p.workspace_size(&bad, &outs), 0);
    // MSDeformAttn keeps everything in shared memory.
    let (mi, mo) = msda_descs(dtype::HALF, dtype::INT64);
    let m = Plugin::create(Op::MsDeformAttn, &[]).unwrap();
    assert_eq!(m.workspace_size(&mi, &mo), 0);
}
