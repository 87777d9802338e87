//! Per-mouse adaptation: keep a shared core fixed and fit each neuron's readout to a session.
//!
//! The readout of neuron n (docs/twin-contract.md, "reference twin"):
//!   z_n(t)  = features(t) sampled at the neuron's position p_n (bilinear, 4 taps)   [C]
//!   d_n(t)  = w_n . z_n(t)                                   (feature weights)
//!   s_n(t)  = g s_n(t-1) + (1 - g) d_n(t)                    (state `state_in.readout`)
//!   y_n(t)  = relu(a_n s + b_n s r + c_n r + e_n pupil + f_n), r = speed / (speed + 10 cm/s)
//!
//! Fitting, three passes of the core over the session's stimuli:
//!  1. position: ridge of the measured responses on the time-integrated energy map (all feature
//!     positions at once, one shared design), peak of each neuron's map -> p_n;
//!  2. feature weights: ridge of responses on [integrated z_n, r, pupil, 1], Gram matrices
//!     accumulated per contiguous time block; the penalty is chosen per neuron by K-fold
//!     cross-validation over the blocks;
//!  3. gain and offsets: (a, b, c, e, f) by least squares on the integrated drive; the held-out
//!     prediction of each frame uses weights fit without its block (reported correlation).

// Index loops over (neuron, channel, tap) read more clearly than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use std::path::Path;
use std::time::Instant;

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use super::contract::{
    self, Contract, Kind, StateSpec, BEHAVIOR, FEATURES, RESPONSE, STATE_IN, STATE_OUT,
};
use super::data::{SessionData, TargetSource};
use super::glm;
use super::gram::{chol_solve, cholesky, cv_ridge, ridge_solve, BlockGram, CvFit};
use super::metrics::{self, pearson};
use super::onnx::{attr_i, attr_ints, Dim, GraphBuilder, FLOAT};
use super::runtime::{Twin, TwinOptions};
use super::TwinError;
use crate::config::Backend;

/// State of the GLM output stage: the drive of the last two frames, [2, N].
pub const GLM_LAGS: &str = "readout_lags";

/// Half-saturation of the running-speed transform, cm/s.
pub const RUN_HALF_CM_S: f32 = 10.0;

/// The readout's output stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadoutKind {
    /// Integrate the linear drive, then gain, offsets and ReLU (fit by least squares).
    Linear,
    /// Per-neuron temporal kernel, softplus rate with running gain, then the indicator's decay
    /// (`twin::glm`, fit by Levenberg–Marquardt): extrapolates to stimuli stronger than the fit's.
    Glm,
}

impl std::fmt::Display for ReadoutKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReadoutKind::Linear => "linear",
            ReadoutKind::Glm => "glm",
        })
    }
}

impl std::str::FromStr for ReadoutKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "linear" => Ok(ReadoutKind::Linear),
            "glm" => Ok(ReadoutKind::Glm),
            _ => Err(format!("readout `{s}`: expected glm or linear")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdaptOptions {
    /// Readout integration time constant, seconds (the indicator's decay), used while fitting the
    /// feature weights.
    pub tau_s: f64,
    /// Per-neuron time constants tried for the final readout integrator (chosen by CV).
    pub tau_grid: Vec<f64>,
    /// Relative ridge penalties tried (times the mean diagonal of the Gram matrix).
    pub lambdas: Vec<f64>,
    /// Contiguous time blocks for cross-validation.
    pub folds: usize,
    /// Relative ridge penalty of the position maps.
    pub position_lambda: f64,
    /// Use every k-th frame in the Gram matrices (responses are smooth; 1 = every frame).
    pub time_stride: usize,
    /// Threads for the core (tract) and for the per-neuron fits.
    pub threads: usize,
    /// Fit at most this many neurons (the first ones of the target table).
    pub max_neurons: Option<usize>,
    /// Subtract a running mean of this many seconds from extracted `traces/dff` targets before
    /// fitting (online dF/F drifts slowly; 0 = off). Ground-truth calcium is used as is.
    pub detrend_s: f64,
    /// The output stage fit after the feature weights.
    pub readout: ReadoutKind,
    /// Gauss–Newton refinements of the feature weights through the GLM output stage.
    pub joint_passes: usize,
}

impl Default for AdaptOptions {
    fn default() -> Self {
        AdaptOptions {
            tau_s: 0.9,
            tau_grid: vec![0.6, 0.75, 0.9, 1.1, 1.3],
            lambdas: vec![1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0],
            folds: 5,
            position_lambda: 1e-2,
            time_stride: 2,
            threads: 1,
            max_neurons: None,
            detrend_s: 20.0,
            readout: ReadoutKind::Glm,
            joint_passes: 1,
        }
    }
}

/// What an adaptation did and how well it predicts held-out time blocks.
#[derive(Debug, Clone, Serialize)]
pub struct AdaptReport {
    pub core: String,
    pub session: String,
    pub target_source: TargetSource,
    pub neurons: usize,
    pub frames: usize,
    pub feature_channels: usize,
    pub folds: usize,
    pub tau_s: f64,
    /// Running-mean window subtracted from the targets before fitting and scoring (0 = none).
    pub targets_detrended_s: f64,
    /// Cross-validated correlation of each neuron (every frame predicted by a readout fit without
    /// its time block).
    pub heldout_corr: Vec<f64>,
    pub mean_heldout_corr: f64,
    pub median_heldout_corr: f64,
    pub chosen_lambda: Vec<f64>,
    /// Which output stage the twin has.
    pub readout: ReadoutKind,
    /// Median held-out correlation of the linear readout on the same folds (the GLM's baseline;
    /// equal to `median_heldout_corr` with `readout = linear`).
    pub median_linear_heldout_corr: f64,
    /// Readout (indicator) time constant of each neuron, s: fit (glm) or chosen from the grid.
    pub chosen_tau_s: Vec<f64>,
    pub roi_ids: Vec<u32>,
    pub seconds_core: f64,
    pub seconds_fit: f64,
    /// Of `seconds_fit`: the joint refinement (its core passes included).
    pub seconds_joint: f64,
    pub seconds_total: f64,
}

/// The fitted readout.
#[derive(Debug, Clone)]
pub struct Readout {
    pub n: usize,
    pub c: usize,
    /// Flat feature-map index of the 4 bilinear taps of each neuron, [N*4].
    pub taps: Vec<i64>,
    /// Bilinear weights [N*4].
    pub tap_w: Vec<f32>,
    /// Feature weights [C, N].
    pub wf: Vec<f32>,
    /// Per-neuron leak of the readout integrator, exp(-1 / (tau_n * rate)).
    pub gamma: Vec<f32>,
    /// Per-neuron a, b, c, e, f of the linear readout.
    pub coef: [Vec<f32>; 5],
    /// Per-neuron output stage (`twin::glm`), replacing `gamma` and `coef` when present.
    pub glm: Option<Vec<[f32; glm::N_PARAMS]>>,
    pub roi_ids: Vec<u32>,
}

struct Runner<'a> {
    core: Twin,
    data: &'a SessionData,
    stim: Vec<f32>,
    beh: Vec<f32>,
    feat: Vec<f32>,
}

impl<'a> Runner<'a> {
    /// Runs the core over every imaging frame in order, calling `f(t, features)`.
    fn run(
        &mut self,
        mut f: impl FnMut(usize, &[f32]) -> Result<(), TwinError>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), TwinError> {
        let mut st = self.core.new_state();
        let channels = self.core.contract().behavior_channels.clone();
        for t in 0..self.data.n_frames {
            self.data.stimulus_into(t, &mut self.stim);
            self.data.behavior_into(t, &channels, &mut self.beh);
            // The core pass is most of a fit's time: the operator's stop is honoured here.
            crate::interrupt::check()?;
            self.core
                .step(&mut st, &self.stim, &self.beh, &mut self.feat)?;
            f(t, &self.feat)?;
            progress(1);
        }
        Ok(())
    }
}

