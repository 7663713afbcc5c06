//! Engine profiles: one TOML file per board × backbone × precision × resolution.
//!
//! ```toml
//! name = "agx-orin-swin-t-fp16"
//! board = "agx-orin"              # agx-orin | orin-nx | orin-nano
//! backbone = "swin-t"             # swin-t | swin-b
//! precision = "fp16"              # fp32 | fp16 | int8
//! height = 360                    # model input size (frames are resized to it)
//! width = 640
//! max_text = 32                   # static text length (tokens incl. [CLS]/[SEP]/".")
//! window = 36                     # frames the temporal engine sees
//! workspace_mib = 4096            # TensorRT workspace pool limit
//! timing_cache = "engines/build/timing-agx-orin.cache"   # shared by every build on this board
//! cuda_graph = true               # capture one CUDA graph per engine at load
//! engines = ["text", "frame", "temporal", "head"]
//! scales = "calib/swin-t.scales.json"   # int8 only: scale table for Q/DQ insertion
//! objects = { min = 1, opt = 2, max = 8 } # optional: also build the object engines (below)
//! ```
//!
//! With `objects`, `build` also exports and builds the per-object engine set (`image` once per frame,
//! `cross`, `temporal`, `head` with a symbolic object axis: `graph::object_engines`) into `objects/`,
//! each plan with one optimization profile over that batch range.
//!
//! There is no DLA placement: a `[dla]` table is refused with the reason (board/README.md, "No DLA").

use crate::error::{Error, Result};
use crate::onnx::precision::Precision;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Jetson Orin module the engines are built for (engines are specific to the GPU and TensorRT version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Board {
    /// Jetson AGX Orin (32/64 GB).
    AgxOrin,
    /// Jetson Orin NX (8/16 GB).
    OrinNx,
    /// Jetson Orin Nano (4/8 GB).
    OrinNano,
}

impl Board {
    /// Kebab-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Board::AgxOrin => "agx-orin",
            Board::OrinNx => "orin-nx",
            Board::OrinNano => "orin-nano",
        }
    }
}

/// Backbone size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backbone {
    /// Swin-T.
    SwinT,
    /// Swin-B.
    SwinB,
}

impl Backbone {
    /// Kebab-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Backbone::SwinT => "swin-t",
            Backbone::SwinB => "swin-b",
        }
    }
}

/// The four engines the network is split into (by how often they run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// BERT + feat_map, once per prompt.
    Text,
    /// Swin → enhancer → decoder with pruning → FPN, per frame.
    Frame,
    /// Temporal decoder over the window, per frame.
    Temporal,
    /// Class/box heads + mask decoder, per frame.
    Head,
}

impl EngineKind {
    /// All engines in build order.
    pub const ALL: [EngineKind; 4] = [
        EngineKind::Text,
        EngineKind::Frame,
        EngineKind::Temporal,
        EngineKind::Head,
    ];
    /// Lower-case name; also the file stem (`frame.onnx`, `frame.plan`).
    pub fn as_str(&self) -> &'static str {
        match self {
            EngineKind::Text => "text",
            EngineKind::Frame => "frame",
            EngineKind::Temporal => "temporal",
            EngineKind::Head => "head",
        }
    }
    /// ONNX file name inside an export directory.
    pub fn onnx_file(&self) -> String {
        format!("{}.onnx", self.as_str())
    }
    /// Plan file name inside an engine directory.
    pub fn plan_file(&self) -> String {
        format!("{}.plan", self.as_str())
    }
}

/// Why profiles have no DLA placement (the error a `[dla]` table gets; board/README.md says more).
pub const NO_DLA: &str = "DLA is not supported: our engines are strongly typed networks (precision from \
    the ONNX), while DLA on TensorRT 10.x (JetPack 6) needs the FP16/INT8 builder flags of a weakly typed \
    build, and TensorRT 11 releases before 11.4.1 have no DLA on Jetson at all; the frame engine's custom \
    ops (MSDeformAttn, QueryPrune) cannot run on DLA, so GPU fallback would split it into many DLA/GPU \
    segments. Remove the [dla] table (see board/README.md, \"No DLA\")";

/// Largest object batch a profile may ask for (the runtime's object limit per stream is configurable;
/// past 64 one engine call would hold 64 copies of the cross-modal activations).
pub const MAX_OBJECT_BATCH: usize = 64;

fn default_engines() -> Vec<EngineKind> {
    EngineKind::ALL.to_vec()
}
fn default_true() -> bool {
    true
}

/// One engine build profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineProfile {
    /// Profile name (matches the file stem).
    pub name: String,
    /// Target module.
    pub board: Board,
    /// Backbone.
    pub backbone: Backbone,
    /// Engine precision (see `quant::policy`).
    pub precision: Precision,
    /// Model input height.
    pub height: usize,
    /// Model input width.
    pub width: usize,
    /// Static text length.
    pub max_text: usize,
    /// Temporal window (frames).
    pub window: usize,
    /// Workspace pool limit in MiB.
    pub workspace_mib: usize,
    /// Timing cache file, read before and written after every build.
    pub timing_cache: PathBuf,
    /// Capture a CUDA graph per engine at load time.
    #[serde(default = "default_true")]
    pub cuda_graph: bool,
    /// Engines to build.
    #[serde(default = "default_engines")]
    pub engines: Vec<EngineKind>,
    /// Scale table for INT8 Q/DQ insertion (required for `int8`).
    #[serde(default)]
    pub scales: Option<PathBuf>,
    /// TensorRT builder optimization level (0–5; TensorRT's default 3 when absent).
    #[serde(default)]
    pub optimization_level: Option<u32>,
    /// Object batch range of the per-object engines' optimization profile; absent: no object set.
    #[serde(default)]
    pub objects: Option<BatchRange>,
}

