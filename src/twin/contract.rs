//! The twin contract (docs/twin-contract.md): what an ONNX file must look like for rig to step it
//! one imaging frame at a time. `check` reads a model's protobuf and reports every mismatch at once.

use std::path::Path;

use serde::Serialize;
use tract_onnx::pb;

use super::onnx::{fmt_dims, value_info_dims, Dim, FLOAT};
use super::TwinError;

pub const CONTRACT_VERSION: u32 = 1;

/// Input: the stimulus frame on screen, f32 [B, 1, H, W], 8-bit luminance units (0 black, 255
/// white, 127.5 the mean gray of the blank screen).
pub const STIMULUS: &str = "stimulus";
/// Input: behaviour at the imaging frame, f32 [B, K], channels named in `twin.behavior_channels`.
pub const BEHAVIOR: &str = "behavior";
/// Output of a twin: predicted dF/F of each neuron at the imaging frame, f32 [B, N].
pub const RESPONSE: &str = "response";
/// Output of a core: the shared feature map, f32 [B, C, h, w].
pub const FEATURES: &str = "features";
/// Recurrent state: every `state_in.X` input has a `state_out.X` output of the same shape.
pub const STATE_IN: &str = "state_in.";
pub const STATE_OUT: &str = "state_out.";

/// Keys of the model's metadata_props.
pub mod key {
    pub const KIND: &str = "twin.kind";
    pub const VERSION: &str = "twin.contract_version";
    pub const FRAME_RATE: &str = "twin.frame_rate_hz";
    pub const HEIGHT: &str = "twin.stimulus_height";
    pub const WIDTH: &str = "twin.stimulus_width";
    pub const BEHAVIOR: &str = "twin.behavior_channels";
    pub const N_NEURONS: &str = "twin.n_neurons";
    pub const ROI_IDS: &str = "twin.roi_ids";
    /// Optional, informative.
    pub const MOUSE_ID: &str = "twin.mouse_id";
    pub const SESSION_ID: &str = "twin.session_id";
    pub const PROVENANCE: &str = "twin.provenance";
}

/// Behaviour channels a twin may ask for, with their units.
pub const BEHAVIOR_CHANNELS: &[(&str, &str)] = &[
    ("running_speed", "cm/s"),
    ("pupil_diameter", "mm"),
    ("eye_x", "deg"),
    ("eye_y", "deg"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A complete twin: stimulus + behaviour -> response of each neuron.
    Twin,
    /// A shared core: stimulus + behaviour -> feature map; `rig twin adapt` adds a readout.
    Core,
}

/// One recurrent state tensor (shape without the batch axis).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl StateSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A model's contract as read from its file.
#[derive(Debug, Clone, Serialize)]
pub struct Contract {
    pub kind: Kind,
    pub version: u32,
    pub frame_rate_hz: f64,
    pub height: usize,
    pub width: usize,
    pub behavior_channels: Vec<String>,
    /// Neurons of a twin (0 for a core).
    pub n_neurons: usize,
    /// ROI id of each neuron, in output order (empty for a core).
    pub roi_ids: Vec<u32>,
    /// Feature map [C, h, w] of a core.
    pub features: Option<[usize; 3]>,
    pub states: Vec<StateSpec>,
    /// A batch size fixed in the file (None: symbolic, any batch).
    pub fixed_batch: Option<usize>,
    pub metadata: Vec<(String, String)>,
}

impl Contract {
    pub fn stimulus_len(&self) -> usize {
        self.height * self.width
    }
    pub fn n_behavior(&self) -> usize {
        self.behavior_channels.len()
    }
    /// Floats per sample of the main output (response or features).
    pub fn output_len(&self) -> usize {
        match self.kind {
            Kind::Twin => self.n_neurons,
            Kind::Core => self.features.map(|f| f.iter().product()).unwrap_or(0),
        }
    }
    pub fn output_name(&self) -> &'static str {
        match self.kind {
            Kind::Twin => RESPONSE,
            Kind::Core => FEATURES,
        }
    }
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Why this twin should not be trusted on `mouse_id`'s data: it was fit to another mouse
    /// (`twin.mouse_id`). `None` when it names the same mouse or none.
    pub fn other_mouse(&self, mouse_id: &str) -> Option<String> {
        let fit = self.meta(key::MOUSE_ID)?;
        (!fit.is_empty() && !mouse_id.is_empty() && fit != mouse_id).then(|| {
            format!(
                "the twin was fit to mouse {fit:?} (metadata {}), this session is mouse {mouse_id:?}: \
                 a twin of another mouse predicts neurons it never saw",
                key::MOUSE_ID
            )
        })
    }
}

