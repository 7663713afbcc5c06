//! PNG/JPEG frame decoding (image folder source), the MJPEG camera path and label PNG reading.
//! The body is `referdino::fuzzing::image_frame`, also run by the test suite's mutation smoke.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| referdino::fuzzing::image_frame(data));
