//! Rig config: one TOML file describes a rig (imaging, display, sync board, twin, storage and, for the
//! simulated rig, the simulation). `rig_configs/sim.toml` is embedded as the default.
//!
//! Unknown keys are rejected (a typo in a config must not silently fall back to a default on a real
//! rig), and every number is range-checked with an error that names the file, the key and the range.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The simulated rig's config, compiled into the binary so `rig demo` needs no files.
pub const EMBEDDED_SIM_CONFIG: &str = include_str!("../rig_configs/sim.toml");
/// The name reported for the embedded config in errors and session files.
pub const EMBEDDED_SIM_NAME: &str = "<embedded rig_configs/sim.toml>";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {file}: {message}")]
    Parse { file: String, message: String },
    #[error("config {file}: key `{key}` = {value} is out of range; expected {expected}")]
    Range {
        file: String,
        key: &'static str,
        value: String,
        expected: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RigConfig {
    pub rig: RigSection,
    pub imaging: Imaging,
    pub display: Display,
    pub stimulus: Stimulus,
    pub sync: Sync,
    pub twin: Twin,
    pub storage: Storage,
    #[serde(default)]
    pub extract: Extract,
    #[serde(default)]
    pub control: Control,
    #[serde(default)]
    pub dashboard: Dashboard,
    #[serde(default)]
    pub sim: Sim,
    #[serde(default)]
    pub limits: Limits,
}

/// The resource budget a config is checked against when it is loaded (`crate::budget`): a config
/// whose estimated memory or disk rate exceeds it is refused before anything is allocated, since
/// a run that aborts on an allocation loses the session it started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most memory a run may need, GB (1e9 bytes); unset: the memory the system has available
    /// (`MemAvailable`). The smaller of the two applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_gb: Option<f64>,
    /// Most the recorder may have to write, MB (1e6 bytes) per second: frame bytes x planes x
    /// imaging.frame_rate_hz. A rate the disk cannot sustain stops the run when the ring fills.
    pub max_disk_mb_per_s: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory_gb: None,
            max_disk_mb_per_s: 1000.0,
        }
    }
}

/// The daemon's local status/control endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    /// TCP address of the JSON-lines control endpoint; loopback unless the config says otherwise.
    pub listen: String,
    /// Seconds a control connection may take to complete a request line (from connecting or
    /// from its previous reply) before it is closed, so idle or trickling clients do not pile up.
    pub idle_timeout_s: f64,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            listen: "127.0.0.1:7701".into(),
            idle_timeout_s: 30.0,
        }
    }
}

/// The live dashboard `rig run` serves to a browser (src/dashboard/).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Dashboard {
    /// HTTP address of the dashboard; loopback unless the config says otherwise; "" turns it
    /// off. When this port is taken (a second `rig run`), the next free one is used and the
    /// start-up line says which; an address given with `--dashboard` is used as given or the run
    /// is refused.
    pub listen: String,
    /// Updates pushed to each browser per second.
    pub rate_hz: f64,
    /// Seconds of predicted and measured traces shown.
    pub traces_s: f64,
}

impl Default for Dashboard {
    fn default() -> Self {
        Dashboard {
            listen: "127.0.0.1:7702".into(),
            rate_hz: 5.0,
            traces_s: 10.0,
        }
    }
}

/// Online extraction (motion correction, traces, dF/F, deconvolution).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Extract {
    /// Frames averaged into the motion-correction reference at the start.
    pub reference_frames: usize,
    /// Largest rigid shift searched, as a fraction of the shorter frame side (suite2p: 0.1).
    pub max_shift_fraction: f64,
    /// Neuropil contamination subtracted: F = F_roi - coefficient * F_neuropil (suite2p: 0.7).
    pub neuropil_coefficient: f64,
    /// Pixels closer than this to an ROI are left out of its neuropil annulus (suite2p: 2).
    pub neuropil_inner_gap_px: f64,
    /// Outer radius of the neuropil annulus around an ROI's centroid, pixels. An ROI whose
    /// annulus holds no pixel (crowded by other ROIs) gets neuropil coefficient 0.
    pub neuropil_outer_radius_px: f64,
    /// Trailing window of the running F0 baseline, seconds.
    pub baseline_window_s: f64,
    /// Gaussian smoothing before the baseline's min/max, frames.
    pub baseline_sigma_frames: f64,
    /// Indicator decay time constant for deconvolution, seconds (GCaMP6f ~0.7, 6s ~1.0-1.5).
    pub indicator_tau_s: f64,
    /// Run online OASIS deconvolution.
    pub deconvolve: bool,
    /// Seconds a deconvolved estimate waits before it is final.
    pub deconv_lag_s: f64,
    /// OASIS sparsity penalty, dF/F units (0 = suite2p's unpenalised OASIS).
    pub deconv_lambda: f64,
    /// Extra time spent per analysed frame, ms: makes analysis deliberately slow, to test that
    /// recording never depends on it. 0 on a real rig.
    pub analysis_delay_ms: f64,
}

