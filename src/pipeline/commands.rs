//! The runtime command protocol: one JSON object per line in, one JSON reply line out.
//!
//! Commands arrive on stdin and/or a Unix socket. Reader threads parse and validate each line; valid
//! commands and the refusals of malformed lines go through one bounded channel to the streaming
//! session, which applies the commands between frames with a [`Controller`] and answers every line
//! in the order it arrived (a malformed one with `{"ok":false,"error":"..."}`; reading goes on),
//! where it came from (stdout for stdin, the same connection for the socket). A socket client that
//! sends no complete line for [`SOCKET_IDLE`] is told so and disconnected.
//!
//! # Requests
//!
//! ```text
//! {"prompt": "the dog on the left"}            replace every object by this one (same as {"cmd":"prompt","prompt":...})
//! {"prompt": "the dog; the ball"}              ... or by several: `;` separates prompts (see split_prompts)
//! {"cmd": "add", "prompt": "the cup"}          add an object; its id is assigned (one past the highest given out) and replied
//! {"cmd": "add", "prompt": "the cup", "object": 7}   add an object with the caller's id (0..=65535)
//! {"cmd": "replace", "object": 7, "prompt": "the blue cup"}   new prompt for object 7 (its track restarts)
//! {"cmd": "remove", "object": 7}               drop object 7; the others keep their ids and tracks
//! {"cmd": "list"}                              the objects (ids and prompts) in `settings.objects`
//! {"cmd": "clear"}                             drop every object; no masks until a new one
//! {"cmd": "mode", "mode": "single"}            best track only
//! {"cmd": "mode", "mode": "multi", "threshold": 0.2}   every track whose running-mean score > threshold
//! {"cmd": "pause"} / {"cmd": "resume"}         stop / restart inference (capture keeps draining the camera)
//! {"cmd": "status"}                            settings and runtime counters
//! ```
//! Any request may carry `"id"` (a number or a string of ≤ 64 bytes); the reply echoes it.
//! Any request may carry `"stream": N` to address the N-th source of a run with several (default 0),
//! or `"stream": "all"` to apply it to every open stream or to none: each is checked first, and a
//! refusal by one (naming it) changes no stream; otherwise the reply is the first stream's. An `add`
//! to all gives its objects the same ids on every stream. A camera that joins later starts with
//! what the commands every open stream took left them: objects with their ids, the next id, mode,
//! pause ([`crate::pipeline::live::template::JoinTemplate`]).
//! Unknown fields are errors. Blank lines are ignored. Each stream holds at most its configured
//! number of objects (default 8); an unknown id, an id already in use, or one object too many is
//! answered with an error and changes nothing.
//!
//! # Replies
//!
//! ```text
//! {"ok":true,"cmd":"prompt","settings":{"prompt":"the dog on the left","mode":"single","threshold":0.2,"paused":false,"prompt_version":3}}
//! {"ok":true,"cmd":"status","settings":{...},"stats":{"frames_in":120,"frames_processed":97,"frames_dropped":23,"fps":14.8,"latency_ms":{"frame":41.0,...},"source":"..."}}
//! {"ok":false,"error":"prompt is empty"}
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::access::Access;
use crate::{Error, Result};

/// Object-selection mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SelectMode {
    /// Report the single best track.
    #[default]
    Single,
    /// Report every track whose running-mean score exceeds the threshold.
    Multi,
}

/// Identifier of a referred object on a stream: chosen by the caller or assigned (one never given
/// out, searched from one past the highest given out so far, so a removed object's id is not handed
/// to the next one until the id space is used up), and kept for as long as the object exists,
/// whatever is added or removed beside it.
pub type ObjectId = u16;

/// The prompts of one prompt string: `;` separates several referred objects (`"the dog; the red
/// ball"` is two), each trimmed, empty parts skipped. This is the one place the separator is defined:
/// the `--prompt` flag, the `prompt` and `add` commands and embedders (the ROS 2 node) all use it.
pub fn split_prompts(s: &str) -> impl Iterator<Item = &str> {
    s.split(';').map(str::trim).filter(|p| !p.is_empty())
}

/// A command, as it appears on the wire (tag `cmd`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Set the referring expression.
    Prompt {
        /// The expression.
        prompt: String,
    },
    /// Remove every object.
    Clear,
    /// Add an object (or several, `;`-separated, with assigned ids).
    Add {
        /// Its prompt.
        prompt: String,
        /// The caller's id for it; assigned when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object: Option<ObjectId>,
    },
    /// Remove one object.
    Remove {
        /// Its id.
        object: ObjectId,
    },
    /// Give one object a new prompt (its track starts afresh; its id stays).
    Replace {
        /// Its id.
        object: ObjectId,
        /// The new prompt.
        prompt: String,
    },
    /// Report the objects.
    List,
    /// Change the selection mode (and optionally the threshold).
    Mode {
        /// Single or multi.
        mode: SelectMode,
        /// Score threshold for multi mode, in `[0, 1]`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        threshold: Option<f32>,
    },
    /// Pause inference.
    Pause,
    /// Resume inference.
    Resume,
    /// Report settings and counters.
    Status,
}

impl Command {
    /// The wire name of the command.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Prompt { .. } => "prompt",
            Command::Clear => "clear",
            Command::Add { .. } => "add",
            Command::Remove { .. } => "remove",
            Command::Replace { .. } => "replace",
            Command::List => "list",
            Command::Mode { .. } => "mode",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Status => "status",
        }
    }

    fn allowed_fields(cmd: &str) -> &'static [&'static str] {
        match cmd {
            "prompt" => &["prompt"],
            "add" => &["prompt", "object"],
            "remove" => &["object"],
            "replace" => &["object", "prompt"],
            "mode" => &["mode", "threshold"],
            _ => &[],
        }
    }
}

