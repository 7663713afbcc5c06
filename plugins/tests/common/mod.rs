//! Shared helpers of the GPU tests and the CUDA bench: fixtures, a deterministic RNG, device setup.
#![allow(dead_code)]

mod cases;
pub use cases::*;

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};
use referdino_plugins::dims::{MsdaDims, PruneDims};
use referdino_plugins::kernels::{
    driver_available, IndexType, Kernels, MsdaPtrs, MsdaVariant, PrunePtrs, ValueType,
};

/// A device ready for tests, or the reason there is none.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub kernels: Arc<Kernels>,
}

/// Opens device 0 and loads the kernels. `Err(reason)` when there is no GPU; with
/// `REFERDINO_REQUIRE_GPU=1` a missing GPU panics instead.
pub fn gpu() -> Result<Gpu, String> {
    let required = std::env::var("REFERDINO_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let r = (|| {
        if !driver_available() {
            return Err("libcuda.so not found (no NVIDIA driver)".to_owned());
        }
        let ctx = CudaContext::new(0).map_err(|e| format!("no usable CUDA device: {e:?}"))?;
        ctx.bind_to_thread()
            .map_err(|e| format!("bind context: {e:?}"))?;
        let kernels =
            Kernels::for_current_context().map_err(|e| format!("loading kernels: {e}"))?;
        let stream = ctx.default_stream();
        Ok(Gpu {
            ctx,
            stream,
            kernels,
        })
    })();
    if let Err(reason) = &r {
        assert!(!required, "REFERDINO_REQUIRE_GPU=1 but {reason}");
    }
    r
}

/// Element types the MSDeformAttn value/output can have on the host side of the tests.
pub trait ValueElem: DeviceRepr + Copy + Default + cudarc::driver::ValidAsZeroBits + Unpin {
    const TYPE: ValueType;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}
impl ValueElem for f32 {
    const TYPE: ValueType = ValueType::F32;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}
impl ValueElem for half::f16 {
    const TYPE: ValueType = ValueType::F16;
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

/// Device buffers of one MSDeformAttn call (uploaded once; `launch` can be repeated for timing).
pub struct MsdaDev<T: ValueElem> {
    pub dims: MsdaDims,
    pub index_type: IndexType,
    value: CudaSlice<T>,
    shapes64: CudaSlice<i64>,
    starts64: CudaSlice<i64>,
    shapes32: CudaSlice<i32>,
    starts32: CudaSlice<i32>,
    loc: CudaSlice<f32>,
    weights: CudaSlice<f32>,
    pub out: CudaSlice<T>,
}

impl<T: ValueElem> MsdaDev<T> {
    pub fn upload(g: &Gpu, c: &MsdaCase, index_type: IndexType) -> MsdaDev<T> {
        let s = &g.stream;
        let value: Vec<T> = c.value.iter().map(|&v| T::from_f32(v)).collect();
        let s32: Vec<i32> = c.shapes.iter().map(|&v| v as i32).collect();
        let l32: Vec<i32> = c.starts.iter().map(|&v| v as i32).collect();
        MsdaDev {
            dims: c.dims,
            index_type,
            value: s.clone_htod(&value).unwrap(),
            shapes64: s.clone_htod(&c.shapes).unwrap(),
            starts64: s.clone_htod(&c.starts).unwrap(),
            shapes32: s.clone_htod(&s32).unwrap(),
            starts32: s.clone_htod(&l32).unwrap(),
            loc: s.clone_htod(&c.loc).unwrap(),
            weights: s.clone_htod(&c.weights).unwrap(),
            out: s.alloc_zeros::<T>(c.dims.out_len()).unwrap(),
        }
    }

    /// Enqueues one launch (asynchronous).
    pub fn launch(&mut self, g: &Gpu, variant: MsdaVariant) {
        self.launch_with(g, variant, None);
    }

    /// The optimized kernel with `vec` channels per thread instead of the launcher's choice.
    pub fn launch_vec(&mut self, g: &Gpu, vec: usize) {
        self.launch_with(g, MsdaVariant::Optimized, Some(vec));
    }

