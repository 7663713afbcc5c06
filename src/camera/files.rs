//! Image-folder source: every PNG/JPEG file in a directory, sorted by file name.
//!
//! All images must have the size of the first one (a video's frames do); a different size is an error
//! naming the file. Decoding allocates inside the image decoder; the decoded pixels are copied into the
//! source's reusable buffer.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::reconnect::MAX_BAD_FRAMES_IN_A_ROW;
use super::{Frame, FrameSource, SourceOptions};
use crate::{Error, Result};

/// Frames from a folder of images.
#[derive(Debug)]
pub struct ImageFolder {
    dir: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
    width: u32,
    height: u32,
    fps: u32,
    realtime: bool,
    start: Instant,
    buf: Vec<u8>,
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

fn decode(path: &Path) -> Result<image::RgbImage> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    decode_from(std::io::BufReader::new(file), path)
}

/// Decodes a PNG or JPEG frame held in memory, as a frame file is decoded (format from the first
/// bytes, size checked against [`crate::limits::MAX_IMAGE_PIXELS`] before any pixel is decoded).
/// `name` only labels errors.
pub fn decode_image_bytes(bytes: &[u8], name: &Path) -> Result<image::RgbImage> {
    decode_from(std::io::Cursor::new(bytes), name)
}

fn decode_from<R: std::io::BufRead + std::io::Seek>(
    reader: R,
    path: &Path,
) -> Result<image::RgbImage> {
    use image::ImageDecoder;
    let decoder = image::ImageReader::new(reader)
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .into_decoder()
        .map_err(|e| Error::Source(format!("{}: {e}", path.display())))?;
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > crate::limits::MAX_IMAGE_PIXELS {
        return Err(Error::Source(format!(
            "{}: image is {w}x{h}, more than the limit of {} pixels",
            path.display(),
            crate::limits::MAX_IMAGE_PIXELS
        )));
    }
    let img = image::DynamicImage::from_decoder(decoder)
        .map_err(|e| Error::Source(format!("{}: {e}", path.display())))?;
    Ok(img.into_rgb8())
}

/// The size of the first of `files` that decodes, trying at most [`MAX_BAD_FRAMES_IN_A_ROW`].
fn first_usable_size(files: &[PathBuf], dir: &Path) -> Result<(u32, u32)> {
    let mut first_error = None;
    for path in files.iter().take(MAX_BAD_FRAMES_IN_A_ROW as usize) {
        match decode(path) {
            Ok(img) => return Ok(img.dimensions()),
            Err(e) => {
                log::warn!("{e}: skipped");
                first_error.get_or_insert(e);
            }
        }
    }
    let tried = files.len().min(MAX_BAD_FRAMES_IN_A_ROW as usize);
    Err(Error::Source(format!(
        "{}: none of the first {tried} images decodes; the first: {}",
        dir.display(),
        first_error.map_or_else(|| "no image".into(), |e| e.to_string())
    )))
}

impl ImageFolder {
    /// Lists `dir` and decodes its first usable image to learn the frame size. Images that do not
    /// decode before it are skipped (and reported as unusable frames when read), as later ones are;
    /// an error when none of the first [`MAX_BAD_FRAMES_IN_A_ROW`] images decodes.
    pub fn open(dir: &Path, opts: &SourceOptions) -> Result<Self> {
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut files = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let p = entry.path();
            if p.is_file() && is_image(&p) {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(Error::Source(format!(
                "{}: no .png/.jpg/.jpeg images in the folder",
                dir.display()
            )));
        }
        let (width, height) = first_usable_size(&files, dir)?;
        Ok(ImageFolder {
            dir: dir.to_path_buf(),
            files,
            next: 0,
            width,
            height,
            fps: opts.fps.max(1),
            realtime: opts.realtime,
            start: Instant::now(),
            buf: vec![0; width as usize * height as usize * 3],
        })
    }

    /// Number of images in the folder.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the folder has no images (never true for an opened folder).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

impl FrameSource for ImageFolder {
    fn file_frames(&self) -> Option<u64> {
        Some(self.files.len() as u64)
    }