/// Metadata for a model that follows this contract.
pub fn metadata(c: &Contract) -> Vec<(String, String)> {
    let mut m = vec![
        (
            key::KIND.to_string(),
            match c.kind {
                Kind::Twin => "twin",
                Kind::Core => "core",
            }
            .to_string(),
        ),
        (key::VERSION.into(), CONTRACT_VERSION.to_string()),
        (key::FRAME_RATE.into(), format!("{}", c.frame_rate_hz)),
        (key::HEIGHT.into(), c.height.to_string()),
        (key::WIDTH.into(), c.width.to_string()),
        (key::BEHAVIOR.into(), c.behavior_channels.join(",")),
    ];
    if c.kind == Kind::Twin {
        m.push((key::N_NEURONS.into(), c.n_neurons.to_string()));
        let ids: Vec<String> = c.roi_ids.iter().map(|i| i.to_string()).collect();
        m.push((key::ROI_IDS.into(), ids.join(",")));
    }
    for (k, v) in &c.metadata {
        if !m.iter().any(|(mk, _)| mk == k) {
            m.push((k.clone(), v.clone()));
        }
    }
    m
}

fn dtype_name(t: i32) -> String {
    match t {
        1 => "float32".into(),
        2 => "uint8".into(),
        6 => "int32".into(),
        7 => "int64".into(),
        10 => "float16".into(),
        11 => "float64".into(),
        o => format!("type {o}"),
    }
}

