//! Live frame stream: acquisition software (a ScanImage user function, a camera SDK, `rig stream`)
//! sends frames over TCP or a Unix socket in the protocol of docs/frame-protocol.md, and
//! [`StreamSource`] hands them to the pipeline as a [`FrameSource`].
//!
//! Threads and owners:
//! - the source owns a tokio runtime (one worker thread, `stream-rx`) that accepts one client at a
//!   time, validates every header and reads each payload straight into a preallocated frame buffer
//!   taken from a pool;
//! - full buffers travel to `next_frame` (the pipeline's acquisition thread) over a bounded
//!   `crossbeam` channel, are copied into the caller's ring slot and go back to the pool over a
//!   second bounded channel, so steady-state ingest allocates nothing per frame.
//!
//! Back-pressure: when the pool is empty (the recorder is behind) the connection stops reading, the
//! kernel's socket buffers fill and TCP slows the sender down. The receiver never blocks a sender
//! indefinitely: after `stall_timeout` without a free buffer it reads frames into a scratch buffer
//! and drops them, counting each (`frames_dropped`), so an acquisition program is never wedged by a
//! wedged recorder.
//!
//! Bad input (wrong magic, version, checksum, kind, dtype, shape, size, a truncated or stalled
//! packet) is logged with the peer and the reason, counted, and the offending connection is closed;
//! the listener keeps accepting. Frames with a bad timestamp or out-of-order index are dropped and
//! counted, but the connection stays up (its framing is intact). A second client while one is
//! connected is refused at once with a logged reason and the first keeps streaming.
//!
//! Nobody holds the single stream slot without streaming: a new connection has
//! `first_header_timeout` to send a valid frame header (an idle or trickling client is closed
//! and counted as `idle_closed`), and a started header or payload has `stall_timeout` to arrive.
//! An end-of-stream message ends the session only from a connection that has had a frame
//! accepted; from any other it is ignored, logged and counted (`end_of_stream_ignored`).

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};

use super::{AcquireError, FrameInfo, FrameSource};
use crate::config::Imaging;

/// First 8 bytes of every message.
pub const MAGIC: [u8; 8] = *b"TRIGFRM1";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes in a message header.
pub const HEADER_LEN: usize = 64;
/// Bytes covered by the header checksum (everything before it).
pub const CRC_OFFSET: usize = 60;
/// Pixel type code: little-endian u16.
pub const DTYPE_U16: u16 = 1;

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320): the checksum of zlib, Python's
/// `zlib.crc32` and Java's `java.util.zip.CRC32`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

static CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MsgKind {
    /// One plane of one frame; `payload_len` pixel bytes follow.
    Frame = 1,
    /// The sender is done; no payload. `index` = frames it sent on this connection.
    EndOfStream = 2,
}

/// The clock a frame's timestamp is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// The rig clock (seconds since session start): recorded as sent.
    Rig = 0,
    /// The sender's own clock (seconds, any origin): shifted onto the rig clock by an offset fixed
    /// at the first frame of each connection.
    Sender = 1,
}

/// One message header (64 bytes on the wire, little-endian; see docs/frame-protocol.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameHeader {
    pub kind: MsgKind,
    pub plane: u16,
    pub dtype: u16,
    pub index: u64,
    pub time: f64,
    pub height: u32,
    pub width: u32,
    pub payload_len: u64,
    pub clock: Clock,
}

/// Why a message, a frame or a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reject {
    BadMagic,
    BadVersion,
    BadChecksum,
    BadKind,
    BadDtype,
    BadShape,
    BadSize,
    BadTimestamp,
    OutOfOrder,
    Truncated,
    Stalled,
    Io,
}