fn run_transform(speed: f32) -> f32 {
    let s = speed.max(0.0);
    s / (s + RUN_HALF_CM_S)
}

/// Adapts a core to a session: returns the twin's ONNX model and the report.
pub fn adapt(
    core_path: &Path,
    session: &SessionData,
    opts: &AdaptOptions,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<(pb::ModelProto, AdaptReport, Readout), TwinError> {
    let t_start = Instant::now();
    let core = Twin::load_with(
        core_path,
        &TwinOptions {
            backend: Backend::Cpu,
            threads: opts.threads,
        },
    )?;
    let cc = core.contract().clone();
    if cc.kind != Kind::Core {
        return Err(TwinError::Adapt(format!(
            "{} is a complete twin (twin.kind = twin); adapt needs a core (twin.kind = core)",
            core_path.display()
        )));
    }
    session.check_compatible(&cc, core_path)?;
    let [c, fh, fw] = cc.features.expect("core has features");
    let p = fh * fw;
    let targets = session.targets.as_ref().ok_or_else(|| {
        TwinError::Adapt(format!("{}: no measured responses", session.path.display()))
    })?;
    let r_all = targets.n();
    let n = opts.max_neurons.map_or(r_all, |m| m.min(r_all));
    if n == 0 {
        return Err(TwinError::Adapt("the session has no neurons to fit".into()));
    }
    let t_n = session.n_frames;
    let k_folds = opts.folds.max(2);
    if t_n < 20 * k_folds {
        return Err(TwinError::Adapt(format!(
            "{}: {t_n} frames are too few to fit and cross-validate ({} needed)",
            session.path.display(),
            20 * k_folds
        )));
    }
    let detrended;
    let detrending = targets.source == TargetSource::Traces && opts.detrend_s > 0.0;
    let y_all: &[f32] = if detrending {
        let w = ((opts.detrend_s * cc.frame_rate_hz).round() as usize).max(3);
        detrended = detrend(&targets.data, t_n, r_all, w);
        &detrended
    } else {
        &targets.data
    };
    let y = |t: usize, j: usize| y_all[t * r_all + j];
    let valid: Vec<bool> = (0..t_n)
        .map(|t| (0..n).all(|j| y(t, j).is_finite()))
        .collect();
    // Detrending takes each neuron's baseline level out of the targets; the twin must predict
    // dF/F on the session's own scale (a gain is a ratio of levels), so the mean level removed
    // is added back to the fitted offsets.
    let level: Vec<f32> = (0..n)
        .map(|j| {
            if !detrending {
                return 0.0;
            }
            let (mut sum, mut k) = (0f64, 0f64);
            for t in (0..t_n).filter(|&t| valid[t]) {
                sum += (targets.data[t * r_all + j] - y(t, j)) as f64;
                k += 1.0;
            }
            (sum / k.max(1.0)) as f32
        })
        .collect();
    let fold_of = |t: usize| (t * k_folds / t_n).min(k_folds - 1);
    let gamma = (-1.0 / (opts.tau_s * cc.frame_rate_hz)).exp() as f32;
    let rr: Vec<f32> = session
        .running_speed
        .iter()
        .map(|&s| run_transform(super::behavior_input("running_speed", s)))
        .collect();
    let pupil: Vec<f32> = session
        .pupil_diameter
        .iter()
        .map(|&p| super::behavior_input("pupil_diameter", p))
        .collect();
    let pupil = &pupil;
    let stride = opts.time_stride.max(1);
    let used = |t: usize| valid[t] && t % stride == 0;

    let mut runner = Runner {
        core,
        data: session,
        stim: vec![0.0; cc.stimulus_len()],
        beh: vec![0.0; cc.n_behavior()],
        feat: vec![0.0; cc.output_len()],
    };
    let energy_ch = c / 5;
    let mut secs_core = 0.0;

    // ---- Pass 1: positions from the integrated energy map. A full-field grating drives every
    // position alike and says nothing about where a neuron looks, yet its strong responses would
    // dominate the maps: frames under (or still decaying from) one are left out, unless the
    // session showed little else.
    let t0 = Instant::now();
    let families = frame_families(session);
    let full_field: Vec<bool> = families
        .iter()
        .map(|&k| k == crate::sim::stimulus::KIND_GRATING as i16)
        .collect();
    let balance = family_balance(&families, &valid, &y, n);
    let spatial = (0..t_n).filter(|&t| used(t) && !full_field[t]).count();
    let pos_used = |t: usize| used(t) && (spatial < 20 * k_folds || !full_field[t]);
    let rows: Vec<usize> = (0..t_n).filter(|&t| pos_used(t)).collect();
    let mut m = Array2::<f32>::zeros((rows.len(), p + 1));
    {
        let mut integ = vec![0f32; p];
        let mut row = 0usize;
        let mut done = 0u64;
        runner.run(
            |t, f| {
                for q in 0..p {
                    let mut e = 0f32;
                    for ch in 0..energy_ch {
                        e += f[ch * p + q];
                    }
                    integ[q] = gamma * integ[q] + (1.0 - gamma) * e;
                }
                if pos_used(t) {
                    let mut r = m.row_mut(row);
                    for q in 0..p {
                        r[q] = integ[q];
                    }
                    r[p] = 1.0;
                    row += 1;
                }
                Ok(())
            },
            &mut |d| {
                done += d;
                progress("positions", done, t_n as u64);
            },
        )?;
    }
    secs_core += t0.elapsed().as_secs_f64();
    let ymat = Array2::from_shape_fn((rows.len(), n), |(i, j)| y(rows[i], j));
    let positions = fit_positions(m.view(), ymat.view(), fh, fw, opts.position_lambda);
    drop(m);
    let (taps, tap_w) = bilinear_taps(&positions, fh, fw);

    // ---- Pass 2: feature weights by cross-validated ridge.
    let sampler = Sampler {
        taps: &taps,
        tap_w: &tap_w,
        c,
        p,
    };
    let d = c + 3;
    let t1 = Instant::now();
    let mut acc = BlockGram::new(n, d, k_folds);
    let mut zint = vec![0f32; n * c];
    let mut z = vec![0f32; c];
    {
        let mut done = 0u64;
        runner.run(
            |t, f| {
                for j in 0..n {
                    sampler.sample(j, f, &mut z);
                    for (zi, &v) in zint[j * c..(j + 1) * c].iter_mut().zip(&z) {
                        *zi = gamma * *zi + (1.0 - gamma) * v;
                    }
                }
                if used(t) {
                    acc.begin_row(fold_of(t));
                    for j in 0..n {
                        let sw = balance[t * n + j].sqrt();
                        let (row, yv) = acc.row(j);
                        row[..c].copy_from_slice(&zint[j * c..(j + 1) * c]);
                        row[c] = rr[t];
                        row[c + 1] = pupil[t];
                        row[c + 2] = 1.0;
                        row.iter_mut().for_each(|v| *v *= sw);
                        *yv = sw * y(t, j);
                    }
                    acc.end_row();
                }
                Ok(())
            },
            &mut |dd| {
                done += dd;
                progress("weights", done, t_n as u64);
            },
        )?;
        acc.finish();
    }
    let secs_pass2 = t1.elapsed().as_secs_f64();
    let tf = Instant::now();
    // Per neuron: choose lambda by held-out SSE over folds; weights per fold and on all data.
    let fits: Vec<CvFit> = (0..n)
        .into_par_iter()
        .map(|j| cv_ridge(&acc, j, &opts.lambdas, c, true))
        .collect();
    drop(acc);
    let secs_solve = tf.elapsed().as_secs_f64();

    // ---- Pass 3: the drive with full and held-out weights; the output stage.
    let t3 = Instant::now();
    let (s_full, s_fold) = drives(&mut runner, &sampler, &fits, k_folds, "gain", progress)?;
    secs_core += t3.elapsed().as_secs_f64();
    let t4 = Instant::now();
    let s_cv: Vec<f32> = (0..t_n * n).map(|i| s_fold[fold_of(i / n)][i]).collect();
    // s_full / s_cv hold the raw drives; each neuron's integrator time constant is chosen from
    // `tau_grid` by the same cross-validation.
    let mut taus = opts.tau_grid.clone();
    if !taus.iter().any(|&t| (t - opts.tau_s).abs() < 1e-9) {
        taus.push(opts.tau_s);
    }
    let gammas: Vec<f32> = taus
        .iter()
        .map(|&tau| (-1.0 / (tau * cc.frame_rate_hz)).exp() as f32)
        .collect();
    let stage2: Vec<([f32; 5], f64, f32, f64)> = (0..n)
        .into_par_iter()
        .map(|j| {
            let integrate = |src: &[f32], gm: f32| -> Vec<f32> {
                let mut acc = 0f32;
                (0..t_n)
                    .map(|t| {
                        acc = gm * acc + (1.0 - gm) * src[t * n + j];
                        acc
                    })
                    .collect()
            };
            let mut best: Option<([f32; 5], f64, f32, f64)> = None;
            for (&gm, &tau) in gammas.iter().zip(&taus) {
                let sfull = integrate(&s_full, gm);
                let scv = integrate(&s_cv, gm);
                let r = fit_stage2(
                    j, &sfull, &scv, &rr, pupil, &valid, &y, t_n, k_folds, &fold_of,
                );
                if best
                    .as_ref()
                    .is_none_or(|b| r.1 > b.1 || (b.1.is_nan() && !r.1.is_nan()))
                {
                    best = Some((r.0, r.1, gm, tau));
                }
            }
            best.expect("at least one tau")
        })
        .collect();
    #[allow(clippy::too_many_arguments)]
    fn fit_stage2(
        j: usize,
        s_full: &[f32],
        s_cv: &[f32],
        rr: &[f32],
        pupil: &[f32],
        valid: &[bool],
        y: &dyn Fn(usize, usize) -> f32,
        t_n: usize,
        k_folds: usize,
        fold_of: &dyn Fn(usize) -> usize,
    ) -> ([f32; 5], f64) {
        {
            let feats = |s: f32, t: usize| [s, s * rr[t], rr[t], pupil[t], 1.0f32];
            let mut g = vec![[0f64; 25]; k_folds];
            let mut b = vec![[0f64; 5]; k_folds];
            for t in 0..t_n {
                if !valid[t] {
                    continue;
                }
                let k = fold_of(t);
                let x = feats(s_full[t], t);
                let yv = y(t, j) as f64;
                for r in 0..5 {
                    b[k][r] += x[r] as f64 * yv;
                    for q in 0..5 {
                        g[k][r * 5 + q] += x[r] as f64 * x[q] as f64;
                    }
                }
            }
            let sum = |skip: Option<usize>| {
                let mut gs = vec![0f64; 25];
                let mut bs = vec![0f64; 5];
                for k in 0..k_folds {
                    if Some(k) == skip {
                        continue;
                    }
                    gs.iter_mut().zip(&g[k]).for_each(|(o, v)| *o += v);
                    bs.iter_mut().zip(&b[k]).for_each(|(o, v)| *o += v);
                }
                (gs, bs)
            };
            let solve = |gs: &[f64], bs: &[f64]| {
                let sc = (gs[0] + gs[6] + gs[12] + gs[18]) / 4.0;
                let pen = [
                    1e-4 * sc,
                    1e-4 * sc,
                    1e-4 * sc,
                    1e-4 * sc,
                    1e-9 * gs[24].max(1.0),
                ];
                ridge_solve(gs, bs, 5, &pen).unwrap_or_else(|| vec![0.0; 5])
            };
            let coef_fold: Vec<Vec<f64>> = (0..k_folds)
                .map(|k| {
                    let (gs, bs) = sum(Some(k));
                    solve(&gs, &bs)
                })
                .collect();
            let pred_cv: Vec<f32> = (0..t_n)
                .map(|t| {
                    let x = feats(s_cv[t], t);
                    let w = &coef_fold[fold_of(t)];
                    let v: f64 = x.iter().zip(w).map(|(a, b)| *a as f64 * b).sum();
                    v.max(0.0) as f32
                })
                .collect();
            let cc = pearson((0..t_n).map(|t| pred_cv[t]), (0..t_n).map(|t| y(t, j)));
            let (gs, bs) = sum(None);
            let w = solve(&gs, &bs);
            (
                [
                    w[0] as f32,
                    w[1] as f32,
                    w[2] as f32,
                    w[3] as f32,
                    w[4] as f32,
                ],
                cc,
            )
        }
    }
    let linear_heldout: Vec<f64> = stage2.iter().map(|s| s.1).collect();
    // The output stage (twin::glm): per neuron, fold k's parameters are fit on the other folds'
    // frames with fold k's drive and predict fold k's frames; the twin's on all frames.
    let out = OutputFit {
        n,
        t_n,
        valid: &valid,
        y: &y,
        run: &rr,
        pupil,
        fold_of: &fold_of,
        balance: &balance,
        k_folds,
        stride,
        rate_hz: cc.frame_rate_hz,
    };
    let mut fits = fits;
    let mut secs_joint = 0.0;
    let glm = match opts.readout {
        ReadoutKind::Linear => None,
        ReadoutKind::Glm => {
            let first: Vec<[f64; glm::N_PARAMS]> = (0..n)
                .into_par_iter()
                .map(|j| {
                    let yj = out.column_y(j);
                    let u = column(&s_full, n, j);
                    let x = out.series(&u, &yj, &[]);
                    glm::initial(&x, &|_| true, stage2[j].2 as f64)
                })
                .collect();
            let mut g = out.fit_all(&s_full, &s_fold, &first);
            // Joint refinement: Gauss–Newton steps on the feature weights through the fitted
            // output stage, each followed by a refit of that stage on the new drive.
            for pass in 0..opts.joint_passes {
                let tj = Instant::now();
                let thetas: Vec<[f64; glm::N_PARAMS]> = g.iter().map(|f| f.0).collect();
                let refit = gauss_newton(
                    &mut runner,
                    &sampler,
                    &fits,
                    &thetas,
                    &out,
                    &opts.lambdas,
                    &format!("joint {}", pass + 1),
                    progress,
                )?;
                let (sf, sk) = drives(
                    &mut runner,
                    &sampler,
                    &refit,
                    k_folds,
                    &format!("joint {} drive", pass + 1),
                    progress,
                )?;
                let next = out.fit_all(&sf, &sk, &thetas);
                // Keep the step only where it predicts held-out blocks better.
                for j in 0..n {
                    if next[j].1 > g[j].1 || !g[j].1.is_finite() {
                        g[j] = next[j];
                        fits[j] = refit[j].clone();
                    }
                }
                secs_joint += tj.elapsed().as_secs_f64();
            }
            Some(g)
        }
    };
    let secs_fit = secs_solve + t4.elapsed().as_secs_f64();

    let mut wf = vec![0f32; c * n];
    for (j, f) in fits.iter().enumerate() {
        for ch in 0..c {
            wf[ch * n + j] = f.full[ch] as f32;
        }
    }
    let mut coef: [Vec<f32>; 5] = Default::default();
    for (j, (w, ..)) in stage2.iter().enumerate() {
        for (i, v) in w.iter().enumerate() {
            coef[i].push(*v + if i == 4 { level[j] } else { 0.0 });
        }
    }
    let readout = Readout {
        n,
        c,
        taps,
        tap_w,
        wf,
        gamma: stage2.iter().map(|s| s.2).collect(),
        coef,
        glm: glm.as_ref().map(|g| {
            g.iter()
                .zip(&level)
                .map(|((th, _), &lv)| {
                    let mut p = th.map(|v| v as f32);
                    p[glm::OFFSET] += lv;
                    p
                })
                .collect()
        }),
        roi_ids: targets.roi_ids[..n].to_vec(),
    };
    let heldout: Vec<f64> = match &glm {
        Some(g) => g.iter().map(|(_, cv)| *cv).collect(),
        None => linear_heldout.clone(),
    };
    let chosen_tau_s: Vec<f64> = match &glm {
        Some(g) => g
            .iter()
            .map(|(th, _)| -1.0 / (cc.frame_rate_hz * th[glm::GAMMA].ln()))
            .collect(),
        None => stage2.iter().map(|s| s.3).collect(),
    };
    let core_proto = runner.core.proto().clone();
    let mut extra = vec![
        (
            super::evaluate::FIT_FAMILIES.to_string(),
            fit_families(&families).join(","),
        ),
        (
            super::evaluate::FIT_FRAMES.to_string(),
            session.n_frames.to_string(),
        ),
        (contract::key::MOUSE_ID.to_string(), session.mouse_id.clone()),
        (contract::key::SESSION_ID.to_string(), session.session_id.clone()),
        (
            contract::key::PROVENANCE.to_string(),
            format!(
                "rig twin adapt: core {} + readout fit on {} ({} frames, targets {:?}), tau {} s, {}-fold CV mean held-out r = {:.3}",
                core_path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                session.path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                t_n,
                targets.source,
                opts.tau_s,
                k_folds,
                metrics::nanmean(&heldout)
            ),
        ),
    ];
    extra.extend(
        cc.metadata
            .iter()
            .filter(|(k, _)| k == "twin.core_provenance" || k == contract::key::PROVENANCE)
            .map(|(_, v)| ("twin.core_provenance".to_string(), v.clone()))
            .take(1),
    );
    let model = build_twin(&core_proto, &cc, &readout, extra)?;
    secs_core += secs_pass2;
    let report = AdaptReport {
        core: core_path.display().to_string(),
        session: session.path.display().to_string(),
        target_source: targets.source,
        neurons: n,
        frames: t_n,
        feature_channels: c,
        folds: k_folds,
        tau_s: opts.tau_s,
        targets_detrended_s: if targets.source == TargetSource::Traces {
            opts.detrend_s.max(0.0)
        } else {
            0.0
        },
        mean_heldout_corr: metrics::nanmean(&heldout),
        median_heldout_corr: metrics::nanmedian(&heldout),
        heldout_corr: heldout,
        chosen_lambda: fits.iter().map(|f| f.lambda).collect(),
        chosen_tau_s,
        readout: opts.readout,
        median_linear_heldout_corr: metrics::nanmedian(&linear_heldout),
        roi_ids: readout.roi_ids.clone(),
        seconds_core: secs_core,
        seconds_fit: secs_fit,
        seconds_joint: secs_joint,
        seconds_total: t_start.elapsed().as_secs_f64(),
    };
    Ok((model, report, readout))
}

/// Bilinear samples of the feature map at each neuron's position.
struct Sampler<'a> {
    taps: &'a [i64],
    tap_w: &'a [f32],
    c: usize,
    p: usize,
}

