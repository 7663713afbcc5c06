//! Bad input never panics: truncated/corrupted checkpoints, zips that are not PyTorch checkpoints,
//! pickles that try to call code, odd tensor layouts, bad prompts. Also exercises the `.pth`
//! reader on hand-built pickles (offsets, strides, shared storages, f16/bf16/f64).

use super::pth::{le_f32, state_dict, zero_stride_decoy, zero_stride_decoy_pkl, zip_of, Pkl};
use half::{bf16, f16};
use referdino::text::Tokenizer;
use referdino::weights::Checkpoint;
use std::io::Write;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/referdino-tiny")
        .join(name)
}

fn write_tmp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn load_err(p: &Path) -> String {
    match Checkpoint::load(p) {
        Ok(_) => panic!("{} loaded but should not", p.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn hand_built_pth_offsets_strides_sharing_and_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    // Storage 0: 12 f32 = 0..12. Views: a contiguous [2,3] at offset 6; its transpose [3,2]
    // (strides (1,3)); a bias sharing the storage at offset 2; and an exact duplicate view.
    let s0: Vec<f32> = (0..12).map(|x| x as f32).collect();
    let s1 = [f16::from_f32(1.5), f16::from_f32(-2.0)];
    let s2 = [
        bf16::from_f32(0.25),
        bf16::from_f32(3.0),
        bf16::from_f32(-8.0),
    ];
    let s3: Vec<u8> = [1.0f64, -0.5]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let mut p = Pkl::new();
    p.raw(b"}(")
        .s("epoch")
        .int(3)
        .s("model_state_dict")
        .raw(b"ccollections\nOrderedDict\n)R(");
    p.s("module.a.weight")
        .tensor("FloatStorage", "0", 12, 6, &[2, 3], &[3, 1]);
    p.s("module.a_t.weight")
        .tensor("FloatStorage", "0", 12, 6, &[3, 2], &[1, 3]);
    p.s("module.a.bias")
        .tensor("FloatStorage", "0", 12, 2, &[2], &[1]);
    p.s("module.b.weight")
        .tensor("FloatStorage", "0", 12, 6, &[2, 3], &[3, 1]);
    p.s("module.h").tensor("HalfStorage", "1", 2, 0, &[2], &[1]);
    p.s("module.bf")
        .tensor("BFloat16Storage", "2", 3, 1, &[2], &[1]);
    p.s("module.d")
        .tensor("DoubleStorage", "3", 2, 0, &[1, 2], &[2, 1]);
    p.s("module.scalar")
        .tensor("FloatStorage", "0", 12, 11, &[], &[]);
    p.raw(b"uu.");
    let s1b: Vec<u8> = s1.iter().flat_map(|x| x.to_le_bytes()).collect();
    let s2b: Vec<u8> = s2.iter().flat_map(|x| x.to_le_bytes()).collect();
    let z = zip_of(&[
        ("archive/data.pkl", &p.0),
        ("archive/byteorder", b"little"),
        ("archive/data/0", &le_f32(&s0)),
        ("archive/data/1", &s1b),
        ("archive/data/2", &s2b),
        ("archive/data/3", &s3),
        ("archive/version", b"3\n"),
    ]);
    let path = write_tmp(&dir, "weights.bin", &z);
    let ck = Checkpoint::load(&path).unwrap();
    let f = |k: &str| ck.get(k).unwrap().f32s().unwrap().to_vec();
    assert_eq!(f("a.weight"), vec![6., 7., 8., 9., 10., 11.]);
    assert_eq!(ck.get("a_t.weight").unwrap().shape(), &[3, 2]);
    assert_eq!(f("a_t.weight"), vec![6., 9., 7., 10., 8., 11.]);
    assert_eq!(f("a.bias"), vec![2., 3.]);
    assert_eq!(f("b.weight"), f("a.weight"));
    assert_eq!(ck.alias_target("b.weight"), Some("a.weight"));
    assert_eq!(f("h"), vec![1.5, -2.0]);
    assert_eq!(f("bf"), vec![3.0, -8.0]);
    assert_eq!(f("d"), vec![1.0, -0.5]);
    assert_eq!(f("scalar"), vec![11.0]);
    let dtypes: Vec<&str> = ck.raw_entries().iter().map(|e| e.dtype.as_str()).collect();
    assert!(
        dtypes.contains(&"float16") && dtypes.contains(&"bfloat16") && dtypes.contains(&"float64")
    );
    // A missing key is named.
    let e = ck.get("nope.weight").unwrap_err().to_string();
    assert!(e.contains("nope.weight"), "{e}");
}

#[test]
fn bare_state_dict_and_big_endian() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pkl::new();
    p.raw(b"}(")
        .s("w")
        .tensor("FloatStorage", "0", 2, 0, &[2], &[1])
        .raw(b"u.");
    let be: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
    let z = zip_of(&[
        ("x/data.pkl", &p.0),
        ("x/byteorder", b"big"),
        ("x/data/0", &be),
    ]);
    let ck = Checkpoint::load(&write_tmp(&dir, "a.pth", &z)).unwrap();
    assert_eq!(ck.get("w").unwrap().f32s().unwrap(), &[1.0, 2.0]);
    // The GroundingDINO layout: {'model': state_dict}, with DataParallel's `module.` prefix.
    let mut p = Pkl::new();
    p.raw(b"}(")
        .s("model")
        .raw(b"}(")
        .s("module.w")
        .tensor("FloatStorage", "0", 2, 1, &[1], &[1])
        .raw(b"uu.");
    let z = zip_of(&[("y/data.pkl", &p.0), ("y/data/0", &le_f32(&[4.0, 5.0]))]);
    let ck = Checkpoint::load(&write_tmp(&dir, "g.pth", &z)).unwrap();
    assert_eq!(ck.keys(), vec!["w"]);
    assert_eq!(ck.get("w").unwrap().f32s().unwrap(), &[5.0]);
}

#[test]
fn half_precision_safetensors_load_as_f32() {
    use safetensors::{serialize, tensor::TensorView, Dtype};
    let dir = tempfile::tempdir().unwrap();
    let h: Vec<u8> = [0.5f32, -1.25, 3.0]
        .iter()
        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
        .collect();
    let b: Vec<u8> = [2.0f32, -0.125]
        .iter()
        .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
        .collect();
    let views = vec![
        (
            "x.weight",
            TensorView::new(Dtype::F16, vec![3], &h).unwrap(),
        ),
        (
            "y.weight",
            TensorView::new(Dtype::BF16, vec![1, 2], &b).unwrap(),
        ),
    ];
    let bytes = serialize(views, None).unwrap();
    let ck = Checkpoint::load(&write_tmp(&dir, "half.bin", &bytes)).unwrap();
    assert_eq!(
        ck.get("x.weight").unwrap().f32s().unwrap(),
        &[0.5, -1.25, 3.0]
    );
    assert_eq!(ck.get("y.weight").unwrap().f32s().unwrap(), &[2.0, -0.125]);
    let dt: Vec<&str> = ck.raw_entries().iter().map(|e| e.dtype.as_str()).collect();
    assert!(
        dt.contains(&"float16") && dt.contains(&"bfloat16"),
        "{dt:?}"
    );
}

#[test]
fn view_outside_its_storage_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pkl::new();
    p.raw(b"}(")
        .s("w")
        .tensor("FloatStorage", "0", 4, 2, &[2, 2], &[2, 1])
        .raw(b"u.");
    let z = zip_of(&[("a/data.pkl", &p.0), ("a/data/0", &le_f32(&[0.0; 4]))]);
    let e = load_err(&write_tmp(&dir, "a.pth", &z));
    assert!(
        e.contains("w: view") && e.contains("4-element storage"),
        "{e}"
    );
    // Storage record shorter than its element count.
    let mut p = Pkl::new();
    p.raw(b"}(")
        .s("w")
        .tensor("FloatStorage", "0", 4, 0, &[4], &[1])
        .raw(b"u.");
    let z = zip_of(&[("a/data.pkl", &p.0), ("a/data/0", &le_f32(&[0.0; 3]))]);
    let e = load_err(&write_tmp(&dir, "b.pth", &z));
    assert!(e.contains("truncated") && e.contains("w [4]"), "{e}");
    // Storage record missing: the message names the tensor and its shape, not only the record.
    let z = zip_of(&[("a/data.pkl", &p.0)]);
    let e = load_err(&write_tmp(&dir, "c.pth", &z));
    assert!(e.contains("a/data/0") && e.contains("w [4]"), "{e}");
}

