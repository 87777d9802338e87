//! The digital twin: an ONNX network that predicts each recorded neuron's response (dF/F) to the
//! stimulus on screen and the mouse's behaviour, stepped one imaging frame at a time.
//!
//! - `contract`: what a twin (or shared core) ONNX file must declare; checked at load.
//! - `runtime`: `Twin` on tract, CPU or CUDA, with explicit recurrent state and batches.
//! - `onnx`: writing ONNX graphs from Rust (the reference core and adapted twins).
//! - `core`: the reference core (quadrature Gabor bank + leaky temporal stage + energy).
//! - `data`: what a session showed and measured, on the imaging frame clock.
//! - `adapt`: fitting a per-neuron readout on a fixed core (ridge, cross-validated).
//! - `metrics`: correlations and the noise ceiling.

pub mod adapt;
pub mod contract;
pub mod core;
pub mod data;
pub mod metrics;
pub mod onnx;
pub mod runtime;

use std::path::PathBuf;

use thiserror::Error;

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
}