impl Sampler<'_> {
    /// Neuron `j`'s feature vector [C] from the feature map `f` [C, P].
    #[inline]
    fn sample(&self, j: usize, f: &[f32], z: &mut [f32]) {
        let tp = &self.taps[j * 4..j * 4 + 4];
        let tw = &self.tap_w[j * 4..j * 4 + 4];
        for (ch, zc) in z.iter_mut().enumerate().take(self.c) {
            let base = ch * self.p;
            *zc = tw[0] * f[base + tp[0] as usize]
                + tw[1] * f[base + tp[1] as usize]
                + tw[2] * f[base + tp[2] as usize]
                + tw[3] * f[base + tp[3] as usize];
        }
    }
}

/// Column `j` of a [T, N] row-major matrix.
fn column(src: &[f32], n: usize, j: usize) -> Vec<f32> {
    src.iter().skip(j).step_by(n).copied().collect()
}

/// One core pass: every neuron's drive w . z(t) [T, N] under its full weights and under each
/// fold's (fit without that fold's block). The output stage of fold k is fit and scored on the
/// latter, so no held-out frame leaks into it.
fn drives(
    runner: &mut Runner,
    sm: &Sampler,
    fits: &[CvFit],
    k_folds: usize,
    phase: &str,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<(Vec<f32>, Vec<Vec<f32>>), TwinError> {
    let (n, c, t_n) = (fits.len(), sm.c, runner.data.n_frames);
    let wfull: Vec<f32> = fits
        .iter()
        .flat_map(|f| f.full[..c].iter().map(|&v| v as f32))
        .collect();
    let wfold: Vec<Vec<f32>> = (0..k_folds)
        .map(|k| {
            fits.iter()
                .flat_map(|f| f.per_fold[k][..c].iter().map(|&v| v as f32))
                .collect()
        })
        .collect();
    let mut s_full = vec![0f32; t_n * n];
    let mut s_fold = vec![vec![0f32; t_n * n]; k_folds];
    let mut z = vec![0f32; c];
    let mut done = 0u64;
    runner.run(
        |t, f| {
            for j in 0..n {
                sm.sample(j, f, &mut z);
                let dot = |w: &[f32]| -> f32 {
                    w[j * c..(j + 1) * c]
                        .iter()
                        .zip(&z)
                        .map(|(a, b)| a * b)
                        .sum()
                };
                s_full[t * n + j] = dot(&wfull);
                for (k, wk) in wfold.iter().enumerate() {
                    s_fold[k][t * n + j] = dot(wk);
                }
            }
            Ok(())
        },
        &mut |dd| {
            done += dd;
            progress(phase, done, t_n as u64);
        },
    )?;
    Ok((s_full, s_fold))
}

/// What the output stage (`twin::glm`) is fit on, besides the drive.
struct OutputFit<'a> {
    n: usize,
    t_n: usize,
    valid: &'a [bool],
    y: &'a (dyn Fn(usize, usize) -> f32 + Sync),
    run: &'a [f32],
    pupil: &'a [f32],
    fold_of: &'a (dyn Fn(usize) -> usize + Sync),
    /// Per-frame weights [T, N] (`family_balance`).
    balance: &'a [f32],
    k_folds: usize,
    stride: usize,
    rate_hz: f64,
}

