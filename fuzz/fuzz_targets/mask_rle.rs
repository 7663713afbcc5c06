//! MeViS mask entries (COCO run-length encoding) as the evaluation reads them.
//! The body is `referdino::fuzzing::mask_rle`, also run by the test suite's mutation smoke.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| referdino::fuzzing::mask_rle(data));
