//! The mask ring reader on an arbitrary file: open (header validation), then reads.
#![no_main]
use libfuzzer_sys::fuzz_target;
use referdino::output::ring::MaskRingReader;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("referdino-fuzz-ring-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(r) = MaskRingReader::open(&path.to_string_lossy()) {
        let mut copy = r.new_copy();
        let _ = r.read_latest(&mut copy);
        let count = r.write_count();
        for n in [0, 1, count, count.wrapping_sub(2), u64::MAX, u64::MAX / 2] {
            let _ = r.read(n, &mut copy);
        }
        let _ = r.writer_pid();
    }
});
