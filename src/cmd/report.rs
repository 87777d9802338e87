//! `rig report`: one self-contained HTML page about a session or a plan (twinrig::report).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  rig report out/demo/closed_loop.h5 --out out/demo/report.html
  rig report out/demo/plan.h5 --out out/demo/plan.html --json

The page needs no network: styles are inline, figures are SVG and images PNG data URIs.")]
pub struct Args {
    /// Session file (HDF5) from rig run, rig simulate or rig replay, or a plan from rig insilico.
    file: PathBuf,
    /// The HTML file to write.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out file.
    #[arg(long)]
    overwrite: bool,
    /// Print the sections present and the figures' headline numbers as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    // Claimed first, so an existing --out is refused before the file is read.
    let mut out = super::new_output(&a.out, a.overwrite)?;
    let t0 = Instant::now();
    let pb = super::progress_bar(0, "report");
    let rep = twinrig::report::build(&a.file, &super::follow(&pb))?;
    pb.finish_and_clear();
    let mut f = std::fs::File::create(out.tmp_path())
        .with_context(|| format!("cannot create {}", out.tmp_path().display()))?;
    f.write_all(rep.html.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", out.tmp_path().display()))?;
    drop(f);
    out.publish()?;
    let seconds = t0.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(&rep.summary)?;
        v["out"] = a.out.display().to_string().into();
        v["bytes"] = rep.html.len().into();
        v["seconds"] = seconds.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let s = &rep.summary;
        let absent: Vec<&str> = s
            .sections
            .iter()
            .filter(|x| !x.present)
            .map(|x| x.id)
            .collect();
        println!(
            "{} report of {}: {} ({:.1} MB, {} sections, {} figures) in {seconds:.1} s{}",
            s.kind,
            s.file,
            a.out.display(),
            rep.html.len() as f64 / 1e6,
            s.sections.len(),
            s.figures,
            if absent.is_empty() {
                String::new()
            } else {
                format!("; not in this file: {}", absent.join(", "))
            }
        );
    }
    Ok(())
}
