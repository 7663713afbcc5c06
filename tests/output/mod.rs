//! `src/output/`: the shared-memory mask ring under concurrent reader processes.

mod fuzz_regressions;
mod ring;
