//! The `tokenize` and `inspect` subcommands, run as a user would.

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_referdino"));
    c.env("RUST_LOG", "warn");
    c
}

fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
        .display()
        .to_string()
}

#[test]
fn tokenize_json_matches_fixture_case() {
    let out = bin()
        .args([
            "tokenize",
            "--prompt",
            "The dog on the LEFT, jumping over the fence!",
            "--raw",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tokenizer/cases.json")).unwrap())
            .unwrap();
    let c = &cases["cases"][1];
    for k in [
        "input_ids",
        "position_ids",
        "text_self_attention_mask",
        "tokens",
        "attention_mask",
        "token_type_ids",
    ] {
        assert_eq!(v[k], c[k], "{k}");
    }
    assert_eq!(v["caption"], c["caption_fed"]);
}

#[test]
fn tokenize_demo_normalisation_and_errors() {
    let out = bin()
        .args(["tokenize", "--prompt", "  A person.   ", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["caption"], "a person.");
    let out = bin()
        .args(["tokenize", "--prompt", "   "])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("prompt is empty") && !err.contains("panicked"),
        "{err}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let bad = std::ffi::OsStr::from_bytes(b"a \xff cat");
        let out = bin()
            .arg("tokenize")
            .arg("--prompt")
            .arg(bad)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not valid UTF-8") && !err.contains("panicked"),
            "{err}"
        );
    }
}

#[test]
fn tokenize_max_len_is_range_checked() {
    // The mask is max_len² bools: 100000 used to abort on a 10 GB allocation.
    let out = bin()
        .args(["tokenize", "--prompt", "a cat", "--max-len", "100000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--max-len 100000: must be between 3 and 256"),
        "{err}"
    );
}

#[test]
fn eval_takes_config_and_documents_weights_as_a_checkpoint() {
    let out = bin().args(["eval", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--config"), "{help}");
    assert!(!help.contains("engine folder"), "{help}");
}

#[test]
fn inspect_reports_modules_lora_and_config() {
    for w in [
        "referdino-tiny/weights.safetensors",
        "referdino-tiny/checkpoint.pth",
    ] {
        let out = bin()
            .args([
                "inspect",
                "--weights",
                &fixture(w),
                "--config",
                &fixture("referdino-tiny/config.json"),
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["keys"], 698);
        assert_eq!(v["parameters"], 3_501_499);
        assert!(v["lora"]["pairs"].as_u64().unwrap() > 0);
        let configs = v["configs"].as_array().unwrap();
        assert_eq!(configs.len(), 3);
        assert_eq!(configs[0]["matches"], false, "not Swin-T");
        assert_eq!(configs[1]["matches"], false, "not Swin-B");
        assert_eq!(configs[2]["matches"], true, "the fixture config");
        let mods: Vec<&str> = v["modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["module"].as_str().unwrap())
            .collect();
        for m in [
            "backbone",
            "bert",
            "transformer.encoder",
            "transformer.decoder",
            "mask_decoder",
            "temporal_decoder",
            "pixel_decoder",
        ] {
            assert!(mods.contains(&m), "{m} in {mods:?}");
        }
    }
    let out = bin()
        .args([
            "inspect",
            "--weights",
            &fixture("referdino-tiny/weights.safetensors"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("LoRA") && text.contains("does not match official Swin-T"),
        "{text}"
    );
}

#[test]
fn inspect_bad_file_is_a_clean_error() {
    let out = bin()
        .args(["inspect", "--weights", &fixture("tokenizer/vocab.txt")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unrecognised file format") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn inspect_can_write_a_folded_safetensors_copy() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("tiny.safetensors");
    let out = bin()
        .args([
            "inspect",
            "--weights",
            &fixture("referdino-tiny/checkpoint.pth"),
            "--save-safetensors",
        ])
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bin()
        .args([
            "inspect",
            "--json",
            "--config",
            &fixture("referdino-tiny/config.json"),
            "--weights",
        ])
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["lora"]["pairs"], 0);
    assert_eq!(v["configs"][2]["matches"], true);
}