    fn launch_with(&mut self, g: &Gpu, variant: MsdaVariant, vec: Option<usize>) {
        let s = &g.stream;
        let (v, _a) = self.value.device_ptr(s);
        let (ss, _b) = if self.index_type == IndexType::I64 {
            self.shapes64.device_ptr(s)
        } else {
            self.shapes32.device_ptr(s)
        };
        let (ls, _c) = if self.index_type == IndexType::I64 {
            self.starts64.device_ptr(s)
        } else {
            self.starts32.device_ptr(s)
        };
        let (loc, _d) = self.loc.device_ptr(s);
        let (w, _e) = self.weights.device_ptr(s);
        let (out, _f) = self.out.device_ptr_mut(s);
        let p = MsdaPtrs {
            value: v,
            spatial_shapes: ss,
            level_start_index: ls,
            sampling_locations: loc,
            attention_weights: w,
            out,
        };
        // SAFETY: every buffer was sized from `dims` in `upload` and outlives the synchronising download.
        unsafe {
            match vec {
                None => g.kernels.launch_msda(
                    variant,
                    T::TYPE,
                    self.index_type,
                    &self.dims,
                    &p,
                    s.cu_stream(),
                ),
                Some(vec) => g.kernels.launch_msda_vec(
                    variant,
                    T::TYPE,
                    self.index_type,
                    &self.dims,
                    &p,
                    vec,
                    s.cu_stream(),
                ),
            }
        }
        .unwrap();
    }

    /// Downloads the output as f32.
    pub fn output(&self, g: &Gpu) -> Vec<f32> {
        g.stream
            .clone_dtoh(&self.out)
            .unwrap()
            .into_iter()
            .map(T::to_f32)
            .collect()
    }
}

/// Device buffers of one QueryPrune call.
pub struct PruneDev {
    pub dims: PruneDims,
    logits: CudaSlice<f32>,
    attn: CudaSlice<f32>,
    keep_idx: CudaSlice<i64>,
    gate: CudaSlice<f32>,
    workspace: CudaSlice<u8>,
}

impl PruneDev {
    pub fn upload(g: &Gpu, c: &PruneCase) -> PruneDev {
        let s = &g.stream;
        PruneDev {
            dims: c.dims,
            logits: s.clone_htod(&c.logits).unwrap(),
            attn: s.clone_htod(&c.attn).unwrap(),
            // Pre-filled with -1 so that an unwritten slot is detected.
            keep_idx: s
                .clone_htod(&vec![-1i64; c.dims.batch * c.dims.keep])
                .unwrap(),
            gate: s.alloc_zeros::<f32>(c.dims.batch * c.dims.n).unwrap(),
            workspace: s
                .alloc_zeros::<u8>(c.dims.spread_workspace_bytes())
                .unwrap(),
        }
    }

    /// Enqueues the two-kernel variant spread over the GPU.
    pub fn launch_spread(&mut self, g: &Gpu) {
        self.launch_stage(g, 0);
    }

    /// Enqueues one stage of the spread variant (1: stats, 2: select) or both (0).
    pub fn launch_stage(&mut self, g: &Gpu, stage: u8) {
        let s = &g.stream;
        let (l, _a) = self.logits.device_ptr(s);
        let (a, _b) = self.attn.device_ptr(s);
        let (k, _c) = self.keep_idx.device_ptr_mut(s);
        let (gt, _d) = self.gate.device_ptr_mut(s);
        let (ws, _e) = self.workspace.device_ptr_mut(s);
        let p = PrunePtrs {
            class_logits: l,
            self_attn: a,
            keep_idx: k,
            gate: gt,
        };
        // SAFETY: buffers and workspace sized from `dims` in `upload`.
        unsafe {
            let (k, d, st) = (&g.kernels, &self.dims, s.cu_stream());
            match stage {
                1 => k.launch_prune_stats(d, &p, ws, st),
                2 => k.launch_prune_select(d, &p, ws, st),
                _ => k.launch_prune_spread(d, &p, ws, st),
            }
        }
        .unwrap();
    }

