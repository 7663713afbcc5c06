//! Device memory, page-locked host memory and the GPU frame I/O of the device-resident path (feature
//! `cuda`; used by [`crate::pipeline::device_stream`] with the TensorRT backend).
//!
//! - [`DeviceBuffer`]: one `cuMemAlloc` per engine binding, made once per session.
//! - [`Pinned`]: page-locked host memory, also mapped into the device's address space: the small
//!   tensors the host truly needs (tracker inputs, scores) are copied into it asynchronously, and the
//!   camera frame is written into one so that the preprocessing kernel reads it in place.
//! - [`GpuPreprocess`]: camera frame → the frame engine's normalised input, with the CPU
//!   preprocessor's own tables (bit-identical, see `plugins/tests/gpu/image.rs`).
//! - [`RegisteredRing`] + [`GpuMasks`]: the mask ring's shared mapping registered with CUDA, and the
//!   head's mask logits composed into a ring slot by one kernel (every byte written once, none read).
//!
//! Every call takes the CUDA stream the engines run on, so that copies, kernels and engines are ordered
//! without host synchronization.
//!
//! **Host emulation** ([`Stream::host`]): the same types on host memory (a "device pointer" is a host
//! address), copies by `memcpy`, the kernels' CPU counterparts (the [`Preprocessor`] and the
//! [`LabelUpsampler`] whose tables the kernels use), synchronization a no-op. It runs the
//! device-resident session's orchestration (what is copied where, rows, windows, chunks, finalize) on
//! machines without a GPU (`tests/gpu_device.rs`); it says nothing about CUDA itself, which the GPU
//! check kit tests.

use std::sync::Arc;

use cudarc::driver::{result as cu, sys};
use referdino_plugins::dims::{FrameFormat, LabelDims, PreDims};
use referdino_plugins::kernels::{Kernels, LabelPtrs, PrePtrs, TrackTable};

use crate::backend::{DeviceSpan, View, ViewMut};
use crate::camera::convert::{layout_to_rgb, Preprocessor};
use crate::camera::Layout;
use crate::error::{Error, Result};
use crate::output::ring::{MaskRing, SlotWriter};
use crate::pipeline::labels::LabelUpsampler;

/// The CUDA stream the engines run on ([`crate::backend::Engine::cuda_stream`]), every copy and kernel
/// here ordered on it; or the host emulation (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream(Option<sys::CUstream>);

// SAFETY: a stream handle may be used from any thread (the driver API is thread safe); the value only
// carries the handle.
unsafe impl Send for Stream {}

impl Stream {
    /// Wraps a raw handle.
    ///
    /// # Safety
    /// `raw` must be a live CUDA stream of the context current where the value is used, and stay live
    /// for as long as the value (and anything it was handed to) is used.
    pub unsafe fn from_raw(raw: sys::CUstream) -> Self {
        Stream(Some(raw))
    }

    /// The host emulation: memory in host allocations, work done at once on the CPU.
    pub fn host() -> Self {
        Stream(None)
    }

    /// True for the host emulation.
    pub fn is_host(self) -> bool {
        self.0.is_none()
    }

