//! A safetensors file on arbitrary bytes (header JSON, offsets, dtypes).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ =
        referdino::weights::Checkpoint::from_bytes(std::path::Path::new("fuzz.safetensors"), data);
});