impl Reject {
    pub const ALL: [Reject; 12] = [
        Reject::BadMagic,
        Reject::BadVersion,
        Reject::BadChecksum,
        Reject::BadKind,
        Reject::BadDtype,
        Reject::BadShape,
        Reject::BadSize,
        Reject::BadTimestamp,
        Reject::OutOfOrder,
        Reject::Truncated,
        Reject::Stalled,
        Reject::Io,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reject::BadMagic => "bad_magic",
            Reject::BadVersion => "bad_version",
            Reject::BadChecksum => "bad_checksum",
            Reject::BadKind => "bad_kind",
            Reject::BadDtype => "bad_dtype",
            Reject::BadShape => "bad_shape",
            Reject::BadSize => "bad_size",
            Reject::BadTimestamp => "bad_timestamp",
            Reject::OutOfOrder => "out_of_order",
            Reject::Truncated => "truncated",
            Reject::Stalled => "stalled",
            Reject::Io => "io",
        }
    }

    /// `true` when the frame is dropped but the connection's framing is intact, so it stays open.
    pub fn keeps_connection(self) -> bool {
        matches!(self, Reject::BadTimestamp | Reject::OutOfOrder)
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FrameHeader {
    /// A u16 frame header; `payload_len` follows from the shape.
    pub fn frame(index: u64, time: f64, clock: Clock, plane: u16, height: u32, width: u32) -> Self {
        FrameHeader {
            kind: MsgKind::Frame,
            plane,
            dtype: DTYPE_U16,
            index,
            time,
            height,
            width,
            payload_len: height as u64 * width as u64 * 2,
            clock,
        }
    }

    /// The end-of-stream message; `frames_sent` on this connection goes in `index`.
    pub fn end_of_stream(frames_sent: u64) -> Self {
        FrameHeader {
            kind: MsgKind::EndOfStream,
            plane: 0,
            dtype: 0,
            index: frames_sent,
            time: 0.0,
            height: 0,
            width: 0,
            payload_len: 0,
            clock: Clock::Rig,
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(self.kind as u16).to_le_bytes());
        b[12..14].copy_from_slice(&self.plane.to_le_bytes());
        b[14..16].copy_from_slice(&self.dtype.to_le_bytes());
        b[16..24].copy_from_slice(&self.index.to_le_bytes());
        b[24..32].copy_from_slice(&self.time.to_le_bytes());
        b[32..36].copy_from_slice(&self.height.to_le_bytes());
        b[36..40].copy_from_slice(&self.width.to_le_bytes());
        b[40..48].copy_from_slice(&self.payload_len.to_le_bytes());
        b[48..50].copy_from_slice(&(self.clock as u16).to_le_bytes());
        // 50..60 reserved, zero.
        let crc = crc32(&b[..CRC_OFFSET]);
        b[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks a header on its own (magic, version, checksum, kind, clock); the shape is
    /// checked against the rig's config by the receiver.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, (Reject, String)> {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        if b[0..8] != MAGIC {
            return Err((
                Reject::BadMagic,
                format!(
                    "magic {:?}, expected {:?}",
                    String::from_utf8_lossy(&b[0..8]),
                    "TRIGFRM1"
                ),
            ));
        }
        let version = u16_at(8);
        if version != PROTOCOL_VERSION {
            return Err((
                Reject::BadVersion,
                format!("protocol version {version}; this receiver speaks {PROTOCOL_VERSION}"),
            ));
        }
        let crc = u32_at(CRC_OFFSET);
        let want = crc32(&b[..CRC_OFFSET]);
        if crc != want {
            return Err((
                Reject::BadChecksum,
                format!("header checksum {crc:#010x}, computed {want:#010x}"),
            ));
        }
        let kind = match u16_at(10) {
            1 => MsgKind::Frame,
            2 => MsgKind::EndOfStream,
            k => return Err((Reject::BadKind, format!("message kind {k}; known: 1, 2"))),
        };
        let clock = match u16_at(48) {
            0 => Clock::Rig,
            1 => Clock::Sender,
            c => {
                return Err((
                    Reject::BadTimestamp,
                    format!("clock code {c}; known: 0 (rig), 1 (sender)"),
                ))
            }
        };
        Ok(FrameHeader {
            kind,
            plane: u16_at(12),
            dtype: u16_at(14),
            index: u64_at(16),
            time: f64::from_bits(u64_at(24)),
            height: u32_at(32),
            width: u32_at(36),
            payload_len: u64_at(40),
            clock,
        })
    }
}

/// Errors of the stream's setup and of the sender.
#[derive(Debug, Error)]
pub enum StreamError {
    #[error(
        "listen address `{0}`: expected host:port (e.g. 127.0.0.1:7700) or unix:/path/to/socket"
    )]
    Address(String),
    // The io error is part of the message and deliberately not a `source`: a `{:#}` chain would
    // print it a second time.
    #[error("cannot listen on {addr}: {io}; {hint}")]
    Bind {
        addr: String,
        io: io::Error,
        hint: &'static str,
    },
    #[error("cannot start the frame-stream runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("sending to {addr}: {source}{}", reply.as_ref().map(|r| format!(" (receiver said: {r})")).unwrap_or_default())]
    Send {
        addr: String,
        source: io::Error,
        reply: Option<String>,
    },
    #[error("{0}")]
    Invalid(String),
}

impl From<StreamError> for AcquireError {
    fn from(e: StreamError) -> Self {
        AcquireError::Invalid(e.to_string())
    }
}

/// Where a receiver listens or a sender connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamAddr {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl StreamAddr {
    /// `host:port` (an IP address) or `unix:/path`.
    pub fn parse(s: &str) -> Result<Self, StreamError> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(StreamError::Address(s.to_string()));
            }
            return Ok(StreamAddr::Unix(PathBuf::from(p)));
        }
        s.parse()
            .map(StreamAddr::Tcp)
            .map_err(|_| StreamError::Address(s.to_string()))
    }
}

impl std::fmt::Display for StreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamAddr::Tcp(a) => write!(f, "{a}"),
            StreamAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// How a [`StreamSource`] listens and what it accepts.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// `host:port` or `unix:/path` (config `imaging.listen`; loopback by default).
    pub listen: String,
    pub height: usize,
    pub width: usize,
    /// Planes per volume; a frame's `plane` must be below this.
    pub planes: usize,
    /// Preallocated frame buffers between the socket and `next_frame` (at least 2).
    pub buffers: usize,
    /// A started header must be complete, and a payload must arrive once its header is in,
    /// within this (else the frame is dropped with its connection); a frame that finds no free
    /// buffer for this long is read into a scratch buffer and dropped (counted).
    pub stall_timeout: Duration,
    /// A new connection that sends no valid frame header within this is closed (`idle_closed`),
    /// so an idle or trickling client cannot hold the single stream slot.
    pub first_header_timeout: Duration,
    /// `next_frame` ends the stream after this long without a frame (`None`: wait for ever).
    pub idle_timeout: Option<Duration>,
    /// An end-of-stream message ends the stream (`false`: it only closes that connection).
    pub end_on_eos: bool,
    /// Time zero of the rig clock, for frames sent on the sender's clock.
    pub clock_origin: Instant,
}

impl StreamOptions {
    /// The options for a rig's `[imaging]` section.
    pub fn from_config(im: &Imaging) -> Self {
        StreamOptions {
            listen: im.listen.clone(),
            height: im.height,
            width: im.width,
            planes: im.planes,
            buffers: 32,
            stall_timeout: Duration::from_secs_f64(im.stream_stall_timeout_s),
            first_header_timeout: Duration::from_secs_f64(im.stream_first_header_timeout_s),
            idle_timeout: None,
            end_on_eos: true,
            clock_origin: Instant::now(),
        }
    }
}

/// Frames refused, by reason.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RejectCounts {
    pub bad_magic: u64,
    pub bad_version: u64,
    pub bad_checksum: u64,
    pub bad_kind: u64,
    pub bad_dtype: u64,
    pub bad_shape: u64,
    pub bad_size: u64,
    pub bad_timestamp: u64,
    pub out_of_order: u64,
    pub truncated: u64,
    pub stalled: u64,
    pub io: u64,
}

impl RejectCounts {
    pub fn total(&self) -> u64 {
        Reject::ALL.iter().map(|&r| self.get(r)).sum()
    }

    pub fn get(&self, r: Reject) -> u64 {
        match r {
            Reject::BadMagic => self.bad_magic,
            Reject::BadVersion => self.bad_version,
            Reject::BadChecksum => self.bad_checksum,
            Reject::BadKind => self.bad_kind,
            Reject::BadDtype => self.bad_dtype,
            Reject::BadShape => self.bad_shape,
            Reject::BadSize => self.bad_size,
            Reject::BadTimestamp => self.bad_timestamp,
            Reject::OutOfOrder => self.out_of_order,
            Reject::Truncated => self.truncated,
            Reject::Stalled => self.stalled,
            Reject::Io => self.io,
        }
    }
}

