//! The graph reads exactly the checkpoint's inference keys: every tensor the four engines ask for exists in
//! the official checkpoint, and every checkpoint key is read by some engine unless the official inference
//! never uses it either (listed in `weights::keymap::unused_at_inference`, with the reason there).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

use referdino::config::ModelConfig;
use referdino::graph::engines::{build_engines, declared_weights, ExportOptions, Geometry};
use referdino::onnx::Weights;
use referdino::tensor::{DType, Tensor};
use referdino::weights::keymap::{is_ignorable, unused_at_inference};
use referdino::weights::Checkpoint;

/// Records every key the graph asks for, and every declaration (key, shape) its scopes make.
struct Recording<'a> {
    inner: &'a Checkpoint,
    seen: RefCell<BTreeSet<String>>,
    declared: RefCell<BTreeSet<(String, Vec<usize>)>>,
}

impl Weights for Recording<'_> {
    fn tensor(&self, key: &str) -> referdino::Result<&Tensor> {
        self.seen.borrow_mut().insert(key.to_string());
        self.inner.tensor(key)
    }

    fn declare(&self, key: &str, shape: &[usize], _dtype: DType) {
        self.declared
            .borrow_mut()
            .insert((key.to_string(), shape.to_vec()));
    }
}

#[test]
fn graph_reads_exactly_the_inference_keys() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/referdino-tiny");
    let ck = Checkpoint::load(&dir.join("checkpoint.pth")).unwrap();
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let geo = Geometry {
        height: 64,
        width: 96,
        max_text: 8,
        window: 2,
    };
    let rec = Recording {
        inner: &ck,
        seen: RefCell::new(BTreeSet::new()),
        declared: RefCell::new(BTreeSet::new()),
    };
    build_engines(&rec, &cfg, &geo, &ExportOptions::default()).unwrap();
    // A declaration-only build (what the key map is derived from) declares exactly what a real build
    // declares, and every declared shape is the checkpoint's (a real build fails on any other).
    let dry: BTreeSet<(String, Vec<usize>)> = declared_weights(&cfg)
        .unwrap()
        .into_iter()
        .map(|d| (d.key, d.shape))
        .collect();
    let declared = rec.declared.into_inner();
    assert_eq!(dry, declared, "declaration-only and real builds differ");
    for (k, shape) in &declared {
        assert_eq!(ck.tensor(k).unwrap().shape(), &shape[..], "{k}");
    }
    let seen = rec.seen.into_inner();
    // Shared modules are stored once under several names: compare tensors, not names.
    let read: BTreeSet<&str> = seen.iter().map(|k| ck.canonical(k)).collect();
    let missing: Vec<&String> = seen.iter().filter(|k| !ck.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "the graph reads keys the checkpoint lacks: {missing:?}"
    );
    let unread: Vec<&str> = ck
        .keys()
        .into_iter()
        .filter(|k| !read.contains(ck.canonical(k)) && !is_ignorable(k) && !unused_at_inference(k))
        .collect();
    assert!(
        unread.is_empty(),
        "{} checkpoint keys no engine reads: {unread:?}",
        unread.len()
    );
    // The exclusion list must not hide keys the graph does read.
    let excluded_but_read: Vec<&String> = seen.iter().filter(|k| unused_at_inference(k)).collect();
    assert!(
        excluded_but_read.is_empty(),
        "listed as unused but read: {excluded_but_read:?}"
    );
}
