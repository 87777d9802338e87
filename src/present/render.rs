//! Composing a presented frame on the CPU: gamma lookup, the planar mapping of the stimulus grid
//! onto the screen, mean-luminance gray and the photodiode patch. A [`Surface`] shows the result:
//! the X11 window (`window`) or an in-memory framebuffer for tests ([`HeadlessSurface`]).
//!
//! Pixels are `0x00RRGGBB` (softbuffer's format); the stimulus is gray, so R = G = B.

use std::sync::{Arc, Mutex};

use thiserror::Error;

use super::geometry::ScreenGeometry;
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

/// Entries in the gamma table the renderers look interpolated luminance up in: 12 bits, so a
/// bilinear blend of 8-bit texels keeps its fraction through the monitor's steep dark end.
pub const LUT_SIZE: usize = 4096;

/// Linear luminance `i / (LUT_SIZE - 1)` → 8-bit display value, for `i` in `0..LUT_SIZE`.
pub fn fine_gamma_lut(gamma: f64) -> Vec<u8> {
    (0..LUT_SIZE)
        .map(|i| encode(i as f64 / (LUT_SIZE - 1) as f64, gamma))
        .collect()
}

/// One screen pixel's bilinear footprint in the stimulus: the top-left texel, whether the
/// right and lower neighbours are distinct (not clamped at the edge), and 8-bit weights (the
/// sub-texel precision GPUs filter with).
#[derive(Debug, Clone, Copy)]
struct Tap {
    /// Index of the top-left texel; `u32::MAX` for a pixel that looks outside the grid.
    i00: u32,
    dx: u8,
    dy: u8,
    wx: u8,
    wy: u8,
}

const OUTSIDE_TAP: Tap = Tap {
    i00: u32::MAX,
    dx: 0,
    dy: 0,
    wx: 0,
    wy: 0,
};

/// The footprint of stimulus coordinates `(u, v)` on an `h x w` grid, edges clamped.
fn tap(u: f32, v: f32, h: usize, w: usize) -> Tap {
    if u < 0.0 || v < 0.0 {
        return OUTSIDE_TAP;
    }
    let axis = |c: f32, n: usize| -> (usize, u8, u8) {
        let t = c as f64 * n as f64 - 0.5;
        if t <= 0.0 {
            return (0, 0, 0);
        }
        let i = t.floor() as usize;
        if i + 1 >= n {
            return (n - 1, 0, 0);
        }
        (i, 1, ((t - i as f64) * 256.0) as u8)
    };
    let (x0, dx, wx) = axis(u, w);
    let (y0, dy, wy) = axis(v, h);
    Tap {
        i00: (y0 * w + x0) as u32,
        dx,
        dy,
        wx,
        wy,
    }
}

/// Builds presented frames in a framebuffer the size of the screen.
///
/// Each screen pixel samples the stimulus bilinearly (in linear luminance, edges clamped) at
/// the coordinates the display geometry gives it ([`super::geometry`]), then looks the blend up
/// in a 12-bit gamma table: the same arithmetic as the GL renderer's shader. The footprints are
/// computed when the window or the stimulus shape changes; a frame costs four loads and two
/// blends per pixel and allocates nothing.
pub struct Compositor {
    width: usize,
    height: usize,
    /// Display pixel of linear luminance `i / (LUT_SIZE - 1)`.
    lut: Vec<u32>,
    gray: u32,
    corner: Corner,
    patch: usize,
    fb: Vec<u32>,
    geometry: DisplayCfg,
    /// Stimulus coordinates of each pixel (see [`super::geometry::ScreenGeometry::map`]).
    uv: Vec<[f32; 2]>,
    /// Stimulus shape the taps below were built for.
    taps_for: (usize, usize),
    taps: Vec<Tap>,
}