impl OutputFit<'_> {
    /// Neuron `j`'s targets, NaN where a frame is not valid.
    fn column_y(&self, j: usize) -> Vec<f32> {
        (0..self.t_n)
            .map(|t| {
                if self.valid[t] {
                    (self.y)(t, j)
                } else {
                    f32::NAN
                }
            })
            .collect()
    }

    fn series<'s>(&'s self, u: &'s [f32], y: &'s [f32], w: &'s [f32]) -> glm::Series<'s> {
        glm::Series {
            u,
            run: self.run,
            pupil: self.pupil,
            y,
            weight: w,
        }
    }

    /// Every neuron's output stage from `init`: fold k's fit on the other blocks with fold k's
    /// drive predicts block k (the held-out correlation), and the twin's on all frames.
    fn fit_all(
        &self,
        s_full: &[f32],
        s_fold: &[Vec<f32>],
        init: &[[f64; glm::N_PARAMS]],
    ) -> Vec<([f64; glm::N_PARAMS], f64)> {
        (0..self.n)
            .into_par_iter()
            .map(|j| {
                let yj = self.column_y(j);
                let wj = column(self.balance, self.n, j);
                let mut pred = vec![f32::NAN; self.t_n];
                let mut out = vec![0f32; self.t_n];
                for (k, uk) in s_fold.iter().enumerate().take(self.k_folds) {
                    let u = column(uk, self.n, j);
                    let x = self.series(&u, &yj, &wj);
                    let train = |t: usize| (self.fold_of)(t) != k;
                    let th = glm::fit(&x, &train, init[j], self.stride, self.rate_hz);
                    glm::predict(&th, &x, &mut out);
                    for t in 0..self.t_n {
                        if (self.fold_of)(t) == k {
                            pred[t] = out[t];
                        }
                    }
                }
                let cv = pearson(pred.iter().copied(), yj.iter().copied());
                let u = column(s_full, self.n, j);
                let x = self.series(&u, &yj, &wj);
                (
                    glm::fit(&x, &|_| true, init[j], self.stride, self.rate_hz),
                    cv,
                )
            })
            .collect()
    }
}

