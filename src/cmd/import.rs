//! `rig import ...`: recordings made elsewhere, as sessions `rig replay` and `rig run` read.

use std::path::PathBuf;

use anyhow::Result;
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
    }
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
