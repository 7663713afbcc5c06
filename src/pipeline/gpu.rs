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

use std::sync::Arc;

use cudarc::driver::{result as cu, sys};
use referdino_plugins::dims::{FrameFormat, LabelDims, PreDims};
use referdino_plugins::kernels::{Kernels, LabelPtrs, PrePtrs, TrackTable};

use crate::backend::{View, ViewMut};
use crate::camera::convert::Preprocessor;
use crate::error::{Error, Result};
use crate::output::ring::{MaskRing, SlotWriter};
use crate::pipeline::labels::LabelUpsampler;

/// The CUDA stream the engines run on ([`crate::backend::Engine::cuda_stream`]); every copy and kernel
/// here is ordered on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream(sys::CUstream);

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
        Stream(raw)
    }

    /// The raw handle.
    pub fn raw(self) -> sys::CUstream {
        self.0
    }
}

fn gpu_err(what: &str) -> impl Fn(cu::DriverError) -> Error + '_ {
    move |e| Error::Gpu(format!("{what}: {e}"))
}

/// Device memory of a fixed size, freed on drop.
#[derive(Debug)]
pub struct DeviceBuffer {
    ptr: sys::CUdeviceptr,
    bytes: usize,
}

// SAFETY: a device allocation is not tied to a host thread; the handle is only used through the driver
// API, which is thread safe, with the context bound by the caller.
unsafe impl Send for DeviceBuffer {}

impl DeviceBuffer {
    /// Allocates `bytes` (at least 1) of device memory in the current context.
    pub fn new(bytes: usize, what: &str) -> Result<Self> {
        // SAFETY: a plain allocation; the pointer is owned by the returned value and freed once on drop.
        let ptr = unsafe { cu::malloc_sync(bytes.max(1)) }
            .map_err(|e| Error::Gpu(format!("allocate {bytes} bytes for {what}: {e}")))?;
        Ok(DeviceBuffer { ptr, bytes })
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

    /// An engine input view of the whole buffer.
    pub fn view(&self) -> View<'static> {
        View::Device {
            ptr: self.ptr,
            bytes: self.bytes,
        }
    }

    /// An engine output view of the whole buffer.
    pub fn view_mut(&self) -> ViewMut<'static> {
        ViewMut::Device {
            ptr: self.ptr,
            bytes: self.bytes,
        }
    }

    /// Zeroes the buffer on `stream`.
    pub fn zero(&self, stream: Stream) -> Result<()> {
        // SAFETY: `ptr` holds `bytes` bytes of device memory owned by `self`, which outlives the
        // session's stream work (sessions synchronize before dropping their buffers).
        unsafe { cu::memset_d8_async(self.ptr, 0, self.bytes, stream.raw()) }
            .map_err(gpu_err("memset"))
    }

    /// Zeroes `len` bytes from `offset` on `stream`.
    pub fn zero_range(&self, offset: usize, len: usize, stream: Stream) -> Result<()> {
        let at = self.at(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: `at..at+len` lies inside this buffer (checked by `at`), which outlives the
        // session's stream work.
        unsafe { cu::memset_d8_async(at, 0, len, stream.raw()) }.map_err(gpu_err("memset"))
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by `malloc_sync` in `new` and freed only here.
        let _ = unsafe { cu::free_sync(self.ptr) };
    }
}

/// Page-locked host memory of `len` elements, mapped into the device's address space (so a kernel can
/// read or write it in place, and copies to and from it are truly asynchronous). Freed on drop.
pub struct Pinned<T: bytemuck::Pod> {
    host: *mut T,
    dev: sys::CUdeviceptr,
    len: usize,
}

// SAFETY: the allocation is owned by the value; access goes through `&self`/`&mut self` like a `Vec`.
unsafe impl<T: bytemuck::Pod + Send> Send for Pinned<T> {}

impl<T: bytemuck::Pod> Pinned<T> {
    /// Allocates `len` zeroed elements in the current context.
    pub fn new(len: usize, what: &str) -> Result<Self> {
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
        Ok(Pinned { host, dev, len })
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

    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Enqueues a copy of elements `range` from device memory at `src` into this buffer. The host may
    /// read them only after the stream has passed this point (synchronize or an event).
    pub fn fetch(&mut self, range: std::ops::Range<usize>, src: u64, stream: Stream) -> Result<()> {
        let dst = self
            .as_mut_slice()
            .get_mut(range.clone())
            .ok_or_else(|| Error::Gpu(format!("pinned range {range:?} out of bounds")))?;
        // SAFETY: `dst` is page-locked memory owned by self (alive until drop, and sessions
        // synchronize before dropping); `src` holds at least `dst.len()` elements by the caller's
        // binding-size checks.
        unsafe { cu::memcpy_dtoh_async(dst, src, stream.raw()) }
            .map_err(gpu_err("device to host copy"))
    }

    /// Enqueues a copy of elements `range` of this buffer to device memory at `dst`.
    pub fn send(&self, range: std::ops::Range<usize>, dst: u64, stream: Stream) -> Result<()> {
        let src = self
            .as_slice()
            .get(range.clone())
            .ok_or_else(|| Error::Gpu(format!("pinned range {range:?} out of bounds")))?;
        // SAFETY: as in `fetch`, the other way round; the host must not write the range until the
        // stream has passed this copy (the session writes these buffers only after a sync point).
        unsafe { cu::memcpy_htod_async(dst, src, stream.raw()) }
            .map_err(gpu_err("host to device copy"))
    }
}

impl<T: bytemuck::Pod> Drop for Pinned<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by `malloc_host` in `new` and freed only here.
        let _ = unsafe { cu::free_host(self.host.cast()) };
    }
}

