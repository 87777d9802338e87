//! `rig run` on the simulated rig records its sync datasets from the serial link: the simulated
//! board (the firmware behind a pseudo-terminal) is fed the rig's actual frames, flips and running,
//! and the host driver's events, mapped onto the rig clock, are what the session holds.
//!
//! Each test runs `rig` processes that open pseudo-terminals and measure timing, so they run one
//! at a time.

mod common;

use std::sync::{Mutex, MutexGuard};

use common::*;
use twinrig::session::SessionReader;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Photodiode latency of the simulated display (PHOTODIODE_LATENCY_S).
const PD_LATENCY_S: f64 = 0.004;
/// Harp timestamps are 32 µs ticks; the clock fit adds a few µs.
const CLOCK_TOLERANCE_S: f64 = 40e-6;

fn run_sim(
    dir: &std::path::Path,
    text: &str,
    minutes: &str,
    env: &[(&str, &str)],
) -> (serde_json::Value, std::path::PathBuf) {
    let cfg = write_config(dir, "c.toml", text);
    let out = dir.join("run.h5");
    let mut cmd = rig();
    cmd.args([
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--minutes",
        minutes,
        "--speed",
        "max",
        "--out",
        out.to_str().unwrap(),
        "--control",
        "127.0.0.1:0",
        "--json",
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "run failed: {}", stderr(&o));
    (serde_json::from_str(&stdout(&o)).expect("json"), out)
}

fn root_attr_u64(path: &std::path::Path, name: &str) -> u64 {
    let f = hdf5::File::open(path).unwrap();
    f.attr(name).unwrap().read_scalar::<u64>().unwrap()
}

#[test]
fn the_simulated_board_records_frame_clock_photodiode_and_encoder_over_serial() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (v, out) = run_sim(dir.path(), &small_config_text(), "0.5", &[]);
    let frames = 900usize;
    assert_eq!(v["frames_recorded"], frames as u64);
    assert_eq!(v["frames_lost"], 0);
    let s = &v["sync"];
    assert_eq!(s["port"], "sim");
    assert_eq!(s["identity"]["who_am_i"], 2176);
    assert_eq!(s["frame_clock_events"], frames as u64, "{s}");
    assert_eq!(s["frame_clock_missing"], 0, "{s}");
    assert_eq!(s["board_tx_dropped_bytes"], 0, "{s}");
    for k in [
        "bad_checksums",
        "discarded_bytes",
        "events_dropped",
        "reconnects",
        "timeouts",
    ] {
        assert_eq!(s["link"][k], 0, "link {k}: {s}");
    }
    // The driver recovered the board's 20 ppm drift from the link alone.
    let drift = s["clock"]["drift_ppm"].as_f64().unwrap();
    assert!((drift + 20.0).abs() < 1.0, "{s}");

    let r = SessionReader::open(&out).unwrap();
    let ft = r.frame_times().unwrap();
    assert_eq!(ft.len(), frames);

    // One frame-clock edge per frame, counted by the board from 1, at the frame's time.
    let (ct, cn) = r.frame_clock().unwrap();
    assert_eq!(ct.len(), frames);
    let mut worst = 0f64;
    for (i, (&t, &n)) in ct.iter().zip(&cn).enumerate() {
        assert_eq!(n as usize, i + 1);
        worst = worst.max((t - ft[i]).abs());
    }
    eprintln!(
        "frame clock: worst |t - frame time| = {:.1} us",
        worst * 1e6
    );
    assert!(worst < CLOCK_TOLERANCE_S, "{worst}");

    // A photodiode edge 4 ms after every flip (the last flip's edge falls after the last frame),
    // alternating from bright.
    let flips = r.flips().unwrap();
    let (pt, pl) = r.photodiode().unwrap();
    let last = ft[frames - 1];
    let due: Vec<f64> = flips
        .time
        .iter()
        .map(|t| t + PD_LATENCY_S)
        .filter(|t| *t <= last)
        .collect();
    assert_eq!(pt.len(), due.len());
    let mut worst_pd = 0f64;
    for (i, (&t, &l)) in pt.iter().zip(&pl).enumerate() {
        if (t - due[i]).abs() > CLOCK_TOLERANCE_S {
            eprintln!(
                "edge {i}: {t} vs {} ({:?})",
                due[i],
                &pt[i.saturating_sub(2)..i + 2]
            );
        }
        worst_pd = worst_pd.max((t - due[i]).abs());
        assert_eq!(l, if i % 2 == 0 { 1 } else { 0 }, "edge {i}");
    }
    eprintln!(
        "photodiode: worst |t - (flip + 4 ms)| = {:.1} us",
        worst_pd * 1e6
    );
    assert!(worst_pd < CLOCK_TOLERANCE_S, "{worst_pd}");

    // Encoder samples at the board's 100 Hz, each the treadmill position of the simulated mouse
    // at that time (distance run / cm per count, reconstructed from the recorded speed).
    let b = r.behavior().unwrap();
    let dt = 1.0 / 30.0;
    let mut dist = 0.0f64;
    let counts: Vec<i64> = b
        .running_speed
        .iter()
        .map(|s| {
            dist += f64::from(*s) * dt;
            (dist / 0.0491).round() as i64
        })
        .collect();
    let (et, ep) = r.encoder().unwrap();
    assert!((2900..=3000).contains(&et.len()), "{}", et.len());
    assert!(*counts.last().unwrap() > 100, "the mouse ran");
    for (&t, &p) in et.iter().zip(&ep) {
        let k = ((t + 1e-4) * 30.0).floor() as usize;
        let k = k.min(frames - 1);
        let near_edge = (t - ft[k]).abs() < 1e-4;
        let ok = (i64::from(p) - counts[k]).abs() <= 1
            || (near_edge && k > 0 && (i64::from(p) - counts[k - 1]).abs() <= 1);
        assert!(ok, "encoder {p} at {t}: frame {k} had {}", counts[k]);
    }

    assert_eq!(root_attr_u64(&out, "sync_bad_checksums"), 0);
    assert_eq!(root_attr_u64(&out, "sync_reconnects"), 0);
}

