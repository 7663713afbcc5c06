//! The command path of the node: the `prompt` topic and the `set_prompt` service are read on a
//! thread of their own and turned into [`Control`] requests for the loop, which applies them to the
//! runtime between frames ([`apply`], through [`Runtime::command`]) and answers service calls.
//!
//! A prompt string names one object per `;`-separated prompt (`"the dog; the red ball"` is two,
//! [`commands::split_prompts`]): it replaces every object of the stream, ids 0, 1, ... in order, as
//! the `prompt` command does. The node's `prompt` topic and `set_prompt` service address every
//! camera (stream) of the node, one after the other; a named camera's own `prompt` topic and
//! `set_prompt` service only that camera. Prompts are checked before they reach the loop
//! ([`commands::check_prompt`]: the command protocol's rules); the object limit (`--max-objects`)
//! is the runtime's to check, and its refusal reaches the caller. Until the runtime exists (the node waits for the first image, then
//! builds the engines for its size) a service call fails at once with a message saying so; a topic
//! prompt is queued and applied once the engines are ready. A service call the loop cannot answer
//! within the timeout fails as busy, and the request is dropped unapplied when the loop reaches
//! it, so a prompt the caller was told failed never takes effect later: the loop and the caller
//! each claim the request ([`ReplyTo::claim`]) and only the first does what it meant to (a loop
//! that claimed it just before the timeout is waited for, however long the prompt takes). When the
//! node ends, the requests still queued are dropped and their callers told at once that the node is
//! shutting down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use ros2_client::{Server, Subscription};

use crate::pipeline::commands::{self, Command, Limits, Reply, Request, Streams};
use crate::pipeline::live::Runtime;
use crate::ros2::msgs::{SetPromptRequest, SetPromptResponse, StringMsg};

/// The answer to a prompt request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the prompt is now active.
    pub success: bool,
    /// The objects now tracked (id and prompt each), or why the request was refused.
    pub message: String,
}

impl Outcome {
    fn failed(message: impl Into<String>) -> Self {
        Outcome {
            success: false,
            message: message.into(),
        }
    }
}

/// Where a [`Control`] sends its [`Outcome`], and who decided what becomes of it.
#[derive(Debug)]
pub struct ReplyTo {
    /// Channel to the waiting caller.
    pub tx: SyncSender<Outcome>,
    /// Set by the first of the loop (about to apply the request) and the caller (giving up on it).
    pub claimed: Arc<AtomicBool>,
}

impl ReplyTo {
    /// A request's reply channel and the caller's end: wait on it with [`wait_for_outcome`].
    pub fn new() -> (Self, Receiver<Outcome>, Arc<AtomicBool>) {
        let (tx, rx) = sync_channel(1);
        let claimed = Arc::new(AtomicBool::new(false));
        (
            ReplyTo {
                tx,
                claimed: claimed.clone(),
            },
            rx,
            claimed,
        )
    }

    /// The loop's claim: true when the caller still waits (the loop then applies the request and
    /// answers), false when the caller gave up first (the request is dropped unapplied).
    pub fn claim(&self) -> bool {
        !self.claimed.swap(true, Ordering::SeqCst)
    }
}

/// The caller's side: the loop's outcome within `timeout`; after it, "busy" if the caller's claim
/// comes first (the loop will drop the request), else the outcome of the loop, which is applying it.
/// A request dropped unanswered (the node dropped its queue to shut down) fails at once as such.
pub fn wait_for_outcome(
    rx: &Receiver<Outcome>,
    claimed: &AtomicBool,
    timeout: Duration,
) -> Outcome {
    match rx.recv_timeout(timeout) {
        Ok(o) => return o,
        Err(RecvTimeoutError::Disconnected) => return Outcome::failed("the node is shutting down"),
        Err(RecvTimeoutError::Timeout) => {}
    }
    if !claimed.swap(true, Ordering::SeqCst) {
        return Outcome::failed(format!(
            "busy: the loop did not answer within {:.1} s; try again",
            timeout.as_secs_f64()
        ));
    }
    rx.recv()
        .unwrap_or_else(|_| Outcome::failed("the node is shutting down"))
}

