//! Host post-processing against the official fixture: selection, bilinear upsampling, threshold.

use crate::support::common;

use common::{assert_close, tiny_outputs};
use referdino::pipeline::post::{select_tracks, Selection, Upsampler};
use referdino::tensor::Tensor;

#[test]
fn selection_matches_fixture() {
    let o = tiny_outputs();
    let logits = &o["head.logits"];
    let (t, q) = (logits.shape()[0], logits.shape()[1]);
    let mut scores = vec![0f32; q];
    let mut chosen = Vec::new();
    select_tracks(
        logits.f32s().unwrap(),
        t,
        q,
        Selection::Single,
        &mut scores,
        &mut chosen,
    )
    .unwrap();
    assert_close(
        "post.scores",
        &Tensor::from_f32(&[q], scores).unwrap(),
        &o["post.scores"],
    );
    assert_eq!(chosen[0] as i64, o["post.best_index"].i64s().unwrap()[0]);
}

#[test]
fn upsampling_and_masks_match_fixture() {
    let o = tiny_outputs();
    let src = &o["post.mask_logits"];
    let want = &o["post.mask_logits_upsampled"];
    let (t, h, w) = (src.shape()[0], src.shape()[1], src.shape()[2]);
    let (oh, ow) = (want.shape()[1], want.shape()[2]);
    let up = Upsampler::new(h, w, oh, ow).unwrap();
    let mut out = vec![0f32; t * oh * ow];
    let mut masks = vec![0u8; t * oh * ow];
    let mut scratch = vec![0f32; oh * ow];
    for f in 0..t {
        let s = &src.f32s().unwrap()[f * h * w..(f + 1) * h * w];
        up.run(s, &mut out[f * oh * ow..(f + 1) * oh * ow]).unwrap();
        up.run_mask(
            s,
            &mut scratch,
            &mut masks[f * oh * ow..(f + 1) * oh * ow],
            false,
        )
        .unwrap();
    }
    assert_close(
        "post.mask_logits_upsampled",
        &Tensor::from_f32(&[t, oh, ow], out).unwrap(),
        want,
    );
    let want_masks: Vec<u8> = match o["post.masks"].data() {
        referdino::tensor::Data::Bool(v) => v.iter().map(|&b| b as u8).collect(),
        _ => panic!("bool masks"),
    };
    assert_eq!(masks, want_masks, "final masks identical");
}
