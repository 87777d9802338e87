//! Never lose a session (issue 13): output files are never clobbered, a failed start leaves
//! nothing behind, one signal stops a whole command and says what was kept, a full disk is one
//! clear line. Each case runs the real `rig` as an operator would meet it.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn spawn(args: &[&str]) -> Child {
    rig()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rig")
}

fn sigint(child: &Child) {
    // SAFETY: signalling our own child process by its id.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

/// One of the child's output streams, read line by line on a thread of its own.
struct Lines(std::sync::mpsc::Receiver<String>);

impl Lines {
    fn of(r: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Lines(rx)
    }

    /// Waits for a line containing `what`; returns the lines read up to it.
    fn wait_for(&self, what: &str) -> String {
        let mut seen = String::new();
        loop {
            let l = self
                .0
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("no line with {what:?}; got:\n{seen}"));
            seen.push_str(&l);
            seen.push('\n');
            if l.contains(what) {
                return seen;
            }
        }
    }

    /// Every line left, once the stream is closed.
    fn rest(&self) -> String {
        let mut s = String::new();
        for l in self.0.iter() {
            s.push_str(&l);
            s.push('\n');
        }
        s
    }
}

/// Spawns `rig` with both streams read line by line.
fn spawn_watched(args: &[&str]) -> (Child, Lines, Lines) {
    let mut c = spawn(args);
    let out = Lines::of(c.stdout.take().unwrap());
    let err = Lines::of(c.stderr.take().unwrap());
    (c, out, err)
}

/// Waits for the child; returns whether it succeeded and the rest of its stderr.
fn finish(mut child: Child, err: &Lines) -> (bool, String) {
    let status = child.wait().unwrap();
    (status.success(), err.rest())
}

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("rig: error:"))
        .collect()
}

/// Everything in `dir` (hidden partial files included).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn inspect(path: &Path) -> serde_json::Value {
    run_json(&["inspect", path.to_str().unwrap(), "--json"])
}

