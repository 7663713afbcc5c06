//! H.264 decoding in a child process, so that the C/C++ decoder (openh264) cannot take the runtime
//! down on a hostile file.
//!
//! The parent ([`IsolatedVideo`]) runs `WORKER __referdino-decode-h264 FILE`; the worker
//! ([`run_worker_if_requested`], called first thing in the `referdino` binary's `main`) opens the file
//! with [`VideoFile`] (demuxing, validation, decoding) and writes records to its stdout:
//!
//! | tag | payload | meaning |
//! |---|---|---|
//! | `H` | width u32, height u32, frames u32, 0 u32, fps f64 (little endian) | opened; comes first |
//! | `F` | width × height × 3 bytes of RGB8 | the next frame |
//! | `E` | length u32 (≤ 4096), UTF-8 text | the decoder's own error; the worker exits |
//! | `Z` | none | end of stream |
//!
//! The parent reads each frame straight into one buffer allocated at open (nothing is allocated per
//! frame) and turns every way the worker can fail into an [`Error::Source`] naming the file and the
//! frame: killed by a signal (`SIGSEGV`, `SIGABRT`, ...), exited early, a record that breaks the
//! protocol (it is killed), or no output for [`IsolatedDecode::stall_timeout`] (a watchdog thread
//! kills it). The live loop then handles that error as any source failure (a `faulty:` wrapper
//! re-opens it; a plain file ends the stream with the error).
//!
//! For tests the worker honours [`FAULT_ENV`] (`segv@N`, `abort@N`, `exit@N`, `garbage@N`, `hang@N`:
//! after N frames, raise a real `SIGSEGV`, abort, exit with status 3, write garbage, or stop
//! writing), which is how the containment is shown (tests/camera/isolated.rs).

use std::ffi::OsStr;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::video::VideoFile;
use super::{Frame, FrameSource, IsolatedDecode, SourceOptions};
use crate::{Error, Result};

/// First argument that makes a binary act as the decoder worker.
pub const WORKER_ARG: &str = "__referdino-decode-h264";
/// Fault injection for tests: `KIND@N` with KIND one of `segv`, `abort`, `exit`, `garbage`, `hang`.
pub const FAULT_ENV: &str = "REFERDINO_DECODER_FAULT";
/// Longest error text the worker may send.
const MAX_ERROR_BYTES: u32 = 4096;
/// The shortest wait for the worker's first record (start-up and reading the MP4 header).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the decoder worker and exits if this process was started as one (`WORKER_ARG` as its first
/// argument); returns otherwise. Call it first thing in `main` of any binary named as
/// [`IsolatedDecode::worker`].
pub fn run_worker_if_requested() {
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() != Some(OsStr::new(WORKER_ARG)) {
        return;
    }
    let code = match args.next() {
        Some(path) => worker_main(Path::new(&path)),
        None => {
            eprintln!("{WORKER_ARG}: missing FILE argument");
            2
        }
    };
    std::process::exit(code);
}

/// The worker: decodes `path` and writes the records of the module docs to stdout. Returns the exit
/// status (0 at end of stream, 1 after an error record).
pub fn worker_main(path: &Path) -> i32 {
    // Stdout as a plain file: `std::io::Stdout` is line-buffered, which would split binary frames
    // at every newline byte.
    let out = match stdout_file() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{WORKER_ARG}: stdout: {e}");
            return 2;
        }
    };
    let mut out = BufWriter::with_capacity(1 << 16, out);
    let fault = match std::env::var(FAULT_ENV) {
        Ok(s) => match Fault::parse(&s) {
            Some(f) => Some(f),
            None => {
                let msg = format!("bad {FAULT_ENV}={s:?}: expected segv|abort|exit|garbage|hang@N");
                let _ = write_error(&mut out, &msg);
                return 1;
            }
        },
        Err(_) => None,
    };
    match worker(path, fault, &mut out) {
        Ok(()) => 0,
        Err(e) => {
            let msg = match e {
                Error::Source(s) => s,
                e => e.to_string(),
            };
            let _ = write_error(&mut out, &msg);
            1
        }
    }
}

