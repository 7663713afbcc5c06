//! Budget check: in steady state the per-frame work of
//! capture conversion, preprocessing, the latest-frame hand-off and the mask-ring write allocates
//! nothing. A counting global allocator counts allocations made by this test's thread only.

use std::time::Duration;

use referdino::camera::convert::{yuyv_to_rgb, Preprocessor};
use referdino::camera::latest::{LatestSlot, Take};
use referdino::camera::reconnect::{Backoff, Reconnecting};
use referdino::camera::synthetic::Synthetic;
use referdino::camera::FrameSource;
use referdino::output::ring::{MaskRing, RingGeometry, TrackEntry};
use referdino::pipeline::commands::{CommandHub, Limits};

use crate::counter::counted;

#[test]
fn counting_allocator_sees_allocations() {
    // Guards against a counter that can never fire.
    let (v, n) = counted(|| vec![1u8; 100]);
    assert_eq!(v.len(), 100);
    assert!(n >= 1);
}

#[test]
fn per_frame_path_allocates_nothing_in_steady_state() {
    let (cw, ch) = (1280u32, 720u32);
    // A YUYV camera frame (made once) and the conversion target.
    let yuyv: Vec<u8> = (0..cw as usize * ch as usize * 2)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let mut rgb = vec![0u8; cw as usize * ch as usize * 3];
    // Capture → inference hand-off buffers.
    let mut pre = Preprocessor::new(cw, ch, 360);
    let (ow, oh) = pre.out_size();
    let slot = LatestSlot::new(vec![0f32; pre.out_len()]);
    let mut producer_buf = vec![0f32; pre.out_len()];
    let mut consumer_buf = vec![0f32; pre.out_len()];
    // A synthetic source behind the reconnect wrapper, preprocessed at its own size (identity path).
    let opener = || Synthetic::new(640, 360, 30, 0, false);
    let mut source = Reconnecting::new(
        Synthetic::new(640, 360, 30, 0, false).unwrap(),
        opener,
        Backoff::default(),
    );
    let mut pre_small = Preprocessor::new(640, 360, 360);
    let mut small_out = vec![0f32; pre_small.out_len()];
    let dir = tempfile::tempdir().unwrap();
    let ring_name = dir.path().join("ring").to_str().unwrap().to_string();
    let mut ring = MaskRing::create(
        &ring_name,
        RingGeometry {
            width: ow,
            height: oh,
            slots: 4,
        },
    )
    .unwrap();
    let mask_src: Vec<u8> = (0..ow as usize * oh as usize)
        .map(|i| (i % 3 == 0) as u8)
        .collect();
    let hub = CommandHub::new(8, Limits::default());

    let mut frame = |i: u64| {
        yuyv_to_rgb(&yuyv, cw, ch, cw as usize * 2, &mut rgb).unwrap();
        pre.run(&rgb, &mut producer_buf).unwrap();
        slot.publish(&mut producer_buf);
        assert_eq!(slot.take(&mut consumer_buf, Duration::ZERO), Take::Fresh);
        let f = source.next_frame().unwrap().unwrap();
        assert_eq!(f.id, i);
        pre_small.run(f.pixels, &mut small_out).unwrap();
        assert!(hub.try_recv().is_none());
        let mut w = ring.begin_write();
        w.frame_id = i;
        w.timestamp_ns = i;
        w.tracks
            .push(TrackEntry {
                id: 1,
                object: 0,
                score: 0.9,
                bbox: [0.0, 0.0, 10.0, 10.0],
            })
            .unwrap();
        w.mask().copy_from_slice(&mask_src);
        w.commit();
    };
    // Warm-up: first-use allocations (thread-locals, lazy statics) happen here.
    for i in 0..3 {
        frame(i);
    }
    let ((), allocs) = counted(|| {
        for i in 3..23 {
            frame(i);
        }
    });
    assert_eq!(
        allocs, 0,
        "the per-frame path allocated {allocs} times in 20 frames"
    );
    assert_eq!(ring.committed(), 23);
}
