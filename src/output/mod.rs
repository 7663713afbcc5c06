//! Where results go: the shared-memory mask ring, PNG masks and overlays.

pub mod ring;

pub use ring::{MaskRing, MaskRingReader};
