//! The twin in the loop of `rig run` on the simulated rig: it is stepped on exactly what the
//! display showed (so its predictions equal `rig twin predict` on the recording), compared with
//! the extracted dF/F neuron by neuron, and recorded under `twin/`; a twin too slow for the frame
//! rate is skipped and counted while every frame is still recorded.

mod common;

use common::*;
use twinrig::session::layout;
use twinrig::session::SessionReader;

#[test]
fn the_twin_in_the_loop_predicts_what_twin_predict_computes_from_the_recording() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.h5");
    // The embedded simulated rig is the mouse the reference twin was fit to (seed 1).
    let v = run_json(&[
        "run",
        "--minutes",
        "0.5",
        "--speed",
        "max",
        "--out",
        out.to_str().unwrap(),
        "--control",
        "127.0.0.1:0",
        "--json",
    ]);
    assert_eq!(v["frames_lost"], 0);
    let cl = &v["closed_loop"];
    let tw = &cl["twin"];
    assert_eq!(tw["neurons_compared"], 200, "{tw}");
    assert_eq!(tw["frames_stepped"], v["frames_analysed"], "{tw}");
    assert_eq!(cl["frames_skipped"], 0);
    assert!(tw["error"].is_null(), "{tw}");
    assert!(tw["trials"].as_u64().unwrap() >= 5, "{tw}");
    let median = tw["fidelity"]["median_session_corr"].as_f64().unwrap();
    assert!(
        median > 0.2,
        "the twin predicts the simulated mouse: {median}"
    );
    for stage in ["twin_step", "compare", "closed_loop"] {
        assert!(
            v["latency"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["stage"] == stage && s["count"].as_u64().unwrap() > 0),
            "latency of {stage} reported: {}",
            v["latency"]
        );
    }

    // Everything the loop computed is in the file, documented like every other dataset.
    let f = hdf5::File::open(&out).unwrap();
    for spec in layout::ALL.iter().filter(|s| s.path.starts_with("twin/")) {
        let ds = f
            .dataset(spec.path)
            .unwrap_or_else(|_| panic!("{} missing", spec.path));
        for a in ["unit", "clock", "description"] {
            let v: hdf5::types::VarLenUnicode = ds.attr(a).unwrap().read_scalar().unwrap();
            assert!(!v.as_str().is_empty(), "{} has an empty {a}", spec.path);
        }
    }
    let live = f
        .dataset("twin/predicted")
        .unwrap()
        .read_2d::<f32>()
        .unwrap();
    let frames = f
        .dataset("twin/frame_index")
        .unwrap()
        .read_1d::<u64>()
        .unwrap();
    assert_eq!(live.nrows(), 900);
    assert_eq!(frames.to_vec(), (0..900u64).collect::<Vec<_>>());
    let corr = f
        .dataset("twin/session_corr")
        .unwrap()
        .read_1d::<f32>()
        .unwrap();
    assert_eq!(corr.len(), 200);
    let fid = f
        .dataset("twin/population_fidelity")
        .unwrap()
        .read_1d::<f64>()
        .unwrap();
    assert!(fid[899].is_finite() && fid[899] > 0.1, "{}", fid[899]);
    let k = f
        .dataset("twin/trials/clip")
        .unwrap()
        .read_1d::<i32>()
        .unwrap();
    let tp = f
        .dataset("twin/trials/predicted")
        .unwrap()
        .read_2d::<f32>()
        .unwrap();
    assert_eq!(tp.nrows(), k.len());
    assert!(k.iter().all(|&c| c >= 0));
    let median_attr: f64 = f
        .group("twin")
        .unwrap()
        .attr("median_session_corr")
        .unwrap()
        .read_scalar()
        .unwrap();
    assert!((median_attr - median).abs() < 1e-9);
    drop(f);

    // Offline, from the recorded flips and behaviour: the same inputs, the same predictions.
    let (worst, offline_shape) = live_vs_offline(&out, dir.path());
    assert_eq!(live.shape(), &offline_shape[..]);
    assert!(
        worst < 1e-5,
        "live and offline predictions differ by {worst}"
    );
}

