//! Issue 13, as a user meets it, on the real `rig` binary: configs the machine cannot hold are
//! refused at load with one line (nothing allocated, no session file); a wrong sync board is
//! named without a byte written to it; one ROI without neuropil costs only its own neuropil
//! estimate; the defaults work from any folder.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use common::{edit_guard, rig, run, simulate, small_config_text, stderr, stdout, write_config};
use twinrig::config::RigConfig;
use twinrig::harp::sim::{SimBoard, SimBoardOptions};
use twinrig::session::{RoiTable, SessionInfo, SessionReader, SessionWriter};

/// Pty allocation is serialised; the validate runs also time things.
static PTY: Mutex<()> = Mutex::new(());

fn pty() -> MutexGuard<'static, ()> {
    PTY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `cmd` to the end; returns (success, stdout, stderr, peak RSS in MB) — the peak from the
/// kernel's accounting of that child (wait4), so it covers allocations of any lifetime.
// The child is reaped by wait4, not `Child::wait`, which cannot return its rusage.
#[allow(clippy::zombie_processes)]
fn run_measured(mut cmd: Command) -> (bool, String, String, f64) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rig");
    let (mut out, mut err) = (String::new(), String::new());
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let _ = se.read_to_string(&mut err);
    out.push_str(&t.join().unwrap());
    let mut status = 0;
    // SAFETY: rusage is plain data; the pid is our child, not yet waited for.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4");
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (ok, out, err, ru.ru_maxrss as f64 / 1024.0)
}

/// The embedded rig with `edits`, its sessions under `dir`, and a memory cap, so that what is
/// refused does not depend on the memory of the machine running the test.
fn capped_config(dir: &Path, name: &str, edits: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text = twinrig::config::EMBEDDED_SIM_CONFIG.replace(
        "out_dir = \"sessions\"",
        &format!("out_dir = \"{}\"", dir.join("sessions").display()),
    );
    text = text.replace(
        "max_disk_mb_per_s = 1000.0",
        "max_memory_gb = 1.5\nmax_disk_mb_per_s = 1000.0",
    );
    for (a, b) in edits {
        assert!(text.contains(a), "{a}");
        text = text.replace(a, b);
    }
    write_config(dir, name, &text)
}

fn one_line(err: &str) -> &str {
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    lines[0]
}

/// A config name, its edits of the embedded config, what the refusal must name.
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

#[test]
fn oversized_configs_are_refused_at_load_with_the_keys_that_drive_them() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [Case; 4] = [
        (
            "frame.toml",
            &[
                ("width = 256 ", "width = 4096 "),
                ("height = 256 ", "height = 4096 "),
            ],
            &[
                "imaging.width x imaging.height = 4096x4096",
                "extract.reference_frames = 200",
                "motion reference",
                "frame rings",
                "limits.max_memory_gb allows 1.5 GB",
            ],
        ),
        (
            "planes.toml",
            &[
                ("planes = 1 ", "planes = 64 "),
                ("width = 256 ", "width = 1024 "),
                ("height = 256 ", "height = 1024 "),
            ],
            &[
                "imaging.planes = 64",
                "MB/s",
                "limits.max_disk_mb_per_s is 1000",
            ],
        ),
        (
            "clips.toml",
            &[("clips = 24 ", "clips = 10000 ")],
            &[
                "sim.clips = 10000",
                "clip library 2.8 GB",
                "limits.max_memory_gb",
            ],
        ),
        (
            "long.toml",
            &[("clip_seconds = 2.0 ", "clip_seconds = 600.0 ")],
            &[
                "stimulus.clip_seconds = 600 s",
                "clip library",
                "limits.max_memory_gb",
            ],
        ),
    ];
    for (name, edits, needles) in cases {
        let cfg = capped_config(dir.path(), name, edits);
        let out = dir.path().join(format!("{name}.h5"));
        let mut commands = Vec::new();
        let mut run_cmd = rig();
        run_cmd.args(["run", "--config", cfg.to_str().unwrap(), "--minutes", "1"]);
        run_cmd.args(["--speed", "max", "--control", "127.0.0.1:0", "--no-twin"]);
        run_cmd.args(["--out", out.to_str().unwrap()]);
        commands.push(("run", run_cmd));
        let mut val_cmd = rig();
        val_cmd.args([
            "validate",
            "--config",
            cfg.to_str().unwrap(),
            "--disk-mb",
            "1",
        ]);
        commands.push(("validate", val_cmd));
        for (what, cmd) in commands {
            let (ok, _, err, rss_mb) = run_measured(cmd);
            assert!(!ok, "{what} {name} was not refused: {err}");
            let line = one_line(&err);
            assert!(line.starts_with("rig: error: "), "{line}");
            assert!(line.contains(cfg.to_str().unwrap()), "{line}");
            for n in needles {
                assert!(line.contains(n), "{what} {name}: {n:?} missing in {line}");
            }
            assert!(!line.contains("panicked"), "{line}");
            // Refused before allocating: the process stays at its start-up size.
            assert!(rss_mb < 150.0, "{what} {name}: peak RSS {rss_mb:.0} MB");
            assert!(!out.exists(), "{what} {name} left {}", out.display());
            let sessions = dir.path().join("sessions");
            let left = std::fs::read_dir(&sessions).map(|d| d.count()).unwrap_or(0);
            assert_eq!(left, 0, "{what} {name} wrote into {}", sessions.display());
        }
    }
}

