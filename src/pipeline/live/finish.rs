//! The end of a run: [`Runtime::finish`] stops the command inbox and the export worker, marks the
//! rings closed, re-scores the first object as one clip when asked, lets every sink finish and
//! gathers the streams' summaries (those that never opened included) into the [`RunSummary`].

use super::live_stream::{Lane, LiveStream};
use super::runtime::Runtime;
use super::summary::{EndedEarly, RunSummary};
use crate::pipeline::commands::InputSize;

impl Runtime {
    /// Stops capturing and the command inbox, re-scores stream 0's first object as one clip when
    /// the configuration asks for it, lets every sink finish (the overlay GIF is written here) and
    /// returns the summary (the lowest stream index's, with the other streams' in
    /// [`RunSummary::streams`], those that never opened included). A run a persistent failure
    /// ended returns [`EndedEarly`] (with that summary) as its error; a sink that cannot finish
    /// counts as a sink error.
    pub fn finish(self) -> anyhow::Result<RunSummary> {
        let seconds = self.started.elapsed().as_secs_f64();
        let Runtime {
            config,
            mut hub,
            mut sets,
            streams,
            joining,
            gone,
            mut exporter,
            ..
        } = self;
        hub.shutdown();
        // Stops between two engines while the sinks finish; joined below.
        if let Some(e) = &exporter {
            e.cancel();
        }
        // Nothing new comes: readers learn it now, not after the GIF is encoded and the clip
        // re-scored (the heartbeat has stopped; a reader would see a hung writer meanwhile).
        for st in &streams {
            if let Some(r) = st.masks.ring() {
                r.mark_closed();
            }
        }
        let mut unopened: Vec<RunSummary> = Vec::new();
        for j in joining {
            let (source, input) = match j.parked.as_deref() {
                Some((_, si)) => (
                    format!(
                        "{} (opened; its {}x{} engines were still being exported)",
                        j.label, si.input.0, si.input.1
                    ),
                    Some(InputSize {
                        width: si.input.0,
                        height: si.input.1,
                    }),
                ),
                None => (format!("{} (never opened)", j.label), None),
            };
            log::warn!(
                "stream {} ({}) never joined (waited {:.0} s)",
                j.index,
                j.label,
                j.since.elapsed().as_secs_f64()
            );
            unopened.push(RunSummary {
                stream: j.index,
                source,
                seconds,
                input,
                ..RunSummary::default()
            });
        }
        for (index, why) in gone {
            unopened.push(RunSummary {
                stream: index,
                source: format!("never opened: {why}"),
                seconds,
                ..RunSummary::default()
            });
        }
        let mut summaries = Vec::with_capacity(streams.len());
        let mut fatal = None;
        for stream in streams {
            let input = stream.input_size();
            let LiveStream {
                index,
                description,
                geo,
                capture,
                mut lane,
                mut sinks,
                last,
                processed,
                caption,
                errors,
                fatal: stream_fatal,
                sink_errors,
                ..
            } = stream;
            let totals = capture.finish();
            if let Some(why) = stream_fatal {
                fatal.get_or_insert(format!("stream {index}: {why}"));
            }
            let finalized = match (&mut lane, sets.host.get_mut(geo)) {
                (Lane::Host(multi), Some(eng))
                    if config.finalize && index == 0 && !multi.is_empty() =>
                {
                    match multi.finalize(eng, multi.selection()) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            log::warn!("{e}");
                            None
                        }
                    }
                }
                #[cfg(feature = "cuda")]
                (Lane::Device(d), _) if config.finalize && index == 0 => match d.finalize() {
                    Ok(v) => v,
                    Err(e) => {
                        log::warn!("{e}");
                        None
                    }
                },
                _ => None,
            };
            let mut summary = RunSummary {
                stream: index,
                source: description,
                frames_captured: totals.captured,
                frames_processed: processed,
                frames_dropped: totals.dropped,
                seconds,
                times: lane.times().clone(),
                caption: (!caption.is_empty()).then_some(caption),
                last,
                finalized,
                gif: None,
                masks: Vec::new(),
                streams: Vec::new(),
                frames_failed: errors,
                sink_errors,
                source_health: totals.health,
                frames_resized: totals.resized,
                input: Some(input),
            };
            // The status sink (added last) clears its progress bar before the others report. A
            // sink that cannot finish (the GIF on a full disk) is a sink error like a frame it
            // could not take: counted and logged, the summary and the other outputs stand.
            for s in sinks.iter_mut().rev() {
                if let Err(e) = s.finish(&mut summary) {
                    log::error!("stream {index}: sink {} could not finish: {e:#}", s.name());
                    summary.sink_errors += 1;
                }
            }
            summaries.push(summary);
        }
        if fatal.is_some() {
            // The sinks have finished (rings consistent, GIFs written); the run still failed.
            for s in &summaries {
                eprint!("{}", s.text());
            }
        }
        summaries.append(&mut unopened);
        summaries.sort_by_key(|s| s.stream);
        // The worker was cancelled above: this waits for the engine it was on at most.
        if let Some(e) = &mut exporter {
            e.shutdown();
        }
        let mut it = summaries.into_iter();
        let mut first = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("a run without streams"))?;
        first.streams = it.collect();
        match fatal {
            Some(why) => Err(EndedEarly {
                why,
                summary: Box::new(first),
            }
            .into()),
            None => Ok(first),
        }
    }
}
