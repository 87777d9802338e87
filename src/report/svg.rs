//! Small SVG charts written by hand: axes with ticks, lines, histogram bars, grouped bars.
//!
//! Why not the plotters crate: its SVG backend lays text out with font metrics from the system
//! (font-kit, fontconfig and freetype) or from a font file the program must embed; a report
//! written on a headless rig PC must not depend on either. Here the browser lays the text out,
//! with its own fonts. Every drawn data element carries `class="data"` so a test (or a person
//! in the inspector) can tell a figure with data from empty axes.

use std::fmt::Write;

/// Colours of the report's series (colour-blind safe, Okabe-Ito).
pub const MEASURED: &str = "#000000";
pub const PREDICTED: &str = "#d55e00";
pub const SHUFFLED: &str = "#999999";
pub const ACCENT: &str = "#0072b2";
pub const EXTRA: &str = "#009e73";

/// Escapes text for SVG and HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// "Nice" tick values inside [lo, hi]: steps of 1, 2 or 5 times a power of ten, about
/// `target` of them.
pub fn ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    // The round step nearest the raw one on a log scale: the first round step at or above it
    // can be 2.5 times too coarse and leave an axis with two ticks.
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .min_by(|a, b| (a / raw).ln().abs().total_cmp(&(b / raw).ln().abs()))
        .unwrap_or(mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A tick label with as many decimals as the step needs.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s.trim_start_matches(['-', '0', '.']).is_empty() {
        s[1..].to_string()
    } else {
        s
    }
}

/// The range of finite values, padded when it is a single value; `None` when there is none.
pub fn extent(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for v in values.into_iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return None;
    }
    if hi - lo < 1e-12 {
        let pad = (lo.abs() * 0.1).max(1e-3);
        return Some((lo - pad, hi + pad));
    }
    Some((lo, hi))
}

/// At most `max` points of a line: consecutive points are grouped and each group keeps its
/// lowest and highest point in time order, so peaks survive (a plain stride drops them).
pub fn decimate(xs: &[f64], ys: &[f64], max: usize) -> (Vec<f64>, Vec<f64>) {
    let n = xs.len().min(ys.len());
    if n <= max || max < 4 {
        return (xs[..n].to_vec(), ys[..n].to_vec());
    }
    let groups = max / 2;
    let (mut ox, mut oy) = (Vec::with_capacity(max), Vec::with_capacity(max));
    for g in 0..groups {
        let (a, b) = (
            g * n / groups,
            ((g + 1) * n / groups).max(g * n / groups + 1),
        );
        let mut lo = a;
        let mut hi = a;
        for i in a..b.min(n) {
            if ys[i] < ys[lo] || ys[lo].is_nan() {
                lo = i;
            }
            if ys[i] > ys[hi] || ys[hi].is_nan() {
                hi = i;
            }
        }
        let (p, q) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        ox.push(xs[p]);
        oy.push(ys[p]);
        if q != p {
            ox.push(xs[q]);
            oy.push(ys[q]);
        }
    }
    (ox, oy)
}

/// A chart being drawn: a plot area with x and y ranges, and SVG elements in data space.
pub struct Chart {
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    x: (f64, f64),
    y: (f64, f64),
    body: String,
    legend: Vec<(String, String, bool)>,
    x_log: bool,
}

impl Chart {
    pub fn new(width: f64, height: f64, x: (f64, f64), y: (f64, f64)) -> Chart {
        Chart {
            width,
            height,
            left: 56.0,
            right: 12.0,
            top: 14.0,
            bottom: 40.0,
            x,
            y,
            body: String::new(),
            legend: Vec::new(),
            x_log: false,
        }
    }

    /// A logarithmic x axis (x range and data in linear units, all positive).
    pub fn log_x(mut self) -> Chart {
        self.x_log = true;
        self
    }

    fn fx(&self, v: f64) -> f64 {
        let (a, b, v) = if self.x_log {
            (self.x.0.ln(), self.x.1.ln(), v.max(self.x.0 * 1e-3).ln())
        } else {
            (self.x.0, self.x.1, v)
        };
        let t = if b > a { (v - a) / (b - a) } else { 0.5 };
        self.left + t * (self.width - self.left - self.right)
    }

    fn fy(&self, v: f64) -> f64 {
        let (a, b) = self.y;
        let t = if b > a { (v - a) / (b - a) } else { 0.5 };
        self.height - self.bottom - t * (self.height - self.top - self.bottom)
    }