/// `rig stream-recv` holds the stream's frame buffers before a sender connects: a frame size
/// they cannot fit in is refused before it listens.
#[test]
fn stream_recv_is_refused_before_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = capped_config(
        dir.path(),
        "frame.toml",
        &[
            ("width = 256 ", "width = 4096 "),
            ("height = 256 ", "height = 4096 "),
            ("max_memory_gb = 1.5", "max_memory_gb = 1"),
        ],
    );
    let out = dir.path().join("recv.h5");
    let mut cmd = rig();
    cmd.args(["stream-recv", "--config", cfg.to_str().unwrap()]);
    cmd.args(["--listen", "127.0.0.1:0", "--idle-timeout", "1"]);
    cmd.args(["--out", out.to_str().unwrap()]);
    let (ok, _, err, rss_mb) = run_measured(cmd);
    assert!(!ok);
    let line = one_line(&err);
    assert!(
        line.contains("imaging.width x imaging.height = 4096x4096")
            && line.contains("stream buffers 1.1 GB")
            && !line.contains("listening"),
        "{line}"
    );
    assert!(rss_mb < 150.0, "peak RSS {rss_mb:.0} MB");
    assert!(!out.exists());
}

/// `rig simulate` holds one copy of the library and no rings: its own estimate is checked.
#[test]
fn simulate_is_refused_by_its_own_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = capped_config(
        dir.path(),
        "clips.toml",
        &[
            ("clips = 24 ", "clips = 10000 "),
            ("max_memory_gb = 1.5", "max_memory_gb = 1"),
        ],
    );
    let out = dir.path().join("sim.h5");
    let mut cmd = rig();
    cmd.args([
        "simulate",
        "--config",
        cfg.to_str().unwrap(),
        "--minutes",
        "0.1",
    ]);
    cmd.args(["--out", out.to_str().unwrap()]);
    let (ok, _, err, rss_mb) = run_measured(cmd);
    assert!(!ok);
    let line = one_line(&err);
    assert!(
        line.contains("sim.clips = 10000") && line.contains("clip library 1.4 GB"),
        "{line}"
    );
    assert!(rss_mb < 150.0, "peak RSS {rss_mb:.0} MB");
    assert!(!out.exists());
}

#[test]
fn a_config_within_the_budget_runs_and_its_peak_is_near_the_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let text = small_config_text().replace(
        "out_dir = \"sessions\"",
        &format!("out_dir = \"{}\"", dir.path().join("sessions").display()),
    );
    let cfg_path = write_config(dir.path(), "ok.toml", &text);
    let out = dir.path().join("ok.h5");
    let mut cmd = rig();
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd.args([
        "run",
        "--config",
        cfg_path.to_str().unwrap(),
        "--minutes",
        "0.2",
    ]);
    cmd.args(["--speed", "max", "--control", "127.0.0.1:0", "--no-twin"]);
    cmd.args(["--out", out.to_str().unwrap()]);
    let (ok, _, err, rss_mb) = run_measured(cmd);
    assert!(ok, "{err}");
    let cfg = RigConfig::parse(&text, "ok.toml").unwrap();
    let est = twinrig::budget::estimate(&cfg, twinrig::budget::Workload::Run { twin: false });
    let est_mb = est.memory_bytes / 1e6;
    // The estimate is an upper bound that stays honest: not below what the run used, and not
    // so far above it that it refuses what a machine could hold.
    assert!(
        est_mb >= 0.8 * rss_mb && est_mb <= 3.0 * rss_mb.max(30.0),
        "estimate {est_mb:.0} MB vs peak RSS {rss_mb:.0} MB"
    );
}

