//! `referdino bench --objects 1,2,4 --streams 1,2,4`: per-frame cost of several objects and several
//! streams on the host backends (seeded random weights), next to the model's GMAC split.
//!
//! Every cell builds `streams` [`MultiStream`]s with `objects` objects each (distinct prompts) over one
//! [`SharedEngines`] and times rounds in which every stream processes one frame (the bundled clip's
//! first frame, or `--image`), as the live runtime does. The split engines (image once per frame,
//! cross-modal part batched over objects at `--cross-batch`) are timed; with `--unsplit` also the
//! whole frame engine run once per object, the path without sharing. The GMAC column is the model's
//! own count: `image + objects × (cross + temporal + head)` per frame. Each path is timed on every
//! backend `--backend` names (`all`: tract, and `auto` when ONNX Runtime loads), cells of all
//! backends interleaved round by round.

use std::time::Instant;

use anyhow::bail;
use serde::Serialize;

use crate::backend::cpu::available_threads;
use crate::backend::kind::BackendKind;
use crate::graph::engines::{self as ge, ExportOptions, Geometry};
use crate::onnx::builder::{Graph, GraphOptions};
use crate::onnx::cost::{cost_report, StageRule};
use crate::pipeline::multi::{MultiConfig, MultiEngineSet, MultiStream, SharedEngines};
use crate::pipeline::session::EngineSet;
use crate::weights::random::random_weights;

/// Prompts of the objects, in order (about 10 tokens each).
const PROMPTS: [&str; 8] = [
    "the red ball rolling to the left",
    "the person holding the red cup",
    "the dog sitting on the left",
    "the white car in the back",
    "the bird on the wooden fence",
    "the man in a blue shirt",
    "the small cat under the table",
    "the green bottle on the shelf",
];

/// What to time (`referdino bench` fills it from its flags).
pub struct MultiParams {
    /// Configuration name, for the report.
    pub config_name: String,
    /// Model configuration.
    pub cfg: crate::config::ModelConfig,
    /// Engine geometry.
    pub geo: Geometry,
    /// Seed of the random weights.
    pub seed: u64,
    /// Threads per engine (0: every core).
    pub threads: usize,
    /// Backends to time each path on (`cpu`, `ort`, `auto` or a per-engine mix), in order.
    pub backends: Vec<String>,
    /// Timed rounds per cell.
    pub iters: usize,
    /// Untimed rounds first.
    pub warmup: usize,
    /// Objects per stream to time.
    pub objects: Vec<usize>,
    /// Streams to time.
    pub streams: Vec<usize>,
    /// Cross-modal engine batch.
    pub cross_batch: usize,
    /// Image engine batch.
    pub image_batch: usize,
    /// Also time the whole frame engine once per object.
    pub unsplit: bool,
    /// The normalised `[3,H,W]` frame every stream gets.
    pub image: Vec<f32>,
}

/// One timed cell.
#[derive(Debug, Clone, Serialize)]
pub struct MultiCell {
    /// The backend (`cpu`, `ort`, `auto` or a per-engine mix), as `--backend` named it.
    pub backend: String,
    /// `split` (image once per frame + cross batched) or `unsplit` (frame engine per object).
    pub path: String,
    /// Objects per stream.
    pub objects: usize,
    /// Streams.
    pub streams: usize,
    /// Median time of one round (every stream one frame), ms.
    pub round_ms: f64,
    /// Round time per stream frame, ms.
    pub per_stream_frame_ms: f64,
    /// Frames per second, all streams together.
    pub total_fps: f64,
    /// Round time over the same backend's [`MultiReport::base_cell`] round on the split path.
    pub vs_one: f64,
    /// The model's GMAC per round (padded image rows included).
    pub gmac: f64,
}