/// The batch range of a TensorRT optimization profile: the plan accepts any batch in `min..=max`
/// and is tuned for `opt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRange {
    /// Smallest batch.
    pub min: usize,
    /// Batch the kernels are chosen for.
    pub opt: usize,
    /// Largest batch.
    pub max: usize,
}

impl BatchRange {
    /// Checks `1 <= min <= opt <= max <= limit`.
    pub fn validate(&self, limit: usize) -> Result<()> {
        if self.min == 0 || self.min > self.opt || self.opt > self.max || self.max > limit {
            return Err(Error::Config(format!(
                "objects: need 1 <= min <= opt <= max <= {limit}, got min {} opt {} max {}",
                self.min, self.opt, self.max
            )));
        }
        Ok(())
    }
}

impl EngineProfile {
    /// Parses and validates profile TOML.
    pub fn from_toml(text: &str) -> Result<Self> {
        // Profiles once had an optional `[dla]` table: say why it went instead of "unknown field".
        if let Ok(t) = toml::from_str::<toml::Table>(text) {
            if t.contains_key("dla") {
                let name = t.get("name").and_then(|v| v.as_str()).unwrap_or("?");
                return Err(Error::Config(format!("engine profile {name}: {NO_DLA}")));
            }
        }
        let p: EngineProfile =
            toml::from_str(text).map_err(|e| Error::Config(format!("engine profile: {e}")))?;
        p.validate()?;
        Ok(p)
    }

    /// Reads and validates a profile file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Checks ranges and combinations serde cannot.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(Error::Config(format!("engine profile {}: {m}", self.name)));
        if self.height < 32 || self.width < 32 || self.height > 4096 || self.width > 4096 {
            return err(format!(
                "height/width must be in 32..=4096, got {}x{}",
                self.height, self.width
            ));
        }
        if self.max_text < 4 || self.max_text > 256 {
            return err(format!(
                "max_text must be in 4..=256, got {}",
                self.max_text
            ));
        }
        if self.window == 0 || self.window > 256 {
            return err(format!("window must be in 1..=256, got {}", self.window));
        }
        // 1 TiB: more than any GPU has; beyond it the byte count is no longer meaningful.
        if !(64..=1 << 20).contains(&self.workspace_mib) {
            return err(format!(
                "workspace_mib must be in 64..=1048576 (64 MiB to 1 TiB), got {}",
                self.workspace_mib
            ));
        }
        if self.engines.is_empty() {
            return err("engines is empty".into());
        }
        for (i, e) in self.engines.iter().enumerate() {
            if self.engines[..i].contains(e) {
                return err(format!("engine {} listed twice", e.as_str()));
            }
        }
        if let Some(l) = self.optimization_level {
            if l > 5 {
                return err(format!("optimization_level must be 0..=5, got {l}"));
            }
        }
        if let Some(r) = &self.objects {
            r.validate(MAX_OBJECT_BATCH)
                .or_else(|e| err(e.to_string()))?;
        }
        match (self.precision, &self.scales) {
            (Precision::Int8, None) => {
                return err("int8 needs `scales` (a scale table from `referdino calibrate`)".into())
            }
            (Precision::Fp32 | Precision::Fp16, Some(_)) => {
                return err("`scales` is only used by int8 profiles".into())
            }
            _ => {}
        }
        Ok(())
    }

    /// Workspace limit in bytes.
    pub fn workspace_bytes(&self) -> u64 {
        (self.workspace_mib as u64).saturating_mul(1024 * 1024)
    }
}

/// Loads every `*.toml` profile in a directory, sorted by file name.
pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, EngineProfile)>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| EngineProfile::load(&p).map(|prof| (p, prof)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "name='t'\nboard='orin-nano'\nbackbone='swin-t'\nheight=360\nwidth=640\n\
        max_text=32\nwindow=36\nworkspace_mib=1024\ntiming_cache='c'\n";

    #[test]
    fn defaults_and_validation() {
        let p = EngineProfile::from_toml(&format!("{BASE}precision='fp16'\n")).unwrap();
        assert_eq!(p.engines, EngineKind::ALL.to_vec());
        assert!(p.cuda_graph);
        // int8 without scales, fp16 with scales
        assert!(EngineProfile::from_toml(&format!("{BASE}precision='int8'\n")).is_err());
        assert!(
            EngineProfile::from_toml(&format!("{BASE}precision='fp16'\nscales='s.json'\n"))
                .is_err()
        );
        // DLA placement is refused with its reason, on every board
        for board in ["orin-nano", "agx-orin"] {
            let text =
                format!("{BASE}precision='fp16'\n[dla]\ncore=0\n").replace("orin-nano", board);
            let e = EngineProfile::from_toml(&text).unwrap_err().to_string();
            assert!(
                e.contains("DLA is not supported") && e.contains("strongly typed"),
                "{e}"
            );
            assert!(e.contains("board/README.md"), "{e}");
        }
        // unknown keys are rejected, so typos do not silently fall back to defaults
        assert!(
            EngineProfile::from_toml(&format!("{BASE}precision='fp16'\nworkspace=1\n")).is_err()
        );
        // duplicate engines
        assert!(EngineProfile::from_toml(&format!(
            "{BASE}precision='fp16'\nengines=['text','text']\n"
        ))
        .is_err());
        // a workspace whose byte count overflows (found by the fuzz smoke): an error, not a panic
        let huge = format!("{BASE}precision='fp16'\n").replace("1024", "9223372036854775807");
        let e = EngineProfile::from_toml(&huge).unwrap_err().to_string();
        assert!(e.contains("workspace_mib must be in 64..=1048576"), "{e}");
    }
}
