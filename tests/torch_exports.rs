//! Twins exported by real PyTorch load unchanged and step like onnxruntime steps them.
//!
//! The fixtures (tests/fixtures/torch, manifest.json) were written by tools/make_torch_fixtures.py
//! with torch's two exporters and tools/export_torch_twin.py, at opsets 17-20, symbolic and fixed
//! batches, one with external weights; beside each, onnxruntime's responses to recorded inputs.
//! torch is not needed here: rig loads the files as they came out of the exporter.

mod common;

use std::path::{Path, PathBuf};

use common::{run, stderr, stdout};
use twinrig::config::Backend;
use twinrig::twin::Twin;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch")
}

fn read_f32(p: &Path) -> Vec<f32> {
    std::fs::read(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn every_torch_export_loads_unchanged_and_matches_onnxruntime() {
    let m = manifest();
    let fixtures = m["fixtures"].as_array().unwrap();
    // What the fixtures must cover, so that this test keeps meaning what it says.
    let has = |k: &str, v: serde_json::Value| fixtures.iter().any(|f| f[k] == v);
    for e in ["export_twin", "torchscript", "dynamo"] {
        assert!(
            has("exporter", e.into()),
            "no fixture from the {e} exporter"
        );
    }
    for o in 17..=20 {
        assert!(has("opset", o.into()), "no fixture at opset {o}");
    }
    for b in ["symbolic", "fixed"] {
        assert!(has("batch", b.into()), "no fixture with a {b} batch");
    }
    assert!(
        has("external_data", true.into()),
        "no external-data fixture"
    );
    for module in [
        "example",
        "gridsample",
        "gridsample_border",
        "moving_grid",
        "lstm_bn",
        "grucell",
    ] {
        assert!(has("module", module.into()), "no {module} fixture");
    }
    println!(
        "fixtures by torch {}, onnxruntime {}",
        m["torch"], m["onnxruntime"]
    );
    for f in fixtures {
        let file = f["file"].as_str().unwrap();
        let stem = file.trim_end_matches(".onnx");
        let path = dir().join(file);
        let mut twin = Twin::load(&path, Backend::Cpu).unwrap_or_else(|e| {
            panic!(
                "{file} ({} exporter, opset {}): {e}",
                f["exporter"], f["opset"]
            )
        });
        let c = twin.contract().clone();
        let (steps, n) = (
            f["steps"].as_u64().unwrap() as usize,
            f["neurons"].as_u64().unwrap() as usize,
        );
        assert_eq!(c.n_neurons, n, "{file}");
        let hw = c.stimulus_len();
        let k = c.n_behavior();
        let stim: Vec<f32> = std::fs::read(dir().join(format!("{stem}.stimulus.u8")))
            .unwrap()
            .into_iter()
            .map(f32::from)
            .collect();
        let beh = read_f32(&dir().join(format!("{stem}.behavior.f32")));
        let want = read_f32(&dir().join(format!("{stem}.response.f32")));
        assert_eq!(stim.len(), steps * hw, "{file}: stimulus");
        assert_eq!(beh.len(), steps * k, "{file}: behaviour");
        assert_eq!(want.len(), steps * n, "{file}: responses");
        let mut st = twin.new_state();
        let mut out = vec![0f32; n];
        let mut got = Vec::with_capacity(steps * n);
        for t in 0..steps {
            twin.step(
                &mut st,
                &stim[t * hw..(t + 1) * hw],
                &beh[t * k..(t + 1) * k],
                &mut out,
            )
            .unwrap_or_else(|e| panic!("{file}: step {t}: {e}"));
            got.extend_from_slice(&out);
        }
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-6);
        let worst = got
            .iter()
            .zip(&want)
            .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
        println!(
            "{file}: {steps} steps x {n} neurons, max |rig - onnxruntime| = {worst:.3e} (scale {scale:.3e})"
        );
        assert!(
            worst <= 1e-4 * scale,
            "{file}: rig and onnxruntime differ by {worst} (scale {scale})"
        );
        // A symbolic batch really is one: three candidates at once, each like batch 1.
        if f["batch"] == "symbolic" {
            let b = 3;
            let mut bs = twin.new_batch_state(b);
            let mut bout = vec![0f32; b * n];
            for t in 0..steps {
                let s: Vec<f32> = (0..b)
                    .flat_map(|_| stim[t * hw..(t + 1) * hw].iter().copied())
                    .collect();
                let be: Vec<f32> = (0..b)
                    .flat_map(|_| beh[t * k..(t + 1) * k].iter().copied())
                    .collect();
                twin.run_batch(&mut bs, &s, &be, &mut bout).unwrap();
            }
            let last = &got[(steps - 1) * n..];
            for row in bout.chunks_exact(n) {
                let d = row
                    .iter()
                    .zip(last)
                    .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                assert!(
                    d <= 1e-4 * scale,
                    "{file}: batch 3 row differs from batch 1 by {d}"
                );
            }
        }
    }
}

#[test]
fn twin_info_reads_a_torchscript_grid_sample_export() {
    // The TorchScript exporter writes squeeze(-1) after grid_sample as an If on the last size;
    // rig settles it under its fixed input shapes (src/twin/passes.rs).
    let p = dir().join("gridsample_torchscript_op17_symbolic.onnx");
    let o = run(&["twin", "info", p.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["contract"]["n_neurons"], 24, "{v}");
    let rewrites: Vec<&str> = v["rewrites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        rewrites
            .iter()
            .any(|r| r.starts_with("If ") && r.contains("branch inlined")),
        "{rewrites:?}"
    );
    // The read-out's constant grid (an initializer Expanded over the batch) became a gather.
    assert!(
        rewrites
            .iter()
            .any(|r| r.contains("constant grid of 24x1 points on a 18x32 map")),
        "{rewrites:?}"
    );
}

#[test]
fn only_a_constant_grid_is_rewritten() {
    let info = |f: &str| -> serde_json::Value {
        let o = run(&["twin", "info", dir().join(f).to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{f}: {}", stderr(&o));
        serde_json::from_str(&stdout(&o)).unwrap()
    };
    // Positions that move with behaviour stay a GridSample (and match onnxruntime above).
    let v = info("moving_grid_torchscript_op17_symbolic.onnx");
    assert_eq!(
        v["rewrites"].as_array().unwrap().len(),
        0,
        "{}",
        v["rewrites"]
    );
    // Border padding with align_corners, from the dynamo exporter: rewritten.
    let v = info("gridsample_border_dynamo_op18_symbolic.onnx");
    assert!(
        v["rewrites"][0].as_str().unwrap().contains("4-tap gather"),
        "{}",
        v["rewrites"]
    );
}

#[test]
fn a_size_the_file_leaves_symbolic_is_checked_against_what_tract_infers() {
    use twinrig::twin::onnx::{read_model, write_model};
    // The TorchScript export declares its response [batch, Softplusresponse_dim_1]; claiming 23
    // neurons in the metadata passes the declaration but not the inferred shape (24).
    let mut m = read_model(&dir().join("gridsample_torchscript_op17_symbolic.onnx")).unwrap();
    for p in m.metadata_props.iter_mut() {
        match p.key.as_str() {
            "twin.n_neurons" => p.value = "23".into(),
            "twin.roi_ids" => {
                p.value = (0..23).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
            }
            _ => {}
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("wrong_n.onnx");
    write_model(&m, &p).unwrap();
    let e = Twin::load(&p, Backend::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("wrong_n.onnx")
            && e.contains("output `response`: expected [1, 23]")
            && e.contains("tract infers [1, 24]"),
        "{e}"
    );
}

#[test]
fn bench_measures_a_fixed_batch_model_at_its_batch() {
    let p = dir().join("gridsample_torchscript_op18_fixed.onnx");
    let o = run(&[
        "twin",
        "bench",
        p.to_str().unwrap(),
        "--steps",
        "20",
        "--batch",
        "32",
        "--profile",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["batch"], 1, "{v}");
    assert!(
        v["batch_note"].as_str().unwrap().contains("fixed at 1"),
        "{v}"
    );
    assert!(v["step"][0]["mean_us"].as_f64().unwrap() > 0.0, "{v}");
    // The profile names tract's nodes, the rewritten read-out's gather among them, and its
    // shares add up to the whole step.
    let prof = v["profile"].as_array().unwrap();
    assert!(
        prof.iter()
            .any(|r| r["op"] == "Gather" && r["node"].as_str().unwrap().contains("as_gather")),
        "{prof:?}"
    );
    let share: f64 = prof.iter().map(|r| r["share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-6, "{share}");
}
