//! The resource budget of a rig config, checked when a config is loaded, before anything is
//! allocated: a run that aborts on a failed allocation halfway through its start-up (or, worse,
//! once the recording has begun) loses the session, so a config the machine cannot hold is
//! refused with one line that names the keys driving the estimate.
//!
//! The estimate adds up what the code allocates by the config (see each part's comment for where):
//! the two frame rings, the frames held for the motion reference, the simulated rig (microscope,
//! mouse, clip library), the twin's copy of the library, the twin and a fixed process baseline.
//! Parts held at the same time are summed; parts that only exist during start-up (the motion
//! reference's frames, the simulator's noise fields) count with the largest of them. It is
//! checked against `MemAvailable` (/proc/meminfo) and `limits.max_memory_gb`, and the recorder's
//! write rate against `limits.max_disk_mb_per_s`.
//!
//! `imaging.planes` allocates nothing: each plane is one frame of `height x width` in the rings,
//! so planes only multiply the disk rate.

use std::fmt::Write as _;
use std::path::Path;

use thiserror::Error;

use crate::config::{FrameSource, RigConfig, TrialOrder};

/// Slots of each frame ring in `rig run` (`PipelineOptions::ring_slots` in the daemon).
pub const RUN_RING_SLOTS: usize = 32;
/// Slots of each frame ring in `rig replay` and `rig stream-recv --rois`.
pub const REPLAY_RING_SLOTS: usize = 16;
/// Frame buffers of the live stream source (`StreamOptions::buffers`).
pub const STREAM_BUFFERS: usize = 32;

/// What the process holds whatever the config: code, HDF5, the tokio runtimes, thread stacks,
/// allocator slack. Measured: peak RSS of a 16x16 `rig run --no-twin`, 43 MB (docs/ARCHITECTURE.md).
const BASE_BYTES: f64 = 40e6;
/// The twin on tract (plan, weights, per-batch state) beyond its file: the peak RSS difference
/// between `rig run` with and without the reference twin is 13 to 17 MB; rounded up for a twin
/// larger than the reference one.
const TWIN_OVERHEAD_BYTES: f64 = 30e6;

/// Which command the config is loaded for: each allocates a different subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `rig run` (and `rig validate`, which checks a rig for it): the config's source, both
    /// rings, the analysis and, with `twin`, the twin in the loop.
    Run { twin: bool },
    /// `rig simulate`: the simulated rig and the recorder; no rings, no analysis.
    Simulate,
    /// `rig replay`: a recorded session (its own config) through the rings and the analysis.
    Replay,
    /// `rig stream-recv`: the frame stream's buffers and, with `analysis` (`--rois`), the rings
    /// and the analysis; no simulator, no clips, no twin.
    Receive { analysis: bool },
}

/// One part of the estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// What it is, for the error line ("frame rings").
    pub what: &'static str,
    pub bytes: f64,
    /// Start-up only (freed before the steady state): counts with the largest such part.
    pub transient: bool,
    /// The config keys that size it, with their values.
    pub keys: String,
}

/// Memory and disk rate a config needs for a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Largest first.
    pub parts: Vec<Part>,
    /// Peak memory: every held part plus the largest transient one, bytes.
    pub memory_bytes: f64,
    /// What the recorder writes, bytes per second.
    pub disk_bytes_per_s: f64,
    /// The keys that size the disk rate, with their values.
    pub disk_keys: String,
}

#[derive(Debug, Error, PartialEq)]
pub enum BudgetError {
    #[error(
        "{file}: {keys} need an estimated {} ({parts}) but {}",
        gb(*need_bytes),
        short_of(*limit_bytes, *by_cap)
    )]
    Memory {
        file: String,
        keys: String,
        need_bytes: f64,
        /// The largest parts of the estimate with their sizes, for the error line.
        parts: String,
        limit_bytes: f64,
        /// The limit is `limits.max_memory_gb`, not the memory available.
        by_cap: bool,
    },
    #[error(
        "{file}: {keys} make the recorder write an estimated {need:.0} MB/s but \
         limits.max_disk_mb_per_s is {cap}; lower them or raise limits.max_disk_mb_per_s"
    )]
    Disk {
        file: String,
        keys: String,
        need: f64,
        cap: f64,
    },
}

fn gb(bytes: f64) -> String {
    if bytes >= 1e9 {
        format!("{:.1} GB", bytes / 1e9)
    } else {
        format!("{:.0} MB", (bytes / 1e6).max(1.0))
    }
}

