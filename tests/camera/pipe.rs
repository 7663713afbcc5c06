//! `camera::pipe`: raw frames from files, FIFOs and stdin in every supported pixel format, and
//! GStreamer pipelines in a child process (a scripted stand-in for `gst-launch-1.0` that misbehaves
//! on purpose, and the real launcher when it is installed: CI installs it). Linux only: the tests
//! read `/proc` and rely on Linux's FIFO and `poll` behaviour.
#![cfg(target_os = "linux")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::drain;
use referdino::camera::convert::{yuv420_to_rgb, yuyv_to_rgb, Chroma420};
use referdino::camera::pipe::{GstPipeline, PipeOptions, RawFormat};
use referdino::camera::{open_source, FrameSource, SourceOptions};

fn opts() -> SourceOptions {
    SourceOptions {
        reconnect: false,
        ..SourceOptions::default()
    }
}

/// A 4×2 RGB test image and its packed encodings.
fn rgb_image() -> Vec<u8> {
    (0..4 * 2 * 3).map(|i| (i * 37 % 251) as u8).collect()
}

#[test]
fn packed_formats_reorder_and_drop_bytes_exactly() {
    let rgb = rgb_image();
    let px = rgb.chunks_exact(3);
    let bgr: Vec<u8> = px.clone().flat_map(|p| [p[2], p[1], p[0]]).collect();
    let rgbx: Vec<u8> = px.clone().flat_map(|p| [p[0], p[1], p[2], 0xee]).collect();
    let bgrx: Vec<u8> = px.flat_map(|p| [p[2], p[1], p[0], 0x11]).collect();
    for (name, data) in [
        ("rgb", &rgb),
        ("BGR", &bgr),
        ("rgbx", &rgbx),
        ("BGRx", &bgrx),
    ] {
        let f = RawFormat::parse(name).unwrap();
        assert_eq!(f.frame_bytes(4, 2).unwrap(), data.len(), "{name}");
        let mut out = vec![0; rgb.len()];
        f.to_rgb(data, 4, 2, &mut out).unwrap();
        assert_eq!(out, rgb, "{name}");
    }
}

#[test]
fn planar_420_matches_yuyv_with_the_same_samples_and_bt601_colours() {
    // 4×2 luma; one chroma pair per 2×2 block: BT.601 limited-range white, black, red, blue...
    let (w, h) = (4u32, 2u32);
    let y = [235u8, 16, 81, 41, 235, 16, 81, 41];
    let blocks = [(128u8, 128u8), (90u8, 240u8)]; // (U, V) of the left and right blocks
                                                  // The same samples as YUYV: each row repeats its block's chroma.
    let mut yuyv = Vec::new();
    for r in 0..2 {
        for (b, (u, v)) in blocks.iter().enumerate() {
            yuyv.extend_from_slice(&[y[r * 4 + 2 * b], *u, y[r * 4 + 2 * b + 1], *v]);
        }
    }
    let mut nv12 = y.to_vec();
    let mut i420 = y.to_vec();
    for (u, v) in blocks {
        nv12.extend_from_slice(&[u, v]);
    }
    i420.extend(blocks.iter().map(|b| b.0));
    i420.extend(blocks.iter().map(|b| b.1));
    let mut want = vec![0; 24];
    yuyv_to_rgb(&yuyv, w, h, 8, &mut want).unwrap();
    for (chroma, data) in [(Chroma420::Nv12, &nv12), (Chroma420::I420, &i420)] {
        let mut out = vec![0; 24];
        yuv420_to_rgb(data, w, h, chroma, &mut out).unwrap();
        assert_eq!(out, want, "{chroma:?}");
    }
    // Independent truth: Y 235 / 16 with neutral chroma are white and black; (81, 90, 240) is red
    // in BT.601 limited range (ITU-R BT.601 colour bars).
    assert_eq!(&want[0..6], &[255, 255, 255, 0, 0, 0]);
    let red = &want[6..9];
    assert!(
        red[0] >= 253 && red[1] <= 2 && red[2] <= 2,
        "(81, 90, 240) → {red:?}"
    );
    for (name, len) in [("nv12", 12), ("I420", 12), ("yuy2", 16)] {
        assert_eq!(
            RawFormat::parse(name).unwrap().frame_bytes(w, h).unwrap(),
            len
        );
    }
}

