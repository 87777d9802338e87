//! [`HarpDriver`]: one Harp device on one serial port.
//!
//! Threads: the caller's threads send requests (one at a time, serialised by a mutex) and wait
//! for the matching reply on a channel; one reader thread owns the receiving side of the port,
//! parses the stream, feeds the clock estimate, hands replies to the waiting request and events
//! to the event channel (never blocking: a full channel counts a dropped event), and, when the
//! port fails, reopens it and repeats the handshake itself before it resumes.

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, Receiver, RecvTimeoutError, Sender};
use serde::Serialize;
use serialport::SerialPort;
use twinrig_firmware::device::registers::{address as reg, operation_ctrl as op};
use twinrig_firmware::harp::{
    Element, ElementType, Message, MessageType, MessageView, Parser, ParserStats, Payload,
    PayloadView,
};

use super::board::{BoardMap, Decoder, EventKind, OutputLine};
use super::clock::{ClockEstimate, ClockSync};
use super::HarpError;
use crate::config::Sync;

/// `R_OPERATION_CTRL` written to start: Active, heartbeat, visual indicators, mode LED.
pub const OPERATION_ACTIVE: u8 = op::MODE_ACTIVE | op::HEARTBEAT_EN | op::VISUAL_EN | op::OPLED_EN;
/// `R_OPERATION_CTRL` written before closing: Standby with the indicators.
pub const OPERATION_STANDBY: u8 = op::MODE_STANDBY | op::VISUAL_EN | op::OPLED_EN;

/// Parser buffer: the longest message of either board is under 64 bytes.
const PARSER_CAPACITY: usize = 1024;
/// How often the reader thread wakes to look at the stop flag.
const READ_SLICE: Duration = Duration::from_millis(20);

/// How to talk to the device.
#[derive(Debug, Clone)]
pub struct HarpOptions {
    pub baud: u32,
    pub map: BoardMap,
    /// Wait for one reply.
    pub timeout: Duration,
    /// Tries per request (the first included).
    pub tries: u32,
    /// Reopen the port when the device disappears.
    pub reconnect: bool,
    /// Pause between reopening attempts.
    pub reconnect_interval: Duration,
    /// Events buffered for the rig before new ones are dropped (and counted).
    pub event_capacity: usize,
    /// Clock fit window and bin, seconds of device time.
    pub clock_window_s: f64,
    pub clock_bin_s: f64,
    /// The host clock events are mapped onto (`rig_s`, `received_s`, [`HarpDriver::host_now_s`]);
    /// `None`: seconds since the driver started, on the host's monotonic clock. `rig run` passes
    /// the session's clock, and the simulated rig's clock when it drives a simulated board faster
    /// than real time.
    pub host_clock: Option<HostClock>,
}

/// A host clock in seconds (see [`HarpOptions::host_clock`]). It must never go backwards.
#[derive(Clone)]
pub struct HostClock(pub Arc<dyn Fn() -> f64 + Send + std::marker::Sync>);

impl std::fmt::Debug for HostClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostClock({:.6} s)", (self.0)())
    }
}

impl HarpOptions {
    /// Options for the `[sync]` section of a rig config.
    pub fn from_config(sync: &Sync) -> Result<Self, HarpError> {
        Ok(HarpOptions {
            baud: sync.baud,
            map: BoardMap::from_config(sync)?,
            timeout: Duration::from_millis(100),
            tries: 3,
            reconnect: true,
            reconnect_interval: Duration::from_millis(50),
            event_capacity: 8192,
            clock_window_s: 30.0,
            clock_bin_s: 0.25,
            host_clock: None,
        })
    }
}

/// What the handshake learnt about the device.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Identity {
    pub who_am_i: u16,
    /// `major.minor` from `R_FW_VERSION_H/L`.
    pub firmware: String,
    /// `major.minor` from `R_HW_VERSION_H/L`.
    pub hardware: String,
    /// Harp core protocol `major.minor` from `R_CORE_VERSION_H/L`.
    pub core: String,
    /// Protocol, firmware and hardware `x.y.z` from `R_VERSION`, when the device has it.
    pub version: Option<String>,
    pub name: String,
}

