//! The command protocol: the bounded line reader over arbitrary bytes, then the line parser, then
//! the controller applying what parsed.
//! The body is `referdino::fuzzing::command_line`, also run by the test suite's mutation smoke.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| referdino::fuzzing::command_line(data));
