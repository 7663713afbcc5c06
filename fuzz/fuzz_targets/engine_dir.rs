//! Engine directory `manifest.json` (first byte even) and plan sidecars `*.plan.json` (odd).
//! The body is `referdino::fuzzing::engine_dir`, also run by the test suite's mutation smoke.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| referdino::fuzzing::engine_dir(data));
