//! The device-resident session against the host sessions, without TensorRT (feature `cuda`): under
//! the host emulation on every machine (`.ci/run` runs it), and also on a real GPU when there is
//! one (the GPU check kit sets `REFERDINO_REQUIRE_GPU=1`, making the GPU part mandatory).
//!
//! Both sides drive the same "copy engines": engines whose outputs are fixed byte ranges of their
//! inputs, computed with `memcpy` on the host path and under the emulation, with device copies on the
//! GPU. The frame's objects, boxes and segmentation features come from the preprocessed image (and the
//! text), the temporal output is its input, the head's logits, boxes and mask logits come from what it
//! was handed. So every device-path stage that moves data (preprocessing from the mapped frame, prompt
//! features on the device copied into their row, the tracker's round trip, the device window rings laid
//! out oldest first into each object's row, the newest temporal row to the head, the shared front/head
//! buffers, the image engine's outputs as the cross engine's inputs, every object's chosen maps composed
//! into a registered ring slot) must reproduce the host path exactly: masks byte for byte, tracks and
//! scores bit for bit, over more frames than the window holds, across prompt switches, with objects
//! added, removed and replaced between frames, on the whole-frame set and the object set (two chunks),
//! and for finalize. The emulation checks that orchestration; the GPU run checks CUDA as well.
#![cfg(feature = "cuda")]

#[path = "support/cameras.rs"]
mod cameras;

use std::sync::Arc;

use cudarc::driver::{result as cu, CudaContext, CudaStream};
use referdino::backend::{Engine, TensorSpec, View, ViewMut};
use referdino::camera::convert::Preprocessor;
use referdino::graph::engines::names as n;
use referdino::output::ring::{MaskRing, MaskRingReader, RingGeometry, RingOptions};
use referdino::pipeline::commands::Command;
use referdino::pipeline::device_stream::DeviceStreamSession;
use referdino::pipeline::live::template::JoinTemplate;
use referdino::pipeline::multi::{
    Front, HostObjects, MultiConfig, MultiEngineSet, MultiStream, SharedEngines,
};
use referdino::pipeline::objects::{apply_command, ObjectSet};
use referdino::pipeline::post::Selection;
use referdino::pipeline::session::EngineSet;
use referdino::pipeline::stream::{StreamConfig, StreamSession};
use referdino::tensor::DType;
use referdino_plugins::dims::FrameFormat;

// Small geometry: 4 queries of 8 channels, 6 text tokens, 24x40 input, 6x10 stride-4 map, window 3.
const NS: usize = 4;
const D: usize = 8;
const LM: usize = 6;
const H: usize = 24;
const W: usize = 40;
const DM: usize = 6;
const H4: usize = 6;
const W4: usize = 10;
const WIN: usize = 3;

fn spec(name: &str, dtype: DType, shape: &[usize]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
    }
}

/// One output byte range copied from an input byte range.
#[derive(Clone, Copy)]
struct Copy {
    out: usize,
    out_at: usize,
    input: usize,
    in_at: usize,
    bytes: usize,
}

/// An engine whose outputs are zero but for `plan`'s copies.
struct CopyEngine {
    name: String,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    plan: Vec<Copy>,
    stream: Option<Arc<CudaStream>>,
}

fn host_bytes<'a>(v: &'a View<'_>) -> &'a [u8] {
    match v {
        View::F32(s) => bytemuck::cast_slice(s),
        View::I64(s) => bytemuck::cast_slice(s),
        View::U8(s) => s,
        // SAFETY: bool is one byte holding 0 or 1; reading it as u8 is always valid.
        View::Bool(s) => unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) },
        _ => panic!("copy engine: unsupported host view"),
    }
}

fn host_bytes_mut<'a>(v: &'a mut ViewMut<'_>) -> &'a mut [u8] {
    match v {
        ViewMut::F32(s) => bytemuck::cast_slice_mut(s),
        ViewMut::I64(s) => bytemuck::cast_slice_mut(s),
        ViewMut::U8(s) => s,
        _ => panic!("copy engine: unsupported host output"),
    }
}

impl Engine for CopyEngine {
    fn name(&self) -> &str {
        &self.name
    }
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }
    fn run(&mut self, inputs: &[View<'_>], outputs: &mut [ViewMut<'_>]) -> referdino::Result<()> {
        for o in outputs.iter_mut() {
            host_bytes_mut(o).fill(0);
        }
        for c in &self.plan {
            let src = &host_bytes(&inputs[c.input])[c.in_at..c.in_at + c.bytes];
            host_bytes_mut(&mut outputs[c.out])[c.out_at..c.out_at + c.bytes].copy_from_slice(src);
        }
        Ok(())
    }
    fn enqueue(
        &mut self,
        inputs: &[View<'_>],
        outputs: &mut [ViewMut<'_>],
    ) -> referdino::Result<()> {
        let s = self
            .stream
            .as_ref()
            .expect("device copy engine")
            .cu_stream();
        let dev = |v: &View<'_>| match v {
            View::Device(d) => d.ptr(),
            _ => panic!("enqueue with a host view"),
        };
        let dev_mut = |v: &ViewMut<'_>| match v {
            ViewMut::Device(d) => d.ptr(),
            _ => panic!("enqueue with a host view"),
        };
        for (o, spec) in outputs.iter().zip(&self.outputs) {
            // SAFETY: the session's device buffer for this binding holds spec.bytes() bytes.
            unsafe { cu::memset_d8_async(dev_mut(o), 0, spec.bytes(), s) }.unwrap();
        }
        for c in &self.plan {
            // SAFETY: both ranges lie inside the bindings' device buffers (sizes from the specs).
            unsafe {
                cu::memcpy_dtod_async(
                    dev_mut(&outputs[c.out]) + c.out_at as u64,
                    dev(&inputs[c.input]) + c.in_at as u64,
                    c.bytes,
                    s,
                )
            }
            .unwrap();
        }
        Ok(())
    }
    fn cuda_stream(&self) -> Option<usize> {
        self.stream.as_ref().map(|s| s.cu_stream() as usize)
    }
}

/// A host-only text engine: features from the token ids, so that prompts differ.
struct TextEngine {
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl Engine for TextEngine {
    fn name(&self) -> &str {
        "text"
    }
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }
    fn run(&mut self, inputs: &[View<'_>], outputs: &mut [ViewMut<'_>]) -> referdino::Result<()> {
        let ids = match inputs[0] {
            View::I64(v) => v,
            _ => panic!("ids"),
        };
        let ViewMut::F32(out) = &mut outputs[0] else {
            panic!("encoded text")
        };
        for (k, id) in ids.iter().enumerate() {
            for j in 0..D {
                out[k * D + j] = ((*id % 97) as f32 - 48.0) * 0.02 + j as f32 * 0.01;
            }
        }
        Ok(())
    }
}

fn engines(stream: Option<Arc<CudaStream>>) -> EngineSet {
    engines_at(stream, (H, W))
}

