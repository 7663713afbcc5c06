//! Latest-frame-wins mailbox between the capture thread and the inference thread.
//!
//! One slot, two owned buffers swapped in and out: the producer [`LatestSlot::publish`]es its buffer
//! (getting the slot's previous buffer back to refill), the consumer [`LatestSlot::take`]s the newest
//! one (handing back the buffer it is done with). A frame that is replaced before the consumer takes it
//! is dropped and counted. Nothing is queued, and after the first exchange nothing is allocated: the
//! same `T` values circulate.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug)]
struct State<T> {
    buf: T,
    fresh: bool,
    closed: bool,
    published: u64,
    dropped: u64,
}

/// The single-slot mailbox.
#[derive(Debug)]
pub struct LatestSlot<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

/// What [`LatestSlot::take`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A fresh item was swapped into the caller's buffer.
    Fresh,
    /// Nothing new arrived within the timeout.
    Timeout,
    /// The producer closed the slot and every published item was taken.
    Closed,
}

/// Counters of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotStats {
    /// Items published.
    pub published: u64,
    /// Items overwritten before the consumer took them.
    pub dropped: u64,
}

impl<T> LatestSlot<T> {
    /// A slot whose internal buffer starts as `initial` (same shape as the producer's and consumer's
    /// buffers, so swaps never reallocate).
    pub fn new(initial: T) -> Self {
        LatestSlot {
            state: Mutex::new(State {
                buf: initial,
                fresh: false,
                closed: false,
                published: 0,
                dropped: 0,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock cannot leave the state half-updated (only swaps and counter
        // increments happen under it), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `buf` (swapping it with the slot's buffer, which the caller refills next). Returns
    /// `true` when an untaken older item was dropped.
    pub fn publish(&self, buf: &mut T) -> bool {
        let mut s = self.lock();
        std::mem::swap(&mut s.buf, buf);
        let dropped = s.fresh;
        if dropped {
            s.dropped += 1;
        }
        s.fresh = true;
        s.published += 1;
        drop(s);
        self.ready.notify_one();
        dropped
    }

    /// Waits up to `timeout` for a fresh item and swaps it into `buf`.
    pub fn take(&self, buf: &mut T, timeout: Duration) -> Take {
        let mut s = self.lock();
        if !s.fresh && !s.closed {
            let (g, _) = self
                .ready
                .wait_timeout_while(s, timeout, |st| !st.fresh && !st.closed)
                .unwrap_or_else(|p| p.into_inner());
            s = g;
        }
        if s.fresh {
            std::mem::swap(&mut s.buf, buf);
            s.fresh = false;
            Take::Fresh
        } else if s.closed {
            Take::Closed
        } else {
            Take::Timeout
        }
    }

    /// Marks the end of the stream; a pending item can still be taken.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Published and dropped counts.
    pub fn stats(&self) -> SlotStats {
        let s = self.lock();
        SlotStats {
            published: s.published,
            dropped: s.dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn newest_wins_and_stale_are_counted() {
        let slot = LatestSlot::new(vec![0u8; 4]);
        let mut prod = vec![0u8; 4];
        let mut cons = vec![0u8; 4];
        for v in 1..=5u8 {
            prod.fill(v);
            let dropped = slot.publish(&mut prod);
            assert_eq!(dropped, v > 1);
        }
        assert_eq!(slot.take(&mut cons, Duration::ZERO), Take::Fresh);
        assert_eq!(cons, vec![5; 4]);
        assert_eq!(
            slot.take(&mut cons, Duration::from_millis(1)),
            Take::Timeout
        );
        assert_eq!(
            slot.stats(),
            SlotStats {
                published: 5,
                dropped: 4
            }
        );
        prod.fill(6);
        slot.publish(&mut prod);
        slot.close();
        assert_eq!(slot.take(&mut cons, Duration::ZERO), Take::Fresh);
        assert_eq!(cons[0], 6);
        assert_eq!(slot.take(&mut cons, Duration::from_secs(5)), Take::Closed);
    }

    #[test]
    fn slow_consumer_never_queues_and_accounts_for_every_frame() {
        let slot = Arc::new(LatestSlot::new(vec![0u64; 16]));
        let s2 = slot.clone();
        let n = 20_000u64;
        let producer = std::thread::spawn(move || {
            let mut buf = vec![0u64; 16];
            for i in 1..=n {
                buf.fill(i);
                s2.publish(&mut buf);
            }
            s2.close();
        });
        let mut got = vec![0u64; 16];
        let mut taken = 0u64;
        let mut last = 0u64;
        while slot.take(&mut got, Duration::from_secs(10)) == Take::Fresh {
            // Every buffer is whole and ids only increase.
            assert!(got.iter().all(|&v| v == got[0]));
            assert!(got[0] > last);
            last = got[0];
            taken += 1;
            if taken.is_multiple_of(64) {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        producer.join().unwrap();
        let st = slot.stats();
        assert_eq!(last, n, "the final frame is always delivered");
        assert_eq!(st.published, n);
        assert_eq!(taken + st.dropped, n);
        // Buffers only circulate: three of them, each still 16 long.
        assert_eq!(got.len(), 16);
    }
}
