//! The v1 session layout: every dataset's path, element type, unit and clock in one table, so the
//! writer, the reader and docs/session-format.md cannot drift apart.

/// Value of the root attribute `format`.
pub const FORMAT_NAME: &str = "twinrig-session";
/// The layout version this build writes. Readers accept every version up to this one.
pub const FORMAT_VERSION: u32 = 1;

/// The clock every timestamp in a session is on: seconds since the session start, as counted by
/// the sync board (the simulated board for simulated sessions).
pub const RIG_CLOCK: &str = "rig";

/// Element type of a dataset, as the reader checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    U8,
    U16,
    U32,
    U64,
    I32,
    F32,
    F64,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::U8 => "u8",
            Dtype::U16 => "u16",
            Dtype::U32 => "u32",
            Dtype::U64 => "u64",
            Dtype::I32 => "i32",
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
        }
    }
}

/// One dataset of the layout.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub path: &'static str,
    pub dtype: Dtype,
    /// Rank of the dataset; the first axis is the one that grows while a session runs.
    pub rank: usize,
    pub unit: &'static str,
    /// `rig` for timestamps, `-` for datasets that are not times.
    pub clock: &'static str,
    pub description: &'static str,
    /// A valid v1 file must hold it.
    pub required: bool,
}

macro_rules! spec {
    ($name:ident, $path:expr, $dt:ident, $rank:expr, $unit:expr, $clock:expr, $req:expr, $desc:expr) => {
        pub const $name: Spec = Spec {
            path: $path,
            dtype: Dtype::$dt,
            rank: $rank,
            unit: $unit,
            clock: $clock,
            description: $desc,
            required: $req,
        };
    };
}

spec!(
    FRAMES,
    "imaging/frames",
    U16,
    3,
    "counts",
    "-",
    true,
    "raw imaging frames [T, H, W], one frame per chunk"
);
spec!(
    FRAME_TIMES,
    "imaging/timestamps",
    F64,
    1,
    "s",
    RIG_CLOCK,
    true,
    "time of each frame (frame clock edge), [T]"
);

spec!(
    BEHAVIOR_TIMES,
    "behavior/timestamps",
    F64,
    1,
    "s",
    RIG_CLOCK,
    true,
    "time of each behaviour sample, [B]"
);
spec!(
    RUNNING_SPEED,
    "behavior/running_speed",
    F32,
    1,
    "cm/s",
    "-",
    true,
    "treadmill running speed, [B]"
);
spec!(
    PUPIL_DIAMETER,
    "behavior/pupil_diameter",
    F32,
    1,
    "mm",
    "-",
    true,
    "pupil diameter, [B]"
);

spec!(
    CLIP_FRAMES,
    "stimulus/clips/frames",
    U8,
    4,
    "8-bit linear luminance, 0 = black, 255 = white",
    "-",
    true,
    "clip library [C, F, h, w] at the stimulus resolution and frame rate"
);
spec!(
    CLIP_KIND,
    "stimulus/clips/kind",
    U8,
    1,
    "0 = natural, 1 = grating, 2 = gabor, 3 = noise, 4 = free-form",
    "-",
    true,
    "family of each clip, [C]"
);
spec!(
    CLIP_ORIENTATION,
    "stimulus/clips/orientation",
    F32,
    1,
    "deg",
    "-",
    true,
    "grating orientation (NaN for non-parametric clips), [C]"
);
spec!(
    CLIP_SF,
    "stimulus/clips/spatial_frequency",
    F32,
    1,
    "cycles/deg",
    "-",
    true,
    "grating spatial frequency (NaN for non-parametric clips), [C]"
);
spec!(
    CLIP_TF,
    "stimulus/clips/temporal_frequency",
    F32,
    1,
    "Hz",
    "-",
    true,
    "grating drift rate (NaN for non-parametric clips), [C]"
);
spec!(
    CLIP_CONTRAST,
    "stimulus/clips/contrast",
    F32,
    1,
    "Michelson contrast (RMS contrast for natural clips)",
    "-",
    true,
    "contrast of each clip, [C]"
);
spec!(
    FLIP_TIMES,
    "stimulus/flips/time",
    F64,
    1,
    "s",
    RIG_CLOCK,
    true,
    "time of each display flip, [N]"
);
spec!(
    FLIP_CLIP,
    "stimulus/flips/clip",
    I32,
    1,
    "clip index, -1 = gray",
    "-",
    true,
    "clip shown from that flip on, [N]"
);
spec!(
    FLIP_FRAME,
    "stimulus/flips/frame",
    U32,
    1,
    "frame index within the clip",
    "-",
    true,
    "clip frame shown from that flip on, [N]"
);
spec!(
    TRIAL_START,
    "stimulus/trials/start",
    F64,
    1,
    "s",
    RIG_CLOCK,
    true,
    "first flip of each trial's clip, [K]"
);
spec!(
    TRIAL_END,
    "stimulus/trials/end",
    F64,
    1,
    "s",
    RIG_CLOCK,
    true,
    "end of each trial's gray interval, [K]"
);
spec!(
    TRIAL_CLIP,
    "stimulus/trials/clip",
    I32,
    1,
    "clip index",
    "-",
    true,
    "clip of each trial, [K]"
);

