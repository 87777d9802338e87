//! The HDF5 session format (v1): one file per session with every frame, the stimulus, behaviour,
//! sync-board events, ROI masks, analysis outputs and, for simulated sessions, the ground truth.
//! docs/session-format.md is the human-readable form of `layout`.

pub mod error;
pub mod layout;
pub mod reader;
pub mod results;
pub mod twin;
pub mod writer;

pub use error::SessionError;
pub use reader::{
    read_roi_file, Behavior, Flips, GroundTruth, SessionMeta, SessionReader, Traces, Trials,
};
pub use results::{PresenterFlips, StageLatency, TwinResults};
pub use twin::TwinEnd;
pub use writer::{
    write_roi_file, ClipParams, NeuronTable, RoiTable, SessionInfo, SessionWriter, TraceRow,
};
