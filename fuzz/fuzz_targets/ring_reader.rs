//! The mask ring reader on an arbitrary file: open (header validation), then reads.
//! The body is `referdino::fuzzing::ring_reader`, also run by the test suite's mutation smoke.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| referdino::fuzzing::ring_reader(data));
