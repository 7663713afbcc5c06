//! Overlays: colours, boxes, text, PNG + GIF output and the grid.

use referdino::output::overlay::{
    draw_overlay, draw_text, grid_image, mask_bbox, text_size, track_colour, write_sequence,
    OverlayStyle, Track,
};

#[test]
fn text_is_drawn_with_the_builtin_font() {
    let mut img = image::RgbImage::new(40, 12);
    draw_text(&mut img, 1, 1, "T1", [255, 255, 255], 1);
    // 'T' top row is five pixels, its stem is the middle column.
    for x in 1..6 {
        assert_eq!(img.get_pixel(x, 1).0, [255; 3]);
    }
    assert_eq!(img.get_pixel(3, 7).0, [255; 3]);
    assert_eq!(img.get_pixel(1, 7).0, [0; 3]);
    // 5x7 glyphs, one column apart, in 9-row lines (room for descenders).
    assert_eq!(text_size("T1", 1), (11, 9));
    assert_eq!(text_size("T1", 3), (33, 27));
    // 'g' drops two rows: its top row (row 0 of the glyph) lands on image row 3.
    let mut g = image::RgbImage::new(8, 12);
    draw_text(&mut g, 1, 1, "g", [255, 255, 255], 1);
    assert_eq!(g.get_pixel(1, 1).0, [0; 3]);
    assert_eq!(g.get_pixel(2, 3).0, [255; 3]);
    // Clipped drawing never panics.
    draw_text(&mut img, -5, 8, "clipped text", [255, 0, 0], 2);
}

#[test]
fn tracks_get_distinct_colours_and_boxes() {
    let colours: Vec<[u8; 3]> = (0..32).map(track_colour).collect();
    for i in 0..colours.len() {
        for j in 0..i {
            assert_ne!(colours[i], colours[j], "tracks {i} and {j}");
        }
    }
    let (w, h) = (64usize, 48usize);
    let mut m = vec![0u8; w * h];
    for y in 20..30 {
        for x in 10..25 {
            m[y * w + x] = 1;
        }
    }
    assert_eq!(mask_bbox(&m, w, h), Some([10, 20, 24, 29]));
    assert_eq!(mask_bbox(&vec![0; w * h], w, h), None);
    let frame = image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb([100, 100, 100]));
    let style = OverlayStyle {
        text_scale: 1,
        box_thickness: 1,
        ..Default::default()
    };
    let tracks = [Track {
        id: 0,
        mask: &m,
        mask_label: None,
        score: Some(0.9),
        bbox: None,
        label: None,
    }];
    let o = draw_overlay(&frame, &tracks, "", &style).unwrap();
    let c = track_colour(0);
    // Inside the mask: 50 % blend of grey and the track colour.
    let want: Vec<u8> = (0..3)
        .map(|k| ((100.0 + c[k] as f32) / 2.0).round() as u8)
        .collect();
    assert_eq!(o.get_pixel(15, 25).0.to_vec(), want);
    // Box edge in the track colour, outside untouched.
    assert_eq!(o.get_pixel(24, 25).0, c);
    assert_eq!(o.get_pixel(40, 40).0, [100; 3]);
    assert!(draw_overlay(
        &frame,
        &[Track {
            id: 1,
            mask: &m[..10],
            mask_label: None,
            score: None,
            bbox: None,
            label: None,
        }],
        "",
        &style
    )
    .is_err());
}

#[test]
fn sequence_gif_and_grid_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let frames: Vec<image::RgbImage> = (0..3)
        .map(|t| image::RgbImage::from_pixel(80, 60, image::Rgb([t * 60, 80, 120])))
        .collect();
    let gif = write_sequence(dir.path(), &frames, 100, 64).unwrap();
    assert!(dir.path().join("00002.png").is_file());
    let dec = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(
        std::fs::File::open(&gif).unwrap(),
    ))
    .unwrap();
    use image::AnimationDecoder;
    let f = dec.into_frames().collect_frames().unwrap();
    assert_eq!(f.len(), 3);
    assert_eq!(f[0].buffer().dimensions(), (64, 48));
    let grid = grid_image(&[frames.clone(), frames[..2].to_vec()], 40).unwrap();
    // 3 columns x 2 rows of 40x30 cells with 2-pixel gaps.
    assert_eq!(grid.dimensions(), (3 * 42 + 2, 2 * 32 + 2));
    assert!(grid_image(&[], 40).is_err());
}

