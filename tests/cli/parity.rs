//! End-to-end parity: raw frames + caption → every stage, against the official tiny fixture.

use crate::support::common;

use referdino::cli::parity::{parity, ParityArgs};

fn args(max_text: Option<usize>, decomposed: bool) -> ParityArgs {
    ParityArgs {
        dir: common::fixture("referdino-tiny"),
        dump: None,
        weights: None,
        max_text,
        decomposed,
    }
}

fn report(rows: &[referdino::cli::parity::Row]) {
    for r in rows {
        eprintln!(
            "{:<44} {:>10.3e} {:>10.3e} {}",
            r.key,
            r.error,
            r.tolerance,
            if r.ok { "ok" } else { "FAIL" }
        );
    }
}

/// Our custom-op kernels on the CPU backend: every stage key within tolerance, indices identical.
#[test]
fn tiny_fixture_all_stages_within_tolerance() {
    let rows = parity(&args(None, false)).unwrap();
    report(&rows);
    assert!(rows.len() >= 113, "only {} keys compared", rows.len());
    let bad: Vec<_> = rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.key.clone())
        .collect();
    assert!(bad.is_empty(), "outside tolerance: {bad:?}");
}

/// The trained synthetic model (the demo's): every stage the fixture keeps (70, from the text encoder
/// to the final masks) matches the official inference on a real clip and one of its expressions,
/// the binary masks exactly. Trained weights have decision margins far above float noise, unlike the
/// random tiny fixture's.
#[test]
fn trained_synth_model_all_stages_within_tolerance() {
    let mut a = args(None, false);
    a.dir = common::fixture("referdino-synth");
    let rows = parity(&a).unwrap();
    report(&rows);
    assert!(rows.len() >= 70, "only {} keys compared", rows.len());
    for must in [
        "text.encoded_text",
        "head.logits",
        "post.best_index",
        "post.masks",
    ] {
        assert!(rows.iter().any(|r| r.key == must), "{must} not compared");
    }
    let bad: Vec<_> = rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.key.clone())
        .collect();
    assert!(bad.is_empty(), "outside tolerance: {bad:?}");
    let masks = rows.iter().find(|r| r.key == "post.masks").unwrap();
    assert_eq!(masks.error, 0.0, "binary masks differ");
}

/// The decomposed custom ops (GridSample / TopK graph) give the same answer on the same backend.
#[test]
fn tiny_fixture_decomposed_custom_ops() {
    let rows = parity(&args(None, true)).unwrap();
    let bad: Vec<_> = rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.key.clone())
        .collect();
    assert!(bad.is_empty(), "outside tolerance: {bad:?}");
}

/// Text padded to 16 tokens (6 pads masked everywhere): every stage without a text axis still matches,
/// and the final masks are identical.
#[test]
fn tiny_fixture_with_padded_text() {
    let rows = parity(&args(Some(16), false)).unwrap();
    let text_axis = |k: &str| {
        k.starts_with("text.")
            || k.starts_with("encoder.text")
            || k.ends_with("fusion_l")
            || k.ends_with(".text")
            || k.contains("class_logits")
            || k == "encoder.memory_text"
            || k == "input.input_ids"
    };
    let bad: Vec<_> = rows
        .iter()
        .filter(|r| !(r.ok || (text_axis(&r.key) && r.error.is_infinite())))
        .map(|r| r.key.clone())
        .collect();
    assert!(
        bad.is_empty(),
        "outside tolerance with padded text: {bad:?}"
    );
    assert!(rows.iter().any(|r| r.key == "post.masks" && r.ok));
}
