//! `MaskRing`: a shared-memory ring of fixed-size mask slots, one writer, any number of readers.
//!
//! The writer (the streaming session) fills each slot **in place**: [`MaskRing::begin_write`] hands out
//! a [`SlotWriter`] whose `mask` is the slot's bitmap inside the mapped file, so the mask is computed
//! straight into shared memory (and, on Jetson, the mapping can be registered with CUDA through
//! [`MaskRing::mapping`]). Readers in other processes map the same file read-only; a per-slot sequence
//! counter (a seqlock) lets them detect a slot that was being rewritten while they copied it. Readers
//! never write to the file, so a slow or dead reader cannot block the writer.
//!
//! # File layout (version 2, all integers little-endian, offsets in bytes)
//!
//! Version 2 gives the 32 bytes version 1 reserved at slot offset 416 to the object ids of the track
//! table (several referred objects per stream); nothing else moved, and a version 1 file (zeros there)
//! reads as every track belonging to object 0.
//!
//! Header, 128 bytes:
//!
//! | offset | type      | field         | meaning |
//! |-------:|-----------|---------------|---------|
//! | 0      | `[u8; 8]` | magic         | `b"RDMASKR\0"` (written last at creation) |
//! | 8      | u32       | version       | 2 (readers accept 1 and 2) |
//! | 12     | u32       | header_size   | 128 (first slot starts here) |
//! | 16     | u32       | slot_count    | N ≥ 2 |
//! | 20     | u32       | slot_size     | bytes between consecutive slots (multiple of 64) |
//! | 24     | u32       | width         | mask width in pixels |
//! | 28     | u32       | height        | mask height in pixels |
//! | 32     | u32       | max_tracks    | 16 |
//! | 36     | u32       | mask_offset   | offset of the bitmap inside a slot (448) |
//! | 40     | u64       | write_count   | number of slots committed so far (atomic; release on commit) |
//! | 48     | u32       | writer_pid    | process id of the writer |
//! | 52     | u32       | mask_format   | 1 = one byte per pixel, track label (see below) |
//! | 56     | u64       | heartbeat_ns  | `CLOCK_MONOTONIC` time the writer last showed it is alive (atomic; each loop turn, frame or not) |
//! | 64     | u64       | commit_ns     | `CLOCK_MONOTONIC` time of the newest commit (atomic) |
//! | 72     | u32       | writer_state  | 0 = not recorded (older writers), 1 = live, 2 = closed (the writer ended; nothing new will come) |
//! | 76     | 52 bytes  | reserved      | zero |
//!
//! Offsets 56..76 were reserved (zero) in earlier writers of the same version, which readers see as
//! "not recorded". `CLOCK_MONOTONIC` is the machine's, shared by every process (Python:
//! `time.clock_gettime_ns(time.CLOCK_MONOTONIC)`).
//!
//! Slot `k` (0 ≤ k < N) starts at `header_size + k * slot_size`. Commit number `n` (0, 1, 2, …) is
//! stored in slot `n % N`.
//!
//! | offset | type          | field       | meaning |
//! |-------:|---------------|-------------|---------|
//! | 0      | u64           | seq         | seqlock: `2n + 1` while commit `n` is being written, `2n + 2` once it is complete; 0 = never written |
//! | 8      | u64           | frame_id    | id of the source frame |
//! | 16     | u64           | timestamp_ns| capture time of the source frame (ns, source clock) |
//! | 24     | u32           | n_tracks    | number of valid entries in the track table (≤ 16) |
//! | 28     | u32           | flags       | reserved, 0 |
//! | 32     | `[u32; 16]`   | track_ids   | tracker ids of the reported tracks (query index within their object) |
//! | 96     | `[f32; 16]`   | scores      | running-mean score of each track (0..1) |
//! | 160    | `[[f32;4];16]`| boxes       | `x0, y0, x1, y1` in mask pixel coordinates |
//! | 416    | `[u16; 16]`   | object_ids  | id of the referred object each track belongs to (version 2) |
//! | 448    | `[u8; W*H]`   | mask        | row-major, one byte per pixel: 0 = background, `k` (1..=16) = the pixel belongs to track table entry `k-1` |
//!
//! Entries are grouped by object (objects in ascending id, each object's tracks best first). Where
//! two entries' masks overlap, the pixel goes to the entry with the higher running-mean score (the
//! earlier entry on a tie).
//!
//! One byte per pixel (instead of one bit) keeps the bitmap directly usable by numpy/OpenCV and lets a
//! GPU kernel write it without atomics; with a label per pixel the multi-object mode needs one bitmap.
//!
//! # Reading protocol
//!
//! 1. Read `write_count` (acquire). The newest complete commit is `write_count - 1`.
//! 2. For commit `n`, read the slot's `seq` (acquire). It must equal `2n + 2`; larger means the slot
//!    was already overwritten by a newer commit, smaller (or odd) means it is not complete.
//! 3. Copy the fields and the mask, then issue an acquire fence and read `seq` again. If it changed, the
//!    copy may be torn: discard it.
//!
//! # Is the newest mask current?
//!
//! A complete commit stays readable after its writer stopped, so a reader also checks that the writer
//! is alive ([`MaskRingReader::liveness`]): `writer_state` 2 means it ended (a clean exit); a
//! `heartbeat_ns` older than a few loop turns (the runtime beats each turn: at most 100 ms of waiting
//! plus one frame's processing) means it hangs or died without closing (killed, crashed); and a path that now names another file
//! ([`MaskRingReader::replaced`]) means a new writer re-created the ring (a restart): re-open it.
//! `commit_ns` says how old the newest mask is (a silent camera leaves the writer alive but the mask
//! old).
//!
//! The writer holds an exclusive `flock` on the file while it lives, so a second writer given the same
//! name refuses to replace a live ring; the lock goes with the process, so a crashed writer's ring is
//! replaced.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use memmap2::{Mmap, MmapMut};

