//! The streaming session on the tiny fixture:
//! - streamed frame by frame and then re-scored with `finalize`, a clip of T ≤ W frames gives exactly
//!   the offline session's result (and the official fixture's masks and selected track);
//! - the live, causal per-frame output is compared with the offline one and the difference printed
//!   (J&F agreement through `eval::agreement`), for W = T and for windows shorter than the clip;
//! - prompt cache, prompt reset, clear, errors, and the zero-copy mask-ring write.

use crate::support::common;

use std::collections::BTreeMap;

use referdino::config::ModelConfig;
use referdino::eval::agreement::{compare_runs, MaskSequence};
use referdino::graph::engines::{ExportOptions, Geometry};
use referdino::output::ring::{MaskRing, MaskRingReader, ReadOutcome, RingGeometry};
use referdino::pipeline::post::Selection;
use referdino::pipeline::session::{EngineSet, Session};
use referdino::pipeline::stream::{StreamConfig, StreamSession};
use referdino::pipeline::timing::Stage;
use referdino::tensor::Data;
use referdino::text::Tokenizer;
use referdino::weights::Checkpoint;

const PROMPT: &str = "the red ball rolling to the left";
const MAX_TEXT: usize = 16;

struct Fixture {
    ck: Checkpoint,
    cfg: ModelConfig,
    frames: Vec<Vec<f32>>,
    h: usize,
    w: usize,
}

fn fixture() -> Fixture {
    let ck = Checkpoint::load(&common::fixture("referdino-tiny/weights.safetensors")).unwrap();
    let cfg = ModelConfig::from_file(&common::fixture("referdino-tiny/config.json")).unwrap();
    let inputs = common::tiny_inputs();
    let clip = &inputs["frames_uint8"];
    let (h, w) = (clip.shape()[1], clip.shape()[2]);
    let frames = referdino::cli::parity::normalize_frames(clip).unwrap();
    Fixture {
        ck,
        cfg,
        frames,
        h,
        w,
    }
}

fn engines(f: &Fixture, window: usize) -> EngineSet {
    let geo = Geometry {
        height: f.h,
        width: f.w,
        max_text: MAX_TEXT,
        window,
    };
    EngineSet::cpu(&f.ck, &f.cfg, &geo, &ExportOptions::default()).unwrap()
}

fn stream(f: &Fixture, window: usize, keep_clip: bool) -> StreamSession {
    let cfg = StreamConfig {
        keep_clip,
        ..StreamConfig::for_model(&f.cfg)
    };
    StreamSession::new(engines(f, window), cfg, (f.h, f.w)).unwrap()
}

fn offline(f: &Fixture) -> referdino::pipeline::session::VideoResult {
    let mut s = Session::new(engines(f, f.frames.len()), f.cfg.tracking_alpha).unwrap();
    let cap = Tokenizer::bundled()
        .unwrap()
        .encode_prompt(PROMPT, f.cfg.max_text_len)
        .unwrap();
    s.run_video(&cap, &f.frames, (f.h, f.w), Selection::Single)
        .unwrap()
}

/// Streams every frame; returns the live 0/1 masks.
fn run_live(s: &mut StreamSession, f: &Fixture) -> Vec<Vec<u8>> {
    s.set_prompt(PROMPT).unwrap();
    let mut out = Vec::new();
    for img in &f.frames {
        let mut m = vec![0u8; f.h * f.w];
        let r = s.step_image(img, &mut m).unwrap();
        assert!(r.active && !r.tracks.is_empty());
        out.push(m.iter().map(|&v| (v != 0) as u8).collect());
    }
    out
}

fn iou(a: &[u8], b: &[u8]) -> f64 {
    let i = a
        .iter()
        .zip(b)
        .filter(|(x, y)| **x != 0 && **y != 0)
        .count();
    let u = a
        .iter()
        .zip(b)
        .filter(|(x, y)| **x != 0 || **y != 0)
        .count();
    if u == 0 {
        1.0
    } else {
        i as f64 / u as f64
    }
}

