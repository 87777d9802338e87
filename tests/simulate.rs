//! `rig simulate` and `rig inspect` on small simulated sessions: shapes, units, ground truth,
//! determinism.

mod common;

use common::*;
use twinrig::session::{layout, SessionReader};

#[test]
fn simulated_session_has_the_v1_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = simulate(dir.path(), "s.h5", 4.0, 3);
    let r = SessionReader::open(&path).unwrap();
    let m = r.meta();
    assert!(m.complete);
    assert_eq!(m.format_version, layout::FORMAT_VERSION);
    assert_eq!((m.height, m.width), (96, 96));
    assert_eq!(m.n_frames, 120);
    assert_eq!(m.n_rois, 24);
    assert_eq!(m.n_neurons, Some(24));
    assert_eq!(m.n_clips, 6);
    assert_eq!(
        (m.stimulus_height, m.stimulus_width, m.frames_per_clip),
        (36, 64, 60)
    );

    let t = r.frame_times().unwrap();
    assert_eq!(t.len(), 120);
    assert!(t
        .windows(2)
        .all(|w| ((w[1] - w[0]) - 1.0 / 30.0).abs() < 1e-9));
    let mut frame = vec![0u16; 96 * 96];
    r.read_frame_into(119, &mut frame).unwrap();
    assert!(frame.iter().any(|&v| v > 0));

    let b = r.behavior().unwrap();
    assert_eq!(b.time.len(), 120);
    assert!(b.running_speed.iter().all(|&v| (0.0..100.0).contains(&v)));
    assert!(b.pupil_diameter.iter().all(|&v| (0.3..=3.0).contains(&v)));

    // 60 Hz flips over 4 s, trials of 2 s clip + 0.5 s gray.
    let f = r.flips().unwrap();
    assert_eq!(f.time.len(), 60 * 4 - 1);
    assert_eq!(r.trials().unwrap().start.len(), 2);
    let (pd_t, pd_l) = r.photodiode().unwrap();
    assert_eq!(pd_t.len(), f.time.len());
    assert!(
        pd_l.windows(2).all(|w| w[0] != w[1]),
        "photodiode toggles on every flip"
    );
    assert_eq!(r.frame_clock().unwrap().0.len(), 120);
    assert_eq!(r.encoder().unwrap().0.len(), 120);

    let rois = r.rois().unwrap().unwrap();
    assert_eq!(rois.len(), 24);
    assert!(rois.pixels.iter().all(|&p| (p as usize) < 96 * 96));

    let gt = r.ground_truth().unwrap().unwrap();
    assert_eq!(gt.n_frames(), 120);
    assert_eq!(gt.neuron_field("roi_id").unwrap().len(), 24);
    assert!(
        gt.spikes.iter().map(|&s| s as u64).sum::<u64>() > 0,
        "neurons fire"
    );
    assert!(gt.calcium.iter().all(|v| v.is_finite() && *v >= 0.0));
    let motion_rms = (gt.motion.iter().map(|v| v * v).sum::<f32>() / gt.motion.len() as f32).sqrt();
    assert!(motion_rms > 0.1 && motion_rms < 10.0, "{motion_rms}");
}