use crate::access::Access;
use crate::{Error, Result};

/// Magic bytes at offset 0 of a ring file.
pub const MAGIC: [u8; 8] = *b"RDMASKR\0";
/// Layout version written at offset 8.
pub const VERSION: u32 = 2;
/// Oldest layout version readers accept (version 1 has no object ids: they read as 0).
pub const MIN_VERSION: u32 = 1;
/// Size of the file header in bytes.
pub const HEADER_SIZE: usize = 128;
/// Maximum number of tracks per slot.
pub const MAX_TRACKS: usize = 16;
/// Offset of the mask bitmap inside a slot.
pub const MASK_OFFSET: usize = 448;
/// `mask_format` value: one byte per pixel holding a 1-based track-table index (0 = background).
pub const MASK_FORMAT_LABEL_U8: u32 = 1;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_HEADER_SIZE: usize = 12;
const OFF_SLOT_COUNT: usize = 16;
const OFF_SLOT_SIZE: usize = 20;
const OFF_WIDTH: usize = 24;
const OFF_HEIGHT: usize = 28;
const OFF_MAX_TRACKS: usize = 32;
const OFF_MASK_OFFSET: usize = 36;
const OFF_WRITE_COUNT: usize = 40;
const OFF_WRITER_PID: usize = 48;
const OFF_MASK_FORMAT: usize = 52;
const OFF_HEARTBEAT: usize = 56;
const OFF_COMMIT_NS: usize = 64;
const OFF_WRITER_STATE: usize = 72;

/// `writer_state`: the writer is running.
pub const WRITER_LIVE: u32 = 1;
/// `writer_state`: the writer ended; the ring holds its last commits and nothing new will come.
pub const WRITER_CLOSED: u32 = 2;

/// `CLOCK_MONOTONIC` now, in nanoseconds (the clock every process on the machine shares).
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

const S_SEQ: usize = 0;
const S_FRAME_ID: usize = 8;
const S_TIMESTAMP: usize = 16;
const S_N_TRACKS: usize = 24;
const S_TRACK_IDS: usize = 32;
const S_SCORES: usize = 96;
const S_BOXES: usize = 160;
const S_OBJECT_IDS: usize = 416;

/// Largest mask accepted (16384 × 16384 pixels), so a corrupt header cannot request absurd mappings.
const MAX_PIXELS: u64 = crate::limits::MAX_RING_PIXELS;

/// Geometry of a ring: mask size and slot count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingGeometry {
    /// Mask width in pixels.
    pub width: u32,
    /// Mask height in pixels.
    pub height: u32,
    /// Number of slots (≥ 2).
    pub slots: u32,
}

impl RingGeometry {
    /// Bytes between consecutive slots.
    pub fn slot_size(&self) -> usize {
        let raw = MASK_OFFSET + self.width as usize * self.height as usize;
        raw.div_ceil(64) * 64
    }

    /// Total file size in bytes.
    pub fn file_size(&self) -> usize {
        HEADER_SIZE + self.slots as usize * self.slot_size()
    }

    /// Offset of the slot that holds commit `n`.
    fn slot_offset(&self, n: u64) -> usize {
        HEADER_SIZE + (n % self.slots as u64) as usize * self.slot_size()
    }

    fn validate(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 {
            return Err(Error::Config(format!(
                "mask ring: mask size {}x{} must be non-zero",
                self.width, self.height
            )));
        }
        if self.width as u64 * self.height as u64 > MAX_PIXELS {
            return Err(Error::Config(format!(
                "mask ring: mask size {}x{} exceeds {} pixels",
                self.width, self.height, MAX_PIXELS
            )));
        }
        if !(2..=crate::limits::MAX_RING_SLOTS).contains(&self.slots) {
            return Err(Error::Config(format!(
                "mask ring: slot count {} must be in 2..={}",
                self.slots,
                crate::limits::MAX_RING_SLOTS
            )));
        }
        Ok(())
    }
}

/// Whether `path` is a regular file that starts with the ring's magic, or with 8 zero bytes (a ring
/// whose creation stopped before the magic was written last), or is empty.
fn is_replaceable_ring(path: &Path) -> bool {
    use std::io::Read;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.file_type().is_file() {
        return false;
    }
    if meta.len() == 0 {
        return true;
    }
    let mut head = [0u8; 8];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    f.read_exact(&mut head).is_ok() && (head == MAGIC || head == [0; 8])
}

/// Takes the writer's exclusive lock on `file` without waiting (`flock`; it lasts while the open file
/// does, and goes with the process).
fn lock_exclusive(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `file` is an open descriptor for the duration of the call; flock only reads it.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether another process holds the writer's lock on the ring at `path` (a live writer).
fn locked_by_a_writer(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    // The probe's own lock (if it got one) goes when `f` is closed here.
    lock_exclusive(&f).is_err_and(|e| e.raw_os_error() == Some(libc::EWOULDBLOCK))
}

/// Device and inode of the file `path` names now (`None`: it names none), to recognise a ring file.
fn identity_of(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Sizes the ring file to `len` and has the filesystem allocate every block now. On tmpfs
/// (`/dev/shm`) a plain `set_len` reserves nothing, and a later write into a page the filesystem
/// cannot provide kills the process with SIGBUS; allocated up front, a full `/dev/shm` is an error
/// at start-up instead. Filesystems without `fallocate` keep the plain size.
fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    file.set_len(len)?;
    let Ok(off_len) = libc::off_t::try_from(len) else {
        return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: `file` is an open, writable descriptor for the duration of the call.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, off_len) } {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// Resolves a ring name: a bare name (no `/`) lives in `/dev/shm/<name>`, anything else is a path.
pub fn ring_path(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        Path::new("/dev/shm").join(name)
    }
}

/// One track entry of a slot.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TrackEntry {
    /// Tracker id (query index within its object).
    pub id: u32,
    /// Id of the referred object the track belongs to.
    pub object: u16,
    /// Running-mean score.
    pub score: f32,
    /// `x0, y0, x1, y1` in mask pixels.
    pub bbox: [f32; 4],
}

