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

/// The plugin library loaded into TensorRT's process-wide plugin registry, if any.
///
/// TensorRT's `IPluginRegistry::loadLibrary` registers the library's creators in a registry shared by the
/// whole process; loading the same library a second time fails (its creators are already registered).
/// So it runs once per process: [`load_plugins_once`] remembers the (canonical) path it loaded, a later
/// backend asking for the same library reuses it, and one asking for a different library gets an error
/// that says which one is loaded (TensorRT cannot unload a plugin library while plans may use it).
static LOADED_PLUGINS: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// What [`load_plugins_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginLoad {
    /// The library was loaded now.
    Loaded,
    /// This process had already loaded the same library; nothing was done.
    AlreadyLoaded,
}

/// The key a library is remembered under: its canonical path (so `./lib.so` and `/abs/lib.so` are the
/// same library), or the path as given when it cannot be resolved.
pub fn plugin_key(lib: &Path) -> PathBuf {
    std::fs::canonicalize(lib).unwrap_or_else(|_| lib.to_path_buf())
}

/// Loads plugin library `lib` with `load` unless this process already did (the process-wide record of loaded libraries).
/// `load` runs at most once per process, under a lock, so concurrent callers wait for the first one;
/// when it fails nothing is remembered and a later call may try again.
pub fn load_plugins_once(
    lib: &Path,
    load: impl FnOnce(&Path) -> crate::error::Result<()>,
) -> crate::error::Result<PluginLoad> {
    load_once_in(&LOADED_PLUGINS, lib, load)
}

fn load_once_in(
    cell: &std::sync::Mutex<Option<PathBuf>>,
    lib: &Path,
    load: impl FnOnce(&Path) -> crate::error::Result<()>,
) -> crate::error::Result<PluginLoad> {
    let key = plugin_key(lib);
    // A panic inside an earlier `load` leaves nothing recorded, so a poisoned lock holds valid state.
    let mut loaded = cell.lock().unwrap_or_else(|p| p.into_inner());
    match loaded.as_ref() {
        Some(k) if *k == key => Ok(PluginLoad::AlreadyLoaded),
        Some(k) => Err(crate::error::Error::Backend(format!(
            "plugin library {} cannot be loaded: this process already loaded {} into TensorRT's plugin \
             registry, and TensorRT registers plugin creators once per process (they cannot be replaced \
             or unloaded). Use the same --plugins path for every TensorRT backend of a process",
            lib.display(),
            k.display()
        ))),
        None => {
            load(lib)?;
            *loaded = Some(key);
            Ok(PluginLoad::Loaded)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::sync::Mutex;

    #[test]
    fn plugin_library_loads_once_per_process_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("liba.so");
        let b = dir.path().join("libb.so");
        std::fs::write(&a, b"").unwrap();
        std::fs::write(&b, b"").unwrap();
        let cell = Mutex::new(None);
        let calls = Cell::new(0);
        let ok = |_: &Path| {
            calls.set(calls.get() + 1);
            Ok(())
        };
        // A failed load records nothing; the next call tries again.
        let e = load_once_in(&cell, &a, |_| {
            Err(crate::error::Error::Backend("no such symbol".into()))
        })
        .unwrap_err();
        assert!(e.to_string().contains("no such symbol"), "{e}");
        assert_eq!(load_once_in(&cell, &a, ok).unwrap(), PluginLoad::Loaded);
        // Same library again, also through another spelling of its path: reused, not reloaded.
        let dotted = dir.path().join(".").join("liba.so");
        assert_eq!(
            load_once_in(&cell, &dotted, ok).unwrap(),
            PluginLoad::AlreadyLoaded
        );
        assert_eq!(
            load_once_in(&cell, &a, ok).unwrap(),
            PluginLoad::AlreadyLoaded
        );
        assert_eq!(calls.get(), 1);
        // A different library later is an error naming both.
        let e = load_once_in(&cell, &b, ok).unwrap_err().to_string();
        assert!(e.contains("libb.so") && e.contains("liba.so"), "{e}");
        assert!(e.contains("once per process"), "{e}");
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn unresolvable_paths_are_keyed_as_given() {
        let p = Path::new("/nonexistent/referdino/libreferdino_plugins.so");
        assert_eq!(plugin_key(p), p);
    }
}