#[test]
fn a_slow_twin_is_skipped_and_counted_while_every_frame_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    // 200 ms per twin step against a 33 ms frame (at twice real time, 17 ms): the twin can take
    // at most one frame in 12, so it falls behind unless a loaded machine slows extraction
    // twelvefold.
    let text = small_config_text()
        .replace("step_delay_ms = 0.0", "step_delay_ms = 200.0")
        .replace("reference_frames = 200", "reference_frames = 20");
    let cfg = write_config(dir.path(), "slow.toml", &text);
    let out = dir.path().join("run.h5");
    let t0 = std::time::Instant::now();
    let o = run(&[
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
    assert!(o.status.success(), "{}", stderr(&o));
    // Said before the session starts, with the ways out.
    let err = stderr(&o);
    assert!(
        err.contains("longer than the 33.3 ms imaging frame")
            && err.contains("twin.backend = \"cuda\""),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["frames_in"], 180);
    assert_eq!(v["frames_recorded"], 180, "the recorder writes every frame");
    assert_eq!(v["frames_lost"], 0);
    let wall_s = t0.elapsed().as_secs_f64();
    // Extraction does not wait for the twin (on a loaded machine it may skip frames of its own,
    // and counts them: how many depends on the load, so it is printed, not bounded).
    let analysed = v["frames_analysed"].as_u64().unwrap();
    assert_eq!(analysed + v["frames_skipped"].as_u64().unwrap(), 180);
    eprintln!("analysed {analysed} of 180 frames in {wall_s:.1} s");
    let cl = &v["closed_loop"];
    let skipped = cl["frames_skipped"].as_u64().unwrap();
    let got = cl["frames"].as_u64().unwrap();
    assert_eq!(
        got + skipped,
        analysed,
        "every analysed frame reached the loop or was counted: {v}"
    );
    // Each twin step (on a frame, or catching up on one) took its 200 ms, so the loop did no
    // more steps than the run's wall time allows (a bound a loaded machine only loosens), and
    // every other analysed frame is counted as skipped: the twin fell behind.
    let steps = cl["twin"]["frames_stepped"].as_u64().unwrap()
        + cl["twin"]["frames_caught_up"].as_u64().unwrap();
    assert!(
        steps as f64 * 0.2 <= wall_s,
        "the loop did {steps} twin steps in {wall_s:.1} s: {cl}"
    );
    assert!(skipped > 0, "the twin fell behind: {cl}");
    let r = SessionReader::open(&out).unwrap();
    assert!(r.meta().complete);
    assert_eq!(r.meta().n_frames, 180);
    let f = hdf5::File::open(&out).unwrap();
    let rows = f
        .dataset("twin/frame_index")
        .unwrap()
        .read_1d::<u64>()
        .unwrap();
    assert_eq!(
        rows.len() as u64,
        cl["twin"]["frames_stepped"].as_u64().unwrap()
    );
    let skipped_attr: u64 = f
        .group("twin")
        .unwrap()
        .attr("frames_skipped")
        .unwrap()
        .read_scalar()
        .unwrap();
    assert_eq!(skipped_attr, skipped);
}

#[test]
fn a_missing_twin_is_refused_with_the_key_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let text = small_config_text().replace("onnx/reference_twin.onnx", "no/such/twin.onnx");
    let cfg = write_config(dir.path(), "c.toml", &text);
    let o = run(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--minutes",
        "0.05",
        "--speed",
        "max",
        "--out",
        dir.path().join("x.h5").to_str().unwrap(),
        "--control",
        "127.0.0.1:0",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("no/such/twin.onnx") && e.contains("twin.in_loop") && !e.contains("panicked"),
        "{e}"
    );
    assert!(
        !dir.path().join("x.h5").exists(),
        "refused before a session file is started"
    );
    // ...and --no-twin runs without it.
    let o = run(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--minutes",
        "0.05",
        "--speed",
        "max",
        "--out",
        dir.path().join("y.h5").to_str().unwrap(),
        "--control",
        "127.0.0.1:0",
        "--no-twin",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["closed_loop"]["twin"].is_null());
}

#[test]
fn trials_follow_the_configured_clip_list() {
    let dir = tempfile::tempdir().unwrap();
    let text = small_config_text()
        .replace("order = \"shuffle\"", "order = \"list\"")
        .replace("clip_list = []", "clip_list = [3, 1, 1, 5]");
    let cfg = write_config(dir.path(), "list.toml", &text);
    let out = dir.path().join("run.h5");
    let v = run_json(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--minutes",
        "0.5",
        "--speed",
        "max",
        "--out",
        out.to_str().unwrap(),
        "--control",
        "127.0.0.1:0",
        "--no-twin",
        "--json",
    ]);
    assert_eq!(v["frames_lost"], 0);
    let trials = SessionReader::open(&out).unwrap().trials().unwrap();
    // 30 s of 2.5 s trials.
    assert_eq!(trials.clip.len(), 12, "{:?}", trials.clip);
    let want: Vec<i32> = [3, 1, 1, 5].iter().copied().cycle().take(12).collect();
    assert_eq!(trials.clip, want);
    assert!(v["closed_loop"]["trials_scheduled"].as_u64().unwrap() >= 12);

    // A clip the library does not have is refused before anything runs.
    let bad = small_config_text()
        .replace("order = \"shuffle\"", "order = \"list\"")
        .replace("clip_list = []", "clip_list = [0, 17]");
    let cfg = write_config(dir.path(), "bad.toml", &bad);
    let o = run(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--minutes",
        "0.05",
        "--out",
        dir.path().join("bad.h5").to_str().unwrap(),
        "--control",
        "127.0.0.1:0",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("stimulus.clip_list") && e.contains("17"), "{e}");
}

