//! `rig run` on the simulated rig: a recorded run replays to the same traces, SIGTERM leaves a
//! complete file, slow analysis never costs a recorded frame, and the control endpoint answers.

mod common;

use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};
use twinrig::session::SessionReader;

#[test]
fn a_simulated_minute_replays_to_the_same_traces() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "c.toml", &small_config_text());
    let out = dir.path().join("run.h5");
    let v = run_json(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--minutes",
        "1",
        "--speed",
        "max",
        "--out",
        out.to_str().unwrap(),
        "--control",
        "127.0.0.1:0",
        "--json",
    ]);
    assert_eq!(v["frames_in"], 1800);
    assert_eq!(v["frames_recorded"], 1800);
    assert_eq!(v["frames_lost"], 0);
    assert_eq!(v["frames_analysed"], 1800);
    assert_eq!(v["stopped_by"], "duration");
    // With the simulator's own footprints as ROI masks: an upper bound, labelled as such.
    assert_eq!(
        v["accuracy"]["masks"], "simulator_footprints",
        "{}",
        v["accuracy"]
    );
    assert!(
        v["accuracy"]["median_dff_calcium_corr"].as_f64().unwrap() > 0.8,
        "{}",
        v["accuracy"]
    );

    let r = SessionReader::open(&out).unwrap();
    assert!(r.meta().complete);
    assert_eq!(r.meta().n_frames, 1800);
    assert_eq!(r.flips().unwrap().time.len(), 3600 - 1);
    assert_eq!(r.ground_truth().unwrap().unwrap().n_frames(), 1800);
    let live = r.traces().unwrap().unwrap();

    let rep = dir.path().join("replayed.h5");
    let o = run(&[
        "replay",
        out.to_str().unwrap(),
        "--out",
        rep.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let replayed = SessionReader::open(&rep)
        .unwrap()
        .traces()
        .unwrap()
        .unwrap();
    assert_eq!(live.frame_index, replayed.frame_index);
    assert_eq!(
        live.dff, replayed.dff,
        "replay reproduces the live traces exactly"
    );
    assert_eq!(live.spikes, replayed.spikes);
}

/// A `rig run` whose stderr reader went away (`rig run ... 2>&1 | head`) still stops on SIGTERM:
/// its log lines fail to write, and that must not cost the thread that acts on the signal.
#[test]
fn sigterm_stops_a_run_whose_stderr_is_closed() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "c.toml", &small_config_text());
    let out = dir.path().join("run.h5");
    let mut child = rig()
        .args(["run", "--config", cfg.to_str().unwrap(), "--speed", "1"])
        .args(["--control", "127.0.0.1:0", "--no-twin"])
        .args(["--out", out.to_str().unwrap(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("control on ") {
            line.clear();
            assert!(
                err.read_line(&mut line).unwrap() > 0,
                "exited before starting"
            );
        }
    } // the reader is dropped: every later write to stderr fails with EPIPE
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rig run ignored SIGTERM with its stderr closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let r = SessionReader::open(&out).unwrap();
    assert!(r.meta().complete, "closed with its summary");
}

#[test]
fn sigterm_mid_run_leaves_a_complete_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "c.toml", &small_config_text());
    let out = dir.path().join("run.h5");
    let mut child = rig()
        .args([
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--speed",
            "1",
            "--control",
            "127.0.0.1:0",
        ])
        .args(["--out", out.to_str().unwrap(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the start line, then let it record for a while.
    let line = wait_for_line(&mut child, "control on ");
    assert!(line.contains("recording"), "{line}");
    let addr = control_addr(&line);
    let start = Instant::now();
    loop {
        let s = twinrig::control::request(&addr, &serde_json::json!({"cmd": "status"})).unwrap();
        if s["frames_recorded"].as_u64().unwrap() >= 45 || start.elapsed() > Duration::from_secs(30)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "exit 0 after SIGTERM");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["stopped_by"], "signal");
    assert_eq!(v["frames_lost"], 0);
    let r = SessionReader::open(&out).unwrap();
    assert!(r.meta().complete, "closed with its summary");
    assert!(r.meta().n_frames >= 45);
    assert_eq!(
        r.meta().n_frames as u64,
        v["frames_recorded"].as_u64().unwrap()
    );
}

#[test]
fn slow_analysis_skips_frames_and_records_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let text = small_config_text()
        .replace("analysis_delay_ms = 0.0", "analysis_delay_ms = 40.0")
        .replace("reference_frames = 200", "reference_frames = 20");
    let cfg = write_config(dir.path(), "slow.toml", &text);
    let out = dir.path().join("run.h5");
    let v = run_json(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--minutes",
        "0.1",
        "--speed",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--control",
        "127.0.0.1:0",
        "--json",
    ]);
    assert_eq!(v["frames_in"], 180);
    assert_eq!(v["frames_recorded"], 180, "the recorder writes every frame");
    assert_eq!(v["frames_lost"], 0);
    let analysed = v["frames_analysed"].as_u64().unwrap();
    let skipped = v["frames_skipped"].as_u64().unwrap();
    assert!(skipped > 0, "analysis fell behind and skipped");
    assert_eq!(
        analysed + skipped,
        180,
        "every frame is analysed or counted as skipped"
    );
    assert_eq!(SessionReader::open(&out).unwrap().meta().n_frames, 180);
}