fn stdout_file() -> std::io::Result<std::fs::File> {
    use std::os::fd::AsFd;
    Ok(std::fs::File::from(
        std::io::stdout().as_fd().try_clone_to_owned()?,
    ))
}

fn write_error(out: &mut impl Write, msg: &str) -> std::io::Result<()> {
    let mut end = msg.len().min(MAX_ERROR_BYTES as usize);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    out.write_all(b"E")?;
    out.write_all(&(end as u32).to_le_bytes())?;
    out.write_all(&msg.as_bytes()[..end])?;
    out.flush()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum FaultKind {
    Segv,
    Abort,
    Exit,
    Garbage,
    Hang,
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    kind: FaultKind,
    after: u64,
}

impl Fault {
    fn parse(s: &str) -> Option<Fault> {
        let (kind, n) = s.split_once('@')?;
        let kind = match kind {
            "segv" => FaultKind::Segv,
            "abort" => FaultKind::Abort,
            "exit" => FaultKind::Exit,
            "garbage" => FaultKind::Garbage,
            "hang" => FaultKind::Hang,
            _ => return None,
        };
        Some(Fault {
            kind,
            after: n.parse().ok()?,
        })
    }

    fn fire(self, out: &mut impl Write) -> Result<()> {
        let _ = out.flush();
        if matches!(self.kind, FaultKind::Segv | FaultKind::Abort) {
            // A deliberate crash leaves no core file (the kernel would write one into the
            // working directory where core dumps are enabled).
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: `none` is a valid rlimit that outlives the call; lowering a limit is always
            // allowed.
            unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) };
        }
        match self.kind {
            FaultKind::Segv => {
                // SAFETY: plain libc calls with valid arguments. The handler goes back to the default
                // first because Rust's own SIGSEGV handler (stack-overflow detection) would return from
                // a raised, non-faulting signal; the default action kills the process as a segfault in
                // the decoder would.
                unsafe {
                    libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                    libc::raise(libc::SIGSEGV);
                }
                std::process::abort();
            }
            FaultKind::Abort => std::process::abort(),
            FaultKind::Exit => std::process::exit(3),
            FaultKind::Garbage => {
                let _ = out.write_all(b"GARBAGE!");
                let _ = out.flush();
                std::process::exit(0);
            }
            FaultKind::Hang => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
        }
    }
}

fn worker(path: &Path, fault: Option<Fault>, out: &mut impl Write) -> Result<()> {
    let io = |e: std::io::Error| Error::io("decoder output pipe", e);
    let opts = SourceOptions {
        realtime: false,
        ..SourceOptions::default()
    };
    let mut v = VideoFile::open(path, &opts)?;
    let (w, h) = v.size();
    out.write_all(b"H").map_err(io)?;
    for x in [w, h, v.frame_count(), 0] {
        out.write_all(&x.to_le_bytes()).map_err(io)?;
    }
    out.write_all(&v.fps().to_le_bytes()).map_err(io)?;
    out.flush().map_err(io)?;
    let len = w as usize * h as usize * 3;
    let mut n = 0u64;
    loop {
        if let Some(f) = fault.filter(|f| f.after == n) {
            f.fire(out)?;
        }
        let Some(frame) = v.next_frame()? else { break };
        if frame.pixels.len() != len {
            return Err(Error::Source(format!(
                "{}: frame {n} has {} bytes, expected {len}",
                path.display(),
                frame.pixels.len()
            )));
        }
        out.write_all(b"F").map_err(io)?;
        out.write_all(frame.pixels).map_err(io)?;
        n += 1;
    }
    out.write_all(b"Z").map_err(io)?;
    out.flush().map_err(io)
}

/// What the watchdog thread shares with the reader.
struct Watch {
    child: Mutex<Child>,
    base: Instant,
    /// Nanoseconds since `base` + 1 when the reader started waiting; 0 while it is not waiting.
    waiting_since: AtomicU64,
    timeout_ns: AtomicU64,
    stalled: AtomicBool,
    done: AtomicBool,
}

