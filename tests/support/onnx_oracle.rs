//! `tests/tools/onnx_oracle.py` (the ONNX checker and ONNX Runtime, independent of our code) for every
//! test of a binary: one Python process serves them all (`onnx_oracle.py serve`, one request per line),
//! so a test pays neither a Python start nor the imports (~1 s of CPU per call; the suite makes ~70).
//!
//! Without python/onnx/onnxruntime the callers skip with a message, unless `REFERDINO_REQUIRE_ORACLES=1`,
//! which makes that a failure.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

/// Whether a missing oracle fails the test instead of skipping its checks (`REFERDINO_REQUIRE_ORACLES=1`).
pub fn require_oracles() -> bool {
    std::env::var("REFERDINO_REQUIRE_ORACLES").is_ok_and(|v| v == "1")
}

struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// The binary's server, started by the first call; `None` again after it died (the next call starts
/// another).
static SERVER: Mutex<Option<Server>> = Mutex::new(None);

/// What one request gave: the script's exit status as the command line would have it, stdout, stderr.
struct Reply {
    code: i32,
    out: String,
    err: String,
}

fn start() -> std::io::Result<Server> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("python3")
        .arg(root.join("tests/tools/onnx_oracle.py"))
        .arg("serve")
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // ONNX Runtime's own diagnostics go to the test's stderr; the script's come in the reply.
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    Ok(Server {
        child,
        stdin,
        stdout,
    })
}

/// One request on the running server (started if need be).
fn ask(args: &[&str]) -> std::io::Result<Reply> {
    // A test that panicked elsewhere while holding the lock left the server in a consistent state
    // (requests are written and read whole before the lock is released).
    let mut guard = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(start()?);
    }
    let s = guard.as_mut().expect("started above");
    let exchange = |s: &mut Server| -> std::io::Result<String> {
        let line = serde_json::to_string(args).expect("strings serialise");
        s.stdin.write_all(line.as_bytes())?;
        s.stdin.write_all(b"\n")?;
        s.stdin.flush()?;
        let mut reply = String::new();
        s.stdout.read_line(&mut reply)?;
        Ok(reply)
    };
    let reply = exchange(s).unwrap_or_default();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&reply) {
        return Ok(Reply {
            code: v["code"].as_i64().unwrap_or(1) as i32,
            out: v["out"].as_str().unwrap_or_default().to_string(),
            err: v["err"].as_str().unwrap_or_default().to_string(),
        });
    }
    // No reply: the server ended (a missing package exits with status 3 before serving) or crashed.
    let mut dead = guard.take().expect("present above");
    drop(dead.stdin);
    let status = dead.child.wait()?;
    Ok(Reply {
        code: status.code().unwrap_or(1),
        out: String::new(),
        err: format!("onnx_oracle.py serve ended ({status}) without replying to {args:?}"),
    })
}

/// Runs `onnx_oracle.py ARGS...`; its stdout, or `None` when python or a package is missing and the
/// oracles are optional. Any other failure fails the test with the script's output.
pub fn oracle(args: &[&str]) -> Option<String> {
    let r = match ask(args) {
        Ok(r) => r,
        Err(e) => {
            assert!(!require_oracles(), "python3 not runnable: {e}");
            eprintln!("SKIP (no python3: {e})");
            return None;
        }
    };
    if r.code == 3 {
        assert!(!require_oracles(), "oracle package missing: {}", r.err);
        eprintln!("SKIP ONNX oracle checks: {}", r.err);
        return None;
    }
    assert!(
        r.code == 0,
        "onnx_oracle.py {args:?} failed (status {}):\n{}\n{}",
        r.code,
        r.err,
        r.out
    );
    Some(r.out)
}
