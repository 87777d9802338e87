//! Running a twin on tract: optimised once at load, then stepped one imaging frame at a time (or a
//! batch of B candidates at once) through a plan and state that are built once and reused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{SimplePlan, SimpleState};

use super::contract::{self, Contract, Kind, BEHAVIOR, STATE_IN, STATE_OUT, STIMULUS};
use super::onnx::read_model;
use super::TwinError;
use crate::config::Backend;

/// The backend a twin actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

/// How to load a twin.
#[derive(Debug, Clone)]
pub struct TwinOptions {
    pub backend: Backend,
    /// Threads for tract's matrix products on CPU (1 = single thread).
    pub threads: usize,
}

impl Default for TwinOptions {
    fn default() -> Self {
        TwinOptions {
            backend: Backend::Cpu,
            threads: 1,
        }
    }
}

/// Whether this build can use CUDA at all, and if not, why.
pub fn cuda_unavailable_reason() -> Option<String> {
    #[cfg(feature = "cuda")]
    {
        match std::panic::catch_unwind(tract_cuda_check) {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("CUDA runtime not usable: {e}")),
            Err(_) => Some("CUDA runtime check panicked (no driver?)".into()),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        Some("this rig was built without the `cuda` cargo feature".into())
    }
}

#[cfg(feature = "cuda")]
fn tract_cuda_check() -> TractResult<()> {
    tract_cuda::utils::ensure_cuda_runtime_dependencies(
        "CUDA libraries (libcuda, cublas) not found",
    )
}

/// Resolves the configured backend: `auto` falls back to CPU with one log line, `cuda` without
/// CUDA is an error.
pub fn resolve_backend(b: Backend) -> Result<Device, TwinError> {
    match b {
        Backend::Cpu => Ok(Device::Cpu),
        Backend::Cuda => match cuda_unavailable_reason() {
            None => Ok(Device::Cuda),
            Some(why) => Err(TwinError::Backend(format!(
                "backend `cuda` requested but {why}; use backend = \"cpu\" or \"auto\""
            ))),
        },
        Backend::Auto => match cuda_unavailable_reason() {
            None => Ok(Device::Cuda),
            Some(why) => {
                static ONCE: std::sync::Once = std::sync::Once::new();
                ONCE.call_once(|| {
                    tracing::info!("twin: CUDA not available ({why}); running on CPU")
                });
                Ok(Device::Cpu)
            }
        },
    }
}

/// The recurrent state of a twin for a batch of B independent sequences.
#[derive(Debug, Clone)]
pub struct TwinState {
    batch: usize,
    tensors: Vec<TValue>,
}

impl TwinState {
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Rebuilds a state from `values()` of the same twin (e.g. a state saved and restored).
    pub fn from_values(twin: &Twin, batch: usize, values: &[Vec<f32>]) -> Result<Self, TwinError> {
        let specs = &twin.contract().states;
        if values.len() != specs.len() {
            return Err(TwinError::Input {
                what: "state".into(),
                expected: format!("{} tensors", specs.len()),
                found: values.len().to_string(),
            });
        }
        let mut tensors = Vec::new();
        for (s, v) in specs.iter().zip(values) {
            let mut shape = vec![batch];
            shape.extend(s.shape.iter().copied());
            let t = Tensor::from_shape(&shape, v).map_err(|_| TwinError::Input {
                what: format!("state `{}`", s.name),
                expected: format!("{} values", batch * s.len()),
                found: v.len().to_string(),
            })?;
            tensors.push(t.into_tvalue());
        }
        Ok(TwinState { batch, tensors })
    }

    /// The state tensors' values (in contract order), for inspection and tests.
    pub fn values(&self) -> Vec<Vec<f32>> {
        self.tensors
            .iter()
            .map(|t| f32_slice(t).map(|s| s.to_vec()).unwrap_or_default())
            .collect()
    }
}