/// [`engines`] for a `h`x`w` input (stride-4 map `h/4`x`w/4`): the same copies, laid out for that
/// size, so that two input sizes run the same orchestration.
fn engines_at(stream: Option<Arc<CudaStream>>, (h, w): (usize, usize)) -> EngineSet {
    let (h4, w4) = (h / 4, w / 4);
    let f32b = 4;
    let text = TextEngine {
        inputs: vec![
            spec(n::INPUT_IDS, DType::I64, &[1, LM]),
            spec(n::TOKEN_TYPE_IDS, DType::I64, &[1, LM]),
            spec(n::POSITION_IDS, DType::I64, &[1, LM]),
            spec(n::TEXT_SELF_ATTENTION_MASK, DType::Bool, &[1, LM, LM]),
        ],
        outputs: vec![spec(n::ENCODED_TEXT, DType::F32, &[1, LM, D])],
    };
    // Frame: objects, refs and f_seg are slices of the image, but for the first query's objects row,
    // the encoded text's (so that objects of different prompts score differently); memory_text is
    // the encoded text.
    let plane = h * w * f32b;
    let frame = CopyEngine {
        name: "frame".into(),
        inputs: vec![
            spec(n::IMAGE, DType::F32, &[1, 3, h, w]),
            spec(n::ENCODED_TEXT, DType::F32, &[1, LM, D]),
            spec(n::TEXT_TOKEN_MASK, DType::Bool, &[1, LM]),
            spec(n::TEXT_SELF_ATTENTION_MASK, DType::Bool, &[1, LM, LM]),
            spec(n::POSITION_IDS, DType::I64, &[1, LM]),
        ],
        outputs: vec![
            spec(n::OBJECTS, DType::F32, &[1, NS, D]),
            spec(n::REFS, DType::F32, &[1, NS, 4]),
            spec(n::MEMORY_TEXT, DType::F32, &[1, LM, D]),
            spec(n::F_SEG, DType::F32, &[1, DM, h4, w4]),
        ],
        plan: vec![
            Copy {
                out: 0,
                out_at: 0,
                input: 0,
                in_at: 100 * f32b,
                bytes: NS * D * f32b,
            },
            Copy {
                out: 0,
                out_at: 0,
                input: 1,
                in_at: D * f32b,
                bytes: D * f32b,
            },
            Copy {
                out: 1,
                out_at: 0,
                input: 0,
                in_at: plane + 7 * f32b,
                bytes: NS * 4 * f32b,
            },
            Copy {
                out: 2,
                out_at: 0,
                input: 1,
                in_at: 0,
                bytes: LM * D * f32b,
            },
            Copy {
                out: 3,
                out_at: 0,
                input: 0,
                in_at: 2 * plane,
                bytes: DM * h4 * w4 * f32b,
            },
        ],
        stream: stream.clone(),
    };
    // Temporal: the output is the input (so the device window layout is what the head sees).
    let temporal = CopyEngine {
        name: "temporal".into(),
        inputs: vec![
            spec(n::OBJECTS, DType::F32, &[WIN, NS, D]),
            spec(n::SENTENCE, DType::F32, &[WIN, D]),
            spec(n::FRAME_MASK, DType::Bool, &[WIN]),
        ],
        outputs: vec![spec(n::OBJECTS_T, DType::F32, &[WIN, NS, D])],
        plan: vec![Copy {
            out: 0,
            out_at: 0,
            input: 0,
            in_at: 0,
            bytes: WIN * NS * D * f32b,
        }],
        stream: stream.clone(),
    };
    // Head: logits from the temporal row, boxes from the tracked refs, mask logits from f_seg.
    let head = CopyEngine {
        name: "head".into(),
        inputs: vec![
            spec(n::OBJECTS_T, DType::F32, &[1, NS, D]),
            spec(n::REFS, DType::F32, &[1, NS, 4]),
            spec(n::MEMORY_TEXT, DType::F32, &[1, LM, D]),
            spec(n::TEXT_TOKEN_MASK, DType::Bool, &[1, LM]),
            spec(n::F_SEG, DType::F32, &[1, DM, h4, w4]),
        ],
        outputs: vec![
            spec(n::LOGITS, DType::F32, &[1, NS]),
            spec(n::BOXES, DType::F32, &[1, NS, 4]),
            spec(n::MASK_LOGITS, DType::F32, &[1, NS, h4, w4]),
        ],
        plan: (0..NS)
            .map(|q| Copy {
                out: 0,
                out_at: q * f32b,
                input: 0,
                in_at: (q * D + 1) * f32b,
                bytes: f32b,
            })
            .chain([
                Copy {
                    out: 1,
                    out_at: 0,
                    input: 1,
                    in_at: 0,
                    bytes: NS * 4 * f32b,
                },
                Copy {
                    out: 2,
                    out_at: 0,
                    input: 4,
                    in_at: 0,
                    bytes: NS * h4 * w4 * f32b,
                },
            ])
            .collect(),
        stream,
    };
    EngineSet {
        text: Box::new(text),
        frame: Box::new(frame),
        temporal: Box::new(temporal),
        head: Box::new(head),
    }
}

/// RGB frames that change from frame to frame (so tracking, scores and masks change too).
fn frame_rgb(t: usize, w: usize, h: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(w * h * 3);
    let mut s = 0x2545_F491_u32.wrapping_add(t as u32 * 7919);
    for y in 0..h {
        for x in 0..w {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let base = ((x * 5 + y * 3 + t * 11) % 256) as u8;
            v.extend([base, base.wrapping_add((s & 63) as u8), (s >> 8) as u8]);
        }
    }
    v
}

/// Where a test runs the device session: under the host emulation (every machine: the session's
/// orchestration), and on the GPU when there is one (required with `REFERDINO_REQUIRE_GPU=1`, as the
/// GPU check kit sets: CUDA itself).
enum Mode {
    Emulated,
    Gpu(Arc<CudaContext>),
}

fn modes(test: &str) -> Vec<Mode> {
    let required = std::env::var("REFERDINO_REQUIRE_GPU").is_ok_and(|v| v == "1");
    // SAFETY: only tries to load the driver library.
    let ctx = if unsafe { cudarc::driver::sys::is_culib_present() } {
        CudaContext::new(0).ok()
    } else {
        None
    };
    match ctx {
        Some(ctx) => vec![Mode::Emulated, Mode::Gpu(ctx)],
        None => {
            assert!(
                !required,
                "REFERDINO_REQUIRE_GPU=1 but no usable CUDA device"
            );
            eprintln!("SKIPPED {test} on a GPU: no CUDA device (ran under the host emulation)");
            vec![Mode::Emulated]
        }
    }
}

impl Mode {
    fn label(&self) -> &'static str {
        match self {
            Mode::Emulated => "emulated",
            Mode::Gpu(_) => "gpu",
        }
    }

    /// The device session on `set`'s engines: host copy engines under the emulation, device copy
    /// engines on the GPU's stream.
    fn session(
        &self,
        set: impl Fn(Option<Arc<CudaStream>>) -> MultiEngineSet,
        cfg: StreamConfig,
        out: (usize, usize),
        max_objects: usize,
    ) -> DeviceStreamSession {
        match self {
            Mode::Emulated => DeviceStreamSession::emulated(set(None), cfg, out, max_objects),
            Mode::Gpu(ctx) => {
                ctx.bind_to_thread().unwrap();
                let s = ctx.new_stream().unwrap();
                DeviceStreamSession::with_max_objects(set(Some(s)), cfg, out, max_objects)
            }
        }
        .unwrap()
    }
}

/// The host result and mask against the device's, field by field and byte by byte.
fn same_frame(
    t: usize,
    got: &referdino::pipeline::stream::FrameResult,
    want: &referdino::pipeline::stream::FrameResult,
    dev_mask: &[u8],
    host_mask: &[u8],
) {
    let diff = dev_mask
        .iter()
        .zip(host_mask)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        diff, 0,
        "frame {t}: {diff} mask pixels differ from the host session"
    );
    assert_eq!(got.active, want.active, "frame {t}");
    assert_eq!(got.window_len, want.window_len, "frame {t}");
    assert_eq!(got.prompt_frames, want.prompt_frames, "frame {t}");
    assert_eq!(got.tracks.len(), want.tracks.len(), "frame {t}");
    for (g, w) in got.tracks.iter().zip(&want.tracks) {
        assert_eq!(
            (g.id, g.object, g.score.to_bits()),
            (w.id, w.object, w.score.to_bits()),
            "frame {t}"
        );
        assert_eq!(
            g.bbox.map(f32::to_bits),
            w.bbox.map(f32::to_bits),
            "frame {t}"
        );
    }
}

#[test]
fn device_session_reproduces_the_host_session() {
    for mode in modes("device_session_reproduces_the_host_session") {
        one_object(&mode);
    }
}