/// What a memory refusal says of the limit, and what to do.
fn short_of(limit_bytes: f64, by_cap: bool) -> String {
    if by_cap {
        format!(
            "limits.max_memory_gb allows {}; lower them or raise limits.max_memory_gb",
            gb(limit_bytes)
        )
    } else {
        // A cap above the memory available would only move the failure to the allocation.
        format!(
            "{} is available; lower them or free memory (limits.max_memory_gb can only lower the \
             budget)",
            gb(limit_bytes)
        )
    }
}

/// Bytes the recorder writes per second: every plane of every volume, u16 pixels.
pub fn record_rate(cfg: &RigConfig) -> f64 {
    let im = &cfg.imaging;
    (im.width * im.height * im.planes * 2) as f64 * im.frame_rate_hz
}

/// The memory and disk rate `cfg` needs for `work`.
pub fn estimate(cfg: &RigConfig, work: Workload) -> Estimate {
    let im = &cfg.imaging;
    let st = &cfg.stimulus;
    let px = (im.width * im.height) as f64;
    let frame = 2.0 * px;
    let frame_keys = format!(
        "imaging.width x imaging.height = {}x{}",
        im.width, im.height
    );
    let mut parts = Vec::new();
    let mut add = |what, bytes: f64, transient, keys: String| {
        parts.push(Part {
            what,
            bytes,
            transient,
            keys,
        })
    };
    add("process", BASE_BYTES, false, String::new());

    let source = match work {
        Workload::Run { .. } => im.source,
        Workload::Simulate => FrameSource::Sim,
        Workload::Replay => FrameSource::Replay,
        Workload::Receive { .. } => FrameSource::Stream,
    };
    let simulated = source == FrameSource::Sim;
    let rings = match work {
        Workload::Simulate | Workload::Receive { analysis: false } => false,
        Workload::Run { .. } | Workload::Replay | Workload::Receive { analysis: true } => true,
    };
    let slots = match work {
        Workload::Replay | Workload::Receive { .. } => REPLAY_RING_SLOTS,
        _ => RUN_RING_SLOTS,
    };
    if rings {
        // pipeline::run: the recorder's and the analysis' FrameRing, `slots` frames each.
        add(
            "frame rings",
            2.0 * slots as f64 * frame,
            false,
            frame_keys.clone(),
        );
        // pipeline::run's warm-up keeps the first `reference_frames` frames and hands a copy
        // of them to build_reference (so twice), which also holds a f32 reference and scratch,
        // and the binned frames (<= 128x128 each); extractor_for then aligns the masks with a
        // whole-frame phase correlation (f32 image, two half spectra). All freed after start-up.
        let n = cfg.extract.reference_frames as f64;
        add(
            "motion reference",
            2.0 * n * frame + 24.0 * px + n * px.min(16384.0) * 4.0,
            true,
            format!(
                "{frame_keys} and extract.reference_frames = {}",
                cfg.extract.reference_frames
            ),
        );
        // extract::rois: the ROI and neighbourhood maps (1 + 4 bytes a pixel) of RoiSet::new.
        add("ROI masks", 5.0 * px, false, frame_keys.clone());
    }
    if source == FrameSource::Stream {
        // acquire::stream: the frame buffers between the socket and the rings (or the writer).
        add(
            "stream buffers",
            STREAM_BUFFERS as f64 * frame,
            false,
            frame_keys.clone(),
        );
    }
    if simulated {
        // sim::microscope: neuropil and scene (f32 each) and the rendered frame; while it is
        // built, a complex f64 1/f field and its f32 copy (20 bytes a pixel).
        add("simulated microscope", 10.0 * px, false, frame_keys.clone());
        add("microscope set-up", 20.0 * px, true, frame_keys.clone());
        // sim::mouse: two f32 Gabor kernels per neuron over its receptive field's window,
        // 6 sigma wide with sigma 4..9 degrees (rms 6.7): about 40 degrees of the screen.
        let deg_per_px = cfg.display.width_deg() / st.width as f64;
        let side = 40.0 / deg_per_px;
        let window = side.min(st.width as f64) * side.min(st.height as f64);
        add(
            "simulated mouse",
            cfg.sim.neurons as f64 * (8.0 * window + 512.0),
            false,
            format!(
                "sim.neurons = {} and stimulus.width x stimulus.height = {}x{}",
                cfg.sim.neurons, st.width, st.height
            ),
        );
    }
    // The clip library: rendered by the simulator (sim::stimulus), or for a live rig with a
    // presenter; `rig run` files every clip in the twin's ClipStore too (a second copy), and a
    // replayed session's clips go to the ClipStore alone.
    let clip = (st.frames_per_clip() * st.width * st.height) as f64;
    let plan = if st.order == TrialOrder::Plan {
        st.plan_top as f64
    } else {
        0.0
    };
    let copies = match (work, source) {
        (Workload::Simulate, _) => 1.0,
        (Workload::Replay | Workload::Receive { .. }, _) => 0.0,
        (Workload::Run { .. }, FrameSource::Sim) => 2.0,
        (Workload::Run { .. }, FrameSource::Replay) => 1.0,
        (Workload::Run { .. }, FrameSource::Stream) => {
            if cfg.display.presenter == "none" {
                0.0
            } else {
                2.0
            }
        }
    };
    if copies > 0.0 {
        add(
            "clip library",
            copies * (cfg.sim.clips as f64 + plan) * clip,
            false,
            format!(
                "sim.clips = {} of stimulus.clip_seconds = {} s at stimulus.frame_rate_hz = {} Hz, \
                 stimulus.width x stimulus.height = {}x{}",
                cfg.sim.clips, st.clip_seconds, st.frame_rate_hz, st.width, st.height
            ),
        );
        if simulated {
            // sim::stimulus::natural_clip: a complex f64 1/f field twice the clip's size and
            // its f32 copy, one clip at a time.
            add(
                "clip rendering",
                4.0 * 20.0 * (st.width * st.height) as f64,
                true,
                format!(
                    "stimulus.width x stimulus.height = {}x{}",
                    st.width, st.height
                ),
            );
        }
    }
    if let Workload::Run { twin: true } = work {
        if cfg.twin.in_loop {
            let file = std::fs::metadata(&cfg.twin.onnx)
                .map(|m| m.len() as f64)
                .unwrap_or(0.0);
            add(
                "twin",
                file + TWIN_OVERHEAD_BYTES,
                false,
                format!("twin.onnx = {}", cfg.twin.onnx.display()),
            );
        }
    }
    parts.sort_by(|a, b| b.bytes.total_cmp(&a.bytes));
    let held: f64 = parts.iter().filter(|p| !p.transient).map(|p| p.bytes).sum();
    let peak = parts
        .iter()
        .filter(|p| p.transient)
        .map(|p| p.bytes)
        .fold(0.0, f64::max);
    Estimate {
        parts,
        memory_bytes: held + peak,
        // Only a run records at the imaging rate; simulate and replay write as fast as they go.
        disk_bytes_per_s: if matches!(work, Workload::Run { .. }) {
            record_rate(cfg)
        } else {
            0.0
        },
        disk_keys: format!(
            "imaging.width x imaging.height = {}x{}, imaging.planes = {} and \
             imaging.frame_rate_hz = {}",
            im.width, im.height, im.planes, im.frame_rate_hz
        ),
    }
}

