//! `rig report`: one self-contained HTML page about a finished session (or an in-silico plan),
//! for a person to look at: what was recorded, the mean image with its ROIs, the twin against
//! the brain (best, median and worst neurons, the fidelity distribution against a
//! shuffled-neuron baseline, fidelity over time, trial-averaged responses per clip), what a plan
//! showed and what it did, latencies, and the display's timing.
//!
//! Architecture invariant: the report only reads. It gets sessions through
//! `session::SessionReader`, plans through `insilico::Plan::read` and a plan's in-vivo gain
//! through `closedloop::gain`; nothing here knows the pipeline's internals, and nothing below
//! imports it. Sections whose data a file lacks say so in one line instead of failing.

pub mod html;
pub mod image;
pub mod plan;
pub mod session;
pub mod svg;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::insilico::InsilicoError;
use crate::session::{SessionError, SessionReader};

#[derive(Debug, Error)]
pub enum ReportError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Plan(#[from] InsilicoError),
    #[error(
        "{path}: not a twinrig session or in-silico plan (root attribute `format` is {found:?})"
    )]
    NotReportable { path: PathBuf, found: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// What `rig report --json` prints: the kind of file, each section present or absent, and the
/// figures' headline numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `session` or `plan`.
    pub kind: &'static str,
    pub file: String,
    pub sections: Vec<html::SectionSummary>,
    pub figures: usize,
    /// Headline numbers by name (e.g. `median_fidelity`, `shuffled_median`, `neurons`); a
    /// number the file cannot give is left out.
    pub numbers: BTreeMap<String, f64>,
}

/// A rendered report.
pub struct Report {
    pub html: String,
    pub summary: Summary,
}

/// Headline numbers as a section finds them.
#[derive(Default)]
pub struct Numbers(BTreeMap<String, f64>);

impl Numbers {
    pub fn set(&mut self, name: &str, v: f64) {
        if v.is_finite() {
            self.0.insert(name.to_string(), v);
        }
    }

    pub fn set_opt(&mut self, name: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.set(name, v);
        }
    }
}

/// Progress of a report: (done, total) in steps the report chooses (most are frames read for
/// the mean image).
pub type Progress<'a> = &'a dyn Fn(u64, u64);

/// Builds the report of a session file or a plan file, whichever `path` is.
pub fn build(path: &Path, progress: Progress<'_>) -> Result<Report, ReportError> {
    match SessionReader::open(path) {
        Ok(r) => session::report(&r, progress),
        Err(SessionError::NotSession { found, .. })
            if found == crate::insilico::plan::FORMAT_NAME =>
        {
            let plan = crate::insilico::Plan::read(path)?;
            plan::report(path, &plan)
        }
        Err(SessionError::NotSession { path, found }) => {
            Err(ReportError::NotReportable { path, found })
        }
        Err(e) => Err(e.into()),
    }
}

/// Assembles the page and its summary.
pub(crate) fn finish(
    kind: &'static str,
    path: &Path,
    title: &str,
    subtitle: &str,
    sections: Vec<html::Section>,
    numbers: Numbers,
) -> Report {
    let summaries: Vec<_> = sections.iter().map(|s| s.summary()).collect();
    Report {
        html: html::page(title, subtitle, &sections),
        summary: Summary {
            kind,
            file: path.display().to_string(),
            figures: summaries.iter().map(|s| s.figures).sum(),
            sections: summaries,
            numbers: numbers.0,
        },
    }
}
