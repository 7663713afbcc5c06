//! Problem sizes of both ops, their validation and the kernels' launch geometry (pure Rust, no CUDA).

use crate::error::{invalid, Result};

/// Dynamic shared memory a block may use without opting in (every CUDA GPU since sm_20).
pub const MAX_SHARED_BYTES: usize = 48 * 1024;
/// Most blocks along a grid's y (and z) dimension, on every CUDA GPU.
pub const MAX_GRID_Y: usize = 65_535;
/// Static shared memory of the QueryPrune kernels with dynamic shared memory (one-block and select:
/// `scratch[32]` floats), on top of the dynamic part. (The stats kernel has 2 KiB of static shared
/// memory and no dynamic part.)
pub const PRUNE_STATIC_SHARED_BYTES: usize = 32 * 4;
/// Threads per block of `query_prune_select_f32` (`RD_PRUNE_SELECT_BLOCK` in `prune.cu`, its launch
/// bounds).
pub const PRUNE_SELECT_BLOCK: usize = 256;
/// Queries ranked per block of `query_prune_select_f32` (`RD_PRUNE_SELECT_QUERIES` in `prune.cu`).
pub const PRUNE_SELECT_QUERIES: usize = 32;
/// Threads per block of `query_prune_stats_f32` (`RD_PRUNE_STATS_BLOCK` in `prune.cu`, which sizes its
/// static shared memory by it).
pub const PRUNE_STATS_BLOCK: usize = 512;
/// Bytes of one resolved sampling point in the optimized MSDeformAttn kernel (`struct Tap`).
pub const MSDA_TAP_BYTES: usize = 32;

/// Grid, block and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchGeometry {
    /// Blocks (x only).
    pub grid: u32,
    /// Threads per block (x only).
    pub block: u32,
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
}

/// Sizes of one MSDeformAttn call; same fields as `referdino::ops::msdeform::MsDeformDims`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsdaDims {
    /// B.
    pub batch: usize,
    /// S = sum over levels of h_l * w_l.
    pub num_value: usize,
    /// H.
    pub heads: usize,
    /// Dh.
    pub head_dim: usize,
    /// Q.
    pub num_query: usize,
    /// L.
    pub levels: usize,
    /// P.
    pub points: usize,
}

fn round_up(v: usize, m: usize) -> usize {
    v.div_ceil(m) * m
}

impl MsdaDims {
    /// Elements of `value` `[B,S,H,Dh]`.
    pub fn value_len(&self) -> usize {
        self.batch * self.num_value * self.heads * self.head_dim
    }
    /// Elements of `sampling_locations` `[B,Q,H,L,P,2]`.
    pub fn locations_len(&self) -> usize {
        self.weights_len() * 2
    }
    /// Elements of `attention_weights` `[B,Q,H,L,P]`.
    pub fn weights_len(&self) -> usize {
        self.batch * self.num_query * self.heads * self.levels * self.points
    }
    /// Elements of the output `[B,Q,H*Dh]`.
    pub fn out_len(&self) -> usize {
        self.batch * self.num_query * self.heads * self.head_dim
    }

    /// Checks that the sizes are non-zero and fit the kernels' 32-bit index arithmetic and shared memory.
    pub fn validate(&self) -> Result<()> {
        let d = self;
        if [
            d.batch,
            d.num_value,
            d.heads,
            d.head_dim,
            d.num_query,
            d.levels,
            d.points,
        ]
        .contains(&0)
        {
            return Err(invalid(format!(
                "MSDeformAttn: every dimension must be > 0, got {d:?}"
            )));
        }
        let i32max = i32::MAX as usize;
        // Row offsets inside one batch item are int32 in the kernel.
        let per_batch = d.num_value.checked_mul(d.heads * d.head_dim);
        if per_batch.is_none_or(|v| v > i32max) {
            return Err(invalid(format!(
                "MSDeformAttn: S*H*Dh = {}*{}*{} exceeds the kernel's 32-bit offsets",
                d.num_value, d.heads, d.head_dim
            )));
        }
        if d.batch * d.num_query > i32max || d.out_len() > i32max * 256 {
            return Err(invalid(format!(
                "MSDeformAttn: B*Q = {} too large for one launch",
                d.batch * d.num_query
            )));
        }
        let shared = d.heads * d.levels * d.points * MSDA_TAP_BYTES;
        if shared > MAX_SHARED_BYTES {
            return Err(invalid(format!(
                "MSDeformAttn: H*L*P = {} sampling points per query need {shared} bytes of shared memory (limit {MAX_SHARED_BYTES})",
                d.heads * d.levels * d.points
            )));
        }
        Ok(())
    }

