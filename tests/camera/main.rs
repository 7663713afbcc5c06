//! `src/camera/`: the MP4/H.264 source and the preprocessor's resize against PIL.

mod preprocess_pil;
mod video;