impl Watch {
    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn arm(&self, timeout: Duration) {
        let ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        self.timeout_ns.store(ns, Ordering::Relaxed);
        self.waiting_since
            .store(self.base.elapsed().as_nanos() as u64 + 1, Ordering::Release);
    }

    fn disarm(&self) {
        self.waiting_since.store(0, Ordering::Release);
    }

    /// The watchdog: kills the child when the reader has waited longer than its timeout.
    fn run(&self, tick: Duration) {
        while !self.done.load(Ordering::Acquire) {
            let since = self.waiting_since.load(Ordering::Acquire);
            if since != 0 {
                let waited = (self.base.elapsed().as_nanos() as u64 + 1).saturating_sub(since);
                if waited > self.timeout_ns.load(Ordering::Relaxed) {
                    self.stalled.store(true, Ordering::Release);
                    let _ = self.child().kill();
                    return;
                }
            }
            std::thread::park_timeout(tick);
        }
    }
}

/// Frames of an MP4/H.264 file decoded by a worker process (see the module docs).
pub struct IsolatedVideo {
    path: PathBuf,
    worker: PathBuf,
    watch: Arc<Watch>,
    watchdog: Option<JoinHandle<()>>,
    out: BufReader<ChildStdout>,
    stall_timeout: Duration,
    width: u32,
    height: u32,
    frames: u32,
    fps: f64,
    realtime: bool,
    start: Instant,
    next_id: u64,
    buf: Vec<u8>,
    /// `Some` once the worker ended or failed: the error to repeat, or `None` inside for the end.
    finished: Option<Option<String>>,
}

