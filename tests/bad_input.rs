//! Bad files and bad configs: one clear line naming what is wrong, a non-zero exit, never a panic.

mod common;

use common::*;
use std::path::Path;

fn assert_refused(args: &[&str], needle: &str) {
    let o = run(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "expected failure for {args:?}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(lines[0].contains(needle), "expected {needle:?} in: {err}");
}

fn inspect(p: &Path) -> Vec<String> {
    vec!["inspect".into(), p.to_str().unwrap().into()]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

#[test]
fn not_hdf5() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.h5");
    std::fs::write(&p, "these are lab notes, not a session\n").unwrap();
    assert_refused(&args(&inspect(&p)), "not an HDF5 file");
}

#[test]
fn missing_file() {
    assert_refused(&["inspect", "/nonexistent/session.h5"], "no such file");
}

#[test]
fn truncated_session() {
    let dir = tempfile::tempdir().unwrap();
    let p = simulate(dir.path(), "s.h5", 1.0, 1);
    let bytes = std::fs::read(&p).unwrap();
    let t = dir.path().join("truncated.h5");
    std::fs::write(&t, &bytes[..bytes.len() / 2]).unwrap();
    assert_refused(&args(&inspect(&t)), "truncated");
}

#[test]
fn hdf5_but_not_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("other.h5");
    let g = edit_guard();
    let f = hdf5::File::create(&p).unwrap();
    f.new_dataset_builder()
        .with_data(&[1.0f32, 2.0])
        .create("x")
        .unwrap();
    drop(f);
    drop(g);
    assert_refused(&args(&inspect(&p)), "not a twinrig session");
}

#[test]
fn missing_dataset_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = simulate(dir.path(), "s.h5", 1.0, 1);
    {
        let _g = edit_guard();
        hdf5::File::open_rw(&p)
            .unwrap()
            .unlink("behavior/running_speed")
            .unwrap();
    }
    assert_refused(
        &args(&inspect(&p)),
        "missing dataset `behavior/running_speed`",
    );
}

#[test]
fn wrong_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = simulate(dir.path(), "s.h5", 1.0, 1);
    let g = edit_guard();
    let f = hdf5::File::open_rw(&p).unwrap();
    f.unlink("imaging/timestamps").unwrap();
    f.new_dataset_builder()
        .with_data(&[0i32; 30])
        .create("imaging/timestamps")
        .unwrap();
    drop(f);
    drop(g);
    assert_refused(&args(&inspect(&p)), "`imaging/timestamps` has type");
}

#[test]
fn wrong_frame_shape_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = simulate(dir.path(), "s.h5", 1.0, 1);
    let g = edit_guard();
    let f = hdf5::File::open_rw(&p).unwrap();
    f.attr("frame_width")
        .unwrap()
        .write_scalar(&100u32)
        .unwrap();
    drop(f);
    drop(g);
    assert_refused(&args(&inspect(&p)), "`imaging/frames` has shape");
}

#[test]
fn newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = simulate(dir.path(), "s.h5", 1.0, 1);
    let g = edit_guard();
    let f = hdf5::File::open_rw(&p).unwrap();
    f.attr("format_version")
        .unwrap()
        .write_scalar(&7u32)
        .unwrap();
    drop(f);
    drop(g);
    assert_refused(&args(&inspect(&p)), "version 7 is newer");
}

#[test]
fn roi_outside_frame_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = simulate(dir.path(), "s.h5", 1.0, 1);
    let g = edit_guard();
    let f = hdf5::File::open_rw(&p).unwrap();
    let ds = f.dataset("rois/pixels").unwrap();
    let mut px: Vec<u32> = ds.read_raw().unwrap();
    px[3] = 96 * 96 + 5;
    ds.write_raw(&px).unwrap();
    drop(f);
    drop(g);
    let r = twinrig::session::SessionReader::open(&p).unwrap();
    let e = r.rois().unwrap_err().to_string();
    assert!(e.contains("outside a 96x96 frame"), "{e}");
}

#[test]
fn config_with_unknown_key_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = small_config_text().replace("[storage]", "[storage]\ncompresion = \"deflate\"");
    let cfg = write_config(dir.path(), "typo.toml", &text);
    let out = dir.path().join("o.h5");
    assert_refused(
        &[
            "simulate",
            "--config",
            cfg.to_str().unwrap(),
            "--minutes",
            "0.01",
            "--out",
            out.to_str().unwrap(),
        ],
        "compresion",
    );
    assert!(!out.exists(), "nothing is written for a bad config");
}

#[test]
fn config_out_of_range_names_key_and_range() {
    let dir = tempfile::tempdir().unwrap();
    let text = small_config_text().replace(
        "frame_rate_hz = 30.0          # volumes",
        "frame_rate_hz = 0.0 # volumes",
    );
    let cfg = write_config(dir.path(), "range.toml", &text);
    let out = dir.path().join("o.h5");
    assert_refused(
        &[
            "simulate",
            "--config",
            cfg.to_str().unwrap(),
            "--minutes",
            "0.01",
            "--out",
            out.to_str().unwrap(),
        ],
        "imaging.frame_rate_hz",
    );
}

#[test]
fn config_wrong_type_names_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = small_config_text().replace("backend = \"auto\"", "backend = \"gpu\"");
    let cfg = write_config(dir.path(), "enum.toml", &text);
    let out = dir.path().join("o.h5");
    assert_refused(
        &[
            "simulate",
            "--config",
            cfg.to_str().unwrap(),
            "--minutes",
            "0.01",
            "--out",
            out.to_str().unwrap(),
        ],
        "gpu",
    );
}
