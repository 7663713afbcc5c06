//! `trtexec` command lines equivalent to what `referdino build` does, so a build can be reproduced (or
//! debugged) with NVIDIA's own tool on the board.

use super::profile::{EngineKind, EngineProfile};
use std::path::Path;

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn arg(flag: &str, value: &Path) -> String {
    shell_quote(&format!("{flag}={}", value.display()))
}

/// The `trtexec` line that builds one engine like `referdino build` does: strongly typed (precision comes
/// from the ONNX), same workspace limit, same timing cache, our plugin library, DLA if the profile asks.
pub fn build_line(
    profile: &EngineProfile,
    kind: EngineKind,
    onnx_dir: &Path,
    out_dir: &Path,
    plugin_lib: &Path,
) -> String {
    let mut a = vec![
        "trtexec".to_string(),
        arg("--onnx", &onnx_dir.join(kind.onnx_file())),
        arg("--saveEngine", &out_dir.join(kind.plan_file())),
        "--stronglyTyped".to_string(),
        format!("--memPoolSize=workspace:{}M", profile.workspace_mib),
        arg("--timingCacheFile", &profile.timing_cache),
        arg("--staticPlugins", plugin_lib),
        "--profilingVerbosity=detailed".to_string(),
        arg(
            "--exportLayerInfo",
            &out_dir.join(format!("{}.layers.json", kind.as_str())),
        ),
    ];
    if let Some(level) = profile.optimization_level {
        a.push(format!("--builderOptimizationLevel={level}"));
    }
    if let Some(core) = profile.dla_core_for(kind) {
        a.push(format!("--useDLACore={core}"));
        a.push("--allowGPUFallback".to_string());
    }
    a.push("--skipInference".to_string());
    a.join(" ")
}

/// The `trtexec` line that benchmarks a built engine the way the runtime runs it (CUDA graph, device
/// buffers, no host copies).
pub fn bench_line(
    profile: &EngineProfile,
    kind: EngineKind,
    out_dir: &Path,
    plugin_lib: &Path,
) -> String {
    let mut a = vec![
        "trtexec".to_string(),
        arg("--loadEngine", &out_dir.join(kind.plan_file())),
        arg("--staticPlugins", plugin_lib),
        "--noDataTransfers".to_string(),
    ];
    if profile.cuda_graph {
        a.push("--useCudaGraph".to_string());
    }
    if let Some(core) = profile.dla_core_for(kind) {
        a.push(format!("--useDLACore={core}"));
    }
    a.join(" ")
}

/// Build and benchmark lines for every engine of a profile, as a shell snippet with a header comment.
pub fn script(
    profile: &EngineProfile,
    onnx_dir: &Path,
    out_dir: &Path,
    plugin_lib: &Path,
) -> String {
    let mut s = format!(
        "# equivalent trtexec commands for profile {} ({} {} {}, {}x{})\n",
        profile.name,
        profile.board.as_str(),
        profile.backbone.as_str(),
        profile.precision,
        profile.height,
        profile.width
    );
    for &k in &profile.engines {
        s.push_str(&build_line(profile, k, onnx_dir, out_dir, plugin_lib));
        s.push('\n');
    }
    for &k in &profile.engines {
        s.push_str(&bench_line(profile, k, out_dir, plugin_lib));
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--onnx=a/b.onnx"), "--onnx=a/b.onnx");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