spec!(
    SYNC_FRAME_TIME,
    "sync/frame_clock/time",
    F64,
    1,
    "s",
    RIG_CLOCK,
    true,
    "microscope frame clock rising edges, [E]"
);
spec!(
    SYNC_FRAME_COUNT,
    "sync/frame_clock/count",
    U32,
    1,
    "frames",
    "-",
    true,
    "frame counter at each edge, [E]"
);
spec!(
    SYNC_PD_TIME,
    "sync/photodiode/time",
    F64,
    1,
    "s",
    RIG_CLOCK,
    true,
    "photodiode edges, [P]"
);
spec!(
    SYNC_PD_LEVEL,
    "sync/photodiode/level",
    U8,
    1,
    "0 = dark, 1 = bright",
    "-",
    true,
    "photodiode level after each edge, [P]"
);
spec!(
    SYNC_ENC_TIME,
    "sync/encoder/time",
    F64,
    1,
    "s",
    RIG_CLOCK,
    true,
    "treadmill encoder samples, [Q]"
);
spec!(
    SYNC_ENC_POS,
    "sync/encoder/position",
    I32,
    1,
    "counts",
    "-",
    true,
    "treadmill encoder position, [Q]"
);

spec!(ROI_IDS, "rois/ids", U32, 1, "-", "-", false, "ROI ids, [R]");
spec!(
    ROI_OFFSETS,
    "rois/offsets",
    U64,
    1,
    "index into rois/pixels",
    "-",
    false,
    "ROI r owns pixels[offsets[r]..offsets[r+1]], [R+1]"
);
spec!(
    ROI_PIXELS,
    "rois/pixels",
    U32,
    1,
    "flat pixel index y*W+x",
    "-",
    false,
    "pixels of all ROIs, concatenated, [nnz]"
);
spec!(
    ROI_WEIGHTS,
    "rois/weights",
    F32,
    1,
    "relative weight",
    "-",
    false,
    "weight of each ROI pixel, [nnz]"
);

/// The four datasets of an ROI table: the session's own under `rois/`, the simulator's true
/// footprints under `ground_truth/footprints/`.
#[derive(Debug, Clone, Copy)]
pub struct RoiSpecs {
    pub ids: Spec,
    pub offsets: Spec,
    pub pixels: Spec,
    pub weights: Spec,
}

pub const ROIS: RoiSpecs = RoiSpecs {
    ids: ROI_IDS,
    offsets: ROI_OFFSETS,
    pixels: ROI_PIXELS,
    weights: ROI_WEIGHTS,
};

spec!(
    GT_FOOTPRINT_IDS,
    "ground_truth/footprints/ids",
    U32,
    1,
    "-",
    "-",
    false,
    "neuron ids of the true soma footprints, [N] (simulated sessions; an ROI table like rois/)"
);
spec!(
    GT_FOOTPRINT_OFFSETS,
    "ground_truth/footprints/offsets",
    U64,
    1,
    "index into ground_truth/footprints/pixels",
    "-",
    false,
    "footprint n owns pixels[offsets[n]..offsets[n+1]], [N+1]"
);
spec!(
    GT_FOOTPRINT_PIXELS,
    "ground_truth/footprints/pixels",
    U32,
    1,
    "flat pixel index y*W+x",
    "-",
    false,
    "pixels of all true footprints at zero motion, concatenated, [nnz]"
);
spec!(
    GT_FOOTPRINT_WEIGHTS,
    "ground_truth/footprints/weights",
    F32,
    1,
    "relative weight",
    "-",
    false,
    "weight of each footprint pixel, [nnz]"
);

pub const GT_FOOTPRINTS: RoiSpecs = RoiSpecs {
    ids: GT_FOOTPRINT_IDS,
    offsets: GT_FOOTPRINT_OFFSETS,
    pixels: GT_FOOTPRINT_PIXELS,
    weights: GT_FOOTPRINT_WEIGHTS,
};

