//! MP4/H.264 source: a clip encoded here with openh264 and written with the mp4 crate is decoded back
//! through `open_source`, and bad files give clear errors.
#![cfg(feature = "video")]

use referdino::camera::synthetic::Synthetic;
use referdino::camera::video::{write_mp4, write_mp4_timed};
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
            .zip(f.pixels)
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
                .zip(f.pixels)
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

/// An MP4 whose one H.264 track has these parameter sets and one sample (never decoded).
fn mp4_with_parameter_sets(path: &std::path::Path, w: u16, h: u16, sps: &[u8], pps: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let config = mp4::Mp4Config {
        major_brand: "isom".parse().unwrap(),
        minor_version: 512,
        compatible_brands: vec!["isom".parse().unwrap(), "avc1".parse().unwrap()],
        timescale: 1000,
    };
    let mut m = mp4::Mp4Writer::write_start(std::io::BufWriter::new(file), &config).unwrap();
    m.add_track(&mp4::TrackConfig {
        track_type: mp4::TrackType::Video,
        timescale: 10_000,
        language: "und".into(),
        media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
            width: w,
            height: h,
            seq_param_set: sps.to_vec(),
            pic_param_set: pps.to_vec(),
        }),
    })
    .unwrap();
    let sample = mp4::Mp4Sample {
        start_time: 0,
        duration: 1000,
        rendering_offset: 0,
        is_sync: true,
        bytes: vec![0, 0, 0, 2, 0x65, 0x88].into(),
    };
    m.write_sample(1, &sample).unwrap();
    m.write_end().unwrap();
}

/// Parameter sets are checked before the C decoder sees them, in this process and in the decoder
/// process alike: an SPS declaring 131072x131072 pictures, one that disagrees with the track, and a
/// PPS of the wrong NAL type are refused with the reason.
#[test]
fn hostile_parameter_sets_are_refused_before_decoding() {
    // Baseline SPS, 8192x8192 macroblocks (ITU-T H.264 7.3.2.1.1 fields, Exp-Golomb coded).
    let huge = [
        0x67, 0x42, 0x00, 0x1e, 0xf4, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0x80, 0x03, 0x20,
    ];
    let pps = [0x68, 0xce, 0x38, 0x80];
    let dir = tempfile::tempdir().unwrap();
    // A real SPS (96x64) from an encoded clip, for the mismatch cases.
    let real = dir.path().join("real.mp4");
    let frames = vec![vec![128u8; 96 * 64 * 3]; 2];
    write_mp4(&real, 96, 64, 10, &frames).unwrap();
    let reader = {
        let f = std::fs::File::open(&real).unwrap();
        let size = f.metadata().unwrap().len();
        mp4::Mp4Reader::read_header(std::io::BufReader::new(f), size).unwrap()
    };
    let avcc = &reader.tracks()[&1]
        .trak
        .mdia
        .minf
        .stbl
        .stsd
        .avc1
        .as_ref()
        .unwrap()
        .avcc;
    let real_sps = avcc.sequence_parameter_sets[0].bytes.clone();
    let real_pps = avcc.picture_parameter_sets[0].bytes.clone();

    struct Case<'a> {
        name: &'a str,
        size: (u16, u16),
        sps: &'a [u8],
        pps: &'a [u8],
        want: &'a [&'a str],
    }
    let cases = [
        Case {
            name: "huge.mp4",
            size: (96, 64),
            sps: &huge,
            pps: &pps,
            want: &["bad SPS", "131072x131072", "limit"],
        },
        Case {
            name: "mismatch.mp4",
            size: (160, 64),
            sps: &real_sps,
            pps: &real_pps,
            want: &["the SPS declares 96x64 pictures, the track says 160x64"],
        },
        Case {
            name: "pps.mp4",
            size: (96, 64),
            sps: &real_sps,
            pps: &real_sps,
            want: &["bad PPS", "NAL unit type 7"],
        },
    ];
    let isolated = SourceOptions {
        decode: referdino::camera::VideoDecode::Isolated(referdino::camera::IsolatedDecode::new(
            env!("CARGO_BIN_EXE_referdino"),
        )),
        ..SourceOptions::default()
    };
    for Case {
        name,
        size: (w, h),
        sps,
        pps,
        want,
    } in cases
    {
        let path = dir.path().join(name);
        mp4_with_parameter_sets(&path, w, h, sps, pps);
        for opts in [&SourceOptions::default(), &isolated] {
            let e = open_source(path.to_str().unwrap(), opts)
                .err()
                .unwrap_or_else(|| panic!("{name} opened"))
                .to_string();
            assert!(e.contains(name), "{e}");
            for w in want {
                assert!(e.contains(w), "{name}: {e}");
            }
        }
    }
}

/// Frames of `w × h` for a clip (the synthetic pattern).
fn clip_frames(w: u32, h: u32, n: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut v = vec![0u8; (w * h * 3) as usize];
            Synthetic::render(i, w, h, &mut v);
            v
        })
        .collect()
}

/// An NTSC clip (1001/30000 s per frame) is stamped at 29.97 fps, in this process and in the decoder
/// process: frame 9 at 300.3 ms. The container's integer rate (29) drifted 2 s a minute.
#[test]
fn ntsc_frames_are_stamped_from_their_durations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ntsc.mp4");
    write_mp4_timed(&path, 64, 48, (30000, 1001), &clip_frames(64, 48, 10)).unwrap();
    let isolated = SourceOptions {
        decode: referdino::camera::VideoDecode::Isolated(referdino::camera::IsolatedDecode::new(
            env!("CARGO_BIN_EXE_referdino"),
        )),
        ..SourceOptions::default()
    };
    for opts in [SourceOptions::default(), isolated] {
        let mut src = open_source(path.to_str().unwrap(), &opts).unwrap();
        assert!(src.describe().contains("@ 29.97 fps"), "{}", src.describe());
        let mut n = 0u64;
        while let Some(f) = src.next_frame().unwrap() {
            let want = f.id * 1001 * 1_000_000_000 / 30000;
            assert!(
                f.timestamp_ns.abs_diff(want) < 1000,
                "frame {}: {} ns, want {want}",
                f.id,
                f.timestamp_ns
            );
            n += 1;
        }
        assert_eq!(n, 10);
    }
}

/// An MP4 whose time-to-sample table (stts) covers fewer samples than the track has is refused at
/// open with the reason: the demuxer unwraps each sample's time, so the in-process decode panicked
/// (in the live loop's capture thread) two samples before the end.
#[test]
fn a_short_time_to_sample_table_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short-stts.mp4");
    write_mp4(&path, 64, 48, 10, &clip_frames(64, 48, 6)).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    // `stts`: version and flags, entry count 1, then (sample count, delta): 6 samples become 4.
    let at = bytes.windows(4).position(|w| w == b"stts").unwrap();
    assert_eq!(&bytes[at + 8..at + 16], &[0, 0, 0, 1, 0, 0, 0, 6]);
    bytes[at + 15] = 4;
    std::fs::write(&path, &bytes).unwrap();
    let e = open_source(path.to_str().unwrap(), &SourceOptions::default())
        .err()
        .expect("a short stts is refused")
        .to_string();
    assert!(
        e.contains("short-stts.mp4") && e.contains("(stts) covers 4 samples, the track has 6"),
        "{e}"
    );
}
