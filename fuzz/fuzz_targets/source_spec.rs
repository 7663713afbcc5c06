//! `--source` words (`raw:`, `gst:`, `csi:`, the shell-like splitter) and raw frames of every
//! supported pixel format converted to RGB.
//! The body is `referdino::fuzzing::source_spec`, also run by the test suite's mutation smoke.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| referdino::fuzzing::source_spec(data));