spec!(
    GT_SPIKES,
    "ground_truth/spikes",
    U8,
    2,
    "spikes per imaging frame",
    "-",
    false,
    "true spike counts [T, N] (simulated sessions only)"
);
spec!(
    GT_CALCIUM,
    "ground_truth/calcium",
    F32,
    2,
    "dF/F",
    "-",
    false,
    "true calcium signal of each neuron as dF/F of its soma [T, N]"
);
spec!(
    GT_MOTION,
    "ground_truth/motion",
    F32,
    2,
    "px",
    "-",
    false,
    "true rigid shift [T, 2] as (dy, dx): frame(y, x) = scene(y - dy, x - dx)"
);

spec!(
    TRACE_FRAME,
    "traces/frame_index",
    U64,
    1,
    "frame index",
    "-",
    false,
    "imaging frame each trace row was extracted from (analysis may skip frames), [A]"
);
spec!(
    TRACE_TIMES,
    "traces/timestamps",
    F64,
    1,
    "s",
    RIG_CLOCK,
    false,
    "time of the frame each trace row comes from, [A]"
);
spec!(
    TRACE_SHIFT,
    "traces/shift",
    F32,
    2,
    "px",
    "-",
    false,
    "estimated rigid shift [A, 2] as (dy, dx), same convention as ground_truth/motion"
);
spec!(
    TRACE_RAW,
    "traces/raw",
    F32,
    2,
    "counts",
    "-",
    false,
    "weighted mean fluorescence of each ROI [A, R], ROIs in rois/ids order"
);
spec!(
    TRACE_NEUROPIL,
    "traces/neuropil",
    F32,
    2,
    "counts",
    "-",
    false,
    "mean fluorescence of each ROI's neuropil annulus [A, R]; 0 for an ROI whose annulus is empty (its coefficient is 0)"
);
spec!(
    TRACE_CORRECTED,
    "traces/corrected",
    F32,
    2,
    "counts",
    "-",
    false,
    "raw - coefficient * neuropil [A, R]"
);
spec!(
    TRACE_F0,
    "traces/f0",
    F32,
    2,
    "counts",
    "-",
    false,
    "running baseline of the corrected trace [A, R]"
);
spec!(
    TRACE_DFF,
    "traces/dff",
    F32,
    2,
    "dF/F",
    "-",
    false,
    "(corrected - f0) / f0 [A, R]"
);
spec!(
    SPIKE_FRAME,
    "traces/spikes_frame",
    U64,
    1,
    "frame index",
    "-",
    false,
    "frame each deconvolved row belongs to (rows arrive with the deconvolution lag), [S]"
);
spec!(
    SPIKES,
    "traces/spikes",
    F32,
    2,
    "a.u. (dF/F per event)",
    "-",
    false,
    "online OASIS event estimates [S, R]"
);
spec!(
    SYNC_GAP_START,
    "sync/gaps/start",
    F64,
    1,
    "s",
    RIG_CLOCK,
    false,
    "time the sync board's link was lost, one row per gap (written at the end of a run), [G]"
);
spec!(
    SYNC_GAP_END,
    "sync/gaps/end",
    F64,
    1,
    "s",
    RIG_CLOCK,
    false,
    "time the board was back and active again, [G]"
);
spec!(
    PRESENTER_TIME,
    "presenter/flips/time",
    F64,
    1,
    "s",
    RIG_CLOCK,
    false,
    "time of each flip the stimulus presenter reported (its clock mapped onto the rig clock), [V]"
);
spec!(
    PRESENTER_SEQ,
    "presenter/flips/seq",
    U64,
    1,
    "flip counter",
    "-",
    false,
    "the presenter's flip counter; a jump is a flip report lost on the way, [V]"
);
spec!(
    PRESENTER_CLIP,
    "presenter/flips/clip",
    I32,
    1,
    "clip index, -1 = gray",
    "-",
    false,
    "clip the presenter showed from that flip on, [V]"
);
spec!(
    PRESENTER_FRAME,
    "presenter/flips/frame",
    U32,
    1,
    "frame index within the clip",
    "-",
    false,
    "clip frame the presenter showed from that flip on, [V]"
);
spec!(
    PRESENTER_PHOTODIODE,
    "presenter/flips/photodiode",
    U8,
    1,
    "0 = black, 1 = white",
    "-",
    false,
    "photodiode patch drawn on that flip, [V]"
);
spec!(
    PRESENTER_MISSED,
    "presenter/flips/missed",
    U32,
    1,
    "refresh periods",
    "-",
    false,
    "refresh periods missed just before that flip (interval over 1.5 periods), [V]"
);

