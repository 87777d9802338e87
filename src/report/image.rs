//! Images inside the report: PNG data URIs (the mean imaging frame, stimulus frames) and ROI
//! outlines drawn over the mean image as SVG paths, coloured by each neuron's fidelity.

use std::fmt::Write;

use super::svg::esc;
use crate::picture::{fidelity_color, gray_png_uri, outline_path};
use crate::session::RoiTable;

/// The mean image with each ROI outlined, as one SVG element `display_px` wide. `fidelity`
/// gives an ROI's colour (by ROI id) and its hover text; ROIs without one are drawn in cyan.
pub fn mean_image_svg(
    mean_png_uri: &str,
    width: usize,
    height: usize,
    rois: &RoiTable,
    fidelity: &dyn Fn(u32) -> Option<f64>,
    display_px: f64,
) -> String {
    let scale = display_px / width.max(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="image" width="{:.0}" height="{:.0}" viewBox="0 0 {width} {height}">"#,
        width as f64 * scale,
        height as f64 * scale
    );
    let _ = write!(
        s,
        r#"<image class="data" href="{mean_png_uri}" x="0" y="0" width="{width}" height="{height}" style="image-rendering:pixelated"/>"#
    );
    // Outlines a fixed fraction of a screen pixel wide, whatever the frame size.
    let stroke = (1.2 / scale).max(0.05);
    for r in 0..rois.len() {
        let (px, _) = rois.roi(r);
        let id = rois.ids[r];
        let f = fidelity(id);
        let color = f.map_or_else(|| "#00e5ff".to_string(), fidelity_color);
        let title = match f {
            Some(v) => format!("ROI {id}: r = {v:.2}"),
            None => format!("ROI {id}"),
        };
        let _ = write!(
            s,
            r#"<path class="data" d="{}" stroke="{color}" stroke-width="{stroke:.3}" fill="none"><title>{}</title></path>"#,
            outline_path(px, width, height),
            esc(&title)
        );
    }
    s.push_str("</svg>");
    s
}

/// An `<img>` of one stimulus frame (8-bit linear luminance), `display_px` wide.
pub fn frame_img(
    frame: &[u8],
    width: usize,
    height: usize,
    display_px: f64,
    title: &str,
) -> Result<String, String> {
    let uri = gray_png_uri(width, height, frame)?;
    let h = display_px * height as f64 / width.max(1) as f64;
    Ok(format!(
        r#"<img class="frame" src="{uri}" width="{display_px:.0}" height="{h:.0}" alt="{t}" title="{t}">"#,
        t = esc(title)
    ))
}