#[test]
fn one_storage_key_with_two_sizes_or_types_is_refused_naming_both_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let data = le_f32(&[1.0, 2.0, 3.0, 4.0]);
    // Same key, another element count: used to panic slicing 4000 bytes out of 16.
    let pkl = state_dict(&[
        ("a.weight", "FloatStorage", "0", 4, 0, &[4], &[1]),
        ("b.weight", "FloatStorage", "0", 1000, 0, &[1000], &[1]),
    ]);
    let z = zip_of(&[("archive/data.pkl", &pkl), ("archive/data/0", &data)]);
    let e = load_err(&write_tmp(&dir, "n.pth", &z));
    assert!(
        e.contains("archive/data/0") && e.contains("a.weight [4]") && e.contains("b.weight [1000]"),
        "{e}"
    );
    // Same key, another type.
    let pkl = state_dict(&[
        ("a.weight", "FloatStorage", "0", 4, 0, &[4], &[1]),
        ("b.weight", "DoubleStorage", "0", 4, 1, &[3], &[1]),
    ]);
    let z = zip_of(&[("archive/data.pkl", &pkl), ("archive/data/0", &data)]);
    let e = load_err(&write_tmp(&dir, "t.pth", &z));
    assert!(
        e.contains("float32") && e.contains("float64") && e.contains("b.weight [3]"),
        "{e}"
    );
}

