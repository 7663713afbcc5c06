//! `src/camera/`: the MP4/H.264 source (in this process and in a decoder process), the pipe sources
//! (`raw:` and `gst:`) and the preprocessor's resize against PIL.

mod isolated;
mod pipe;
mod preprocess_pil;
mod video;
