//! Commands to streams: a request goes to the stream it addresses (`"stream": N`, default 0), to
//! every open stream at once (`"all"`: checked on each before any applies it, the same new ids on
//! each), or, for a stream still waiting for its source, into what it starts with when it joins.
//! [`Runtime::step`] takes the commands from the inbox and hands them here, between two frames;
//! [`Runtime::command`] applies one directly.

use super::joining::Joining;
use super::runtime::Runtime;
use super::template::JoinTemplate;
use crate::pipeline::commands::{
    split_prompts, Command, Incoming, ObjectId, Reply, Request, Streams,
};
use crate::pipeline::objects::IdSpace;

impl Runtime {
    /// Applies `req` to the stream it addresses; the stream's position in `streams` with the reply.
    fn route(&mut self, req: &Request) -> (Reply, Option<usize>) {
        let k = match req.stream {
            Some(Streams::One(k)) => k,
            None => 0,
            Some(Streams::All) => return (self.apply_to_all(req), None),
        };
        if let Some(p) = self.streams.iter().position(|s| s.index == k) {
            let geo = self.streams[p].geo;
            return (
                self.streams[p].apply(self.sets.host.get_mut(geo), req, None),
                Some(p),
            );
        }
        if let Some(w) = self.joining.iter().position(|j| j.index == k) {
            let text = self.check_prompts(&req.command);
            return (
                Self::apply_waiting(&mut self.joining[w], &self.join, req, text),
                None,
            );
        }
        let why = match self.gone.iter().find(|g| g.0 == k) {
            Some((_, why)) => format!("stream {k} never opened: {why}"),
            None => {
                let n = self.plan.streams;
                format!("no stream {k}: this run has {n} (0..={})", n - 1)
            }
        };
        (Reply::error(req.id.clone(), why), None)
    }

    /// Encodes the prompts of `command` with the run's text engine (shared by the host sets, or an
    /// open device stream's: every stream has the same), for a stream that cannot judge them itself yet
    /// (one waiting for its source), so that a prompt it would refuse when it joins is refused now.
    /// A device run always has an open stream (one opened first); were none open, nothing is
    /// checked here and the joining stream leaves out what it refuses (logged).
    fn check_prompts(&mut self, command: &Command) -> crate::Result<()> {
        let prompt = match command {
            Command::Prompt { prompt }
            | Command::Add { prompt, .. }
            | Command::Replace { prompt, .. } => prompt,
            _ => return Ok(()),
        };
        let Some(st) = self.streams.first_mut() else {
            return Ok(());
        };
        for p in split_prompts(prompt) {
            st.lane.check_prompt(self.sets.host.get_mut(st.geo), p)?;
        }
        Ok(())
    }

    /// A command for a stream still waiting for its source: kept in what it starts with when it
    /// joins (its own copy of the template `all` from the first such command on), answered with
    /// those settings; `status` has nothing to report yet, and a prompt the text engine refused
    /// (`text`, [`Runtime::check_prompts`]) is refused.
    fn apply_waiting(
        j: &mut Joining,
        all: &JoinTemplate,
        req: &Request,
        text: crate::Result<()>,
    ) -> Reply {
        let k = j.index;
        let waiting = || match j.parked.as_deref() {
            Some((_, si)) => format!(
                "stream {k} ({}) is not open yet: the engines of its {}x{} input are being \
                 exported (it has waited {:.0} s, for its source and then its engines)",
                j.label,
                si.input.0,
                si.input.1,
                j.since.elapsed().as_secs_f64()
            ),
            None => format!(
                "stream {k} ({}) is not open yet: waiting for its source for {:.0} s",
                j.label,
                j.since.elapsed().as_secs_f64()
            ),
        };
        if matches!(req.command, Command::Status) {
            return Reply::error(req.id.clone(), waiting());
        }
        if let Err(e) = text {
            return Reply::error(req.id.clone(), format!("{}; {e}", waiting()));
        }
        // A refused command changes nothing, so a copy made for it equals the shared template and,
        // like it, follows every later command sent to all.
        let t = j.template.get_or_insert_with(|| all.clone());
        match t.apply(&req.command) {
            Ok(added) => {
                let settings = t.settings();
                log::info!(
                    "stream {k} ({}) is not open yet: {} kept for when it joins",
                    j.label,
                    req.command.name()
                );
                Reply {
                    ok: true,
                    id: req.id.clone(),
                    cmd: Some(req.command.name()),
                    error: None,
                    settings: Some(settings),
                    stats: None,
                    added,
                    stream: Some(k),
                }
            }
            Err(e) => Reply::error(req.id.clone(), format!("{}; {e}", waiting())),
        }
    }

