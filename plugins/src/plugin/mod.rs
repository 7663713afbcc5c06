//! TensorRT plugin logic for `MSDeformAttn` and `QueryPrune`, in plain Rust.
//!
//! The C++ shim (`plugins/shim/`) owns nothing but vtables: every IPluginV3 capability call is forwarded
//! (through `ffi`) to a [`Plugin`] here. This module does not depend on TensorRT or CUDA, so all of its
//! decisions (types, formats, shapes, attributes) are unit-tested on any machine.

pub mod logging;
pub mod types;

use std::ffi::{c_void, CStr};

use crate::dims::{MsdaDims, PruneDims};
use crate::error::{invalid, Result};
use types::{dtype, field_type, DimExpr, Field, ShapeRecipe, TensorDesc, FORMAT_LINEAR};

/// Plugin version string of both plugins (TensorRT creators are looked up by name + version).
pub const PLUGIN_VERSION: &CStr = c"1";
/// Plugin namespace (empty: the ONNX parser looks plugins up in the default namespace).
pub const PLUGIN_NAMESPACE: &CStr = c"";
/// Attribute name of QueryPrune's K.
pub const KEEP_FIELD: &CStr = c"keep";

/// The two custom ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Multi-scale deformable attention.
    MsDeformAttn,
    /// Confidence-aware query pruning.
    QueryPrune,
}

impl Op {
    /// Every op, in creator order.
    pub const ALL: [Op; 2] = [Op::MsDeformAttn, Op::QueryPrune];

    /// The plugin (= ONNX op) name.
    pub fn name(self) -> &'static CStr {
        match self {
            Op::MsDeformAttn => c"MSDeformAttn",
            Op::QueryPrune => c"QueryPrune",
        }
    }

    /// Op from its creator index.
    pub fn from_index(i: i32) -> Option<Op> {
        Op::ALL.get(usize::try_from(i).ok()?).copied()
    }

    /// Number of inputs.
    pub fn nb_inputs(self) -> usize {
        match self {
            Op::MsDeformAttn => 5,
            Op::QueryPrune => 2,
        }
    }

    /// Number of outputs.
    pub fn nb_outputs(self) -> usize {
        match self {
            Op::MsDeformAttn => 1,
            Op::QueryPrune => 2,
        }
    }

    /// Attribute schema for `IPluginCreatorV3One::getFieldNames` (data pointers are null).
    pub fn attribute_schema(self) -> &'static [Field] {
        struct Schema([Field; 1]);
        // SAFETY: only 'static C string pointers and null data; never written.
        unsafe impl Sync for Schema {}
        static PRUNE: Schema = Schema([Field {
            name: KEEP_FIELD.as_ptr(),
            data: std::ptr::null(),
            field_type: field_type::INT32,
            length: 1,
        }]);
        match self {
            Op::MsDeformAttn => &[],
            Op::QueryPrune => &PRUNE.0,
        }
    }
}

/// One attribute handed to [`Plugin::create`]: a borrowed view of a `PluginField`.
#[derive(Debug, Clone, Copy)]
pub struct FieldIn<'a> {
    /// Attribute name.
    pub name: &'a str,
    /// PluginFieldType value.
    pub field_type: i32,
    /// Element count.
    pub length: i32,
    /// Raw little-endian data (`length` elements); may be empty when the pointer was null.
    pub data: &'a [u8],
}

impl FieldIn<'_> {
    /// Reads a scalar integer attribute of any integer field type.
    fn scalar_int(&self) -> Result<i64> {
        let width = match self.field_type {
            field_type::INT8 => 1,
            field_type::INT16 => 2,
            field_type::INT32 => 4,
            field_type::INT64 => 8,
            t => {
                return Err(invalid(format!(
                    "attribute `{}`: expected an integer, got PluginFieldType {t}",
                    self.name
                )))
            }
        };
        if self.length != 1 || self.data.len() < width {
            return Err(invalid(format!(
                "attribute `{}`: expected one integer, got {} element(s) / {} byte(s)",
                self.name,
                self.length,
                self.data.len()
            )));
        }
        let mut b = [0u8; 8];
        b[..width].copy_from_slice(&self.data[..width]);
        // Sign-extend from the field's width.
        let shift = 64 - 8 * width as u32;
        Ok((i64::from_le_bytes(b) << shift) >> shift)
    }
}

/// Element size in bytes of a TensorRT DataType value.
fn elem_bytes(t: i32) -> Option<usize> {
    match t {
        dtype::FLOAT | dtype::INT32 => Some(4),
        dtype::HALF => Some(2),
        dtype::INT64 => Some(8),
        _ => None,
    }
}

