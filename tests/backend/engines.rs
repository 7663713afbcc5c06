//! Engine profiles, trtexec command lines, build reports and plan sidecars (src/engines): everything
//! around TensorRT that can run without it.

use referdino::backend::TensorSpec;
use referdino::engines::plan_info::{check_specs, PlanInfo, TrtVersion};
use referdino::engines::profile::{load_dir, Backbone, Board, EngineKind, EngineProfile};
use referdino::engines::report::{human_bytes, BuildReport, EngineReport};
use referdino::engines::trtexec;
use referdino::quant::policy::policy_markdown;
use referdino::quant::Precision;
use referdino::tensor::DType;
use std::collections::BTreeMap;
use std::path::Path;

fn profiles_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("engines/profiles")
}

#[test]
fn every_shipped_profile_loads_and_the_matrix_is_complete() {
    let all = load_dir(&profiles_dir()).unwrap();
    assert_eq!(all.len(), 12, "3 boards × 2 backbones × 2 precisions");
    for (path, p) in &all {
        assert_eq!(
            path.file_stem().unwrap().to_str().unwrap(),
            p.name,
            "name matches file"
        );
        assert_eq!((p.height, p.width), (360, 640));
        assert_eq!(p.engines, EngineKind::ALL.to_vec());
        assert_eq!(p.precision == Precision::Int8, p.scales.is_some());
        assert!(p.timing_cache.to_string_lossy().contains(p.board.as_str()));
    }
    for board in [Board::AgxOrin, Board::OrinNx, Board::OrinNano] {
        for bb in [Backbone::SwinT, Backbone::SwinB] {
            for prec in [Precision::Fp16, Precision::Int8] {
                assert!(
                    all.iter()
                        .any(|(_, p)| p.board == board && p.backbone == bb && p.precision == prec),
                    "missing {board:?} {bb:?} {prec:?}"
                );
            }
        }
    }
}

fn agx() -> EngineProfile {
    EngineProfile::load(&profiles_dir().join("agx-orin-swin-t-fp16.toml")).unwrap()
}

#[test]
fn trtexec_build_line_is_exactly_what_the_builder_does() {
    let p = agx();
    let line = trtexec::build_line(
        &p,
        EngineKind::Frame,
        Path::new("exp"),
        Path::new("out"),
        Path::new("/opt/rd/libreferdino_plugins.so"),
    );
    assert_eq!(
        line,
        "trtexec --onnx=exp/frame.onnx --saveEngine=out/frame.plan --stronglyTyped \
         --memPoolSize=workspace:4096M --timingCacheFile=engines/build/timing-agx-orin.cache \
         --dynamicPlugins=/opt/rd/libreferdino_plugins.so --profilingVerbosity=detailed \
         --exportLayerInfo=out/frame.layers.json --skipInference"
    );
    let bench = trtexec::bench_line(&p, EngineKind::Head, Path::new("out"), Path::new("p.so"));
    assert_eq!(
        bench,
        "trtexec --loadEngine=out/head.plan --dynamicPlugins=p.so --noDataTransfers --useCudaGraph"
    );
}

