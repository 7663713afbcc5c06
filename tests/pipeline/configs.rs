//! The network is driven by the configuration, not by the fixture: other sizes run end to end.

use crate::support::common;

use referdino::config::ModelConfig;
use referdino::graph::engines::{ExportOptions, Geometry};
use referdino::pipeline::post::Selection;
use referdino::pipeline::session::{EngineSet, Session};
use referdino::text::Tokenizer;
use referdino::weights::random::{random_weights, SplitMix};

fn small_config() -> ModelConfig {
    let mut c = ModelConfig::from_file(&common::fixture("referdino-tiny/config.json")).unwrap();
    c.hidden_dim = 128;
    c.nheads = 4;
    c.dim_feedforward = 96;
    c.enc_layers = 1;
    c.dec_layers = 3;
    c.num_queries = 20;
    c.query_decay = 0.6;
    c.temporal_layer = 2;
    c.temporal_dim_feedforward = 48;
    c.seg_head.mask_dim = 128;
    c.seg_head.n_heads = 4;
    c.seg_head.n_points = 8;
    c.seg_head.n_layers = 2;
    c.seg_head.d_ffn = 32;
    c.swin.embed_dim = 8;
    c.swin.depths = vec![2, 1, 1, 1];
    c.swin.num_heads = vec![1, 2, 2, 4];
    c.swin.window_size = 5;
    c.validate().unwrap();
    c
}

fn frames(t: usize, h: usize, w: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut r = SplitMix::new(seed);
    (0..t)
        .map(|_| (0..3 * h * w).map(|_| r.uniform(-2.0, 2.0)).collect())
        .collect()
}

/// d_model 128 with 4 heads, 1+3 layers, 20 queries with decay 0.6, Swin window 5, a two-sentence caption, 4 frames in a
/// window of 6: runs, and padding the temporal window changes nothing.
#[test]
fn second_configuration_runs_end_to_end() {
    let cfg = small_config();
    let w = random_weights(&cfg, 3).unwrap();
    let tok = Tokenizer::bundled().unwrap();
    let cap = tok
        .encode("the dog on the left. it is running towards the camera", 32)
        .unwrap();
    assert!(
        cap.position_ids.iter().filter(|&&p| p == 0).count() >= 3,
        "two sub-sentences"
    );
    let (h, wd) = (48, 72);
    let clip = frames(4, h, wd, 9);
    let run = |window: usize| {
        let geo = Geometry {
            height: h,
            width: wd,
            max_text: cap.len + 3,
            window,
        };
        let engines = EngineSet::cpu(&w, &cfg, &geo, &ExportOptions::default()).unwrap();
        let mut s = Session::new(engines, cfg.tracking_alpha).unwrap();
        let d = s.dims();
        assert_eq!(d.ns, 5, "20 → 12 → 8 → 5 queries");
        s.run_video(
            &cap,
            &clip,
            (h * 2, wd * 2),
            Selection::Multi { threshold: 0.2 },
        )
        .unwrap()
    };
    let a = run(4);
    let b = run(6);
    assert_eq!(a.masks.len(), 4);
    assert_eq!(a.masks[0].len(), h * 2 * wd * 2);
    assert!(a.logits.iter().all(|x| x.is_finite()));
    assert!(a.boxes.iter().all(|x| (0.0..=1.0).contains(x)));
    let max_diff = a
        .logits
        .iter()
        .zip(&b.logits)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        max_diff < 1e-4,
        "padded window changed logits by {max_diff}"
    );
    assert_eq!(a.chosen, b.chosen);
}

/// A clip longer than the temporal window is refused with a clear error, not truncated silently.
#[test]
fn clip_longer_than_window_is_an_error() {
    let cfg = small_config();
    let w = random_weights(&cfg, 4).unwrap();
    let tok = Tokenizer::bundled().unwrap();
    let cap = tok.encode("a cat", 8).unwrap();
    let geo = Geometry {
        height: 32,
        width: 32,
        max_text: 8,
        window: 2,
    };
    let engines = EngineSet::cpu(&w, &cfg, &geo, &ExportOptions::default()).unwrap();
    let mut s = Session::new(engines, 0.1).unwrap();
    let e = s
        .run_video(&cap, &frames(3, 32, 32, 1), (32, 32), Selection::Single)
        .unwrap_err();
    assert!(e.to_string().contains("window"), "{e}");
}
