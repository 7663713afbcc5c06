//! `referdino bench` on the tiny fixture configuration, one timed run: the JSON report has every field,
//! sizes and latencies are positive, and the GMAC table equals an independent cost pass over the same
//! engines. No timing assertions (speed is measured by running the command, not by tests).

use crate::support::common;
use referdino::config::ModelConfig;
use referdino::graph::engines::{build_engines, ExportOptions, Geometry};
use referdino::onnx::cost::{cost_report_with_params, StageRule};
use referdino::weights::random::random_weights;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_referdino"));
    c.env("RUST_LOG", "warn");
    c
}

fn tiny_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/referdino-tiny/config.json")
        .display()
        .to_string()
}

const GEO: Geometry = Geometry {
    height: 70,
    width: 118,
    max_text: 16,
    window: 3,
};

#[test]
fn bench_tiny_json_report() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let onnx = dir.path().join("onnx");
    let out = bin()
        .args([
            "bench",
            "--config",
            &tiny_config(),
            "--height",
            &GEO.height.to_string(),
            "--width",
            &GEO.width.to_string(),
            "--max-text",
            &GEO.max_text.to_string(),
            "--window",
            &GEO.window.to_string(),
            "--threads",
            "2",
            "--iters",
            "1",
            "--warmup",
            "1",
            "--profile",
            "--onnx-dir",
            onnx.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "median ms",
        "per frame",
        "GMAC",
        "load average",
        "profile frame",
    ] {
        assert!(
            stdout.contains(needle),
            "stdout lacks {needle:?}:\n{stdout}"
        );
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["threads"], 2);
    assert_eq!(r["iters"], 1);
    assert_eq!(r["geometry"]["height"], GEO.height);
    assert_eq!(r["geometry"]["max_text"], GEO.max_text);
    // "the red ball rolling to the left." = [CLS] + 8 + [SEP].
    assert_eq!(r["prompt_tokens"], 10);
    for k in ["load_average_start", "load_average_end"] {
        let la = r[k].as_array().unwrap();
        assert_eq!(la.len(), 3);
        assert!(la.iter().all(|x| x.as_f64().unwrap() >= 0.0));
    }
    assert!(r["peak_rss_mib"].as_f64().unwrap() > 0.0);
    assert!(r["export_seconds"].as_f64().unwrap() > 0.0);
    assert!(r["mparams"].as_f64().unwrap() > 0.0);
    // Exported files: the four engines, sizes as on disk (--onnx-dir keeps them).
    let exported = r["exported"].as_array().unwrap();
    let names: Vec<&str> = exported
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["text", "frame", "temporal", "head"]);
    for e in exported {
        let name = e["name"].as_str().unwrap();
        let on_disk = std::fs::metadata(onnx.join(format!("{name}.onnx")))
            .unwrap()
            .len();
        assert_eq!(e["bytes"].as_u64().unwrap(), on_disk, "{name}");
        assert!(e["nodes"].as_u64().unwrap() > 0, "{name}");
    }
    // Timed engines: one run each, positive latency, statistics consistent.
    let engines = r["engines"].as_array().unwrap();
    assert_eq!(engines.len(), 4);
    for e in engines {
        let name = e["name"].as_str().unwrap();
        let l = &e["latency"];
        assert_eq!(l["runs_ms"].as_array().unwrap().len(), 1, "{name}");
        let (med, min, p90) = (
            l["median_ms"].as_f64().unwrap(),
            l["min_ms"].as_f64().unwrap(),
            l["p90_ms"].as_f64().unwrap(),
        );
        assert!(
            med > 0.0 && min > 0.0 && min <= med && med <= p90,
            "{name}: {l}"
        );
        assert!(e["load_seconds"].as_f64().unwrap() > 0.0);
        assert!(e["peak_rss_mib_after_load"].as_f64().unwrap() > 0.0);
        // Every input came from the prompt, the image or an upstream engine.
        assert_eq!(e["synthetic_inputs"].as_array().unwrap().len(), 0, "{name}");
        let prof = e["profile"].as_array().unwrap();
        assert!(!prof.is_empty(), "{name}");
    }
    let frame_prof = engines[1]["profile"].as_array().unwrap();
    assert!(
        frame_prof.iter().any(|o| o["op"] == "MSDeformAttn"),
        "our kernel runs in the frame engine: {frame_prof:?}"
    );
    let pf = &r["per_frame"];
    let parts = ["frame_ms", "temporal_ms", "head_ms"]
        .iter()
        .map(|k| pf[*k].as_f64().unwrap())
        .sum::<f64>();
    let text = pf["text_ms"].as_f64().unwrap();
    let total = pf["total_ms"].as_f64().unwrap();
    assert!((total - (parts + text / GEO.window as f64)).abs() < 1e-9 * total.max(1.0));
    assert!((pf["single_frame_clip_ms"].as_f64().unwrap() - (parts + text)).abs() < 1e-6);
    // No official figures for the tiny configuration; no spec column either.
    assert!(r["baseline"].is_null());
    // `all`: tract, then (with ONNX Runtime) both ONNX Runtime variants and auto's per-engine choice.
    let backends: Vec<(String, String, String)> = r["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let s = |k: &str| b[k].as_str().unwrap().to_string();
            (s("backend"), s("export"), s("plan"))
        })
        .collect();
    assert_eq!(backends[0].2, "text=cpu frame=cpu temporal=cpu head=cpu");
    if referdino::backend::ort_available() {
        let labels: Vec<String> = backends
            .iter()
            .map(|b| format!("{} {}", b.0, b.1))
            .collect();
        assert_eq!(
            labels,
            ["cpu native", "ort native", "ort decomposed", "auto native"]
        );
        assert_eq!(backends[3].2, "text=ort frame=ort temporal=ort head=ort");
        let auto = &r["backends"][3]["engines"];
        let ran: Vec<&str> = (0..4)
            .map(|i| auto[i]["backend"].as_str().unwrap())
            .collect();
        assert_eq!(ran, ["ort", "ort", "ort", "ort"]);
        assert!(r["backends"][3]["per_frame"]["total_ms"].as_f64().unwrap() > 0.0);
        assert!(
            stdout.contains("auto runs text=ort frame=ort temporal=ort head=ort"),
            "{stdout}"
        );
        // The faster pure backend of each engine, and whether auto's rule agrees (timing, so
        // only the shape is checked).
        let fastest = r["fastest"].as_array().unwrap();
        assert_eq!(fastest.len(), 4);
        for f in fastest {
            assert!(f["speedup"].as_f64().unwrap() >= 1.0, "{f}");
            assert!(
                ["cpu", "ort"].contains(&f["backend"].as_str().unwrap()),
                "{f}"
            );
        }
        assert!(stdout.contains("faster per engine here"), "{stdout}");
    } else {
        assert_eq!(backends.len(), 1, "{backends:?}");
        assert!(r["fastest"].as_array().unwrap().is_empty());
    }
    // GMAC per stage equals an independent cost pass over engines built in memory.
    let cfg = ModelConfig::from_file(Path::new(&tiny_config())).unwrap();
    let w = random_weights(&cfg, 0).unwrap();
    let sizes: HashMap<String, usize> = w.iter().map(|(k, v)| (k.clone(), v.numel())).collect();
    let graphs = build_engines(&w, &cfg, &GEO, &ExportOptions::default()).unwrap();
    let mut want: HashMap<String, u64> = HashMap::new();
    for g in graphs {
        let c =
            cost_report_with_params(&g.into_model(), &StageRule::spec_rows(), 1, &sizes).unwrap();
        for s in c.stages {
            *want.entry(s.name).or_default() += s.counts.macs;
        }
    }
    let rows = r["gmac"].as_array().unwrap();
    assert_eq!(rows.len(), want.len(), "{rows:?} vs {want:?}");
    let mut total_want = 0.0;
    for row in rows {
        let stage = row["stage"].as_str().unwrap();
        let ours = row["gmac"].as_f64().unwrap();
        let w = want[stage] as f64 / 1e9;
        total_want += w;
        assert!(
            (ours - w).abs() <= 1e-12 + 1e-9 * w,
            "{stage}: {ours} vs {w}"
        );
        assert!(row["spec_gmac"].is_null(), "{stage}");
    }
    assert!(total_want > 0.0);
    let total = r["gmac_total"].as_f64().unwrap();
    assert!((total - total_want).abs() <= 1e-9 * total_want);
}

