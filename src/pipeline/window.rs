//! Fixed-capacity per-frame stores of the streaming session.
//!
//! [`Window`] keeps the tracked objects and sentence feature of the last `W` frames in a ring and lays
//! them out oldest → newest for the temporal engine (positions `0..len` valid, the rest zero padding
//! with `frame_mask = false`), exactly as the offline session lays out a clip of `T ≤ W` frames. The
//! temporal decoder has no time position embedding, but keeping the chronological layout makes a
//! stream of `T ≤ W` frames bit-identical to the offline run, not just equal up to summation order.
//!
//! [`Rows`] is an append-only store of fixed-size rows (refs, enhanced text, segmentation features per
//! frame) that the session keeps, when asked, to re-score a short stream as a whole clip.

use crate::error::{Error, Result};

/// The last `capacity` frames' tracked objects `[Ns, d]` and sentence features `[d]`.
#[derive(Clone, Debug)]
pub struct Window {
    capacity: usize,
    objects_len: usize,
    sentence_len: usize,
    /// Ring slot the next frame goes to.
    next: usize,
    len: usize,
    objects: Vec<f32>,
    sentence: Vec<f32>,
}

impl Window {
    /// A window of `capacity` frames of `objects_len` + `sentence_len` values each.
    pub fn new(capacity: usize, objects_len: usize, sentence_len: usize) -> Result<Self> {
        if capacity == 0 {
            return Err(Error::Config(
                "temporal window must hold at least 1 frame".into(),
            ));
        }
        Ok(Window {
            capacity,
            objects_len,
            sentence_len,
            next: 0,
            len: 0,
            objects: vec![0.0; capacity * objects_len],
            sentence: vec![0.0; capacity * sentence_len],
        })
    }

    /// Frames the window holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Frames it holds now.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first frame.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every frame.
    pub fn clear(&mut self) {
        self.next = 0;
        self.len = 0;
    }

    /// Appends a frame, overwriting the oldest one when full.
    pub fn push(&mut self, objects: &[f32], sentence: &[f32]) -> Result<()> {
        if objects.len() != self.objects_len || sentence.len() != self.sentence_len {
            return Err(Error::Shape(format!(
                "window: frame of {} objects / {} sentence values, expected {} / {}",
                objects.len(),
                sentence.len(),
                self.objects_len,
                self.sentence_len
            )));
        }
        let k = self.next;
        self.objects[k * self.objects_len..(k + 1) * self.objects_len].copy_from_slice(objects);
        self.sentence[k * self.sentence_len..(k + 1) * self.sentence_len].copy_from_slice(sentence);
        self.next = (k + 1) % self.capacity;
        self.len = (self.len + 1).min(self.capacity);
        Ok(())
    }

    /// Ring slot of the `i`-th oldest frame.
    fn slot(&self, i: usize) -> usize {
        (self.next + self.capacity - self.len + i) % self.capacity
    }

    /// Where [`Window::write_chronological`] reads from: the oldest frame's ring slot, the frames that
    /// run from it to the ring's end, and the frames held (the rest run on from slot 0). A device copy
    /// of the ring lays out the temporal inputs with the same two runs.
    pub fn runs(&self) -> (usize, usize, usize) {
        let start = self.slot(0);
        (start, (self.capacity - start).min(self.len), self.len)
    }

    /// Ring slot of the newest frame, `None` before the first.
    pub fn newest_slot(&self) -> Option<usize> {
        (self.len > 0).then(|| (self.next + self.capacity - 1) % self.capacity)
    }

    /// The `i`-th oldest frame's objects and sentence.
    pub fn frame(&self, i: usize) -> Option<(&[f32], &[f32])> {
        if i >= self.len {
            return None;
        }
        let k = self.slot(i);
        Some((
            &self.objects[k * self.objects_len..(k + 1) * self.objects_len],
            &self.sentence[k * self.sentence_len..(k + 1) * self.sentence_len],
        ))
    }

    /// Writes the frames oldest → newest into the temporal engine's `objects [W,Ns,d]`,
    /// `sentence [W,d]` and `frame_mask [W]` buffers (padding zeroed and masked). Returns the
    /// position of the newest frame.
    pub fn write_chronological(
        &self,
        objects: &mut [f32],
        sentence: &mut [f32],
        frame_mask: &mut [bool],
    ) -> Result<usize> {
        let (c, ol, sl) = (self.capacity, self.objects_len, self.sentence_len);
        if objects.len() != c * ol || sentence.len() != c * sl || frame_mask.len() != c {
            return Err(Error::Shape(format!(
                "window: engine buffers of {} / {} / {} for {c} frames",
                objects.len(),
                sentence.len(),
                frame_mask.len()
            )));
        }
        if self.len == 0 {
            return Err(Error::Shape("window: no frame yet".into()));
        }
        // Oldest frame sits at ring slot `start`; two contiguous runs cover the ring.
        let start = self.slot(0);
        let first = (c - start).min(self.len);
        objects[..first * ol].copy_from_slice(&self.objects[start * ol..(start + first) * ol]);
        sentence[..first * sl].copy_from_slice(&self.sentence[start * sl..(start + first) * sl]);
        let rest = self.len - first;
        objects[first * ol..self.len * ol].copy_from_slice(&self.objects[..rest * ol]);
        sentence[first * sl..self.len * sl].copy_from_slice(&self.sentence[..rest * sl]);
        objects[self.len * ol..].fill(0.0);
        sentence[self.len * sl..].fill(0.0);
        for (i, m) in frame_mask.iter_mut().enumerate() {
            *m = i < self.len;
        }
        Ok(self.len - 1)
    }
}