/// `MemAvailable` of /proc/meminfo, bytes (`None` where it cannot be read).
pub fn mem_available() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// Checks `cfg` (named `file` in errors) for `work` against `available` bytes of memory
/// (usually [`mem_available`]) and the config's `[limits]`; returns the estimate.
pub fn check(
    cfg: &RigConfig,
    file: &str,
    work: Workload,
    available: Option<f64>,
) -> Result<Estimate, BudgetError> {
    let est = estimate(cfg, work);
    let cap = cfg.limits.max_memory_gb.map(|g| g * 1e9);
    let limit = match (available, cap) {
        (Some(a), Some(c)) => Some((a.min(c), c <= a)),
        (Some(a), None) => Some((a, false)),
        (None, Some(c)) => Some((c, true)),
        (None, None) => None,
    };
    if let Some((limit, by_cap)) = limit.filter(|(l, _)| est.memory_bytes > *l) {
        // Name the keys of the parts that make most of the estimate (at least the largest
        // part the config sizes), largest first; a key list inside a longer one is dropped.
        let mut keys: Vec<&str> = Vec::new();
        for p in est.parts.iter().filter(|p| !p.keys.is_empty()) {
            if !keys.is_empty() && p.bytes < 0.25 * est.memory_bytes {
                break;
            }
            if keys.iter().any(|k| k.contains(p.keys.as_str())) {
                continue;
            }
            keys.retain(|k| !p.keys.contains(*k));
            keys.push(&p.keys);
        }
        let mut parts = String::new();
        for p in est.parts.iter().filter(|p| p.bytes >= 1e6).take(5) {
            if !parts.is_empty() {
                parts.push_str(", ");
            }
            let _ = write!(parts, "{} {}", p.what, gb(p.bytes));
        }
        return Err(BudgetError::Memory {
            file: file.to_string(),
            keys: keys.join("; "),
            need_bytes: est.memory_bytes,
            parts,
            limit_bytes: limit,
            by_cap,
        });
    }
    let cap = cfg.limits.max_disk_mb_per_s;
    if est.disk_bytes_per_s > cap * 1e6 {
        return Err(BudgetError::Disk {
            file: file.to_string(),
            keys: est.disk_keys.clone(),
            need: est.disk_bytes_per_s / 1e6,
            cap,
        });
    }
    Ok(est)
}

