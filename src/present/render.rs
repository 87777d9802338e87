//! Composing a presented frame on the CPU: gamma lookup, the planar mapping of the stimulus grid
//! onto the screen, mean-luminance gray and the photodiode patch. A [`Surface`] shows the result:
//! the X11 window (`window`) or an in-memory framebuffer for tests ([`HeadlessSurface`]).
//!
//! Pixels are `0x00RRGGBB` (softbuffer's format); the stimulus is gray, so R = G = B.

use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::config::{Corner, Display as DisplayCfg};

#[derive(Debug, Error)]
pub enum RenderError {
    #[error("display: {0}")]
    Surface(String),
}

/// Where frames go.
pub trait Surface {
    /// Current drawable size, pixels.
    fn size(&self) -> (u32, u32);
    /// Handles window-system events; `false` once the window is closed.
    fn pump(&mut self) -> bool {
        true
    }
    /// Shows `fb` (`width*height`, row-major) at the next opportunity.
    fn present(&mut self, fb: &[u32], width: u32, height: u32) -> Result<(), RenderError>;
}

/// An in-memory surface: keeps the last presented frame (tests, headless protocol server).
pub struct HeadlessSurface {
    width: u32,
    height: u32,
    last: Arc<Mutex<Vec<u32>>>,
}

impl HeadlessSurface {
    pub fn new(width: u32, height: u32) -> Self {
        HeadlessSurface {
            width,
            height,
            last: Arc::new(Mutex::new(Vec::new())),
        }
    }
    /// A handle on the last presented frame.
    pub fn last_frame(&self) -> Arc<Mutex<Vec<u32>>> {
        self.last.clone()
    }
}

impl Surface for HeadlessSurface {
    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }
    fn present(&mut self, fb: &[u32], _w: u32, _h: u32) -> Result<(), RenderError> {
        if let Ok(mut l) = self.last.lock() {
            l.clear();
            l.extend_from_slice(fb);
        }
        Ok(())
    }
}

/// 8-bit linear luminance → 8-bit display value: `round(255 * (v/255)^(1/gamma))`.
pub fn gamma_lut(gamma: f64) -> [u8; 256] {
    let mut t = [0u8; 256];
    for (v, o) in t.iter_mut().enumerate() {
        *o = encode(v as f64 / 255.0, gamma);
    }
    t
}

/// Linear luminance in [0, 1] → 8-bit display value.
pub fn encode(linear: f64, gamma: f64) -> u8 {
    (255.0 * linear.clamp(0.0, 1.0).powf(1.0 / gamma)).round() as u8
}

fn gray_px(v: u8) -> u32 {
    v as u32 * 0x0001_0101
}

/// Builds presented frames in a framebuffer the size of the screen.
pub struct Compositor {
    width: usize,
    height: usize,
    lut: [u32; 256],
    gray: u32,
    corner: Corner,
    patch: usize,
    fb: Vec<u32>,
    /// Stimulus shape the maps below were built for.
    maps_for: (usize, usize),
    xmap: Vec<usize>,
    ymap: Vec<usize>,
    row: Vec<u32>,
}

impl Compositor {
    pub fn new(cfg: &DisplayCfg, width: u32, height: u32) -> Self {
        let lut8 = gamma_lut(cfg.gamma);
        let mut lut = [0u32; 256];
        for (o, &v) in lut.iter_mut().zip(lut8.iter()) {
            *o = gray_px(v);
        }
        let mut c = Compositor {
            width: 0,
            height: 0,
            lut,
            gray: gray_px(encode(cfg.mean_luminance, cfg.gamma)),
            corner: cfg.photodiode_corner,
            patch: cfg.photodiode_size_px as usize,
            fb: Vec::new(),
            maps_for: (0, 0),
            xmap: Vec::new(),
            ymap: Vec::new(),
            row: Vec::new(),
        };
        c.resize(width, height);
        c
    }

    pub fn size(&self) -> (u32, u32) {
        (self.width as u32, self.height as u32)
    }

    pub fn resize(&mut self, width: u32, height: u32) {
        self.width = width as usize;
        self.height = height as usize;
        self.fb = vec![self.gray; self.width * self.height];
        self.row = vec![0; self.width];
        self.maps_for = (0, 0);
    }