    /// The CUDA context the stream belongs to (none under the emulation).
    pub fn context(self) -> Result<Context> {
        let Some(s) = self.0 else {
            return Ok(Context(None));
        };
        let mut ctx: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: `s` is a live stream (`from_raw`'s contract); writes one context handle.
        unsafe { sys::cuStreamGetCtx(s, &mut ctx) }
            .result()
            .map_err(gpu_err("cuStreamGetCtx"))?;
        Ok(Context(Some(ctx)))
    }
}

/// A stream's CUDA context, resolved once ([`Stream::context`]).
#[derive(Debug, Clone, Copy)]
pub struct Context(Option<sys::CUcontext>);

// SAFETY: a context handle may be made current on any thread (the driver API is thread safe); the
// value only carries the handle.
unsafe impl Send for Context {}

impl Context {
    /// Makes the context current on the calling thread (nothing under the emulation). The driver
    /// calls of a session take the current context; a session used from a thread other than the one
    /// that made its engines would otherwise have none (or another one) current.
    pub fn bind(self) -> Result<()> {
        match self.0 {
            // SAFETY: the context of a live stream, which outlives the session holding this value.
            Some(c) => unsafe { sys::cuCtxSetCurrent(c) }
                .result()
                .map_err(gpu_err("cuCtxSetCurrent")),
            None => Ok(()),
        }
    }
}

/// Copies `bytes` from address `src` to `dst` on the host (the emulation's device copy).
///
/// # Safety
/// Both ranges must lie in live host allocations (the emulation's buffers, checked by their `at`), not
/// borrowed elsewhere during the call.
unsafe fn host_copy(dst: u64, src: u64, bytes: usize) {
    // SAFETY: the caller's contract; `copy` allows the ranges to overlap.
    unsafe { std::ptr::copy(src as usize as *const u8, dst as usize as *mut u8, bytes) }
}

/// Zeroed host memory of at least `bytes` bytes, 8-byte aligned (the emulation's allocation).
fn host_alloc(bytes: usize) -> Vec<u64> {
    vec![0u64; bytes.max(1).div_ceil(8)]
}

fn gpu_err(what: &str) -> impl Fn(cu::DriverError) -> Error + '_ {
    move |e| Error::Gpu(format!("{what}: {e}"))
}

/// Device memory of a fixed size, freed on drop (host memory under the emulation).
#[derive(Debug)]
pub struct DeviceBuffer {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    /// The emulation's allocation (`ptr` is its address); `None` for device memory.
    host: Option<Vec<u64>>,
}

// SAFETY: a device allocation is not tied to a host thread; the handle is only used through the driver
// API, which is thread safe, with the context bound by the caller.
unsafe impl Send for DeviceBuffer {}

impl DeviceBuffer {
    /// Allocates `bytes` (at least 1) of device memory in the current context (zeroed host memory
    /// under the emulation).
    pub fn new(bytes: usize, what: &str, stream: Stream) -> Result<Self> {
        if stream.is_host() {
            // `as_mut_ptr`: the emulation writes through this address.
            let mut host = host_alloc(bytes);
            let ptr = host.as_mut_ptr() as usize as u64;
            return Ok(DeviceBuffer {
                ptr,
                bytes,
                host: Some(host),
            });
        }
        // SAFETY: a plain allocation; the pointer is owned by the returned value and freed once on drop.
        let ptr = unsafe { cu::malloc_sync(bytes.max(1)) }
            .map_err(|e| Error::Gpu(format!("allocate {bytes} bytes for {what}: {e}")))?;
        Ok(DeviceBuffer {
            ptr,
            bytes,
            host: None,
        })
    }

    /// Device pointer.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Device pointer `offset` bytes in, checked to leave `len` bytes.
    pub fn at(&self, offset: usize, len: usize) -> Result<u64> {
        if offset.checked_add(len).is_none_or(|end| end > self.bytes) {
            return Err(Error::Gpu(format!(
                "device range {offset}+{len} outside a buffer of {} bytes",
                self.bytes
            )));
        }
        Ok(self.ptr + offset as u64)
    }

    /// The whole buffer as a span engines may read and write.
    fn span(&self) -> DeviceSpan {
        // SAFETY: `ptr` is this buffer's own allocation of `bytes` bytes (device memory in the
        // session's context, or the emulation's host allocation, which only the emulation reads).
        // The device session that owns the buffer holds it for as long as engines use its views: its
        // bindings are dropped with it, and it synchronizes its stream before freeing anything.
        unsafe { DeviceSpan::new(self.ptr, self.bytes) }
    }

