//! Stress test of the shared-memory mask ring: one writer (this process) and three reader PROCESSES
//! (this test binary re-run with an env var) over 100 000 frames. Every slot content is a function of
//! its commit number, so any torn copy the readers accept is detected.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use referdino::output::ring::{MaskRing, MaskRingReader, ReadOutcome, RingGeometry, TrackEntry};

const FRAMES: u64 = 100_000;
const READERS: usize = 3;
const ENV_RING: &str = "REFERDINO_TEST_RING";
const ENV_READY: &str = "REFERDINO_TEST_READY";
const GEOM: RingGeometry = RingGeometry {
    width: 64,
    height: 24,
    slots: 4,
};

fn mask_byte(n: u64, i: usize) -> u8 {
    (n.wrapping_mul(31).wrapping_add(i as u64 * 7) ^ (n >> 7)) as u8
}

fn track(n: u64, k: usize) -> TrackEntry {
    let f = (n % 100_000) as f32;
    TrackEntry {
        id: (n as u32).wrapping_add(k as u32),
        object: (n as u16).wrapping_mul(3).wrapping_add(k as u16),
        score: f + k as f32,
        bbox: [f, f + 1.0, f + 2.0, f + k as f32],
    }
}

fn n_tracks(n: u64) -> usize {
    (n % 17) as usize
}

fn write_frame(ring: &mut MaskRing, n: u64) {
    let mut w = ring.begin_write();
    assert_eq!(w.commit_number(), n);
    w.frame_id = n;
    w.timestamp_ns = n * 3;
    for k in 0..n_tracks(n) {
        w.tracks.push(track(n, k)).unwrap();
    }
    for (i, b) in w.mask().iter_mut().enumerate() {
        *b = mask_byte(n, i);
    }
    w.commit();
}

#[derive(Default, Debug)]
struct Counts {
    accepted: u64,
    torn: u64,
    overwritten: u64,
    not_yet: u64,
    bad: u64,
}

/// Child-process entry: reads until the writer is done, prints the counts.
#[test]
#[ignore = "helper run as a child process by ring_stress_concurrent_reader_processes"]
fn ring_reader_process() {
    let Ok(path) = std::env::var(ENV_RING) else {
        return;
    };
    let reader = MaskRingReader::open(&path).expect("open ring");
    assert_eq!(reader.geometry(), GEOM);
    std::fs::write(std::env::var(ENV_READY).unwrap(), b"ok").unwrap();
    let mut copy = reader.new_copy();
    let mut c = Counts::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut k = 0u64;
    loop {
        let count = reader.write_count();
        if count >= FRAMES || Instant::now() > deadline {
            break;
        }
        if count == 0 {
            std::hint::spin_loop();
            continue;
        }
        // Alternate between the newest slot and the oldest (the next to be overwritten), which is
        // where tearing happens.
        k += 1;
        let n = if k.is_multiple_of(2) {
            count - 1
        } else {
            count.saturating_sub(GEOM.slots as u64)
        };
        match reader.read(n, &mut copy) {
            ReadOutcome::Ok => {
                c.accepted += 1;
                let good = copy.commit == n
                    && copy.frame_id == n
                    && copy.timestamp_ns == n * 3
                    && copy.tracks.len() == n_tracks(n)
                    && copy
                        .tracks
                        .iter()
                        .enumerate()
                        .all(|(k, t)| *t == track(n, k))
                    && copy
                        .mask
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| b == mask_byte(n, i));
                if !good {
                    c.bad += 1;
                }
            }
            ReadOutcome::Torn => c.torn += 1,
            ReadOutcome::Overwritten => c.overwritten += 1,
            ReadOutcome::NotYet => c.not_yet += 1,
        }
    }
    println!(
        "RESULT accepted={} torn={} overwritten={} not_yet={} bad={}",
        c.accepted, c.torn, c.overwritten, c.not_yet, c.bad
    );
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