/// Which streams a request addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// The stream of this index.
    One(usize),
    /// Every open stream, in turn.
    All,
}

/// A parsed request: the command and the optional client id to echo.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Client-chosen id (number or short string), echoed in the reply.
    pub id: Option<Value>,
    /// The streams it addresses (runs with several sources); `None`: stream 0.
    pub stream: Option<Streams>,
    /// The command.
    pub command: Command,
}

/// Protocol limits (defaults from [`crate::limits`]).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest accepted line in bytes (longer lines are discarded while read, never buffered).
    pub max_line_bytes: usize,
    /// Longest accepted prompt in bytes.
    pub max_prompt_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: crate::limits::MAX_LINE_BYTES,
            max_prompt_bytes: crate::limits::MAX_PROMPT_BYTES,
        }
    }
}

/// A rejected line: the message and the id, when one could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Echoed id, if the line had a usable one.
    pub id: Option<Value>,
    /// What was wrong.
    pub error: String,
}

fn reject(id: &Option<Value>, error: impl Into<String>) -> Rejected {
    Rejected {
        id: id.clone(),
        error: error.into(),
    }
}

/// Validates a prompt string the way every command path does (the protocol here, the ROS 2 node):
/// at least one prompt once split at `;` ([`split_prompts`]), at most `limits.max_prompt_bytes`
/// after trimming, no control characters, a letter or digit in every prompt. Returns the trimmed
/// string (still `;`-separated).
pub fn check_prompt<'a>(prompt: &'a str, limits: &Limits) -> std::result::Result<&'a str, String> {
    let p = prompt.trim();
    if split_prompts(p).next().is_none() {
        return Err("prompt is empty".into());
    }
    if p.len() > limits.max_prompt_bytes {
        return Err(format!(
            "prompt of {} bytes exceeds the limit of {} bytes",
            p.len(),
            limits.max_prompt_bytes
        ));
    }
    if p.chars().any(|c| c.is_control()) {
        return Err("prompt contains control characters".into());
    }
    // Zero-width spaces, byte-order marks, lone combining marks or punctuation encode to nothing the
    // model can refer with; refused rather than tracked as an object named by nothing.
    if let Some(part) = split_prompts(p).find(|s| !s.chars().any(char::is_alphanumeric)) {
        return Err(format!(
            "prompt {part:?} names nothing: it has no letter or digit"
        ));
    }
    Ok(p)
}

/// Parses and validates one line (without its newline). `Ok(None)` for a blank line.
pub fn parse_line(line: &[u8], limits: &Limits) -> std::result::Result<Option<Request>, Rejected> {
    let none = None;
    if line.len() > limits.max_line_bytes {
        return Err(reject(
            &none,
            format!(
                "line of {} bytes exceeds the limit of {} bytes",
                line.len(),
                limits.max_line_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(line)
        .map_err(|e| reject(&none, format!("line is not valid UTF-8 ({e})")))?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| reject(&none, format!("invalid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(reject(
            &none,
            "expected a JSON object such as {\"prompt\": \"...\"} or {\"cmd\": \"status\"}",
        ));
    };
    let id = match obj.remove("id") {
        None => None,
        Some(v @ Value::Number(_)) => Some(v),
        Some(Value::String(s)) if s.len() <= crate::limits::MAX_ID_BYTES => Some(Value::String(s)),
        Some(_) => {
            return Err(reject(
                &none,
                "\"id\" must be a number or a string of at most 64 bytes",
            ))
        }
    };
    let stream = match obj.remove("stream") {
        None => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => {
            n.as_u64().map(|v| Streams::One(v as usize))
        }
        Some(Value::String(s)) if s == "all" => Some(Streams::All),
        Some(_) => {
            return Err(reject(
                &id,
                "\"stream\" must be a stream index (0, 1, ...) or \"all\"",
            ))
        }
    };
    let cmd = match obj.get("cmd") {
        None if obj.contains_key("prompt") => {
            obj.insert("cmd".into(), Value::String("prompt".into()));
            "prompt".to_string()
        }
        None => return Err(reject(&id, "missing \"cmd\" (or \"prompt\")")),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(reject(&id, "\"cmd\" must be a string")),
    };
    let allowed = Command::allowed_fields(&cmd);
    if let Some(extra) = obj
        .keys()
        .find(|k| k.as_str() != "cmd" && !allowed.contains(&k.as_str()))
    {
        return Err(reject(
            &id,
            format!("unknown field \"{extra}\" for cmd \"{cmd}\""),
        ));
    }
    let command: Command = serde_json::from_value(Value::Object(obj))
        .map_err(|e| reject(&id, format!("bad \"{cmd}\" command: {e}")))?;
    match &command {
        Command::Prompt { prompt }
        | Command::Add { prompt, .. }
        | Command::Replace { prompt, .. } => {
            check_prompt(prompt, limits).map_err(|e| reject(&id, e))?;
        }
        Command::Mode {
            threshold: Some(t), ..
        } if !(t.is_finite() && (0.0..=1.0).contains(t)) => {
            return Err(reject(&id, format!("threshold {t} must be within [0, 1]")));
        }
        _ => {}
    }
    let command = match command {
        Command::Prompt { prompt } => Command::Prompt {
            prompt: prompt.trim().to_string(),
        },
        Command::Add { prompt, object } => Command::Add {
            prompt: prompt.trim().to_string(),
            object,
        },
        Command::Replace { prompt, object } => Command::Replace {
            prompt: prompt.trim().to_string(),
            object,
        },
        c => c,
    };
    Ok(Some(Request {
        id,
        stream,
        command,
    }))
}

/// One referred object as `settings.objects` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectInfo {
    /// Its id.
    pub id: ObjectId,
    /// Its prompt.
    pub prompt: String,
}

/// The settings commands change; the session reads them every frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// Current referring expression (the objects' prompts joined by `"; "` when there are several).
    pub prompt: Option<String>,
    /// The referred objects, ascending id.
    pub objects: Vec<ObjectInfo>,
    /// Selection mode.
    pub mode: SelectMode,
    /// Multi-mode score threshold.
    pub threshold: f32,
    /// Inference paused.
    pub paused: bool,
    /// Incremented on every prompt change or clear, so the session knows to re-run the text engine.
    pub prompt_version: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            prompt: None,
            objects: Vec::new(),
            mode: SelectMode::Single,
            threshold: 0.2,
            paused: false,
            prompt_version: 0,
        }
    }
}

