//! Presenting stimuli: the [`Display`] the daemon drives, and `rig present`, the window on the
//! rig's stimulus monitor.
//!
//! - [`protocol`] — the display protocol (docs/display-protocol.md): JSON lines + clip payloads.
//! - [`player`] — what is on screen at each flip (shared by every display).
//! - [`geometry`] — where each screen pixel looks in the stimulus (planar or spherical).
//! - [`render`] — the CPU renderer: bilinear sampling through the geometry, gamma, patch.
//! - [`screen`] — what the flip loop draws on: the CPU renderer or the GL one ([`gl`]).
//! - [`core`] — the flip loop (vsync- or deadline-paced) over a [`screen::Screen`].
//! - [`server`] — the presenter's protocol server; [`server::HeadlessPresenter`] without a window.
//! - [`window`] — the X11 window (winit + softbuffer).
//! - [`client`] — [`client::PresenterClient`], the daemon's `Display` over the protocol.
//! - [`trials`] — which clip the next trial shows (queued clips, then the shuffled library).
//! - [`virtual_display`] — [`virtual_display::VirtualPresenter`], a `Display` on a simulated
//!   clock (no window, no socket).

pub mod client;
pub mod core;
pub mod geometry;
pub mod gl;
pub mod player;
pub mod protocol;
pub mod render;
pub mod screen;
pub mod server;
pub mod trials;
pub mod virtual_display;
pub mod window;

use serde::Serialize;
use thiserror::Error;

pub use client::PresenterClient;
pub use virtual_display::VirtualPresenter;

#[derive(Debug, Error)]
pub enum DisplayError {
    #[error("presenter: {0}")]
    Io(String),
    #[error("presenter protocol: {0}")]
    Protocol(String),
    #[error("presenter refused: {0}")]
    Presenter(String),
    #[error("presenter disconnected")]
    Disconnected,
    #[error("presenter did not answer in time")]
    Timeout,
    #[error("bad clip: {0}")]
    BadClip(String),
    #[error("no clip {0} uploaded")]
    UnknownClip(u32),
}

/// One frame that reached the screen, as the daemon records it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PresentedFrame {
    /// Rig clock at the flip, seconds.
    pub time: f64,
    /// Clip id, or -1 for gray.
    pub clip: i64,
    /// Frame index in the clip (0 for gray).
    pub frame: u32,
    /// Photodiode patch on this frame: 1 white, 0 black.
    pub photodiode: u8,
    /// Refresh periods missed just before this flip.
    pub missed: u32,
    /// Flip counter of the display.
    pub seq: u64,
}

/// A presenter's flips over a timed run (`rig validate`'s display check).
#[derive(Debug, Clone)]
pub struct FlipRun {
    /// How the presenter says it paces its flips (its hello).
    pub pacing: String,
    pub vsync: bool,
    /// Every flip reported, times on the client's clock.
    pub flips: Vec<PresentedFrame>,
}

/// A stimulus display as the daemon sees it.
///
/// Clips are 8-bit linear luminance, `f x h x w`, frame-major (docs/session-format.md "Stimulus
/// encoding"); the display applies gamma, scaling and the photodiode patch.
pub trait Display: Send {
    /// Makes clip `id` available (replaces an earlier clip with the same id).
    fn upload_clip(
        &mut self,
        id: u32,
        frames: &[u8],
        f: usize,
        h: usize,
        w: usize,
    ) -> Result<(), DisplayError>;
    /// Plays clip `id` from frame 0 at the next flip, or at the flip nearest `at_rig_time`, then
    /// shows gray.
    fn play(&mut self, id: u32, at_rig_time: Option<f64>) -> Result<(), DisplayError>;
    /// Mean-luminance gray from the next flip on.
    fn gray(&mut self) -> Result<(), DisplayError>;
    /// Appends the flips presented since the last call; returns how many.
    fn poll_flips(&mut self, out: &mut Vec<PresentedFrame>) -> Result<usize, DisplayError>;
}