/// One object across a prompt switch, over more frames than the window holds.
fn one_object(mode: &Mode) {
    let (fw, fh) = (64usize, 36usize);
    let (oh, ow) = (fh, fw);
    let cfg = StreamConfig {
        max_text_len: LM,
        ..StreamConfig::default()
    };
    let mut host = StreamSession::new(engines(None), cfg, (oh, ow)).unwrap();
    let mut dev = mode.session(|s| MultiEngineSet::from(engines(s)), cfg, (oh, ow), 8);
    let name = format!("gpu-device-{}-{}", mode.label(), std::process::id());
    let geom = RingGeometry {
        width: ow as u32,
        height: oh as u32,
        slots: 4,
    };
    let mut ring = MaskRing::create_with(&name, geom, &RingOptions::default()).unwrap();
    dev.attach_ring(&mut ring).unwrap();
    let reader = MaskRingReader::open(&name).unwrap();
    let mut copy = reader.new_copy();
    let mut pre = Preprocessor::to_size(fw as u32, fh as u32, W as u32, H as u32);
    let mut host_mask = vec![0u8; oh * ow];
    let mut compared = 0;
    for (t, prompt) in (0..9).map(|t| (t, if t < 5 { "red ball" } else { "blue cup" })) {
        if t == 0 || t == 5 {
            host.set_prompt(prompt).unwrap();
            dev.set_prompt(prompt).unwrap();
        }
        let rgb = frame_rgb(t, fw, fh);
        pre.run(&rgb, host.image_mut().unwrap()).unwrap();
        let want = host.step(&mut host_mask).unwrap();
        dev.frame_mut(FrameFormat::Rgb24, fw as u32, fh as u32, fw * 3)
            .unwrap()
            .copy_from_slice(&rgb);
        let got = dev.step_into_ring(&mut ring, t as u64, 0).unwrap();
        assert!(reader.read_latest(&mut copy).is_some());
        assert_eq!(copy.frame_id, t as u64);
        same_frame(t, &got, &want, &copy.mask, &host_mask);
        assert_eq!(copy.tracks.as_slice(), got.tracks.as_slice());
        let on = host_mask.iter().filter(|&&v| v != 0).count();
        eprintln!(
            "frame {t} ({prompt}): identical, {} tracks, {on} labelled px",
            got.tracks.len()
        );
        compared += 1;
    }
    assert_eq!(compared, 9);
}

/// Image tokens of the object set's image engine.
const TOKENS: usize = 10;
/// Objects per run of the object set's cross, temporal and head engines.
const B: usize = 2;

/// The object set as copy engines: the image engine's tokens and stride-4 map are slices of the
/// image; the cross engine's row `r` takes its objects and boxes from the tokens (shifted by `r`, the
/// first query's row from row `r`'s text), its text from row `r`'s text and `f_seg` from the
/// stride-4 map; temporal and head as in [`engines`], row by row.
fn split_engines(stream: Option<Arc<CudaStream>>) -> MultiEngineSet {
    let f32b = 4;
    let single = engines(stream.clone());
    let plane = H * W * f32b;
    let image = CopyEngine {
        name: "image".into(),
        inputs: vec![spec(n::IMAGE, DType::F32, &[1, 3, H, W])],
        outputs: vec![
            spec(n::IMAGE_TOKENS, DType::F32, &[1, TOKENS, D]),
            spec(n::STRIDE4, DType::F32, &[1, DM, H4, W4]),
        ],
        plan: vec![
            Copy {
                out: 0,
                out_at: 0,
                input: 0,
                in_at: 100 * f32b,
                bytes: TOKENS * D * f32b,
            },
            Copy {
                out: 1,
                out_at: 0,
                input: 0,
                in_at: 2 * plane,
                bytes: DM * H4 * W4 * f32b,
            },
        ],
        stream: stream.clone(),
    };
    let (seg, text) = (DM * H4 * W4 * f32b, LM * D * f32b);
    let cross = CopyEngine {
        name: "cross".into(),
        inputs: vec![
            spec(n::IMAGE_TOKENS, DType::F32, &[1, TOKENS, D]),
            spec(n::STRIDE4, DType::F32, &[1, DM, H4, W4]),
            spec(n::ENCODED_TEXT, DType::F32, &[B, LM, D]),
            spec(n::TEXT_TOKEN_MASK, DType::Bool, &[B, LM]),
            spec(n::TEXT_SELF_ATTENTION_MASK, DType::Bool, &[B, LM, LM]),
            spec(n::POSITION_IDS, DType::I64, &[B, LM]),
        ],
        outputs: vec![
            spec(n::OBJECTS, DType::F32, &[B, NS, D]),
            spec(n::REFS, DType::F32, &[B, NS, 4]),
            spec(n::MEMORY_TEXT, DType::F32, &[B, LM, D]),
            spec(n::F_SEG, DType::F32, &[B, DM, H4, W4]),
        ],
        plan: (0..B)
            .flat_map(|r| {
                [
                    Copy {
                        out: 0,
                        out_at: r * NS * D * f32b,
                        input: 0,
                        in_at: (3 + r * 5) * f32b,
                        bytes: NS * D * f32b,
                    },
                    Copy {
                        out: 0,
                        out_at: r * NS * D * f32b,
                        input: 2,
                        in_at: r * text + D * f32b,
                        bytes: D * f32b,
                    },
                    Copy {
                        out: 1,
                        out_at: r * NS * 4 * f32b,
                        input: 0,
                        in_at: (40 + r * 3) * f32b,
                        bytes: NS * 4 * f32b,
                    },
                    Copy {
                        out: 2,
                        out_at: r * text,
                        input: 2,
                        in_at: r * text,
                        bytes: text,
                    },
                    Copy {
                        out: 3,
                        out_at: r * seg,
                        input: 1,
                        in_at: 0,
                        bytes: seg,
                    },
                ]
            })
            .collect(),
        stream: stream.clone(),
    };
    let temporal = CopyEngine {
        name: "temporal".into(),
        inputs: vec![
            spec(n::OBJECTS, DType::F32, &[B, WIN, NS, D]),
            spec(n::SENTENCE, DType::F32, &[B, WIN, D]),
            spec(n::FRAME_MASK, DType::Bool, &[B, WIN]),
        ],
        outputs: vec![spec(n::OBJECTS_T, DType::F32, &[B, WIN, NS, D])],
        plan: vec![Copy {
            out: 0,
            out_at: 0,
            input: 0,
            in_at: 0,
            bytes: B * WIN * NS * D * f32b,
        }],
        stream: stream.clone(),
    };
    let maps = NS * H4 * W4 * f32b;
    let head = CopyEngine {
        name: "head".into(),
        inputs: vec![
            spec(n::OBJECTS_T, DType::F32, &[B, NS, D]),
            spec(n::REFS, DType::F32, &[B, NS, 4]),
            spec(n::MEMORY_TEXT, DType::F32, &[B, LM, D]),
            spec(n::TEXT_TOKEN_MASK, DType::Bool, &[B, LM]),
            spec(n::F_SEG, DType::F32, &[B, DM, H4, W4]),
        ],
        outputs: vec![
            spec(n::LOGITS, DType::F32, &[B, NS]),
            spec(n::BOXES, DType::F32, &[B, NS, 4]),
            spec(n::MASK_LOGITS, DType::F32, &[B, NS, H4, W4]),
        ],
        plan: (0..B)
            .flat_map(|r| {
                (0..NS)
                    .map(move |q| Copy {
                        out: 0,
                        out_at: (r * NS + q) * f32b,
                        input: 0,
                        in_at: ((r * NS + q) * D + 1) * f32b,
                        bytes: f32b,
                    })
                    .chain([
                        Copy {
                            out: 1,
                            out_at: r * NS * 4 * f32b,
                            input: 1,
                            in_at: r * NS * 4 * f32b,
                            bytes: NS * 4 * f32b,
                        },
                        Copy {
                            out: 2,
                            out_at: r * maps,
                            input: 4,
                            in_at: r * seg,
                            bytes: maps,
                        },
                    ])
            })
            .collect(),
        stream,
    };
    MultiEngineSet {
        text: single.text,
        front: Front::Split {
            image: Box::new(image),
            cross: Box::new(cross),
        },
        temporal: Box::new(temporal),
        head: Box::new(head),
    }
}

/// The object set (`split`) or the whole-frame set, as copy engines.
fn engine_set(split: bool, stream: Option<Arc<CudaStream>>) -> MultiEngineSet {
    if split {
        split_engines(stream)
    } else {
        MultiEngineSet::from(engines(stream))
    }
}

#[test]
fn several_objects_on_the_device_reproduce_the_host_path() {
    for mode in modes("several_objects_on_the_device_reproduce_the_host_path") {
        several_objects(&mode, false);
    }
}

#[test]
fn the_object_set_on_the_device_reproduces_the_host_path() {
    for mode in modes("the_object_set_on_the_device_reproduces_the_host_path") {
        several_objects(&mode, true);
    }
}