/// A register's contents as a reply carried them.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterValue {
    pub address: u8,
    pub message_type: MessageType,
    pub element: ElementType,
    pub bytes: Vec<u8>,
    /// Device time of the reply, seconds.
    pub device_s: Option<f64>,
    /// Host time the reply was read, seconds since the driver started.
    pub host_s: f64,
}

impl RegisterValue {
    fn from_view(msg: &MessageView<'_>, host_s: f64) -> Self {
        let payload = msg.payload();
        RegisterValue {
            address: msg.address(),
            message_type: msg.message_type(),
            element: payload.element_type(),
            bytes: payload.as_bytes().to_vec(),
            device_s: msg.timestamp().map(|t| t.to_micros() as f64 * 1e-6),
            host_s,
        }
    }

    pub fn payload(&self) -> PayloadView<'_> {
        PayloadView::new(self.element, &self.bytes).unwrap_or(PayloadView::EMPTY)
    }

    pub fn first<T: Element>(&self) -> Option<T> {
        self.payload().first::<T>()
    }

    pub fn is_error(&self) -> bool {
        self.message_type.is_error()
    }
}

/// One rig event from the board, on both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SyncEvent {
    #[serde(flatten)]
    pub kind: EventKind,
    /// Device (Harp) time of the event: the edge's capture time, seconds.
    pub device_s: f64,
    /// The same instant on the host clock (seconds since the driver started) through the clock
    /// mapping as estimated when the event arrived: the rig clock, continuous across reconnects.
    pub rig_s: f64,
    /// When the host read the message, seconds since the driver started.
    pub received_s: f64,
    /// Which connection (0 = the first; +1 on every reconnection) the event came through.
    pub connection: u32,
}

/// A time the device was gone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gap {
    /// Host time the port failed, seconds since the driver started.
    pub start_s: f64,
    /// Host time the device was back and Active again.
    pub end_s: f64,
    pub duration_s: f64,
    /// Why the connection was lost.
    pub reason: String,
    /// The connection that ended.
    pub connection: u32,
}

/// Link counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LinkStats {
    pub connected: bool,
    pub connection: u32,
    pub bytes_in: u64,
    pub messages: u64,
    pub events: u64,
    /// Events not delivered because the rig did not drain the channel.
    pub events_dropped: u64,
    pub replies: u64,
    pub error_replies: u64,
    /// Replies that arrived when no request waited for them (late replies after a timeout).
    pub unmatched_replies: u64,
    pub requests: u64,
    pub retries: u64,
    pub timeouts: u64,
    /// Bytes the parser skipped (noise, and the first byte of each rejected frame).
    pub discarded_bytes: u64,
    /// Complete frames with a wrong checksum.
    pub bad_checksums: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
}

/// Round-trip time statistics of register reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RoundTrip {
    pub count: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

#[derive(Default)]
struct Counters {
    bytes_in: AtomicU64,
    messages: AtomicU64,
    events: AtomicU64,
    events_dropped: AtomicU64,
    replies: AtomicU64,
    error_replies: AtomicU64,
    unmatched_replies: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    timeouts: AtomicU64,
    reconnects: AtomicU64,
}

#[derive(Default)]
struct LinkState {
    connected: bool,
    connection: u32,
    gaps: Vec<Gap>,
    identity: Identity,
    last_error: Option<String>,
    parser: ParserStats,
}

