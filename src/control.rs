//! The daemon's local status/control endpoint: JSON lines over TCP, on a `tokio` runtime of its own.
//! It binds to 127.0.0.1 unless the config says otherwise (`control.listen`).
//!
//! Requests, one JSON object per line: `{"cmd":"status"}`, `{"cmd":"pause"}`, `{"cmd":"resume"}`,
//! `{"cmd":"stop"}`, `{"cmd":"set_objective","objective":"neuron","targets":[17]}`. Every request
//! gets one JSON line back with `"ok": true|false` (and `"error"` when false). A malformed line
//! (not JSON, not UTF-8, an unknown command, arguments the session cannot use) gets an error reply
//! and the connection stays open; the daemon never stops because of what a client sent.
//!
//! Inputs are bounded: a line is cut off at [`MAX_LINE`] bytes *while it is read* (the error is
//! answered at once, the rest of the line is read and thrown away up to its newline), a
//! connection that completes no line within `control.idle_timeout_s` is closed, a reply the
//! client does not read within that time closes the connection too, and at most
//! [`MAX_CONNECTIONS`] clients are served at once. So no client can grow the daemon's memory or
//! keep a task for ever.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::insilico::objective::{target_columns, Objective};
use crate::live::LiveCounters;

#[derive(Debug, Error)]
pub enum ControlError {
    // The io error is part of the message and deliberately not a `source`: a `{:#}` chain would
    // print it a second time.
    #[error("control endpoint: cannot listen on {addr}: {io}; {hint}")]
    Bind {
        addr: String,
        io: std::io::Error,
        hint: &'static str,
    },
    #[error("control endpoint: {0}")]
    Runtime(std::io::Error),
}

/// What to do about a failed bind, for the one line the operator reads.
fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "another program (a second `rig run`?) holds this port: stop it, or give this daemon \
             another address with --control ADDR (127.0.0.1:0 picks a free port) or control.listen \
             in the config"
        }
        _ => {
            "expected a local address like 127.0.0.1:7701: give it with --control ADDR or \
             control.listen in the config"
        }
    }
}

/// What the closed loop should optimise, as set by a client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectiveRequest {
    pub objective: String,
    #[serde(default)]
    pub targets: Vec<u32>,
}

/// State shared between the daemon's threads and the endpoint.
pub struct ControlState {
    pub stop: Arc<AtomicBool>,
    pub paused: Arc<AtomicBool>,
    pub live: Arc<LiveCounters>,
    pub started: Instant,
    pub session: String,
    pub objective: Mutex<Option<ObjectiveRequest>>,
    /// Set by SIGINT/SIGTERM (as opposed to a client's stop or the end of `--minutes`).
    pub signalled: AtomicBool,
    /// What `set_objective` is checked against, set once the session knows whether an in-silico
    /// search runs (and on which twin). Until then only the objective's name is checked.
    pub search: OnceLock<SearchTargets>,
}

/// What an objective set through the endpoint can target in this session.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchTargets {
    /// The in-silico worker searches this twin; targets are ROI ids of its output neurons.
    Twin { model: String, roi_ids: Vec<u32> },
    /// No search runs in this session; the reason, for the caller.
    Off(String),
}

#[derive(Deserialize)]
struct Request {
    cmd: String,
    #[serde(default)]
    objective: Option<String>,
    #[serde(default)]
    targets: Vec<u32>,
}

/// The status a client sees.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub ok: bool,
    pub state: String,
    pub session: String,
    pub elapsed_s: f64,
    pub frames_in: u64,
    pub frames_analysed: u64,
    pub frames_recorded: u64,
    pub paused: bool,
    pub objective: Option<ObjectiveRequest>,
    /// Frames the twin has been stepped on (0 without a twin in the loop).
    #[serde(default)]
    pub twin_frames: u64,
    /// Latest population fidelity of the twin (median windowed correlation), once the first
    /// window has filled.
    #[serde(default)]
    pub twin_fidelity: Option<f64>,
    #[serde(default)]
    pub twin_alarm: bool,
    /// In-silico plans taken up by the scheduler so far.
    #[serde(default)]
    pub plan_refreshes: u64,
}

