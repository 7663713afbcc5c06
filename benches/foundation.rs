//! Foundation benchmarks: loading the 14 MB `referdino-tiny` checkpoint in both formats (read,
//! parse, f32 conversion, alias resolution, LoRA folding) and tokenizer throughput.
//!
//! `cargo bench --bench foundation`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use referdino::text::Tokenizer;
use referdino::weights::Checkpoint;
use std::hint::black_box;
use std::path::Path;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/referdino-tiny")
        .join(name)
}

fn load(c: &mut Criterion) {
    let mut g = c.benchmark_group("checkpoint_load_tiny_14MB");
    g.sample_size(20);
    for name in ["weights.safetensors", "checkpoint.pth"] {
        let p = fixture(name);
        let bytes = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(name, |b| {
            b.iter(|| black_box(Checkpoint::load(&p).unwrap()))
        });
    }
    g.finish();
}

fn tokenize(c: &mut Criterion) {
    let tok = Tokenizer::bundled().unwrap();
    let mut g = c.benchmark_group("tokenizer");
    let short = "the person on the left holding a red cup";
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_short_prompt", |b| {
        b.iter(|| black_box(tok.encode(black_box(short), 256).unwrap()))
    });
    let long = "the man in a red shirt standing next to the blue car. ".repeat(40);
    g.bench_function("encode_long_prompt_truncated_256", |b| {
        b.iter(|| black_box(tok.encode(black_box(&long), 256).unwrap()))
    });
    g.finish();
    c.bench_function("tokenizer_bundled_load", |b| {
        b.iter(|| black_box(Tokenizer::bundled().unwrap()))
    });
}

criterion_group!(benches, load, tokenize);
criterion_main!(benches);
