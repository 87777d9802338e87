//! The simulated sync board: the real firmware [`Device`] running on the host behind a
//! pseudo-terminal, so that the simulated rig talks to it through the same serial path
//! ([`HarpDriver`](super::HarpDriver) over `serialport`) as a real rig talks to `/dev/ttyACM0`.
//!
//! A thread runs the board's main loop: it reads the bytes the host wrote to the pty master and
//! feeds them to the device, feeds it the input edges of the simulated rig ([`RigFeed`]: the
//! microscope's frame clock, the virtual display's photodiode patch, the treadmill encoder of the
//! simulated running mouse), calls `tick`, and writes what the device sends back to the master.
//! The device's microsecond clock runs on the host's monotonic clock, scaled by an optional drift
//! and shifted by an offset, so that the host's clock-mapping estimate can be checked against the
//! truth.
//!
//! **Fed mode** ([`SimBoardOptions::fed`], used by `rig run` on the simulated rig): the board has
//! no feed of its own; [`SimBoard::feed`] hands it the input edges of the simulated rig's actual
//! frames (frame clock, photodiode, encoder) in time order, and the device clock follows the
//! *feed's* time instead of the host's clock (scaled by the drift and shifted by the offset as
//! above). The simulated rig can then run faster than real time and the board stamps its events
//! on the simulated rig's clock. The board thread advances its clock in steps of at most 1 ms,
//! ticking the device at each, so periodic events (encoder, heartbeat) keep their rate, and it
//! waits for the host to read rather than dropping bytes.
//!
//! The host opens a stable path, a symlink in a private temporary folder pointing at the pty's
//! slave (`/dev/pts/N`), as udev's `/dev/serial/by-id/...` links point at a real adapter; a
//! replugged board gets a new pty and the link follows it.
//!
//! Faults for tests: [`SimBoard::inject_garbage`], [`SimBoard::corrupt_next`] (bad checksums),
//! [`SimBoard::set_mute`] (the board stops answering), [`SimBoard::unplug`] (closes the pty),
//! [`SimBoard::replug`] (a new pty and a freshly booted device), [`SimBoard::miss_next_flips`].

use std::collections::VecDeque;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{unbounded, Receiver, Sender};
use serde::Serialize;
use twinrig_firmware::device::registers::DeviceConfig;
use twinrig_firmware::harp::MessageView;
use twinrig_firmware::{Device, Hal};

use super::HarpError;
use crate::config::RigConfig;
use crate::sim::behavior::Behavior;
use crate::sim::display::VirtualDisplay;
use crate::sim::PHOTODIODE_LATENCY_S;

/// Pty allocation (`openpty`, `ttyname_r` and the symlink juggling) is serialised process-wide.
static PTY_LOCK: Mutex<()> = Mutex::new(());

/// Options of the simulated board.
#[derive(Debug, Clone)]
pub struct SimBoardOptions {
    /// Device clock rate error, parts per million (positive: the device clock runs fast).
    pub drift_ppm: f64,
    /// Device clock at start, seconds.
    pub start_s: f64,
    /// WHO_AM_I override (default: the twinrig board's 2176).
    pub who_am_i: Option<u16>,
    /// Feed the board from the simulated rig (frame clock, photodiode, encoder).
    pub feed: bool,
    /// Show flips only on [`SimBoard::flip`] instead of at the display's refresh.
    pub commanded_display: bool,
    pub seed: u64,
    /// Driven by [`SimBoard::feed`] (clock and inputs) instead of its own feed on the host clock.
    pub fed: bool,
}

impl Default for SimBoardOptions {
    fn default() -> Self {
        SimBoardOptions {
            drift_ppm: 20.0,
            start_s: 1000.0,
            who_am_i: None,
            feed: true,
            commanded_display: false,
            seed: 1,
            fed: false,
        }
    }
}