/// The multi-object / multi-stream report.
#[derive(Debug, Clone, Serialize)]
pub struct MultiReport {
    /// Model configuration.
    pub config: String,
    /// Input height × width.
    pub size: (usize, usize),
    /// Temporal window.
    pub window: usize,
    /// Text length of the engines.
    pub max_text: usize,
    /// Threads per engine.
    pub threads: usize,
    /// Cross-modal engine batch.
    pub cross_batch: usize,
    /// Image engine batch (frames of several streams per run).
    pub image_batch: usize,
    /// GMAC of the image part (once per frame).
    pub gmac_image: f64,
    /// GMAC of the cross-modal part per object.
    pub gmac_cross: f64,
    /// GMAC of the temporal + head engines per object.
    pub gmac_temporal_head: f64,
    /// GMAC of the whole frame engine.
    pub gmac_frame: f64,
    /// Timed rounds per cell.
    pub iters: usize,
    /// (objects, streams) of the cell the ratio columns are against: the fewest of each timed, on
    /// the split path.
    pub base_cell: (usize, usize),
    /// The cells.
    pub cells: Vec<MultiCell>,
    /// Load average (1, 5, 15 min) at the start and the end: the machine may be shared.
    pub load: [[f64; 3]; 2],
}

fn gmac(g: Graph) -> anyhow::Result<f64> {
    let r = cost_report(&g.into_model(), &StageRule::spec_rows(), 1)?;
    Ok(r.total.macs as f64 / 1e9)
}

/// One cell's streams.
struct Cell {
    objects: usize,
    streams: Vec<MultiStream>,
    runs: Vec<f64>,
}

fn cell(
    eng: &mut SharedEngines,
    objects: usize,
    streams: usize,
    image: &[f32],
    out: (usize, usize),
) -> anyhow::Result<Cell> {
    let cfg = MultiConfig {
        max_objects: objects.max(1),
        ..MultiConfig::default()
    };
    let mut ss = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut s = MultiStream::new(eng, cfg, out)?;
        s.set_prompts(eng, &PROMPTS[..objects])?;
        s.image_mut()?.copy_from_slice(image);
        ss.push(s);
    }
    Ok(Cell {
        objects,
        streams: ss,
        runs: Vec::new(),
    })
}

/// One round: every stream of the cell one frame; with a batched image engine, the frames of up
/// to `image_batch` streams go through it together.
fn round(eng: &mut SharedEngines, c: &mut Cell, mask: &mut [u8]) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let b = eng.image_batch();
    if b > 1 {
        for chunk in c.streams.chunks_mut(b) {
            for (r, s) in chunk.iter().enumerate() {
                s.load_image_row(eng, r)?;
            }
            eng.run_images()?;
            for (r, s) in chunk.iter_mut().enumerate() {
                s.step_from_row(eng, r, mask)?;
            }
        }
    } else {
        for s in &mut c.streams {
            s.step(eng, mask)?;
        }
    }
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