    /// An engine input view of the whole buffer.
    pub fn view(&self) -> View<'static> {
        View::Device(self.span())
    }

    /// An engine output view of the whole buffer.
    pub fn view_mut(&self) -> ViewMut<'static> {
        ViewMut::Device(self.span())
    }

    /// Zeroes the buffer on `stream`.
    pub fn zero(&self, stream: Stream) -> Result<()> {
        self.zero_range(0, self.bytes, stream)
    }

    /// Zeroes `len` bytes from `offset` on `stream`.
    pub fn zero_range(&self, offset: usize, len: usize, stream: Stream) -> Result<()> {
        let at = self.at(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        match stream.0 {
            // SAFETY: `at..at+len` lies inside this buffer (checked by `at`), which outlives the
            // session's stream work.
            Some(s) => unsafe { cu::memset_d8_async(at, 0, len, s) }.map_err(gpu_err("memset")),
            None => {
                // SAFETY: under the emulation `at..at+len` lies inside this buffer's host allocation
                // (checked by `at`), which no reference borrows during the call.
                unsafe { std::ptr::write_bytes(at as usize as *mut u8, 0, len) };
                Ok(())
            }
        }
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.host.is_none() {
            // SAFETY: allocated by `malloc_sync` in `new` and freed only here.
            let _ = unsafe { cu::free_sync(self.ptr) };
        }
    }
}

/// Page-locked host memory of `len` elements, mapped into the device's address space (so a kernel can
/// read or write it in place, and copies to and from it are truly asynchronous). Freed on drop.
pub struct Pinned<T: bytemuck::Pod> {
    host: *mut T,
    dev: sys::CUdeviceptr,
    len: usize,
    /// The emulation's allocation (`host` points into it, `dev` is its address).
    emulated: Option<Vec<T>>,
}

// SAFETY: the allocation is owned by the value; access goes through `&self`/`&mut self` like a `Vec`.
unsafe impl<T: bytemuck::Pod + Send> Send for Pinned<T> {}

impl<T: bytemuck::Pod> Pinned<T> {
    /// Allocates `len` zeroed elements in the current context (plain host memory under the emulation).
    pub fn new(len: usize, what: &str, stream: Stream) -> Result<Self> {
        if stream.is_host() {
            let mut v = vec![T::zeroed(); len.max(1)];
            let host = v.as_mut_ptr();
            return Ok(Pinned {
                host,
                dev: host as usize as u64,
                len,
                emulated: Some(v),
            });
        }
        let bytes = len.max(1) * std::mem::size_of::<T>();
        // SAFETY: a plain allocation; checked for null below and freed once on drop.
        let host = unsafe {
            cu::malloc_host(
                bytes,
                sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE,
            )
        }
        .map_err(|e| Error::Gpu(format!("page-locked {bytes} bytes for {what}: {e}")))?
            as *mut T;
        if host.is_null() {
            return Err(Error::Gpu(format!("page-locked memory for {what}: null")));
        }
        // SAFETY: `host` points to `bytes` freshly allocated bytes, suitably aligned for T (page
        // aligned); zero is a valid T (Pod).
        unsafe { std::ptr::write_bytes(host.cast::<u8>(), 0, bytes) };
        let mut dev = 0;
        // SAFETY: `host` was allocated with DEVICEMAP in the current context; writes one pointer.
        unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, host.cast(), 0) }
            .result()
            .map_err(|e| Error::Gpu(format!("device alias of {what}: {e}")))?;
        Ok(Pinned {
            host,
            dev,
            len,
            emulated: None,
        })
    }

    /// The host side.
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `len` initialised elements live at `host` until drop; shared borrow of self.
        unsafe { std::slice::from_raw_parts(self.host, self.len) }
    }

    /// The host side, writable.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above, exclusive borrow of self.
        unsafe { std::slice::from_raw_parts_mut(self.host, self.len) }
    }

    /// The device alias of the first element.
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// Enqueues a copy of elements `range` from device memory at `src` into this buffer. The host may
    /// read them only after the stream has passed this point (synchronize or an event).
    pub fn fetch(&mut self, range: std::ops::Range<usize>, src: u64, stream: Stream) -> Result<()> {
        let dst = self
            .as_mut_slice()
            .get_mut(range.clone())
            .ok_or_else(|| Error::Gpu(format!("pinned range {range:?} out of bounds")))?;
        match stream.0 {
            // SAFETY: `dst` is page-locked memory owned by self (alive until drop, and sessions
            // synchronize before dropping); `src` holds at least `dst.len()` elements by the caller's
            // binding-size checks.
            Some(s) => unsafe { cu::memcpy_dtoh_async(dst, src, s) }
                .map_err(gpu_err("device to host copy")),
            None => {
                // SAFETY: under the emulation `src` is the host address of a buffer holding at least
                // `dst.len()` elements (the same checks), distinct from `dst`.
                unsafe { host_copy(dst.as_mut_ptr() as usize as u64, src, size_of_val(dst)) };
                Ok(())
            }
        }
    }

    /// Enqueues a copy of elements `range` of this buffer to device memory at `dst`.
    pub fn send(&self, range: std::ops::Range<usize>, dst: u64, stream: Stream) -> Result<()> {
        let src = self
            .as_slice()
            .get(range.clone())
            .ok_or_else(|| Error::Gpu(format!("pinned range {range:?} out of bounds")))?;
        match stream.0 {
            // SAFETY: as in `fetch`, the other way round; the host must not write the range until the
            // stream has passed this copy (the session writes these buffers only after a sync point).
            Some(s) => unsafe { cu::memcpy_htod_async(dst, src, s) }
                .map_err(gpu_err("host to device copy")),
            None => {
                // SAFETY: as in `fetch`, the other way round.
                unsafe { host_copy(dst, src.as_ptr() as usize as u64, size_of_val(src)) };
                Ok(())
            }
        }
    }
}

