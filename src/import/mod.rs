//! Recordings made elsewhere, brought in as sessions: ScanImage (or any grayscale) TIFF movies.
//! A room of its own: it writes sessions through `session::SessionWriter` and knows nothing of
//! the pipeline that will read them.

pub mod scanimage;
pub mod tiff;

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ImportError {
    #[error("{0}")]
    Input(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("interrupted after {frames} frames; no session was written")]
    Interrupted { frames: u64 },
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
}
