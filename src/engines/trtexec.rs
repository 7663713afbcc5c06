//! `trtexec` command lines equivalent to what `referdino build` does, so a build can be reproduced (or
//! debugged) with NVIDIA's own tool on the board.

use super::profile::{BatchRange, EngineKind, EngineProfile};
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
    build_args(
        profile,
        kind.as_str(),
        onnx_dir,
        out_dir,
        plugin_lib,
        Vec::new(),
    )
}

/// The build flags shared by every engine (`extra` goes before the optimization level).
fn build_args(
    profile: &EngineProfile,
    stem: &str,
    onnx_dir: &Path,
    out_dir: &Path,
    plugin_lib: &Path,
    extra: Vec<String>,
) -> String {
    let mut a = vec![
        "trtexec".to_string(),
        arg("--onnx", &onnx_dir.join(format!("{stem}.onnx"))),
        arg("--saveEngine", &out_dir.join(format!("{stem}.plan"))),
        "--stronglyTyped".to_string(),
        format!("--memPoolSize=workspace:{}M", profile.workspace_mib),
        arg("--timingCacheFile", &profile.timing_cache),
        arg("--dynamicPlugins", plugin_lib),
        "--profilingVerbosity=detailed".to_string(),
        arg(
            "--exportLayerInfo",
            &out_dir.join(format!("{stem}.layers.json")),
        ),
    ];
    a.extend(extra);
    if let Some(level) = profile.optimization_level {
        a.push(format!("--builderOptimizationLevel={level}"));
    }
    a.push("--skipInference".to_string());
    a.join(" ")
}

/// One input of an object engine: its name and dims, `None` for the symbolic object axis.
pub type DynamicInput = (String, Vec<Option<usize>>);

/// `--minShapes=a:1x10x256,b:1x10` style value: every input at batch `b`.
fn shapes(flag: &str, inputs: &[DynamicInput], b: usize) -> String {
    let items: Vec<String> = inputs
        .iter()
        .map(|(name, dims)| {
            let d: Vec<String> = dims.iter().map(|x| x.unwrap_or(b).to_string()).collect();
            format!("{name}:{}", d.join("x"))
        })
        .collect();
    shell_quote(&format!("{flag}={}", items.join(",")))
}

/// The `trtexec` line for an object engine (`objects/<stem>.onnx`): [`build_line`]'s flags plus the
/// optimization profile `referdino build` gives it, as `--minShapes` / `--optShapes` / `--maxShapes`
/// over the inputs with the object axis (static inputs need no shape flags).
pub fn object_build_line(
    profile: &EngineProfile,
    stem: &str,
    onnx_dir: &Path,
    out_dir: &Path,
    plugin_lib: &Path,
    inputs: &[DynamicInput],
    range: BatchRange,
) -> String {
    let dynamic: Vec<DynamicInput> = inputs
        .iter()
        .filter(|(_, d)| d.iter().any(|x| x.is_none()))
        .cloned()
        .collect();
    let mut extra = Vec::new();
    if !dynamic.is_empty() {
        extra.push(shapes("--minShapes", &dynamic, range.min));
        extra.push(shapes("--optShapes", &dynamic, range.opt));
        extra.push(shapes("--maxShapes", &dynamic, range.max));
    }
    build_args(profile, stem, onnx_dir, out_dir, plugin_lib, extra)
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

    #[test]
    fn object_lines_carry_the_optimization_profile() {
        let p = profile("objects = { min = 1, opt = 2, max = 8 }\n");
        let r = p.objects.unwrap();
        let inputs = vec![
            (
                "image_tokens".to_string(),
                vec![Some(1), Some(1360), Some(256)],
            ),
            ("encoded_text".to_string(), vec![None, Some(32), Some(256)]),
            ("text_token_mask".to_string(), vec![None, Some(32)]),
        ];
        let l = object_build_line(
            &p,
            "cross",
            Path::new("x/objects"),
            Path::new("y/objects"),
            Path::new("/l/p.so"),
            &inputs,
            r,
        );
        assert!(
            l.starts_with("trtexec --onnx=x/objects/cross.onnx --saveEngine=y/objects/cross.plan "),
            "{l}"
        );
        assert!(
            l.contains(" --minShapes=encoded_text:1x32x256,text_token_mask:1x32 "),
            "{l}"
        );
        assert!(
            l.contains(" --optShapes=encoded_text:2x32x256,text_token_mask:2x32 "),
            "{l}"
        );
        assert!(
            l.contains(" --maxShapes=encoded_text:8x32x256,text_token_mask:8x32 "),
            "{l}"
        );
        assert!(
            !l.contains("image_tokens"),
            "static inputs need no shapes: {l}"
        );
        assert!(l.contains("--dynamicPlugins=/l/p.so"), "{l}");
        // A static engine of the set (image) gets no shape flags.
        let l = object_build_line(
            &p,
            "image",
            Path::new("x"),
            Path::new("y"),
            Path::new("p"),
            &inputs[..1],
            r,
        );
        assert!(!l.contains("Shapes"), "{l}");
    }

    #[test]
    fn object_ranges_are_checked() {
        for bad in [
            "objects = { min = 0, opt = 1, max = 2 }",
            "objects = { min = 2, opt = 1, max = 4 }",
            "objects = { min = 1, opt = 5, max = 4 }",
            "objects = { min = 1, opt = 1, max = 65 }",
        ] {
            let e = EngineProfile::from_toml(&format!(
                "name='t'\nboard='agx-orin'\nbackbone='swin-t'\nprecision='fp16'\nheight=360\n\
                 width=640\nmax_text=32\nwindow=36\nworkspace_mib=1024\ntiming_cache='c'\n{bad}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains("min <= opt <= max"), "{bad}: {e}");
        }
        // INT8 object sets take the whole-frame table (tests/quant/int8_build.rs).
        let p = EngineProfile::from_toml(
            "name='t'\nboard='agx-orin'\nbackbone='swin-t'\nprecision='int8'\nheight=360\n\
             width=640\nmax_text=32\nwindow=36\nworkspace_mib=1024\ntiming_cache='c'\n\
             scales='s.json'\nobjects = { min = 1, opt = 2, max = 4 }\n",
        )
        .unwrap();
        assert_eq!(p.objects.map(|r| (r.min, r.opt, r.max)), Some((1, 2, 4)));
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
