//! `src/camera/`: the MP4/H.264 source (in this process and in a decoder process), the pipe sources
//! (`raw:` and `gst:`) and the preprocessor's resize against PIL.

mod isolated;
mod pipe;
mod preprocess_pil;
mod video;

/// Every frame of a source (checking that ids count up from 0 and that each frame is whole), and the
/// error that ended the stream, if any.
#[cfg(any(target_os = "linux", feature = "video"))]
fn drain(src: &mut dyn referdino::camera::FrameSource) -> (Vec<Vec<u8>>, Option<String>) {
    let mut frames = Vec::new();
    loop {
        match src.next_frame() {
            Ok(Some(f)) => {
                assert_eq!(f.id, frames.len() as u64);
                assert_eq!(f.pixels.len(), (f.width * f.height * 3) as usize);
                frames.push(f.pixels.to_vec());
            }
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e.to_string())),
        }
    }
}