fn agreement(reference: &[Vec<u8>], candidate: &[Vec<u8>], f: &Fixture) -> (f64, f64, f64) {
    let seq = |m: &[Vec<u8>]| {
        BTreeMap::from([(
            "clip".to_string(),
            MaskSequence {
                width: f.w,
                height: f.h,
                masks: m.to_vec(),
            },
        )])
    };
    let r = compare_runs(&seq(reference), &seq(candidate)).unwrap();
    (r.overall.J_mean, r.overall.F_mean, r.overall.JF_mean)
}

#[test]
fn finalize_reproduces_offline_and_causal_difference_is_reported() {
    let f = fixture();
    let t = f.frames.len();
    let off = offline(&f);
    let mut s = stream(&f, t, true);
    let live = run_live(&mut s, &f);
    let fin = s.finalize(Selection::Single).unwrap();

    // Streaming-finalize == offline: same track, scores within float noise, identical masks.
    assert_eq!(fin.chosen, off.chosen);
    for (a, b) in fin.scores.iter().zip(&off.scores) {
        assert!((a - b).abs() <= 1e-6, "score {a} vs offline {b}");
    }
    for (a, b) in fin.logits.iter().zip(&off.logits) {
        assert!((a - b).abs() <= 1e-5, "logit {a} vs offline {b}");
    }
    assert_eq!(fin.masks, off.masks, "finalize masks differ from offline");
    // And both are the official result (fixture post.best_index / post.masks).
    let want = common::tiny_outputs();
    let Data::I64(best) = want["post.best_index"].data() else {
        panic!("best_index dtype")
    };
    assert_eq!(fin.chosen[0] as i64, best[0]);
    let Data::Bool(mask) = want["post.masks"].data() else {
        panic!("masks dtype")
    };
    for (k, m) in fin.masks.iter().enumerate() {
        let w: Vec<u8> = mask[k * f.h * f.w..(k + 1) * f.h * f.w]
            .iter()
            .map(|&b| b as u8)
            .collect();
        assert_eq!(m, &w, "frame {k} differs from the fixture's post.masks");
    }

    // The live (causal) output: reported, not asserted equal.
    let (j, fm, jf) = agreement(&off.masks, &live, &f);
    eprintln!("RESULT causal W={t} (= T): J {j:.4} F {fm:.4} J&F {jf:.4} vs offline");
    for (k, (a, b)) in live.iter().zip(&off.masks).enumerate() {
        eprintln!(
            "RESULT causal W={t} frame {k}: IoU vs offline {:.4}",
            iou(a, b)
        );
    }
    // The last frame saw the whole clip in its window: its temporal output equals offline's, so only
    // the running (vs full-clip) mean can change which track is reported.
    assert!((0.0..=1.0).contains(&jf));
    let times = s.times();
    assert_eq!(times.get(Stage::Frame).count(), t as u64);
    assert_eq!(times.get(Stage::Text).count(), 1);
}

#[test]
fn windows_shorter_than_the_clip_measured_as_jf_agreement() {
    let f = fixture();
    let off = offline(&f);
    for w in [1usize, 2] {
        let mut s = stream(&f, w, true);
        let live = run_live(&mut s, &f);
        assert!(s.finalize(Selection::Single).is_err(), "T > W must refuse");
        let (j, fm, jf) = agreement(&off.masks, &live, &f);
        eprintln!(
            "RESULT causal W={w} (T={}): J {j:.4} F {fm:.4} J&F {jf:.4} vs offline",
            f.frames.len()
        );
        assert!((0.0..=1.0).contains(&jf));
    }
}

