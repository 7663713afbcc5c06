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
/// from the ONNX), same workspace limit, same timing cache, our plugin library.
///
/// The library goes in with `--dynamicPlugins` (`IPluginRegistry::loadLibrary`: TensorRT calls its
/// `setLoggerFinder` and `getCreators` exports and registers the creators). `--staticPlugins` would only
/// `dlopen` it, which registers nothing for a library like ours, and the parser then fails with
/// "Plugin not found" on `MSDeformAttn`.
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
        arg("--dynamicPlugins", plugin_lib),
        "--profilingVerbosity=detailed".to_string(),
        arg(
            "--exportLayerInfo",
            &out_dir.join(format!("{}.layers.json", kind.as_str())),
        ),
    ];
    if let Some(level) = profile.optimization_level {
        a.push(format!("--builderOptimizationLevel={level}"));
    }
    a.push("--skipInference".to_string());
    a.join(" ")
}

/// The `trtexec` line that benchmarks a built engine the way the runtime runs it (CUDA graph, device
/// buffers, no host copies), with the plugin library loaded as for the build (`--dynamicPlugins`).
pub fn bench_line(
    profile: &EngineProfile,
    kind: EngineKind,
    out_dir: &Path,
    plugin_lib: &Path,
) -> String {
    let mut a = vec![
        "trtexec".to_string(),
        arg("--loadEngine", &out_dir.join(kind.plan_file())),
        arg("--dynamicPlugins", plugin_lib),
        "--noDataTransfers".to_string(),
    ];
    if profile.cuda_graph {
        a.push("--useCudaGraph".to_string());
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

    fn profile(extra: &str) -> EngineProfile {
        EngineProfile::from_toml(&format!(
            "name='t'\nboard='agx-orin'\nbackbone='swin-t'\nprecision='fp16'\nheight=360\n\
             width=640\nmax_text=32\nwindow=36\nworkspace_mib=1024\ntiming_cache='c'\n{extra}"
        ))
        .unwrap()
    }

    /// Every line loads the plugin library with `--dynamicPlugins` (TensorRT's `loadLibrary`, which
    /// calls our `getCreators`), never `--staticPlugins` (a bare `dlopen` that registers nothing).
    #[test]
    fn plugins_are_loaded_dynamically_everywhere() {
        for extra in ["", "cuda_graph=false\noptimization_level=5\n"] {
            let p = profile(extra);
            let s = script(&p, Path::new("x"), Path::new("y"), Path::new("/l/p.so"));
            let lines: Vec<&str> = s.lines().filter(|l| l.starts_with("trtexec")).collect();
            assert_eq!(lines.len(), 8, "{s}");
            for l in &lines {
                assert!(l.contains(" --dynamicPlugins=/l/p.so"), "{l}");
                assert!(!l.contains("staticPlugins"), "{l}");
                assert!(!l.contains("DLA"), "{l}");
            }
            assert!(!s.contains("--staticPlugins"), "{s}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--onnx=a/b.onnx"), "--onnx=a/b.onnx");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
