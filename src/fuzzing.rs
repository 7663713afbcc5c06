//! The bodies of the fuzz targets, as plain functions: `fuzz/fuzz_targets/*.rs` (libFuzzer through
//! `cargo fuzz`) and the mutation smoke test of the normal test suite
//! (tests/foundation/fuzz_smoke.rs) run exactly this code. Each takes arbitrary bytes and must
//! return without panicking, quickly; errors are the expected outcome. See fuzz/README.md.

use std::path::Path;

/// A target's body: takes any bytes, returns without panicking.
pub type Body = fn(&[u8]);

/// Every target: its name (as in `fuzz/fuzz_targets/` and `fuzz/seeds/`) and its body.
pub const TARGETS: [(&str, Body); 12] = [
    ("pth", pth),
    ("pickle", pickle),
    ("safetensors", safetensors),
    ("model_config", model_config),
    ("engine_dir", engine_dir),
    ("profiles", profiles),
    ("command_line", command_line),
    ("image_frame", image_frame),
    ("ring_reader", ring_reader),
    ("source_spec", source_spec),
    ("mask_rle", mask_rle),
    ("int8_products", int8_products),
];

/// A `.pth` file (zip archive + restricted unpickler + tensor storages). The format is recognised
/// by its first bytes; the seed corpus (zip archives) keeps most inputs on the `.pth` path.
pub fn pth(data: &[u8]) {
    let _ = crate::weights::Checkpoint::from_bytes(Path::new("fuzz.pth"), data);
}

/// The restricted unpickler alone (the `data.pkl` member of a `.pth`).
pub fn pickle(data: &[u8]) {
    let _ = crate::weights::pickle::unpickle(data);
}

/// A safetensors file (header JSON, offsets, dtypes).
pub fn safetensors(data: &[u8]) {
    let _ = crate::weights::Checkpoint::from_bytes(Path::new("fuzz.safetensors"), data);
}

/// Model configs: official YAML (first byte even) or fixture / flattened JSON (odd), then
/// validation.
pub fn model_config(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let value: Option<serde_json::Value> = if sel & 1 == 0 {
        serde_yaml::from_str(text).ok()
    } else {
        serde_json::from_str(text).ok()
    };
    if let Some(v) = value {
        if let Ok(cfg) = crate::config::ModelConfig::from_value(v) {
            let _ = cfg.validate();
            let _ = cfg.label();
            let _ = cfg.queries_per_layer();
        }
    }
}

/// Engine directory `manifest.json` (first byte even) and plan sidecars `*.plan.json` (odd).
pub fn engine_dir(data: &[u8]) {
    use crate::engines::plan_info::{PlanInfo, TrtVersion};
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if sel & 1 == 0 {
        let _ = serde_json::from_str::<crate::graph::export::Manifest>(text);
    } else if let Ok(info) = serde_json::from_str::<PlanInfo>(text) {
        let _ = info.check_compatible(TrtVersion::new(10, 3, 0, 30), (8, 7));
    }
}

/// Engine build profiles (TOML, first byte 0 mod 3), quantisation recipes (TOML, 1) and calibration
/// tables (JSON, 2).
pub fn profiles(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match sel % 3 {
        0 => {
            if let Ok(p) = crate::engines::profile::EngineProfile::from_toml(text) {
                let _ = p.validate();
                let _ = p.workspace_bytes();
            }
        }
        1 => {
            let _ = crate::quant::recipe::Recipe::from_toml(text);
        }
        _ => {
            if let Ok(t) = crate::quant::scale::ScaleTable::from_json(text) {
                let _ = t.activation_scale("x");
            }
        }
    }
}

/// The command protocol: the bounded line reader over arbitrary bytes, then the line parser, then
/// the controller applying what parsed; then the whole input as one line.
pub fn command_line(data: &[u8]) {
    use crate::pipeline::commands::{
        parse_line, Controller, Limits, Line, LineReader, RuntimeStats,
    };
    let limits = Limits {
        max_line_bytes: 256,
        max_prompt_bytes: 64,
    };
    let mut reader = LineReader::new(limits.max_line_bytes);
    // A tiny buffer so that lines straddle refills.
    let mut input = std::io::BufReader::with_capacity(7, data);
    let mut ctl = Controller::default();
    let stats = RuntimeStats::default();
    for _ in 0..10_000 {
        match reader.next_line(&mut input) {
            Ok(Line::Eof) | Err(_) => break,
            Ok(Line::Text(l)) => {
                if let Ok(Some(req)) = parse_line(l, &limits) {
                    let reply = ctl.apply(&req, &stats);
                    let _ = reply.to_line();
                }
            }
            Ok(_) => {}
        }
    }
    let _ = parse_line(data, &limits);
}

/// PNG/JPEG frame decoding (image folder source) and the MJPEG camera path.
pub fn image_frame(data: &[u8]) {
    let name = Path::new("fuzz-frame");
    if let Ok(img) = crate::camera::files::decode_image_bytes(data, name) {
        let (w, h) = img.dimensions();
        let mut dst = vec![0u8; w as usize * h as usize * 3];
        let _ = crate::camera::convert::mjpeg_to_rgb(data, w, h, &mut dst);
    } else {
        let mut dst = vec![0u8; 16 * 16 * 3];
        let _ = crate::camera::convert::mjpeg_to_rgb(data, 16, 16, &mut dst);
    }
}