/// One plugin instance (what an `IPluginV3` object wraps).
pub struct Plugin {
    op: Op,
    /// QueryPrune's K; boxed so that the serialized field's data pointer stays valid while `self` moves.
    keep: Box<i32>,
    fields: Vec<Field>,
    #[cfg(feature = "cuda")]
    kernels: Option<std::sync::Arc<crate::kernels::Kernels>>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("op", &self.op)
            .field("keep", &*self.keep)
            .finish()
    }
}

impl Clone for Plugin {
    fn clone(&self) -> Self {
        Plugin::with_keep(self.op, *self.keep)
    }
}

impl Plugin {
    fn with_keep(op: Op, keep: i32) -> Plugin {
        let keep = Box::new(keep);
        let fields = match op {
            Op::MsDeformAttn => Vec::new(),
            Op::QueryPrune => vec![Field {
                name: KEEP_FIELD.as_ptr(),
                data: (&*keep as *const i32).cast::<c_void>(),
                field_type: field_type::INT32,
                length: 1,
            }],
        };
        Plugin {
            op,
            keep,
            fields,
            #[cfg(feature = "cuda")]
            kernels: None,
        }
    }

    /// Creates a plugin from its attributes (the creator's `createPlugin`, build and runtime phase alike).
    /// Unknown attributes are ignored with a warning; QueryPrune requires `keep >= 1`.
    pub fn create(op: Op, fields: &[FieldIn<'_>]) -> Result<Plugin> {
        let mut keep: Option<i64> = None;
        for f in fields {
            match (op, f.name) {
                (Op::QueryPrune, "keep") => keep = Some(f.scalar_int()?),
                _ => log::warn!(
                    "{}: ignoring unknown attribute `{}`",
                    op.name().to_string_lossy(),
                    f.name
                ),
            }
        }
        let keep = match op {
            Op::MsDeformAttn => 0,
            Op::QueryPrune => {
                let k =
                    keep.ok_or_else(|| invalid("QueryPrune: missing attribute `keep` (int32 K)"))?;
                i32::try_from(k).ok().filter(|&k| k >= 1).ok_or_else(|| {
                    invalid(format!(
                        "QueryPrune: attribute `keep` must be in 1..=2^31-1, got {k}"
                    ))
                })?
            }
        };
        Ok(Plugin::with_keep(op, keep))
    }

    /// The op this plugin implements.
    pub fn op(&self) -> Op {
        self.op
    }

    /// QueryPrune's K (0 for MSDeformAttn).
    pub fn keep(&self) -> i32 {
        *self.keep
    }

    /// Attributes to serialize into the engine (`getFieldsToSerialize`); pointers live as long as `self`.
    pub fn fields_to_serialize(&self) -> &[Field] {
        &self.fields
    }

    fn check_counts(&self, nb_in: usize, nb_out: usize) -> Result<()> {
        if nb_in != self.op.nb_inputs() || nb_out != self.op.nb_outputs() {
            return Err(invalid(format!(
                "{}: expected {} inputs and {} outputs, got {nb_in} and {nb_out}",
                self.op.name().to_string_lossy(),
                self.op.nb_inputs(),
                self.op.nb_outputs()
            )));
        }
        Ok(())
    }

    /// `getOutputDataTypes`: MSDeformAttn outputs value's type (f32/f16); QueryPrune outputs (int64, f32).
    pub fn output_types(&self, inputs: &[i32], out: &mut [i32]) -> Result<()> {
        self.check_counts(inputs.len(), out.len())?;
        match self.op {
            Op::MsDeformAttn => {
                if !matches!(inputs[0], dtype::FLOAT | dtype::HALF) {
                    return Err(invalid(format!(
                        "MSDeformAttn: value must be float32 or float16, got {}",
                        dtype::name(inputs[0])
                    )));
                }
                out[0] = inputs[0];
            }
            Op::QueryPrune => {
                out[0] = dtype::INT64;
                out[1] = dtype::FLOAT;
            }
        }
        Ok(())
    }

    /// `getOutputShapes` as recipes over the inputs' symbolic dimensions. `input_ranks` are the inputs'
    /// ranks, checked here so that every referenced dimension exists.
    pub fn output_shapes(&self, input_ranks: &[i32], out: &mut [ShapeRecipe]) -> Result<()> {
        self.check_counts(input_ranks.len(), out.len())?;
        let want: &[i32] = match self.op {
            Op::MsDeformAttn => &[4, 2, 1, 6, 5],
            Op::QueryPrune => &[3, 3],
        };
        if input_ranks != want {
            return Err(invalid(format!(
                "{}: input ranks {input_ranks:?}, expected {want:?}",
                self.op.name().to_string_lossy()
            )));
        }
        match self.op {
            // [B, Q, H*Dh] from sampling_locations [B,Q,..] and value [.., H, Dh].
            Op::MsDeformAttn => {
                out[0] = ShapeRecipe::new(&[
                    DimExpr::input(3, 0),
                    DimExpr::input(3, 1),
                    DimExpr::product((0, 2), (0, 3)),
                ])
            }
            // keep_idx [B, K] (K static from the attribute), gate [B, N].
            Op::QueryPrune => {
                out[0] = ShapeRecipe::new(&[
                    DimExpr::input(0, 0),
                    DimExpr::constant(i64::from(*self.keep)),
                ]);
                out[1] = ShapeRecipe::new(&[DimExpr::input(0, 0), DimExpr::input(0, 1)]);
            }
        }
        Ok(())
    }

    /// `supportsFormatCombination`: linear layouts only; positions count inputs then outputs, and only
    /// positions `<= pos` are consulted (TensorRT's contract).
    pub fn supports(&self, pos: usize, descs: &[TensorDesc], nb_in: usize) -> bool {
        let nb_out = descs.len().saturating_sub(nb_in);
        if self.check_counts(nb_in, nb_out).is_err() || pos >= descs.len() {
            return false;
        }
        let d = &descs[pos];
        if d.format != FORMAT_LINEAR {
            return false;
        }
        match (self.op, pos) {
            (Op::MsDeformAttn, 0) => matches!(d.dtype, dtype::FLOAT | dtype::HALF),
            (Op::MsDeformAttn, 1) => matches!(d.dtype, dtype::INT64 | dtype::INT32),
            (Op::MsDeformAttn, 2) => d.dtype == descs[1].dtype,
            (Op::MsDeformAttn, 3 | 4) => d.dtype == dtype::FLOAT,
            (Op::MsDeformAttn, 5) => d.dtype == descs[0].dtype,
            (Op::QueryPrune, 0 | 1 | 3) => d.dtype == dtype::FLOAT,
            (Op::QueryPrune, 2) => d.dtype == dtype::INT64,
            _ => false,
        }
    }

    /// Checks one full set of descriptors (types, formats, ranks, and every known extent).
    fn check_descs(&self, ins: &[TensorDesc], outs: &[TensorDesc]) -> Result<()> {
        self.check_counts(ins.len(), outs.len())?;
        let all: Vec<TensorDesc> = ins.iter().chain(outs).copied().collect();
        for pos in 0..all.len() {
            if !self.supports(pos, &all, ins.len()) {
                return Err(invalid(format!(
                    "{}: unsupported type/format {} (format {}) at I/O position {pos}",
                    self.op.name().to_string_lossy(),
                    dtype::name(all[pos].dtype),
                    all[pos].format
                )));
            }
        }
        let ranks: Vec<i32> = ins.iter().map(|d| d.nb_dims).collect();
        let mut recipes = vec![ShapeRecipe::new(&[]); outs.len()];
        self.output_shapes(&ranks, &mut recipes)?;
        let shapes: Vec<&[i64]> = ins.iter().map(TensorDesc::shape).collect();
        for (i, (r, o)) in recipes.iter().zip(outs).enumerate() {
            let want = r.eval(&shapes).unwrap_or_default();
            let got = o.shape();
            let ok = want.len() == got.len()
                && want
                    .iter()
                    .zip(got)
                    .all(|(&w, &g)| w < 0 || g < 0 || w == g);
            if !ok {
                return Err(invalid(format!(
                    "{}: output {i} has shape {got:?}, expected {want:?}",
                    self.op.name().to_string_lossy()
                )));
            }
        }
        Ok(())
    }

    /// `configurePlugin` (build time, extents may be -1) and `onShapeChange` (run time): validates the
    /// descriptors; with every extent known, also the full op contract.
    pub fn configure(&self, ins: &[TensorDesc], outs: &[TensorDesc]) -> Result<()> {
        self.check_descs(ins, outs)?;
        if ins.iter().all(|d| d.shape().iter().all(|&v| v >= 0)) {
            match self.op {
                Op::MsDeformAttn => {
                    self.msda_dims(ins)?;
                }
                Op::QueryPrune => {
                    self.prune_dims(ins)?;
                }
            }
        }
        Ok(())
    }

    fn msda_dims(&self, ins: &[TensorDesc]) -> Result<MsdaDims> {
        MsdaDims::from_shapes(
            ins[0].shape(),
            ins[1].shape(),
            ins[2].shape(),
            ins[3].shape(),
            ins[4].shape(),
        )
    }

    fn prune_dims(&self, ins: &[TensorDesc]) -> Result<PruneDims> {
        PruneDims::from_shapes(ins[0].shape(), ins[1].shape(), i64::from(*self.keep))
    }

    /// `getWorkspaceSize`: MSDeformAttn needs none (its taps live in shared memory); QueryPrune asks for
    /// the `[B, 2, N]` floats of its spread kernels ([`PruneDims::spread_workspace_bytes`]: column sums
    /// over the whole GPU instead of one block per batch item). 0 when the shapes are not valid (the
    /// build then fails in `configurePlugin` with the reason).
    pub fn workspace_size(&self, ins: &[TensorDesc], _outs: &[TensorDesc]) -> usize {
        match self.op {
            Op::MsDeformAttn => 0,
            Op::QueryPrune => {
                if ins.len() < 2 {
                    return 0;
                }
                self.prune_dims(ins)
                    .and_then(|d| d.validate().map(|()| d.spread_workspace_bytes()))
                    .unwrap_or(0)
            }
        }
    }

    /// Bytes of every input and output, for callers that allocate (tests, our runtime).
    pub fn io_bytes(descs: &[TensorDesc]) -> Result<Vec<usize>> {
        descs
            .iter()
            .map(|d| {
                let n: i64 = d.shape().iter().product();
                let e = elem_bytes(d.dtype)
                    .ok_or_else(|| invalid(format!("unsupported type {}", dtype::name(d.dtype))))?;
                usize::try_from(n)
                    .map(|n| n * e)
                    .map_err(|_| invalid(format!("unknown extent in {:?}", d.shape())))
            })
            .collect()
    }
}

#[cfg(feature = "cuda")]
impl Plugin {
    /// Compiles (NVRTC, cached per SM) and loads (cached per context) the kernels for the current CUDA
    /// context, so that the first `enqueue` does not pay for it.
    pub fn prepare(&mut self) -> Result<()> {
        if self.kernels.is_none() {
            self.kernels = Some(crate::kernels::Kernels::for_current_context()?);
        }
        Ok(())
    }

