//! Where replies go: a [`Responder`] (stdout, a socket connection, a channel), each written by a
//! thread of its own so that the loop that answers never waits for a reader: stdout's writer
//! ([`flush_stdout_replies`] at shutdown) and a socket client's ([`SocketReplies`]).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use super::reply::Reply;

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