#[test]
fn unplugging_the_simulated_board_mid_run_is_survived() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (v, out) = run_sim(
        dir.path(),
        &small_config_text(),
        "0.2",
        &[("TWINRIG_SIM_UNPLUG", "3:1")],
    );
    assert_eq!(v["frames_recorded"], 360);
    assert_eq!(v["frames_lost"], 0);
    let s = &v["sync"];
    assert_eq!(s["link"]["reconnects"], 1, "{s}");
    assert_eq!(s["gaps"].as_array().unwrap().len(), 1, "{s}");
    let missing = s["frame_clock_missing"].as_u64().unwrap();
    let got = s["frame_clock_events"].as_u64().unwrap();
    assert!((30..200).contains(&missing), "{s}");
    assert_eq!(got + missing, 360, "{s}");
    assert_eq!(s["link"]["bad_checksums"], 0, "{s}");

    let r = SessionReader::open(&out).unwrap();
    assert!(r.meta().complete);
    let ft = r.frame_times().unwrap();
    let (ct, _) = r.frame_clock().unwrap();
    assert_eq!(ct.len() as u64, got);
    // Frame-clock events resume after the replug, on the same rig clock.
    assert!((ct.last().unwrap() - ft.last().unwrap()).abs() < CLOCK_TOLERANCE_S);
    assert!(ct.windows(2).any(|w| w[1] - w[0] > 0.9), "a gap of ~1 s");
    assert_eq!(root_attr_u64(&out, "sync_reconnects"), 1);
    let f = hdf5::File::open(&out).unwrap();
    let gaps = f
        .dataset("sync/gaps/start")
        .unwrap()
        .read_raw::<f64>()
        .unwrap();
    assert_eq!(gaps.len(), 1);
    assert!((gaps[0] - 3.0).abs() < 0.2, "{gaps:?}");
}

#[test]
fn sync_port_none_records_no_sync_events() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let text = small_config_text().replace("port = \"sim\"", "port = \"none\"");
    let (v, out) = run_sim(dir.path(), &text, "0.05", &[]);
    assert_eq!(v["frames_recorded"], 90);
    assert!(v["sync"].is_null());
    let r = SessionReader::open(&out).unwrap();
    assert_eq!(r.frame_clock().unwrap().0.len(), 0);
    assert_eq!(r.encoder().unwrap().0.len(), 0);
}

#[test]
fn a_live_stream_records_the_sync_board_on_its_serial_port() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let session = simulate(dir.path(), "s.h5", 3.0, 2);
    // The "real" board: the firmware behind a pty, on its own feed and the wall clock.
    let cfg = twinrig::config::RigConfig::embedded_sim();
    let board = twinrig::harp::sim::SimBoard::spawn(&cfg, Default::default()).unwrap();
    let port = free_port();
    let text = stream_config(&small_config_text(), &board.port(), port);
    let cfg_path = write_config(dir.path(), "stream.toml", &text);
    let out = dir.path().join("live.h5");
    // Let the board's frame clock run for a second, then stream the frames in real time.
    let v = run_live(
        &cfg_path,
        &session,
        &out,
        port,
        std::time::Duration::from_millis(1000),
        &[],
    );
    assert_eq!(v["frames_lost"], 0);
    let s = &v["sync"];
    assert_eq!(s["port"], board.port());
    assert_eq!(s["identity"]["who_am_i"], 2176);
    assert_eq!(s["link"]["bad_checksums"], 0, "{s}");
    let r = SessionReader::open(&out).unwrap();
    let (ct, cn) = r.frame_clock().unwrap();
    // ~4 s of a 30 Hz frame clock, on the stream's rig clock (seconds since it listened).
    assert!(ct.len() >= 90, "{}", ct.len());
    assert_eq!(ct.len() as u64, s["frame_clock_events"].as_u64().unwrap());
    for (w, n) in ct.windows(2).zip(cn.windows(2)) {
        assert_eq!(n[1], n[0] + 1);
        assert!((w[1] - w[0] - 1.0 / 30.0).abs() < 2e-3, "{w:?}");
    }
    assert!(ct[0] >= 0.0 && *ct.last().unwrap() < 30.0, "{ct:?}");
    assert!(r.photodiode().unwrap().0.len() >= 180);
    drop(board);
}