/// A simulated sync board on a pty whose WHO_AM_I is `board`, and `rig validate` with a config
/// expecting the other board: the refusal names both, and the board saw no write.
fn wrong_board(board: Option<u16>, config_edit: &dyn Fn(String) -> String, expect: &str) {
    let _g = pty();
    let dir = tempfile::tempdir().unwrap();
    let opts = SimBoardOptions {
        who_am_i: board,
        ..Default::default()
    };
    let b = SimBoard::spawn(&RigConfig::embedded_sim(), opts).unwrap();
    let port = b.port();
    let text = config_edit(small_config_text())
        .replace("port = \"sim\"", &format!("port = {port:?}"))
        .replace(
            "out_dir = \"sessions\"",
            &format!("out_dir = \"{}\"", dir.path().join("sessions").display()),
        );
    let cfg = write_config(dir.path(), "rig.toml", &text);
    let o = run(&[
        "validate",
        "--config",
        cfg.to_str().unwrap(),
        "--disk-mb",
        "1",
    ]);
    assert!(!o.status.success());
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(out.contains("wrong device"), "{out}");
    // Logs aside (twin, ROI alignment), one error line.
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    let line = errors[0];
    assert!(
        line.contains(&format!("wrong device on {port}: {expect}")),
        "{line}"
    );
    assert!(
        !line.contains("setup write") && !line.contains("refused"),
        "{line}"
    );
    let st = b.status();
    assert!(st.requests >= 1, "the board was asked who it is: {st:?}");
    assert_eq!(
        st.writes, 0,
        "nothing may be written to a wrong board: {st:?}"
    );
}

#[test]
fn a_twinrig_board_where_a_harp_behavior_is_configured_is_named_untouched() {
    wrong_board(
        None,
        &|t| {
            t.replace("who_am_i = 2176 ", "who_am_i = 1216 ")
                .replace("\"DI0\"", "\"DIPort0\"")
                .replace("\"DI1\"", "\"DIPort1\"")
                .replace(
                    "encoder_cm_per_count = 0.0491",
                    "encoder_cm_per_count = 0.0491\nboard = \"harp-behavior\"",
                )
        },
        "WHO_AM_I 2176 (twinrig sync board), expected 1216 (Harp Behavior)",
    );
}

#[test]
fn a_harp_behavior_where_the_twinrig_board_is_configured_is_named_untouched() {
    wrong_board(
        Some(1216),
        &|t| t,
        "WHO_AM_I 1216 (Harp Behavior), expected 2176 (twinrig sync board)",
    );
}

/// The simulated session's ROIs, with the one nearest the centre walled in by four ROIs that
/// fill everything within 13 px of it (and its neighbours there removed): its neuropil annulus
/// (12 px) is empty. Returns the file and the walled-in ROI's id.
fn crowded_rois(session: &Path, out: &Path) -> (u32, usize) {
    let r = SessionReader::open(session).unwrap();
    let t = r.rois().unwrap().unwrap();
    let (h, w) = (t.height, t.width);
    let centroid = |i: usize| {
        let (a, b) = (t.offsets[i] as usize, t.offsets[i + 1] as usize);
        let s: f64 = t.weights[a..b].iter().map(|&v| v as f64).sum();
        let y: f64 = (a..b)
            .map(|k| t.weights[k] as f64 * (t.pixels[k] as usize / w) as f64)
            .sum();
        let x: f64 = (a..b)
            .map(|k| t.weights[k] as f64 * (t.pixels[k] as usize % w) as f64)
            .sum();
        (y / s, x / s)
    };
    let mid = ((h / 2) as f64, (w / 2) as f64);
    let dist = |a: (f64, f64), b: (f64, f64)| ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
    let inner = (0..t.len())
        .min_by(|&a, &b| dist(centroid(a), mid).total_cmp(&dist(centroid(b), mid)))
        .unwrap();
    let c = centroid(inner);
    let (a, b) = (t.offsets[inner] as usize, t.offsets[inner + 1] as usize);
    let own: std::collections::HashSet<u32> = t.pixels[a..b].iter().copied().collect();
    let mut table = RoiTable {
        height: h,
        width: w,
        offsets: vec![0],
        ..Default::default()
    };
    let mut push = |id: u32, px: Vec<u32>, wt: Vec<f32>| {
        table.ids.push(id);
        table.pixels.extend(px);
        table.weights.extend(wt);
        table.offsets.push(table.pixels.len() as u64);
    };
    for i in 0..t.len() {
        if i != inner && dist(centroid(i), c) < 30.0 {
            continue; // inside the wall
        }
        let (a, b) = (t.offsets[i] as usize, t.offsets[i + 1] as usize);
        push(t.ids[i], t.pixels[a..b].to_vec(), t.weights[a..b].to_vec());
    }
    // Four quadrants of the disk of 13 px around the walled-in ROI.
    let mut quadrants = vec![Vec::new(); 4];
    for y in 0..h {
        for x in 0..w {
            let (dy, dx) = (y as f64 - c.0, x as f64 - c.1);
            let p = (y * w + x) as u32;
            if (dy * dy + dx * dx).sqrt() <= 13.0 && !own.contains(&p) {
                quadrants[(dy >= 0.0) as usize * 2 + (dx >= 0.0) as usize].push(p);
            }
        }
    }
    for (k, q) in quadrants.into_iter().enumerate() {
        let n = q.len();
        push(9000 + k as u32, q, vec![0.05; n]);
    }
    let _g = edit_guard();
    let cfg = RigConfig::parse(&small_config_text(), "small.toml").unwrap();
    let info = SessionInfo {
        mouse_id: "m".into(),
        session_id: "rois".into(),
        start_time: "2024-01-01T00:00:00Z".into(),
    };
    let mut wr = SessionWriter::create(out, &cfg, &info, false).unwrap();
    wr.write_rois(&table).unwrap();
    wr.finish("2024-01-01T00:00:01Z").unwrap();
    let n = table.ids.len();
    (t.ids[inner], n)
}

