//! Where each screen pixel looks in the stimulus: the map from screen pixels to stimulus
//! coordinates that both renderers sample through (docs/display-geometry.md has the math).
//!
//! Stimulus coordinates `(u, v)` run over `[0, 1]` across the stimulus grid, left to right and
//! top to bottom; pixel centres of an `h x w` grid sit at `((i + 0.5) / w, (j + 0.5) / h)`.
//!
//! - `planar`: the grid is stretched over the screen, `u = (x + 0.5) / W`.
//! - `spherical`: the grid is a patch of the mouse's visual field in azimuth x elevation, equal
//!   degrees per stimulus pixel. A screen pixel's centre is a point on the flat monitor; the ray
//!   from the eye through it, turned into the mouse's frame, has an azimuth and an elevation, and
//!   those place it in the grid. Pixels that look outside the grid show mean-luminance gray.
//!
//! The map is computed once per window size and stimulus geometry, never per frame.

use crate::config::{Display as DisplayCfg, Geometry};

/// Marks a pixel that looks outside the stimulus grid (drawn gray).
pub const OUTSIDE: f32 = -1.0;

/// A ray's direction in the mouse's visual field, degrees: azimuth (+ right of the straight-ahead
/// direction) and elevation (+ up).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VisualAngle {
    pub azimuth_deg: f64,
    pub elevation_deg: f64,
}

/// The geometry of one window: screen size in pixels plus the display config's physical setup.
#[derive(Debug, Clone)]
pub struct ScreenGeometry {
    width: u32,
    height: u32,
    kind: Geometry,
    width_cm: f64,
    height_cm: f64,
    distance_cm: f64,
    eye_x_cm: f64,
    eye_y_cm: f64,
    /// Sines and cosines of the screen normal's azimuth and elevation.
    az: (f64, f64),
    el: (f64, f64),
    screen_az_deg: f64,
    screen_el_deg: f64,
    stim_w_deg: f64,
    stim_h_deg: f64,
}

impl ScreenGeometry {
    /// `width x height` is the drawable's size; the drawable is taken to cover the monitor's
    /// visible area (`display.width_cm x display.height_cm`).
    pub fn new(cfg: &DisplayCfg, width: u32, height: u32) -> Self {
        let az = cfg.screen_azimuth_deg.to_radians();
        let el = cfg.screen_elevation_deg.to_radians();
        ScreenGeometry {
            width: width.max(1),
            height: height.max(1),
            kind: cfg.geometry,
            width_cm: cfg.width_cm,
            height_cm: cfg.height_cm,
            distance_cm: cfg.distance_cm,
            eye_x_cm: cfg.eye_x_cm,
            eye_y_cm: cfg.eye_y_cm,
            az: (az.sin(), az.cos()),
            el: (el.sin(), el.cos()),
            screen_az_deg: cfg.screen_azimuth_deg,
            screen_el_deg: cfg.screen_elevation_deg,
            stim_w_deg: cfg.stimulus_width_deg.unwrap_or_else(|| cfg.width_deg()),
            stim_h_deg: cfg.stimulus_height_deg.unwrap_or_else(|| cfg.height_deg()),
        }
    }

    /// Where the ray from the eye through screen point `(x, y)` (pixels, origin at the top-left
    /// corner, `x + 0.5` is the first pixel's centre) points in the mouse's visual field.
    pub fn visual_angle(&self, x: f64, y: f64) -> VisualAngle {
        // The ray in the screen's frame: x right, y up, z along the perpendicular from the eye.
        let sx = (x / self.width as f64 - 0.5) * self.width_cm - self.eye_x_cm;
        let sy = (0.5 - y / self.height as f64) * self.height_cm - self.eye_y_cm;
        let sz = self.distance_cm;
        // Into the mouse's frame: pitch the screen normal up by its elevation, then turn it
        // right by its azimuth, so the perpendicular points at (screen_az, screen_el).
        let (se, ce) = self.el;
        let (sa, ca) = self.az;
        let (py, pz) = (sy * ce + sz * se, -sy * se + sz * ce);
        let (mx, mz) = (sx * ca + pz * sa, -sx * sa + pz * ca);
        let my = py;
        VisualAngle {
            azimuth_deg: mx.atan2(mz).to_degrees(),
            elevation_deg: my.atan2((mx * mx + mz * mz).sqrt()).to_degrees(),
        }
    }

