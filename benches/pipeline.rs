//! Per-frame costs outside the engines at 360×640: camera conversion, preprocessing, the mask-ring
//! write, and the whole streaming host path (preprocess into the frame engine's input → tracker →
//! window → temporal hand-off → head hand-off → running scores → selection → upsample + threshold
//! into a ring slot) with replay engines at Swin-T sizes (d 256, 15 tracks, 32 tokens, W 36, mask
//! features 256×90×160). The replay engines write their outputs once and then leave them in place, so
//! the time measured is the host side only. Run with `cargo bench --bench pipeline`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use referdino::backend::TensorSpec;
use referdino::camera::convert::{yuyv_to_rgb, Preprocessor};
use referdino::graph::engines::names as n;
use referdino::output::ring::{MaskRing, RingGeometry, TrackEntry};
use referdino::pipeline::post::Selection;
use referdino::pipeline::replay::{ReplayEngine, ReplayMode};
use referdino::pipeline::session::EngineSet;
use referdino::pipeline::stream::{StreamConfig, StreamSession};
use referdino::pipeline::timing::Stage;
use referdino::tensor::DType;

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn spec(name: &str, dtype: DType, shape: &[usize]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
    }
}

/// Replay engines with the Swin-T engines' bindings at 360×640 (graph/engines.rs table).
fn swin_t_replay(h: usize, w: usize) -> EngineSet {
    let (d, ns, lm, dm, win) = (256, 15, 32, 256, 36);
    let (h4, w4) = (h.div_ceil(4), w.div_ceil(4));
    let f32s = DType::F32;
    let text_in = || {
        vec![
            spec(n::INPUT_IDS, DType::I64, &[1, lm]),
            spec(n::TOKEN_TYPE_IDS, DType::I64, &[1, lm]),
            spec(n::POSITION_IDS, DType::I64, &[1, lm]),
            spec(n::TEXT_SELF_ATTENTION_MASK, DType::Bool, &[1, lm, lm]),
        ]
    };
    let mk = |name: &str, ins: Vec<TensorSpec>, outs: Vec<TensorSpec>, seed: u64| {
        Box::new(ReplayEngine::synthetic(name, ins, outs, 2, seed, ReplayMode::Once).unwrap())
            as Box<dyn referdino::backend::Engine>
    };
    EngineSet {
        text: mk(
            n::TEXT,
            text_in(),
            vec![spec(n::ENCODED_TEXT, f32s, &[1, lm, d])],
            1,
        ),
        frame: mk(
            n::FRAME,
            vec![
                spec(n::IMAGE, f32s, &[1, 3, h, w]),
                spec(n::ENCODED_TEXT, f32s, &[1, lm, d]),
                spec(n::TEXT_TOKEN_MASK, DType::Bool, &[1, lm]),
                spec(n::TEXT_SELF_ATTENTION_MASK, DType::Bool, &[1, lm, lm]),
                spec(n::POSITION_IDS, DType::I64, &[1, lm]),
            ],
            vec![
                spec(n::OBJECTS, f32s, &[1, ns, d]),
                spec(n::REFS, f32s, &[1, ns, 4]),
                spec(n::MEMORY_TEXT, f32s, &[1, lm, d]),
                spec(n::F_SEG, f32s, &[1, dm, h4, w4]),
            ],
            2,
        ),
        temporal: mk(
            n::TEMPORAL,
            vec![
                spec(n::OBJECTS, f32s, &[win, ns, d]),
                spec(n::SENTENCE, f32s, &[win, d]),
                spec(n::FRAME_MASK, DType::Bool, &[win]),
            ],
            vec![spec(n::OBJECTS_T, f32s, &[win, ns, d])],
            3,
        ),
        head: mk(
            n::HEAD,
            vec![
                spec(n::OBJECTS_T, f32s, &[1, ns, d]),
                spec(n::REFS, f32s, &[1, ns, 4]),
                spec(n::MEMORY_TEXT, f32s, &[1, lm, d]),
                spec(n::TEXT_TOKEN_MASK, DType::Bool, &[1, lm]),
                spec(n::F_SEG, f32s, &[1, dm, h4, w4]),
            ],
            vec![
                spec(n::LOGITS, f32s, &[1, ns]),
                spec(n::BOXES, f32s, &[1, ns, 4]),
                spec(n::MASK_LOGITS, f32s, &[1, ns, h4, w4]),
            ],
            4,
        ),
    }
}