/// What the receiver has seen so far.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StreamStats {
    /// Frames accepted and queued for `next_frame`.
    pub frames_ok: u64,
    /// Frames handed out by `next_frame`.
    pub frames_delivered: u64,
    pub frames_rejected: RejectCounts,
    /// Frames read and thrown away because no buffer came free within `stall_timeout`.
    pub frames_dropped: u64,
    /// Frames the senders' indices skipped (lost before they reached the rig).
    pub sender_index_gaps: u64,
    /// Payload bytes of accepted frames.
    pub bytes: u64,
    pub clients_accepted: u64,
    /// Clients refused because another was connected.
    pub clients_refused: u64,
    /// Connections closed by their sender between frames without an end-of-stream message.
    pub disconnects: u64,
    /// End-of-stream messages received (and acted on).
    pub end_of_stream: u64,
    /// End-of-stream messages ignored: their connection had no frame accepted, so they may not
    /// end the session.
    pub end_of_stream_ignored: u64,
    /// Connections closed because they sent no valid frame header within `first_header_timeout`.
    pub idle_closed: u64,
    /// Times a frame had to wait for a free buffer (back-pressure on the sender).
    pub backpressure_waits: u64,
}

#[derive(Default)]
struct Counters {
    frames_ok: AtomicU64,
    frames_delivered: AtomicU64,
    rejected: [AtomicU64; 12],
    frames_dropped: AtomicU64,
    gaps: AtomicU64,
    bytes: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    disconnects: AtomicU64,
    eos: AtomicU64,
    eos_ignored: AtomicU64,
    idle_closed: AtomicU64,
    bp_waits: AtomicU64,
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn reject(&self, r: Reject) {
        let i = Reject::ALL.iter().position(|&x| x == r).unwrap_or(0);
        bump(&self.rejected[i], 1);
    }

    fn snapshot(&self) -> StreamStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let r = |x: Reject| {
            let i = Reject::ALL.iter().position(|&y| y == x).unwrap_or(0);
            g(&self.rejected[i])
        };
        StreamStats {
            frames_ok: g(&self.frames_ok),
            frames_delivered: g(&self.frames_delivered),
            frames_rejected: RejectCounts {
                bad_magic: r(Reject::BadMagic),
                bad_version: r(Reject::BadVersion),
                bad_checksum: r(Reject::BadChecksum),
                bad_kind: r(Reject::BadKind),
                bad_dtype: r(Reject::BadDtype),
                bad_shape: r(Reject::BadShape),
                bad_size: r(Reject::BadSize),
                bad_timestamp: r(Reject::BadTimestamp),
                out_of_order: r(Reject::OutOfOrder),
                truncated: r(Reject::Truncated),
                stalled: r(Reject::Stalled),
                io: r(Reject::Io),
            },
            frames_dropped: g(&self.frames_dropped),
            sender_index_gaps: g(&self.gaps),
            bytes: g(&self.bytes),
            clients_accepted: g(&self.accepted),
            clients_refused: g(&self.refused),
            disconnects: g(&self.disconnects),
            end_of_stream: g(&self.eos),
            end_of_stream_ignored: g(&self.eos_ignored),
            idle_closed: g(&self.idle_closed),
            backpressure_waits: g(&self.bp_waits),
        }
    }
}

/// A received frame on its way to `next_frame`.
struct Frame {
    pixels: Box<[u16]>,
    time: f64,
    plane: u16,
    sender_index: u64,
}

enum Msg {
    Frame(Frame),
    /// Look at the `ended` flag (end of stream or stop).
    Wake,
}

/// State shared by the runtime's tasks, the source and its stop handles.
struct Shared {
    height: u32,
    width: u32,
    planes: u16,
    pixels: usize,
    stall: Duration,
    first_header: Duration,
    end_on_eos: bool,
    origin: Instant,
    free_rx: Receiver<Box<[u16]>>,
    free_tx: Sender<Box<[u16]>>,
    full_tx: Sender<Msg>,
    /// Signalled whenever `next_frame` returns a buffer to the pool.
    returned: Notify,
    counters: Counters,
    /// A client is connected (one at a time).
    busy: AtomicBool,
    /// Who the connected client is, for the refusal log line.
    current_peer: Mutex<String>,
    /// End of stream (sender's message or stop): `next_frame` drains what is queued, then `None`.
    ended: AtomicBool,
    shutdown: watch::Sender<bool>,
    /// Rig time of the last accepted frame (f64 bits), across connections.
    last_time: AtomicU64,
}

impl Shared {
    /// Ends the stream (idempotent: one wake-up message at most, so the frame queue keeps its
    /// room for every buffer).
    fn end(&self) {
        if !self.ended.swap(true, Ordering::AcqRel) {
            let _ = self.shutdown.send(true);
            let _ = self.full_tx.try_send(Msg::Wake);
        }
    }

    fn rig_now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }
}

/// Controls a [`StreamSource`] from another thread (e.g. while the source is inside the pipeline).
#[derive(Clone)]
pub struct StreamHandle(Arc<Shared>);

impl StreamHandle {
    /// Ends the stream: `next_frame` returns what is already queued, then `None`; the listener
    /// and the connection close.
    pub fn stop(&self) {
        self.0.end();
    }

    pub fn stats(&self) -> StreamStats {
        self.0.counters.snapshot()
    }

    /// The rig clock of this source now (seconds since the source started listening): the clock
    /// frames sent on the sender's clock are mapped onto.
    pub fn rig_now(&self) -> f64 {
        self.0.rig_now()
    }
}

/// Frames from a live sender (see the module docs and docs/frame-protocol.md).
pub struct StreamSource {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    full_rx: Receiver<Msg>,
    free_tx: Sender<Box<[u16]>>,
    addr: StreamAddr,
    idle_timeout: Option<Duration>,
    last_frame_at: Instant,
    delivered: u64,
    last_plane: u16,
    last_sender_index: u64,
    unix_path: Option<PathBuf>,
}

