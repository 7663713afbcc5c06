//! Writes a random-weight checkpoint with the official key names (safetensors), for trying the CLI at
//! full size without the real weights: `cargo run --example random_checkpoint -- swin-t OUT.safetensors
//! [SEED]`. The float weights are those `referdino bench` uses (src/weights/random.rs, same seed → same file).

use referdino::config::ModelConfig;
use referdino::graph::swin::relative_position_index;
use referdino::tensor::Tensor;
use referdino::weights::keymap::{expected_keys, Kind};
use referdino::weights::random::random_weights;
use std::collections::BTreeMap;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, out) = match (args.first(), args.get(1)) {
        (Some(n), Some(o)) => (n.as_str(), std::path::PathBuf::from(o)),
        _ => return Err("usage: random_checkpoint swin-t|swin-b OUT.safetensors [SEED]".into()),
    };
    let seed: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let cfg = match name {
        "swin-t" => ModelConfig::swin_t(),
        "swin-b" => ModelConfig::swin_b(),
        other => return Err(format!("unknown configuration {other:?} (swin-t or swin-b)").into()),
    };
    let mut w: BTreeMap<_, _> = random_weights(&cfg, seed)?.into_iter().collect();
    // The random weights leave out integer buffers; a checkpoint carries them (Swin's
    // relative-position index of each window attention).
    for e in expected_keys(&cfg)? {
        if e.kind == Kind::Int && e.key.ends_with("relative_position_index") {
            let win = (e.shape[0] as f64).sqrt().round() as usize;
            let idx = relative_position_index(win).into_iter().map(|i| i as i64);
            w.insert(e.key.clone(), Tensor::from_i64(&e.shape, idx.collect())?);
        }
    }
    referdino::tensor::write_safetensors(&out, &w, None)?;
    println!("{} tensors → {}", w.len(), out.display());
    Ok(())
}