impl<T: bytemuck::Pod> Drop for Pinned<T> {
    fn drop(&mut self) {
        if self.emulated.is_none() {
            // SAFETY: allocated by `malloc_host` in `new` and freed only here.
            let _ = unsafe { cu::free_host(self.host.cast()) };
        }
    }
}

/// Enqueues a device-to-device copy of `bytes`.
pub fn copy_d2d(dst: u64, src: u64, bytes: usize, stream: Stream) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    match stream.0 {
        Some(s) => {
            // SAFETY: the callers pass ranges inside live device buffers (checked with
            // `DeviceBuffer::at`).
            let r = unsafe { cu::memcpy_dtod_async(dst, src, bytes, s) };
            r.map_err(gpu_err("device copy"))
        }
        None => {
            // SAFETY: under the emulation the callers' ranges (checked the same way) lie in live host
            // buffers of the session, none borrowed during the call.
            unsafe { host_copy(dst, src, bytes) };
            Ok(())
        }
    }
}

/// Waits until `stream` has run everything enqueued so far.
pub fn sync(stream: Stream) -> Result<()> {
    match stream.0 {
        // SAFETY: `stream` is the engines' live stream.
        Some(s) => unsafe { cu::stream::synchronize(s) }.map_err(gpu_err("stream synchronize")),
        // The emulation does every step at once.
        None => Ok(()),
    }
}

/// The CUDA context current on this thread is required by every call here; the engines' backend made
/// one current. Returns the kernels loaded into it (compiled by NVRTC on first use).
pub fn kernels() -> Result<Arc<Kernels>> {
    Kernels::for_current_context().map_err(|e| Error::Gpu(format!("CUDA kernels: {e}")))
}