fn wait_for(paths: &[PathBuf], limit: Duration) {
    let t = Instant::now();
    while !paths.iter().all(|p| Path::new(p).exists()) {
        assert!(t.elapsed() < limit, "reader processes did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ring_stress_concurrent_reader_processes() {
    let dir = tempfile::tempdir().unwrap();
    let ring_path = dir.path().join("ring");
    let ring_name = ring_path.to_str().unwrap().to_string();
    let mut ring = MaskRing::create(&ring_name, GEOM).unwrap();
    let exe = std::env::current_exe().unwrap();
    // The harness names tests by module path without the crate's name.
    let reader_test = concat!(module_path!(), "::ring_reader_process")
        .split_once("::")
        .unwrap()
        .1;
    let mut children = Vec::new();
    let mut ready = Vec::new();
    for r in 0..READERS {
        let marker = dir.path().join(format!("ready{r}"));
        ready.push(marker.clone());
        let child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                reader_test,
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV_RING, &ring_name)
            .env(ENV_READY, &marker)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        children.push(child);
    }
    wait_for(&ready, Duration::from_secs(30));
    for n in 0..FRAMES {
        write_frame(&mut ring, n);
        // Pause now and then so that, even on a loaded machine, the readers get scheduled while the
        // writer is running (about 2 s of pauses in total).
        if n % 1000 == 999 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut total = Counts::default();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "reader failed: {:?}", out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        // libtest may print "test … ..." on the same line before the child's output.
        let line = text
            .lines()
            .find_map(|l| l.find("RESULT").map(|i| &l[i..]))
            .unwrap_or_else(|| panic!("reader printed no RESULT: {text}"));
        eprintln!("{line}");
        let acc = field(line, "accepted");
        assert_eq!(
            field(line, "bad"),
            0,
            "a reader accepted a torn or wrong slot: {line}"
        );
        assert!(
            acc > 100,
            "reader accepted too few slots to mean anything: {line}"
        );
        total.accepted += acc;
        total.torn += field(line, "torn");
        total.overwritten += field(line, "overwritten");
    }
    eprintln!(
        "total over {READERS} readers: accepted {} torn-detected {} overwritten {}",
        total.accepted, total.torn, total.overwritten
    );
    // The writer was never blocked: it committed every frame.
    assert_eq!(ring.committed(), FRAMES);
}

#[test]
fn python_reader_example_reads_the_ring() {
    let python_ok = Command::new("python3")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !python_ok {
        eprintln!("SKIPPED: python3 not found");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = dir.path().join("ring").to_str().unwrap().to_string();
    let mut ring = MaskRing::create(
        &name,
        RingGeometry {
            width: 8,
            height: 4,
            slots: 2,
        },
    )
    .unwrap();
    for n in 0..3u64 {
        let mut w = ring.begin_write();
        w.frame_id = 10 + n;
        w.timestamp_ns = 1_500_000_000;
        w.tracks
            .push(TrackEntry {
                id: 7,
                object: 2,
                score: 0.75,
                bbox: [1.0, 1.0, 3.0, 2.0],
            })
            .unwrap();
        w.tracks
            .push(TrackEntry {
                id: 9,
                object: 5,
                score: 0.25,
                bbox: [0.0, 0.0, 1.0, 1.0],
            })
            .unwrap();
        let m = w.mask();
        m.fill(0);
        m[..5].fill(1);
        m[5..7].fill(2);
        w.commit();
    }
    let out = Command::new("python3")
        .args([
            "examples/ring_reader.py",
            &name,
            "--frames",
            "1",
            "--timeout",
            "5",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .contains("commit 2 frame 12 t=1.500s tracks [2#7:0.75 5#9:0.25] pixels {1: 5, 2: 2}"),
        "{stdout}"
    );

    // The reader watches the writer between frames. `run` starts the example on `name`.
    let run = |extra: &[&str]| {
        Command::new("python3")
            .args(["examples/ring_reader.py", &name])
            .args(extra)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let geom = ring.geometry();
    // A live writer that stops beating (hung, or killed without closing): exit 2.
    let o = run(&["--frames", "5", "--timeout", "20", "--max-silence", "0.3"])
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("no heartbeat"), "{err}");
    // A restarted writer re-creates the ring at the same path: the reader re-opens it and reads on.
    // The ring is replaced only once the reader has read the first ring's newest frame.
    let mut reader = run(&["--frames", "2", "--timeout", "20", "--max-silence", "20"]);
    let mut first_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(reader.stdout.as_mut().unwrap()),
        &mut first_line,
    )
    .unwrap();
    assert!(first_line.contains("frame 12"), "{first_line}");
    std::fs::remove_file(&name).unwrap();
    let mut second = MaskRing::create(&name, geom).unwrap();
    let mut w = second.begin_write();
    w.frame_id = 99;
    w.commit();
    let o = reader.wait_with_output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{first_line}{out}\n{err}");
    assert!(
        err.contains("re-opened") && out.contains("frame 99"),
        "{out}\n{err}"
    );
    // A writer that ends (kept ring): the reader reads its last frame, then stops with exit 0.
    drop(ring);
    drop(second);
    let o = run(&["--frames", "5", "--timeout", "20"])
        .wait_with_output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        err.contains("closed") && out.contains("frame 99"),
        "{out}\n{err}"
    );
}