/// How the ring file is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingOptions {
    /// Mode and group of the file (owner-only `0600` by default; see [`Access`]).
    pub access: Access,
    /// Leave the file in place when the writer is dropped (default: remove it).
    pub keep: bool,
}

/// The writer side: creates (or re-creates) the ring file and commits slots.
pub struct MaskRing {
    map: MmapMut,
    /// The ring file, open for the writer's `flock` (held while the writer lives).
    _file: File,
    geom: RingGeometry,
    path: PathBuf,
    /// Next commit number.
    next: u64,
    /// Remove the file on drop (only if it is still the file this writer created).
    remove_on_drop: bool,
    /// Device and inode of the created file, to recognise it at drop time.
    identity: (u64, u64),
}

impl MaskRing {
    /// Marks the ring closed for its readers (`writer_state` [`WRITER_CLOSED`]): the writer will
    /// write no more frames. Dropping the ring does it too; a run calls it first thing when it
    /// stops, before its last work (GIFs, re-scoring) delays the drop.
    pub fn mark_closed(&self) {
        self.atomic_u32_state()
            .store(WRITER_CLOSED, Ordering::Release);
    }
}

impl Drop for MaskRing {
    fn drop(&mut self) {
        // Readers still mapping the file (and, with `keep`, later ones) learn that nothing new comes.
        self.mark_closed();
        if !self.remove_on_drop {
            return;
        }
        use std::os::unix::fs::MetadataExt;
        // Another writer may have re-created the ring at the same path since; leave theirs alone.
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("could not remove mask ring {}: {e}", self.path.display());
                }
            }
            _ => {}
        }
    }
}

impl std::fmt::Debug for MaskRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskRing")
            .field("path", &self.path)
            .field("geom", &self.geom)
            .field("next", &self.next)
            .finish()
    }
}

impl MaskRing {
    /// Creates the ring at `name` (see [`ring_path`]), owner-only (`0600`), and **keeps** the file
    /// when dropped: the same as [`MaskRing::create_with`] with
    /// `RingOptions { keep: true, ..Default::default() }`.
    pub fn create(name: &str, geom: RingGeometry) -> Result<Self> {
        Self::create_with(
            name,
            geom,
            &RingOptions {
                keep: true,
                ..Default::default()
            },
        )
    }

