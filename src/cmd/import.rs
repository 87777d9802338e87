//! `rig import ...`: recordings and segmentations made elsewhere, as the sessions and mask files
//! `rig replay` and `rig run` read.

use std::path::PathBuf;

use anyhow::Result;
use twinrig::import::rois::{import_rois_nwb, RoiOptions};
use twinrig::import::tiff::{import_tiff, TiffOptions, TiffReport};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// A ScanImage (or any 8/16-bit grayscale) multi-page TIFF movie, one or several files in
    /// order, as a session: frames, their ScanImage timestamps, the frame rate.
    Tiff(TiffArgs),
    /// ROI masks from an NWB file's PlaneSegmentation (suite2p, CaImAn, pynwb) as the mask file
    /// `rig run --rois` and `rig replay --rois` read. A suite2p plane folder: see
    /// tools/suite2p_rois.py.
    Rois(RoisArgs),
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  rig import rois suite2p_session.nwb --out masks.h5 --cells-only\n  rig import rois caiman.nwb --plane-segmentation PlaneSegmentation --out masks.h5 --json\nThen: rig replay session.h5 --rois masks.h5"
)]
struct RoisArgs {
    /// The NWB file.
    file: PathBuf,
    /// The mask file to write.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out file.
    #[arg(long)]
    overwrite: bool,
    /// Which PlaneSegmentation, when the file has several (its name or path).
    #[arg(long)]
    plane_segmentation: Option<String>,
    /// Frame size HxW, when the file has neither image masks nor a TwoPhotonSeries.
    #[arg(long, value_parser = parse_size)]
    size: Option<(usize, usize)>,
    /// Keep only the ROIs the segmentation classed as cells (its `iscell` column).
    #[arg(long)]
    cells_only: bool,
    /// Keep only ROIs whose cell probability (iscell's second column) is at least this.
    #[arg(long, default_value_t = 0.0)]
    min_probability: f64,
    /// The file's pixel masks give x as the column (NWB's x is the first image axis, the row,
    /// as pynwb and suite2p write it).
    #[arg(long)]
    swap_xy: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_size(s: &str) -> std::result::Result<(usize, usize), String> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?}: expected HxW, e.g. 512x512"))?;
    let n = |v: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=65_536).contains(&n))
            .ok_or_else(|| format!("{s:?}: expected HxW with sizes 1..=65536"))
    };
    Ok((n(h)?, n(w)?))
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  rig import tiff file_00001.tif file_00002.tif --out session.h5\n  rig import tiff stack.tif --frame-rate 30 --offset 100 --out s.h5 --json\nThen: rig replay session.h5 --rois masks.h5"
)]
struct TiffArgs {
    /// TIFF files of one movie, in acquisition order.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The session file to write.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out file (never one another process has open).
    #[arg(long)]
    overwrite: bool,
    /// Channel to import, as ScanImage numbers them (default: the first saved channel).
    #[arg(long)]
    channel: Option<u32>,
    /// Plane of a fast-z volume, 0-based.
    #[arg(long, default_value_t = 0)]
    plane: usize,
    /// Added to every pixel before it is stored as unsigned 16 bits; what stays below 0 is
    /// stored as 0 and counted (ScanImage's int16 pixels go negative after its offset).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    offset: i32,
    /// Frame rate, Hz: needed when the files are not ScanImage's; overrides ScanImage's.
    #[arg(long)]
    frame_rate: Option<f64>,
    /// Mouse id stored in the session (default: the embedded config's).
    #[arg(long)]
    mouse_id: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    match a.cmd {
        Sub::Tiff(t) => tiff(t),
        Sub::Rois(r) => rois(r),
    }
}

fn rois(a: RoisArgs) -> Result<()> {
    let o = RoiOptions {
        plane_segmentation: a.plane_segmentation,
        size: a.size,
        cells_only: a.cells_only,
        min_probability: a.min_probability,
        swap_xy: a.swap_xy,
        overwrite: a.overwrite,
    };
    let r = import_rois_nwb(&a.file, &a.out, &o)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{}: {} of {} ROIs ({} pixels) from {} ({}), frame {}x{} (from {})",
            r.out,
            r.rois,
            r.rois_in_file,
            r.pixels,
            r.plane_segmentation,
            r.mask_kind,
            r.height,
            r.width,
            r.size_from
        );
        if r.dropped_not_cell + r.dropped_empty > 0 {
            println!(
                "  left out: {} not cells or below --min-probability, {} with no pixel in the frame",
                r.dropped_not_cell, r.dropped_empty
            );
        }
    }
    Ok(())
}

fn tiff(a: TiffArgs) -> Result<()> {
    twinrig::interrupt::install();
    let opts = TiffOptions {
        channel: a.channel,
        plane: a.plane,
        offset: a.offset,
        frame_rate_hz: a.frame_rate,
        mouse_id: a.mouse_id,
        overwrite: a.overwrite,
    };
    let pb = super::progress_bar(0, "import");
    let r = import_tiff(&a.files, &a.out, &opts, &super::follow(&pb));
    pb.finish_and_clear();
    let r = r?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_report(&r);
    }
    Ok(())
}

fn print_report(r: &TiffReport) {
    println!(
        "{}: {} frames of {}x{} (channel {} of {:?}, plane {} of {}) from {} image(s) in {} file(s)",
        r.out,
        r.frames,
        r.width,
        r.height,
        r.channel,
        r.channels_saved,
        r.plane,
        r.planes,
        r.images,
        r.files.len()
    );
    println!(
        "  {}; {:.3} Hz ({}), timestamps from {}; start {}",
        r.scanimage
            .as_deref()
            .map_or("not ScanImage".to_string(), |v| format!("ScanImage {v}")),
        r.frame_rate_hz,
        r.frame_rate_source,
        r.timestamps,
        r.start_time
    );
    if r.clipped_pixels > 0 {
        println!(
            "  {} pixels ({:.3}%) were below 0 after the offset and are stored as 0 (--offset)",
            r.clipped_pixels,
            100.0 * r.clipped_fraction
        );
    }
    println!("  {:.1} s, {:.0} MB/s", r.seconds, r.mb_per_s);
}
