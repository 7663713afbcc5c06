//! `src/pipeline/`: post-processing, the streaming session, the live runtime as a library, the command
//! protocol, and sessions at other sizes.

mod commands;
mod configs;
mod faults;
mod geometries;
mod multi;
mod post;
mod runtime;
mod stream;