    /// The widest channel vector of the optimized kernel (4, 2 or 1 consecutive channels per thread, one
    /// load of `vec * elem_bytes` bytes per corner) that divides `Dh` and to which every address in `addrs`
    /// (the value and output buffers) is aligned.
    pub fn fwd_vec(&self, elem_bytes: usize, addrs: &[u64]) -> usize {
        [4, 2]
            .into_iter()
            .find(|&v| {
                self.head_dim % v == 0 && addrs.iter().all(|&a| a % (v * elem_bytes) as u64 == 0)
            })
            .unwrap_or(1)
    }

    /// Optimized kernel: one block per (b, q), threads over the H*Dh output channels, `vec` consecutive
    /// channels each (1, 2 or 4, dividing `Dh`).
    pub fn fwd_launch(&self, vec: usize) -> Result<LaunchGeometry> {
        if !matches!(vec, 1 | 2 | 4) || self.head_dim % vec != 0 {
            return Err(invalid(format!(
                "MSDeformAttn: {vec} channels per thread must be 1, 2 or 4 and divide Dh = {}",
                self.head_dim
            )));
        }
        let slots = self.heads * self.head_dim / vec;
        Ok(LaunchGeometry {
            grid: (self.batch * self.num_query) as u32,
            block: round_up(slots, 32).clamp(32, 256) as u32,
            shared_bytes: (self.heads * self.levels * self.points * MSDA_TAP_BYTES) as u32,
        })
    }

    /// Naive kernel: one thread per output element.
    pub fn naive_launch(&self) -> LaunchGeometry {
        LaunchGeometry {
            grid: self.out_len().div_ceil(256) as u32,
            block: 256,
            shared_bytes: 0,
        }
    }

    /// Derives the sizes from tensor shapes (value, spatial_shapes, level_start_index, sampling_locations,
    /// attention_weights) and checks them against each other.
    pub fn from_shapes(
        value: &[i64],
        spatial_shapes: &[i64],
        level_start: &[i64],
        locations: &[i64],
        weights: &[i64],
    ) -> Result<Self> {
        let rank = |name: &str, s: &[i64], r: usize| -> Result<()> {
            if s.len() != r {
                return Err(invalid(format!(
                    "MSDeformAttn: {name} must have rank {r}, got shape {s:?}"
                )));
            }
            if s.iter().any(|&v| v < 0) {
                return Err(invalid(format!(
                    "MSDeformAttn: {name} has an unknown dimension: {s:?}"
                )));
            }
            Ok(())
        };
        rank("value", value, 4)?;
        rank("spatial_shapes", spatial_shapes, 2)?;
        rank("level_start_index", level_start, 1)?;
        rank("sampling_locations", locations, 6)?;
        rank("attention_weights", weights, 5)?;
        let u = |v: i64| v as usize;
        let d = MsdaDims {
            batch: u(value[0]),
            num_value: u(value[1]),
            heads: u(value[2]),
            head_dim: u(value[3]),
            num_query: u(locations[1]),
            levels: u(locations[3]),
            points: u(locations[4]),
        };
        let expect_loc = [
            value[0],
            locations[1],
            value[2],
            spatial_shapes[0],
            locations[4],
            2,
        ];
        if locations != expect_loc {
            return Err(invalid(format!(
                "MSDeformAttn: sampling_locations shape {locations:?} does not match [B,Q,H,L,P,2] = {expect_loc:?} \
                 (value {value:?}, spatial_shapes {spatial_shapes:?})"
            )));
        }
        if weights != &locations[..5] {
            return Err(invalid(format!(
                "MSDeformAttn: attention_weights shape {weights:?} must equal sampling_locations[..5] = {:?}",
                &locations[..5]
            )));
        }
        if spatial_shapes[1] != 2 || level_start != [spatial_shapes[0]] {
            return Err(invalid(format!(
                "MSDeformAttn: spatial_shapes must be [L,2] and level_start_index [L], got {spatial_shapes:?} and {level_start:?}"
            )));
        }
        d.validate()?;
        Ok(d)
    }
}

/// Threads per block of the image kernels (one thread per output pixel).
pub const IMAGE_BLOCK: u32 = 256;

/// Most tracks one [`LabelDims`] call can compose (the kernel's by-value track table).
pub const MAX_MASK_TRACKS: usize = 16;

