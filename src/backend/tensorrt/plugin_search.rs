//! Where our TensorRT plugin library (`libreferdino_plugins.so`) is looked for when no path is given.
//!
//! This needs no TensorRT (the build script and `referdino build --dry-run` print paths from it on any
//! machine), so it is compiled with or without the `tensorrt` feature: `backend/mod.rs` includes this
//! file as [`crate::backend::plugin_search`].

use std::path::{Path, PathBuf};

/// Where the plugin library is looked for when `--plugins` is not given.
pub fn plugin_candidates() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("target/release/libreferdino_plugins.so")];
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        v.push(dir.join("libreferdino_plugins.so"));
    }
    v.push(PathBuf::from(
        "/usr/local/lib/referdino/libreferdino_plugins.so",
    ));
    v
}

/// The first candidate that exists as a file, if any.
pub fn find_plugin_library() -> Option<PathBuf> {
    plugin_candidates().into_iter().find(|p| p.is_file())
}