/// The mask ring reader on an arbitrary file: open (header validation), then reads. The file lives
/// in `/dev/shm` where there is one (as a real ring does; a disk file per input is 30× slower), named
/// after the process and thread, and is removed afterwards.
pub fn ring_reader(data: &[u8]) {
    use crate::output::ring::MaskRingReader;
    let dir = Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!(
        "referdino-fuzz-ring-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(r) = MaskRingReader::open(&path.to_string_lossy()) {
        let mut copy = r.new_copy();
        let _ = r.read_latest(&mut copy);
        let count = r.write_count();
        for n in [0, 1, count, count.wrapping_sub(2), u64::MAX, u64::MAX / 2] {
            let _ = r.read(n, &mut copy);
        }
        let _ = r.writer_pid();
    }
    let _ = std::fs::remove_file(&path);
}

/// Source words and raw frames: the first byte picks what the rest is. Even: a `--source` word's
/// parsing (`raw:` with a path that cannot exist, `gst:`, `csi:`, the shell-like word splitter; no
/// process is started). Odd: a raw frame of a format and size from the next three bytes converted
/// to RGB, and the same bytes as a frame in a layout a source hands over, through the capture
/// thread's copy and resampler (a short or long buffer is an error, never a panic).
pub fn source_spec(data: &[u8]) {
    #[cfg(unix)]
    {
        use crate::camera::pipe::{csi_pipeline, split_words, GstPipeline, RawFormat, RawPipe};
        use crate::camera::SourceOptions;
        let Some((&first, rest)) = data.split_first() else {
            return;
        };
        let opts = SourceOptions {
            reconnect: false,
            ..SourceOptions::default()
        };
        if first % 2 == 0 {
            let text = String::from_utf8_lossy(rest);
            let _ = split_words(&text);
            let _ = GstPipeline::parse_spec(&text, &opts);
            let _ = csi_pipeline(&text, &opts);
            if let Some((head, _)) = text.rsplit_once(':') {
                // Never a real file: the parser and the checks before opening are what is fuzzed.
                let _ = RawPipe::open_spec(&format!("{head}:/nonexistent/referdino-fuzz"), &opts);
            }
            return;
        }
        let [f, w, h, frame @ ..] = rest else { return };
        const NAMES: [&str; 7] = ["rgb", "bgr", "rgbx", "bgrx", "yuyv", "nv12", "i420"];
        let format = RawFormat::parse(NAMES[*f as usize % NAMES.len()]).expect("known names");
        let (w, h) = (u32::from(*w % 64), u32::from(*h % 64));
        if format.frame_bytes(w, h).is_ok() {
            let mut dst = vec![0u8; w as usize * h as usize * 3];
            let _ = format.to_rgb(frame, w, h, &mut dst);
        }
        // The same bytes as a frame a source hands over in any layout (a driver's buffer may be
        // short or long): the capture thread's copy, at the stream's size and resampled to another,
        // taking that layout or converting it, and the conversion for sinks.
        use crate::camera::{Frame, Layout, LayoutSet};
        use crate::pipeline::live::source::Captured;
        const LAYOUTS: [Layout; 5] = [
            Layout::Rgb,
            Layout::Bgr,
            Layout::Yuyv,
            Layout::Rgbx,
            Layout::Bgrx,
        ];
        let layout = LAYOUTS[*f as usize % LAYOUTS.len()];
        let frame = Frame {
            id: 0,
            timestamp_ns: 0,
            width: w,
            height: h,
            layout,
            pixels: frame,
        };
        let mut c = Captured::default();
        let mut rgb = Vec::new();
        for accepted in [LayoutSet::RGB, LayoutSet::of(&LAYOUTS)] {
            for (sw, sh) in [(w, h), (w / 2 + 1, h / 3 + 1)] {
                if c.fill_at(&frame, sw, sh, accepted).is_ok() {
                    let _ = c.rgb(&mut rgb);
                }
            }
        }
        let _ = frame.to_rgb(&mut rgb);
    }
    #[cfg(not(unix))]
    let _ = data;
}

/// A MeViS `mask_dict.json` entry, `{"size": [h, w], "counts": "compressed" | [runs]}` (COCO RLE),
/// decoded at the size it names when that is small (each input stays fast); the bytes as a compressed
/// counts string as well.
pub fn mask_rle(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::eval::rle::counts_from_string(s);
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let dims: Vec<u64> = v
        .get("size")
        .and_then(serde_json::Value::as_array)
        .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
        .unwrap_or_default();
    if let [h, w] = dims[..] {
        if h.checked_mul(w).is_some_and(|n| n <= 1 << 16) {
            let _ = crate::eval::dataset::decode_rle_value(&v, w as usize, h as usize);
        }
    }
}

/// An ONNX model through the CPU backend's INT8 rewrite (`onnx::int8_products`), which runs on every
/// quantized engine file before tract parses it.
pub fn int8_products(data: &[u8]) {
    use prost::Message;
    if let Ok(m) = tract_onnx::pb::ModelProto::decode(data) {
        let _ = crate::onnx::int8_products::fuse_int8_products(&m);
    }
}