/// A prompt for the loop.
#[derive(Debug)]
pub struct Control {
    /// The prompt string (one or several `;`-separated prompts), already checked by
    /// [`commands::check_prompt`].
    pub prompt: String,
    /// Where to answer (service calls); `None` for topic messages (outcomes are logged).
    pub reply: Option<ReplyTo>,
    /// The stream it addresses (a camera's own prompt topic); `None`: every stream.
    pub stream: Option<usize>,
}

/// Applies one request to the runtime and answers it (a request whose caller stopped waiting is
/// dropped unapplied, with a log line).
pub fn apply(rt: &mut Runtime, c: Control) {
    if let Some(r) = &c.reply {
        if !r.claim() {
            log::warn!(
                "set_prompt {:?} dropped: its caller stopped waiting",
                c.prompt
            );
            return;
        }
    }
    // One camera, or every open one (a camera that joins later starts with the
    // node-wide prompt: the runtime's join template).
    let n = match c.stream {
        Some(_) => 1,
        None => rt.streams().len(),
    };
    let reply = rt.command(&Request {
        id: None,
        stream: Some(c.stream.map_or(Streams::All, Streams::One)),
        command: Command::Prompt {
            prompt: c.prompt.clone(),
        },
    });
    let mut out = if reply.ok {
        Outcome {
            success: true,
            message: objects_set(&reply),
        }
    } else {
        let e = reply.error.unwrap_or_else(|| "refused".into());
        log::error!("prompt {:?} refused: {e}", c.prompt);
        Outcome::failed(e)
    };
    if out.success && n > 1 {
        out.message = format!("{} (on all {n} cameras)", out.message);
    }
    let waiting = rt.waiting().count();
    if out.success && c.stream.is_none() && waiting > 0 {
        out.message = format!(
            "{} ({waiting} camera(s) still waiting for their first image take it when they join)",
            out.message
        );
    }
    if out.success && c.stream.is_some_and(|k| rt.waiting().any(|w| w.0 == k)) {
        out.message = format!(
            "{} (the camera still waits for its first image: it starts with it when it joins)",
            out.message
        );
    }
    if let Some(r) = c.reply {
        // The caller waits for it (it lost the claim); a full or closed channel cannot happen.
        let _ = r.tx.try_send(out);
    }
}

/// The service's answer to an accepted prompt: `prompt set: object 0 "the dog"`, or with several
/// objects `prompt set: 2 objects: 0 "the dog", 1 "the red ball"`.
fn objects_set(reply: &Reply) -> String {
    let objects = reply.settings.as_ref().map_or(&[][..], |s| &s.objects[..]);
    let list: Vec<String> = objects
        .iter()
        .map(|o| format!("{} {:?}", o.id, o.prompt))
        .collect();
    match list.len() {
        1 => format!("prompt set: object {}", list[0]),
        n => format!("prompt set: {n} objects: {}", list.join(", ")),
    }
}

/// What the control thread needs.
pub struct ControlThread {
    /// The node's `prompt` topic (every camera).
    pub prompts: Subscription<StringMsg>,
    /// Named cameras' own `prompt` topics: stream, what to call it in logs (`prompt topic of camera
    /// NAME`), subscription.
    pub camera_prompts: Vec<(usize, String, Subscription<StringMsg>)>,
    /// The `set_prompt` service (every camera).
    pub server: Server<SetPromptRequest, SetPromptResponse>,
    /// Named cameras' own `set_prompt` services: stream, what to call it in logs, server.
    pub camera_servers: Vec<(usize, String, Server<SetPromptRequest, SetPromptResponse>)>,
    /// Requests to the loop.
    pub tx: SyncSender<Control>,
    /// Ends the thread.
    pub stop: Arc<AtomicBool>,
    /// Set once the runtime exists (before that, service calls fail at once).
    pub ready: Arc<AtomicBool>,
    /// How long a service call waits for the loop.
    pub timeout: Duration,
    /// Prompt limits.
    pub limits: Limits,
    /// Where the node waits for its first image (for the not-ready message).
    pub waiting_for: String,
}

