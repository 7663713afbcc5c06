//! The restricted unpickler alone (the `data.pkl` member of a `.pth`), on arbitrary bytes.
//! The body is `referdino::fuzzing::pickle`, also run by the test suite's mutation smoke.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| referdino::fuzzing::pickle(data));
