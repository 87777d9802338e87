//! Pictures for pages (`rig report`, the live dashboard): grayscale PNG data URIs, 8-bit scaling
//! by percentiles, the fidelity colour scale and ROI outlines as SVG paths.

use std::fmt::Write;

use base64::Engine;

/// A grayscale image as PNG bytes.
pub fn gray_png(width: usize, height: usize, pixels: &[u8]) -> Result<Vec<u8>, String> {
    let Some(pixels) = pixels.get(..width * height) else {
        return Err(format!(
            "{} pixels for a {width}x{height} image",
            pixels.len()
        ));
    };
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, width as u32, height as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(pixels).map_err(|e| e.to_string())?;
    }
    Ok(buf)
}

/// A grayscale image as a `data:image/png;base64,...` URI.
pub fn gray_png_uri(width: usize, height: usize, pixels: &[u8]) -> Result<String, String> {
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(gray_png(width, height, pixels)?)
    ))
}

/// `values` (row-major) mapped to 8 bits between their 0.5th and 99.5th percentiles, so a few
/// hot pixels do not leave the rest black.
pub fn to_u8(values: &[f64]) -> Vec<u8> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return vec![0; values.len()];
    }
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let (lo, hi) = (at(0.005), at(0.995));
    let span = (hi - lo).max(1e-12);
    values
        .iter()
        .map(|v| (((v - lo) / span).clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect()
}

/// A colour for a correlation in [-0.2, 1]: blue (poor) through yellow to red (good).
pub fn fidelity_color(r: f64) -> String {
    if !r.is_finite() {
        return "#aaaaaa".into();
    }
    const STOPS: [(f64, [f64; 3]); 4] = [
        (-0.2, [49.0, 54.0, 149.0]),
        (0.2, [116.0, 173.0, 209.0]),
        (0.5, [254.0, 224.0, 144.0]),
        (1.0, [215.0, 48.0, 39.0]),
    ];
    let r = r.clamp(STOPS[0].0, STOPS[3].0);
    let k = STOPS.iter().rposition(|s| s.0 <= r).unwrap_or(0).min(2);
    let (a, b) = (STOPS[k], STOPS[k + 1]);
    let t = (r - a.0) / (b.0 - a.0);
    let c: Vec<u8> = (0..3)
        .map(|i| (a.1[i] + (b.1[i] - a.1[i]) * t).round() as u8)
        .collect();
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// The outline of a set of pixels of a `width`-wide frame as an SVG path in pixel units: every
/// edge between a pixel of the set and one outside it.
pub fn outline_path(pixels: &[u32], width: usize, height: usize) -> String {
    let set: std::collections::HashSet<u32> = pixels.iter().copied().collect();
    let inside = |x: i64, y: i64| {
        x >= 0
            && y >= 0
            && (x as usize) < width
            && (y as usize) < height
            && set.contains(&((y as usize * width + x as usize) as u32))
    };
    let mut d = String::new();
    for &p in pixels {
        let (x, y) = ((p as usize % width) as i64, (p as usize / width) as i64);
        if !inside(x, y - 1) {
            let _ = write!(d, "M{x} {y}h1");
        }
        if !inside(x, y + 1) {
            let _ = write!(d, "M{x} {}h1", y + 1);
        }
        if !inside(x - 1, y) {
            let _ = write!(d, "M{x} {y}v1");
        }
        if !inside(x + 1, y) {
            let _ = write!(d, "M{} {y}v1", x + 1);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn a_png_uri_decodes_to_the_same_pixels() {
        let px: Vec<u8> = (0..12).map(|i| i * 20).collect();
        let uri = gray_png_uri(4, 3, &px).unwrap();
        let b64 = uri.strip_prefix("data:image/png;base64,").unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut r = dec.read_info().unwrap();
        let mut out = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut out).unwrap();
        assert_eq!((info.width, info.height), (4, 3));
        assert_eq!(&out[..12], &px[..]);
    }

    #[test]
    fn the_outline_of_a_square_is_its_perimeter() {
        // A 2x2 square at (1,1) in a 4x4 frame: 8 unit edges.
        let d = outline_path(&[5, 6, 9, 10], 4, 4);
        assert_eq!(d.matches('M').count(), 8, "{d}");
        // A single pixel on the frame's edge still closes.
        assert_eq!(outline_path(&[0], 4, 4).matches('M').count(), 4);
    }

    #[test]
    fn contrast_stretch_ignores_outliers() {
        let mut v: Vec<f64> = (0..1000).map(|i| i as f64 / 1000.0).collect();
        v[0] = -1e9;
        v[999] = 1e9;
        let u = to_u8(&v);
        assert_eq!((u[0], u[999]), (0, 255));
        assert!((100..156).contains(&u[500]), "{}", u[500]);
        assert_eq!(fidelity_color(1.0), "#d73027");
        assert_eq!(fidelity_color(f64::NAN), "#aaaaaa");
    }
}
