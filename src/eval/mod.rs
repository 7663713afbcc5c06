//! Evaluation: J and F exactly as the DAVIS 2017 toolkit defines them, sequence statistics,
//! benchmark readers (Ref-DAVIS17, Ref-YouTube-VOS, MeViS), prediction writers in the evaluation
//! servers' layouts, reports, agreement between two of our own runs, and a synthetic benchmark.

pub mod agreement;
pub mod assign;
pub mod dataset;
pub mod davis_protocol;
pub mod dirs;
pub mod metrics;
pub mod report;
pub mod rle;
pub mod runner;
pub mod stats;
pub mod synth;

pub use agreement::{compare_predictors, compare_runs, MaskSequence};
pub use dataset::{Dataset, DatasetKind, Expression, Video};
pub use dirs::score_dirs;
pub use metrics::{boundary_radius, jaccard, score_frame, score_sequence, FrameScore, FrameScorer};
pub use report::{Report, SequenceReport, Summary};
pub use runner::{
    run_dataset, shift_mask, shift_predictor, RunOptions, RunOutput, ScriptedPredictor,
    VideoPredictor,
};
pub use stats::{statistics, Stats};