/// Pixel layouts the GPU preprocessing kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFormat {
    /// Packed RGB, 3 bytes per pixel.
    Rgb24 = 0,
    /// Packed BGR, 3 bytes per pixel.
    Bgr24 = 1,
    /// Packed YUYV 4:2:2 (BT.601 limited range), 2 bytes per pixel, even width.
    Yuyv = 2,
    /// Packed RGB and one ignored byte, 4 bytes per pixel.
    Rgbx = 3,
    /// Packed BGR and one ignored byte, 4 bytes per pixel (Jetson's `nvvidconv` output).
    Bgrx = 4,
}

impl FrameFormat {
    /// Bytes per pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            FrameFormat::Rgb24 | FrameFormat::Bgr24 => 3,
            FrameFormat::Yuyv => 2,
            FrameFormat::Rgbx | FrameFormat::Bgrx => 4,
        }
    }
}

/// Sizes of one frame preprocessing call (decode + resize + normalise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreDims {
    /// Frame width in pixels.
    pub in_w: usize,
    /// Frame height in pixels.
    pub in_h: usize,
    /// Bytes per frame row (at least `in_w` pixels).
    pub stride: usize,
    /// Pixel layout.
    pub format: FrameFormat,
    /// Model input width.
    pub out_w: usize,
    /// Model input height.
    pub out_h: usize,
    /// Weights per output column of the horizontal taps.
    pub hksize: usize,
    /// Weights per output row of the vertical taps.
    pub vksize: usize,
}

impl PreDims {
    /// Checks non-zero sizes, the row stride, YUYV's even width and 32-bit index arithmetic.
    pub fn validate(&self) -> Result<()> {
        let d = self;
        if [d.in_w, d.in_h, d.out_w, d.out_h, d.hksize, d.vksize].contains(&0) {
            return Err(invalid(format!("preprocess: empty size in {d:?}")));
        }
        if d.stride < d.in_w * d.format.bytes_per_pixel() {
            return Err(invalid(format!(
                "preprocess: stride {} < {} pixels of {:?}",
                d.stride, d.in_w, d.format
            )));
        }
        if d.format == FrameFormat::Yuyv && d.in_w % 2 != 0 {
            return Err(invalid(format!(
                "preprocess: YUYV width {} must be even",
                d.in_w
            )));
        }
        let big = [
            d.stride.checked_mul(d.in_h),
            d.in_h.checked_mul(d.out_w * 3),
            d.out_h.checked_mul(d.out_w * 3),
        ];
        if big.iter().any(|v| v.is_none_or(|v| v > i32::MAX as usize)) {
            return Err(invalid(format!("preprocess: {d:?} too large")));
        }
        Ok(())
    }
    /// Bytes of the frame (`stride * in_h`).
    pub fn frame_bytes(&self) -> usize {
        self.stride * self.in_h
    }
    /// Bytes of the intermediate image (`in_h * out_w * 3`).
    pub fn tmp_bytes(&self) -> usize {
        self.in_h * self.out_w * 3
    }
    /// Floats of the output (`3 * out_h * out_w`).
    pub fn out_len(&self) -> usize {
        3 * self.out_h * self.out_w
    }
    /// The horizontal pass: one thread per intermediate pixel.
    pub fn hpass_launch(&self) -> LaunchGeometry {
        pixels_launch(self.in_h * self.out_w)
    }
    /// The vertical pass: one thread per output pixel.
    pub fn vpass_launch(&self) -> LaunchGeometry {
        pixels_launch(self.out_h * self.out_w)
    }
}

/// Sizes of one mask composition call (up to [`MAX_MASK_TRACKS`] of `tracks` logit maps -> one label mask).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelDims {
    /// Logit map height.
    pub in_h: usize,
    /// Logit map width.
    pub in_w: usize,
    /// Mask height.
    pub out_h: usize,
    /// Mask width.
    pub out_w: usize,
    /// Logit maps in the buffer (the head engine's queries); the track table picks which are composed.
    pub tracks: usize,
}

impl LabelDims {
    /// Checks non-zero sizes, the track limit and 32-bit index arithmetic.
    pub fn validate(&self) -> Result<()> {
        let d = self;
        if [d.in_h, d.in_w, d.out_h, d.out_w].contains(&0) {
            return Err(invalid(format!("mask labels: empty size in {d:?}")));
        }
        if (d.out_h * d.out_w) > i32::MAX as usize
            || d.tracks
                .checked_mul(d.in_h * d.in_w)
                .is_none_or(|v| v > isize::MAX as usize / 4)
        {
            return Err(invalid(format!("mask labels: {d:?} too large")));
        }
        Ok(())
    }
    /// One thread per mask pixel.
    pub fn launch(&self) -> LaunchGeometry {
        pixels_launch(self.out_h * self.out_w)
    }
}

