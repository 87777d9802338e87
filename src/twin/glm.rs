//! The readout's output stage: each neuron's linear drive through its own temporal kernel, a
//! softplus firing-rate nonlinearity with running gain, and the calcium indicator's decay, fit
//! jointly per neuron by Levenberg–Marquardt on the measured dF/F.
//!
//! For neuron n, with u(t) = w_n . z_n(t) its linear drive (the feature weights of `adapt`),
//! r(t) the running transform and p(t) the pupil:
//!
//!   v(t) = a0 u(t) + a1 u(t-1) + a2 u(t-2) + br r(t) + bp p(t) + b     temporal kernel, 3 taps
//!   q(t) = softplus(v(t)) (1 + g r(t))                                 rate, gain by running
//!   s(t) = gamma s(t-1) + (1 - gamma) q(t)                             indicator decay
//!   y(t) = k s(t) + f                                                  dF/F scale and offset
//!
//! Why this shape: a neuron's rate is a thresholded, expansive function of its drive, and the
//! indicator integrates the rate, not the drive. A readout that integrates first and rectifies
//! after (the linear readout) fits low-contrast natural clips by their mean slope and then
//! under-predicts high-contrast stimuli it never saw (gratings, sparse noise): the nonlinearity
//! must sit before the integrator to extrapolate. gamma is fit as a continuous parameter, so each
//! neuron gets its own indicator time constant, and the three taps its own latency.
//!
//! The fit is exact least squares on the recursion: derivatives of s(t) with respect to every
//! parameter are carried forward in time (forward-mode differentiation of a linear recursion),
//! so one pass over the frames gives the Gauss–Newton normal equations. Ten parameters per
//! neuron make each iteration cost a few operations per frame; all neurons run in parallel.

// Index loops over small fixed matrices read more clearly than zipped iterators here.
#![allow(clippy::needless_range_loop)]

/// Parameters per neuron, in this order.
pub const N_PARAMS: usize = 10;
/// Indices into the parameter vector.
pub const A0: usize = 0;
pub const BR: usize = 3;
pub const BP: usize = 4;
pub const BIAS: usize = 5;
pub const GAIN: usize = 6;
pub const SCALE: usize = 7;
pub const OFFSET: usize = 8;
pub const GAMMA: usize = 9;

/// Time constants the indicator decay may take, seconds (GCaMP6f to slow GCaMP6s and beyond).
pub const TAU_RANGE_S: (f64, f64) = (0.2, 4.0);

/// One neuron's series on the imaging frame clock. `y` is NaN where the frame has no valid
/// measurement (it is then neither fit nor scored).
pub struct Series<'a> {
    pub u: &'a [f32],
    pub run: &'a [f32],
    pub pupil: &'a [f32],
    pub y: &'a [f32],
    /// Weight of each frame's squared error (empty: all 1).
    pub weight: &'a [f32],
}

impl Series<'_> {
    #[inline]
    fn w(&self, t: usize) -> f64 {
        self.weight.get(t).map_or(1.0, |&w| w as f64)
    }
}

/// log(1 + e^x), without overflow for any x.
#[inline]
pub fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// The derivative of `softplus`, without overflow for any x.
#[inline]
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// The leak of the indicator for a time constant in seconds at `rate_hz` frames per second.
pub fn gamma_of(tau_s: f64, rate_hz: f64) -> f64 {
    (-1.0 / (tau_s * rate_hz)).exp()
}

/// Predicted dF/F for every frame.
pub fn predict(th: &[f64; N_PARAMS], x: &Series, out: &mut [f32]) {
    run(th, x, |t, yhat, _, _| out[t] = yhat as f32, false);
}

/// Steps the model over the series, calling `f(t, yhat, s, ds/dparams)`; with `grad` false the
/// derivative slice is empty (the cheaper pass used to score a step).
#[inline]
fn run(th: &[f64; N_PARAMS], x: &Series, mut f: impl FnMut(usize, f64, f64, &[f64]), grad: bool) {
    let gm = th[GAMMA];
    let (mut s, mut u1, mut u2) = (0f64, 0f64, 0f64);
    let mut ds = [0f64; N_PARAMS];
    let mut dy = [0f64; N_PARAMS];
    for t in 0..x.u.len() {
        let (u0, r, p) = (x.u[t] as f64, x.run[t] as f64, x.pupil[t] as f64);
        let v = th[A0] * u0 + th[1] * u1 + th[2] * u2 + th[BR] * r + th[BP] * p + th[BIAS];
        let sp = softplus(v);
        let m = 1.0 + th[GAIN] * r;
        let q = sp * m;
        let s_prev = s;
        s = gm * s + (1.0 - gm) * q;
        if grad {
            let sm = sigmoid(v) * m * (1.0 - gm);
            let dq = [u0, u1, u2, r, p, 1.0];
            for i in 0..6 {
                ds[i] = gm * ds[i] + sm * dq[i];
            }
            ds[GAIN] = gm * ds[GAIN] + (1.0 - gm) * sp * r;
            ds[GAMMA] = gm * ds[GAMMA] + s_prev - q;
            for i in 0..=GAIN {
                dy[i] = th[SCALE] * ds[i];
            }
            dy[SCALE] = s;
            dy[OFFSET] = 1.0;
            dy[GAMMA] = th[SCALE] * ds[GAMMA];
        }
        f(
            t,
            th[SCALE] * s + th[OFFSET],
            s,
            if grad { &dy } else { &[] },
        );
        u2 = u1;
        u1 = u0;
    }
}

