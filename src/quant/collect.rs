//! Collecting per-tensor activation statistics over a calibration set and turning them into a
//! [`ScaleTable`].

use super::calibrate::CalibMethod;
use super::histogram::Histogram;
use super::scale::{ScaleTable, TensorScale};
use crate::error::Result;
use std::collections::BTreeMap;

/// Per-tensor histograms, keyed by tensor name.
#[derive(Debug, Clone)]
pub struct Collector {
    bins: usize,
    hists: BTreeMap<String, Histogram>,
    batches: usize,
}

impl Collector {
    /// A collector whose histograms have `bins` bins (see [`Histogram::new`]).
    pub fn new(bins: usize) -> Result<Self> {
        Histogram::new(bins)?; // validates `bins` once, up front
        Ok(Self {
            bins,
            hists: BTreeMap::new(),
            batches: 0,
        })
    }

    /// Adds one observed value of tensor `name` (any shape, flattened).
    pub fn observe(&mut self, name: &str, values: &[f32]) -> Result<()> {
        if !self.hists.contains_key(name) {
            self.hists
                .insert(name.to_string(), Histogram::new(self.bins)?);
        }
        if let Some(h) = self.hists.get_mut(name) {
            h.add(values);
        }
        Ok(())
    }

    /// Marks the end of one calibration sample (frame + prompt), for the report.
    pub fn end_sample(&mut self) {
        self.batches += 1;
    }

    /// Number of bins of every histogram.
    pub fn bins(&self) -> usize {
        self.bins
    }

    /// Bytes the histograms hold (counts only): grows with the number of tensors, not with the data.
    pub fn held_bytes(&self) -> usize {
        self.hists
            .iter()
            .map(|(k, h)| k.len() + std::mem::size_of_val(h.counts()))
            .sum()
    }

    /// Number of samples seen.
    pub fn samples(&self) -> usize {
        self.batches
    }

    /// Histograms gathered so far.
    pub fn histograms(&self) -> &BTreeMap<String, Histogram> {
        &self.hists
    }

    /// Computes a per-tensor scale for every observed tensor. Tensors with NaN/inf values are logged.
    pub fn scale_table(&self, model: &str, method: CalibMethod, set: &str) -> Result<ScaleTable> {
        self.scale_table_with(model, method, set, &Default::default())
    }

    /// As [`Collector::scale_table`], but the tensors in `use_max` get the largest |x| seen (no
    /// clipping) whatever `method` says: for bounded outputs such as softmax probabilities, where the
    /// rare large values (a query attending to one key) are the ones that matter and entropy
    /// calibration would clip them.
    pub fn scale_table_with(
        &self,
        model: &str,
        method: CalibMethod,
        set: &str,
        use_max: &std::collections::HashSet<String>,
    ) -> Result<ScaleTable> {
        let mut t = ScaleTable::new(model, method, set);
        for (name, h) in &self.hists {
            if h.non_finite() > 0 {
                log::warn!(
                    "calibration: tensor {name} had {} NaN/inf values (ignored)",
                    h.non_finite()
                );
            }
            let amax = if use_max.contains(name) {
                h.max_abs()
            } else {
                method.amax(h)?
            };
            t.tensors.insert(name.clone(), TensorScale::from_amax(amax));
        }
        Ok(t)
    }
}

/// Feeds every f32 tensor of a safetensors activation dump (optionally only names starting with one of
/// `include`) into a new collector, one sample per file.
pub fn collect_from_safetensors(
    path: &std::path::Path,
    include: &[String],
    bins: usize,
) -> Result<Collector> {
    let (tensors, _) = crate::tensor::read_safetensors(path)?;
    let mut c = Collector::new(bins)?;
    for (name, t) in &tensors {
        if !include.is_empty() && !include.iter().any(|p| name.starts_with(p.as_str())) {
            continue;
        }
        if let Ok(v) = t.f32s() {
            c.observe(name, v)?;
        }
    }
    if c.histograms().is_empty() {
        return Err(crate::Error::Config(format!(
            "{}: no f32 tensor matched the include prefixes {include:?}",
            path.display()
        )));
    }
    c.end_sample();
    Ok(c)
}

/// Signal-to-quantization-noise ratio (dB) of fake-quantizing `values` with `scale`:
/// 10·log10(Σx² / Σ(x − fq(x))²). Infinite when quantization is exact.
pub fn sqnr_db(values: &[f32], scale: f32) -> Result<f64> {
    let mut q = values.to_vec();
    super::fake::fake_quant(&mut q, scale)?;
    let (mut sig, mut noise) = (0f64, 0f64);
    for (&x, &y) in values.iter().zip(&q) {
        if x.is_finite() {
            sig += (x as f64) * (x as f64);
            noise += ((x - y) as f64) * ((x - y) as f64);
        }
    }
    Ok(if noise == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (sig / noise).log10()
    })
}
