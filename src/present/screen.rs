//! What the flip loop draws on: a [`Screen`] takes clips once, draws the content of each flip
//! with the photodiode patch, and shows it. Two renderers implement it:
//!
//! - [`CpuScreen`]: frames composed on the CPU ([`super::render::Compositor`]) and handed to a
//!   [`Surface`] (the softbuffer window, or memory in tests). Needs no GPU driver.
//! - `GlScreen` ([`super::gl`]): clips live on the GPU as textures; a shader samples, applies
//!   gamma and the geometry; the swap can wait for the monitor's refresh.
//!
//! Both draw the same pixels (bilinear in linear luminance, 12-bit gamma table, the same map from
//! [`super::geometry`]), so a stimulus looks the same whichever one a rig ends up with.

use std::collections::HashMap;
use std::sync::Arc;

use super::core::Clip;
use super::player::Content;
use super::render::{Compositor, RenderError, Surface};
use crate::config::Display as DisplayCfg;

pub trait Screen {
    /// Drawable size, pixels.
    fn size(&self) -> (u32, u32);
    /// Handles window-system events; `false` once the window is closed.
    fn pump(&mut self) -> bool {
        true
    }
    /// Takes clip `id` (replacing an earlier one with that id). Called when the client uploads,
    /// never per frame: a GPU renderer makes its textures here.
    fn upload(&mut self, id: u32, clip: &Arc<Clip>) -> Result<(), RenderError>;
    /// Drops every clip (the client went away).
    fn clear_clips(&mut self);
    /// Draws the next flip's content and the photodiode patch (white when `patch_on`).
    fn draw(&mut self, content: Content, patch_on: bool) -> Result<(), RenderError>;
    /// Shows what was drawn.
    fn present(&mut self) -> Result<(), RenderError>;
    /// `present` returns only once the monitor has taken the frame (vsync): the flip loop then
    /// lets the monitor pace it instead of its own timer.
    fn vsync_paced(&self) -> bool {
        false
    }
    /// Which renderer draws, for logs and reports (`"cpu"`, `"gl: llvmpipe ..."`).
    fn renderer(&self) -> String;
}

impl<S: Screen + ?Sized> Screen for Box<S> {
    fn size(&self) -> (u32, u32) {
        (**self).size()
    }
    fn pump(&mut self) -> bool {
        (**self).pump()
    }
    fn upload(&mut self, id: u32, clip: &Arc<Clip>) -> Result<(), RenderError> {
        (**self).upload(id, clip)
    }
    fn clear_clips(&mut self) {
        (**self).clear_clips()
    }
    fn draw(&mut self, content: Content, patch_on: bool) -> Result<(), RenderError> {
        (**self).draw(content, patch_on)
    }
    fn present(&mut self) -> Result<(), RenderError> {
        (**self).present()
    }
    fn vsync_paced(&self) -> bool {
        (**self).vsync_paced()
    }
    fn renderer(&self) -> String {
        (**self).renderer()
    }
}

/// The CPU renderer over a framebuffer surface.
pub struct CpuScreen<S: Surface> {
    surface: S,
    comp: Compositor,
    clips: HashMap<u32, Arc<Clip>>,
    /// Content now in the framebuffer under the patch: an unchanged frame is not recomposed.
    shown: Option<Content>,
}

impl<S: Surface> CpuScreen<S> {
    pub fn new(surface: S, cfg: &DisplayCfg) -> Self {
        let (w, h) = surface.size();
        CpuScreen {
            comp: Compositor::new(cfg, w, h),
            surface,
            clips: HashMap::new(),
            shown: None,
        }
    }
}

impl<S: Surface> Screen for CpuScreen<S> {
    fn size(&self) -> (u32, u32) {
        self.surface.size()
    }

    fn pump(&mut self) -> bool {
        self.surface.pump()
    }

    fn upload(&mut self, id: u32, clip: &Arc<Clip>) -> Result<(), RenderError> {
        self.clips.insert(id, clip.clone());
        if matches!(self.shown, Some(Content::Frame { clip, .. }) if clip == id) {
            self.shown = None;
        }
        Ok(())
    }

    fn clear_clips(&mut self) {
        self.clips.clear();
    }

    fn draw(&mut self, content: Content, patch_on: bool) -> Result<(), RenderError> {
        let size = self.surface.size();
        if size != self.comp.size() {
            tracing::info!("drawing at {}x{}", size.0, size.1);
            self.comp.resize(size.0, size.1);
            self.shown = None;
        }
        if self.shown != Some(content) {
            let frame = match content {
                Content::Gray => None,
                Content::Frame { clip, frame } => self
                    .clips
                    .get(&clip)
                    .and_then(|c| c.frame(frame).map(|px| (px, c.height, c.width))),
            };
            match frame {
                Some((px, h, w)) => self.comp.draw_frame(px, h, w),
                None => self.comp.draw_gray(),
            }
            self.shown = Some(content);
        }
        self.comp.draw_patch(patch_on);
        Ok(())
    }

    fn present(&mut self) -> Result<(), RenderError> {
        let (w, h) = self.comp.size();
        self.surface.present(self.comp.framebuffer(), w, h)
    }

    fn renderer(&self) -> String {
        "cpu".into()
    }
}