/// A new device buffer holding `v`, copied on `stream` (once per geometry or prompt, never per frame).
pub fn upload<T: bytemuck::Pod>(v: &[T], what: &str, stream: Stream) -> Result<DeviceBuffer> {
    let b = DeviceBuffer::new(std::mem::size_of_val(v), what, stream)?;
    match stream.0 {
        // SAFETY: `b` holds exactly `v`'s bytes; pageable source memory is staged by the driver before
        // the call returns, so `v` may be dropped afterwards.
        Some(s) => unsafe { cu::memcpy_htod_async(b.ptr, v, s) }.map_err(gpu_err(what))?,
        // SAFETY: `b`'s host allocation holds at least `v`'s bytes and is not borrowed.
        None => unsafe { host_copy(b.ptr, v.as_ptr() as usize as u64, size_of_val(v)) },
    }
    Ok(b)
}

/// Camera frame → the frame engine's `[3, H, W]` normalised input on the GPU, for one frame geometry.
pub struct GpuPreprocess {
    dims: PreDims,
    /// The frame, written by the host (or the capture) in place; the kernel reads it through the mapping.
    frame: Pinned<u8>,
    tables: [DeviceBuffer; 7],
    tmp: DeviceBuffer,
    /// The emulation's stand-in for the kernels: the CPU preprocessor they take their tables from,
    /// and the frame as RGB for it when it is BGR, YUYV, RGBx or BGRx (the kernels decode those
    /// themselves).
    cpu: Option<(Preprocessor, Vec<u8>)>,
}

impl GpuPreprocess {
    /// Tables for `in_w × in_h` frames of `format` with rows of `stride` bytes, resized to the engine's
    /// `out_w × out_h` with the CPU preprocessor's filter.
    pub fn new(
        format: FrameFormat,
        in_w: u32,
        in_h: u32,
        stride: usize,
        out_w: u32,
        out_h: u32,
        stream: Stream,
    ) -> Result<Self> {
        let pre = Preprocessor::try_to_size(in_w, in_h, out_w, out_h)?;
        let (ht, vt) = pre.taps();
        let dims = PreDims {
            in_w: in_w as usize,
            in_h: in_h as usize,
            stride,
            format,
            out_w: out_w as usize,
            out_h: out_h as usize,
            hksize: ht.ksize,
            vksize: vt.ksize,
        };
        dims.validate().map_err(|e| Error::Gpu(e.to_string()))?;
        let lut: Vec<f32> = pre.lut().iter().flatten().copied().collect();
        let tables = [
            upload(ht.start, "preprocess taps", stream)?,
            upload(ht.len, "preprocess taps", stream)?,
            upload(ht.weights, "preprocess taps", stream)?,
            upload(vt.start, "preprocess taps", stream)?,
            upload(vt.len, "preprocess taps", stream)?,
            upload(vt.weights, "preprocess taps", stream)?,
            upload(&lut, "preprocess table", stream)?,
        ];
        if stream.is_host() && stride != dims.in_w * format.bytes_per_pixel() {
            return Err(Error::Gpu(
                "the host emulation preprocesses tight frames only (no row padding)".into(),
            ));
        }
        let rgb_len = match format {
            FrameFormat::Rgb24 => 0,
            FrameFormat::Bgr24 | FrameFormat::Yuyv | FrameFormat::Rgbx | FrameFormat::Bgrx => {
                dims.in_w * dims.in_h * 3
            }
        };
        Ok(GpuPreprocess {
            frame: Pinned::new(dims.frame_bytes(), "camera frame", stream)?,
            tmp: DeviceBuffer::new(dims.tmp_bytes(), "preprocess scratch", stream)?,
            tables,
            dims,
            cpu: stream.is_host().then(|| (pre, vec![0; rgb_len])),
        })
    }

    /// Whether this geometry serves frames of this format and size.
    pub fn fits(&self, format: FrameFormat, w: u32, h: u32, stride: usize) -> bool {
        let d = &self.dims;
        (d.format, d.in_w, d.in_h, d.stride) == (format, w as usize, h as usize, stride)
    }

