//! The counting global allocator of the allocation tests. It keeps two tallies:
//!
//! - per thread: allocations made by the calling thread while inside [`counted`] (other threads, e.g. a
//!   capture thread or other tests of this binary, are not counted);
//! - process-wide: every allocation of every thread and its size ([`all_threads`]), for code that
//!   allocates on worker threads (rayon, tract), and the bytes live at once ([`live_peak`]). Other
//!   tests of this binary would allocate meanwhile, so a test reading them first moves itself into a
//!   process of its own with [`in_own_process`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

/// Every allocation of the process.
static ALL_ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// Bytes requested by every allocation of the process (a reallocation counts its new size).
static ALL_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Bytes allocated and not yet freed, every thread.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Largest `LIVE` since the last [`reset_live_peak`].
static PEAK: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Allocations this thread made inside [`counted`]. Per thread: a global tally would also count
    /// what another test's `counted` region allocates meanwhile (a step that binds a late camera's
    /// engines made a concurrent zero-allocation test see 144).
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn grow(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(live, Ordering::SeqCst);
}

fn shrink(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::SeqCst);
}

fn note(bytes: usize) {
    ALL_ALLOCS.fetch_add(1, Ordering::SeqCst);
    ALL_BYTES.fetch_add(bytes, Ordering::SeqCst);
    // `try_with` because the allocator can run during thread teardown.
    if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
        let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the allocator
// upholds exactly `System`'s contract; the bookkeeping in `note` touches only atomics and a
// `const`-initialised thread-local `Cell`s (used with `try_with`), none of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        grow(layout.size());
        // SAFETY: the caller guarantees `layout` has a non-zero size, as `System.alloc` requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        grow(layout.size());
        // SAFETY: as for `alloc`: `layout` has a non-zero size.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        shrink(layout.size());
        grow(new_size);
        // SAFETY: `ptr` was returned by this allocator, i.e. by `System`, with `layout`, and the
        // caller guarantees `new_size` is non-zero and does not overflow when rounded to the alignment.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrink(layout.size());
        // SAFETY: `ptr` was returned by this allocator, i.e. by `System`, with the same `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns its result with the number of allocations this thread made in it.
pub fn counted<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCS.with(Cell::get) - before)
}

/// Gives the test harness's own thread time to block on this test's result before a count of
/// every thread's allocations starts. The likely source of 2 allocations seen once in `lanes` on a
/// loaded machine (session 31, not reproduced in 52 runs): the harness thread's first blocking
/// receive can allocate its waiting context, and it may reach it only after a quick test has
/// started counting.
pub fn let_the_harness_block() {
    std::thread::sleep(std::time::Duration::from_millis(200));
}

/// Allocations and bytes allocated so far by every thread of the process.
pub fn all_threads() -> (usize, usize) {
    (
        ALL_ALLOCS.load(Ordering::SeqCst),
        ALL_BYTES.load(Ordering::SeqCst),
    )
}

/// Restarts the peak of live bytes from the bytes live now.
pub fn reset_live_peak() {
    PEAK.store(LIVE.load(Ordering::SeqCst), Ordering::SeqCst);
}

/// (bytes live now, largest number of bytes live at once since [`reset_live_peak`]), every thread.
pub fn live_peak() -> (usize, usize) {
    (LIVE.load(Ordering::SeqCst), PEAK.load(Ordering::SeqCst))
}

/// Set in the child process to the name of the one test it runs.
const ENV_OWN_PROCESS: &str = "REFERDINO_ALLOC_OWN_PROCESS";

/// For tests that read [`all_threads`]: returns `true` when the test `path` (as `module_path!()` gives
/// it inside the test's module, followed by `::` and the test's name) runs alone in a process of its
/// own, and the caller then does the counting. Otherwise re-runs this test binary on that test only,
/// with one test thread (so no other test allocates meanwhile), echoes its output, fails if it
/// failed, and returns `false`: the caller then returns.
pub fn in_own_process(path: &str) -> bool {
    // The harness names tests without the crate's name.
    let name = path.split_once("::").map_or(path, |(_, rest)| rest);
    if std::env::var(ENV_OWN_PROCESS).is_ok_and(|v| v == name) {
        return true;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(ENV_OWN_PROCESS, name)
        .output()
        .expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name} failed in its own process");
    // Guards against a filter that matched nothing (a renamed test would otherwise pass vacuously).
    assert!(
        stdout.contains("1 passed"),
        "{name} did not run in its own process"
    );
    false
}