impl StreamSource {
    /// Binds `opts.listen` (port 0 picks a free port; see [`StreamSource::local_addr`]) and starts
    /// accepting. Errors here are setup errors (address, bind, runtime); bad input later is only
    /// logged and counted.
    pub fn bind(opts: StreamOptions) -> Result<Self, StreamError> {
        let addr = StreamAddr::parse(&opts.listen)?;
        if opts.height == 0
            || opts.width == 0
            || opts.planes == 0
            || opts.planes > u16::MAX as usize
        {
            return Err(StreamError::Invalid(format!(
                "stream shape {}x{} with {} planes is not valid",
                opts.height, opts.width, opts.planes
            )));
        }
        let (height, width) = (
            u32::try_from(opts.height).map_err(|_| StreamError::Invalid("height".into()))?,
            u32::try_from(opts.width).map_err(|_| StreamError::Invalid("width".into()))?,
        );
        let pixels = opts.height * opts.width;
        let n_buf = opts.buffers.max(2);
        let (free_tx, free_rx) = bounded::<Box<[u16]>>(n_buf);
        for _ in 0..n_buf {
            let _ = free_tx.send(vec![0u16; pixels].into_boxed_slice());
        }
        // Room for every buffer plus the one wake-up, so a send from the runtime never waits.
        let (full_tx, full_rx) = bounded::<Msg>(n_buf + 2);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("stream-rx")
            .enable_io()
            .enable_time()
            .build()
            .map_err(StreamError::Runtime)?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            height,
            width,
            planes: opts.planes as u16,
            pixels,
            stall: opts.stall_timeout,
            first_header: opts.first_header_timeout,
            end_on_eos: opts.end_on_eos,
            origin: opts.clock_origin,
            free_rx,
            free_tx: free_tx.clone(),
            full_tx,
            returned: Notify::new(),
            counters: Counters::default(),
            busy: AtomicBool::new(false),
            current_peer: Mutex::new(String::new()),
            ended: AtomicBool::new(false),
            shutdown,
            last_time: AtomicU64::new(f64::NEG_INFINITY.to_bits()),
        });
        let bind_err = |io: io::Error| StreamError::Bind {
            addr: opts.listen.clone(),
            hint: bind_hint(&io),
            io,
        };
        let (local, unix_path) = {
            let _guard = runtime.enter();
            match &addr {
                StreamAddr::Tcp(a) => {
                    let l = std::net::TcpListener::bind(a).map_err(bind_err)?;
                    l.set_nonblocking(true).map_err(bind_err)?;
                    let local = l.local_addr().map_err(bind_err)?;
                    let l = tokio::net::TcpListener::from_std(l).map_err(bind_err)?;
                    runtime.spawn(accept_tcp(l, shared.clone()));
                    (StreamAddr::Tcp(local), None)
                }
                StreamAddr::Unix(p) => {
                    remove_stale_socket(p).map_err(bind_err)?;
                    let l = std::os::unix::net::UnixListener::bind(p).map_err(bind_err)?;
                    l.set_nonblocking(true).map_err(bind_err)?;
                    let l = tokio::net::UnixListener::from_std(l).map_err(bind_err)?;
                    runtime.spawn(accept_unix(l, p.clone(), shared.clone()));
                    (addr.clone(), Some(p.clone()))
                }
            }
        };
        tracing::info!(listen = %local, "frame stream: listening ({}x{}, {} plane(s))", opts.height, opts.width, opts.planes);
        Ok(StreamSource {
            shared,
            runtime: Some(runtime),
            full_rx,
            free_tx,
            addr: local,
            idle_timeout: opts.idle_timeout,
            last_frame_at: Instant::now(),
            delivered: 0,
            last_plane: 0,
            last_sender_index: 0,
            unix_path,
        })
    }

    /// The bound address (`127.0.0.1:PORT` or `unix:/path`), as a sender's `--to` takes it.
    pub fn local_addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn stats(&self) -> StreamStats {
        self.shared.counters.snapshot()
    }

    /// A handle that stops the source and reads its stats from another thread.
    pub fn handle(&self) -> StreamHandle {
        StreamHandle(self.shared.clone())
    }

    /// Ends the stream on SIGINT (Ctrl-C), as `stop` would.
    pub fn stop_on_ctrl_c(&self) {
        if let Some(rt) = &self.runtime {
            let sh = self.shared.clone();
            rt.spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    tracing::info!("frame stream: interrupted; ending the stream");
                    sh.end();
                }
            });
        }
    }

    /// Plane and sender's frame index of the frame last returned by `next_frame`.
    pub fn last_frame_origin(&self) -> (u16, u64) {
        (self.last_plane, self.last_sender_index)
    }

    fn deliver(&mut self, f: Frame, out: &mut [u16]) -> FrameInfo {
        out.copy_from_slice(&f.pixels);
        let _ = self.free_tx.try_send(f.pixels);
        self.shared.returned.notify_one();
        // The microscope does not know the stimulus: a live rig's context comes from the
        // display and the sync board, not from the frame stream.
        let info = FrameInfo {
            index: self.delivered,
            time: f.time,
            context: None,
        };
        self.delivered += 1;
        self.last_plane = f.plane;
        self.last_sender_index = f.sender_index;
        self.last_frame_at = Instant::now();
        bump(&self.shared.counters.frames_delivered, 1);
        info
    }
}