impl ControlState {
    pub fn status(&self) -> Status {
        Status {
            ok: true,
            state: if self.stop.load(Ordering::Relaxed) {
                "stopping"
            } else {
                "running"
            }
            .into(),
            session: self.session.clone(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            frames_in: self.live.frames_in.load(Ordering::Relaxed),
            frames_analysed: self.live.frames_analysed.load(Ordering::Relaxed),
            frames_recorded: self.live.frames_recorded.load(Ordering::Relaxed),
            paused: self.paused.load(Ordering::Relaxed),
            objective: self.objective.lock().ok().and_then(|o| o.clone()),
            twin_frames: self.live.twin_frames.load(Ordering::Relaxed),
            twin_fidelity: match self.live.twin_fidelity_bits.load(Ordering::Relaxed) {
                0 => None,
                bits => Some(f64::from_bits(bits)),
            },
            twin_alarm: self.live.twin_alarm.load(Ordering::Relaxed),
            plan_refreshes: self.live.plan_refreshes.load(Ordering::Relaxed),
        }
    }

    /// Refuses an objective the in-silico worker would refuse (or that nothing would act on), so
    /// the caller hears it instead of only the daemon's log.
    pub fn check_objective(&self, req: &ObjectiveRequest) -> Result<(), String> {
        let objective = Objective::parse(&req.objective).map_err(|e| e.to_string())?;
        match self.search.get() {
            Some(SearchTargets::Off(why)) => Err(why.clone()),
            Some(SearchTargets::Twin { model, roi_ids }) => {
                target_columns(objective, &req.targets, roi_ids, model)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            // Still starting: the twin is not loaded yet, so only the name can be checked.
            None => Ok(()),
        }
    }

    /// Answers one request line.
    pub fn handle(&self, line: &str) -> String {
        let reply = match serde_json::from_str::<Request>(line) {
            Err(e) => serde_json::json!({"ok": false, "error": format!("not a request: {e}")}),
            Ok(r) => match r.cmd.as_str() {
                "status" => serde_json::to_value(self.status()).unwrap_or_default(),
                "pause" => {
                    self.paused.store(true, Ordering::Relaxed);
                    serde_json::json!({"ok": true, "paused": true})
                }
                "resume" => {
                    self.paused.store(false, Ordering::Relaxed);
                    serde_json::json!({"ok": true, "paused": false})
                }
                "stop" => {
                    self.stop.store(true, Ordering::Relaxed);
                    serde_json::json!({"ok": true, "state": "stopping"})
                }
                "set_objective" => match r.objective {
                    Some(o) if !o.is_empty() => {
                        let req = ObjectiveRequest {
                            objective: o,
                            targets: r.targets,
                        };
                        match self.check_objective(&req) {
                            Err(e) => serde_json::json!({"ok": false, "error": e}),
                            Ok(()) => {
                                if let Ok(mut slot) = self.objective.lock() {
                                    *slot = Some(req.clone());
                                }
                                serde_json::json!({"ok": true, "objective": req})
                            }
                        }
                    }
                    _ => {
                        serde_json::json!({"ok": false, "error": "set_objective needs \"objective\""})
                    }
                },
                other => serde_json::json!({
                    "ok": false,
                    "error": format!("unknown cmd {other:?}; expected status, pause, resume, stop, set_objective")
                }),
            },
        };
        reply.to_string()
    }
}

/// A running endpoint; dropping it shuts the runtime down.
pub struct ControlServer {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ControlServer {
    /// The endpoint's runtime, for other servers of the same session (the dashboard).
    pub fn runtime(&self) -> Option<tokio::runtime::Handle> {
        self.runtime.as_ref().map(|r| r.handle().clone())
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Longest request line accepted, in bytes (without its newline).
pub const MAX_LINE: usize = 64 * 1024;
/// Clients served at once; more are told so and closed (each may hold a line buffer).
pub const MAX_CONNECTIONS: usize = 64;

/// Binds `listen` and serves `state`; also turns SIGINT and SIGTERM into a clean stop. A
/// connection that completes no request line for `idle_timeout` is closed.
pub fn start(
    listen: &str,
    idle_timeout: Duration,
    state: Arc<ControlState>,
) -> Result<ControlServer, ControlError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("control")
        .enable_all()
        .build()
        .map_err(ControlError::Runtime)?;
    let std_listener = std::net::TcpListener::bind(listen).map_err(|io| ControlError::Bind {
        addr: listen.to_string(),
        hint: bind_hint(&io),
        io,
    })?;
    std_listener
        .set_nonblocking(true)
        .map_err(ControlError::Runtime)?;
    let addr = std_listener.local_addr().map_err(ControlError::Runtime)?;
    let st = state.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    runtime.spawn(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
            return;
        };
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!("control endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "control endpoint: {MAX_CONNECTIONS} clients connected; refusing another");
                let reply = error_line(&format!(
                    "{MAX_CONNECTIONS} control clients are connected; try again later"
                ));
                tokio::spawn(say_and_close(sock, reply));
                continue;
            };
            let st = st.clone();
            tokio::spawn(async move {
                serve(sock, peer, &st, idle_timeout).await;
                drop(permit);
            });
        }
    });
    // Signals are the process's (`interrupt`), so that a command running several sessions (rig
    // demo) stops as a whole; this endpoint turns the request into this session's clean stop.
    crate::interrupt::install();
    runtime.spawn(async move {
        let mut seen = 0;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
        loop {
            tick.tick().await;
            let n = crate::interrupt::count();
            if n == seen {
                continue;
            }
            if seen == 0 {
                // Stop first, then say so: nothing that can fail may stand before the stop.
                state.signalled.store(true, Ordering::Relaxed);
                state.stop.store(true, Ordering::Relaxed);
                tracing::info!(
                    "signal received: finishing the frame in hand, flushing, closing the session"
                );
            } else {
                tracing::warn!(
                    "already stopping: the session is being flushed and closed (SIGKILL would \
                     lose up to one flush interval)"
                );
            }
            seen = n;
        }
    });
    Ok(ControlServer {
        addr,
        runtime: Some(runtime),
    })
}

/// `{"ok":false,"error":...}` and its newline.
fn error_line(error: &str) -> String {
    format!("{}\n", serde_json::json!({"ok": false, "error": error}))
}

/// Writes `line` and closes, reading what the client still sends for a moment first, so the
/// close is not a reset that could take the line with it. Bounded in time.
async fn say_and_close(mut sock: tokio::net::TcpStream, line: String) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = sock.write_all(line.as_bytes()).await;
        let _ = sock.shutdown().await;
        let mut sink = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), sock.read(&mut sink)).await
        {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// One client: request lines in, one reply line out for each.
async fn serve(
    sock: tokio::net::TcpStream,
    peer: SocketAddr,
    st: &ControlState,
    idle_timeout: Duration,
) {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    // Grows to MAX_LINE at most (plus one read's worth), and is reused for every line.
    let mut line = Vec::new();
    loop {
        // One deadline per request line, covering the whole line: an idle client and one that
        // trickles a byte now and then are both closed when it passes.
        let deadline = tokio::time::Instant::now() + idle_timeout;
        let read =
            tokio::time::timeout_at(deadline, read_line_bounded(&mut r, &mut line, MAX_LINE)).await;
        let reply = match read {
            Err(_) => {
                tracing::info!(%peer, "control connection: no complete request line for {:.1} s; closing it", idle_timeout.as_secs_f64());
                let msg = error_line(&format!(
                    "no complete request line for {:.1} s (control.idle_timeout_s); closing the connection",
                    idle_timeout.as_secs_f64()
                ));
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), w.write_all(msg.as_bytes())).await;
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(%peer, "control connection: {e}");
                return;
            }
            Ok(Ok(LineRead::Eof)) => return,
            Ok(Ok(LineRead::TooLong { terminated })) => {
                tracing::warn!(%peer, "control connection: request line longer than {MAX_LINE} bytes refused");
                let msg = error_line(&format!(
                    "request line longer than {MAX_LINE} bytes; expected one JSON request per line"
                ));
                if !write_reply(&mut w, &msg, tokio::time::Instant::now() + idle_timeout).await {
                    return;
                }
                // The rest of the line is read and dropped (never kept), within the same
                // deadline; then the connection goes on with the next line.
                if !terminated {
                    match tokio::time::timeout_at(deadline, discard_line(&mut r)).await {
                        Ok(Ok(true)) => {}
                        Ok(Ok(false)) | Ok(Err(_)) => return,
                        Err(_) => {
                            tracing::info!(%peer, "control connection: over-long line still going after {:.1} s; closing it", idle_timeout.as_secs_f64());
                            return;
                        }
                    }
                }
                continue;
            }
            Ok(Ok(LineRead::Line)) => match std::str::from_utf8(&line) {
                Ok(text) => format!("{}\n", st.handle(text.trim())),
                Err(e) => {
                    tracing::warn!(%peer, "control connection: request line is not UTF-8");
                    error_line(&format!(
                        "request line is not UTF-8 (invalid byte at offset {}); expected one JSON request per line",
                        e.valid_up_to()
                    ))
                }
            },
        };
        if !write_reply(&mut w, &reply, tokio::time::Instant::now() + idle_timeout).await {
            return;
        }
    }
}