#[test]
fn prompts_cache_reset_clear_and_errors() {
    let f = fixture();
    let mut s = stream(&f, 2, false);
    let mut m = vec![7u8; f.h * f.w];
    // No prompt: nothing runs, empty mask.
    let r = s.step_image(&f.frames[0], &mut m).unwrap();
    assert!(!r.active && r.tracks.is_empty());
    assert!(m.iter().all(|&v| v == 0));
    assert!(s.set_prompt("   ").is_err(), "empty prompt");
    let long = "word ".repeat(40);
    let e = s.set_prompt(&long).unwrap_err().to_string();
    assert!(e.contains("at most 16"), "{e}");
    assert!(s.prompt().is_none(), "a refused prompt leaves none set");

    s.set_prompt(PROMPT).unwrap();
    for img in &f.frames {
        s.step_image(img, &mut m).unwrap();
    }
    assert_eq!(s.prompt_frames(), 3);
    s.set_prompt("a cat").unwrap();
    assert_eq!(s.prompt_frames(), 0, "prompt change resets the stream");
    let r = s.step_image(&f.frames[0], &mut m).unwrap();
    assert_eq!((r.prompt_frames, r.window_len), (1, 1));
    // Back to the first prompt: served from the cache, no text-engine run.
    s.set_prompt(PROMPT).unwrap();
    assert_eq!(s.times().get(Stage::Text).count(), 2);
    assert_eq!(s.caption(), Some("the red ball rolling to the left."));
    // The same frames after the reset give the same masks as the first time.
    let mut again = Vec::new();
    for img in &f.frames {
        let mut mm = vec![0u8; f.h * f.w];
        s.step_image(img, &mut mm).unwrap();
        again.push(mm);
    }
    let mut s2 = stream(&f, 2, false);
    s2.set_prompt(PROMPT).unwrap();
    for (img, want) in f.frames.iter().zip(&again) {
        s2.step_image(img, &mut m).unwrap();
        assert_eq!(&m, want, "reset session differs from a fresh one");
    }
    // Multi mode reports every track over the threshold, labels 1..=k.
    s2.set_selection(Selection::Multi { threshold: 0.0 });
    let r = s2.step_image(&f.frames[0], &mut m).unwrap();
    assert_eq!(
        r.tracks.len(),
        s2.dims().ns.min(16),
        "13 queries after pruning"
    );
    assert!(m.iter().all(|&v| (v as usize) <= r.tracks.len()));
    s2.clear_prompt();
    let r = s2.step_image(&f.frames[0], &mut m).unwrap();
    assert!(!r.active);
    // Wrong mask size: an error, not a panic.
    assert!(s2.step(&mut [0u8; 3]).is_err());
    assert!(s2.step_image(&[0.0; 5], &mut m).is_err());
}

#[test]
fn ring_slot_written_in_place() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let name = dir.path().join("ring").to_str().unwrap().to_string();
    let mut ring = MaskRing::create(
        &name,
        RingGeometry {
            width: f.w as u32,
            height: f.h as u32,
            slots: 4,
        },
    )
    .unwrap();
    let reader = MaskRingReader::open(&name).unwrap();
    let mut s = stream(&f, 3, false);
    let mut plain = stream(&f, 3, false);
    s.set_prompt(PROMPT).unwrap();
    plain.set_prompt(PROMPT).unwrap();
    let mut copy = reader.new_copy();
    for (k, img) in f.frames.iter().enumerate() {
        s.image_mut().unwrap().copy_from_slice(img);
        let r = s.step_into_ring(&mut ring, 100 + k as u64, 7).unwrap();
        let mut m = vec![0u8; f.h * f.w];
        plain.step_image(img, &mut m).unwrap();
        assert_eq!(reader.read(k as u64, &mut copy), ReadOutcome::Ok);
        assert_eq!(copy.frame_id, 100 + k as u64);
        assert_eq!(copy.mask, m);
        assert_eq!(copy.tracks.len(), r.tracks.len());
        assert_eq!(copy.tracks[0].id, r.tracks[0].id);
    }
    let mut small = MaskRing::create(
        &format!("{name}-small"),
        RingGeometry {
            width: 8,
            height: 8,
            slots: 2,
        },
    )
    .unwrap();
    assert!(s.step_into_ring(&mut small, 0, 0).is_err());
}