#[test]
fn every_dataset_documents_unit_and_clock() {
    let dir = tempfile::tempdir().unwrap();
    let path = simulate(dir.path(), "s.h5", 1.0, 1);
    // The simulator writes all but the traces; a replay adds the traces (without ground truth).
    let replayed = dir.path().join("r.h5");
    let o = run(&[
        "replay",
        path.to_str().unwrap(),
        "--out",
        replayed.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sim = hdf5::File::open(&path).unwrap();
    let rep = hdf5::File::open(&replayed).unwrap();
    // twin/ comes from `rig run` with the twin in the loop (checked in tests/closed_loop.rs).
    for spec in layout::ALL.iter().filter(|s| !s.path.starts_with("twin/")) {
        let f = if spec.path.starts_with("traces/") {
            &rep
        } else {
            &sim
        };
        let ds = f
            .dataset(spec.path)
            .unwrap_or_else(|_| panic!("{} missing", spec.path));
        for a in ["unit", "clock", "description"] {
            let v: hdf5::types::VarLenUnicode = ds.attr(a).unwrap().read_scalar().unwrap();
            assert!(!v.as_str().is_empty(), "{} has an empty {a}", spec.path);
        }
        let clock: hdf5::types::VarLenUnicode = ds.attr("clock").unwrap().read_scalar().unwrap();
        if spec.unit == "s" {
            assert_eq!(
                clock.as_str(),
                "rig",
                "{} is a time on the rig clock",
                spec.path
            );
        }
    }
    let cfg: hdf5::types::VarLenUnicode = sim.attr("rig_config").unwrap().read_scalar().unwrap();
    assert!(cfg.as_str().contains("[imaging]"));
}

#[test]
fn same_seed_same_data_other_seed_other_data() {
    let dir = tempfile::tempdir().unwrap();
    let a = simulate(dir.path(), "a.h5", 2.0, 11);
    let b = simulate(dir.path(), "b.h5", 2.0, 11);
    let c = simulate(dir.path(), "c.h5", 2.0, 12);
    let read = |p: &std::path::Path| {
        let f = hdf5::File::open(p).unwrap();
        let mut all = Vec::new();
        for spec in layout::ALL
            .iter()
            .filter(|s| !s.path.starts_with("traces/") && !s.path.starts_with("twin/"))
        {
            let ds = f.dataset(spec.path).unwrap();
            let bytes: Vec<u8> = match spec.dtype {
                layout::Dtype::U8 => ds.read_raw::<u8>().unwrap(),
                layout::Dtype::U16 => ds
                    .read_raw::<u16>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                layout::Dtype::U32 => ds
                    .read_raw::<u32>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                layout::Dtype::U64 => ds
                    .read_raw::<u64>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                layout::Dtype::I32 => ds
                    .read_raw::<i32>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                layout::Dtype::F32 => ds
                    .read_raw::<f32>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                layout::Dtype::F64 => ds
                    .read_raw::<f64>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            };
            all.push((spec.path, bytes));
        }
        all
    };
    let (ra, rb, rc) = (read(&a), read(&b), read(&c));
    for ((p, x), (_, y)) in ra.iter().zip(&rb) {
        assert!(x == y, "{p} differs between two runs with the same seed");
    }
    let frames = |r: &Vec<(&str, Vec<u8>)>| {
        r.iter()
            .find(|(p, _)| *p == layout::FRAMES.path)
            .unwrap()
            .1
            .clone()
    };
    assert_ne!(frames(&ra), frames(&rc), "another seed gives other frames");
}

#[test]
fn inspect_json_reports_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let path = simulate(dir.path(), "s.h5", 2.0, 5);
    let o = run(&["inspect", path.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["n_frames"], 60);
    assert_eq!(v["complete"], true);
    assert_eq!(v["ground_truth"], true);
    assert_eq!(v["frame_clock_edges"], 60);
}

#[test]
fn simulate_json_summary() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "c.toml", &small_config_text());
    let out = dir.path().join("x.h5");
    let o = run(&[
        "simulate",
        "--config",
        cfg.to_str().unwrap(),
        "--minutes",
        "0.02",
        "--seed",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["frames"], 36);
    assert_eq!(v["neurons"], 24);
    assert!(v["mean_spike_rate_hz"].as_f64().unwrap() > 0.0);
}

#[test]
fn session_format_doc_names_every_dataset() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/session-format.md"
    ))
    .unwrap();
    for spec in layout::ALL {
        assert!(
            doc.contains(&format!("`{}`", spec.path)),
            "docs/session-format.md lacks {}",
            spec.path
        );
    }
    for (name, ..) in layout::GT_NEURON_FIELDS {
        assert!(
            doc.contains(&format!("`{name}`")),
            "docs/session-format.md lacks neuron field {name}"
        );
    }
}
