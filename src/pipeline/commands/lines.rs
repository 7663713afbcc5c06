//! From bytes to the loop: the bounded-memory [`LineReader`], and [`serve_lines`] /
//! [`serve_lines_idle`], which parse each line and queue the [`Incoming`] item (a command or a
//! refusal, with its [`Responder`]) in arrival order.

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use super::protocol::{parse_line, Limits, Rejected, Request};
use super::responders::Responder;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
