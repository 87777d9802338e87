//! `PresenterClient`: the daemon's side of the display protocol, a [`Display`] that drives a
//! `rig present` window over TCP or a Unix socket.
//!
//! Clocks: the presenter reports flips on its own clock. On connecting, the client probes it a few
//! times and keeps the offset measured with the shortest round trip (error at most half that round
//! trip, tens of microseconds on loopback), so `play(at)` and the reported flip times are on the
//! rig clock the client is given. The photodiode on the sync board remains the ground truth of when
//! a frame reached the screen.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufReader, BufWriter, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{unbounded, Receiver, RecvTimeoutError};
use tracing::{info, warn};

use super::protocol::{
    read_line, upload_size, write_json, Conn, Event, Hello, PresenterInfo, Request,
};
use super::{Display, DisplayError, PresentedFrame};

/// The rig clock, seconds.
pub type RigClock = Arc<dyn Fn() -> f64 + Send + Sync>;

/// A rig clock that starts at zero now (monotonic).
pub fn monotonic_clock() -> RigClock {
    let t0 = Instant::now();
    Arc::new(move || t0.elapsed().as_secs_f64())
}

const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
const CLOCK_PROBES: u64 = 8;

enum Incoming {
    Ev(Event),
    Closed(String),
}

struct Link {
    wr: BufWriter<Conn>,
    rx: Receiver<Incoming>,
    sock: Conn,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.sock.shutdown();
    }
}

/// A copy of an uploaded clip (`f, h, w, bytes`), uploaded again after a reconnect.
type StoredClip = (usize, usize, usize, Arc<Vec<u8>>);

/// Speaks the display protocol to a presenter.
pub struct PresenterClient {
    addr: String,
    clock: RigClock,
    link: Option<Link>,
    info: PresenterInfo,
    /// presenter clock - rig clock, seconds.
    offset: f64,
    rtt: f64,
    backlog: VecDeque<Event>,
    clips: BTreeMap<u32, StoredClip>,
    errors: Vec<String>,
    missed_frames: u64,
}

impl PresenterClient {
    /// Connects to `addr` (`host:port` or `unix:/path`), says hello and measures the clock offset.
    pub fn connect(addr: &str, clock: RigClock) -> Result<Self, DisplayError> {
        let (link, info) = open(addr)?;
        let mut c = PresenterClient {
            addr: addr.to_string(),
            clock,
            link: Some(link),
            info,
            offset: 0.0,
            rtt: 0.0,
            backlog: VecDeque::new(),
            clips: BTreeMap::new(),
            errors: Vec::new(),
            missed_frames: 0,
        };
        c.sync_clock()?;
        info!(
            "presenter at {addr}: {}x{} at {} Hz, vsync {}, clock offset {:.6} s (rtt {:.0} us)",
            c.info.width_px,
            c.info.height_px,
            c.info.refresh_hz,
            c.info.vsync,
            c.offset,
            c.rtt * 1e6
        );
        Ok(c)
    }

    /// Connects again after the presenter or the link went away, and uploads every clip again
    /// (a presenter forgets a client's clips when it leaves).
    pub fn reconnect(&mut self) -> Result<(), DisplayError> {
        self.link = None;
        let (link, info) = open(&self.addr)?;
        self.link = Some(link);
        self.info = info;
        self.backlog.clear();
        self.sync_clock()?;
        let clips: Vec<_> = self
            .clips
            .iter()
            .map(|(&id, (f, h, w, d))| (id, *f, *h, *w, d.clone()))
            .collect();
        for (id, f, h, w, d) in clips {
            self.send_upload(id, &d, f, h, w)?;
        }
        info!("reconnected to {}", self.addr);
        Ok(())
    }

    pub fn is_connected(&self) -> bool {
        self.link.is_some()
    }

    /// What the presenter said about itself.
    pub fn info(&self) -> &PresenterInfo {
        &self.info
    }

    /// Presenter clock minus rig clock, and the round trip it was measured with, seconds.
    pub fn clock_offset(&self) -> (f64, f64) {
        (self.offset, self.rtt)
    }