/// Sum of squared errors over the training frames.
fn sse(th: &[f64; N_PARAMS], x: &Series, train: &dyn Fn(usize) -> bool) -> f64 {
    let mut e = 0f64;
    run(
        th,
        x,
        |t, yh, _, _| {
            let yv = x.y[t];
            if yv.is_finite() && train(t) {
                let d = yv as f64 - yh;
                e += x.w(t) * d * d;
            }
        },
        false,
    );
    e
}

/// A starting point from the linear drive: the softplus's knee one standard deviation above the
/// mean drive, no lag, no behaviour terms, the given indicator leak; scale and offset by least
/// squares.
pub fn initial(x: &Series, train: &dyn Fn(usize) -> bool, gamma: f64) -> [f64; N_PARAMS] {
    let (mut n, mut m1, mut m2) = (0f64, 0f64, 0f64);
    for (t, &u) in x.u.iter().enumerate() {
        if train(t) && x.y[t].is_finite() {
            n += 1.0;
            m1 += u as f64;
            m2 += u as f64 * u as f64;
        }
    }
    let mean = m1 / n.max(1.0);
    let sd = (m2 / n.max(1.0) - mean * mean).max(1e-12).sqrt();
    let mut th = [0f64; N_PARAMS];
    th[A0] = 2.0 / sd;
    th[BIAS] = -2.0 * mean / sd - 1.0;
    th[GAMMA] = gamma;
    th[SCALE] = 1.0;
    // Scale and offset: regress y on s.
    let (mut ss, mut s1, mut sy, mut y1, mut k) = (0f64, 0f64, 0f64, 0f64, 0f64);
    run(
        &th,
        x,
        |t, _, s, _| {
            let yv = x.y[t];
            if yv.is_finite() && train(t) {
                ss += s * s;
                s1 += s;
                sy += s * yv as f64;
                y1 += yv as f64;
                k += 1.0;
            }
        },
        false,
    );
    let var = ss - s1 * s1 / k.max(1.0);
    let cov = sy - s1 * y1 / k.max(1.0);
    th[SCALE] = if var > 1e-12 { cov / var } else { 0.0 };
    th[OFFSET] = (y1 - th[SCALE] * s1) / k.max(1.0);
    th
}

/// Fits the parameters on the frames where `train` holds, from `init`, by Levenberg–Marquardt.
/// Normal equations use every `stride`-th training frame (the recursion runs over all of them).
/// `rate_hz` bounds the indicator leak to [`TAU_RANGE_S`]. A fit that cannot improve on `init`
/// returns it.
pub fn fit(
    x: &Series,
    train: &dyn Fn(usize) -> bool,
    init: [f64; N_PARAMS],
    stride: usize,
    rate_hz: f64,
) -> [f64; N_PARAMS] {
    const MAX_ITER: usize = 40;
    let stride = stride.max(1);
    let (gmin, gmax) = (
        gamma_of(TAU_RANGE_S.0, rate_hz),
        gamma_of(TAU_RANGE_S.1, rate_hz),
    );
    let mut th = init;
    th[GAMMA] = th[GAMMA].clamp(gmin, gmax);
    let mut cur = sse(&th, x, train);
    if !cur.is_finite() {
        return init;
    }
    let mut mu = 1e-3;
    for _ in 0..MAX_ITER {
        let mut a = [[0f64; N_PARAMS]; N_PARAMS];
        let mut g = [0f64; N_PARAMS];
        run(
            &th,
            x,
            |t, yh, _, dy| {
                let yv = x.y[t];
                if t % stride == 0 && yv.is_finite() && train(t) {
                    let wt = x.w(t);
                    let e = wt * (yv as f64 - yh);
                    for i in 0..N_PARAMS {
                        g[i] += dy[i] * e;
                        let di = wt * dy[i];
                        let row = &mut a[i];
                        for j in 0..=i {
                            row[j] += di * dy[j];
                        }
                    }
                }
            },
            true,
        );
        for i in 0..N_PARAMS {
            for j in 0..i {
                a[j][i] = a[i][j];
            }
        }
        let mut improved = false;
        // Raise the damping until a step lowers the error (or give up at a tiny trust region).
        for _ in 0..12 {
            let mut m = a;
            for (i, row) in m.iter_mut().enumerate() {
                row[i] += mu * a[i][i].max(1e-12) + 1e-12;
            }
            let Some(step) = solve(m, g) else {
                mu *= 10.0;
                continue;
            };
            let mut next = th;
            for i in 0..N_PARAMS {
                next[i] += step[i];
            }
            next[GAMMA] = next[GAMMA].clamp(gmin, gmax);
            let e = sse(&next, x, train);
            if e.is_finite() && e < cur {
                let gain = (cur - e) / cur.max(1e-300);
                th = next;
                cur = e;
                mu = (mu / 3.0).max(1e-9);
                improved = true;
                if gain < 1e-7 {
                    return th;
                }
                break;
            }
            mu *= 8.0;
        }
        if !improved {
            break;
        }
    }
    th
}

