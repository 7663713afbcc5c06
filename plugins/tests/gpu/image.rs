//! GPU pre- and post-processing against the CPU path, bit for bit: frame → model input (RGB24, BGR24 and
//! YUYV frames in mapped host memory, down- and up-scaling and the identity), and mask logits → label
//! mask written straight into a mask ring slot whose memory is registered with CUDA, read back through
//! the ring's own reader.

use super::common::*;
use referdino::output::ring::{MaskRing, MaskRingReader, RingGeometry, RingOptions};
use referdino_plugins::dims::FrameFormat;
use referdino_plugins::kernels::TrackTable;

#[test]
fn preprocess_matches_the_cpu_preprocessor_exactly() {
    let g = gpu_or_skip!("preprocess_matches_the_cpu_preprocessor_exactly");
    for c in pre_cases() {
        let (w, h, ow, oh) = c.size;
        let mut dev = PreDev::new(&g, &c.pre, c.format, c.stride);
        dev.frame.bytes().copy_from_slice(&c.frame);
        dev.launch(&g);
        let got = g.stream.clone_dtoh(&dev.out).unwrap();
        let what = format!("{:?} {w}x{h} -> {ow}x{oh}", c.format);
        assert_identical(&what, &got, &c.want, |v| v.to_bits());
        eprintln!("{what} (stride {}): bit-identical to the CPU", c.stride);
    }
}

#[test]
fn mask_labels_match_the_cpu_and_land_in_a_registered_ring_slot() {
    use cudarc::driver::sys;
    let g = gpu_or_skip!("mask_labels_match_the_cpu_and_land_in_a_registered_ring_slot");
    for (ci, c) in label_cases().into_iter().enumerate() {
        let (ih, iw, oh, ow, tracks) = (c.in_h, c.in_w, c.out_h, c.out_w, c.tracks);
        let (logits, labels, scores, up) = (&c.logits, &c.labels, &c.scores, &c.up);
        let (want_first, want_scored) = (&c.want_first, &c.want_scored);

        let name = format!("gpu-kit-{}-{ci}", std::process::id());
        let geom = RingGeometry {
            width: ow as u32,
            height: oh as u32,
            slots: 3,
        };
        let mut ring = MaskRing::create_with(&name, geom, &RingOptions::default()).unwrap();
        let (base, len) = ring.mapping();
        g.ctx.bind_to_thread().unwrap();
        // SAFETY: `base..base+len` is the ring's live shared mapping; it stays mapped (the ring lives)
        // until the unregister below.
        unsafe {
            sys::cuMemHostRegister_v2(
                base.cast(),
                len,
                sys::CU_MEMHOSTREGISTER_DEVICEMAP | sys::CU_MEMHOSTREGISTER_PORTABLE,
            )
        }
        .result()
        .expect("cuMemHostRegister on the ring mapping");
        let mut dbase = 0u64;
        // SAFETY: the range was registered with DEVICEMAP just above.
        unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dbase, base.cast(), 0) }
            .result()
            .unwrap();
        let mut dev = LabelDev::new(&g, up, logits, tracks);
        for (mode, table, want) in [
            (
                "first wins",
                TrackTable::first_wins(labels).unwrap(),
                want_first,
            ),
            (
                "best score",
                TrackTable::best_score(labels, scores).unwrap(),
                want_scored,
            ),
        ] {
            let mut w = ring.begin_write();
            let off = w.mask().as_mut_ptr() as usize - base as usize;
            // Stale content from an older frame: the kernel must overwrite every byte.
            w.mask().fill(0xEE);
            w.frame_id = 7;
            // SAFETY: `dbase + off` is the device alias of this slot's mask, `oh*ow` bytes inside the
            // registered mapping; the stream is synchronised before the slot is committed.
            unsafe { dev.launch(&g, &table, dbase + off as u64) };
            g.stream.synchronize().unwrap();
            w.commit();
            let reader = MaskRingReader::open(&name).unwrap();
            let mut copy = reader.new_copy();
            assert!(reader.read_latest(&mut copy).is_some());
            let what = format!("{mode}: {tracks} tracks {ih}x{iw} -> {oh}x{ow}");
            assert_identical(&what, &copy.mask, want, |&v| v);
            let on = want.iter().filter(|&&v| v != 0).count();
            eprintln!(
                "{mode}: {tracks} tracks {ih}x{iw} -> {oh}x{ow}: identical to the CPU ({on} labelled px), read through the ring"
            );
        }
        // SAFETY: registered above; the ring is still alive.
        unsafe { sys::cuMemHostUnregister(base.cast()) }
            .result()
            .unwrap();
    }
}

#[test]
fn image_kernels_reject_bad_sizes() {
    use referdino_plugins::dims::{LabelDims, PreDims};
    let pre = PreDims {
        in_w: 639,
        in_h: 480,
        stride: 1278,
        format: FrameFormat::Yuyv,
        out_w: 640,
        out_h: 360,
        hksize: 3,
        vksize: 5,
    };
    assert!(pre.validate().unwrap_err().to_string().contains("even"));
    let short = PreDims {
        stride: 100,
        format: FrameFormat::Rgb24,
        in_w: 640,
        ..pre
    };
    assert!(short.validate().unwrap_err().to_string().contains("stride"));
    let empty = LabelDims {
        in_h: 90,
        in_w: 0,
        out_h: 360,
        out_w: 640,
        tracks: 15,
    };
    assert!(empty.validate().is_err());
    assert!(TrackTable::first_wins(&[1; 17]).is_err());
    assert!(TrackTable::best_score(&[1, 2], &[0.5]).is_err());
    assert!(TrackTable::chosen(&[3], &[1, 2], None).is_err());
    let t = TrackTable::chosen(&[7, 2], &[1, 2], Some(&[0.5, 0.25])).unwrap();
    assert_eq!((t.len(), t.max_map()), (2, Some(7)));
}