/// Free bytes on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64, String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: statvfs fills the struct for a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// A warning when the disk holding `dir` has room for less than `minutes` of recording at the
/// config's rate (`None` when it has, or when the free space cannot be read).
pub fn disk_warning(cfg: &RigConfig, dir: &Path, minutes: f64) -> Option<String> {
    let need = record_rate(cfg) * minutes * 60.0;
    let free = free_bytes(dir).ok()? as f64;
    (free < need).then(|| {
        format!(
            "{} has {} free, less than the {} that {minutes} minutes of recording need at {:.1} \
             MB/s; the recording stops when the disk is full",
            dir.display(),
            gb(free),
            gb(need),
            record_rate(cfg) / 1e6
        )
    })
}

/// Peak resident memory of this process so far (VmHWM), MiB; 0 where /proc is unavailable. What
/// the commands report beside the estimate above.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EMBEDDED_SIM_CONFIG;

    fn cfg(edit: &[(&str, &str)]) -> RigConfig {
        let mut text = EMBEDDED_SIM_CONFIG.to_string();
        for (a, b) in edit {
            assert!(text.contains(a), "{a}");
            text = text.replace(a, b);
        }
        RigConfig::parse(&text, "x.toml").unwrap()
    }

    const RUN: Workload = Workload::Run { twin: true };

    #[test]
    fn default_config_fits_in_a_few_hundred_megabytes() {
        let e = estimate(&RigConfig::embedded_sim(), RUN);
        assert!(e.memory_bytes > 50e6 && e.memory_bytes < 400e6, "{e:?}");
        // 256 x 256 u16 at 30 Hz.
        assert!((e.disk_bytes_per_s - 256.0 * 256.0 * 2.0 * 30.0).abs() < 1.0);
        assert!(check(&RigConfig::embedded_sim(), "x", RUN, Some(1e9)).is_ok());
    }

    #[test]
    fn large_frames_are_refused_naming_the_frame_keys() {
        let c = cfg(&[
            ("width = 256 ", "width = 4096 "),
            ("height = 256 ", "height = 4096 "),
        ]);
        let e = estimate(&c, RUN);
        // Two rings of 32 frames of 32 MiB, 2 x 200 reference frames.
        assert!(e.memory_bytes > 15e9, "{}", e.memory_bytes);
        assert_eq!(e.parts[0].what, "motion reference");
        let err = check(&c, "x.toml", RUN, Some(7.5e9))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x.toml: imaging.width x imaging.height = 4096x4096")
                && err.contains("but 7.5 GB is available")
                && err.contains("motion reference 13.")
                && err.contains("frame rings 2.1 GB")
                && !err.contains('\n'),
            "{err}"
        );
        // A cap below the memory available is what the error names.
        let capped = cfg(&[
            ("width = 256 ", "width = 4096 "),
            ("height = 256 ", "height = 4096 "),
            ("max_disk_mb_per_s", "max_memory_gb = 2\nmax_disk_mb_per_s"),
        ]);
        let err = check(&capped, "x.toml", RUN, Some(64e9))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("limits.max_memory_gb allows 2.0 GB")
                && err.contains("raise limits.max_memory_gb"),
            "{err}"
        );
    }

    #[test]
    fn planes_only_multiply_the_disk_rate() {
        let one = estimate(&cfg(&[]), RUN);
        let many = cfg(&[("planes = 1 ", "planes = 64 ")]);
        let e = estimate(&many, RUN);
        assert_eq!(e.memory_bytes, one.memory_bytes);
        assert!((e.disk_bytes_per_s - 64.0 * one.disk_bytes_per_s).abs() < 1.0);
        let big = cfg(&[
            ("planes = 1 ", "planes = 64 "),
            ("width = 256 ", "width = 1024 "),
            ("height = 256 ", "height = 1024 "),
        ]);
        let err = check(&big, "p.toml", RUN, Some(64e9)).unwrap_err();
        assert!(matches!(err, BudgetError::Disk { .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("imaging.planes = 64")
                && err.contains("4027 MB/s")
                && err.contains("limits.max_disk_mb_per_s is 1000"),
            "{err}"
        );
    }

    #[test]
    fn clip_library_counts_both_copies_and_names_its_keys() {
        let c = cfg(&[("clips = 24 ", "clips = 10000 ")]);
        let e = estimate(&c, RUN);
        // 10000 clips x 60 frames x 64 x 36, in the library and in the twin's store.
        let lib = e.parts.iter().find(|p| p.what == "clip library").unwrap();
        assert!((lib.bytes - 2.0 * 10000.0 * 60.0 * 64.0 * 36.0).abs() < 1.0);
        let err = check(&c, "c.toml", RUN, Some(2e9)).unwrap_err().to_string();
        assert!(
            err.contains("sim.clips = 10000") && err.contains("clip library 2.8 GB"),
            "{err}"
        );
        // `rig simulate` holds one copy, `rig replay` none.
        let sim = estimate(&c, Workload::Simulate);
        let lib = sim.parts.iter().find(|p| p.what == "clip library").unwrap();
        assert!((lib.bytes - 10000.0 * 60.0 * 64.0 * 36.0).abs() < 1.0);
        assert!(estimate(&c, Workload::Replay).memory_bytes < 400e6);

        let long = cfg(&[("clip_seconds = 2.0 ", "clip_seconds = 600.0 ")]);
        let err = check(&long, "l.toml", RUN, Some(1e9))
            .unwrap_err()
            .to_string();
        assert!(err.contains("stimulus.clip_seconds = 600 s"), "{err}");
    }

    #[test]
    fn live_stream_without_presenter_holds_no_library() {
        let c = cfg(&[("source = \"sim\"", "source = \"stream\"")]);
        let e = estimate(&c, RUN);
        assert!(e.parts.iter().all(|p| p.what != "clip library"));
        assert!(e.parts.iter().any(|p| p.what == "stream buffers"));
        assert!(e.parts.iter().all(|p| !p.what.starts_with("simulated")));
    }

    #[test]
    fn stream_recv_holds_its_buffers_and_only_with_rois_the_rings() {
        let c = cfg(&[
            ("width = 256 ", "width = 4096 "),
            ("height = 256 ", "height = 4096 "),
        ]);
        let bare = estimate(&c, Workload::Receive { analysis: false });
        let what: Vec<&str> = bare.parts.iter().map(|p| p.what).collect();
        assert_eq!(what, ["stream buffers", "process"], "{bare:?}");
        // 32 buffers of 32 MiB.
        assert!((bare.parts[0].bytes - 32.0 * 4096.0 * 4096.0 * 2.0).abs() < 1.0);
        let rois = estimate(&c, Workload::Receive { analysis: true });
        assert!(rois.parts.iter().any(|p| p.what == "frame rings"));
        assert!(rois
            .parts
            .iter()
            .all(|p| p.what != "clip library" && p.what != "twin"));
        let err = check(
            &c,
            "r.toml",
            Workload::Receive { analysis: false },
            Some(0.5e9),
        );
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("stream buffers 1.1 GB"));
    }

    #[test]
    fn a_disk_short_of_the_planned_minutes_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let c = RigConfig::embedded_sim();
        assert_eq!(disk_warning(&c, dir.path(), 0.01), None);
        // 4 MB/s for ten million years is more than any disk.
        let w = disk_warning(&c, dir.path(), 5e12).unwrap();
        assert!(w.contains("minutes of recording need at 3.9 MB/s"), "{w}");
        assert!(!w.contains('\n'), "{w}");
        // Unreadable free space: no warning rather than a wrong one.
        assert_eq!(disk_warning(&c, &dir.path().join("none"), 5e12), None);
    }

    #[test]
    fn no_memory_figure_means_only_the_cap_applies() {
        let c = cfg(&[
            ("width = 256 ", "width = 2048 "),
            ("height = 256 ", "height = 2048 "),
        ]);
        assert!(check(&c, "x", RUN, None).is_ok());
        assert!(mem_available().is_some_and(|m| m > 0.0));
    }
}
