//! Budget check: an H.264 file decoded in a child process (`camera::isolated`) hands each frame to
//! the caller without allocating: records are read straight into the buffer made at open.
#![cfg(feature = "video")]

use referdino::camera::synthetic::Synthetic;
use referdino::camera::video::write_mp4;
use referdino::camera::{open_source, IsolatedDecode, SourceOptions, VideoDecode};

use crate::counter::counted;

#[test]
fn isolated_video_frames_allocate_nothing_in_steady_state() {
    let (w, h, n) = (64u32, 48u32, 12u64);
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
    let opts = SourceOptions {
        decode: VideoDecode::Isolated(IsolatedDecode::new(env!("CARGO_BIN_EXE_referdino"))),
        ..SourceOptions::default()
    };
    let mut src = open_source(path.to_str().unwrap(), &opts).unwrap();
    for _ in 0..2 {
        src.next_frame().unwrap().unwrap();
    }
    let (got, allocs) = counted(|| {
        let mut got = 0u64;
        for _ in 0..8 {
            if let Ok(Some(f)) = src.next_frame() {
                got += f.pixels.len() as u64;
            }
        }
        got
    });
    assert_eq!(got, 8 * (w * h * 3) as u64, "every frame arrived");
    assert_eq!(allocs, 0, "{allocs} allocations for 8 frames");
}