/// The host path (`MultiStream` on its own engines) and the device session side by side on the same
/// kind of engine set, with the ring the device writes into: commands go to both and must be taken or
/// refused alike, frames go to both and must give the same masks and tracks.
struct Pair {
    eng: SharedEngines,
    host: MultiStream,
    dev: DeviceStreamSession,
    ring: MaskRing,
    reader: MaskRingReader,
    copy: referdino::output::ring::SlotCopy,
    pre: Preprocessor,
    host_mask: Vec<u8>,
    frame: (usize, usize),
}

impl Pair {
    /// `set` makes one engine set (host engines for `None`, device ones on a GPU's stream); frames
    /// are `frame` (width, height) and masks come out at that size.
    fn new(
        mode: &Mode,
        label: &str,
        set: impl Fn(Option<Arc<CudaStream>>) -> MultiEngineSet,
        cfg: StreamConfig,
        max_objects: usize,
        frame: (usize, usize),
    ) -> Self {
        let (fw, fh) = frame;
        let eng = SharedEngines::new(set(None), cfg.max_text_len).unwrap();
        let mcfg = MultiConfig {
            tracking_alpha: cfg.tracking_alpha,
            selection: cfg.selection,
            max_objects,
            keep_clip: cfg.keep_clip,
        };
        let host = MultiStream::new(&eng, mcfg, (fh, fw)).unwrap();
        let mut dev = mode.session(set, cfg, (fh, fw), max_objects);
        let name = format!("gpu-device-{label}-{}-{}", mode.label(), std::process::id());
        let geom = RingGeometry {
            width: fw as u32,
            height: fh as u32,
            slots: 3,
        };
        let mut ring = MaskRing::create_with(&name, geom, &RingOptions::default()).unwrap();
        dev.attach_ring(&mut ring).unwrap();
        let reader = MaskRingReader::open(&name).unwrap();
        let copy = reader.new_copy();
        let d = dev.dims();
        let pre = Preprocessor::to_size(fw as u32, fh as u32, d.width as u32, d.height as u32);
        Pair {
            eng,
            host,
            dev,
            ring,
            reader,
            copy,
            pre,
            host_mask: vec![0u8; fw * fh],
            frame,
        }
    }

    /// Applies `c` to both; both take it (the same ids added) or both refuse it (the same error).
    fn command(&mut self, t: usize, c: &Command) -> referdino::Result<Vec<u16>> {
        let h = apply_command(
            &mut HostObjects {
                stream: &mut self.host,
                engines: &mut self.eng,
            },
            c,
        );
        let d = apply_command(&mut self.dev, c);
        match (&h, &d) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "frame {t}: {c:?}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "frame {t}: {c:?}"),
            _ => panic!("frame {t}: {c:?}: host {h:?}, device {d:?}"),
        }
        d
    }

    /// Frame `t` through both: the same objects before it, the same mask (read back through the
    /// ring's reader) and tracks after it. Returns the device's result.
    fn step(&mut self, t: usize) -> referdino::pipeline::stream::FrameResult {
        let owned = |v: (u16, &str, &str)| (v.0, v.1.to_string(), v.2.to_string());
        let host_objects: Vec<_> = self.host.objects().map(owned).collect();
        let dev_objects: Vec<_> = self.dev.objects().map(owned).collect();
        assert_eq!(host_objects, dev_objects, "frame {t}");
        let (fw, fh) = self.frame;
        let rgb = frame_rgb(t, fw, fh);
        self.pre.run(&rgb, self.host.image_mut().unwrap()).unwrap();
        let want = self.host.step(&mut self.eng, &mut self.host_mask).unwrap();
        self.dev
            .frame_mut(FrameFormat::Rgb24, fw as u32, fh as u32, fw * 3)
            .unwrap()
            .copy_from_slice(&rgb);
        let got = self
            .dev
            .step_into_ring(&mut self.ring, t as u64, 0)
            .unwrap();
        assert!(self.reader.read_latest(&mut self.copy).is_some());
        assert_eq!(self.copy.frame_id, t as u64);
        same_frame(t, &got, &want, &self.copy.mask, &self.host_mask);
        assert_eq!(self.copy.tracks.as_slice(), got.tracks.as_slice());
        for (id, ..) in &dev_objects {
            assert_eq!(
                self.dev.scores(*id),
                self.host.scores(*id),
                "frame {t}, object {id}"
            );
        }
        got
    }
}

/// Up to 3 objects added, removed and replaced between frames, on the whole-frame set or (`split`)
/// the object set at batch [`B`] (so 3 objects take two chunks), against the host path.
fn several_objects(mode: &Mode, split: bool) {
    let cfg = StreamConfig {
        max_text_len: LM,
        selection: Selection::Multi { threshold: 0.5 },
        ..StreamConfig::default()
    };
    let set = |s: Option<Arc<CudaStream>>| engine_set(split, s);
    let mut pair = Pair::new(mode, &format!("multi-{split}"), set, cfg, 3, (64, 36));
    assert_eq!(
        (pair.dev.is_split(), pair.dev.batch()),
        (split, if split { B } else { 1 })
    );
    let add = |p: &str| Command::Add {
        prompt: p.into(),
        object: None,
    };
    // Commands between frames: both paths must take or refuse each alike.
    let script: Vec<(usize, Command)> = vec![
        (
            0,
            Command::Prompt {
                prompt: "red ball; blue cup".into(),
            },
        ),
        (3, add("green box")),
        (4, add("one; too many")),
        (5, Command::Remove { object: 0 }),
        (7, add("the red ball")),
        (
            8,
            Command::Replace {
                object: 1,
                prompt: "yellow car".into(),
            },
        ),
        (10, Command::Clear),
        (11, add("blue cup")),
    ];
    let mut tracks_seen = 0;
    for t in 0..13 {
        for (_, c) in script.iter().filter(|(at, _)| *at == t) {
            let _ = pair.command(t, c);
        }
        let got = pair.step(t);
        tracks_seen += got.tracks.len();
        eprintln!(
            "frame {t}: {} objects, {} tracks, identical",
            pair.dev.len(),
            got.tracks.len()
        );
    }
    assert!(tracks_seen > 13, "several tracks per frame on average");
}

#[test]
fn finalize_on_the_device_matches_the_host_path() {
    for mode in modes("finalize_on_the_device_matches_the_host_path") {
        finalize_case(&mode, false);
    }
}

#[test]
fn finalize_on_the_object_set_matches_the_host_path() {
    for mode in modes("finalize_on_the_object_set_matches_the_host_path") {
        finalize_case(&mode, true);
    }
}

/// Two objects, the first keeping its clip: finalize after `W` frames, after a replace and 2 frames,
/// and (refused alike) after 4, on the whole-frame or (`split`) the object set.
fn finalize_case(mode: &Mode, split: bool) {
    let selection = Selection::Multi { threshold: 0.5 };
    let cfg = StreamConfig {
        max_text_len: LM,
        selection,
        keep_clip: true,
        ..StreamConfig::default()
    };
    let set = |s: Option<Arc<CudaStream>>| engine_set(split, s);
    let mut pair = Pair::new(mode, &format!("finalize-{split}"), set, cfg, 2, (64, 36));
    let prompt = Command::Prompt {
        prompt: "red ball; blue cup".into(),
    };
    pair.command(0, &prompt).unwrap();
    // (frames since the last change, whether finalize can re-score them)
    let mut t = 0;
    for (frames, change) in [(3, None), (2, Some("yellow car")), (2, None)] {
        if let Some(p) = change {
            let c = Command::Replace {
                object: 0,
                prompt: p.into(),
            };
            pair.command(t, &c).unwrap();
        }
        for _ in 0..frames {
            pair.step(t);
            t += 1;
        }
        let h = pair.host.finalize(&mut pair.eng, selection);
        let d = pair.dev.finalize(selection);
        match (h, d) {
            (Ok(h), Ok(d)) => {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&d.logits), bits(&h.logits), "frame {t}: logits");
                assert_eq!(bits(&d.boxes), bits(&h.boxes), "frame {t}: boxes");
                assert_eq!(
                    bits(&d.mask_logits),
                    bits(&h.mask_logits),
                    "frame {t}: mask logits"
                );
                assert_eq!(bits(&d.scores), bits(&h.scores), "frame {t}: scores");
                assert_eq!(d.chosen, h.chosen, "frame {t}");
                assert_eq!(d.masks, h.masks, "frame {t}");
                eprintln!(
                    "finalize after frame {t}: {} frames re-scored, identical",
                    d.masks.len()
                );
            }
            (Err(h), Err(d)) => {
                assert_eq!(d.to_string(), h.to_string(), "frame {t}");
                assert!(d.to_string().contains("T ≤ W"), "{d}");
                eprintln!("finalize after frame {t}: refused alike ({d})");
            }
            (h, d) => panic!("frame {t}: host {:?}, device {:?}", h.err(), d.err()),
        }
    }
}

