//! The session's clip library as the loop sees it: shared between the stimulus schedule (which
//! adds clips, e.g. from an in-silico plan) and the twin (which reads the frame on screen).

use std::sync::{Arc, RwLock};

/// Clips are `frames_per_clip x height x width` u8 linear luminance (docs/session-format.md).
#[derive(Clone)]
pub struct ClipStore {
    inner: Arc<RwLock<Vec<Arc<[u8]>>>>,
    pub frames_per_clip: usize,
    pub height: usize,
    pub width: usize,
}

/// Luminance of the mean-gray screen in clip units.
pub const GRAY: f32 = crate::twin::data::GRAY;

impl ClipStore {
    pub fn new(frames_per_clip: usize, height: usize, width: usize) -> Self {
        ClipStore {
            inner: Arc::new(RwLock::new(Vec::new())),
            frames_per_clip,
            height,
            width,
        }
    }

    /// Adds a clip; returns its id, or None when its size is not `F x h x w`.
    pub fn push(&self, frames: &[u8]) -> Option<i32> {
        if frames.len() != self.frames_per_clip * self.height * self.width {
            return None;
        }
        let mut v = self.inner.write().unwrap_or_else(|e| e.into_inner());
        v.push(Arc::from(frames));
        Some(v.len() as i32 - 1)
    }

    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes frame `frame` of clip `clip` (gray for -1) into `out` as f32 luminance; false when
    /// the clip or frame does not exist.
    pub fn frame_into(&self, clip: i32, frame: u32, out: &mut [f32]) -> bool {
        if clip < 0 {
            out.iter_mut().for_each(|v| *v = GRAY);
            return true;
        }
        let n = self.height * self.width;
        let v = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let (Some(c), true) = (
            v.get(clip as usize),
            (frame as usize) < self.frames_per_clip,
        ) else {
            return false;
        };
        let src = &c[frame as usize * n..(frame as usize + 1) * n];
        out.iter_mut().zip(src).for_each(|(o, &s)| *o = s as f32);
        true
    }
}
