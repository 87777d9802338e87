//! `rig validate` end to end: the real binary against the simulated board over a pty, and the
//! failures a rig technician must see (wrong board, missing port).

mod common;

use std::sync::{Mutex, MutexGuard};

use common::{run, small_config_text, stderr, stdout, write_config};

/// The runs measure timing; one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn config(dir: &std::path::Path, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let out = dir.join("sessions");
    let text = small_config_text().replace(
        "out_dir = \"sessions\"",
        &format!("out_dir = \"{}\"", out.display()),
    );
    write_config(dir, "rig.toml", &edit(text))
}

#[test]
fn validate_passes_on_the_simulated_rig_and_writes_its_report() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), |t| t);
    let report = dir.path().join("out/report.json");
    let o = run(&[
        "validate",
        "--config",
        cfg.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--disk-mb",
        "8",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    for name in [
        "port opens",
        "identity and firmware",
        "register round trip",
        "clock drift and offset",
        "frame clock",
        "photodiode flips",
        "encoder",
        "disk throughput",
        "disk free space",
        "ring and extraction headroom",
    ] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{out}"));
        assert!(line.contains(" pass "), "{line}");
    }
    assert!(out.contains("WHO_AM_I 2176"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("twin load and step latency") && l.contains("pass")),
        "{out}"
    );
    assert!(
        out.contains("PASS: 11 checks passed, 0 failed, 0 skipped"),
        "{out}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["simulated"], true);
    let checks = json["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 11);
    let frame = checks.iter().find(|c| c["name"] == "frame clock").unwrap();
    let rate = frame["values"]["rate_hz"].as_f64().unwrap();
    assert!((rate - 30.0).abs() < 0.1, "{rate}");
    let rt = checks
        .iter()
        .find(|c| c["name"] == "register round trip")
        .unwrap();
    assert!(rt["values"]["p50_us"].as_f64().unwrap() > 0.0);
    let twin = checks
        .iter()
        .find(|c| c["name"] == "twin load and step latency");
    assert_eq!(twin.unwrap()["status"], "pass");
}

#[test]
fn json_output_is_the_report() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), |t| t);
    let o = run(&[
        "validate",
        "--config",
        cfg.to_str().unwrap(),
        "--json",
        "--disk-mb",
        "4",
        "--listen-s",
        "1",
    ]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&o))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&o), stderr(&o)));
    assert_eq!(json["ok"], o.status.success());
    assert!(json["checks"].as_array().unwrap().len() == 11);
}

#[test]
fn wrong_who_am_i_fails_with_the_reason() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), |t| {
        t.replace("who_am_i = 2176 ", "who_am_i = 1216 ")
    });
    let o = run(&[
        "validate",
        "--config",
        cfg.to_str().unwrap(),
        "--disk-mb",
        "4",
    ]);
    assert!(!o.status.success());
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(
        out.contains("identity and firmware") && out.contains("FAIL"),
        "{out}"
    );
    assert!(
        err.contains("WHO_AM_I 2176 (twinrig sync board)")
            && err.contains("expected 1216 (Harp Behavior)"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_port_fails_with_the_reason() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), |t| {
        t.replace("port = \"sim\"", "port = \"/dev/does-not-exist\"")
    });
    let o = run(&[
        "validate",
        "--config",
        cfg.to_str().unwrap(),
        "--disk-mb",
        "4",
    ]);
    assert!(!o.status.success());
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(out.contains("port opens") && out.contains("FAIL"), "{out}");
    assert!(
        err.contains("cannot open /dev/does-not-exist") && err.contains("No such file"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
