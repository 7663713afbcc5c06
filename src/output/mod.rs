//! Where results go: the shared-memory mask ring, PNG masks and overlays.
