//! CMA-ES (Hansen's (mu/mu_w, lambda) evolution strategy with rank-one and rank-mu covariance
//! updates and cumulative step-size adaptation), minimising in the unit cube [0, 1]^d.
//!
//! Gradient-free because the twin is a black box here (tract gives no gradients) and the families
//! have few parameters. Samples are mirrored back into the cube and the mirrored point is what the
//! update sees, so the distribution never learns from points it could not evaluate. Everything is
//! drawn from one seeded `FastRng` in a fixed order: same seed, same run.

use crate::sim::rng::FastRng;

pub struct Cmaes {
    n: usize,
    pub lambda: usize,
    mu: usize,
    weights: Vec<f64>,
    mueff: f64,
    cc: f64,
    cs: f64,
    c1: f64,
    cmu: f64,
    damps: f64,
    chi_n: f64,
    pub mean: Vec<f64>,
    pub sigma: f64,
    pc: Vec<f64>,
    ps: Vec<f64>,
    /// Covariance C = B diag(D^2) B^T (row-major n x n).
    c: Vec<f64>,
    b: Vec<f64>,
    d: Vec<f64>,
    rng: FastRng,
    generation: u64,
}

/// Default population size for dimension n.
pub fn default_lambda(n: usize) -> usize {
    4 + (3.0 * (n.max(1) as f64).ln()).floor() as usize
}

fn reflect(mut v: f64) -> f64 {
    // Mirror into [0, 1] (period 2), so a far step lands somewhere sensible too.
    v = v.rem_euclid(2.0);
    if v > 1.0 {
        2.0 - v
    } else {
        v
    }
}

impl Cmaes {
    pub fn new(mean: Vec<f64>, sigma: f64, lambda: usize, seed: u64) -> Cmaes {
        let n = mean.len().max(1);
        let lambda = lambda.max(2);
        let mu = lambda / 2;
        let raw: Vec<f64> = (0..mu)
            .map(|i| (mu as f64 + 0.5).ln() - ((i + 1) as f64).ln())
            .collect();
        let s: f64 = raw.iter().sum();
        let weights: Vec<f64> = raw.iter().map(|w| w / s).collect();
        let mueff = 1.0 / weights.iter().map(|w| w * w).sum::<f64>();
        let nf = n as f64;
        let cc = (4.0 + mueff / nf) / (nf + 4.0 + 2.0 * mueff / nf);
        let cs = (mueff + 2.0) / (nf + mueff + 5.0);
        let c1 = 2.0 / ((nf + 1.3).powi(2) + mueff);
        let cmu = (1.0 - c1).min(2.0 * (mueff - 2.0 + 1.0 / mueff) / ((nf + 2.0).powi(2) + mueff));
        let damps = 1.0 + 2.0 * (((mueff - 1.0) / (nf + 1.0)).sqrt() - 1.0).max(0.0) + cs;
        let chi_n = nf.sqrt() * (1.0 - 1.0 / (4.0 * nf) + 1.0 / (21.0 * nf * nf));
        let mut eye = vec![0.0; n * n];
        for i in 0..n {
            eye[i * n + i] = 1.0;
        }
        Cmaes {
            n,
            lambda,
            mu,
            weights,
            mueff,
            cc,
            cs,
            c1,
            cmu,
            damps,
            chi_n,
            mean: mean.iter().map(|&v| v.clamp(0.0, 1.0)).collect(),
            sigma,
            pc: vec![0.0; n],
            ps: vec![0.0; n],
            c: eye.clone(),
            b: eye,
            d: vec![1.0; n],
            rng: FastRng::new(seed),
            generation: 0,
        }
    }

    /// Draws `k` candidates (k = lambda for a full generation).
    pub fn ask(&mut self, k: usize) -> Vec<Vec<f64>> {
        let n = self.n;
        (0..k)
            .map(|_| {
                let z: Vec<f64> = (0..n).map(|_| self.rng.normal()).collect();
                (0..n)
                    .map(|i| {
                        let y: f64 = (0..n).map(|j| self.b[i * n + j] * self.d[j] * z[j]).sum();
                        reflect(self.mean[i] + self.sigma * y)
                    })
                    .collect()
            })
            .collect()
    }

