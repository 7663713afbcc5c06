//! Engine build profiles (TOML), quantisation recipes (TOML) and calibration tables (JSON).
//! The body is `referdino::fuzzing::profiles`, also run by the test suite's mutation smoke.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| referdino::fuzzing::profiles(data));
