//! MP4/H.264 video files: the `mp4` crate demuxes, `openh264` decodes.
//!
//! Why this route: `openh264` (Cisco's decoder, maintained, BSD) compiles its bundled C/C++ source with
//! `cc` at build time, so it needs no system library, no network and no FFmpeg; `mp4` is a pure-Rust
//! demuxer. FFmpeg bindings would decode more codecs but need a system FFmpeg of a matching version on
//! every machine, which our offline CI and Jetson images do not guarantee.
//!
//! MP4 stores H.264 as length-prefixed NAL units (AVCC) with SPS/PPS in the `avcC` box; the decoder wants
//! Annex-B start codes, so each sample is rewritten into a reusable buffer. The demuxer allocates one
//! buffer per sample; this source is for files, not the camera hot path.
//!
//! Containment: the container's picture size and the SPS/PPS are checked in Rust ([`super::h264`])
//! before the decoder sees them, and the `referdino` CLI runs this whole type in a child process
//! ([`super::isolated`]) so that a decoder crash on a hostile file is an error, not the end of the
//! runtime.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Instant;

use openh264::decoder::Decoder;
use openh264::formats::YUVSource;

use super::{Frame, FrameSource, SourceOptions};
use crate::{Error, Result};

const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// Frames of the first H.264 video track of an MP4 file.
pub struct VideoFile {
    path: PathBuf,
    reader: mp4::Mp4Reader<BufReader<File>>,
    track_id: u32,
    samples: u32,
    next_sample: u32,
    nal_len_size: usize,
    decoder: Decoder,
    annexb: Vec<u8>,
    width: u32,
    height: u32,
    fps: f64,
    realtime: bool,
    start: Instant,
    next_id: u64,
    /// Frames left in the decoder after the last sample (filled once at end of stream).
    tail: std::collections::VecDeque<Vec<u8>>,
    flushed: bool,
    buf: Vec<u8>,
}

fn err(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Source(format!("{}: {what}", path.display()))
}