fn pixels_launch(n: usize) -> LaunchGeometry {
    LaunchGeometry {
        grid: n.div_ceil(IMAGE_BLOCK as usize).max(1) as u32,
        block: IMAGE_BLOCK,
        shared_bytes: 0,
    }
}

/// Sizes of one QueryPrune call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneDims {
    /// B (frames).
    pub batch: usize,
    /// N queries entering the layer.
    pub n: usize,
    /// Lt text tokens (padded ones carry -inf logits).
    pub n_tokens: usize,
    /// K kept queries.
    pub keep: usize,
}

impl PruneDims {
    /// Checks 1 <= K <= N, Lt >= 1 and the shared-memory limit (2*N floats plus the kernels' 128 static
    /// bytes).
    pub fn validate(&self) -> Result<()> {
        let d = self;
        if d.batch == 0 || d.n == 0 || d.n_tokens == 0 {
            return Err(invalid(format!(
                "QueryPrune: B, N and Lt must be > 0, got {d:?}"
            )));
        }
        // The spread kernels put the batch in grid.y.
        if d.batch > MAX_GRID_Y {
            return Err(invalid(format!(
                "QueryPrune: B = {} exceeds the kernels' limit of {MAX_GRID_Y}",
                d.batch
            )));
        }
        if d.keep == 0 || d.keep > d.n {
            return Err(invalid(format!(
                "QueryPrune: keep = {} must be in 1..={}",
                d.keep, d.n
            )));
        }
        if 2 * d.n * 4 + PRUNE_STATIC_SHARED_BYTES > MAX_SHARED_BYTES {
            return Err(invalid(format!(
                "QueryPrune: N = {} exceeds the kernel limit of {}",
                d.n,
                (MAX_SHARED_BYTES - PRUNE_STATIC_SHARED_BYTES) / 8
            )));
        }
        if d.n.checked_mul(d.n).is_none_or(|v| v > i32::MAX as usize)
            || d.n * d.n_tokens > i32::MAX as usize
        {
            return Err(invalid(format!(
                "QueryPrune: N = {} / Lt = {} too large",
                d.n, d.n_tokens
            )));
        }
        Ok(())
    }

    /// Workspace of the spread kernels: the two per-query statistics, `[B, 2, N]` floats.
    pub fn spread_workspace_bytes(&self) -> usize {
        self.batch * 2 * self.n * 4
    }

    /// `query_prune_stats_f32`: `(grid_x, grid_y)` = (one block per 32 queries, B), 16 warps that share
    /// each block's rows.
    pub fn stats_launch(&self) -> (LaunchGeometry, u32) {
        (
            LaunchGeometry {
                grid: self.n.div_ceil(32) as u32,
                block: PRUNE_STATS_BLOCK as u32,
                shared_bytes: 0,
            },
            self.batch as u32,
        )
    }

    /// `query_prune_select_f32`: `(grid_x, grid_y)` = (one block per [`PRUNE_SELECT_QUERIES`] queries,
    /// B), 2N floats shared.
    pub fn select_launch(&self) -> (LaunchGeometry, u32) {
        (
            LaunchGeometry {
                grid: self.n.div_ceil(PRUNE_SELECT_QUERIES) as u32,
                block: PRUNE_SELECT_BLOCK as u32,
                shared_bytes: (2 * self.n * 4) as u32,
            },
            self.batch as u32,
        )
    }

    /// One block per batch item.
    pub fn launch(&self) -> LaunchGeometry {
        LaunchGeometry {
            grid: self.batch as u32,
            block: round_up(self.n, 32).clamp(32, 512) as u32,
            shared_bytes: (2 * self.n * 4) as u32,
        }
    }