#[test]
fn a_second_run_on_a_live_file_is_refused_and_the_first_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "c.toml", &small_config_text());
    let out = dir.path().join("same.h5");
    let (c, o) = (cfg.to_str().unwrap(), out.to_str().unwrap());
    let mut first = spawn(&[
        "run",
        "--config",
        c,
        "--out",
        o,
        "--no-twin",
        "--control",
        "127.0.0.1:0",
        "--json",
    ]);
    let line = wait_for_line(&mut first, "recording");
    let addr = control_addr(&line);
    // While the first records: a second run on the same name, with and without --overwrite.
    for extra in [None, Some("--overwrite")] {
        let mut args = vec![
            "run",
            "--config",
            c,
            "--out",
            o,
            "--no-twin",
            "--minutes",
            "0.01",
            "--speed",
            "max",
            "--control",
            "127.0.0.1:0",
        ];
        args.extend(extra);
        let second = run(&args);
        assert!(!second.status.success(), "the second run was not refused");
        let err = stderr(&second);
        assert!(
            err.contains("open in another process"),
            "unexpected refusal: {err}"
        );
        assert_eq!(error_lines(&err).len(), 1, "{err}");
    }
    let stop = run(&["status", "--addr", &addr, "--stop"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    let report = first.wait_with_output().unwrap();
    assert!(report.status.success(), "{}", stderr(&report));
    let r: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let recorded = r["frames_recorded"].as_u64().unwrap();
    assert!(recorded > 0);
    // The first session is whole: complete, every frame it counted, nothing left beside it.
    let i = inspect(&out);
    assert_eq!(i["complete"], true, "{i}");
    assert_eq!(i["n_frames"].as_u64().unwrap(), recorded, "{i}");
    assert_eq!(names(dir.path()), ["c.toml", "same.h5"]);
}

#[test]
fn an_existing_output_is_refused_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let s = simulate(dir.path(), "s.h5", 2.0, 3);
    let cfg = dir.path().join("small.toml");
    let before = std::fs::read(&s).unwrap();
    let (c, o) = (cfg.to_str().unwrap(), s.to_str().unwrap());
    let core = dir.path().join("core.onnx");
    std::fs::write(&core, b"not a model, but somebody's file").unwrap();
    let refused: Vec<Vec<&str>> = vec![
        vec!["simulate", "--config", c, "--minutes", "0.01", "--out", o],
        vec![
            "run",
            "--config",
            c,
            "--no-twin",
            "--minutes",
            "0.01",
            "--speed",
            "max",
            "--control",
            "127.0.0.1:0",
            "--out",
            o,
        ],
        vec!["replay", o, "--out", o],
        vec!["twin", "build-core", "--out", core.to_str().unwrap()],
    ];
    for args in &refused {
        let r = run(args);
        assert!(!r.status.success(), "{args:?} was not refused");
        let err = stderr(&r);
        assert!(
            err.contains("already exists; pass --overwrite") || err.contains("being replayed"),
            "{args:?}: {err}"
        );
        assert_eq!(error_lines(&err).len(), 1, "{args:?}: {err}");
    }
    assert_eq!(
        std::fs::read(&s).unwrap(),
        before,
        "a refused command changed the file"
    );
    assert_eq!(
        std::fs::read(&core).unwrap(),
        b"not a model, but somebody's file"
    );
    // With --overwrite the operator gets a new file.
    let r = run(&[
        "simulate",
        "--config",
        c,
        "--minutes",
        "0.01",
        "--seed",
        "4",
        "--out",
        o,
        "--overwrite",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let i = inspect(&s);
    assert_eq!(i["complete"], true);
    assert_ne!(std::fs::read(&s).unwrap(), before);
    let r = run(&[
        "twin",
        "build-core",
        "--out",
        core.to_str().unwrap(),
        "--overwrite",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(names(dir.path()), ["core.onnx", "s.h5", "small.toml"]);
}

#[test]
fn a_failed_start_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "c.toml", &small_config_text());
    // The control port is taken by someone else.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().to_string();
    let out = dir.path().join("busy.h5");
    let r = run(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--no-twin",
        "--minutes",
        "0.01",
        "--speed",
        "max",
        "--control",
        &port,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    let err = stderr(&r);
    let lines = error_lines(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert_eq!(
        lines[0].matches("Address already in use").count(),
        1,
        "the cause is printed once: {err}"
    );
    // A live rig whose sync board is not there.
    let live = stream_config(
        &small_config_text(),
        "/dev/twinrig-no-such-board",
        free_port(),
    );
    let live_cfg = write_config(dir.path(), "live.toml", &live);
    let out2 = dir.path().join("noboard.h5");
    let r = run(&[
        "run",
        "--config",
        live_cfg.to_str().unwrap(),
        "--no-twin",
        "--control",
        "127.0.0.1:0",
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert_eq!(error_lines(&stderr(&r)).len(), 1, "{}", stderr(&r));
    // Neither left a session, a partial file or anything else behind.
    assert_eq!(names(dir.path()), ["c.toml", "live.toml"]);
}

#[test]
fn ctrl_c_stops_the_whole_demo_in_each_phase() {
    // (phase whose start is awaited, what must be said, files that must not exist)
    let cases: [(&str, &str, &[&str]); 3] = [
        (
            "rig run: recording",
            "the calibration block was cut short",
            &["twin_adapted.onnx", "plan.h5", "closed_loop.h5"],
        ),
        (
            "== 2.",
            "the twin's fit was stopped",
            &["twin_adapted.onnx", "plan.h5", "closed_loop.h5"],
        ),
        (
            "== 3.",
            "the search was stopped",
            &["plan.h5", "closed_loop.h5"],
        ),
    ];
    for (phase, said, absent) in cases {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("demo");
        let (child, out, err) = spawn_watched(&[
            "demo",
            "--out-dir",
            d.to_str().unwrap(),
            "--minutes",
            "2",
            "--budget",
            "1000000",
        ]);
        if phase.starts_with("rig run") {
            err.wait_for(phase);
        } else {
            out.wait_for(phase);
        }
        sigint(&child);
        let (ok, err) = finish(child, &err);
        assert!(!ok, "{phase}: an interrupted demo must exit non-zero");
        let lines = error_lines(&err);
        assert_eq!(lines.len(), 1, "{phase}: {err}");
        assert!(
            lines[0].contains("interrupted") && lines[0].contains(said),
            "{phase}: {err}"
        );
        for f in absent {
            assert!(!d.join(f).exists(), "{phase}: {f} was written");
        }
        // What was kept is whole.
        let calib = inspect(&d.join("calibration.h5"));
        assert_eq!(calib["complete"], true, "{phase}: {calib}");
        assert!(names(&d).iter().all(|n| !n.ends_with(".partial")));
    }
}

#[test]
fn ctrl_c_stops_replay_search_and_adapt_with_what_was_kept() {
    let dir = tempfile::tempdir().unwrap();
    let s = simulate(dir.path(), "s.h5", 40.0, 5);
    let cfg = dir.path().join("small.toml");

    // Replay in real time, cut after it started.
    let out = dir.path().join("replayed.h5");
    let (child, _out, err) = spawn_watched(&[
        "replay",
        s.to_str().unwrap(),
        "--realtime",
        "--out",
        out.to_str().unwrap(),
        "-v",
    ]);
    err.wait_for("session flushed");
    sigint(&child);
    let (ok, err) = finish(child, &err);
    assert!(!ok, "{err}");
    let lines = error_lines(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("interrupted after"), "{err}");
    assert!(lines[0].contains("marked incomplete"), "{err}");
    let i = inspect(&out);
    assert_eq!(i["complete"], false, "{i}");

    // A core and a twin to search.
    let core = dir.path().join("core.onnx");
    let r = run(&[
        "twin",
        "build-core",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        core.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let twin = dir.path().join("twin.onnx");
    let r = run(&[
        "twin",
        "adapt",
        "--core",
        core.to_str().unwrap(),
        "--session",
        s.to_str().unwrap(),
        "--out",
        twin.to_str().unwrap(),
        "--max-neurons",
        "4",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));

    // An in-silico search far longer than the test.
    let plan = dir.path().join("plan.h5");
    let (child, _out, err) = spawn_watched(&[
        "insilico",
        "--twin",
        twin.to_str().unwrap(),
        "--objective",
        "explore",
        "--budget",
        "100000000",
        "--out",
        plan.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    // Let it load the twin and start searching.
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    sigint(&child);
    let (ok, err) = finish(child, &err);
    assert!(!ok, "stopped after {:?}: {err}", t0.elapsed());
    let lines = error_lines(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("no plan written"), "{err}");
    assert!(!plan.exists());

    // A fit on a long session, cut during the core pass.
    let long = simulate(dir.path(), "long.h5", 240.0, 6);
    let adapted = dir.path().join("adapted.onnx");
    let (child, _out, err) = spawn_watched(&[
        "twin",
        "adapt",
        "--core",
        core.to_str().unwrap(),
        "--session",
        long.to_str().unwrap(),
        "--out",
        adapted.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    err.wait_for("adapt: fitting");
    sigint(&child);
    let (ok, err) = finish(child, &err);
    assert!(!ok);
    let lines = error_lines(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("no twin written"), "{err}");
    assert!(!adapted.exists());
    assert!(names(dir.path()).iter().all(|n| !n.ends_with(".partial")));
}

/// A tmpfs of `mb` MiB mounted on a temp folder, unmounted on drop; `None` where this machine
/// does not let the test mount one (not root, or no mount namespace rights).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mb: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_is_one_clear_line_and_the_file_stays_readable() {
    let Some(disk) = SmallDisk::mount(3) else {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "c.toml", &small_config_text());
    for cmd in ["simulate", "run"] {
        let out = disk.dir.path().join(format!("{cmd}.h5"));
        let mut args = vec![
            cmd,
            "--config",
            cfg.to_str().unwrap(),
            "--minutes",
            "10",
            "--out",
            out.to_str().unwrap(),
        ];
        if cmd == "run" {
            args.extend(["--speed", "max", "--no-twin", "--control", "127.0.0.1:0"]);
        }
        let r = run(&args);
        assert!(!r.status.success(), "{cmd} filled 3 MB without an error");
        let err = stderr(&r);
        let lines = error_lines(&err);
        assert_eq!(lines.len(), 1, "{cmd}: {err}");
        assert!(lines[0].contains("disk full"), "{cmd}: {err}");
        assert_eq!(err.matches("disk full").count(), 1, "{cmd}: {err}");
        assert!(!err.contains("bytes actually written"), "{cmd}: {err}");
        // What reached the disk before it filled opens.
        let i = inspect(&out);
        assert_eq!(i["complete"], false, "{cmd}: {i}");
        std::fs::remove_file(&out).unwrap();
    }
}