impl Compositor {
    pub fn new(cfg: &DisplayCfg, width: u32, height: u32) -> Self {
        let lut = fine_gamma_lut(cfg.gamma).into_iter().map(gray_px).collect();
        let mut c = Compositor {
            width: 0,
            height: 0,
            lut,
            gray: gray_px(encode(cfg.mean_luminance, cfg.gamma)),
            corner: cfg.photodiode_corner,
            patch: cfg.photodiode_size_px as usize,
            fb: Vec::new(),
            geometry: cfg.clone(),
            uv: Vec::new(),
            taps_for: (0, 0),
            taps: Vec::new(),
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
        self.uv = ScreenGeometry::new(&self.geometry, width, height).map();
        self.taps_for = (0, 0);
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

    /// Draws one `h x w` stimulus frame through the display geometry.
    pub fn draw_frame(&mut self, frame: &[u8], h: usize, w: usize) {
        if frame.len() < h * w || h == 0 || w == 0 || self.width == 0 || self.height == 0 {
            self.draw_gray();
            return;
        }
        if self.taps_for != (h, w) {
            self.taps = self.uv.iter().map(|p| tap(p[0], p[1], h, w)).collect();
            self.taps_for = (h, w);
        }
        let scale = (LUT_SIZE - 1) as f32 / (255.0 * 65536.0);
        for (o, t) in self.fb.iter_mut().zip(&self.taps) {
            if t.i00 == u32::MAX {
                *o = self.gray;
                continue;
            }
            let i = t.i00 as usize;
            let j = i + t.dy as usize * w;
            let (dx, wx, wy) = (t.dx as usize, t.wx as u32, t.wy as u32);
            let top = frame[i] as u32 * (256 - wx) + frame[i + dx] as u32 * wx;
            let bottom = frame[j] as u32 * (256 - wx) + frame[j + dx] as u32 * wx;
            let v = top * (256 - wy) + bottom * wy;
            *o = self.lut[(v as f32 * scale + 0.5) as usize];
        }
    }

    /// The photodiode patch: a `photodiode_size_px` square in the configured corner, white when
    /// `on`, black otherwise.
    pub fn draw_patch(&mut self, on: bool) {
        let Some((x0, y0, s)) = patch_rect(self.corner, self.patch, self.width, self.height) else {
            return;
        };
        let px = if on { 0x00FF_FFFF } else { 0 };
        for y in y0..y0 + s {
            self.fb[y * self.width + x0..y * self.width + x0 + s].fill(px);
        }
    }
}

/// The photodiode patch's top-left corner and side, pixels from the top-left of a
/// `width x height` screen; `None` when it has no area.
pub fn patch_rect(
    corner: Corner,
    size: usize,
    width: usize,
    height: usize,
) -> Option<(usize, usize, usize)> {
    let s = size.min(width).min(height);
    if s == 0 {
        return None;
    }
    Some(match corner {
        Corner::TopLeft => (0, 0, s),
        Corner::TopRight => (width - s, 0, s),
        Corner::BottomLeft => (0, height - s, s),
        Corner::BottomRight => (width - s, height - s, s),
    })
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

    /// Bilinear value of a `h x w` grid at stimulus coordinates `(u, v)`, edges clamped,
    /// computed directly (no taps, no fixed point).
    fn bilinear(frame: &[u8], h: usize, w: usize, u: f64, v: f64) -> f64 {
        let tx = (u * w as f64 - 0.5).clamp(0.0, (w - 1) as f64);
        let ty = (v * h as f64 - 0.5).clamp(0.0, (h - 1) as f64);
        let (x0, y0) = (tx.floor() as usize, ty.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (fx, fy) = (tx - x0 as f64, ty - y0 as f64);
        let p = |x: usize, y: usize| frame[y * w + x] as f64;
        (p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx) * (1.0 - fy)
            + (p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx) * fy
    }

    #[test]
    fn stimulus_is_sampled_bilinearly_and_patch_sits_in_its_corner() {
        let mut cfg = RigConfig::embedded_sim().display;
        cfg.gamma = 1.0;
        cfg.photodiode_size_px = 4;
        cfg.geometry = crate::config::Geometry::Planar;
        let mut c = Compositor::new(&cfg, 20, 10);
        let frame = [10u8, 20, 30, 40, 50, 60, 70, 80];
        c.draw_frame(&frame, 2, 4);
        c.draw_patch(true);
        let fb = c.framebuffer();
        for y in 0..10 {
            for x in 0..20 {
                if x >= 16 && y >= 6 {
                    assert_eq!(fb[y * 20 + x], 0xFF_FFFF, "patch at {x},{y}");
                    continue;
                }
                let want = bilinear(
                    &frame,
                    2,
                    4,
                    (x as f64 + 0.5) / 20.0,
                    (y as f64 + 0.5) / 10.0,
                );
                let got = (fb[y * 20 + x] & 0xFF) as f64;
                assert!((got - want).abs() <= 1.0, "{x},{y}: {got} vs {want}");
            }
        }
        // Corners are clamped to the edge texels; a pixel centred between two columns blends them.
        assert_eq!(fb[0], gray_px(10));
        assert_eq!(fb[4] & 0xFF, 14);
        c.draw_patch(false);
        assert_eq!(c.framebuffer()[9 * 20 + 19], 0);
    }

    #[test]
    fn gamma_applies_to_the_blend_not_to_the_texels() {
        let mut cfg = RigConfig::embedded_sim().display;
        cfg.gamma = 2.2;
        cfg.photodiode_size_px = 0;
        cfg.geometry = crate::config::Geometry::Planar;
        // Two columns 0 and 255 on a 4-pixel-wide screen: the pixel between them is half light,
        // which the monitor shows as encode(0.5), not as the average of encode(0) and encode(1).
        let mut c = Compositor::new(&cfg, 4, 1);
        c.draw_frame(&[0, 255], 1, 2);
        let fb = c.framebuffer();
        // u = 1.5/4 → texel coordinate 0.25: a quarter of the way to the light column.
        assert_eq!(fb[1] & 0xFF, encode(0.25, 2.2) as u32);
        assert_eq!(fb[0] & 0xFF, 0);
        assert_eq!(fb[3] & 0xFF, 255);
    }
}