/// Runtime counters reported by `status` (filled in by the session).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RuntimeStats {
    /// Frames delivered by the source.
    pub frames_in: u64,
    /// Frames run through the engines.
    pub frames_processed: u64,
    /// Frames dropped because inference was busy.
    pub frames_dropped: u64,
    /// Processed frames per second (recent average).
    pub fps: f64,
    /// Mean latency per stage in milliseconds.
    pub latency_ms: BTreeMap<String, f64>,
    /// Source description.
    pub source: String,
    /// The model input the stream's frames resize to (its engine set's input size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<InputSize>,
}

/// A model input size: a stream's frames resized (shorter side `--short-side`) to the input of the
/// engine set it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InputSize {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// One reply line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    /// Whether the command was applied.
    pub ok: bool,
    /// Echo of the request id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// Command name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<&'static str>,
    /// Error message when `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Settings after the command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<Settings>,
    /// Counters (`status` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<RuntimeStats>,
    /// Ids of the objects the command added (`add`, `prompt`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<ObjectId>,
    /// The stream the command was applied to (runtimes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<usize>,
}

impl Reply {
    /// An error reply.
    pub fn error(id: Option<Value>, error: impl Into<String>) -> Self {
        Reply {
            ok: false,
            id,
            cmd: None,
            error: Some(error.into()),
            settings: None,
            stats: None,
            added: Vec::new(),
            stream: None,
        }
    }

    /// The reply as one JSON line (with `\n`).
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"ok\":false,\"error\":\"reply serialisation failed: {e}\"}}")
        });
        s.push('\n');
        s
    }
}

/// Applies commands to [`Settings`].
#[derive(Debug, Clone, Default)]
pub struct Controller {
    /// Current settings.
    pub settings: Settings,
}

impl Controller {
    /// Applies `req` and builds its reply; `stats` is reported by `status`.
    pub fn apply(&mut self, req: &Request, stats: &RuntimeStats) -> Reply {
        let s = &mut self.settings;
        let mut with_stats = None;
        match &req.command {
            Command::Prompt { prompt } => {
                s.prompt = Some(prompt.clone());
                s.prompt_version += 1;
                log::info!("prompt set to {prompt:?}");
            }
            Command::Clear => {
                s.prompt = None;
                s.prompt_version += 1;
                log::info!("prompt cleared");
            }
            Command::Add { .. } | Command::Remove { .. } | Command::Replace { .. } => {
                s.prompt_version += 1;
            }
            Command::List => {}
            Command::Mode { mode, threshold } => {
                s.mode = *mode;
                if let Some(t) = threshold {
                    s.threshold = *t;
                }
            }
            Command::Pause => s.paused = true,
            Command::Resume => s.paused = false,
            Command::Status => with_stats = Some(stats.clone()),
        }
        Reply {
            ok: true,
            id: req.id.clone(),
            cmd: Some(req.command.name()),
            error: None,
            settings: Some(self.settings.clone()),
            stats: with_stats,
            added: Vec::new(),
            stream: None,
        }
    }
}

/// Where a reply goes.
#[derive(Clone)]
pub enum Responder {
    /// Process stdout, written by a thread of its own ([`flush_stdout_replies`]).
    Stdout,
    /// A socket connection, written by a thread of its own ([`SocketReplies`]).
    Socket(SocketReplies),
    /// A channel of reply lines (tests, embedding).
    Channel(SyncSender<String>),
}

/// Reply lines for stdout, written by a thread of their own so that the loop never waits for
/// whoever reads stdout: up to [`crate::limits::REPLY_QUEUE`] lines wait beyond the pipe's buffer,
/// later ones are dropped (counted in the log).
struct StdoutReplies {
    tx: SyncSender<String>,
    /// Lines handed over and not yet written.
    pending: Arc<AtomicUsize>,
    dropped: AtomicUsize,
}

static STDOUT_REPLIES: std::sync::OnceLock<Option<StdoutReplies>> = std::sync::OnceLock::new();

/// The stdout writer, started on first use (`None` if no thread could be started: replies are then
/// written by the caller).
fn stdout_replies() -> Option<&'static StdoutReplies> {
    STDOUT_REPLIES
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<String>(crate::limits::REPLY_QUEUE);
            let pending = Arc::new(AtomicUsize::new(0));
            let done = pending.clone();
            let spawned = std::thread::Builder::new()
                .name("commands-stdout".into())
                .spawn(move || {
                    for line in rx {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(line.as_bytes()).and_then(|_| out.flush());
                        done.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            spawned.ok().map(|_| StdoutReplies {
                tx,
                pending,
                dropped: AtomicUsize::new(0),
            })
        })
        .as_ref()
}