/// Checks a model's protobuf against the contract; every problem is listed in the error.
pub fn check(m: &pb::ModelProto, path: &Path) -> Result<Contract, TwinError> {
    let mut problems: Vec<String> = Vec::new();
    let meta: Vec<(String, String)> = m
        .metadata_props
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    let get = |k: &str| meta.iter().find(|(mk, _)| mk == k).map(|(_, v)| v.clone());
    let need = |k: &str, problems: &mut Vec<String>| -> Option<String> {
        let v = get(k);
        if v.is_none() {
            problems.push(format!("metadata: missing key `{k}`"));
        }
        v
    };
    fn parse<T: std::str::FromStr>(
        k: &str,
        v: Option<String>,
        expected: &str,
        problems: &mut Vec<String>,
    ) -> Option<T> {
        let v = v?;
        match v.trim().parse::<T>() {
            Ok(x) => Some(x),
            Err(_) => {
                problems.push(format!("metadata `{k}`: expected {expected}, found {v:?}"));
                None
            }
        }
    }
    let kind = match need(key::KIND, &mut problems).as_deref() {
        Some("twin") => Some(Kind::Twin),
        Some("core") => Some(Kind::Core),
        Some(o) => {
            problems.push(format!(
                "metadata `{}`: expected \"twin\" or \"core\", found {o:?}",
                key::KIND
            ));
            None
        }
        None => None,
    };
    let version: Option<u32> = parse(
        key::VERSION,
        need(key::VERSION, &mut problems),
        "an integer",
        &mut problems,
    );
    if let Some(v) = version {
        if v != CONTRACT_VERSION {
            problems.push(format!(
                "metadata `{}`: expected {CONTRACT_VERSION}, found {v}",
                key::VERSION
            ));
        }
    }
    let frame_rate: Option<f64> = parse(
        key::FRAME_RATE,
        need(key::FRAME_RATE, &mut problems),
        "a rate in Hz",
        &mut problems,
    );
    if let Some(f) = frame_rate {
        if !(f.is_finite() && f > 0.0) {
            problems.push(format!(
                "metadata `{}`: expected a positive rate, found {f}",
                key::FRAME_RATE
            ));
        }
    }
    let height: Option<usize> = parse(
        key::HEIGHT,
        need(key::HEIGHT, &mut problems),
        "a pixel count",
        &mut problems,
    );
    let width: Option<usize> = parse(
        key::WIDTH,
        need(key::WIDTH, &mut problems),
        "a pixel count",
        &mut problems,
    );
    let behavior: Option<Vec<String>> = need(key::BEHAVIOR, &mut problems).map(|s| {
        s.split(',')
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect()
    });
    if let Some(b) = &behavior {
        for c in b {
            if !BEHAVIOR_CHANNELS.iter().any(|(n, _)| n == c) {
                let known: Vec<&str> = BEHAVIOR_CHANNELS.iter().map(|(n, _)| *n).collect();
                problems.push(format!(
                    "metadata `{}`: unknown channel {c:?}, expected some of {}",
                    key::BEHAVIOR,
                    known.join(", ")
                ));
            }
        }
    }
    let (mut n_neurons, mut roi_ids) = (None, Vec::new());
    if kind == Some(Kind::Twin) {
        n_neurons = parse::<usize>(
            key::N_NEURONS,
            need(key::N_NEURONS, &mut problems),
            "a neuron count",
            &mut problems,
        );
        if let Some(s) = need(key::ROI_IDS, &mut problems) {
            for (i, t) in s.split(',').enumerate() {
                match t.trim().parse::<u32>() {
                    Ok(v) => roi_ids.push(v),
                    Err(_) => {
                        problems.push(format!(
                            "metadata `{}`: entry {i} expected an ROI id (u32), found {t:?}",
                            key::ROI_IDS
                        ));
                        break;
                    }
                }
            }
            if let Some(n) = n_neurons {
                if roi_ids.len() != n && !problems.iter().any(|p| p.contains(key::ROI_IDS)) {
                    problems.push(format!(
                        "metadata `{}`: expected {n} ids (twin.n_neurons), found {}",
                        key::ROI_IDS,
                        roi_ids.len()
                    ));
                }
            }
        }
    }

    // Inputs and outputs.
    let graph = m.graph.clone().unwrap_or_default();
    let inits: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|v| !inits.contains(v.name.as_str()))
        .collect();
    let mut batch_dims: Vec<Dim> = Vec::new();
    let check_io = |v: &pb::ValueInfoProto,
                    what: &str,
                    want: &[Option<usize>],
                    want_desc: &str,
                    problems: &mut Vec<String>|
     -> Option<Vec<Dim>> {
        let Some((t, dims)) = value_info_dims(v) else {
            problems.push(format!(
                "{what} `{}`: no tensor type/shape in the file; expected float32 {want_desc}",
                v.name
            ));
            return None;
        };
        let mut ok = t == FLOAT && dims.len() == want.len();
        if ok {
            for (d, w) in dims.iter().zip(want).skip(1) {
                if let Some(w) = w {
                    // Exporters name output sizes they did not compute (torch's TorchScript
                    // exporter writes `Softplusresponse_dim_1` for a fixed 24): a symbolic size
                    // after the batch axis of an output is checked once tract has inferred it
                    // (`Twin::compile`), not refused here.
                    let undeclared = what == "output" && matches!(d, Dim::Sym(_));
                    if *d != Dim::Fixed(*w as i64) && !undeclared {
                        ok = false;
                    }
                }
            }
        }
        if !ok {
            problems.push(format!(
                "{what} `{}`: expected float32 {want_desc}, found {} {}",
                v.name,
                dtype_name(t),
                fmt_dims(&dims)
            ));
            return None;
        }
        Some(dims)
    };
    let mut stim_seen = false;
    let mut behavior_seen = false;
    let mut states_in: Vec<(String, Vec<Dim>)> = Vec::new();
    for v in &inputs {
        let n = v.name.as_str();
        if n == STIMULUS {
            stim_seen = true;
            let desc = format!(
                "[B, 1, {}, {}]",
                height.map_or("H".into(), |h| h.to_string()),
                width.map_or("W".into(), |w| w.to_string())
            );
            if let Some(d) = check_io(
                v,
                "input",
                &[None, Some(1), height, width],
                &desc,
                &mut problems,
            ) {
                batch_dims.push(d[0].clone());
            }
        } else if n == BEHAVIOR {
            behavior_seen = true;
            let k = behavior.as_ref().map(|b| b.len());
            let desc = format!("[B, {}]", k.map_or("K".into(), |k| k.to_string()));
            if let Some(d) = check_io(v, "input", &[None, k], &desc, &mut problems) {
                batch_dims.push(d[0].clone());
            }
        } else if let Some(s) = n.strip_prefix(STATE_IN) {
            if let Some((t, dims)) = value_info_dims(v) {
                if t != FLOAT || dims.len() < 2 {
                    problems.push(format!(
                        "input `{n}`: expected float32 [B, ...] (rank >= 2), found {} {}",
                        dtype_name(t),
                        fmt_dims(&dims)
                    ));
                } else {
                    batch_dims.push(dims[0].clone());
                    states_in.push((s.to_string(), dims));
                }
            } else {
                problems.push(format!("input `{n}`: no tensor type/shape in the file"));
            }
        } else {
            problems.push(format!(
                "input `{n}`: not part of the contract; expected `{STIMULUS}`, `{BEHAVIOR}` or `{STATE_IN}*`"
            ));
        }
    }
    if !stim_seen {
        let names: Vec<&str> = inputs.iter().map(|v| v.name.as_str()).collect();
        problems.push(format!(
            "input `{STIMULUS}`: missing (model inputs: {})",
            names.join(", ")
        ));
    }
    let want_behavior = behavior.as_ref().is_some_and(|b| !b.is_empty());
    if want_behavior && !behavior_seen {
        problems.push(format!(
            "input `{BEHAVIOR}`: missing although `{}` names channels",
            key::BEHAVIOR
        ));
    }
    if !want_behavior && behavior_seen && behavior.is_some() {
        problems.push(format!(
            "input `{BEHAVIOR}`: present but `{}` names no channel",
            key::BEHAVIOR
        ));
    }
    let main_out = match kind {
        Some(Kind::Core) => FEATURES,
        _ => RESPONSE,
    };
    let mut out_seen = false;
    let mut features = None;
    let mut states_out: Vec<(String, Vec<Dim>)> = Vec::new();
    for v in &graph.output {
        let n = v.name.as_str();
        if n == main_out {
            out_seen = true;
            if kind == Some(Kind::Core) {
                if let Some(d) = check_io(
                    v,
                    "output",
                    &[None, None, None, None],
                    "[B, C, h, w]",
                    &mut problems,
                ) {
                    batch_dims.push(d[0].clone());
                    let f: Vec<usize> = d[1..]
                        .iter()
                        .filter_map(|x| match x {
                            Dim::Fixed(v) if *v > 0 => Some(*v as usize),
                            _ => None,
                        })
                        .collect();
                    if f.len() == 3 {
                        features = Some([f[0], f[1], f[2]]);
                    } else {
                        problems.push(format!(
                            "output `{FEATURES}`: expected fixed [C, h, w] after the batch, found {}",
                            fmt_dims(&d)
                        ));
                    }
                }
            } else {
                let desc = format!("[B, {}]", n_neurons.map_or("N".into(), |n| n.to_string()));
                if let Some(d) = check_io(v, "output", &[None, n_neurons], &desc, &mut problems) {
                    // An output's batch symbol may be the exporter's own name; only a fixed
                    // output batch says something the inputs must agree with.
                    if matches!(d[0], Dim::Fixed(_)) {
                        batch_dims.push(d[0].clone());
                    }
                }
            }
        } else if let Some(s) = n.strip_prefix(STATE_OUT) {
            if let Some((_, dims)) = value_info_dims(v) {
                states_out.push((s.to_string(), dims));
            } else {
                problems.push(format!("output `{n}`: no tensor type/shape in the file"));
            }
        } else {
            problems.push(format!(
                "output `{n}`: not part of the contract; expected `{main_out}` or `{STATE_OUT}*`"
            ));
        }
    }
    if !out_seen {
        let names: Vec<&str> = graph.output.iter().map(|v| v.name.as_str()).collect();
        problems.push(format!(
            "output `{main_out}`: missing (model outputs: {})",
            names.join(", ")
        ));
    }
    let mut states = Vec::new();
    for (s, din) in &states_in {
        match states_out.iter().find(|(o, _)| o == s) {
            None => problems.push(format!(
                "input `{STATE_IN}{s}`: no matching output `{STATE_OUT}{s}`"
            )),
            Some((_, dout)) => {
                // Sizes the file leaves symbolic on the output side are checked against the
                // inferred shapes when the model is compiled.
                let agree = |o: &Dim, i: &Dim| matches!(o, Dim::Sym(_)) || o == i;
                if dout.len() != din.len()
                    || !dout[1..].iter().zip(&din[1..]).all(|(o, i)| agree(o, i))
                {
                    problems.push(format!(
                        "output `{STATE_OUT}{s}`: expected the shape of `{STATE_IN}{s}` {}, found {}",
                        fmt_dims(din),
                        fmt_dims(dout)
                    ));
                    continue;
                }
                let mut shape = Vec::new();
                for d in &din[1..] {
                    match d {
                        Dim::Fixed(v) if *v > 0 => shape.push(*v as usize),
                        _ => {
                            problems.push(format!(
                                "input `{STATE_IN}{s}`: expected fixed sizes after the batch axis, found {}",
                                fmt_dims(din)
                            ));
                            break;
                        }
                    }
                }
                if shape.len() + 1 == din.len() {
                    states.push(StateSpec {
                        name: s.clone(),
                        shape,
                    });
                }
            }
        }
    }
    for (s, _) in &states_out {
        if !states_in.iter().any(|(i, _)| i == s) {
            problems.push(format!(
                "output `{STATE_OUT}{s}`: no matching input `{STATE_IN}{s}`"
            ));
        }
    }
    // All batch axes agree: one symbol, or one fixed size.
    let mut fixed_batch = None;
    let fixed: Vec<i64> = batch_dims
        .iter()
        .filter_map(|d| match d {
            Dim::Fixed(v) => Some(*v),
            _ => None,
        })
        .collect();
    if let Some(&b) = fixed.first() {
        if fixed.len() != batch_dims.len() || fixed.iter().any(|&x| x != b) || b < 1 {
            problems.push(format!(
                "batch axis: expected the same (symbolic or fixed) first dimension on every input and output, found {}",
                fmt_dims(&batch_dims)
            ));
        } else {
            fixed_batch = Some(b as usize);
        }
    }
    if !problems.is_empty() {
        return Err(TwinError::Contract {
            path: path.to_path_buf(),
            problems,
        });
    }
    Ok(Contract {
        kind: kind.unwrap_or(Kind::Twin),
        version: version.unwrap_or(CONTRACT_VERSION),
        frame_rate_hz: frame_rate.unwrap_or(0.0),
        height: height.unwrap_or(0),
        width: width.unwrap_or(0),
        behavior_channels: behavior.unwrap_or_default(),
        n_neurons: n_neurons.unwrap_or(0),
        roi_ids,
        features,
        states,
        fixed_batch,
        metadata: meta,
    })
}
