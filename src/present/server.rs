//! The presenter's protocol server: one client (the daemon) at a time, over TCP or a Unix socket.
//!
//! Threads: an accept loop; per connection a reader (parses requests, sends [`Command`]s to the
//! flip loop, answers clock probes) and a writer (the only thread that writes to the socket: flip
//! reports, acknowledgements, errors). A malformed header, a bad hello or a line over the limit is
//! answered with a fatal error and the connection is closed; the window and the flip loop carry on
//! (gray) and the next client is accepted. A second client while one is connected is refused.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, Receiver, RecvTimeoutError, Sender};
use tracing::{info, warn};

use super::core::{Clip, Command, Presenter};
use super::protocol::{
    read_line, upload_size, write_json, Conn, Event, Hello, Listener, PresenterInfo, ProtocolError,
    Request, MAGIC, VERSION,
};
use super::render::{HeadlessSurface, RenderError};
use super::screen::CpuScreen;
use crate::config::{Corner, RigConfig};

/// Seconds a new connection has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new client waits for the previous one to finish closing before it is refused.
const BUSY_WAIT: Duration = Duration::from_millis(500);
/// Flip reports and answers queued for the client.
const EVENT_QUEUE: usize = 4096;

/// What the presenter says about itself.
pub fn presenter_info(cfg: &RigConfig, vsync: bool, pacing: &str) -> PresenterInfo {
    PresenterInfo {
        hello: MAGIC.into(),
        version: VERSION,
        width_px: cfg.display.width_px,
        height_px: cfg.display.height_px,
        refresh_hz: cfg.display.refresh_hz,
        stimulus_rate_hz: cfg.stimulus.frame_rate_hz,
        gamma: cfg.display.gamma,
        mean_luminance: cfg.display.mean_luminance,
        photodiode_corner: match cfg.display.photodiode_corner {
            Corner::TopLeft => "top-left",
            Corner::TopRight => "top-right",
            Corner::BottomLeft => "bottom-left",
            Corner::BottomRight => "bottom-right",
        }
        .into(),
        vsync,
        pacing: pacing.into(),
        time: 0.0,
    }
}

/// The channels between a protocol server and its flip loop.
pub struct Link {
    pub cmd_tx: Sender<Command>,
    pub cmd_rx: Receiver<Command>,
    pub ev_tx: Sender<Event>,
    pub ev_rx: Receiver<Event>,
}

impl Link {
    pub fn new() -> Self {
        let (cmd_tx, cmd_rx) = crossbeam::channel::unbounded();
        let (ev_tx, ev_rx) = bounded(EVENT_QUEUE);
        Link {
            cmd_tx,
            cmd_rx,
            ev_tx,
            ev_rx,
        }
    }
}

impl Default for Link {
    fn default() -> Self {
        Self::new()
    }
}

