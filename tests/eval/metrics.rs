//! J, F and sequence statistics: hand-derived cases and values produced by the official DAVIS 2017
//! toolkit (davisvideochallenge/davis2017-evaluation, `db_eval_iou`, `db_eval_boundary`,
//! `db_statistics`; numpy 2 / OpenCV / scikit-image) on masks both sides generate from the same
//! integer formulas.

use referdino::eval::metrics::{boundary_radius, jaccard, score_frame, seg2bmap, FrameScorer};
use referdino::eval::stats::statistics;

const TOL: f64 = 1e-12;

fn square(w: usize, h: usize, x0: usize, y0: usize, side: usize) -> Vec<u8> {
    rect(w, h, x0, y0, x0 + side, y0 + side)
}

/// Pixels with `x0 <= x < x1`, `y0 <= y < y1`.
fn rect(w: usize, h: usize, x0: usize, y0: usize, x1: usize, y1: usize) -> Vec<u8> {
    let mut m = vec![0u8; w * h];
    for y in y0..y1 {
        for x in x0..x1 {
            m[y * w + x] = 1;
        }
    }
    m
}

fn ellipse(w: usize, h: usize, cx: i64, cy: i64, a: i64, b: i64) -> Vec<u8> {
    let mut m = vec![0u8; w * h];
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let v = (x - cx).pow(2) * b * b + (y - cy).pow(2) * a * a <= a * a * b * b;
            m[y as usize * w + x as usize] = v as u8;
        }
    }
    m
}

fn noise(w: usize, h: usize, seed: u64, pct: u64) -> Vec<u8> {
    (0..(w * h) as u64)
        .map(|i| {
            let v = (i * 1_103_515_245 + seed) % (1 << 31);
            (((v >> 8) % 100) < pct) as u8
        })
        .collect()
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= TOL, "{what}: got {a}, expected {b}");
}

#[test]
fn radius_follows_bound_th_and_diagonal() {
    // ceil(0.008 * sqrt(854^2 + 480^2)) = ceil(7.837) = 8; ceil(0.008 * 141.42) = 2.
    assert_eq!(boundary_radius(854, 480), 8);
    assert_eq!(boundary_radius(100, 100), 2);
    assert_eq!(boundary_radius(10, 10), 1);
}

#[test]
fn square_boundary_is_the_ring_offset_towards_the_origin() {
    // An n x n square's boundary is the ring of the (n+1) x (n+1) square one pixel up-left: 4n pixels.
    let (w, h) = (20, 20);
    let m = square(w, h, 5, 6, 4);
    let mut b = vec![0u8; w * h];
    assert_eq!(seg2bmap(&m, w, h, &mut b), 16);
    for y in 0..h {
        for x in 0..w {
            let on_ring = (5..=9).contains(&y)
                && (4..=8).contains(&x)
                && (y == 5 || y == 9 || x == 4 || x == 8);
            assert_eq!(b[y * w + x] == 1, on_ring, "pixel ({x}, {y})");
        }
    }
    // A full mask has no boundary at all (edges of the image are not boundaries).
    assert_eq!(seg2bmap(&vec![1u8; w * h], w, h, &mut b), 0);
}

#[test]
fn identical_masks_score_one() {
    let (w, h) = (100, 100);
    let m = square(w, h, 20, 20, 10);
    let s = score_frame(&m, &m, w, h).unwrap();
    assert_eq!((s.j, s.f), (1.0, 1.0));
}

#[test]
fn shifted_square_by_one_pixel() {
    // Intersection 9x10, union 110: J = 9/11. Every boundary pixel is within 1 < r = 2: F = 1.
    let (w, h) = (100, 100);
    let s = score_frame(&square(w, h, 21, 20, 10), &square(w, h, 20, 20, 10), w, h).unwrap();
    close(s.j, 9.0 / 11.0, "J");
    close(s.f, 1.0, "F");
}

#[test]
fn shifted_square_beyond_the_tolerance() {
    // 10x10 squares shifted 3 pixels right, r = 2. J = 70 / 130.
    // Each 11x11 boundary ring has 40 pixels; matched: top and bottom rows except the outer corner
    // column (10 + 10), plus 2 pixels at each end of the inner side column (4): 24 of 40 on both
    // sides, so precision = recall = F = 0.6.
    let (w, h) = (100, 100);
    let s = score_frame(&square(w, h, 23, 20, 10), &square(w, h, 20, 20, 10), w, h).unwrap();
    close(s.j, 7.0 / 13.0, "J");
    close(s.f, 0.6, "F");
}

#[test]
fn disjoint_far_squares_score_zero() {
    let (w, h) = (100, 100);
    let s = score_frame(&square(w, h, 60, 60, 10), &square(w, h, 10, 10, 10), w, h).unwrap();
    assert_eq!((s.j, s.f), (0.0, 0.0));
}

