//! `rig import rois` on NWB files written by pynwb the way suite2p's save_NWB writes them, and
//! tools/suite2p_rois.py on a plane folder laid out like suite2p's: the masks that come out are
//! the session's own, and a replay with them pairs every ROI with its neuron.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn rois(path: &Path) -> (Vec<u32>, Vec<u64>, Vec<u32>, Vec<f32>) {
    let f = hdf5::File::open(path).unwrap();
    let r = |n: &str| f.dataset(&format!("rois/{n}")).unwrap();
    (
        r("ids").read_raw().unwrap(),
        r("offsets").read_raw().unwrap(),
        r("pixels").read_raw().unwrap(),
        r("weights").read_raw().unwrap(),
    )
}

/// The ROIs of `t` whose index is in `keep`, as a table.
fn subset(
    t: &(Vec<u32>, Vec<u64>, Vec<u32>, Vec<f32>),
    keep: &[usize],
) -> (Vec<u32>, Vec<u64>, Vec<u32>, Vec<f32>) {
    let mut out = (Vec::new(), vec![0u64], Vec::new(), Vec::new());
    for &r in keep {
        let (a, b) = (t.1[r] as usize, t.1[r + 1] as usize);
        out.0.push(t.0[r]);
        out.2.extend_from_slice(&t.2[a..b]);
        out.3.extend_from_slice(&t.3[a..b]);
        out.1.push(out.2.len() as u64);
    }
    out
}

#[test]
fn suite2p_and_pynwb_masks_come_in_as_the_sessions_own() {
    let Some(py) = python_with("h5py, pynwb", "TWINRIG_REQUIRE_NWB") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let session = simulate(dir.path(), "sim.h5", 2.0, 5);
    let nwb = dir.path().join("seg.nwb");
    let s2p = dir.path().join("suite2p/plane0");
    let o = Command::new(&py)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/rois_nwb.py"
        ))
        .args([
            session.to_str().unwrap(),
            nwb.to_str().unwrap(),
            s2p.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let fx: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let n = fx["n"].as_u64().unwrap() as usize;
    let want = rois(&session);
    assert_eq!(want.0.len(), n);

    // Two PlaneSegmentations: the command asks which.
    let out = dir.path().join("masks.h5");
    let o = run(&[
        "import",
        "rois",
        nwb.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--plane-segmentation"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());

    // Pixel masks: every ROI, pixel and weight as the session has them; the frame size from the
    // TwoPhotonSeries.
    let r = run_json(&[
        "import",
        "rois",
        nwb.to_str().unwrap(),
        "--plane-segmentation",
        "PlaneSegmentation",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r["mask_kind"], "pixel_mask");
    assert_eq!(r["rois"].as_u64(), Some(n as u64));
    assert_eq!(r["size_from"], "/acquisition/TwoPhotonSeries/data");
    assert!(rois(&out) == want, "pixel masks differ from the session's");
    let rep = run_json(&[
        "replay",
        session.to_str().unwrap(),
        "--rois",
        out.to_str().unwrap(),
        "--json",
    ]);
    let acc = &rep["accuracy"];
    assert_eq!(acc["paired_by"], "overlap", "{acc}");
    assert_eq!(acc["rois_scored"].as_u64(), Some(n as u64), "{acc}");

    // `rig export nwb` writes masks that come back as they were.
    let exported = dir.path().join("export.nwb");
    let o = run(&[
        "export",
        "nwb",
        session.to_str().unwrap(),
        "--no-frames",
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let back = dir.path().join("back.h5");
    let r = run_json(&[
        "import",
        "rois",
        exported.to_str().unwrap(),
        "--size",
        &format!("{}x{}", r["height"], r["width"]),
        "--out",
        back.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r["rois"].as_u64(), Some(n as u64));
    assert!(
        rois(&back) == want,
        "an exported session's masks differ after import"
    );

    // --cells-only and --min-probability keep what the iscell column says.
    let is_cell: Vec<f64> = fx["is_cell"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let prob: Vec<f64> = fx["prob"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let cells = dir.path().join("cells.h5");
    let r = run_json(&[
        "import",
        "rois",
        nwb.to_str().unwrap(),
        "--plane-segmentation",
        "PlaneSegmentation",
        "--cells-only",
        "--min-probability",
        "0.3",
        "--out",
        cells.to_str().unwrap(),
        "--json",
    ]);
    let keep: Vec<usize> = (0..n)
        .filter(|&i| is_cell[i] >= 0.5 && prob[i] >= 0.3)
        .collect();
    assert!(!keep.is_empty() && keep.len() < n);
    assert_eq!(r["rois"].as_u64(), Some(keep.len() as u64));
    assert_eq!(
        r["dropped_not_cell"].as_u64(),
        Some((n - keep.len()) as u64)
    );
    assert!(rois(&cells) == subset(&want, &keep));

    // Image masks: the same first five ROIs; the frame size from the masks themselves.
    let five = dir.path().join("five.h5");
    let r = run_json(&[
        "import",
        "rois",
        nwb.to_str().unwrap(),
        "--plane-segmentation",
        "ImageMasks",
        "--out",
        five.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r["mask_kind"], "image_mask");
    assert_eq!(r["size_from"], "image_mask");
    assert!(rois(&five) == subset(&want, &[0, 1, 2, 3, 4]));

    // A suite2p plane folder goes through tools/suite2p_rois.py (stat.npy is a pickle); rig
    // says so.
    let o = run(&[
        "import",
        "rois",
        s2p.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("tools/suite2p_rois.py"),
        "{}",
        stderr(&o)
    );
    let from_s2p = dir.path().join("s2p.h5");
    let o = Command::new(&py)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tools/suite2p_rois.py"
        ))
        .args([
            s2p.to_str().unwrap(),
            "--out",
            from_s2p.to_str().unwrap(),
            "--cells-only",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let got = rois(&from_s2p);
    let cells: Vec<usize> = (0..n).filter(|&i| is_cell[i] >= 0.5).collect();
    let mut expect = subset(&want, &cells);
    // suite2p's ROI ids are its row numbers.
    expect.0 = cells.iter().map(|&i| i as u32).collect();
    assert!(got == expect, "suite2p masks differ");
    let rep = run_json(&[
        "replay",
        session.to_str().unwrap(),
        "--rois",
        from_s2p.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        rep["accuracy"]["rois_scored"].as_u64(),
        Some(cells.len() as u64)
    );
}

#[test]
fn files_that_are_not_segmentations_get_one_line_and_no_mask_file() {
    let dir = tempfile::tempdir().unwrap();
    let session = simulate(dir.path(), "sim.h5", 1.0, 6);
    let out = dir.path().join("m.h5");
    let text = dir.path().join("notes.nwb");
    std::fs::write(&text, "not hdf5").unwrap();
    for (file, says) in [
        (session.to_str().unwrap(), "not an NWB file"),
        (text.to_str().unwrap(), "cannot open as HDF5"),
        (dir.path().to_str().unwrap(), "expected an NWB file"),
    ] {
        let o = run(&["import", "rois", file, "--out", out.to_str().unwrap()]);
        assert!(!o.status.success(), "{file}");
        let e = stderr(&o);
        assert!(e.contains(says) && e.contains(file), "{e}");
        assert!(!out.exists());
    }
}
