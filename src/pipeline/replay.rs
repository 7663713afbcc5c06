//! Engines that replay recorded outputs, for measuring and testing the host side of the streaming
//! path without running a network: [`Recorder`] wraps a real engine and keeps a copy of every output
//! it produced; [`ReplayEngine`] has the same bindings and writes those outputs back call after call.
//! [`ReplayEngine::synthetic`] makes one with given bindings and deterministic pseudo-random outputs,
//! for benchmarking at a real model's sizes.

use std::sync::{Arc, Mutex};

use crate::backend::{check_bindings, Engine, TensorSpec, View, ViewMut};
use crate::error::{Error, Result};
use crate::tensor::{DType, Data, Tensor};

/// When a [`ReplayEngine`] writes its outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayMode {
    /// Every call writes the next recorded call's outputs, cycling.
    Cycle,
    /// Each recorded call is written once; later calls leave the output buffers as they are (so a
    /// benchmark sees the host path's cost only, not the replay's copies).
    Once,
}

/// Recorded outputs of one engine, one entry per call.
pub type Recording = Arc<Mutex<Vec<Vec<Tensor>>>>;

/// Wraps an engine and records every call's outputs.
pub struct Recorder {
    inner: Box<dyn Engine>,
    calls: Recording,
}

impl Recorder {
    /// Wraps `inner`; the returned handle fills as the engine runs.
    pub fn new(inner: Box<dyn Engine>) -> (Self, Recording) {
        let calls = Recording::default();
        (
            Recorder {
                inner,
                calls: calls.clone(),
            },
            calls,
        )
    }
}

fn to_tensor(spec: &TensorSpec, v: &ViewMut<'_>) -> Result<Tensor> {
    let data = match v {
        ViewMut::F32(x) => Data::F32(x.to_vec()),
        ViewMut::F16(x) => Data::F16(x.to_vec()),
        ViewMut::I64(x) => Data::I64(x.to_vec()),
        ViewMut::U8(x) => Data::U8(x.to_vec()),
        ViewMut::Bool(x) => Data::Bool(x.to_vec()),
        ViewMut::Device(_) => {
            return Err(Error::Backend(
                "recorder: device buffers cannot be recorded".into(),
            ))
        }
    };
    Tensor::new(spec.shape.clone(), data)
}

impl Engine for Recorder {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn inputs(&self) -> &[TensorSpec] {
        self.inner.inputs()
    }
    fn outputs(&self) -> &[TensorSpec] {
        self.inner.outputs()
    }
    fn run(&mut self, inputs: &[View<'_>], outputs: &mut [ViewMut<'_>]) -> Result<()> {
        self.inner.run(inputs, outputs)?;
        let rec = self
            .inner
            .outputs()
            .iter()
            .zip(outputs.iter())
            .map(|(s, v)| to_tensor(s, v))
            .collect::<Result<Vec<_>>>()?;
        self.calls
            .lock()
            .map_err(|_| Error::Backend("recorder lock poisoned".into()))?
            .push(rec);
        Ok(())
    }
}

/// Writes recorded outputs instead of computing them.
pub struct ReplayEngine {
    name: String,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    calls: Vec<Vec<Tensor>>,
    next: usize,
    mode: ReplayMode,
    runs: u64,
}

impl ReplayEngine {
    /// An engine with `inputs`/`outputs` bindings replaying `calls` (each one tensor per output).
    pub fn new(
        name: &str,
        inputs: Vec<TensorSpec>,
        outputs: Vec<TensorSpec>,
        calls: Vec<Vec<Tensor>>,
        mode: ReplayMode,
    ) -> Result<Self> {
        if calls.is_empty() {
            return Err(Error::Backend(format!("replay {name}: no recorded call")));
        }
        for c in &calls {
            if c.len() != outputs.len()
                || c.iter()
                    .zip(&outputs)
                    .any(|(t, s)| t.shape() != s.shape.as_slice() || t.dtype() != s.dtype)
            {
                return Err(Error::Backend(format!(
                    "replay {name}: a recorded call does not match the output bindings"
                )));
            }
        }
        Ok(ReplayEngine {
            name: name.to_string(),
            inputs,
            outputs,
            calls,
            next: 0,
            mode,
            runs: 0,
        })
    }

    /// Replays what `recorder` saw for an engine with `template`'s bindings.
    pub fn from_recording(
        template: &dyn Engine,
        recording: &Recording,
        mode: ReplayMode,
    ) -> Result<Self> {
        let calls = recording
            .lock()
            .map_err(|_| Error::Backend("recording lock poisoned".into()))?
            .clone();
        Self::new(
            template.name(),
            template.inputs().to_vec(),
            template.outputs().to_vec(),
            calls,
            mode,
        )
    }

    /// An engine with the given bindings whose `calls` recorded outputs are deterministic
    /// pseudo-random values (f32 in [-1, 1), integers and bools from the same stream), seeded by `seed`.
    pub fn synthetic(
        name: &str,
        inputs: Vec<TensorSpec>,
        outputs: Vec<TensorSpec>,
        calls: usize,
        seed: u64,
        mode: ReplayMode,
    ) -> Result<Self> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            // xorshift64*: cheap, deterministic, good enough for filler data.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let mut recorded = Vec::with_capacity(calls);
        for _ in 0..calls.max(1) {
            let mut call = Vec::with_capacity(outputs.len());
            for s in &outputs {
                let n = s.numel();
                let data = match s.dtype {
                    DType::F32 => Data::F32(
                        (0..n)
                            .map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
                            .collect(),
                    ),
                    DType::I64 => Data::I64((0..n).map(|_| (next() % 1000) as i64).collect()),
                    DType::Bool => Data::Bool((0..n).map(|_| next() & 1 == 1).collect()),
                    DType::U8 => Data::U8((0..n).map(|_| next() as u8).collect()),
                    other => {
                        return Err(Error::Backend(format!(
                            "replay {name}: synthetic {other:?} outputs not supported"
                        )))
                    }
                };
                call.push(Tensor::new(s.shape.clone(), data)?);
            }
            recorded.push(call);
        }
        Self::new(name, inputs, outputs, recorded, mode)
    }

    /// Calls served so far.
    pub fn runs(&self) -> u64 {
        self.runs
    }
}

fn write(dst: &mut ViewMut<'_>, src: &Tensor) -> Result<()> {
    match (dst, src.data()) {
        (ViewMut::F32(d), Data::F32(s)) => d.copy_from_slice(s),
        (ViewMut::F16(d), Data::F16(s)) => d.copy_from_slice(s),
        (ViewMut::I64(d), Data::I64(s)) => d.copy_from_slice(s),
        (ViewMut::U8(d), Data::U8(s)) => d.copy_from_slice(s),
        (ViewMut::Bool(d), Data::Bool(s)) => d.copy_from_slice(s),
        _ => return Err(Error::Backend("replay: output type mismatch".into())),
    }
    Ok(())
}

impl Engine for ReplayEngine {
    fn name(&self) -> &str {
        &self.name
    }
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }
    fn run(&mut self, inputs: &[View<'_>], outputs: &mut [ViewMut<'_>]) -> Result<()> {
        check_bindings(&self.name, &self.inputs, inputs, &self.outputs, outputs)?;
        self.runs += 1;
        if self.mode == ReplayMode::Once && self.runs > self.calls.len() as u64 {
            return Ok(());
        }
        let call = &self.calls[self.next];
        for (d, s) in outputs.iter_mut().zip(call) {
            write(d, s)?;
        }
        self.next = (self.next + 1) % self.calls.len();
        Ok(())
    }
}
