//! `rig import tiff` on files written by tifffile (the TIFF library labs read ScanImage data
//! with) in ScanImage 2016b's layout: two channels interleaved, int16 pixels, settings in the
//! Software tag, timestamps in each image's description. A simulated session goes out as such a
//! recording and must come back frame for frame, then replay through extraction.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use twinrig::session::SessionReader;

fn python() -> Option<PathBuf> {
    python_with("h5py, tifffile", "TWINRIG_REQUIRE_H5PY")
}

fn frames(path: &Path) -> (Vec<u16>, Vec<f64>) {
    let f = hdf5::File::open(path).unwrap();
    let px = f
        .dataset("imaging/frames")
        .unwrap()
        .read_raw::<u16>()
        .unwrap();
    let t = f
        .dataset("imaging/timestamps")
        .unwrap()
        .read_raw::<f64>()
        .unwrap();
    (px, t)
}

/// Writes `session`'s movie as a ScanImage recording in `files` files, channel 1 = frames minus
/// `offset` (tests/fixtures/scanimage_tiff.py); returns what the script and tifffile report.
fn scanimage_files(
    py: &Path,
    session: &Path,
    prefix: &Path,
    files: usize,
    offset: i32,
) -> serde_json::Value {
    let o = Command::new(py)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/scanimage_tiff.py"
        ))
        .arg(session)
        .arg(prefix)
        .args([files.to_string(), offset.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

#[test]
fn a_scanimage_recording_comes_back_frame_for_frame_and_replays() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let session = simulate(dir.path(), "sim.h5", 8.0, 3);
    let prefix = dir.path().join("mouse1_run1");
    let written = scanimage_files(&py, &session, &prefix, 3, 50);
    let n = written["frames"].as_u64().unwrap();
    // tifffile reads the settings and the frame data the way `rig` must.
    assert_eq!(written["pages"].as_u64(), Some(2 * n));
    assert_eq!(written["scan_frame_rate"], 30.0);
    assert_eq!(written["dtype"], "int16");
    let files: Vec<String> = written["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert_eq!(files.len(), 3);

    let out = dir.path().join("imported.h5");
    let mut args = vec!["import", "tiff"];
    args.extend(files.iter().map(|s| s.as_str()));
    args.extend(["--offset", "50", "--out", out.to_str().unwrap(), "--json"]);
    let r = run_json(&args);
    assert_eq!(r["frames"].as_u64(), Some(n));
    assert_eq!(r["images"].as_u64(), Some(2 * n));
    assert_eq!(r["channel"], 1);
    assert_eq!(r["channels_saved"], serde_json::json!([1, 2]));
    assert_eq!(r["frame_rate_hz"], 30.0);
    assert_eq!(r["frame_rate_source"], "scanimage");
    assert_eq!(r["timestamps"], "scanimage");
    assert_eq!(r["start_time"], "2019-06-03T14:05:31.814");
    assert_eq!(r["clipped_pixels"], 0);

    // Channel 1 with the offset added back is the simulated movie, pixel for pixel, at the
    // times ScanImage stamped (written with 6 decimals).
    let (want, want_t) = frames(&session);
    let (got, got_t) = frames(&out);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "imported pixels differ from the recording");
    assert_eq!(got_t.len(), want_t.len());
    for (a, b) in got_t.iter().zip(&want_t) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    let meta = SessionReader::open(&out).unwrap().meta().clone();
    assert!(meta.complete);
    assert_eq!(meta.frame_rate_hz, 30.0);

    // The imported movie goes through extraction like a live one, with the session's masks.
    let rep = run_json(&[
        "replay",
        out.to_str().unwrap(),
        "--rois",
        session.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(rep["frames_in"].as_u64(), Some(n), "{rep}");
    assert_eq!(rep["frames_analysed"].as_u64(), Some(n), "{rep}");

    // Channel 2 (the negative) is all below zero: imported as zeros, counted, and said.
    let o = run(&[
        "import",
        "tiff",
        &files[0],
        "--channel",
        "2",
        "--out",
        dir.path().join("ch2.h5").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("below 0"), "{}", stdout(&o));
    assert!(stderr(&o).contains("--offset"), "{}", stderr(&o));
}

#[test]
fn bad_input_is_one_line_naming_the_file_and_leaves_no_session() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let session = simulate(dir.path(), "sim.h5", 1.0, 4);
    let prefix = dir.path().join("m");
    scanimage_files(&py, &session, &prefix, 1, 0);
    let tif = format!("{}_00001.tif", prefix.display());
    // A plain stack with no ScanImage settings (tifffile's default writer).
    let plain = dir.path().join("plain.tif");
    let o = Command::new(&py)
        .args([
            "-c",
            "import sys, numpy, tifffile; tifffile.imwrite(sys.argv[1], numpy.ones((5, 32, 32), numpy.uint16), photometric='minisblack')",
            plain.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let not_tiff = dir.path().join("notes.tif");
    std::fs::write(&not_tiff, "not an image").unwrap();

    let missing = dir.path().join("missing.tif");
    let out = dir.path().join("out.h5");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![&tif, "--channel", "3"], "channelSave"),
        (vec![&tif, "--plane", "1"], "--plane 1"),
        (vec![plain.to_str().unwrap()], "--frame-rate"),
        (vec![not_tiff.to_str().unwrap()], "not a TIFF"),
        (vec![&tif, plain.to_str().unwrap()], "expected 96x96"),
        (vec![missing.to_str().unwrap()], "cannot open"),
    ];
    for (files, says) in cases {
        let mut args = vec!["import", "tiff"];
        args.extend(files.iter().copied());
        args.extend(["--out", out.to_str().unwrap()]);
        let o = run(&args);
        assert!(!o.status.success(), "{args:?}");
        let e = stderr(&o);
        let line = e
            .lines()
            .find(|l| l.starts_with("rig: error"))
            .unwrap_or("");
        assert!(line.contains(says), "{args:?}: {e}");
        assert!(!e.contains("panicked"), "{e}");
        assert!(!out.exists(), "{args:?} left {}", out.display());
        let stray: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(stray.is_empty(), "{args:?} left {stray:?}");
    }
    // A plain stack imports once it is given its rate.
    let r = run_json(&[
        "import",
        "tiff",
        plain.to_str().unwrap(),
        "--frame-rate",
        "15",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r["frames"], 5);
    assert_eq!(r["scanimage"], serde_json::Value::Null);
    assert_eq!(r["frame_rate_source"], "--frame-rate");
    assert_eq!(r["timestamps"], "rate");
}
