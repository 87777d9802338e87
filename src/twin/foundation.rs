//! A foundation-scale twin with random weights, for benchmarks and tests of speed: the shape of
//! the models labs bring (fnn: a convolutional core at 144x256, behaviour modulation, a
//! recurrent stage with explicit state, a grid read-out of thousands of neurons), without
//! committing megabytes. Its predictions mean nothing; its cost is what is measured.
//!
//! Stimulus [B, 1, 144, 256] luminance; behaviour running speed, pupil, eye x, eye y.
//! - Six convolutions down to stride 8 (18x32): 1->32 7x7/2, 32->64 5x5/2 in 2 groups,
//!   64->64 3x3 in 4 groups, 64->128 3x3/2, 128->128 3x3 in 8 groups, 128->128 3x3; ReLU.
//! - Behaviour modulation: a per-channel gain sigmoid(W b + c) on the 128 channels.
//! - A ConvLSTM step at 18x32 with 128-channel h and c as explicit state (one 3x3 convolution
//!   of [x, h] into the four gates).
//! - A 1x1 feature convolution to 16 channels, then each neuron's 4-tap bilinear read-out at a
//!   fixed position (Gather + Mul + ReduceSum, as `rig twin adapt` writes it), Exp output.

use tract_onnx::pb;

use super::contract::{self, Contract, Kind, StateSpec, BEHAVIOR, STATE_IN, STATE_OUT, STIMULUS};
use super::onnx::{attr_i, attr_ints, model, Dim, GraphBuilder, FLOAT};
use crate::sim::rng::FastRng;

pub const HEIGHT: usize = 144;
pub const WIDTH: usize = 256;
const H8: usize = HEIGHT / 8;
const W8: usize = WIDTH / 8;
const HIDDEN: usize = 128;
const FEATURES: usize = 16;

