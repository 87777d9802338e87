//! The twin runtime: parity with onnxruntime (committed fixtures from tools/make_fixtures.py),
//! explicit streaming state, batches, backends, adaptation and bad input.

mod common;

use std::path::{Path, PathBuf};

use common::{edit_guard, run, stderr, stdout};
use twinrig::config::Backend;
use twinrig::twin::onnx::{read_model, write_model};
use twinrig::twin::{Twin, TwinError, TwinState};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Fixture {
    steps: usize,
    kept: Vec<usize>,
    stim: Vec<f32>,
    beh: Vec<f32>,
    out: Vec<f32>,
    out_len: usize,
    abs_max: f32,
}

fn read_f32(p: &Path) -> Vec<f32> {
    std::fs::read(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn fixture(stem: &str) -> Fixture {
    let dir = root().join("tests/fixtures/twin");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap())
            .unwrap();
    let steps = info["steps"].as_u64().unwrap() as usize;
    let kept = info["kept_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let out_len = info["output_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .product();
    let stim = std::fs::read(dir.join(format!("{stem}.stimulus.u8")))
        .unwrap()
        .into_iter()
        .map(|v| v as f32)
        .collect();
    Fixture {
        steps,
        kept,
        stim,
        beh: read_f32(&dir.join(format!("{stem}.behavior.f32"))),
        out: read_f32(&dir.join(format!("{stem}.output.f32"))),
        out_len,
        abs_max: info["output_abs_max"].as_f64().unwrap() as f32,
    }
}

/// Steps `twin` through the fixture's clip; returns the max abs difference to onnxruntime.
fn parity(model: &str, stem: &str) -> (f32, f32) {
    parity_on(model, stem, Backend::Cpu)
}

fn parity_on(model: &str, stem: &str, backend: Backend) -> (f32, f32) {
    let fx = fixture(stem);
    let mut twin = Twin::load(&root().join(model), backend).unwrap();
    let c = twin.contract().clone();
    let (hw, k) = (c.stimulus_len(), c.n_behavior());
    assert_eq!(c.output_len(), fx.out_len);
    let mut st = twin.new_state();
    let mut out = vec![0f32; fx.out_len];
    let mut worst = 0f32;
    let mut compared = 0usize;
    let mut energy = 0f64;
    for t in 0..fx.steps {
        twin.step(
            &mut st,
            &fx.stim[t * hw..(t + 1) * hw],
            &fx.beh[t * k..(t + 1) * k],
            &mut out,
        )
        .unwrap();
        if let Some(i) = fx.kept.iter().position(|&s| s == t) {
            let want = &fx.out[i * fx.out_len..(i + 1) * fx.out_len];
            for (a, b) in out.iter().zip(want) {
                worst = worst.max((a - b).abs());
                energy += a.abs() as f64;
                compared += 1;
            }
        }
    }
    assert_eq!(compared, fx.kept.len() * fx.out_len);
    assert!(energy > 0.0, "tract output is all zeros");
    (worst, fx.abs_max)
}

#[test]
fn reference_core_matches_onnxruntime() {
    let (err, scale) = parity("onnx/reference_core.onnx", "reference_core");
    eprintln!("core: max abs error {err:.3e}, output scale {scale:.3e}");
    assert!(err <= 1e-4 * scale, "max abs error {err} vs scale {scale}");
}

#[test]
fn reference_twin_matches_onnxruntime() {
    let (err, scale) = parity("onnx/reference_twin.onnx", "reference_twin");
    eprintln!("twin: max abs error {err:.3e}, output scale {scale:.3e}");
    assert!(err <= 1e-4 * scale, "max abs error {err} vs scale {scale}");
}

/// The state in `state_out.*` is all there is: a run interrupted, its state saved as plain values
/// and restored, continues exactly; B sequences in one batch equal B separate runs; `run_clip`
/// equals stepping.
#[test]
fn state_is_explicit_and_batches_match_steps() {
    let fx = fixture("reference_twin");
    let mut twin = Twin::load(&root().join("onnx/reference_twin.onnx"), Backend::Cpu).unwrap();
    let c = twin.contract().clone();
    let (hw, k, n, t_n) = (c.stimulus_len(), c.n_behavior(), c.n_neurons, fx.steps);
    let mut whole = vec![0f32; t_n * n];
    twin.run_clip(&fx.stim, &fx.beh, &mut whole).unwrap();
    // Interrupted at the middle, state saved and restored.
    let mut st = twin.new_state();
    let mut out = vec![0f32; n];
    let half = t_n / 2;
    let mut split = vec![0f32; t_n * n];
    for t in 0..t_n {
        if t == half {
            let saved = st.values();
            st = TwinState::from_values(&twin, 1, &saved).unwrap();
        }
        twin.step(
            &mut st,
            &fx.stim[t * hw..(t + 1) * hw],
            &fx.beh[t * k..(t + 1) * k],
            &mut out,
        )
        .unwrap();
        split[t * n..(t + 1) * n].copy_from_slice(&out);
    }
    assert_eq!(whole, split);
    // A batch of 3: the clip, the clip shifted by 5 frames, and the clip again.
    let b = 3;
    let offsets = [0usize, 5, 0];
    let mut bs = twin.new_batch_state(b);
    let mut ob = vec![0f32; b * n];
    let mut shifted = vec![0f32; (t_n - 5) * n];
    twin.run_clip(&fx.stim[5 * hw..], &fx.beh[5 * k..], &mut shifted)
        .unwrap();
    for t in 0..t_n - 5 {
        let stim: Vec<f32> = offsets
            .iter()
            .flat_map(|o| fx.stim[(t + o) * hw..(t + o + 1) * hw].to_vec())
            .collect();
        let beh: Vec<f32> = offsets
            .iter()
            .flat_map(|o| fx.beh[(t + o) * k..(t + o + 1) * k].to_vec())
            .collect();
        twin.run_batch(&mut bs, &stim, &beh, &mut ob).unwrap();
        for (j, want) in [
            &whole[t * n..(t + 1) * n],
            &shifted[t * n..(t + 1) * n],
            &whole[t * n..(t + 1) * n],
        ]
        .iter()
        .enumerate()
        {
            let got = &ob[j * n..(j + 1) * n];
            let err = got
                .iter()
                .zip(want.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-5, "batch member {j} frame {t}: {err}");
        }
    }
}

#[test]
fn nan_input_is_a_clear_error() {
    let mut twin = Twin::load(&root().join("onnx/reference_twin.onnx"), Backend::Cpu).unwrap();
    let c = twin.contract().clone();
    let mut st = twin.new_state();
    let mut stim = vec![127.5f32; c.stimulus_len()];
    let mut out = vec![0f32; c.n_neurons];
    stim[100] = f32::NAN;
    let beh = vec![1.0f32; c.n_behavior()];
    let e = twin.step(&mut st, &stim, &beh, &mut out).unwrap_err();
    assert!(matches!(e, TwinError::NonFinite { index: 100, .. }), "{e}");
    assert!(e.to_string().contains("stimulus"), "{e}");
    stim[100] = 1.0;
    let mut beh = beh;
    beh[1] = f32::INFINITY;
    let e = twin.step(&mut st, &stim, &beh, &mut out).unwrap_err();
    assert!(e.to_string().contains("pupil_diameter"), "{e}");
    // Wrong lengths are errors too, not panics.
    let e = twin.step(&mut st, &stim[1..], &beh, &mut out).unwrap_err();
    assert!(e.to_string().contains("expected 2304 values"), "{e}");
}

#[test]
fn backends_cuda_fails_clearly_and_auto_falls_back() {
    let p = root().join("onnx/reference_core.onnx");
    let auto = Twin::load(&p, Backend::Auto).unwrap();
    if twinrig::twin::runtime::cuda_unavailable_reason().is_some() {
        assert_eq!(auto.device(), twinrig::twin::Device::Cpu);
        let e = Twin::load(&p, Backend::Cuda)
            .err()
            .expect("cuda must fail here");
        assert!(e.to_string().contains("backend `cuda` requested"), "{e}");
    } else {
        // With CUDA, auto picks it (parity is checked in cuda_matches_cpu_and_onnxruntime).
        assert_eq!(auto.device(), twinrig::twin::Device::Cuda);
    }
}

/// With CUDA present (a build with `--features cuda` on a machine with the driver), the twin and
/// the core on the device match onnxruntime as the CPU does, and step for step match the CPU.
/// Without CUDA it says so and checks nothing.
#[test]
fn cuda_matches_cpu_and_onnxruntime() {
    if let Some(why) = twinrig::twin::runtime::cuda_unavailable_reason() {
        eprintln!("SKIPPED the CUDA-vs-CPU parity test: {why}");
        return;
    }
    for (model, stem) in [
        ("onnx/reference_core.onnx", "reference_core"),
        ("onnx/reference_twin.onnx", "reference_twin"),
    ] {
        // Against onnxruntime: a GPU sums in another order, so ten times the CPU's tolerance.
        let (err, scale) = parity_on(model, stem, Backend::Cuda);
        eprintln!("{stem} on CUDA: max abs error {err:.3e} vs onnxruntime, scale {scale:.3e}");
        assert!(
            err <= 1e-3 * scale,
            "{stem}: max abs error {err} vs scale {scale}"
        );
        // Against the CPU backend, frame by frame through the fixture's clip (the recurrent
        // state carries any drift forward, so this also checks the state stays on course).
        let fx = fixture(stem);
        let mut cpu = Twin::load(&root().join(model), Backend::Cpu).unwrap();
        let mut gpu = Twin::load(&root().join(model), Backend::Cuda).unwrap();
        assert_eq!(gpu.device(), twinrig::twin::Device::Cuda);
        let (on_device, all) = gpu.placement();
        eprintln!("{stem}: {on_device} of {all} optimised nodes on the device");
        assert!(on_device > 0, "{stem}: nothing placed on the device");
        let c = cpu.contract().clone();
        let (hw, k, n) = (c.stimulus_len(), c.n_behavior(), c.output_len());
        let (mut sc, mut sg) = (cpu.new_state(), gpu.new_state());
        let (mut oc, mut og) = (vec![0f32; n], vec![0f32; n]);
        let mut worst = 0f32;
        for t in 0..fx.steps {
            let (stim, beh) = (&fx.stim[t * hw..(t + 1) * hw], &fx.beh[t * k..(t + 1) * k]);
            cpu.step(&mut sc, stim, beh, &mut oc).unwrap();
            gpu.step(&mut sg, stim, beh, &mut og).unwrap();
            for (a, b) in oc.iter().zip(&og) {
                worst = worst.max((a - b).abs());
            }
        }
        eprintln!("{stem}: CUDA vs CPU max abs difference {worst:.3e}");
        assert!(
            worst <= 1e-3 * fx.abs_max,
            "{stem}: CUDA vs CPU differ by {worst}"
        );
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn write_variant(
    dir: &Path,
    name: &str,
    f: impl FnOnce(&mut tract_onnx::pb::ModelProto),
) -> PathBuf {
    let mut m = read_model(&root().join("onnx/reference_twin.onnx")).unwrap();
    f(&mut m);
    let p = dir.join(name);
    write_model(&m, &p).unwrap();
    p
}

#[test]
fn bad_models_are_refused_with_every_mismatch() {
    let d = tmp();
    // Not an ONNX file.
    let junk = d.path().join("junk.onnx");
    std::fs::write(&junk, b"this is not a model\n").unwrap();
    let o = run(&["twin", "info", junk.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("not an ONNX model") && e.contains("junk.onnx"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
    // Wrong input name and rank, and a state without its output: all reported at once.
    let p = write_variant(d.path(), "wrong_io.onnx", |m| {
        let g = m.graph.as_mut().unwrap();
        for v in &mut g.input {
            if v.name == "behavior" {
                *v = twinrig::twin::onnx::value_info(
                    "behaviour",
                    1,
                    &[
                        twinrig::twin::onnx::Dim::Sym("batch".into()),
                        twinrig::twin::onnx::Dim::Fixed(2),
                    ],
                );
            }
            if v.name == "stimulus" {
                *v = twinrig::twin::onnx::value_info(
                    "stimulus",
                    1,
                    &[
                        twinrig::twin::onnx::Dim::Sym("batch".into()),
                        twinrig::twin::onnx::Dim::Fixed(36),
                        twinrig::twin::onnx::Dim::Fixed(64),
                    ],
                );
            }
        }
        g.output.retain(|o| o.name != "state_out.readout");
    });
    let o = run(&["twin", "info", p.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(
            "input `stimulus`: expected float32 [B, 1, 36, 64], found float32 [batch, 36, 64]"
        ),
        "{e}"
    );
    assert!(
        e.contains("input `behaviour`: not part of the contract"),
        "{e}"
    );
    assert!(e.contains("input `behavior`: missing"), "{e}");
    assert!(e.contains("no matching output `state_out.readout`"), "{e}");
    // Missing metadata.
    let p = write_variant(d.path(), "no_meta.onnx", |m| {
        m.metadata_props
            .retain(|e| e.key != "twin.roi_ids" && e.key != "twin.frame_rate_hz");
    });
    let o = run(&["twin", "info", p.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("missing key `twin.roi_ids`"), "{e}");
    assert!(e.contains("missing key `twin.frame_rate_hz`"), "{e}");
    assert!(e.contains("2 problem(s)"), "{e}");
}

fn small_session(dir: &Path, name: &str, seconds: f64, set: &str) -> PathBuf {
    let text = common::small_config_text().replace(
        "stimulus_set = \"mixed\"",
        &format!("stimulus_set = \"{set}\""),
    );
    let cfg = common::write_config(dir, &format!("{set}.toml"), &text);
    let out = dir.join(name);
    let o = run(&[
        "simulate",
        "--config",
        cfg.to_str().unwrap(),
        "--minutes",
        &format!("{}", seconds / 60.0),
        "--seed",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

/// Adapt the reference core to a small simulated mouse (natural clips), then predict a gratings
/// session of the same mouse; the written twin also loads through the contract check.
#[test]
fn adapt_then_predict_and_roi_map_errors() {
    let d = tmp();
    let train = small_session(d.path(), "train.h5", 100.0, "natural");
    let twin = d.path().join("twin.onnx");
    let core = root().join("onnx/reference_core.onnx");
    let o = run(&[
        "twin",
        "adapt",
        "--core",
        core.to_str().unwrap(),
        "--session",
        train.to_str().unwrap(),
        "--out",
        twin.to_str().unwrap(),
        "--report",
        d.path().join("adapt.json").to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rep: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rep["target_source"], "ground_truth/calcium");
    assert_eq!(rep["neurons"], 24);
    let heldout = rep["mean_heldout_corr"].as_f64().unwrap();
    assert!(heldout > 0.1, "held-out correlation {heldout}");
    // The default output stage is the GLM; its baseline, the linear readout, is reported beside
    // it, and every neuron's fitted indicator time constant lies in the allowed range.
    assert_eq!(rep["readout"], "glm");
    assert!(rep["median_linear_heldout_corr"]
        .as_f64()
        .unwrap()
        .is_finite());
    let full: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("adapt.json")).unwrap())
            .unwrap();
    let taus = full["chosen_tau_s"].as_array().unwrap();
    assert_eq!(taus.len(), 24);
    assert!(
        taus.iter()
            .all(|t| (0.199..=4.001).contains(&t.as_f64().unwrap())),
        "{taus:?}"
    );
    // Predict a gratings session of the same mouse (stimulus type not seen in the fit).
    let test = small_session(d.path(), "test.h5", 40.0, "gratings");
    let pred = d.path().join("pred.h5");
    let o = run(&[
        "twin",
        "predict",
        twin.to_str().unwrap(),
        "--session",
        test.to_str().unwrap(),
        "--out",
        pred.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let r = p["accuracy"]["mean_corr"].as_f64().unwrap();
    assert!(r > 0.1, "gratings correlation {r}");
    assert!(pred.exists());
    // A twin whose neuron-to-ROI map names ROIs the session lacks.
    let bad = d.path().join("bad_rois.onnx");
    let mut m = read_model(&twin).unwrap();
    for e in &mut m.metadata_props {
        if e.key == "twin.roi_ids" {
            let mut ids: Vec<String> = e.value.split(',').map(String::from).collect();
            ids[0] = "9000".into();
            ids[3] = "9003".into();
            e.value = ids.join(",");
        }
    }
    write_model(&m, &bad).unwrap();
    let o = run(&[
        "twin",
        "predict",
        bad.to_str().unwrap(),
        "--session",
        test.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("names 2 ROI id(s)") && e.contains("9000, 9003"),
        "{e}"
    );
    // A complete twin is not a core.
    let o = run(&[
        "twin",
        "adapt",
        "--core",
        twin.to_str().unwrap(),
        "--session",
        train.to_str().unwrap(),
        "--out",
        d.path().join("x.onnx").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("adapt needs a core"), "{}", stderr(&o));
}

#[test]
fn info_and_bench_report_json() {
    let m = root().join("onnx/reference_twin.onnx");
    let o = run(&["twin", "info", m.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["contract"]["kind"], "twin");
    // The op table predicts every node of the reference twin on the device; with CUDA present
    // the plan tract-cuda built is measured too (and without it there is no such figure).
    assert_eq!(v["predicted_cpu_fallback_nodes"], 0);
    let nodes: u64 = v["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["count"].as_u64().unwrap())
        .sum();
    assert_eq!(v["predicted_cuda_nodes"], nodes);
    if twinrig::twin::runtime::cuda_unavailable_reason().is_some() {
        assert!(v["cuda_placement"].is_null(), "{v}");
    } else {
        let p = v["cuda_placement"].as_array().unwrap();
        eprintln!("measured CUDA placement: {p:?}");
        assert!(p[0].as_u64().unwrap() > 0, "{v}");
    }
    let o = run(&[
        "twin",
        "bench",
        m.to_str().unwrap(),
        "--steps",
        "20",
        "--batch",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["step"][0]["mean_us"].as_f64().unwrap() > 0.0);
    assert!(v["batch_frames_per_s"].as_f64().unwrap() > 0.0);
    let o = run(&["twin", "bench", m.to_str().unwrap(), "--backend", "cuda"]);
    if twinrig::twin::runtime::cuda_unavailable_reason().is_some() {
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("backend `cuda` requested"),
            "{}",
            stderr(&o)
        );
    }
}

/// Extracted traces (`traces/dff`, columns in ROI table order) are preferred over ground truth,
/// and the report says which targets were used.
#[test]
fn adapt_prefers_extracted_traces() {
    let d = tmp();
    let s = small_session(d.path(), "traces.h5", 45.0, "natural");
    {
        let _g = edit_guard();
        let f = hdf5::File::open_rw(&s).unwrap();
        let ids: Vec<u32> = f.dataset("rois/ids").unwrap().read_raw().unwrap();
        let cal = f.dataset("ground_truth/calcium").unwrap();
        let shape = cal.shape();
        let (t, n) = (shape[0], shape[1]);
        let cal: Vec<f32> = cal.read_raw().unwrap();
        let gid: Vec<u32> = f
            .dataset("ground_truth/neurons/roi_id")
            .unwrap()
            .read_raw::<u32>()
            .unwrap();
        // A noisier copy of the true dF/F in ROI order, as an extractor would write it.
        let r = ids.len();
        let mut dff = vec![0f32; t * r];
        for (j, id) in ids.iter().enumerate() {
            let col = gid.iter().position(|g| g == id).unwrap();
            for i in 0..t {
                dff[i * r + j] = cal[i * n + col] + 0.01 * ((i * 7 + j) % 5) as f32;
            }
        }
        let arr = ndarray::Array2::from_shape_vec((t, r), dff).unwrap();
        f.create_group("traces")
            .unwrap()
            .new_dataset_builder()
            .with_data(&arr)
            .create("dff")
            .unwrap();
    }
    let out = d.path().join("t.onnx");
    let core = root().join("onnx/reference_core.onnx");
    let o = run(&[
        "twin",
        "adapt",
        "--core",
        core.to_str().unwrap(),
        "--session",
        s.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rep: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rep["target_source"], "traces/dff");
    // The targets were detrended for the fit, yet the twin predicts dF/F on the traces' own
    // scale: each neuron's mean prediction is near its mean measured dF/F (a predicted gain is a
    // ratio of such levels).
    let pred = d.path().join("p.h5");
    let o = run(&[
        "twin",
        "predict",
        out.to_str().unwrap(),
        "--session",
        s.to_str().unwrap(),
        "--out",
        pred.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p: Vec<f32> = hdf5::File::open(&pred)
        .unwrap()
        .dataset("predictions/response")
        .unwrap()
        .read_raw()
        .unwrap();
    let m: Vec<f32> = hdf5::File::open(&s)
        .unwrap()
        .dataset("traces/dff")
        .unwrap()
        .read_raw()
        .unwrap();
    let n = rep["neurons"].as_u64().unwrap() as usize;
    let r = m.len() / (p.len() / n);
    let t = p.len() / n;
    let mut off: Vec<f64> = (0..n)
        .map(|j| {
            let mp = (0..t).map(|i| p[i * n + j] as f64).sum::<f64>() / t as f64;
            let mm = (0..t).map(|i| m[i * r + j] as f64).sum::<f64>() / t as f64;
            (mp - mm).abs() / mm.abs().max(0.05)
        })
        .collect();
    off.sort_by(f64::total_cmp);
    assert!(
        off[n / 2] < 0.25,
        "median relative level error {}",
        off[n / 2]
    );
}

#[test]
fn the_foundation_scale_preset_builds_a_twin_that_steps() {
    let dir = tempfile::tempdir().unwrap();
    let build = |out: &Path| {
        let o = run(&[
            "twin",
            "build-core",
            "--preset",
            "foundation",
            "--neurons",
            "300",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    let out = dir.path().join("foundation.onnx");
    let o = build(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["neurons"], 300);
    assert_eq!(
        (v["height"].as_u64(), v["width"].as_u64()),
        (Some(144), Some(256))
    );
    // 1.5 M parameters of core and ConvLSTM, 64 read-out weights per neuron.
    let params = v["parameters"].as_u64().unwrap();
    assert!((1_400_000..1_700_000).contains(&params), "{params}");
    let mut twin = Twin::load(&out, Backend::Cpu).unwrap();
    let c = twin.contract().clone();
    assert_eq!(c.states.len(), 2);
    assert_eq!(c.states[0].shape, vec![128, 18, 32]);
    let mut st = twin.new_state();
    let mut resp = vec![0f32; 300];
    let stim: Vec<f32> = (0..c.stimulus_len()).map(|i| (i % 251) as f32).collect();
    for _ in 0..2 {
        twin.step(&mut st, &stim, &[0.0, 1.3, 0.0, 0.0], &mut resp)
            .unwrap();
    }
    assert!(resp.iter().all(|r| r.is_finite() && *r > 0.0), "exp output");
    // The recurrent state moved off rest.
    assert!(st.values()[0].iter().any(|v| *v != 0.0));
    // Same seed, same file.
    let again = dir.path().join("again.onnx");
    build(&again);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn check_backend_compares_frame_by_frame_and_names_a_missing_backend() {
    let m = root().join("onnx/reference_twin.onnx");
    let m = m.to_str().unwrap();
    // Two CPU threads against one: the same plan, so the same numbers.
    let o = run(&[
        "twin",
        "check-backend",
        m,
        "--backend",
        "cpu",
        "--threads",
        "2",
        "--steps",
        "30",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["pass"], true, "{v}");
    assert_eq!(v["steps"], 30);
    assert!(v["response_scale"].as_f64().unwrap() > 0.0, "{v}");
    if twinrig::twin::runtime::cuda_unavailable_reason().is_some() {
        let o = run(&["twin", "check-backend", m, "--backend", "cuda"]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("cuda"), "{}", stderr(&o));
    }
}

#[test]
fn evaluate_scores_each_stimulus_family_held_out_and_out_of_family() {
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let text = common::small_config_text();
    let natural = common::write_config(
        dir.path(),
        "natural.toml",
        &text.replace("stimulus_set = \"mixed\"", "stimulus_set = \"natural\""),
    );
    let mixed = common::write_config(dir.path(), "mixed.toml", &text);
    for (cfg, out, minutes) in [(&natural, "fit.h5", "1"), (&mixed, "test.h5", "1.5")] {
        let o = run(&[
            "simulate",
            "--config",
            cfg.to_str().unwrap(),
            "--minutes",
            minutes,
            "--out",
            &d(out),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = run(&[
        "twin",
        "adapt",
        "--core",
        root().join("onnx/reference_core.onnx").to_str().unwrap(),
        "--session",
        &d("fit.h5"),
        "--out",
        &d("twin.onnx"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let eval = |session: &str| -> serde_json::Value {
        let o = run(&[
            "twin",
            "evaluate",
            &d("twin.onnx"),
            "--session",
            &d(session),
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str(&stdout(&o)).unwrap()
    };
    let v = eval("test.h5");
    assert_eq!(v["held_out"], true, "{v}");
    assert_eq!(v["fit_families"], serde_json::json!(["natural"]), "{v}");
    let fam = |name: &str| -> serde_json::Value {
        v["families"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["family"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {v}"))
    };
    assert_eq!(fam("natural")["in_fit"], true);
    assert_eq!(
        fam("grating")["in_fit"],
        false,
        "gratings were not in the fit session"
    );
    let all = fam("all");
    assert!(all["repeated_clips"].as_u64().unwrap() >= 2, "{all}");
    assert!(all["median_ceiling"].as_f64().is_some(), "{all}");
    assert!(all["cc_norm_neurons"].as_u64().unwrap() > 0, "{all}");
    // The twin beats the shuffled-neuron baseline on a held-out session of its mouse.
    let (r, shuffled) = (
        all["median_r"].as_f64().unwrap(),
        all["shuffled_median_r"].as_f64().unwrap(),
    );
    assert!(r > shuffled, "median r {r} vs shuffled {shuffled}");
    // predict reports the same baseline beside its median.
    let o = run(&[
        "twin",
        "predict",
        &d("twin.onnx"),
        "--session",
        &d("test.h5"),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(p["shuffled_median_corr"].as_f64(), Some(shuffled), "{p}");
    // The fit session itself is called in sample.
    assert_eq!(eval("fit.h5")["held_out"], false);
    // Another mouse's session: a warning, and with --strict a refusal naming both mice.
    let line = text
        .lines()
        .find(|l| l.starts_with("mouse_id"))
        .expect("rig.mouse_id in the config")
        .to_string();
    let other = common::write_config(
        dir.path(),
        "other.toml",
        &text.replace(&line, "mouse_id = \"M-other\""),
    );
    let o = run(&[
        "simulate",
        "--config",
        other.to_str().unwrap(),
        "--minutes",
        "0.2",
        "--out",
        &d("other.h5"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let predict = |strict: bool| {
        let mut args = vec!["twin", "predict", d("twin.onnx").leak(), "--session"];
        args.push(d("other.h5").leak());
        if strict {
            args.push("--strict");
        }
        run(&args)
    };
    let o = predict(false);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("\"M-other\""), "{}", stderr(&o));
    let o = predict(true);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("fit to mouse") && e.contains("M-other") && e.contains("--strict"),
        "{e}"
    );
}
