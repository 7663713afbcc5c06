//! The H.264 decoder in a child process (`camera::isolated`): frames identical to in-process
//! decoding, and every way the decoder process can die (a real SIGSEGV, abort, early exit, garbage
//! on the pipe, a stall) is a clear error in this process, which carries on and opens the next file.
#![cfg(feature = "video")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::drain;
use referdino::camera::synthetic::Synthetic;
use referdino::camera::video::write_mp4;
use referdino::camera::{open_source, FrameSource, IsolatedDecode, SourceOptions, VideoDecode};

const FRAMES: u64 = 8;

fn clip(dir: &Path) -> PathBuf {
    let (w, h) = (64u32, 48u32);
    let frames: Vec<Vec<u8>> = (0..FRAMES)
        .map(|i| {
            let mut v = vec![0u8; (w * h * 3) as usize];
            Synthetic::render(i, w, h, &mut v);
            v
        })
        .collect();
    let path = dir.join("clip.mp4");
    write_mp4(&path, w, h, 10, &frames).unwrap();
    path
}

fn isolated(fault: Option<&str>, stall: Duration) -> SourceOptions {
    SourceOptions {
        decode: VideoDecode::Isolated(IsolatedDecode {
            worker: env!("CARGO_BIN_EXE_referdino").into(),
            stall_timeout: stall,
            fault: fault.map(String::from),
        }),
        ..SourceOptions::default()
    }
}

fn open(path: &Path, opts: &SourceOptions) -> referdino::Result<Box<dyn FrameSource>> {
    open_source(path.to_str().unwrap(), opts)
}

#[test]
fn isolated_frames_equal_in_process_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = clip(dir.path());
    let mut inproc = open(&path, &SourceOptions::default()).unwrap();
    let mut iso = open(&path, &isolated(None, IsolatedDecode::STALL_TIMEOUT)).unwrap();
    assert!(
        iso.describe().contains("decoded in process"),
        "{}",
        iso.describe()
    );
    let (a, ea) = drain(inproc.as_mut());
    let (b, eb) = drain(iso.as_mut());
    assert_eq!((ea, eb), (None, None));
    assert_eq!(a.len() as u64, FRAMES);
    assert!(a == b, "isolated frames differ from in-process frames");
    // After the end: still the end, no error.
    assert!(iso.next_frame().unwrap().is_none());
}

#[test]
fn decoder_crashes_are_errors_here_and_the_next_open_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = clip(dir.path());
    let cases = [
        ("segv@3", "killed by signal 11 (SIGSEGV)"),
        ("abort@3", "killed by signal 6 (SIGABRT)"),
        ("exit@3", "exited with status 3"),
        ("garbage@3", "sent a record tagged 0x47"),
    ];
    for (fault, want) in cases {
        let mut src = open(&path, &isolated(Some(fault), IsolatedDecode::STALL_TIMEOUT)).unwrap();
        let (frames, err) = drain(src.as_mut());
        assert_eq!(frames.len(), 3, "{fault}: frames before the crash");
        let err = err.unwrap_or_else(|| panic!("{fault}: no error"));
        eprintln!("{fault}: {err}");
        assert!(err.contains(want), "{fault}: {err}");
        assert!(
            err.contains("clip.mp4") && err.contains("after 3 frames"),
            "{fault}: {err}"
        );
        // The source stays failed (an error again, no panic), and a fresh open decodes the whole clip.
        let again = src.next_frame().err().unwrap().to_string();
        assert!(again.contains(want), "{fault}: {again}");
        drop(src);
        let mut src = open(&path, &isolated(None, IsolatedDecode::STALL_TIMEOUT)).unwrap();
        let (frames, err) = drain(src.as_mut());
        assert_eq!(
            (frames.len() as u64, err),
            (FRAMES, None),
            "{fault}: re-open"
        );
    }
}

#[test]
fn a_stalled_decoder_is_killed_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = clip(dir.path());
    let mut src = open(&path, &isolated(Some("hang@2"), Duration::from_secs(1))).unwrap();
    let t = Instant::now();
    let (frames, err) = drain(src.as_mut());
    let waited = t.elapsed();
    let err = err.unwrap();
    eprintln!("hang@2: {err} ({waited:?})");
    assert_eq!(frames.len(), 2);
    assert!(
        err.contains("stalled (no output for 1.0 s) after 2 frames; killed it"),
        "{err}"
    );
    assert!(waited < Duration::from_secs(10), "took {waited:?}");
}

#[test]
fn bad_files_through_the_decoder_process_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let opts = isolated(None, IsolatedDecode::STALL_TIMEOUT);
    let junk = dir.path().join("junk.mp4");
    std::fs::write(&junk, b"this is not an mp4 file at all").unwrap();
    let e = open(&junk, &opts).err().unwrap().to_string();
    eprintln!("junk: {e}");
    assert!(
        e.contains("junk.mp4") && e.contains("not a readable MP4"),
        "{e}"
    );

    // Truncated: the mp4 writer puts the index (moov) after the samples, so half a file has none.
    let good = std::fs::read(clip(dir.path())).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    let e = open(&cut, &opts).err().unwrap().to_string();
    assert!(
        e.contains("cut.mp4") && e.contains("not a readable MP4"),
        "{e}"
    );

    // Sample data overwritten with noise (the index intact): frames or a clear error, never a crash
    // of this process; whatever happens, the decoder process reports it.
    let mut noisy = good.clone();
    let mut x = 0x9e37_79b9_u32;
    for b in &mut noisy[64..good.len() / 2] {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let noisy_path = dir.path().join("noisy.mp4");
    std::fs::write(&noisy_path, &noisy).unwrap();
    match open(&noisy_path, &opts) {
        Ok(mut src) => {
            let (frames, err) = drain(src.as_mut());
            if let Some(e) = &err {
                assert!(e.contains("noisy.mp4"), "{e}");
            }
            eprintln!("noisy clip: {} frames, then {err:?}", frames.len());
        }
        Err(e) => assert!(e.to_string().contains("noisy.mp4"), "{e}"),
    }
}

#[test]
fn a_worker_that_cannot_run_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = clip(dir.path());
    let with_worker = |worker: PathBuf| SourceOptions {
        decode: VideoDecode::Isolated(IsolatedDecode::new(worker)),
        ..SourceOptions::default()
    };
    let e = open(&path, &with_worker(dir.path().join("no-such-worker")))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("cannot start the H.264 decoder process") && e.contains("no-such-worker"),
        "{e}"
    );
    // A program that is not a referdino binary: it ends without a header.
    let e = open(&path, &with_worker("true".into()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("while opening the file") && e.contains("is true a referdino binary"),
        "{e}"
    );
}

/// The decoder process runs in its own process group: a terminal's Ctrl-C (SIGINT to the
/// foreground group) reaches this process, which stops and ends the worker itself, instead of
/// killing the worker first (a clean stop that ended with "killed by signal 2" and exit status 1).
#[test]
fn the_decoder_process_has_its_own_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = clip(dir.path());
    let cfg = IsolatedDecode::new(env!("CARGO_BIN_EXE_referdino"));
    let v =
        referdino::camera::isolated::IsolatedVideo::open(&path, &SourceOptions::default(), &cfg)
            .unwrap();
    let pid = v.worker_pid() as i32;
    // SAFETY: getpgid(2) only reads the process table; 0 names this process.
    let (worker_group, ours) = unsafe { (libc::getpgid(pid), libc::getpgid(0)) };
    assert_eq!(worker_group, pid, "the worker leads its own group");
    assert_ne!(worker_group, ours);
}