impl Default for Extract {
    fn default() -> Self {
        Extract {
            reference_frames: 200,
            max_shift_fraction: 0.1,
            neuropil_coefficient: 0.7,
            neuropil_inner_gap_px: 2.0,
            neuropil_outer_radius_px: 12.0,
            baseline_window_s: 60.0,
            baseline_sigma_frames: 10.0,
            indicator_tau_s: 1.0,
            deconvolve: true,
            deconv_lag_s: 2.0,
            deconv_lambda: 0.0,
            analysis_delay_ms: 0.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RigSection {
    pub name: String,
    #[serde(default = "default_mouse")]
    pub mouse_id: String,
    /// The mouse's sex as NWB's Subject has it: M, F, O (other) or U (unknown).
    #[serde(default = "default_sex")]
    pub mouse_sex: String,
    /// The mouse's age as an ISO 8601 duration (`P90D`) or range (`P60D/P90D`; `P0D/` when
    /// unknown), for the NWB export's Subject.
    #[serde(default = "default_age")]
    pub mouse_age: String,
}

fn default_mouse() -> String {
    "unset".into()
}
fn default_sex() -> String {
    "U".into()
}
fn default_age() -> String {
    "P0D/".into()
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FrameSource {
    Sim,
    Stream,
    Replay,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PixelType {
    U16,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Imaging {
    pub source: FrameSource,
    pub width: usize,
    pub height: usize,
    pub frame_rate_hz: f64,
    #[serde(default = "one")]
    pub planes: usize,
    #[serde(default = "u16_px")]
    pub pixel_type: PixelType,
    #[serde(default = "one_f")]
    pub um_per_px: f64,
    /// Calcium indicator expressed in the imaged neurons (NWB ImagingPlane `indicator`).
    #[serde(default = "default_indicator")]
    pub indicator: String,
    /// Brain area imaged, an Allen CCF acronym (NWB ImagingPlane `location`).
    #[serde(default = "default_location")]
    pub location: String,
    /// Two-photon excitation wavelength, nm.
    #[serde(default = "default_excitation")]
    pub excitation_wavelength_nm: f64,
    /// Centre of the recorded emission band, nm.
    #[serde(default = "default_emission")]
    pub emission_wavelength_nm: f64,
    /// Address the live frame stream listens on. Loopback unless the config says otherwise.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Frame stream: seconds a started header may take to complete, and a payload to arrive once
    /// its header is in; a stalled or trickling sender is dropped (docs/frame-protocol.md).
    #[serde(default = "default_stream_stall")]
    pub stream_stall_timeout_s: f64,
    /// Frame stream: seconds a new connection has to send its first valid frame header; an idle
    /// client would otherwise hold the single stream slot for ever.
    #[serde(default = "default_stream_first_header")]
    pub stream_first_header_timeout_s: f64,
}

fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn default_indicator() -> String {
    "GCaMP6s".into()
}
fn default_location() -> String {
    "VISp".into()
}
fn default_excitation() -> f64 {
    920.0
}
fn default_emission() -> f64 {
    510.0
}
fn u16_px() -> PixelType {
    PixelType::U16
}
fn default_listen() -> String {
    "127.0.0.1:7700".into()
}
fn default_stream_stall() -> f64 {
    10.0
}
fn default_stream_first_header() -> f64 {
    30.0
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Corner {
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Display {
    pub width_px: u32,
    pub height_px: u32,
    pub refresh_hz: f64,
    pub width_cm: f64,
    pub height_cm: f64,
    pub distance_cm: f64,
    pub gamma: f64,
    pub mean_luminance: f64,
    pub photodiode_corner: Corner,
    pub photodiode_size_px: u32,
    /// The stimulus presenter `rig run` drives: `none`, an address of a running `rig present`
    /// (`host:port` or `unix:/path`), or `spawn` / `spawn-headless` (`rig run` starts one).
    #[serde(default = "default_presenter")]
    pub presenter: String,
    /// Time from a presenter's flip to light on the screen, ms. The photodiode refines it within
    /// one refresh period either side (an alternating patch cannot tell more), so set it to the
    /// monitor's known lag when that exceeds a period (many LCDs).
    #[serde(default)]
    pub lag_ms: f64,
    /// How the stimulus grid is laid onto the screen (docs/display-geometry.md): `planar`
    /// stretches it over the screen; `spherical` draws it in visual degrees as the eye sees it.
    #[serde(default)]
    pub geometry: Geometry,
    /// Where the perpendicular from the eye meets the screen, cm from the screen's centre
    /// (+x right, +y up). Spherical geometry only.
    #[serde(default)]
    pub eye_x_cm: f64,
    #[serde(default)]
    pub eye_y_cm: f64,
    /// Direction of that perpendicular in the mouse's visual field, degrees (+ right, + up): a
    /// monitor turned 30° to the mouse's right has `screen_azimuth_deg = 30`. Spherical only.
    #[serde(default)]
    pub screen_azimuth_deg: f64,
    #[serde(default)]
    pub screen_elevation_deg: f64,
    /// Visual angle the stimulus grid spans, degrees, centred on the perpendicular; default the
    /// screen's span seen from its centre normal ([`Display::width_deg`]). Spherical only.
    #[serde(default)]
    pub stimulus_width_deg: Option<f64>,
    #[serde(default)]
    pub stimulus_height_deg: Option<f64>,
    /// Who draws `rig present`'s frames: `auto` (OpenGL when an adapter exists, else the CPU),
    /// `gl` or `cpu`.
    #[serde(default)]
    pub renderer: Renderer,
}

/// How the stimulus grid maps onto the screen.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Geometry {
    /// The grid spans the screen edge to edge (pixels are rectangles on the monitor).
    #[default]
    Planar,
    /// The grid is in azimuth x elevation, corrected for the flat monitor (Marshel et al. 2011).
    Spherical,
}

/// Who draws the presenter's frames.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Renderer {
    /// OpenGL when a context can be made, the CPU otherwise (logged).
    #[default]
    Auto,
    /// OpenGL or nothing: the presenter refuses to start without it.
    Gl,
    /// CPU-composed frames blitted to the window (no GPU driver needed).
    Cpu,
}

impl std::fmt::Display for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Renderer::Auto => "auto",
            Renderer::Gl => "gl",
            Renderer::Cpu => "cpu",
        })
    }
}

impl std::str::FromStr for Renderer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Renderer::Auto),
            "gl" => Ok(Renderer::Gl),
            "cpu" => Ok(Renderer::Cpu),
            _ => Err(format!("expected auto, gl or cpu, got {s:?}")),
        }
    }
}

