//! twinrig: the library behind the `rig` binary.
//!
//! A frame's path through the crate follows the module names: `sim` (or a live source) makes it,
//! `session` records it, `extract` turns it into activity. docs/ARCHITECTURE.md has the map.

pub mod acquire;
pub mod budget;
pub mod child;
pub mod closedloop;
pub mod compare;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dashboard;
pub mod export;
pub mod extract;
pub mod harp;
pub mod import;
pub mod insilico;
pub mod interrupt;
pub mod live;
pub mod nwbmask;
pub mod outfile;
pub mod picture;
pub mod pipeline;
pub mod present;
pub mod report;
pub mod ring;
pub mod session;
pub mod sim;
pub mod stats;
pub mod twin;
pub mod validate;

/// Version of this build, recorded in every session file.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