    /// Creates the ring at `name` (see [`ring_path`]) with the mode and group of `opts.access`; the
    /// file is removed when the ring is dropped unless `opts.keep`. An existing file is unlinked
    /// first, so readers still mapping an old ring keep a valid (stale) mapping instead of faulting
    /// on a truncated file.
    pub fn create_with(name: &str, geom: RingGeometry, opts: &RingOptions) -> Result<Self> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        geom.validate()?;
        opts.access.validate()?;
        if name.is_empty() || name.ends_with('/') {
            return Err(Error::Config(format!(
                "mask ring name {name:?} names no file (a name such as referdino-front, or a path)"
            )));
        }
        let path = ring_path(name);
        if std::fs::symlink_metadata(&path).is_ok() {
            // Only a ring left by an earlier run (or one whose creation stopped before its magic)
            // is replaced; anything else at that path is somebody's file.
            if !is_replaceable_ring(&path) {
                return Err(Error::Config(format!(
                    "{} exists and is not a referdino mask ring; refusing to replace it (remove it, or give --ring another name)",
                    path.display()
                )));
            }
            if locked_by_a_writer(&path) {
                return Err(Error::Config(format!(
                    "{} is the mask ring of a running referdino (pid {}); refusing to take it over \
                     (give --ring another name, or stop that process)",
                    path.display(),
                    MaskRingReader::open(&path.to_string_lossy())
                        .map(|r| r.writer_pid().to_string())
                        .unwrap_or_else(|_| "unknown".into())
                )));
            }
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        // Created with at most 0600 (the umask can only narrow it), then set to the requested mode.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(crate::access::OWNER_ONLY)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        opts.access.apply_to_file(&file, &path)?;
        let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
        let identity = (meta.dev(), meta.ino());
        let size = geom.file_size();
        if let Err(e) = lock_exclusive(&file) {
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                // Another writer opened the new file in the instant since it was created.
                let _ = std::fs::remove_file(&path);
                return Err(Error::io(&path, e));
            }
            // A filesystem without locks (some network mounts): the ring works, unguarded.
            log::warn!(
                "mask ring {}: no lock ({e}); a second writer given this name would not be refused",
                path.display()
            );
        }
        if let Err(e) = reserve(&file, size as u64) {
            let _ = std::fs::remove_file(&path);
            let dir = path.parent().unwrap_or(Path::new("/"));
            return Err(Error::Config(format!(
                "mask ring {}: its {size} bytes do not fit in {} ({e}): fewer --ring-slots, or more \
                 room there (a container's /dev/shm: docker run --shm-size)",
                path.display(),
                dir.display()
            )));
        }
        // SAFETY: the file was just created by us with the right length; other processes only read it.
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| Error::io(&path, e))?;
        let slot_size = geom.slot_size();
        {
            let h = &mut map[..HEADER_SIZE];
            h[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
            h[OFF_HEADER_SIZE..OFF_HEADER_SIZE + 4]
                .copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
            h[OFF_SLOT_COUNT..OFF_SLOT_COUNT + 4].copy_from_slice(&geom.slots.to_le_bytes());
            h[OFF_SLOT_SIZE..OFF_SLOT_SIZE + 4].copy_from_slice(&(slot_size as u32).to_le_bytes());
            h[OFF_WIDTH..OFF_WIDTH + 4].copy_from_slice(&geom.width.to_le_bytes());
            h[OFF_HEIGHT..OFF_HEIGHT + 4].copy_from_slice(&geom.height.to_le_bytes());
            h[OFF_MAX_TRACKS..OFF_MAX_TRACKS + 4]
                .copy_from_slice(&(MAX_TRACKS as u32).to_le_bytes());
            h[OFF_MASK_OFFSET..OFF_MASK_OFFSET + 4]
                .copy_from_slice(&(MASK_OFFSET as u32).to_le_bytes());
            h[OFF_WRITER_PID..OFF_WRITER_PID + 4]
                .copy_from_slice(&std::process::id().to_le_bytes());
            h[OFF_MASK_FORMAT..OFF_MASK_FORMAT + 4]
                .copy_from_slice(&MASK_FORMAT_LABEL_U8.to_le_bytes());
            h[OFF_HEARTBEAT..OFF_HEARTBEAT + 8].copy_from_slice(&monotonic_ns().to_le_bytes());
            h[OFF_WRITER_STATE..OFF_WRITER_STATE + 4].copy_from_slice(&WRITER_LIVE.to_le_bytes());
        }
        fence(Ordering::Release);
        map[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&MAGIC);
        log::info!(
            "mask ring {}: {} slots of {}x{} ({} bytes)",
            path.display(),
            geom.slots,
            geom.width,
            geom.height,
            size
        );
        Ok(MaskRing {
            map,
            _file: file,
            geom,
            path,
            next: 0,
            remove_on_drop: !opts.keep,
            identity,
        })
    }

    /// Geometry of this ring.
    pub fn geometry(&self) -> RingGeometry {
        self.geom
    }

    /// Path of the ring file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of slots committed so far.
    pub fn committed(&self) -> u64 {
        self.next
    }

    /// The mask bitmap of the newest committed slot (the writer's own view: no seqlock is needed,
    /// as only this writer changes the file), or `None` before the first commit.
    pub fn newest_mask(&self) -> Option<&[u8]> {
        let n = self.next.checked_sub(1)?;
        let start = self.geom.slot_offset(n) + MASK_OFFSET;
        Some(&self.map[start..start + self.geom.width as usize * self.geom.height as usize])
    }

    /// Base pointer and length of the whole mapping, e.g. for `cudaHostRegister` on Jetson.
    pub fn mapping(&mut self) -> (*mut u8, usize) {
        (self.map.as_mut_ptr(), self.map.len())
    }

    fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= self.map.len());
        // SAFETY: the mapping is page-aligned, `off` is 8-aligned and in bounds; the location is only
        // ever accessed atomically by this crate's readers and writer.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU64) }
    }

    fn atomic_u32_state(&self) -> &AtomicU32 {
        // SAFETY: as `atomic_u64`: offset 72 is 4-aligned and inside the header of every ring.
        unsafe { &*(self.map.as_ptr().add(OFF_WRITER_STATE) as *const AtomicU32) }
    }

    /// Tells readers the writer is alive (`heartbeat_ns` = now). The live runtime calls it every loop
    /// turn (a commit beats too), with or without a frame, so a silent camera is told apart from a
    /// dead writer. One clock
    /// read and one store: no allocation, no system call on Linux (vDSO).
    pub fn heartbeat(&self) {
        self.atomic_u64(OFF_HEARTBEAT)
            .store(monotonic_ns(), Ordering::Release);
    }

    /// Starts writing the next slot. Readers see the slot as "being written" until
    /// [`SlotWriter::commit`]; dropping the writer without committing leaves it marked incomplete and
    /// the next `begin_write` reuses it.
    pub fn begin_write(&mut self) -> SlotWriter<'_> {
        let n = self.next;
        let base = self.geom.slot_offset(n);
        self.atomic_u64(base + S_SEQ)
            .store(2 * n + 1, Ordering::Relaxed);
        // Orders the odd seq before any data store (the seqlock writer fence).
        fence(Ordering::Release);
        let mask_len = self.geom.width as usize * self.geom.height as usize;
        SlotWriter {
            ring: self,
            base,
            n,
            mask_len,
            frame_id: 0,
            timestamp_ns: 0,
            tracks: heapless::Vec::new(),
        }
    }
}

/// A slot being written. `mask()` is the slot's bitmap in shared memory.
pub struct SlotWriter<'a> {
    ring: &'a mut MaskRing,
    base: usize,
    n: u64,
    mask_len: usize,
    /// Frame id to record.
    pub frame_id: u64,
    /// Frame timestamp to record.
    pub timestamp_ns: u64,
    /// Tracks to record (at most [`MAX_TRACKS`]).
    pub tracks: heapless::Vec<TrackEntry, MAX_TRACKS>,
}