impl StdoutReplies {
    fn send(&self, line: String) -> std::io::Result<()> {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.tx.try_send(line) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                log::warn!("stdout takes no replies: {n} dropped so far");
            }
            let kind = match e {
                TrySendError::Full(_) => std::io::ErrorKind::WouldBlock,
                TrySendError::Disconnected(_) => std::io::ErrorKind::BrokenPipe,
            };
            return Err(std::io::Error::new(kind, "stdout reply dropped"));
        }
        Ok(())
    }
}

/// Waits up to `timeout` until the replies handed to stdout are written (at shutdown, so that the
/// last replies are not lost with the process). Returns whether they all were.
pub fn flush_stdout_replies(timeout: Duration) -> bool {
    let Some(r) = STDOUT_REPLIES.get().and_then(Option::as_ref) else {
        return true;
    };
    let until = std::time::Instant::now() + timeout;
    while r.pending.load(Ordering::SeqCst) > 0 {
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// The replies of one socket client: lines handed to a writer thread through a bounded queue, so the
/// loop that answers never waits for the client. A client that reads none while the socket's buffer
/// and [`crate::limits::REPLY_QUEUE`] lines wait is disconnected (its reader thread then ends too,
/// freeing its connection slot).
#[derive(Clone)]
pub struct SocketReplies {
    tx: SyncSender<String>,
    conn: Arc<UnixStream>,
}

impl SocketReplies {
    /// Starts the writer thread of `conn` (a clone of the client's stream).
    pub fn spawn(conn: UnixStream) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(crate::limits::REPLY_QUEUE);
        // One descriptor shared with the writer (no further clone per connection).
        let conn = Arc::new(conn);
        let out = conn.clone();
        std::thread::Builder::new()
            .name("commands-reply".into())
            .spawn(move || {
                // Ends when every sender is gone (the connection is over) or the client is.
                for line in rx {
                    if (&*out).write_all(line.as_bytes()).is_err() {
                        let _ = out.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                }
            })?;
        Ok(SocketReplies { tx, conn })
    }

    fn send(&self, line: String) -> std::io::Result<()> {
        match self.tx.try_send(line) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                log::warn!(
                    "a command socket client reads no replies ({} lines waiting beyond the socket's buffer): disconnected",
                    crate::limits::REPLY_QUEUE
                );
                let _ = self.conn.shutdown(std::net::Shutdown::Both);
                Err(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "client reads no replies",
                ))
            }
            Err(TrySendError::Disconnected(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "connection closed",
            )),
        }
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Responder::Stdout => "Stdout",
            Responder::Socket(_) => "Socket",
            Responder::Channel(_) => "Channel",
        })
    }
}

impl Responder {
    /// Writes one reply line; failures (a closed connection) are logged, never fatal.
    pub fn send(&self, reply: &Reply) {
        let line = reply.to_line();
        let res = match self {
            Responder::Stdout => match stdout_replies() {
                Some(r) => r.send(line),
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(line.as_bytes()).and_then(|_| out.flush())
                }
            },
            Responder::Socket(s) => s.send(line),
            Responder::Channel(tx) => tx.try_send(line).or(Ok(())),
        };
        if let Err(e) = res {
            log::debug!("reply not delivered: {e}");
        }
    }
}

/// One line's item for the loop: a validated command, or the refusal of a malformed line, with its
/// reply destination. Refusals take the same queue as commands, so every line is answered in the
/// order it arrived (clients without ids match replies to lines by order).
#[derive(Debug)]
pub struct Incoming {
    /// The request, or why the line was refused (its reply is that error).
    pub request: std::result::Result<Request, Rejected>,
    /// Where its reply goes.
    pub responder: Responder,
}

/// Outcome of [`LineReader::next_line`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A complete line (without the newline).
    Text(&'a [u8]),
    /// A line longer than the limit was skipped; its length in bytes.
    TooLong(usize),
    /// End of input.
    Eof,
}

/// Reads newline-terminated lines with bounded memory: bytes beyond the limit are discarded as they
/// arrive. State survives read timeouts, so a partially received line is resumed.
#[derive(Debug)]
pub struct LineReader {
    buf: Vec<u8>,
    max: usize,
    skipped: usize,
}

impl LineReader {
    /// A reader for lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        LineReader {
            buf: Vec::with_capacity(max.min(64 * 1024)),
            max,
            skipped: 0,
        }
    }

    /// Reads the next line from `r`.
    pub fn next_line<R: BufRead>(&mut self, r: &mut R) -> std::io::Result<Line<'_>> {
        if self.skipped == 0 && self.buf.last() == Some(&b'\n') {
            self.buf.clear();
        }
        loop {
            let chunk = match r.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                // EOF: a final unterminated line still counts.
                if self.skipped > 0 {
                    let n = self.skipped + self.buf.len();
                    self.skipped = 0;
                    self.buf.clear();
                    return Ok(Line::TooLong(n));
                }
                if self.buf.len() > self.max {
                    let n = self.buf.len();
                    self.buf.clear();
                    return Ok(Line::TooLong(n));
                }
                if !self.buf.is_empty() && self.buf.last() != Some(&b'\n') {
                    self.buf.push(b'\n');
                    let end = self.buf.len() - 1;
                    return Ok(Line::Text(&self.buf[..end]));
                }
                return Ok(Line::Eof);
            }
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if self.skipped == 0 && self.buf.len() + take <= self.max + 1 {
                self.buf.extend_from_slice(&chunk[..take]);
            } else {
                self.skipped += self.buf.len() + take;
                self.buf.clear();
            }
            r.consume(take);
            if done {
                if self.skipped > 0 {
                    let n = self.skipped - 1;
                    self.skipped = 0;
                    return Ok(Line::TooLong(n));
                }
                let end = self.buf.len() - 1;
                return Ok(Line::Text(&self.buf[..end]));
            }
        }
    }
}