impl VideoFile {
    /// Opens `path` and prepares the decoder with the track's SPS/PPS.
    pub fn open(path: &Path, opts: &SourceOptions) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let reader = mp4::Mp4Reader::read_header(BufReader::new(file), size)
            .map_err(|e| err(path, format!("not a readable MP4 file ({e})")))?;
        let mut found = None;
        let mut ids: Vec<u32> = reader.tracks().keys().copied().collect();
        ids.sort_unstable();
        let mut seen = Vec::new();
        for id in ids {
            let t = &reader.tracks()[&id];
            let kind = t
                .media_type()
                .map(|m| m.to_string())
                .unwrap_or_else(|_| "unknown".into());
            if t.trak.mdia.minf.stbl.stsd.avc1.is_some() {
                found = Some(id);
                break;
            }
            seen.push(format!("track {id}: {kind}"));
        }
        let track_id = found.ok_or_else(|| {
            err(
                path,
                format!(
                    "no H.264 (avc1) video track; tracks: {}",
                    if seen.is_empty() {
                        "none".to_string()
                    } else {
                        seen.join(", ")
                    }
                ),
            )
        })?;
        let track = &reader.tracks()[&track_id];
        let avc1 = track
            .trak
            .mdia
            .minf
            .stbl
            .stsd
            .avc1
            .as_ref()
            .ok_or_else(|| err(path, "avc1 box vanished"))?;
        let nal_len_size = avc1.avcc.length_size_minus_one as usize + 1;
        if !matches!(nal_len_size, 1 | 2 | 4) {
            return Err(err(
                path,
                format!("unsupported NAL length size {nal_len_size}"),
            ));
        }
        let (width, height) = (track.width() as u32, track.height() as u32);
        if width == 0 || height == 0 || width % 2 != 0 || height % 2 != 0 {
            return Err(err(
                path,
                format!("unsupported video size {width}x{height}"),
            ));
        }
        let max = crate::limits::MAX_IMAGE_PIXELS;
        if width as u64 * height as u64 > max {
            return Err(err(
                path,
                format!("video size {width}x{height} is over the limit of {max} pixels"),
            ));
        }
        // The parameter sets are checked before the C decoder parses them (see `h264`).
        for nal in &avc1.avcc.sequence_parameter_sets {
            let sps = super::h264::parse_sps(&nal.bytes)
                .map_err(|e| err(path, format!("bad SPS: {e}")))?;
            if (sps.width, sps.height) != (width, height) {
                return Err(err(
                    path,
                    format!(
                        "the SPS declares {}x{} pictures, the track says {width}x{height}",
                        sps.width, sps.height
                    ),
                ));
            }
        }
        for nal in &avc1.avcc.picture_parameter_sets {
            super::h264::check_nal_type(&nal.bytes, 8, "PPS")
                .map_err(|e| err(path, format!("bad PPS: {e}")))?;
        }
        // Before anything reads a sample: the demuxer unwraps and divides by what these tables say.
        let samples = check_sample_tables(track, size).map_err(|e| err(path, e))?;
        let fps = track_fps(track, samples).unwrap_or(opts.fps.max(1) as f64);
        let mut decoder =
            Decoder::new().map_err(|e| err(path, format!("H.264 decoder init failed: {e}")))?;
        let mut header = Vec::new();
        for nal in avc1
            .avcc
            .sequence_parameter_sets
            .iter()
            .chain(&avc1.avcc.picture_parameter_sets)
        {
            header.extend_from_slice(&START_CODE);
            header.extend_from_slice(&nal.bytes);
        }
        if header.is_empty() {
            return Err(err(path, "the avcC box has no SPS/PPS"));
        }
        decoder
            .decode(&header)
            .map_err(|e| err(path, format!("bad SPS/PPS: {e}")))?;
        Ok(VideoFile {
            path: path.to_path_buf(),
            reader,
            track_id,
            samples,
            next_sample: 1,
            nal_len_size,
            decoder,
            annexb: Vec::new(),
            width,
            height,
            fps,
            realtime: opts.realtime,
            start: Instant::now(),
            next_id: 0,
            tail: Default::default(),
            flushed: false,
            buf: vec![0; width as usize * height as usize * 3],
        })
    }

    /// Frame count declared by the container.
    pub fn frame_count(&self) -> u32 {
        self.samples
    }

    /// Frame rate declared by the container.
    pub fn fps(&self) -> f64 {
        self.fps
    }

    /// Frame width and height.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Rewrites a length-prefixed sample into Annex B in `self.annexb`.
    fn rewrite_annexb(&mut self, data: &[u8]) -> Result<()> {
        self.annexb.clear();
        let mut rest = data;
        let n = self.nal_len_size;
        while !rest.is_empty() {
            if rest.len() < n {
                return Err(err(&self.path, "truncated NAL length in a sample"));
            }
            let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
            rest = &rest[n..];
            if len > rest.len() {
                return Err(err(
                    &self.path,
                    format!(
                        "NAL unit of {len} bytes overruns its sample ({} left)",
                        rest.len()
                    ),
                ));
            }
            self.annexb.extend_from_slice(&START_CODE);
            self.annexb.extend_from_slice(&rest[..len]);
            rest = &rest[len..];
        }
        Ok(())
    }

    fn frame(&mut self) -> Frame<'_> {
        let id = self.next_id;
        self.next_id += 1;
        super::file_frame(
            id,
            self.start,
            self.fps,
            self.realtime,
            (self.width, self.height),
            &self.buf,
        )
    }
}

/// Checks what the `mp4` crate assumes of a track's sample tables when it reads a sample (it
/// panics or allocates blindly otherwise) and returns the track's sample count: the time-to-sample
/// table (`stts`) covers every sample (`read_sample` unwraps the sample's time: a short table
/// panicked in the middle of the file), no chunk holds 0 samples (a division by zero), no sample
/// is larger than the file, and a fragmented track's counts and times fit their integers.
fn check_sample_tables(track: &mp4::Mp4Track, file_size: u64) -> std::result::Result<u32, String> {
    let stbl = &track.trak.mdia.minf.stbl;
    if !track.trafs.is_empty() {
        // The crate sums the fragments' counts with a panicking `expect` and multiplies
        // `(sample - 1) × default duration` in a u32.
        let mut total = 0u32;
        for traf in &track.trafs {
            let n = traf.trun.as_ref().map_or(0, |t| t.sample_count);
            total = total
                .checked_add(n)
                .ok_or("the fragments declare more than 2^32 samples")?;
        }
        if (total as usize) < track.trafs.len()
            || u32::try_from(total as u64 * track.default_sample_duration as u64).is_err()
        {
            return Err(format!(
                "fragmented track with {total} samples in {} fragments and a sample duration of {}: not readable",
                track.trafs.len(),
                track.default_sample_duration
            ));
        }
        return Ok(total);
    }
    let samples = stbl.stsz.sample_count;
    let timed = stts_samples(stbl.stts.entries.iter().map(|e| e.sample_count));
    if timed < samples as u64 {
        return Err(format!(
            "the time-to-sample table (stts) covers {timed} samples, the track has {samples}"
        ));
    }
    if stbl.stsc.entries.iter().any(|e| e.samples_per_chunk == 0) {
        return Err("the sample-to-chunk table (stsc) has a chunk of 0 samples".into());
    }
    let largest = stbl
        .stsz
        .sample_sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(stbl.stsz.sample_size);
    if largest as u64 > file_size {
        return Err(format!(
            "the sample size table (stsz) declares a sample of {largest} bytes in a file of {file_size}"
        ));
    }
    Ok(samples)
}