/// Median of run times (the mean of the two middle ones for an even count; 0 without runs).
pub(crate) fn median_ms(runs: &[f64]) -> f64 {
    let mut s = runs.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => s[n / 2],
        _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Most streams one benchmark cell runs: each holds its own frame features and tracks, so the
/// grid's memory grows with it; beyond a board's camera count it measures nothing useful.
pub const MAX_BENCH_STREAMS: usize = 16;

/// Checks the grid's flags before anything is built: each count in range, the batches within the
/// export limits.
pub fn check_grid(
    objects: &[usize],
    streams: &[usize],
    cross_batch: usize,
    image_batch: usize,
) -> anyhow::Result<()> {
    use crate::limits::{check_range, MAX_CROSS_BATCH, MAX_IMAGE_BATCH};
    for &o in objects {
        check_range("--objects", o, 1, PROMPTS.len())?;
    }
    for &s in streams {
        check_range("--streams", s, 1, MAX_BENCH_STREAMS)?;
    }
    check_range("--cross-batch", cross_batch, 1, MAX_CROSS_BATCH)?;
    check_range("--image-batch", image_batch, 1, MAX_IMAGE_BATCH)?;
    Ok(())
}

/// Runs the grid; `load` gets the load average at the start and the caller fills the end.
pub fn bench_multi(a: &MultiParams, load0: [f64; 3]) -> anyhow::Result<MultiReport> {
    let cfg = a.cfg.clone();
    let objects = if a.objects.is_empty() {
        vec![1]
    } else {
        a.objects.clone()
    };
    let streams = if a.streams.is_empty() {
        vec![1]
    } else {
        a.streams.clone()
    };
    check_grid(&objects, &streams, a.cross_batch, a.image_batch)?;
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let geo = a.geo;
    let (height, width) = (geo.height, geo.width);
    let w = random_weights(&cfg, a.seed)?;
    let p = ge::NetParams::new(&cfg, &geo)?;
    let go = GraphOptions::default();
    let gmac_image = gmac(ge::build_image(&w, &p, &geo, &go)?)?;
    let gmac_cross = gmac(ge::build_cross(&w, &p, &geo, 1, &go)?)?;
    let gmac_th = gmac(ge::build_temporal(
        &w,
        &p.temporal,
        p.queries_out,
        &geo,
        &go,
    )?)? + gmac(ge::build_head(&w, &p.head, &geo, &go)?)?;
    let gmac_frame = gmac(ge::build_frame(&w, &p, &geo, &go)?)?;
    if a.backends.is_empty() {
        bail!("no backend to time");
    }
    let threads = match a.threads {
        0 => available_threads(),
        t => t,
    };
    let image = &a.image;
    let out = (height, width);
    let mut cells = Vec::new();
    // (name, image batch); the split path at image batch 1 always, at --image-batch when > 1.
    let mut paths: Vec<(String, usize)> = vec![("split".into(), 1)];
    if a.image_batch > 1 {
        paths.push((format!("split-ib{}", a.image_batch), a.image_batch));
    }
    if a.unsplit {
        paths.push(("unsplit".into(), 1));
    }
    let mut set_up = Vec::new();
    for name in &a.backends {
        let backends = BackendKind::parse(name)?.host_backends(Some(threads))?;
        for (path, ib) in &paths {
            let set = if path == "unsplit" {
                EngineSet::on_each(&backends, &w, &cfg, &geo, &ExportOptions::default())?.into()
            } else {
                MultiEngineSet::on_each(
                    &backends,
                    &w,
                    &cfg,
                    &geo,
                    &ExportOptions::default(),
                    a.cross_batch,
                    *ib,
                )?
            };
            let mut eng = SharedEngines::new(set, cfg.max_text_len)?;
            let mut cells_here = Vec::new();
            for &s in &streams {
                for &o in &objects {
                    if path == "unsplit" && s > 1 {
                        continue;
                    }
                    cells_here.push(cell(&mut eng, o, s, image, out)?);
                }
            }
            set_up.push((name.clone(), path.clone(), *ib, eng, cells_here));
        }
    }
    // Every cell of every path takes its turn round by round, so drift on a shared machine hits
    // them alike.
    let mut mask = vec![0u8; out.0 * out.1];
    for k in 0..a.warmup + a.iters {
        for (_, _, _, eng, cells_here) in &mut set_up {
            for c in cells_here.iter_mut() {
                let ms = round(eng, c, &mut mask)?;
                if k >= a.warmup {
                    c.runs.push(ms);
                }
            }
        }
        log::info!("round {} of {} done", k + 1, a.warmup + a.iters);
    }
    // The ratio column is against the smallest cell (fewest objects, fewest streams) of the same
    // backend on the split path: x(1x1) when 1 object and 1 stream were timed.
    let base_cell = (
        objects.iter().copied().min().unwrap_or(1),
        streams.iter().copied().min().unwrap_or(1),
    );
    let first_path = paths.first().map(|p| p.0.clone()).unwrap_or_default();
    let mut timed = Vec::new();
    for (backend, path, ib, _, cells_here) in &mut set_up {
        for c in cells_here.iter_mut() {
            let ms = median_ms(&c.runs);
            timed.push((
                backend.clone(),
                path.clone(),
                *ib,
                c.objects,
                c.streams.len(),
                ms,
            ));
        }
    }
    let base_ms = |backend: &str| {
        timed
            .iter()
            .find(|t| t.0 == backend && t.1 == first_path && (t.3, t.4) == base_cell)
            .map_or(f64::NAN, |t| t.5)
    };
    for (backend, path, ib, o, s, ms) in &timed {
        let (o, s, ib) = (*o, *s, *ib);
        // A batched image engine runs ceil(s / ib) times over ib rows each.
        let image_runs = (s.div_ceil(ib) * ib) as f64;
        let per_round = if path == "unsplit" {
            s as f64 * o as f64 * (gmac_frame + gmac_th)
        } else {
            image_runs * gmac_image + s as f64 * o as f64 * (gmac_cross + gmac_th)
        };
        let cell = MultiCell {
            backend: backend.clone(),
            path: path.clone(),
            objects: o,
            streams: s,
            round_ms: *ms,
            per_stream_frame_ms: ms / s as f64,
            total_fps: s as f64 * 1e3 / ms,
            vs_one: ms / base_ms(backend),
            gmac: per_round,
        };
        log::info!("{cell:?}");
        cells.push(cell);
    }
    Ok(MultiReport {
        config: a.config_name.clone(),
        size: (height, width),
        window: geo.window,
        max_text: geo.max_text,
        threads,
        cross_batch: a.cross_batch,
        image_batch: a.image_batch,
        gmac_image,
        gmac_cross,
        gmac_temporal_head: gmac_th,
        gmac_frame,
        iters: a.iters,
        base_cell,
        cells,
        load: [load0, load0],
    })
}

/// The report as a table.
pub fn render_multi(r: &MultiReport) -> String {
    let mut s = format!(
        "objects x streams, {} at {}x{}, window {}, text {} tokens, {} threads, cross batch {}, image batch {}, median of {} rounds (cells interleaved)\n",
        r.config, r.size.1, r.size.0, r.window, r.max_text, r.threads, r.cross_batch, r.image_batch, r.iters
    );
    s.push_str(&format!(
        "GMAC: image {:.2} once per frame; per object cross {:.2} + temporal/head {:.2}; whole frame engine {:.2}\n",
        r.gmac_image, r.gmac_cross, r.gmac_temporal_head, r.gmac_frame
    ));
    let base = format!("x({}x{})", r.base_cell.0, r.base_cell.1);
    s.push_str(&format!(
        "backend  path       objects streams  round ms  ms/stream-frame  total fps {base:>7}  GMAC/round {:>12}\n",
        format!("GMAC {base}")
    ));
    // GMAC does not depend on the backend: the base cell's on the split path.
    let g1 = r
        .cells
        .iter()
        .find(|c| (c.objects, c.streams) == r.base_cell && c.path == "split")
        .map_or(f64::NAN, |c| c.gmac);
    for c in &r.cells {
        s.push_str(&format!(
            "{:<8} {:<10} {:>7} {:>7} {:>9.1} {:>16.1} {:>10.3} {:>7.2} {:>11.2} {:>12.2}\n",
            c.backend,
            c.path,
            c.objects,
            c.streams,
            c.round_ms,
            c.per_stream_frame_ms,
            c.total_fps,
            c.vs_one,
            c.gmac,
            c.gmac / g1
        ));
    }
    s.push_str(&format!(
        "load average: {:.2} {:.2} {:.2} at the start, {:.2} {:.2} {:.2} at the end\n",
        r.load[0][0], r.load[0][1], r.load[0][2], r.load[1][0], r.load[1][1], r.load[1][2]
    ));
    s
}