    pub fn framebuffer(&self) -> &[u32] {
        &self.fb
    }

    /// The mean-luminance gray, as a pixel.
    pub fn gray_pixel(&self) -> u32 {
        self.gray
    }

    pub fn draw_gray(&mut self) {
        self.fb.fill(self.gray);
    }

    /// Draws one `h x w` stimulus frame over the whole screen (planar mapping, nearest neighbour:
    /// screen pixel x shows stimulus column `floor((x + 0.5) * w / W)`).
    pub fn draw_frame(&mut self, frame: &[u8], h: usize, w: usize) {
        if frame.len() < h * w || h == 0 || w == 0 || self.width == 0 || self.height == 0 {
            self.draw_gray();
            return;
        }
        if self.maps_for != (h, w) {
            self.xmap = nearest_map(self.width, w);
            self.ymap = nearest_map(self.height, h);
            self.maps_for = (h, w);
        }
        let mut prev = usize::MAX;
        for y in 0..self.height {
            let sy = self.ymap[y];
            if sy != prev {
                let src = &frame[sy * w..(sy + 1) * w];
                for (o, &sx) in self.row.iter_mut().zip(&self.xmap) {
                    *o = self.lut[src[sx] as usize];
                }
                prev = sy;
            }
            self.fb[y * self.width..(y + 1) * self.width].copy_from_slice(&self.row);
        }
    }

    /// The photodiode patch: a `photodiode_size_px` square in the configured corner, white when
    /// `on`, black otherwise.
    pub fn draw_patch(&mut self, on: bool) {
        let s = self.patch.min(self.width).min(self.height);
        if s == 0 {
            return;
        }
        let (x0, y0) = match self.corner {
            Corner::TopLeft => (0, 0),
            Corner::TopRight => (self.width - s, 0),
            Corner::BottomLeft => (0, self.height - s),
            Corner::BottomRight => (self.width - s, self.height - s),
        };
        let px = if on { 0x00FF_FFFF } else { 0 };
        for y in y0..y0 + s {
            self.fb[y * self.width + x0..y * self.width + x0 + s].fill(px);
        }
    }
}

/// For each of `screen` pixels, the stimulus pixel whose span holds its centre.
fn nearest_map(screen: usize, stim: usize) -> Vec<usize> {
    (0..screen)
        .map(|x| (((x as f64 + 0.5) * stim as f64 / screen as f64) as usize).min(stim - 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RigConfig;

    #[test]
    fn gamma_table_inverts_the_monitor() {
        let t = gamma_lut(2.2);
        assert_eq!(t[0], 0);
        assert_eq!(t[255], 255);
        // (64/255)^(1/2.2) * 255 = 136.0
        assert_eq!(t[64], 136);
        assert_eq!(gamma_lut(1.0)[77], 77);
        assert_eq!(encode(0.5, 2.2), 186);
    }

    #[test]
    fn stimulus_spans_the_screen_and_patch_sits_in_its_corner() {
        let mut cfg = RigConfig::embedded_sim().display;
        cfg.gamma = 1.0;
        cfg.photodiode_size_px = 4;
        let mut c = Compositor::new(&cfg, 20, 10);
        // 2x4 stimulus: each stimulus pixel covers 5x5 screen pixels.
        let frame = [10u8, 20, 30, 40, 50, 60, 70, 80];
        c.draw_frame(&frame, 2, 4);
        c.draw_patch(true);
        let fb = c.framebuffer();
        assert_eq!(fb[0], gray_px(10));
        assert_eq!(fb[4], gray_px(10));
        assert_eq!(fb[5], gray_px(20));
        assert_eq!(fb[5 * 20], gray_px(50));
        assert_eq!(fb[5 * 20 + 15], gray_px(80));
        // bottom-right 4x4 patch
        assert_eq!(fb[9 * 20 + 19], 0xFF_FFFF);
        assert_eq!(fb[6 * 20 + 16], 0xFF_FFFF);
        assert_eq!(fb[5 * 20 + 16], gray_px(80));
        c.draw_patch(false);
        assert_eq!(c.framebuffer()[9 * 20 + 19], 0);
    }
}