/// One Gauss–Newton step on the feature weights through each neuron's output stage `thetas`,
/// as a ridge regression (penalty by cross-validation over the blocks, as the linear fit): the
/// prediction linearised at the full-data weights w is y^ + J (w' - w), J = dy^/dw carried
/// forward through the temporal kernel, the softplus and the indicator, so w' is the ridge
/// solution for the working response y - y^ + J w. The per-fold solutions share the full-data
/// linearisation point; their training blocks alone decide the step.
#[allow(clippy::too_many_arguments)]
fn gauss_newton(
    runner: &mut Runner,
    sm: &Sampler,
    fits: &[CvFit],
    thetas: &[[f64; glm::N_PARAMS]],
    out: &OutputFit,
    lambdas: &[f64],
    phase: &str,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Vec<CvFit>, TwinError> {
    let (n, c, t_n) = (out.n, sm.c, out.t_n);
    let w: Vec<f32> = fits
        .iter()
        .flat_map(|f| f.full[..c].iter().map(|&v| v as f32))
        .collect();
    let mut acc = BlockGram::new(n, c, out.k_folds);
    // Per neuron: features of the last three frames (ring), dy^/dw, and the scalar recursion.
    let mut zh = vec![0f32; n * 3 * c];
    let mut dsdw = vec![0f32; n * c];
    let mut st = vec![[0f64; 3]; n]; // s, u(t-1), u(t-2)
    let mut done = 0u64;
    runner.run(
        |t, f| {
            let slot = t % 3;
            let (s1, s2) = ((t + 2) % 3, (t + 1) % 3);
            let used = t % out.stride == 0 && out.valid[t];
            if used {
                acc.begin_row((out.fold_of)(t));
            }
            let (r, pu) = (out.run[t] as f64, out.pupil[t] as f64);
            for j in 0..n {
                let th = &thetas[j];
                let h = &mut zh[j * 3 * c..(j + 1) * 3 * c];
                sm.sample(j, f, &mut h[slot * c..(slot + 1) * c]);
                let wj = &w[j * c..(j + 1) * c];
                let u0: f64 = wj
                    .iter()
                    .zip(&h[slot * c..(slot + 1) * c])
                    .map(|(a, b)| (a * b) as f64)
                    .sum();
                let [s, u1, u2] = st[j];
                let v = th[glm::A0] * u0
                    + th[glm::A0 + 1] * u1
                    + th[glm::A0 + 2] * u2
                    + th[glm::BR] * r
                    + th[glm::BP] * pu
                    + th[glm::BIAS];
                let m = 1.0 + th[glm::GAIN] * r;
                let gm = th[glm::GAMMA];
                let s = gm * s + (1.0 - gm) * glm::softplus(v) * m;
                st[j] = [s, u0, u1];
                let slope = ((1.0 - gm) * m * glm::sigmoid(v)) as f32;
                let (a0, a1, a2) = (
                    th[glm::A0] as f32 * slope,
                    th[glm::A0 + 1] as f32 * slope,
                    th[glm::A0 + 2] as f32 * slope,
                );
                let g32 = gm as f32;
                let dj = &mut dsdw[j * c..(j + 1) * c];
                for ch in 0..c {
                    dj[ch] = g32 * dj[ch]
                        + a0 * h[slot * c + ch]
                        + a1 * h[s1 * c + ch]
                        + a2 * h[s2 * c + ch];
                }
                if used {
                    let k = th[glm::SCALE] as f32;
                    let yhat = th[glm::SCALE] * s + th[glm::OFFSET];
                    let sw = out.balance[t * n + j].sqrt();
                    let (row, yv) = acc.row(j);
                    let mut jw = 0f32;
                    for ch in 0..c {
                        row[ch] = k * dj[ch];
                        jw += row[ch] * wj[ch];
                    }
                    *yv = sw * (((out.y)(t, j) as f64 - yhat) as f32 + jw);
                    row.iter_mut().for_each(|v| *v *= sw);
                }
            }
            if used {
                acc.end_row();
            }
            Ok(())
        },
        &mut |dd| {
            done += dd;
            progress(phase, done, t_n as u64);
        },
    )?;
    acc.finish();
    Ok((0..n)
        .into_par_iter()
        .map(|j| cv_ridge(&acc, j, lambdas, c, false))
        .collect())
}

/// Subtracts from each column of a [t, r] matrix its centred running mean over `w` rows (NaN
/// entries are skipped and stay NaN).
pub fn detrend(data: &[f32], t: usize, r: usize, w: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; t * r];
    let mut cs = vec![0f64; t + 1];
    let mut cn = vec![0u32; t + 1];
    for j in 0..r {
        for i in 0..t {
            let v = data[i * r + j];
            let ok = v.is_finite();
            cs[i + 1] = cs[i] + if ok { v as f64 } else { 0.0 };
            cn[i + 1] = cn[i] + ok as u32;
        }
        for i in 0..t {
            let v = data[i * r + j];
            if !v.is_finite() {
                continue;
            }
            let a = i.saturating_sub(w / 2);
            let b = (i + w / 2 + 1).min(t);
            let n = (cn[b] - cn[a]).max(1) as f64;
            out[i * r + j] = (v as f64 - (cs[b] - cs[a]) / n) as f32;
        }
    }
    out
}

