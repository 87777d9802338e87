//! The digital twin: an ONNX network that predicts each recorded neuron's response (dF/F) to the
//! stimulus on screen and the mouse's behaviour, stepped one imaging frame at a time.
//!
//! - `contract`: what a twin (or shared core) ONNX file must declare; checked at load.
//! - `runtime`: `Twin` on tract, CPU or CUDA, with explicit recurrent state and batches.
//! - `onnx`: writing ONNX graphs from Rust (the reference core and adapted twins).
//! - `passes`: rewrites of an exporter's graph that tract needs before it can type it.
//! - `core`: the reference core (quadrature Gabor bank + leaky temporal stage + energy).
//! - `foundation`: a foundation-scale twin with random weights, for benchmarks.
//! - `data`: what a session showed and measured, on the imaging frame clock.
//! - `adapt`: fitting a per-neuron readout on a fixed core (ridge, cross-validated); `glm` its
//!   output stage (temporal kernel, softplus rate, indicator decay).
//! - `metrics`: correlations and the noise ceiling; `evaluate`: those per stimulus family.

pub mod adapt;
pub mod contract;
pub mod core;
pub mod data;
pub mod evaluate;
pub mod foundation;
pub mod glm;
pub mod gram;
pub mod locate;
pub mod metrics;
pub mod onnx;
pub mod passes;
pub mod runtime;

use std::path::PathBuf;

use thiserror::Error;

/// Pupil diameter of a resting mouse, mm: what a twin is fed when the rig measured no pupil.
pub const RESTING_PUPIL_MM: f32 = 1.3;

/// The value a twin is fed for behaviour channel `channel`: `value` when the rig measured it, the
/// resting animal (no running, [`RESTING_PUPIL_MM`]) where the session holds NaN (a live rig
/// without a pupil camera or encoder). The twin in the loop and `rig twin predict` both use it,
/// so they see the same inputs.
pub fn behavior_input(channel: &str, value: f32) -> f32 {
    if value.is_finite() {
        value
    } else if channel == "pupil_diameter" {
        RESTING_PUPIL_MM
    } else {
        0.0
    }
}

pub use contract::{Contract, Kind, StateSpec};
pub use runtime::{Device, Twin, TwinOptions, TwinState};

#[derive(Debug, Error)]
pub enum TwinError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: not an ONNX model: {reason}")]
    NotOnnx { path: PathBuf, reason: String },
    #[error("{path}: does not follow the twin contract (docs/twin-contract.md), {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Contract {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("{path}: tract: {message}")]
    Tract { path: PathBuf, message: String },
    #[error("twin input `{what}`: expected {expected}, found {found}")]
    Input {
        what: String,
        expected: String,
        found: String,
    },
    #[error("twin input `{input}`: value {value} at index {index} is not finite")]
    NonFinite {
        input: String,
        index: usize,
        value: f32,
    },
    #[error("twin backend: {0}")]
    Backend(String),
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error("adapt: {0}")]
    Adapt(String),
    #[error(transparent)]
    Interrupted(#[from] crate::interrupt::Interrupted),
}
