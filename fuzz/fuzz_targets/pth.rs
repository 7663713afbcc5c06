//! A `.pth` file (zip archive + restricted unpickler + tensor storages) on arbitrary bytes.
//! The body is `referdino::fuzzing::pth`, also run by the test suite's mutation smoke.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| referdino::fuzzing::pth(data));
