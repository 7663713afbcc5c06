//! Benchmark readers on the synthetic benchmark, RLE against pycocotools, and clear errors.

use referdino::eval::dataset::{Dataset, DatasetKind};
use referdino::eval::rle;
use referdino::eval::synth::{self, SynthSpec};

#[test]
fn ref_davis17_layout_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec::default();
    synth::write_ref_davis17(dir.path(), &spec).unwrap();
    let ds = Dataset::open(DatasetKind::RefDavis17, dir.path(), "valid").unwrap();
    assert_eq!(ds.videos.len(), 2);
    assert_eq!(ds.num_expressions(), 2 * 4 * spec.objects);
    assert!(ds.has_ground_truth());
    let v = &ds.videos[1];
    assert_eq!(v.name, "synth-01");
    assert_eq!(
        v.frames,
        ["00000", "00001", "00002", "00003", "00004", "00005"]
    );
    // Expression ids in numeric order: 4k + a is object k + 1, annotator a.
    let ids: Vec<&str> = v.expressions.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["0", "1", "2", "3", "4", "5", "6", "7"]);
    let e = &v.expressions[5];
    assert_eq!(
        (e.obj_ids.as_slice(), e.text.as_str()),
        (&[2u32][..], "a green box moving down")
    );
    let frames = ds.load_frames(v).unwrap();
    assert_eq!(frames.len(), 6);
    assert_eq!(frames[0].dimensions(), (96, 64));
    let gt = ds.ground_truth(v, e, 96, 64).unwrap().unwrap();
    for (t, m) in gt.iter().enumerate() {
        assert_eq!(m, &synth::square_mask(&spec, 1, 1, t), "frame {t}");
    }
    // The frame really shows the object where the annotation says: green inside the square.
    let (x0, y0) = synth::square_origin(1, 1, 0);
    let p = frames[0].get_pixel(x0 as u32 + 6, y0 as u32 + 6).0;
    assert!(p[1] > 150 && p[0] < 90 && p[2] < 90, "{p:?}");
}

#[test]
fn youtube_vos_layout_without_annotations_has_no_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    synth::write_ref_davis17(dir.path(), &SynthSpec::default()).unwrap();
    std::fs::remove_dir_all(dir.path().join("valid/Annotations")).unwrap();
    let ds = Dataset::open(DatasetKind::RefYoutubeVos, dir.path(), "valid").unwrap();
    assert!(!ds.has_ground_truth());
    let v = &ds.videos[0];
    assert!(ds
        .ground_truth(v, &v.expressions[0], 96, 64)
        .unwrap()
        .is_none());
}

#[test]
fn mevis_multi_object_target_is_the_union() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec {
        objects: 3,
        ..SynthSpec::default()
    };
    synth::write_mevis(dir.path(), &spec).unwrap();
    let ds = Dataset::open(DatasetKind::Mevis, dir.path(), "valid_u").unwrap();
    assert!(ds.has_ground_truth());
    let v = &ds.videos[0];
    let all = v.expressions.last().unwrap();
    assert_eq!(all.text, "all the squares");
    assert_eq!(all.obj_ids, [0, 1, 2]);
    let gt = ds.ground_truth(v, all, 96, 64).unwrap().unwrap();
    for (t, m) in gt.iter().enumerate() {
        let mut want = vec![0u8; 96 * 64];
        for k in 0..3 {
            for (w, s) in want.iter_mut().zip(synth::square_mask(&spec, 0, k, t)) {
                *w |= s;
            }
        }
        assert_eq!(m, &want, "frame {t}");
    }
    let one = ds
        .ground_truth(v, &v.expressions[1], 96, 64)
        .unwrap()
        .unwrap();
    assert_eq!(one[3], synth::square_mask(&spec, 0, 1, 3));
}

