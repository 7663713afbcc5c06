//! Engine build recipes for TensorRT: profiles (`engines/profiles/*.toml`: board × backbone × precision ×
//! resolution), the equivalent `trtexec` command lines, and the build report.
//!
//! Nothing here needs TensorRT, so all of it is built and tested everywhere; the builder itself lives in
//! `backend::tensorrt` (feature `tensorrt`).

pub mod checksum;
pub mod plan_info;
pub mod profile;
pub mod report;
pub mod trtexec;

pub use plan_info::{check_specs, PlanInfo, TrtVersion};
pub use profile::{Backbone, Board, EngineKind, EngineProfile, NO_DLA};
pub use report::{BuildReport, EngineReport};
