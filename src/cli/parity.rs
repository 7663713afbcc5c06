//! `referdino parity DIR`: run the whole network from raw frames and caption on a fixture directory and
//! compare every stage with the official reference outputs.

use crate::config::ModelConfig;
use crate::graph::engines::{ExportOptions, Geometry};
use crate::pipeline::engine_dir::BackendKind;
use crate::pipeline::post::Selection;
use crate::pipeline::session::{EngineSet, Session, Trace};
use crate::tensor::{read_safetensors, write_safetensors, DType, Data, Tensor};
use crate::text::Tokenizer;
use crate::weights::Checkpoint;
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Arguments of `referdino parity`.
#[derive(clap::Args, Debug)]
pub struct ParityArgs {
    /// Fixture directory (config.json, weights.safetensors or checkpoint.pth, inputs.safetensors,
    /// optionally outputs.safetensors).
    pub dir: PathBuf,
    /// Write every stage under the fixture's key names to this safetensors file.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Weights to use instead of the directory's.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Max text length of the exported engines (default: the caption's length; larger pads the text).
    #[arg(long)]
    pub max_text: Option<usize>,
    /// Emit the custom ops decomposed into standard ONNX (checks the decomposition instead of our kernels).
    #[arg(long)]
    pub decomposed: bool,
}

/// One row of the parity table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// Fixture key.
    pub key: String,
    /// Shape compared.
    pub shape: Vec<usize>,
    /// Max abs error (floats) or number of differing elements (integers/bools).
    pub error: f64,
    /// Tolerance applied.
    pub tolerance: f64,
    /// Within tolerance.
    pub ok: bool,
}

/// Normalises `[T,H,W,3]` u8 frames into `[3,H,W]` f32 per frame exactly as ToTensor + Normalize.
pub fn normalize_frames(frames: &Tensor) -> anyhow::Result<Vec<Vec<f32>>> {
    let s = frames.shape();
    if s.len() != 4 || s[3] != 3 {
        bail!("frames_uint8 must be [T,H,W,3], got {s:?}");
    }
    let Data::U8(v) = frames.data() else {
        bail!("frames_uint8 must be uint8");
    };
    let (t, h, w) = (s[0], s[1], s[2]);
    // Same size in and out: the filter is the identity, so this is ToTensor + Normalize alone.
    let mut pre = crate::camera::Preprocessor::try_to_size(w as u32, h as u32, w as u32, h as u32)?;
    let mut out = Vec::with_capacity(t);
    for frame in v.chunks_exact(h * w * 3).take(t) {
        let mut img = vec![0f32; 3 * h * w];
        pre.run(frame, &mut img)?;
        out.push(img);
    }
    Ok(out)
}

/// Concatenates per-frame parts into the reference layout: along the axis where the parts are 1 wide
/// and the reference is `n` wide (axis 0 when there is no reference).
pub fn assemble(parts: &[Tensor], reference: Option<&Tensor>) -> anyhow::Result<Tensor> {
    if parts.len() == 1 {
        return Ok(parts[0].clone());
    }
    let s = parts[0].shape().to_vec();
    let n = parts.len();
    // Whole-video constants (level shapes, ...) are tapped once per frame: keep one copy.
    if reference.is_some_and(|r| r.shape() == s.as_slice()) && parts.iter().all(|p| p == &parts[0])
    {
        return Ok(parts[0].clone());
    }
    let axis = match reference {
        Some(r) if r.shape().len() == s.len() => (0..s.len())
            .find(|&a| {
                s[a] * n == r.shape()[a] && (0..s.len()).all(|b| b == a || s[b] == r.shape()[b])
            })
            .unwrap_or(0),
        _ => 0,
    };
    let outer: usize = s[..axis].iter().product();
    let inner: usize = s[axis..].iter().product::<usize>() * parts[0].dtype().size();
    let bytes: Vec<Vec<u8>> = parts.iter().map(|p| p.to_le_bytes()).collect();
    let mut out = Vec::with_capacity(inner * outer * n);
    for o in 0..outer {
        for b in &bytes {
            out.extend_from_slice(&b[o * inner..(o + 1) * inner]);
        }
    }
    let mut shape = s.clone();
    shape[axis] *= n;
    Ok(Tensor::from_le_bytes(&shape, parts[0].dtype(), &out)?)
}