/// Every ROI's traces; the walled-in one's corrected trace is its raw one (coefficient 0), the
/// others still have their neuropil subtracted.
fn check_traces(file: &Path, ids: &[u32], bare: u32, n: usize) {
    let r = SessionReader::open(file).unwrap();
    let t = r.traces().unwrap().expect("traces");
    assert_eq!(t.n_rois, n);
    assert!(!t.frame_index.is_empty());
    let k = ids.iter().position(|&i| i == bare).unwrap();
    let rows = t.frame_index.len();
    for row in 0..rows {
        let (raw, cor) = (t.raw[row * n + k], t.corrected[row * n + k]);
        assert_eq!(
            raw, cor,
            "row {row}: the ROI without neuropil has coefficient 0"
        );
    }
    let other = (k + 1) % n;
    assert!(
        (0..rows).any(|row| t.raw[row * n + other] != t.corrected[row * n + other]),
        "the other ROIs keep their neuropil subtraction"
    );
    assert!(t.dff.iter().all(|v| v.is_finite()));
}

fn no_neuropil_warnings(err: &str, bare: u32) {
    let warn: Vec<&str> = err.lines().filter(|l| l.contains("no neuropil")).collect();
    assert_eq!(warn.len(), 1, "one warning for all such ROIs: {err}");
    assert!(warn[0].contains(&format!("ROI {bare}")), "{}", warn[0]);
    assert!(
        warn[0].contains("extract.neuropil_outer_radius_px = 12"),
        "{}",
        warn[0]
    );
    assert!(!err.contains("analysis stopped"), "{err}");
}