spec!(
    TWIN_FRAME,
    "twin/frame_index",
    U64,
    1,
    "frame index",
    "-",
    false,
    "imaging frame each twin row belongs to (the twin may skip frames), [P]"
);
spec!(
    TWIN_TIMES,
    "twin/timestamps",
    F64,
    1,
    "s",
    RIG_CLOCK,
    false,
    "time of the frame each twin row belongs to, [P]"
);
spec!(
    TWIN_PREDICTED,
    "twin/predicted",
    F32,
    2,
    "dF/F",
    "-",
    false,
    "the twin's predicted response of each compared neuron [P, M], neurons in twin/roi_id order"
);
spec!(
    TWIN_FIDELITY,
    "twin/population_fidelity",
    F64,
    1,
    "Pearson r",
    "-",
    false,
    "median over neurons of the sliding-window correlation of predicted and measured dF/F (NaN until the window fills), [P]"
);
spec!(
    TWIN_ALARM,
    "twin/alarm",
    U8,
    1,
    "0 = ok, 1 = alarm",
    "-",
    false,
    "fidelity alarm: population fidelity below twin.alarm_fraction of its reference for twin.alarm_seconds, [P]"
);
spec!(
    TWIN_ROI_ID,
    "twin/roi_id",
    U32,
    1,
    "-",
    "-",
    false,
    "ROI id (rois/ids) of each compared twin neuron, [M]"
);
spec!(
    TWIN_TRIAL_CLIP,
    "twin/trials/clip",
    I32,
    1,
    "clip index",
    "-",
    false,
    "clip of each compared trial (clip onset to the next onset), [K]"
);
spec!(
    TWIN_TRIAL_START,
    "twin/trials/start_frame",
    U64,
    1,
    "frame index",
    "-",
    false,
    "first imaging frame of each compared trial, [K]"
);
spec!(
    TWIN_TRIAL_PREDICTED,
    "twin/trials/predicted",
    F32,
    2,
    "dF/F",
    "-",
    false,
    "mean predicted response of each neuron over each trial [K, M]"
);
spec!(
    TWIN_TRIAL_MEASURED,
    "twin/trials/measured",
    F32,
    2,
    "dF/F",
    "-",
    false,
    "mean measured dF/F of each neuron's ROI over each trial [K, M]"
);
spec!(
    TWIN_SESSION_CORR,
    "twin/session_corr",
    F32,
    1,
    "Pearson r",
    "-",
    false,
    "whole-session correlation of predicted and measured dF/F per neuron (NaN if undefined), [M]; written when the session ends"
);

/// Per-neuron ground-truth parameters, each a 1-D dataset of length N under `ground_truth/neurons/`.
/// (name, dtype, unit, description)
pub const GT_NEURON_FIELDS: &[(&str, Dtype, &str, &str)] = &[
    (
        "roi_id",
        Dtype::U32,
        "-",
        "id of the neuron's ROI in rois/ids",
    ),
    (
        "soma_y",
        Dtype::F32,
        "px",
        "soma centre row in the field of view",
    ),
    ("soma_x", Dtype::F32, "px", "soma centre column"),
    ("radius", Dtype::F32, "px", "soma radius"),
    (
        "brightness",
        Dtype::F32,
        "counts",
        "resting fluorescence at the soma centre",
    ),
    (
        "rf_x",
        Dtype::F32,
        "stimulus px",
        "receptive field centre, column",
    ),
    (
        "rf_y",
        Dtype::F32,
        "stimulus px",
        "receptive field centre, row",
    ),
    (
        "rf_sigma",
        Dtype::F32,
        "stimulus px",
        "Gaussian envelope width",
    ),
    ("orientation", Dtype::F32, "deg", "preferred orientation"),
    (
        "spatial_frequency",
        Dtype::F32,
        "cycles/stimulus px",
        "preferred spatial frequency",
    ),
    ("phase", Dtype::F32, "rad", "Gabor phase (simple cells)"),
    ("complex", Dtype::U8, "0 = simple, 1 = complex", "cell type"),
    (
        "baseline_rate",
        Dtype::F32,
        "Hz",
        "firing rate on a gray screen",
    ),
    (
        "max_rate",
        Dtype::F32,
        "Hz",
        "rate scale of the static nonlinearity",
    ),
    (
        "running_gain",
        Dtype::F32,
        "-",
        "gain added at full running",
    ),
    ("tau", Dtype::F32, "s", "calcium decay time constant"),
    (
        "dff_per_spike",
        Dtype::F32,
        "dF/F",
        "calcium transient amplitude per spike",
    ),
];

