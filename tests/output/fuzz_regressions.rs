//! Inputs that crashed or misbehaved a reader, kept so they never do again. Each case names the
//! target it belongs to (see fuzz/README.md).

use referdino::output::ring::{MaskRingReader, ReadOutcome};

/// A valid ring file (2 slots of a 4×4 mask, version 1) whose `write_count` is `count`.
fn ring_bytes(count: u64) -> Vec<u8> {
    let (w, h, n) = (4u32, 4u32, 2u32);
    let slot = (448 + w * h).div_ceil(64) * 64;
    let mut f = vec![0u8; 128 + (slot * n) as usize];
    f[0..8].copy_from_slice(b"RDMASKR\0");
    for (off, v) in [
        (8, 1),
        (12, 128),
        (16, n),
        (20, slot),
        (24, w),
        (28, h),
        (32, 16),
        (36, 448),
        (48, 1234),
        (52, 1),
    ] {
        f[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    f[40..48].copy_from_slice(&count.to_le_bytes());
    f
}

/// ring_reader: a write count near `u64::MAX` overflowed the seq computation (`2n + 2`), a panic in
/// checked builds. Such commits can never be complete: the reader reports "not yet".
#[test]
fn ring_reader_huge_write_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ring");
    std::fs::write(&path, ring_bytes(u64::MAX)).unwrap();
    let r = MaskRingReader::open(&path.to_string_lossy()).unwrap();
    let mut copy = r.new_copy();
    assert_eq!(r.read_latest(&mut copy), None);
    assert_eq!(r.read(u64::MAX, &mut copy), ReadOutcome::NotYet);
    assert_eq!(r.read(u64::MAX / 2, &mut copy), ReadOutcome::NotYet);
    // The largest encodable commit is still looked up normally (its slot was never written).
    assert_eq!(r.read(u64::MAX / 2 - 1, &mut copy), ReadOutcome::NotYet);
}