#[test]
fn raw_specs_and_sizes_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.raw");
    std::fs::write(&file, [0u8; 16]).unwrap();
    let f = file.display();
    for (spec, needle) in [
        ("raw:4x2:rgb".to_string(), "expected raw:WxH:FORMAT:PATH"),
        (format!("raw:4:rgb:{f}"), "expected raw:WxH:FORMAT:PATH"),
        ("raw:4x2:rgb:".to_string(), "expected raw:WxH:FORMAT:PATH"),
        (format!("raw:0x2:rgb:{f}"), "out of range"),
        (format!("raw:5x2:yuyv:{f}"), "even width"),
        (format!("raw:4x3:nv12:{f}"), "even width and height"),
        (format!("raw:4x2:argb64:{f}"), "not supported"),
        (format!("raw:4x2:rgb:{f}.missing"), "No such file"),
        (
            format!("raw:4x2:rgb:{}", dir.path().display()),
            "is a directory",
        ),
        ("gst:".to_string(), "expected gst:[WxH:]PIPELINE"),
        ("gst:0x2:videotestsrc".to_string(), "out of range"),
    ] {
        let e = open_source(&spec, &opts()).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains(needle)),
            "{spec}: {e:?}"
        );
    }
}

#[test]
fn raw_file_gives_each_frame_then_ends_and_a_partial_frame_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let rgb = rgb_image();
    let frames: Vec<Vec<u8>> = (0..3u8)
        .map(|k| rgb.iter().map(|v| v.wrapping_add(k)).collect())
        .collect();
    let mut bytes = Vec::new();
    for f in &frames {
        bytes.extend(f.chunks_exact(3).flat_map(|p| [p[2], p[1], p[0], 0]));
    }
    let path = dir.path().join("clip.bgrx");
    std::fs::write(&path, &bytes).unwrap();
    let mut o = opts();
    o.fps = 10;
    let mut src = open_source(&format!("raw:4x2:bgrx:{}", path.display()), &o).unwrap();
    assert!(
        src.describe().contains("raw 4x2 Bgrx"),
        "{}",
        src.describe()
    );
    let mut stamps = Vec::new();
    for f in &frames {
        let got = src.next_frame().unwrap().unwrap();
        assert_eq!(got.pixels, &f[..]);
        stamps.push(got.timestamp_ns);
    }
    assert_eq!(
        stamps,
        [0, 100_000_000, 200_000_000],
        "a file counts at --fps"
    );
    assert!(src.next_frame().unwrap().is_none());

    bytes.truncate(bytes.len() - 5);
    std::fs::write(&path, &bytes).unwrap();
    let mut src = open_source(&format!("raw:4x2:bgrx:{}", path.display()), &o).unwrap();
    let (got, err) = drain(src.as_mut());
    assert_eq!(got.len(), 2);
    let err = err.expect("the partial frame is an error");
    assert!(err.contains("inside frame 2 (27 of 32 bytes)"), "{err}");
}

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

#[test]
fn raw_fifo_opens_before_its_writer_takes_frames_in_pieces_and_ends_when_it_closes() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("cam.fifo");
    mkfifo(&fifo);
    let rgb = rgb_image();
    let spec = format!("raw:4x2:rgb:{}", fifo.display());
    // Opening must not wait for a writer (no writer exists yet).
    let mut src = open_source(&spec, &opts()).unwrap();
    let writer = {
        let (fifo, rgb) = (fifo.clone(), rgb.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut f = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            for k in 0..2u8 {
                let frame: Vec<u8> = rgb.iter().map(|v| v ^ k).collect();
                // In two pieces with a pause: the reader must assemble the frame.
                f.write_all(&frame[..10]).unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(30));
                f.write_all(&frame[10..]).unwrap();
            }
        })
    };
    let (frames, err) = drain(src.as_mut());
    writer.join().unwrap();
    assert_eq!(err, None);
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0], rgb);
    assert_eq!(frames[1], rgb.iter().map(|v| v ^ 1).collect::<Vec<_>>());
}

