//! `referdino tokenize`: shows what the text engine will be fed for a prompt.

use crate::error::{Error, Result};
use crate::text::{demo_normalize, Tokenizer, MAX_TEXT_LEN};
use clap::Args;
use std::ffi::OsString;
use std::path::PathBuf;

/// Arguments of `referdino tokenize`.
#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// The referring expression, e.g. "the person holding a red cup".
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<OsString>,
    /// Read the prompt from a file (UTF-8) instead.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Feed the prompt as the official eval scripts do (no lower-casing/whitespace collapsing
    /// before the '.' rule). Default: the official demo's normalisation.
    #[arg(long)]
    pub raw: bool,
    /// Token cap (the model's max_text_len), 3 to 256.
    #[arg(long, default_value_t = MAX_TEXT_LEN)]
    pub max_len: usize,
    /// A tokenizer.json to use instead of the bundled bert-base-uncased one.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Print JSON (ids, masks, position ids) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the subcommand.
pub fn run(args: TokenizeArgs) -> Result<()> {
    // The attention mask is max_len² bools: an unbounded cap let one flag allocate gigabytes.
    crate::limits::check_range(
        "--max-len",
        args.max_len,
        crate::limits::MIN_MAX_TEXT,
        MAX_TEXT_LEN,
    )
    .map_err(|e| Error::Text(e.to_string()))?;
    let bytes: Vec<u8> = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.as_encoded_bytes().to_vec(),
        (None, Some(f)) => std::fs::read(f).map_err(|e| Error::io(f, e))?,
        (None, None) => {
            return Err(Error::Text(
                "give --prompt TEXT or --prompt-file PATH".into(),
            ))
        }
    };
    let prompt = std::str::from_utf8(&bytes).map_err(|e| {
        Error::Text(format!(
            "prompt is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })?;
    let tok = match &args.tokenizer {
        Some(p) => Tokenizer::from_file(p)?,
        None => Tokenizer::bundled()?,
    };
    let enc = if args.raw {
        if prompt.trim().is_empty() {
            return Err(Error::Text("prompt is empty".into()));
        }
        tok.encode(prompt, args.max_len)?
    } else {
        tok.encode_prompt(prompt, args.max_len)?
    };
    if args.json {
        let rows: Vec<String> = (0..enc.len).map(|i| enc.mask_row_string(i)).collect();
        let v = serde_json::json!({
            "prompt": prompt,
            "normalized": if args.raw { prompt.to_string() } else { demo_normalize(prompt) },
            "caption": enc.caption,
            "len": enc.len,
            "truncated": enc.truncated,
            "tokens": enc.tokens,
            "input_ids": enc.input_ids,
            "attention_mask": enc.attention_mask,
            "token_type_ids": enc.token_type_ids,
            "position_ids": enc.position_ids,
            "text_self_attention_mask": rows,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| Error::Other(e.to_string()))?
        );
    } else {
        println!("caption  {:?}", enc.caption);
        println!(
            "tokens   {}{}",
            enc.len,
            if enc.truncated {
                " (truncated to max_len)"
            } else {
                ""
            }
        );
        println!(
            "{:>4}  {:<16} {:>6} {:>4}  mask row",
            "i", "token", "id", "pos"
        );
        for i in 0..enc.len {
            println!(
                "{:>4}  {:<16} {:>6} {:>4}  {}",
                i,
                enc.tokens[i],
                enc.input_ids[i],
                enc.position_ids[i],
                enc.mask_row_string(i)
            );
        }
    }
    Ok(())
}