/// The copy engines themselves, on the host path (every machine): the GPU tests compare against
/// these runs, so they must bind and produce tracks and masks.
#[test]
fn the_copy_engines_run_on_the_host_path() {
    for split in [false, true] {
        let mut eng = SharedEngines::new(engine_set(split, None), LM).unwrap();
        assert_eq!(
            (eng.is_split(), eng.batch()),
            (split, if split { B } else { 1 })
        );
        let mcfg = MultiConfig {
            selection: Selection::Multi { threshold: 0.5 },
            max_objects: 3,
            ..MultiConfig::default()
        };
        let (fw, fh) = (64usize, 36usize);
        let mut host = MultiStream::new(&eng, mcfg, (fh, fw)).unwrap();
        host.set_prompts(&mut eng, &["red ball", "blue cup", "green box"])
            .unwrap();
        let mut pre = Preprocessor::to_size(fw as u32, fh as u32, W as u32, H as u32);
        let mut mask = vec![0u8; fh * fw];
        let (mut tracks, mut labelled) = (0, 0);
        for t in 0..5 {
            pre.run(&frame_rgb(t, fw, fh), host.image_mut().unwrap())
                .unwrap();
            let r = host.step(&mut eng, &mut mask).unwrap();
            tracks += r.tracks.len();
            labelled += mask.iter().filter(|&&v| v != 0).count();
            // Every object reports tracks.
            for id in 0..3 {
                assert!(
                    r.tracks.iter().any(|e| e.object == id),
                    "split {split}, frame {t}"
                );
            }
        }
        assert!(
            tracks >= 15 && labelled > 0,
            "split {split}: {tracks} tracks, {labelled} px"
        );
    }
}

/// The emulated device session on the bundled tiny model's real engines (tract, CPU), against the host
/// path's `MultiStream` on its own copy of the same engines: two objects, then a third added (on the
/// object set at batch 2: two chunks), masks byte for byte and tracks bit for bit. Real engines take
/// the bindings' dtypes and shapes as exported (bool masks, i64 positions, batched rows).
#[test]
fn the_emulated_session_reproduces_the_host_path_on_the_tiny_model() {
    use referdino::backend::kind::BackendKind;
    use referdino::graph::engines::{ExportOptions, Geometry};
    let (ck, cfg) = referdino::pipeline::live::load_model(None, None).unwrap();
    let geo = Geometry {
        height: 70,
        width: 118,
        max_text: 12,
        window: 3,
    };
    let opts = ExportOptions::default();
    let (fw, fh) = (118usize, 70usize);
    for split in [false, true] {
        let set = || {
            if split {
                MultiEngineSet::build(BackendKind::Cpu, Some(1), &ck, &cfg, &geo, &opts, 2, 1)
                    .unwrap()
            } else {
                let b = BackendKind::Cpu.host_backends(Some(1)).unwrap();
                MultiEngineSet::from(EngineSet::on_each(&b, &ck, &cfg, &geo, &opts).unwrap())
            }
        };
        let scfg = StreamConfig {
            max_text_len: cfg.max_text_len,
            tracking_alpha: cfg.tracking_alpha,
            ..StreamConfig::default()
        };
        let mut pair = Pair::new(
            &Mode::Emulated,
            &format!("tiny-{split}"),
            |_| set(),
            scfg,
            3,
            (fw, fh),
        );
        assert_eq!(pair.dev.is_split(), split);
        let commands = [
            (
                0,
                Command::Prompt {
                    prompt: "a person; the dog".into(),
                },
            ),
            (
                3,
                Command::Add {
                    prompt: "a red car".into(),
                    object: None,
                },
            ),
        ];
        for t in 0..5 {
            for (_, c) in commands.iter().filter(|(at, _)| *at == t) {
                pair.command(t, c).unwrap();
            }
            let got = pair.step(t);
            assert!(!got.tracks.is_empty(), "split {split}, frame {t}");
            eprintln!(
                "tiny model, split {split}, frame {t}: {} tracks, identical",
                got.tracks.len()
            );
        }
    }
}

/// The live runtime's device lanes under the emulation: a folder of `W` frames (every frame processed,
/// all inside the window so that finalize re-scores them) with two objects and `--finalize`, run once on the host path and once with each stream a device
/// lane (`Runtime::emulating_the_device`), on both engine sets: the same masks every frame and the
/// same finalized clip.
#[test]
fn the_runtime_device_lanes_match_the_host_path_under_the_emulation() {
    use referdino::pipeline::live::{Runtime, RuntimeConfig};
    let dir = tempfile::tempdir().unwrap();
    // 80x48 frames: shorter side 24 → the engines' 40x24.
    let (fw, fh) = (80usize, 48usize);
    for t in 0..WIN {
        image::RgbImage::from_raw(fw as u32, fh as u32, frame_rgb(t, fw, fh))
            .unwrap()
            .save(dir.path().join(format!("{t:05}.png")))
            .unwrap();
    }
    let config = || {
        let mut c = RuntimeConfig::new(dir.path().to_str().unwrap());
        c.short_side = H as u32;
        c.prompt = Some("red ball; blue cup".into());
        c.max_objects = 3;
        c.collect_masks = true;
        c.finalize = true;
        c.multi = Some(0.5);
        c
    };
    let scfg = StreamConfig {
        max_text_len: LM,
        ..StreamConfig::default()
    };
    for split in [false, true] {
        let host = Runtime::with_engines(config(), engine_set(split, None), scfg)
            .unwrap()
            .run()
            .unwrap();
        let dev = Runtime::emulating_the_device(config(), vec![engine_set(split, None)], scfg)
            .unwrap()
            .run()
            .unwrap();
        assert_eq!(host.frames_processed, WIN as u64, "{}", host.text());
        assert_eq!(dev.frames_processed, WIN as u64, "{}", dev.text());
        assert_eq!(dev.masks.len(), host.masks.len());
        for (k, (d, h)) in dev.masks.iter().zip(&host.masks).enumerate() {
            assert_eq!(d, h, "split {split}, frame {k}");
        }
        assert!(host.masks.iter().any(|m| m.iter().any(|&v| v != 0)));
        let (d, h) = (dev.finalized.unwrap(), host.finalized.unwrap());
        assert_eq!(d.chosen, h.chosen, "split {split}");
        assert_eq!(d.masks, h.masks, "split {split}");
        assert_eq!(d.logits, h.logits, "split {split}");
        eprintln!(
            "runtime, split {split}: {WIN} frames and the finalized clip identical ({} tracks chosen)",
            d.chosen.len()
        );
    }
}

