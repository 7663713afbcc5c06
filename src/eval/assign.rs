//! Optimal assignment (Hungarian method) for matching predicted objects to ground-truth objects,
//! as the DAVIS unsupervised protocol does with `scipy.optimize.linear_sum_assignment`.

/// Assigns each of the `cols` columns to a distinct row of `score` (row-major `rows x cols`,
/// `rows >= cols`) maximising the total score. Returns `(row, col)` pairs sorted by row.
pub fn max_assignment(score: &[f64], rows: usize, cols: usize) -> Vec<(usize, usize)> {
    assert!(
        rows >= cols && score.len() == rows * cols,
        "assignment shape"
    );
    if cols == 0 {
        return vec![];
    }
    // Potentials method on the transposed problem: n = cols "workers" onto m = rows "jobs",
    // minimising the negated score. 1-based with a virtual column 0.
    let (n, m) = (cols, rows);
    let cost = |i: usize, j: usize| -score[(j - 1) * cols + (i - 1)];
    let mut u = vec![0.0f64; n + 1];
    let mut v = vec![0.0f64; m + 1];
    let mut p = vec![0usize; m + 1];
    let mut way = vec![0usize; m + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![f64::INFINITY; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0usize;
            for j in 1..=m {
                if !used[j] {
                    let cur = cost(i0, j) - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut pairs: Vec<(usize, usize)> = (1..=m)
        .filter(|&j| p[j] != 0)
        .map(|j| (j - 1, p[j] - 1))
        .collect();
    pairs.sort_unstable();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_best_total_not_the_greedy_one() {
        // Greedy takes (0,0)=0.9 then (1,1)=0.1: 1.0. Optimal: (0,1)=0.8 + (1,0)=0.7 = 1.5.
        let s = [0.9, 0.8, 0.7, 0.1];
        assert_eq!(max_assignment(&s, 2, 2), vec![(0, 1), (1, 0)]);
    }

    #[test]
    fn rectangular_leaves_rows_unassigned() {
        // 3 predictions, 2 objects: object 0 best matched by row 2, object 1 by row 0.
        let s = [0.1, 0.9, 0.2, 0.3, 0.8, 0.1];
        assert_eq!(max_assignment(&s, 3, 2), vec![(0, 1), (2, 0)]);
    }

    #[test]
    fn brute_force_agrees_on_small_cases() {
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for rows in 1..=5 {
            for cols in 1..=rows {
                let s: Vec<f64> = (0..rows * cols).map(|_| rnd()).collect();
                let got: f64 = max_assignment(&s, rows, cols)
                    .iter()
                    .map(|&(r, c)| s[r * cols + c])
                    .sum();
                // Enumerate injective maps cols -> rows.
                fn best(
                    s: &[f64],
                    rows: usize,
                    cols: usize,
                    c: usize,
                    used: &mut Vec<bool>,
                ) -> f64 {
                    if c == cols {
                        return 0.0;
                    }
                    let mut b = f64::NEG_INFINITY;
                    for r in 0..rows {
                        if !used[r] {
                            used[r] = true;
                            b = b.max(s[r * cols + c] + best(s, rows, cols, c + 1, used));
                            used[r] = false;
                        }
                    }
                    b
                }
                let want = best(&s, rows, cols, 0, &mut vec![false; rows]);
                assert!((got - want).abs() < 1e-12, "{rows}x{cols}: {got} vs {want}");
            }
        }
    }
}
