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