    /// The frame buffer to fill (`stride × height` bytes). Write it only while no preprocessing of the
    /// previous frame is in flight (the session synchronizes once per frame before returning).
    pub fn frame_mut(&mut self) -> &mut [u8] {
        self.frame.as_mut_slice()
    }

    /// Enqueues the two kernels (`k`: `None` under the emulation, which runs the CPU preprocessor)
    /// writing `out` (the frame engine's image input, `3·H·W` f32).
    pub fn launch(
        &mut self,
        k: Option<&Kernels>,
        out: &DeviceBuffer,
        stream: Stream,
    ) -> Result<()> {
        let need = self.dims.out_len() * 4;
        if out.bytes() < need {
            return Err(Error::Gpu(format!(
                "preprocess output of {} bytes, need {need}",
                out.bytes()
            )));
        }
        let (Some(k), Some(s)) = (k, stream.0) else {
            let (cpu, rgb) = self
                .cpu
                .as_mut()
                .ok_or_else(|| Error::Gpu("no kernels for a CUDA stream".into()))?;
            // SAFETY: under the emulation `out` is a host allocation of at least `need` bytes,
            // 8-byte aligned, and nothing else borrows it during the call.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(out.ptr() as usize as *mut f32, need / 4) };
            let (w, h) = (self.dims.in_w as u32, self.dims.in_h as u32);
            let frame = self.frame.as_slice();
            // The kernels' decoding of BGR, YUYV, RGBx and BGRx is the CPU conversion's
            // (plugins/kernels/image.cu).
            let layout = match self.dims.format {
                FrameFormat::Rgb24 => None,
                FrameFormat::Bgr24 => Some(Layout::Bgr),
                FrameFormat::Yuyv => Some(Layout::Yuyv),
                FrameFormat::Rgbx => Some(Layout::Rgbx),
                FrameFormat::Bgrx => Some(Layout::Bgrx),
            };
            let input = match layout {
                None => frame,
                Some(l) => {
                    layout_to_rgb(l, frame, w, h, rgb)?;
                    &rgb[..]
                }
            };
            return cpu
                .run(input, dst)
                .map_err(|e| Error::Gpu(format!("preprocess (host emulation): {e}")));
        };
        let t = &self.tables;
        let p = PrePtrs {
            frame: self.frame.dev(),
            h_start: t[0].ptr(),
            h_len: t[1].ptr(),
            h_weights: t[2].ptr(),
            v_start: t[3].ptr(),
            v_len: t[4].ptr(),
            v_weights: t[5].ptr(),
            lut: t[6].ptr(),
            tmp: self.tmp.ptr(),
            out: out.ptr(),
        };
        // SAFETY: every pointer is a live allocation of this session sized from `dims` (checked
        // above for `out`), and all of them outlive the stream's work.
        unsafe { k.launch_preprocess(&self.dims, &p, s) }
            .map_err(|e| Error::Gpu(format!("preprocess kernel: {e}")))
    }
}

/// The mask ring's shared mapping registered with CUDA (page-locked, mapped): a kernel writes a slot's
/// mask in place. Unregistered on drop; the ring must outlive it.
pub struct RegisteredRing {
    host: *mut u8,
    len: usize,
    dev: u64,
    /// Under the emulation nothing is registered: the device address is the host one.
    registered: bool,
}

// SAFETY: the registration is process-wide state; the pointers are only used through the driver API.
unsafe impl Send for RegisteredRing {}