#[test]
fn empty_mask_conventions() {
    let (w, h) = (50, 40);
    let empty = vec![0u8; w * h];
    let sq = square(w, h, 10, 10, 5);
    let both = score_frame(&empty, &empty, w, h).unwrap();
    assert_eq!((both.j, both.f), (1.0, 1.0), "both empty");
    let miss = score_frame(&empty, &sq, w, h).unwrap();
    assert_eq!((miss.j, miss.f), (0.0, 0.0), "prediction empty");
    let extra = score_frame(&sq, &empty, w, h).unwrap();
    assert_eq!((extra.j, extra.f), (0.0, 0.0), "ground truth empty");
    // A full prediction against an empty truth: J = 0, but neither has a boundary, so F = 1.
    let full = score_frame(&vec![1u8; w * h], &empty, w, h).unwrap();
    assert_eq!((full.j, full.f), (0.0, 1.0), "full vs empty");
}

#[test]
fn single_pixels() {
    let (w, h) = (100, 100);
    let px = |x: usize, y: usize| {
        let mut m = vec![0u8; w * h];
        m[y * w + x] = 1;
        m
    };
    let same = score_frame(&px(50, 50), &px(50, 50), w, h).unwrap();
    assert_eq!((same.j, same.f), (1.0, 1.0));
    // Disjoint pixels one apart: no overlap, but both 2x2 boundary rings are within r = 2.
    let near = score_frame(&px(51, 50), &px(50, 50), w, h).unwrap();
    assert_eq!((near.j, near.f), (0.0, 1.0));
    let far = score_frame(&px(60, 50), &px(50, 50), w, h).unwrap();
    assert_eq!((far.j, far.f), (0.0, 0.0));
}

#[test]
fn jaccard_counts_any_nonzero_as_foreground() {
    let a = [0u8, 3, 255, 0];
    let b = [0u8, 1, 0, 7];
    close(jaccard(&a, &b).unwrap(), 1.0 / 3.0, "J");
}

#[test]
fn mismatched_sizes_are_errors_not_panics() {
    assert!(jaccard(&[0, 1], &[0, 1, 1]).is_err());
    let mut s = FrameScorer::new(4, 4).unwrap();
    let e = s.score(&[0u8; 15], &[0u8; 16]).unwrap_err().to_string();
    assert!(e.contains("15") && e.contains("4x4"), "{e}");
    assert!(FrameScorer::new(0, 4).is_err());
}