#[test]
fn raw_fifo_with_a_silent_writer_returns_at_a_stop_request() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("silent.fifo");
    mkfifo(&fifo);
    let o = opts();
    let stop = o.backoff.stop.clone();
    let mut src = open_source(&format!("raw:4x2:rgb:{}", fifo.display()), &o).unwrap();
    // A writer that connects and never writes.
    let _writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
    });
    let t0 = Instant::now();
    assert!(src.next_frame().unwrap().is_none());
    t.join().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

/// A stand-in launcher: records its arguments, then runs `body` (a shell script fragment).
fn fake_launcher(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let args = dir.join(format!("{name}.args"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\necho launch >> '{}.count'\n{body}\n",
            args.display(),
            args.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn gst_opts(launch: &Path) -> SourceOptions {
    SourceOptions {
        reconnect: false,
        pipe: PipeOptions {
            gst_launch: launch.to_path_buf(),
            open_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_millis(400),
        },
        ..SourceOptions::default()
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn gst_pipeline_reads_padded_rgb_rows_and_ends_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // 6×2 RGB: 18 bytes a row, padded by GStreamer to 20; the padding must not reach the frame.
    let (w, h) = (6usize, 2usize);
    let tight: Vec<Vec<u8>> = (0..3u8)
        .map(|k| {
            (0..w * h * 3)
                .map(|i| (i as u8).wrapping_mul(7) ^ k)
                .collect()
        })
        .collect();
    let mut stream = Vec::new();
    for f in &tight {
        for row in f.chunks_exact(w * 3) {
            stream.extend_from_slice(row);
            stream.extend_from_slice(&[0xaa, 0xbb]);
        }
    }
    let data = dir.path().join("frames.bin");
    std::fs::write(&data, &stream).unwrap();
    let launch = fake_launcher(dir.path(), "gst", &format!("exec cat '{}'", data.display()));
    let mut src = open_source("gst:6x2:videotestsrc ! ", &gst_opts(&launch)).unwrap();
    assert!(
        src.describe().starts_with("gst:videotestsrc (6x2 RGB"),
        "{}",
        src.describe()
    );
    let (frames, err) = drain(src.as_mut());
    assert_eq!(err, None);
    assert_eq!(frames, tight);
    let args = std::fs::read_to_string(dir.path().join("gst.args")).unwrap();
    let want = format!("-q videotestsrc ! {}", GstPipeline::tail_elements(6, 2));
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        want.split(' ').collect::<Vec<_>>()
    );
}

#[test]
fn gst_pipeline_words_split_as_a_shell_splits_them() {
    use referdino::camera::pipe::split_words;
    let words = split_words(
        r#"filesrc location="my clip.mp4" ! qtdemux ! 'video/x-raw(memory:NVMM),width=1280' ! a\ b"#,
    )
    .unwrap();
    assert_eq!(
        words,
        [
            "filesrc",
            "location=my clip.mp4",
            "!",
            "qtdemux",
            "!",
            "video/x-raw(memory:NVMM),width=1280",
            "!",
            "a b"
        ]
    );
    assert_eq!(
        split_words(r#"say "a \"b\"" c"#).unwrap(),
        ["say", r#"a "b""#, "c"]
    );
    for bad in ["'open", "\"open", "end\\"] {
        assert!(split_words(bad).is_err(), "{bad}");
    }
    let e = open_source("gst:filesrc location='unclosed", &opts())
        .err()
        .unwrap();
    assert!(e.to_string().contains("unbalanced single quote"), "{e}");
}

#[test]
fn gst_failures_carry_the_childs_words_and_the_child_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let o = |l: &Path| gst_opts(l);
    // Not installed.
    let e = open_source("gst:videotestsrc", &o(&dir.path().join("none")))
        .err()
        .unwrap();
    assert!(e.to_string().contains("gstreamer1.0-tools"), "{e}");
    // Refused pipeline: exits 1 with its reason on stderr, before any frame.
    let bad = fake_launcher(
        dir.path(),
        "bad",
        "echo 'WARNING: erroneous pipeline: no element \"nvarguscamerasrc\"' >&2; exit 1",
    );
    let e = open_source("gst:nvarguscamerasrc", &o(&bad))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("exit status 1") && e.contains("no element"),
        "{e}"
    );
    // Fails after a frame (camera unplugged): the frame, then the error with the child's words.
    let frame = dir.path().join("one.bin");
    std::fs::write(&frame, [9u8; 4 * 2 * 3]).unwrap();
    let lost = fake_launcher(
        dir.path(),
        "lost",
        &format!(
            "cat '{}'; echo 'ERROR: from element /GstPipeline:pipeline0/GstNvArgusCameraSrc: TIMEOUT' >&2; exit 2",
            frame.display()
        ),
    );
    let mut src = open_source("gst:4x2:nvarguscamerasrc", &o(&lost)).unwrap();
    let (frames, err) = drain(src.as_mut());
    assert_eq!(frames, [vec![9u8; 24]]);
    let err = err.unwrap();
    assert!(
        err.contains("exit status 2") && err.contains("TIMEOUT"),
        "{err}"
    );
    // Stalls after a frame: killed after the stall timeout, whole process group included.
    let hang = fake_launcher(
        dir.path(),
        "hang",
        &format!("cat '{}'; sleep 30 & wait", frame.display()),
    );
    let mut g = GstPipeline::open("videotestsrc", 4, 2, &o(&hang)).unwrap();
    let pid = g.pid();
    assert!(g.next_frame().unwrap().is_some());
    let t0 = Instant::now();
    let e = g.next_frame().err().unwrap().to_string();
    assert!(e.contains("no frame for") && e.contains("killed"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(!pid_alive(pid), "the launcher {pid} still runs");
    // Dropping a running source stops its child.
    let run = fake_launcher(
        dir.path(),
        "run",
        &format!("while true; do cat '{}'; sleep 0.05; done", frame.display()),
    );
    let g = GstPipeline::open("videotestsrc", 4, 2, &o(&run)).unwrap();
    let pid = g.pid();
    assert!(pid_alive(pid));
    drop(g);
    assert!(!pid_alive(pid), "the launcher {pid} outlived its source");
}

/// A `gst:4x2` source whose launcher delivers one frame of `value` bytes and then fails, every
/// launch (a camera lost after every frame), re-launched after `backoff`; its launches are counted in
/// `flaky.args.count` under `dir`.
fn flaky_source(dir: &Path, value: u8, backoff: Duration) -> Box<dyn FrameSource> {
    let frame = dir.join("one.bin");
    std::fs::write(&frame, [value; 4 * 2 * 3]).unwrap();
    let flaky = fake_launcher(
        dir,
        "flaky",
        &format!("cat '{}'; echo 'ERROR: lost' >&2; exit 1", frame.display()),
    );
    let mut o = gst_opts(&flaky);
    o.reconnect = true;
    o.backoff.initial = backoff;
    o.backoff.max = backoff;
    open_source("gst:4x2:v4l2src", &o).unwrap()
}

#[test]
fn gst_pipeline_is_relaunched_after_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut src = flaky_source(dir.path(), 5, Duration::from_millis(5));
    for id in 0..4 {
        let f = src.next_frame().unwrap().unwrap();
        assert_eq!(f.id, id, "ids keep increasing across re-launches");
        assert_eq!(f.pixels, &[5u8; 24][..]);
    }
    let h = src.health();
    assert_eq!(h.reconnects, 3, "{h:?}");
    let launches = std::fs::read_to_string(dir.path().join("flaky.args.count")).unwrap();
    assert_eq!(launches.lines().count(), 4);
}

/// A `csi:`-like pipeline asked for BGRx: handed over as it comes to a consumer that takes BGRx (no
/// conversion anywhere), converted to RGB for one that does not; the tail asks GStreamer for BGRx.
#[test]
fn gst_pipeline_in_bgrx_hands_frames_over_or_converts_them() {
    use referdino::camera::{Layout, LayoutSet};
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (3usize, 2usize);
    let bgrx: Vec<Vec<u8>> = (0..2u8)
        .map(|k| {
            (0..w * h * 4)
                .map(|i| (i as u8).wrapping_mul(11) ^ k)
                .collect()
        })
        .collect();
    let data = dir.path().join("frames.bin");
    std::fs::write(&data, bgrx.concat()).unwrap();
    let launch = fake_launcher(dir.path(), "gst", &format!("exec cat '{}'", data.display()));
    for accepted in [LayoutSet::RGB, LayoutSet::of(&[Layout::Bgrx])] {
        let mut g =
            GstPipeline::open_as("nvvidconv", 3, 2, Layout::Bgrx, &gst_opts(&launch)).unwrap();
        assert!(g.describe().contains("3x2 BGRx"), "{}", g.describe());
        g.accept_layouts(accepted);
        for want in &bgrx {
            let f = g.next_frame().unwrap().expect("a frame");
            if accepted.contains(Layout::Bgrx) {
                assert_eq!((f.layout, f.pixels), (Layout::Bgrx, &want[..]));
            } else {
                let rgb: Vec<u8> = want
                    .chunks_exact(4)
                    .flat_map(|p| [p[2], p[1], p[0]])
                    .collect();
                assert_eq!((f.layout, f.pixels), (Layout::Rgb, &rgb[..]));
            }
        }
        assert!(g.next_frame().unwrap().is_none());
    }
    let args = std::fs::read_to_string(dir.path().join("gst.args")).unwrap();
    let want = format!(
        "-q nvvidconv ! {}",
        GstPipeline::tail_elements_as(3, 2, Layout::Bgrx)
    );
    assert!(want.contains("format=BGRx,width=3,height=2"), "{want}");
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        want.split(' ').collect::<Vec<_>>()
    );
}

/// The real `gst-launch-1.0` (CI installs it and sets `REFERDINO_REQUIRE_GST=1`; elsewhere the test
/// is skipped without it).
#[test]
fn real_gstreamer_test_source_gives_its_colour_and_a_clean_end() {
    let found = std::process::Command::new("gst-launch-1.0")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("REFERDINO_REQUIRE_GST").as_deref() != Ok("1"),
            "gst-launch-1.0 is required here (REFERDINO_REQUIRE_GST=1: apt install gstreamer1.0-tools gstreamer1.0-plugins-base)"
        );
        eprintln!("skipped: no gst-launch-1.0");
        return;
    }
    let o = SourceOptions {
        reconnect: false,
        pipe: PipeOptions {
            gst_launch: "gst-launch-1.0".into(),
            ..PipeOptions::default()
        },
        ..SourceOptions::default()
    };
    // 10×6: 30-byte rows, padded to 32 by GStreamer.
    let mut src = open_source("gst:10x6:videotestsrc num-buffers=3 pattern=red", &o).unwrap();
    let (frames, err) = drain(src.as_mut());
    assert_eq!(err, None);
    assert_eq!(frames.len(), 3);
    for f in &frames {
        for p in f.chunks_exact(3) {
            assert!(p[0] >= 250 && p[1] <= 5 && p[2] <= 5, "{p:?}");
        }
    }
    // A pipeline that already ends in BGRx at the size asked for (as csi:'s nvvidconv does): the
    // tail passes its buffers through, and they arrive as BGRx (blue, green, red, x).
    let mut g = GstPipeline::open_as(
        "videotestsrc num-buffers=2 pattern=red ! video/x-raw,format=BGRx,width=10,height=6",
        10,
        6,
        referdino::camera::Layout::Bgrx,
        &o,
    )
    .unwrap();
    g.accept_layouts(referdino::camera::LayoutSet::of(&[
        referdino::camera::Layout::Bgrx,
    ]));
    let mut n = 0;
    while let Some(f) = g.next_frame().unwrap() {
        assert_eq!(f.layout, referdino::camera::Layout::Bgrx);
        for p in f.pixels.chunks_exact(4) {
            assert!(p[2] >= 250 && p[1] <= 5 && p[0] <= 5, "{p:?}");
        }
        n += 1;
    }
    assert_eq!(n, 2);
    let e = open_source("gst:nosuchelementsrc", &o)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("nosuchelementsrc") && e.contains("exit status"),
        "{e}"
    );
}