fn default_presenter() -> String {
    "none".into()
}

/// Checks a `display.presenter` value (also `rig run --present`); the error says what is accepted.
pub fn check_presenter(value: &str) -> Result<(), String> {
    match value {
        "none" | "spawn" | "spawn-headless" => Ok(()),
        v if v.starts_with("unix:/") => Ok(()),
        v if v.parse::<std::net::SocketAddr>().is_ok() => Ok(()),
        _ => Err(
            "none, spawn, spawn-headless, an address like 127.0.0.1:7702 or \
                  unix:/path/to/socket"
                .into(),
        ),
    }
}

impl Display {
    /// Horizontal visual angle spanned by the monitor, degrees (planar screen, eye on the centre normal).
    pub fn width_deg(&self) -> f64 {
        2.0 * (self.width_cm / 2.0).atan2(self.distance_cm).to_degrees()
    }
    pub fn height_deg(&self) -> f64 {
        2.0 * (self.height_cm / 2.0).atan2(self.distance_cm).to_degrees()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stimulus {
    pub width: usize,
    pub height: usize,
    pub frame_rate_hz: f64,
    pub clip_seconds: f64,
    pub gray_seconds: f64,
    /// How `rig run` picks each trial's clip.
    #[serde(default)]
    pub order: TrialOrder,
    /// With `order = "list"`: clip ids, shown in this order and then again.
    #[serde(default)]
    pub clip_list: Vec<i32>,
    /// With `order = "plan"`: the in-silico plan (`rig insilico --out`); `rig run --plan` sets it.
    #[serde(default)]
    pub plan: Option<PathBuf>,
    /// With `order = "plan"`: how many of the plan's best stimuli are shown.
    #[serde(default = "default_plan_top")]
    pub plan_top: usize,
    /// With `order = "plan"`: the fraction of trials that show a plan stimulus; the others show
    /// library clips at random, the comparison the plan is judged against.
    #[serde(default = "default_plan_fraction")]
    pub plan_fraction: f64,
    /// With `order = "plan"`: control stimuli per plan stimulus — random stimuli of its family at
    /// its contrast, filed after the plan's stimuli — that `rig insilico gain` judges the plan
    /// against besides natural clips. 0 shows none.
    #[serde(default = "default_plan_controls")]
    pub plan_controls: usize,
    /// With `order = "plan"`: of the trials that do not show a plan stimulus, the fraction that
    /// show a control stimulus; the rest show natural library clips.
    #[serde(default = "default_control_fraction")]
    pub control_fraction: f64,
}

/// How trials are drawn in `rig run`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrialOrder {
    /// Every library clip once per cycle, in a fresh random order each cycle.
    #[default]
    Shuffle,
    /// `stimulus.clip_list`, cycled.
    List,
    /// The in-silico plan's best stimuli interleaved with random library clips.
    Plan,
}

fn default_plan_top() -> usize {
    4
}
fn default_plan_fraction() -> f64 {
    0.5
}
fn default_plan_controls() -> usize {
    1
}
fn default_control_fraction() -> f64 {
    0.4
}

impl Stimulus {
    pub fn frames_per_clip(&self) -> usize {
        (self.clip_seconds * self.frame_rate_hz).round().max(1.0) as usize
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Sync {
    pub port: String,
    pub baud: u32,
    pub who_am_i: u16,
    pub frame_clock_input: String,
    pub photodiode_input: String,
    pub encoder_input: String,
    pub encoder_cm_per_count: f64,
    /// Which Harp board fills the sync roles: `twinrig` (the rig's own sync board, the default) or
    /// `harp-behavior` (a stock Harp Behavior board, see docs/harp-registers.md).
    #[serde(default)]
    pub board: SyncBoard,
    /// Optional per-role register addresses overriding the board's defaults (`[sync.registers]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registers: Option<SyncRegisters>,
}

/// The kind of Harp board on the sync port.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SyncBoard {
    /// The twinrig sync board (WHO_AM_I 2176), registers per docs/harp-registers.md.
    #[default]
    Twinrig,
    /// A stock Harp Behavior board (WHO_AM_I 1216): frame clock and photodiode on digital inputs,
    /// the encoder on Port 2.
    HarpBehavior,
}

/// Register addresses per role; each one left out keeps the board's default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SyncRegisters {
    /// Register whose events carry the frame clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_clock: Option<u8>,
    /// Register whose events carry the photodiode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub photodiode: Option<u8>,
    /// Register whose events carry the treadmill encoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<u8>,
    /// First of the four output registers (set, clear, toggle, state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_set: Option<u8>,
    /// Register gating the application events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_enable: Option<u8>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Cpu,
    Cuda,
    Auto,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Twin {
    pub onnx: PathBuf,
    pub backend: Backend,
    /// Step the twin in `rig run` and compare it with the measured activity.
    #[serde(default = "default_true")]
    pub in_loop: bool,
    /// Sliding window of the per-neuron running correlation, seconds.
    #[serde(default = "default_compare_window")]
    pub compare_window_s: f64,
    /// The drift alarm counts frames whose population fidelity is below this fraction of its
    /// reference (the first full window).
    #[serde(default = "default_alarm_fraction")]
    pub alarm_fraction: f64,
    /// Seconds of low fidelity in a row that raise the alarm.
    #[serde(default = "default_alarm_s")]
    pub alarm_seconds: f64,
    /// Extra time per twin step, ms: makes the twin deliberately slow, to test that recording and
    /// extraction never wait for it. 0 on a real rig.
    #[serde(default)]
    pub step_delay_ms: f64,
}

fn default_true() -> bool {
    true
}
fn default_compare_window() -> f64 {
    30.0
}
fn default_alarm_fraction() -> f64 {
    0.5
}
fn default_alarm_s() -> f64 {
    10.0
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Deflate,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    pub out_dir: PathBuf,
    pub flush_interval_s: f64,
    pub compression: Compression,
    #[serde(default = "default_deflate")]
    pub deflate_level: u8,
}

fn default_deflate() -> u8 {
    4
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StimulusSet {
    Natural,
    Gratings,
    Mixed,
    /// Sparse noise only (receptive-field mapping).
    SparseNoise,
    /// The calibration protocol: natural clips plus gratings and sparse noise (docs/calibration.md).
    Calibration,
}

impl fmt::Display for StimulusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StimulusSet::Natural => "natural",
            StimulusSet::Gratings => "gratings",
            StimulusSet::Mixed => "mixed",
            StimulusSet::SparseNoise => "sparse_noise",
            StimulusSet::Calibration => "calibration",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Sim {
    pub seed: u64,
    pub neurons: usize,
    pub stimulus_set: StimulusSet,
    pub clips: usize,
    /// Seed of the clip library alone (default: the session's seed): the same mouse shown clips
    /// it was never shown, for held-out tests of a twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_seed: Option<u64>,
    pub noise: f64,
    pub motion_px: f64,
}

impl Sim {
    /// The seed the clip library of a session seeded `seed` is drawn from.
    pub fn library_seed(&self, seed: u64) -> u64 {
        self.clip_seed.unwrap_or(seed)
    }
}

impl Default for Sim {
    fn default() -> Self {
        Sim {
            seed: 1,
            neurons: 200,
            stimulus_set: StimulusSet::Mixed,
            clips: 24,
            clip_seed: None,
            noise: 1.0,
            motion_px: 2.0,
        }
    }
}

impl RigConfig {
    /// The embedded simulated rig.
    pub fn embedded_sim() -> Self {
        // The embedded text is tested in this module, so a parse failure here is a build defect.
        Self::parse(EMBEDDED_SIM_CONFIG, EMBEDDED_SIM_NAME).expect("embedded sim.toml is valid")
    }

    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `file` names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let cfg: RigConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// The config as TOML text, as recorded in session files.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let c = Checker { file };
        c.int("imaging.width", self.imaging.width, 16, 4096)?;
        c.int("imaging.height", self.imaging.height, 16, 4096)?;
        c.float(
            "imaging.frame_rate_hz",
            self.imaging.frame_rate_hz,
            0.1,
            1000.0,
        )?;
        c.int("imaging.planes", self.imaging.planes, 1, 64)?;
        c.float("imaging.um_per_px", self.imaging.um_per_px, 0.01, 100.0)?;
        c.float(
            "imaging.excitation_wavelength_nm",
            self.imaging.excitation_wavelength_nm,
            300.0,
            1500.0,
        )?;
        c.float(
            "imaging.emission_wavelength_nm",
            self.imaging.emission_wavelength_nm,
            300.0,
            1000.0,
        )?;
        for (key, v) in [
            ("imaging.indicator", &self.imaging.indicator),
            ("imaging.location", &self.imaging.location),
        ] {
            if v.trim().is_empty() {
                return Err(c.bad(key, v, "a non-empty name"));
            }
        }
        if !["M", "F", "O", "U"].contains(&self.rig.mouse_sex.as_str()) {
            return Err(c.bad(
                "rig.mouse_sex",
                &self.rig.mouse_sex,
                "M, F, O (other) or U (unknown)",
            ));
        }
        if !self.rig.mouse_age.starts_with('P') {
            return Err(c.bad(
                "rig.mouse_age",
                &self.rig.mouse_age,
                "an ISO 8601 duration such as P90D, or a range such as P60D/P90D (P0D/ when unknown)",
            ));
        }
        if self.imaging.listen.parse::<std::net::SocketAddr>().is_err()
            && !self.imaging.listen.starts_with("unix:")
        {
            return Err(c.bad(
                "imaging.listen",
                &self.imaging.listen,
                "an address like 127.0.0.1:7700 or unix:/path/to/socket",
            ));
        }
        c.float(
            "imaging.stream_stall_timeout_s",
            self.imaging.stream_stall_timeout_s,
            0.05,
            600.0,
        )?;
        c.float(
            "imaging.stream_first_header_timeout_s",
            self.imaging.stream_first_header_timeout_s,
            0.05,
            3600.0,
        )?;
        c.float(
            "control.idle_timeout_s",
            self.control.idle_timeout_s,
            0.05,
            86_400.0,
        )?;
        c.float("dashboard.rate_hz", self.dashboard.rate_hz, 0.5, 10.0)?;
        c.float("dashboard.traces_s", self.dashboard.traces_s, 1.0, 60.0)?;
        if !self.dashboard.listen.is_empty()
            && self
                .dashboard
                .listen
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(c.bad(
                "dashboard.listen",
                &self.dashboard.listen,
                "an address like 127.0.0.1:7702, or \"\" for no dashboard",
            ));
        }
        c.int(
            "display.width_px",
            self.display.width_px as usize,
            64,
            16384,
        )?;
        c.int(
            "display.height_px",
            self.display.height_px as usize,
            64,
            16384,
        )?;
        c.float("display.refresh_hz", self.display.refresh_hz, 1.0, 500.0)?;
        c.float("display.width_cm", self.display.width_cm, 1.0, 1000.0)?;
        c.float("display.height_cm", self.display.height_cm, 1.0, 1000.0)?;
        c.float("display.distance_cm", self.display.distance_cm, 1.0, 1000.0)?;
        c.float("display.gamma", self.display.gamma, 0.5, 4.0)?;
        c.float("display.lag_ms", self.display.lag_ms, 0.0, 500.0)?;
        c.float("display.eye_x_cm", self.display.eye_x_cm, -1000.0, 1000.0)?;
        c.float("display.eye_y_cm", self.display.eye_y_cm, -1000.0, 1000.0)?;
        c.float(
            "display.screen_azimuth_deg",
            self.display.screen_azimuth_deg,
            -180.0,
            180.0,
        )?;
        c.float(
            "display.screen_elevation_deg",
            self.display.screen_elevation_deg,
            -89.0,
            89.0,
        )?;
        if let Some(v) = self.display.stimulus_width_deg {
            c.float("display.stimulus_width_deg", v, 1.0, 360.0)?;
        }
        if let Some(v) = self.display.stimulus_height_deg {
            c.float("display.stimulus_height_deg", v, 1.0, 180.0)?;
        }
        c.float(
            "display.mean_luminance",
            self.display.mean_luminance,
            0.0,
            1.0,
        )?;
        c.int(
            "display.photodiode_size_px",
            self.display.photodiode_size_px as usize,
            0,
            self.display.width_px.min(self.display.height_px) as usize,
        )?;
        if let Err(expected) = check_presenter(&self.display.presenter) {
            return Err(c.bad(
                "display.presenter",
                &format!("{:?}", self.display.presenter),
                &expected,
            ));
        }
        c.int("stimulus.width", self.stimulus.width, 8, 1024)?;
        c.int("stimulus.height", self.stimulus.height, 8, 1024)?;
        c.float(
            "stimulus.frame_rate_hz",
            self.stimulus.frame_rate_hz,
            1.0,
            self.display.refresh_hz,
        )?;
        c.float(
            "stimulus.clip_seconds",
            self.stimulus.clip_seconds,
            0.1,
            600.0,
        )?;
        c.float(
            "stimulus.gray_seconds",
            self.stimulus.gray_seconds,
            0.0,
            600.0,
        )?;
        c.int("stimulus.plan_top", self.stimulus.plan_top, 1, 10_000)?;
        c.float(
            "stimulus.plan_fraction",
            self.stimulus.plan_fraction,
            0.0,
            1.0,
        )?;
        c.int(
            "stimulus.plan_controls",
            self.stimulus.plan_controls,
            0,
            100,
        )?;
        c.float(
            "stimulus.control_fraction",
            self.stimulus.control_fraction,
            0.0,
            1.0,
        )?;
        match self.stimulus.order {
            TrialOrder::List if self.stimulus.clip_list.is_empty() => {
                return Err(c.bad(
                    "stimulus.clip_list",
                    &"[]",
                    "at least one clip id when stimulus.order = \"list\"",
                ))
            }
            _ => {}
        }
        if let Some(bad) = self.stimulus.clip_list.iter().find(|&&c| c < 0) {
            return Err(c.bad(
                "stimulus.clip_list",
                &bad.to_string(),
                "clip ids of the library (0 or more)",
            ));
        }
        c.int("sync.baud", self.sync.baud as usize, 9600, 12_000_000)?;
        c.float(
            "sync.encoder_cm_per_count",
            self.sync.encoder_cm_per_count,
            1e-6,
            100.0,
        )?;
        c.float(
            "twin.compare_window_s",
            self.twin.compare_window_s,
            1.0,
            3600.0,
        )?;
        c.float("twin.alarm_fraction", self.twin.alarm_fraction, 0.0, 1.0)?;
        c.float("twin.alarm_seconds", self.twin.alarm_seconds, 0.1, 3600.0)?;
        c.float("twin.step_delay_ms", self.twin.step_delay_ms, 0.0, 10_000.0)?;
        c.float(
            "storage.flush_interval_s",
            self.storage.flush_interval_s,
            0.05,
            60.0,
        )?;
        c.int(
            "storage.deflate_level",
            self.storage.deflate_level as usize,
            0,
            9,
        )?;
        c.int(
            "extract.reference_frames",
            self.extract.reference_frames,
            1,
            10_000,
        )?;
        c.float(
            "extract.max_shift_fraction",
            self.extract.max_shift_fraction,
            0.0,
            0.5,
        )?;
        c.float(
            "extract.neuropil_coefficient",
            self.extract.neuropil_coefficient,
            0.0,
            2.0,
        )?;
        // Neuropil annulus: the inner gap must leave a ring inside the outer radius.
        c.float(
            "extract.neuropil_inner_gap_px",
            self.extract.neuropil_inner_gap_px,
            0.0,
            50.0,
        )?;
        c.float(
            "extract.neuropil_outer_radius_px",
            self.extract.neuropil_outer_radius_px,
            1.0,
            256.0,
        )?;
        if self.extract.neuropil_outer_radius_px <= self.extract.neuropil_inner_gap_px {
            return Err(c.bad(
                "extract.neuropil_outer_radius_px",
                &self.extract.neuropil_outer_radius_px,
                &format!(
                    "more than extract.neuropil_inner_gap_px ({})",
                    self.extract.neuropil_inner_gap_px
                ),
            ));
        }
        c.float(
            "extract.baseline_window_s",
            self.extract.baseline_window_s,
            1.0,
            3600.0,
        )?;
        c.float(
            "extract.baseline_sigma_frames",
            self.extract.baseline_sigma_frames,
            0.0,
            1000.0,
        )?;
        c.float(
            "extract.indicator_tau_s",
            self.extract.indicator_tau_s,
            0.05,
            10.0,
        )?;
        c.float("extract.deconv_lag_s", self.extract.deconv_lag_s, 0.0, 60.0)?;
        c.float(
            "extract.deconv_lambda",
            self.extract.deconv_lambda,
            0.0,
            100.0,
        )?;
        c.int("sim.neurons", self.sim.neurons, 1, 10_000)?;
        c.int("sim.clips", self.sim.clips, 1, 10_000)?;
        c.float("sim.noise", self.sim.noise, 0.0, 10.0)?;
        c.float("sim.motion_px", self.sim.motion_px, 0.0, 20.0)?;
        // Resource limits (the budget itself is checked by `crate::budget` at load).
        if let Some(gb) = self.limits.max_memory_gb {
            c.float("limits.max_memory_gb", gb, 0.05, 65536.0)?;
        }
        c.float(
            "limits.max_disk_mb_per_s",
            self.limits.max_disk_mb_per_s,
            1.0,
            100_000.0,
        )?;
        Ok(())
    }
}

struct Checker<'a> {
    file: &'a str,
}