impl IsolatedVideo {
    /// Starts the worker on `path` and reads its header.
    pub fn open(path: &Path, opts: &SourceOptions, cfg: &IsolatedDecode) -> Result<Self> {
        let mut cmd = Command::new(&cfg.worker);
        cmd.arg(WORKER_ARG)
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group: a terminal's Ctrl-C goes to this process, which stops and then
            // ends the worker itself, instead of killing the worker first (a clean stop read as a
            // decoder killed by SIGINT).
            .process_group(0);
        if let Some(f) = &cfg.fault {
            cmd.env(FAULT_ENV, f);
        }
        let mut child = cmd.spawn().map_err(|e| {
            Error::Source(format!(
                "{}: cannot start the H.264 decoder process {}: {e}",
                path.display(),
                cfg.worker.display()
            ))
        })?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Source(format!(
                "{}: the H.264 decoder process has no output pipe",
                path.display()
            )));
        };
        let watch = Arc::new(Watch {
            child: Mutex::new(child),
            base: Instant::now(),
            waiting_since: AtomicU64::new(0),
            timeout_ns: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            done: AtomicBool::new(false),
        });
        let tick =
            (cfg.stall_timeout / 4).clamp(Duration::from_millis(10), Duration::from_millis(200));
        let w = watch.clone();
        let watchdog = match std::thread::Builder::new()
            .name("h264-watchdog".into())
            .spawn(move || w.run(tick))
        {
            Ok(h) => h,
            Err(e) => {
                let mut c = watch.child();
                let _ = c.kill();
                let _ = c.wait();
                return Err(Error::Source(format!(
                    "{}: watchdog thread of the H.264 decoder process: {e}",
                    path.display()
                )));
            }
        };
        let mut v = IsolatedVideo {
            path: path.to_path_buf(),
            worker: cfg.worker.clone(),
            watch,
            watchdog: Some(watchdog),
            out: BufReader::with_capacity(1 << 16, stdout),
            stall_timeout: cfg.stall_timeout,
            width: 0,
            height: 0,
            frames: 0,
            fps: 0.0,
            realtime: opts.realtime,
            start: Instant::now(),
            next_id: 0,
            buf: Vec::new(),
            finished: None,
        };
        let mut tag = [0u8; 1];
        if let Err(e) = v.read_watched(&mut tag, OPEN_TIMEOUT.max(cfg.stall_timeout)) {
            return Err(v.failed(&e, "while opening the file"));
        }
        let mut header = [0u8; 24];
        match tag[0] {
            b'H' => {
                if let Err(e) = v.read_watched(&mut header, cfg.stall_timeout) {
                    return Err(v.failed(&e, "while opening the file"));
                }
            }
            b'E' => {
                let mut len = [0u8; 4];
                if let Err(e) = v.read_watched(&mut len, cfg.stall_timeout) {
                    return Err(v.failed(&e, "while sending its error"));
                }
                return Err(v.error_record(u32::from_le_bytes(len)));
            }
            t => return Err(v.protocol(format!("a record tagged 0x{t:02x} instead of its header"))),
        }
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (width, height, frames) = (word(0), word(4), word(8));
        let mut fps_bytes = [0u8; 8];
        fps_bytes.copy_from_slice(&header[16..24]);
        let fps = f64::from_le_bytes(fps_bytes);
        let pixels = width as u64 * height as u64;
        if width == 0 || height == 0 || pixels > crate::limits::MAX_IMAGE_PIXELS {
            return Err(v.protocol(format!("a header with frame size {width}x{height}")));
        }
        v.width = width;
        v.height = height;
        v.frames = frames;
        v.fps = if fps.is_finite() && fps > 0.0 {
            fps
        } else {
            opts.fps.max(1) as f64
        };
        v.buf = vec![0; pixels as usize * 3];
        Ok(v)
    }

    /// Frame count declared by the container.
    pub fn frame_count(&self) -> u32 {
        self.frames
    }

    /// Frame rate declared by the container.
    pub fn fps(&self) -> f64 {
        self.fps
    }

    /// The worker's process id.
    pub fn worker_pid(&self) -> u32 {
        self.watch.child().id()
    }

    /// Reads exactly `buf.len()` bytes while the watchdog allows `timeout`.
    fn read_watched(&mut self, buf: &mut [u8], timeout: Duration) -> std::io::Result<()> {
        read_watched(&self.watch, &mut self.out, buf, timeout)
    }

    fn where_(&self) -> String {
        match self.next_id {
            0 => "before its first frame".into(),
            1 => "after 1 frame".into(),
            n => format!("after {n} frames"),
        }
    }

    /// The error for a worker whose output failed (`e`): how it ended, and where.
    fn failed(&mut self, e: &std::io::Error, doing: &str) -> Error {
        let at = if self.width == 0 {
            doing.to_string()
        } else {
            self.where_()
        };
        let msg = if self.watch.stalled.load(Ordering::Acquire) {
            let _ = self.watch.child().wait();
            format!(
                "{}: H.264 decoder process stalled (no output for {:.1} s) {at}; killed it",
                self.path.display(),
                self.stall_timeout.as_secs_f64()
            )
        } else {
            let status = self.reap(Duration::from_secs(2));
            let hint = if self.width == 0 && matches!(status, Some(s) if s.code().is_some()) {
                format!(
                    " (is {} a referdino binary that runs the worker for {WORKER_ARG}?)",
                    self.worker.display()
                )
            } else {
                String::new()
            };
            format!(
                "{}: H.264 decoder process {} {at} ({}){hint}",
                self.path.display(),
                describe(status),
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    "its output ended early".to_string()
                } else {
                    format!("reading its output: {e}")
                }
            )
        };
        self.finish(Some(msg.clone()));
        Error::Source(msg)
    }

    /// The error for a record that breaks the protocol: the worker is killed.
    fn protocol(&mut self, what: String) -> Error {
        {
            let mut c = self.watch.child();
            let _ = c.kill();
            let _ = c.wait();
        }
        let msg = format!(
            "{}: H.264 decoder process sent {what} {}; killed it",
            self.path.display(),
            self.where_()
        );
        self.finish(Some(msg.clone()));
        Error::Source(msg)
    }

    /// The worker's own error record of `len` bytes of text (the worker exits after it).
    fn error_record(&mut self, len: u32) -> Error {
        if len > MAX_ERROR_BYTES {
            return self.protocol(format!("an error record of {len} bytes"));
        }
        let mut text = vec![0u8; len as usize];
        if let Err(e) = self.read_watched(&mut text, self.stall_timeout) {
            return self.failed(&e, "while sending its error");
        }
        let _ = self.reap(Duration::from_secs(2));
        let msg = String::from_utf8_lossy(&text).into_owned();
        self.finish(Some(msg.clone()));
        Error::Source(msg)
    }

    /// Waits up to `grace` for the worker to exit, then kills it; its exit status when known.
    fn reap(&self, grace: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + grace;
        let mut c = self.watch.child();
        loop {
            match c.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => {
                    let _ = c.kill();
                    return c.wait().ok();
                }
                Err(_) => return None,
            }
        }
    }

    fn finish(&mut self, error: Option<String>) {
        self.finished = Some(error);
        self.watch.done.store(true, Ordering::Release);
        if let Some(h) = self.watchdog.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }

    fn frame(&mut self) -> Frame<'_> {
        let id = self.next_id;
        self.next_id += 1;
        super::file_frame(
            id,
            self.start,
            self.fps,
            self.realtime,
            (self.width, self.height),
            &self.buf,
        )
    }
}