impl ControlThread {
    /// Serves the topics and the service until `stop`.
    pub fn run(self) {
        while !self.stop.load(Ordering::Relaxed) {
            let mut busy = self.poll_topic(&self.prompts, None, "prompt topic");
            for (k, what, sub) in &self.camera_prompts {
                busy |= self.poll_topic(sub, Some(*k), what);
            }
            busy |= self.poll_service(&self.server, None, "set_prompt");
            for (k, what, server) in &self.camera_servers {
                busy |= self.poll_service(server, Some(*k), what);
            }
            if !busy {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Takes one message of a prompt topic addressing `stream` (`None`: every stream).
    fn poll_topic(&self, sub: &Subscription<StringMsg>, stream: Option<usize>, what: &str) -> bool {
        match sub.take() {
            Ok(Some((m, _))) => {
                match commands::check_prompt(&m.data, &self.limits) {
                    Ok(p) => {
                        log::info!("{what}: {p:?}");
                        let c = Control {
                            prompt: p.to_string(),
                            reply: None,
                            stream,
                        };
                        if let Err(e) = self.tx.try_send(c) {
                            log::error!("prompt {p:?} dropped: {}", queue_error(&e));
                        }
                    }
                    Err(e) => log::error!("{what}: {e}; ignored"),
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                log::error!("reading the {what}: {e:?}");
                false
            }
        }
    }

    /// Answers one call of a `set_prompt` service addressing `stream` (`None`: every stream).
    fn poll_service(
        &self,
        server: &Server<SetPromptRequest, SetPromptResponse>,
        stream: Option<usize>,
        what: &str,
    ) -> bool {
        let (id, req) = match server.receive_request() {
            Ok(Some(r)) => r,
            Ok(None) => return false,
            Err(e) => {
                log::error!("reading {what} requests: {e:?}");
                return false;
            }
        };
        let out = self.serve(&req.prompt, stream);
        if out.success {
            log::info!("{what} {:?}: success ({})", req.prompt, out.message);
        } else {
            log::error!("{what} {:?}: success false ({})", req.prompt, out.message);
        }
        let resp = SetPromptResponse {
            success: out.success,
            message: out.message,
        };
        if let Err(e) = server.send_response(id, resp) {
            log::error!("{what} reply: {e:?}");
        }
        true
    }

    fn serve(&self, prompt: &str, stream: Option<usize>) -> Outcome {
        if prompt.contains('\u{FFFD}') {
            return Outcome::failed(
                "the prompt is not valid UTF-8 text (or holds U+FFFD); send UTF-8".to_string(),
            );
        }
        let p = match commands::check_prompt(prompt, &self.limits) {
            Ok(p) => p,
            Err(e) => return Outcome::failed(e),
        };
        if !self.ready.load(Ordering::SeqCst) {
            return Outcome::failed(format!(
                "not ready: the engines are being built (or the node waits for the first image on \
                 {}); call again once masks are published",
                self.waiting_for
            ));
        }
        let (reply, rx, claimed) = ReplyTo::new();
        let c = Control {
            prompt: p.to_string(),
            reply: Some(reply),
            stream,
        };
        if let Err(e) = self.tx.try_send(c) {
            return Outcome::failed(queue_error(&e));
        }
        wait_for_outcome(&rx, &claimed, self.timeout)
    }
}

fn queue_error<T>(e: &TrySendError<T>) -> &'static str {
    match e {
        TrySendError::Full(_) => "busy: the loop's request queue is full; try again",
        TrySendError::Disconnected(_) => "the node is shutting down",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pipeline::commands::{ObjectInfo, Settings};

    #[test]
    fn prompt_checks() {
        let l = Limits::default();
        let check = commands::check_prompt;
        assert!(check("  ", &l).unwrap_err().contains("empty"));
        assert!(check(" ; ;", &l).unwrap_err().contains("empty"));
        let long = "x".repeat(l.max_prompt_bytes + 1);
        assert!(check(&long, &l).unwrap_err().contains("exceeds the limit"));
        assert!(check("a\u{7}b", &l).unwrap_err().contains("control"));
        assert_eq!(check("  a cup ", &l), Ok("a cup"));
        // Several objects, one per `;`-separated prompt.
        assert_eq!(check(" a cup; a dog ", &l), Ok("a cup; a dog"));
    }

    /// Exactly one of the loop and the caller decides: a caller told "busy" never sees the prompt
    /// applied, and a loop that claimed the request in time is waited for however long it takes.
    #[test]
    fn the_loop_or_the_caller_claims_a_request_never_both() {
        let short = Duration::from_millis(20);
        // The loop comes too late: busy, and the loop's claim fails (it drops the request).
        let (reply, rx, claimed) = ReplyTo::new();
        let o = wait_for_outcome(&rx, &claimed, short);
        assert!(!o.success && o.message.starts_with("busy"), "{o:?}");
        assert!(!reply.claim());
        // The loop claims in time and answers after the timeout: the caller gets its answer.
        let (reply, rx, claimed) = ReplyTo::new();
        let loop_side = std::thread::spawn(move || {
            assert!(reply.claim());
            std::thread::sleep(Duration::from_millis(100));
            reply
                .tx
                .try_send(Outcome {
                    success: true,
                    message: "prompt set".into(),
                })
                .unwrap();
        });
        // Let the loop claim first.
        while !claimed.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let o = wait_for_outcome(&rx, &claimed, short);
        assert_eq!(
            o,
            Outcome {
                success: true,
                message: "prompt set".into()
            }
        );
        loop_side.join().unwrap();
        // The loop claimed and then went away without answering: not "busy", and no hang.
        let (reply, rx, claimed) = ReplyTo::new();
        assert!(reply.claim());
        drop(reply);
        let o = wait_for_outcome(&rx, &claimed, short);
        assert!(!o.success && o.message.contains("shutting down"), "{o:?}");
    }

    /// A request the node drops unanswered at shutdown (its queue dropped with the request in it)
    /// fails at once as "shutting down", neither "busy" nor after the whole timeout.
    #[test]
    fn a_dropped_request_fails_at_once_as_shutting_down() {
        let long = Duration::from_secs(30);
        let shutting_down = |o: &Outcome| !o.success && o.message == "the node is shutting down";
        // Its reply channel dropped before anyone claimed it.
        let (reply, rx, claimed) = ReplyTo::new();
        drop(reply);
        let t = std::time::Instant::now();
        let o = wait_for_outcome(&rx, &claimed, long);
        assert!(shutting_down(&o), "{o:?}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // Queued for the loop, then the loop's queue dropped (what the node does when it ends).
        let (tx, queue) = sync_channel::<Control>(4);
        let (reply, rx, claimed) = ReplyTo::new();
        tx.try_send(Control {
            prompt: "a cup".into(),
            reply: Some(reply),
            stream: None,
        })
        .unwrap();
        let caller = std::thread::spawn(move || {
            let t = std::time::Instant::now();
            (wait_for_outcome(&rx, &claimed, long), t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(queue);
        let (o, waited) = caller.join().unwrap();
        assert!(shutting_down(&o), "{o:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        // And a request sent after that is refused the same way.
        let (reply, _rx, _claimed) = ReplyTo::new();
        let e = tx
            .try_send(Control {
                prompt: "a dog".into(),
                reply: Some(reply),
                stream: None,
            })
            .unwrap_err();
        assert_eq!(queue_error(&e), "the node is shutting down");
    }

    #[test]
    fn accepted_prompts_list_their_objects() {
        let mut settings = Settings {
            objects: vec![ObjectInfo {
                id: 0,
                prompt: "a cup".into(),
            }],
            ..Settings::default()
        };
        let mut reply = Reply::error(None, "");
        reply.ok = true;
        reply.error = None;
        reply.settings = Some(settings.clone());
        assert_eq!(objects_set(&reply), "prompt set: object 0 \"a cup\"");
        settings.objects.push(ObjectInfo {
            id: 1,
            prompt: "a dog".into(),
        });
        reply.settings = Some(settings);
        assert_eq!(
            objects_set(&reply),
            "prompt set: 2 objects: 0 \"a cup\", 1 \"a dog\""
        );
    }
}
