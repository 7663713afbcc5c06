//! The [`CommandHub`]: a session's command inbox (a bounded channel) fed by reader threads on stdin
//! or any reader and by a Unix socket's connections (bound with its access applied before it is
//! reachable, clients idle for [`SOCKET_IDLE`] disconnected); the loop drains it between frames.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::lines::{serve_lines, serve_lines_idle, Incoming, Served};
use super::protocol::Limits;
use super::reply::{Controller, Reply, RuntimeStats};
use super::responders::{flush_stdout_replies, Responder, SocketReplies};
use crate::access::Access;
use crate::{Error, Result};

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
