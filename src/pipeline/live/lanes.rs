//! Persistent threads that step several streams side by side ([`LaneThreads`]).
//!
//! Why: a stream on the device-resident path spends most of a frame waiting for its CUDA stream
//! (three synchronizations per frame, the tracker's matching on the host between them). One loop
//! thread stepping N cameras one after another leaves the GPU idle during every host phase and makes
//! N cameras cost the sum of their frames. With each ready stream stepped on a thread of its own,
//! one camera's host work and waits overlap the others' GPU work (each stream has its own execution
//! contexts and CUDA stream, so nothing is shared between the steps).
//!
//! The threads are made when the number of streams stepped at once grows, never per frame; a step is
//! handed over through one mutex and condition variable per thread and [`LaneThreads::run_each`]
//! returns only when every step has finished, so the steps borrow the caller's items like scoped
//! threads would, without allocating.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// One step handed to a thread: `call(item, out, f)` runs `f` on the item and writes its result.
#[derive(Clone, Copy)]
struct Job {
    item: *mut (),
    out: *mut (),
    f: *const (),
    call: unsafe fn(*mut (), *mut (), *const ()),
}

// SAFETY: the pointers are only used by the one thread the job is handed to, while `run_each` (which
// made them from `&mut` borrows of `T: Send` items and `R: Send` results) waits for it to finish.
unsafe impl Send for Job {}

enum State {
    /// Waiting for a job.
    Idle,
    /// A job handed over, not yet taken.
    Job(Job),
    /// The thread runs a job.
    Busy,
    /// The job finished (a panic left its result `None`).
    Done,
    /// The thread is to end.
    Exit,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled on every change of `state` (one waiter on each side).
    changed: Condvar,
}

impl Shared {
    /// The state, whatever a panic elsewhere did: jobs run outside the lock, so no panic can leave
    /// the state half-written.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, s: State) {
        *self.lock() = s;
        self.changed.notify_all();
    }
}

struct Worker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Threads that run one step each for [`LaneThreads::run_each`]; made on demand, ended on drop.
pub struct LaneThreads {
    name: &'static str,
    workers: Vec<Worker>,
    /// A thread could not be made once: the steps it would have taken run on the caller's thread.
    spawn_failed: bool,
}

/// Runs the type-erased step: `f` is a `fn(&mut T) -> R`, `item` a `*mut T`, `out` a `*mut Option<R>`.
///
/// # Safety
/// The pointers must be what [`LaneThreads::run_each`] made them from, still borrowed for the call.
unsafe fn call<T, R>(item: *mut (), out: *mut (), f: *const ()) {
    // SAFETY: `run_each` made `f` from a `fn(&mut T) -> R` of the same `T` and `R` (function
    // pointers and `*const ()` have the same size).
    let f = unsafe { std::mem::transmute::<*const (), fn(&mut T) -> R>(f) };
    // SAFETY: `item` points at one item of the slice `run_each` borrows mutably, no other thread
    // touches it until the step is done (the picks are distinct).
    let r = f(unsafe { &mut *item.cast::<T>() });
    // SAFETY: `out` points at this step's own element of the results slice, borrowed the same way.
    unsafe { *out.cast::<Option<R>>() = Some(r) };
}

fn work(shared: Arc<Shared>) {
    loop {
        let job = {
            let mut s = shared.lock();
            loop {
                match *s {
                    State::Job(j) => {
                        *s = State::Busy;
                        break j;
                    }
                    State::Exit => return,
                    _ => {
                        s = shared
                            .changed
                            .wait(s)
                            .unwrap_or_else(PoisonError::into_inner)
                    }
                }
            }
        };
        // SAFETY: the job came from `run_each`, which waits below for `Done` before the borrows
        // behind its pointers end.
        let r = catch_unwind(AssertUnwindSafe(|| unsafe {
            (job.call)(job.item, job.out, job.f)
        }));
        if let Err(p) = &r {
            log::error!(
                "a stream's step panicked on its lane thread: {}",
                crate::pipeline::live::source::panic_message(p.as_ref())
            );
        }
        shared.set(State::Done);
    }
}

