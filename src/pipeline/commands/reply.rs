//! What a reply carries: the [`Settings`] commands change (with each object's [`ObjectInfo`]), the
//! [`RuntimeStats`] `status` reports (with the model's [`InputSize`]), the [`Reply`] line itself, and
//! the [`Controller`] that applies a request to the settings and builds its reply.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::protocol::{Command, ObjectId, Request, SelectMode};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::commands::{parse_line, Limits, Rejected};

    fn parse(s: &str) -> std::result::Result<Option<Request>, Rejected> {
        parse_line(s.as_bytes(), &Limits::default())
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
}