    /// Sets `keep_idx` back to -1, then launches the spread or the single-block kernel, so that every
    /// slot the launch leaves unwritten shows.
    pub fn rerun(&mut self, g: &Gpu, spread: bool) {
        let fill = vec![-1i64; self.dims.batch * self.dims.keep];
        g.stream.memcpy_htod(&fill, &mut self.keep_idx).unwrap();
        if spread {
            self.launch_spread(g);
        } else {
            self.launch(g);
        }
    }

    pub fn launch(&mut self, g: &Gpu) {
        let s = &g.stream;
        let (l, _a) = self.logits.device_ptr(s);
        let (a, _b) = self.attn.device_ptr(s);
        let (k, _c) = self.keep_idx.device_ptr_mut(s);
        let (gt, _d) = self.gate.device_ptr_mut(s);
        let p = PrunePtrs {
            class_logits: l,
            self_attn: a,
            keep_idx: k,
            gate: gt,
        };
        // SAFETY: buffers sized from `dims` in `upload`.
        unsafe { g.kernels.launch_prune(&self.dims, &p, s.cu_stream()) }.unwrap();
    }

    pub fn outputs(&self, g: &Gpu) -> (Vec<i64>, Vec<f32>) {
        (
            g.stream.clone_dtoh(&self.keep_idx).unwrap(),
            g.stream.clone_dtoh(&self.gate).unwrap(),
        )
    }
}

/// Page-locked host memory mapped into the device's address space (`cuMemHostAlloc` with DEVICEMAP):
/// what a camera frame or a ring slot is on the GPU path. Freed on drop.
pub struct Mapped {
    pub host: *mut u8,
    pub dev: u64,
    pub len: usize,
}

impl Mapped {
    pub fn new(g: &Gpu, len: usize) -> Mapped {
        use cudarc::driver::{result, sys};
        g.ctx.bind_to_thread().unwrap();
        // SAFETY: plain allocation of `len` bytes; the pointer is checked before use.
        let host = unsafe {
            result::malloc_host(
                len.max(1),
                sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE,
            )
        }
        .unwrap() as *mut u8;
        let mut dev = 0u64;
        // SAFETY: `host` was allocated with DEVICEMAP in the current context.
        unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, host.cast(), 0) }
            .result()
            .unwrap();
        Mapped { host, dev, len }
    }
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes were allocated at `host` and live until drop; `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.host, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemHostAlloc in `new`, freed once.
        let _ = unsafe { cudarc::driver::result::free_host(self.host.cast()) };
    }
}

/// Device side of the GPU preprocessing for one geometry: the CPU preprocessor's tables uploaded once,
/// the frame in mapped host memory, the output in device memory.
pub struct PreDev {
    pub dims: referdino_plugins::dims::PreDims,
    pub frame: Mapped,
    tables: Vec<CudaSlice<u8>>,
    tmp: CudaSlice<u8>,
    pub out: CudaSlice<f32>,
}

impl PreDev {
    pub fn new(
        g: &Gpu,
        pre: &referdino::camera::convert::Preprocessor,
        format: referdino_plugins::dims::FrameFormat,
        stride: usize,
    ) -> PreDev {
        let s = &g.stream;
        let (in_w, in_h) = pre.in_size();
        let (out_w, out_h) = pre.out_size();
        let (ht, vt) = pre.taps();
        let dims = referdino_plugins::dims::PreDims {
            in_w: in_w as usize,
            in_h: in_h as usize,
            stride,
            format,
            out_w: out_w as usize,
            out_h: out_h as usize,
            hksize: ht.ksize,
            vksize: vt.ksize,
        };
        let lut: Vec<f32> = pre.lut().iter().flatten().copied().collect();
        let up = |b: &[u8]| s.clone_htod(b).unwrap();
        let tables = vec![
            up(bytemuck::cast_slice::<u32, u8>(ht.start)),
            up(bytemuck::cast_slice::<u32, u8>(ht.len)),
            up(bytemuck::cast_slice::<i32, u8>(ht.weights)),
            up(bytemuck::cast_slice::<u32, u8>(vt.start)),
            up(bytemuck::cast_slice::<u32, u8>(vt.len)),
            up(bytemuck::cast_slice::<i32, u8>(vt.weights)),
            up(bytemuck::cast_slice::<f32, u8>(&lut)),
        ];
        PreDev {
            dims,
            frame: Mapped::new(g, dims.frame_bytes()),
            tables,
            tmp: s.alloc_zeros::<u8>(dims.tmp_bytes()).unwrap(),
            out: s.alloc_zeros::<f32>(dims.out_len()).unwrap(),
        }
    }

    /// Enqueues the two kernels (asynchronous).
    pub fn launch(&mut self, g: &Gpu) {
        use referdino_plugins::kernels::PrePtrs;
        let s = &g.stream;
        let t: Vec<u64> = self.tables.iter().map(|b| b.device_ptr(s).0).collect();
        let (tmp, _a) = self.tmp.device_ptr_mut(s);
        let (out, _b) = self.out.device_ptr_mut(s);
        let p = PrePtrs {
            frame: self.frame.dev,
            h_start: t[0],
            h_len: t[1],
            h_weights: t[2],
            v_start: t[3],
            v_len: t[4],
            v_weights: t[5],
            lut: t[6],
            tmp,
            out,
        };
        // SAFETY: every buffer was sized from `dims` in `new` and outlives the synchronising download.
        unsafe { g.kernels.launch_preprocess(&self.dims, &p, s.cu_stream()) }.unwrap();
    }
}

/// Device side of the mask composition for one geometry: the CPU upsampler's tables and the logits in
/// device memory; the mask pointer is given per launch (a ring slot's device alias, say).
pub struct LabelDev {
    pub dims: referdino_plugins::dims::LabelDims,
    tables: Vec<CudaSlice<u8>>,
    pub logits: CudaSlice<f32>,
}

impl LabelDev {
    pub fn new(
        g: &Gpu,
        up: &referdino::pipeline::labels::LabelUpsampler,
        logits: &[f32],
        tracks: usize,
    ) -> LabelDev {
        let s = &g.stream;
        let ((in_h, in_w), (out_h, out_w)) = up.sizes();
        let (ys, xs) = up.axes();
        let b = |v: &[u8]| s.clone_htod(v).unwrap();
        let tables = vec![
            b(bytemuck::cast_slice::<u32, u8>(ys.i0)),
            b(bytemuck::cast_slice::<u32, u8>(ys.i1)),
            b(bytemuck::cast_slice::<f32, u8>(ys.l0)),
            b(bytemuck::cast_slice::<f32, u8>(ys.l1)),
            b(bytemuck::cast_slice::<u32, u8>(xs.i0)),
            b(bytemuck::cast_slice::<u32, u8>(xs.i1)),
            b(bytemuck::cast_slice::<f32, u8>(xs.l0)),
            b(bytemuck::cast_slice::<f32, u8>(xs.l1)),
        ];
        assert_eq!(logits.len(), tracks * in_h * in_w);
        LabelDev {
            dims: referdino_plugins::dims::LabelDims {
                in_h,
                in_w,
                out_h,
                out_w,
                tracks,
            },
            tables,
            logits: s.clone_htod(logits).unwrap(),
        }
    }

    /// Enqueues the kernel writing into `mask` (asynchronous).
    ///
    /// # Safety
    /// `mask` must be device-accessible memory of at least `out_h * out_w` bytes that outlives the launch.
    pub unsafe fn launch(
        &mut self,
        g: &Gpu,
        table: &referdino_plugins::kernels::TrackTable,
        mask: u64,
    ) {
        use referdino_plugins::kernels::LabelPtrs;
        let s = &g.stream;
        let t: Vec<u64> = self.tables.iter().map(|b| b.device_ptr(s).0).collect();
        let (logits, _a) = self.logits.device_ptr(s);
        let p = LabelPtrs {
            logits,
            y_i0: t[0],
            y_i1: t[1],
            y_l0: t[2],
            y_l1: t[3],
            x_i0: t[4],
            x_i1: t[5],
            x_l0: t[6],
            x_l1: t[7],
            mask,
        };
        // SAFETY: tables and logits sized in `new`; the caller vouches for `mask`.
        unsafe {
            g.kernels
                .launch_mask_labels(&self.dims, table, &p, s.cu_stream())
        }
        .unwrap();
    }
}
