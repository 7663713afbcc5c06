//! The prompt caches of the streaming sessions: a short most-recently-used list, so that switching
//! back to a recent prompt skips the text engine.

use std::ops::Deref;

/// At most `cap` entries, the most recently used first.
#[derive(Debug, Clone)]
pub(crate) struct Mru<T> {
    items: Vec<T>,
    cap: usize,
}

impl<T> Mru<T> {
    /// An empty list of at most `cap` entries (at least 1); its storage is allocated here.
    pub(crate) fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        Mru {
            items: Vec::with_capacity(cap + 1),
            cap,
        }
    }

    /// The first entry `hit` accepts, moved to the front; `None` when there is none.
    pub(crate) fn take(&mut self, hit: impl FnMut(&T) -> bool) -> Option<&T> {
        let pos = self.items.iter().position(hit)?;
        self.items[..=pos].rotate_right(1);
        self.items.first()
    }

    /// Puts `item` in front, dropping the least recently used past the capacity.
    pub(crate) fn put(&mut self, item: T) -> &T {
        self.items.insert(0, item);
        self.items.truncate(self.cap);
        &self.items[0]
    }
}

impl<T> Deref for Mru<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_moves_to_the_front_and_the_oldest_goes_past_the_capacity() {
        let mut m = Mru::new(3);
        for v in [1, 2, 3] {
            m.put(v);
        }
        assert_eq!(&m[..], [3, 2, 1]);
        assert_eq!(m.take(|&v| v == 1), Some(&1));
        assert_eq!(&m[..], [1, 3, 2]);
        assert_eq!(m.take(|&v| v == 9), None);
        m.put(4);
        assert_eq!(&m[..], [4, 1, 3]);
        assert_eq!(*Mru::<u8>::new(0).put(7), 7);
    }
}