/// Every dataset of the v1 layout, in documentation order.
pub const ALL: &[Spec] = &[
    FRAMES,
    FRAME_TIMES,
    BEHAVIOR_TIMES,
    RUNNING_SPEED,
    PUPIL_DIAMETER,
    CLIP_FRAMES,
    CLIP_KIND,
    CLIP_ORIENTATION,
    CLIP_SF,
    CLIP_TF,
    CLIP_CONTRAST,
    FLIP_TIMES,
    FLIP_CLIP,
    FLIP_FRAME,
    TRIAL_START,
    TRIAL_END,
    TRIAL_CLIP,
    SYNC_FRAME_TIME,
    SYNC_FRAME_COUNT,
    SYNC_PD_TIME,
    SYNC_PD_LEVEL,
    SYNC_ENC_TIME,
    SYNC_ENC_POS,
    ROI_IDS,
    ROI_OFFSETS,
    ROI_PIXELS,
    ROI_WEIGHTS,
    GT_SPIKES,
    GT_CALCIUM,
    GT_MOTION,
    GT_FOOTPRINT_IDS,
    GT_FOOTPRINT_OFFSETS,
    GT_FOOTPRINT_PIXELS,
    GT_FOOTPRINT_WEIGHTS,
    TRACE_FRAME,
    TRACE_TIMES,
    TRACE_SHIFT,
    TRACE_RAW,
    TRACE_NEUROPIL,
    TRACE_CORRECTED,
    TRACE_F0,
    TRACE_DFF,
    SPIKE_FRAME,
    SPIKES,
    TWIN_FRAME,
    TWIN_TIMES,
    TWIN_PREDICTED,
    TWIN_FIDELITY,
    TWIN_ALARM,
    TWIN_ROI_ID,
    TWIN_TRIAL_CLIP,
    TWIN_TRIAL_START,
    TWIN_TRIAL_PREDICTED,
    TWIN_TRIAL_MEASURED,
    TWIN_SESSION_CORR,
    SYNC_GAP_START,
    SYNC_GAP_END,
    PRESENTER_TIME,
    PRESENTER_SEQ,
    PRESENTER_CLIP,
    PRESENTER_FRAME,
    PRESENTER_PHOTODIODE,
    PRESENTER_MISSED,
];

/// Root attributes.
pub mod attr {
    pub const FORMAT: &str = "format";
    pub const FORMAT_VERSION: &str = "format_version";
    pub const SOFTWARE_VERSION: &str = "software_version";
    pub const START_TIME: &str = "start_time";
    pub const END_TIME: &str = "end_time";
    pub const MOUSE_ID: &str = "mouse_id";
    pub const SESSION_ID: &str = "session_id";
    pub const RIG_CONFIG: &str = "rig_config";
    pub const CLOCK: &str = "clock";
    pub const COMPLETE: &str = "complete";
    pub const HEIGHT: &str = "frame_height";
    pub const WIDTH: &str = "frame_width";
    pub const FRAME_RATE: &str = "frame_rate_hz";
    pub const STIM_RATE: &str = "stimulus_frame_rate_hz";
    pub const REFRESH: &str = "display_refresh_hz";
    /// On a replay's output: the session it was replayed from.
    pub const SOURCE_SESSION: &str = "source_session";
    /// `rig run --plan`: the plan and each of its stimuli's clip id (JSON).
    pub const PLAN: &str = "plan";
    /// `rig run --insilico`: the background searches (JSON).
    pub const INSILICO_REFRESHES: &str = "insilico_refreshes";
    /// Sync board link (written at the end of `rig run` with a board): port, counters.
    pub const SYNC_PORT: &str = "sync_port";
    pub const SYNC_BAD_CHECKSUMS: &str = "sync_bad_checksums";
    pub const SYNC_DISCARDED_BYTES: &str = "sync_discarded_bytes";
    pub const SYNC_EVENTS_DROPPED: &str = "sync_events_dropped";
    pub const SYNC_RECONNECTS: &str = "sync_reconnects";
    pub const SYNC_FRAME_CLOCK_MISSING: &str = "sync_frame_clock_missing";
    /// Stimulus presenter (written at the end of `rig run` with a presenter).
    pub const PRESENTER_ADDR: &str = "presenter_addr";
    pub const PRESENTER_FLIPS: &str = "presenter_flips";
    pub const PRESENTER_MISSED_FRAMES: &str = "presenter_missed_frames";
    pub const PRESENTER_DISCONNECTS: &str = "presenter_disconnects";
}
