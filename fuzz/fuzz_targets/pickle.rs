//! The restricted unpickler alone (the `data.pkl` member of a `.pth`), on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = referdino::weights::pickle::unpickle(data);
});