#[test]
fn csi_cameras_become_an_argus_pipeline_at_the_requested_size_and_rate() {
    use referdino::camera::pipe::csi_pipeline;
    let o = opts();
    assert_eq!(
        csi_pipeline("0", &o).unwrap(),
        "640x360:nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),framerate=30/1 ! nvvidconv ! video/x-raw,width=640,height=360,format=BGRx"
    );
    let p = csi_pipeline("1:1280x720@60", &o).unwrap();
    assert!(
        p.starts_with(
            "1280x720:nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),framerate=60/1"
        ) && p.ends_with("width=1280,height=720,format=BGRx"),
        "{p}"
    );
    for bad in ["", "x", "0:640", "0:640x360@0", "0:640x360@fast"] {
        let e = csi_pipeline(bad, &o).err().unwrap().to_string();
        assert!(e.contains("expected csi:N[:WxH[@fps]]"), "{bad}: {e}");
    }
    // Through the launcher: the words it gets, and frames at the size asked for.
    let dir = tempfile::tempdir().unwrap();
    let frame = dir.path().join("f.bin");
    // BGRx, as nvvidconv writes it: at a width whose rows are surely 4·W bytes (a multiple of 64) the
    // tail asks for BGRx too (a pass-through, no videoconvert work); a consumer that takes only RGB
    // gets it converted here.
    let bgrx: Vec<u8> = (0..64 * 2).flat_map(|i| [i as u8, 100, 200, 0]).collect();
    std::fs::write(&frame, &bgrx).unwrap();
    let launch = fake_launcher(
        dir.path(),
        "argus",
        &format!("exec cat '{}'", frame.display()),
    );
    let mut src = open_source("csi:2:64x2@15", &gst_opts(&launch)).unwrap();
    let (frames, err) = drain(src.as_mut());
    assert_eq!((frames.len(), err), (1, None));
    let rgb: Vec<u8> = (0..64 * 2).flat_map(|i| [200, 100, i as u8]).collect();
    assert_eq!(frames[0], rgb);
    let args = std::fs::read_to_string(dir.path().join("argus.args")).unwrap();
    let words: Vec<&str> = args.lines().collect();
    assert!(
        words.starts_with(&[
            "-q",
            "nvarguscamerasrc",
            "sensor-id=2",
            "!",
            "video/x-raw(memory:NVMM),framerate=15/1"
        ]) && words.contains(&"video/x-raw,format=BGRx,width=64,height=2"),
        "{args}"
    );
    // Any other width: RGB through videoconvert, which reads nvvidconv's rows whatever their pitch.
    std::fs::write(&frame, vec![7u8; 8 * 4 * 3]).unwrap();
    let mut src = open_source("csi:0:8x4", &gst_opts(&launch)).unwrap();
    let (frames, err) = drain(src.as_mut());
    assert_eq!((frames.len(), err), (1, None));
    let args = std::fs::read_to_string(dir.path().join("argus.args")).unwrap();
    assert!(
        args.lines()
            .any(|w| w == "video/x-raw,format=RGB,width=8,height=4"),
        "{args}"
    );
}

