//! The live dashboard in a real browser: `rig run` on the simulated rig with the reference twin,
//! headless Chromium driven over the DevTools protocol. The page must show live values that
//! change between two looks, draw every chart, and its pause/resume/stop buttons must reach the
//! daemon (checked through the control endpoint, not the page). A screenshot is left in
//! target/dashboard-screenshots/ for a person to look at. Needs Debian's chromium (`make deps`);
//! TWINRIG_NO_CHROMIUM=1 skips the browser.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use common::*;

/// One request to the control endpoint.
fn control(addr: &str, cmd: &str) -> Value {
    let mut s = TcpStream::connect(addr).unwrap();
    writeln!(s, "{}", json!({ "cmd": cmd })).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

/// Waits up to 10 s for the daemon at `ctl` to report `paused`; fails with `why` otherwise.
fn wait_paused(ctl: &str, paused: bool, why: &str) {
    let t0 = Instant::now();
    while control(ctl, "status")["paused"] != json!(paused) {
        assert!(t0.elapsed() < Duration::from_secs(10), "{why}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain HTTP GET: (status line, content type, body). Chromium's DevTools keep the connection
/// open, so the body is read by its length.
fn http_get(host: &str, path: &str) -> (String, String, Vec<u8>) {
    let s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(&s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let (mut length, mut kind) = (0, String::new());
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap();
            }
            if k.eq_ignore_ascii_case("content-type") {
                kind = v.trim().to_string();
            }
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).unwrap();
    (status.trim().to_string(), kind, body)
}

/// The DevTools protocol over one WebSocket: requests answered in order of their ids.
struct Devtools {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Devtools {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(tungstenite::Message::text(msg)).unwrap();
        loop {
            let m = self.ws.read().unwrap();
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or_default();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page: its value, or the exception it threw.
    fn try_eval(&mut self, expr: &str) -> Result<Value, Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        match r.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    /// Evaluates `expr` in the page and returns its value.
    fn eval(&mut self, expr: &str) -> Value {
        self.try_eval(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    /// Waits until `expr` is true. It may throw meanwhile (while a navigation replaces the
    /// document, `document.body` is null for a moment).
    fn wait_for(&mut self, expr: &str, what: &str, limit: Duration) {
        let t0 = Instant::now();
        loop {
            let r = self.try_eval(expr);
            if r == Ok(json!(true)) {
                return;
            }
            assert!(
                t0.elapsed() < limit,
                "the page never showed {what} (last: {r:?})"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A real mouse click at the centre of the element `selector`.
    fn click(&mut self, selector: &str) {
        let r = self.eval(&format!(
            "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (x, y) = (r[0].as_f64().unwrap(), r[1].as_f64().unwrap());
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }
}

/// A running `rig run` with a dashboard, both on free ports.
struct Daemon {
    child: Child,
    /// The control endpoint's address.
    ctl: String,
    /// The dashboard's host:port.
    host: String,
}

/// Starts `rig run ARGS --out OUT` with the control endpoint and the dashboard on free ports;
/// stdout is piped (for `--json`).
fn start(args: &[&str], out: &Path) -> Daemon {
    let mut child = rig()
        .arg("run")
        .args(args)
        .arg("--out")
        .arg(out)
        .args(["--control", "127.0.0.1:0", "--dashboard", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = wait_for_line(&mut child, "control on ");
    let host = line
        .split("dashboard http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or_else(|| panic!("no dashboard address in the start line: {line}"))
        .to_string();
    assert!(host.starts_with("127.0.0.1:"), "{line}");
    Daemon {
        child,
        ctl: control_addr(&line),
        host,
    }
}

fn browser(chromium: &Path, profile: &Path) -> (Child, Devtools) {
    let child = Command::new(chromium)
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args([
            "--remote-debugging-port=0",
            "--window-size=1500,1900",
            "about:blank",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let port_file = profile.join("DevToolsActivePort");
    let t0 = Instant::now();
    let port = loop {
        if let Some(p) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u16>().ok()))
        {
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "chromium did not open DevTools"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let host = format!("127.0.0.1:{port}");
    let targets: Value = serde_json::from_slice(&http_get(&host, "/json/list").2).unwrap();
    let page = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .expect("a page target");
    let ws_url = page["webSocketDebuggerUrl"].as_str().unwrap();
    let (ws, _) = tungstenite::connect(ws_url).expect("DevTools WebSocket");
    // A browser that stops answering fails the test instead of hanging it.
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    }
    (child, Devtools { ws, next: 0 })
}

/// Pixels of canvas `id` that are drawn (not transparent).
fn drawn(dt: &mut Devtools, id: &str) -> u64 {
    dt.eval(&format!(
        "(() => {{ const c = document.getElementById('{id}'); \
         const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
         let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }})()"
    ))
    .as_u64()
    .unwrap()
}

#[test]
fn the_dashboard_shows_the_live_loop_and_its_buttons_drive_the_daemon() {
    let Some(chromium) = chromium("the dashboard") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.h5");
    let Daemon {
        child: mut daemon,
        ctl,
        host,
    } = start(&["--minutes", "5", "--speed", "1", "--json"], &out);
    let url = format!("http://{host}/");

    let profile = tempfile::tempdir().unwrap();
    let (mut chrome, mut dt) = browser(&chromium, profile.path());
    dt.call("Page.navigate", json!({"url": url}));
    // The first look: live values, every ROI on the map.
    dt.wait_for(
        "Number(document.body.dataset.updates || 0) >= 2",
        "live updates",
        Duration::from_secs(60),
    );
    dt.wait_for(
        "document.querySelectorAll('#map path').length === 200",
        "the 200 ROIs of the simulated field on the map",
        Duration::from_secs(60),
    );
    let look = |dt: &mut Devtools| {
        dt.eval(
            "({frames: document.getElementById('frames-in').textContent, \
              twin: document.getElementById('twin-frames').textContent, \
              trials: document.getElementById('trials').textContent, \
              updates: Number(document.body.dataset.updates)})",
        )
    };
    let first = look(&mut dt);
    std::thread::sleep(Duration::from_secs(3));
    let second = look(&mut dt);
    assert_ne!(first["frames"], second["frames"], "{first} then {second}");
    assert_ne!(first["twin"], second["twin"], "{first} then {second}");
    assert!(
        second["updates"].as_u64() > first["updates"].as_u64(),
        "{first} then {second}"
    );
    // Every chart is drawn: traces of the default neurons, latency, stimulus, fidelity axes.
    dt.wait_for(
        "document.querySelectorAll('#map path[stroke^=\"#\"]').length === 200 && \
         document.getElementById('fidelity-now').textContent.includes('shuffled')",
        "ROIs coloured by fidelity and the shuffled baseline",
        Duration::from_secs(30),
    );
    for id in ["traces", "latency", "stimulus", "fidelity-chart"] {
        let n = drawn(&mut dt, id);
        assert!(n > 200, "canvas #{id} has only {n} drawn pixels");
    }
    // Following a neuron: a click on its outline adds it to the traces.
    let roi = dt.eval("document.querySelectorAll('#map path')[17].dataset.id");
    dt.click(&format!(
        "#map circle[data-id=\"{}\"]",
        roi.as_str().unwrap()
    ));
    dt.wait_for(
        &format!(
            "document.getElementById('chosen').textContent.includes('ROI {}')",
            roi.as_str().unwrap()
        ),
        "the clicked neuron among the chosen",
        Duration::from_secs(10),
    );

    // Pause from the page: the daemon says it is paused, and so does the page.
    dt.click("#pause");
    wait_paused(&ctl, true, "a pause click did not pause the daemon");
    dt.wait_for(
        "document.getElementById('state').textContent === 'paused'",
        "the paused state",
        Duration::from_secs(10),
    );
    let shot = dt.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(shots.join("dashboard.png"), &png).unwrap();
    assert!(png.len() > 20_000, "a {}-byte screenshot", png.len());

    dt.click("#resume");
    wait_paused(&ctl, false, "a resume click did not resume");
    // Stop from the page ends the session cleanly.
    dt.click("#stop");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = daemon.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "a stop click did not stop the session"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = chrome.kill();
    let _ = chrome.wait();
    assert!(status.success());
    let mut stdout = String::new();
    daemon
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["stopped_by"], "control", "{report}");
    assert_eq!(report["dashboard"].as_str(), Some(url.as_str()));
    assert_eq!(report["frames_lost"], 0);
}

#[test]
fn the_dashboard_refuses_requests_from_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.h5");
    let Daemon {
        child: mut daemon,
        ctl,
        host,
    } = start(&["--minutes", "2", "--speed", "1", "--no-twin"], &out);
    let request = |head: &str, body: &str| {
        let mut s = TcpStream::connect(&host).unwrap();
        write!(
            s,
            "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    };
    // DNS rebinding: another name for 127.0.0.1.
    let r = request(
        &format!("GET / HTTP/1.1\r\nHost: evil.example:{}", &host[10..]),
        "",
    );
    assert!(r.starts_with("HTTP/1.1 421"), "{r}");
    // A form post from another site (no JSON) and a JSON post naming another origin.
    let pause = r#"{"cmd":"pause"}"#;
    let r = request(
        &format!("POST /api/control HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain"),
        pause,
    );
    assert!(r.starts_with("HTTP/1.1 415"), "{r}");
    let r = request(
        &format!(
            "POST /api/control HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Origin: http://evil.example"
        ),
        pause,
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert_eq!(control(&ctl, "status")["paused"], json!(false));
    // What the control endpoint refuses, the dashboard refuses, with its reason.
    let r = request(
        &format!("POST /api/control HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"),
        r#"{"cmd":"set_objective","objective":"neuron","targets":[1]}"#,
    );
    assert!(r.starts_with("HTTP/1.1 422"), "{r}");
    assert!(r.contains("in-silico search"), "{r}");
    // Bad neuron lists are answered, not served.
    let r = request(
        &format!("GET /api/events?neurons=1,x HTTP/1.1\r\nHost: {host}"),
        "",
    );
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("ROI ids"),
        "{r}"
    );
    // The page's own request goes through.
    let r = request(
        &format!(
            "POST /api/control HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Origin: http://{host}"
        ),
        pause,
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(control(&ctl, "status")["paused"], json!(true));
    control(&ctl, "stop");
    assert!(daemon.wait().unwrap().success());
}

#[test]
fn a_taken_dashboard_port_refuses_the_run_before_the_session_exists() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.h5");
    let o = rig()
        .args(["run", "--minutes", "0.1", "--no-twin", "--out"])
        .arg(&out)
        .args(["--control", "127.0.0.1:0", "--dashboard", &addr])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("dashboard: cannot listen on") && err.contains("--no-dashboard"),
        "{err}"
    );
    assert!(!out.exists(), "the refused run left {}", out.display());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn the_plan_being_shown_is_on_the_dashboard_with_its_responses() {
    let dir = tempfile::tempdir().unwrap();
    let plan = reference_plan(dir.path(), "65", 48);
    let out = dir.path().join("s.h5");
    let Daemon {
        child: mut daemon,
        ctl,
        host,
    } = start(
        &[
            "--minutes",
            "2",
            "--speed",
            "1",
            "--plan",
            plan.to_str().unwrap(),
        ],
        &out,
    );
    // Wait until a plan stimulus has been shown and compared.
    let t0 = Instant::now();
    let rows = loop {
        let (status, _, body) = http_get(&host, "/api/snapshot?neurons=65");
        assert!(status.ends_with("200 OK"), "{status}");
        let snap: Value = serde_json::from_slice(&body).unwrap();
        let rows = snap["plan"].as_array().unwrap().clone();
        assert!(
            !rows.is_empty(),
            "the plan's stimuli are not listed: {snap}"
        );
        if rows
            .iter()
            .any(|r| r["trials"].as_u64() > Some(0) && r["control_of"].is_null())
        {
            assert_eq!(snap["traces"]["neurons"][0]["id"], 65);
            break rows;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "no plan trial compared: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // The stimuli are the plan's (goal 65) and its controls, each with its measured response.
    assert!(rows.iter().all(|r| r["goal"] == 65), "{rows:?}");
    assert!(rows.iter().any(|r| r["control_of"].is_number()), "{rows:?}");
    let shown = rows
        .iter()
        .find(|r| r["trials"].as_u64() > Some(0) && r["control_of"].is_null())
        .unwrap();
    assert!(
        shown["measured"].is_number() && shown["predicted"].is_number(),
        "{shown}"
    );
    // Each has a thumbnail: a PNG of the stimulus's size.
    for r in &rows {
        let (status, kind, png) = http_get(&host, &format!("/api/clip/{}", r["clip"]));
        assert!(status.ends_with("200 OK"), "{status}");
        assert_eq!(kind, "image/png");
        assert_eq!(&png[1..4], b"PNG");
        // IHDR: width then height, big-endian, at bytes 16..24.
        let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!((h, w), (36, 64));
    }
    let (status, _, _) = http_get(&host, "/api/clip/0");
    assert!(
        status.contains("404"),
        "a library clip is not a plan stimulus: {status}"
    );
    control(&ctl, "stop");
    assert!(daemon.wait().unwrap().success());
}