    /// Non-fatal errors the presenter reported since the last call.
    pub fn take_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.errors)
    }

    /// Missed refresh periods reported so far.
    pub fn missed_frames(&self) -> u64 {
        self.missed_frames
    }

    /// Re-measures the clock offset (best of a few probes). Returns the round trip, seconds.
    pub fn sync_clock(&mut self) -> Result<f64, DisplayError> {
        let mut best: Option<(f64, f64)> = None;
        for echo in 0..CLOCK_PROBES {
            let t0 = (self.clock)();
            self.send(&Request::Clock { echo })?;
            let tp = self.wait_for(|e| match e {
                Event::Clock { echo: x, time } if *x == echo => Some(*time),
                _ => None,
            })?;
            let t1 = (self.clock)();
            let rtt = t1 - t0;
            if best.is_none_or(|(r, _)| rtt < r) {
                best = Some((rtt, tp - 0.5 * (t0 + t1)));
            }
        }
        if let Some((rtt, off)) = best {
            self.rtt = rtt;
            self.offset = off;
        }
        Ok(self.rtt)
    }

    /// Holds frame `frame` of clip `id` on screen (calibration, still images).
    pub fn show(&mut self, id: u32, frame: usize) -> Result<(), DisplayError> {
        self.known(id)?;
        self.send(&Request::Show { id, frame })
    }

    /// Says goodbye (the presenter shows gray and waits for the next client).
    pub fn close(mut self) {
        let _ = self.send(&Request::Bye);
        self.link = None;
    }

    fn known(&self, id: u32) -> Result<(), DisplayError> {
        if self.clips.contains_key(&id) {
            Ok(())
        } else {
            Err(DisplayError::UnknownClip(id))
        }
    }

    fn link(&mut self) -> Result<&mut Link, DisplayError> {
        self.link.as_mut().ok_or(DisplayError::Disconnected)
    }

    fn send(&mut self, r: &Request) -> Result<(), DisplayError> {
        let l = self.link()?;
        let res = write_json(&mut l.wr, r)
            .map_err(|e| e.to_string())
            .and_then(|_| l.wr.flush().map_err(|e| e.to_string()));
        if let Err(e) = res {
            warn!("presenter link: {e}");
            self.link = None;
            return Err(DisplayError::Disconnected);
        }
        Ok(())
    }

    fn send_upload(
        &mut self,
        id: u32,
        frames: &[u8],
        f: usize,
        h: usize,
        w: usize,
    ) -> Result<(), DisplayError> {
        self.send(&Request::Upload {
            id,
            frames: f,
            height: h,
            width: w,
        })?;
        let l = self.link()?;
        if l.wr.write_all(frames).and_then(|_| l.wr.flush()).is_err() {
            self.link = None;
            return Err(DisplayError::Disconnected);
        }
        self.wait_for(|e| match e {
            Event::Uploaded { id: x } if *x == id => Some(()),
            _ => None,
        })
    }

    /// Waits for the event `pick` accepts; other events are kept for `poll_flips`. A fatal error
    /// ends the wait.
    fn wait_for<T>(&mut self, pick: impl Fn(&Event) -> Option<T>) -> Result<T, DisplayError> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let rx = &self.link()?.rx;
            match rx.recv_timeout(left) {
                Ok(Incoming::Ev(e)) => {
                    if let Some(v) = pick(&e) {
                        return Ok(v);
                    }
                    if let Event::Error {
                        message,
                        fatal: true,
                    } = &e
                    {
                        let m = message.clone();
                        self.link = None;
                        return Err(DisplayError::Presenter(m));
                    }
                    self.backlog.push_back(e);
                }
                Ok(Incoming::Closed(why)) => {
                    self.link = None;
                    warn!("presenter link closed: {why}");
                    return Err(DisplayError::Disconnected);
                }
                Err(RecvTimeoutError::Timeout) => return Err(DisplayError::Timeout),
                Err(RecvTimeoutError::Disconnected) => {
                    self.link = None;
                    return Err(DisplayError::Disconnected);
                }
            }
        }
    }

    fn handle(&mut self, e: Event, out: &mut Vec<PresentedFrame>) {
        match e {
            Event::Flip(r) => {
                self.missed_frames += r.missed as u64;
                out.push(PresentedFrame {
                    time: r.time - self.offset,
                    clip: r.clip,
                    frame: r.frame,
                    photodiode: r.photodiode,
                    missed: r.missed,
                    seq: r.seq,
                });
            }
            Event::Error { message, fatal } => {
                warn!("presenter: {message}");
                self.errors.push(message);
                if fatal {
                    self.link = None;
                }
            }
            _ => {}
        }
    }
}