/// Samples an `stts` table gives times for (the sum of its entries' counts).
fn stts_samples(counts: impl Iterator<Item = u32>) -> u64 {
    counts.map(u64::from).sum()
}

/// The track's frame rate from its timescale and the durations of its `samples` samples, as a float:
/// NTSC's 1001/30000 s per frame is 29.97 fps (the container's integer rate said 29, so frame times
/// drifted 2 s a minute and paced playback ran 3 % slow). `None` without a duration.
fn track_fps(track: &mp4::Mp4Track, samples: u32) -> Option<f64> {
    let timescale = track.timescale();
    if !track.trafs.is_empty() {
        return rate(1, track.default_sample_duration as u64, timescale);
    }
    let entries = &track.trak.mdia.minf.stbl.stts.entries;
    let ticks = stts_ticks(
        entries.iter().map(|e| (e.sample_count, e.sample_delta)),
        samples,
    );
    rate(samples as u64, ticks, timescale)
}

/// Ticks the first `samples` samples last, from `(count, delta)` time-to-sample entries.
fn stts_ticks(entries: impl Iterator<Item = (u32, u32)>, samples: u32) -> u64 {
    let mut left = samples as u64;
    let mut ticks = 0u64;
    for (count, delta) in entries {
        let n = left.min(count as u64);
        ticks = ticks.saturating_add(n * delta as u64);
        left -= n;
    }
    ticks
}

/// `samples` frames in `ticks` of `1/timescale` s → frames per second; `None` when either is 0.
fn rate(samples: u64, ticks: u64, timescale: u32) -> Option<f64> {
    let fps = samples as f64 * timescale as f64 / ticks as f64;
    (fps.is_finite() && fps > 0.0).then_some(fps)
}

impl FrameSource for VideoFile {
    fn file_frames(&self) -> Option<u64> {
        Some(self.frame_count() as u64)
    }

    fn describe(&self) -> String {
        format!(
            "video {} (H.264 {}x{}, {} frames @ {:.2} fps)",
            self.path.display(),
            self.width,
            self.height,
            self.samples,
            self.fps
        )
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        let (w, h) = (self.width as usize, self.height as usize);
        while self.next_sample <= self.samples {
            let sid = self.next_sample;
            self.next_sample += 1;
            let sample = self
                .reader
                .read_sample(self.track_id, sid)
                .map_err(|e| err(&self.path, format!("sample {sid}: {e}")))?;
            let Some(sample) = sample else { continue };
            self.rewrite_annexb(&sample.bytes)?;
            let decoded = self.decoder.decode(&self.annexb).map_err(|e| {
                err(
                    &self.path,
                    format!("sample {sid}: H.264 decode failed: {e}"),
                )
            })?;
            if let Some(yuv) = decoded {
                if yuv.dimensions() != (w, h) {
                    return Err(err(
                        &self.path,
                        format!(
                            "decoded frame is {:?}, the track says {w}x{h}",
                            yuv.dimensions()
                        ),
                    ));
                }
                yuv.write_rgb8(&mut self.buf);
                return Ok(Some(self.frame()));
            }
        }
        if !self.flushed {
            self.flushed = true;
            let rest = self
                .decoder
                .flush_remaining()
                .map_err(|e| err(&self.path, format!("H.264 flush failed: {e}")))?;
            for yuv in rest {
                if yuv.dimensions() == (w, h) {
                    let mut v = vec![0u8; w * h * 3];
                    yuv.write_rgb8(&mut v);
                    self.tail.push_back(v);
                }
            }
        }
        if let Some(v) = self.tail.pop_front() {
            self.buf.copy_from_slice(&v);
            return Ok(Some(self.frame()));
        }
        Ok(None)
    }
}

/// Writes `frames` (tight RGB8, all `width × height`) as an H.264 MP4 at `fps`. Used by tests and
/// `examples` to make small clips; the encoder is openh264's.
pub fn write_mp4(path: &Path, width: u32, height: u32, fps: u32, frames: &[Vec<u8>]) -> Result<()> {
    write_mp4_timed(path, width, height, (fps.max(1) * 1000, 1000), frames)
}