/// Ridge maps of every neuron over feature-map positions; returns each neuron's peak position
/// (y, x) in feature-map pixels (sub-pixel, centroid of the positive weights around the peak).
fn fit_positions(
    x: ArrayView2<f32>,
    y: ArrayView2<f32>,
    fh: usize,
    fw: usize,
    lam_rel: f64,
) -> Vec<(f32, f32)> {
    let p = fh * fw;
    let d = p + 1;
    let rows = x.nrows() as f64;
    // Centre (the intercept column then carries nothing): work with centred columns.
    let mean_x: Vec<f32> = (0..p).map(|q| x.column(q).sum() / rows as f32).collect();
    let xc = Array2::from_shape_fn((x.nrows(), p), |(t, q)| x[(t, q)] - mean_x[q]);
    let mean_y: Vec<f32> = (0..y.ncols())
        .map(|j| y.column(j).sum() / rows as f32)
        .collect();
    let yc = Array2::from_shape_fn(y.dim(), |(t, j)| y[(t, j)] - mean_y[j]);
    let g = xc.t().dot(&xc);
    let b = xc.t().dot(&yc);
    let _ = d;
    let scale = (0..p).map(|i| g[(i, i)] as f64).sum::<f64>() / p as f64;
    let g64: Vec<f64> = g.iter().map(|&v| v as f64).collect();
    let pen = vec![lam_rel * scale.max(1e-12); p];
    // One factorisation for all neurons: solve column by column with the same Cholesky.
    let chol = cholesky(&g64, p, &pen);
    (0..y.ncols())
        .into_par_iter()
        .map(|j| {
            let bj: Vec<f64> = (0..p).map(|q| b[(q, j)] as f64).collect();
            let w = match &chol {
                Some(l) => chol_solve(l, &bj, p),
                None => bj.clone(),
            };
            peak(&w, fh, fw)
        })
        .collect()
}

/// Peak of a smoothed map and the centroid of the positive weights in its 3x3 neighbourhood.
fn peak(w: &[f64], fh: usize, fw: usize) -> (f32, f32) {
    let at = |y: isize, x: isize| -> f64 {
        if y < 0 || x < 0 || y >= fh as isize || x >= fw as isize {
            0.0
        } else {
            w[y as usize * fw + x as usize]
        }
    };
    let mut best = (f64::NEG_INFINITY, 0isize, 0isize);
    for yy in 0..fh as isize {
        for xx in 0..fw as isize {
            let mut s = 0.0;
            for dy in -1..=1 {
                for dx in -1..=1 {
                    s += at(yy + dy, xx + dx);
                }
            }
            if s > best.0 {
                best = (s, yy, xx);
            }
        }
    }
    let (mut sw, mut sy, mut sx) = (0f64, 0f64, 0f64);
    for dy in -1..=1 {
        for dx in -1..=1 {
            let v = at(best.1 + dy, best.2 + dx).max(0.0);
            sw += v;
            sy += v * (best.1 + dy) as f64;
            sx += v * (best.2 + dx) as f64;
        }
    }
    if sw > 0.0 {
        (
            (sy / sw).clamp(0.0, (fh - 1) as f64) as f32,
            (sx / sw).clamp(0.0, (fw - 1) as f64) as f32,
        )
    } else {
        (best.1 as f32, best.2 as f32)
    }
}

/// Flat indices and weights of the 4 bilinear taps of each position.
pub fn bilinear_taps(pos: &[(f32, f32)], fh: usize, fw: usize) -> (Vec<i64>, Vec<f32>) {
    let mut idx = Vec::with_capacity(pos.len() * 4);
    let mut wt = Vec::with_capacity(pos.len() * 4);
    for &(py, px) in pos {
        let y0 = (py.floor() as usize).min(fh - 1);
        let x0 = (px.floor() as usize).min(fw - 1);
        let y1 = (y0 + 1).min(fh - 1);
        let x1 = (x0 + 1).min(fw - 1);
        let (fy, fx) = (py - y0 as f32, px - x0 as f32);
        for (yy, xx, w) in [
            (y0, x0, (1.0 - fy) * (1.0 - fx)),
            (y0, x1, (1.0 - fy) * fx),
            (y1, x0, fy * (1.0 - fx)),
            (y1, x1, fy * fx),
        ] {
            idx.push((yy * fw + xx) as i64);
            wt.push(w);
        }
    }
    (idx, wt)
}

/// Appends a readout to a core graph: the complete twin (core unchanged, `features` no longer an
/// output, `response` and `state_out.readout` added; behaviour added if the core lacks it).
pub fn build_twin(
    core: &pb::ModelProto,
    cc: &Contract,
    r: &Readout,
    extra_meta: Vec<(String, String)>,
) -> Result<pb::ModelProto, TwinError> {
    let [c, fh, fw] = cc.features.expect("core");
    let p = fh * fw;
    let n = r.n;
    let mut graph = core.graph.clone().unwrap_or_default();
    graph.output.retain(|o| o.name != FEATURES);
    graph.name = "twinrig_twin".into();
    let mut g = GraphBuilder::extend(graph, "readout_");
    let b = Dim::Sym("batch".into());
    let mut channels = cc.behavior_channels.clone();
    if channels.is_empty() {
        channels = vec!["running_speed".into(), "pupil_diameter".into()];
        g.input(BEHAVIOR, FLOAT, &[b.clone(), Dim::Fixed(2)]);
    }
    let ch_ix = |name: &str| {
        channels.iter().position(|c| c == name).ok_or_else(|| {
            TwinError::Adapt(format!(
                "the core's behaviour channels [{}] lack `{name}`, which the readout uses",
                channels.join(", ")
            ))
        })
    };
    let (ri, pi) = (ch_ix("running_speed")?, ch_ix("pupil_diameter")?);
    let sin = format!("{STATE_IN}readout");
    let sout = format!("{STATE_OUT}readout");
    g.input(&sin, FLOAT, &[b.clone(), Dim::Fixed(n as i64)]);

    // Channel-last rows, so that gathering a neuron's 4 taps copies contiguous rows of C values.
    let shape = g.init_i64("shape_bcp", &[3], &[-1, c as i64, p as i64]);
    let fr = g.node("Reshape", &[FEATURES, &shape], vec![], None);
    let ft = g.node(
        "Transpose",
        &[&fr],
        vec![attr_ints("perm", &[0, 2, 1])],
        None,
    );
    let idx = g.init_i64("taps", &[n * 4], &r.taps);
    let gathered = g.node("Gather", &[&ft, &idx], vec![attr_i("axis", 1)], None); // [B, 4N, C]
    let shape3 = g.init_i64("shape_bn4c", &[3], &[-1, n as i64, 4 * c as i64]);
    let rows = g.node("Reshape", &[&gathered, &shape3], vec![], None); // [B, N, 4C]
                                                                       // Combined weights W[n, k, c] = tap weight(n, k) * feature weight(c, n).
    let mut wcomb = vec![0f32; n * 4 * c];
    for j in 0..n {
        for k in 0..4 {
            for ch in 0..c {
                wcomb[(j * 4 + k) * c + ch] = r.tap_w[j * 4 + k] * r.wf[ch * n + j];
            }
        }
    }
    let wc = g.init_f32("readout_w", &[n, 4 * c], &wcomb);
    let zw = g.binary("Mul", &rows, &wc);
    let ax2 = g.init_i64("axis2", &[1], &[2]);
    // Every neuron's drive w . z, [B, N].
    let drive = g.node("ReduceSum", &[&zw, &ax2], vec![attr_i("keepdims", 0)], None);
    // Behaviour: r = speed / (speed + 10), pupil.
    let ax1b = g.init_i64("axis1b", &[1], &[1]);
    let sl = |g: &mut GraphBuilder, i: usize| {
        let st = g.init_i64("beh_start", &[1], &[i as i64]);
        let en = g.init_i64("beh_end", &[1], &[i as i64 + 1]);
        g.node("Slice", &[BEHAVIOR, &st, &en, &ax1b], vec![], None)
    };
    let speed = sl(&mut g, ri);
    let pup = sl(&mut g, pi);
    let zero = g.scalar("zero", 0.0);
    let speed = g.binary("Max", &speed, &zero);
    let half = g.scalar("run_half", RUN_HALF_CM_S);
    let den = g.binary("Add", &speed, &half);
    let run = g.binary("Div", &speed, &den);
    let mut states = cc.states.clone();
    states.push(StateSpec {
        name: "readout".into(),
        shape: vec![n],
    });
    if let Some(th) = &r.glm {
        glm_stage(&mut g, th, &drive, &run, &pup, &b);
        states.push(StateSpec {
            name: GLM_LAGS.into(),
            shape: vec![2, n],
        });
    } else {
        linear_stage(&mut g, r, &drive, &run, &pup);
    }
    g.output(RESPONSE, FLOAT, &[b.clone(), Dim::Fixed(n as i64)]);
    g.output(&sout, FLOAT, &[b, Dim::Fixed(n as i64)]);

    let mut meta: Vec<(String, String)> = extra_meta;
    meta.extend(
        cc.metadata
            .iter()
            .filter(|(k, _)| !k.starts_with("twin.") || k == "twin.core_params")
            .cloned(),
    );
    let tc = Contract {
        kind: Kind::Twin,
        version: contract::CONTRACT_VERSION,
        frame_rate_hz: cc.frame_rate_hz,
        height: cc.height,
        width: cc.width,
        behavior_channels: channels,
        n_neurons: n,
        roi_ids: r.roi_ids.clone(),
        features: None,
        states,
        fixed_batch: None,
        metadata: meta,
    };
    Ok(super::onnx::model(
        g.graph,
        &contract::metadata(&tc),
        "twinrig twin: shared core + per-neuron readout (docs/twin-contract.md)",
    ))
}