impl Drop for StreamSource {
    fn drop(&mut self) {
        self.shared.end();
        if let Some(rt) = self.runtime.take() {
            // Safe from any context (also inside another runtime); tasks are dropped at their next
            // await, closing their sockets.
            rt.shutdown_background();
        }
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl FrameSource for StreamSource {
    fn height(&self) -> usize {
        self.shared.height as usize
    }

    fn width(&self) -> usize {
        self.shared.width as usize
    }

    fn len_hint(&self) -> Option<u64> {
        None
    }

    /// Waits for the next accepted frame and copies it into `out`. `None` once the stream has ended
    /// (end-of-stream message, stop handle, idle timeout), after every frame already received.
    fn next_frame(&mut self, out: &mut [u16]) -> Result<Option<FrameInfo>, AcquireError> {
        if out.len() != self.shared.pixels {
            return Err(AcquireError::Invalid(format!(
                "frame buffer of {} pixels for a {}x{} stream",
                out.len(),
                self.shared.height,
                self.shared.width
            )));
        }
        loop {
            let mut wait = Duration::from_millis(200);
            if let Some(idle) = self.idle_timeout {
                let left = idle.saturating_sub(self.last_frame_at.elapsed());
                if left.is_zero() && !self.shared.ended.load(Ordering::Acquire) {
                    tracing::info!(
                        "frame stream: no frame for {:.1} s; ending the stream",
                        idle.as_secs_f64()
                    );
                    self.shared.end();
                }
                wait = wait.min(left.max(Duration::from_millis(1)));
            }
            match self.full_rx.recv_timeout(wait) {
                Ok(Msg::Frame(f)) => return Ok(Some(self.deliver(f, out))),
                Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {
                    if self.shared.ended.load(Ordering::Acquire) {
                        // Frames queued before the end still go out.
                        loop {
                            match self.full_rx.try_recv() {
                                Ok(Msg::Frame(f)) => return Ok(Some(self.deliver(f, out))),
                                Ok(Msg::Wake) => continue,
                                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                                    return Ok(None)
                                }
                            }
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
            }
        }
    }
}

/// What to do about a failed bind, for the one line the operator reads.
fn bind_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            "another receiver (a second `rig run` or `rig stream-recv`?) holds it: stop it, or \
             change imaging.listen in the config (rig stream-recv: --listen ADDR)"
        }
        _ => {
            "expected a local address like 127.0.0.1:7700 or unix:/path/to/socket in \
             imaging.listen (rig stream-recv: --listen ADDR)"
        }
    }
}

#[cfg(unix)]
fn remove_stale_socket(p: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(p).is_ok() {
                Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another receiver is listening on this socket",
                ))
            } else {
                std::fs::remove_file(p)
            }
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        )),
    }
}

async fn accept_tcp(l: tokio::net::TcpListener, sh: Arc<Shared>) {
    let mut sd = sh.shutdown.subscribe();
    loop {
        if *sd.borrow() {
            return;
        }
        let r = tokio::select! {
            r = l.accept() => r,
            _ = sd.changed() => return,
        };
        match r {
            Ok((s, peer)) => {
                let _ = s.set_nodelay(true);
                admit(s, peer.to_string(), &sh);
            }
            Err(e) => accept_error(e).await,
        }
    }
}

async fn accept_unix(l: tokio::net::UnixListener, path: PathBuf, sh: Arc<Shared>) {
    let mut sd = sh.shutdown.subscribe();
    let mut n = 0u64;
    loop {
        if *sd.borrow() {
            return;
        }
        let r = tokio::select! {
            r = l.accept() => r,
            _ = sd.changed() => return,
        };
        match r {
            Ok((s, _)) => {
                n += 1;
                admit(s, format!("unix:{}#{n}", path.display()), &sh);
            }
            Err(e) => accept_error(e).await,
        }
    }
}

async fn accept_error(e: io::Error) {
    // E.g. out of file descriptors: back off instead of spinning.
    tracing::warn!("frame stream: accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves a new client, or refuses it when one is already connected.
fn admit<S>(s: S, peer: String, sh: &Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if sh.busy.swap(true, Ordering::AcqRel) {
        bump(&sh.counters.refused, 1);
        let current = sh
            .current_peer
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        tracing::warn!(peer = %peer, reason = "busy", "frame stream: refused a second client; {current} is connected and keeps streaming");
        tokio::spawn(say_and_close(
            s,
            format!("ERR busy: another client ({current}) is connected\n"),
        ));
        return;
    }
    bump(&sh.counters.accepted, 1);
    if let Ok(mut p) = sh.current_peer.lock() {
        p.clone_from(&peer);
    }
    tracing::info!(peer = %peer, "frame stream: client connected");
    let sh = sh.clone();
    tokio::spawn(async move {
        let mut c = Conn {
            accepted: 0,
            rejected: 0,
            greeted: false,
            last_key: None,
            offset: None,
            scratch: None,
            dropping: false,
        };
        let mut s = s;
        let end = serve_frames(&mut s, &peer, &sh, &mut c).await;
        // Free the slot before the outcome is counted and answered: whoever sees either may connect.
        sh.busy.store(false, Ordering::Release);
        conn_closed(s, end, &c, &peer, &sh).await;
    });
}

/// Tells a client why it is refused (best effort, bounded), then closes. What the client still
/// sends is read and dropped while it keeps coming (at most 1 s in all): closing with unread
/// bytes would reset the connection, and a reset can take the reply with it.
async fn say_and_close<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, line: String) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = s.write_all(line.as_bytes()).await;
        let _ = s.shutdown().await;
        let mut sink = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), s.read(&mut sink)).await
        {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// How one connection ended.
enum ConnEnd {
    /// The sender closed between frames.
    Disconnected,
    EndOfStream,
    /// An end-of-stream message from a connection with no accepted frame.
    EndOfStreamIgnored,
    /// No valid frame header within the first-header timeout.
    Idle,
    Shutdown,
    Rejected(Reject, String),
}

/// Per-connection bookkeeping.
struct Conn {
    accepted: u64,
    rejected: u64,
    /// A valid frame header has arrived (until then the first-header timeout runs).
    greeted: bool,
    /// Last (index, plane) seen, as index * planes + plane.
    last_key: Option<u128>,
    /// Sender clock -> rig clock, fixed at the first frame.
    offset: Option<f64>,
    /// Where frames go when no buffer comes free (allocated only if that ever happens).
    scratch: Option<Box<[u16]>>,
    dropping: bool,
}

/// Counts, logs and answers the end of a connection, then closes it.
async fn conn_closed<S>(s: S, end: ConnEnd, c: &Conn, peer: &str, sh: &Shared)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let summary = format!("{} frames accepted, {} rejected", c.accepted, c.rejected);
    match end {
        ConnEnd::Disconnected => {
            bump(&sh.counters.disconnects, 1);
            tracing::info!(peer = %peer, "frame stream: client disconnected ({summary})");
        }
        ConnEnd::EndOfStream => {
            bump(&sh.counters.eos, 1);
            tracing::info!(peer = %peer, "frame stream: end of stream ({summary})");
            let line = format!("OK frames={} rejected={}\n", c.accepted, c.rejected);
            say_and_close(s, line).await;
            if sh.end_on_eos {
                sh.end();
            }
        }
        ConnEnd::EndOfStreamIgnored => {
            bump(&sh.counters.eos_ignored, 1);
            tracing::warn!(peer = %peer, "frame stream: end-of-stream message ignored: this connection had no frame accepted, so it does not end the session ({summary})");
            let line = format!(
                "ERR ignored: end of stream from a connection with no accepted frame does not end the session ({summary})\n"
            );
            say_and_close(s, line).await;
        }
        ConnEnd::Idle => {
            bump(&sh.counters.idle_closed, 1);
            let t = sh.first_header.as_secs_f64();
            tracing::warn!(peer = %peer, reason = "idle", "frame stream: no valid frame header within {t:.1} s of connecting; closing the connection so the stream slot is free ({summary})");
            say_and_close(
                s,
                format!("ERR idle: no valid frame header within {t:.1} s of connecting\n"),
            )
            .await;
        }
        ConnEnd::Shutdown => {
            tracing::debug!(peer = %peer, "frame stream: closing the connection at shutdown");
        }
        ConnEnd::Rejected(r, detail) => {
            sh.counters.reject(r);
            if matches!(r, Reject::Truncated) {
                bump(&sh.counters.disconnects, 1);
            }
            tracing::warn!(peer = %peer, reason = r.as_str(), "frame stream: {detail}; closing the connection ({summary})");
            say_and_close(s, format!("ERR {r}: {detail}\n")).await;
        }
    }
}

