//! A fuzz smoke that fits in `cargo test`: every fuzz target body (`referdino::fuzzing`, the same code
//! the libFuzzer targets in fuzz/ run) gets its committed seeds (fuzz/seeds/TARGET), any kept
//! reproducers (fuzz/regressions/TARGET, and fuzz/artifacts/TARGET from a local libFuzzer run), then
//! a fixed-seed mutation loop over the seeds: bit flips, byte sets, interesting integers, inserts,
//! deletes, duplicated ranges, splices and truncations. A panic, or an input that takes more than
//! 1 s of CPU time, fails the test; the input is saved and its path printed.
//!
//! Bounds (environment): `REFERDINO_FUZZ_SMOKE_SECS` (default 5 per target), `..._ITERS` (default
//! 1 000 000 per target; whichever ends first), `..._SEED` (default 1). No coverage feedback: this
//! catches shallow regressions on every CI run; the coverage-guided runs are fuzz/smoke.sh and
//! fuzz/README.md.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest CPU time one input may take (as libFuzzer's `-timeout=1` in fuzz/smoke.sh).
const INPUT_CPU_LIMIT: Duration = Duration::from_secs(1);
/// Wall time without any finished input before the test reports a hang (the input is still running).
const HANG_WALL: Duration = Duration::from_secs(30);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// splitmix64: small, seedable, and the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const INTERESTING: [u64; 16] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// Applies one random mutation to `data` (growing it to at most `max_len`).
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>], max_len: usize) {
    let len = data.len();
    match rng.below(10) {
        // Bit flip.
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        // Random byte.
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.next() as u8;
        }
        // Interesting integer, 1/2/4/8 bytes, either byte order.
        2 if len > 0 => {
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let width = 1 << rng.below(4);
            let bytes = if rng.below(2) == 0 {
                v.to_le_bytes()
            } else {
                (v << (64 - 8 * width as u32).min(63)).to_be_bytes()
            };
            let i = rng.below(len);
            let n = width.min(len - i);
            data[i..i + n].copy_from_slice(&bytes[..n]);
        }
        // Small arithmetic on a byte.
        3 if len > 0 => {
            let i = rng.below(len);
            let d = rng.below(35) as u8;
            data[i] = if rng.below(2) == 0 {
                data[i].wrapping_add(d)
            } else {
                data[i].wrapping_sub(d)
            };
        }
        // Insert random bytes or a run of one byte.
        4 => {
            let n = 1 + rng.below(16);
            let at = rng.below(len + 1);
            let fill = rng.next() as u8;
            let run = rng.below(2) == 0;
            let bytes: Vec<u8> = (0..n)
                .map(|_| if run { fill } else { rng.next() as u8 })
                .collect();
            data.splice(at..at, bytes);
        }
        // Delete a range.
        5 if len > 1 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            data.drain(at..at + n);
        }
        // Duplicate a range somewhere else.
        6 if len > 1 => {
            let from = rng.below(len);
            let n = 1 + rng.below((len - from).min(64));
            let chunk = data[from..from + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, chunk);
        }
        // Splice: our prefix, another seed's suffix.
        7 => {
            let other = &corpus[rng.below(corpus.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        // Insert a chunk of another seed.
        8 => {
            let other = &corpus[rng.below(corpus.len())];
            if !other.is_empty() {
                let from = rng.below(other.len());
                let n = 1 + rng.below((other.len() - from).min(256));
                let at = rng.below(len + 1);
                data.splice(at..at, other[from..from + n].iter().copied());
            }
        }
        // Truncate.
        _ => {
            let cut = rng.below(len + 1);
            data.truncate(cut);
        }
    }
    data.truncate(max_len);
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn files_in(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Saves a failing input where the test can point at it.
fn save(target: &str, what: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-smoke");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{target}-{what}"));
    std::fs::write(&path, input).unwrap();
    path
}

/// What the worker thread reports to the watching test thread.
#[derive(Default)]
struct Progress {
    done: AtomicU64,
    finished: AtomicBool,
    current: Mutex<Vec<u8>>,
}

fn run_one(target: &str, body: fn(&[u8]), what: &str, input: &[u8]) {
    let t0 = thread_cpu();
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| body(input)));
    let cpu = thread_cpu().saturating_sub(t0);
    if r.is_err() {
        let p = save(target, what, input);
        panic!(
            "{target}: {what} panicked ({} bytes, saved as {}; replay it with `cargo fuzz run -s none -O {target} {}` in fuzz/)",
            input.len(),
            p.display(),
            p.display()
        );
    }
    if cpu > INPUT_CPU_LIMIT {
        let p = save(target, what, input);
        panic!(
            "{target}: {what} took {cpu:?} of CPU time (limit {INPUT_CPU_LIMIT:?}; {} bytes, saved as {})",
            input.len(),
            p.display()
        );
    }
}

