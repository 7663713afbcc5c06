//! MP4/H.264 source: a clip encoded here with openh264 and written with the mp4 crate is decoded back
//! through `open_source`, and bad files give clear errors.
#![cfg(feature = "video")]

use referdino::camera::synthetic::Synthetic;
use referdino::camera::video::write_mp4;
use referdino::camera::{open_source, SourceOptions};

#[test]
fn mp4_roundtrip_through_open_source() {
    let (w, h, n) = (96u32, 64u32, 12u64);
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut v = vec![0u8; (w * h * 3) as usize];
            Synthetic::render(i, w, h, &mut v);
            v
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    write_mp4(&path, w, h, 10, &frames).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 200_000, "clip is {size} bytes");
    let mut src = open_source(path.to_str().unwrap(), &SourceOptions::default()).unwrap();
    assert!(src.describe().contains("H.264 96x64"), "{}", src.describe());
    let mut got = 0u64;
    while let Some(f) = src.next_frame().unwrap() {
        assert_eq!((f.width, f.height), (w, h));
        assert_eq!(f.id, got);
        assert_eq!(f.timestamp_ns, got * 100_000_000);
        let orig = &frames[got as usize];
        let mse: f64 = orig
            .iter()
            .zip(f.rgb)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum::<f64>()
            / orig.len() as f64;
        let psnr = 10.0 * (255.0f64 * 255.0 / mse.max(1e-9)).log10();
        assert!(psnr > 28.0, "frame {got}: PSNR {psnr:.1} dB");
        // Frames come out in order: each matches its own original better than its neighbour's.
        if got + 1 < n {
            let next = &frames[got as usize + 1];
            let mse_next: f64 = next
                .iter()
                .zip(f.rgb)
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum::<f64>()
                / next.len() as f64;
            assert!(
                mse < mse_next,
                "frame {got} looks more like frame {}",
                got + 1
            );
        }
        got += 1;
    }
    assert_eq!(got, n);
}

#[test]
fn bad_video_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.mp4");
    std::fs::write(&path, b"this is not an mp4 file at all").unwrap();
    let e = open_source(path.to_str().unwrap(), &SourceOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("junk.mp4") && e.contains("not a readable MP4"),
        "{e}"
    );
}