/// Cameras of two aspect ratios on the device path (under the emulation): each stream takes, from
/// the sets given in any order, one of the input size its frames resize to, and gives the masks of
/// its source run alone on the host path with the engines of that size; a stream for which no set
/// of its size is left is refused, naming its size.
#[test]
fn device_lanes_take_the_engine_set_of_their_input_size() {
    use referdino::pipeline::commands::InputSize;
    use referdino::pipeline::live::{Runtime, RuntimeConfig};
    let dir = tempfile::tempdir().unwrap();
    // Shorter side 24: 80x48 frames resize to 40x24, 64x48 ones to 32x24.
    let folders = [((80usize, 48usize), "wide"), ((64, 48), "narrow")];
    for ((fw, fh), name) in folders {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for t in 0..WIN {
            image::RgbImage::from_raw(fw as u32, fh as u32, frame_rgb(t + fw, fw, fh))
                .unwrap()
                .save(d.join(format!("{t:05}.png")))
                .unwrap();
        }
    }
    let (wide, narrow) = (dir.path().join("wide"), dir.path().join("narrow"));
    let config = |sources: &[&std::path::Path]| {
        let mut c = RuntimeConfig::new(sources[0].to_str().unwrap());
        c.sources = sources[1..]
            .iter()
            .map(|p| p.to_str().unwrap().to_string())
            .collect();
        c.short_side = H as u32;
        c.prompt = Some("red ball; blue cup".into());
        c.max_objects = 3;
        c.collect_masks = true;
        c.multi = Some(0.5);
        c
    };
    let scfg = StreamConfig {
        max_text_len: LM,
        ..StreamConfig::default()
    };
    let set = |hw| MultiEngineSet::from(engines_at(None, hw));
    let (wide_hw, narrow_hw) = ((H, W), (H, 32));
    let alone = |src: &std::path::Path, hw| {
        Runtime::with_engines(config(&[src]), set(hw), scfg)
            .unwrap()
            .run()
            .unwrap()
    };
    let (wide_alone, narrow_alone) = (alone(&wide, wide_hw), alone(&narrow, narrow_hw));
    // The narrow set first: the wide stream (stream 0) must pass it over.
    let rt = Runtime::emulating_the_device(
        config(&[&wide, &narrow]),
        vec![set(narrow_hw), set(wide_hw)],
        scfg,
    )
    .unwrap();
    let inputs: Vec<InputSize> = rt.streams().iter().map(|s| s.input_size()).collect();
    let size = |(h, w): (usize, usize)| InputSize {
        width: w as u32,
        height: h as u32,
    };
    assert_eq!(inputs, [size(wide_hw), size(narrow_hw)]);
    let dev = rt.run().unwrap();
    for (got, want, what) in [
        (&dev.masks, &wide_alone.masks, "40x24 stream"),
        (&dev.streams[0].masks, &narrow_alone.masks, "32x24 stream"),
    ] {
        assert_eq!(got.len(), WIN, "{what}");
        assert_eq!(
            got, want,
            "{what}: the device lane's masks differ from its source alone"
        );
        assert!(
            want.iter().any(|m| m.iter().any(|&v| v != 0)),
            "{what}: empty masks"
        );
    }
    assert_eq!(dev.streams[0].input, Some(size(narrow_hw)));
    eprintln!("device lanes of two input sizes: {WIN} frames each, identical to each source alone");

    // Sets of one size only: the second stream finds none of its size.
    let e = Runtime::emulating_the_device(
        config(&[&wide, &narrow]),
        vec![set(wide_hw), set(wide_hw)],
        scfg,
    )
    .err()
    .expect("no 32x24 set")
    .to_string();
    assert!(
        e.contains("source 1") && e.contains("resize to 32x24") && e.contains("device engine sets"),
        "{e}"
    );
}

/// A device pool whose sets of the 40x24 input are made by a counting maker (as a TensorRT run makes
/// a stream's execution contexts from its directory's plans), the `fail`-th call (0 first) failing,
/// and a 32x24 size no camera takes; the two counters.
fn counting_pool(
    fail: Option<usize>,
) -> (
    referdino::pipeline::live::DeviceSets,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (wide, narrow) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut pool = referdino::pipeline::live::DeviceSets::default();
    let calls = Arc::clone(&wide);
    pool.add_maker(
        (W as u32, H as u32),
        Box::new(move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if fail == Some(n) {
                anyhow::bail!("out of memory for another execution context");
            }
            Ok(engine_set(false, None))
        }),
    );
    let calls = Arc::clone(&narrow);
    pool.add_maker(
        (32, H as u32),
        Box::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(MultiEngineSet::from(engines_at(None, (H, 32))))
        }),
    );
    (pool, wide, narrow)
}

/// Steps `rt` until `done` (a frame failing or the run ending is a failure), at most 4000 steps.
fn step_until(
    rt: &mut referdino::pipeline::live::Runtime,
    what: &str,
    done: impl Fn(&referdino::pipeline::live::Runtime) -> bool,
) {
    use referdino::pipeline::live::Step;
    let mut steps = 0;
    while !done(rt) {
        let s = rt.step();
        assert!(!matches!(s, Step::Ended | Step::Failed), "{what}: {s:?}");
        steps += 1;
        assert!(steps < 4000, "{what}: not after {steps} steps");
    }
}

/// A device set is made when a stream takes it, not up front for every camera that might come: at
/// start-up one for the camera open then; none for the cameras still to come (one of them never
/// comes) nor for the size no camera has; one more when a late camera joins, which then runs.
#[test]
fn device_sets_are_made_when_a_stream_takes_one() {
    use referdino::pipeline::live::{Runtime, RuntimeConfig};
    use std::sync::atomic::{AtomicBool, Ordering};
    let (pool, wide, narrow) = counting_pool(None);
    // 80x48 frames resize to 40x24 at shorter side 24, 64x48 ones to 32x24.
    let (late_open, never_open) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let late = cameras::Late {
        inner: cameras::synthetic((80, 48)),
        open: Arc::clone(&late_open),
    };
    let never = cameras::Late {
        inner: cameras::synthetic((64, 48)),
        open: Arc::clone(&never_open),
    };
    let mut c = RuntimeConfig::new("label only");
    c.short_side = H as u32;
    c.prompt = Some("red ball".into());
    let scfg = StreamConfig {
        max_text_len: LM,
        ..StreamConfig::default()
    };
    let sources: Vec<Box<dyn referdino::camera::FrameSource>> = vec![
        cameras::synthetic((80, 48)),
        Box::new(late),
        Box::new(never),
    ];
    let mut rt = Runtime::emulating_the_device_on(c, pool, scfg, sources).unwrap();
    let count = |rt: &Runtime| {
        (
            rt.device_sets_made(),
            wide.load(Ordering::SeqCst),
            narrow.load(Ordering::SeqCst),
        )
    };
    assert_eq!(rt.streams().len(), 1);
    assert_eq!(rt.waiting().count(), 2);
    assert_eq!(
        count(&rt),
        (1, 1, 0),
        "one set, for the camera open at start-up"
    );
    step_until(&mut rt, "stream 0's frames", |rt| {
        rt.stream(0).is_some_and(|s| s.frames_processed() >= 3)
    });
    assert_eq!(
        count(&rt),
        (1, 1, 0),
        "no set made while the others are away"
    );
    late_open.store(true, Ordering::SeqCst);
    step_until(&mut rt, "the late camera's frames", |rt| {
        rt.stream(1).is_some_and(|s| s.frames_processed() >= 3)
    });
    assert_eq!(
        count(&rt),
        (2, 2, 0),
        "one more set, when the late camera joined"
    );
    assert_eq!(rt.waiting().map(|(i, _)| i).collect::<Vec<_>>(), [2]);
    assert_eq!(rt.gone().count(), 0);
    let sum = rt.finish().unwrap();
    // Stream 0's own count is the top level's; the late camera's is among `streams` (stream 0 runs
    // on while the late one takes its frames, but how many it gets meanwhile is timing).
    let total: u64 =
        sum.frames_processed + sum.streams.iter().map(|s| s.frames_processed).sum::<u64>();
    assert!(total >= 6, "{}", sum.text());
    // The camera that never came made nothing; let its opener end.
    assert_eq!(
        (wide.load(Ordering::SeqCst), narrow.load(Ordering::SeqCst)),
        (2, 0)
    );
    never_open.store(true, Ordering::SeqCst);
    eprintln!(
        "device sets made: 1 at start-up, 1 when the late camera joined, 0 for the absent one"
    );
}

