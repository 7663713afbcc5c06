//! The device-resident path's engine sets, one pool per model input size: a stream takes a set of
//! its size when it opens (at start-up, or when a camera that was not there yet joins).
//!
//! A set is the memory-hungry part of a stream (TensorRT execution contexts hold their own
//! activations; on a Jetson that memory is the board's RAM), so a size's sets are either given
//! ready (the host emulation, tests) or made one at a time when a stream takes one, from plans
//! deserialized once per directory: no set is made for a camera that never comes, and one that
//! comes makes exactly one.

use crate::pipeline::multi::MultiEngineSet;

/// Makes one set (TensorRT: an execution context of each plan, on a CUDA stream of its own).
pub type MakeSet<T> = Box<dyn FnMut() -> anyhow::Result<T> + Send>;

/// Where the sets of one input size come from.
enum Supply<T> {
    /// Ready-made sets, each taken once, first given first taken.
    Given(Vec<T>),
    /// Made when taken, as many as streams take.
    Made(MakeSet<T>),
}

/// The sets of one input size.
struct Size<T> {
    input: (u32, u32),
    supply: Supply<T>,
}

/// Engine sets by input (width, height), for streams to take.
pub struct SetPool<T> {
    sizes: Vec<Size<T>>,
    made: usize,
}

/// The device-resident path's pool: [`MultiEngineSet`]s.
pub type DeviceSets = SetPool<MultiEngineSet>;

impl<T> Default for SetPool<T> {
    fn default() -> Self {
        SetPool {
            sizes: Vec::new(),
            made: 0,
        }
    }
}

impl<T> SetPool<T> {
    /// A pool of ready-made sets, each with its input (width, height): a stream takes the first
    /// left of its size, and a size whose sets are all taken takes no more streams.
    pub fn given(sets: impl IntoIterator<Item = ((u32, u32), T)>) -> Self {
        let mut pool = Self::default();
        for (input, set) in sets {
            match pool.sizes.iter_mut().find(|s| s.input == input) {
                Some(Size {
                    supply: Supply::Given(v),
                    ..
                }) => v.push(set),
                // `given` makes only lists, so a size found is one.
                Some(_) => {}
                None => pool.sizes.push(Size {
                    input,
                    supply: Supply::Given(vec![set]),
                }),
            }
        }
        pool
    }

    /// Adds input size `input` whose sets `make` makes, one per stream that takes one (replacing
    /// what the pool had for that size).
    pub fn add_maker(&mut self, input: (u32, u32), make: MakeSet<T>) {
        self.sizes.retain(|s| s.input != input);
        self.sizes.push(Size {
            input,
            supply: Supply::Made(make),
        });
    }

    /// Whether a stream of input `input` can take a set (one left, or one can be made).
    pub fn takes(&self, input: (u32, u32)) -> bool {
        self.sizes.iter().any(|s| s.input == input && s.offers())
    }

    /// Whether no stream can take a set of any size.
    pub fn is_empty(&self) -> bool {
        !self.sizes.iter().any(Size::offers)
    }

    /// The input sizes a stream can take a set of, first added first.
    pub fn sizes(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.sizes.iter().filter(|s| s.offers()).map(|s| s.input)
    }

    /// A set of input `input`: `None` when the pool has none for that size, an error when making
    /// it failed (the pool is unchanged: a later stream may try again).
    pub fn take(&mut self, input: (u32, u32)) -> Option<anyhow::Result<T>> {
        let size = self
            .sizes
            .iter_mut()
            .find(|s| s.input == input && s.offers())?;
        match &mut size.supply {
            Supply::Given(v) => Some(Ok(v.remove(0))),
            Supply::Made(make) => {
                let set = make();
                if set.is_ok() {
                    self.made += 1;
                }
                Some(set)
            }
        }
    }

    /// The sets made so far (by makers: not those given ready).
    pub fn made(&self) -> usize {
        self.made
    }
}

impl<T> Size<T> {
    fn offers(&self) -> bool {
        match &self.supply {
            Supply::Given(v) => !v.is_empty(),
            Supply::Made(_) => true,
        }
    }
}

/// Ready-made sets, each of the input size its bindings say (one whose bindings do not say is
/// never taken).
impl From<Vec<MultiEngineSet>> for DeviceSets {
    fn from(sets: Vec<MultiEngineSet>) -> Self {
        let input = |s: &MultiEngineSet| {
            let (h, w) = s.input_size().ok()?;
            Some((u32::try_from(w).ok()?, u32::try_from(h).ok()?))
        };
        // (0, 0) is no model input (refused by the input limits), so no stream ever asks for it.
        SetPool::given(sets.into_iter().map(|s| (input(&s).unwrap_or((0, 0)), s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const A: (u32, u32) = (40, 24);
    const B: (u32, u32) = (32, 24);

    /// Given sets go first come first by size, each once; a size taken out takes no more streams.
    #[test]
    fn given_sets_are_taken_once_each_by_size() {
        let mut p = SetPool::given([(B, 1), (A, 2), (A, 3)]);
        assert!(p.takes(A) && p.takes(B) && !p.takes((1, 1)));
        assert_eq!(p.sizes().collect::<Vec<_>>(), [B, A]);
        assert_eq!(p.take(A).unwrap().unwrap(), 2);
        assert_eq!(p.take(A).unwrap().unwrap(), 3);
        assert!(p.take(A).is_none() && !p.takes(A));
        assert_eq!(p.sizes().collect::<Vec<_>>(), [B]);
        assert_eq!(p.take(B).unwrap().unwrap(), 1);
        assert!(p.is_empty());
        assert_eq!(p.made(), 0);
    }

    /// A maker makes a set only when a stream takes one, as many as are taken, counted; a failure
    /// is the taker's error and leaves the size open to the next stream.
    #[test]
    fn made_sets_are_made_when_taken_and_counted() {
        let calls = Arc::new(AtomicUsize::new(0));
        let maker = |fail_on: usize| -> MakeSet<usize> {
            let calls = Arc::clone(&calls);
            Box::new(move || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                match n == fail_on {
                    true => anyhow::bail!("no memory for another context"),
                    false => Ok(n),
                }
            })
        };
        let mut p = SetPool::default();
        p.add_maker(A, maker(1));
        assert!(p.takes(A) && !p.is_empty());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "nothing made before a take"
        );
        assert!(p.take(B).is_none());
        assert_eq!(p.take(A).unwrap().unwrap(), 0);
        let e = p.take(A).unwrap().unwrap_err().to_string();
        assert!(e.contains("no memory"), "{e}");
        assert!(p.takes(A));
        assert_eq!(p.take(A).unwrap().unwrap(), 2);
        assert_eq!((p.made(), calls.load(Ordering::SeqCst)), (2, 3));
        // A maker replaces the given sets of its size.
        let mut p = SetPool::given([(A, 7)]);
        p.add_maker(A, maker(usize::MAX));
        assert_eq!(p.take(A).unwrap().unwrap(), 3);
        assert_eq!(p.sizes().count(), 1);
    }
}
