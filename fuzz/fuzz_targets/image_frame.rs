//! PNG/JPEG frame decoding (image folder source), the MJPEG camera path and label PNG reading.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let name = std::path::Path::new("fuzz-frame");
    if let Ok(img) = referdino::camera::files::decode_image_bytes(data, name) {
        let (w, h) = img.dimensions();
        let mut dst = vec![0u8; w as usize * h as usize * 3];
        let _ = referdino::camera::convert::mjpeg_to_rgb(data, w, h, &mut dst);
    } else {
        let mut dst = vec![0u8; 16 * 16 * 3];
        let _ = referdino::camera::convert::mjpeg_to_rgb(data, 16, 16, &mut dst);
    }
});
