//! `rig import tiff`: multi-page TIFF movies (ScanImage's, or any 8/16-bit grayscale stack) into
//! a session file, so that years of recordings go through `rig replay` and the same extraction
//! as a live session.
//!
//! Every file is opened and checked (size, pixel type, ScanImage settings, the channel and plane
//! asked for) before the session file is claimed, so a bad input leaves nothing behind. Frames
//! are then read one image at a time and appended: memory stays at one frame whatever the movie's
//! length.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tiff::decoder::{Decoder, DecodingResult};
use tiff::tags::Tag;
use tiff::ColorType;

use super::scanimage::{epoch_iso, Acquisition, FrameInfo};
use super::ImportError;
use crate::config::{FrameSource, RigConfig};
use crate::session::{SessionInfo, SessionWriter};

#[derive(Debug, Clone, Default)]
pub struct TiffOptions {
    /// Channel to import (1-based, as ScanImage numbers them); default the first saved one.
    pub channel: Option<u32>,
    /// Plane of a fast-z volume (0-based).
    pub plane: usize,
    /// Added to every pixel before it is stored as u16 (ScanImage's int16 data can be negative
    /// after its offset subtraction; what stays below 0 is clipped and counted).
    pub offset: i32,
    /// Frame rate when the files do not say (not ScanImage), Hz; overrides ScanImage's.
    pub frame_rate_hz: Option<f64>,
    pub mouse_id: Option<String>,
    pub overwrite: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TiffReport {
    pub out: String,
    pub files: Vec<String>,
    /// ScanImage's version when the files are ScanImage's, else `null`.
    pub scanimage: Option<String>,
    pub height: usize,
    pub width: usize,
    pub pixel_type: String,
    /// Images in the files, and frames imported (the chosen channel and plane).
    pub images: u64,
    pub frames: u64,
    pub channel: u32,
    pub channels_saved: Vec<u32>,
    pub plane: usize,
    pub planes: usize,
    /// Rate of the imported frames (the volume rate for a fast-z plane), Hz, and where it came
    /// from: `scanimage` or `--frame-rate`.
    pub frame_rate_hz: f64,
    pub frame_rate_source: String,
    /// Where frame times came from: `scanimage` (frameTimestamps_sec) or `rate`.
    pub timestamps: String,
    pub start_time: String,
    /// Pixels below 0 after the offset (stored as 0), and their share of all pixels.
    pub clipped_pixels: u64,
    pub clipped_fraction: f64,
    pub seconds: f64,
    pub mb_per_s: f64,
}

/// One input file, checked.
struct Input {
    path: PathBuf,
    images: u64,
}

fn file_err(path: &Path, message: impl Into<String>) -> ImportError {
    ImportError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn open(path: &Path) -> Result<Decoder<BufReader<File>>, ImportError> {
    let f = File::open(path).map_err(|e| file_err(path, format!("cannot open: {e}")))?;
    Decoder::new(BufReader::new(f)).map_err(|e| file_err(path, format!("not a TIFF file: {e}")))
}

fn tag(d: &mut Decoder<BufReader<File>>, t: Tag) -> Option<String> {
    d.get_tag_ascii_string(t).ok()
}

fn pixel_name(c: ColorType) -> Option<&'static str> {
    match c {
        ColorType::Gray(8) => Some("u8"),
        ColorType::Gray(16) => Some("16-bit"),
        _ => None,
    }
}

/// Imports `files` (in order, one movie) into a new session at `out`. `progress(done, total)`
/// counts images.
pub fn import_tiff(
    files: &[PathBuf],
    out: &Path,
    o: &TiffOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<TiffReport, ImportError> {
    let started = Instant::now();
    let first = files
        .first()
        .ok_or_else(|| ImportError::Input("no TIFF file given".into()))?;
    // Settings from the first image of the first file.
    let mut d = open(first)?;
    let (w, h) = d
        .dimensions()
        .map_err(|e| file_err(first, format!("image 0: {e}")))?;
    let color = d
        .colortype()
        .map_err(|e| file_err(first, format!("image 0: {e}")))?;
    let pixel_type = pixel_name(color).ok_or_else(|| {
        file_err(
            first,
            format!("pixel type {color:?}: expected 8- or 16-bit grayscale (one sample per pixel)"),
        )
    })?;
    let software = tag(&mut d, Tag::Software);
    let description = tag(&mut d, Tag::ImageDescription);
    let si = Acquisition::parse(software.as_deref(), description.as_deref());
    let acq = si.clone().unwrap_or(Acquisition {
        frame_rate_hz: None,
        channels: vec![1],
        planes: 1,
        flyback_frames: 0,
        version: None,
    });
    let channel = o.channel.unwrap_or(acq.channels[0]);
    let channel_pos = acq
        .channels
        .iter()
        .position(|&c| c == channel)
        .ok_or_else(|| {
            file_err(
                first,
                format!(
                    "--channel {channel}: the file saved channel(s) {:?} (SI.hChannels.channelSave)",
                    acq.channels
                ),
            )
        })?;
    if o.plane >= acq.planes {
        return Err(file_err(
            first,
            format!(
                "--plane {}: the file has {} plane(s) (0..{})",
                o.plane,
                acq.planes,
                acq.planes - 1
            ),
        ));
    }
    let (scan_rate, rate_source) = match (o.frame_rate_hz, acq.frame_rate_hz) {
        (Some(r), _) => (r, "--frame-rate"),
        (None, Some(r)) => (r, "scanimage"),
        (None, None) => {
            return Err(file_err(
                first,
                "no frame rate: not a ScanImage file (no SI.hRoiManager.scanFrameRate); give \
                 --frame-rate HZ",
            ))
        }
    };
    if !(scan_rate.is_finite() && scan_rate > 0.0 && scan_rate <= 10_000.0) {
        return Err(ImportError::Input(format!(
            "--frame-rate {scan_rate}: expected a rate in (0, 10000] Hz"
        )));
    }
    // Each plane of a volume is imaged once per volume.
    let rate = scan_rate / (acq.planes + acq.flyback_frames) as f64;

    // Every file: same size and pixel type; count its images.
    let mut inputs = Vec::new();
    for path in files {
        let mut d = open(path)?;
        let mut images = 0u64;
        loop {
            let dims = d
                .dimensions()
                .map_err(|e| file_err(path, format!("image {images}: {e}")))?;
            if dims != (w, h) {
                return Err(file_err(
                    path,
                    format!(
                        "image {images} is {}x{} (WxH), expected {w}x{h} as in {}",
                        dims.0,
                        dims.1,
                        first.display()
                    ),
                ));
            }
            let c = d
                .colortype()
                .map_err(|e| file_err(path, format!("image {images}: {e}")))?;
            if c != color {
                return Err(file_err(
                    path,
                    format!("image {images} is {c:?}, expected {color:?} as in the first file"),
                ));
            }
            images += 1;
            if !d.more_images() {
                break;
            }
            d.next_image()
                .map_err(|e| file_err(path, format!("image {images}: {e}")))?;
        }
        inputs.push(Input {
            path: path.clone(),
            images,
        });
    }
    let total: u64 = inputs.iter().map(|i| i.images).sum();

    let start_epoch = description
        .as_deref()
        .map(FrameInfo::parse)
        .and_then(|f| f.epoch);
    let start_time = start_epoch
        .as_ref()
        .map(epoch_iso)
        .unwrap_or_else(crate::sim::session::utc_now_iso);
    let mut cfg = RigConfig::embedded_sim();
    cfg.imaging.source = FrameSource::Replay;
    cfg.imaging.height = h as usize;
    cfg.imaging.width = w as usize;
    cfg.imaging.frame_rate_hz = rate;
    if let Some(m) = &o.mouse_id {
        cfg.rig.mouse_id = m.clone();
    }
    let info = SessionInfo::for_file(out, &cfg.rig.mouse_id, start_time.clone());
    let mut wr = SessionWriter::create_unpublished(out, &cfg, &info, o.overwrite)?;

    let n_px = (w as usize) * (h as usize);
    let mut frame = vec![0u16; n_px];
    let (mut image, mut frames, mut clipped) = (0u64, 0u64, 0u64);
    let mut last_t = f64::NEG_INFINITY;
    let mut from_scanimage = 0u64;
    for input in &inputs {
        let path = &input.path;
        let mut d = open(path)?;
        for k in 0..input.images {
            if k > 0 {
                d.next_image()
                    .map_err(|e| file_err(path, format!("image {k}: {e}")))?;
            }
            let here = image;
            image += 1;
            if crate::interrupt::requested() {
                return Err(ImportError::Interrupted { frames });
            }
            if !acq.selects(here as usize, channel_pos, o.plane) {
                continue;
            }
            let data = d
                .read_image()
                .map_err(|e| file_err(path, format!("image {k}: {e}")))?;
            let mut put = |i: usize, v: i32| {
                let v = v + o.offset;
                if v < 0 {
                    clipped += 1;
                }
                frame[i] = v.clamp(0, u16::MAX as i32) as u16;
            };
            match &data {
                DecodingResult::U8(v) if v.len() == n_px => {
                    v.iter().enumerate().for_each(|(i, &x)| put(i, x as i32))
                }
                DecodingResult::U16(v) if v.len() == n_px => {
                    v.iter().enumerate().for_each(|(i, &x)| put(i, x as i32))
                }
                DecodingResult::I16(v) if v.len() == n_px => {
                    v.iter().enumerate().for_each(|(i, &x)| put(i, x as i32))
                }
                DecodingResult::I8(v) if v.len() == n_px => {
                    v.iter().enumerate().for_each(|(i, &x)| put(i, x as i32))
                }
                _ => {
                    return Err(file_err(
                        path,
                        format!(
                            "image {k}: expected {n_px} 8- or 16-bit grayscale pixels ({w}x{h})"
                        ),
                    ))
                }
            }
            let stamped = tag(&mut d, Tag::ImageDescription)
                .map(|s| FrameInfo::parse(&s))
                .and_then(|f| f.timestamp_s);
            let t = match stamped {
                Some(t) => {
                    from_scanimage += 1;
                    t
                }
                None => frames as f64 / rate,
            };
            if t <= last_t {
                return Err(file_err(
                    path,
                    format!(
                        "image {k}: frameTimestamps_sec goes from {last_t} back to {t}: files of \
                         different acquisitions? import them one at a time"
                    ),
                ));
            }
            last_t = t;
            wr.append_frame(&frame, t)?;
            frames += 1;
            if frames % 64 == 0 {
                progress(image, total);
            }
        }
    }
    progress(image, total);
    if frames == 0 {
        return Err(ImportError::Input(format!(
            "no frame of channel {channel}, plane {} in {} image(s)",
            o.plane, total
        )));
    }
    let clipped_fraction = clipped as f64 / (frames as f64 * n_px as f64);
    if clipped_fraction > 0.01 {
        tracing::warn!(
            "{:.1}% of the pixels were below 0 after --offset {} and are stored as 0: dF/F of \
             such a movie is meaningless; import again with a larger --offset",
            100.0 * clipped_fraction,
            o.offset
        );
    }
    let end_time = crate::sim::session::utc_now_iso();
    let out_path = wr.finish(&end_time)?;
    let seconds = started.elapsed().as_secs_f64();
    let bytes = frames as f64 * n_px as f64 * 2.0;
    Ok(TiffReport {
        out: out_path.display().to_string(),
        files: files.iter().map(|f| f.display().to_string()).collect(),
        scanimage: si.map(|a| a.version.unwrap_or_else(|| "unknown version".into())),
        height: h as usize,
        width: w as usize,
        pixel_type: pixel_type.to_string(),
        images: total,
        frames,
        channel,
        channels_saved: acq.channels.clone(),
        plane: o.plane,
        planes: acq.planes,
        frame_rate_hz: rate,
        frame_rate_source: rate_source.to_string(),
        timestamps: if from_scanimage == frames {
            "scanimage".into()
        } else {
            "rate".into()
        },
        start_time,
        clipped_pixels: clipped,
        clipped_fraction,
        seconds,
        mb_per_s: bytes / 1e6 / seconds.max(1e-9),
    })
}