fn read_watched(
    watch: &Watch,
    out: &mut BufReader<ChildStdout>,
    buf: &mut [u8],
    timeout: Duration,
) -> std::io::Result<()> {
    watch.arm(timeout);
    let r = out.read_exact(buf);
    watch.disarm();
    r
}

/// "killed by signal 11 (SIGSEGV)", "exited with status 3", ...
fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    let Some(s) = status else {
        return "ended (exit status unknown)".into();
    };
    if let Some(sig) = s.signal() {
        let name = match sig {
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGABRT => " (SIGABRT)",
            libc::SIGBUS => " (SIGBUS)",
            libc::SIGILL => " (SIGILL)",
            libc::SIGFPE => " (SIGFPE)",
            libc::SIGKILL => " (SIGKILL)",
            libc::SIGTERM => " (SIGTERM)",
            _ => "",
        };
        let core = if s.core_dumped() { ", core dumped" } else { "" };
        return format!("killed by signal {sig}{name}{core}");
    }
    match s.code() {
        Some(0) => "exited (status 0) without ending its stream".into(),
        Some(c) => format!("exited with status {c}"),
        None => format!("ended ({s})"),
    }
}

impl FrameSource for IsolatedVideo {
    fn file_frames(&self) -> Option<u64> {
        Some(self.frame_count() as u64)
    }

    fn describe(&self) -> String {
        format!(
            "video {} (H.264 {}x{}, {} frames @ {:.2} fps, decoded in process {})",
            self.path.display(),
            self.width,
            self.height,
            self.frames,
            self.fps,
            self.watch.child().id()
        )
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        match &self.finished {
            Some(None) => return Ok(None),
            Some(Some(msg)) => {
                return Err(Error::Source(format!(
                    "{msg} (the decoder process is gone)"
                )));
            }
            None => {}
        }
        let mut tag = [0u8; 1];
        if let Err(e) = self.read_watched(&mut tag, self.stall_timeout) {
            return Err(self.failed(&e, "while decoding"));
        }
        match tag[0] {
            b'F' => {
                let r = read_watched(
                    &self.watch,
                    &mut self.out,
                    &mut self.buf,
                    self.stall_timeout,
                );
                if let Err(e) = r {
                    return Err(self.failed(&e, "while decoding"));
                }
                Ok(Some(self.frame()))
            }
            b'Z' => {
                let _ = self.reap(Duration::from_secs(2));
                self.finish(None);
                Ok(None)
            }
            b'E' => {
                let mut len = [0u8; 4];
                if let Err(e) = self.read_watched(&mut len, self.stall_timeout) {
                    return Err(self.failed(&e, "while sending its error"));
                }
                Err(self.error_record(u32::from_le_bytes(len)))
            }
            t => Err(self.protocol(format!("a record tagged 0x{t:02x}"))),
        }
    }
}

impl Drop for IsolatedVideo {
    fn drop(&mut self) {
        {
            let mut c = self.watch.child();
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        self.finish(self.finished.clone().unwrap_or(None));
    }
}
