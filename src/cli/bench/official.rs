//! Ratios against the official code: its figures read from what the official-code harness
//! (`bench_official.py`) wrote on this machine, refused when written on another CPU model.

use crate::graph::engines::names;
use anyhow::{bail, Context};
use std::path::Path;

use super::machine::cpu_model;
use super::report::{BackendBench, OfficialCompare, OfficialRatio};

/// Reads the official-code harness JSON (a list of cases, or one case) and matches its `swint` case run
/// with `threads` threads to our backends. Errors when the file was written on another CPU model or
/// holds no such case.
pub fn official_compare(
    path: &Path,
    threads: usize,
    backends: &[BackendBench],
) -> anyhow::Result<OfficialCompare> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let cases: Vec<&serde_json::Value> = match &v {
        serde_json::Value::Array(a) => a.iter().collect(),
        o => vec![o],
    };
    let ours = cpu_model();
    let swint: Vec<&serde_json::Value> = cases
        .iter()
        .copied()
        .filter(|c| c["case"] == "swint")
        .collect();
    if swint.is_empty() {
        bail!(
            "{}: no `swint` case (run bench_official.py --cases swint)",
            path.display()
        );
    }
    for c in &swint {
        let theirs = c["environment"]["cpu_model"].as_str().unwrap_or("(none)");
        if theirs != ours {
            bail!(
                "{} was measured on another CPU ({theirs}); this machine is {ours}: a ratio needs both \
                 sides measured on the same machine, so re-run bench_official.py here",
                path.display()
            );
        }
    }
    let Some(case) = swint
        .iter()
        .find(|c| c["threads"].as_u64() == Some(threads as u64))
    else {
        bail!(
            "{}: no `swint` case with {threads} threads (it has {:?}); run bench_official.py --threads {threads}",
            path.display(),
            swint.iter().map(|c| c["threads"].as_u64()).collect::<Vec<_>>()
        );
    };
    let runs = case["runs"].as_array().cloned().unwrap_or_default();
    let clips: Vec<(usize, f64)> = runs
        .iter()
        .filter_map(|r| {
            Some((
                r["T"].as_u64()? as usize,
                r["per_frame_s"]["median"].as_f64()? * 1e3,
            ))
        })
        .collect();
    let one = runs.iter().find(|r| r["T"].as_u64() == Some(1));
    let stage = |keys: &[&str]| -> Option<f64> {
        let st = &one?["stages_median_s"];
        let mut sum = 0.0;
        for k in keys {
            sum += st[*k].as_f64()?;
        }
        Some(sum * 1e3)
    };
    let single = one
        .and_then(|r| r["total_s"]["median"].as_f64())
        .map(|x| x * 1e3);
    let text_ms = stage(&["bert", "feat_map"]);
    let frame_ms = stage(&["backbone", "input_proj", "transformer", "pixel_decoder_fpn"]);
    let peak_rss_mib = runs
        .iter()
        .filter_map(|r| {
            let m = &r["memory"];
            m["peak_rss_during_warmup_and_runs_mib"]
                .as_f64()
                .or_else(|| m["peak_rss_process_mib"].as_f64())
        })
        .reduce(f64::max);
    let med = |b: &BackendBench, n: &str| {
        b.engines
            .iter()
            .find(|e| e.name == n)
            .map(|e| e.latency.median_ms)
    };
    let ratios = backends
        .iter()
        .map(|b| OfficialRatio {
            backend: format!("{} {}", b.backend, b.export),
            single_frame_clip: single
                .zip(b.per_frame.as_ref())
                .map(|(o, pf)| o / pf.single_frame_clip_ms),
            text: text_ms.zip(med(b, names::TEXT)).map(|(o, x)| o / x),
            frame: frame_ms.zip(med(b, names::FRAME)).map(|(o, x)| o / x),
        })
        .collect();
    Ok(OfficialCompare {
        file: path.display().to_string(),
        cpu_model: ours,
        torch: case["environment"]["torch"]
            .as_str()
            .unwrap_or("?")
            .to_string(),
        threads,
        clips,
        single_frame_clip_ms: single,
        text_ms,
        frame_ms,
        peak_rss_mib,
        ratios,
    })
}