    fn describe(&self) -> String {
        format!(
            "image folder {} ({} images, {}x{})",
            self.dir.display(),
            self.files.len(),
            self.width,
            self.height
        )
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        let Some(path) = self.files.get(self.next) else {
            return Ok(None);
        };
        let n = self.next as u64;
        // An image that cannot be used is skipped (the next call reads the next one), as a
        // camera's bad frame is: reported, counted, not the end of the folder.
        self.next += 1;
        let img = decode(path).map_err(|e| Error::Frame(e.to_string()))?;
        if img.dimensions() != (self.width, self.height) {
            return Err(Error::Frame(format!(
                "{}: image is {}x{}, earlier frames are {}x{}",
                path.display(),
                img.width(),
                img.height(),
                self.width,
                self.height
            )));
        }
        self.buf.copy_from_slice(img.as_raw());
        if self.realtime {
            super::pace(self.start, n, self.fps);
        }
        Ok(Some(Frame {
            id: n,
            timestamp_ns: n * 1_000_000_000 / self.fps as u64,
            width: self.width,
            height: self.height,
            layout: crate::camera::Layout::Rgb,
            pixels: &self.buf,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_frames_and_size_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        for (name, v) in [("b.png", 20u8), ("a.png", 10), ("c.jpg", 30)] {
            let img = image::RgbImage::from_pixel(6, 4, image::Rgb([v, v, v]));
            img.save(dir.path().join(name)).unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let mut src = ImageFolder::open(dir.path(), &SourceOptions::default()).unwrap();
        assert_eq!(src.len(), 3);
        let f = src.next_frame().unwrap().unwrap();
        assert_eq!((f.id, f.width, f.height, f.pixels[0]), (0, 6, 4, 10));
        assert_eq!(src.next_frame().unwrap().unwrap().pixels[0], 20);
        let third = src.next_frame().unwrap().unwrap().pixels[0];
        assert!((28..=32).contains(&third), "{third}");
        assert!(src.next_frame().unwrap().is_none());

        image::RgbImage::new(5, 4)
            .save(dir.path().join("d.png"))
            .unwrap();
        let mut src = ImageFolder::open(dir.path(), &SourceOptions::default()).unwrap();
        for _ in 0..3 {
            src.next_frame().unwrap();
        }
        // Another size, then an image that does not decode: each skipped with its reason (frame
        // errors), and the folder goes on to its end.
        std::fs::write(dir.path().join("e.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
        let e = src.next_frame().unwrap_err();
        assert!(matches!(e, Error::Frame(_)), "{e}");
        let e = e.to_string();
        assert!(e.contains("d.png") && e.contains("5x4"), "{e}");
        let mut src = ImageFolder::open(dir.path(), &SourceOptions::default()).unwrap();
        for _ in 0..3 {
            src.next_frame().unwrap();
        }
        assert!(src.next_frame().is_err());
        let e = src.next_frame().unwrap_err();
        assert!(
            matches!(e, Error::Frame(_)) && e.to_string().contains("e.png"),
            "{e}"
        );
        assert!(src.next_frame().unwrap().is_none());
    }

    /// A first image that does not decode is skipped (the folder opens at the next one's size and
    /// reports it as an unusable frame when read); a folder where none decodes is a clear error.
    #[test]
    fn a_corrupt_first_image_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
        for name in ["b.png", "c.png"] {
            image::RgbImage::from_pixel(6, 4, image::Rgb([50, 50, 50]))
                .save(dir.path().join(name))
                .unwrap();
        }
        let mut src = ImageFolder::open(dir.path(), &SourceOptions::default()).unwrap();
        assert!(
            src.describe().contains("3 images, 6x4"),
            "{}",
            src.describe()
        );
        let e = src.next_frame().unwrap_err();
        assert!(
            matches!(e, Error::Frame(_)) && e.to_string().contains("a.png"),
            "{e}"
        );
        let f = src.next_frame().unwrap().unwrap();
        assert_eq!((f.id, f.width, f.height), (1, 6, 4));

        let bad = tempfile::tempdir().unwrap();
        for name in ["a.png", "b.jpg"] {
            std::fs::write(bad.path().join(name), b"not an image").unwrap();
        }
        let e = ImageFolder::open(bad.path(), &SourceOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("none of the first 2 images decodes") && e.contains("a.png"),
            "{e}"
        );
    }

    #[test]
    fn empty_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = ImageFolder::open(dir.path(), &SourceOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no .png/.jpg/.jpeg"), "{e}");
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn oversized_image_is_refused_from_its_header() {
        // A PNG header announcing 9000 x 9000 pixels (81 M > the limit) and no pixel data.
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&9000u32.to_be_bytes());
        ihdr.extend_from_slice(&9000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        for chunk in [&b"IDAT"[..], &b"IEND"[..]] {
            png.extend_from_slice(&0u32.to_be_bytes());
            png.extend_from_slice(chunk);
            png.extend_from_slice(&crc32(chunk).to_be_bytes());
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.png");
        std::fs::write(&p, &png).unwrap();
        let e = decode(&p).unwrap_err().to_string();
        assert!(e.contains("9000x9000") && e.contains("limit"), "{e}");
    }
}
