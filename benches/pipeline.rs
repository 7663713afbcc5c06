//! Per-frame costs outside the engines at 360×640: camera conversion, preprocessing and the mask-ring
//! write. Run with `cargo bench --bench pipeline`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use referdino::camera::convert::{yuyv_to_rgb, Preprocessor};
use referdino::output::ring::{MaskRing, RingGeometry, TrackEntry};

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn benches(c: &mut Criterion) {
    let (w, h) = (640u32, 360u32);
    let rgb_small = pattern((w * h * 3) as usize);
    let rgb_720 = pattern(1280 * 720 * 3);
    let yuyv_small = pattern((w * h * 2) as usize);
    let yuyv_720 = pattern(1280 * 720 * 2);

    let mut g = c.benchmark_group("per_frame");
    let mut rgb_out = vec![0u8; (w * h * 3) as usize];
    g.bench_function("yuyv_to_rgb 640x360", |b| {
        b.iter(|| yuyv_to_rgb(black_box(&yuyv_small), w, h, 2 * w as usize, &mut rgb_out).unwrap())
    });
    let mut pre = Preprocessor::new(w, h, 360);
    let mut out = vec![0f32; pre.out_len()];
    g.bench_function("preprocess 640x360 -> 640x360", |b| {
        b.iter(|| pre.run(black_box(&rgb_small), &mut out).unwrap())
    });
    let mut pre720 = Preprocessor::new(1280, 720, 360);
    g.bench_function("preprocess 1280x720 -> 640x360", |b| {
        b.iter(|| pre720.run(black_box(&rgb_720), &mut out).unwrap())
    });

    let dir = tempfile::tempdir().unwrap();
    let name = dir.path().join("ring").to_str().unwrap().to_string();
    let mut ring = MaskRing::create(
        &name,
        RingGeometry {
            width: w,
            height: h,
            slots: 8,
        },
    )
    .unwrap();
    let mask = pattern((w * h) as usize);
    let mut n = 0u64;
    g.bench_function("ring write 640x360 mask + 16 tracks", |b| {
        b.iter(|| {
            let mut s = ring.begin_write();
            s.frame_id = n;
            s.timestamp_ns = n;
            for k in 0..16 {
                let _ = s.tracks.push(TrackEntry {
                    id: k,
                    score: 0.5,
                    bbox: [0.0, 1.0, 2.0, 3.0],
                });
            }
            s.mask().copy_from_slice(black_box(&mask));
            s.commit();
            n += 1;
        })
    });

    let mut rgb720 = vec![0u8; 1280 * 720 * 3];
    g.bench_function("camera 1280x720 YUYV -> preprocess -> ring write", |b| {
        b.iter(|| {
            yuyv_to_rgb(black_box(&yuyv_720), 1280, 720, 2560, &mut rgb720).unwrap();
            pre720.run(&rgb720, &mut out).unwrap();
            let mut s = ring.begin_write();
            s.frame_id = n;
            s.mask().copy_from_slice(&mask);
            s.commit();
            n += 1;
        })
    });
    g.bench_function("camera 640x360 YUYV -> preprocess -> ring write", |b| {
        b.iter(|| {
            yuyv_to_rgb(black_box(&yuyv_small), w, h, 2 * w as usize, &mut rgb_out).unwrap();
            pre.run(&rgb_out, &mut out).unwrap();
            let mut s = ring.begin_write();
            s.frame_id = n;
            s.mask().copy_from_slice(&mask);
            s.commit();
            n += 1;
        })
    });
    g.finish();
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
