//! Subcommands of `rig`.

mod demo;
mod export;
mod import;
mod insilico;
mod inspect;
mod present;
mod replay;
mod report;
mod run;
mod simulate;
mod status;
mod stream;
mod twin;
mod validate;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use twinrig::config::RigConfig;

#[derive(Parser)]
#[command(
    name = "rig",
    version,
    about = "twinrig: closed loop between a mouse visual cortex and its digital twin"
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Simulate a session on the simulated rig and record it to HDF5.
    Simulate(simulate::Args),
    /// Show what a session file holds.
    Inspect(inspect::Args),
    /// Stream a recorded session through the ring and online extraction.
    Replay(replay::Args),
    /// Write one self-contained HTML report of a session (or an in-silico plan).
    Report(report::Args),
    /// Run a session: acquisition, recording, extraction, control endpoint.
    Run(run::Args),
    /// Ask a running `rig run` for its status, or pause/resume/stop it.
    Status(status::Args),
    /// Run the demo on the embedded simulated rig.
    Demo(demo::Args),
    /// Show stimuli: a fullscreen window on the stimulus monitor, driven over the display protocol.
    Present(present::Args),
    /// Send a recorded session's frames to a receiver in the frame protocol (docs/frame-protocol.md).
    Stream(stream::SendArgs),
    /// Receive frames in the frame protocol and record them (for testing senders).
    StreamRecv(stream::RecvArgs),
    /// Hardware-in-loop checks of a rig (sync board, clocks, disk, headroom).
    Validate(validate::Args),
    /// Digital twins: inspect, predict, benchmark, adapt to a mouse, build the reference core.
    Twin(twin::Args),
    /// In-silico experiments: search the twin for the most promising stimuli; merge; evaluate.
    Insilico(Box<insilico::Args>),
    /// Bring recordings made elsewhere in as sessions (ScanImage TIFF movies).
    Import(import::Args),
    /// Export a session to a standard format (NWB 2.x).
    Export(export::Args),
}

/// Commands that only read and print: piped into `head` or `less` and cut short, they end quietly
/// as a Unix tool does (the default SIGPIPE), instead of panicking on the closed pipe. Never for
/// commands that hold sessions or sockets: a closed client must not kill a recording.
fn end_quietly_on_closed_pipe() {
    // SAFETY: resets one signal's disposition before any thread is started; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Simulate(a) => simulate::run(a),
        Command::Inspect(a) => {
            end_quietly_on_closed_pipe();
            inspect::run(a)
        }
        Command::Replay(a) => replay::run(a),
        Command::Report(a) => {
            end_quietly_on_closed_pipe();
            report::run(a)
        }
        Command::Run(a) => run::run(a),
        Command::Status(a) => status::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Present(a) => present::run(a),
        Command::Stream(a) => stream::send(a),
        Command::StreamRecv(a) => stream::recv(a),
        Command::Validate(a) => validate::run(a),
        Command::Twin(a) => twin::run(a),
        Command::Insilico(a) => insilico::run(*a),
        Command::Import(a) => import::run(a),
        Command::Export(a) => export::run(a),
    }
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A log line that cannot be written is dropped: tracing-subscriber's fallback reports it
    // with eprintln!, which panics when stderr is a closed pipe (`rig run ... | head`), and that
    // killed whichever thread logged, e.g. the one that turns SIGTERM into the session's stop.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Loads `--config`, or the embedded simulated rig when none is given. A relative `twin.onnx`
/// is resolved (working directory, the config's folder, the binary's, the built-in reference
/// twin: `twin::locate`), so the defaults work from any folder.
pub fn load_config(path: Option<&Path>) -> Result<RigConfig> {
    let mut cfg = match path {
        Some(p) => RigConfig::load(p)?,
        None => RigConfig::embedded_sim(),
    };
    let dir = path.map(|p| p.parent().unwrap_or(Path::new("")));
    cfg.twin.onnx = twinrig::twin::locate::resolve(&cfg.twin.onnx, dir);
    Ok(cfg)
}

/// [`load_config`] for a command that allocates by the config: refused, before anything is
/// allocated, when its memory or disk-rate estimate exceeds the budget (`twinrig::budget`).
pub fn load_budgeted(path: Option<&Path>, work: twinrig::budget::Workload) -> Result<RigConfig> {
    let cfg = load_config(path)?;
    let name = path.map_or_else(
        || twinrig::config::EMBEDDED_SIM_NAME.to_string(),
        |p| p.display().to_string(),
    );
    let est = twinrig::budget::check(&cfg, &name, work, twinrig::budget::mem_available())?;
    tracing::debug!(
        memory_mb = est.memory_bytes / 1e6,
        disk_mb_per_s = est.disk_bytes_per_s / 1e6,
        "resource estimate"
    );
    Ok(cfg)
}

/// A progress bar on stderr (hidden when stderr is not a terminal, e.g. in tests and CI).
pub fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// A progress callback `(done, total)` that moves `pb`, for library calls that learn their total
/// as they go.
pub fn follow(pb: &ProgressBar) -> impl Fn(u64, u64) + Sync + '_ {
    move |done, total| {
        pb.set_length(total);
        pb.set_position(done);
    }
}

/// Creates the parent folder of an output file.
/// Claims an output file at the start of a command: an existing one is refused unless
/// `overwrite`, and the file appears (atomically) only when the command publishes it.
pub fn new_output(p: &Path, overwrite: bool) -> Result<twinrig::outfile::NewFile> {
    Ok(twinrig::outfile::NewFile::claim(p, overwrite)?)
}

/// Ends a command that a signal stopped: non-zero exit, one line saying what was kept.
pub fn bail_if_interrupted(kept: &str) -> Result<()> {
    if twinrig::interrupt::requested() {
        anyhow::bail!("interrupted: {kept}");
    }
    Ok(())
}

pub fn ensure_parent(p: &Path) -> Result<PathBuf> {
    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create folder {}: {e}", dir.display()))?;
    }
    Ok(p.to_path_buf())
}

#[cfg(test)]
mod help_tests {
    use clap::{CommandFactory, Parser};

    /// Every leaf subcommand, with its path (`rig twin adapt`).
    fn leaves(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        let subs: Vec<&clap::Command> = cmd
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
            .collect();
        if subs.is_empty() || cmd.get_arguments().any(|a| a.is_required_set()) {
            out.push((path.clone(), cmd.clone()));
        }
        for s in subs {
            leaves(s, format!("{path} {}", s.get_name()), out);
        }
    }

    #[test]
    fn every_command_has_an_example_and_every_option_says_what_it_does() {
        let mut cmds = Vec::new();
        leaves(&super::Cli::command(), "rig".into(), &mut cmds);
        let mut missing = Vec::new();
        for (path, c) in &cmds {
            let after = c
                .get_after_help()
                .map(|s| s.to_string())
                .unwrap_or_default();
            if !after.contains("Example") || !after.contains(path.as_str()) {
                missing.push(format!("{path}: no `Example` using `{path}` in after_help"));
            }
            // The examples parse: every option they use exists and takes what they give it.
            for example in after.replace("\\\n", " ").lines() {
                let words: Vec<&str> = example.split_whitespace().collect();
                if words.first() != Some(&"rig") {
                    continue;
                }
                if let Err(e) = super::Cli::try_parse_from(&words) {
                    missing.push(format!("{path}: example `{example}` does not parse: {e}"));
                }
            }
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path}: option {id} has no help text"));
                }
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
