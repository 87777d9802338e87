//! Things that live exactly as long as a run's frame source: the pipeline drops the source when
//! acquisition ends, and with it these companions (threads that feed the recorder's event channel
//! stop, so the recorder can finish).

use crate::acquire::stream::StreamHandle;
use crate::acquire::{AcquireError, FrameInfo, FrameSource};
use crate::harp::HostClock;

/// A frame source that drops its companions after itself.
struct WithCompanions {
    /// `Some` until dropped.
    inner: Option<Box<dyn FrameSource>>,
    companions: Vec<Box<dyn Send>>,
}

/// `source`, carrying the given companions (none: `source` unchanged).
pub fn with_companions<const N: usize>(
    source: Box<dyn FrameSource>,
    companions: [Option<Box<dyn Send>>; N],
) -> Box<dyn FrameSource> {
    let companions: Vec<Box<dyn Send>> = companions.into_iter().flatten().collect();
    if companions.is_empty() {
        return source;
    }
    Box::new(WithCompanions {
        inner: Some(source),
        companions,
    })
}

impl Drop for WithCompanions {
    fn drop(&mut self) {
        // The source first (its event sender and hooks), then each companion in order.
        drop(self.inner.take());
        self.companions.drain(..).for_each(drop);
    }
}

impl FrameSource for WithCompanions {
    fn height(&self) -> usize {
        self.inner.as_ref().map_or(0, |s| s.height())
    }
    fn width(&self) -> usize {
        self.inner.as_ref().map_or(0, |s| s.width())
    }
    fn len_hint(&self) -> Option<u64> {
        self.inner.as_ref().and_then(|s| s.len_hint())
    }
    fn next_frame(&mut self, out: &mut [u16]) -> Result<Option<FrameInfo>, AcquireError> {
        match self.inner.as_mut() {
            Some(s) => s.next_frame(out),
            None => Ok(None),
        }
    }
}

/// The rig clock of a live stream source, for the sync board's driver.
pub fn stream_clock(handle: StreamHandle) -> HostClock {
    HostClock(std::sync::Arc::new(move || handle.rig_now()))
}
