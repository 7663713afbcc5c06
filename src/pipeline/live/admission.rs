//! Streams that join a run under way: [`Runtime::step`] admits, between two frames, those whose
//! source opened since (built as at start-up, `building.rs`, from what the commands sent to all
//! streams left the others with, [`super::template`]); one whose frames resize to an input size the
//! run has no engines for waits, parked with its opened source, while the run's export worker
//! ([`super::exporter`]) makes them in the background.

use anyhow::{bail, Context};

use super::building::{build_stream, source_input};
use super::engines::SourceInput;
use super::exporter::Exporter;
use super::joining::Polled;
use super::runtime::Runtime;
use crate::pipeline::multi::SharedEngines;

impl Runtime {
    /// Admits the streams whose source opened since the last step (between two frames; nothing
    /// to do, and no allocation, while none is waiting). One whose frames resize to an input size
    /// the run has no engines for waits, opened, while they are exported in the background (when
    /// the run exports its engines from the weights); otherwise it cannot join, and says why.
    pub(super) fn admit_joining(&mut self) {
        if self.exporter.as_ref().is_some_and(Exporter::busy) {
            self.collect_exports();
        }
        let mut k = 0;
        while k < self.joining.len() {
            // A parked stream whose engines are ready, or still being exported.
            let ready = self.joining[k]
                .parked
                .as_deref()
                .map(|(_, si)| self.sets.host_index(si.input).is_some());
            let (src, si) = match ready {
                Some(false) => {
                    k += 1;
                    continue;
                }
                Some(true) => match self.joining[k].parked.take() {
                    Some(p) => *p,
                    // Not reached (`ready` saw it parked); moving on keeps the loop finite.
                    None => {
                        k += 1;
                        continue;
                    }
                },
                None => match self.joining[k].poll() {
                    Polled::Waiting => {
                        k += 1;
                        continue;
                    }
                    Polled::Opened(src) => {
                        match source_input(&self.config, self.joining[k].index, &src) {
                            Ok(si) => (src, si),
                            Err(e) => {
                                self.cannot_join(k, e);
                                continue;
                            }
                        }
                    }
                    Polled::Failed(e) => {
                        let j = self.joining.remove(k);
                        log::error!("stream {} ({}): {e:#}; it will not join", j.index, j.label);
                        self.gone.push((j.index, format!("{}: {e:#}", j.label)));
                        continue;
                    }
                },
            };
            if !self.plan.device && self.sets.host_index(si.input).is_none() {
                match self.export_for(&si) {
                    Ok(()) => {
                        self.joining[k].parked = Some(Box::new((src, si)));
                        k += 1;
                    }
                    Err(e) => self.cannot_join(k, e),
                }
                continue;
            }
            let mut j = self.joining.remove(k);
            let geo = self.sets.host_index(si.input).unwrap_or(0);
            let built = build_stream(
                &self.config,
                &self.plan,
                &mut self.sets,
                (src, si),
                j.ring.take(),
                None,
            )
            .and_then(|mut st| {
                st.adopt(
                    self.sets.host.get_mut(geo),
                    j.template.as_ref().unwrap_or(&self.join),
                )?;
                Ok(st)
            });
            match built {
                Ok(mut st) => {
                    st.sinks.append(&mut j.sinks);
                    log::info!(
                        "stream {} ({}) joined the run after {:.1} s",
                        j.index,
                        st.description,
                        j.since.elapsed().as_secs_f64()
                    );
                    let at = self.streams.partition_point(|s| s.index < st.index);
                    self.streams.insert(at, st);
                }
                Err(e) => {
                    log::error!("stream {} ({}) cannot join: {e:#}", j.index, j.label);
                    self.gone.push((j.index, format!("{}: {e:#}", j.label)));
                }
            }
        }
    }

    /// Joining stream `k` cannot join (`why`): it leaves the run, which goes on without it.
    fn cannot_join(&mut self, k: usize, why: anyhow::Error) {
        let j = self.joining.remove(k);
        log::error!("stream {} ({}) cannot join: {why:#}", j.index, j.label);
        self.gone.push((j.index, format!("{}: {why:#}", j.label)));
    }

    /// Queues the export of the engines of `si.input` for the run's export worker (unless already
    /// queued or under way), within [`crate::limits::MAX_GEOMETRIES`] sizes, those queued
    /// included; an error when the run cannot make them (its engines came from directories or the
    /// caller, or the export of that size failed earlier in this run).
    fn export_for(&mut self, si: &SourceInput) -> anyhow::Result<()> {
        let Some(ex) = self.exporter.as_mut() else {
            return Err(self.sets.none_for(si, self.config.short_side, false));
        };
        if ex.is_pending(si.input) {
            return Ok(());
        }
        let ((fw, fh), (iw, ih)) = (si.frame, si.input);
        if let Some(why) = ex.failed(si.input) {
            bail!(
                "source {} ({}): {fw}x{fh} frames resize to {iw}x{ih}, an input size whose engine \
                 export failed earlier in this run (not tried again): {why}",
                si.stream,
                si.description
            );
        }
        let ahead = ex.pending().count();
        if self.sets.host.len() + ahead >= crate::limits::MAX_GEOMETRIES {
            let have: Vec<String> = self
                .sets
                .available()
                .iter()
                .map(|((w, h), _)| format!("{w}x{h}"))
                .chain(ex.pending().map(|(w, h)| format!("{w}x{h}")))
                .collect();
            bail!(
                "source {} ({}): {fw}x{fh} frames resize to {iw}x{ih} (shorter side {}), one input \
                 size more than the {} engine sets a run holds (it has {})",
                si.stream,
                si.description,
                self.config.short_side,
                crate::limits::MAX_GEOMETRIES,
                have.join(", ")
            );
        }
        ex.queue(si.clone())?;
        let queued = match ahead {
            0 => String::new(),
            n => format!(" (after the {n} size(s) queued before it)"),
        };
        log::info!(
            "stream {} ({}): {fw}x{fh} frames resize to {iw}x{ih}, an input size without engines \
             yet: exporting them in the background{queued}; the other streams go on meanwhile",
            si.stream,
            si.description
        );
        Ok(())
    }

    /// Binds the engine sets whose background export has finished beside the run's text engine;
    /// the streams waiting for a set that could not be made leave the run with the reason.
    fn collect_exports(&mut self) {
        let Some(ex) = self.exporter.as_mut() else {
            return;
        };
        while let Some(done) = ex.poll() {
            let (w, h) = done.input;
            let bound = done.engines.map_err(anyhow::Error::msg).and_then(|g| {
                let text = self
                    .sets
                    .host
                    .first()
                    .context("the run has no text engine to share")?
                    .text()
                    .clone();
                Ok(SharedEngines::with_text(text, g)?)
            });
            match bound {
                Ok(e) => {
                    log::info!(
                        "engines for {w}x{h} ready after {:.1} s",
                        done.since.elapsed().as_secs_f64()
                    );
                    self.sets.host.push(e);
                }
                Err(e) => {
                    let why = format!("its {w}x{h} engines could not be made: {e:#}");
                    let mut k = 0;
                    while k < self.joining.len() {
                        match self.joining[k].parked.as_deref() {
                            Some((_, si)) if si.input == done.input => {
                                let j = self.joining.remove(k);
                                log::error!("stream {} ({}) cannot join: {why}", j.index, j.label);
                                self.gone.push((j.index, format!("{}: {why}", j.label)));
                            }
                            _ => k += 1,
                        }
                    }
                }
            }
        }
    }
}
