//! The command protocol end to end: a reader (as for stdin) and the Unix socket feed the hub; the
//! session side drains it with a Controller; every line gets exactly one reply, malformed lines
//! included, and the loop goes on.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use referdino::pipeline::commands::{CommandHub, Controller, Limits, Responder, RuntimeStats};
use serde_json::Value;

/// Drains the hub until `want` replies arrived on `rx` or a timeout.
fn pump(
    hub: &CommandHub,
    ctl: &mut Controller,
    rx: &std::sync::mpsc::Receiver<String>,
    want: usize,
) -> Vec<Value> {
    let mut out = Vec::new();
    let t = Instant::now();
    while out.len() < want && t.elapsed() < Duration::from_secs(20) {
        hub.drain(
            ctl,
            &RuntimeStats {
                frames_in: 42,
                ..Default::default()
            },
        );
        while let Ok(line) = rx.try_recv() {
            assert!(line.ends_with('\n'));
            out.push(serde_json::from_str(&line).unwrap());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    out
}

/// Every line gets one reply, in the order the lines came: malformed ones too (before, they were
/// answered at once by the reader while valid ones waited for the loop, so a client without ids
/// could not tell which reply was whose).
#[test]
fn reader_input_gets_one_reply_per_line_in_arrival_order() {
    let mut input = Vec::new();
    input.extend_from_slice(b"{\"prompt\": \"the person on the left\", \"id\": 1}\n");
    input.extend_from_slice(b"not json\n");
    input.extend_from_slice(b"\n");
    input.extend_from_slice(b"{\"prompt\": \"\"}\n");
    input.extend_from_slice(b"{\"prompt\": \"\xff\xfe\"}\n");
    input.extend(std::iter::repeat_n(b'a', 1 << 20));
    input.extend_from_slice(b"\n");
    input.extend_from_slice(b"{\"cmd\":\"mode\",\"mode\":\"multi\",\"threshold\":0.35}\n");
    input.extend_from_slice(b"{\"cmd\":\"status\",\"id\":\"s\"}");
    let mut hub = CommandHub::new(4, Limits::default());
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    hub.spawn_reader(std::io::Cursor::new(input), Responder::Channel(tx));
    let mut ctl = Controller::default();
    let replies = pump(&hub, &mut ctl, &rx, 7);
    assert_eq!(replies.len(), 7, "{replies:?}");
    // The blank line gets no reply; each other line its own, in turn.
    let want = [
        (true, "prompt"),
        (false, "invalid JSON"),
        (false, "prompt is empty"),
        (false, "UTF-8"),
        (false, "exceeds the limit"),
        (true, "mode"),
        (true, "status"),
    ];
    for (k, (r, (ok, what))) in replies.iter().zip(want).enumerate() {
        assert_eq!(r["ok"], ok, "reply {k}: {r}");
        let said = if ok { &r["cmd"] } else { &r["error"] };
        assert!(said.as_str().unwrap().contains(what), "reply {k}: {r}");
    }
    assert_eq!(replies[0]["id"], 1);
    assert_eq!(replies[0]["settings"]["prompt"], "the person on the left");
    assert_eq!(replies[6]["id"], "s");
    assert_eq!(replies[6]["stats"]["frames_in"], 42);
    assert_eq!(replies[6]["settings"]["mode"], "multi");
    assert_eq!(ctl.settings.prompt_version, 1);
}

/// A flood of malformed lines waits in the bounded queue like commands do (the reader stops
/// reading while it is full), and every line is still answered.
#[test]
fn malformed_lines_wait_in_the_bounded_queue() {
    let mut input = Vec::new();
    for _ in 0..200 {
        input.extend_from_slice(b"garbage\n");
    }
    let mut hub = CommandHub::new(2, Limits::default());
    let (tx, rx) = std::sync::mpsc::sync_channel(1024);
    hub.spawn_reader(std::io::Cursor::new(input), Responder::Channel(tx));
    std::thread::sleep(Duration::from_millis(300));
    // Nothing answered without the loop: the refusals wait for it in the queue.
    assert!(
        rx.try_recv().is_err(),
        "a refusal was answered past the loop"
    );
    let mut ctl = Controller::default();
    let replies = pump(&hub, &mut ctl, &rx, 200);
    assert_eq!(replies.len(), 200);
    assert!(replies.iter().all(|r| r["ok"] == false));
}

/// Reads one reply line from `r`, draining `hub` meanwhile (bounded).
fn reply_from(hub: &CommandHub, ctl: &mut Controller, r: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    let t = Instant::now();
    while !line.ends_with('\n') && t.elapsed() < Duration::from_secs(20) {
        hub.drain(ctl, &RuntimeStats::default());
        let _ = r.read_line(&mut line);
    }
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

fn client(sock: &std::path::Path) -> (UnixStream, BufReader<UnixStream>) {
    let c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let r = BufReader::new(c.try_clone().unwrap());
    (c, r)
}

/// A second hub on a socket where the first one listens is refused with a clear error (before,
/// it unlinked the live socket and took the path, cutting the first run off from new clients);
/// the first still answers, and dropping the refused hub leaves its socket alone.
#[test]
fn a_second_hub_on_a_live_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cmd.sock");
    let mut first = CommandHub::new(4, Limits::default());
    first.listen_unix(&sock, 4).unwrap();
    let mut second = CommandHub::new(4, Limits::default());
    let e = second.listen_unix(&sock, 4).unwrap_err().to_string();
    assert!(
        e.contains("another process listens") && e.contains("cmd.sock"),
        "{e}"
    );
    drop(second);
    assert!(sock.exists());
    let mut ctl = Controller::default();
    let (mut c, mut r) = client(&sock);
    c.write_all(b"{\"cmd\":\"pause\",\"id\":1}\n").unwrap();
    let v = reply_from(&first, &mut ctl, &mut r);
    assert_eq!((v["id"].clone(), v["ok"].clone()), (1.into(), true.into()));
    assert!(ctl.settings.paused);
    // A socket file nobody listens on any more (a crashed run's) is replaced.
    drop(c);
    first.shutdown();
    let stale = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    drop(stale);
    assert!(sock.exists());
    let mut third = CommandHub::new(4, Limits::default());
    third.listen_unix(&sock, 4).unwrap();
    let (mut c, mut r) = client(&sock);
    c.write_all(b"{\"cmd\":\"status\",\"id\":3}\n").unwrap();
    assert_eq!(reply_from(&third, &mut ctl, &mut r)["id"], 3);
}

/// At shutdown a hub removes its socket file only if it is still the one it bound: another process
/// that took the path since keeps its socket.
#[test]
fn shutdown_leaves_a_socket_another_process_bound_since() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cmd.sock");
    let mut old = CommandHub::new(4, Limits::default());
    old.listen_unix(&sock, 4).unwrap();
    // Someone removed the file and a new run listens there now.
    std::fs::remove_file(&sock).unwrap();
    let mut new = CommandHub::new(4, Limits::default());
    new.listen_unix(&sock, 4).unwrap();
    old.shutdown();
    assert!(sock.exists(), "the old hub removed the new one's socket");
    let mut ctl = Controller::default();
    let (mut c, mut r) = client(&sock);
    c.write_all(b"{\"cmd\":\"status\",\"id\":2}\n").unwrap();
    assert_eq!(reply_from(&new, &mut ctl, &mut r)["id"], 2);
    new.shutdown();
    assert!(!sock.exists());
}

/// A client that sends half a line and stops (or nothing) is told and disconnected once idle,
/// which frees its connection slot (before, it held the slot for good).
#[test]
fn an_idle_client_is_disconnected_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cmd.sock");
    let mut hub =
        CommandHub::new(4, Limits::default()).with_idle_timeout(Duration::from_millis(500));
    hub.listen_unix(&sock, 1).unwrap();
    let mut ctl = Controller::default();
    let (mut idle, mut idle_r) = client(&sock);
    idle.write_all(b"{\"cmd\":\"sta").unwrap();
    // Once idle: the reason, then the end of the connection.
    let v = reply_from(&hub, &mut ctl, &mut idle_r);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no complete command line"),
        "{v}"
    );
    let mut rest = Vec::new();
    let t = Instant::now();
    loop {
        hub.drain(&mut ctl, &RuntimeStats::default());
        let mut buf = [0u8; 256];
        match std::io::Read::read(&mut idle_r, &mut buf) {
            Ok(0) => break,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        assert!(t.elapsed() < Duration::from_secs(20), "never disconnected");
    }
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    // The only slot is free: a new client is served.
    let t = Instant::now();
    let v = loop {
        let (mut c, mut r) = client(&sock);
        let _ = c.write_all(b"{\"cmd\":\"pause\",\"id\":7}\n");
        let v = reply_from(&hub, &mut ctl, &mut r);
        if v["ok"] == true || t.elapsed() > Duration::from_secs(20) {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(v["id"], 7, "{v}");
}

#[test]
fn unix_socket_clients_get_their_own_replies() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cmd.sock");
    let mut hub = CommandHub::new(4, Limits::default());
    hub.listen_unix(&sock, 4).unwrap();
    let mut ctl = Controller::default();
    let mut a = UnixStream::connect(&sock).unwrap();
    let mut b = UnixStream::connect(&sock).unwrap();
    a.write_all(b"{\"prompt\":\"a red car\",\"id\":\"a\"}\n")
        .unwrap();
    b.write_all(b"{\"cmd\":\"pause\",\"id\":\"b\"}\n{\"cmd\":\"bogus\"}\n")
        .unwrap();
    let mut ra = BufReader::new(a.try_clone().unwrap());
    let mut rb = BufReader::new(b.try_clone().unwrap());
    a.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    b.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut la = Vec::new();
    let mut lb = Vec::new();
    let t = Instant::now();
    while (la.is_empty() || lb.len() < 2) && t.elapsed() < Duration::from_secs(20) {
        hub.drain(&mut ctl, &RuntimeStats::default());
        let mut s = String::new();
        if ra.read_line(&mut s).is_ok() && !s.is_empty() {
            la.push(serde_json::from_str::<Value>(&s).unwrap());
        }
        let mut s = String::new();
        if rb.read_line(&mut s).is_ok() && !s.is_empty() {
            lb.push(serde_json::from_str::<Value>(&s).unwrap());
        }
    }
    assert_eq!(la.len(), 1, "{la:?}");
    assert_eq!(la[0]["id"], "a");
    assert_eq!(la[0]["ok"], true);
    assert_eq!(lb.len(), 2, "{lb:?}");
    assert!(lb.iter().any(|r| r["id"] == "b" && r["ok"] == true));
    assert!(lb
        .iter()
        .any(|r| r["ok"] == false && r["error"].as_str().unwrap().contains("bogus")));
    assert!(ctl.settings.paused);
    assert_eq!(ctl.settings.prompt.as_deref(), Some("a red car"));
    hub.shutdown();
    assert!(!sock.exists());
}

/// A client that sends commands and never reads its replies cannot stall the loop that answers
/// (before, its replies filled the socket's buffer and the loop blocked writing the next one, frames
/// and every other client with it): its replies queue for a writer thread of its own, and once the
/// queue is full too it is disconnected, which frees its connection slot for the next client.
#[test]
fn a_client_that_reads_no_replies_is_disconnected_and_the_loop_goes_on() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cmd.sock");
    let mut hub = CommandHub::new(4, Limits::default());
    hub.listen_unix(&sock, 1).unwrap();
    let flood = UnixStream::connect(&sock).unwrap();
    let mut w = flood.try_clone().unwrap();
    let sent_all = Arc::new(AtomicBool::new(false));
    let writer_done = Arc::new(AtomicBool::new(false));
    // 20 000 status commands: several MB of replies, far beyond a socket's buffer.
    let writer = {
        let (sent_all, done) = (sent_all.clone(), writer_done.clone());
        std::thread::spawn(move || {
            let ok = (0..20_000).all(|_| w.write_all(b"{\"cmd\":\"status\"}\n").is_ok());
            sent_all.store(ok, Ordering::SeqCst);
            done.store(true, Ordering::SeqCst);
        })
    };
    // The loop, on a thread of its own so that a stall fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let done = writer_done.clone();
    let looper = std::thread::spawn(move || {
        let mut ctl = Controller::default();
        let mut answered = 0;
        while !done.load(Ordering::SeqCst) {
            answered += hub.drain(&mut ctl, &RuntimeStats::default());
            std::thread::sleep(Duration::from_millis(1));
        }
        answered += hub.drain(&mut ctl, &RuntimeStats::default());
        tx.send(answered).unwrap();
        hub
    });
    let answered = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the loop stalled on a client that reads no replies");
    writer.join().unwrap();
    let hub = looper.join().unwrap();
    assert!(
        !sent_all.load(Ordering::SeqCst),
        "the client was never disconnected ({answered} commands answered)"
    );
    assert!(answered > 64, "{answered}");
    // What the socket held arrives, then the end: fewer replies than commands answered.
    let mut got = Vec::new();
    let mut r = flood;
    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Read::read_to_end(&mut r, &mut got).unwrap();
    let lines = got.iter().filter(|&&b| b == b'\n').count();
    assert!(lines < answered, "{lines} replies of {answered}");
    // The only connection slot is free again: a new client is served.
    let mut ctl = Controller::default();
    let t = Instant::now();
    let reply = loop {
        let mut c = UnixStream::connect(&sock).unwrap();
        c.write_all(b"{\"cmd\":\"pause\",\"id\":9}\n").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut rc = BufReader::new(c);
        let mut line = String::new();
        let until = Instant::now() + Duration::from_secs(2);
        while line.is_empty() && Instant::now() < until {
            hub.drain(&mut ctl, &RuntimeStats::default());
            let _ = rc.read_line(&mut line);
        }
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["ok"] == true || t.elapsed() > Duration::from_secs(20) {
            break v;
        }
        // "too many connections" while the old connection's reader winds down.
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(reply["id"], 9, "{reply}");
    assert!(ctl.settings.paused);
}

#[test]
fn socket_path_that_is_a_regular_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("not-a-socket");
    std::fs::write(&p, "keep me").unwrap();
    let mut hub = CommandHub::new(4, Limits::default());
    let e = hub.listen_unix(&p, 4).unwrap_err().to_string();
    assert!(e.contains("not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "keep me");
}
