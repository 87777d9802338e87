//! ScanImage's TIFF metadata, as far as an import needs it.
//!
//! ScanImage (2015 and later) writes the frame-invariant settings as MATLAB assignments, one per
//! line, in the first image's `Software` tag (`SI.hRoiManager.scanFrameRate = 30.0161`), and the
//! per-frame data in each image's `ImageDescription` (`frameNumbers = 12`, `frameTimestamps_sec
//! = 0.366`, `epoch = [2019 6 3 14 5 31.8]`). ScanImage 5 put both in `ImageDescription` with a
//! `scanimage.SI.` prefix; ScanImage 3 wrote `state.acq.frameRate=...`. Frames of several saved
//! channels interleave (channel fastest), then the planes of a fast-z volume.

use std::collections::HashMap;

/// Frame-invariant acquisition settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Acquisition {
    /// Imaging frame rate (each plane, each channel), Hz.
    pub frame_rate_hz: Option<f64>,
    /// Channels saved, 1-based, in the order their frames interleave.
    pub channels: Vec<u32>,
    /// Planes per volume (fast z), 1 without.
    pub planes: usize,
    /// Discarded flyback frames per volume (written to the file but not imaging planes).
    pub flyback_frames: usize,
    /// ScanImage's version, when it says.
    pub version: Option<String>,
}

/// What one frame's description says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameInfo {
    pub frame_number: Option<u64>,
    pub timestamp_s: Option<f64>,
    /// Acquisition start, `[Y M D h m s]`.
    pub epoch: Option<[f64; 6]>,
}

/// `key = value` lines (ScanImage 2015+ and 5) or `key=value` (ScanImage 3), keys with any
/// `scanimage.` prefix removed.
pub fn assignments(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim();
        let k = k.strip_prefix("scanimage.").unwrap_or(k);
        if k.is_empty() || k.contains(' ') {
            continue;
        }
        out.insert(k.to_string(), v.trim().trim_end_matches(';').to_string());
    }
    out
}