#[test]
fn matches_the_davis_toolkit() {
    // (name, J, F) from the official toolkit on the same masks (see module docs).
    let (w, h) = (854, 480);
    let e = ellipse(w, h, 400, 240, 150, 90);
    type Case = (&'static str, Vec<u8>, Vec<u8>, usize, usize, f64, f64);
    let cases: Vec<Case> = vec![
        (
            "ellipse_vs_shifted",
            e.clone(),
            ellipse(w, h, 412, 233, 150, 90),
            w,
            h,
            0.8673217590552569,
            0.5134854771784232,
        ),
        (
            "ellipse_vs_noisy",
            e.clone(),
            xor(&e, &noise(w, h, 12345, 5)),
            w,
            h,
            0.6623938655959981,
            0.07980852671948045,
        ),
        (
            "rect_vs_ellipse",
            rect(w, h, 250, 150, 550, 330),
            e.clone(),
            w,
            h,
            0.7846931595126106,
            0.42815814850530376,
        ),
        (
            "noise_vs_noise",
            noise(w, h, 1, 50),
            noise(w, h, 987654321, 50),
            w,
            h,
            0.4082865448447905,
            1.0,
        ),
        (
            "small_ellipse_vs_rect",
            ellipse(53, 37, 26, 18, 15, 10),
            rect(53, 37, 12, 9, 40, 30),
            53,
            37,
            0.7642140468227425,
            0.5097439816583874,
        ),
        (
            "small_edge_touching",
            rect(53, 37, 30, 0, 53, 37),
            rect(53, 37, 28, 5, 53, 37),
            53,
            37,
            0.8043715846994536,
            0.06315789473684211,
        ),
    ];
    for (name, gt, pred, w, h, j, f) in cases {
        let s = score_frame(&pred, &gt, w, h).unwrap();
        close(s.j, j, &format!("{name} J"));
        close(s.f, f, &format!("{name} F"));
    }
}

#[test]
fn statistics_hand_derived() {
    // n = 8: bin edges round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7]; bin 0 = frames 0..=2 (all 1),
    // bin 3 = frames 5..=7 (all 0): decay 1. Recall counts > 0.5 strictly.
    let s = statistics(&[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!((s.mean, s.recall, s.decay), (0.5, 0.5, 1.0));
    let s = statistics(&[0.5, 0.5, 0.5]);
    assert_eq!((s.mean, s.recall, s.decay), (0.5, 0.0, 0.0));
    let s = statistics(&[0.3]);
    assert_eq!((s.mean, s.recall, s.decay), (0.3, 0.0, 0.0));
    assert!(statistics(&[]).mean.is_nan());
}

#[test]
fn statistics_match_the_davis_toolkit() {
    let cases: Vec<(Vec<f64>, f64, f64, f64)> = vec![
        (
            vec![0.9, 0.2, 0.7, 0.4, 0.6, 0.55, 0.3],
            0.5214285714285715,
            0.5714285714285714,
            0.17499999999999993,
        ),
        (vec![0.1, 0.9], 0.5, 0.5, -0.8),
        (
            (0..23).map(|i| 1.0 - i as f64 / 22.0).collect(),
            0.49999999999999994,
            0.4782608695652174,
            0.75,
        ),
    ];
    for (v, m, r, d) in cases {
        let s = statistics(&v);
        assert!((s.mean - m).abs() < 1e-12, "mean {v:?}: {} vs {m}", s.mean);
        assert!((s.recall - r).abs() < 1e-12, "recall {v:?}");
        assert!(
            (s.decay - d).abs() < 1e-12,
            "decay {v:?}: {} vs {d}",
            s.decay
        );
    }
}

#[test]
fn sequence_scoring_is_frame_ordered() {
    use referdino::eval::score_sequence;
    let (w, h) = (100, 100);
    let gt: Vec<Vec<u8>> = (0..5).map(|_| square(w, h, 20, 20, 10)).collect();
    let pred: Vec<Vec<u8>> = (0..5).map(|t| square(w, h, 20 + t, 20, 10)).collect();
    let s = score_sequence(&pred, &gt, w, h).unwrap();
    for (t, f) in s.iter().enumerate() {
        let t = t as f64;
        close(f.j, (10.0 - t) * 10.0 / ((10.0 + t) * 10.0), "J");
    }
    assert!(score_sequence(&pred[..4], &gt, w, h).is_err());
}

/// Direct transcription of the boundary and F definitions (no runs, no bit planes, no word tricks),
/// to check the fast paths on awkward sizes: widths below and around the 8-pixel word, 1-pixel
/// images, masks touching every edge.
fn reference_f(pred: &[u8], gt: &[u8], w: usize, h: usize) -> f64 {
    let bmap = |m: &[u8]| -> Vec<bool> {
        let at = |y: usize, x: usize| m[y * w + x] != 0;
        let mut b = vec![false; w * h];
        for y in 0..h {
            for x in 0..w {
                b[y * w + x] = match (y + 1 < h, x + 1 < w) {
                    (true, true) => {
                        at(y, x) != at(y, x + 1)
                            || at(y, x) != at(y + 1, x)
                            || at(y, x) != at(y + 1, x + 1)
                    }
                    (false, true) => at(y, x) != at(y, x + 1),
                    (true, false) => at(y, x) != at(y + 1, x),
                    (false, false) => false,
                };
            }
        }
        b
    };
    let (bp, bg) = (bmap(pred), bmap(gt));
    let r = boundary_radius(w, h) as i64;
    let near = |b: &[bool], y: usize, x: usize| {
        (-r..=r).any(|dy| {
            (-r..=r).any(|dx| {
                let (yy, xx) = (y as i64 + dy, x as i64 + dx);
                dx * dx + dy * dy <= r * r
                    && (0..h as i64).contains(&yy)
                    && (0..w as i64).contains(&xx)
                    && b[yy as usize * w + xx as usize]
            })
        })
    };
    let (np, ng) = (
        bp.iter().filter(|&&v| v).count(),
        bg.iter().filter(|&&v| v).count(),
    );
    let (p, rc) = match (np, ng) {
        (0, 0) => (1.0, 1.0),
        (0, _) => (1.0, 0.0),
        (_, 0) => (0.0, 1.0),
        _ => {
            let mp = (0..w * h)
                .filter(|&i| bp[i] && near(&bg, i / w, i % w))
                .count();
            let mg = (0..w * h)
                .filter(|&i| bg[i] && near(&bp, i / w, i % w))
                .count();
            (mp as f64 / np as f64, mg as f64 / ng as f64)
        }
    };
    if p + rc == 0.0 {
        0.0
    } else {
        2.0 * p * rc / (p + rc)
    }
}

#[test]
fn fast_boundary_matches_the_definition_on_awkward_sizes() {
    let mut seed = 99u64;
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as u32
    };
    for &(w, h) in &[
        (1, 1),
        (1, 7),
        (7, 1),
        (8, 3),
        (9, 4),
        (15, 6),
        (16, 9),
        (17, 17),
        (33, 20),
        (130, 12),
    ] {
        for density in [2u32, 20, 50, 90] {
            let gen = |rnd: &mut dyn FnMut() -> u32| -> Vec<u8> {
                (0..w * h)
                    .map(|_| {
                        if rnd() % 100 < density {
                            (rnd() % 255 + 1) as u8
                        } else {
                            0
                        }
                    })
                    .collect()
            };
            let (p, g) = (gen(&mut rnd), gen(&mut rnd));
            let mut b = vec![0u8; w * h];
            let n = seg2bmap(&p, w, h, &mut b);
            assert_eq!(n, b.iter().filter(|&&v| v == 1).count());
            let got = FrameScorer::new(w, h).unwrap().boundary_f(&p, &g).unwrap();
            let want = reference_f(&p, &g, w, h);
            assert!(
                (got - want).abs() < 1e-12,
                "{w}x{h} density {density}: {got} vs {want}"
            );
        }
    }
}