#[test]
fn a_plan_is_shown_next_to_its_controls_and_natural_clips_and_beats_both() {
    let dir = tempfile::tempdir().unwrap();
    // Two neurons the reference twin predicts well (docs/insilico.md).
    let plan = reference_plan(dir.path(), "65,177", 160);
    let out = dir.path().join("run.h5");
    let v = run_json(&[
        "run",
        "--minutes",
        "2",
        "--speed",
        "max",
        "--plan",
        plan.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--control",
        "127.0.0.1:0",
        "--json",
    ]);
    assert_eq!(v["frames_lost"], 0);
    let ids: Vec<i64> = v["plan"]["clips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[0].as_i64().unwrap())
        .collect();
    // stimulus.plan_top = 4 per target, after the 24 library clips; then one control each
    // (stimulus.plan_controls = 1), of the same family and goal.
    assert_eq!(ids, (24..32).collect::<Vec<_>>());
    let controls = v["plan"]["controls"].as_array().unwrap();
    let control_ids: Vec<i64> = controls.iter().map(|c| c[0].as_i64().unwrap()).collect();
    assert_eq!(control_ids, (32..40).collect::<Vec<_>>());
    for (c, p) in controls.iter().zip(v["plan"]["clips"].as_array().unwrap()) {
        assert_eq!(c[1]["goal"], p[1]["goal"], "{c}");
        assert_eq!(c[1]["family"], p[1]["family"], "{c}");
        assert_eq!(c[1]["control_of"], p[1]["rank"], "{c}");
    }
    let r = SessionReader::open(&out).unwrap();
    assert_eq!(
        r.meta().n_clips,
        40,
        "plan stimuli and controls are in the session's library"
    );
    let params = r.clip_params().unwrap();
    for k in 0..8 {
        assert_eq!(
            params[24 + k].kind,
            params[32 + k].kind,
            "control {k}'s family"
        );
    }
    let trials = r.trials().unwrap();
    let count =
        |ids: std::ops::Range<i32>| trials.clip.iter().filter(|&&c| ids.contains(&c)).count();
    let (shown_plan, shown_ctl, shown_lib) = (count(24..32), count(32..40), count(0..24));
    assert_eq!(shown_plan + shown_ctl + shown_lib, trials.clip.len());
    // 48 trials: half plan, 40% of the rest controls, the rest natural clips.
    assert!(
        shown_plan >= 10 && shown_ctl >= 4 && shown_lib >= 6,
        "{:?}",
        trials.clip
    );

    let o = run(&["insilico", "gain", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let g: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let targets = g["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "both planned targets are scored: {g}");
    assert_eq!(g["controls"], 8);
    let mut trials_seen = [0usize; 3];
    for t in targets {
        let truth = t["true_gain"].as_f64().unwrap();
        let measured = t["measured_gain"].as_f64().unwrap();
        // Calcium saturates, so dF/F gains are smaller than firing-rate gains.
        assert!(truth > 1.3 && measured > 1.3, "{t}");
        assert!(t["predicted"].as_f64().unwrap() > 0.0, "{t}");
        // The search's choice matters: the plan beats random stimuli of its own family at its
        // own contrast, in the neuron's true response.
        let over_control = t["true_gain_over_control"].as_f64().unwrap();
        assert!(over_control > 1.0, "{t}");
        assert!(t["measured_gain_over_control"].as_f64().is_some(), "{t}");
        for (k, key) in ["plan_trials", "natural_trials", "control_trials"]
            .iter()
            .enumerate()
        {
            trials_seen[k] += t[key].as_u64().unwrap() as usize;
        }
    }
    assert_eq!(g["targets_beat_control"], 2, "{g}");
    // Each plan or control trial belongs to one target; natural trials are every target's.
    assert_eq!(trials_seen[0], shown_plan);
    assert_eq!(trials_seen[2], shown_ctl);
    assert_eq!(trials_seen[1], 2 * shown_lib);
}

#[test]
fn the_background_search_refreshes_the_plan_while_the_session_runs() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    // Every scheduled trial shows a plan stimulus once there is one.
    let text = small_config_text()
        .replace("plan_fraction = 0.5", "plan_fraction = 1.0")
        .replace("reference_frames = 200", "reference_frames = 20");
    let cfg = write_config(dir.path(), "c.toml", &text);
    let out = dir.path().join("run.h5");
    let mut child = rig()
        .args(["run", "--config", cfg.to_str().unwrap(), "--speed", "4"])
        .args(["--control", "127.0.0.1:0", "--out", out.to_str().unwrap()])
        .args(["--insilico", "neuron", "--targets", "177"])
        .args(["--insilico-budget", "48", "--json"])
        // A headless presenter: stimuli found during the session must reach it too.
        .args(["--present", "spawn-headless"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The spawned presenter logs on the same stderr; the daemon's line says where it listens.
    let addr = control_addr(&wait_for_line(&mut child, "control on "));
    let status =
        || twinrig::control::request(&addr, &serde_json::json!({"cmd": "status"})).unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    let wait_for = |what: &str, ok: &dyn Fn(&serde_json::Value) -> bool| loop {
        let s = status();
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status()["objective"]["targets"], serde_json::json!([177]));
    let s = wait_for("a plan refresh", &|s| {
        s["plan_refreshes"].as_u64() >= Some(1)
    });
    // Then at least two more trials (2.5 s each) of session time.
    let from = s["frames_in"].as_u64().unwrap();
    wait_for("two trials after the refresh", &|s| {
        s["frames_in"].as_u64().unwrap() > from + 180
    });
    assert!(twinrig::control::request(&addr, &serde_json::json!({"cmd": "stop"})).is_ok());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let refreshes = v["insilico"]["refreshes"].as_array().unwrap();
    assert_eq!(refreshes[0]["targets"], serde_json::json!([177]));
    let added: Vec<i64> = v["closed_loop"]["plan_clips_added"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_i64().unwrap())
        .collect();
    assert!(
        !added.is_empty() && added[0] == 6,
        "after the 6 library clips: {added:?}"
    );
    let r = SessionReader::open(&out).unwrap();
    assert!(r.meta().complete);
    assert_eq!(r.meta().n_clips, 6 + added.len());
    let trials = r.trials().unwrap();
    assert!(
        trials.clip.iter().any(|c| added.contains(&(*c as i64))),
        "a refreshed plan stimulus was shown: {:?}",
        trials.clip
    );
    let f = hdf5::File::open(&out).unwrap();
    let presented = f
        .dataset("presenter/flips/clip")
        .unwrap()
        .read_1d::<i32>()
        .unwrap();
    assert!(
        presented.iter().any(|c| added.contains(&(*c as i64))),
        "the presenter showed a stimulus found during the session"
    );
    assert!(
        v["presenter"]["disconnects"].as_u64() == Some(0),
        "{}",
        v["presenter"]
    );
}

#[test]
fn the_demo_runs_the_whole_loop() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&[
        "demo",
        "--out-dir",
        dir.path().to_str().unwrap(),
        "--minutes",
        "1",
        "--budget",
        "64",
        "--targets",
        "2",
        "--calibration",
        "calibration",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for step in ["== 1.", "== 2.", "== 3.", "== 4.", "== 5.", "== 6."] {
        assert!(out.contains(step), "{step} missing:\n{out}");
    }
    // The calibration block ran the protocol: natural clips, gratings and sparse noise.
    let kinds: Vec<u8> = SessionReader::open(&dir.path().join("calibration.h5"))
        .unwrap()
        .clip_params()
        .unwrap()
        .iter()
        .map(|p| p.kind)
        .collect();
    for k in [0u8, 1, 3] {
        assert!(
            kinds.contains(&k),
            "kind {k} not in the calibration library {kinds:?}"
        );
    }
    // Each target's predicted gain sits beside the measured one, and the twin is scored per
    // family on the closed-loop block.
    assert!(out.contains("predicted plan/nat"), "{out}");
    assert!(out.contains("predicted gain is off by a median"), "{out}");
    assert!(out.contains("CC_norm (neurons)"), "{out}");
    assert!(out.contains("twin fidelity: median session corr"), "{out}");
    assert!(out.contains("targets at 2x or more"), "{out}");
    for f in [
        "calibration.h5",
        "closed_loop.h5",
        "twin_adapted.onnx",
        "plan.h5",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
        // The demo says where each file went and what it takes.
        let files = &out[out.find("== files in").expect("the files are listed")..];
        let line = files
            .lines()
            .find(|l| l.ends_with(&dir.path().join(f).display().to_string()))
            .unwrap_or_else(|| panic!("{f} not listed:\n{out}"));
        assert!(line.contains("B  "), "{line}");
    }
    assert!(out.contains("in all"), "{out}");
    assert!(out.contains("targets beat their control"), "{out}");
    assert!(
        SessionReader::open(&dir.path().join("closed_loop.h5"))
            .unwrap()
            .meta()
            .complete
    );
}
