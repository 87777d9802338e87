//! The reference core: a fixed, hand-built model of early mouse V1 written as ONNX from Rust.
//!
//! stimulus (luminance 0..255) -> contrast -> quadrature Gabor filter bank (Conv, stride 2) ->
//! leaky temporal integration with explicit state (`state_in.core` -> `state_out.core`) ->
//! per (orientation, spatial frequency): phase-invariant energy sqrt(E^2 + O^2) and the four
//! half-wave rectified phases relu(+-E), relu(+-O) -> `features` [B, 5*O*S, H/2, W/2].
//!
//! Only ops tract-cuda covers: Mul, Sub, Add, Conv, Slice, Sqrt, Relu, Neg, Concat.
//! Its few hyper-parameters (spatial frequencies, envelope width, temporal constant) are chosen by
//! held-out correlation of adapted twins on simulated sessions (see onnx/README.md).

use serde::{Deserialize, Serialize};

use super::contract::{self, Contract, Kind, StateSpec, FEATURES, STATE_IN, STATE_OUT, STIMULUS};
use super::onnx::{attr_i, attr_ints, model, Dim, GraphBuilder, FLOAT};
use tract_onnx::pb;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CoreParams {
    /// Stimulus size (pixels) and frame rate (Hz) of the contract.
    pub height: usize,
    pub width: usize,
    pub frame_rate_hz: f64,
    /// Degrees of visual angle per stimulus pixel.
    pub deg_per_px: f64,
    pub orientations: usize,
    /// Carrier spatial frequencies, cycles per degree.
    pub sf_cpd: Vec<f64>,
    /// Gaussian envelope SD, degrees.
    pub sigma_deg: f64,
    /// Leaky integration of the linear filter responses: u_t = a u_{t-1} + (1 - a) x_t.
    pub temporal_a: f64,
    pub stride: usize,
}

impl CoreParams {
    /// Defaults for a rig config's stimulus and display.
    pub fn for_config(cfg: &crate::config::RigConfig) -> Self {
        CoreParams {
            height: cfg.stimulus.height,
            width: cfg.stimulus.width,
            frame_rate_hz: cfg.imaging.frame_rate_hz,
            deg_per_px: cfg.display.width_deg() / cfg.stimulus.width as f64,
            orientations: 8,
            sf_cpd: vec![0.025, 0.04, 0.063],
            sigma_deg: 6.0,
            temporal_a: 0.5,
            stride: 2,
        }
    }

    pub fn pairs(&self) -> usize {
        self.orientations * self.sf_cpd.len()
    }
    pub fn channels(&self) -> usize {
        5 * self.pairs()
    }
    pub fn kernel_size(&self) -> usize {
        let sigma_px = self.sigma_deg / self.deg_per_px;
        2 * (2.5 * sigma_px).ceil() as usize + 1
    }
    pub fn out_hw(&self) -> (usize, usize) {
        let k = self.kernel_size();
        let p = k / 2;
        let o = |n: usize| (n + 2 * p - k) / self.stride + 1;
        (o(self.height), o(self.width))
    }
}

/// Quadrature Gabor kernels [2*pairs, 1, k, k]: the even kernels of all pairs, then the odd ones.
/// Each is zero-mean and scaled so its own full-contrast carrier drives it to 1.
pub fn gabor_bank(p: &CoreParams) -> Vec<f32> {
    let k = p.kernel_size();
    let c = (k / 2) as f64;
    let sigma = p.sigma_deg / p.deg_per_px;
    let mut even = Vec::new();
    let mut odd = Vec::new();
    for &sf in &p.sf_cpd {
        let f = sf * p.deg_per_px; // cycles per pixel
        for o in 0..p.orientations {
            let th = std::f64::consts::PI * o as f64 / p.orientations as f64;
            let (ct, st) = (th.cos(), th.sin());
            for (dst, phase) in [(&mut even, 0.0), (&mut odd, std::f64::consts::FRAC_PI_2)] {
                let mut kern = vec![0f64; k * k];
                let mut carrier = vec![0f64; k * k];
                for y in 0..k {
                    for x in 0..k {
                        let (dx, dy) = (x as f64 - c, y as f64 - c);
                        let env = (-(dx * dx + dy * dy) / (2.0 * sigma * sigma)).exp();
                        let u = dx * ct + dy * st;
                        let car = (std::f64::consts::TAU * f * u + phase).cos();
                        kern[y * k + x] = env * car;
                        carrier[y * k + x] = car;
                    }
                }
                let mean = kern.iter().sum::<f64>() / kern.len() as f64;
                kern.iter_mut().for_each(|v| *v -= mean);
                let matched: f64 = kern.iter().zip(&carrier).map(|(a, b)| a * b).sum();
                let norm = matched.abs().max(1e-9);
                dst.extend(kern.iter().map(|v| (v / norm) as f32));
            }
        }
    }
    even.extend(odd);
    even
}

