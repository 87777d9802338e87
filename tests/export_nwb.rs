//! `rig export nwb`: a closed-loop session (movie, ROIs, traces, twin, trials, behaviour, sync)
//! becomes an NWB file that pynwb reads without a warning, `pynwb.validate` accepts and
//! nwbinspector finds no critical problem or best-practice violation in, with the contents `rig`
//! reported (tools/check_nwb.py, in the venv `make venv` provides). The movie can be left out, an
//! existing output is refused, and a bad input is refused with one line and leaves nothing.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use twinrig::session::layout;
use twinrig::session::SessionReader;

fn nwb_python() -> Option<PathBuf> {
    python_with("pynwb, nwbinspector", "TWINRIG_REQUIRE_NWB")
}

/// Runs tools/check_nwb.py on `nwb` against `expect` (rig's summary plus exact values); returns
/// what it found.
fn check_with_pynwb(py: &Path, nwb: &Path, expect: &serde_json::Value) -> serde_json::Value {
    let exp = nwb.with_extension("expect.json");
    std::fs::write(&exp, expect.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/check_nwb.py");
    let o = std::process::Command::new(py)
        .arg(&script)
        .arg(nwb)
        .arg(&exp)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "check_nwb.py failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(out.lines().next().unwrap_or("")).expect("check_nwb.py prints JSON")
}

fn frame_sum(r: &SessionReader, i: usize) -> i64 {
    let m = r.meta();
    let mut f = vec![0u16; m.height * m.width];
    r.read_frame_into(i, &mut f).unwrap();
    f.iter().map(|&v| v as i64).sum()
}

/// Exact values the NWB file must hold, read from the session itself.
fn session_values(session: &Path) -> Vec<serde_json::Value> {
    let r = SessionReader::open(session).unwrap();
    let n = r.meta().n_frames;
    let rois = r.rois().unwrap().unwrap();
    let (_, w0) = rois.roi(0);
    let trials = r.trials().unwrap();
    let twin_ids: Vec<u32> = r.optional_vec(layout::TWIN_ROI_ID).unwrap().unwrap();
    serde_json::json!([
        {"key": "frame_0_sum", "value": frame_sum(&r, 0)},
        {"key": "frame_last_sum", "value": frame_sum(&r, n - 1)},
        {"key": "roi_ids", "value": rois.ids},
        {"key": "roi0_pixels", "value": w0.len()},
        {"key": "roi0_weight_sum", "value": w0.iter().map(|&w| w as f64).sum::<f64>()},
        {"key": "trial_clip_ids", "value": trials.clip},
        {"key": "trial_start_0", "value": trials.start[0]},
        {"key": "twin_roi_ids", "value": twin_ids},
        {"key": "indicator", "value": "GCaMP6s"},
        {"key": "location", "value": "VISp"},
        {"key": "excitation_lambda", "value": 920.0},
        {"key": "subject_id", "value": r.meta().mouse_id},
    ])
    .as_array()
    .unwrap()
    .clone()
}

fn str_attr(loc: &hdf5::Location, name: &str) -> String {
    loc.attr(name)
        .and_then(|a| a.read_scalar::<hdf5::types::VarLenUnicode>())
        .map(|v| v.as_str().to_string())
        .unwrap_or_else(|_| panic!("attribute {name} of {}", loc.name()))
}

fn is_uuid4(s: &str) -> bool {
    let p: Vec<&str> = s.split('-').collect();
    p.iter().map(|x| x.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && p[2].starts_with('4')
        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

/// Every typed object carries namespace, neurodata_type and a UUID4 object id (checked without
/// Python, so the layout is tested wherever the Rust tests run).
fn check_typed_objects(nwb: &Path, with_frames: bool) {
    let f = hdf5::File::open(nwb).unwrap();
    assert_eq!(str_attr(&f, "neurodata_type"), "NWBFile");
    assert_eq!(str_attr(&f, "namespace"), "core");
    assert!(is_uuid4(&str_attr(&f, "object_id")));
    let typed = [
        ("general/devices/Microscope", "Device"),
        ("general/optophysiology/ImagingPlane", "ImagingPlane"),
        ("general/subject", "Subject"),
        ("processing/ophys", "ProcessingModule"),
        (
            "processing/ophys/ImageSegmentation/PlaneSegmentation",
            "PlaneSegmentation",
        ),
        ("processing/ophys/DfOverF/DfOverF", "RoiResponseSeries"),
        ("processing/twin/predicted", "RoiResponseSeries"),
        ("intervals/trials", "TimeIntervals"),
        ("stimulus/templates/clip_library", "ImageSeries"),
    ];
    for (path, ty) in typed {
        let g = f.group(path).unwrap_or_else(|_| panic!("{path} missing"));
        assert_eq!(str_attr(&g, "neurodata_type"), ty, "{path}");
        assert!(is_uuid4(&str_attr(&g, "object_id")), "{path}");
    }
    let ids = f
        .dataset("processing/ophys/ImageSegmentation/PlaneSegmentation/id")
        .unwrap();
    assert_eq!(str_attr(&ids, "neurodata_type"), "ElementIdentifiers");
    assert_eq!(str_attr(&ids, "namespace"), "hdmf-common");
    assert_eq!(
        f.link_exists("acquisition/TwoPhotonSeries"),
        with_frames,
        "TwoPhotonSeries present iff the frames were exported"
    );
}

/// No file and no temporary file left in `dir` beside the ones named.
fn only_files(dir: &Path, names: &[&str]) {
    let mut left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".expect.json") && !n.ends_with(".toml"))
        .collect();
    left.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(left, want);
}

#[test]
fn a_closed_loop_session_exports_to_nwb_that_pynwb_and_nwbinspector_accept() {
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("run.h5");
    // The embedded simulated rig with its twin in the loop: traces, deconvolution, twin/ and
    // trials in 12 s of session, a few seconds of wall time.
    let recorded = run_json(&[
        "run",
        "--minutes",
        "0.2",
        "--speed",
        "max",
        "--out",
        session.to_str().unwrap(),
        "--control",
        "127.0.0.1:0",
        "--json",
    ]);
    assert_eq!(recorded["frames_lost"], 0);
    let nwb = dir.path().join("run.nwb");
    let s = run_json(&[
        "export",
        "nwb",
        session.to_str().unwrap(),
        "--out",
        nwb.to_str().unwrap(),
        "--json",
    ]);
    let r = SessionReader::open(&session).unwrap();
    assert_eq!(s["frames"], r.meta().n_frames);
    assert_eq!(s["frames_written"], true);
    assert_eq!(s["rois"], 200);
    assert!(s["trace_rows"].as_u64().unwrap() > 0, "{s}");
    assert!(s["deconvolved_rows"].as_u64().unwrap() > 0, "{s}");
    assert!(s["trials"].as_u64().unwrap() >= 3, "{s}");
    assert_eq!(s["twin_neurons"], 200);
    assert!(s["movie_mb_per_s"].as_f64().unwrap() > 0.0, "{s}");
    // Bounded memory: a block of 64 256x256 frames, not the movie (47 MB here).
    let rss = s["peak_rss_mb"].as_f64().unwrap();
    assert!(rss > 0.0 && rss < 200.0, "peak RSS {rss} MB");
    drop(r);
    check_typed_objects(&nwb, true);

    let py = nwb_python();
    let mut expect = s.clone();
    expect["expect"] = serde_json::Value::Array(session_values(&session));
    if let Some(py) = &py {
        let found = check_with_pynwb(py, &nwb, &expect);
        eprintln!("nwbinspector: {}", found["inspector"]);
    }

    // --no-frames: the same file without the movie.
    let small = dir.path().join("small.nwb");
    let s2 = run_json(&[
        "export",
        "nwb",
        session.to_str().unwrap(),
        "--out",
        small.to_str().unwrap(),
        "--no-frames",
        "--json",
    ]);
    assert_eq!(s2["frames_written"], false);
    assert_eq!(s2["movie_mb"], 0.0);
    assert!(s2["file_mb"].as_f64().unwrap() < s["file_mb"].as_f64().unwrap() / 2.0);
    check_typed_objects(&small, false);
    if let Some(py) = &py {
        let mut e2 = s2.clone();
        e2["expect"] = serde_json::json!([{"key": "frames", "value": 0}]);
        check_with_pynwb(py, &small, &e2);
    }

    // An existing --out is refused and left as it was; --overwrite replaces it.
    let before = std::fs::read(&small).unwrap();
    let o = run(&[
        "export",
        "nwb",
        session.to_str().unwrap(),
        "--out",
        small.to_str().unwrap(),
        "--no-frames",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("already exists") && err.contains("small.nwb"),
        "{err}"
    );
    assert_eq!(std::fs::read(&small).unwrap(), before);
    let o = run(&[
        "export",
        "nwb",
        session.to_str().unwrap(),
        "--out",
        small.to_str().unwrap(),
        "--no-frames",
        "--overwrite",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(std::fs::read(&small).unwrap(), before, "a new identifier");
    only_files(dir.path(), &["run.h5", "run.nwb", "small.nwb"]);
}

fn assert_refused(session: &Path, out: &Path, needles: &[&str]) {
    let o = run(&[
        "export",
        "nwb",
        session.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("rig: error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} in {err}");
    }
    assert!(!out.exists(), "nothing written for a refused input");
}

#[test]
fn a_bad_input_is_refused_with_one_line_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.nwb");

    let text = dir.path().join("notes.h5");
    std::fs::write(&text, "not a session").unwrap();
    assert_refused(&text, &out, &["notes.h5", "not an HDF5 file"]);
    assert_refused(&dir.path().join("missing.h5"), &out, &["missing.h5"]);

    // A session whose datasets disagree: the twin names an ROI the session does not have.
    let session = simulate(dir.path(), "s.h5", 1.0, 3);
    {
        let _g = edit_guard();
        let f = hdf5::File::open_rw(&session).unwrap();
        f.new_dataset_builder()
            .with_data(&[9999u32, 1])
            .create(layout::TWIN_ROI_ID.path)
            .unwrap();
    }
    assert_refused(&session, &out, &["s.h5", "twin/roi_id", "9999"]);
    only_files(dir.path(), &["notes.h5", "s.h5"]);

    // A session without traces or twin is valid input too. Recorded with deflate, its frames'
    // compressed chunks are copied as stored, and must read back as the same frames. (4 s:
    // nwbinspector takes a movie with fewer frames than rows or columns for a transposed one, a
    // CRITICAL; the export warns about it.)
    let cfg = write_config(
        dir.path(),
        "deflate.toml",
        &small_config_text().replace("compression = \"none\"", "compression = \"deflate\""),
    );
    let plain = dir.path().join("plain.h5");
    let o = run(&[
        "simulate",
        "--config",
        cfg.to_str().unwrap(),
        "--minutes",
        "0.0667",
        "--seed",
        "4",
        "--out",
        plain.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = run_json(&[
        "export",
        "nwb",
        plain.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(s["trace_rows"], 0);
    assert_eq!(s["twin_neurons"], 0);
    assert_eq!(s["movie_copy"], "deflated-chunks", "{s}");
    assert!(s["rois"].as_u64().unwrap() > 0);
    {
        let r = SessionReader::open(&plain).unwrap();
        let f = hdf5::File::open(&out).unwrap();
        let d = f.dataset("acquisition/TwoPhotonSeries/data").unwrap();
        let (n, h, w) = (r.meta().n_frames, r.meta().height, r.meta().width);
        assert_eq!(d.shape(), [n, h, w]);
        let all: Vec<u16> = d.read_raw().unwrap();
        let mut frame = vec![0u16; h * w];
        for i in 0..n {
            r.read_frame_into(i, &mut frame).unwrap();
            assert!(
                frame == all[i * h * w..(i + 1) * h * w],
                "frame {i} differs"
            );
        }
    }
    if let Some(py) = nwb_python() {
        check_with_pynwb(&py, &out, &s);
    }
}
