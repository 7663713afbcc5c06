//! A backend per engine (`--backend text=ort,frame=ort,temporal=cpu,head=cpu`): parsing of the mix,
//! good and bad, and (feature `ort`, with the library) mixed engine sets on the tiny fixture against
//! the official reference outputs and the pure backends.
//!
//! ONNX Runtime comes from `ORT_DYLIB_PATH` or the `onnxruntime` Python wheel; the parts that need it
//! are skipped with a message where it is missing, unless `REFERDINO_REQUIRE_ORACLES=1` (CI). The
//! fallback without the library is checked in `ort.rs` (a child process with `ORT_DYLIB_PATH` at a
//! missing file).

use referdino::backend::kind::{
    auto_plan, BackendKind, EngineChoice, EngineMix, EnginePlan, HostKind, Precision, AUTO_PLAN,
    AUTO_PLAN_INT8_AMX, AUTO_PLAN_INT8_VNNI,
};
use referdino::ops::qlinear::QKernel;

use EngineChoice::{Auto, Cpu, Ort};

fn mix(s: &str) -> EngineMix {
    match BackendKind::parse(s).unwrap() {
        BackendKind::Mix(m) => m,
        other => panic!("{s}: parsed as {other:?}"),
    }
}

fn parse_err(s: &str) -> String {
    BackendKind::parse(s).unwrap_err().to_string()
}

#[test]
fn pure_names_still_parse() {
    for (s, k) in [
        ("cpu", BackendKind::Cpu),
        ("tract", BackendKind::Cpu),
        ("ORT", BackendKind::Ort),
        ("onnxruntime", BackendKind::Ort),
        ("tensorrt", BackendKind::TensorRt),
        ("trt", BackendKind::TensorRt),
        ("auto", BackendKind::Auto),
    ] {
        assert_eq!(BackendKind::parse(s).unwrap(), k, "{s}");
        assert_eq!(BackendKind::parse(&k.to_string()).unwrap(), k, "{s}");
    }
}

#[test]
fn mix_parses_in_any_order_and_case_and_fills_auto() {
    assert_eq!(
        mix("text=ort,frame=ort,temporal=cpu,head=cpu").0,
        [Ort, Ort, Cpu, Cpu]
    );
    assert_eq!(
        mix(" head = tract , Frame=ONNXRUNTIME,temporal=auto").0,
        [Auto, Ort, Auto, Cpu]
    );
    assert_eq!(mix("frame=cpu").0, [Auto, Cpu, Auto, Auto]);
    // The canonical form names every engine and reads back to the same mix.
    let m = mix("head=cpu,frame=ort");
    assert_eq!(m.to_string(), "text=auto,frame=ort,temporal=auto,head=cpu");
    assert_eq!(
        BackendKind::parse(&m.to_string()).unwrap(),
        BackendKind::Mix(m)
    );
    assert_eq!(BackendKind::Mix(m).name(), "mix");
    // The halves of the split frame engine follow `frame`.
    assert_eq!(m.of("image"), Some(Ort));
    assert_eq!(m.of("cross"), Some(Ort));
    assert_eq!(m.of("head"), Some(Cpu));
    assert_eq!(m.of("bogus"), None);
}

#[test]
fn bad_mixes_are_clear_errors() {
    for (s, needles) in [
        (
            "text=ort,bogus=cpu",
            &[
                "unknown engine `bogus`",
                "text`, `frame`, `temporal` or `head`",
            ][..],
        ),
        ("image=ort", &["unknown engine `image`"][..]),
        (
            "frame=gpu",
            &[
                "unknown backend `gpu` for the frame engine",
                "`cpu`, `ort` or `auto`",
            ][..],
        ),
        (
            "frame=tensorrt",
            &["does not mix", "--backend tensorrt"][..],
        ),
        ("frame=", &["no backend named for the frame engine"][..]),
        ("frame=ort,frame=cpu", &["frame engine is named twice"][..]),
        ("frame=ort,cpu", &["`cpu` is not ENGINE=BACKEND"][..]),
        ("frame=ort,,head=cpu", &["`` is not ENGINE=BACKEND"][..]),
        (
            "gpu",
            &[
                "unknown backend `gpu`",
                "expected `cpu`, `ort`, `tensorrt` or `auto`",
                "per-engine mix",
            ][..],
        ),
    ] {
        let err = parse_err(s);
        for n in needles {
            assert!(err.contains(n), "{s}: {err:?} lacks {n:?}");
        }
    }
}

#[test]
fn plans_of_pure_kinds_and_the_auto_rule() {
    // tract alone never needs ONNX Runtime.
    let (plan, why) = BackendKind::Cpu.plan().unwrap();
    assert_eq!(plan, EnginePlan::uniform(HostKind::Cpu));
    assert!(why.is_none());
    let (plan, _) = BackendKind::parse("text=cpu,frame=cpu,temporal=cpu,head=cpu")
        .unwrap()
        .plan()
        .unwrap();
    assert_eq!(plan, EnginePlan::uniform(HostKind::Cpu));
    assert!(BackendKind::TensorRt.plan().is_err());
    // The measured rule: ONNX Runtime for the text and frame engines, tract for temporal and head.
    assert_eq!(
        AUTO_PLAN.to_string(),
        "text=ort frame=ort temporal=ort head=ort"
    );
    assert_eq!(AUTO_PLAN.of("image"), Some(HostKind::Ort));
    // INT8 engines where tract's integer products run on AMX: tract for frame and temporal.
    assert_eq!(
        AUTO_PLAN_INT8_AMX.to_string(),
        "text=ort frame=cpu temporal=cpu head=ort"
    );
    // On AVX-512 VNNI without AMX: tract for all four.
    assert_eq!(
        AUTO_PLAN_INT8_VNNI.to_string(),
        "text=cpu frame=cpu temporal=cpu head=cpu"
    );
    assert_eq!(auto_plan(Precision::Fp32), AUTO_PLAN);
    let int8 = match QKernel::process() {
        QKernel::Amx => AUTO_PLAN_INT8_AMX,
        QKernel::Vnni512 => AUTO_PLAN_INT8_VNNI,
        _ => AUTO_PLAN,
    };
    assert_eq!(
        auto_plan(Precision::Int8),
        int8,
        "kernel {}",
        QKernel::process().name()
    );
    // tract alone stays tract whatever the precision.
    let (plan, _) = BackendKind::Cpu.plan_for(Precision::Int8).unwrap();
    assert_eq!(plan, EnginePlan::uniform(HostKind::Cpu));
    // `auto` and mixes choose per engine: the one-backend entry point refuses them.
    let err = BackendKind::Auto.host_backend(Some(1)).unwrap_err();
    assert!(err.to_string().contains("host_backends"), "{err}");
}