/// `read_exact` by `deadline` that tells a clean end, a truncation and a stall apart (`stall`
/// is the limit the deadline came from, for the message).
async fn read_full<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut [u8],
    deadline: tokio::time::Instant,
    stall: Duration,
    what: &str,
) -> Result<(), (Reject, String)> {
    match tokio::time::timeout_at(deadline, s.read_exact(buf)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err((
            Reject::Truncated,
            format!("the sender closed the connection in the middle of a {what}"),
        )),
        Ok(Err(e)) => Err((Reject::Io, format!("reading a {what}: {e}"))),
        Err(_) => Err((
            Reject::Stalled,
            format!(
                "a started {what} did not arrive within {:.1} s",
                stall.as_secs_f64()
            ),
        )),
    }
}

async fn serve_frames<S>(s: &mut S, peer: &str, sh: &Shared, c: &mut Conn) -> ConnEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut sd = sh.shutdown.subscribe();
    let mut hdr = [0u8; HEADER_LEN];
    // The stream has one slot: until a connection has sent a valid frame header, it gets a
    // deadline, so an idle client (or one trickling bytes) cannot keep the slot from the
    // acquisition program.
    let hello = tokio::time::Instant::now() + sh.first_header;
    loop {
        if *sd.borrow() {
            return ConnEnd::Shutdown;
        }
        let greeted = c.greeted;
        // Between frames a greeted sender may be idle as long as it likes (acquisition paused).
        let n = tokio::select! {
            r = s.read(&mut hdr) => r,
            _ = sd.changed() => return ConnEnd::Shutdown,
            _ = tokio::time::sleep_until(hello), if !greeted => return ConnEnd::Idle,
        };
        let n = match n {
            Ok(0) => return ConnEnd::Disconnected,
            Ok(n) => n,
            Err(e) => return ConnEnd::Rejected(Reject::Io, format!("reading a header: {e}")),
        };
        // The rest of the header by the stall deadline (from its first byte), or the first-header
        // deadline when that comes first.
        let stall_at = tokio::time::Instant::now() + sh.stall;
        let hello_first = !greeted && hello < stall_at;
        let deadline = if hello_first { hello } else { stall_at };
        if let Err((r, d)) = read_full(s, &mut hdr[n..], deadline, sh.stall, "header").await {
            if r == Reject::Stalled && hello_first {
                return ConnEnd::Idle;
            }
            return ConnEnd::Rejected(r, d);
        }
        let h = match FrameHeader::decode(&hdr) {
            Ok(h) => h,
            Err((r, d)) => return ConnEnd::Rejected(r, d),
        };
        if h.kind == MsgKind::EndOfStream {
            if h.payload_len != 0 {
                return ConnEnd::Rejected(
                    Reject::BadSize,
                    format!(
                        "end-of-stream message with a {}-byte payload",
                        h.payload_len
                    ),
                );
            }
            if h.index != c.accepted + c.rejected {
                tracing::warn!(peer = %peer, "frame stream: the sender reports {} frames sent, the receiver read {}", h.index, c.accepted + c.rejected);
            }
            // Only a connection that has streamed may end the session: a stray client, or one
            // whose frames were all refused, must not stop a recording.
            if c.accepted == 0 {
                return ConnEnd::EndOfStreamIgnored;
            }
            return ConnEnd::EndOfStream;
        }
        if let Err((r, d)) = check_shape(&h, sh) {
            return ConnEnd::Rejected(r, d);
        }
        c.greeted = true;
        // A buffer from the pool; waiting here is the back-pressure on the sender. Once frames
        // are being dropped, each takes a buffer only if one is free right away.
        let buf = take_buffer(sh, !c.dropping).await;
        if buf.is_none() && !c.dropping {
            c.dropping = true;
            tracing::error!(peer = %peer, "frame stream: no frame buffer came free for {:.1} s (the recorder is stalled); dropping frames so the sender is not blocked", sh.stall.as_secs_f64());
        }
        let mut buf = match buf {
            Some(b) => {
                c.dropping = false;
                Target::Pool(b)
            }
            None => Target::Scratch(
                c.scratch
                    .take()
                    .unwrap_or_else(|| vec![0u16; sh.pixels].into_boxed_slice()),
            ),
        };
        let deadline = tokio::time::Instant::now() + sh.stall;
        let read = read_full(
            s,
            as_bytes_mut(buf.pixels()),
            deadline,
            sh.stall,
            "frame payload",
        )
        .await;
        if let Err((r, d)) = read {
            buf.recycle(sh, c);
            return ConnEnd::Rejected(r, d);
        }
        #[cfg(target_endian = "big")]
        for p in buf.pixels().iter_mut() {
            *p = u16::from_le(*p);
        }
        match frame_checks(&h, sh, c) {
            Err((r, d)) => {
                buf.recycle(sh, c);
                sh.counters.reject(r);
                c.rejected += 1;
                tracing::warn!(peer = %peer, reason = r.as_str(), "frame stream: frame {} plane {} dropped: {d}", h.index, h.plane);
            }
            Ok(time) => match buf {
                Target::Pool(pixels) => {
                    let f = Frame {
                        pixels,
                        time,
                        plane: h.plane,
                        sender_index: h.index,
                    };
                    // The queue has room for every buffer plus the wake-ups, so this does not
                    // fail; if it ever did, the buffer goes back to the pool and the loss is counted.
                    match sh.full_tx.try_send(Msg::Frame(f)) {
                        Ok(()) => {
                            c.accepted += 1;
                            bump(&sh.counters.frames_ok, 1);
                            bump(&sh.counters.bytes, h.payload_len);
                            sh.last_time.store(time.to_bits(), Ordering::Release);
                        }
                        Err(e) => {
                            if let Msg::Frame(f) = e.into_inner() {
                                let _ = sh.free_tx.try_send(f.pixels);
                            }
                            c.rejected += 1;
                            bump(&sh.counters.frames_dropped, 1);
                            tracing::error!(peer = %peer, "frame stream: frame queue full; frame {} dropped", h.index);
                        }
                    }
                }
                Target::Scratch(b) => {
                    c.scratch = Some(b);
                    c.rejected += 1;
                    bump(&sh.counters.frames_dropped, 1);
                }
            },
        }
    }
}