fn open(addr: &str) -> Result<(Link, PresenterInfo), DisplayError> {
    let sock = Conn::connect(addr).map_err(|e| DisplayError::Io(e.to_string()))?;
    let mut wr = BufWriter::new(
        sock.try_clone()
            .map_err(|e| DisplayError::Io(e.to_string()))?,
    );
    let rd = sock
        .try_clone()
        .map_err(|e| DisplayError::Io(e.to_string()))?;
    let (tx, rx) = unbounded();
    std::thread::Builder::new()
        .name("presenter-link".into())
        .spawn(move || {
            let mut rd = BufReader::new(rd);
            loop {
                match read_line(&mut rd) {
                    Ok(Some(l)) => match serde_json::from_str::<Event>(&l) {
                        Ok(e) => {
                            if tx.send(Incoming::Ev(e)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Incoming::Closed(format!("bad event: {e}")));
                            return;
                        }
                    },
                    Ok(None) => {
                        let _ = tx.send(Incoming::Closed("closed by the presenter".into()));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Incoming::Closed(e.to_string()));
                        return;
                    }
                }
            }
        })
        .map_err(|e| DisplayError::Io(e.to_string()))?;
    write_json(&mut wr, &Hello::v1()).map_err(|e| DisplayError::Io(e.to_string()))?;
    wr.flush().map_err(|e| DisplayError::Io(e.to_string()))?;
    let first = rx.recv_timeout(ANSWER_TIMEOUT);
    let link = Link { wr, rx, sock };
    match first {
        Ok(Incoming::Ev(Event::Hello(info))) => Ok((link, info)),
        Ok(Incoming::Ev(Event::Error { message, .. })) => Err(DisplayError::Presenter(message)),
        Ok(Incoming::Ev(e)) => Err(DisplayError::Protocol(format!("expected hello, got {e:?}"))),
        Ok(Incoming::Closed(why)) => Err(DisplayError::Protocol(why)),
        Err(_) => Err(DisplayError::Timeout),
    }
}

impl Display for PresenterClient {
    fn upload_clip(
        &mut self,
        id: u32,
        frames: &[u8],
        f: usize,
        h: usize,
        w: usize,
    ) -> Result<(), DisplayError> {
        let n = upload_size(f, h, w).map_err(DisplayError::BadClip)?;
        if frames.len() != n {
            return Err(DisplayError::BadClip(format!(
                "clip {id}: {} bytes for {f}x{h}x{w}",
                frames.len()
            )));
        }
        // Kept first: a clip uploaded while the presenter is away reaches it on reconnection.
        self.clips.insert(id, (f, h, w, Arc::new(frames.to_vec())));
        self.send_upload(id, frames, f, h, w)
    }

    fn play(&mut self, id: u32, at_rig_time: Option<f64>) -> Result<(), DisplayError> {
        self.known(id)?;
        let at = at_rig_time.map(|t| t + self.offset);
        self.send(&Request::Play {
            id,
            at,
            rate_hz: None,
        })
    }

    fn gray(&mut self) -> Result<(), DisplayError> {
        self.send(&Request::Gray)
    }

    fn poll_flips(&mut self, out: &mut Vec<PresentedFrame>) -> Result<usize, DisplayError> {
        let n0 = out.len();
        while let Some(e) = self.backlog.pop_front() {
            self.handle(e, out);
        }
        while let Some(l) = self.link.as_ref() {
            match l.rx.try_recv() {
                Ok(Incoming::Ev(e)) => self.handle(e, out),
                Ok(Incoming::Closed(why)) => {
                    warn!("presenter link closed: {why}");
                    self.link = None;
                }
                Err(_) => break,
            }
        }
        if self.link.is_none() && out.len() == n0 {
            return Err(DisplayError::Disconnected);
        }
        Ok(out.len() - n0)
    }
}
