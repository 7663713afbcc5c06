//! Reuse of large f32 (and uint8) buffers between the nodes of one engine's runs.
//!
//! tract gives every node a fresh output tensor and frees each one after its last reader. Blocks of
//! tens of MB (the encoder FFN's `[4820, 2048]` hidden layer is 39.5 MB) come straight from the
//! kernel: every run faults in and zeroes each of their pages again, and unmaps them when they are
//! freed; that is most of the time a run spends in the kernel (benches/README.md, "Buffer reuse").
//! Our ops break that cycle for the tensors they touch: an input whose last reader is one of our ops
//! reaches it exclusively (tract drops its own reference before the call), so after computing, the op
//! hands it to the engine's [`TensorPool`] instead of freeing it; an op that needs an output takes a
//! pooled tensor of the same length when there is one. Outputs leave our ops exclusive as before, so
//! tract's in-place element-wise ops still reuse them.
//!
//! The pool lives in the tract session's turn state (installed by [`InstallPool`], a
//! `TurnStateHandler` on the engine's plans) and survives from run to run: in steady state the same
//! buffers serve every run. It keeps at most [`TensorPool::cap`] bytes, and only blocks of at least
//! [`MIN_BYTES`] (smaller ones come from the allocator's free lists without page faults). Besides
//! f32 it keeps uint8 tensors: the quantized activations of an INT8 engine's integer products
//! (`QuantizeU8` writes them, `QLinear` reads them last).

use std::collections::VecDeque;
use std::sync::Mutex;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::plan::{TurnState, TurnStateHandler};

/// Smallest block worth pooling (1 MiB).
pub const MIN_BYTES: usize = 1 << 20;

/// Default byte budget of an engine's pool.
pub const DEFAULT_CAP: usize = 512 << 20;

/// Free f32 and uint8 tensors of one engine session, oldest first.
#[derive(Debug)]
pub struct TensorPool {
    cap: usize,
    inner: Mutex<Free>,
}

#[derive(Debug, Default)]
struct Free {
    tensors: VecDeque<Tensor>,
    bytes: usize,
    /// (element type, length, quota): the tensors our ops have asked for and how many requests for
    /// each found the pool without one; the pool keeps no more than that many of a kind.
    wanted: Vec<(DatumType, usize, usize)>,
    stats: PoolStats,
}

/// What a pool has done since it was created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Requests served from the pool.
    pub hits: u64,
    /// Requests (of at least 1 MiB) the pool had no tensor of that length for.
    pub misses: u64,
    /// Tensors taken in.
    pub kept: u64,
    /// Tensors dropped to stay within the budget (the oldest first).
    pub evicted: u64,
    /// Tensors dropped because the pool held as many of their length as it ever lacked.
    pub unwanted: u64,
}

impl TensorPool {
    /// An empty pool that keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        TensorPool {
            cap,
            inner: Mutex::new(Free::default()),
        }
    }

    /// The byte budget.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Tensors held now.
    pub fn len(&self) -> usize {
        self.lock().tensors.len()
    }

    /// Its counters.
    pub fn stats(&self) -> PoolStats {
        self.lock().stats
    }

    /// Whether the pool holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        // A panic while the lock is held leaves a consistent list (every change is one push or
        // remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pooled f32 tensor of `shape` (contents arbitrary), the most recently returned one of that
    /// length; `None` when there is none.
    pub fn take_f32(&self, shape: &[usize]) -> Option<Tensor> {
        self.take(f32::datum_type(), shape)
    }

    /// A pooled tensor of element type `dt` (f32 or u8) and `shape` (contents arbitrary), the most
    /// recently returned one of that type and length; `None` when there is none.
    pub fn take(&self, dt: DatumType, shape: &[usize]) -> Option<Tensor> {
        let len: usize = shape.iter().product();
        if !pooled(dt) || len.saturating_mul(dt.size_of()) < MIN_BYTES {
            return None;
        }
        let mut free = self.lock();
        let found = free
            .tensors
            .iter()
            .rposition(|t| t.datum_type() == dt && t.len() == len);
        let Some(i) = found else {
            free.stats.misses += 1;
            match free.wanted.iter_mut().find(|w| (w.0, w.1) == (dt, len)) {
                Some(w) => w.2 += 1,
                None => free.wanted.push((dt, len, 1)),
            }
            return None;
        };
        let mut t = free.tensors.remove(i)?;
        free.bytes -= len * dt.size_of();
        free.stats.hits += 1;
        drop(free);
        t.set_shape(shape).ok()?;
        Some(t)
    }

    /// Keeps `v` for a later [`TensorPool::take`] when nothing else holds it, it is a plain f32 or
    /// u8 tensor of at least 1 MiB, the pool holds fewer tensors of its type and length than
    /// requests for them have found it without one, and it fits the budget (the oldest entries
    /// make room); otherwise drops it.
    pub fn give(&self, v: TValue) {
        let dt = v.datum_type();
        if !v.is_exclusive() || !pooled(dt) {
            return;
        }
        let bytes = v.len() * dt.size_of();
        if bytes < MIN_BYTES || bytes > self.cap || v.try_as_plain_ram().is_err() {
            return;
        }
        let v_len = v.len();
        let Ok(t) = Arc::try_unwrap(v.into_arc_tensor()) else {
            return;
        };
        let mut free = self.lock();
        let quota = free
            .wanted
            .iter()
            .find(|w| (w.0, w.1) == (dt, v_len))
            .map_or(0, |w| w.2);
        let held = free
            .tensors
            .iter()
            .filter(|t| t.datum_type() == dt && t.len() == v_len)
            .count();
        if held >= quota {
            free.stats.unwanted += 1;
            return;
        }
        while free.bytes + bytes > self.cap {
            let Some(old) = free.tensors.pop_front() else {
                break;
            };
            free.bytes -= old.len() * old.datum_type().size_of();
            free.stats.evicted += 1;
        }
        free.bytes += bytes;
        free.stats.kept += 1;
        free.tensors.push_back(t);
    }
}