/// What the board has done so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SimStatus {
    pub plugged: bool,
    /// The pty slave the link points at now.
    pub pty: String,
    /// Times a controller has the port open (no hangup on the master).
    pub controller_connected: bool,
    pub frames: u64,
    pub flips: u64,
    pub flips_missed: u64,
    pub encoder_position: i64,
    pub requests: u64,
    /// Write requests among `requests`.
    pub writes: u64,
    pub replies: u64,
    pub events: u64,
    /// Bytes the host sent that the device's parser skipped.
    pub device_discarded_bytes: u64,
    pub device_bad_checksums: u64,
    /// Messages sent with a corrupted checksum on purpose.
    pub corrupted: u64,
    /// Bytes not written because the host did not read them.
    pub tx_dropped_bytes: u64,
    pub boots: u64,
}

enum Command {
    Garbage(Vec<u8>),
    Corrupt(u32),
    Mute(bool),
    Unplug,
    Replug,
    Flip,
    Commanded(bool),
    MissFlips(u32),
}

struct SimShared {
    stop: AtomicBool,
    status: Mutex<SimStatus>,
    acks: AtomicU64,
}

/// A simulated sync board behind a pseudo-terminal. Dropping it unplugs it and stops its thread.
pub struct SimBoard {
    link: PathBuf,
    dir: PathBuf,
    commands: Sender<(Command, u64)>,
    sent: u64,
    shared: Arc<SimShared>,
    thread: Option<JoinHandle<()>>,
    drift_ppm: f64,
    fed: Option<Feeder>,
}

/// Edges for a fed board, with the time the feed has reached.
struct FeedStep {
    until_s: f64,
    edges: Vec<(f64, Edge)>,
}