/// Append-only store of up to `capacity` rows of `row_len` values, allocated once.
#[derive(Clone, Debug)]
pub struct Rows {
    row_len: usize,
    capacity: usize,
    len: usize,
    data: Vec<f32>,
}

impl Rows {
    /// Storage for `capacity` rows.
    pub fn new(capacity: usize, row_len: usize) -> Self {
        Rows {
            row_len,
            capacity,
            len: 0,
            data: vec![0.0; capacity * row_len],
        }
    }

    /// Rows stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no row is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every row.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends a row; `false` (and nothing stored) when full.
    pub fn push(&mut self, row: &[f32]) -> Result<bool> {
        if row.len() != self.row_len {
            return Err(Error::Shape(format!(
                "rows: row of {} values, expected {}",
                row.len(),
                self.row_len
            )));
        }
        if self.len == self.capacity {
            return Ok(false);
        }
        let o = self.len * self.row_len;
        self.data[o..o + self.row_len].copy_from_slice(row);
        self.len += 1;
        Ok(true)
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        (i < self.len).then(|| &self.data[i * self.row_len..(i + 1) * self.row_len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_describe_the_chronological_layout() {
        // A device copy of the ring laid out by `runs` must equal `write_chronological`'s output.
        let mut w = Window::new(4, 1, 1).unwrap();
        assert_eq!(w.newest_slot(), None);
        for v in 0..11 {
            w.push(&[v as f32], &[v as f32]).unwrap();
            let ring: Vec<f32> = (0..4).map(|k| w.objects[k]).collect();
            let (start, first, len) = w.runs();
            let mut laid = ring[start..start + first].to_vec();
            laid.extend_from_slice(&ring[..len - first]);
            let (mut o, mut s, mut m) = (vec![0.0; 4], vec![0.0; 4], vec![false; 4]);
            w.write_chronological(&mut o, &mut s, &mut m).unwrap();
            assert_eq!(laid, o[..len], "after {} pushes", v + 1);
            assert_eq!(ring[w.newest_slot().unwrap()], v as f32);
        }
    }

    fn frame(v: f32) -> ([f32; 2], [f32; 1]) {
        ([v, v + 0.5], [v])
    }

    #[test]
    fn chronological_layout_before_and_after_wrap() {
        let mut w = Window::new(3, 2, 1).unwrap();
        let (mut o, mut s, mut m) = (vec![9.0; 6], vec![9.0; 3], vec![true; 3]);
        assert!(w.write_chronological(&mut o, &mut s, &mut m).is_err());
        for v in [1.0, 2.0] {
            let (a, b) = frame(v);
            w.push(&a, &b).unwrap();
        }
        assert_eq!(w.write_chronological(&mut o, &mut s, &mut m).unwrap(), 1);
        assert_eq!(o, [1.0, 1.5, 2.0, 2.5, 0.0, 0.0]);
        assert_eq!(s, [1.0, 2.0, 0.0]);
        assert_eq!(m, [true, true, false]);
        for v in [3.0, 4.0, 5.0, 6.0] {
            let (a, b) = frame(v);
            w.push(&a, &b).unwrap();
        }
        // Holds 4, 5, 6 with the oldest at ring slot 0 after 6 pushes; try one more to wrap mid-ring.
        let (a, b) = frame(7.0);
        w.push(&a, &b).unwrap();
        assert_eq!(w.write_chronological(&mut o, &mut s, &mut m).unwrap(), 2);
        assert_eq!(s, [5.0, 6.0, 7.0]);
        assert_eq!(o, [5.0, 5.5, 6.0, 6.5, 7.0, 7.5]);
        assert_eq!(m, [true; 3]);
        assert_eq!(w.frame(0).unwrap().1, &[5.0]);
        assert!(w.frame(3).is_none());
        assert!(w.push(&[0.0], &[0.0]).is_err());
        w.clear();
        assert!(w.is_empty());
    }

    #[test]
    fn rows_stop_at_capacity() {
        let mut r = Rows::new(2, 2);
        assert!(r.push(&[1.0, 2.0]).unwrap());
        assert!(r.push(&[3.0, 4.0]).unwrap());
        assert!(!r.push(&[5.0, 6.0]).unwrap());
        assert_eq!(r.row(1).unwrap(), &[3.0, 4.0]);
        assert!(r.row(2).is_none());
        assert!(r.push(&[1.0]).is_err());
    }
}