#[test]
fn bench_rejects_bad_arguments() {
    for (args, needle) in [
        (vec!["--engines", "text,bogus"], "bogus"),
        (vec!["--max-text", "1"], "--max-text"),
        (vec!["--iters", "0"], "--iters"),
        (
            vec!["--backend", "frame=gpu"],
            "unknown backend `gpu` for the frame engine",
        ),
        (vec!["--backend", "bogus=cpu"], "unknown engine `bogus`"),
        (
            vec!["--backend", "tensorrt"],
            "bench times the host backends",
        ),
    ] {
        let mut c = bin();
        c.args(["bench", "--config", &tiny_config()]).args(&args);
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// `--backend` with a per-engine mix times that mix alone, each engine on its backend.
#[test]
fn bench_times_a_mix_alone() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("mix.json");
    let out = bin()
        .args(["bench", "--config", &tiny_config()])
        .args(["--height", &GEO.height.to_string()])
        .args(["--width", &GEO.width.to_string()])
        .args(["--max-text", &GEO.max_text.to_string()])
        .args(["--window", &GEO.window.to_string()])
        .args(["--threads", "1", "--iters", "1", "--warmup", "0"])
        .args(["--backend", "text=cpu,frame=ort", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !referdino::backend::ort_available() {
        assert!(!out.status.success());
        assert!(
            stderr.contains("the frame engine asks for ONNX Runtime"),
            "{stderr}"
        );
        return;
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let b = r["backends"].as_array().unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(
        b[0]["backend"],
        "text=cpu,frame=ort,temporal=auto,head=auto"
    );
    assert_eq!(b[0]["plan"], "text=cpu frame=ort temporal=ort head=ort");
    let ran: Vec<&str> = r["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["backend"].as_str().unwrap())
        .collect();
    assert_eq!(ran, ["cpu", "ort", "ort", "ort"]);
    assert!(
        stdout.contains("text=cpu frame=ort temporal=ort head=ort"),
        "{stdout}"
    );
}

#[test]
fn bench_objects_by_streams_json_report() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("multi.json");
    let out = bin()
        .args([
            "bench",
            "--config",
            &tiny_config(),
            "--height",
            &GEO.height.to_string(),
            "--width",
            &GEO.width.to_string(),
            "--max-text",
            &GEO.max_text.to_string(),
            "--window",
            &GEO.window.to_string(),
            "--threads",
            "2",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--objects",
            "1,2",
            "--streams",
            "1,2",
            "--image-batch",
            "2",
            "--unsplit",
            "--json",
            json.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("objects x streams"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let f = |k: &str| r[k].as_f64().unwrap();
    // Splitting the frame engine adds no work: image + cross at B = 1 is the frame engine.
    let split = f("gmac_image") + f("gmac_cross");
    assert!(
        (split - f("gmac_frame")).abs() < 0.01 * f("gmac_frame"),
        "{split} vs {}",
        f("gmac_frame")
    );
    let cells = r["cells"].as_array().unwrap();
    let rows: Vec<(String, String, u64, u64)> = cells
        .iter()
        .map(|c| {
            (
                c["backend"].as_str().unwrap().to_string(),
                c["path"].as_str().unwrap().to_string(),
                c["objects"].as_u64().unwrap(),
                c["streams"].as_u64().unwrap(),
            )
        })
        .collect();
    // `--backend all` (the default): tract, and the default backend beside it when ONNX Runtime loads.
    let backends: &[&str] = if referdino::backend::ort_available() {
        &["cpu", "auto"]
    } else {
        &["cpu"]
    };
    let mut want = Vec::new();
    for b in backends {
        for p in ["split", "split-ib2"] {
            for (o, s) in [(1, 1), (2, 1), (1, 2), (2, 2)] {
                want.push((b.to_string(), p.to_string(), o, s));
            }
        }
        want.push((b.to_string(), "unsplit".to_string(), 1, 1));
        want.push((b.to_string(), "unsplit".to_string(), 2, 1));
    }
    assert_eq!(rows, want);
    assert!(cells.iter().all(|c| c["round_ms"].as_f64().unwrap() > 0.0));
    // Each backend's first cell is its own 1 x 1 reference.
    assert_eq!(r["base_cell"], serde_json::json!([1, 1]));
    assert!(stdout.contains("x(1x1)"), "{stdout}");
    for b in backends {
        let first = cells.iter().find(|c| c["backend"] == *b).unwrap();
        assert_eq!(first["vs_one"].as_f64().unwrap(), 1.0, "{b}");
    }
}

#[test]
fn grid_flags_are_checked_before_anything_is_built() {
    for (args, want) in [
        (
            &["--objects", "1", "--height", "50000", "--width", "50000"][..],
            "--height/--width",
        ),
        (&["--streams", "1000"][..], "--streams"),
        (
            &["--objects", "1", "--image-batch", "1000"][..],
            "--image-batch",
        ),
        (&["--objects", "1", "--threads", "100000"][..], "--threads"),
        (&["--objects", "1", "--window", "0"][..], "--window"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_referdino"))
            .arg("bench")
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
    }
}

/// `bench --int8-self`: a table calibrated on the bench's own image and prompt, the INT8 engines timed
/// beside the FP32 ones on each backend timed (a column with export `int8`: tract's, then ONNX
/// Runtime's).
#[cfg(feature = "ort")]
#[test]
fn bench_int8_self_times_the_int8_engines() {
    let tiny = |extra: &[&str]| {
        let (h, w) = (GEO.height.to_string(), GEO.width.to_string());
        let (lm, win) = (GEO.max_text.to_string(), GEO.window.to_string());
        bin()
            .args(["bench", "--config", &tiny_config()])
            .args([
                "--height",
                &h,
                "--width",
                &w,
                "--max-text",
                &lm,
                "--window",
                &win,
            ])
            .args([
                "--threads",
                "2",
                "--iters",
                "1",
                "--warmup",
                "1",
                "--int8-self",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = tiny(&["--backend", "cpu"]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{so}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(so.contains("cpu (int8)"), "{so}");
    if !common::have_ort("bench --int8-self") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = tiny(&["--backend", "all", "--json", json.to_str().unwrap()]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{so}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(so.contains("ort (int8)"), "{so}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let int8: Vec<&serde_json::Value> = r["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["export"] == "int8")
        .collect();
    let names: Vec<&str> = int8
        .iter()
        .map(|b| b["backend"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cpu", "ort"], "{r}");
    for b in &int8 {
        for e in b["engines"].as_array().unwrap() {
            assert!(e["latency"]["median_ms"].as_f64().unwrap() > 0.0, "{e}");
        }
    }
    // Both backends timed the INT8 engines: the faster one per engine against auto's INT8 rule
    // (timing, so only the shape and the rule's side are checked).
    let rule = referdino::backend::kind::auto_plan(referdino::backend::kind::Precision::Int8);
    let fastest = r["fastest_int8"].as_array().unwrap();
    assert_eq!(fastest.len(), 4, "{r}");
    for f in fastest {
        let (engine, backend) = (
            f["engine"].as_str().unwrap(),
            f["backend"].as_str().unwrap(),
        );
        assert!(f["speedup"].as_f64().unwrap() >= 1.0, "{f}");
        let agrees = rule.of(engine).map(|k| k.name()) == Some(backend);
        assert_eq!(f["auto_agrees"].as_bool(), Some(agrees), "{f}");
    }
    assert!(so.contains("faster per engine here (INT8 engines)"), "{so}");
}