/// The linear output stage on the drive: the indicator integrates the drive
/// (`state_in.readout`), then gain and offsets on running and pupil, then ReLU.
fn linear_stage(g: &mut GraphBuilder, r: &Readout, drive: &str, run: &str, pup: &str) {
    let n = r.n;
    let sin = format!("{STATE_IN}readout");
    let sout = format!("{STATE_OUT}readout");
    let gm = g.init_f32("gamma", &[n], &r.gamma);
    let one_minus: Vec<f32> = r.gamma.iter().map(|g| 1.0 - g).collect();
    let gm1 = g.init_f32("one_minus_gamma", &[n], &one_minus);
    let keep = g.binary("Mul", &sin, &gm);
    let add = g.binary("Mul", drive, &gm1);
    let s = g.node("Add", &[&keep, &add], vec![], Some(&sout));
    let ca = g.init_f32("coef_a", &[n], &r.coef[0]);
    let cb = g.init_f32("coef_b", &[n], &r.coef[1]);
    let ccr = g.init_f32("coef_c", &[n], &r.coef[2]);
    let ce = g.init_f32("coef_e", &[n], &r.coef[3]);
    let cf = g.init_f32("coef_f", &[n], &r.coef[4]);
    let rb = g.binary("Mul", run, &cb); // [B, N]
    let gain = g.binary("Add", &rb, &ca);
    let sg = g.binary("Mul", &s, &gain);
    let rc = g.binary("Mul", run, &ccr);
    let pe = g.binary("Mul", pup, &ce);
    let acc = g.binary("Add", &sg, &rc);
    let acc = g.binary("Add", &acc, &pe);
    let acc = g.binary("Add", &acc, &cf);
    g.node("Relu", &[&acc], vec![], Some(RESPONSE));
}

/// The GLM output stage (`twin::glm`) on the drive: lagged drives in `state_in.readout_lags`
/// ([B, 2, N]: u(t-1), u(t-2)), softplus written as relu(v) + log(1 + exp(-|v|)) (ops tract-cuda
/// translates, and no overflow for any v), the indicator in `state_in.readout`.
fn glm_stage(
    g: &mut GraphBuilder,
    th: &[[f32; glm::N_PARAMS]],
    drive: &str,
    run: &str,
    pup: &str,
    b: &Dim,
) {
    let n = th.len();
    let col = |i: usize| -> Vec<f32> { th.iter().map(|p| p[i]).collect() };
    let lin = format!("{STATE_IN}{GLM_LAGS}");
    let lout = format!("{STATE_OUT}{GLM_LAGS}");
    g.input(
        &lin,
        FLOAT,
        &[b.clone(), Dim::Fixed(2), Dim::Fixed(n as i64)],
    );
    let shape_bn = g.init_i64("shape_bn", &[2], &[-1, n as i64]);
    let shape_b1n = g.init_i64("shape_b1n", &[3], &[-1, 1, n as i64]);
    let ax1 = g.init_i64("lag_axis", &[1], &[1]);
    let lag = |g: &mut GraphBuilder, i: i64| {
        let st = g.init_i64("lag_start", &[1], &[i]);
        let en = g.init_i64("lag_end", &[1], &[i + 1]);
        let sl = g.node("Slice", &[&lin, &st, &en, &ax1], vec![], None);
        g.node("Reshape", &[&sl, &shape_bn], vec![], None)
    };
    let (u1, u2) = (lag(g, 0), lag(g, 1));
    let term = |g: &mut GraphBuilder, x: &str, i: usize, name: &str| {
        let w = g.init_f32(name, &[n], &col(i));
        g.binary("Mul", x, &w)
    };
    let mut v = term(g, drive, glm::A0, "glm_a0");
    for (x, i, name) in [
        (u1.as_str(), glm::A0 + 1, "glm_a1"),
        (u2.as_str(), glm::A0 + 2, "glm_a2"),
        (run, glm::BR, "glm_br"),
        (pup, glm::BP, "glm_bp"),
    ] {
        let t = term(g, x, i, name);
        v = g.binary("Add", &v, &t);
    }
    let bias = g.init_f32("glm_bias", &[n], &col(glm::BIAS));
    let v = g.binary("Add", &v, &bias);
    let pos = g.node("Relu", &[&v], vec![], None);
    let av = g.node("Abs", &[&v], vec![], None);
    let nv = g.node("Neg", &[&av], vec![], None);
    let ev = g.node("Exp", &[&nv], vec![], None);
    let one = g.scalar("one", 1.0);
    let e1 = g.binary("Add", &ev, &one);
    let lg = g.node("Log", &[&e1], vec![], None);
    let sp = g.binary("Add", &pos, &lg);
    let gr = term(g, run, glm::GAIN, "glm_gain");
    let m = g.binary("Add", &gr, &one);
    let q = g.binary("Mul", &sp, &m);
    let sin = format!("{STATE_IN}readout");
    let sout = format!("{STATE_OUT}readout");
    let keep = term(g, &sin, glm::GAMMA, "glm_gamma");
    let one_minus: Vec<f32> = th.iter().map(|p| 1.0 - p[glm::GAMMA]).collect();
    let gm1 = g.init_f32("glm_one_minus_gamma", &[n], &one_minus);
    let add = g.binary("Mul", &q, &gm1);
    let s = g.node("Add", &[&keep, &add], vec![], Some(&sout));
    let ys = term(g, &s, glm::SCALE, "glm_scale");
    let off = g.init_f32("glm_offset", &[n], &col(glm::OFFSET));
    g.node("Add", &[&ys, &off], vec![], Some(RESPONSE));
    let u0 = g.node("Reshape", &[drive, &shape_b1n], vec![], None);
    let u1r = g.node("Reshape", &[&u1, &shape_b1n], vec![], None);
    g.node("Concat", &[&u0, &u1r], vec![attr_i("axis", 1)], Some(&lout));
    g.output(
        &lout,
        FLOAT,
        &[b.clone(), Dim::Fixed(2), Dim::Fixed(n as i64)],
    );
}