    /// Derives the sizes from the shapes of class_logits `[B,N,Lt]`, self_attn `[B,N,N]` and `keep`.
    pub fn from_shapes(logits: &[i64], attn: &[i64], keep: i64) -> Result<Self> {
        if logits.len() != 3 || attn.len() != 3 || logits.iter().chain(attn).any(|&v| v < 0) {
            return Err(invalid(format!(
                "QueryPrune: class_logits must be [B,N,Lt] and self_attn [B,N,N], got {logits:?} and {attn:?}"
            )));
        }
        if attn != [logits[0], logits[1], logits[1]] {
            return Err(invalid(format!(
                "QueryPrune: self_attn shape {attn:?} must be [B,N,N] with class_logits {logits:?}"
            )));
        }
        if keep < 1 {
            return Err(invalid(format!(
                "QueryPrune: keep must be >= 1, got {keep}"
            )));
        }
        let d = PruneDims {
            batch: logits[0] as usize,
            n: logits[1] as usize,
            n_tokens: logits[2] as usize,
            keep: keep as usize,
        };
        d.validate()?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_engine() -> MsdaDims {
        MsdaDims {
            batch: 1,
            num_value: 4795,
            heads: 8,
            head_dim: 32,
            num_query: 900,
            levels: 4,
            points: 4,
        }
    }

    #[test]
    fn msda_geometry_at_real_sizes() {
        let d = frame_engine();
        d.validate().unwrap();
        assert_eq!(
            d.fwd_launch(1).unwrap(),
            LaunchGeometry {
                grid: 900,
                block: 256,
                shared_bytes: 8 * 16 * 32
            }
        );
        // Four channels per thread: 64 threads cover the 256 channels.
        assert_eq!(d.fwd_launch(4).unwrap().block, 64);
        assert_eq!(d.fwd_launch(2).unwrap().block, 128);
        assert!(d.fwd_launch(3).is_err());
        assert_eq!(d.fwd_vec(4, &[0x1000, 0x2000]), 4);
        assert_eq!(d.fwd_vec(2, &[0x1000, 0x2008]), 4);
        assert_eq!(d.fwd_vec(4, &[0x1000, 0x2008]), 2);
        assert_eq!(d.fwd_vec(4, &[0x1004, 0x2000]), 1);
        assert_eq!(
            d.naive_launch().grid as usize * 256,
            round_up(d.out_len(), 256)
        );
        let mask = MsdaDims {
            levels: 1,
            points: 16,
            num_query: 15,
            ..d
        };
        assert_eq!(mask.fwd_launch(1).unwrap().shared_bytes, 8 * 16 * 32);
        let tiny = MsdaDims {
            batch: 2,
            num_value: 83,
            heads: 2,
            head_dim: 4,
            num_query: 7,
            levels: 4,
            points: 4,
        };
        assert_eq!(tiny.fwd_launch(1).unwrap().block, 32);
        assert!(tiny.fwd_launch(4).is_ok());
        let odd = MsdaDims {
            head_dim: 6,
            ..tiny
        };
        assert_eq!(odd.fwd_vec(4, &[0, 0]), 2);
        assert!(odd.fwd_launch(4).is_err());
    }

    #[test]
    fn msda_rejects_bad_sizes() {
        assert!(MsdaDims {
            heads: 0,
            ..frame_engine()
        }
        .validate()
        .is_err());
        let too_many_points = MsdaDims {
            points: 1000,
            ..frame_engine()
        };
        let e = too_many_points.validate().unwrap_err().to_string();
        assert!(e.contains("shared memory"), "{e}");
    }

    #[test]
    fn msda_from_shapes_checks_consistency() {
        let d = MsdaDims::from_shapes(
            &[1, 4795, 8, 32],
            &[4, 2],
            &[4],
            &[1, 900, 8, 4, 4, 2],
            &[1, 900, 8, 4, 4],
        )
        .unwrap();
        assert_eq!(d, frame_engine());
        // Head count differs between value and locations.
        assert!(MsdaDims::from_shapes(
            &[1, 4795, 8, 32],
            &[4, 2],
            &[4],
            &[1, 900, 4, 4, 4, 2],
            &[1, 900, 4, 4, 4]
        )
        .is_err());
        // Weights do not match locations.
        assert!(MsdaDims::from_shapes(
            &[1, 4795, 8, 32],
            &[4, 2],
            &[4],
            &[1, 900, 8, 4, 4, 2],
            &[1, 900, 8, 4, 3]
        )
        .is_err());
        // Wrong rank, unknown dimension, level count mismatch.
        assert!(MsdaDims::from_shapes(
            &[4795, 8, 32],
            &[4, 2],
            &[4],
            &[1, 900, 8, 4, 4, 2],
            &[1, 900, 8, 4, 4]
        )
        .is_err());
        assert!(MsdaDims::from_shapes(
            &[-1, 4795, 8, 32],
            &[4, 2],
            &[4],
            &[1, 900, 8, 4, 4, 2],
            &[1, 900, 8, 4, 4]
        )
        .is_err());
        assert!(MsdaDims::from_shapes(
            &[1, 4795, 8, 32],
            &[4, 2],
            &[3],
            &[1, 900, 8, 4, 4, 2],
            &[1, 900, 8, 4, 4]
        )
        .is_err());
    }

    #[test]
    fn prune_sizes() {
        let d = PruneDims::from_shapes(&[1, 900, 256], &[1, 900, 900], 450).unwrap();
        assert_eq!(
            d.launch(),
            LaunchGeometry {
                grid: 1,
                block: 512,
                shared_bytes: 7200
            }
        );
        assert!(PruneDims::from_shapes(&[1, 900, 256], &[1, 900, 899], 450).is_err());
        assert!(PruneDims::from_shapes(&[1, 15, 256], &[1, 15, 15], 16).is_err());
        assert!(PruneDims::from_shapes(&[1, 15, 256], &[1, 15, 15], 0).is_err());
        assert!(PruneDims::from_shapes(&[1, 8000, 4], &[1, 8000, 8000], 10).is_err());
        assert_eq!(
            PruneDims::from_shapes(&[3, 13, 10], &[3, 13, 13], 7)
                .unwrap()
                .launch()
                .block,
            32
        );
    }

    #[test]
    fn prune_limit_counts_the_static_scratch() {
        // 6128 queries: 2*6128*4 + 128 = 49152 bytes, exactly the limit; one more does not fit.
        let at = |n: usize| PruneDims {
            batch: 1,
            n,
            n_tokens: 4,
            keep: 1,
        };
        assert!(at(6128).validate().is_ok());
        let e = at(6129).validate().unwrap_err().to_string();
        assert!(e.contains("6128"), "{e}");
    }

    #[test]
    fn prune_constants_match_the_kernel_source() {
        let src = crate::sources::PRUNE.src;
        for line in [
            format!("#define RD_PRUNE_STATS_BLOCK {PRUNE_STATS_BLOCK}"),
            format!("#define RD_PRUNE_SELECT_QUERIES {PRUNE_SELECT_QUERIES}"),
            format!("#define RD_PRUNE_SELECT_BLOCK {PRUNE_SELECT_BLOCK}"),
        ] {
            assert!(src.contains(&line), "prune.cu lacks `{line}`");
        }
    }

    #[test]
    fn prune_spread_geometry() {
        let d = PruneDims::from_shapes(&[2, 900, 256], &[2, 900, 900], 450).unwrap();
        let (stats, sy) = d.stats_launch();
        assert_eq!((stats.grid, stats.block, sy), (29, 512, 2));
        let (sel, gy) = d.select_launch();
        assert_eq!(
            (sel.grid, sel.block, sel.shared_bytes, gy),
            (29, 256, 7200, 2)
        );
        assert_eq!(d.spread_workspace_bytes(), 2 * 2 * 900 * 4);
        // The batch is the grid's y: at most 65 535 blocks there.
        let b = |batch: usize| PruneDims {
            batch,
            n: 8,
            n_tokens: 4,
            keep: 4,
        };
        assert!(b(MAX_GRID_Y).validate().is_ok());
        let e = b(MAX_GRID_Y + 1).validate().unwrap_err().to_string();
        assert!(e.contains("65535"), "{e}");
    }

    #[test]
    fn image_sizes() {
        let d = PreDims {
            in_w: 1280,
            in_h: 720,
            stride: 2560,
            format: FrameFormat::Yuyv,
            out_w: 640,
            out_h: 360,
            hksize: 5,
            vksize: 5,
        };
        d.validate().unwrap();
        assert_eq!(d.frame_bytes(), 2560 * 720);
        assert_eq!(d.tmp_bytes(), 720 * 640 * 3);
        assert_eq!(d.out_len(), 3 * 640 * 360);
        assert_eq!(d.hpass_launch().grid, (720 * 640u32).div_ceil(IMAGE_BLOCK));
        assert_eq!(d.vpass_launch().grid, (360 * 640u32).div_ceil(IMAGE_BLOCK));
        let empty = PreDims { out_w: 0, ..d };
        assert!(empty.validate().is_err());
        let l = LabelDims {
            in_h: 90,
            in_w: 160,
            out_h: 360,
            out_w: 640,
            tracks: MAX_MASK_TRACKS,
        };
        l.validate().unwrap();
        assert_eq!(l.launch().block, IMAGE_BLOCK);
        assert!(LabelDims { out_w: 0, ..l }.validate().is_err());
    }
}