/// Renders the synthetic benchmark's first video with two tracks. Set `REFERDINO_OVERLAY_DIR` to
/// keep the files for a look.
#[test]
fn render_synthetic_video_overlays() {
    use referdino::eval::synth::{self, SynthSpec};
    use referdino::output::overlay::{render_video, track_grid};
    let tmp = tempfile::tempdir().unwrap();
    let out = std::env::var_os("REFERDINO_OVERLAY_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("overlay"));
    let spec = SynthSpec {
        width: 427,
        height: 240,
        frames: 4,
        ..SynthSpec::default()
    };
    let root = tmp.path().join("bench");
    synth::write_ref_davis17(&root, &spec).unwrap();
    let frames: Vec<image::RgbImage> = (0..spec.frames)
        .map(|t| {
            image::open(root.join(format!("valid/JPEGImages/synth-00/{t:05}.jpg")))
                .unwrap()
                .to_rgb8()
        })
        .collect();
    // Two ellipses drifting apart, big enough to judge the blend, boxes and labels by eye.
    let ellipse = |cx: i64, cy: i64, a: i64, b: i64| -> Vec<u8> {
        let (w, h) = (spec.width as i64, spec.height as i64);
        (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                ((x - cx).pow(2) * b * b + (y - cy).pow(2) * a * a <= a * a * b * b) as u8
            })
            .collect()
    };
    let masks: Vec<Vec<Vec<u8>>> = (0..spec.frames as i64)
        .map(|t| {
            vec![
                ellipse(130 - 8 * t, 130, 60, 45),
                ellipse(290 + 8 * t, 150 - 4 * t, 50, 60),
            ]
        })
        .collect();
    let tracks: Vec<Vec<Track>> = masks
        .iter()
        .map(|ms| {
            ms.iter()
                .enumerate()
                .map(|(k, m)| Track {
                    id: k as u32,
                    mask: m,
                    mask_label: None,
                    score: Some(0.93 - 0.2 * k as f32),
                    bbox: None,
                    label: None,
                })
                .collect()
        })
        .collect();
    let prompt = "the red square moving down and to the right";
    let gif = render_video(
        &out,
        &frames,
        &tracks,
        prompt,
        &OverlayStyle::default(),
        200,
    )
    .unwrap();
    assert!(gif.is_file() && out.join("00003.png").is_file());
    let grid = track_grid(&frames, &tracks, prompt, 213, 3).unwrap();
    grid.save(out.join("grid.png")).unwrap();
    assert_eq!(grid.width(), 2 * 215 + 2);
}

/// A label mask shared by several tracks (each its own label, drawn in one pass, as the live
/// sinks do) draws exactly what one 0/1 mask per track draws.
#[test]
fn label_mask_tracks_draw_like_one_mask_per_track() {
    let (w, h) = (40usize, 30usize);
    let mut labels = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            labels[y * w + x] = match (x / 10, y / 10) {
                (0, _) => 1,
                (2, 1) => 2,
                (3, 2) => 3,
                _ => 0,
            };
        }
    }
    let frame = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 77])
    });
    let binary: Vec<Vec<u8>> = (1..=3u8)
        .map(|v| labels.iter().map(|&l| (l == v) as u8).collect())
        .collect();
    let style = OverlayStyle::default();
    let track = |k: usize, mask, mask_label| Track {
        id: 5 + k as u32,
        mask,
        mask_label,
        score: Some(0.5),
        bbox: None,
        label: Some("x"),
    };
    let per: Vec<Track> = (0..3).map(|k| track(k, &binary[k][..], None)).collect();
    let shared: Vec<Track> = (0..3)
        .map(|k| track(k, &labels[..], Some(k as u8 + 1)))
        .collect();
    let a = draw_overlay(&frame, &per, "p", &style).unwrap();
    let b = draw_overlay(&frame, &shared, "p", &style).unwrap();
    assert!(a == b, "label-mask overlay differs from per-track masks");
    // Drawn in place on a reused image: the same again.
    let mut c = frame.clone();
    referdino::output::overlay::draw_overlay_on(&mut c, &shared, "p", &style).unwrap();
    assert!(a == c);
    // The tracks really were drawn (not both unchanged).
    assert!(a != frame);
}