/// Reads lines from `reader` until EOF (or `stop`), sending each valid command and each malformed
/// line's refusal into `tx` in arrival order. Blocks when the channel is full (backpressure,
/// bounded memory, garbage included).
pub fn serve_lines<R: Read>(
    reader: R,
    tx: &SyncSender<Incoming>,
    responder: &Responder,
    limits: &Limits,
    stop: &AtomicBool,
) {
    serve_lines_idle(reader, tx, responder, limits, stop, None);
}

/// [`serve_lines`] that also ends when no complete line arrived for `idle` (a reader with a read
/// timeout, such as a socket connection, is needed to notice): the client is told why, and
/// [`Served::Idle`] comes back so its connection can be closed.
pub fn serve_lines_idle<R: Read>(
    reader: R,
    tx: &SyncSender<Incoming>,
    responder: &Responder,
    limits: &Limits,
    stop: &AtomicBool,
    idle: Option<Duration>,
) -> Served {
    let last_line = std::rc::Rc::new(std::cell::Cell::new(std::time::Instant::now()));
    let watched = Watched {
        inner: reader,
        last_line: last_line.clone(),
        idle,
    };
    let mut r = BufReader::with_capacity(8192, watched);
    let mut lines = LineReader::new(limits.max_line_bytes);
    while !stop.load(Ordering::Relaxed) {
        let line = match lines.next_line(&mut r) {
            Ok(l) => l,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if let Some(idle) = idle.filter(|d| last_line.get().elapsed() >= *d) {
                    let error = format!("no complete command line in {idle:?}: connection closed");
                    log::info!("a command client sent {error}");
                    let bye = Incoming {
                        request: Err(Rejected { id: None, error }),
                        responder: responder.clone(),
                    };
                    return if queue(tx, bye, stop) {
                        Served::Idle
                    } else {
                        Served::Stopped
                    };
                }
                continue;
            }
            Err(e) => {
                log::warn!("command input closed: {e}");
                return Served::Closed;
            }
        };
        last_line.set(std::time::Instant::now());
        let parsed = match line {
            Line::Eof => return Served::Closed,
            Line::TooLong(n) => Err(Rejected {
                id: None,
                error: format!(
                    "line of {n} bytes exceeds the limit of {} bytes",
                    limits.max_line_bytes
                ),
            }),
            Line::Text(t) => parse_line(t, limits),
        };
        let request = match parsed {
            Ok(None) => continue,
            Ok(Some(request)) => Ok(request),
            Err(rej) => {
                log::warn!("rejected command: {}", rej.error);
                Err(rej)
            }
        };
        let item = Incoming {
            request,
            responder: responder.clone(),
        };
        if !queue(tx, item, stop) {
            return Served::Stopped;
        }
    }
    Served::Stopped
}

/// A reader that times out once no complete line came for `idle`, even while bytes trickle in
/// (a client sending one byte at a time, never a newline, is idle too).
struct Watched<R> {
    inner: R,
    /// When the last complete line was read (set by [`serve_lines_idle`]).
    last_line: std::rc::Rc<std::cell::Cell<std::time::Instant>>,
    idle: Option<Duration>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self
            .idle
            .is_some_and(|d| self.last_line.get().elapsed() >= d)
        {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.inner.read(buf)
    }
}

/// Why [`serve_lines_idle`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// End of input, or it failed.
    Closed,
    /// No complete line for the idle time.
    Idle,
    /// The hub stopped (or its loop is gone).
    Stopped,
}

