//! Frame sources: where frames enter the pipeline. Each fills a caller-provided buffer (a ring
//! slot), so acquisition allocates nothing per frame.

pub mod replay;
pub mod sim;

pub use replay::ReplaySource;
pub use sim::SimSource;

use thiserror::Error;

use crate::session::SessionError;

#[derive(Debug, Error)]
pub enum AcquireError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("{0}")]
    Invalid(String),
}

/// A frame's identity on the rig clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameInfo {
    pub index: u64,
    /// Rig-clock time, seconds.
    pub time: f64,
}

/// Something that produces imaging frames of a fixed shape.
pub trait FrameSource: Send {
    fn height(&self) -> usize;
    fn width(&self) -> usize;
    /// Total frames, when known in advance.
    fn len_hint(&self) -> Option<u64>;
    /// Fills `out` (height*width pixels) with the next frame; `None` at the end of the stream.
    fn next_frame(&mut self, out: &mut [u16]) -> Result<Option<FrameInfo>, AcquireError>;
}