enum Target {
    Pool(Box<[u16]>),
    Scratch(Box<[u16]>),
}

impl Target {
    fn pixels(&mut self) -> &mut [u16] {
        match self {
            Target::Pool(b) | Target::Scratch(b) => b,
        }
    }

    fn recycle(self, sh: &Shared, c: &mut Conn) {
        match self {
            // The pool channel has room for every buffer, so this never fails.
            Target::Pool(b) => {
                let _ = sh.free_tx.try_send(b);
            }
            Target::Scratch(b) => c.scratch = Some(b),
        }
    }
}

fn check_shape(h: &FrameHeader, sh: &Shared) -> Result<(), (Reject, String)> {
    if h.dtype != DTYPE_U16 {
        return Err((
            Reject::BadDtype,
            format!("dtype code {}; this rig records u16 (code 1)", h.dtype),
        ));
    }
    if h.height != sh.height || h.width != sh.width || h.plane >= sh.planes {
        return Err((
            Reject::BadShape,
            format!(
                "frame {}x{} plane {}; the rig is configured for {}x{} with {} plane(s)",
                h.height, h.width, h.plane, sh.height, sh.width, sh.planes
            ),
        ));
    }
    let want = sh.pixels as u64 * 2;
    if h.payload_len != want {
        return Err((
            Reject::BadSize,
            format!(
                "payload of {} bytes; {}x{} u16 is {want}",
                h.payload_len, h.height, h.width
            ),
        ));
    }
    Ok(())
}

/// Frame-level checks after the payload is in: order and timestamp. Returns the rig time.
fn frame_checks(h: &FrameHeader, sh: &Shared, c: &mut Conn) -> Result<f64, (Reject, String)> {
    let key = h.index as u128 * sh.planes as u128 + h.plane as u128;
    if let Some(last) = c.last_key {
        if key <= last {
            return Err((
                Reject::OutOfOrder,
                "frame index/plane not after the previous frame's".into(),
            ));
        }
        let gap = key - last - 1;
        if gap > 0 {
            bump(&sh.counters.gaps, gap.min(u64::MAX as u128) as u64);
        }
    }
    c.last_key = Some(key);
    if !h.time.is_finite() {
        return Err((Reject::BadTimestamp, format!("timestamp {}", h.time)));
    }
    let last = f64::from_bits(sh.last_time.load(Ordering::Acquire));
    let time = match h.clock {
        Clock::Rig => h.time,
        Clock::Sender => {
            let off = *c.offset.get_or_insert_with(|| {
                let first = sh.rig_now().max(if last.is_finite() {
                    last + 1e-6
                } else {
                    f64::MIN
                });
                first - h.time
            });
            h.time + off
        }
    };
    if time <= last {
        return Err((
            Reject::BadTimestamp,
            format!("rig time {time:.6} s is not after the previous frame's {last:.6} s"),
        ));
    }
    Ok(time)
}

/// A free buffer, waiting up to the stall timeout for one when `wait`.
async fn take_buffer(sh: &Shared, wait: bool) -> Option<Box<[u16]>> {
    if let Ok(b) = sh.free_rx.try_recv() {
        return Some(b);
    }
    bump(&sh.counters.bp_waits, 1);
    if !wait {
        return None;
    }
    let deadline = tokio::time::Instant::now() + sh.stall;
    loop {
        if let Ok(b) = sh.free_rx.try_recv() {
            return Some(b);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return None;
        }
        // `notify_one` keeps a permit when nobody waits, so a buffer returned between the check
        // and here still wakes us; the cap is a belt-and-braces re-check.
        let wait = (deadline - now).min(Duration::from_millis(20));
        let _ = tokio::time::timeout(wait, sh.returned.notified()).await;
    }
}

/// The bytes of a pixel buffer (the wire is little-endian; big-endian hosts swap after reading).
fn as_bytes_mut(px: &mut [u16]) -> &mut [u8] {
    let len = std::mem::size_of_val(px);
    // SAFETY: u8 has alignment 1 and any byte pattern is a valid u16; the slice covers exactly the
    // memory of `px`, which it borrows mutably for its whole life.
    unsafe { std::slice::from_raw_parts_mut(px.as_mut_ptr().cast::<u8>(), len) }
}