impl RegisteredRing {
    /// Registers `ring`'s whole mapping (under the emulation, takes its address as it is).
    pub fn new(ring: &mut MaskRing, stream: Stream) -> Result<Self> {
        let (host, len) = ring.mapping();
        if stream.is_host() {
            return Ok(RegisteredRing {
                host,
                len,
                dev: host as usize as u64,
                registered: false,
            });
        }
        // SAFETY: `host..host+len` is the ring's live shared mapping; the caller keeps the ring alive
        // (and mapped) for as long as this value, which unregisters it on drop.
        unsafe {
            sys::cuMemHostRegister_v2(
                host.cast(),
                len,
                sys::CU_MEMHOSTREGISTER_DEVICEMAP | sys::CU_MEMHOSTREGISTER_PORTABLE,
            )
        }
        .result()
        .map_err(|e| {
            Error::Gpu(format!(
                "register the mask ring with CUDA: {e}{}",
                host_register_hint()
            ))
        })?;
        let mut dev = 0;
        // SAFETY: the range was registered with DEVICEMAP just above.
        let alias = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, host.cast(), 0) };
        if let Err(e) = alias.result() {
            // SAFETY: registered above, not used since.
            let _ = unsafe { sys::cuMemHostUnregister(host.cast()) };
            return Err(Error::Gpu(format!("device alias of the mask ring: {e}")));
        }
        Ok(RegisteredRing {
            host,
            len,
            dev,
            registered: true,
        })
    }

    /// The device address of a slot's mask (inside the registered mapping).
    pub fn slot_mask(&self, slot: &mut SlotWriter<'_>) -> Result<u64> {
        let m = slot.mask();
        let off = (m.as_ptr() as usize)
            .checked_sub(self.host as usize)
            .filter(|o| o + m.len() <= self.len)
            .ok_or_else(|| Error::Gpu("the slot is not inside the registered ring".into()))?;
        Ok(self.dev + off as u64)
    }
}

/// Why registering host memory may have failed: the device cannot (the attribute says so), or the
/// ring is not in shared memory (the default ring lives in `/dev/shm`, which can be registered).
fn host_register_hint() -> String {
    let mut dev: sys::CUdevice = 0;
    let mut supported = 0;
    // SAFETY: the caller's context is current (registration was just tried in it); each call writes
    // one integer.
    let known = unsafe {
        sys::cuCtxGetDevice(&mut dev).result().is_ok()
            && sys::cuDeviceGetAttribute(
                &mut supported,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED,
                dev,
            )
            .result()
            .is_ok()
    };
    match (known, supported) {
        (true, 0) => " (this device cannot register host memory: run with --host-path)".into(),
        _ => " (the ring must be a shared-memory mapping, e.g. under /dev/shm)".into(),
    }
}

impl Drop for RegisteredRing {
    fn drop(&mut self) {
        if self.registered {
            // SAFETY: registered in `new`, unregistered only here.
            let _ = unsafe { sys::cuMemHostUnregister(self.host.cast()) };
        }
    }
}

/// The head's mask logits `[Ns, h4, w4]` → a label mask of the output size, on the GPU.
pub struct GpuMasks {
    dims: LabelDims,
    tables: [DeviceBuffer; 8],
    /// The emulation's stand-in for the kernel: the CPU upsampler whose tables it uses, and the
    /// per-pixel owner scores of the score rule.
    cpu: Option<(LabelUpsampler, Vec<f32>)>,
}

impl GpuMasks {
    /// Tables for up to `queries` maps of `in_h × in_w` upsampled to `out_h × out_w` (the CPU
    /// [`LabelUpsampler`]'s own tables: identical masks).
    pub fn new(
        queries: usize,
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
        stream: Stream,
    ) -> Result<Self> {
        let up = LabelUpsampler::new(in_h, in_w, out_h, out_w)?;
        let (ys, xs) = up.axes();
        let dims = LabelDims {
            in_h,
            in_w,
            out_h,
            out_w,
            tracks: queries,
        };
        dims.validate().map_err(|e| Error::Gpu(e.to_string()))?;
        let cpu = stream
            .is_host()
            .then(|| (up.clone(), vec![f32::NEG_INFINITY; out_h * out_w]));
        Ok(GpuMasks {
            dims,
            cpu,
            tables: [
                upload(ys.i0, "mask tables", stream)?,
                upload(ys.i1, "mask tables", stream)?,
                upload(ys.l0, "mask tables", stream)?,
                upload(ys.l1, "mask tables", stream)?,
                upload(xs.i0, "mask tables", stream)?,
                upload(xs.i1, "mask tables", stream)?,
                upload(xs.l0, "mask tables", stream)?,
                upload(xs.l1, "mask tables", stream)?,
            ],
        })
    }