/// Hands `item` to the loop, waiting while the queue is full (the channel is bounded, so a flood
/// waits instead of growing memory). False when the hub stopped or its loop is gone.
fn queue(tx: &SyncSender<Incoming>, item: Incoming, stop: &AtomicBool) -> bool {
    let mut pending = item;
    loop {
        match tx.try_send(pending) {
            Ok(()) => return true,
            Err(TrySendError::Disconnected(_)) => return false,
            Err(TrySendError::Full(p)) => {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                pending = p;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Binds a listener at `path` with `access` applied before the socket becomes reachable there.
/// Longest Unix socket path in bytes (sun_path's 108 with its NUL).
const SOCKET_PATH_MAX: usize = 107;

fn bind_private(path: &Path, access: &Access) -> Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Command(format!("{} is not a socket file path", path.display())))?;
    if !parent.is_dir() {
        return Err(Error::Command(format!(
            "socket {}: directory {} does not exist",
            path.display(),
            parent.display()
        )));
    }
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let staging = parent.join(format!(
        ".referdino-sock-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    // A socket's path fits sun_path (108 bytes with its NUL); it is bound in the staging
    // directory first, whose longer path must fit too.
    let longest = staging.join(file_name).as_os_str().len();
    if longest > SOCKET_PATH_MAX {
        let room = SOCKET_PATH_MAX - (longest - path.as_os_str().len()).min(SOCKET_PATH_MAX);
        return Err(Error::Command(format!(
            "socket {}: the path is {} bytes; at most {room} fit here (a Unix socket path has 107)",
            path.display(),
            path.as_os_str().len()
        )));
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| Error::io(&staging, e))?;
    let temp = staging.join(file_name);
    let result = (|| {
        let listener = UnixListener::bind(&temp).map_err(|e| Error::io(&temp, e))?;
        access.apply_to_path(&temp)?;
        std::fs::rename(&temp, path).map_err(|e| Error::io(path, e))?;
        Ok(listener)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    let _ = std::fs::remove_dir(&staging);
    result
}

/// How long a socket client may go without sending a complete line before its connection is
/// closed: a client that stays silent, or sends half a line and stops, would otherwise hold one of
/// the [`crate::limits::MAX_CONNECTIONS`] slots for good.
pub const SOCKET_IDLE: Duration = Duration::from_secs(60);

/// The device and inode of a file: which file a path names now.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The command inbox of a session: a bounded channel fed by stdin and/or a Unix socket.
pub struct CommandHub {
    tx: SyncSender<Incoming>,
    rx: Receiver<Incoming>,
    limits: Limits,
    stop: Arc<AtomicBool>,
    /// The socket's path and the file bound there (removed at shutdown only if still that file).
    socket: Option<(PathBuf, Option<(u64, u64)>)>,
    /// A socket client without a complete line for this long is disconnected.
    idle: Duration,
    threads: Vec<JoinHandle<()>>,
}

impl CommandHub {
    /// A hub holding at most `capacity` pending commands.
    pub fn new(capacity: usize, limits: Limits) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity.max(1));
        CommandHub {
            tx,
            rx,
            limits,
            stop: Arc::new(AtomicBool::new(false)),
            socket: None,
            idle: SOCKET_IDLE,
            threads: Vec::new(),
        }
    }

    /// Disconnects socket clients that send no complete line for `idle` (default [`SOCKET_IDLE`];
    /// tests use less). Applies to sockets listened on afterwards.
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// Feeds commands from any reader (stdin, a pipe, a test buffer); replies go to `responder`.
    pub fn spawn_reader<R: Read + Send + 'static>(&mut self, reader: R, responder: Responder) {
        let tx = self.tx.clone();
        let limits = self.limits;
        let stop = self.stop.clone();
        let h = std::thread::Builder::new()
            .name("commands-reader".into())
            .spawn(move || serve_lines(reader, &tx, &responder, &limits, &stop));
        match h {
            Ok(h) => self.threads.push(h),
            Err(e) => log::error!("could not start the command reader thread: {e}"),
        }
    }

    /// Reads commands from stdin; replies go to stdout.
    pub fn spawn_stdin(&mut self) {
        self.spawn_reader(std::io::stdin(), Responder::Stdout);
    }

    /// Listens on a Unix socket at `path` (a stale socket file is replaced; one where another
    /// process listens is refused), owner-only (`0600`). At most `max_connections` clients are
    /// served at once; others get an error line and are closed, and a client without a complete
    /// line for [`SOCKET_IDLE`] is disconnected. The socket file is removed by
    /// [`CommandHub::shutdown`] and on drop, unless another file has taken its path since. Same as
    /// [`CommandHub::listen_unix_with`] with the default [`Access`].
    pub fn listen_unix(&mut self, path: &Path, max_connections: usize) -> Result<()> {
        self.listen_unix_with(path, max_connections, &Access::default())
    }

    /// [`CommandHub::listen_unix`] with the socket's mode and group from `access` (clients need
    /// write permission to connect, so a group client needs e.g. `0o660`).
    ///
    /// The socket is bound inside a private (`0700`) directory next to `path`, given its mode and
    /// group there and then renamed into place, so it is never reachable with looser permissions.
    pub fn listen_unix_with(
        &mut self,
        path: &Path,
        max_connections: usize,
        access: &Access,
    ) -> Result<()> {
        access.validate()?;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(Error::Command(format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                )));
            }
            // A socket file outlives a process that crashed; one that still takes connections
            // belongs to a live process (another referdino), which would lose its clients.
            match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(Error::Command(format!(
                        "{}: another process listens on this socket (another referdino run?); stop it or choose another --socket path",
                        path.display()
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    match std::fs::remove_file(path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(Error::io(path, e))
                        }
                        _ => {}
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::Command(format!(
                        "{}: cannot tell whether another process listens on this socket ({e}); refusing to replace it",
                        path.display()
                    )))
                }
            }
        }
        let listener = bind_private(path, access)?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io(path, e))?;
        self.socket = Some((path.to_path_buf(), file_id(path)));
        let tx = self.tx.clone();
        let limits = self.limits;
        let idle = self.idle;
        let stop = self.stop.clone();
        let active = Arc::new(AtomicUsize::new(0));
        let h = std::thread::Builder::new()
            .name("commands-socket".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let stream = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        Err(e) => {
                            log::warn!("command socket accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    let _ = stream.set_nonblocking(false);
                    if active.load(Ordering::SeqCst) >= max_connections {
                        let mut s = stream;
                        let _ = s.write_all(
                            Reply::error(None, "too many connections")
                                .to_line()
                                .as_bytes(),
                        );
                        continue;
                    }
                    let responder = match stream.try_clone().and_then(SocketReplies::spawn) {
                        Ok(r) => Responder::Socket(r),
                        Err(e) => {
                            log::warn!("could not serve a command connection: {e}");
                            continue;
                        }
                    };
                    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                    active.fetch_add(1, Ordering::SeqCst);
                    let (tx, stop, active) = (tx.clone(), stop.clone(), active.clone());
                    let spawned = std::thread::Builder::new()
                        .name("commands-conn".into())
                        .spawn(move || {
                            let served = serve_lines_idle(
                                &stream,
                                &tx,
                                &responder,
                                &limits,
                                &stop,
                                Some(idle),
                            );
                            if served == Served::Idle {
                                // No more lines are read: the client's writes fail from now on,
                                // and it reads the farewell and then the end once the loop has
                                // answered (the writer ends with the last reply).
                                let _ = stream.shutdown(std::net::Shutdown::Read);
                            }
                            active.fetch_sub(1, Ordering::SeqCst);
                        });
                    if spawned.is_err() {
                        log::warn!("could not start a command connection thread");
                    }
                }
            });
        match h {
            Ok(h) => self.threads.push(h),
            Err(e) => {
                return Err(Error::Command(format!(
                    "could not start the socket thread: {e}"
                )))
            }
        }
        log::info!("listening for commands on {}", path.display());
        Ok(())
    }

    /// The next pending command, if any (never blocks).
    pub fn try_recv(&self) -> Option<Incoming> {
        self.rx.try_recv().ok()
    }

    /// Waits up to `timeout` for a command (used while paused).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Incoming> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Applies every pending command with `controller` and sends the replies (refused lines get
    /// theirs in turn). Returns how many lines were answered.
    pub fn drain(&self, controller: &mut Controller, stats: &RuntimeStats) -> usize {
        let mut n = 0;
        while let Some(inc) = self.try_recv() {
            let reply = match &inc.request {
                Ok(req) => controller.apply(req, stats),
                Err(r) => Reply::error(r.id.clone(), r.error.clone()),
            };
            inc.responder.send(&reply);
            n += 1;
        }
        n
    }

    /// Stops the socket listener and connection threads (stdin readers stop at their next line),
    /// and gives the replies still on their way to stdout up to a second to be written.
    pub fn shutdown(&mut self) {
        let first = !self.stop.swap(true, Ordering::SeqCst);
        if first && !flush_stdout_replies(Duration::from_secs(1)) {
            log::warn!("stdout took not every reply before shutdown");
        }
        if let Some((p, bound)) = self.socket.take() {
            // Only the file this hub bound: another process may have taken the path since.
            if bound.is_some() && file_id(&p) == bound {
                let _ = std::fs::remove_file(p);
            } else {
                log::warn!(
                    "{}: not removed, it is no longer the socket this run created",
                    p.display()
                );
            }
        }
    }
}