#[test]
fn zero_stride_views_are_bounded_but_expanded_buffers_load() {
    let dir = tempfile::tempdir().unwrap();
    // A 1-element storage viewed as 8192x8192 with zero strides: 256 MiB from 4 bytes.
    let pkl = state_dict(&[("w", "FloatStorage", "0", 1, 0, &[8192, 8192], &[0, 0])]);
    let z = zip_of(&[
        ("archive/data.pkl", &pkl),
        ("archive/data/0", &le_f32(&[1.0])),
    ]);
    let e = load_err(&write_tmp(&dir, "bomb.pth", &z));
    assert!(e.contains("w: view") && e.contains("zero-stride"), "{e}");
    // An expanded buffer (torch.arange(4).expand(3, 4)), as torch.save writes it, still loads.
    let pkl = state_dict(&[("pos", "FloatStorage", "0", 4, 0, &[3, 4], &[0, 1])]);
    let z = zip_of(&[
        ("archive/data.pkl", &pkl),
        ("archive/data/0", &le_f32(&[0.0, 1.0, 2.0, 3.0])),
    ]);
    let ck = Checkpoint::load(&write_tmp(&dir, "exp.pth", &z)).unwrap();
    let v = ck.get("pos").unwrap().f32s().unwrap();
    assert_eq!(&v[..8], &[0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0]);
}

