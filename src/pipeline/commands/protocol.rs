//! The requests of the command protocol: the [`Command`]s on the wire, the [`Request`] a line parses
//! into, the protocol [`Limits`], and the parsing and validation of a line ([`parse_line`],
//! [`check_prompt`], [`split_prompts`]), or the [`Rejected`] line's reason.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
}
