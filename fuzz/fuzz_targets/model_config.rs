//! Model configs: official YAML (first byte even) or fixture/flattened JSON (odd), then validation.
//! The body is `referdino::fuzzing::model_config`, also run by the test suite's mutation smoke.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| referdino::fuzzing::model_config(data));