fn smoke(target: &str) {
    let body = referdino::fuzzing::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .unwrap_or_else(|| panic!("no fuzz target {target}"))
        .1;
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let seeds = files_in(&fuzz.join("seeds").join(target));
    assert!(!seeds.is_empty(), "fuzz/seeds/{target} is empty");
    let kept: Vec<_> = files_in(&fuzz.join("regressions").join(target))
        .into_iter()
        .chain(files_in(&fuzz.join("artifacts").join(target)))
        .collect();
    let secs: f64 = env_or("REFERDINO_FUZZ_SMOKE_SECS", 5.0);
    let iters: u64 = env_or("REFERDINO_FUZZ_SMOKE_ITERS", 1_000_000);
    let seed: u64 = env_or("REFERDINO_FUZZ_SMOKE_SEED", 1);

    let progress = Arc::new(Progress::default());
    let p = progress.clone();
    let name = target.to_string();
    let worker = std::thread::Builder::new()
        .name(format!("fuzz-smoke-{target}"))
        .spawn(move || {
            let target = name.as_str();
            for (path, bytes) in seeds.iter().chain(&kept) {
                let what = path.file_name().unwrap().to_string_lossy().into_owned();
                p.current.lock().unwrap().clone_from(bytes);
                run_one(target, body, &what, bytes);
                p.done.fetch_add(1, Ordering::Relaxed);
            }
            let corpus: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
            let max_len = corpus.iter().map(Vec::len).max().unwrap_or(0).max(4096) * 2;
            // The target's name in the seed, so each target walks its own sequence.
            let mut rng = Rng(target
                .bytes()
                .fold(seed, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)));
            let start = Instant::now();
            let mut input = Vec::new();
            let mut n = 0u64;
            while n < iters && start.elapsed().as_secs_f64() < secs {
                input.clear();
                input.extend_from_slice(&corpus[rng.below(corpus.len())]);
                for _ in 0..1 + rng.below(8) {
                    mutate(&mut rng, &mut input, &corpus, max_len);
                }
                p.current.lock().unwrap().clone_from(&input);
                run_one(target, body, &format!("mutant-{seed}-{n}"), &input);
                p.done.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            p.finished.store(true, Ordering::Release);
            (n, start.elapsed())
        })
        .unwrap();

    // Watch for an input that never returns (the worker cannot be stopped, but the test can fail).
    let mut last = (0, Instant::now());
    while !progress.finished.load(Ordering::Acquire) && !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        let done = progress.done.load(Ordering::Relaxed);
        if done != last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > HANG_WALL {
            let input = progress.current.lock().unwrap().clone();
            let p = save(target, "hang", &input);
            panic!(
                "{target}: an input has run for over {HANG_WALL:?} ({} bytes, saved as {})",
                input.len(),
                p.display()
            );
        }
    }
    let (mutants, took) = match worker.join() {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e),
    };
    let replayed = progress.done.load(Ordering::Relaxed) - mutants;
    eprintln!(
        "fuzz smoke {target}: {replayed} seeds/reproducers + {mutants} mutants in {:.1} s ({:.0}/s)",
        took.as_secs_f64(),
        mutants as f64 / took.as_secs_f64().max(1e-9)
    );
    assert!(mutants > 0, "{target}: no mutant ran");
}

macro_rules! smoke_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                smoke(stringify!($name));
            }
        )*

        /// Every target in `referdino::fuzzing::TARGETS` has a test here and a libFuzzer target.
        #[test]
        fn every_target_is_smoked() {
            let here = [$(stringify!($name)),*];
            let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
            for (t, _) in referdino::fuzzing::TARGETS {
                assert!(here.contains(&t), "{t} has no smoke test");
                assert!(fuzz.join(format!("{t}.rs")).is_file(), "{t} has no fuzz/fuzz_targets/{t}.rs");
            }
            assert_eq!(here.len(), referdino::fuzzing::TARGETS.len());
        }
    };
}

mod targets {
    use super::*;
    smoke_tests!(
        pth,
        pickle,
        safetensors,
        model_config,
        engine_dir,
        profiles,
        command_line,
        image_frame,
        source_spec,
        ring_reader,
        mask_rle,
        int8_products,
    );
}

/// The mutator itself: it changes inputs, and the same seed gives the same sequence.
#[test]
fn mutator_is_deterministic_and_mutates() {
    let corpus = vec![b"hello world".to_vec(), vec![0u8; 32]];
    let run = || {
        let mut rng = Rng(7);
        (0..200)
            .map(|_| {
                let mut d = corpus[0].clone();
                mutate(&mut rng, &mut d, &corpus, 64);
                d
            })
            .collect::<Vec<_>>()
    };
    let a = run();
    assert_eq!(a, run());
    let changed = a.iter().filter(|d| **d != corpus[0]).count();
    assert!(
        changed > 150,
        "only {changed} of 200 mutations changed the input"
    );
    assert!(a.iter().all(|d| d.len() <= 64));
}