/// Open descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Children of this process that exited and were never waited for.
fn zombie_children() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|s| {
            s.lines()
                .any(|l| l.split_whitespace().eq(["PPid:", me.as_str()]))
                && s.lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .count()
}

#[test]
fn a_hundred_relaunches_leak_no_descriptor_and_leave_no_zombie() {
    let dir = tempfile::tempdir().unwrap();
    let mut src = flaky_source(dir.path(), 3, Duration::from_millis(1));
    // Warm up (threads, logger), then measure across 100 relaunches.
    for _ in 0..3 {
        src.next_frame().unwrap().unwrap();
    }
    let fds = open_fds();
    for _ in 0..100 {
        assert_eq!(src.next_frame().unwrap().unwrap().pixels, &[3u8; 24][..]);
    }
    let h = src.health();
    assert!(h.reconnects >= 100, "{h:?}");
    // Other tests of this binary run beside this one, opening descriptors and reaping their own
    // children: a leak is what stays, so each condition must hold at least once within a second.
    let settles = |ok: &dyn Fn() -> bool| {
        (0..100).any(|_| {
            let yes = ok();
            if !yes {
                std::thread::sleep(Duration::from_millis(10));
            }
            yes
        })
    };
    assert!(
        settles(&|| open_fds() <= fds + 4),
        "descriptors {fds} → {} over 100 relaunches",
        open_fds()
    );
    drop(src);
    assert!(
        settles(&|| zombie_children() == 0),
        "{} launchers left unreaped",
        zombie_children()
    );
}