    /// `enqueue`: validates the run-time descriptors and launches the optimized kernel on `stream`.
    /// QueryPrune runs its spread kernels when `workspace` is given (TensorRT passes the
    /// [`Plugin::workspace_size`] bytes it was asked for), the single-block kernel otherwise.
    ///
    /// # Safety
    /// `inputs`/`outputs` must be device pointers of the current context matching `ins`/`outs`,
    /// `workspace` null or device memory of at least [`Plugin::workspace_size`] bytes for these
    /// descriptors that nothing else uses until the stream has run the kernels, and `stream` a stream of
    /// that context (TensorRT guarantees all three).
    pub unsafe fn enqueue(
        &mut self,
        ins: &[TensorDesc],
        outs: &[TensorDesc],
        inputs: &[*const c_void],
        outputs: &[*mut c_void],
        workspace: *mut c_void,
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<()> {
        use crate::kernels::{non_null, IndexType, MsdaPtrs, MsdaVariant, PrunePtrs, ValueType};
        self.check_counts(ins.len(), outs.len())?;
        if inputs.len() != ins.len() || outputs.len() != outs.len() {
            return Err(invalid(
                "enqueue: pointer count does not match descriptor count",
            ));
        }
        self.prepare()?;
        let k = self
            .kernels
            .as_ref()
            .ok_or_else(|| invalid("kernels not loaded"))?;
        let ip = |i: usize| inputs[i] as u64;
        let op = |i: usize| outputs[i] as u64;
        match self.op {
            Op::MsDeformAttn => {
                let d = self.msda_dims(ins)?;
                let vt = if ins[0].dtype == dtype::HALF {
                    ValueType::F16
                } else {
                    ValueType::F32
                };
                let it = if ins[1].dtype == dtype::INT32 {
                    IndexType::I32
                } else {
                    IndexType::I64
                };
                if outs[0].dtype != ins[0].dtype {
                    return Err(invalid("MSDeformAttn: output type must equal value type"));
                }
                let p = MsdaPtrs {
                    value: ip(0),
                    spatial_shapes: ip(1),
                    level_start_index: ip(2),
                    sampling_locations: ip(3),
                    attention_weights: ip(4),
                    out: op(0),
                };
                for (ptr, what) in [
                    (p.value, "value"),
                    (p.spatial_shapes, "spatial_shapes"),
                    (p.out, "output"),
                ] {
                    non_null(ptr, what)?;
                }
                k.launch_msda(MsdaVariant::Optimized, vt, it, &d, &p, stream)
            }
            Op::QueryPrune => {
                let d = self.prune_dims(ins)?;
                let p = PrunePtrs {
                    class_logits: ip(0),
                    self_attn: ip(1),
                    keep_idx: op(0),
                    gate: op(1),
                };
                for (ptr, what) in [
                    (p.class_logits, "class_logits"),
                    (p.self_attn, "self_attn"),
                    (p.keep_idx, "keep_idx"),
                ] {
                    non_null(ptr, what)?;
                }
                if workspace.is_null() || self.workspace_size(ins, outs) == 0 {
                    k.launch_prune(&d, &p, stream)
                } else {
                    k.launch_prune_spread(&d, &p, workspace as u64, stream)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