/// The contract of a core built with `p`.
pub fn core_contract(p: &CoreParams) -> Contract {
    let (fh, fw) = p.out_hw();
    Contract {
        kind: Kind::Core,
        version: contract::CONTRACT_VERSION,
        frame_rate_hz: p.frame_rate_hz,
        height: p.height,
        width: p.width,
        behavior_channels: vec![],
        n_neurons: 0,
        roi_ids: vec![],
        features: Some([p.channels(), fh, fw]),
        states: vec![StateSpec {
            name: "core".into(),
            shape: vec![2 * p.pairs(), fh, fw],
        }],
        fixed_batch: None,
        metadata: vec![(
            contract::key::PROVENANCE.into(),
            format!(
                "twinrig reference core: quadrature Gabor bank, params {}",
                serde_json::to_string(p).unwrap_or_default()
            ),
        )],
    }
}

/// Builds the core's ONNX model.
pub fn build_core(p: &CoreParams) -> pb::ModelProto {
    let (fh, fw) = p.out_hw();
    let k = p.kernel_size();
    let np = p.pairs();
    let b = Dim::Sym("batch".into());
    let mut g = GraphBuilder::new("twinrig_reference_core");
    g.input(
        STIMULUS,
        FLOAT,
        &[
            b.clone(),
            Dim::Fixed(1),
            Dim::Fixed(p.height as i64),
            Dim::Fixed(p.width as i64),
        ],
    );
    let state_dims = [
        b.clone(),
        Dim::Fixed(2 * np as i64),
        Dim::Fixed(fh as i64),
        Dim::Fixed(fw as i64),
    ];
    let sin = format!("{STATE_IN}core");
    let sout = format!("{STATE_OUT}core");
    g.input(&sin, FLOAT, &state_dims);
    // Contrast: L * 2/255 - 1.
    let s = g.scalar("scale", 2.0 / 255.0);
    let one = g.scalar("one", 1.0);
    let x = g.binary("Mul", STIMULUS, &s);
    let x = g.binary("Sub", &x, &one);
    let w = g.init_f32("gabor", &[2 * np, 1, k, k], &gabor_bank(p));
    let pad = (k / 2) as i64;
    let lin = g.node(
        "Conv",
        &[&x, &w],
        vec![
            attr_ints("kernel_shape", &[k as i64, k as i64]),
            attr_ints("strides", &[p.stride as i64, p.stride as i64]),
            attr_ints("pads", &[pad, pad, pad, pad]),
        ],
        None,
    );
    // Leaky temporal stage with explicit state.
    let a = g.scalar("temporal_a", p.temporal_a as f32);
    let one_minus_a = g.scalar("temporal_1ma", (1.0 - p.temporal_a) as f32);
    let keep = g.binary("Mul", &sin, &a);
    let add = g.binary("Mul", &lin, &one_minus_a);
    let u = g.node("Add", &[&keep, &add], vec![], Some(&sout));
    // Energy and rectified phases.
    let axes = g.init_i64("axis1", &[1], &[1]);
    let s0 = g.init_i64("s0", &[1], &[0]);
    let s1 = g.init_i64("s1", &[1], &[np as i64]);
    let s2 = g.init_i64("s2", &[1], &[2 * np as i64]);
    let e = g.node("Slice", &[&u, &s0, &s1, &axes], vec![], None);
    let o = g.node("Slice", &[&u, &s1, &s2, &axes], vec![], None);
    let e2 = g.binary("Mul", &e, &e);
    let o2 = g.binary("Mul", &o, &o);
    let eps = g.scalar("eps", 1e-6);
    let sum = g.binary("Add", &e2, &o2);
    let sum = g.binary("Add", &sum, &eps);
    let energy = g.unary("Sqrt", &sum);
    let ne = g.unary("Neg", &e);
    let no = g.unary("Neg", &o);
    let re = g.unary("Relu", &e);
    let rne = g.unary("Relu", &ne);
    let ro = g.unary("Relu", &o);
    let rno = g.unary("Relu", &no);
    g.node(
        "Concat",
        &[&energy, &re, &rne, &ro, &rno],
        vec![attr_i("axis", 1)],
        Some(FEATURES),
    );
    g.output(
        FEATURES,
        FLOAT,
        &[
            b.clone(),
            Dim::Fixed(p.channels() as i64),
            Dim::Fixed(fh as i64),
            Dim::Fixed(fw as i64),
        ],
    );
    g.output(&sout, FLOAT, &state_dims);
    let c = core_contract(p);
    model(
        g.graph,
        &contract::metadata(&c),
        "twinrig reference core (docs/twin-contract.md)",
    )
}
