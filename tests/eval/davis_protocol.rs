//! The official Ref-DAVIS17 protocol (DAVIS unsupervised evaluation per annotator, averaged) on a
//! small hand-made DAVIS folder. Expected figures come from the official toolkit
//! (davis2017-evaluation `DAVISEvaluation(task="unsupervised")` + the ReferDINO `eval_davis.py`
//! averaging) run on the very same files (set `REFERDINO_KEEP_DAVIS=DIR` to write them there).

use std::path::Path;

use referdino::eval::davis_protocol::{evaluate_ref_davis, evaluate_unsupervised};
use referdino::output::png::write_palette_png;

const W: usize = 80;
const H: usize = 60;

fn rect(l: &mut [u8], x0: usize, y0: usize, x1: usize, y1: usize, v: u8) {
    for y in y0..y1 {
        for x in x0..x1 {
            l[y * W + x] = v;
        }
    }
}

/// Ground-truth labels of sequence `s`, frame `t`: object 1 a moving block, object 2 a static
/// block (seqa only), void (255) a band on object 1's right edge.
fn gt(s: usize, t: usize) -> Vec<u8> {
    let mut l = vec![0u8; W * H];
    if s == 0 {
        rect(&mut l, 10 + 2 * t, 10, 30 + 2 * t, 30, 1);
        rect(&mut l, 30 + 2 * t, 10, 32 + 2 * t, 30, 255);
        rect(&mut l, 50, 35, 70, 55, 2);
    } else if t < 3 {
        rect(&mut l, 20, 20 + 3 * t, 45, 40 + 3 * t, 1);
    }
    l
}

fn frames(s: usize) -> usize {
    if s == 0 {
        5
    } else {
        4
    }
}

/// Predicted labels of annotator `a`.
fn pred(a: usize, s: usize, t: usize) -> Vec<u8> {
    let mut l = vec![0u8; W * H];
    match (a, s) {
        // Exact, object ids swapped (matching must undo the swap); void band predicted too.
        (0, 0) => {
            rect(&mut l, 10 + 2 * t, 10, 32 + 2 * t, 30, 2);
            rect(&mut l, 50, 35, 70, 55, 1);
        }
        (0, 1) if t < 3 => rect(&mut l, 20, 20 + 3 * t, 45, 40 + 3 * t, 1),
        // Object 1 shifted 3 px down, object 2 missed; seqb predicted in every frame.
        (1, 0) => rect(&mut l, 10 + 2 * t, 13, 30 + 2 * t, 33, 1),
        (1, 1) => rect(&mut l, 20, 20 + 3 * t.min(2), 45, 40 + 3 * t.min(2), 1),
        // Three proposals: a distractor first, then the two objects slightly off.
        (2, 0) => {
            rect(&mut l, 0, 45, 20, 60, 1);
            rect(&mut l, 12 + 2 * t, 10, 30 + 2 * t, 30, 2);
            rect(&mut l, 50, 36, 70, 56, 3);
        }
        (2, 1) if t.is_multiple_of(2) => rect(&mut l, 22, 20 + 3 * t, 45, 42 + 3 * t, 1),
        // Nothing at all.
        _ => {}
    }
    l
}

fn build(root: &Path) {
    let davis = root.join("DAVIS");
    std::fs::create_dir_all(davis.join("ImageSets/2017")).unwrap();
    std::fs::write(davis.join("ImageSets/2017/val.txt"), "seqa\nseqb\n").unwrap();
    for (s, name) in ["seqa", "seqb"].iter().enumerate() {
        for t in 0..frames(s) {
            let f = format!("{t:05}");
            let jpg = davis.join("JPEGImages/480p").join(name);
            std::fs::create_dir_all(&jpg).unwrap();
            image::RgbImage::from_pixel(W as u32, H as u32, image::Rgb([90, 90, 90]))
                .save(jpg.join(format!("{f}.jpg")))
                .unwrap();
            let ann = davis
                .join("Annotations_unsupervised/480p")
                .join(name)
                .join(format!("{f}.png"));
            write_palette_png(&ann, W, H, &gt(s, t)).unwrap();
            for a in 0..4 {
                let p = root
                    .join(format!("results/anno_{a}"))
                    .join(name)
                    .join(format!("{f}.png"));
                write_palette_png(&p, W, H, &pred(a, s, t)).unwrap();
            }
        }
    }
}

/// (J&F, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay) per annotator, from the toolkit.
const TOOLKIT: [[f64; 7]; 4] = include!("davis_protocol_expected.in");

#[test]
fn ref_davis_protocol_matches_the_toolkit() {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::env::var_os("REFERDINO_KEEP_DAVIS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    build(&root);
    let r = evaluate_ref_davis(&root.join("DAVIS"), &root.join("results"), "val").unwrap();
    for (a, (t, want)) in r.annotators.iter().zip(TOOLKIT).enumerate() {
        let g = t.global;
        let got = [
            g.JF_mean, g.J_mean, g.J_recall, g.J_decay, g.F_mean, g.F_recall, g.F_decay,
        ];
        for (k, (x, y)) in got.iter().zip(want).enumerate() {
            assert!(
                (x - y).abs() < 1e-9,
                "annotator {a} column {k}: {x} vs toolkit {y}"
            );
        }
    }
    let mean_jf = TOOLKIT.iter().map(|r| r[0]).sum::<f64>() / 4.0;
    assert!((r.average.JF_mean - mean_jf).abs() < 1e-9);
    // Annotator 0 is exact up to the id swap: the assignment undoes it.
    assert_eq!(r.annotators[0].global.JF_mean, 1.0);
    assert_eq!(r.annotators[0].objects.len(), 3);
}

#[test]
fn protocol_errors_name_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    std::fs::remove_file(tmp.path().join("results/anno_1/seqb/00002.png")).unwrap();
    let e = evaluate_unsupervised(
        &tmp.path().join("DAVIS"),
        &tmp.path().join("results/anno_1"),
        "val",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("seqb") && e.contains("00002.png"), "{e}");
    build(tmp.path());
    std::fs::remove_dir_all(tmp.path().join("results/anno_3")).unwrap();
    let e = evaluate_ref_davis(
        &tmp.path().join("DAVIS"),
        &tmp.path().join("results"),
        "val",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("anno_3") && e.contains("missing"), "{e}");
    // A subset listing nothing is an error, not a NaN score; a listed name that leaves the
    // dataset is refused before anything is read.
    let davis = tmp.path().join("DAVIS");
    let anno0 = tmp.path().join("results/anno_0");
    std::fs::write(davis.join("ImageSets/2017/empty.txt"), "\n  \n").unwrap();
    let e = evaluate_unsupervised(&davis, &anno0, "empty")
        .unwrap_err()
        .to_string();
    assert!(e.contains("lists no sequences"), "{e}");
    std::fs::write(
        davis.join("ImageSets/2017/escape.txt"),
        "seqa\n../../results/anno_0/seqa\n",
    )
    .unwrap();
    let e = evaluate_unsupervised(&davis, &anno0, "escape")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a plain file name"), "{e}");
}
