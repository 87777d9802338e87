//! `rig replay` on simulated sessions: every frame recorded, traces written, accuracy against the
//! ground truth, and clear refusals of bad sessions.

mod common;

use common::*;
use twinrig::session::SessionReader;

fn replay_json(args: &[&str]) -> serde_json::Value {
    let o = run(args);
    assert!(o.status.success(), "replay failed: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).expect("json")
}

#[test]
fn replay_records_every_frame_and_writes_traces() {
    let dir = tempfile::tempdir().unwrap();
    let s = simulate(dir.path(), "s.h5", 10.0, 4);
    let out = dir.path().join("r.h5");
    let v = replay_json(&[
        "replay",
        s.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(v["frames_in"], 300);
    assert_eq!(v["frames_analysed"], 300);
    assert_eq!(v["frames_skipped"], 0);
    assert_eq!(v["frames_recorded"], 300);
    assert_eq!(v["frames_lost"], 0);
    let stages: Vec<&str> = v["latency"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    for st in [
        "acquire",
        "queue",
        "motion",
        "traces",
        "dff",
        "extract",
        "end_to_end",
        "record",
    ] {
        assert!(stages.contains(&st), "latency of {st} reported");
    }
    // Scored with the session's own ROI table, which for a simulated session is the simulator's
    // footprints: perfect masks, so these figures are an upper bound, and the report says so
    // (tests/extract_accuracy.rs scores imperfect masks too).
    let acc = &v["accuracy"];
    assert_eq!(acc["masks"], "session_rois", "{acc}");
    assert_eq!(acc["rois_scored"], 24);
    assert!(
        acc["median_dff_calcium_corr"].as_f64().unwrap() > 0.8,
        "{acc}"
    );
    assert!(acc["motion_rms_error_px"].as_f64().unwrap() < 0.5, "{acc}");

    // The output is a complete session of its own, with traces for every frame.
    let r = SessionReader::open(&out).unwrap();
    assert!(r.meta().complete);
    assert_eq!(r.meta().n_frames, 300);
    let t = r.traces().unwrap().unwrap();
    assert_eq!(t.n_rois, 24);
    assert_eq!(t.frame_index, (0..300).collect::<Vec<u64>>());
    assert_eq!(t.dff.len(), 300 * 24);
    // Deconvolved rows arrive with a lag, but by the end every frame has one.
    let mut sf = t.spikes_frame.clone();
    sf.sort();
    assert_eq!(sf, (0..300).collect::<Vec<u64>>());
    let src = SessionReader::open(&s).unwrap();
    let (mut a, mut b) = (vec![0u16; 96 * 96], vec![0u16; 96 * 96]);
    src.read_frame_into(299, &mut a).unwrap();
    r.read_frame_into(299, &mut b).unwrap();
    assert_eq!(a, b, "frames are re-recorded unchanged");
    assert_eq!(src.flips().unwrap().time, r.flips().unwrap().time);

    // Latency histograms are in the file: one count per analysed frame.
    let f = hdf5::File::open(&out).unwrap();
    let counts: Vec<u64> = f
        .dataset("latency/extract/count")
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(counts.iter().sum::<u64>(), 300);
    drop(f);

    // Replaying the replay gives the same traces: extraction is deterministic.
    let out2 = dir.path().join("r2.h5");
    replay_json(&[
        "replay",
        out.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
        "--json",
    ]);
    let t2 = SessionReader::open(&out2)
        .unwrap()
        .traces()
        .unwrap()
        .unwrap();
    assert_eq!(t.dff, t2.dff);
}

#[test]
fn realtime_replay_keeps_the_recorded_timing() {
    let dir = tempfile::tempdir().unwrap();
    let s = simulate(dir.path(), "s.h5", 2.0, 4);
    let v = replay_json(&[
        "replay",
        s.to_str().unwrap(),
        "--realtime",
        "--speed",
        "4",
        "--json",
    ]);
    assert_eq!(v["frames_in"], 60);
    assert_eq!(v["frames_lost"], 0);
    assert_eq!(
        v["frames_analysed"].as_u64().unwrap() + v["frames_skipped"].as_u64().unwrap(),
        60,
        "every frame is analysed or counted as skipped"
    );
    // 2 s of recording at 4x speed takes at least 0.5 s.
    assert!(v["wall_s"].as_f64().unwrap() >= 0.45, "{}", v["wall_s"]);
    assert_eq!(v["realtime"], true);
}

fn assert_replay_refused(session: &std::path::Path, needle: &str) {
    let o = run(&["replay", session.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
}

#[test]
fn session_without_rois_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = simulate(dir.path(), "s.h5", 1.0, 1);
    let g = edit_guard();
    let f = hdf5::File::open_rw(&s).unwrap();
    for d in ["rois/ids", "rois/offsets", "rois/pixels", "rois/weights"] {
        f.unlink(d).unwrap();
    }
    drop(f);
    drop(g);
    assert_replay_refused(&s, "no ROI masks");
}

#[test]
fn empty_session_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "c.toml", &small_config_text());
    let out = dir.path().join("empty.h5");
    let o = run(&[
        "simulate",
        "--config",
        cfg.to_str().unwrap(),
        "--minutes",
        "0.0001",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_replay_refused(&out, "no frames");
}

#[test]
fn roi_outside_the_frame_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = simulate(dir.path(), "s.h5", 1.0, 1);
    {
        let _g = edit_guard();
        let f = hdf5::File::open_rw(&s).unwrap();
        let ds = f.dataset("rois/pixels").unwrap();
        let mut px: Vec<u32> = ds.read_raw().unwrap();
        px[0] = 96 * 96 + 1;
        ds.write_raw(&px).unwrap();
    }
    assert_replay_refused(&s, "outside a 96x96 frame");
}

#[test]
fn frames_not_matching_the_declared_shape_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = simulate(dir.path(), "s.h5", 1.0, 1);
    let g = edit_guard();
    let f = hdf5::File::open_rw(&s).unwrap();
    f.attr("frame_height")
        .unwrap()
        .write_scalar(&64u32)
        .unwrap();
    drop(f);
    drop(g);
    assert_replay_refused(&s, "`imaging/frames` has shape");
}

#[test]
fn roi_file_from_another_session_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let s = simulate(dir.path(), "s.h5", 1.0, 1);
    let v = replay_json(&[
        "replay",
        s.to_str().unwrap(),
        "--rois",
        s.to_str().unwrap(),
        "--no-deconv",
        "--json",
    ]);
    assert_eq!(v["rois"], 24);
    assert_eq!(v["accuracy"]["masks"], "given", "{}", v["accuracy"]);
    let o = run(&[
        "replay",
        s.to_str().unwrap(),
        "--rois",
        "/nonexistent/masks.h5",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/masks.h5"),
        "{}",
        stderr(&o)
    );
}

/// ROIs from elsewhere (a segmentation's masks: shifted, in another order, numbered from 0 like
/// suite2p's, one on empty tissue) are paired with the true neurons by overlap, not by id, and
/// the report says how many paired; the simulator's own footprints are labelled an upper bound.
#[test]
fn foreign_rois_are_scored_by_overlap_not_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = simulate(dir.path(), "s.h5", 10.0, 4);
    let truth = SessionReader::open(&s)
        .unwrap()
        .ground_truth_footprints()
        .unwrap()
        .expect("a simulated session stores its true footprints");
    let w = truth.width;
    let (mut offsets, mut pixels, mut weights) = (vec![0u64], Vec::new(), Vec::new());
    for r in (0..truth.len()).rev() {
        let (px, wt) = truth.roi(r);
        for (&p, &v) in px.iter().zip(wt) {
            let (y, x) = (p as usize / w, p as usize % w);
            if x + 1 < w {
                pixels.push((y * w + x + 1) as u32);
                weights.push(v);
            }
        }
        offsets.push(pixels.len() as u64);
    }
    // A 5x5 mask in the corner: no soma covers a quarter of it.
    for y in 0..5 {
        for x in 0..5 {
            pixels.push((y * w + x) as u32);
            weights.push(1.0);
        }
    }
    offsets.push(pixels.len() as u64);
    let ids: Vec<u32> = (0..offsets.len() as u32 - 1).collect();
    let masks = dir.path().join("masks.h5");
    {
        let f = hdf5::File::create(&masks).unwrap();
        let g = f.create_group("rois").unwrap();
        g.new_dataset_builder()
            .with_data(&ids)
            .create("ids")
            .unwrap();
        g.new_dataset_builder()
            .with_data(&offsets)
            .create("offsets")
            .unwrap();
        g.new_dataset_builder()
            .with_data(&pixels)
            .create("pixels")
            .unwrap();
        g.new_dataset_builder()
            .with_data(&weights)
            .create("weights")
            .unwrap();
    }
    let own = replay_json(&["replay", s.to_str().unwrap(), "--json"]);
    let foreign = replay_json(&[
        "replay",
        s.to_str().unwrap(),
        "--rois",
        masks.to_str().unwrap(),
        "--json",
    ]);
    let (a, b) = (&own["accuracy"], &foreign["accuracy"]);
    eprintln!("own footprints: {a}\nforeign masks: {b}");
    assert_eq!(a["paired_by"], "overlap");
    assert_eq!(a["rois_scored"], truth.len());
    assert!(a["median_overlap"].as_f64().unwrap() > 0.999, "{a}");
    assert_eq!(b["paired_by"], "overlap");
    assert_eq!(b["rois"], truth.len() + 1);
    assert_eq!(b["neurons"], truth.len());
    assert_eq!(
        b["rois_scored"],
        truth.len(),
        "every shifted mask pairs, the corner one not"
    );
    let overlap = b["median_overlap"].as_f64().unwrap();
    assert!(overlap > 0.3 && overlap < 1.0, "{b}");
    // Paired by id, reversed masks would be scored against other neurons (median near 0).
    let (ca, cb) = (
        a["median_dff_calcium_corr"].as_f64().unwrap(),
        b["median_dff_calcium_corr"].as_f64().unwrap(),
    );
    assert!(
        cb > 0.6 && cb <= ca + 0.02,
        "foreign {cb:.3}, own footprints {ca:.3}"
    );
    // The text report says what the figure is.
    let o = run(&["replay", s.to_str().unwrap(), "--rois", s.to_str().unwrap()]);
    assert!(
        stdout(&o).contains("the ROIs are the true footprints, so this is an upper bound"),
        "{}",
        stdout(&o)
    );
    let o = run(&[
        "replay",
        s.to_str().unwrap(),
        "--rois",
        masks.to_str().unwrap(),
    ]);
    let want = format!(
        "{} of {} ROIs paired with one of {} neurons by overlap",
        truth.len(),
        truth.len() + 1,
        truth.len()
    );
    assert!(stdout(&o).contains(&want), "{}", stdout(&o));
}