/// The element types a pool keeps.
fn pooled(dt: DatumType) -> bool {
    dt == f32::datum_type() || dt == u8::datum_type()
}

/// Installs a [`TensorPool`] in each session's turn state on its first run (kept across runs).
#[derive(Debug, Clone, Copy)]
pub struct InstallPool {
    /// The pool's byte budget.
    pub cap: usize,
}

impl TurnStateHandler for InstallPool {
    fn before_plan_eval(&self, turn: &mut TurnState) -> TractResult<()> {
        if turn.shared.get::<TensorPool>().is_none() {
            turn.shared.insert(TensorPool::new(self.cap));
        }
        Ok(())
    }

    fn after_plan_eval(&self, turn: &mut TurnState) -> TractResult<()> {
        if let Some(p) = turn.shared.get::<TensorPool>() {
            log::trace!(
                "cpu buffer pool: {} tensors, {} MiB held; {:?}",
                p.len(),
                p.bytes() >> 20,
                p.stats()
            );
        }
        Ok(())
    }
}

/// The pool of the session evaluating `ctx`, if its plan installs one.
pub fn pool<'a>(ctx: &EvalContext<'a>) -> Option<&'a TensorPool> {
    ctx.shared.and_then(|s| s.get::<TensorPool>())
}

/// Hands every input the op was the last reader of to the session's pool.
pub fn recycle(ctx: &EvalContext<'_>, inputs: TVec<TValue>) {
    if let Some(p) = pool(ctx) {
        inputs.into_iter().for_each(|v| p.give(v));
    }
}

/// An f32 tensor of `shape` that the caller fills completely: pooled when the session has one of
/// that length, otherwise newly allocated (uninitialised).
///
/// # Safety
/// The caller writes every element before the tensor is read.
pub unsafe fn f32_tensor(ctx: &EvalContext<'_>, shape: &[usize]) -> TractResult<Tensor> {
    // SAFETY: the caller's contract.
    unsafe { tensor_of::<f32>(ctx, shape) }
}

/// A `T` (f32 or u8) tensor of `shape` that the caller fills completely: pooled when the session
/// has one of that type and length, otherwise newly allocated (uninitialised).
///
/// # Safety
/// The caller writes every element before the tensor is read.
pub unsafe fn tensor_of<T: Datum>(ctx: &EvalContext<'_>, shape: &[usize]) -> TractResult<Tensor> {
    if let Some(t) = pool(ctx).and_then(|p| p.take(T::datum_type(), shape)) {
        return Ok(t);
    }
    // SAFETY: the caller's contract (every element written before it is read).
    unsafe { Tensor::uninitialized::<T>(shape) }
}

/// `v` as a tensor the caller may overwrite: `v` itself when nothing else reads it, otherwise a
/// copy (into a pooled buffer when the session has one of that length).
pub fn owned(ctx: &EvalContext<'_>, v: TValue) -> TractResult<Tensor> {
    if v.is_exclusive() || v.datum_type() != f32::datum_type() {
        return Ok(v.into_tensor());
    }
    if let Some(mut t) = pool(ctx).and_then(|p| p.take_f32(v.shape())) {
        let src = v.try_as_plain_ram()?;
        t.try_as_plain_ram_mut()?
            .as_slice_mut::<f32>()?
            .copy_from_slice(src.as_slice::<f32>()?);
        return Ok(t);
    }
    Ok(v.into_tensor())
}

/// An f32 work buffer of `len` elements for a kernel that writes all of it before reading it (the
/// packed operands of `conv2d` and `matmul`): pooled when the session has one of that length, its
/// old values left in place, otherwise new and zeroed. Hand it back with [`give_back`].
pub fn scratch(ctx: &EvalContext<'_>, len: usize) -> TractResult<Tensor> {
    match pool(ctx).and_then(|p| p.take_f32(&[len])) {
        Some(t) => Ok(t),
        None => Tensor::zero::<f32>(&[len]),
    }
}