/// Builds the model; `neurons` read out at random positions, weights from `seed`.
pub fn build_foundation(neurons: usize, seed: u64) -> pb::ModelProto {
    let mut rng = FastRng::new(seed);
    let mut g = GraphBuilder::new("twinrig_foundation_scale");
    let b = Dim::Sym("batch".into());
    let f = |v: usize| Dim::Fixed(v as i64);
    g.input(STIMULUS, FLOAT, &[b.clone(), f(1), f(HEIGHT), f(WIDTH)]);
    g.input(BEHAVIOR, FLOAT, &[b.clone(), f(4)]);
    let hs = [b.clone(), f(HIDDEN), f(H8), f(W8)];
    g.input(&format!("{STATE_IN}h"), FLOAT, &hs);
    g.input(&format!("{STATE_IN}c"), FLOAT, &hs);

    let scale = g.scalar("scale", 1.0 / 64.0);
    let mid = g.scalar("mid", 128.0);
    let centred = g.binary("Sub", STIMULUS, &mid);
    let mut x = g.binary("Mul", &centred, &scale);
    // (in, out, kernel, stride, groups)
    let convs = [
        (1, 32, 7, 2, 1),
        (32, 64, 5, 2, 2),
        (64, 64, 3, 1, 4),
        (64, 128, 3, 2, 1),
        (128, 128, 3, 1, 8),
        (128, HIDDEN, 3, 1, 1),
    ];
    for (cin, cout, k, s, groups) in convs {
        x = conv(&mut g, &mut rng, &x, cin, cout, k, s, groups);
        x = g.unary("Relu", &x);
    }
    // Behaviour modulation: gain per channel from the behaviour vector.
    let wb = weights(&mut rng, 4 * HIDDEN, 0.5);
    let wb = g.init_f32("mod_w", &[4, HIDDEN], &wb);
    let bb = g.init_f32("mod_b", &[HIDDEN], &vec![1.0; HIDDEN]);
    let lin = g.binary("MatMul", BEHAVIOR, &wb);
    let lin = g.binary("Add", &lin, &bb);
    let gain = g.unary("Sigmoid", &lin);
    let gshape = g.init_i64("gain_shape", &[4], &[-1, HIDDEN as i64, 1, 1]);
    let gain = g.node("Reshape", &[&gain, &gshape], vec![], None);
    let x = g.binary("Mul", &x, &gain);
    // ConvLSTM step: gates from [x, h].
    let h_in = format!("{STATE_IN}h");
    let c_in = format!("{STATE_IN}c");
    let xh = g.node("Concat", &[&x, &h_in], vec![attr_i("axis", 1)], None);
    let gates = conv(&mut g, &mut rng, &xh, 2 * HIDDEN, 4 * HIDDEN, 3, 1, 1);
    let gate = |g: &mut GraphBuilder, k: usize| {
        let st = g.init_i64("gate_start", &[1], &[(k * HIDDEN) as i64]);
        let en = g.init_i64("gate_end", &[1], &[((k + 1) * HIDDEN) as i64]);
        let ax = g.init_i64("gate_axis", &[1], &[1]);
        g.node("Slice", &[&gates, &st, &en, &ax], vec![], None)
    };
    let (i, fg, o, c) = (
        gate(&mut g, 0),
        gate(&mut g, 1),
        gate(&mut g, 2),
        gate(&mut g, 3),
    );
    let i = g.unary("Sigmoid", &i);
    let fg = g.unary("Sigmoid", &fg);
    let o = g.unary("Sigmoid", &o);
    let c = g.unary("Tanh", &c);
    let keep = g.binary("Mul", &fg, &c_in);
    let add = g.binary("Mul", &i, &c);
    let c_out = g.node(
        "Add",
        &[&keep, &add],
        vec![],
        Some(&format!("{STATE_OUT}c")),
    );
    let tc = g.unary("Tanh", &c_out);
    let h_out = g.node("Mul", &[&o, &tc], vec![], Some(&format!("{STATE_OUT}h")));
    // Features and the read-out.
    let feat = conv(&mut g, &mut rng, &h_out, HIDDEN, FEATURES, 1, 1, 1);
    let p = H8 * W8;
    let shape = g.init_i64("shape_bcp", &[3], &[-1, FEATURES as i64, p as i64]);
    let fr = g.node("Reshape", &[&feat, &shape], vec![], None);
    let ft = g.node(
        "Transpose",
        &[&fr],
        vec![attr_ints("perm", &[0, 2, 1])],
        None,
    );
    let mut taps = Vec::with_capacity(4 * neurons);
    let mut wcomb = vec![0f32; neurons * 4 * FEATURES];
    for n in 0..neurons {
        let (y, xx) = (
            rng.uniform() * (H8 - 1) as f64,
            rng.uniform() * (W8 - 1) as f64,
        );
        let (y0, x0) = (y.floor() as usize, xx.floor() as usize);
        let (fy, fx) = (y - y0 as f64, xx - x0 as f64);
        let tw = [
            (y0, x0, (1.0 - fy) * (1.0 - fx)),
            (y0, x0 + 1, (1.0 - fy) * fx),
            (y0 + 1, x0, fy * (1.0 - fx)),
            (y0 + 1, x0 + 1, fy * fx),
        ];
        for (k, (ty, tx, w)) in tw.into_iter().enumerate() {
            taps.push((ty * W8 + tx) as i64);
            for ch in 0..FEATURES {
                wcomb[(n * 4 + k) * FEATURES + ch] = (w * rng.normal() * 0.3) as f32;
            }
        }
    }
    let idx = g.init_i64("taps", &[4 * neurons], &taps);
    let gathered = g.node("Gather", &[&ft, &idx], vec![attr_i("axis", 1)], None);
    let shape3 = g.init_i64(
        "shape_bn4c",
        &[3],
        &[-1, neurons as i64, 4 * FEATURES as i64],
    );
    let rows = g.node("Reshape", &[&gathered, &shape3], vec![], None);
    let wc = g.init_f32("readout_w", &[neurons, 4 * FEATURES], &wcomb);
    let zw = g.binary("Mul", &rows, &wc);
    let ax2 = g.init_i64("axis2", &[1], &[2]);
    let drive = g.node("ReduceSum", &[&zw, &ax2], vec![attr_i("keepdims", 0)], None);
    let bias = g.scalar("bias", -1.0);
    let drive = g.binary("Add", &drive, &bias);
    g.node("Exp", &[&drive], vec![], Some("response"));
    g.output("response", FLOAT, &[b.clone(), f(neurons)]);
    g.output(&format!("{STATE_OUT}h"), FLOAT, &hs);
    g.output(&format!("{STATE_OUT}c"), FLOAT, &hs);
    let c = Contract {
        kind: Kind::Twin,
        version: contract::CONTRACT_VERSION,
        frame_rate_hz: 30.0,
        height: HEIGHT,
        width: WIDTH,
        behavior_channels: ["running_speed", "pupil_diameter", "eye_x", "eye_y"]
            .map(String::from)
            .to_vec(),
        n_neurons: neurons,
        roi_ids: (0..neurons as u32).collect(),
        features: None,
        states: ["h", "c"]
            .map(|n| StateSpec {
                name: n.into(),
                shape: vec![HIDDEN, H8, W8],
            })
            .to_vec(),
        fixed_batch: None,
        metadata: vec![(
            "twin.provenance".into(),
            format!("rig twin build-core --preset foundation (random weights, seed {seed})"),
        )],
    };
    model(
        g.graph,
        &contract::metadata(&c),
        "foundation-scale twin with random weights, for benchmarks",
    )
}

fn weights(rng: &mut FastRng, n: usize, sd: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * sd) as f32).collect()
}

/// A convolution with He-scaled random weights and zero bias; `same` padding.
#[allow(clippy::too_many_arguments)] // the layer's shape, spelled out where it is listed
fn conv(
    g: &mut GraphBuilder,
    rng: &mut FastRng,
    x: &str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    groups: usize,
) -> String {
    let per = cin / groups;
    let w = weights(rng, cout * per * k * k, (2.0 / (per * k * k) as f64).sqrt());
    let w = g.init_f32("conv_w", &[cout, per, k, k], &w);
    let bias = g.init_f32("conv_b", &[cout], &vec![0.0; cout]);
    let pad = (k / 2) as i64;
    g.node(
        "Conv",
        &[x, &w, &bias],
        vec![
            attr_ints("kernel_shape", &[k as i64, k as i64]),
            attr_ints("strides", &[stride as i64, stride as i64]),
            attr_ints("pads", &[pad, pad, pad, pad]),
            attr_i("group", groups as i64),
        ],
        None,
    )
}