    /// Stimulus coordinates `(u, v)` seen at screen point `(x, y)`; may fall outside `[0, 1]`.
    pub fn stimulus_uv(&self, x: f64, y: f64) -> (f64, f64) {
        match self.kind {
            Geometry::Planar => (x / self.width as f64, y / self.height as f64),
            Geometry::Spherical => {
                let a = self.visual_angle(x, y);
                // Azimuth wraps at ±180°: measure it from the screen's own direction.
                let mut daz = a.azimuth_deg - self.screen_az_deg;
                daz = (daz + 180.0).rem_euclid(360.0) - 180.0;
                (
                    0.5 + daz / self.stim_w_deg,
                    0.5 - (a.elevation_deg - self.screen_el_deg) / self.stim_h_deg,
                )
            }
        }
    }

    /// The whole map: stimulus coordinates of every pixel centre, row-major from the top-left,
    /// with [`OUTSIDE`] where the pixel looks outside the grid.
    pub fn map(&self) -> Vec<[f32; 2]> {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut out = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                let (u, v) = self.stimulus_uv(x as f64 + 0.5, y as f64 + 0.5);
                if (0.0..=1.0).contains(&u) && (0.0..=1.0).contains(&v) {
                    out.push([u as f32, v as f32]);
                } else {
                    out.push([OUTSIDE, OUTSIDE]);
                }
            }
        }
        out
    }

    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RigConfig;

    fn cfg() -> DisplayCfg {
        let mut c = RigConfig::embedded_sim().display;
        c.width_cm = 53.0;
        c.height_cm = 30.0;
        c.distance_cm = 15.0;
        c.geometry = Geometry::Spherical;
        c
    }

    /// Angle between two directions, degrees.
    fn angle(a: [f64; 3], b: [f64; 3]) -> f64 {
        let dot = a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
        let n = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        (dot / (n(a) * n(b))).clamp(-1.0, 1.0).acos().to_degrees()
    }

    #[test]
    fn planar_map_spans_the_screen() {
        let mut c = cfg();
        c.geometry = Geometry::Planar;
        let g = ScreenGeometry::new(&c, 1280, 720);
        assert_eq!(g.stimulus_uv(0.0, 0.0), (0.0, 0.0));
        assert_eq!(g.stimulus_uv(640.0, 360.0), (0.5, 0.5));
        assert_eq!(g.stimulus_uv(1280.0, 720.0), (1.0, 1.0));
        assert!(g.map().iter().all(|p| p[0] >= 0.0));
    }

    #[test]
    fn spherical_centre_row_and_column_follow_the_tangent() {
        // Eye on the centre normal: along the middle row, azimuth = atan(X / d) and the screen
        // edge is half the screen's span, i.e. the stimulus edge.
        let c = cfg();
        let g = ScreenGeometry::new(&c, 1280, 720);
        for x in [0.0, 100.0, 333.0, 640.0, 1000.0, 1280.0] {
            let xcm = (x / 1280.0 - 0.5) * 53.0;
            let a = g.visual_angle(x, 360.0);
            assert!((a.azimuth_deg - xcm.atan2(15.0).to_degrees()).abs() < 1e-9);
            assert!(a.elevation_deg.abs() < 1e-9);
        }
        let (u, v) = g.stimulus_uv(1280.0, 360.0);
        assert!((u - 1.0).abs() < 1e-12 && (v - 0.5).abs() < 1e-12);
        let (u, v) = g.stimulus_uv(640.0, 0.0);
        assert!((u - 0.5).abs() < 1e-12 && v.abs() < 1e-12);
    }

    #[test]
    fn spherical_corners_match_the_analytic_ray() {
        // Elevation is the angle above the horizontal plane: 90° minus the angle to "up"; azimuth
        // is the angle of the ray's horizontal projection from straight ahead.
        let mut c = cfg();
        c.eye_x_cm = 4.0;
        c.eye_y_cm = -3.0;
        let g = ScreenGeometry::new(&c, 1280, 720);
        for &(x, y) in &[(0.0, 0.0), (1280.0, 0.0), (200.5, 700.5), (900.0, 123.0)] {
            let r = [
                (x / 1280.0 - 0.5) * 53.0 - 4.0,
                (0.5 - y / 720.0) * 30.0 + 3.0,
                15.0,
            ];
            let el = 90.0 - angle(r, [0.0, 1.0, 0.0]);
            let az = angle([r[0], 0.0, r[2]], [0.0, 0.0, 1.0]) * r[0].signum();
            let a = g.visual_angle(x, y);
            assert!(
                (a.elevation_deg - el).abs() < 1e-9,
                "{x},{y}: {a:?} vs {el}"
            );
            assert!((a.azimuth_deg - az).abs() < 1e-9, "{x},{y}: {a:?} vs {az}");
        }
        // The top corners see less elevation than the top centre: the grid's top corners are cut.
        let top_centre = g.visual_angle(640.0, 0.0).elevation_deg;
        assert!(g.visual_angle(0.0, 0.0).elevation_deg < top_centre);
    }

    #[test]
    fn a_turned_screen_looks_where_it_is_turned() {
        let mut c = cfg();
        c.screen_azimuth_deg = 30.0;
        c.screen_elevation_deg = 10.0;
        let g = ScreenGeometry::new(&c, 1280, 720);
        // The perpendicular's foot (the screen centre here) is at (30°, 10°) and the grid centre.
        let a = g.visual_angle(640.0, 360.0);
        assert!((a.azimuth_deg - 30.0).abs() < 1e-9 && (a.elevation_deg - 10.0).abs() < 1e-9);
        let (u, v) = g.stimulus_uv(640.0, 360.0);
        assert!((u - 0.5).abs() < 1e-12 && (v - 0.5).abs() < 1e-12);
        // Every pixel's ray keeps its angle to the screen normal when the screen is turned.
        let n = [
            10f64.to_radians().cos() * 30f64.to_radians().sin(),
            10f64.to_radians().sin(),
            10f64.to_radians().cos() * 30f64.to_radians().cos(),
        ];
        let flat = ScreenGeometry::new(&cfg(), 1280, 720);
        for &(x, y) in &[(0.0, 0.0), (1280.0, 720.0), (77.0, 500.0)] {
            let dir = |a: VisualAngle| {
                let (az, el) = (a.azimuth_deg.to_radians(), a.elevation_deg.to_radians());
                [el.cos() * az.sin(), el.sin(), el.cos() * az.cos()]
            };
            let turned = angle(dir(g.visual_angle(x, y)), n);
            let straight = angle(dir(flat.visual_angle(x, y)), [0.0, 0.0, 1.0]);
            assert!((turned - straight).abs() < 1e-9);
        }
    }

    #[test]
    fn pixels_beyond_the_stimulus_field_are_outside() {
        let mut c = cfg();
        c.stimulus_width_deg = Some(60.0);
        c.stimulus_height_deg = Some(40.0);
        let g = ScreenGeometry::new(&c, 320, 180);
        let m = g.map();
        // The screen spans 121° x 90° at this distance: its edges see outside a 60° x 40° grid.
        assert_eq!(m[0], [OUTSIDE, OUTSIDE]);
        let centre = m[90 * 320 + 160];
        assert!((centre[0] - 0.5).abs() < 0.01 && (centre[1] - 0.5).abs() < 0.01);
        // 30° right of centre on the middle row is the grid's right edge: x = d * tan(30°).
        let x_edge = (15.0 * 30f64.to_radians().tan() / 53.0 + 0.5) * 320.0;
        let (u, _) = g.stimulus_uv(x_edge, 90.0);
        assert!((u - 1.0).abs() < 1e-9);
    }
}
