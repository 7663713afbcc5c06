//! An ONNX model through the CPU backend's INT8 rewrite (`onnx::int8_products`).
//! The body is `referdino::fuzzing::int8_products`, also run by the test suite's mutation smoke.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| referdino::fuzzing::int8_products(data));