    /// Ids for the `n` objects of an `add` sent to all: new in every open stream and in what
    /// joining streams start with ([`crate::pipeline::objects::common_ids`]), so each camera gives
    /// the object the same id.
    fn common_ids(&self, n: usize) -> crate::Result<Vec<ObjectId>> {
        let mut spaces: Vec<(Vec<ObjectId>, &IdSpace)> =
            self.streams.iter().map(|s| s.lane.id_space()).collect();
        spaces.push((self.join.ids(), self.join.id_space()));
        for t in self.joining.iter().filter_map(|j| j.template.as_ref()) {
            spaces.push((t.ids(), t.id_space()));
        }
        let view: Vec<(&IdSpace, &[ObjectId])> = spaces
            .iter()
            .map(|(ids, space)| (*space, ids.as_slice()))
            .collect();
        crate::pipeline::objects::common_ids(&view, n)
    }

    /// `"stream": "all"`: applies `req` to every open stream (each one's sinks see its reply), or
    /// to none: every stream is checked first (ids, limits, prompts), and a refusal is returned
    /// naming the stream that refused it. An `add` without `"object"` gives its objects the same
    /// ids on every stream ([`Runtime::common_ids`]). Otherwise the first stream's reply without a
    /// `stream`. A command every open stream took also changes what a stream joining later starts
    /// with ([`JoinTemplate`]).
    fn apply_to_all(&mut self, req: &Request) -> Reply {
        if self.streams.is_empty() {
            // A runtime starts with a stream open, and open streams stay in place: kept for safety.
            return Reply::error(req.id.clone(), "no stream is open yet");
        }
        let many = self.streams.len() > 1;
        let ids = match &req.command {
            Command::Add {
                prompt,
                object: None,
            } => match self.common_ids(split_prompts(prompt).count()) {
                Ok(ids) => Some(ids),
                Err(e) => return Reply::error(req.id.clone(), e.to_string()),
            },
            _ => None,
        };
        let ids = ids.as_deref();
        for p in 0..self.streams.len() {
            let st = &mut self.streams[p];
            if let Err(e) = st
                .lane
                .check(self.sets.host.get_mut(st.geo), &req.command, ids)
            {
                let k = st.index;
                log::warn!("stream {k}: {} refused: {e}", req.command.name());
                let mut r = Reply::error(req.id.clone(), e.to_string());
                st.notify_reply(req, &r);
                if many {
                    r.error = r
                        .error
                        .map(|e| format!("stream {k}: {e} (no stream took it)"));
                }
                return r;
            }
        }
        let mut first = None;
        for p in 0..self.streams.len() {
            let geo = self.streams[p].geo;
            let mut r = self.streams[p].apply(self.sets.host.get_mut(geo), req, ids);
            self.streams[p].notify_reply(req, &r);
            if !r.ok {
                // Every stream took it when checked: only an engine failure (no device memory
                // left for another object) gets here; the streams before this one keep it.
                let k = self.streams[p].index;
                log::error!(
                    "{} sent to all streams failed on stream {k} after {p} took it",
                    req.command.name()
                );
                if many {
                    r.error = r.error.map(|e| format!("stream {k}: {e}"));
                }
                return r;
            }
            first.get_or_insert(r);
        }
        let Some(mut r) = first else {
            return Reply::error(req.id.clone(), "no stream is open yet");
        };
        if let Err(e) = self.join.apply_with_ids(&req.command, ids) {
            // Every open stream took it, so only objects some streams were given one by one can
            // differ; the joining streams keep what they had.
            log::info!(
                "{} sent to all streams: streams joining later do not take it ({e})",
                req.command.name()
            );
        }
        for j in &mut self.joining {
            if let Some(t) = j.template.as_mut() {
                if let Err(e) = t.apply_with_ids(&req.command, ids) {
                    log::info!(
                        "{} sent to all streams: stream {} (waiting) does not take it ({e})",
                        req.command.name(),
                        j.index
                    );
                }
            }
        }
        // Applied to every stream, not only to the one whose settings it shows.
        r.stream = None;
        r
    }

    /// Applies a command now, as if it had arrived between two frames, and returns its reply (the
    /// addressed streams' sinks see it too).
    pub fn command(&mut self, request: &Request) -> Reply {
        let (reply, k) = self.route(request);
        if let Some(k) = k {
            self.streams[k].notify_reply(request, &reply);
        }
        reply
    }

    pub(super) fn handle(&mut self, inc: Incoming) {
        let request = match inc.request {
            Ok(r) => r,
            Err(r) => {
                // A malformed line: answered in its turn, so replies keep the lines' order.
                inc.responder.send(&Reply::error(r.id, r.error));
                return;
            }
        };
        let (reply, k) = self.route(&request);
        inc.responder.send(&reply);
        if let Some(k) = k {
            self.streams[k].notify_reply(&request, &reply);
        }
    }
}
