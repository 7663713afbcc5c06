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