impl Checker<'_> {
    fn bad(&self, key: &'static str, value: &dyn fmt::Display, expected: &str) -> ConfigError {
        ConfigError::Range {
            file: self.file.to_string(),
            key,
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }

    fn int(&self, key: &'static str, v: usize, lo: usize, hi: usize) -> Result<(), ConfigError> {
        if v < lo || v > hi {
            return Err(self.bad(key, &v, &format!("{lo}..={hi}")));
        }
        Ok(())
    }

    fn float(&self, key: &'static str, v: f64, lo: f64, hi: f64) -> Result<(), ConfigError> {
        if !v.is_finite() || v < lo || v > hi {
            return Err(self.bad(key, &v, &format!("{lo}..={hi}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_config_parses_and_round_trips() {
        let cfg = RigConfig::embedded_sim();
        assert_eq!(cfg.imaging.source, FrameSource::Sim);
        let again = RigConfig::parse(&cfg.to_toml(), "roundtrip").unwrap();
        assert_eq!(cfg, again);
    }

    #[test]
    fn real_rig_example_parses() {
        let text = include_str!("../rig_configs/rig-2p-512.toml");
        let cfg = RigConfig::parse(text, "rig-2p-512.toml").unwrap();
        assert_eq!((cfg.imaging.width, cfg.imaging.height), (512, 512));
        assert_eq!(cfg.sync.port, "/dev/ttyACM0");
        assert!((cfg.display.distance_cm - 15.0).abs() < 1e-9);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = EMBEDDED_SIM_CONFIG.replace("[imaging]", "[imaging]\nwidht = 3");
        let err = RigConfig::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("x.toml") && err.contains("widht"), "{err}");
    }

    #[test]
    fn out_of_range_names_key_and_range() {
        let text = EMBEDDED_SIM_CONFIG.replace("refresh_hz = 60.0", "refresh_hz = 9000.0");
        let err = RigConfig::parse(&text, "y.toml").unwrap_err().to_string();
        assert!(
            err.contains("display.refresh_hz") && err.contains("1..=500"),
            "{err}"
        );
    }

    #[test]
    fn sync_board_and_register_overrides() {
        let cfg = RigConfig::embedded_sim();
        assert_eq!(cfg.sync.board, SyncBoard::Twinrig);
        assert_eq!(cfg.sync.registers, None);
        let text = EMBEDDED_SIM_CONFIG.replace(
            "encoder_cm_per_count = 0.0491",
            "encoder_cm_per_count = 0.0491\nboard = \"harp-behavior\"\n\n[sync.registers]\nencoder = 44",
        );
        let cfg = RigConfig::parse(&text, "b.toml").unwrap();
        assert_eq!(cfg.sync.board, SyncBoard::HarpBehavior);
        assert_eq!(
            cfg.sync.registers.as_ref().and_then(|r| r.encoder),
            Some(44)
        );
        assert_eq!(RigConfig::parse(&cfg.to_toml(), "rt").unwrap(), cfg);
        let typo = text.replace("encoder = 44", "encodr = 44");
        let err = RigConfig::parse(&typo, "t.toml").unwrap_err().to_string();
        assert!(err.contains("encodr"), "{err}");
        let bad = text.replace("harp-behavior", "arduino");
        assert!(RigConfig::parse(&bad, "a.toml").is_err());
    }

    #[test]
    fn presenter_is_none_by_default_and_checked() {
        assert_eq!(RigConfig::embedded_sim().display.presenter, "none");
        for ok in [
            "spawn",
            "spawn-headless",
            "127.0.0.1:7702",
            "unix:/tmp/p.sock",
        ] {
            let text =
                EMBEDDED_SIM_CONFIG.replace("presenter = \"none\"", &format!("presenter = {ok:?}"));
            assert_eq!(
                RigConfig::parse(&text, "p.toml").unwrap().display.presenter,
                ok
            );
        }
        let text = EMBEDDED_SIM_CONFIG.replace("presenter = \"none\"", "presenter = \"sapwn\"");
        let err = RigConfig::parse(&text, "p.toml").unwrap_err().to_string();
        assert!(
            err.contains("p.toml") && err.contains("display.presenter") && err.contains("spawn"),
            "{err}"
        );
    }

    #[test]
    fn network_timeouts_default_and_are_range_checked() {
        let cfg = RigConfig::embedded_sim();
        assert_eq!(cfg.imaging.stream_stall_timeout_s, 10.0);
        assert_eq!(cfg.imaging.stream_first_header_timeout_s, 30.0);
        assert_eq!(cfg.control.idle_timeout_s, 30.0);
        // Left out, they take the same defaults (older configs stay valid).
        let text = EMBEDDED_SIM_CONFIG
            .lines()
            .filter(|l| !l.contains("_timeout_s"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(RigConfig::parse(&text, "old.toml").unwrap(), cfg);
        let text = EMBEDDED_SIM_CONFIG.replace(
            "stream_stall_timeout_s = 10.0",
            "stream_stall_timeout_s = 0.0",
        );
        let err = RigConfig::parse(&text, "s.toml").unwrap_err().to_string();
        assert!(err.contains("imaging.stream_stall_timeout_s"), "{err}");
        let text = EMBEDDED_SIM_CONFIG.replace("idle_timeout_s = 30.0", "idle_timeout_s = -1.0");
        let err = RigConfig::parse(&text, "c.toml").unwrap_err().to_string();
        assert!(err.contains("control.idle_timeout_s"), "{err}");
    }

    #[test]
    fn nwb_metadata_keys_default_and_are_checked() {
        let cfg = RigConfig::embedded_sim();
        // Configs (and sessions) written before these keys existed take the same defaults.
        let keys = [
            "indicator =",
            "location =",
            "_wavelength_nm =",
            "mouse_sex =",
            "mouse_age =",
        ];
        let text = EMBEDDED_SIM_CONFIG
            .lines()
            .filter(|l| !keys.iter().any(|k| l.contains(k)))
            .collect::<Vec<_>>()
            .join("\n");
        let old = RigConfig::parse(&text, "old.toml").unwrap();
        assert_eq!(old, cfg);
        assert_eq!(old.imaging.indicator, "GCaMP6s");
        assert_eq!(old.imaging.location, "VISp");
        assert_eq!(old.imaging.excitation_wavelength_nm, 920.0);
        assert_eq!(old.rig.mouse_sex, "U");
        for (from, to, key) in [
            ("mouse_sex = \"U\"", "mouse_sex = \"male\"", "rig.mouse_sex"),
            (
                "mouse_age = \"P0D/\"",
                "mouse_age = \"90 days\"",
                "rig.mouse_age",
            ),
            (
                "excitation_wavelength_nm = 920.0",
                "excitation_wavelength_nm = 9200.0",
                "imaging.excitation_wavelength_nm",
            ),
            (
                "indicator = \"GCaMP6s\"",
                "indicator = \" \"",
                "imaging.indicator",
            ),
        ] {
            let text = EMBEDDED_SIM_CONFIG.replace(from, to);
            assert_ne!(text, EMBEDDED_SIM_CONFIG, "{from}");
            let err = RigConfig::parse(&text, "n.toml").unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn visual_angle_of_a_planar_monitor() {
        let cfg = RigConfig::embedded_sim();
        // 53 cm wide at 15 cm: 2*atan(26.5/15) = 121.0 degrees.
        assert!((cfg.display.width_deg() - 121.0).abs() < 0.2);
    }
}
