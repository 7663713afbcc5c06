//! A safetensors file on arbitrary bytes (header JSON, offsets, dtypes).
//! The body is `referdino::fuzzing::safetensors`, also run by the test suite's mutation smoke.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| referdino::fuzzing::safetensors(data));