#[test]
fn control_endpoint_pauses_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let text = small_config_text().replace("reference_frames = 200", "reference_frames = 20");
    let cfg = write_config(dir.path(), "c.toml", &text);
    let out = dir.path().join("run.h5");
    let mut child = rig()
        .args([
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--speed",
            "1",
            "--control",
            "127.0.0.1:0",
        ])
        .args(["--out", out.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = control_addr(&wait_for_line(&mut child, "control on "));

    let o = run(&["status", "--addr", &addr, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(s["state"], "running");
    let o = run(&["status", "--addr", &addr, "--pause"]);
    assert!(o.status.success());
    // Every action is answered in words, not a JSON dump.
    assert!(stdout(&o).contains("closed loop paused"), "{}", stdout(&o));
    let s = twinrig::control::request(&addr, &serde_json::json!({"cmd": "status"})).unwrap();
    assert_eq!(s["paused"], true);
    let o = run(&["status", "--addr", &addr, "--resume"]);
    assert!(stdout(&o).contains("closed loop resumed"), "{}", stdout(&o));
    let o = run(&["status", "--addr", &addr, "--pause", "--json"]);
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(s["paused"], true);
    let o = run(&[
        "status",
        "--addr",
        &addr,
        "--objective",
        "single",
        "--targets",
        "3,5",
        "--json",
    ]);
    assert!(o.status.success());
    let s = twinrig::control::request(&addr, &serde_json::json!({"cmd": "status"})).unwrap();
    assert_eq!(s["objective"]["targets"], serde_json::json!([3, 5]));
    // The twin's progress shows in the status once extraction runs (no timing asserted: it
    // waits as long as a loaded machine needs).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = twinrig::control::request(&addr, &serde_json::json!({"cmd": "status"})).unwrap();
        if s["twin_frames"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the twin never stepped: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = run(&["status", "--addr", &addr]);
    assert!(stdout(&o).contains("twin:"), "{}", stdout(&o));
    // Garbage is answered with an error; the daemon keeps running.
    let bad = twinrig::control::request(&addr, &serde_json::json!({"cmd": "explode"})).unwrap();
    assert_eq!(bad["ok"], false);
    let o = run(&["status", "--addr", &addr, "--stop"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("stopping"), "{}", stdout(&o));
    assert!(child.wait().unwrap().success());
    assert!(SessionReader::open(&out).unwrap().meta().complete);
    // Nobody listening: a clear error.
    let o = run(&["status", "--addr", &addr]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no rig daemon answering"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn rig_run_records_a_live_tcp_stream() {
    let dir = tempfile::tempdir().unwrap();
    let session = simulate(dir.path(), "s.h5", 3.0, 2);
    // A free loopback port for the stream listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = small_config_text()
        .replace("source = \"sim\"", "source = \"stream\"")
        .replace("reference_frames = 200", "reference_frames = 30")
        .replace(
            "listen = \"127.0.0.1:7700\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
    let cfg = write_config(dir.path(), "stream.toml", &text);
    let out = dir.path().join("live.h5");
    let mut daemon = rig()
        .args([
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--control",
            "127.0.0.1:0",
        ])
        .args([
            "--rois",
            session.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut daemon, "recording");
    let sent = run(&[
        "stream",
        session.to_str().unwrap(),
        "--to",
        &format!("127.0.0.1:{port}"),
        "--max-speed",
    ]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert!(daemon.wait().unwrap().success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut daemon.stdout.take().unwrap(), &mut stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["source"], "stream");
    assert_eq!(v["frames_in"], 90);
    assert_eq!(v["frames_lost"], 0);
    let r = SessionReader::open(&out).unwrap();
    assert_eq!(r.meta().n_frames, 90);
    let src = SessionReader::open(&session).unwrap();
    let (mut a, mut b) = (vec![0u16; 96 * 96], vec![0u16; 96 * 96]);
    src.read_frame_into(89, &mut a).unwrap();
    r.read_frame_into(89, &mut b).unwrap();
    assert_eq!(a, b, "frames arrive byte-exact");
    let t = r.traces().unwrap().unwrap();
    assert_eq!(
        t.frame_index.len() as u64,
        v["frames_analysed"].as_u64().unwrap()
    );
}