/// Compares one stage; floats by the project tolerance, integers and bools exactly.
pub fn compare(key: &str, got: &Tensor, want: &Tensor) -> Row {
    let mut row = Row {
        key: key.to_string(),
        shape: want.shape().to_vec(),
        error: f64::INFINITY,
        tolerance: 0.0,
        ok: false,
    };
    if got.shape() != want.shape() {
        return row;
    }
    match want.dtype() {
        DType::F32 | DType::F16 | DType::BF16 => {
            let (g, w) = (got.to_f32(), want.to_f32());
            let (g, w) = (g.f32s().unwrap_or(&[]), w.f32s().unwrap_or(&[]));
            let mut err = 0f64;
            let mut mx = 0f64;
            for (&a, &b) in g.iter().zip(w) {
                if a == b {
                    if b.is_finite() {
                        mx = mx.max(b.abs() as f64);
                    }
                    continue;
                }
                // `f64::max` skips NaN: a NaN on one side alone must fail the row (shown as NaN),
                // not vanish.
                let d = ((a - b) as f64).abs();
                if d.is_nan() {
                    if !(a.is_nan() && b.is_nan()) {
                        err = f64::NAN;
                    }
                } else if !err.is_nan() {
                    err = err.max(d);
                }
                if b.is_finite() {
                    mx = mx.max(b.abs() as f64);
                }
            }
            row.error = err;
            row.tolerance = 1e-4 * mx + 1e-5;
        }
        _ => {
            let (g, w) = (got.to_le_bytes(), want.to_le_bytes());
            let sz = want.dtype().size();
            row.error = g
                .chunks(sz)
                .zip(w.chunks(sz))
                .filter(|(a, b)| a != b)
                .count() as f64;
            row.tolerance = 0.0;
        }
    }
    row.ok = row.error <= row.tolerance;
    row
}