impl Drop for CommandHub {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> std::result::Result<Option<Request>, Rejected> {
        parse_line(s.as_bytes(), &Limits::default())
    }

    #[test]
    fn valid_commands() {
        let r = parse(r#"{"prompt": "  the red car "}"#).unwrap().unwrap();
        assert_eq!(
            r.command,
            Command::Prompt {
                prompt: "the red car".into()
            }
        );
        let r = parse(r#"{"cmd":"prompt","prompt":"a dog","id":7}"#)
            .unwrap()
            .unwrap();
        assert_eq!(r.id, Some(serde_json::json!(7)));
        assert_eq!(
            parse(r#"{"cmd":"clear"}"#).unwrap().unwrap().command,
            Command::Clear
        );
        let r = parse(r#"{"cmd":"mode","mode":"multi","threshold":0.3}"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            r.command,
            Command::Mode {
                mode: SelectMode::Multi,
                threshold: Some(0.3)
            }
        );
        let r = parse(r#"{"cmd":"mode","mode":"single"}"#).unwrap().unwrap();
        assert_eq!(
            r.command,
            Command::Mode {
                mode: SelectMode::Single,
                threshold: None
            }
        );
        for c in ["pause", "resume", "status"] {
            let r = parse(&format!("{{\"cmd\":\"{c}\"}}")).unwrap().unwrap();
            assert_eq!(r.command.name(), c);
        }
        assert_eq!(parse("   ").unwrap(), None);
    }

    #[test]
    fn malformed_commands_are_rejected_with_reasons() {
        let cases: &[(&str, &str)] = &[
            ("{", "invalid JSON"),
            ("[1,2]", "expected a JSON object"),
            (r#"{"prompt": ""}"#, "prompt is empty"),
            (r#"{"prompt": "   "}"#, "prompt is empty"),
            (r#"{"prompt": 5}"#, "bad \"prompt\" command"),
            (r#"{"cmd":"fly"}"#, "unknown variant `fly`"),
            (r#"{"cmd":"mode","mode":"many"}"#, "unknown variant `many`"),
            (
                r#"{"cmd":"mode","mode":"multi","threshold":1.5}"#,
                "within [0, 1]",
            ),
            (r#"{"cmd":"mode"}"#, "missing field `mode`"),
            (
                r#"{"cmd":"status","verbose":true}"#,
                "unknown field \"verbose\"",
            ),
            (r#"{"cmd":3}"#, "must be a string"),
            (r#"{"foo":1}"#, "missing \"cmd\""),
            (r#"{"prompt":"a\u0007b"}"#, "control characters"),
            (r#"{"cmd":"clear","id":[1]}"#, "\"id\" must be"),
            // Nothing to refer with: a zero-width space, a byte-order mark, a lone combining mark,
            // punctuation; one such object among others.
            (r#"{"prompt":"\u200b"}"#, "no letter or digit"),
            (r#"{"prompt":"\ufeff"}"#, "no letter or digit"),
            (r#"{"cmd":"add","prompt":"\u0301"}"#, "no letter or digit"),
            (r#"{"prompt":"the cup; ?!"}"#, "\"?!\" names nothing"),
        ];
        for (line, want) in cases {
            let e = parse(line).unwrap_err();
            assert!(e.error.contains(want), "{line}: {}", e.error);
        }
        // Other scripts and digits are letters and digits.
        for ok in ["狗", "the 2nd car", "Ünal's bag"] {
            let line = format!("{{\"prompt\":\"{ok}\"}}");
            assert!(parse(&line).is_ok(), "{ok}");
        }
        let long = format!("{{\"prompt\":\"{}\"}}", "a".repeat(2000));
        assert!(parse(&long)
            .unwrap_err()
            .error
            .contains("exceeds the limit of 1024"));
        let e = parse_line(b"{\"prompt\":\"\xff\xfe\"}", &Limits::default()).unwrap_err();
        assert!(e.error.contains("not valid UTF-8"), "{}", e.error);
        let e = parse(r#"{"cmd":"mode","mode":"x","id":"abc"}"#).unwrap_err();
        assert_eq!(e.id, Some(serde_json::json!("abc")));
    }

    #[test]
    fn controller_applies_and_replies() {
        let mut c = Controller::default();
        let stats = RuntimeStats {
            frames_in: 3,
            ..Default::default()
        };
        let req = parse(r#"{"prompt":"a cat","id":"x1"}"#).unwrap().unwrap();
        let r = c.apply(&req, &stats);
        assert!(r.ok);
        assert_eq!(c.settings.prompt_version, 1);
        let line = r.to_line();
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], "x1");
        assert_eq!(v["cmd"], "prompt");
        assert_eq!(v["settings"]["prompt"], "a cat");
        assert!(v.get("stats").is_none());
        c.apply(
            &parse(r#"{"cmd":"mode","mode":"multi","threshold":0.5}"#)
                .unwrap()
                .unwrap(),
            &stats,
        );
        c.apply(&parse(r#"{"cmd":"pause"}"#).unwrap().unwrap(), &stats);
        let r = c.apply(&parse(r#"{"cmd":"status"}"#).unwrap().unwrap(), &stats);
        let v: Value = serde_json::from_str(&r.to_line()).unwrap();
        assert_eq!(v["settings"]["mode"], "multi");
        assert_eq!(v["settings"]["threshold"], 0.5);
        assert_eq!(v["settings"]["paused"], true);
        assert_eq!(v["stats"]["frames_in"], 3);
        c.apply(&parse(r#"{"cmd":"clear"}"#).unwrap().unwrap(), &stats);
        assert_eq!(c.settings.prompt, None);
        assert_eq!(c.settings.prompt_version, 2);
        let e: Value = serde_json::from_str(&Reply::error(None, "bad").to_line()).unwrap();
        assert_eq!(e, serde_json::json!({"ok": false, "error": "bad"}));
    }

    #[test]
    fn line_reader_bounds_memory() {
        let mut data = Vec::new();
        data.extend_from_slice(b"short\n");
        data.extend(std::iter::repeat_n(b'x', 1 << 20));
        data.extend_from_slice(b"\nexact\nlast-unterminated");
        let mut r = BufReader::with_capacity(4096, &data[..]);
        let mut lr = LineReader::new(16);
        assert_eq!(lr.next_line(&mut r).unwrap(), Line::Text(b"short"));
        assert_eq!(lr.next_line(&mut r).unwrap(), Line::TooLong(1 << 20));
        assert!(
            lr.buf.capacity() < 4096 + 64,
            "buffer grew to {}",
            lr.buf.capacity()
        );
        assert_eq!(lr.next_line(&mut r).unwrap(), Line::Text(b"exact"));
        assert_eq!(lr.next_line(&mut r).unwrap(), Line::TooLong(16 + 1));
        assert_eq!(lr.next_line(&mut r).unwrap(), Line::Eof);
        let mut r = BufReader::new(&b"a\n\nb"[..]);
        let mut lr = LineReader::new(16);
        assert_eq!(lr.next_line(&mut r).unwrap(), Line::Text(b"a"));
        assert_eq!(lr.next_line(&mut r).unwrap(), Line::Text(b""));
        assert_eq!(lr.next_line(&mut r).unwrap(), Line::Text(b"b"));
        assert_eq!(lr.next_line(&mut r).unwrap(), Line::Eof);
    }

    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn socket_is_owner_only_by_default_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cmd.sock");
        let mut hub = CommandHub::new(4, Limits::default());
        hub.listen_unix(&sock, 2).unwrap();
        assert_eq!(mode_of(&sock), 0o600);
        // Only the socket is left in the directory (the staging directory is gone).
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(UnixStream::connect(&sock).is_ok());
        drop(hub);
        assert!(!sock.exists(), "socket file left behind");
    }

    #[test]
    fn socket_mode_option_and_bad_modes() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("group.sock");
        let mut hub = CommandHub::new(4, Limits::default());
        let access = Access {
            mode: 0o660,
            group: None,
        };
        hub.listen_unix_with(&sock, 2, &access).unwrap();
        assert_eq!(mode_of(&sock), 0o660);
        hub.shutdown();
        assert!(!sock.exists());
        let mut hub = CommandHub::new(4, Limits::default());
        let bad = Access {
            mode: 0o1777,
            group: None,
        };
        assert!(hub.listen_unix_with(&sock, 2, &bad).is_err());
        assert!(!sock.exists());
    }

    /// A socket in a missing directory, or with a path too long for a Unix socket, is refused
    /// naming the path the caller gave (not the staging directory's), and nothing is left behind.
    #[test]
    fn socket_paths_that_cannot_work_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut hub = CommandHub::new(4, Limits::default());
        let e = hub
            .listen_unix(&dir.path().join("nodir/x.sock"), 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nodir") && e.contains("does not exist"), "{e}");
        assert!(!e.contains(".referdino-sock"), "{e}");
        let long = dir.path().join(format!("{}.sock", "s".repeat(120)));
        let e = hub.listen_unix(&long, 2).unwrap_err().to_string();
        assert!(
            e.contains("bytes; at most") && !e.contains(".referdino-sock"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
