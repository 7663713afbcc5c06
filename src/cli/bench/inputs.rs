//! Realistic inputs for the engines: a real tokenized prompt, an image (`--image`, the bundled clip's
//! first frame or a synthetic pattern) preprocessed as the runtime does, each engine's inputs taken
//! from the values produced upstream, and deterministic fillers for the rest.

use crate::backend::TensorSpec;
use crate::graph::engines::names;
use crate::tensor::{read_safetensors, Data, Tensor};
use crate::text::Tokenizer;
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::path::Path;

const FIXTURE_INPUTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/referdino-tiny/inputs.safetensors"
);

/// The image as a normalised `[3,H,W]` buffer, and a description of where it came from.
pub(super) fn load_image(
    path: Option<&Path>,
    h: usize,
    w: usize,
) -> anyhow::Result<(Vec<f32>, String)> {
    let (rgb, what) = match path {
        Some(p) => (
            image::open(p)
                .with_context(|| format!("--image {}", p.display()))?
                .to_rgb8(),
            p.display().to_string(),
        ),
        None => match bundled_frame()? {
            Some(img) => (img, "bundled clip, frame 0 (resized)".to_string()),
            None => (
                image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
                    image::Rgb([(x * 255 / w as u32) as u8, (y * 255 / h as u32) as u8, 96])
                }),
                "synthetic gradient".to_string(),
            ),
        },
    };
    // The runtime's preprocessing (PIL-compatible bilinear), to exactly the engine's input size.
    let mut pre =
        crate::camera::Preprocessor::try_to_size(rgb.width(), rgb.height(), w as u32, h as u32)?;
    let mut out = vec![0f32; 3 * h * w];
    pre.run(rgb.as_raw(), &mut out)?;
    Ok((out, what))
}

fn bundled_frame() -> anyhow::Result<Option<image::RgbImage>> {
    let p = Path::new(FIXTURE_INPUTS);
    if !p.exists() {
        return Ok(None);
    }
    let (t, _) = read_safetensors(p)?;
    let Some(clip) = t.get("frames_uint8") else {
        return Ok(None);
    };
    let s = clip.shape();
    let Data::U8(px) = clip.data() else {
        return Ok(None);
    };
    if s.len() != 4 || s[3] != 3 {
        return Ok(None);
    }
    let n = s[1] * s[2] * 3;
    Ok(image::RgbImage::from_raw(
        s[2] as u32,
        s[1] as u32,
        px[..n].to_vec(),
    ))
}

/// Deterministic filler for an input no upstream engine produced.
pub(super) fn synthetic(spec: &TensorSpec) -> Tensor {
    let n = spec.numel();
    let mut t = Tensor::zeros(&spec.shape, spec.dtype);
    match t.data_mut() {
        Data::F32(v) => {
            let mut rng = crate::weights::random::SplitMix::new(n as u64);
            v.iter_mut().for_each(|x| *x = rng.uniform(-1.0, 1.0));
        }
        Data::Bool(v) => v.iter_mut().for_each(|x| *x = true),
        _ => {}
    }
    t
}

/// Repeats `src` `times` times (same element type).
fn tile(src: &Tensor, shape: &[usize], times: usize) -> anyhow::Result<Tensor> {
    let data = match src.data() {
        Data::F32(v) => Data::F32(v.repeat(times)),
        Data::Bool(v) => Data::Bool(v.repeat(times)),
        Data::I64(v) => Data::I64(v.repeat(times)),
        _ => bail!("cannot tile a {:?} tensor", src.dtype()),
    };
    Ok(Tensor::new(shape.to_vec(), data)?)
}

/// The value for one engine input, from the values produced so far (prompt, image, upstream outputs).
pub(super) fn input_value(
    spec: &TensorSpec,
    pool: &HashMap<String, Tensor>,
    d: usize,
) -> anyhow::Result<Option<Tensor>> {
    let fits = |t: &Tensor| t.numel() == spec.numel() && t.dtype() == spec.dtype;
    if let Some(t) = pool.get(&spec.name).filter(|t| fits(t)) {
        return Ok(Some(t.clone().reshape(&spec.shape)?));
    }
    let win = spec.shape.first().copied().unwrap_or(1);
    Ok(match spec.name.as_str() {
        // Temporal window: the frame's objects repeated over the window.
        names::OBJECTS => match pool.get(names::OBJECTS) {
            Some(o) if o.numel() * win == spec.numel() => Some(tile(o, &spec.shape, win)?),
            _ => None,
        },
        // Per-frame sentence feature = the enhanced [CLS] token.
        names::SENTENCE => match pool.get(names::MEMORY_TEXT) {
            Some(m) if m.numel() >= d && d * win == spec.numel() => {
                let cls = Tensor::from_f32(&[1, d], m.f32s()?[..d].to_vec())?;
                Some(tile(&cls, &spec.shape, win)?)
            }
            _ => None,
        },
        names::FRAME_MASK => Some(Tensor::new(
            spec.shape.clone(),
            Data::Bool(vec![true; spec.numel()]),
        )?),
        // Head input: the temporal output's first frame, else the frame's objects.
        names::OBJECTS_T => pool
            .get(names::OBJECTS_T)
            .or_else(|| pool.get(names::OBJECTS))
            .filter(|t| t.numel() >= spec.numel())
            .map(|t| {
                Tensor::from_f32(&spec.shape, t.f32s()?[..spec.numel()].to_vec())
                    .map_err(anyhow::Error::from)
            })
            .transpose()?,
        _ => None,
    })
}

/// Prompt-derived inputs padded to `lm` (pads masked; a pad attends only to itself).
pub(super) fn prompt_inputs(
    prompt: &str,
    lm: usize,
) -> anyhow::Result<(HashMap<String, Tensor>, usize, String)> {
    let tok = Tokenizer::bundled()?;
    let c = tok.encode_prompt(prompt, lm)?;
    let l = c.len;
    let mut ids = vec![0i64; lm];
    let mut tt = vec![0i64; lm];
    let mut pos = vec![0i64; lm];
    ids[..l].copy_from_slice(&c.input_ids);
    tt[..l].copy_from_slice(&c.token_type_ids);
    pos[..l].copy_from_slice(&c.position_ids);
    let mask: Vec<bool> = (0..lm).map(|i| i < l).collect();
    let mut sam = vec![false; lm * lm];
    for i in 0..lm {
        for j in 0..lm {
            sam[i * lm + j] = if i < l && j < l {
                c.self_attention_mask[i * l + j]
            } else {
                i == j
            };
        }
    }
    let mut m = HashMap::new();
    m.insert(
        names::INPUT_IDS.to_string(),
        Tensor::from_i64(&[1, lm], ids)?,
    );
    m.insert(
        names::TOKEN_TYPE_IDS.to_string(),
        Tensor::from_i64(&[1, lm], tt)?,
    );
    m.insert(
        names::POSITION_IDS.to_string(),
        Tensor::from_i64(&[1, lm], pos)?,
    );
    m.insert(
        names::TEXT_TOKEN_MASK.to_string(),
        Tensor::new(vec![1, lm], Data::Bool(mask))?,
    );
    m.insert(
        names::TEXT_SELF_ATTENTION_MASK.to_string(),
        Tensor::new(vec![1, lm, lm], Data::Bool(sam))?,
    );
    Ok((m, l, c.caption))
}