/// Writes a reply; `false` when the client is gone or does not read it in time.
async fn write_reply(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    reply: &str,
    deadline: tokio::time::Instant,
) -> bool {
    matches!(
        tokio::time::timeout_at(deadline, w.write_all(reply.as_bytes())).await,
        Ok(Ok(()))
    )
}

/// How reading one line ended.
#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// `line` holds the line (without its newline; a last line without one counts too).
    Line,
    /// The line passed the limit; `terminated`: its newline was already read.
    TooLong { terminated: bool },
    /// The client closed between lines.
    Eof,
}

/// Reads one line into `line`, never holding more than `max` bytes of it: the limit is checked
/// on every chunk, before it is kept (a line is only known to be too long while it is read).
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    line.clear();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if line.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (chunk, newline) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if line.len() + chunk > max {
            r.consume(chunk + newline as usize);
            return Ok(LineRead::TooLong {
                terminated: newline,
            });
        }
        line.extend_from_slice(&buf[..chunk]);
        r.consume(chunk + newline as usize);
        if newline {
            return Ok(LineRead::Line);
        }
    }
}

/// Reads and drops bytes up to and including the next newline; `false` at end of input.
async fn discard_line<R: AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<bool> {
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(false);
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Ok(true);
            }
            None => {
                let n = buf.len();
                r.consume(n);
            }
        }
    }
}