/// Returns a work buffer from [`scratch`] to the session's pool.
pub fn give_back(ctx: &EvalContext<'_>, t: Tensor) {
    if let Some(p) = pool(ctx) {
        p.give(t.into_tvalue());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1 << 20;

    fn tensor(len: usize) -> TValue {
        Tensor::zero::<f32>(&[len]).unwrap().into_tvalue()
    }

    fn ptr(t: &Tensor) -> *const f32 {
        t.try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .as_ptr()
    }

    #[test]
    fn keeps_what_was_asked_for_and_hands_the_same_memory_back() {
        let p = TensorPool::new(64 * MB);
        let len = MB / 4 * 3; // 3 MiB
        assert!(p.take_f32(&[len]).is_none(), "empty pool");
        let v = tensor(len);
        let addr = ptr(&v);
        p.give(v);
        assert_eq!((p.len(), p.bytes()), (1, 3 * MB));
        // Same length, another shape: the same block, reshaped.
        let t = p.take_f32(&[3, len / 3]).expect("pooled");
        assert_eq!(t.shape(), &[3, len / 3]);
        assert_eq!(ptr(&t), addr);
        assert!(p.is_empty());
        assert_eq!(
            p.stats(),
            PoolStats {
                hits: 1,
                misses: 1,
                kept: 1,
                evicted: 0,
                unwanted: 0
            }
        );
    }

    #[test]
    fn drops_shared_small_unasked_and_surplus_tensors() {
        let p = TensorPool::new(64 * MB);
        let len = MB / 2; // 2 MiB
                          // Still read elsewhere: never pooled.
        let shared = tensor(len);
        let other = shared.clone();
        assert!(p.take_f32(&[len]).is_none());
        p.give(shared);
        assert!(p.is_empty());
        drop(other);
        // Below MIN_BYTES: neither asked for nor kept.
        assert!(p.take_f32(&[16]).is_none());
        p.give(tensor(16));
        assert!(p.is_empty());
        // A length no request lacked: dropped.
        p.give(tensor(len + 1));
        assert!(p.is_empty());
        // One request lacked `len`: one kept, the second dropped.
        p.give(tensor(len));
        p.give(tensor(len));
        assert_eq!(p.len(), 1);
        let s = p.stats();
        assert_eq!((s.misses, s.kept, s.unwanted), (1, 1, 2), "{s:?}");
        // Other element types stay out.
        assert!(p.take_f32(&[len / 2]).is_none());
        p.give(Tensor::zero::<f64>(&[len / 2]).unwrap().into_tvalue());
        assert_eq!(p.len(), 1);
        assert!(p.take(f64::datum_type(), &[len / 2]).is_none());
        p.give(Tensor::zero::<f64>(&[len / 2]).unwrap().into_tvalue());
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn keeps_uint8_tensors_apart_from_f32_ones() {
        let p = TensorPool::new(64 * MB);
        // 2 MiB of u8 and 2 MiB of f32: different lengths, and a u8 request never gets an f32
        // tensor of the same length (nor the reverse).
        let n = 2 * MB;
        assert!(p.take(u8::datum_type(), &[n]).is_none());
        let q = Tensor::zero::<u8>(&[n]).unwrap();
        let addr = q
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<u8>()
            .unwrap()
            .as_ptr();
        p.give(q.into_tvalue());
        assert_eq!((p.len(), p.bytes()), (1, 2 * MB));
        assert!(
            p.take_f32(&[n]).is_none(),
            "an f32 request of the u8 tensor's length"
        );
        p.give(tensor(n));
        assert_eq!((p.len(), p.bytes()), (2, 10 * MB), "each kind kept once");
        let t = p.take(u8::datum_type(), &[2, n / 2]).expect("pooled");
        assert_eq!(t.datum_type(), u8::datum_type());
        assert_eq!(t.shape(), &[2, n / 2]);
        assert_eq!(
            t.try_as_plain_ram()
                .unwrap()
                .as_slice::<u8>()
                .unwrap()
                .as_ptr(),
            addr
        );
        assert_eq!(
            p.take_f32(&[n]).expect("pooled").datum_type(),
            f32::datum_type()
        );
        // Below 1 MiB of u8 (though 1 Mi elements would be 4 MiB of f32): not pooled.
        assert!(p.take(u8::datum_type(), &[MB / 2]).is_none());
        assert_eq!(p.stats().misses, 2, "{:?}", p.stats());
    }

    #[test]
    fn the_budget_evicts_the_oldest_first() {
        let p = TensorPool::new(6 * MB);
        let (a, b) = (MB / 2, MB / 4 * 3); // 2 and 3 MiB
        assert!(p.take_f32(&[a]).is_none());
        assert!(p.take_f32(&[b]).is_none());
        assert!(p.take_f32(&[b]).is_none());
        p.give(tensor(a));
        p.give(tensor(b));
        assert_eq!(p.bytes(), 5 * MB);
        // 3 more MiB: the 2 MiB one (oldest) goes, then there is room.
        p.give(tensor(b));
        assert_eq!((p.len(), p.bytes()), (2, 6 * MB));
        assert!(p.take_f32(&[a]).is_none());
        assert_eq!(p.stats().evicted, 1);
        // Larger than the whole budget (8 MiB): never kept.
        let big = 2 * MB;
        assert!(p.take_f32(&[big]).is_none());
        p.give(tensor(big));
        assert_eq!(p.len(), 2);
    }
}
