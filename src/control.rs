//! The daemon's local status/control endpoint: JSON lines over TCP, on a `tokio` runtime of its own.
//! It binds to 127.0.0.1 unless the config says otherwise (`control.listen`).
//!
//! Requests, one JSON object per line: `{"cmd":"status"}`, `{"cmd":"pause"}`, `{"cmd":"resume"}`,
//! `{"cmd":"stop"}`, `{"cmd":"set_objective","objective":"single","targets":[17]}`. Every request
//! gets one JSON line back with `"ok": true|false`. A malformed line gets an error reply and the
//! connection stays open; the daemon never stops because of what a client sent.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::pipeline::LiveCounters;

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("control endpoint: cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("control endpoint: {0}")]
    Runtime(std::io::Error),
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
                        if let Ok(mut slot) = self.objective.lock() {
                            *slot = Some(req.clone());
                        }
                        serde_json::json!({"ok": true, "objective": req})
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

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// Binds `listen` and serves `state`; also turns SIGINT and SIGTERM into a clean stop.
pub fn start(listen: &str, state: Arc<ControlState>) -> Result<ControlServer, ControlError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("control")
        .enable_all()
        .build()
        .map_err(ControlError::Runtime)?;
    let std_listener =
        std::net::TcpListener::bind(listen).map_err(|source| ControlError::Bind {
            addr: listen.to_string(),
            source,
        })?;
    std_listener
        .set_nonblocking(true)
        .map_err(ControlError::Runtime)?;
    let addr = std_listener.local_addr().map_err(ControlError::Runtime)?;
    let st = state.clone();
    runtime.spawn(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
            return;
        };
        loop {
            let Ok((sock, peer)) = listener.accept().await else {
                continue;
            };
            let st = st.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                loop {
                    let line = match lines.next_line().await {
                        Ok(Some(l)) => l,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(%peer, "control connection: {e}");
                            break;
                        }
                    };
                    let reply = if line.len() > MAX_LINE {
                        serde_json::json!({"ok": false, "error": "request line too long"})
                            .to_string()
                    } else {
                        st.handle(line.trim())
                    };
                    if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
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
                tracing::info!(
                    "signal received: finishing the frame in hand, flushing, closing the session"
                );
                state.signalled.store(true, Ordering::Relaxed);
                state.stop.store(true, Ordering::Relaxed);
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
