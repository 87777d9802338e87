//! Hostile and careless network clients against the real `rig` daemon (issue 13: the control
//! endpoint, the frame stream and busy ports). Every check is an account of what happened (replies,
//! counters, frames recorded, files left), never a timing; every socket is on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{
    control_addr, free_port, rig, run, small_config_text, stderr, stdout, stream_config,
    wait_for_line, write_config,
};
use twinrig::acquire::stream::{Clock, FrameHeader};
use twinrig::session::SessionReader;

const H: u32 = 96;
const W: u32 = 96;

/// A `Vm*` figure of `pid` from /proc, in kB.
fn vm_kb(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
}

fn status(addr: &str) -> serde_json::Value {
    twinrig::control::request(addr, &serde_json::json!({"cmd": "status"})).unwrap()
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    // Only so a broken receiver fails the test instead of hanging it.
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// One reply line from a JSON-lines connection.
fn json_line(r: &mut impl BufRead) -> serde_json::Value {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// The frame stream's one reply line (until its newline, so a later reset cannot hide it).
fn stream_reply(s: &TcpStream) -> String {
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

/// A frame message of the test shape, with a pattern payload.
fn frame_msg(index: u64, time: f64) -> Vec<u8> {
    let mut m = FrameHeader::frame(index, time, Clock::Rig, 0, H, W)
        .encode()
        .to_vec();
    m.extend((0..H * W).flat_map(|p| ((p + index as u32) as u16).to_le_bytes()));
    m
}

/// Stops a daemon through its endpoint and checks it ends cleanly with a complete file.
fn stop(mut child: Child, addr: &str, out: &Path) {
    assert!(run(&["status", "--addr", addr, "--stop"]).status.success());
    assert!(child.wait().unwrap().success());
    assert!(SessionReader::open(out).unwrap().meta().complete);
}

#[test]
fn control_endpoint_bounds_lines_answers_bad_input_and_checks_arguments() {
    let dir = tempfile::tempdir().unwrap();
    // A generous idle limit: the 200 MiB line below must get through on a loaded machine.
    let text = small_config_text()
        .replace("reference_frames = 200", "reference_frames = 20")
        .replace("idle_timeout_s = 30.0", "idle_timeout_s = 300.0");
    let cfg = write_config(dir.path(), "c.toml", &text);
    let out = dir.path().join("run.h5");
    let mut child = rig()
        .args(["run", "--config", cfg.to_str().unwrap(), "--speed", "1"])
        .args(["--control", "127.0.0.1:0", "--out", out.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = control_addr(&wait_for_line(&mut child, "control on "));
    let pid = child.id();
    // Once the twin steps, the endpoint knows which ROI ids a search may target.
    let deadline = Instant::now() + Duration::from_secs(180);
    while status(&addr)["twin_frames"].as_u64().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the twin never stepped");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Invalid UTF-8: the JSON error reply, and the connection stays open.
    let mut c = connect(&addr);
    let mut r = BufReader::new(c.try_clone().unwrap());
    c.write_all(b"\xff\xfe{\"cmd\":\"status\"}\n").unwrap();
    let v = json_line(&mut r);
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("not UTF-8"), "{v}");
    c.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    assert_eq!(json_line(&mut r)["ok"], true, "same connection, next line");

    // 200 MiB without a newline: cut off while it is read, so the daemon's peak RSS barely moves.
    let rss_before = vm_kb(pid, "VmRSS");
    let hwm_before = vm_kb(pid, "VmHWM");
    let mut big = connect(&addr);
    let mut big_r = BufReader::new(big.try_clone().unwrap());
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..200 {
        big.write_all(&chunk).unwrap();
    }
    let hwm_during = vm_kb(pid, "VmHWM");
    big.write_all(b"\n{\"cmd\":\"status\"}\n").unwrap();
    let v = json_line(&mut big_r);
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().unwrap().contains("longer than 65536"),
        "{v}"
    );
    assert_eq!(json_line(&mut big_r)["ok"], true, "the next line is served");
    let rss_after = vm_kb(pid, "VmRSS");
    let hwm_after = vm_kb(pid, "VmHWM");
    eprintln!(
        "200 MiB control line: VmRSS {rss_before} -> {rss_after} kB, VmHWM {hwm_before} -> \
         {hwm_during} (while sending) -> {hwm_after} kB"
    );
    assert!(
        hwm_after.saturating_sub(hwm_before) < 32 * 1024,
        "peak RSS grew from {hwm_before} to {hwm_after} kB"
    );
    // A fresh client is answered too.
    assert_eq!(status(&addr)["ok"], true);

    // Arguments are checked and the caller hears the error (exit code and message).
    let o = run(&["status", "--addr", &addr, "--targets", "99999"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--objective"), "{}", stderr(&o));
    let o = run(&[
        "status",
        "--addr",
        &addr,
        "--objective",
        "neuron",
        "--targets",
        "99999",
    ]);
    assert!(!o.status.success(), "{}", stdout(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("rig: error: daemon refused: --targets: ROI id(s) 99999"),
        "{err}"
    );
    let o = run(&[
        "status",
        "--addr",
        &addr,
        "--objective",
        "neuron",
        "--targets",
        "99999",
        "--json",
    ]);
    assert!(!o.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ok"], false);
    let o = run(&["status", "--addr", &addr, "--objective", "best"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown objective"), "{}", stderr(&o));
    assert!(
        status(&addr)["objective"].is_null(),
        "refused objectives are not taken"
    );
    stop(child, &addr, &out);
}

#[test]
fn idle_slow_and_foreign_stream_clients_neither_hold_nor_end_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let session = common::simulate(dir.path(), "s.h5", 3.0, 2);
    let port = free_port();
    let text = stream_config(&small_config_text(), "none", port)
        .replace(
            "stream_stall_timeout_s = 10.0",
            "stream_stall_timeout_s = 1.0",
        )
        .replace(
            "stream_first_header_timeout_s = 30.0",
            "stream_first_header_timeout_s = 2.0",
        );
    let cfg = write_config(dir.path(), "stream.toml", &text);
    let out = dir.path().join("live.h5");
    let mut daemon = rig()
        .args(["run", "--config", cfg.to_str().unwrap(), "--no-twin"])
        .args(["--control", "127.0.0.1:0", "--out", out.to_str().unwrap()])
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ctl = control_addr(&wait_for_line(&mut daemon, "control on "));
    let to = format!("127.0.0.1:{port}");

    // An idle client takes the one slot; a second client is refused (not left waiting); the idle
    // one is closed when its first-header time is up.
    let idle = connect(&to);
    let second = connect(&to);
    let said = stream_reply(&second);
    assert!(said.starts_with("ERR busy"), "{said:?}");
    let said = stream_reply(&idle);
    assert!(said.starts_with("ERR idle"), "{said:?}");

    // A slow client: a header byte every 0.4 s, faster than the 1 s stall limit between bytes
    // would notice, is still closed: a started header has 1 s in all.
    let slow = connect(&to);
    let mut w = slow.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let hdr = FrameHeader::frame(0, 0.0, Clock::Rig, 0, H, W).encode();
        let mut sent = 0;
        for b in hdr {
            if w.write_all(&[b]).is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(400));
        }
        sent
    });
    let said = stream_reply(&slow);
    assert!(said.starts_with("ERR stalled"), "{said:?}");
    drop(slow);
    let sent = trickle.join().unwrap();
    assert!(sent < 64, "the header never completed ({sent} bytes)");

    // Foreign end-of-stream messages: from a client whose only frame was refused (a NaN
    // timestamp keeps the connection), and from one that sent no frame. Neither ends the session.
    let mut foreign = connect(&to);
    foreign.write_all(&frame_msg(0, f64::NAN)).unwrap();
    foreign
        .write_all(&FrameHeader::end_of_stream(1).encode())
        .unwrap();
    let said = stream_reply(&foreign);
    assert!(said.starts_with("ERR ignored"), "{said:?}");
    let mut bare = connect(&to);
    bare.write_all(&FrameHeader::end_of_stream(0).encode())
        .unwrap();
    let said = stream_reply(&bare);
    assert!(said.starts_with("ERR ignored"), "{said:?}");
    let s = status(&ctl);
    assert_eq!(
        (s["state"].as_str(), s["frames_in"].as_u64()),
        (Some("running"), Some(0))
    );

    // The acquisition program gets the slot and every frame it sends is recorded; its own
    // end-of-stream ends the session.
    let sent = run(&[
        "stream",
        session.to_str().unwrap(),
        "--to",
        &to,
        "--max-speed",
    ]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert!(daemon.wait().unwrap().success());
    let mut report = String::new();
    daemon
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut report)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(v["frames_in"], 90);
    assert_eq!(v["frames_recorded"], 90);
    assert_eq!(v["frames_lost"], 0);
    assert_eq!(SessionReader::open(&out).unwrap().meta().n_frames, 90);
}

#[test]
fn stream_receiver_counts_idle_clients_and_ignored_end_of_stream() {
    let dir = tempfile::tempdir().unwrap();
    let session = common::simulate(dir.path(), "s.h5", 1.0, 3);
    let text = small_config_text().replace(
        "stream_first_header_timeout_s = 30.0",
        "stream_first_header_timeout_s = 1.0",
    );
    let cfg = write_config(dir.path(), "c.toml", &text);
    let out = dir.path().join("recv.h5");
    let mut recv = rig()
        .args(["stream-recv", "--config", cfg.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--out", out.to_str().unwrap()])
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut recv, "rig: listening on ");
    let to = line.trim_end().rsplit(' ').next().unwrap().to_string();

    let idle = connect(&to);
    assert!(stream_reply(&idle).starts_with("ERR idle"));
    let mut bare = connect(&to);
    bare.write_all(&FrameHeader::end_of_stream(0).encode())
        .unwrap();
    assert!(stream_reply(&bare).starts_with("ERR ignored"));
    let sent = run(&[
        "stream",
        session.to_str().unwrap(),
        "--to",
        &to,
        "--max-speed",
    ]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    let o = recv.wait_with_output().unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = &v["stream"];
    assert_eq!(v["frames_recorded"], 30);
    assert_eq!(s["idle_closed"], 1, "{s}");
    assert_eq!(s["end_of_stream_ignored"], 1, "{s}");
    assert_eq!(s["end_of_stream"], 1, "{s}");
    assert_eq!(s["clients_accepted"], 3, "{s}");
    assert_eq!(SessionReader::open(&out).unwrap().meta().n_frames, 30);
}

#[test]
fn a_busy_port_is_one_clear_line_and_leaves_no_session_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "c.toml", &small_config_text());
    let first_out = dir.path().join("first.h5");
    let mut first = rig()
        .args(["run", "--config", cfg.to_str().unwrap(), "--no-twin"])
        .args([
            "--control",
            "127.0.0.1:0",
            "--out",
            first_out.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = control_addr(&wait_for_line(&mut first, "control on "));

    // A second daemon on the same control port.
    let second_out = dir.path().join("second.h5");
    let o = run(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--no-twin",
        "--control",
        &addr,
        "--out",
        second_out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("rig: error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    let line = errors[0];
    assert!(line.contains(&addr) && line.contains("--control"), "{line}");
    assert_eq!(
        line.matches("os error").count(),
        1,
        "the cause once: {line}"
    );
    assert!(!second_out.exists(), "no session file left behind");

    // A busy frame-stream port: the line names the config key.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = stream_config(&small_config_text(), "none", port);
    let scfg = write_config(dir.path(), "s.toml", &text);
    let third_out = dir.path().join("third.h5");
    let o = run(&[
        "run",
        "--config",
        scfg.to_str().unwrap(),
        "--no-twin",
        "--control",
        "127.0.0.1:0",
        "--out",
        third_out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("rig: error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("imaging.listen"), "{}", errors[0]);
    assert_eq!(errors[0].matches("os error").count(), 1, "{}", errors[0]);
    assert!(!third_out.exists(), "no session file left behind");

    // Only the first session and the configs are in the folder.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["c.toml", "first.h5", "s.toml"]);
    stop(first, &addr, &first_out);
}