/// The view budget counts the storages the file holds, not those its pickle declares: a "decoy"
/// declared as 2^26 elements (256 MiB) with no record would have funded an 8192x8192 zero-stride
/// view of a 1-element storage (256 MiB). Every storage record is checked before any tensor is
/// built, so the load fails on the missing one, naming it (tests/alloc bounds what it allocates).
#[test]
fn absent_storages_fund_no_zero_stride_view() {
    let dir = tempfile::tempdir().unwrap();
    let z = zero_stride_decoy();
    let e = load_err(&write_tmp(&dir, "decoy.pth", &z));
    assert!(
        e.contains("zip record archive/data/1") && e.contains("storage of decoy [67108864]"),
        "{e}"
    );
    // With the decoy's record present but short, the same: its bytes are what counts.
    let z = zip_of(&[
        ("archive/data.pkl", &zero_stride_decoy_pkl()),
        ("archive/data/0", &le_f32(&[1.0])),
        ("archive/data/1", &le_f32(&[0.0; 16])),
    ]);
    let e = load_err(&write_tmp(&dir, "decoy2.pth", &z));
    assert!(
        e.contains("decoy [67108864]") && e.contains("has 64 bytes") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn storage_records_inflating_past_their_size_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pkl = state_dict(&[("w", "FloatStorage", "0", 4, 0, &[4], &[1])]);
    // A deflated record of 1 MiB of zeros for a 16-byte storage (a zip bomb in miniature).
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    w.start_file("archive/data.pkl", stored).unwrap();
    w.write_all(&pkl).unwrap();
    w.start_file("archive/data/0", deflated).unwrap();
    w.write_all(&vec![0u8; 1 << 20]).unwrap();
    let z = w.finish().unwrap().into_inner();
    let e = load_err(&write_tmp(&dir, "zb.pth", &z));
    assert!(
        e.contains("archive/data/0") && e.contains("more than the 16 bytes") && e.contains("w [4]"),
        "{e}"
    );
}

#[test]
fn pickle_work_is_bounded() {
    use referdino::weights::pickle::{unpickle, unpickle_limited};
    let limit = |e: String| e.contains("limit of") && e.contains("units of work");
    // (c) An arena of None objects.
    let mut p = vec![0x80, 2];
    p.extend(std::iter::repeat_n(b'N', 2000));
    p.push(b'.');
    assert!(unpickle_limited(&p, 10_000).is_ok());
    let e = unpickle_limited(&p, 1000).unwrap_err().to_string();
    assert!(limit(e.clone()), "{e}");
    // (b) One shared list of 1000 pairs reduced by OrderedDict 50 times: 50k pairs copied from a
    // pickle of a few kilobytes.
    let mut p = vec![0x80, 2, b']', b'q', 0, b'('];
    for _ in 0..1000 {
        p.extend_from_slice(b"NN\x86");
    }
    p.extend_from_slice(b"e");
    for _ in 0..50 {
        p.extend_from_slice(b"ccollections\nOrderedDict\nh\x00\x85R0");
    }
    p.push(b'.');
    assert!(unpickle_limited(&p, 100_000).is_ok());
    let e = unpickle_limited(&p, 20_000).unwrap_err().to_string();
    assert!(limit(e.clone()), "{e}");
    // (d) The stack grown by DUP.
    let mut p = vec![0x80, 2, b'N'];
    p.extend(std::iter::repeat_n(b'2', 2000));
    p.push(b'.');
    assert!(unpickle(&p).is_ok());
    let e = unpickle_limited(&p, 1000).unwrap_err().to_string();
    assert!(limit(e.clone()), "{e}");
    // ... and through MARK and memo entries (MEMOIZE).
    let mut p = vec![0x80, 2, b'N'];
    p.extend(std::iter::repeat_n(0x94, 3000));
    p.extend(std::iter::repeat_n(b'(', 3000));
    p.push(b'.');
    let e = unpickle_limited(&p, 4000).unwrap_err().to_string();
    assert!(limit(e.clone()), "{e}");
}

#[test]
fn pickles_that_call_code_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // os.system('echo pwned')
    let mut p = Pkl::new();
    p.raw(b"cos\nsystem\n").s("echo pwned").raw(b"\x85R.");
    let z = zip_of(&[("archive/data.pkl", &p.0)]);
    let e = load_err(&write_tmp(&dir, "evil.pth", &z));
    assert!(
        e.contains("global `os.system`") && e.contains("not allowed"),
        "{e}"
    );
    // builtins.eval through STACK_GLOBAL (protocol 4).
    let mut p = Pkl::new();
    p.s("builtins").s("eval").raw(b"\x93.");
    let z = zip_of(&[("archive/data.pkl", &p.0)]);
    let e = load_err(&write_tmp(&dir, "evil2.pth", &z));
    assert!(e.contains("builtins.eval"), "{e}");
    // Code in a nested module, and a subprocess, are refused by their module.
    for (module, name) in [
        ("os.path", "join"),
        ("subprocess", "Popen"),
        ("posix", "system"),
    ] {
        let mut pkl = b"\x80\x02c".to_vec();
        pkl.extend_from_slice(format!("{module}\n{name}\n)R.").as_bytes());
        let z = zip_of(&[("archive/data.pkl", &pkl)]);
        let e = load_err(&write_tmp(&dir, "evil5.pth", &z));
        assert!(
            e.contains(&format!("global `{module}.{name}`")) && e.contains("names code"),
            "{e}"
        );
    }
    // An opcode outside the allowed set (INST).
    let z = zip_of(&[("archive/data.pkl", b"\x80\x02(ios\nsystem\n.")]);
    let e = load_err(&write_tmp(&dir, "evil3.pth", &z));
    assert!(e.contains("opcode 0x69 (INST)"), "{e}");
    // REDUCE on an allowed storage class is still refused.
    let z = zip_of(&[("archive/data.pkl", b"\x80\x02ctorch\nFloatStorage\n)R.")]);
    let e = load_err(&write_tmp(&dir, "evil4.pth", &z));
    assert!(e.contains("not allowed"), "{e}");
}

