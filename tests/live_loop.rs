//! The closed loop on a live rig: frames arrive over the frame stream (`rig stream` plays a
//! recorded session in real time), the presenter (`rig present --headless`, started by `rig run`)
//! runs the trials the scheduler chooses, the sync board on its own serial port supplies the
//! encoder and the photodiode, and each frame's context is rebuilt from those, so the twin is
//! stepped on a live rig exactly as `rig twin predict` later sees the recording.

mod common;

use common::*;
use twinrig::session::SessionReader;

#[test]
fn a_live_rig_runs_its_trials_on_the_presenter_and_steps_the_twin_on_what_it_showed() {
    let dir = tempfile::tempdir().unwrap();
    // The embedded rig at full size: the reference twin's neurons are its 200 ROIs.
    let session = dir.path().join("s.h5");
    let o = run(&[
        "simulate",
        "--minutes",
        &format!("{}", 10.0 / 60.0),
        "--seed",
        "2",
        "--out",
        session.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = twinrig::config::RigConfig::embedded_sim();
    let board = twinrig::harp::sim::SimBoard::spawn(&cfg, Default::default()).unwrap();
    let port = free_port();
    let text = stream_config(twinrig::config::EMBEDDED_SIM_CONFIG, &board.port(), port)
        .replace("presenter = \"none\"", "presenter = \"spawn-headless\"")
        .replace("order = \"shuffle\"", "order = \"list\"")
        .replace("clip_list = []", "clip_list = [3, 1, 4, 1, 5]")
        .replace("clip_seconds = 2.0", "clip_seconds = 1.0")
        .replace("gray_seconds = 0.5", "gray_seconds = 0.25");
    let cfg_path = write_config(dir.path(), "live.toml", &text);
    let out = dir.path().join("live.h5");
    // The rig is up before the microscope starts, as on a real rig. Acquisition stamps frames
    // on its own clock, as ScanImage would; `rig run` maps them onto the rig clock the
    // presenter's flips and the board's events are on.
    let v = run_live(
        &cfg_path,
        &session,
        &out,
        port,
        std::time::Duration::from_millis(300),
        &["--clock", "sender"],
    );
    assert_eq!(v["frames_lost"], 0);
    assert_eq!(v["frames_recorded"], 300);

    // The presenter ran the configured list, and every trial is recorded.
    let p = &v["presenter"];
    assert!(p["live_trials"].as_u64().unwrap() >= 8, "{p}");
    assert!(p["flips"].as_u64().unwrap() > 500, "{p}");
    let r = SessionReader::open(&out).unwrap();
    let trials = r.trials().unwrap();
    assert!(trials.clip.len() >= 8, "{:?}", trials.clip);
    assert_eq!(
        &trials.clip[..8],
        &[3, 1, 4, 1, 5, 3, 1, 4],
        "{:?}",
        trials.clip
    );
    for w in trials.start.windows(2) {
        assert!((w[1] - w[0] - 1.25).abs() < 1e-9, "{:?}", trials.start);
    }
    // The session's stimulus record is what the presenter showed: its clips, at the stimulus
    // rate, each trial's clip from its start.
    let flips = r.flips().unwrap();
    assert!(flips.time.len() > 500);
    assert_eq!(
        r.meta().n_clips,
        24,
        "the library is filed in the session, as on the simulated rig"
    );
    let shown = flips.shown_at(&trials.start.iter().map(|t| t + 0.1).collect::<Vec<_>>());
    for (k, (clip, frame)) in shown.iter().enumerate().take(trials.clip.len() - 1) {
        assert_eq!(*clip, trials.clip[k], "trial {k}: {shown:?}");
        // 0.1 s in, less the display lag (under two refresh periods), give or take the flip
        // the start snapped to.
        assert!((1..=3).contains(frame), "trial {k} 0.1 s in: frame {frame}");
    }

    // Every frame found its context; running came from the board's encoder, the pupil is
    // unmeasured.
    let lc = &v["live_context"];
    assert_eq!(lc["frames"], 300, "{lc}");
    assert!(lc["encoder_samples"].as_u64().unwrap() > 100, "{lc}");
    let with = lc["with_context"].as_u64().unwrap();
    assert_eq!(with, 300, "{lc} {p}");
    let beh = r.behavior().unwrap();
    assert_eq!(beh.time.len(), 300);
    let finite = beh.running_speed.iter().filter(|s| s.is_finite()).count();
    assert!(finite == 300, "{lc} {:?}", &beh.running_speed[..40]);
    assert!(beh.pupil_diameter.iter().all(|p| p.is_nan()));

    // The twin ran on the live rig.
    let tw = &v["closed_loop"]["twin"];
    assert!(tw["error"].is_null(), "{tw}");
    assert_eq!(tw["neurons_compared"], 200, "{tw}");
    assert_eq!(tw["frames_stepped"], v["frames_analysed"], "{tw}");
    assert_eq!(tw["frames_without_context"], 0, "{tw}");
    // Frames analysis skipped (it does while it builds its motion reference) were still shown
    // to the twin, so its recurrent state followed every stimulus frame.
    let n = |k: &str| tw[k].as_u64().unwrap();
    assert_eq!(
        n("frames_stepped") + n("frames_caught_up") + n("frames_not_stepped"),
        300,
        "{tw}"
    );
    let not_stepped = n("frames_not_stepped");
    assert!(not_stepped <= 3, "{tw}");
    assert!(tw["trials"].as_u64().unwrap() >= 6, "{tw}");
    let cl = &v["closed_loop"];
    assert!(cl["trials_scheduled"].as_u64().unwrap() >= 10, "{cl}");
    drop(r);

    // Offline, from the recorded flips and behaviour: the same predictions, unless a frame had
    // to give up waiting for a flip report or the twin skipped one (both counted; none unless
    // the machine stalls the run for a good fraction of a second).
    let (worst, _) = live_vs_offline(&out, dir.path());
    let late = lc["late"].as_u64().unwrap();
    assert!(late <= 3, "{lc}");
    if late == 0 && not_stepped == 0 {
        assert!(
            worst < 1e-5,
            "live and offline predictions differ by {worst}: {tw}"
        );
    }
    drop(board);
}