/// The host's end of a fed board's input: steps go over a bounded channel and their buffers come
/// back for reuse; a byte on a pipe wakes the board thread out of its `poll`.
struct Feeder {
    tx: Sender<FeedStep>,
    recycled: Receiver<Vec<(f64, Edge)>>,
    wake: OwnedFd,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sim_err(what: &str) -> HarpError {
    HarpError::Sim(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// Opens a pty pair in raw mode; returns the master (non-blocking) and the slave's path. The
/// slave is closed again: the controller opens it by path, like a real port.
fn open_pty() -> Result<(OwnedFd, String), HarpError> {
    let _guard = lock(&PTY_LOCK);
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    // SAFETY: openpty writes two fds; name, termios and winsize are optional (null).
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(sim_err("openpty"));
    }
    // SAFETY: both fds were just returned by openpty and are owned here.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut name = [0 as libc::c_char; 256];
    // SAFETY: the buffer is valid for its length; ttyname_r NUL-terminates on success.
    let rc = unsafe { libc::ttyname_r(slave.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(HarpError::Sim(format!(
            "ttyname_r: {}",
            std::io::Error::from_raw_os_error(rc)
        )));
    }
    // SAFETY: NUL-terminated by ttyname_r.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    // Raw mode on the line discipline, so no byte is translated or echoed before the controller
    // opens the port and sets its own modes.
    // SAFETY: termios is plain data filled by tcgetattr before use.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(slave.as_raw_fd(), &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t);
        }
        let fd = master.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    drop(slave);
    Ok((master, path))
}

fn point_link(link: &Path, target: &str) -> Result<(), HarpError> {
    let _guard = lock(&PTY_LOCK);
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .and_then(|_| std::fs::rename(&tmp, link))
        .map_err(|e| HarpError::Sim(format!("symlink {} -> {target}: {e}", link.display())))
}

impl SimBoard {
    /// Starts a board fed by the simulated rig of `cfg`.
    pub fn spawn(cfg: &RigConfig, opts: SimBoardOptions) -> Result<Self, HarpError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "twinrig-simboard-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| HarpError::Sim(format!("cannot create {}: {e}", dir.display())))?;
        let link = dir.join("ttySIM0");
        let (master, pty) = open_pty()?;
        point_link(&link, &pty)?;
        let shared = Arc::new(SimShared {
            stop: AtomicBool::new(false),
            status: Mutex::new(SimStatus {
                plugged: true,
                pty: pty.clone(),
                boots: 1,
                ..Default::default()
            }),
            acks: AtomicU64::new(0),
        });
        let (tx, rx) = unbounded();
        let feed = (opts.feed && !opts.fed).then(|| RigFeed::new(cfg, opts.seed));
        let (feeder, fed) = if opts.fed {
            let (wake_r, wake_w) = wake_pipe()?;
            let (step_tx, step_rx) = crossbeam::channel::bounded(64);
            let (back_tx, back_rx) = crossbeam::channel::bounded(64);
            let feeder = Feeder {
                tx: step_tx,
                recycled: back_rx,
                wake: wake_w,
            };
            let fed = FedInput {
                steps: step_rx,
                recycle: back_tx,
                wake: wake_r,
                time: Arc::new(AtomicU64::new(0f64.to_bits())),
                lines: QUADRATURE[0],
            };
            (Some(feeder), Some(fed))
        } else {
            (None, None)
        };
        let mut board = BoardLoop {
            shared: shared.clone(),
            commands: rx,
            link: link.clone(),
            master: Some(master),
            epoch: Instant::now(),
            rate: 1.0 + opts.drift_ppm * 1e-6,
            start_us: opts.start_s * 1e6,
            device_config: device_config(opts.who_am_i),
            device: None,
            feed,
            fed,
            mute: false,
            corrupt: 0,
            connected: false,
        };
        board.boot();
        if let Some(f) = board.feed.as_mut() {
            f.commanded = opts.commanded_display;
        }
        let thread = std::thread::Builder::new()
            .name("sim-harp-board".into())
            .spawn(move || {
                // Stands in for hardware: it does not compete with the closed loop for the cores.
                crate::pipeline::priority::lower_this_thread(
                    crate::pipeline::priority::Yield::Slack,
                );
                board.run()
            })
            .map_err(|e| HarpError::Sim(format!("cannot start the board thread: {e}")))?;
        tracing::debug!(link = %link.display(), pty, "simulated sync board up");
        Ok(SimBoard {
            link,
            dir,
            commands: tx,
            sent: 0,
            shared,
            thread: Some(thread),
            drift_ppm: opts.drift_ppm,
            fed: feeder,
        })
    }

    /// Fed mode: hands the board the input edges up to feed time `until_s` (seconds of the
    /// simulated rig), in time order and none before the previous step's `until_s`; the board
    /// moves its clock through them to `until_s`. Waits while the board is 64 steps behind.
    pub fn feed(&mut self, until_s: f64, edges: &[(f64, Edge)]) -> Result<(), HarpError> {
        let Some(f) = self.fed.as_ref() else {
            return Err(HarpError::Sim(
                "feed: the board was not started in fed mode".into(),
            ));
        };
        let mut buf = f.recycled.try_recv().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(edges);
        f.tx.send(FeedStep {
            until_s,
            edges: buf,
        })
        .map_err(|_| HarpError::Sim("feed: the board thread has stopped".into()))?;
        // SAFETY: writing one byte from a valid buffer to an owned pipe fd (non-blocking; a full
        // pipe already holds a wake-up).
        unsafe { libc::write(f.wake.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        Ok(())
    }

    /// The port path to open (a symlink to the current pty slave).
    pub fn path(&self) -> &Path {
        &self.link
    }

    /// The path as a string for the driver.
    pub fn port(&self) -> String {
        self.link.display().to_string()
    }

    /// The drift the board's clock was given, ppm.
    pub fn drift_ppm(&self) -> f64 {
        self.drift_ppm
    }

    pub fn status(&self) -> SimStatus {
        lock(&self.shared.status).clone()
    }

    /// Sends a command and waits (up to a second) until the board thread carried it out.
    fn command(&mut self, c: Command) {
        self.sent += 1;
        let id = self.sent;
        if self.commands.send((c, id)).is_err() {
            return;
        }
        let end = Instant::now() + Duration::from_secs(1);
        while self.shared.acks.load(Ordering::Acquire) < id && Instant::now() < end {
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Writes raw bytes to the host, between whole messages.
    pub fn inject_garbage(&mut self, bytes: &[u8]) {
        self.command(Command::Garbage(bytes.to_vec()));
    }

    /// Corrupts the checksum of the next `n` messages the board sends.
    pub fn corrupt_next(&mut self, n: u32) {
        self.command(Command::Corrupt(n));
    }

    /// A muted board reads and discards everything and sends nothing (a hung firmware).
    pub fn set_mute(&mut self, mute: bool) {
        self.command(Command::Mute(mute));
    }

    /// Closes the pty (the USB cable is pulled): the host's port reports a hangup.
    pub fn unplug(&mut self) {
        self.command(Command::Unplug);
    }

    /// A new pty with a freshly booted device; the link points at it.
    pub fn replug(&mut self) {
        self.command(Command::Replug);
    }

    /// Asks the display to flip the photodiode patch at its next refresh.
    pub fn flip(&mut self) {
        self.command(Command::Flip);
    }

    /// Flips only on request (true) or at every refresh (false).
    pub fn set_commanded_display(&mut self, on: bool) {
        self.command(Command::Commanded(on));
    }

    /// The next `n` requested flips never reach the photodiode (a dropped frame).
    pub fn miss_next_flips(&mut self, n: u32) {
        self.command(Command::MissFlips(n));
    }
}

impl Drop for SimBoard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn device_config(who_am_i: Option<u16>) -> DeviceConfig {
    let mut c = DeviceConfig::default();
    if let Some(w) = who_am_i {
        c.who_am_i = w;
    }
    c
}

/// The device clock: the host's monotonic clock, scaled and shifted.
#[derive(Clone)]
struct SimHal {
    epoch: Instant,
    rate: f64,
    start_us: f64,
    /// Fed mode: the feed's time, seconds (f64 bits), instead of the host clock.
    fed_time: Option<Arc<AtomicU64>>,
}

impl SimHal {
    fn at(&self, t_s: f64) -> u64 {
        (self.start_us + t_s * 1e6 * self.rate).max(0.0) as u64
    }
}

impl Hal for SimHal {
    fn now_us(&self) -> u64 {
        match &self.fed_time {
            Some(t) => self.at(f64::from_bits(t.load(Ordering::Acquire))),
            None => self.at(self.epoch.elapsed().as_secs_f64()),
        }
    }
    fn write_outputs(&mut self, _state: u8) {}
}

struct BoardLoop {
    shared: Arc<SimShared>,
    commands: Receiver<(Command, u64)>,
    link: PathBuf,
    master: Option<OwnedFd>,
    epoch: Instant,
    rate: f64,
    start_us: f64,
    device_config: DeviceConfig,
    device: Option<Device<SimHal>>,
    feed: Option<RigFeed>,
    fed: Option<FedInput>,
    mute: bool,
    corrupt: u32,
    connected: bool,
}

/// The board thread's end of fed mode.
struct FedInput {
    steps: Receiver<FeedStep>,
    recycle: Sender<Vec<(f64, Edge)>>,
    wake: OwnedFd,
    /// Feed time reached, seconds (f64 bits); the device clock.
    time: Arc<AtomicU64>,
    /// Encoder A/B levels now (given to a freshly booted device).
    lines: (bool, bool),
}

/// A non-blocking, close-on-exec pipe: (read end, write end).
fn wake_pipe() -> Result<(OwnedFd, OwnedFd), HarpError> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(sim_err("pipe2"));
    }
    // SAFETY: both fds were just created and are owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl BoardLoop {
    fn hal(&self) -> SimHal {
        SimHal {
            epoch: self.epoch,
            rate: self.rate,
            start_us: self.start_us,
            fed_time: self.fed.as_ref().map(|f| f.time.clone()),
        }
    }

    fn boot(&mut self) {
        let mut d = Device::with_config(self.hal(), self.device_config);
        if let Some(f) = &self.fed {
            // The encoder lines are wherever the treadmill left them.
            d.on_encoder(f.lines.0, f.lines.1);
        }
        self.device = Some(d);
        self.connected = false;
    }

    /// Sends what the device queued; in fed mode waits for the host rather than dropping.
    fn drain_tx(&mut self, tx: &mut [u8]) {
        let Some(fd) = self.master.as_ref().map(|m| m.as_raw_fd()) else {
            return;
        };
        let Some(d) = self.device.as_mut() else {
            return;
        };
        let patience = if self.fed.is_some() {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(20)
        };
        loop {
            let n = d.poll_tx(tx);
            if n == 0 {
                return;
            }
            if self.mute || !self.connected {
                continue;
            }
            let corrupted = corrupt_messages(&mut tx[..n], &mut self.corrupt);
            let dropped = write_all_nonblocking(fd, &tx[..n], patience);
            let mut st = lock(&self.shared.status);
            st.corrupted += corrupted;
            st.tx_dropped_bytes += dropped as u64;
        }
    }

    /// Fed mode: moves the device clock to feed time `t` in steps of at most 1 ms, ticking the
    /// device (and sending what it queues) at each.
    fn advance_fed(&mut self, t: f64, tx: &mut [u8]) {
        let Some(time) = self.fed.as_ref().map(|f| f.time.clone()) else {
            return;
        };
        let mut now = f64::from_bits(time.load(Ordering::Acquire));
        while now < t {
            now = (now + 1e-3).min(t);
            time.store(now.to_bits(), Ordering::Release);
            if let Some(d) = self.device.as_mut() {
                d.tick();
            }
            self.drain_tx(tx);
        }
    }

    /// Fed mode: carries out the queued feed steps.
    fn run_fed_steps(&mut self, tx: &mut [u8]) {
        loop {
            let Some(step) = self.fed.as_ref().and_then(|f| f.steps.try_recv().ok()) else {
                return;
            };
            for &(te, edge) in &step.edges {
                self.advance_fed(te, tx);
                let hal = self.hal();
                if let (Edge::Encoder(a, b), Some(f)) = (edge, self.fed.as_mut()) {
                    f.lines = (a, b);
                }
                if let Some(d) = self.device.as_mut().filter(|_| self.master.is_some()) {
                    let at = hal.at(te);
                    match edge {
                        Edge::FrameClock => d.on_frame_clock_edge_at(at),
                        Edge::Photodiode(level) => d.on_photodiode_edge_at(level, at),
                        Edge::Encoder(a, b) => {
                            d.on_encoder(a, b);
                        }
                    }
                }
                self.drain_tx(tx);
            }
            self.advance_fed(step.until_s, tx);
            if let Some(f) = self.fed.as_ref() {
                let _ = f.recycle.try_send(step.edges);
            }
        }
    }

    fn run(mut self) {
        let mut rx = vec![0u8; 4096];
        let mut tx = vec![0u8; 8192];
        while !self.shared.stop.load(Ordering::Acquire) {
            while let Ok((c, id)) = self.commands.try_recv() {
                self.handle(c);
                self.shared.acks.store(id, Ordering::Release);
            }
            let t = self.epoch.elapsed().as_secs_f64();
            let hal = self.hal();
            if let Some(feed) = self.feed.as_mut() {
                let device = self.device.as_mut().filter(|_| self.master.is_some());
                let mut device = device;
                feed.advance(t, &mut |te, edge| {
                    if let Some(d) = device.as_deref_mut() {
                        let at = hal.at(te);
                        match edge {
                            Edge::FrameClock => d.on_frame_clock_edge_at(at),
                            Edge::Photodiode(level) => d.on_photodiode_edge_at(level, at),
                            Edge::Encoder(a, b) => {
                                d.on_encoder(a, b);
                            }
                        }
                    }
                });
            }
            if self.fed.is_some() {
                self.run_fed_steps(&mut tx);
            }
            let wake_fd = self.fed.as_ref().map(|f| f.wake.as_raw_fd());
            let Some(fd) = self.master.as_ref().map(|m| m.as_raw_fd()) else {
                match wake_fd {
                    Some(w) => wait_readable(w, 1),
                    None => std::thread::sleep(Duration::from_millis(1)),
                }
                continue;
            };
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: wake_fd.unwrap_or(-1),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let nfds = if wake_fd.is_some() { 2 } else { 1 };
            // SAFETY: `nfds` valid pollfds.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), nfds, 1) };
            if let Some(w) = wake_fd.filter(|_| fds[1].revents != 0) {
                drain_pipe(w);
            }
            let p = fds[0];
            let mut hangup = false;
            if ready > 0 && p.revents & libc::POLLIN != 0 {
                // SAFETY: reading into a buffer of the given length from an owned fd.
                let n = unsafe { libc::read(fd, rx.as_mut_ptr().cast(), rx.len()) };
                if n > 0 {
                    self.connected = true;
                    if !self.mute {
                        if let Some(d) = self.device.as_mut() {
                            d.on_bytes(&rx[..n as usize]);
                        }
                    }
                } else if n < 0 {
                    let e = std::io::Error::last_os_error();
                    hangup = e.raw_os_error() == Some(libc::EIO);
                }
            } else if ready > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                hangup = true;
            }
            if hangup {
                if self.connected {
                    // The controller closed the port: DTR drops, the board goes to Standby.
                    self.connected = false;
                    if let Some(d) = self.device.as_mut() {
                        d.set_connected(false);
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if let Some(d) = self.device.as_mut() {
                d.tick();
            }
            self.drain_tx(&mut tx);
            self.publish();
        }
    }

    fn handle(&mut self, c: Command) {
        match c {
            Command::Garbage(bytes) => {
                if let Some(m) = &self.master {
                    write_all_nonblocking(m.as_raw_fd(), &bytes, Duration::from_millis(20));
                }
            }
            Command::Corrupt(n) => self.corrupt += n,
            Command::Mute(m) => self.mute = m,
            Command::Unplug => {
                self.master = None;
                self.device = None;
                let _ = std::fs::remove_file(&self.link);
                let mut st = lock(&self.shared.status);
                st.plugged = false;
                st.controller_connected = false;
            }
            Command::Replug => {
                if self.master.is_some() {
                    return;
                }
                match open_pty().and_then(|(m, p)| point_link(&self.link, &p).map(|_| (m, p))) {
                    Ok((m, p)) => {
                        self.master = Some(m);
                        self.boot();
                        let mut st = lock(&self.shared.status);
                        st.plugged = true;
                        st.pty = p;
                        st.boots += 1;
                    }
                    Err(e) => tracing::warn!(error = %e, "simulated board: replug failed"),
                }
            }
            Command::Flip => {
                if let Some(f) = self.feed.as_mut() {
                    f.flip_requests
                        .push_back(self.epoch.elapsed().as_secs_f64());
                }
            }
            Command::Commanded(on) => {
                if let Some(f) = self.feed.as_mut() {
                    f.commanded = on;
                }
            }
            Command::MissFlips(n) => {
                if let Some(f) = self.feed.as_mut() {
                    f.miss += n;
                }
            }
        }
    }

    fn publish(&self) {
        let mut st = lock(&self.shared.status);
        st.controller_connected = self.connected;
        if let Some(f) = &self.feed {
            st.frames = f.frames;
            st.flips = f.flips;
            st.flips_missed = f.flips_missed;
            st.encoder_position = f.quad_pos;
        }
        if let Some(d) = &self.device {
            let s = d.stats();
            let p = d.parser_stats();
            st.requests = s.requests;
            st.writes = s.writes;
            st.replies = s.replies;
            st.events = s.events;
            st.device_discarded_bytes = p.discarded_bytes;
            st.device_bad_checksums = p.bad_checksums;
        }
    }
}

/// Flips the checksum byte of up to `*left` whole messages in `bytes`; returns how many.
fn corrupt_messages(bytes: &mut [u8], left: &mut u32) -> u64 {
    let mut pos = 0;
    let mut done = 0;
    while *left > 0 && pos < bytes.len() {
        let Ok(len) = MessageView::decode(&bytes[pos..]).map(|m| m.len()) else {
            break;
        };
        bytes[pos + len - 1] ^= 0x5A;
        pos += len;
        *left -= 1;
        done += 1;
    }
    done
}

/// Waits up to `ms` for `fd` to become readable, then empties it (a wake-up pipe).
fn wait_readable(fd: libc::c_int, ms: libc::c_int) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut p, 1, ms) } > 0 {
        drain_pipe(fd);
    }
}

fn drain_pipe(fd: libc::c_int) {
    let mut buf = [0u8; 64];
    // SAFETY: reading into a buffer of the given length from an owned non-blocking fd.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// Writes everything it can within `patience`; returns the bytes it had to drop.
fn write_all_nonblocking(fd: libc::c_int, mut bytes: &[u8], patience: Duration) -> usize {
    let end = Instant::now() + patience;
    while !bytes.is_empty() {
        // SAFETY: writing from a valid slice to an owned fd.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
            continue;
        }
        let e = std::io::Error::last_os_error();
        if n < 0 && e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < end {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        break;
    }
    bytes.len()
}

/// An input edge of the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    FrameClock,
    Photodiode(bool),
    /// Levels of the encoder's A and B lines after an edge.
    Encoder(bool, bool),
}

/// The simulated rig as the sync board's inputs see it: the microscope's frame clock at the
/// imaging rate, the virtual display's photodiode patch (toggling at every flip, 4 ms after it,
/// or only on request), and quadrature edges of the treadmill driven by the simulated running.
pub struct RigFeed {
    frame_rate: f64,
    next_frame: u64,
    behavior: Behavior,
    cm_per_count: f64,
    quad_pos: i64,
    display: VirtualDisplay,
    refresh_hz: f64,
    pd_level: bool,
    pending_pd: VecDeque<f64>,
    /// Feed times at which flips were requested (commanded display).
    pub flip_requests: VecDeque<f64>,
    pub commanded: bool,
    pub miss: u32,
    pub frames: u64,
    pub flips: u64,
    pub flips_missed: u64,
    started: bool,
}

/// Gray sequence of A leading B: AB = 00, 10, 11, 01.
const QUADRATURE: [(bool, bool); 4] = [(false, false), (true, false), (true, true), (false, true)];

/// The A/B levels of a quadrature encoder at position `counts` (x4 counting, A leading B counts
/// up; position 0 is A = B = 0).
pub fn quadrature_levels(counts: i64) -> (bool, bool) {
    QUADRATURE[counts.rem_euclid(4) as usize]
}

impl RigFeed {
    pub fn new(cfg: &RigConfig, seed: u64) -> Self {
        RigFeed {
            frame_rate: cfg.imaging.frame_rate_hz,
            next_frame: 1,
            behavior: Behavior::new(seed, cfg.imaging.frame_rate_hz),
            cm_per_count: cfg.sync.encoder_cm_per_count,
            quad_pos: 0,
            display: VirtualDisplay::new(
                cfg.display.refresh_hz,
                cfg.stimulus.frame_rate_hz,
                cfg.stimulus.frames_per_clip(),
                cfg.stimulus.gray_seconds,
                cfg.sim.clips,
                seed,
            ),
            refresh_hz: cfg.display.refresh_hz,
            pd_level: false,
            pending_pd: VecDeque::new(),
            flip_requests: VecDeque::new(),
            commanded: false,
            miss: 0,
            frames: 0,
            flips: 0,
            flips_missed: 0,
            started: false,
        }
    }

    /// Emits, in time order, every edge up to feed time `t` (seconds since the board started).
    pub fn advance(&mut self, t: f64, sink: &mut impl FnMut(f64, Edge)) {
        if !self.started {
            self.started = true;
            let (a, b) = QUADRATURE[0];
            sink(0.0, Edge::Encoder(a, b));
        }
        // Display flips schedule photodiode edges.
        if self.commanded {
            while let Some(req) = self.flip_requests.pop_front() {
                let vsync = (req * self.refresh_hz).ceil() / self.refresh_hz;
                if self.miss > 0 {
                    self.miss -= 1;
                    self.flips_missed += 1;
                } else {
                    self.pending_pd.push_back(vsync + PHOTODIODE_LATENCY_S);
                }
            }
        } else {
            self.flip_requests.clear();
            while self.display.next_flip_time() <= t {
                let (flip, _) = self.display.flip();
                if flip.time > t - 0.5 {
                    self.pending_pd.push_back(flip.time + PHOTODIODE_LATENCY_S);
                }
            }
        }
        loop {
            let frame_t = self.next_frame as f64 / self.frame_rate;
            let pd_t = self.pending_pd.front().copied().unwrap_or(f64::INFINITY);
            if frame_t.min(pd_t) > t {
                break;
            }
            if pd_t < frame_t {
                self.pending_pd.pop_front();
                self.pd_level = !self.pd_level;
                self.flips += 1;
                sink(pd_t, Edge::Photodiode(self.pd_level));
            } else {
                self.next_frame += 1;
                self.frames += 1;
                sink(frame_t, Edge::FrameClock);
                // The mouse runs one imaging frame; the treadmill turns with it.
                self.behavior.step();
                let target = (self.behavior.distance_cm / self.cm_per_count).round() as i64;
                while self.quad_pos < target {
                    self.quad_pos += 1;
                    let (a, b) = QUADRATURE[self.quad_pos.rem_euclid(4) as usize];
                    sink(frame_t, Edge::Encoder(a, b));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_makes_frames_flips_and_quadrature_in_order() {
        let cfg = RigConfig::embedded_sim();
        let mut feed = RigFeed::new(&cfg, 3);
        let mut edges = Vec::new();
        for ms in 1..=20_000 {
            feed.advance(f64::from(ms) * 1e-3, &mut |t, e| edges.push((t, e)));
        }
        let frames = edges.iter().filter(|e| e.1 == Edge::FrameClock).count();
        assert_eq!(frames, 600);
        let flips = edges
            .iter()
            .filter(|e| matches!(e.1, Edge::Photodiode(_)))
            .count();
        assert!((1190..=1200).contains(&flips), "{flips}");
        assert!(edges.windows(2).all(|w| w[0].0 <= w[1].0));
        // The encoder decodes to the feed's position.
        let mut q = twinrig_firmware::device::Quadrature::new();
        for (_, e) in &edges {
            if let Edge::Encoder(a, b) = e {
                q.update(*a, *b);
            }
        }
        assert_eq!(i64::from(q.position()), feed.quad_pos);
        assert_eq!(q.errors(), 0);
    }

    #[test]
    fn commanded_flips_wait_for_vsync_and_can_be_missed() {
        let cfg = RigConfig::embedded_sim();
        let mut feed = RigFeed::new(&cfg, 3);
        feed.commanded = true;
        feed.flip_requests.push_back(0.101);
        feed.miss = 1;
        feed.flip_requests.push_back(0.199);
        let mut pd = Vec::new();
        feed.advance(1.0, &mut |t, e| {
            if let Edge::Photodiode(l) = e {
                pd.push((t, l));
            }
        });
        // The first request was missed; the second flips at the vsync at 0.2 s.
        assert_eq!(pd.len(), 1);
        assert!(
            (pd[0].0 - (0.2 + PHOTODIODE_LATENCY_S)).abs() < 1e-9,
            "{pd:?}"
        );
        assert_eq!(feed.flips_missed, 1);
    }

    #[test]
    fn corrupting_whole_messages() {
        use twinrig_firmware::harp::{Message, Payload};
        let mut buf = [0u8; 64];
        let a = Message::write(1, Payload::U8(&[1]))
            .encode_into(&mut buf)
            .unwrap();
        let b = Message::write(2, Payload::U8(&[2]))
            .encode_into(&mut buf[a..])
            .unwrap();
        let mut left = 1;
        assert_eq!(corrupt_messages(&mut buf[..a + b], &mut left), 1);
        assert!(MessageView::decode(&buf[..a]).is_err());
        assert!(MessageView::decode(&buf[a..a + b]).is_ok());
    }
}