/// Numbers of a MATLAB scalar or vector: `30.1`, `[1;2]`, `[2019 6 3 14 5 31.8]`.
fn numbers(v: &str) -> Vec<f64> {
    v.trim_matches(|c| c == '[' || c == ']' || c == '{' || c == '}')
        .split(|c: char| c == ';' || c == ',' || c.is_whitespace())
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn truth(v: &str) -> bool {
    matches!(v.trim(), "1" | "true")
}

impl Acquisition {
    /// Settings from the first image's `Software` and `ImageDescription` tags. `None` when
    /// neither looks like ScanImage's.
    pub fn parse(software: Option<&str>, description: Option<&str>) -> Option<Acquisition> {
        let mut a = HashMap::new();
        for text in [description, software].into_iter().flatten() {
            a.extend(assignments(text));
        }
        let si = a
            .keys()
            .any(|k| k.starts_with("SI.") || k.starts_with("state."));
        if !si {
            return None;
        }
        let get = |keys: &[&str]| keys.iter().find_map(|k| a.get(*k)).map(|v| v.as_str());
        let frame_rate_hz = get(&[
            "SI.hRoiManager.scanFrameRate",
            "SI.scanFrameRate",
            "state.acq.frameRate",
        ])
        .and_then(|v| numbers(v).first().copied())
        .filter(|r| r.is_finite() && *r > 0.0);
        let mut channels: Vec<u32> = get(&["SI.hChannels.channelSave", "SI.channelsSave"])
            .map(|v| numbers(v).into_iter().map(|c| c as u32).collect())
            .unwrap_or_default();
        if channels.is_empty() {
            // ScanImage 3: one flag per channel.
            for c in 1..=4u32 {
                if a.get(&format!("state.acq.savingChannel{c}"))
                    .is_some_and(|v| truth(v))
                {
                    channels.push(c);
                }
            }
        }
        if channels.is_empty() {
            channels.push(1);
        }
        let fast_z = get(&["SI.hFastZ.enable", "SI.fastZEnable"]).is_some_and(truth);
        let planes = if fast_z {
            get(&[
                "SI.hStackManager.actualNumSlices",
                "SI.hStackManager.numSlices",
                "SI.stackNumSlices",
            ])
            .and_then(|v| numbers(v).first().copied())
            .map_or(1, |n| n.max(1.0) as usize)
        } else {
            1
        };
        let flyback_frames = if fast_z {
            get(&[
                "SI.hFastZ.numDiscardFlybackFrames",
                "SI.hFastZ.numFlybackFrames",
            ])
            .and_then(|v| numbers(v).first().copied())
            .map_or(0, |n| n.max(0.0) as usize)
        } else {
            0
        };
        let version = match (get(&["SI.VERSION_MAJOR"]), get(&["SI.VERSION_MINOR"])) {
            (Some(ma), Some(mi)) => Some(format!(
                "{}.{}",
                ma.trim_matches('\''),
                mi.trim_matches('\'')
            )),
            (Some(ma), None) => Some(ma.trim_matches('\'').to_string()),
            _ => a
                .contains_key("state.software.version")
                .then(|| "3".to_string()),
        };
        Some(Acquisition {
            frame_rate_hz,
            channels,
            planes,
            flyback_frames,
            version,
        })
    }

    /// Images per volume in the file: every saved channel of every plane, flyback included.
    pub fn images_per_volume(&self) -> usize {
        self.channels.len() * (self.planes + self.flyback_frames)
    }

    /// Whether image `image` (0-based, in file order) holds the channel at position
    /// `channel_pos` of `channels`, at `plane` (0-based).
    pub fn selects(&self, image: usize, channel_pos: usize, plane: usize) -> bool {
        let nc = self.channels.len();
        let per_volume = self.images_per_volume();
        let within = image % per_volume;
        within % nc == channel_pos && within / nc == plane
    }
}

impl FrameInfo {
    pub fn parse(description: &str) -> FrameInfo {
        let a = assignments(description);
        let first = |k: &str| a.get(k).and_then(|v| numbers(v).first().copied());
        FrameInfo {
            frame_number: first("frameNumbers").map(|v| v as u64),
            timestamp_s: first("frameTimestamps_sec"),
            epoch: a.get("epoch").and_then(|v| {
                let n = numbers(v);
                (n.len() == 6).then(|| [n[0], n[1], n[2], n[3], n[4], n[5]])
            }),
        }
    }
}

/// `epoch` as ISO 8601 (the rig's clock for the session's `start_time`; ScanImage writes the
/// acquisition computer's local time and says nothing of its zone, so none is claimed).
pub fn epoch_iso(e: &[f64; 6]) -> String {
    let secs = e[5];
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:06.3}",
        e[0] as i64, e[1] as i64, e[2] as i64, e[3] as i64, e[4] as i64, secs
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOFTWARE_2016: &str = "SI.LINE_FORMAT_VERSION = 1\nSI.VERSION_MAJOR = '2016b'\n\
        SI.VERSION_MINOR = '0'\nSI.hChannels.channelSave = [1;2]\n\
        SI.hFastZ.enable = true\nSI.hFastZ.numDiscardFlybackFrames = 1\n\
        SI.hRoiManager.scanFrameRate = 30.0161\nSI.hStackManager.numSlices = 3\n";

    #[test]
    fn scanimage_2016_settings_and_the_interleave() {
        let a = Acquisition::parse(Some(SOFTWARE_2016), Some("frameNumbers = 1\n")).unwrap();
        assert_eq!(a.frame_rate_hz, Some(30.0161));
        assert_eq!(a.channels, vec![1, 2]);
        assert_eq!((a.planes, a.flyback_frames), (3, 1));
        assert_eq!(a.version.as_deref(), Some("2016b.0"));
        assert_eq!(a.images_per_volume(), 8);
        // ch1 p0, ch2 p0, ch1 p1, ch2 p1, ch1 p2, ch2 p2, flyback x2, then the next volume.
        let ch2_p1: Vec<usize> = (0..16).filter(|&i| a.selects(i, 1, 1)).collect();
        assert_eq!(ch2_p1, vec![3, 11]);
    }

    #[test]
    fn scanimage_5_and_3_are_read_too_and_other_tiffs_are_not_scanimage() {
        let a = Acquisition::parse(
            None,
            Some("scanimage.SI.VERSION_MAJOR = 5.1\nscanimage.SI.hRoiManager.scanFrameRate = 15.2\nscanimage.SI.hChannels.channelSave = 2\n"),
        )
        .unwrap();
        assert_eq!((a.frame_rate_hz, a.channels.clone()), (Some(15.2), vec![2]));
        let a = Acquisition::parse(
            None,
            Some("state.software.version=3.8\nstate.acq.frameRate=4.0\nstate.acq.savingChannel1=1\nstate.acq.savingChannel2=0\n"),
        )
        .unwrap();
        assert_eq!((a.frame_rate_hz, a.channels.clone()), (Some(4.0), vec![1]));
        assert_eq!(
            Acquisition::parse(Some("ImageJ"), Some("ImageJ=1.53t\nimages=20\n")),
            None
        );
    }

    #[test]
    fn frame_descriptions() {
        let f = FrameInfo::parse(
            "frameNumbers = 12\nacquisitionNumbers = 1\nframeTimestamps_sec = 0.366499\nepoch = [2019  6  3 14  5 31.814]\n",
        );
        assert_eq!(f.frame_number, Some(12));
        assert_eq!(f.timestamp_s, Some(0.366499));
        assert_eq!(epoch_iso(&f.epoch.unwrap()), "2019-06-03T14:05:31.814");
    }
}