/// Enqueues a device-to-device copy of `bytes`.
pub fn copy_d2d(dst: u64, src: u64, bytes: usize, stream: Stream) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    // SAFETY: the callers pass ranges inside live device buffers (checked with `DeviceBuffer::at`).
    unsafe { cu::memcpy_dtod_async(dst, src, bytes, stream.raw()) }.map_err(gpu_err("device copy"))
}

/// Waits until `stream` has run everything enqueued so far.
pub fn sync(stream: Stream) -> Result<()> {
    // SAFETY: `stream` is the engines' live stream.
    unsafe { cu::stream::synchronize(stream.raw()) }.map_err(gpu_err("stream synchronize"))
}

/// The CUDA context current on this thread is required by every call here; the engines' backend made
/// one current. Returns the kernels loaded into it (compiled by NVRTC on first use).
pub fn kernels() -> Result<Arc<Kernels>> {
    Kernels::for_current_context().map_err(|e| Error::Gpu(format!("CUDA kernels: {e}")))
}

/// A new device buffer holding `v`, copied on `stream` (once per geometry or prompt, never per frame).
pub fn upload<T: bytemuck::Pod>(v: &[T], what: &str, stream: Stream) -> Result<DeviceBuffer> {
    let b = DeviceBuffer::new(std::mem::size_of_val(v), what)?;
    // SAFETY: `b` holds exactly `v`'s bytes; pageable source memory is staged by the driver before the
    // call returns, so `v` may be dropped afterwards.
    unsafe { cu::memcpy_htod_async(b.ptr, v, stream.raw()) }.map_err(gpu_err(what))?;
    Ok(b)
}

/// Camera frame → the frame engine's `[3, H, W]` normalised input on the GPU, for one frame geometry.
pub struct GpuPreprocess {
    dims: PreDims,
    /// The frame, written by the host (or the capture) in place; the kernel reads it through the mapping.
    frame: Pinned<u8>,
    tables: [DeviceBuffer; 7],
    tmp: DeviceBuffer,
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
        let pre = Preprocessor::to_size(in_w, in_h, out_w, out_h);
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
        Ok(GpuPreprocess {
            frame: Pinned::new(dims.frame_bytes(), "camera frame")?,
            tmp: DeviceBuffer::new(dims.tmp_bytes(), "preprocess scratch")?,
            tables,
            dims,
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

    /// Enqueues the two kernels writing `out` (the frame engine's image input, `3·H·W` f32).
    pub fn launch(&self, k: &Kernels, out: &DeviceBuffer, stream: Stream) -> Result<()> {
        let need = self.dims.out_len() * 4;
        if out.bytes() < need {
            return Err(Error::Gpu(format!(
                "preprocess output of {} bytes, need {need}",
                out.bytes()
            )));
        }
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
        unsafe { k.launch_preprocess(&self.dims, &p, stream.raw()) }
            .map_err(|e| Error::Gpu(format!("preprocess kernel: {e}")))
    }
}

/// The mask ring's shared mapping registered with CUDA (page-locked, mapped): a kernel writes a slot's
/// mask in place. Unregistered on drop; the ring must outlive it.
pub struct RegisteredRing {
    host: *mut u8,
    len: usize,
    dev: u64,
}

// SAFETY: the registration is process-wide state; the pointers are only used through the driver API.
unsafe impl Send for RegisteredRing {}

impl RegisteredRing {
    /// Registers `ring`'s whole mapping.
    pub fn new(ring: &mut MaskRing) -> Result<Self> {
        let (host, len) = ring.mapping();
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
        .map_err(|e| Error::Gpu(format!("register the mask ring with CUDA: {e}")))?;
        let mut dev = 0;
        // SAFETY: the range was registered with DEVICEMAP just above.
        let alias = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, host.cast(), 0) };
        if let Err(e) = alias.result() {
            // SAFETY: registered above, not used since.
            let _ = unsafe { sys::cuMemHostUnregister(host.cast()) };
            return Err(Error::Gpu(format!("device alias of the mask ring: {e}")));
        }
        Ok(RegisteredRing { host, len, dev })
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

impl Drop for RegisteredRing {
    fn drop(&mut self) {
        // SAFETY: registered in `new`, unregistered only here.
        let _ = unsafe { sys::cuMemHostUnregister(self.host.cast()) };
    }
}

/// The head's mask logits `[Ns, h4, w4]` → a label mask of the output size, on the GPU.
pub struct GpuMasks {
    dims: LabelDims,
    tables: [DeviceBuffer; 8],
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
        Ok(GpuMasks {
            dims,
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
    pub fn launch(
        &self,
        k: &Kernels,
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
        unsafe { k.launch_mask_labels(d, table, &p, stream.raw()) }
            .map_err(|e| Error::Gpu(format!("mask kernel: {e}")))
    }
}