/// A consumer that reads BGR and YUYV itself (the device path's preprocessing kernel) gets raw frames
/// of those layouts byte for byte as the file holds them; formats that are no frame layout (NV12,
/// BGRx) still come converted to RGB; without the consumer's word everything is RGB. A native frame
/// converted with `Frame::to_rgb` is the RGB frame of the default.
#[test]
fn raw_frames_come_as_they_are_in_the_layouts_the_consumer_accepts() {
    use referdino::camera::{Layout, LayoutSet};
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (4u32, 2u32);
    let yuyv: Vec<u8> = (0..w * h * 2).map(|i| (40 + i * 13 % 180) as u8).collect();
    let nv12: Vec<u8> = (0..w * h * 3 / 2)
        .map(|i| (30 + i * 17 % 200) as u8)
        .collect();
    let bgr: Vec<u8> = rgb_image()
        .chunks_exact(3)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect();
    let bgrx: Vec<u8> = rgb_image()
        .chunks_exact(3)
        .flat_map(|p| [p[2], p[1], p[0], 9])
        .collect();
    let rgbx: Vec<u8> = rgb_image()
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 200])
        .collect();
    let accepted = LayoutSet::of(&[Layout::Bgr, Layout::Yuyv, Layout::Bgrx]);
    for (format, data, native) in [
        ("yuyv", &yuyv, Some(Layout::Yuyv)),
        ("bgr", &bgr, Some(Layout::Bgr)),
        ("rgb", &rgb_image(), Some(Layout::Rgb)),
        ("nv12", &nv12, None),
        ("bgrx", &bgrx, Some(Layout::Bgrx)),
        // A layout the consumer does not take: converted.
        ("rgbx", &rgbx, None),
    ] {
        let path = dir.path().join(format!("f.{format}"));
        std::fs::write(&path, data).unwrap();
        let spec = format!("raw:{w}x{h}:{format}:{}", path.display());
        let mut plain = open_source(&spec, &opts()).unwrap();
        let rgb = {
            let f = plain.next_frame().unwrap().unwrap();
            assert_eq!(f.layout, Layout::Rgb, "{format}");
            f.pixels.to_vec()
        };
        let mut src = open_source(&spec, &opts()).unwrap();
        src.accept_layouts(accepted);
        let f = src.next_frame().unwrap().unwrap();
        match native {
            Some(l) => {
                assert_eq!((f.layout, f.pixels), (l, &data[..]), "{format}");
                let mut back = Vec::new();
                f.to_rgb(&mut back).unwrap();
                assert_eq!(back, rgb, "{format}");
            }
            None => assert_eq!((f.layout, f.pixels), (Layout::Rgb, &rgb[..]), "{format}"),
        }
        assert!(src.next_frame().unwrap().is_none());
    }
    assert!(LayoutSet::RGB.contains(Layout::Rgb) && !LayoutSet::RGB.contains(Layout::Yuyv));
    assert!(accepted.contains(Layout::Rgb));
}