/// One compiled plan for a batch size, with its reusable execution state.
struct Compiled {
    state: TypedSimpleState,
    /// Model input index of stimulus, behaviour, and each contract state.
    stim_ix: usize,
    beh_ix: Option<usize>,
    state_in_ix: Vec<usize>,
    out_ix: usize,
    state_out_ix: Vec<usize>,
    n_inputs: usize,
    device_nodes: usize,
    total_nodes: usize,
}

/// A loaded twin (or core).
pub struct Twin {
    path: PathBuf,
    proto: pb::ModelProto,
    contract: Contract,
    device: Device,
    threads: usize,
    plans: HashMap<usize, Compiled>,
    load_s: f64,
    /// Reused buffer for `step_u8`.
    scratch: Vec<f32>,
    /// What `twin::passes` rewrote in the last compiled plan.
    rewrites: Vec<String>,
    /// Time per node of the optimised plan, while profiling (`set_profiling`).
    profile: Option<Vec<OpTime>>,
}

/// Time spent in one node of the optimised plan over the steps profiled.
#[derive(Debug, Clone, Serialize)]
pub struct OpTime {
    /// tract's op (after optimisation: fused and rewritten ops have tract's names).
    pub op: String,
    /// The node's name, derived from the ONNX node it came from.
    pub node: String,
    pub calls: u64,
    pub total_us: f64,
}

fn tract_err(path: &Path, what: &str, e: impl std::fmt::Display) -> TwinError {
    TwinError::Tract {
        path: path.to_path_buf(),
        message: format!("{what}: {e:#}"),
    }
}

/// The graph as tract should see it. Exporters annotate intermediate values (`value_info`) with
/// their own symbols: torch's dynamo exporter writes `batch` on values that rig's fixed batch
/// makes 1, and tract cannot unify the two ("Impossible to unify Sym(batch) with Val(1)"). rig
/// fixes every input's shape, so tract infers every value itself and the annotations are left
/// out; so are the declared output shapes (checked after inference instead). Weights in
/// external-data files are found beside the model file.
fn parse_for_tract(proto: &pb::ModelProto, path: &Path) -> Result<InferenceModel, TwinError> {
    let dir = path
        .parent()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .and_then(|d| d.to_str());
    let parsed = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .with_ignore_output_shapes(true)
        .parse(proto, dir)
        .map_err(|e| tract_err(path, "tract cannot parse the graph", e))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(tract_err(
            path,
            "tract cannot parse the graph",
            format!("unresolved inputs {:?}", parsed.unresolved_inputs),
        ));
    }
    Ok(parsed.model)
}

/// For an exporter's pattern tract cannot run, what to write in the model instead.
fn export_hint(tract_error: &str) -> Option<&'static str> {
    // tract names the node as the ONNX file does ("/If", "If_12") and its op "If".
    if tract_error.contains("If\"") || tract_error.contains("IfThenElse") {
        Some(
            "an If node rig could not settle from the input shapes: torch's TorchScript exporter \
             writes x.squeeze(-1) on a size it cannot prove to be 1 as an If; index with \
             x[..., 0] instead, or export with dynamo=True",
        )
    } else if tract_error.contains("Loop\"") || tract_error.contains("Scan\"") {
        Some(
            "a Loop or Scan over time: export one time step with the state as inputs and \
             outputs (docs/twin-contract.md, Writing a twin from PyTorch)",
        )
    } else {
        None
    }
}