fn as_bytes(px: &[u16]) -> &[u8] {
    let len = std::mem::size_of_val(px);
    // SAFETY: as in `as_bytes_mut`, read-only.
    unsafe { std::slice::from_raw_parts(px.as_ptr().cast::<u8>(), len) }
}

enum SenderConn {
    Tcp(std::net::TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

impl SenderConn {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            SenderConn::Tcp(s) => s,
            #[cfg(unix)]
            SenderConn::Unix(s) => s,
        }
    }

    fn set_read_timeout(&self, t: Duration) {
        let _ = match self {
            SenderConn::Tcp(s) => s.set_read_timeout(Some(t)),
            #[cfg(unix)]
            SenderConn::Unix(s) => s.set_read_timeout(Some(t)),
        };
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The sending side of the protocol over a blocking socket (`rig stream`, tests, benchmarks).
/// The Python and MATLAB senders in tools/scanimage/ do the same.
pub struct FrameSender {
    conn: SenderConn,
    addr: String,
    frames: u64,
    bytes: u64,
    #[cfg(target_endian = "big")]
    swap: Vec<u16>,
}

impl FrameSender {
    /// Connects to `addr` (`host:port` or `unix:/path`).
    pub fn connect(addr: &str) -> Result<Self, StreamError> {
        let a = StreamAddr::parse(addr)?;
        let err = |source| StreamError::Connect {
            addr: addr.to_string(),
            source,
        };
        let conn = match &a {
            StreamAddr::Tcp(sa) => {
                let s = std::net::TcpStream::connect_timeout(sa, Duration::from_secs(5))
                    .map_err(err)?;
                // Header and payload go out as written; no Nagle delay on the small header.
                s.set_nodelay(true).map_err(err)?;
                SenderConn::Tcp(s)
            }
            #[cfg(unix)]
            StreamAddr::Unix(p) => {
                SenderConn::Unix(std::os::unix::net::UnixStream::connect(p).map_err(err)?)
            }
            #[cfg(not(unix))]
            StreamAddr::Unix(_) => {
                return Err(StreamError::Address(addr.to_string()));
            }
        };
        Ok(FrameSender {
            conn,
            addr: addr.to_string(),
            frames: 0,
            bytes: 0,
            #[cfg(target_endian = "big")]
            swap: Vec::new(),
        })
    }

    /// Frames sent so far on this connection.
    pub fn frames_sent(&self) -> u64 {
        self.frames
    }

    /// Header plus payload bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes
    }

    /// Sends one frame (`pixels` must hold `height * width` values; row-major).
    pub fn send_frame(&mut self, h: &FrameHeader, pixels: &[u16]) -> Result<(), StreamError> {
        if h.kind != MsgKind::Frame || pixels.len() as u64 * 2 != h.payload_len {
            return Err(StreamError::Invalid(format!(
                "send_frame: {} pixels for a header announcing {} bytes",
                pixels.len(),
                h.payload_len
            )));
        }
        self.send_raw(&h.encode(), pixels)?;
        self.frames += 1;
        Ok(())
    }

    /// Sends a header and pixels as given, unchecked (for testing receivers with bad input).
    pub fn send_raw(&mut self, header: &[u8], pixels: &[u16]) -> Result<(), StreamError> {
        #[cfg(target_endian = "big")]
        let payload = {
            self.swap.clear();
            self.swap.extend(pixels.iter().map(|p| p.to_le()));
            as_bytes(&self.swap)
        };
        #[cfg(target_endian = "little")]
        let payload = as_bytes(pixels);
        let r = self
            .conn
            .io()
            .write_all(header)
            .and_then(|_| self.conn.io().write_all(payload));
        if let Err(source) = r {
            let reply = self.read_reply(Duration::from_millis(500));
            return Err(StreamError::Send {
                addr: self.addr.clone(),
                source,
                reply,
            });
        }
        self.bytes += (header.len() + payload.len()) as u64;
        Ok(())
    }

    /// Sends the end-of-stream message and waits (up to `timeout`) for the receiver's reply line
    /// (`OK frames=N rejected=M`, or `ERR ...`).
    pub fn finish(mut self, timeout: Duration) -> Result<Option<String>, StreamError> {
        let eos = FrameHeader::end_of_stream(self.frames).encode();
        if let Err(source) = self.conn.io().write_all(&eos) {
            let reply = self.read_reply(Duration::from_millis(500));
            return Err(StreamError::Send {
                addr: self.addr.clone(),
                source,
                reply,
            });
        }
        self.bytes += eos.len() as u64;
        Ok(self.read_reply(timeout))
    }

    /// One line the receiver wrote before closing, if any.
    fn read_reply(&mut self, timeout: Duration) -> Option<String> {
        self.conn.set_read_timeout(timeout);
        let mut line = Vec::with_capacity(128);
        let mut b = [0u8; 1];
        while line.len() < 1024 {
            match self.conn.io().read(&mut b) {
                Ok(1) if b[0] == b'\n' => break,
                Ok(1) => line.push(b[0]),
                _ => break,
            }
        }
        (!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn header_round_trip_and_checks() {
        let h = FrameHeader::frame(7, 1.25, Clock::Sender, 1, 512, 256);
        let b = h.encode();
        assert_eq!(&b[..8], b"TRIGFRM1");
        assert_eq!(FrameHeader::decode(&b).unwrap(), h);
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(FrameHeader::decode(&bad).unwrap_err().0, Reject::BadMagic);
        let mut bad = b;
        bad[8] = 2;
        assert_eq!(FrameHeader::decode(&bad).unwrap_err().0, Reject::BadVersion);
        let mut bad = b;
        bad[20] ^= 1;
        assert_eq!(
            FrameHeader::decode(&bad).unwrap_err().0,
            Reject::BadChecksum
        );
        let e = FrameHeader::end_of_stream(3);
        assert_eq!(FrameHeader::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn addresses() {
        assert!(matches!(
            StreamAddr::parse("127.0.0.1:7700"),
            Ok(StreamAddr::Tcp(_))
        ));
        assert!(matches!(
            StreamAddr::parse("unix:/tmp/x.sock"),
            Ok(StreamAddr::Unix(_))
        ));
        assert!(StreamAddr::parse("localhost").is_err());
        assert!(StreamAddr::parse("unix:").is_err());
    }
}