/// A 53x37 mask (an ellipse plus a corner block) and its COCO RLE from pycocotools 2.0
/// (`mask.encode(np.asfortranarray(m))`).
fn pycocotools_case() -> (Vec<u8>, &'static str) {
    let (w, h) = (53usize, 37usize);
    let mut m = vec![0u8; w * h];
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let inside = (x - 26).pow(2) * 100 + (y - 18).pow(2) * 225 <= 225 * 100;
            let block = y < 5 && x >= 40;
            m[y as usize * w + x as usize] = (inside || block) as u8;
        }
    }
    (
        m,
        "Y=1Q16L2M4N0O2N2O000O2O000000000O20N10000000001N10001N2N102LDLL25NNL54>00000000000000000000",
    )
}

#[test]
fn rle_matches_pycocotools() {
    let (m, s) = pycocotools_case();
    assert_eq!(m.iter().map(|&v| v as usize).sum::<usize>(), 532);
    let counts = rle::counts_from_string(s).unwrap();
    assert_eq!(rle::decode(&counts, 53, 37).unwrap(), m);
    assert_eq!(rle::encode_string(&m, 53, 37), s);
}

#[test]
fn rle_errors() {
    assert!(rle::counts_from_string("\u{1}").is_err());
    assert!(rle::decode(&[3, 4], 3, 3).is_err());
    // Hostile files: counts whose sum wraps to the mask size (a wrapping sum would pass the size
    // check and then run past the mask), a 13-group number, a difference that overflows i64.
    let half = 1u64 << 63;
    let e = rle::decode(&[0, half, half + 6], 3, 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 2^64"), "{e}");
    assert!(rle::decode(&[1, u64::MAX], 3, 2).is_err());
    let e = rle::counts_from_string("PPPPPPPPPPPP@")
        .unwrap_err()
        .to_string();
    assert!(e.contains("12 groups"), "{e}");
    // Runs 1, 1, then 33 times 2^59 - 1 ("ooooooooooo?"): from the fourth run on each is a
    // difference to the run two back, so the even runs grow by 2^59 - 1 and the 17th overflows.
    let deltas = format!("11{}", "ooooooooooo?".repeat(33));
    let e = rle::counts_from_string(&deltas).unwrap_err().to_string();
    assert!(e.contains("overflows"), "{e}");
    assert!(rle::counts_from_string(&format!("11{}", "ooooooooooo?".repeat(30))).is_ok());
}

#[test]
fn missing_and_inconsistent_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = Dataset::open(DatasetKind::RefDavis17, dir.path(), "valid")
        .unwrap_err()
        .to_string();
    assert!(e.contains("meta_expressions.json"), "{e}");

    synth::write_ref_davis17(dir.path(), &SynthSpec::default()).unwrap();
    let e = Dataset::open(DatasetKind::Mevis, dir.path(), "valid")
        .unwrap_err()
        .to_string();
    assert!(e.contains("valid/meta_expressions.json"), "{e}");

    // A missing annotation frame.
    std::fs::remove_file(dir.path().join("valid/Annotations/synth-00/00003.png")).unwrap();
    let ds = Dataset::open(DatasetKind::RefDavis17, dir.path(), "valid").unwrap();
    let v = &ds.videos[0];
    let e = ds
        .ground_truth(v, &v.expressions[0], 96, 64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("00003") && e.contains("synth-00"), "{e}");

    // A frame of another size.
    image::RgbImage::new(10, 10)
        .save(dir.path().join("valid/JPEGImages/synth-01/00002.jpg"))
        .unwrap();
    let e = ds.load_frames(&ds.videos[1]).unwrap_err().to_string();
    assert!(e.contains("10x10") && e.contains("00002"), "{e}");

    // A video without its frame folder.
    std::fs::remove_dir_all(dir.path().join("valid/JPEGImages/synth-01")).unwrap();
    let e = Dataset::open(DatasetKind::RefDavis17, dir.path(), "valid")
        .unwrap_err()
        .to_string();
    assert!(e.contains("synth-01") && e.contains("missing"), "{e}");

    // Broken JSON.
    std::fs::write(
        dir.path()
            .join("meta_expressions/valid/meta_expressions.json"),
        "{oops",
    )
    .unwrap();
    let e = Dataset::open(DatasetKind::RefDavis17, dir.path(), "valid")
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid JSON"), "{e}");
}