fn find_weights(dir: &Path) -> anyhow::Result<PathBuf> {
    for f in ["weights.safetensors", "checkpoint.pth"] {
        let p = dir.join(f);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!(
        "{}: no weights.safetensors or checkpoint.pth (use --weights)",
        dir.display()
    )
}

/// Runs the parity check; returns the table (empty when there is no reference).
pub fn parity(a: &ParityArgs) -> anyhow::Result<Vec<Row>> {
    Ok(parity_on(a, BackendKind::Cpu, None)?.0)
}

/// [`parity`] on the host backends `kind` names (`cpu`, `ort`, `auto`, a per-engine mix) with `threads` threads per engine; also
/// returns every produced stage by fixture key (`post.masks` holds the final masks).
pub fn parity_on(
    a: &ParityArgs,
    kind: BackendKind,
    threads: Option<usize>,
) -> anyhow::Result<(Vec<Row>, BTreeMap<String, Tensor>)> {
    let cfg = ModelConfig::from_file(&a.dir.join("config.json"))?;
    let wpath = match &a.weights {
        Some(p) => p.clone(),
        None => find_weights(&a.dir)?,
    };
    let ckpt = Checkpoint::load(&wpath)?;
    ckpt.validate(&cfg)?;
    let (inputs, meta) = read_safetensors(&a.dir.join("inputs.safetensors"))?;
    let frames_u8 = inputs
        .get("frames_uint8")
        .context("inputs.safetensors has no frames_uint8")?;
    let caption = meta
        .get("caption_raw")
        .or_else(|| meta.get("caption"))
        .or_else(|| meta.get("caption_fed"))
        .context("inputs.safetensors metadata has no caption")?;
    let frames = normalize_frames(frames_u8)?;
    let (t, h, w) = (
        frames_u8.shape()[0],
        frames_u8.shape()[1],
        frames_u8.shape()[2],
    );
    let tok = Tokenizer::bundled()?;
    let enc = tok.encode(caption, cfg.max_text_len)?;
    let geo = Geometry {
        height: h,
        width: w,
        max_text: a.max_text.unwrap_or(enc.len).max(enc.len),
        window: t,
    };
    let opts = ExportOptions {
        taps: true,
        decompose_custom_ops: a.decomposed,
    };
    let engines = EngineSet::build(kind, threads, &ckpt, &cfg, &geo, &opts)?;
    let mut session = Session::new(engines, cfg.tracking_alpha)?;
    session.trace = Some(Trace::default());
    session.run_video(&enc, &frames, (h, w), Selection::Single)?;
    let trace = session.trace.take().unwrap_or_default();
    let reference = match a.dir.join("outputs.safetensors") {
        p if p.exists() => Some(read_safetensors(&p)?.0),
        _ => None,
    };
    let mut produced = BTreeMap::new();
    produced.insert("input.frames".to_string(), {
        let mut all = Vec::new();
        for f in &frames {
            all.extend_from_slice(f);
        }
        Tensor::from_f32(&[1, t, 3, h, w], all)?
    });
    produced.insert(
        "input.input_ids".to_string(),
        Tensor::from_i64(&[1, enc.len], enc.input_ids.clone())?,
    );
    for (k, parts) in &trace.parts {
        let r = reference.as_ref().and_then(|r| r.get(k));
        produced.insert(k.clone(), assemble(parts, r)?);
    }
    if let Some(p) = &a.dump {
        write_safetensors(p, &produced, None)?;
    }
    let mut rows = Vec::new();
    if let Some(r) = &reference {
        let order: Vec<String> = read_safetensors(&a.dir.join("outputs.safetensors"))?
            .1
            .get("key_order")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_else(|| r.keys().cloned().collect());
        let mut refs_extra = BTreeMap::new();
        refs_extra.insert("input.frames", inputs.get("frames"));
        refs_extra.insert("input.input_ids", inputs.get("input_ids"));
        for (k, want) in refs_extra {
            if let (Some(want), Some(got)) = (want, produced.get(k)) {
                rows.push(compare(k, got, want));
            }
        }
        for k in order {
            let Some(want) = r.get(&k) else { continue };
            match produced.get(&k) {
                Some(got) => rows.push(compare(&k, got, want)),
                None => rows.push(Row {
                    key: k.clone(),
                    shape: want.shape().to_vec(),
                    error: f64::INFINITY,
                    tolerance: 0.0,
                    ok: false,
                }),
            }
        }
    }
    Ok((rows, produced))
}

/// CLI entry.
pub fn run(a: ParityArgs) -> anyhow::Result<()> {
    let rows = parity(&a)?;
    if rows.is_empty() {
        println!(
            "no outputs.safetensors in {}: nothing to compare",
            a.dir.display()
        );
        return Ok(());
    }
    println!(
        "{:<44} {:<18} {:>12} {:>12}  status",
        "key", "shape", "max error", "tolerance"
    );
    let mut bad = 0;
    for r in &rows {
        let status = if r.ok { "ok" } else { "FAIL" };
        if !r.ok {
            bad += 1;
        }
        let err = if r.error.is_infinite() {
            "missing/shape".to_string()
        } else if r.error.is_nan() {
            "NaN".to_string()
        } else {
            format!("{:.3e}", r.error)
        };
        println!(
            "{:<44} {:<18} {:>12} {:>12.3e}  {status}",
            r.key,
            format!("{:?}", r.shape),
            err,
            r.tolerance
        );
    }
    println!("{} keys, {} outside tolerance", rows.len(), bad);
    if bad > 0 {
        bail!("{bad} of {} stages outside tolerance", rows.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_f32(&[v.len()], v.to_vec()).unwrap()
    }

    #[test]
    fn a_nan_on_one_side_fails_the_row() {
        assert!(compare("k", &t(&[1.0, 2.0]), &t(&[1.0, 2.0])).ok);
        let r = compare("k", &t(&[f32::NAN, 2.0]), &t(&[1.0, 2.0]));
        assert!(!r.ok && r.error.is_nan());
        // After a NaN, a later finite difference must not hide it.
        assert!(!compare("k", &t(&[1.0, f32::NAN, 5.0]), &t(&[1.0, 1.0, 1.0])).ok);
        assert!(!compare("k", &t(&[1.0]), &t(&[f32::NAN])).ok);
        // NaN where the reference has NaN is agreement; an infinity against a number is not.
        assert!(compare("k", &t(&[f32::NAN]), &t(&[f32::NAN])).ok);
        assert!(!compare("k", &t(&[f32::INFINITY]), &t(&[1.0])).ok);
        // Within and outside the tolerance 1e-4·max|want| + 1e-5.
        assert!(compare("k", &t(&[100.0 + 0.009]), &t(&[100.0])).ok);
        assert!(!compare("k", &t(&[100.0 + 0.02]), &t(&[100.0])).ok);
    }
}