#[test]
fn no_dla_in_profiles_and_paths_are_quoted() {
    let p = agx();
    let out = Path::new("my engines");
    let frame = trtexec::build_line(&p, EngineKind::Frame, out, out, Path::new("p.so"));
    assert!(frame.contains("'--onnx=my engines/frame.onnx'"), "{frame}");
    let script = trtexec::script(&p, out, out, Path::new("p.so"));
    assert_eq!(
        script.lines().filter(|l| l.starts_with("trtexec")).count(),
        8
    );
    assert!(!script.contains("DLA"), "{script}");
    assert!(!script.contains("--staticPlugins"), "{script}");
    // A profile with the `[dla]` table of earlier versions is refused with the reason.
    let text = std::fs::read_to_string(profiles_dir().join("agx-orin-swin-t-fp16.toml")).unwrap();
    let e = EngineProfile::from_toml(&format!("{text}\n[dla]\ncore = 0\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(referdino::engines::NO_DLA) && e.contains("agx-orin-swin-t-fp16"),
        "{e}"
    );
}

#[test]
fn build_report_table() {
    let mut layers = BTreeMap::new();
    layers.insert("fp16".to_string(), 300);
    layers.insert("fp32".to_string(), 120);
    layers.insert("int32".to_string(), 4);
    let r = BuildReport {
        profile: "agx-orin-swin-t-fp16".into(),
        tensorrt: "10.3.0".into(),
        device: "Orin (sm_87)".into(),
        engines: vec![
            EngineReport {
                name: "text".into(),
                onnx_bytes: 3 * 1024 * 1024 / 2,
                plan_bytes: 1024 * 1024,
                build_secs: 12.34,
                layers: BTreeMap::from([("fp32".to_string(), 10)]),
            },
            EngineReport {
                name: "frame".into(),
                onnx_bytes: 700 * 1024 * 1024,
                plan_bytes: 400 * 1024 * 1024,
                build_secs: 300.0,
                layers,
            },
        ],
    };
    let expected = "\
build report: profile agx-orin-swin-t-fp16, TensorRT 10.3.0, Orin (sm_87)
engine      layers   fp32   fp16   int8  int32       onnx       plan     build
text            10     10      0      0      0    1.5 MiB    1.0 MiB     12.3s
frame          424    120    300      0      4  700.0 MiB  400.0 MiB    300.0s
total: 401.0 MiB of plans in 312.3s";
    assert_eq!(r.to_string(), expected);
    let back: BuildReport = serde_json::from_str(&r.to_json().unwrap()).unwrap();
    assert_eq!(back, r);
    assert_eq!(human_bytes(1023), "1023 B");
    assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
}

fn spec(name: &str, dtype: DType, shape: &[usize]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
    }
}

#[test]
fn plan_sidecar_rejects_other_tensorrt_or_gpu() {
    let info = PlanInfo {
        engine: "frame".into(),
        profile: "agx-orin-swin-t-fp16".into(),
        tensorrt: TrtVersion::new(10, 3, 0, 30),
        device: "Orin".into(),
        compute_capability: (8, 7),
        inputs: vec![],
        outputs: vec![],
        onnx_crc32: None,
    };
    info.check_compatible(TrtVersion::new(10, 3, 0, 30), (8, 7))
        .unwrap();
    // Plans need the exact version: another patch or build of 10.3 is refused too.
    for other in [TrtVersion::new(10, 3, 0, 31), TrtVersion::new(10, 3, 1, 30)] {
        assert!(info.check_compatible(other, (8, 7)).is_err(), "{other}");
    }
    let e = info
        .check_compatible(TrtVersion::new(11, 4, 0, 106), (8, 7))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("TensorRT 10.3.0.30") && e.contains("TensorRT 11.4.0.106"),
        "{e}"
    );
    let e = info
        .check_compatible(TrtVersion::new(10, 3, 0, 30), (8, 9))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sm_87") && e.contains("sm_89") && e.contains("rebuild"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("frame.plan");
    assert!(PlanInfo::load_for(&plan).unwrap().is_none());
    info.save_for(&plan).unwrap();
    assert_eq!(
        PlanInfo::path_for(&plan),
        dir.path().join("frame.plan.json")
    );
    assert_eq!(PlanInfo::load_for(&plan).unwrap().unwrap(), info);
}

#[test]
fn tensor_name_and_shape_mismatches_are_named() {
    let exp_in = [
        spec("image", DType::F32, &[1, 3, 360, 640]),
        spec("text", DType::F32, &[1, 32, 256]),
    ];
    let exp_out = [spec("objects", DType::F32, &[1, 15, 256])];
    check_specs("frame", &exp_in, &exp_out, &exp_in, &exp_out).unwrap();
    let act_in = [
        spec("image", DType::F16, &[1, 3, 360, 640]),
        spec("txt", DType::F32, &[1, 32, 256]),
    ];
    let act_out = [spec("objects", DType::F32, &[1, 16, 256])];
    let e = check_specs("frame", &exp_in, &exp_out, &act_in, &act_out)
        .unwrap_err()
        .to_string();
    for needle in [
        "input image is F16",
        "missing input text",
        "unexpected input txt",
        "output objects is F32 [1, 16, 256], expected F32 [1, 15, 256]",
    ] {
        assert!(e.contains(needle), "{needle:?} not in {e}");
    }
}

#[test]
fn precision_policy_is_documented_in_one_table() {
    let md = policy_markdown();
    for needle in [
        "LayerNormalization",
        "Softmax",
        "MSDeformAttn",
        "QueryPrune",
        "TopK",
        "output `boxes`",
        "output `refs`",
        "MatMul, Conv",
    ] {
        assert!(md.contains(needle), "{needle} missing from policy table");
    }
}
