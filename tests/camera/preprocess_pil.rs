//! The preprocessor's 8-bit resize against PIL (the official transform resizes PIL images with
//! bilinear, antialiased filtering). Needs `python3` with Pillow (`pip install pillow`); without it the
//! test prints why and passes vacuously, so CI must install Pillow for this check to mean anything.

use std::path::Path;
use std::process::Command;

use referdino::camera::convert::Preprocessor;

fn pil_available() -> bool {
    Command::new("python3")
        .args(["-c", "import PIL"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A frame with edges, gradients and noise, so every filter tap matters.
fn test_image(w: u32, h: u32, seed: u32) -> image::RgbImage {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    image::RgbImage::from_fn(w, h, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let noise = (state % 64) as i32 - 32;
        let checker = if ((x / 7) + (y / 5)) % 2 == 0 {
            200
        } else {
            30
        };
        let g = (x * 255 / w.max(1)) as i32;
        let b = (y * 255 / h.max(1)) as i32;
        let c = |v: i32| v.clamp(0, 255) as u8;
        image::Rgb([c(checker + noise), c(g + noise / 2), c(b - noise)])
    })
}

#[test]
fn resize_matches_pil_within_one() {
    if !pil_available() {
        eprintln!("SKIPPED: python3 with Pillow not found; install it with `pip install pillow`");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // (w, h, short side): camera sizes to 360, the spec's truncation case, portrait, upscaling and
    // a scale factor that is not an integer.
    let cases = [
        (1280u32, 720u32, 360u32),
        (854, 480, 360),
        (720, 1280, 360),
        (320, 180, 360),
        (1000, 777, 360),
        (640, 360, 360),
        (97, 61, 23),
    ];
    let mut args = vec!["tests/pil_resize.py".to_string()];
    args.push("360".into());
    let mut small_args = vec!["tests/pil_resize.py".to_string(), "23".into()];
    for (i, &(w, h, s)) in cases.iter().enumerate() {
        let src = dir.path().join(format!("in{i}.png"));
        let dst = dir.path().join(format!("out{i}.png"));
        test_image(w, h, i as u32).save(&src).unwrap();
        let target = if s == 360 { &mut args } else { &mut small_args };
        target.push(src.to_str().unwrap().into());
        target.push(dst.to_str().unwrap().into());
    }
    for a in [&args, &small_args] {
        let st = Command::new("python3")
            .args(a)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(st.success(), "pil_resize.py failed");
    }
    for (i, &(w, h, s)) in cases.iter().enumerate() {
        let img = test_image(w, h, i as u32);
        let pil = image::open(Path::new(&dir.path().join(format!("out{i}.png"))))
            .unwrap()
            .into_rgb8();
        let mut pre = Preprocessor::new(w, h, s);
        assert_eq!(pre.out_size(), pil.dimensions(), "case {w}x{h}");
        let ours = pre.resize(img.as_raw()).unwrap();
        let max = ours
            .iter()
            .zip(pil.as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        let differing = ours
            .iter()
            .zip(pil.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        eprintln!(
            "{w}x{h} -> {:?}: max |diff| {max}, {differing} differing bytes",
            pre.out_size()
        );
        assert!(max <= 1, "{w}x{h}: max abs diff {max} > 1");
    }
}