/// Output shapes as tract inferred them against what the contract promises: the response
/// [batch, n_neurons] (or a core's features), each `state_out.X` the shape of `state_in.X`. The
/// file's own declarations may leave these sizes symbolic (contract::check lets them).
fn check_inferred_outputs(
    typed: &TypedModel,
    c: &Contract,
    batch: usize,
    out_ix: &[usize],
    state_out_ix: &[usize],
    path: &Path,
) -> Result<(), TwinError> {
    let outputs = typed
        .output_outlets()
        .map_err(|e| tract_err(path, "outputs", e))?;
    let shape_of = |ix: usize| -> Option<Vec<usize>> {
        let fact = typed.outlet_fact(outputs[ix]).ok()?;
        Some(fact.shape.as_concrete()?.to_vec())
    };
    let fmt = |v: &Option<Vec<usize>>| match v {
        Some(v) => format!("{v:?}"),
        None => "a shape tract could not make concrete".into(),
    };
    let mut problems = Vec::new();
    let main: Vec<usize> = match c.features {
        Some([ch, h, w]) if c.kind == Kind::Core => vec![batch, ch, h, w],
        _ => vec![batch, c.n_neurons],
    };
    for &ix in out_ix {
        let got = shape_of(ix);
        if got.as_ref() != Some(&main) {
            problems.push(format!(
                "output `{}`: expected {main:?} (batch {batch}), tract infers {}",
                c.output_name(),
                fmt(&got)
            ));
        }
    }
    for (s, &ix) in c.states.iter().zip(state_out_ix) {
        let mut want = vec![batch];
        want.extend(&s.shape);
        let got = shape_of(ix);
        if got.as_ref() != Some(&want) {
            problems.push(format!(
                "output `{STATE_OUT}{}`: expected the shape of `{STATE_IN}{}` {want:?}, tract infers {}",
                s.name,
                s.name,
                fmt(&got)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(TwinError::Contract {
            path: path.to_path_buf(),
            problems,
        })
    }
}

fn f32_slice(t: &Tensor) -> TractResult<&[f32]> {
    t.try_as_plain_ram()?.as_slice::<f32>()
}

impl Twin {
    /// Loads, checks and optimises a model for single steps (batch 1) on `backend`.
    pub fn load(path: &Path, backend: Backend) -> Result<Twin, TwinError> {
        Twin::load_with(
            path,
            &TwinOptions {
                backend,
                ..Default::default()
            },
        )
    }

    pub fn load_with(path: &Path, opts: &TwinOptions) -> Result<Twin, TwinError> {
        let t0 = Instant::now();
        let proto = read_model(path)?;
        let contract = contract::check(&proto, path)?;
        let device = resolve_backend(opts.backend)?;
        let mut twin = Twin {
            path: path.to_path_buf(),
            proto,
            contract,
            device,
            threads: opts.threads.max(1),
            plans: HashMap::new(),
            load_s: 0.0,
            scratch: Vec::new(),
            rewrites: Vec::new(),
            profile: None,
        };
        let b = twin.contract.fixed_batch.unwrap_or(1);
        twin.compile(b)?;
        twin.load_s = t0.elapsed().as_secs_f64();
        tracing::debug!(
            "twin: loaded {} ({} neurons) on {} in {:.2} s",
            path.display(),
            twin.contract.n_neurons,
            twin.device,
            twin.load_s
        );
        Ok(twin)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn contract(&self) -> &Contract {
        &self.contract
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn proto(&self) -> &pb::ModelProto {
        &self.proto
    }
    pub fn load_seconds(&self) -> f64 {
        self.load_s
    }
    /// What `twin::passes` rewrote before tract compiled the graph, one line per node.
    pub fn rewrites(&self) -> &[String] {
        &self.rewrites
    }
    /// Seconds each of `steps` single-frame steps takes, sorted, from rest on the gray screen
    /// with a resting mouse (`twin::behavior_input` of nothing measured); `warmup` steps are run
    /// first and not counted. What `rig validate` and `rig run`'s start-up check time.
    pub fn time_steps(&mut self, steps: usize, warmup: usize) -> Result<Vec<f64>, TwinError> {
        let c = self.contract.clone();
        let stim = vec![127.5f32; c.stimulus_len()];
        let beh: Vec<f32> = c
            .behavior_channels
            .iter()
            .map(|ch| super::behavior_input(ch, f32::NAN))
            .collect();
        let mut out = vec![0f32; c.output_len()];
        let mut state = self.new_state();
        let mut times = Vec::with_capacity(steps);
        for i in 0..warmup + steps {
            let t = Instant::now();
            self.step(&mut state, &stim, &beh, &mut out)?;
            if i >= warmup {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(times)
    }

    /// Starts (clearing what was measured) or stops timing every node of every step.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(Vec::new);
    }
    /// Time per node since profiling started, most expensive first.
    pub fn profile(&self) -> Vec<OpTime> {
        let mut v: Vec<OpTime> = self
            .profile
            .iter()
            .flatten()
            .filter(|o| o.calls > 0)
            .cloned()
            .collect();
        v.sort_by(|a, b| b.total_us.total_cmp(&a.total_us));
        v
    }
    /// (nodes placed on the device, all nodes) of the batch-1 plan after optimisation.
    pub fn placement(&self) -> (usize, usize) {
        self.plans
            .values()
            .next()
            .map(|c| (c.device_nodes, c.total_nodes))
            .unwrap_or((0, 0))
    }

    fn compile(&mut self, batch: usize) -> Result<(), TwinError> {
        if self.plans.contains_key(&batch) {
            return Ok(());
        }
        if let Some(fb) = self.contract.fixed_batch {
            if fb != batch {
                return Err(TwinError::Input {
                    what: "batch".into(),
                    expected: format!("{fb} (fixed in the model file)"),
                    found: batch.to_string(),
                });
            }
        }
        let path = self.path.clone();
        let mut model = parse_for_tract(&self.proto, &path)?;
        let c = &self.contract;
        let graph = self.proto.graph.as_ref().expect("checked");
        let inits: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let input_names: Vec<&str> = graph
            .input
            .iter()
            .map(|v| v.name.as_str())
            .filter(|n| !inits.contains(n))
            .collect();
        let ix = |n: &str| input_names.iter().position(|x| *x == n);
        let stim_ix = ix(STIMULUS).expect("checked");
        let beh_ix = ix(BEHAVIOR);
        let mut state_in_ix = Vec::new();
        for s in &c.states {
            state_in_ix.push(ix(&format!("{STATE_IN}{}", s.name)).expect("checked"));
        }
        let mut shapes: Vec<TVec<usize>> = Vec::new();
        for name in &input_names {
            let shape: TVec<usize> = if *name == STIMULUS {
                tvec![batch, 1, c.height, c.width]
            } else if *name == BEHAVIOR {
                tvec![batch, c.n_behavior()]
            } else {
                let s = &c.states[c
                    .states
                    .iter()
                    .position(|s| format!("{STATE_IN}{}", s.name) == *name)
                    .expect("checked")];
                let mut v: TVec<usize> = tvec![batch];
                v.extend(s.shape.iter().copied());
                v
            };
            shapes.push(shape);
        }
        let fix_inputs = |model: &mut InferenceModel| -> Result<(), TwinError> {
            for (i, (name, shape)) in input_names.iter().zip(&shapes).enumerate() {
                model
                    .set_input_fact(i, InferenceFact::dt_shape(f32::datum_type(), shape.clone()))
                    .map_err(|e| tract_err(&path, &format!("input `{name}`"), e))?;
            }
            Ok(())
        };
        fix_inputs(&mut model)?;
        {
            let mut proto = std::borrow::Cow::Borrowed(&self.proto);
            let mut passes: Vec<super::passes::Pass> = vec![super::passes::inline_constant_ifs];
            if std::env::var_os("TWINRIG_NO_SPEED_PASSES").is_none_or(|v| v != "1") {
                passes.push(super::passes::grid_sample_as_gather);
            }
            self.rewrites.clear();
            for pass in passes {
                if let Some((rewritten, notes)) = pass(&proto, &mut model) {
                    self.rewrites.extend(notes);
                    proto = std::borrow::Cow::Owned(rewritten);
                    model = parse_for_tract(&proto, &path)?;
                    fix_inputs(&mut model)?;
                }
            }
        }
        let output_names: Vec<&str> = graph.output.iter().map(|v| v.name.as_str()).collect();
        let oix = |n: &str| output_names.iter().position(|x| *x == n).expect("checked");
        let out_ix = oix(c.output_name());
        let state_out_ix: Vec<usize> = c
            .states
            .iter()
            .map(|s| oix(&format!("{STATE_OUT}{}", s.name)))
            .collect();
        #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
        let mut typed = model.into_optimized().map_err(|e| {
            let msg = format!("{e:?}");
            let what = match export_hint(&msg) {
                Some(h) => format!("tract cannot optimise the model ({h})"),
                None => "tract cannot optimise the model".to_string(),
            };
            tract_err(&path, &what, e)
        })?;
        check_inferred_outputs(&typed, c, batch, &[out_ix], &state_out_ix, &path)?;
        let total_nodes = typed.nodes().len();
        #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
        let mut device_nodes = 0;
        if self.device == Device::Cuda {
            #[cfg(feature = "cuda")]
            {
                use tract_onnx::tract_core::transform::ModelTransform;
                tract_cuda::CudaTransform
                    .transform(&mut typed)
                    .map_err(|e| tract_err(&path, "CUDA transform", e))?;
                typed
                    .optimize()
                    .map_err(|e| tract_err(&path, "optimise after CUDA transform", e))?;
                device_nodes = typed
                    .nodes()
                    .iter()
                    .filter(|n| {
                        let name = n.op().name();
                        name.starts_with("Cuda") || name.starts_with("Gpu")
                    })
                    .count();
            }
        }
        let options = RunOptions {
            executor: (self.threads > 1)
                .then(|| tract_linalg::multithread::Executor::multithread(self.threads)),
            ..Default::default()
        };
        let plan = SimplePlan::new_with_options(typed, &options)
            .map_err(|e| tract_err(&path, "cannot build the execution plan", e))?;
        let state = SimpleState::new(&plan)
            .map_err(|e| tract_err(&path, "cannot build the execution state", e))?;
        self.plans.insert(
            batch,
            Compiled {
                state,
                stim_ix,
                beh_ix,
                state_in_ix,
                out_ix,
                state_out_ix,
                n_inputs: input_names.len(),
                device_nodes,
                total_nodes,
            },
        );
        Ok(())
    }

    /// Prepares the plan for batches of `batch` (done once per batch size; `run_batch` does it
    /// on first use).
    pub fn prepare_batch(&mut self, batch: usize) -> Result<(), TwinError> {
        if batch == 0 {
            return Err(TwinError::Input {
                what: "batch".into(),
                expected: "at least 1".into(),
                found: "0".into(),
            });
        }
        self.compile(batch)
    }

    /// The rest state (all zeros) for one sequence.
    pub fn new_state(&self) -> TwinState {
        self.new_batch_state(1)
    }

    /// The rest state for `batch` independent sequences.
    pub fn new_batch_state(&self, batch: usize) -> TwinState {
        let tensors = self
            .contract
            .states
            .iter()
            .map(|s| {
                let mut shape = vec![batch];
                shape.extend(s.shape.iter().copied());
                Tensor::zero::<f32>(&shape)
                    .expect("zero tensor")
                    .into_tvalue()
            })
            .collect();
        TwinState { batch, tensors }
    }

    /// Advances one imaging frame: `stimulus` is the frame on screen ([H*W] luminance 0..255),
    /// `behavior` the behaviour channels; writes the response of every neuron (or the feature map
    /// of a core) into `out`.
    pub fn step(
        &mut self,
        state: &mut TwinState,
        stimulus: &[f32],
        behavior: &[f32],
        out: &mut [f32],
    ) -> Result<(), TwinError> {
        if state.batch != 1 {
            return Err(TwinError::Input {
                what: "state batch".into(),
                expected: "1 (use run_batch for batches)".into(),
                found: state.batch.to_string(),
            });
        }
        self.run_batch(state, stimulus, behavior, out)
    }

    /// `step` for an 8-bit stimulus frame (as stored in the clip library).
    pub fn step_u8(
        &mut self,
        state: &mut TwinState,
        stimulus: &[u8],
        behavior: &[f32],
        out: &mut [f32],
    ) -> Result<(), TwinError> {
        let mut s = std::mem::take(&mut self.scratch);
        s.clear();
        s.extend(stimulus.iter().map(|&v| v as f32));
        let r = self.step(state, &s, behavior, out);
        self.scratch = s;
        r
    }

    /// Advances B sequences by one frame at once: `stimuli` [B*H*W], `behavior` [B*K], `out`
    /// [B*N]; `state` holds the B sequences' states.
    pub fn run_batch(
        &mut self,
        state: &mut TwinState,
        stimuli: &[f32],
        behavior: &[f32],
        out: &mut [f32],
    ) -> Result<(), TwinError> {
        let b = state.batch;
        let c = &self.contract;
        let (hw, k, n) = (c.stimulus_len(), c.n_behavior(), c.output_len());
        let check_len = |what: &str, got: usize, want: usize| {
            if got != want {
                Err(TwinError::Input {
                    what: what.into(),
                    expected: format!("{want} values"),
                    found: format!("{got}"),
                })
            } else {
                Ok(())
            }
        };
        check_len(
            &format!("stimulus ({b} x {}x{} frame)", c.height, c.width),
            stimuli.len(),
            b * hw,
        )?;
        check_len(
            &format!("behavior ({b} x [{}])", c.behavior_channels.join(", ")),
            behavior.len(),
            b * k,
        )?;
        check_len(&format!("output ({b} x {n})"), out.len(), b * n)?;
        if let Some(i) = stimuli.iter().position(|v| !v.is_finite()) {
            return Err(TwinError::NonFinite {
                input: STIMULUS.into(),
                index: i,
                value: stimuli[i],
            });
        }
        if let Some(i) = behavior.iter().position(|v| !v.is_finite()) {
            return Err(TwinError::NonFinite {
                input: format!(
                    "{BEHAVIOR} (channel {})",
                    c.behavior_channels.get(i % k.max(1)).map_or("?", |s| s)
                ),
                index: i,
                value: behavior[i],
            });
        }
        let (h, w) = (c.height, c.width);
        self.compile(b)?;
        let path = self.path.clone();
        let comp = self.plans.get_mut(&b).expect("compiled");
        let mut inputs: Vec<Option<TValue>> = vec![None; comp.n_inputs];
        inputs[comp.stim_ix] = Some(
            Tensor::from_shape(&[b, 1, h, w], stimuli)
                .map_err(|e| tract_err(&path, "stimulus tensor", e))?
                .into_tvalue(),
        );
        if let Some(bi) = comp.beh_ix {
            inputs[bi] = Some(
                Tensor::from_shape(&[b, k], behavior)
                    .map_err(|e| tract_err(&path, "behavior tensor", e))?
                    .into_tvalue(),
            );
        }
        for (s, &ix) in comp.state_in_ix.iter().enumerate() {
            inputs[ix] = Some(state.tensors[s].clone());
        }
        let inputs: TVec<TValue> = inputs.into_iter().map(|v| v.expect("all set")).collect();
        let mut outputs = match self.profile.as_mut() {
            None => comp.state.run(inputs),
            Some(prof) => comp
                .state
                .run_plan_with_eval(inputs, |ctx, st, node, input| {
                    let t0 = Instant::now();
                    let r = tract_onnx::tract_core::plan::eval(ctx, st, node, input);
                    if prof.len() <= node.id {
                        prof.resize_with(node.id + 1, || OpTime {
                            op: String::new(),
                            node: String::new(),
                            calls: 0,
                            total_us: 0.0,
                        });
                    }
                    let e = &mut prof[node.id];
                    if e.calls == 0 {
                        e.op = node.op().name().to_string();
                        e.node = node.name.clone();
                    }
                    e.calls += 1;
                    e.total_us += t0.elapsed().as_secs_f64() * 1e6;
                    r
                }),
        }
        .map_err(|e| tract_err(&path, "run", e))?;
        {
            let o = f32_slice(&outputs[comp.out_ix]).map_err(|e| tract_err(&path, "output", e))?;
            if o.len() != out.len() {
                return Err(TwinError::Input {
                    what: "model output".into(),
                    expected: format!("{} values", out.len()),
                    found: o.len().to_string(),
                });
            }
            out.copy_from_slice(o);
        }
        for (s, &ix) in comp.state_out_ix.iter().enumerate() {
            state.tensors[s] = std::mem::replace(
                &mut outputs[ix],
                Tensor::zero::<f32>(&[0]).expect("empty").into_tvalue(),
            );
        }
        Ok(())
    }

    /// Runs a whole clip from the rest state: `stimuli` [T*H*W], `behavior` [T*K] -> `out` [T*N].
    pub fn run_clip(
        &mut self,
        stimuli: &[f32],
        behavior: &[f32],
        out: &mut [f32],
    ) -> Result<(), TwinError> {
        let c = &self.contract;
        let (hw, k, n) = (c.stimulus_len(), c.n_behavior(), c.output_len());
        let t = stimuli.len() / hw.max(1);
        if stimuli.len() != t * hw || behavior.len() != t * k || out.len() != t * n {
            return Err(TwinError::Input {
                what: "clip".into(),
                expected: format!("T*{hw} stimulus, T*{k} behaviour, T*{n} output values"),
                found: format!("{}, {}, {}", stimuli.len(), behavior.len(), out.len()),
            });
        }
        let mut st = self.new_state();
        for i in 0..t {
            self.step(
                &mut st,
                &stimuli[i * hw..(i + 1) * hw],
                &behavior[i * k..(i + 1) * k],
                &mut out[i * n..(i + 1) * n],
            )?;
        }
        Ok(())
    }
}

/// Ops of the contract's graphs and where each backend runs them.
#[derive(Debug, Clone, Serialize)]
pub struct OpSupport {
    pub op_type: String,
    pub count: usize,
    pub cpu: bool,
    /// Predicted to run on the CUDA device: the op is in [`CUDA_OPS`], a hand-written table of
    /// what tract-cuda 0.23 translates. Only [`Twin::placement`] on a CUDA machine measures it.
    pub cuda: bool,
}

/// What to do about a twin whose step is longer than an imaging frame (`rig run`'s start-up
/// check and `rig validate`).
pub const SLOW_TWIN_ADVICE: &str = "twin.backend = \"cuda\" on a GPU, or a twin with fewer neurons";

/// ONNX ops that tract-cuda 0.23 translates to device kernels (Conv, matrix products,
/// elementwise and binary math, reductions, gather and copy-based shape ops). Everything else runs
/// on the CPU between device syncs.
pub const CUDA_OPS: &[&str] = &[
    "Conv",
    "MatMul",
    "Gemm",
    "Einsum",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "Sqrt",
    "Rsqrt",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Exp",
    "Log",
    "Neg",
    "Abs",
    "Sin",
    "Cos",
    "Erf",
    "Reciprocal",
    "Softmax",
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "Gather",
    "Cast",
    "Where",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Concat",
    "Slice",
    "Identity",
    "Expand",
    "Constant",
];

/// Ops the design doc names as falling back to the CPU under tract-cuda.
pub const CUDA_FALLBACK_OPS: &[&str] = &[
    "ConvTranspose",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Resize",
    "GridSample",
    "Scan",
    "Loop",
    "GRU",
    "LSTM",
    "RNN",
    "Elu",
    "Softplus",
];

pub fn op_support(m: &pb::ModelProto) -> Vec<OpSupport> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    if let Some(g) = &m.graph {
        for n in &g.node {
            match counts.iter_mut().find(|(o, _)| *o == n.op_type) {
                Some((_, c)) => *c += 1,
                None => counts.push((n.op_type.clone(), 1)),
            }
        }
    }
    let known = tract_onnx::onnx();
    counts
        .into_iter()
        .map(|(op, count)| OpSupport {
            cpu: known.op_register.0.contains_key(op.as_str()),
            cuda: CUDA_OPS.contains(&op.as_str()),
            op_type: op,
            count,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::export_hint;

    #[test]
    fn tract_errors_of_export_patterns_get_the_pattern_to_use() {
        let e = "Translating node #40 \"/If\" If ToTypedTranslator: in output_facts invocation";
        assert!(export_hint(e).unwrap().contains("x[..., 0]"));
        assert!(export_hint("Translating node #3 \"/Loop\" Loop")
            .unwrap()
            .contains("one time step"));
        assert!(export_hint("Unifying shapes batch,1 and 1,1").is_none());
    }
}