    /// A polyline through the finite points (a NaN breaks it).
    pub fn line(&mut self, xs: &[f64], ys: &[f64], color: &str, label: &str) {
        let (xs, ys) = decimate(xs, ys, 1600);
        let mut d = String::new();
        let mut pen_up = true;
        for (x, y) in xs.iter().zip(&ys) {
            if !(x.is_finite() && y.is_finite()) {
                pen_up = true;
                continue;
            }
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if pen_up { "M" } else { "L" },
                self.fx(*x),
                self.fy(*y)
            );
            pen_up = false;
        }
        if d.is_empty() {
            return;
        }
        let _ = write!(
            self.body,
            r#"<path class="data" d="{d}" fill="none" stroke="{color}" stroke-width="1.3" stroke-linejoin="round"/>"#
        );
        self.legend
            .push((label.to_string(), color.to_string(), false));
    }

    /// Histogram bars: bin k spans `edges[k]..edges[k+1]` with height `heights[k]`.
    pub fn bars(&mut self, edges: &[f64], heights: &[f64], color: &str, opacity: f64, label: &str) {
        let y0 = self.fy(self.y.0.max(0.0).min(self.y.1));
        for (k, h) in heights.iter().enumerate() {
            if *h <= 0.0 || !h.is_finite() || k + 1 >= edges.len() {
                continue;
            }
            let (x0, x1) = (self.fx(edges[k]), self.fx(edges[k + 1]));
            let yt = self.fy(*h);
            let _ = write!(
                self.body,
                r#"<rect class="data" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}" fill-opacity="{opacity}"/>"#,
                x0.min(x1),
                yt.min(y0),
                (x1 - x0).abs().max(0.8),
                (y0 - yt).abs()
            );
        }
        self.legend
            .push((label.to_string(), color.to_string(), true));
    }

    /// Grouped bars at integer x positions 0..n (x range should be (-0.5, n - 0.5)): series s
    /// of `series.len()` takes its slice of each slot.
    pub fn grouped_bars(&mut self, series: &[(&str, &str, Vec<f64>)]) {
        let k = series.len().max(1) as f64;
        let slot = 0.8 / k;
        let y0 = self.fy(0f64.clamp(self.y.0, self.y.1));
        for (s, (label, color, values)) in series.iter().enumerate() {
            for (i, v) in values.iter().enumerate() {
                if !v.is_finite() {
                    continue;
                }
                let a = i as f64 - 0.4 + s as f64 * slot;
                let (x0, x1) = (self.fx(a), self.fx(a + slot));
                let yt = self.fy(*v);
                let _ = write!(
                    self.body,
                    r#"<rect class="data" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{}: {v:.3}</title></rect>"#,
                    x0,
                    yt.min(y0),
                    (x1 - x0).max(0.8),
                    (y0 - yt).abs().max(0.5),
                    esc(label)
                );
            }
            self.legend
                .push((label.to_string(), color.to_string(), true));
        }
    }

    /// A vertical marker line across the plot (e.g. a median).
    pub fn vline(&mut self, x: f64, color: &str, label: &str) {
        if !x.is_finite() {
            return;
        }
        let px = self.fx(x);
        let _ = write!(
            self.body,
            r#"<line x1="{px:.1}" x2="{px:.1}" y1="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="1.5" stroke-dasharray="5 3"/>"#,
            self.top,
            self.height - self.bottom
        );
        if !label.is_empty() {
            self.legend
                .push((label.to_string(), color.to_string(), false));
        }
    }

    /// A shaded band between two x values (e.g. alarm periods).
    pub fn xband(&mut self, x0: f64, x1: f64, color: &str) {
        let (a, b) = (self.fx(x0), self.fx(x1));
        let _ = write!(
            self.body,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}" fill-opacity="0.15"/>"#,
            a.min(b),
            self.top,
            (b - a).abs().max(1.0),
            self.height - self.top - self.bottom
        );
    }

    /// The finished SVG element: axes, ticks, labels and the legend around the data.
    pub fn finish(self, xlabel: &str, ylabel: &str) -> String {
        self.finish_with_x_labels(xlabel, ylabel, None)
    }

    /// As [`Self::finish`], with text labels at integer x positions instead of numeric ticks.
    pub fn finish_with_x_labels(
        self,
        xlabel: &str,
        ylabel: &str,
        categories: Option<&[String]>,
    ) -> String {
        let (w, h) = (self.width, self.height);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
        );
        let (x0, x1, y0, y1) = (self.left, w - self.right, self.top, h - self.bottom);
        let _ = write!(
            s,
            r##"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="#fafafa" stroke="#bbb"/>"##,
            x1 - x0,
            y1 - y0
        );
        // y ticks and grid
        let yt = ticks(self.y.0, self.y.1, 5);
        let ystep = if yt.len() > 1 { yt[1] - yt[0] } else { 1.0 };
        for v in &yt {
            let py = self.fy(*v);
            let _ = write!(
                s,
                r##"<line x1="{x0}" x2="{x1}" y1="{py:.1}" y2="{py:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 - 4.0,
                py + 4.0,
                tick_label(*v, ystep)
            );
        }
        // x ticks
        match categories {
            Some(cats) => {
                let every = (cats.len() / 24).max(1);
                for (i, c) in cats.iter().enumerate().step_by(every) {
                    let px = self.fx(i as f64);
                    let _ = write!(
                        s,
                        r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                        y1 + 14.0,
                        esc(c)
                    );
                }
            }
            None if self.x_log => {
                let (a, b) = (
                    self.x.0.log10().floor() as i32,
                    self.x.1.log10().ceil() as i32,
                );
                for e in a..=b {
                    let v = 10f64.powi(e);
                    if v < self.x.0 * 0.999 || v > self.x.1 * 1.001 {
                        continue;
                    }
                    let px = self.fx(v);
                    let _ = write!(
                        s,
                        r##"<line x1="{px:.1}" x2="{px:.1}" y1="{y0}" y2="{y1}" stroke="#e4e4e4"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                        y1 + 14.0,
                        tick_label(v, v)
                    );
                }
            }
            None => {
                let xt = ticks(self.x.0, self.x.1, 7);
                let xstep = if xt.len() > 1 { xt[1] - xt[0] } else { 1.0 };
                for v in &xt {
                    let px = self.fx(*v);
                    let _ = write!(
                        s,
                        r##"<line x1="{px:.1}" x2="{px:.1}" y1="{y0}" y2="{y1}" stroke="#e4e4e4"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                        y1 + 14.0,
                        tick_label(*v, xstep)
                    );
                }
            }
        }
        s.push_str(&self.body);
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (x0 + x1) / 2.0,
            h - 6.0,
            esc(xlabel)
        );
        let _ = write!(
            s,
            r#"<text transform="translate(13 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            (y0 + y1) / 2.0,
            esc(ylabel)
        );
        // Legend, top right, one entry per distinct label, on a pale box so it stays legible
        // over the data. Its width is estimated from the labels (about 6 px a character at
        // 11 px): the browser lays the text out, this only keeps it inside the plot.
        let mut seen: Vec<&str> = Vec::new();
        for (label, ..) in &self.legend {
            if !label.is_empty() && !seen.contains(&label.as_str()) {
                seen.push(label);
            }
        }
        let chars = seen.iter().map(|l| l.chars().count()).max().unwrap_or(0) as f64;
        let lx = (x1 - 30.0 - 6.2 * chars).max(x0 + 4.0);
        if !seen.is_empty() {
            let _ = write!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#ffffff" fill-opacity="0.8"/>"##,
                lx - 4.0,
                y0 + 2.0,
                x1 - lx,
                14.0 * seen.len() as f64 + 4.0
            );
        }
        let mut drawn: Vec<&str> = Vec::new();
        let mut ly = y0 + 14.0;
        for (label, color, filled) in &self.legend {
            if label.is_empty() || drawn.contains(&label.as_str()) {
                continue;
            }
            drawn.push(label);
            if *filled {
                let _ = write!(
                    s,
                    r#"<rect x="{lx:.1}" y="{:.1}" width="14" height="8" fill="{color}" fill-opacity="0.7"/>"#,
                    ly - 8.0
                );
            } else {
                let _ = write!(
                    s,
                    r#"<line x1="{lx:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"/>"#,
                    lx + 14.0,
                    ly - 4.0,
                    ly - 4.0
                );
            }
            let _ = write!(
                s,
                r#"<text x="{:.1}" y="{ly:.1}">{}</text>"#,
                lx + 19.0,
                esc(label)
            );
            ly += 14.0;
        }
        s.push_str("</svg>");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        let t = ticks(0.0, 1.0, 5);
        assert_eq!(t.len(), 6, "{t:?}");
        assert!(t
            .iter()
            .zip([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
            .all(|(a, b)| (a - b).abs() < 1e-12));
        let t = ticks(-0.37, 0.81, 5);
        assert!(
            t.first().unwrap() >= &-0.37 && t.last().unwrap() <= &0.81,
            "{t:?}"
        );
        assert_eq!(t.len(), 6, "{t:?}");
        assert_eq!(tick_label(-0.0, 0.1), "0.0");
        assert_eq!(tick_label(2.5, 0.5), "2.5");
        assert_eq!(tick_label(200.0, 50.0), "200");
    }

    #[test]
    fn decimation_keeps_the_peaks() {
        let xs: Vec<f64> = (0..10_000).map(|i| i as f64).collect();
        let mut ys = vec![0.0; 10_000];
        ys[4321] = 9.0;
        ys[777] = -3.0;
        let (dx, dy) = decimate(&xs, &ys, 200);
        assert!(dx.len() <= 200);
        assert!(dy.contains(&9.0) && dy.contains(&-3.0));
        assert!(dx.windows(2).all(|w| w[0] < w[1]), "time order");
    }

    #[test]
    fn a_chart_has_its_data_tagged_and_its_text_escaped() {
        let mut c = Chart::new(300.0, 200.0, (0.0, 1.0), (0.0, 1.0));
        c.line(&[0.0, 0.5, 1.0], &[0.0, 1.0, 0.5], PREDICTED, "a<b");
        c.bars(&[0.0, 0.5, 1.0], &[0.3, 0.0], ACCENT, 0.5, "h");
        let s = c.finish("x & y", "r");
        assert_eq!(
            s.matches("class=\"data\"").count(),
            2,
            "one path, one non-empty bar"
        );
        assert!(s.contains("a&lt;b") && s.contains("x &amp; y"));
        assert!(!s.contains("a<b"));
    }
}
