use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args as ClapArgs, Subcommand};
use twinrig::export::{export_nwb, ExportOptions, ExportSummary};

#[derive(ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Write a session as an NWB 2.x file (docs/nwb.md: what goes where).
    #[command(
        after_help = "Example:\n  rig export nwb session.h5 --out session.nwb\n  \
                            rig export nwb session.h5 --out small.nwb --no-frames --json"
    )]
    Nwb(NwbArgs),
}

#[derive(ClapArgs)]
struct NwbArgs {
    /// Session file (HDF5) to export.
    session: PathBuf,
    /// Output NWB file.
    #[arg(long)]
    out: PathBuf,
    /// Leave the raw movie (TwoPhotonSeries) out: ROIs, traces, behaviour, stimulus and twin only.
    #[arg(long)]
    no_frames: bool,
    /// gzip level (with byte shuffle) of the movie and the large traces; 0 stores them
    /// uncompressed. A session recorded with deflate keeps its own compressed frames.
    #[arg(long, default_value_t = 1)]
    gzip: u8,
    /// Replace an existing --out file (never one another process has open).
    #[arg(long)]
    overwrite: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    match a.what {
        What::Nwb(a) => nwb(a),
    }
}

fn nwb(a: NwbArgs) -> Result<()> {
    if a.gzip > 9 {
        bail!("--gzip must be 0..=9, got {}", a.gzip);
    }
    let opts = ExportOptions {
        no_frames: a.no_frames,
        overwrite: a.overwrite,
        gzip: a.gzip,
        ..ExportOptions::default()
    };
    let pb = super::progress_bar(0, "export");
    let s = export_nwb(&a.session, &a.out, &opts, super::follow(&pb));
    pb.finish_and_clear();
    let s = s?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_summary(&s);
    }
    Ok(())
}

fn print_summary(s: &ExportSummary) {
    println!(
        "exported {} -> {} (NWB {})",
        s.session, s.out, s.nwb_version
    );
    println!(
        "  {} frames of {}x{}{}, {} ROIs, {} trace rows, {} trials, {} clips, {} behaviour samples",
        s.frames,
        s.frame_height,
        s.frame_width,
        if s.frames_written {
            ""
        } else {
            " (movie left out)"
        },
        s.rois,
        s.trace_rows,
        s.trials,
        s.clips,
        s.behavior_samples
    );
    if s.twin_neurons > 0 {
        println!(
            "  twin: {} neurons, {} rows, {} trials",
            s.twin_neurons, s.twin_rows, s.twin_trials
        );
    }
    println!(
        "  {:.1} MB written in {:.1} s; movie {:.1} MB at {:.1} MB/s (gzip {}); peak RSS {:.0} MB",
        s.file_mb, s.wall_s, s.movie_mb, s.movie_mb_per_s, s.gzip, s.peak_rss_mb
    );
}