/// A set that cannot be made when a late camera joins (no memory for its execution contexts) is
/// that camera's error: it cannot join, with the reason; the open stream goes on. At start-up the
/// same failure fails the start.
#[test]
fn a_device_set_that_cannot_be_made_keeps_only_its_camera_out() {
    use referdino::pipeline::live::{Runtime, RuntimeConfig};
    use std::sync::atomic::{AtomicBool, Ordering};
    let scfg = StreamConfig {
        max_text_len: LM,
        ..StreamConfig::default()
    };
    let config = || {
        let mut c = RuntimeConfig::new("label only");
        c.short_side = H as u32;
        c.prompt = Some("red ball".into());
        c
    };
    let (pool, wide, _) = counting_pool(Some(1));
    let open = Arc::new(AtomicBool::new(false));
    let late = cameras::Late {
        inner: cameras::synthetic((80, 48)),
        open: Arc::clone(&open),
    };
    let sources: Vec<Box<dyn referdino::camera::FrameSource>> =
        vec![cameras::synthetic((80, 48)), Box::new(late)];
    let mut rt = Runtime::emulating_the_device_on(config(), pool, scfg, sources).unwrap();
    open.store(true, Ordering::SeqCst);
    step_until(&mut rt, "the late camera's refusal", |rt| {
        rt.waiting().count() == 0 && rt.stream(0).is_some_and(|s| s.frames_processed() >= 6)
    });
    let gone: Vec<(usize, String)> = rt.gone().map(|(i, w)| (i, w.to_string())).collect();
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert!(
        gone[0].0 == 1
            && gone[0]
                .1
                .contains("cannot make an engine set of its 40x24 input")
            && gone[0]
                .1
                .contains("out of memory for another execution context"),
        "{gone:?}"
    );
    assert!(rt.stream(1).is_none());
    assert_eq!((rt.device_sets_made(), wide.load(Ordering::SeqCst)), (1, 2));
    rt.finish().unwrap();

    // At start-up: the run does not start.
    let (pool, _, _) = counting_pool(Some(0));
    let e =
        Runtime::emulating_the_device_on(config(), pool, scfg, vec![cameras::synthetic((80, 48))])
            .err()
            .expect("no set for the only camera")
            .to_string();
    assert!(e.contains("cannot make an engine set"), "{e}");
}

/// A device lane takes the camera's YUYV and BGR frames as they come (its preprocessing kernel
/// decodes them; the emulation with the CPU conversion the kernel reproduces): raw YUYV and BGR files
/// on device lanes give, frame for frame, the masks of the host path on the same frames converted to
/// RGB, the stream reports the source's layout, and an overlay sink still gets RGB frames.
#[test]
fn device_lanes_take_yuyv_bgr_and_bgrx_frames_as_the_camera_delivers_them() {
    use referdino::camera::convert::yuyv_to_rgb;
    use referdino::camera::Layout;
    use referdino::pipeline::live::{Runtime, RuntimeConfig, Step};
    let dir = tempfile::tempdir().unwrap();
    let (fw, fh) = (80usize, 48usize);
    // YUYV frames: a luma ramp and chroma varying by frame, so every pixel pair differs.
    let mut yuyv = Vec::new();
    for t in 0..WIN {
        for y in 0..fh {
            for x in 0..fw / 2 {
                let l = (16 + (x * 7 + y * 3 + t * 29) % 220) as u8;
                yuyv.extend([
                    l,
                    (64 + (x * 5 + t * 40) % 128) as u8,
                    l.saturating_add(9),
                    (60 + (y * 4 + t * 13) % 140) as u8,
                ]);
            }
        }
    }
    let frame = fw * fh;
    let mut rgb = vec![0u8; WIN * frame * 3];
    for t in 0..WIN {
        yuyv_to_rgb(
            &yuyv[t * frame * 2..(t + 1) * frame * 2],
            fw as u32,
            fh as u32,
            fw * 2,
            &mut rgb[t * frame * 3..(t + 1) * frame * 3],
        )
        .unwrap();
    }
    let bgr: Vec<u8> = rgb
        .chunks_exact(3)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect();
    // What Jetson's nvvidconv writes for a CSI camera (the fourth byte ignored).
    let bgrx: Vec<u8> = rgb
        .chunks_exact(3)
        .flat_map(|p| [p[2], p[1], p[0], 0x5a])
        .collect();
    for (name, bytes) in [
        ("f.yuyv", &yuyv),
        ("f.rgb", &rgb),
        ("f.bgr", &bgr),
        ("f.bgrx", &bgrx),
    ] {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let config = |file: &str, format: &str| {
        let src = format!("raw:{fw}x{fh}:{format}:{}", dir.path().join(file).display());
        let mut c = RuntimeConfig::new(&src);
        c.short_side = H as u32;
        c.prompt = Some("red ball; blue cup".into());
        c.max_objects = 3;
        c.collect_masks = true;
        c.multi = Some(0.5);
        c
    };
    let scfg = StreamConfig {
        max_text_len: LM,
        ..StreamConfig::default()
    };
    let host = Runtime::with_engines(config("f.rgb", "rgb"), engine_set(false, None), scfg)
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(host.frames_processed, WIN as u64, "{}", host.text());
    assert!(host.masks.iter().any(|m| m.iter().any(|&v| v != 0)));
    for (file, format, layout) in [
        ("f.yuyv", "yuyv", Layout::Yuyv),
        ("f.bgr", "bgr", Layout::Bgr),
        ("f.bgrx", "bgrx", Layout::Bgrx),
    ] {
        let mut c = config(file, format);
        c.save_dir = Some(dir.path().join(format!("overlays-{format}")));
        let mut rt = Runtime::emulating_the_device(c, vec![engine_set(false, None)], scfg).unwrap();
        let mut seen = Vec::new();
        loop {
            match rt.step() {
                Step::Ended => break,
                Step::Frame => seen.push(rt.streams()[0].frame_layout()),
                Step::Failed | Step::Skipped => panic!("{format}: a frame failed"),
                _ => {}
            }
        }
        // The first frame (read at open, before the lane existed) is RGB; the rest came as they are.
        assert_eq!(seen.len(), WIN, "{format}");
        assert!(seen[1..].iter().all(|l| *l == layout), "{format}: {seen:?}");
        let dev = rt.finish().unwrap();
        assert_eq!(dev.frames_processed, WIN as u64, "{}", dev.text());
        assert_eq!(dev.sink_errors, 0, "{format}: {}", dev.text());
        for (k, (d, h)) in dev.masks.iter().zip(&host.masks).enumerate() {
            assert_eq!(d, h, "{format}, frame {k}");
        }
        let pngs = std::fs::read_dir(dir.path().join(format!("overlays-{format}")))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "png")
            })
            .count();
        assert_eq!(pngs, WIN, "{format}: one overlay per frame");
    }
}