    /// Updates from a full generation: `xs` as asked, `f` their values (lower is better).
    pub fn tell(&mut self, xs: &[Vec<f64>], f: &[f64]) {
        let n = self.n;
        if xs.len() < self.mu.max(2) {
            return;
        }
        let mut order: Vec<usize> = (0..xs.len()).collect();
        // Ties broken by sample order keep the update deterministic.
        order.sort_by(|&a, &b| f[a].total_cmp(&f[b]).then(a.cmp(&b)));
        let old = self.mean.clone();
        let mu = self.mu.min(xs.len());
        let mut mean = vec![0.0; n];
        for (k, &i) in order.iter().take(mu).enumerate() {
            for j in 0..n {
                mean[j] += self.weights[k] * xs[i][j];
            }
        }
        self.mean = mean;
        let sig = self.sigma.max(1e-12);
        let step: Vec<f64> = (0..n).map(|j| (self.mean[j] - old[j]) / sig).collect();
        // C^{-1/2} * step = B diag(1/D) B^T step
        let bt: Vec<f64> = (0..n)
            .map(|k| (0..n).map(|j| self.b[j * n + k] * step[j]).sum::<f64>() / self.d[k])
            .collect();
        let cinv: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|k| self.b[i * n + k] * bt[k]).sum())
            .collect();
        let a = (self.cs * (2.0 - self.cs) * self.mueff).sqrt();
        for (ps, ci) in self.ps.iter_mut().zip(&cinv) {
            *ps = (1.0 - self.cs) * *ps + a * ci;
        }
        self.generation += 1;
        let ps_norm = self.ps.iter().map(|v| v * v).sum::<f64>().sqrt();
        let denom = (1.0 - (1.0 - self.cs).powf(2.0 * self.generation as f64)).sqrt();
        let hsig = ps_norm / denom.max(1e-12) / self.chi_n < 1.4 + 2.0 / (n as f64 + 1.0);
        let ac = (self.cc * (2.0 - self.cc) * self.mueff).sqrt();
        for (pc, st) in self.pc.iter_mut().zip(&step) {
            *pc = (1.0 - self.cc) * *pc + if hsig { ac * st } else { 0.0 };
        }
        let dh = if hsig { 0.0 } else { self.cc * (2.0 - self.cc) };
        for i in 0..n {
            for j in 0..n {
                let mut rank_mu = 0.0;
                for (k, &s) in order.iter().take(mu).enumerate() {
                    rank_mu += self.weights[k] * (xs[s][i] - old[i]) * (xs[s][j] - old[j]);
                }
                rank_mu /= sig * sig;
                let v = &mut self.c[i * n + j];
                *v = (1.0 - self.c1 - self.cmu) * *v
                    + self.c1 * (self.pc[i] * self.pc[j] + dh * *v)
                    + self.cmu * rank_mu;
            }
        }
        self.sigma *= ((self.cs / self.damps) * (ps_norm / self.chi_n - 1.0))
            .min(1.0)
            .exp();
        // The cube has side 1: a larger step size only mirrors around.
        self.sigma = self.sigma.clamp(1e-8, 1.0);
        self.decompose();
    }

    fn decompose(&mut self) {
        let n = self.n;
        // Enforce symmetry against rounding, then Jacobi (exact enough and deterministic for n < 40).
        for i in 0..n {
            for j in 0..i {
                let v = 0.5 * (self.c[i * n + j] + self.c[j * n + i]);
                self.c[i * n + j] = v;
                self.c[j * n + i] = v;
            }
        }
        let (vals, vecs) = jacobi_eigen(&self.c, n);
        self.b = vecs;
        self.d = vals.iter().map(|&v| v.max(1e-20).sqrt()).collect();
    }
}

/// Eigen-decomposition of a symmetric n x n matrix: (eigenvalues, eigenvectors as columns).
pub fn jacobi_eigen(m: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = m.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        if off < 1e-22 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let akp = a[k * n + p];
                    let akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let apk = a[p * n + k];
                    let aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let vkp = v[k * n + p];
                    let vkq = v[k * n + q];
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_minimum_of_a_shifted_sphere_deterministically() {
        let target = [0.3, 0.7, 0.55, 0.2];
        let run = || {
            let mut es = Cmaes::new(vec![0.5; 4], 0.3, default_lambda(4), 7);
            let mut best = f64::INFINITY;
            for _ in 0..60 {
                let xs = es.ask(es.lambda);
                let f: Vec<f64> = xs
                    .iter()
                    .map(|x| x.iter().zip(&target).map(|(a, b)| (a - b).powi(2)).sum())
                    .collect();
                best = f.iter().cloned().fold(best, f64::min);
                es.tell(&xs, &f);
            }
            (best, es.mean.clone())
        };
        let (a, ma) = run();
        let (b, mb) = run();
        assert!(a < 1e-6, "best {a}");
        assert_eq!(a, b);
        assert_eq!(ma, mb);
    }

    #[test]
    fn jacobi_diagonalises() {
        let m = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let (vals, v) = jacobi_eigen(&m, 3);
        for k in 0..3 {
            // M v_k = lambda_k v_k
            for i in 0..3 {
                let mv: f64 = (0..3).map(|j| m[i * 3 + j] * v[j * 3 + k]).sum();
                assert!((mv - vals[k] * v[i * 3 + k]).abs() < 1e-9);
            }
        }
    }
}
