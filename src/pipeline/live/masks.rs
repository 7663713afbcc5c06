//! Where a stream's label masks are written. With a shared-memory ring (`--ring`) the step writes
//! each frame's mask straight into the ring's next slot, the slot is committed with the frame's
//! tracks, and every sink (overlays, `--save-dir`, your own) reads that committed slot: the mask is
//! computed once, in the place readers in other processes map, and nothing copies it. This is also
//! the shape the device path needs, whose kernel writes the slot through CUDA's mapping of the ring.
//! Without a ring, one host buffer per stream takes the mask.

use crate::output::ring::{MaskRing, RingGeometry, RingOptions};
use crate::pipeline::stream::FrameResult;
use crate::Result;

/// A stream's mask destination: its ring, or a host buffer.
pub(crate) enum MaskTarget {
    /// One frame-size label mask, rewritten every frame.
    Host(Vec<u8>),
    /// The stream's mask ring: each frame a new slot.
    Ring(MaskRing),
}

impl MaskTarget {
    /// A host buffer for `width × height` masks.
    pub(crate) fn host(width: u32, height: u32) -> Self {
        MaskTarget::Host(vec![0; width as usize * height as usize])
    }

    /// Creates the ring `name` for `width × height` masks.
    pub(crate) fn create_ring(
        name: &str,
        width: u32,
        height: u32,
        slots: u32,
        opts: &RingOptions,
    ) -> Result<Self> {
        let geometry = RingGeometry {
            width,
            height,
            slots,
        };
        Ok(MaskTarget::Ring(MaskRing::create_with(
            name, geometry, opts,
        )?))
    }

    /// Runs `step` on the mask to fill (the ring's next slot, or the host buffer). A ring slot is
    /// committed with `frame_id`, `timestamp_ns` and the result's tracks when `step` succeeds; a
    /// failed step leaves it uncommitted (readers never see it; the next frame reuses it).
    pub(crate) fn write(
        &mut self,
        frame_id: u64,
        timestamp_ns: u64,
        step: impl FnOnce(&mut [u8]) -> Result<FrameResult>,
    ) -> Result<FrameResult> {
        match self {
            MaskTarget::Host(mask) => step(mask),
            MaskTarget::Ring(ring) => {
                let mut slot = ring.begin_write();
                let res = step(slot.mask())?;
                slot.frame_id = frame_id;
                slot.timestamp_ns = timestamp_ns;
                slot.tracks = res.tracks.clone();
                slot.commit();
                Ok(res)
            }
        }
    }

    /// The newest mask: the last committed ring slot (empty before the first), or the host buffer.
    pub(crate) fn newest(&self) -> &[u8] {
        match self {
            MaskTarget::Host(mask) => mask,
            MaskTarget::Ring(ring) => ring.newest_mask().unwrap_or(&[]),
        }
    }

    /// The ring to write into, if the stream has one.
    #[cfg_attr(not(feature = "tensorrt"), allow(dead_code))]
    pub(crate) fn ring_mut(&mut self) -> Option<&mut MaskRing> {
        match self {
            MaskTarget::Host(_) => None,
            MaskTarget::Ring(ring) => Some(ring),
        }
    }

    /// The ring, if the stream has one.
    pub(crate) fn ring(&self) -> Option<&MaskRing> {
        match self {
            MaskTarget::Host(_) => None,
            MaskTarget::Ring(ring) => Some(ring),
        }
    }
}