/// A running protocol server; stops when dropped.
pub struct ProtocolServer {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ProtocolServer {
    /// Listens on `listen` (`host:port` or `unix:/path`) and serves clients until dropped.
    pub fn start(
        listen: &str,
        info: PresenterInfo,
        epoch: Instant,
        link: &Link,
    ) -> Result<Self, ProtocolError> {
        let listener = Listener::bind(listen)?;
        let addr = listener.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Ctx {
            info,
            epoch,
            cmd_tx: link.cmd_tx.clone(),
            ev_tx: link.ev_tx.clone(),
            ev_rx: link.ev_rx.clone(),
            busy: Arc::new(Mutex::new(None)),
        };
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("present-accept".into())
            .spawn(move || accept_loop(listener, ctx, st))
            .map_err(ProtocolError::Io)?;
        info!("display protocol v{VERSION} on {addr}");
        Ok(ProtocolServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address clients connect to (`host:port` or `unix:/path`).
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for ProtocolServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone)]
struct Ctx {
    info: PresenterInfo,
    epoch: Instant,
    cmd_tx: Sender<Command>,
    ev_tx: Sender<Event>,
    ev_rx: Receiver<Event>,
    /// The connected client, if any (a handle to close it when the server stops).
    busy: Arc<Mutex<Option<Conn>>>,
}

fn accept_loop(listener: Listener, ctx: Ctx, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok(Some(conn)) => {
                // A client that just left may still be closing: give it a moment.
                let t0 = Instant::now();
                let mut busy = loop {
                    let b = match ctx.busy.lock() {
                        Ok(b) => b,
                        Err(p) => p.into_inner(),
                    };
                    if b.is_none() || t0.elapsed() > BUSY_WAIT {
                        break b;
                    }
                    drop(b);
                    std::thread::sleep(Duration::from_millis(10));
                };
                if busy.is_some() {
                    drop(busy);
                    warn!("refused a second client: one is connected");
                    let mut c = conn;
                    let _ = write_json(
                        &mut c,
                        &Event::Error {
                            message: "busy: another client is connected".into(),
                            fatal: true,
                        },
                    );
                    continue;
                }
                *busy = conn.try_clone().ok();
                drop(busy);
                let ctx2 = ctx.clone();
                let spawned = std::thread::Builder::new()
                    .name("present-client".into())
                    .spawn(move || {
                        serve(conn, &ctx2);
                        if let Ok(mut b) = ctx2.busy.lock() {
                            *b = None;
                        }
                    });
                if let Err(e) = spawned {
                    warn!("cannot start a client thread: {e}");
                    if let Ok(mut b) = ctx.busy.lock() {
                        *b = None;
                    }
                }
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    if let Ok(b) = ctx.busy.lock() {
        if let Some(c) = b.as_ref() {
            c.shutdown();
        }
    }
}

/// Serves one client until it leaves or misbehaves.
fn serve(conn: Conn, ctx: &Ctx) {
    let (reader, writer) = match conn.try_clone() {
        Ok(w) => (conn, w),
        Err(e) => {
            warn!("client socket: {e}");
            return;
        }
    };
    let mut rd = BufReader::new(reader);
    let mut wr = BufWriter::new(writer);
    // Hello first, with a deadline: a silent or confused peer does not hold the presenter.
    let _ = rd.get_ref().set_read_timeout(Some(HELLO_TIMEOUT));
    let hello = read_line(&mut rd).map_err(|e| e.to_string()).and_then(|l| {
        let l = l.ok_or_else(|| "closed before hello".to_string())?;
        let h: Hello = serde_json::from_str(&l).map_err(|_| {
            format!(
                "expected {{\"hello\":\"{MAGIC}\",\"version\":{VERSION}}}, got {:?}",
                truncate(&l)
            )
        })?;
        if h.hello != MAGIC || h.version != VERSION {
            return Err(format!(
                "unsupported hello {:?} version {} (this presenter speaks {MAGIC} v{VERSION})",
                h.hello, h.version
            ));
        }
        Ok(())
    });
    if let Err(message) = hello {
        warn!("refused a client: {message}");
        let _ = write_json(
            &mut wr,
            &Event::Error {
                message,
                fatal: true,
            },
        );
        let _ = wr.flush();
        drain(&mut rd);
        rd.get_ref().shutdown();
        return;
    }
    let _ = rd.get_ref().set_read_timeout(None);
    // Stale reports from before this client are not its business.
    while ctx.ev_rx.try_recv().is_ok() {}
    let _ = ctx.cmd_tx.send(Command::Connected);
    let mut info = ctx.info.clone();
    info.time = ctx.epoch.elapsed().as_secs_f64();
    if write_json(&mut wr, &Event::Hello(info)).is_err() || wr.flush().is_err() {
        let _ = ctx.cmd_tx.send(Command::Disconnected);
        return;
    }

    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (done, rx) = (done.clone(), ctx.ev_rx.clone());
        std::thread::Builder::new()
            .name("present-writer".into())
            .spawn(move || write_loop(wr, rx, done))
    };
    let writer = match writer {
        Ok(w) => w,
        Err(e) => {
            warn!("cannot start the writer: {e}");
            let _ = ctx.cmd_tx.send(Command::Disconnected);
            return;
        }
    };
    let why = read_loop(&mut rd, ctx);
    match &why {
        Ok(()) => info!("client left"),
        Err(m) => {
            warn!("client dropped: {m}");
            let _ = ctx.ev_tx.try_send(Event::Error {
                message: m.clone(),
                fatal: true,
            });
            // Let the writer send the error before the socket closes.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = writer.join();
    if why.is_err() {
        drain(&mut rd);
    }
    rd.get_ref().shutdown();
    let _ = ctx.cmd_tx.send(Command::Disconnected);
}

fn write_loop(mut wr: BufWriter<Conn>, rx: Receiver<Event>, done: Arc<AtomicBool>) {
    // `done` is checked on every turn: flip reports arrive faster than any timeout.
    while !done.load(Ordering::Relaxed) {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(ev) => {
                if write_json(&mut wr, &ev).is_err() {
                    break;
                }
                // Batch whatever else is queued, then flush once.
                while let Ok(ev) = rx.try_recv() {
                    if write_json(&mut wr, &ev).is_err() {
                        return;
                    }
                }
                if wr.flush().is_err() {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = wr.flush();
    wr.get_ref().shutdown();
}

/// Reads and discards what the peer already sent (up to 1 MiB or 100 ms), so that closing the
/// socket does not reset the connection before the peer has read our error.
fn drain(rd: &mut BufReader<Conn>) {
    let _ = rd
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)));
    let _ = std::io::copy(&mut rd.by_ref().take(1 << 20), &mut std::io::sink());
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Reads requests until the client says bye (`Ok`) or the connection fails (`Err`: why).
fn read_loop(rd: &mut BufReader<Conn>, ctx: &Ctx) -> Result<(), String> {
    // Clip shapes this client has uploaded, to answer bad ids at once.
    let mut shapes: HashMap<u32, usize> = HashMap::new();
    let nonfatal = |message: String| {
        warn!("{message}");
        let _ = ctx.ev_tx.try_send(Event::Error {
            message,
            fatal: false,
        });
    };
    loop {
        let line = match read_line(rd) {
            Ok(Some(l)) => l,
            Ok(None) => return Err("connection closed".into()),
            Err(ProtocolError::Io(e)) => return Err(format!("connection lost: {e}")),
            Err(e) => return Err(e.to_string()),
        };
        if line.trim().is_empty() {
            continue;
        }
        let req: Request = serde_json::from_str(&line)
            .map_err(|e| format!("bad header {:?}: {e}", truncate(&line)))?;
        match req {
            Request::Upload {
                id,
                frames,
                height,
                width,
            } => {
                // A shape outside the limits means the framing can no longer be trusted.
                let n = upload_size(frames, height, width)?;
                let mut data = Vec::new();
                let got = rd
                    .by_ref()
                    .take(n as u64)
                    .read_to_end(&mut data)
                    .map_err(|e| format!("clip {id}: {e}"))?;
                if got != n {
                    return Err(format!("clip {id}: payload ended after {got} of {n} bytes"));
                }
                shapes.insert(id, frames);
                let clip = Arc::new(Clip {
                    frames,
                    height,
                    width,
                    data,
                });
                let _ = ctx.cmd_tx.send(Command::Upload { id, clip });
                let _ = ctx.ev_tx.try_send(Event::Uploaded { id });
            }
            Request::Play { id, at, rate_hz } => {
                if !shapes.contains_key(&id) {
                    nonfatal(format!("play: no clip {id} (upload it first)"));
                } else if at.is_some_and(|a| !a.is_finite()) {
                    nonfatal(format!("play {id}: `at` must be a finite time"));
                } else if rate_hz.is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= 1000.0)) {
                    nonfatal(format!("play {id}: rate_hz must be in (0, 1000]"));
                } else {
                    let _ = ctx.cmd_tx.send(Command::Play { id, at, rate_hz });
                }
            }
            Request::Show { id, frame } => match shapes.get(&id) {
                Some(&f) if frame < f => {
                    let _ = ctx.cmd_tx.send(Command::Show { id, frame });
                }
                _ => nonfatal(format!("show: no frame {frame} of clip {id}")),
            },
            Request::Gray => {
                let _ = ctx.cmd_tx.send(Command::Gray);
            }
            Request::Clock { echo } => {
                let time = ctx.epoch.elapsed().as_secs_f64();
                let _ = ctx.ev_tx.try_send(Event::Clock { echo, time });
            }
            Request::Bye => return Ok(()),
        }
    }
}

/// A presenter without a window: the protocol server and the flip loop over an in-memory
/// framebuffer, paced like the real one. For tests and for daemons without a monitor.
pub struct HeadlessPresenter {
    server: Option<ProtocolServer>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), RenderError>>>,
    last: Arc<Mutex<Vec<u32>>>,
    width: u32,
}

impl HeadlessPresenter {
    pub fn start(cfg: &RigConfig, listen: &str) -> Result<Self, ProtocolError> {
        let epoch = Instant::now();
        let link = Link::new();
        let info = presenter_info(cfg, false, "deadline timer (headless framebuffer)");
        let server = ProtocolServer::start(listen, info, epoch, &link)?;
        let surface = HeadlessSurface::new(cfg.display.width_px, cfg.display.height_px);
        let last = surface.last_frame();
        let screen = CpuScreen::new(surface, &cfg.display);
        let stop = Arc::new(AtomicBool::new(false));
        let width = cfg.display.width_px;
        let (st, cfg) = (stop.clone(), cfg.clone());
        let thread = std::thread::Builder::new()
            .name("present-flip".into())
            .spawn(move || {
                let mut p = Presenter::new(screen, &cfg, epoch, link.cmd_rx, link.ev_tx);
                p.run(&st)
            })
            .map_err(ProtocolError::Io)?;
        Ok(HeadlessPresenter {
            server: Some(server),
            stop,
            thread: Some(thread),
            last,
            width,
        })
    }

    pub fn addr(&self) -> &str {
        self.server.as_ref().map(|s| s.addr()).unwrap_or("")
    }

    /// The last presented frame (`0x00RRGGBB`, row-major) and its width.
    pub fn last_frame(&self) -> (Vec<u32>, u32) {
        let v = self.last.lock().map(|l| l.clone()).unwrap_or_default();
        (v, self.width)
    }
}

impl Drop for HeadlessPresenter {
    fn drop(&mut self) {
        self.server.take();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
