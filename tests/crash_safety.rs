//! A writer killed with SIGKILL leaves a file that opens, holding every frame up to its last flush.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};
use twinrig::session::SessionReader;

#[test]
fn sigkill_mid_session_keeps_every_flushed_frame() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "c.toml", &small_config_text());
    let out = dir.path().join("killed.h5");
    let mut child = rig()
        .args([
            "simulate",
            "--config",
            cfg.to_str().unwrap(),
            "--minutes",
            "60",
            "--seed",
            "9",
        ])
        .args(["--out", out.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Each "session flushed frames=N" line is printed after H5Fflush returned: N frames are on disk.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(n) = line.split("frames=").nth(1) {
                if let Ok(n) = n.split_whitespace().next().unwrap_or("").parse::<usize>() {
                    let _ = tx.send(n);
                }
            }
        }
    });
    let start = Instant::now();
    let mut flushed = 0;
    let mut flushes = 0;
    while flushes < 25 && start.elapsed() < Duration::from_secs(60) {
        if let Ok(n) = rx.recv_timeout(Duration::from_millis(100)) {
            flushed = n;
            flushes += 1;
        }
    }
    assert!(flushes >= 25, "the writer did not flush in time");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    while let Ok(n) = rx.try_recv() {
        flushed = flushed.max(n);
    }

    let r = SessionReader::open(&out).expect("a killed session still opens");
    let m = r.meta();
    assert!(!m.complete, "the file says it was not finished");
    assert!(
        m.n_frames >= flushed,
        "{} frames on disk, {} were flushed",
        m.n_frames,
        flushed
    );
    // What is on disk is exactly what an uninterrupted run with the same seed records.
    let full = simulate(dir.path(), "full.h5", (m.n_frames as f64 + 1.0) / 30.0, 9);
    let rf = SessionReader::open(&full).unwrap();
    let (mut a, mut b) = (vec![0u16; 96 * 96], vec![0u16; 96 * 96]);
    for i in [0, m.n_frames / 2, m.n_frames - 1] {
        r.read_frame_into(i, &mut a).unwrap();
        rf.read_frame_into(i, &mut b).unwrap();
        assert!(a == b, "frame {i} differs from the uninterrupted run");
    }
    let t = r.frame_times().unwrap();
    assert_eq!(t.len(), m.n_frames);
    assert!(r.behavior().unwrap().time.len() >= flushed);
    let gt = r.ground_truth().unwrap().unwrap();
    assert!(gt.n_frames() >= flushed);
}

fn h5py_python() -> Option<std::path::PathBuf> {
    python_with("h5py", "TWINRIG_REQUIRE_H5PY")
}

#[test]
fn sigkill_of_rig_run_while_recording_leaves_a_file_rig_and_h5py_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "c.toml", &small_config_text());
    let out = dir.path().join("killed.h5");
    // `rig run` on the simulated rig: acquisition, the recorder thread, extraction and the loop,
    // with the session file under its final name once it prints "recording".
    let mut child = rig()
        .args([
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--minutes",
            "60",
            "--speed",
            "1",
            "--control",
            "127.0.0.1:0",
        ])
        .args(["--out", out.to_str().unwrap(), "--json"])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // "session flushed frames=N" comes after H5Fflush returned: N frames are on disk.
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Option<usize>>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("recording") && line.contains("control on ") {
                let _ = tx.send(None);
            }
            if line.contains("session flushed") {
                if let Some(n) = line.split("frames=").nth(1) {
                    if let Ok(n) = n.split_whitespace().next().unwrap_or("").parse::<usize>() {
                        let _ = tx.send(Some(n));
                    }
                }
            }
        }
    });
    // Kill it mid-recording: after some flushes with frames (a liveness bound of two minutes,
    // not a timing check).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut recording = false;
    let mut flushed = 0;
    let mut flushes = 0;
    while flushes < 10 || flushed < 30 {
        assert!(
            Instant::now() < deadline,
            "rig run did not record (recording: {recording}, {flushes} flushes)"
        );
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(None) => recording = true,
            Ok(Some(n)) => {
                flushed = n;
                flushes += 1;
            }
            Err(_) => {}
        }
    }
    assert!(recording, "the flushes came before the recording line");
    child.kill().unwrap(); // SIGKILL: no handler runs, the recorder thread dies mid-frame
    child.wait().unwrap();
    reader.join().unwrap();
    while let Ok(n) = rx.try_recv() {
        flushed = flushed.max(n.unwrap_or(0));
    }

    // `rig inspect` opens it, says it is incomplete, and holds at least every flushed frame.
    let v = run_json(&["inspect", out.to_str().unwrap(), "--json"]);
    assert_eq!(v["complete"], false, "{v}");
    let n = v["n_frames"].as_u64().unwrap() as usize;
    assert!(n >= flushed, "{n} frames on disk, {flushed} were flushed");
    // The frames recorded are consistent: a time for each, increasing at the frame rate (the
    // board's frame clock mapped onto the rig clock), each frame readable and an image (the
    // simulated neurons and background are never all zero).
    let r = SessionReader::open(&out).expect("a killed session still opens");
    assert_eq!(r.meta().n_frames, n);
    let t = r.frame_times().unwrap();
    assert_eq!(t.len(), n);
    assert!(t.windows(2).all(|w| w[1] > w[0]), "frame times go back");
    let period = 1.0 / r.meta().frame_rate_hz;
    let mean = (t[n - 1] - t[0]) / (n - 1) as f64;
    assert!(
        (mean / period - 1.0).abs() < 0.01,
        "mean frame interval {mean}"
    );
    let (h, w) = (r.meta().height, r.meta().width);
    let mut frame = vec![0u16; h * w];
    let mut sums = Vec::with_capacity(n);
    for i in 0..n {
        r.read_frame_into(i, &mut frame).unwrap();
        let s: u64 = frame.iter().map(|&p| u64::from(p)).sum();
        assert!(s > 0, "frame {i} is blank");
        sums.push(s);
    }
    drop(r);

    // h5py opens the same file and sees the same frames.
    let Some(python) = h5py_python() else {
        return;
    };
    let script = r#"
import json, sys
import h5py
with h5py.File(sys.argv[1], "r") as f:
    fr = f["imaging/frames"]
    print(json.dumps({
        "complete": int(f.attrs["complete"]),
        "shape": list(fr.shape),
        "timestamps": int(f["imaging/timestamps"].shape[0]),
        "sums": [int(fr[i].astype("uint64").sum()) for i in range(fr.shape[0])],
    }))
"#;
    let o = std::process::Command::new(&python)
        .args(["-c", script, out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "h5py could not open the killed file: {}",
        stderr(&o)
    );
    let p: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(p["complete"], 0, "{p}");
    assert_eq!(p["shape"], serde_json::json!([n, h, w]), "{p}");
    assert_eq!(p["timestamps"], n, "{p}");
    assert_eq!(
        p["sums"],
        serde_json::json!(sums),
        "h5py reads the frames rig reads"
    );
}
