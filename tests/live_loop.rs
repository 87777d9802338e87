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

    // The presenter ran the configured list, and every trial is recorded. (Ten seconds of stream
    // at 1.25 s a trial: at least eight, more if a loaded machine slows the stream.)
    let p = &v["presenter"];
    eprintln!("presenter report: {p}");
    assert!(p["live_trials"].as_u64().unwrap() >= 8, "{p}");
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
    // The session's stimulus record is what the presenter showed: every flip it reported is a
    // row (how many it made in ten seconds depends on the load: 600 when idle), in time order.
    let flips = r.flips().unwrap();
    assert!(!flips.time.is_empty());
    assert_eq!(flips.time.len() as u64, p["flips"].as_u64().unwrap(), "{p}");
    assert!(flips.time.windows(2).all(|w| w[1] > w[0]));
    assert_eq!(
        r.meta().n_clips,
        24,
        "the library is filed in the session, as on the simulated rig"
    );
    // Each trial's clip was shown from its first frame, after the trial started (50 ms of slack
    // for the clock mapping), in the trials' order. The lag behind the start (a refresh or two
    // when idle) is printed, not bounded.
    let mut from = 0;
    for (k, (&c, &start)) in trials.clip.iter().zip(&trials.start).enumerate() {
        let Some(first) = (from..flips.time.len())
            .find(|&i| flips.clip[i] == c && flips.frame[i] == 0 && flips.time[i] >= start - 0.05)
        else {
            // Only the last trial may have been cut off by the end of the run.
            assert_eq!(k + 1, trials.clip.len(), "trial {k}: clip {c} never shown");
            break;
        };
        eprintln!(
            "trial {k}: clip {c} on the presenter {:.1} ms after its start",
            (flips.time[first] - start) * 1e3
        );
        from = first + 1;
    }

    // Every frame found its context; running came from the board's encoder, the pupil is
    // unmeasured. (A frame that gave up waiting for a flip report still gets the best context
    // known, and is counted late.)
    let lc = &v["live_context"];
    assert_eq!(lc["frames"], 300, "{lc}");
    assert!(lc["encoder_samples"].as_u64().unwrap() > 100, "{lc}");
    let with = lc["with_context"].as_u64().unwrap();
    assert_eq!(with, 300, "{lc} {p}");
    let late = lc["late"].as_u64().unwrap();
    assert_eq!(late == 0, lc["first_late_frame"].is_null(), "{lc}");
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
    // to the twin, so its recurrent state followed every stimulus frame: each frame was stepped,
    // caught up on, or counted (not stepped, or its context dropped before the loop).
    let cl = &v["closed_loop"];
    let dropped = cl["contexts_dropped"].as_u64().unwrap();
    let n = |k: &str| tw[k].as_u64().unwrap();
    assert_eq!(
        n("frames_stepped") + n("frames_caught_up") + n("frames_not_stepped") + dropped,
        300,
        "{tw} {cl}"
    );
    let not_stepped = n("frames_not_stepped");
    assert_eq!(
        not_stepped == 0,
        tw["first_frame_not_stepped"].is_null(),
        "{tw}"
    );
    assert!(tw["trials"].as_u64().unwrap() >= 6, "{tw}");
    assert!(cl["trials_scheduled"].as_u64().unwrap() >= 10, "{cl}");
    assert_eq!(dropped == 0, cl["first_context_dropped"].is_null(), "{cl}");
    drop(r);

    // Offline, from the recorded flips and behaviour: the same predictions, frame by frame, up to
    // the first frame whose context the live twin may have had differently (one that gave up
    // waiting for its flip report) or skipped (not stepped, or its context dropped): after it
    // the recurrent state differs. None of those happen unless the machine stalls the run, so
    // on an idle machine that is every frame; the count is printed.
    let first = |x: &serde_json::Value| x.as_u64().unwrap_or(u64::MAX);
    let upto = first(&lc["first_late_frame"])
        .min(first(&tw["first_frame_not_stepped"]))
        .min(first(&cl["first_context_dropped"]));
    let (worst, _, compared) = live_vs_offline_upto(&out, dir.path(), upto);
    eprintln!(
        "live vs offline: {compared} twin rows compared (frames before {upto}; {late} late, \
         {not_stepped} not stepped, {dropped} dropped), largest difference {worst}"
    );
    assert!(compared > 0, "no frame to compare: {lc} {tw}");
    assert!(
        worst < 1e-5,
        "live and offline predictions differ by {worst} before frame {upto}: {tw}"
    );
    drop(board);
}