#[test]
fn zip_without_data_pkl() {
    let dir = tempfile::tempdir().unwrap();
    let z = zip_of(&[("docs/readme.txt", b"hello")]);
    let e = load_err(&write_tmp(&dir, "x.pth", &z));
    assert!(e.contains("no <name>/data.pkl"), "{e}");
}

#[test]
fn truncated_and_corrupted_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let st = std::fs::read(fixture("weights.safetensors")).unwrap();
    let pth = std::fs::read(fixture("checkpoint.pth")).unwrap();
    // Truncations at several points, both formats.
    for frac in [0.0001, 0.01, 0.5, 0.999] {
        let n = ((st.len() as f64) * frac) as usize;
        let e = load_err(&write_tmp(&dir, "t.safetensors", &st[..n.max(1)]));
        assert!(!e.is_empty());
        let n = ((pth.len() as f64) * frac) as usize;
        let e = load_err(&write_tmp(&dir, "t.pth", &pth[..n.max(1)]));
        assert!(!e.is_empty());
    }
    // A byte flipped inside a stored tensor record: the zip CRC catches it.
    let mut bad = pth.clone();
    let name = b"checkpoint/data/1";
    let at = bad.windows(name.len()).position(|w| w == name).unwrap();
    // Past the local header's name and its alignment padding, well inside the 128 KiB record.
    bad[at + name.len() + 1000] ^= 0x55;
    let e = load_err(&write_tmp(&dir, "flip.pth", &bad));
    assert!(e.contains("checkpoint"), "{e}");
    // Corrupted safetensors header JSON.
    let mut bad = st.clone();
    bad[9] = b'}';
    let e = load_err(&write_tmp(&dir, "hdr.safetensors", &bad));
    assert!(e.contains("safetensors"), "{e}");
    // Empty, random and legacy-pickle files.
    assert!(load_err(&write_tmp(&dir, "empty.pth", b"")).contains("empty"));
    assert!(load_err(&write_tmp(&dir, "rand.bin", &[7u8; 64])).contains("unrecognised file format"));
    assert!(load_err(&write_tmp(
        &dir,
        "old.pth",
        b"\x80\x02\x8a\x0alz\xfc\x9cF\xf9 j\xa8P\x19."
    ))
    .contains("legacy"));
    // A missing file names its path.
    let e = load_err(&dir.path().join("nope.safetensors"));
    assert!(e.contains("nope.safetensors"), "{e}");
    // A directory is named as one (it used to be "No such device", from mapping it).
    let e = load_err(dir.path());
    assert!(e.contains("is a directory"), "{e}");
}