/// Sends one request to a running daemon and returns its reply line.
pub fn request(addr: &str, req: &serde_json::Value) -> std::io::Result<serde_json::Value> {
    use std::io::{BufRead, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    s.write_all(format!("{req}\n").as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ControlState {
        ControlState {
            stop: Arc::default(),
            paused: Arc::default(),
            live: Arc::default(),
            started: Instant::now(),
            session: "s.h5".into(),
            objective: Mutex::new(None),
            signalled: AtomicBool::new(false),
            search: OnceLock::new(),
        }
    }

    fn reply(st: &ControlState, line: &str) -> serde_json::Value {
        serde_json::from_str(&st.handle(line)).unwrap()
    }

    #[test]
    fn objectives_are_checked_before_they_are_taken() {
        let st = state();
        // Starting up: only the name can be checked.
        let r = reply(&st, r#"{"cmd":"set_objective","objective":"best"}"#);
        assert_eq!(r["ok"], false);
        assert!(r["error"].as_str().unwrap().contains("neuron"), "{r}");
        let _ = st.search.set(SearchTargets::Twin {
            model: "t.onnx".into(),
            roi_ids: vec![3, 5, 7],
        });
        let r = reply(
            &st,
            r#"{"cmd":"set_objective","objective":"neuron","targets":[99999]}"#,
        );
        assert_eq!(r["ok"], false);
        let e = r["error"].as_str().unwrap();
        assert!(e.contains("99999") && e.contains("3..=7"), "{e}");
        assert_eq!(
            *st.objective.lock().unwrap(),
            None,
            "a refused objective is not taken"
        );
        let r = reply(
            &st,
            r#"{"cmd":"set_objective","objective":"neuron","targets":[5]}"#,
        );
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(st.objective.lock().unwrap().as_ref().unwrap().targets, [5]);

        let off = state();
        let _ = off.search.set(SearchTargets::Off("no search here".into()));
        let r = reply(
            &off,
            r#"{"cmd":"set_objective","objective":"neuron","targets":[5]}"#,
        );
        assert_eq!(
            (r["ok"].clone(), r["error"].clone()),
            (false.into(), "no search here".into())
        );
    }

    fn read_all_lines(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, bool>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            // A tiny buffer, so lines span many reads.
            let mut r = BufReader::with_capacity(4, input);
            let mut line = Vec::new();
            let mut out = Vec::new();
            loop {
                match read_line_bounded(&mut r, &mut line, max).await.unwrap() {
                    LineRead::Eof => return out,
                    LineRead::Line => out.push(Ok(line.clone())),
                    LineRead::TooLong { terminated } => {
                        assert!(line.len() <= max, "never holds more than the limit");
                        out.push(Err(terminated));
                        if !terminated && !discard_line(&mut r).await.unwrap() {
                            return out;
                        }
                    }
                }
            }
        })
    }

    #[test]
    fn lines_are_cut_at_the_limit_while_they_are_read() {
        let got = read_all_lines(b"abc\n0123456789abc\nxy\n0123456789\nlast", 10);
        assert_eq!(
            got,
            vec![
                Ok(b"abc".to_vec()),
                Err(false),
                Ok(b"xy".to_vec()),
                Ok(b"0123456789".to_vec()),
                Ok(b"last".to_vec()),
            ]
        );
        // An over-long line that ends the input.
        assert_eq!(read_all_lines(b"0123456789abcdef", 10), vec![Err(false)]);
    }

    #[test]
    fn an_idle_client_is_told_and_closed() {
        use std::io::Read;
        let server = start("127.0.0.1:0", Duration::from_millis(200), Arc::new(state())).unwrap();
        let mut c = std::net::TcpStream::connect(server.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut said = String::new();
        c.read_to_string(&mut said).unwrap();
        let v: serde_json::Value = serde_json::from_str(said.trim()).unwrap();
        assert_eq!(v["ok"], false);
        assert!(
            v["error"].as_str().unwrap().contains("idle_timeout_s"),
            "{v}"
        );
    }

    #[test]
    fn bind_errors_say_what_to_change_once() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = start(&addr, Duration::from_secs(1), Arc::new(state()))
            .err()
            .unwrap();
        let text = e.to_string();
        assert!(text.contains(&addr) && text.contains("--control"), "{text}");
        assert!(
            std::error::Error::source(&e).is_none(),
            "the cause is in the message, once"
        );
        assert_eq!(text.matches("os error").count(), 1, "{text}");
    }
}