    /// Enqueues the composition of the tracks in `table` from `logits` (device, `[maps, h4, w4]` f32,
    /// e.g. the head's `[Ns, h4, w4]` or several objects' maps one after the other; the table's map
    /// indices must lie inside it) into the mask at device address `mask` (`out_h × out_w` bytes, e.g.
    /// a registered ring slot).
    /// `k` is `None` under the emulation, which composes with the CPU upsampler the same way: the
    /// first track wins overlaps, or the higher score when the table has scores.
    pub fn launch(
        &mut self,
        k: Option<&Kernels>,
        logits: &DeviceBuffer,
        table: &TrackTable,
        mask: u64,
        stream: Stream,
    ) -> Result<()> {
        let map = self.dims.in_h * self.dims.in_w * 4;
        let maps = (logits.bytes() / map).min(self.dims.tracks);
        if maps == 0 {
            return Err(Error::Gpu("mask logits buffer too small".into()));
        }
        let (Some(k), Some(s)) = (k, stream.0) else {
            // The kernel launch checks this itself; the emulation's slices need it too.
            if table.max_map().is_some_and(|m| m >= maps) {
                return Err(Error::Gpu(format!(
                    "mask logits buffer of {maps} maps for tracks reading up to map {:?}",
                    table.max_map()
                )));
            }
            let (up, owner) = self
                .cpu
                .as_mut()
                .ok_or_else(|| Error::Gpu("no kernels for a CUDA stream".into()))?;
            let hw = self.dims.in_h * self.dims.in_w;
            let px = self.dims.out_h * self.dims.out_w;
            // SAFETY: under the emulation `logits` is a host allocation of at least `maps · hw` f32
            // (checked above), 8-byte aligned, and `mask` the host address of a ring slot's `px`
            // bytes (`RegisteredRing::slot_mask` checked it lies in the ring); the two do not overlap
            // and nothing else borrows them during the call.
            let (all, out) = unsafe {
                (
                    std::slice::from_raw_parts(logits.ptr() as usize as *const f32, maps * hw),
                    std::slice::from_raw_parts_mut(mask as usize as *mut u8, px),
                )
            };
            out.fill(0);
            owner.fill(f32::NEG_INFINITY);
            for t in 0..table.len() {
                let (m, label, score) = table
                    .track(t)
                    .ok_or_else(|| Error::Gpu(format!("track {t} missing")))?;
                let l = &all[m * hw..(m + 1) * hw];
                match score {
                    Some(sc) => up.label_scored(l, out, owner, label, sc)?,
                    None => up.label(l, out, label)?,
                }
            }
            return Ok(());
        };
        let d = &LabelDims {
            tracks: maps,
            ..self.dims
        };
        let t = &self.tables;
        let p = LabelPtrs {
            logits: logits.ptr(),
            y_i0: t[0].ptr(),
            y_i1: t[1].ptr(),
            y_l0: t[2].ptr(),
            y_l1: t[3].ptr(),
            x_i0: t[4].ptr(),
            x_i1: t[5].ptr(),
            x_l0: t[6].ptr(),
            x_l1: t[7].ptr(),
            mask,
        };
        // SAFETY: the tables and logits are live allocations sized from `dims` (the logits hold
        // `maps` maps, and the kernel launch refuses a table reading past them); the caller vouches for `mask` (a slot inside a registered ring, see
        // `RegisteredRing::slot_mask`) and synchronizes before committing the slot.
        unsafe { k.launch_mask_labels(d, table, &p, s) }
            .map_err(|e| Error::Gpu(format!("mask kernel: {e}")))
    }
}