#[cfg(feature = "ort")]
mod with_ort {
    use super::*;
    use crate::support::common;
    use referdino::backend::ort::ort_available;
    use referdino::cli::parity::{parity_on, ParityArgs};
    use referdino::tensor::{Data, Tensor};
    use std::collections::BTreeMap;

    fn have_ort(test: &str) -> bool {
        if std::env::var_os("REFERDINO_ORT_FALLBACK_CHILD").is_some() {
            return false;
        }
        if ort_available() {
            return true;
        }
        let msg = format!(
            "{test}: ONNX Runtime library not found (set ORT_DYLIB_PATH or `pip install onnxruntime`)"
        );
        assert!(
            std::env::var("REFERDINO_REQUIRE_ORACLES").as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("skipped: {msg}");
        false
    }

    fn args() -> ParityArgs {
        ParityArgs {
            dir: common::fixture("referdino-tiny"),
            dump: None,
            weights: None,
            max_text: None,
            decomposed: false,
        }
    }

    /// Every stage within the parity tolerance of the official outputs; returns the produced stages.
    fn parity(kind: BackendKind) -> BTreeMap<String, Tensor> {
        let (rows, produced) = parity_on(&args(), kind, Some(2)).unwrap();
        assert!(
            rows.len() >= 113,
            "{kind}: only {} keys compared",
            rows.len()
        );
        let bad: Vec<_> = rows
            .iter()
            .filter(|r| !r.ok)
            .map(|r| format!("{} {:.3e} > {:.3e}", r.key, r.error, r.tolerance))
            .collect();
        assert!(bad.is_empty(), "{kind} outside tolerance: {bad:?}");
        produced
    }

    fn ones(t: &Tensor) -> usize {
        match t.data() {
            Data::Bool(v) => v.iter().filter(|&&x| x).count(),
            Data::U8(v) => v.iter().filter(|&&x| x != 0).count(),
            Data::F32(v) => v.iter().filter(|&&x| x > 0.5).count(),
            other => panic!("post.masks of type {other:?}"),
        }
    }

    /// A mixed engine set (either way round: text and frame on ONNX Runtime with temporal and head
    /// on tract, and the reverse) runs the tiny fixture within the official tolerances and gives the
    /// final masks of both pure backends.
    #[test]
    fn mixed_sets_match_reference_and_pure_backends() {
        if !have_ort("mixed_sets_match_reference_and_pure_backends") {
            return;
        }
        let tract = parity(BackendKind::Cpu);
        let ort = parity(BackendKind::Ort);
        let want = &tract["post.masks"];
        assert!(ones(want) > 0, "empty masks prove nothing");
        assert_eq!(ort["post.masks"].data(), want.data(), "pure ORT vs tract");
        for spec in [
            "text=ort,frame=ort,temporal=cpu,head=cpu",
            "text=cpu,frame=cpu,temporal=ort,head=ort",
        ] {
            let kind = BackendKind::parse(spec).unwrap();
            let got = parity(kind);
            let m = &got["post.masks"];
            assert_eq!(m.shape(), want.shape(), "{spec}");
            assert_eq!(
                m.data(),
                want.data(),
                "{spec}: masks differ from the pure backends"
            );
        }
    }

    /// With the library, `auto` is the measured rule and a mix's `auto` engines follow it.
    #[test]
    fn auto_plan_with_ort() {
        if !have_ort("auto_plan_with_ort") {
            return;
        }
        let b = BackendKind::Auto.host_backends(Some(1)).unwrap();
        assert_eq!(b.plan(), AUTO_PLAN);
        assert_eq!(b.threads(), 1);
        assert_eq!(b.for_engine("frame").unwrap().name(), "ort");
        assert_eq!(b.for_engine("cross").unwrap().name(), "ort");
        assert_eq!(b.for_engine("temporal").unwrap().name(), "ort");
        assert!(b.for_engine("bogus").is_err());
        let (plan, why) = BackendKind::parse("frame=cpu").unwrap().plan().unwrap();
        assert_eq!(
            plan,
            EnginePlan([HostKind::Ort, HostKind::Cpu, HostKind::Ort, HostKind::Ort])
        );
        assert!(why.is_none());
        // INT8 engines: the INT8 rule (tract for frame and temporal on AMX), a mix's named engines
        // as named.
        let b = BackendKind::Auto
            .host_backends_for(Some(1), Precision::Int8)
            .unwrap();
        assert_eq!(b.plan(), auto_plan(Precision::Int8));
        let (plan, _) = BackendKind::parse("temporal=ort")
            .unwrap()
            .plan_for(Precision::Int8)
            .unwrap();
        let mut want = auto_plan(Precision::Int8);
        want.0[2] = HostKind::Ort;
        assert_eq!(plan, want);
    }
}