impl LaneThreads {
    /// No threads yet; each is named `name` with its number.
    pub fn new(name: &'static str) -> Self {
        LaneThreads {
            name,
            workers: Vec::new(),
            spawn_failed: false,
        }
    }

    /// Threads made so far.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Makes threads until there are `n` (allocates: only when more steps run at once than ever).
    fn grow(&mut self, n: usize) {
        while self.workers.len() < n && !self.spawn_failed {
            let shared = Arc::new(Shared {
                state: Mutex::new(State::Idle),
                changed: Condvar::new(),
            });
            let s = Arc::clone(&shared);
            let made = std::thread::Builder::new()
                .name(format!("{}-{}", self.name, self.workers.len() + 1))
                .spawn(move || work(s));
            match made {
                Ok(t) => self.workers.push(Worker {
                    shared,
                    thread: Some(t),
                }),
                Err(e) => {
                    log::error!(
                        "cannot start a lane thread ({e}): the streams beyond {} step one after another",
                        self.workers.len() + 1
                    );
                    self.spawn_failed = true;
                }
            }
        }
    }

    /// Runs `f(&mut items[i])` for every `i` in `picks` at once: the first on the calling thread, the
    /// others on a thread each; returns when all have finished. `out[k]` receives the result of
    /// `picks[k]`, or `None` when that step panicked on its thread (logged; a panic of the caller's
    /// own step is resumed after the others finished). Refused, running nothing, when a pick is out
    /// of range or repeated, or `out` is shorter than `picks`.
    pub fn run_each<T: Send, R: Send>(
        &mut self,
        items: &mut [T],
        picks: &[usize],
        f: fn(&mut T) -> R,
        out: &mut [Option<R>],
    ) -> Result<()> {
        let Some((&first, rest)) = picks.split_first() else {
            return Ok(());
        };
        if out.len() < picks.len() {
            return Err(Error::Config(format!(
                "{} results for {} steps",
                out.len(),
                picks.len()
            )));
        }
        for (k, &i) in picks.iter().enumerate() {
            if i >= items.len() || picks[..k].contains(&i) {
                return Err(Error::Config(format!(
                    "step of item {i} out of {} (or twice)",
                    items.len()
                )));
            }
        }
        self.grow(rest.len());
        for o in out.iter_mut().take(picks.len()) {
            *o = None;
        }
        // Every borrow below is made from these two pointers, at distinct indices (checked above).
        let base = items.as_mut_ptr();
        let results = out.as_mut_ptr();
        let handed = rest.len().min(self.workers.len());
        for (j, (w, &i)) in self.workers.iter().zip(&rest[..handed]).enumerate() {
            let k = j + 1;
            // SAFETY: `i` and `k` are in range (checked above), so both pointers stay inside their
            // slices; the worker uses them only until it reports `Done`, awaited below.
            let job = unsafe {
                Job {
                    item: base.add(i).cast(),
                    out: results.add(k).cast(),
                    f: f as *const (),
                    call: call::<T, R>,
                }
            };
            w.shared.set(State::Job(job));
        }
        // The caller's own step, then any the threads could not take, then wait for the threads. A
        // panic here must not leave before the threads are done with the borrowed items.
        let own = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: `first` is in range and distinct from every pick handed to a thread.
            let r = f(unsafe { &mut *base.add(first) });
            // SAFETY: element 0 of `out`, touched by no thread.
            unsafe { *results = Some(r) };
            for (k, &i) in rest.iter().enumerate().skip(handed) {
                // SAFETY: as above; these picks were handed to no thread.
                let r = f(unsafe { &mut *base.add(i) });
                // SAFETY: element `k + 1` of `out`, touched by no thread.
                unsafe { *results.add(k + 1) = Some(r) };
            }
        }));
        for w in &self.workers[..handed] {
            let mut s = w.shared.lock();
            while !matches!(*s, State::Done) {
                s = w
                    .shared
                    .changed
                    .wait(s)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            *s = State::Idle;
        }
        if let Err(p) = own {
            resume_unwind(p);
        }
        Ok(())
    }
}