/// Bad input on the device session (under the emulation) is a clear error and changes nothing: a step
/// before any frame, a prompt longer than the engines take, a frame of the wrong geometry for the
/// emulation, an unknown object; the ring then holds only committed frames.
#[test]
fn the_device_session_refuses_bad_input_and_goes_on() {
    let (fw, fh) = (64usize, 36usize);
    let cfg = StreamConfig {
        max_text_len: 64,
        ..StreamConfig::default()
    };
    let mut dev = DeviceStreamSession::emulated(engines(None), cfg, (fh, fw), 2).unwrap();
    let name = format!("gpu-device-bad-{}", std::process::id());
    let geom = RingGeometry {
        width: fw as u32,
        height: fh as u32,
        slots: 3,
    };
    let mut ring = MaskRing::create_with(&name, geom, &RingOptions::default()).unwrap();
    // Stepping before a ring is attached, and a ring of another size.
    let e = dev.step_into_ring(&mut ring, 0, 0).unwrap_err().to_string();
    assert!(e.contains("attach_ring"), "{e}");
    let other = RingGeometry {
        width: 32,
        height: 18,
        slots: 3,
    };
    let mut small =
        MaskRing::create_with(&format!("{name}-small"), other, &RingOptions::default()).unwrap();
    let e = dev.attach_ring(&mut small).unwrap_err().to_string();
    assert!(e.contains("32x18"), "{e}");
    dev.attach_ring(&mut ring).unwrap();
    let reader = MaskRingReader::open(&name).unwrap();
    let mut copy = reader.new_copy();
    dev.set_prompt("red ball").unwrap();
    // No frame yet: an error, and the slot is not committed.
    let e = dev.step_into_ring(&mut ring, 0, 0).unwrap_err().to_string();
    assert!(e.contains("no frame"), "{e}");
    assert!(reader.read_latest(&mut copy).is_none(), "nothing committed");
    // A prompt longer than the engines' text length: refused, the object stays.
    let long = "the red ball next to the blue cup on the left of the green box";
    let e = dev.set_prompt(long).unwrap_err().to_string();
    assert!(e.contains("tokens"), "{e}");
    let objects: Vec<_> = dev.objects().map(|o| (o.0, o.1.to_string())).collect();
    assert_eq!(objects, [(0, "red ball".to_string())]);
    let e = apply_command(
        &mut dev,
        &Command::Replace {
            object: 4,
            prompt: "x".into(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no object 4 (objects: [0])"), "{e}");
    // The emulation takes tight frames only: padded rows are an error, then RGB works.
    let e = dev
        .frame_mut(FrameFormat::Bgr24, fw as u32, fh as u32, fw * 3 + 4)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tight frames"), "{e}");
    for t in 0..2 {
        dev.frame_mut(FrameFormat::Rgb24, fw as u32, fh as u32, fw * 3)
            .unwrap()
            .copy_from_slice(&frame_rgb(t, fw, fh));
        let r = dev.step_into_ring(&mut ring, 10 + t as u64, 0).unwrap();
        assert!(r.active && !r.tracks.is_empty());
        assert!(reader.read_latest(&mut copy).is_some());
        assert_eq!(copy.frame_id, 10 + t as u64);
    }
    // Without objects the slot is committed empty.
    dev.clear_prompt();
    let r = dev.step_into_ring(&mut ring, 12, 0).unwrap();
    assert!(!r.active);
    assert!(reader.read_latest(&mut copy).is_some());
    assert_eq!(copy.frame_id, 12);
    assert!(copy.mask.iter().all(|&v| v == 0) && copy.tracks.is_empty());
    // A camera joining late takes what the others were told (`JoinTemplate`): the objects with their
    // ids and the next id; a prompt this session's text engine refuses is left out, with the reason.
    let mut t = JoinTemplate::new(Some("red ball"), 2, None).unwrap();
    let add = |prompt: &str, object| Command::Add {
        prompt: prompt.into(),
        object,
    };
    t.apply(&add(long, Some(3))).unwrap();
    let refused = t.restore(&mut dev);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0, 3);
    assert!(
        refused[0].1.to_string().contains("tokens"),
        "{}",
        refused[0].1
    );
    assert_eq!(dev.ids(), [0]);
    assert_eq!(apply_command(&mut dev, &add("cup", None)).unwrap(), [4]);
}

/// Wraps an engine and fails its run number `fail` (counted from 0).
struct FailingRun {
    inner: Box<dyn Engine>,
    runs: u64,
    fail: u64,
}

impl FailingRun {
    /// Counts a run (or enqueue) and fails the one numbered `fail`.
    fn count(&mut self) -> referdino::Result<()> {
        let n = self.runs;
        self.runs += 1;
        if n == self.fail {
            return Err(referdino::Error::Backend(format!(
                "injected failure of run {n}"
            )));
        }
        Ok(())
    }
}

impl Engine for FailingRun {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn inputs(&self) -> &[TensorSpec] {
        self.inner.inputs()
    }
    fn outputs(&self) -> &[TensorSpec] {
        self.inner.outputs()
    }
    fn run(&mut self, inputs: &[View<'_>], outputs: &mut [ViewMut<'_>]) -> referdino::Result<()> {
        self.count()?;
        self.inner.run(inputs, outputs)
    }
    fn enqueue(
        &mut self,
        inputs: &[View<'_>],
        outputs: &mut [ViewMut<'_>],
    ) -> referdino::Result<()> {
        self.count()?;
        self.inner.enqueue(inputs, outputs)
    }
    fn cuda_stream(&self) -> Option<usize> {
        self.inner.cuda_stream()
    }
}

/// A frame whose head engine fails after the object's tracker stepped and its window and clip took
/// the frame (under the emulation): the object restarts its tracking, later frames run, and the
/// clip holds exactly the frames counted since, so finalize re-scores them.
#[test]
fn a_device_frame_that_fails_part_way_leaves_no_half_advanced_object() {
    let cfg = StreamConfig {
        max_text_len: LM,
        keep_clip: true,
        ..StreamConfig::default()
    };
    let mut set = engine_set(false, None);
    set.head = Box::new(FailingRun {
        inner: set.head,
        runs: 0,
        fail: 1,
    });
    let (fw, fh) = (64usize, 36usize);
    let mut dev = DeviceStreamSession::emulated(set, cfg, (fh, fw), 2).unwrap();
    dev.set_prompts(&["red ball"]).unwrap();
    let name = format!("gpu-device-partial-{}", std::process::id());
    let geom = RingGeometry {
        width: fw as u32,
        height: fh as u32,
        slots: 3,
    };
    let mut ring = MaskRing::create_with(&name, geom, &RingOptions::default()).unwrap();
    dev.attach_ring(&mut ring).unwrap();
    let mut ok = Vec::new();
    for t in 0..4 {
        dev.frame_mut(FrameFormat::Rgb24, fw as u32, fh as u32, fw * 3)
            .unwrap()
            .copy_from_slice(&frame_rgb(t, fw, fh));
        ok.push(dev.step_into_ring(&mut ring, t as u64, 0).is_ok());
    }
    assert_eq!(ok, [true, false, true, true]);
    assert_eq!(dev.object_frames(0), Some(2));
    let v = dev.finalize(Selection::Single).unwrap();
    assert_eq!(v.masks.len(), 2);
}

/// Where the head engines of several device lanes meet: a run that finds another inside makes a
/// meeting; a run that finds none waits (up to `patience`) for one to come.
struct Room {
    /// Runs inside, and meetings so far.
    state: std::sync::Mutex<(usize, usize)>,
    changed: std::sync::Condvar,
    patience: std::time::Duration,
}

impl Room {
    fn meetings(&self) -> usize {
        self.state.lock().unwrap().1
    }
}

/// Wraps an engine whose every run enters the shared [`Room`] first.
struct Rendezvous {
    inner: Box<dyn Engine>,
    room: Arc<Room>,
}

impl Rendezvous {
    fn meet(&self) {
        let r = &self.room;
        let mut s = r.state.lock().unwrap();
        s.0 += 1;
        if s.0 > 1 {
            s.1 += 1;
            r.changed.notify_all();
        } else {
            let seen = s.1;
            drop(r.changed.wait_timeout_while(s, r.patience, |s| s.1 == seen));
        }
    }

    fn leave(&self) {
        self.room.state.lock().unwrap().0 -= 1;
    }
}

impl Engine for Rendezvous {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn inputs(&self) -> &[TensorSpec] {
        self.inner.inputs()
    }
    fn outputs(&self) -> &[TensorSpec] {
        self.inner.outputs()
    }
    fn run(&mut self, inputs: &[View<'_>], outputs: &mut [ViewMut<'_>]) -> referdino::Result<()> {
        self.meet();
        let r = self.inner.run(inputs, outputs);
        self.leave();
        r
    }
    fn enqueue(
        &mut self,
        inputs: &[View<'_>],
        outputs: &mut [ViewMut<'_>],
    ) -> referdino::Result<()> {
        self.meet();
        let r = self.inner.enqueue(inputs, outputs);
        self.leave();
        r
    }
    fn cuda_stream(&self) -> Option<usize> {
        self.inner.cuda_stream()
    }
}

/// Two cameras on device lanes step side by side: their head engines, the first waiting up to a
/// second for the other's, meet (one loop thread stepping the lanes one after another never lets two runs
/// be inside at once), and every frame of both streams is processed.
#[test]
fn device_lanes_of_two_cameras_run_side_by_side() {
    use referdino::pipeline::live::{Runtime, RuntimeConfig};
    let room = Arc::new(Room {
        state: std::sync::Mutex::new((0, 0)),
        changed: std::sync::Condvar::new(),
        patience: std::time::Duration::from_secs(1),
    });
    let set = || {
        let mut s = engine_set(false, None);
        s.head = Box::new(Rendezvous {
            inner: s.head,
            room: Arc::clone(&room),
        });
        s
    };
    // 80x48 frames, shorter side 24: the engines' 40x24; always a frame ready.
    let mut c = RuntimeConfig::new("synthetic:80x48@1000");
    c.sources = vec!["synthetic:80x48@1000".into()];
    c.short_side = H as u32;
    c.prompt = Some("red ball".into());
    c.max_frames = Some(6);
    let scfg = StreamConfig {
        max_text_len: LM,
        ..StreamConfig::default()
    };
    let sum = Runtime::emulating_the_device(c, vec![set(), set()], scfg)
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(sum.frames_processed, 6, "{}", sum.text());
    assert_eq!(sum.streams.len(), 1);
    assert_eq!(sum.streams[0].frames_processed, 6, "{}", sum.text());
    let met = room.meetings();
    assert!(met >= 1, "the lanes' head runs never overlapped");
    eprintln!("two device lanes: 6 frames each, the head runs of {met} of 6 frames overlapped");
}
