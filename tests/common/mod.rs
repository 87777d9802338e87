//! Helpers shared by the integration tests: run the real `rig` binary on small simulated sessions.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{RwLock, RwLockWriteGuard};

pub fn rig() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rig"));
    c.env_remove("RUST_LOG");
    // Not even a child spawned outside [`run`]'s guard keeps another thread's HDF5 lock.
    twinrig::child::no_inherited_fds(&mut c);
    c
}

/// HDF5 opens files without close-on-exec and locks them (flock): a child process forked while a
/// test thread has a file open for writing inherits the descriptor, and with it the lock, for as
/// long as it runs, so the next `rig` that opens the file is refused ("unable to lock file").
/// Tests hold [`edit_guard`] while they write an HDF5 file; [`run`] forks under the shared side.
static FORK_VS_EDIT: RwLock<()> = RwLock::new(());

/// Held while a test has an HDF5 file open for writing.
pub fn edit_guard() -> RwLockWriteGuard<'static, ()> {
    FORK_VS_EDIT.write().unwrap_or_else(|e| e.into_inner())
}

/// Runs `rig` with `args`; returns the output.
pub fn run(args: &[&str]) -> Output {
    let child = {
        let _no_edit = FORK_VS_EDIT.read().unwrap_or_else(|e| e.into_inner());
        rig()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rig")
    };
    child.wait_with_output().expect("wait for rig")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The embedded simulated rig, shrunk so a test session takes well under a second.
pub fn small_config_text() -> String {
    twinrig::config::EMBEDDED_SIM_CONFIG
        .replace("width = 256", "width = 96")
        .replace("height = 256", "height = 96")
        .replace("neurons = 200", "neurons = 24")
        .replace("clips = 24", "clips = 6")
        .replace("flush_interval_s = 1.0", "flush_interval_s = 0.2")
}

pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Simulates a small session and returns its path.
pub fn simulate(dir: &Path, name: &str, seconds: f64, seed: u64) -> PathBuf {
    let cfg = write_config(dir, "small.toml", &small_config_text());
    let out = dir.join(name);
    let minutes = format!("{}", seconds / 60.0);
    let seed = seed.to_string();
    let o = run(&[
        "simulate",
        "--config",
        cfg.to_str().unwrap(),
        "--minutes",
        &minutes,
        "--seed",
        &seed,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "simulate failed: {}", stderr(&o));
    out
}

/// Runs `rig` with `args`, which must succeed and print JSON; returns it.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    let o = run(args);
    assert!(o.status.success(), "rig failed: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).expect("json")
}

/// Waits for the first line of `child`'s stderr that contains `what` and returns it; the rest of
/// stderr is drained in the background so the child never blocks on a full pipe.
pub fn wait_for_line(child: &mut Child, what: &str) -> String {
    let mut err = BufReader::new(child.stderr.take().expect("stderr piped"));
    let mut line = String::new();
    while !line.contains(what) {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "exited before {what:?}"
        );
    }
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    line
}

/// The control endpoint's address in `rig run`'s start line ("... (control on ADDR)").
pub fn control_addr(start_line: &str) -> String {
    start_line
        .rsplit("control on ")
        .next()
        .unwrap()
        .trim_end_matches([')', '\n'])
        .to_string()
}

/// A free TCP port on loopback (for a config's `imaging.listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `base` (a rig config) turned into a live rig: frames over the stream on `listen_port`, the
/// sync board on `sync_port`, a short motion reference.
pub fn stream_config(base: &str, sync_port: &str, listen_port: u16) -> String {
    base.replace("source = \"sim\"", "source = \"stream\"")
        .replace("reference_frames = 200", "reference_frames = 30")
        .replace("port = \"sim\"", &format!("port = {sync_port:?}"))
        .replace(
            "listen = \"127.0.0.1:7700\"",
            &format!("listen = \"127.0.0.1:{listen_port}\""),
        )
}

/// Runs `rig run --config cfg --rois session --out out --json` on a live stream source listening
/// on `port`; once it records, waits `lead` and plays `session` to it with `rig stream` (plus
/// `stream_args`) in real time. Returns rig run's report.
pub fn run_live(
    cfg: &Path,
    session: &Path,
    out: &Path,
    port: u16,
    lead: std::time::Duration,
    stream_args: &[&str],
) -> serde_json::Value {
    let mut daemon = rig()
        .args(["run", "--config", cfg.to_str().unwrap()])
        .args(["--control", "127.0.0.1:0"])
        .args(["--rois", session.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut daemon, "recording");
    std::thread::sleep(lead);
    let to = format!("127.0.0.1:{port}");
    let mut args = vec!["stream", session.to_str().unwrap(), "--to", &to];
    args.extend_from_slice(stream_args);
    let sent = run(&args);
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert!(daemon.wait().unwrap().success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut daemon.stdout.take().unwrap(), &mut stdout).unwrap();
    serde_json::from_str(&stdout).unwrap()
}

/// Runs `rig twin predict` with the reference twin on `session` (a `rig run` recording with the
/// twin in the loop) and compares it with what the live twin predicted, row by row (`twin/frame_index`)
/// and neuron by neuron (`twin/roi_id`). Returns the largest difference and the shape of the
/// offline predictions.
pub fn live_vs_offline(session: &Path, scratch: &Path) -> (f32, Vec<usize>) {
    let (worst, shape, _) = live_vs_offline_upto(session, scratch, u64::MAX);
    (worst, shape)
}

/// [`live_vs_offline`] over the live twin's rows for frames before `upto`; also returns how many
/// rows it compared.
pub fn live_vs_offline_upto(session: &Path, scratch: &Path, upto: u64) -> (f32, Vec<usize>, usize) {
    let f = hdf5::File::open(session).unwrap();
    let live = f
        .dataset("twin/predicted")
        .unwrap()
        .read_2d::<f32>()
        .unwrap();
    let frame_index = f
        .dataset("twin/frame_index")
        .unwrap()
        .read_1d::<u64>()
        .unwrap();
    let live_ids = f.dataset("twin/roi_id").unwrap().read_1d::<u32>().unwrap();
    drop(f);
    let pred = scratch.join("pred.h5");
    let o = run(&[
        "twin",
        "predict",
        "onnx/reference_twin.onnx",
        "--session",
        session.to_str().unwrap(),
        "--out",
        pred.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pf = hdf5::File::open(&pred).unwrap();
    let offline = pf
        .dataset("predictions/response")
        .unwrap()
        .read_2d::<f32>()
        .unwrap();
    let offline_ids = pf
        .dataset("predictions/roi_id")
        .unwrap()
        .read_1d::<u32>()
        .unwrap();
    let cols: Vec<usize> = live_ids
        .iter()
        .map(|id| offline_ids.iter().position(|o| o == id).unwrap())
        .collect();
    let mut worst = 0f32;
    let mut compared = 0;
    for (i, &fi) in frame_index.iter().enumerate().filter(|(_, &fi)| fi < upto) {
        compared += 1;
        for (j, &c) in cols.iter().enumerate() {
            worst = worst.max((live[[i, j]] - offline[[fi as usize, c]]).abs());
        }
    }
    (worst, offline.shape().to_vec(), compared)
}

/// The venv Python `make test` provides (target/venv, or TWINRIG_PYTHON) if it imports
/// `modules` (comma separated). Without one the caller's test is skipped with a message, unless
/// the environment variable `require` is set (`make test` sets it), when that is a failure.
pub fn python_with(modules: &str, require: &str) -> Option<PathBuf> {
    let p = std::env::var_os("TWINRIG_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python"),
        PathBuf::from,
    );
    let works = p.exists()
        && Command::new(&p)
            .args(["-c", &format!("import {modules}")])
            .status()
            .is_ok_and(|s| s.success());
    if works {
        return Some(p);
    }
    assert!(
        std::env::var_os(require).is_none(),
        "{require} is set but {} cannot import {modules} (make venv)",
        p.display()
    );
    eprintln!(
        "SKIPPED: no Python with {modules} at {} (`make venv` makes one; `make test` runs it)",
        p.display()
    );
    None
}

/// Debian's headless Chromium (what `make deps` installs), or `None` with TWINRIG_NO_CHROMIUM=1.
/// Without it the calling test fails and says how to get it.
pub fn chromium(purpose: &str) -> Option<PathBuf> {
    if std::env::var("TWINRIG_NO_CHROMIUM").is_ok_and(|v| v == "1") {
        eprintln!("TWINRIG_NO_CHROMIUM=1: {purpose} is not checked in a browser");
        return None;
    }
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "headless Chromium checks {purpose}: `make deps` installs it (apt-get install -y \
         chromium), or set TWINRIG_NO_CHROMIUM=1 to skip"
    );
    Some(path)
}

/// Headless Chromium without the network chatter of a desktop browser.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// An in-silico plan (objective `neuron`) for `targets` (ROI ids, comma separated) on the
/// reference twin, 2-s clips, `budget` twin evaluations, written to `dir/plan.h5`.
pub fn reference_plan(dir: &Path, targets: &str, budget: u32) -> PathBuf {
    let plan = dir.join("plan.h5");
    let budget = budget.to_string();
    let o = run(&[
        "insilico",
        "--twin",
        "onnx/reference_twin.onnx",
        "--objective",
        "neuron",
        "--targets",
        targets,
        "--budget",
        &budget,
        "--clip-s",
        "2",
        "--out",
        plan.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "rig insilico: {}", stderr(&o));
    plan
}