#[test]
fn an_roi_without_neuropil_costs_only_its_own_subtraction() {
    let dir = tempfile::tempdir().unwrap();
    let session = simulate(dir.path(), "s.h5", 10.0, 1);
    let masks = dir.path().join("crowded.h5");
    let (bare, n) = crowded_rois(&session, &masks);
    let ids = {
        let _g = edit_guard();
        let t = twinrig::session::read_roi_file(&masks, 96, 96).unwrap();
        t.ids.clone()
    };

    // Offline: rig replay --rois.
    let out = dir.path().join("replayed.h5");
    let o = run(&[
        "replay",
        session.to_str().unwrap(),
        "--rois",
        masks.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    no_neuropil_warnings(&err, bare);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["rois"], n as u64);
    assert!(v["first_analysis_error"].is_null(), "{v}");
    check_traces(&out, &ids, bare, n);

    // Live on the simulated rig: rig run --rois.
    let cfg = write_config(
        dir.path(),
        "run.toml",
        &small_config_text().replace(
            "out_dir = \"sessions\"",
            &format!("out_dir = \"{}\"", dir.path().join("sessions").display()),
        ),
    );
    let live = dir.path().join("live.h5");
    let o = run(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--minutes",
        "0.15",
        "--speed",
        "max",
        "--control",
        "127.0.0.1:0",
        "--no-twin",
        "--rois",
        masks.to_str().unwrap(),
        "--out",
        live.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    no_neuropil_warnings(&err, bare);
    assert!(!stdout(&o).contains("analysis stopped"), "{}", stdout(&o));
    check_traces(&live, &ids, bare, n);
}

#[test]
fn an_analysis_that_stops_fails_the_run_and_says_so() {
    // A mask file that passes the file's checks (pixels inside the frame, weights >= 0) but
    // that the extractor refuses when analysis starts: an ROI whose weights are all zero.
    let dir = tempfile::tempdir().unwrap();
    let masks = dir.path().join("zero.h5");
    {
        let _g = edit_guard();
        let cfg = RigConfig::parse(&small_config_text(), "small.toml").unwrap();
        let info = SessionInfo {
            mouse_id: "m".into(),
            session_id: "rois".into(),
            start_time: "2024-01-01T00:00:00Z".into(),
        };
        let table = RoiTable {
            height: 96,
            width: 96,
            ids: vec![1],
            offsets: vec![0, 2],
            pixels: vec![4000, 4001],
            weights: vec![0.0, 0.0],
        };
        let mut wr = SessionWriter::create(&masks, &cfg, &info, false).unwrap();
        wr.write_rois(&table).unwrap();
        wr.finish("2024-01-01T00:00:01Z").unwrap();
    }
    let cfg = write_config(
        dir.path(),
        "run.toml",
        &small_config_text().replace(
            "out_dir = \"sessions\"",
            &format!("out_dir = \"{}\"", dir.path().join("sessions").display()),
        ),
    );
    let live = dir.path().join("live.h5");
    let o = run(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--minutes",
        "0.1",
        "--speed",
        "max",
        "--control",
        "127.0.0.1:0",
        "--no-twin",
        "--rois",
        masks.to_str().unwrap(),
        "--out",
        live.to_str().unwrap(),
    ]);
    let (out, err) = (stdout(&o), stderr(&o));
    if o.status.success() {
        panic!("a run whose analysis stopped exited 0: {out} {err}");
    }
    assert!(out.contains("analysis stopped"), "summary: {out}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("rig: error: analysis stopped") && last.contains("recording"),
        "{err}"
    );
    // The recording itself is complete.
    let r = SessionReader::open(&live).unwrap();
    assert_eq!(r.meta().n_frames, 180);
}

/// `rig run` and `rig validate` with the embedded config, started in an empty folder: the
/// reference twin is found (next to the binary, or built in) and the session lands there.
#[test]
fn defaults_work_from_any_folder() {
    let _g = pty();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = rig();
    cmd.current_dir(dir.path());
    cmd.args([
        "run",
        "--minutes",
        "0.05",
        "--speed",
        "max",
        "--control",
        "127.0.0.1:0",
    ]);
    cmd.args(["--json"]);
    let (ok, out, err, _) = run_measured(cmd);
    assert!(ok, "rig run from {}: {err}", dir.path().display());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["frames_lost"], 0);
    assert!(
        v["closed_loop"]["twin"]["frames_stepped"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "the twin ran: {v}"
    );
    let session = Path::new(v["session"].as_str().unwrap());
    let session = if session.is_absolute() {
        session.to_path_buf()
    } else {
        dir.path().join(session)
    };
    assert!(
        session.starts_with(dir.path()) && session.exists(),
        "{}",
        session.display()
    );

    let mut cmd = rig();
    cmd.current_dir(dir.path());
    cmd.args(["validate", "--disk-mb", "8", "--json"]);
    let (ok, out, err, _) = run_measured(cmd);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "rig validate from {}: {e}: {out} {err}",
            dir.path().display()
        )
    });
    let checks = v["checks"].as_array().unwrap();
    let status = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["status"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(
        status("twin load and step latency").as_deref(),
        Some("pass"),
        "{v}"
    );
    // The disk's speed is the machine's, not the folder's: a busy disk may fail that check alone.
    let failed: Vec<&serde_json::Value> = checks
        .iter()
        .filter(|c| c["status"] == "fail" && c["name"] != "disk throughput")
        .collect();
    assert!(
        failed.is_empty(),
        "rig validate from {}: {failed:?}",
        dir.path().display()
    );
    assert_eq!(ok, v["ok"] == true, "exit status and report agree: {err}");
}
