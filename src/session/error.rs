//! Errors of the session format. Each names the file and, where there is one, the dataset.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("{path}: no such file")]
    NotFound { path: PathBuf },
    #[error("{path}: not an HDF5 file (no HDF5 signature)")]
    NotHdf5 { path: PathBuf },
    #[error("{path}: damaged or truncated HDF5 file: {message}")]
    Damaged { path: PathBuf, message: String },
    #[error("{path}: not a twinrig session (root attribute `format` is {found:?}, expected \"twinrig-session\")")]
    NotSession { path: PathBuf, found: String },
    #[error(
        "{path}: session format version {found} is newer than this rig reads (up to {supported})"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path}: missing dataset `{dataset}`")]
    MissingDataset { path: PathBuf, dataset: String },
    #[error("{path}: dataset `{dataset}` has type {found}, expected {expected}")]
    WrongType {
        path: PathBuf,
        dataset: String,
        expected: String,
        found: String,
    },
    #[error("{path}: dataset `{dataset}` has shape {found:?}, expected {expected}")]
    WrongShape {
        path: PathBuf,
        dataset: String,
        expected: String,
        found: Vec<usize>,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot create session file {path}: {message}")]
    Create { path: PathBuf, message: String },
    #[error("HDF5 error at `{location}`: {message}")]
    Hdf5 { location: String, message: String },
    #[error("session layout: {0}")]
    Layout(String),
    #[error(
        "disk full: no space left on the device while writing `{location}`; the session file \
         keeps everything up to its last flush"
    )]
    DiskFull { location: String },
    #[error(transparent)]
    Output(#[from] crate::outfile::OutputError),
}

impl SessionError {
    pub(crate) fn hdf5(location: &str, e: hdf5::Error) -> Self {
        let message = e.to_string();
        // libhdf5 reports a full disk as a failed write deep in its stack (errno 28, and a
        // "bytes actually written" of (size_t)-1); the operator needs the cause, not the stack.
        if message.contains("No space left on device") || message.contains("errno = 28") {
            return SessionError::DiskFull {
                location: location.to_string(),
            };
        }
        SessionError::Hdf5 {
            location: location.to_string(),
            message: first_line(&message),
        }
    }

    /// Whether the device the session is written to is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, SessionError::DiskFull { .. })
    }
}

/// The first line of a (libhdf5) message: the rest is its internal call stack.
pub(crate) fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or("").trim().to_string()
}
