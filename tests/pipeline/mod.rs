//! `src/pipeline/`: post-processing, the streaming session, the live runtime as a library, the command
//! protocol, sessions at other sizes, and the export worker of cameras joining with a new size.

mod commands;
mod configs;
mod exporter;
mod faults;
mod geometries;
mod multi;
mod post;
mod runtime;
mod stream;

// The late camera and the paced synthetic source, shared with the allocation tests.
use crate::support::cameras::{synthetic, Late};