fn stream_benches(c: &mut Criterion) {
    let (w, h) = (640usize, 360usize);
    let rgb = pattern(w * h * 3);
    let mut pre = Preprocessor::new(w as u32, h as u32, 360);
    let mut s = StreamSession::new(swin_t_replay(h, w), StreamConfig::default(), (h, w)).unwrap();
    s.set_prompt("the person on the left holding a red cup")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let name = dir.path().join("ring").to_str().unwrap().to_string();
    let mut ring = MaskRing::create(
        &name,
        RingGeometry {
            width: w as u32,
            height: h as u32,
            slots: 8,
        },
    )
    .unwrap();
    // Fill the 36-frame window first so every measured frame assembles a full window.
    let mut k = 0u64;
    for _ in 0..40 {
        pre.run(&rgb, s.image_mut().unwrap()).unwrap();
        s.step_into_ring(&mut ring, k, k).unwrap();
        k += 1;
    }
    s.times_mut().clear();
    let mut g = c.benchmark_group("stream_host");
    g.bench_function(
        "preprocess + step + ring write 640x360, Swin-T sizes, W=36, single",
        |b| {
            b.iter(|| {
                pre.run(black_box(&rgb), s.image_mut().unwrap()).unwrap();
                s.step_into_ring(&mut ring, k, k).unwrap();
                k += 1;
            })
        },
    );
    let mut mask = vec![0u8; w * h];
    g.bench_function(
        "step only (mask buffer) 640x360, Swin-T sizes, W=36, single",
        |b| {
            b.iter(|| {
                s.step(&mut mask).unwrap();
            })
        },
    );
    report("single", &s);
    s.set_selection(Selection::Multi { threshold: 0.5 });
    s.times_mut().clear();
    let tracks = s.step(&mut mask).unwrap().tracks.len();
    g.bench_function(
        format!("step only 640x360, Swin-T sizes, W=36, multi ({tracks} tracks over 0.5)"),
        |b| {
            b.iter(|| {
                s.step(&mut mask).unwrap();
            })
        },
    );
    report("multi", &s);
    g.finish();
}

/// Per-stage means of the session's own counters (the engines are replays: their stages are ~0).
fn report(what: &str, s: &StreamSession) {
    let t = s.times();
    let mut line = format!(
        "stage means ({what}, {} frames):",
        t.get(Stage::Total).count()
    );
    for st in Stage::ALL.iter().skip(1) {
        line.push_str(&format!(" {} {:.3} ms", st.name(), t.get(*st).mean_ms()));
    }
    eprintln!("{line}");
}

fn benches(c: &mut Criterion) {
    let (w, h) = (640u32, 360u32);
    let rgb_small = pattern((w * h * 3) as usize);
    let rgb_720 = pattern(1280 * 720 * 3);
    let yuyv_small = pattern((w * h * 2) as usize);
    let yuyv_720 = pattern(1280 * 720 * 2);

    let mut g = c.benchmark_group("per_frame");
    let mut rgb_out = vec![0u8; (w * h * 3) as usize];
    g.bench_function("yuyv_to_rgb 640x360", |b| {
        b.iter(|| yuyv_to_rgb(black_box(&yuyv_small), w, h, 2 * w as usize, &mut rgb_out).unwrap())
    });
    // What a device stream no longer does per frame on the CPU: it hands YUYV to its kernel as the
    // camera delivers it.
    let mut rgb_720_out = vec![0u8; 1280 * 720 * 3];
    g.bench_function("yuyv_to_rgb 1280x720", |b| {
        b.iter(|| yuyv_to_rgb(black_box(&yuyv_720), 1280, 720, 2560, &mut rgb_720_out).unwrap())
    });
    let mut pre = Preprocessor::new(w, h, 360);
    let mut out = vec![0f32; pre.out_len()];
    g.bench_function("preprocess 640x360 -> 640x360", |b| {
        b.iter(|| pre.run(black_box(&rgb_small), &mut out).unwrap())
    });
    let mut pre720 = Preprocessor::new(1280, 720, 360);
    g.bench_function("preprocess 1280x720 -> 640x360", |b| {
        b.iter(|| pre720.run(black_box(&rgb_720), &mut out).unwrap())
    });

    let dir = tempfile::tempdir().unwrap();
    let name = dir.path().join("ring").to_str().unwrap().to_string();
    let mut ring = MaskRing::create(
        &name,
        RingGeometry {
            width: w,
            height: h,
            slots: 8,
        },
    )
    .unwrap();
    let mask = pattern((w * h) as usize);
    let mut n = 0u64;
    g.bench_function("ring write 640x360 mask + 16 tracks", |b| {
        b.iter(|| {
            let mut s = ring.begin_write();
            s.frame_id = n;
            s.timestamp_ns = n;
            for k in 0..16 {
                let _ = s.tracks.push(TrackEntry {
                    id: k,
                    object: 0,
                    score: 0.5,
                    bbox: [0.0, 1.0, 2.0, 3.0],
                });
            }
            s.mask().copy_from_slice(black_box(&mask));
            s.commit();
            n += 1;
        })
    });

    let mut rgb720 = vec![0u8; 1280 * 720 * 3];
    g.bench_function("camera 1280x720 YUYV -> preprocess -> ring write", |b| {
        b.iter(|| {
            yuyv_to_rgb(black_box(&yuyv_720), 1280, 720, 2560, &mut rgb720).unwrap();
            pre720.run(&rgb720, &mut out).unwrap();
            let mut s = ring.begin_write();
            s.frame_id = n;
            s.mask().copy_from_slice(&mask);
            s.commit();
            n += 1;
        })
    });
    g.bench_function("camera 640x360 YUYV -> preprocess -> ring write", |b| {
        b.iter(|| {
            yuyv_to_rgb(black_box(&yuyv_small), w, h, 2 * w as usize, &mut rgb_out).unwrap();
            pre.run(&rgb_out, &mut out).unwrap();
            let mut s = ring.begin_write();
            s.frame_id = n;
            s.mask().copy_from_slice(&mask);
            s.commit();
            n += 1;
        })
    });
    g.finish();
}

criterion_group!(pipeline, benches, stream_benches);
criterion_main!(pipeline);
