//! Where results go: the shared-memory mask ring, PNG masks and overlays.

pub mod overlay;
pub mod png;
pub mod ring;

pub use ring::{MaskRing, MaskRingReader};