impl SlotWriter<'_> {
    /// The commit number this slot will carry.
    pub fn commit_number(&self) -> u64 {
        self.n
    }

    /// The mask bitmap (row-major, `width * height` bytes) to fill in place. Its previous content is
    /// whatever an older frame left there.
    pub fn mask(&mut self) -> &mut [u8] {
        let start = self.base + MASK_OFFSET;
        &mut self.ring.map[start..start + self.mask_len]
    }

    /// Publishes the slot: writes the metadata, then the even sequence number, then `write_count`.
    pub fn commit(self) {
        let base = self.base;
        let map = &mut self.ring.map;
        let put = |map: &mut MmapMut, off: usize, bytes: &[u8]| {
            map[base + off..base + off + bytes.len()].copy_from_slice(bytes);
        };
        put(map, S_FRAME_ID, &self.frame_id.to_le_bytes());
        put(map, S_TIMESTAMP, &self.timestamp_ns.to_le_bytes());
        put(map, S_N_TRACKS, &(self.tracks.len() as u32).to_le_bytes());
        for i in 0..MAX_TRACKS {
            let t = self.tracks.get(i).copied().unwrap_or_default();
            put(map, S_TRACK_IDS + 4 * i, &t.id.to_le_bytes());
            put(map, S_SCORES + 4 * i, &t.score.to_le_bytes());
            put(map, S_OBJECT_IDS + 2 * i, &t.object.to_le_bytes());
            for (j, v) in t.bbox.iter().enumerate() {
                put(map, S_BOXES + 16 * i + 4 * j, &v.to_le_bytes());
            }
        }
        let n = self.n;
        self.ring
            .atomic_u64(base + S_SEQ)
            .store(2 * n + 2, Ordering::Release);
        let now = monotonic_ns();
        self.ring
            .atomic_u64(OFF_COMMIT_NS)
            .store(now, Ordering::Release);
        self.ring
            .atomic_u64(OFF_HEARTBEAT)
            .store(now, Ordering::Release);
        self.ring
            .atomic_u64(OFF_WRITE_COUNT)
            .store(n + 1, Ordering::Release);
        self.ring.next = n + 1;
    }
}

/// What a reader got for one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The copy is complete and consistent.
    Ok,
    /// The requested commit has not been written yet (or is being written).
    NotYet,
    /// The slot already holds a newer commit; the requested one is gone.
    Overwritten,
    /// The slot changed while it was being copied; the copy was discarded.
    Torn,
}

/// A reader-owned copy of one slot (allocated once, reused).
#[derive(Debug, Clone)]
pub struct SlotCopy {
    /// Commit number of the copy.
    pub commit: u64,
    /// Frame id.
    pub frame_id: u64,
    /// Frame timestamp (ns).
    pub timestamp_ns: u64,
    /// Tracks reported in the slot.
    pub tracks: heapless::Vec<TrackEntry, MAX_TRACKS>,
    /// Mask bitmap, `width * height` bytes.
    pub mask: Vec<u8>,
}

/// Read-only view of a ring created by another process.
pub struct MaskRingReader {
    map: Mmap,
    geom: RingGeometry,
    /// The path it was opened at and the file's device and inode then, for [`Self::replaced`].
    path: PathBuf,
    identity: (u64, u64),
}

/// Whether the writer of a ring is still producing masks ([`MaskRingReader::liveness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The writer beat within the allowed silence.
    Live,
    /// The writer ended cleanly; the newest commit is its last.
    Closed,
    /// No heartbeat for this long: the writer hangs, or died without closing (killed, crashed).
    Silent(std::time::Duration),
    /// The path now names another file, or none: a new writer re-created the ring. Re-open it.
    Replaced,
    /// The writer records no heartbeat (an older referdino); nothing can be said.
    Unknown,
}