impl Drop for LaneThreads {
    fn drop(&mut self) {
        // Every thread is idle here (`run_each` waits for its steps before returning).
        for w in &self.workers {
            w.shared.set(State::Exit);
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    #[test]
    fn every_pick_runs_once_with_its_result_in_place() {
        let mut lanes = LaneThreads::new("test-lane");
        let mut items: Vec<u64> = (0..6).collect();
        let mut out = vec![None; 6];
        lanes
            .run_each(
                &mut items,
                &[4, 0, 2],
                |x| {
                    *x += 100;
                    *x * 2
                },
                &mut out,
            )
            .unwrap();
        assert_eq!(items, [100, 1, 102, 3, 104, 5]);
        assert_eq!(&out[..3], &[Some(208), Some(200), Some(204)]);
        assert_eq!(lanes.threads(), 2);
        // Fewer picks next time: the threads stay, the results slice is reset for the picks only.
        lanes.run_each(&mut items, &[1], |x| *x, &mut out).unwrap();
        assert_eq!(out[0], Some(1));
        assert_eq!(lanes.threads(), 2);
    }

    #[test]
    fn the_steps_run_at_the_same_time() {
        // Three steps that each wait for the other two: one after another they would never meet.
        static MEET: std::sync::OnceLock<Barrier> = std::sync::OnceLock::new();
        MEET.get_or_init(|| Barrier::new(3));
        let mut lanes = LaneThreads::new("test-lane");
        let mut items = [0u32; 3];
        let mut out = [None, None, None];
        lanes
            .run_each(
                &mut items,
                &[0, 1, 2],
                |x| {
                    MEET.get().expect("set above").wait();
                    *x = 1;
                },
                &mut out,
            )
            .unwrap();
        assert_eq!(items, [1, 1, 1]);
        assert!(out.iter().all(Option::is_some));
    }

    #[test]
    fn bad_picks_are_refused_and_a_panic_on_a_thread_is_reported() {
        let mut lanes = LaneThreads::new("test-lane");
        let mut items = [1i32, 2, 3];
        let mut out = [None, None, None];
        for picks in [&[0usize, 3][..], &[1, 1]] {
            assert!(lanes.run_each(&mut items, picks, |x| *x, &mut out).is_err());
        }
        assert!(lanes
            .run_each(&mut items, &[0, 1, 2], |x| *x, &mut out[..2])
            .is_err());
        assert_eq!(items, [1, 2, 3]);
        lanes
            .run_each(
                &mut items,
                &[0, 2],
                |x| {
                    assert!(*x != 3, "item 3 is refused");
                    *x
                },
                &mut out,
            )
            .unwrap();
        assert_eq!(&out[..2], &[Some(1), None]);
        // The thread survives its step's panic.
        lanes
            .run_each(&mut items, &[0, 1], |x| *x * 10, &mut out)
            .unwrap();
        assert_eq!(&out[..2], &[Some(10), Some(20)]);
    }

    #[test]
    fn a_panic_of_the_callers_step_waits_for_the_threads() {
        let mut lanes = LaneThreads::new("test-lane");
        let mut items = [0u64, 0];
        let mut out = [None, None];
        let r = catch_unwind(AssertUnwindSafe(|| {
            lanes.run_each(
                &mut items,
                &[0, 1],
                |x| {
                    if std::thread::current().name() == Some("test-lane-1") {
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        *x = 7;
                    } else {
                        panic!("the caller's step");
                    }
                },
                &mut out,
            )
        }));
        assert!(r.is_err());
        // The thread's step had finished before the panic left `run_each`.
        assert_eq!(items[1], 7);
    }
}