struct Shared {
    path: String,
    opts: HarpOptions,
    epoch: Instant,
    writer: Mutex<Option<Box<dyn SerialPort>>>,
    /// Held for a whole request: serialises requests and owns the reply channel's receiver.
    requests: Mutex<Receiver<RegisterValue>>,
    /// True while a request waits, so that the reader only forwards replies somebody wants.
    waiting: AtomicBool,
    replies: Sender<RegisterValue>,
    events: Sender<SyncEvent>,
    clock: Mutex<ClockSync>,
    state: Mutex<LinkState>,
    counters: Counters,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn now_s(&self) -> f64 {
        match &self.opts.host_clock {
            Some(c) => (c.0)(),
            None => self.epoch.elapsed().as_secs_f64(),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) -> Result<(), HarpError> {
        let mut w = lock(&self.writer);
        let Some(port) = w.as_mut() else {
            return Err(HarpError::Disconnected {
                path: self.path.clone(),
            });
        };
        port.write_all(bytes).map_err(|source| HarpError::Io {
            path: self.path.clone(),
            source,
        })
    }

    fn timeout_error(&self, what: String) -> HarpError {
        HarpError::Timeout {
            path: self.path.clone(),
            what,
            tries: self.opts.tries.max(1),
            timeout_ms: self.opts.timeout.as_millis() as u64,
            baud: self.opts.baud,
        }
    }
}

/// The receiving side of one connection, owned by the reader thread (or by `open` until the
/// reader starts).
struct Conn {
    port: Box<dyn SerialPort>,
    parser: Parser<PARSER_CAPACITY>,
    decoder: Decoder,
    buf: Vec<u8>,
    connection: u32,
}

/// What reading the port produced.
enum Read1 {
    Data,
    Idle,
    Failed(String),
}

impl Conn {
    /// Reads once (up to `wait`) and handles every complete message. `want` receives the replies
    /// matching a request made inline (during a handshake); others go to the shared channel.
    fn pump(
        &mut self,
        shared: &Shared,
        wait: Duration,
        mut want: Option<(&mut Option<RegisterValue>, u8, MessageType)>,
    ) -> Read1 {
        let _ = self.port.set_timeout(wait.max(Duration::from_micros(100)));
        let n = match self.port.read(&mut self.buf) {
            Ok(0) => return Read1::Failed("end of stream".into()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::Interrupted => {
                return Read1::Idle
            }
            Err(e) => return Read1::Failed(e.to_string()),
        };
        let host_s = shared.now_s();
        shared
            .counters
            .bytes_in
            .fetch_add(n as u64, Ordering::Relaxed);
        let Conn {
            parser,
            decoder,
            buf,
            connection,
            ..
        } = self;
        let connection = *connection;
        parser.push(&buf[..n], |msg| {
            shared.counters.messages.fetch_add(1, Ordering::Relaxed);
            let device_s = msg.timestamp().map(|t| t.to_micros() as f64 * 1e-6);
            let estimate = {
                let mut clock = lock(&shared.clock);
                if let Some(d) = device_s {
                    clock.observe(d, host_s);
                }
                clock.estimate()
            };
            match msg.message_type().without_error() {
                MessageType::Event => {
                    let Some(d) = device_s else { return };
                    let rig_s = estimate.map_or(host_s, |e| e.to_host(d));
                    decoder.decode(&msg, d, &mut |kind| {
                        shared.counters.events.fetch_add(1, Ordering::Relaxed);
                        let ev = SyncEvent {
                            kind,
                            device_s: d,
                            rig_s,
                            received_s: host_s,
                            connection,
                        };
                        if shared.events.try_send(ev).is_err() {
                            shared
                                .counters
                                .events_dropped
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                _ => {
                    shared.counters.replies.fetch_add(1, Ordering::Relaxed);
                    if msg.is_error() {
                        shared
                            .counters
                            .error_replies
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    let value = RegisterValue::from_view(&msg, host_s);
                    if let Some((slot, address, kind)) = want.as_mut() {
                        if value.address == *address && value.message_type.without_error() == *kind
                        {
                            **slot = Some(value);
                            return;
                        }
                    }
                    if !shared.waiting.load(Ordering::Acquire)
                        || shared.replies.try_send(value).is_err()
                    {
                        shared
                            .counters
                            .unmatched_replies
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        lock(&shared.state).parser = self.parser.stats();
        Read1::Data
    }

    /// A request made by the thread that owns the connection (the handshake).
    fn transact(
        &mut self,
        shared: &Shared,
        msg: &Message<'_>,
        what: &str,
    ) -> Result<RegisterValue, HarpError> {
        let mut wire = [0u8; 64];
        let n = msg.encode_into(&mut wire).map_err(HarpError::Codec)?;
        let kind = msg.message_type.without_error();
        for attempt in 0..shared.opts.tries.max(1) {
            if attempt > 0 {
                shared.counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            shared.counters.requests.fetch_add(1, Ordering::Relaxed);
            shared.write_bytes(&wire[..n])?;
            let deadline = Instant::now() + shared.opts.timeout;
            let mut slot = None;
            while slot.is_none() {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let wait = (deadline - now).min(READ_SLICE);
                if let Read1::Failed(e) =
                    self.pump(shared, wait, Some((&mut slot, msg.address, kind)))
                {
                    return Err(HarpError::Io {
                        path: shared.path.clone(),
                        source: std::io::Error::other(e),
                    });
                }
            }
            if let Some(v) = slot {
                return check_reply(v, what);
            }
        }
        shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
        Err(shared.timeout_error(what.to_string()))
    }

    fn read_u8(&mut self, shared: &Shared, address: u8, what: &str) -> Result<u8, HarpError> {
        let v = self.transact(shared, &Message::read(address, ElementType::U8), what)?;
        v.first::<u8>().ok_or_else(|| bad_payload(what, &v))
    }

    /// WHO_AM_I, versions, name; then the board's setup writes and Active mode. A device whose
    /// WHO_AM_I is not `map.who_am_i` is refused before anything is written to it: the setup
    /// writes of one board are meaningless (or harmful) to another, and their refusal would
    /// hide the real cause.
    fn handshake(&mut self, shared: &Shared) -> Result<Identity, HarpError> {
        let who = self.transact(
            shared,
            &Message::read(reg::WHO_AM_I, ElementType::U16),
            "a read of R_WHO_AM_I",
        )?;
        let who_am_i = who
            .first::<u16>()
            .ok_or_else(|| bad_payload("a read of R_WHO_AM_I", &who))?;
        let map = &shared.opts.map;
        if who_am_i != map.who_am_i {
            return Err(HarpError::WrongDevice {
                path: shared.path.clone(),
                found: who_am_i,
                expected: map.who_am_i,
            });
        }
        let mut id = Identity {
            who_am_i,
            ..Default::default()
        };
        let pair = |conn: &mut Conn, h: u8, l: u8, what: &str| -> Result<String, HarpError> {
            Ok(format!(
                "{}.{}",
                conn.read_u8(shared, h, what)?,
                conn.read_u8(shared, l, what)?
            ))
        };
        id.firmware = pair(
            self,
            reg::FW_VERSION_H,
            reg::FW_VERSION_L,
            "a read of R_FW_VERSION",
        )?;
        id.hardware = pair(
            self,
            reg::HW_VERSION_H,
            reg::HW_VERSION_L,
            "a read of R_HW_VERSION",
        )?;
        id.core = pair(
            self,
            reg::CORE_VERSION_H,
            reg::CORE_VERSION_L,
            "a read of R_CORE_VERSION",
        )?;
        // R_VERSION is core 1.12+; older firmware answers with an error, which is fine.
        if let Ok(v) = self.transact(
            shared,
            &Message::read(reg::VERSION, ElementType::U8),
            "a read of R_VERSION",
        ) {
            if let Some(b) = v.payload().as_u8().filter(|b| b.len() >= 9) {
                id.version = Some(format!(
                    "protocol {}.{}.{}, firmware {}.{}.{}, hardware {}.{}.{}",
                    b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8]
                ));
            }
        }
        let name = self.transact(
            shared,
            &Message::read(reg::DEVICE_NAME, ElementType::U8),
            "a read of R_DEVICE_NAME",
        )?;
        let raw = name.payload().as_u8().unwrap_or(&[]);
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        id.name = String::from_utf8_lossy(&raw[..end]).trim().to_string();

        for w in &map.setup {
            let what = format!("the setup write {} (register {})", w.what, w.address);
            let msg = write_message(w.address, w.element, w.value);
            self.transact(shared, &msg.as_message(), &what)?;
        }
        self.transact(
            shared,
            &Message::write(reg::OPERATION_CTRL, Payload::U8(&[OPERATION_ACTIVE])),
            "the write of R_OPERATION_CTRL = Active",
        )?;
        Ok(id)
    }
}

fn bad_payload(what: &str, v: &RegisterValue) -> HarpError {
    HarpError::BadReply {
        what: what.to_string(),
        detail: format!("payload of {} bytes of type {:?}", v.bytes.len(), v.element),
    }
}

fn check_reply(v: RegisterValue, what: &str) -> Result<RegisterValue, HarpError> {
    if v.is_error() {
        Err(HarpError::Refused {
            what: what.to_string(),
        })
    } else {
        Ok(v)
    }
}

/// An owned single-element write request.
struct OwnedWrite {
    address: u8,
    value: WriteValue,
}

enum WriteValue {
    U8(u8),
    U16(u16),
    U32(u32),
    S16(i16),
    S32(i32),
}

impl OwnedWrite {
    fn as_message(&self) -> Message<'_> {
        let payload = match &self.value {
            WriteValue::U8(v) => Payload::U8(std::slice::from_ref(v)),
            WriteValue::U16(v) => Payload::U16(std::slice::from_ref(v)),
            WriteValue::U32(v) => Payload::U32(std::slice::from_ref(v)),
            WriteValue::S16(v) => Payload::S16(std::slice::from_ref(v)),
            WriteValue::S32(v) => Payload::S32(std::slice::from_ref(v)),
        };
        Message::write(self.address, payload)
    }
}

fn write_message(address: u8, element: ElementType, value: i64) -> OwnedWrite {
    let value = match element {
        ElementType::U16 => WriteValue::U16(value as u16),
        ElementType::U32 => WriteValue::U32(value as u32),
        ElementType::S16 => WriteValue::S16(value as i16),
        ElementType::S32 => WriteValue::S32(value as i32),
        _ => WriteValue::U8(value as u8),
    };
    OwnedWrite { address, value }
}

/// A port opened twice over: the reader's side and the writer's side.
type PortPair = (Box<dyn SerialPort>, Box<dyn SerialPort>);

fn open_port(path: &str, baud: u32) -> Result<PortPair, String> {
    let port = serialport::new(path, baud)
        .timeout(READ_SLICE)
        .dtr_on_open(true)
        .open()
        .map_err(|e| e.to_string())?;
    let _ = port.clear(serialport::ClearBuffer::All);
    let writer = port.try_clone().map_err(|e| e.to_string())?;
    Ok((port, writer))
}

/// A Harp device on a serial port. See the [module documentation](self).
pub struct HarpDriver {
    shared: Arc<Shared>,
    events: Receiver<SyncEvent>,
    reader: Option<JoinHandle<()>>,
}

impl HarpDriver {
    /// Opens `path`, performs the handshake and starts the event stream.
    pub fn open(path: &str, opts: HarpOptions) -> Result<Self, HarpError> {
        let (port, writer) = open_port(path, opts.baud).map_err(|reason| HarpError::Open {
            path: path.to_string(),
            reason,
        })?;
        let (replies_tx, replies_rx) = bounded(16);
        let (events_tx, events_rx) = bounded(opts.event_capacity.max(16));
        let shared = Arc::new(Shared {
            path: path.to_string(),
            clock: Mutex::new(ClockSync::new(opts.clock_window_s, opts.clock_bin_s)),
            epoch: Instant::now(),
            writer: Mutex::new(Some(writer)),
            requests: Mutex::new(replies_rx),
            waiting: AtomicBool::new(false),
            replies: replies_tx,
            events: events_tx,
            state: Mutex::new(LinkState::default()),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            opts,
        });
        let mut conn = Conn {
            port,
            parser: Parser::new(),
            decoder: Decoder::new(shared.opts.map.clone()),
            buf: vec![0u8; 4096],
            connection: 0,
        };
        let identity = conn.handshake(&shared)?;
        tracing::debug!(
            path,
            who_am_i = identity.who_am_i,
            firmware = %identity.firmware,
            name = %identity.name,
            "harp device active"
        );
        {
            let mut st = lock(&shared.state);
            st.connected = true;
            st.identity = identity;
        }
        let s = shared.clone();
        let reader = std::thread::Builder::new()
            .name("harp-reader".into())
            .spawn(move || reader_loop(s, conn))
            .map_err(|e| HarpError::Io {
                path: path.to_string(),
                source: e,
            })?;
        Ok(HarpDriver {
            shared,
            events: events_rx,
            reader: Some(reader),
        })
    }

    /// The port path.
    pub fn path(&self) -> &str {
        &self.shared.path
    }

    /// The board map in use.
    pub fn map(&self) -> &BoardMap {
        &self.shared.opts.map
    }

    /// Host time now, seconds since the driver started (the clock of `rig_s` and `received_s`).
    pub fn host_now_s(&self) -> f64 {
        self.shared.now_s()
    }

    /// What the last successful handshake learnt.
    pub fn identity(&self) -> Identity {
        lock(&self.shared.state).identity.clone()
    }

    /// The event stream (a clone of the receiver; events are delivered once, to whichever
    /// receiver takes them).
    pub fn events(&self) -> Receiver<SyncEvent> {
        self.events.clone()
    }

    /// The clock mapping as estimated now.
    pub fn clock(&self) -> Option<ClockEstimate> {
        lock(&self.shared.clock).estimate()
    }

    /// Times the device was gone, oldest first.
    pub fn gaps(&self) -> Vec<Gap> {
        lock(&self.shared.state).gaps.clone()
    }

    pub fn is_connected(&self) -> bool {
        lock(&self.shared.state).connected
    }

    pub fn stats(&self) -> LinkStats {
        let c = &self.shared.counters;
        let st = lock(&self.shared.state);
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LinkStats {
            connected: st.connected,
            connection: st.connection,
            bytes_in: g(&c.bytes_in),
            messages: g(&c.messages),
            events: g(&c.events),
            events_dropped: g(&c.events_dropped),
            replies: g(&c.replies),
            error_replies: g(&c.error_replies),
            unmatched_replies: g(&c.unmatched_replies),
            requests: g(&c.requests),
            retries: g(&c.retries),
            timeouts: g(&c.timeouts),
            discarded_bytes: st.parser.discarded_bytes,
            bad_checksums: st.parser.bad_checksums,
            reconnects: g(&c.reconnects),
            last_error: st.last_error.clone(),
        }
    }

    /// Sends a request and waits for its reply (same address and type), retrying on timeout.
    pub fn request(&self, msg: &Message<'_>, what: &str) -> Result<RegisterValue, HarpError> {
        let shared = &*self.shared;
        let mut wire = [0u8; 300];
        let n = msg.encode_into(&mut wire).map_err(HarpError::Codec)?;
        let kind = msg.message_type.without_error();
        let rx = lock(&shared.requests);
        for attempt in 0..shared.opts.tries.max(1) {
            if attempt > 0 {
                shared.counters.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(what, attempt, "harp request retry");
            }
            while rx.try_recv().is_ok() {
                shared
                    .counters
                    .unmatched_replies
                    .fetch_add(1, Ordering::Relaxed);
            }
            shared.counters.requests.fetch_add(1, Ordering::Relaxed);
            shared.waiting.store(true, Ordering::Release);
            let sent = shared.write_bytes(&wire[..n]);
            if let Err(e) = sent {
                shared.waiting.store(false, Ordering::Release);
                return Err(e);
            }
            let deadline = Instant::now() + shared.opts.timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(v) if v.address == msg.address && v.message_type.without_error() == kind => {
                        shared.waiting.store(false, Ordering::Release);
                        return check_reply(v, what);
                    }
                    Ok(_) => {
                        shared
                            .counters
                            .unmatched_replies
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        shared.waiting.store(false, Ordering::Release);
                        return Err(HarpError::Disconnected {
                            path: shared.path.clone(),
                        });
                    }
                }
            }
        }
        shared.waiting.store(false, Ordering::Release);
        shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
        Err(shared.timeout_error(what.to_string()))
    }

    /// Reads a register of the given element type.
    pub fn read(&self, address: u8, element: ElementType) -> Result<RegisterValue, HarpError> {
        self.request(
            &Message::read(address, element),
            &format!("a read of register {address}"),
        )
    }

    /// Writes a register; returns the reply (the register's contents after the write).
    pub fn write(&self, address: u8, payload: Payload<'_>) -> Result<RegisterValue, HarpError> {
        self.request(
            &Message::write(address, payload),
            &format!("a write of register {address}"),
        )
    }

    /// Raises or lowers one trigger output.
    pub fn set_output(&self, line: OutputLine, on: bool) -> Result<(), HarpError> {
        let o = self.shared.opts.map.outputs;
        let address = if on { o.set } else { o.set.wrapping_add(1) };
        let msg = write_message(address, o.element, i64::from(self.map().line_mask(line)));
        self.request(&msg.as_message(), &format!("setting output {line:?}"))?;
        Ok(())
    }

    /// Times `n` reads of `R_WHO_AM_I`.
    pub fn round_trip(&self, n: usize) -> Result<RoundTrip, HarpError> {
        let mut us = Vec::with_capacity(n);
        let msg = Message::read(reg::WHO_AM_I, ElementType::U16);
        for _ in 0..n {
            let t = Instant::now();
            self.request(&msg, "a read of R_WHO_AM_I")?;
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(round_trip_stats(&mut us))
    }

    /// Waits until the device is connected (e.g. after a replug), up to `timeout`.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.is_connected() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.is_connected()
    }

    /// Puts the device in Standby and stops the reader thread.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.reader.is_none() {
            return;
        }
        if self.is_connected() {
            let mut wire = [0u8; 16];
            let msg = Message::write(reg::OPERATION_CTRL, Payload::U8(&[OPERATION_STANDBY]));
            if let Ok(n) = msg.encode_into(&mut wire) {
                let _ = self.shared.write_bytes(&wire[..n]);
            }
        }
        self.shared.stop.store(true, Ordering::Release);
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
        *lock(&self.shared.writer) = None;
    }
}

impl Drop for HarpDriver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// p50/p99/max of round-trip samples in microseconds (sorted in place).
pub fn round_trip_stats(us: &mut [f64]) -> RoundTrip {
    us.sort_by(f64::total_cmp);
    let q = |p: f64| -> f64 {
        if us.is_empty() {
            return 0.0;
        }
        let i = ((us.len() - 1) as f64 * p).round() as usize;
        us[i.min(us.len() - 1)]
    };
    RoundTrip {
        count: us.len(),
        p50_us: q(0.5),
        p99_us: q(0.99),
        max_us: us.last().copied().unwrap_or(0.0),
    }
}

fn reader_loop(shared: Arc<Shared>, conn: Conn) {
    let mut conn = Some(conn);
    let mut lost: Option<(f64, String, u32)> = None;
    let mut parser_carry: Parser<PARSER_CAPACITY> = Parser::new();
    let mut decoder = Decoder::new(shared.opts.map.clone());
    let mut connection = 0u32;
    while !shared.stop.load(Ordering::Acquire) {
        if let Some(c) = conn.as_mut() {
            if let Read1::Failed(reason) = c.pump(&shared, READ_SLICE, None) {
                let now = shared.now_s();
                tracing::warn!(path = %shared.path, %reason, "harp device lost");
                *lock(&shared.writer) = None;
                {
                    let mut st = lock(&shared.state);
                    st.connected = false;
                    st.last_error = Some(reason.clone());
                }
                if let Some(old) = conn.take() {
                    parser_carry = old.parser;
                    decoder = old.decoder;
                    connection = old.connection;
                }
                lost = Some((now, reason, connection));
                if !shared.opts.reconnect {
                    break;
                }
            }
            continue;
        }
        // Disconnected: try to reopen.
        std::thread::sleep(shared.opts.reconnect_interval);
        let Ok((port, writer)) = open_port(&shared.path, shared.opts.baud) else {
            continue;
        };
        *lock(&shared.writer) = Some(writer);
        parser_carry.clear();
        decoder.reset();
        lock(&shared.clock).reset();
        let mut c = Conn {
            port,
            parser: parser_carry.clone(),
            decoder: decoder.clone(),
            buf: vec![0u8; 4096],
            connection: connection + 1,
        };
        match c.handshake(&shared) {
            Ok(identity) => {
                let now = shared.now_s();
                shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                let mut st = lock(&shared.state);
                if let Some((start_s, reason, conn_id)) = lost.take() {
                    tracing::info!(
                        path = %shared.path,
                        gap_s = now - start_s,
                        "harp device back"
                    );
                    st.gaps.push(Gap {
                        start_s,
                        end_s: now,
                        duration_s: now - start_s,
                        reason,
                        connection: conn_id,
                    });
                }
                st.connected = true;
                st.connection = c.connection;
                st.identity = identity;
                drop(st);
                conn = Some(c);
            }
            Err(e) => {
                tracing::debug!(error = %e, "harp handshake after reopening failed");
                lock(&shared.state).last_error = Some(e.to_string());
                *lock(&shared.writer) = None;
                parser_carry = c.parser;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_quantiles() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let r = round_trip_stats(&mut v);
        assert_eq!((r.count, r.max_us), (100, 100.0));
        assert!((r.p50_us - 51.0).abs() <= 1.0 && r.p99_us >= 98.0);
        assert_eq!(round_trip_stats(&mut []).count, 0);
    }

    #[test]
    fn open_missing_port_is_a_clear_error() {
        let opts =
            HarpOptions::from_config(&crate::config::RigConfig::embedded_sim().sync).unwrap();
        let err = HarpDriver::open("/dev/does-not-exist", opts)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/dev/does-not-exist"), "{err}");
    }
}
