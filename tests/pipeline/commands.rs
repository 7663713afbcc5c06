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

#[test]
fn reader_input_gets_one_reply_per_line_in_order_of_validity() {
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
    let errors: Vec<&Value> = replies.iter().filter(|r| r["ok"] == false).collect();
    let oks: Vec<&Value> = replies.iter().filter(|r| r["ok"] == true).collect();
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(errors
        .iter()
        .any(|e| e["error"].as_str().unwrap().contains("invalid JSON")));
    assert!(errors
        .iter()
        .any(|e| e["error"].as_str().unwrap().contains("prompt is empty")));
    assert!(errors
        .iter()
        .any(|e| e["error"].as_str().unwrap().contains("UTF-8")));
    assert!(errors
        .iter()
        .any(|e| e["error"].as_str().unwrap().contains("exceeds the limit")));
    assert_eq!(oks.len(), 3);
    assert_eq!(oks[0]["id"], 1);
    assert_eq!(oks[0]["settings"]["prompt"], "the person on the left");
    assert_eq!(oks[2]["id"], "s");
    assert_eq!(oks[2]["stats"]["frames_in"], 42);
    assert_eq!(oks[2]["settings"]["mode"], "multi");
    assert_eq!(ctl.settings.prompt_version, 1);
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
