//! Per-neuron Gram matrices accumulated over contiguous time blocks, and ridge regression with its
//! penalty chosen by cross-validation over those blocks.
//!
//! A readout fit streams the core over a session once per pass and cannot keep every frame's
//! features (neurons x channels x frames would not fit in memory for long sessions); X'X, X'y
//! and y'y per block are all that ridge and its held-out error need. Rows are buffered per
//! neuron and folded in as one matrix product per chunk, which is what makes a pass cheap.

// Index loops over (row, column) read more clearly than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use ndarray::{s, ArrayView2};
use rayon::prelude::*;

const CHUNK: usize = 128;

/// X'X [k, d, d], X'y [k, d] and (y'y, sum y, rows) [k, 3] of each neuron, per block.
pub struct BlockGram {
    d: usize,
    pub gram: Vec<Vec<f64>>,
    pub xty: Vec<Vec<f64>>,
    pub yy: Vec<Vec<f64>>,
    zbuf: Vec<Vec<f32>>,
    ybuf: Vec<Vec<f32>>,
    fill: usize,
    fold: usize,
}

impl BlockGram {
    pub fn new(n: usize, d: usize, folds: usize) -> Self {
        BlockGram {
            d,
            gram: vec![vec![0f64; folds * d * d]; n],
            xty: vec![vec![0f64; folds * d]; n],
            yy: vec![vec![0f64; folds * 3]; n],
            zbuf: vec![vec![0f32; CHUNK * d]; n],
            ybuf: vec![vec![0f32; CHUNK]; n],
            fill: 0,
            fold: 0,
        }
    }

    /// Starts a row of block `fold`: call `row` for every neuron, then `end_row`.
    pub fn begin_row(&mut self, fold: usize) {
        if self.fill > 0 && (fold != self.fold || self.fill == CHUNK) {
            self.flush();
        }
        self.fold = fold;
    }

    /// Neuron `j`'s row (length d) and where its response goes.
    pub fn row(&mut self, j: usize) -> (&mut [f32], &mut f32) {
        let (d, f) = (self.d, self.fill);
        (&mut self.zbuf[j][f * d..(f + 1) * d], &mut self.ybuf[j][f])
    }

    pub fn end_row(&mut self) {
        self.fill += 1;
    }

    fn flush(&mut self) {
        let (fill, fold, d) = (self.fill, self.fold, self.d);
        if fill == 0 {
            return;
        }
        self.gram
            .par_iter_mut()
            .zip(self.xty.par_iter_mut())
            .zip(self.yy.par_iter_mut())
            .zip(self.zbuf.par_iter())
            .zip(self.ybuf.par_iter())
            .for_each(|((((g, b), s), z), yv)| {
                let zv = ArrayView2::from_shape((CHUNK, d), z.as_slice()).expect("shape");
                let zv = zv.slice(s![..fill, ..]);
                let gg = zv.t().dot(&zv);
                let gf = &mut g[fold * d * d..(fold + 1) * d * d];
                for (o, v) in gf.iter_mut().zip(gg.iter()) {
                    *o += *v as f64;
                }
                let bf = &mut b[fold * d..(fold + 1) * d];
                for r in 0..fill {
                    let yr = yv[r] as f64;
                    let zr = &z[r * d..(r + 1) * d];
                    for (o, &v) in bf.iter_mut().zip(zr) {
                        *o += v as f64 * yr;
                    }
                    s[fold * 3] += yr * yr;
                    s[fold * 3 + 1] += yr;
                    s[fold * 3 + 2] += 1.0;
                }
            });
        self.fill = 0;
    }

    /// Folds in the last rows and frees the row buffers.
    pub fn finish(&mut self) {
        self.flush();
        self.zbuf = Vec::new();
        self.ybuf = Vec::new();
    }
}

/// A neuron's ridge weights: the penalty chosen, the weights on all blocks and without each.
#[derive(Debug, Clone)]
pub struct CvFit {
    pub lambda: f64,
    pub full: Vec<f64>,
    pub per_fold: Vec<Vec<f64>>,
}

