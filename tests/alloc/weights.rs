//! Heap held while loading a `.pth` checkpoint: no more than the tensors it yields (storages are
//! read from the mapped file, never copied whole), and a crafted file cannot make the reader
//! allocate for a zero-stride view on the strength of storages it does not hold.

use crate::counter::{in_own_process, live_peak, reset_live_peak};
use crate::pth::zero_stride_decoy;
use referdino::weights::Checkpoint;
use std::path::Path;

/// Bytes live at once while `f` runs, beyond those live before it.
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    reset_live_peak();
    let (before, _) = live_peak();
    let r = f();
    (r, live_peak().1 - before)
}

/// A 1-element storage viewed as 8192x8192 (256 MiB as f32) with zero strides, beside a "decoy"
/// storage declared as 2^26 elements (256 MiB) that has no record: counted as declared, the decoy
/// would lift the view budget above the view. The load fails on the missing record, having
/// allocated nothing near the view's size.
#[test]
fn absent_storages_fund_no_zero_stride_view() {
    if !in_own_process(concat!(
        module_path!(),
        "::absent_storages_fund_no_zero_stride_view"
    )) {
        return;
    }
    let z = zero_stride_decoy();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("decoy.pth");
    std::fs::write(&p, &z).unwrap();
    let (r, peak) = peak_during(|| Checkpoint::load(&p));
    let e = r.expect_err("the decoy checkpoint loaded").to_string();
    println!(
        "decoy checkpoint: peak {} KiB live while loading: {e}",
        peak / 1024
    );
    assert!(e.contains("archive/data/1") && e.contains("decoy"), "{e}");
    assert!(
        peak < 1 << 20,
        "{peak} bytes live at once while refusing it"
    );
}

/// The tiny fixture's `.pth` (stored records, as torch.save writes them) loads with at most a
/// quarter more heap than the tensors it yields, plus 1 MiB of bookkeeping (keys, the pickle):
/// its storages are not copied onto the heap beside the tensors converted from them.
#[test]
fn pth_loading_holds_little_more_than_its_tensors() {
    if !in_own_process(concat!(
        module_path!(),
        "::pth_loading_holds_little_more_than_its_tensors"
    )) {
        return;
    }
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/referdino-tiny/checkpoint.pth");
    let (ck, peak) = peak_during(|| Checkpoint::load(&p).unwrap());
    let tensors: usize = ck
        .keys()
        .into_iter()
        .filter(|k| ck.canonical(k) == *k)
        .map(|k| {
            let t = ck.get(k).unwrap();
            t.numel() * t.dtype().size()
        })
        .sum();
    let file = std::fs::metadata(&p).unwrap().len() as usize;
    println!(
        "checkpoint.pth ({} KiB): tensors {} KiB, peak {} KiB live while loading",
        file / 1024,
        tensors / 1024,
        peak / 1024
    );
    assert!(
        tensors > file / 2,
        "the fixture's tensors are most of the file"
    );
    assert!(
        peak <= tensors + tensors / 4 + (1 << 20),
        "peak {peak} bytes for {tensors} bytes of tensors"
    );
}