impl MaskRingReader {
    /// Opens and validates the ring at `name` (see [`ring_path`]).
    pub fn open(name: &str) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let path = ring_path(name);
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
        let identity = (meta.dev(), meta.ino());
        // SAFETY: read-only mapping; the writer never truncates a live ring (it unlinks and recreates).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let bad = |what: String| Error::Other(format!("mask ring {}: {what}", path.display()));
        if map.len() < HEADER_SIZE {
            return Err(bad(format!(
                "file is {} bytes, smaller than the header",
                map.len()
            )));
        }
        if map[OFF_MAGIC..OFF_MAGIC + 8] != MAGIC {
            return Err(bad("bad magic (not a ring, or not initialised yet)".into()));
        }
        fence(Ordering::Acquire);
        let u32_at =
            |off: usize| u32::from_le_bytes(map[off..off + 4].try_into().unwrap_or([0; 4]));
        let version = u32_at(OFF_VERSION);
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(bad(format!(
                "layout version {version}, this reader supports {MIN_VERSION} to {VERSION}"
            )));
        }
        let geom = RingGeometry {
            width: u32_at(OFF_WIDTH),
            height: u32_at(OFF_HEIGHT),
            slots: u32_at(OFF_SLOT_COUNT),
        };
        geom.validate().map_err(|e| bad(e.to_string()))?;
        let slot_size = u32_at(OFF_SLOT_SIZE) as usize;
        if u32_at(OFF_HEADER_SIZE) as usize != HEADER_SIZE
            || u32_at(OFF_MASK_OFFSET) as usize != MASK_OFFSET
            || u32_at(OFF_MAX_TRACKS) as usize != MAX_TRACKS
            || slot_size != geom.slot_size()
        {
            return Err(bad("inconsistent header fields".into()));
        }
        // Version 1 files may hold 0 (written before the field existed); anything else is a format
        // this reader cannot interpret.
        let format = u32_at(OFF_MASK_FORMAT);
        if format != MASK_FORMAT_LABEL_U8 && !(version == 1 && format == 0) {
            return Err(bad(format!(
                "mask format {format}, this reader knows {MASK_FORMAT_LABEL_U8} (one label byte per pixel)"
            )));
        }
        if map.len() < geom.file_size() {
            return Err(bad(format!(
                "file is {} bytes, header needs {}",
                map.len(),
                geom.file_size()
            )));
        }
        Ok(MaskRingReader {
            map,
            geom,
            path,
            identity,
        })
    }

    /// Whether the ring's path now names another file than the one this reader mapped (or none): a
    /// restarted writer re-creates the ring, and this reader keeps seeing the old one until it opens
    /// the path again.
    pub fn replaced(&self) -> bool {
        identity_of(&self.path) != Some(self.identity)
    }

    /// `writer_state`: 0 (not recorded), [`WRITER_LIVE`] or [`WRITER_CLOSED`].
    pub fn writer_state(&self) -> u32 {
        // SAFETY: offset 72 is 4-aligned and inside the header (checked at open).
        let a = unsafe { &*(self.map.as_ptr().add(OFF_WRITER_STATE) as *const AtomicU32) };
        a.load(Ordering::Acquire)
    }

    fn age_of(&self, off: usize) -> Option<std::time::Duration> {
        let t = self.atomic_u64(off).load(Ordering::Acquire);
        (t != 0).then(|| std::time::Duration::from_nanos(monotonic_ns().saturating_sub(t)))
    }

    /// Time since the writer last showed it is alive, or `None` when it records no heartbeat.
    pub fn heartbeat_age(&self) -> Option<std::time::Duration> {
        self.age_of(OFF_HEARTBEAT)
    }

    /// Age of the newest commit (how old the newest mask is), or `None` before the first commit or
    /// when the writer does not record it.
    pub fn newest_age(&self) -> Option<std::time::Duration> {
        self.age_of(OFF_COMMIT_NS)
    }

    /// Whether the writer is still producing masks, allowing `max_silence` without a heartbeat (the
    /// runtime beats every loop turn: at most 100 ms of waiting plus one frame's processing, so allow
    /// several frame times; one second suits a board). A path that names another file now is
    /// [`Liveness::Replaced`] first; then a closed writer is [`Liveness::Closed`] (its file may be
    /// gone: removed at exit); a path gone under a writer that did not close is `Replaced` too.
    pub fn liveness(&self, max_silence: std::time::Duration) -> Liveness {
        let same = identity_of(&self.path).map(|id| id == self.identity);
        if same == Some(false) {
            return Liveness::Replaced;
        }
        match self.writer_state() {
            WRITER_CLOSED => return Liveness::Closed,
            _ if same.is_none() => return Liveness::Replaced,
            WRITER_LIVE => {}
            _ => return Liveness::Unknown,
        }
        match self.heartbeat_age() {
            Some(age) if age > max_silence => Liveness::Silent(age),
            Some(_) => Liveness::Live,
            None => Liveness::Unknown,
        }
    }

    /// Geometry of the ring.
    pub fn geometry(&self) -> RingGeometry {
        self.geom
    }

    /// Process id recorded by the writer.
    pub fn writer_pid(&self) -> u32 {
        u32::from_le_bytes(
            self.map[OFF_WRITER_PID..OFF_WRITER_PID + 4]
                .try_into()
                .unwrap_or([0; 4]),
        )
    }

    fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        // SAFETY: 8-aligned, in bounds (checked at open); page-aligned mapping.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU64) }
    }

    /// Number of commits so far; the newest complete one is `write_count() - 1`.
    pub fn write_count(&self) -> u64 {
        self.atomic_u64(OFF_WRITE_COUNT).load(Ordering::Acquire)
    }

    /// A buffer sized for this ring's slots.
    pub fn new_copy(&self) -> SlotCopy {
        SlotCopy {
            commit: 0,
            frame_id: 0,
            timestamp_ns: 0,
            tracks: heapless::Vec::new(),
            mask: vec![0; self.geom.width as usize * self.geom.height as usize],
        }
    }

    fn read_u64(&self, off: usize) -> u64 {
        // SAFETY: in bounds; volatile because the writer may be changing it (the seqlock decides).
        unsafe { std::ptr::read_volatile(self.map.as_ptr().add(off) as *const u64) }
    }

    fn read_u16(&self, off: usize) -> u16 {
        // SAFETY: as above, 2-aligned (slot bases are 64-aligned) and in bounds.
        unsafe { std::ptr::read_volatile(self.map.as_ptr().add(off) as *const u16) }
    }

    fn read_u32(&self, off: usize) -> u32 {
        // SAFETY: as above, 4-aligned and in bounds.
        unsafe { std::ptr::read_volatile(self.map.as_ptr().add(off) as *const u32) }
    }

    /// Copies commit `n` into `out`. Never blocks and never writes to the ring. `out` is changed only
    /// by [`ReadOutcome::Ok`] (the copy) and [`ReadOutcome::Torn`] (marked invalid: `commit` is
    /// `u64::MAX` and the track list empty; its mask bytes are partial).
    pub fn read(&self, n: u64, out: &mut SlotCopy) -> ReadOutcome {
        let base = self.geom.slot_offset(n);
        // A hostile or corrupt file can hold any write_count; commits past 2^63 - 2 cannot be
        // encoded in a seq and are never complete.
        let Some(want) = n.checked_mul(2).and_then(|x| x.checked_add(2)) else {
            return ReadOutcome::NotYet;
        };
        let s1 = self.atomic_u64(base + S_SEQ).load(Ordering::Acquire);
        if s1 != want {
            return if s1 > want {
                ReadOutcome::Overwritten
            } else {
                ReadOutcome::NotYet
            };
        }
        out.commit = n;
        out.frame_id = u64::from_le(self.read_u64(base + S_FRAME_ID));
        out.timestamp_ns = u64::from_le(self.read_u64(base + S_TIMESTAMP));
        let nt = (u32::from_le(self.read_u32(base + S_N_TRACKS)) as usize).min(MAX_TRACKS);
        out.tracks.clear();
        for i in 0..nt {
            let f = |off: usize| f32::from_bits(u32::from_le(self.read_u32(base + off)));
            let entry = TrackEntry {
                id: u32::from_le(self.read_u32(base + S_TRACK_IDS + 4 * i)),
                object: u16::from_le(self.read_u16(base + S_OBJECT_IDS + 2 * i)),
                score: f(S_SCORES + 4 * i),
                bbox: [
                    f(S_BOXES + 16 * i),
                    f(S_BOXES + 16 * i + 4),
                    f(S_BOXES + 16 * i + 8),
                    f(S_BOXES + 16 * i + 12),
                ],
            };
            // Capacity is MAX_TRACKS and nt ≤ MAX_TRACKS, so this cannot fail.
            let _ = out.tracks.push(entry);
        }
        let len = out
            .mask
            .len()
            .min(self.geom.width as usize * self.geom.height as usize);
        // SAFETY: source range is inside the mapping (checked at open); a concurrent write can only
        // make the bytes inconsistent, which the second seq check below detects.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(base + MASK_OFFSET),
                out.mask.as_mut_ptr(),
                len,
            );
        }
        fence(Ordering::Acquire);
        let s2 = self.atomic_u64(base + S_SEQ).load(Ordering::Relaxed);
        if s2 != s1 {
            // Nothing of a torn copy may pass for commit `n`.
            out.commit = u64::MAX;
            out.tracks.clear();
            return ReadOutcome::Torn;
        }
        ReadOutcome::Ok
    }

    /// Copies the newest complete commit into `out`; returns its commit number, or `None` when nothing
    /// has been written yet or the newest slot changed during the copy (call again).
    pub fn read_latest(&self, out: &mut SlotCopy) -> Option<u64> {
        let count = self.write_count();
        if count == 0 {
            return None;
        }
        match self.read(count - 1, out) {
            ReadOutcome::Ok => Some(count - 1),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_name(tag: &str) -> String {
        let dir = std::env::temp_dir();
        dir.join(format!("referdino-ring-{tag}-{}", std::process::id()))
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn layout_sizes() {
        let g = RingGeometry {
            width: 640,
            height: 360,
            slots: 4,
        };
        assert_eq!(g.slot_size(), (448 + 640 * 360usize).div_ceil(64) * 64);
        assert_eq!(g.file_size(), 128 + 4 * g.slot_size());
        assert_eq!(ring_path("abc"), PathBuf::from("/dev/shm/abc"));
        assert_eq!(ring_path("./abc"), PathBuf::from("./abc"));
    }

    #[test]
    fn write_then_read_roundtrip_and_overwrite() {
        let name = tmp_name("rt");
        let geom = RingGeometry {
            width: 8,
            height: 4,
            slots: 3,
        };
        let mut ring = MaskRing::create(&name, geom).unwrap();
        let reader = MaskRingReader::open(&name).unwrap();
        let mut copy = reader.new_copy();
        assert_eq!(reader.read_latest(&mut copy), None);
        assert_eq!(reader.read(0, &mut copy), ReadOutcome::NotYet);
        assert!(ring.newest_mask().is_none());
        for f in 0..5u64 {
            let mut w = ring.begin_write();
            w.frame_id = 100 + f;
            w.timestamp_ns = 7 * f;
            w.tracks
                .push(TrackEntry {
                    id: f as u32,
                    object: 3,
                    score: 0.5,
                    bbox: [1.0, 2.0, 3.0, 4.0],
                })
                .unwrap();
            w.mask().fill(f as u8);
            w.commit();
        }
        assert_eq!(reader.write_count(), 5);
        assert_eq!(reader.read_latest(&mut copy), Some(4));
        assert_eq!(copy.frame_id, 104);
        assert_eq!(copy.timestamp_ns, 28);
        assert_eq!(copy.tracks.len(), 1);
        assert_eq!(copy.tracks[0].bbox, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(copy.tracks[0].object, 3);
        assert!(copy.mask.iter().all(|&b| b == 4));
        assert_eq!(ring.newest_mask(), Some(&copy.mask[..]));
        // Commit 1 lived in slot 1, now holding commit 4? No: 4 % 3 = 1, so commit 1 is gone.
        assert_eq!(reader.read(1, &mut copy), ReadOutcome::Overwritten);
        assert_eq!(reader.read(2, &mut copy), ReadOutcome::Ok);
        assert_eq!(copy.frame_id, 102);
        assert_eq!(reader.read(5, &mut copy), ReadOutcome::NotYet);
        // An uncommitted write marks the slot in progress without advancing the count.
        {
            let mut w = ring.begin_write();
            w.mask().fill(9);
        }
        assert_eq!(reader.write_count(), 5);
        // The writer's newest mask is still commit 4's, not the abandoned write's.
        assert!(ring.newest_mask().unwrap().iter().all(|&b| b == 4));
        assert_eq!(reader.read(2, &mut copy), ReadOutcome::Overwritten);
        assert_eq!(reader.read(5, &mut copy), ReadOutcome::NotYet);
        std::fs::remove_file(ring.path()).unwrap();
    }

    #[test]
    fn reader_rejects_garbage_and_bad_geometry() {
        let name = tmp_name("bad");
        std::fs::write(&name, b"not a ring at all").unwrap();
        let err = MaskRingReader::open(&name).err().unwrap().to_string();
        assert!(err.contains("smaller than the header"), "{err}");
        std::fs::write(&name, vec![0u8; 256]).unwrap();
        let err = MaskRingReader::open(&name).err().unwrap().to_string();
        assert!(err.contains("bad magic"), "{err}");
        std::fs::remove_file(&name).unwrap();
        assert!(MaskRing::create(
            &name,
            RingGeometry {
                width: 0,
                height: 4,
                slots: 3
            }
        )
        .is_err());
        assert!(MaskRing::create(
            &name,
            RingGeometry {
                width: 4,
                height: 4,
                slots: 1
            }
        )
        .is_err());
        let missing = MaskRingReader::open("/nonexistent-dir/ring")
            .err()
            .unwrap()
            .to_string();
        assert!(missing.contains("/nonexistent-dir/ring"), "{missing}");
    }

    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    const SMALL: RingGeometry = RingGeometry {
        width: 4,
        height: 4,
        slots: 2,
    };

    #[test]
    fn ring_is_owner_only_by_default_and_removed_on_drop() {
        let name = tmp_name("perm");
        let ring = MaskRing::create_with(&name, SMALL, &RingOptions::default()).unwrap();
        let path = ring.path().to_path_buf();
        assert_eq!(mode_of(&path), 0o600);
        // A reader can still open it (same account).
        assert!(MaskRingReader::open(&name).is_ok());
        drop(ring);
        assert!(!path.exists(), "ring file left behind");
    }

    /// Someone else's file at the ring's path is refused and left as it was; a ring from an earlier
    /// run (kept, or whose creation stopped early) is replaced; an empty name is refused.
    #[test]
    fn only_an_old_ring_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious.bin");
        std::fs::write(&path, b"somebody's data").unwrap();
        let name = path.to_str().unwrap();
        let e = MaskRing::create_with(name, SMALL, &RingOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is not a referdino mask ring"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"somebody's data");
        // A kept ring of an earlier run, then an empty file, then a ring whose magic was never
        // written.
        std::fs::remove_file(&path).unwrap();
        let kept = RingOptions {
            keep: true,
            ..RingOptions::default()
        };
        drop(MaskRing::create_with(name, SMALL, &kept).unwrap());
        std::fs::write(&path, b"").unwrap();
        drop(MaskRing::create_with(name, SMALL, &kept).unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..8].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        drop(MaskRing::create_with(name, SMALL, &RingOptions::default()).unwrap());
        assert!(!path.exists());
        // A directory is not a ring either.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(MaskRing::create_with(sub.to_str().unwrap(), SMALL, &kept).is_err());
        assert!(sub.is_dir());
        for bad in ["", "/tmp/"] {
            let e = MaskRing::create_with(bad, SMALL, &kept)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("names no file"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn ring_mode_group_and_keep_options() {
        let name = tmp_name("mode");
        let opts = RingOptions {
            access: Access {
                mode: 0o640,
                // Our own primary group is always allowed.
                group: Some(own_gid()),
            },
            keep: true,
        };
        let ring = MaskRing::create_with(&name, SMALL, &opts).unwrap();
        let path = ring.path().to_path_buf();
        assert_eq!(mode_of(&path), 0o640);
        drop(ring);
        assert!(path.exists(), "keep: the file must stay");
        // The legacy constructor keeps the file too, and is owner-only.
        let ring = MaskRing::create(&name, SMALL).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        drop(ring);
        assert!(path.exists());
        std::fs::remove_file(&path).unwrap();
        // Set-id bits are refused.
        let bad = RingOptions {
            access: Access {
                mode: 0o2660,
                group: None,
            },
            keep: false,
        };
        assert!(MaskRing::create_with(&name, SMALL, &bad).is_err());
        assert!(!path.exists());
    }

    /// The group of a file this process just created: one it may hand files to.
    fn own_gid() -> u32 {
        use std::os::unix::fs::MetadataExt;
        let probe = std::env::temp_dir().join(format!("referdino-gid-{}", std::process::id()));
        std::fs::write(&probe, b"").unwrap();
        let gid = std::fs::metadata(&probe).unwrap().gid();
        std::fs::remove_file(&probe).unwrap();
        gid
    }

    #[test]
    fn drop_leaves_a_newer_ring_at_the_same_path_alone() {
        let name = tmp_name("newer");
        let old = MaskRing::create_with(&name, SMALL, &RingOptions::default()).unwrap();
        let path = old.path().to_path_buf();
        // Somebody removes the live ring, and a second writer creates one at the same path.
        std::fs::remove_file(&path).unwrap();
        let newer = MaskRing::create_with(&name, SMALL, &RingOptions::default()).unwrap();
        drop(old);
        assert!(
            path.exists(),
            "the first writer removed the second writer's ring"
        );
        drop(newer);
        assert!(!path.exists());
    }

    /// A second writer given a live writer's ring name is refused (the writer's lock); once the first
    /// is gone (a kept ring, or a crashed writer's: the lock goes with the process) it is replaced.
    #[test]
    fn a_live_writers_ring_is_not_taken_over() {
        let name = tmp_name("live");
        let kept = RingOptions {
            keep: true,
            ..RingOptions::default()
        };
        let first = MaskRing::create_with(&name, SMALL, &kept).unwrap();
        let e = MaskRing::create_with(&name, SMALL, &kept)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("running referdino") && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(first);
        let second = MaskRing::create_with(&name, SMALL, &RingOptions::default()).unwrap();
        drop(second);
        assert!(!Path::new(&name).exists());
    }

    /// A reader tells a live writer from a silent, a closed and a replaced one.
    #[test]
    fn readers_see_whether_the_writer_lives() {
        use std::time::Duration;
        let name = tmp_name("alive");
        let kept = RingOptions {
            keep: true,
            ..RingOptions::default()
        };
        let mut ring = MaskRing::create_with(&name, SMALL, &kept).unwrap();
        let reader = MaskRingReader::open(&name).unwrap();
        let long = Duration::from_secs(3600);
        assert_eq!(reader.liveness(long), Liveness::Live);
        assert!(reader.newest_age().is_none(), "no commit yet");
        assert!(!reader.replaced());
        std::thread::sleep(Duration::from_millis(20));
        match reader.liveness(Duration::from_millis(10)) {
            Liveness::Silent(age) => assert!(age >= Duration::from_millis(10), "{age:?}"),
            other => panic!("{other:?}"),
        }
        ring.heartbeat();
        assert_eq!(reader.liveness(Duration::from_millis(10)), Liveness::Live);
        ring.begin_write().commit();
        assert!(reader.newest_age().unwrap() < long);
        drop(ring);
        assert_eq!(reader.liveness(long), Liveness::Closed);
        // A new writer at the same path: the old mapping is replaced, a fresh reader is live.
        let ring = MaskRing::create_with(&name, SMALL, &RingOptions::default()).unwrap();
        assert!(reader.replaced());
        assert_eq!(reader.liveness(long), Liveness::Replaced);
        assert_eq!(
            MaskRingReader::open(&name).unwrap().liveness(long),
            Liveness::Live
        );
        drop(ring);
        // Removed at a clean exit: closed (the mapping says so), and the path is gone.
        assert!(reader.replaced());
    }
}
