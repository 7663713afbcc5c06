//! Exact linear assignment on a square cost matrix (the tracker's `linear_sum_assignment`), docs/model.md: Memory-augmented tracker.
//!
//! Shortest-augmenting-path Hungarian method with row/column potentials (Jonker–Volgenant style),
//! O(n³), f64 internally. All work arrays live in [`Hungarian`] so solving allocates nothing.

use crate::error::{Error, Result};

/// Pre-allocated solver for `n × n` problems.
#[derive(Debug, Clone)]
pub struct Hungarian {
    n: usize,
    /// Row potentials (1-based; index 0 is the virtual row).
    u: Vec<f64>,
    /// Column potentials (1-based; index 0 is the virtual column).
    v: Vec<f64>,
    /// `row_of[j]`: row (1-based, 0 = free) matched to column `j`.
    row_of: Vec<usize>,
    /// Previous column on the current shortest path.
    way: Vec<usize>,
    /// Tentative shortest distance to each column.
    minv: Vec<f64>,
    /// Columns already in the shortest-path tree.
    used: Vec<bool>,
}

impl Hungarian {
    /// Allocates the workspace for `n × n` problems.
    pub fn new(n: usize) -> Self {
        Hungarian {
            n,
            u: vec![0.0; n + 1],
            v: vec![0.0; n + 1],
            row_of: vec![0; n + 1],
            way: vec![0; n + 1],
            minv: vec![0.0; n + 1],
            used: vec![false; n + 1],
        }
    }

    /// Problem size this solver was built for.
    pub fn size(&self) -> usize {
        self.n
    }

    /// Minimises `Σ_i cost[i, row_to_col[i]]` over permutations. `cost` is row-major `n × n`;
    /// `row_to_col[i]` receives the column assigned to row `i`. Non-finite costs are an error.
    pub fn solve(&mut self, cost: &[f32], row_to_col: &mut [usize]) -> Result<()> {
        let n = self.n;
        if cost.len() != n * n || row_to_col.len() != n {
            return Err(Error::Shape(format!(
                "hungarian: solver is for {n}x{n}; got {} costs and {} output slots",
                cost.len(),
                row_to_col.len()
            )));
        }
        if let Some(k) = cost.iter().position(|c| !c.is_finite()) {
            return Err(Error::Shape(format!(
                "hungarian: cost[{}, {}] = {} is not finite",
                k / n,
                k % n,
                cost[k]
            )));
        }
        self.u.fill(0.0);
        self.v.fill(0.0);
        self.row_of.fill(0);
        let c = |i: usize, j: usize| cost[(i - 1) * n + (j - 1)] as f64;
        for i in 1..=n {
            // Grow a shortest-path tree from row i (hung on virtual column 0) until it reaches a
            // free column, then flip the matching along the path.
            self.row_of[0] = i;
            let mut j0 = 0usize;
            self.minv.fill(f64::INFINITY);
            self.used.fill(false);
            loop {
                self.used[j0] = true;
                let i0 = self.row_of[j0];
                let mut delta = f64::INFINITY;
                let mut j1 = 0usize;
                for j in 1..=n {
                    if !self.used[j] {
                        let cur = c(i0, j) - self.u[i0] - self.v[j];
                        if cur < self.minv[j] {
                            self.minv[j] = cur;
                            self.way[j] = j0;
                        }
                        if self.minv[j] < delta {
                            delta = self.minv[j];
                            j1 = j;
                        }
                    }
                }
                if j1 == 0 {
                    // Only reachable with non-finite reduced costs, which the checks above exclude.
                    return Err(Error::Other("hungarian: no augmenting path".into()));
                }
                for j in 0..=n {
                    if self.used[j] {
                        self.u[self.row_of[j]] += delta;
                        self.v[j] -= delta;
                    } else {
                        self.minv[j] -= delta;
                    }
                }
                j0 = j1;
                if self.row_of[j0] == 0 {
                    break;
                }
            }
            while j0 != 0 {
                let j1 = self.way[j0];
                self.row_of[j0] = self.row_of[j1];
                j0 = j1;
            }
        }
        for j in 1..=n {
            row_to_col[self.row_of[j] - 1] = j - 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_known_problem() {
        // Optimal: row0→col1 (1), row1→col0 (2), row2→col2 (2) = 5.
        let cost = [4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 3.0, 2.0, 2.0];
        let mut h = Hungarian::new(3);
        let mut p = [0usize; 3];
        h.solve(&cost, &mut p).unwrap();
        assert_eq!(p, [1, 0, 2]);
    }

    #[test]
    fn bad_input_is_error() {
        let mut h = Hungarian::new(2);
        let mut p = [0usize; 2];
        assert!(h.solve(&[0.0; 3], &mut p).is_err());
        assert!(h.solve(&[0.0; 4], &mut p[..1]).is_err());
        let e = h.solve(&[0.0, f32::NAN, 0.0, 0.0], &mut p).unwrap_err();
        assert!(e.to_string().contains("cost[0, 1]"), "{e}");
        assert!(h.solve(&[0.0, 0.0, f32::INFINITY, 0.0], &mut p).is_err());
        let mut h0 = Hungarian::new(0);
        h0.solve(&[], &mut []).unwrap();
    }
}