/// [`write_mp4`] with each frame lasting `duration` ticks of a `timescale`-tick second (`(30000,
/// 1001)`: NTSC's 29.97 fps).
pub fn write_mp4_timed(
    path: &Path,
    width: u32,
    height: u32,
    (timescale, duration): (u32, u32),
    frames: &[Vec<u8>],
) -> Result<()> {
    use openh264::encoder::{Encoder, EncoderConfig, FrameRate};
    let fps = timescale as f32 / duration.max(1) as f32;
    use openh264::formats::{RgbSliceU8, YUVBuffer};
    use openh264::OpenH264API;

    let e = |what: String| err(path, what);
    let config = EncoderConfig::new().max_frame_rate(FrameRate::from_hz(fps));
    let mut enc = Encoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|x| e(format!("encoder init: {x}")))?;
    let mut sps = None;
    let mut pps = None;
    let mut samples: Vec<(Vec<u8>, bool)> = Vec::new();
    for (i, rgb) in frames.iter().enumerate() {
        let yuv =
            YUVBuffer::from_rgb8_source(RgbSliceU8::new(rgb, (width as usize, height as usize)));
        let bs = enc
            .encode(&yuv)
            .map_err(|x| e(format!("encode frame {i}: {x}")))?;
        let mut sample = Vec::new();
        let mut sync = false;
        for l in 0..bs.num_layers() {
            let Some(layer) = bs.layer(l) else { continue };
            for n in 0..layer.nal_count() {
                let Some(nal) = layer.nal_unit(n) else {
                    continue;
                };
                // Strip the Annex-B start code (3 or 4 bytes).
                let body = if nal.starts_with(&[0, 0, 0, 1]) {
                    &nal[4..]
                } else if nal.starts_with(&[0, 0, 1]) {
                    &nal[3..]
                } else {
                    nal
                };
                if body.is_empty() {
                    continue;
                }
                match body[0] & 0x1f {
                    7 => sps = Some(body.to_vec()),
                    8 => pps = Some(body.to_vec()),
                    t => {
                        if t == 5 {
                            sync = true;
                        }
                        sample.extend_from_slice(&(body.len() as u32).to_be_bytes());
                        sample.extend_from_slice(body);
                    }
                }
            }
        }
        if !sample.is_empty() {
            samples.push((sample, sync));
        }
    }
    let (Some(sps), Some(pps)) = (sps, pps) else {
        return Err(e("encoder produced no SPS/PPS".into()));
    };
    let file = File::create(path).map_err(|x| Error::io(path, x))?;
    let config = mp4::Mp4Config {
        major_brand: "isom".parse().map_err(|x| e(format!("{x}")))?,
        minor_version: 512,
        compatible_brands: vec![
            "isom".parse().map_err(|x| e(format!("{x}")))?,
            "avc1".parse().map_err(|x| e(format!("{x}")))?,
        ],
        timescale: 1000,
    };
    let mut w = mp4::Mp4Writer::write_start(std::io::BufWriter::new(file), &config)
        .map_err(|x| e(format!("mp4 start: {x}")))?;
    w.add_track(&mp4::TrackConfig {
        track_type: mp4::TrackType::Video,
        timescale,
        language: "und".into(),
        media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
            width: width as u16,
            height: height as u16,
            seq_param_set: sps,
            pic_param_set: pps,
        }),
    })
    .map_err(|x| e(format!("mp4 track: {x}")))?;
    for (i, (bytes, sync)) in samples.into_iter().enumerate() {
        let s = mp4::Mp4Sample {
            start_time: i as u64 * duration as u64,
            duration,
            rendering_offset: 0,
            is_sync: sync,
            bytes: bytes.into(),
        };
        w.write_sample(1, &s)
            .map_err(|x| e(format!("mp4 sample {i}: {x}")))?;
    }
    w.write_end().map_err(|x| e(format!("mp4 end: {x}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NTSC's 1001/30000 s frames are 29.97 fps (the container's integer rate said 29); the rate
    /// covers the track's samples only, and tables without a duration give none.
    #[test]
    fn frame_rate_from_sample_durations() {
        let ntsc = rate(300, stts_ticks([(300, 1001)].into_iter(), 300), 30000).unwrap();
        assert!((ntsc - 30000.0 / 1001.0).abs() < 1e-9, "{ntsc}");
        // Entries past the track's samples do not count; a varying duration averages.
        let r = rate(
            4,
            stts_ticks([(2, 100), (2, 300), (9, 7)].into_iter(), 4),
            1000,
        )
        .unwrap();
        assert_eq!(r, 5.0);
        assert_eq!(rate(0, 0, 1000), None);
        assert_eq!(rate(3, 0, 1000), None);
        assert_eq!(rate(3, 30, 0), None);
        // Frame 1800 (a minute at 30 fps) of an NTSC clip is at 60.06 s, not 62.07 s (at 29).
        let t = super::super::frame_time_ns(1800, ntsc);
        assert!(t.abs_diff(60_060_000_000) < 1000, "{t}");
        assert_eq!(
            stts_samples([3u32, u32::MAX].into_iter()),
            3 + u32::MAX as u64
        );
    }
}