/// Solves the symmetric positive definite system by Cholesky; `None` when it is not.
fn solve(mut a: [[f64; N_PARAMS]; N_PARAMS], b: [f64; N_PARAMS]) -> Option<[f64; N_PARAMS]> {
    const D: usize = N_PARAMS;
    for i in 0..D {
        for j in 0..=i {
            let mut s = a[i][j];
            for k in 0..j {
                s -= a[i][k] * a[j][k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                a[i][i] = s.sqrt();
            } else {
                a[i][j] = s / a[j][j];
            }
        }
    }
    let mut y = [0f64; D];
    for i in 0..D {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i][k] * y[k];
        }
        y[i] = s / a[i][i];
    }
    let mut x = [0f64; D];
    for i in (0..D).rev() {
        let mut s = y[i];
        for k in i + 1..D {
            s -= a[k][i] * x[k];
        }
        x[i] = s / a[i][i];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::rng::FastRng;

    /// Data drawn from the model itself (plus noise) is fit back to its parameters' predictions,
    /// and the fit generalises to a drive range it never saw, which the linear readout cannot.
    #[test]
    fn recovers_a_thresholded_rate_through_the_indicator() {
        let mut rng = FastRng::new(7);
        let t_n = 6000;
        let mut truth = [0f64; N_PARAMS];
        truth[A0] = 3.0;
        truth[1] = 1.5;
        truth[BR] = 0.5;
        truth[BIAS] = -2.0;
        truth[GAIN] = 0.8;
        truth[SCALE] = 0.6;
        truth[OFFSET] = 0.05;
        truth[GAMMA] = gamma_of(0.8, 30.0);
        // Training drive: low contrast, mostly below the knee (natural clips).
        let u: Vec<f32> = (0..t_n).map(|_| 0.4 * rng.normal() as f32).collect();
        let run: Vec<f32> = (0..t_n)
            .map(|t| if (t / 600) % 2 == 0 { 0.0 } else { 0.7 })
            .collect();
        let pupil = vec![1.3f32; t_n];
        let mut clean = vec![0f32; t_n];
        let x = Series {
            u: &u,
            run: &run,
            pupil: &pupil,
            y: &clean.clone(),
            weight: &[],
        };
        predict(&truth, &x, &mut clean);
        let y: Vec<f32> = clean
            .iter()
            .map(|&v| v + 0.05 * rng.normal() as f32)
            .collect();
        let x = Series {
            u: &u,
            run: &run,
            pupil: &pupil,
            y: &y,
            weight: &[],
        };
        let all = |_: usize| true;
        let init = initial(&x, &all, gamma_of(1.0, 30.0));
        let th = fit(&x, &all, init, 1, 30.0);
        let e_init = sse(&init, &x, &all);
        let e_fit = sse(&th, &x, &all);
        assert!(e_fit < 0.5 * e_init, "{e_fit} vs {e_init}");
        // Noise floor: 0.05^2 per frame.
        assert!(
            e_fit / (t_n as f64) < 1.3 * 0.0025,
            "{}",
            e_fit / t_n as f64
        );
        let tau = -1.0 / (30.0 * th[GAMMA].ln());
        assert!((tau - 0.8).abs() < 0.1, "tau {tau}");
        // High-contrast drive (gratings): the fit model extrapolates the nonlinearity.
        let u_hi: Vec<f32> = (0..t_n).map(|_| 1.2 * rng.normal() as f32).collect();
        let x_hi = Series {
            u: &u_hi,
            run: &run,
            pupil: &pupil,
            y: &y,
            weight: &[],
        };
        let (mut want, mut got) = (vec![0f32; t_n], vec![0f32; t_n]);
        predict(&truth, &x_hi, &mut want);
        predict(&th, &x_hi, &mut got);
        let r = crate::twin::metrics::pearson(want.iter().copied(), got.iter().copied());
        assert!(r > 0.99, "extrapolated r {r}");
        let mean_ratio = got.iter().sum::<f32>() / want.iter().sum::<f32>();
        assert!((mean_ratio - 1.0).abs() < 0.1, "mean ratio {mean_ratio}");
    }

    #[test]
    fn softplus_is_stable_at_both_ends() {
        assert_eq!(softplus(1000.0), 1000.0);
        assert!(softplus(-1000.0) >= 0.0 && softplus(-1000.0) < 1e-300);
        assert!((softplus(0.0) - 2f64.ln()).abs() < 1e-15);
        assert!((sigmoid(-800.0)).abs() < 1e-300 && (sigmoid(800.0) - 1.0).abs() < 1e-15);
    }
}
