//! In-silico experiments: find the stimuli the twin predicts will best serve an objective, before
//! showing them to the mouse (docs/insilico.md).
//!
//! - `family`: parametric stimulus families (gratings, Gabor patches, sparse noise, a smooth
//!   free-form space, natural clips from a library) rendered under the MEI constraints (mean gray,
//!   RMS-contrast budget, 8-bit pixel range) at the twin's size and frame rate.
//! - `objective`: what a stimulus is scored for (one neuron, a group, one-hot selectivity,
//!   exploration) as a list of goals scored from the twin's mean response.
//! - `pool`: evaluates candidates on the twin in fixed batches on every core.
//! - `cmaes`: the gradient-free optimiser (CMA-ES in the unit cube of a family's parameters).
//! - `search`: screening then optimisation under a budget of twin evaluations; `shard`: splitting
//!   the screen and the optimiser over job arrays and merging the pieces back into the plan one
//!   run would give.
//! - `plan`: the ranked plan, written to and read from HDF5.
//! - `control`: random stimuli of a plan stimulus's family at its contrast, the control a plan is
//!   judged against.
//! - `evaluate`: shows a plan to the simulated mouse and scores it against ground truth.
//! - `background`: a search on its own thread, for `rig run`.

pub mod background;
pub mod cmaes;
pub mod control;
pub mod evaluate;
pub mod family;
pub mod objective;
pub mod plan;
mod pool;
pub mod search;
pub mod shard;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use background::{spawn, Background};
pub use evaluate::{evaluate_on_sim, EvalOptions, SimReport};
pub use objective::Objective;
pub use plan::{Entry, Plan, Stage};
pub use search::{explore_weights_from_session, search};
pub use shard::{merge, optimise_part, Shard};

#[derive(Debug, Error)]
pub enum InsilicoError {
    /// A bad option or argument: names the option and what it accepts.
    #[error("{0}")]
    Input(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: `{field}`: expected {expected}, found {found}")]
    Field {
        path: PathBuf,
        field: String,
        expected: String,
        found: String,
    },
    #[error(transparent)]
    Twin(#[from] crate::twin::TwinError),
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
}

impl InsilicoError {
    pub(crate) fn input(s: impl Into<String>) -> Self {
        InsilicoError::Input(s.into())
    }
}

/// Everything that defines a search. Stored (as JSON) in every plan, so `merge` can re-run the
/// optimiser stage exactly and a plan says how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchOptions {
    pub objective: Objective,
    /// ROI ids (the twin's `twin.roi_ids`) of the target neurons. `explore` without targets
    /// explores every neuron.
    pub targets: Vec<u32>,
    /// Twin evaluations (one candidate stimulus clip scored = one evaluation), screening and
    /// optimisation together.
    pub budget: u64,
    pub seed: u64,
    /// Families to search: grating, gabor, noise, freeform, natural (needs `library`).
    pub families: Vec<String>,
    /// Session file whose clip library (`stimulus/clips`, natural clips only) the `natural` family
    /// draws from.
    pub library: Option<PathBuf>,
    /// Length of each candidate stimulus, seconds (rendered at the twin's frame rate).
    pub clip_s: f64,
    /// RMS contrast budget over a clip, in contrast units (L - gray) / gray. 0.5 is the mean RMS
    /// contrast of the simulator's natural clips, so optimised stimuli win by their structure, not
    /// by more contrast.
    pub max_rms_contrast: f64,
    /// Display geometry: degrees of visual angle per stimulus pixel.
    pub deg_per_px: f64,
    /// Share of the budget spent screening (the rest goes to CMA-ES).
    pub screen_fraction: f64,
    /// Entries per goal in the plan.
    pub plan_size: usize,
    /// Screened candidates kept per goal (CMA-ES seeds come from these).
    pub keep: usize,
    /// CMA-ES runs per goal, each seeded from one of the best screened candidates.
    pub starts: usize,
    /// Candidates per twin batch. Part of the result's definition: batches are fixed by candidate
    /// index, so any thread count or sharding scores each candidate in the same batch.
    pub batch: usize,
    /// Worker threads (0 = all cores).
    pub threads: usize,
    /// Stop early after this many seconds (the plan is then not reproducible from the seed).
    pub time_limit_s: Option<f64>,
    /// Screen only this shard of the screening stage (`rig insilico --shard K/N`).
    pub shard: Option<Shard>,
    /// Behaviour held constant while the twin scores stimuli (a still mouse by default).
    pub running_speed: f32,
    pub pupil_mm: f32,
    /// `explore`: per-neuron weight (the twin's error on recorded data), one per twin neuron.
    pub explore_weights: Vec<f32>,
}

/// Families searched when none are named.
pub const DEFAULT_FAMILIES: &[&str] = &["grating", "gabor", "noise", "freeform"];
/// The default budget of twin evaluations of `rig insilico`.
pub const DEFAULT_BUDGET: u64 = 2000;

impl Default for SearchOptions {
    fn default() -> Self {
        let cfg = crate::config::RigConfig::embedded_sim();
        SearchOptions {
            objective: Objective::Neuron,
            targets: Vec::new(),
            budget: DEFAULT_BUDGET,
            seed: 1,
            families: DEFAULT_FAMILIES.iter().map(|s| s.to_string()).collect(),
            library: None,
            clip_s: 1.0,
            max_rms_contrast: 0.5,
            deg_per_px: cfg.display.width_deg() / cfg.stimulus.width as f64,
            screen_fraction: 0.5,
            plan_size: 4,
            keep: 8,
            starts: 2,
            batch: 8,
            threads: 0,
            time_limit_s: None,
            shard: None,
            running_speed: 0.0,
            pupil_mm: 1.3,
            explore_weights: Vec::new(),
        }
    }
}

/// SplitMix64 of (a, b): a well-mixed seed for candidate `b` of a search seeded with `a`, so each
/// candidate depends only on the seed and its own index (the basis of sharding).
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