/// Ridge of neuron `j` with the penalty (relative to the mean diagonal of the first `scaled`
/// columns) chosen from `lambdas` by held-out squared error over the blocks. With `free_last`
/// the last column (an intercept) is not penalised.
pub fn cv_ridge(
    acc: &BlockGram,
    j: usize,
    lambdas: &[f64],
    scaled: usize,
    free_last: bool,
) -> CvFit {
    let d = acc.d;
    let (g, b, yy) = (&acc.gram[j], &acc.xty[j], &acc.yy[j]);
    let k_folds = yy.len() / 3;
    let mut gt = vec![0f64; d * d];
    let mut bt = vec![0f64; d];
    for k in 0..k_folds {
        for (o, v) in gt.iter_mut().zip(&g[k * d * d..(k + 1) * d * d]) {
            *o += v;
        }
        for (o, v) in bt.iter_mut().zip(&b[k * d..(k + 1) * d]) {
            *o += v;
        }
    }
    let scale = (0..scaled).map(|i| gt[i * d + i]).sum::<f64>() / scaled.max(1) as f64;
    let pen_for = |lam: f64, gmat: &[f64]| -> Vec<f64> {
        let mut pen = vec![lam * scale.max(1e-12); d];
        if free_last {
            pen[d - 1] = 1e-9 * gmat[(d - 1) * d + d - 1].max(1.0);
        }
        pen
    };
    let mut best = (f64::INFINITY, lambdas[0], Vec::new());
    for &lam in lambdas {
        let mut sse = 0f64;
        let mut per_fold = Vec::with_capacity(k_folds);
        for k in 0..k_folds {
            let gk = &g[k * d * d..(k + 1) * d * d];
            let bk = &b[k * d..(k + 1) * d];
            let gtr: Vec<f64> = gt.iter().zip(gk).map(|(a, b)| a - b).collect();
            let btr: Vec<f64> = bt.iter().zip(bk).map(|(a, b)| a - b).collect();
            let w = ridge_solve(&gtr, &btr, d, &pen_for(lam, &gtr)).unwrap_or_else(|| vec![0.0; d]);
            // Held-out SSE = y'y - 2 w'b + w'Gw on block k.
            let mut wgw = 0f64;
            for r in 0..d {
                let mut s = 0f64;
                for q in 0..d {
                    s += gk[r * d + q] * w[q];
                }
                wgw += w[r] * s;
            }
            let wb: f64 = w.iter().zip(bk).map(|(a, b)| a * b).sum();
            sse += yy[k * 3] - 2.0 * wb + wgw;
            per_fold.push(w);
        }
        if sse < best.0 {
            best = (sse, lam, per_fold);
        }
    }
    let full = ridge_solve(&gt, &bt, d, &pen_for(best.1, &gt)).unwrap_or_else(|| vec![0.0; d]);
    CvFit {
        lambda: best.1,
        full,
        per_fold: best.2,
    }
}

/// Solves (A + pen) x = b by Cholesky, A symmetric positive semi-definite [d, d] (row-major).
pub fn ridge_solve(a: &[f64], b: &[f64], d: usize, pen: &[f64]) -> Option<Vec<f64>> {
    cholesky(a, d, pen).map(|l| chol_solve(&l, b, d))
}

/// The lower Cholesky factor of A + diag(pen) [d, d]; `None` when it is not positive definite.
/// One factor serves many right-hand sides (`chol_solve`).
pub fn cholesky(a: &[f64], d: usize, pen: &[f64]) -> Option<Vec<f64>> {
    let mut l = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = a[i * d + j] + if i == j { pen[i] } else { 0.0 };
            let (li, lj) = (&l[i * d..i * d + j], &l[j * d..j * d + j]);
            s -= li.iter().zip(lj).map(|(a, b)| a * b).sum::<f64>();
            if i == j {
                if s <= 0.0 {
                    return None;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// Solves L L' x = b with the factor of `cholesky`.
pub fn chol_solve(l: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut y = vec![0f64; d];
    for i in 0..d {
        let s: f64 = (0..i).map(|k| l[i * d + k] * y[k]).sum();
        y[i] = (b[i] - s) / l[i * d + i];
    }
    let mut x = vec![0f64; d];
    for i in (0..d).rev() {
        let s: f64 = (i + 1..d).map(|k| l[k * d + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * d + i];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocked accumulation gives the same weights as one regression, and the penalty chosen for
    /// noise-free data is the smallest.
    #[test]
    fn blocked_ridge_recovers_weights() {
        let (n, d, k, rows) = (2, 4, 3, 300);
        let mut acc = BlockGram::new(n, d, k);
        let w_true = [[1.0f32, -2.0, 0.5, 0.3], [0.0, 1.0, 1.0, -0.7]];
        let mut x = 0.1f32;
        for t in 0..rows {
            acc.begin_row(t * k / rows);
            for (j, w) in w_true.iter().enumerate() {
                let (row, y) = acc.row(j);
                for (i, v) in row.iter_mut().enumerate() {
                    x = (x * 3.7 + 0.13 * i as f32).fract();
                    *v = if i == d - 1 { 1.0 } else { x - 0.5 };
                }
                *y = row.iter().zip(w).map(|(a, b)| a * b).sum();
            }
            acc.end_row();
        }
        acc.finish();
        for (j, w) in w_true.iter().enumerate() {
            let f = cv_ridge(&acc, j, &[1e-8, 1e-2, 1.0], d - 1, true);
            assert_eq!(f.lambda, 1e-8);
            for (a, b) in f.full.iter().zip(w) {
                assert!((*a as f32 - b).abs() < 1e-3, "{:?} vs {w:?}", f.full);
            }
            assert_eq!(f.per_fold.len(), k);
        }
    }
}
