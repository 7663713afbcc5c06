//! A `.pth` file (zip archive + restricted unpickler + tensor storages) on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The format is recognised by the first bytes; the seed corpus (zip archives) keeps most
    // inputs on the .pth path.
    let _ = referdino::weights::Checkpoint::from_bytes(std::path::Path::new("fuzz.pth"), data);
});