/// The stimulus family each imaging frame's response belongs to: the kind of the clip on screen,
/// carried through the gray that follows it (the calcium is still that clip's); -1 before the
/// first clip.
fn frame_families(session: &SessionData) -> Vec<i16> {
    let mut last = -1i16;
    session
        .shown
        .iter()
        .map(|&(clip, _)| {
            if clip >= 0 {
                last = session.kinds.get(clip as usize).map_or(-1, |&k| k as i16);
            }
            last
        })
        .collect()
}

/// Per frame and neuron [T, N], the weight that gives every stimulus family the same say per
/// frame in the fit: 1 / the neuron's response variance over that family's frames, scaled to a
/// mean of 1. Gratings drive responses many times larger than natural clips; unweighted, their
/// squared errors would decide the fit and the twin would trade natural-clip accuracy for them.
/// All ones when the session showed one family.
fn family_balance(
    fam: &[i16],
    valid: &[bool],
    y: &dyn Fn(usize, usize) -> f32,
    n: usize,
) -> Vec<f32> {
    let t_n = fam.len();
    let mut ids: Vec<i16> = fam.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut w = vec![1f32; t_n * n];
    if ids.len() < 2 {
        return w;
    }
    let slot = |f: i16| ids.binary_search(&f).expect("listed");
    for j in 0..n {
        let mut acc = vec![(0f64, 0f64, 0f64); ids.len()];
        for t in (0..t_n).filter(|&t| valid[t]) {
            let v = y(t, j) as f64;
            let a = &mut acc[slot(fam[t])];
            a.0 += 1.0;
            a.1 += v;
            a.2 += v * v;
        }
        let inv: Vec<f64> = acc
            .iter()
            .map(|&(k, s1, s2)| {
                let var = if k > 1.0 {
                    (s2 - s1 * s1 / k) / (k - 1.0)
                } else {
                    0.0
                };
                if var > 1e-12 {
                    1.0 / var
                } else {
                    0.0
                }
            })
            .collect();
        let (mut tot, mut cnt) = (0f64, 0f64);
        for t in (0..t_n).filter(|&t| valid[t]) {
            tot += inv[slot(fam[t])];
            cnt += 1.0;
        }
        let norm = if tot > 0.0 { cnt / tot } else { 1.0 };
        for t in 0..t_n {
            w[t * n + j] = (inv[slot(fam[t])] * norm) as f32;
        }
    }
    w
}

/// The stimulus families the session showed (`frame_families` of its frames), as
/// `twin::evaluate::FAMILIES` names: what `rig twin evaluate` calls in family.
fn fit_families(families: &[i16]) -> Vec<String> {
    super::evaluate::FAMILIES
        .iter()
        .enumerate()
        .filter(|&(code, _)| families.contains(&(code as i16)))
        .map(|(_, f)| f.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::rng::FastRng;
    use crate::twin::core::{build_core, core_contract, CoreParams};
    use crate::twin::onnx::write_model;

    /// The GLM output stage written as ONNX and stepped by tract computes what `twin::glm`
    /// computes on the same drive: the twin in the loop is the model that was fit.
    #[test]
    fn glm_twin_steps_like_the_fitted_model() {
        let cfg = crate::config::RigConfig::embedded_sim();
        let mut cp = CoreParams::for_config(&cfg);
        cp.orientations = 2;
        cp.sf_cpd = vec![0.04];
        let core = build_core(&cp);
        let cc = core_contract(&cp);
        let [c, fh, fw] = cc.features.expect("core");
        let (p, n, frames) = (fh * fw, 5usize, 40usize);
        let mut rng = FastRng::new(3);
        let positions: Vec<(f32, f32)> = (0..n)
            .map(|_| {
                (
                    rng.uniform() as f32 * (fh - 1) as f32,
                    rng.uniform() as f32 * (fw - 1) as f32,
                )
            })
            .collect();
        let (taps, tap_w) = bilinear_taps(&positions, fh, fw);
        let wf: Vec<f32> = (0..c * n).map(|_| rng.normal() as f32).collect();
        let th: Vec<[f64; glm::N_PARAMS]> = (0..n)
            .map(|_| {
                let mut t = [0f64; glm::N_PARAMS];
                t[glm::A0] = 0.5 + rng.uniform();
                t[glm::A0 + 1] = 0.3 * rng.normal();
                t[glm::A0 + 2] = 0.2 * rng.normal();
                t[glm::BR] = rng.normal();
                t[glm::BP] = 0.2 * rng.normal();
                t[glm::BIAS] = rng.normal();
                t[glm::GAIN] = rng.uniform();
                t[glm::SCALE] = 0.5 + rng.uniform();
                t[glm::OFFSET] = 0.1 * rng.normal();
                t[glm::GAMMA] = 0.8 + 0.15 * rng.uniform();
                t
            })
            .collect();
        let r = Readout {
            n,
            c,
            taps: taps.clone(),
            tap_w: tap_w.clone(),
            wf: wf.clone(),
            gamma: vec![0.9; n],
            coef: Default::default(),
            glm: Some(th.iter().map(|t| t.map(|v| v as f32)).collect()),
            roi_ids: (0..n as u32).collect(),
        };
        let model = build_twin(&core, &cc, &r, vec![]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (core_path, twin_path) = (dir.path().join("core.onnx"), dir.path().join("twin.onnx"));
        write_model(&core, &core_path).unwrap();
        write_model(&model, &twin_path).unwrap();
        let mut core_rt = Twin::load(&core_path, Backend::Cpu).unwrap();
        let mut twin_rt = Twin::load(&twin_path, Backend::Cpu).unwrap();
        assert_eq!(twin_rt.contract().states.len(), 3, "core, readout, lags");
        let (mut cs, mut ts) = (core_rt.new_state(), twin_rt.new_state());
        let hw = cp.height * cp.width;
        let mut feat = vec![0f32; c * p];
        let mut got = vec![vec![0f32; n]; frames];
        let mut drive = vec![vec![0f32; frames]; n];
        let (mut run, mut pupil) = (vec![0f32; frames], vec![0f32; frames]);
        let sm = Sampler {
            taps: &taps,
            tap_w: &tap_w,
            c,
            p,
        };
        let mut z = vec![0f32; c];
        for t in 0..frames {
            let stim: Vec<f32> = (0..hw).map(|_| (255.0 * rng.uniform()) as f32).collect();
            let speed = (30.0 * rng.uniform()) as f32;
            let beh = [speed, 1.0 + rng.uniform() as f32];
            run[t] = run_transform(speed);
            pupil[t] = beh[1];
            core_rt.step(&mut cs, &stim, &[], &mut feat).unwrap();
            twin_rt.step(&mut ts, &stim, &beh, &mut got[t]).unwrap();
            for (j, d) in drive.iter_mut().enumerate() {
                sm.sample(j, &feat, &mut z);
                d[t] = (0..c).map(|ch| wf[ch * n + j] * z[ch]).sum();
            }
        }
        for j in 0..n {
            let y = vec![0f32; frames];
            let x = glm::Series {
                u: &drive[j],
                run: &run,
                pupil: &pupil,
                y: &y,
                weight: &[],
            };
            let mut want = vec![0f32; frames];
            glm::predict(&th[j], &x, &mut want);
            for t in 0..frames {
                let (a, b) = (got[t][j], want[t]);
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "neuron {j} frame {t}: twin {a}, model {b}"
                );
            }
        }
    }
}