#[test]
fn bad_prompts() {
    let tok = Tokenizer::bundled().unwrap();
    // Empty / blank prompt: the user-facing entry refuses it clearly.
    for p in ["", "   \t\n"] {
        let e = tok.encode_prompt(p, 256).unwrap_err().to_string();
        assert!(e.contains("prompt is empty"), "{e}");
    }
    // 10,000 characters: cut to 256 tokens, flagged.
    let long: String = "the person on the left ".repeat(435);
    assert!(long.len() >= 10_000);
    let enc = tok.encode_prompt(&long, 256).unwrap();
    assert!(enc.truncated);
    assert_eq!(enc.len, 256);
    assert_eq!(enc.self_attention_mask.len(), 256 * 256);
    let one_word = "x".repeat(10_000);
    let enc = tok.encode(&one_word, 256).unwrap();
    assert_eq!(enc.tokens, ["[CLS]", "[UNK]", ".", "[SEP]"]);
    // Invalid UTF-8.
    let e = tok
        .encode_bytes(b"a \xff\xfe cat", 256)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not valid UTF-8") && e.contains("byte 2"), "{e}");
    // max_len 0.
    assert!(tok.encode("a cat", 0).is_err());
}

#[test]
fn bad_tokenizer_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = Tokenizer::from_file(&write_tmp(&dir, "tok.json", b"{not json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a valid tokenizer.json"), "{e}");
}

/// The common failures are typed: callers can match on them without parsing messages, and the messages
/// stay as explicit as before.
#[test]
fn common_errors_are_typed() {
    use referdino::onnx::Weights;
    use referdino::tensor::{Data, Tensor};
    use referdino::Error;
    let e = Tensor::new(vec![2, 3], Data::F32(vec![0.0; 5])).unwrap_err();
    match &e {
        Error::ShapeMismatch {
            expected, found, ..
        } => assert_eq!((expected.as_str(), found.as_str()), ("6", "5")),
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    let w: std::collections::HashMap<String, Tensor> = Default::default();
    match w.tensor("transformer.level_embed") {
        Err(Error::MissingTensor { name, .. }) => assert_eq!(name, "transformer.level_embed"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    let mut pre = referdino::camera::Preprocessor::new(64, 48, 32);
    let mut out = vec![0f32; pre.out_len()];
    let e = pre.run(&[0u8; 10], &mut out).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("64x48x3 = 9216"), "{e}");
}

#[test]
fn foreign_objects_stay_inert_and_quantized_tensors_are_named_with_a_way_out() {
    use referdino::weights::pickle::{unpickle, Obj};
    // A training checkpoint's argparse.Namespace (protocol 2: NEWOBJ, then BUILD of its attributes)
    // is kept as an opaque object of that class: nothing is instantiated.
    let pk = unpickle(
        b"\x80\x02cargparse\nNamespace\n)\x81}X\x02\x00\x00\x00lrG?\xe0\x00\x00\x00\x00\x00\x00sb.",
    )
    .unwrap();
    assert_eq!(pk.get(pk.root), &Obj::Opaque("argparse.Namespace".into()));
    // A numpy scalar: REDUCE of an opaque callable gives an opaque object of it.
    let pk = unpickle(b"\x80\x02cnumpy.core.multiarray\nscalar\nN\x85R.").unwrap();
    assert_eq!(
        pk.get(pk.root),
        &Obj::Opaque("numpy.core.multiarray.scalar".into())
    );
    // A file that is nothing but such an object holds no state dict: said so.
    let dir = tempfile::tempdir().unwrap();
    let z = zip_of(&[("archive/data.pkl", b"\x80\x02cargparse\nNamespace\n)\x81.")]);
    let e = load_err(&write_tmp(&dir, "args.pth", &z));
    assert!(e.contains("not a dict"), "{e}");
    // A quantized tensor is called one.
    let e = unpickle(b"\x80\x02ctorch._utils\n_rebuild_qtensor\n)R.")
        .unwrap_err()
        .to_string();
    assert!(e.contains("quantized tensors are not supported"), "{e}");
}
