//! The display protocol (docs/display-protocol.md), version 1: JSON lines plus raw clip payloads
//! over one loopback TCP or Unix stream. Shared by the presenter's server and the daemon's client.

use std::io::{self, BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The `hello` value both sides send first.
pub const MAGIC: &str = "twinrig-display";
/// Protocol version; a presenter refuses any other.
pub const VERSION: u32 = 1;
/// Longest header line accepted, bytes (newline included).
pub const MAX_LINE: usize = 4096;
/// Largest clip payload accepted, bytes.
pub const MAX_CLIP_BYTES: usize = 256 << 20;
/// Largest clip side accepted, pixels.
pub const MAX_SIDE: usize = 4096;
/// Default address of `rig present` (loopback).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7702";

#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("header line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("header is not UTF-8")]
    NotUtf8,
    #[error("bad message: {0}")]
    Bad(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error("cannot connect to presenter at {addr}: {source}")]
    Connect { addr: String, source: io::Error },
}

/// The first line of a connection, from the client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub hello: String,
    pub version: u32,
}

impl Hello {
    pub fn v1() -> Self {
        Hello {
            hello: MAGIC.into(),
            version: VERSION,
        }
    }
}

/// Client → presenter, one JSON line each; `upload` is followed by its payload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// `frames*height*width` bytes follow: 8-bit linear luminance, frame-major, row-major.
    Upload {
        id: u32,
        frames: usize,
        height: usize,
        width: usize,
    },
    /// Play a clip from its frame 0 at the next flip (`at` absent) or at the first flip at or
    /// after `at - period/2` (presenter clock, seconds); then gray.
    Play {
        id: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<f64>,
        /// Stimulus frames per second (default: `stimulus.frame_rate_hz` of the presenter config).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate_hz: Option<f64>,
    },
    /// Hold one frame of a clip on screen until the next command (calibration, still images).
    Show { id: u32, frame: usize },
    /// Mean-luminance gray.
    Gray,
    /// Clock probe: the presenter answers with its clock.
    Clock { echo: u64 },
    /// The client is leaving (the presenter shows gray).
    Bye,
}

/// What the presenter tells the client about itself in its `hello` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PresenterInfo {
    pub hello: String,
    pub version: u32,
    pub width_px: u32,
    pub height_px: u32,
    pub refresh_hz: f64,
    pub stimulus_rate_hz: f64,
    pub gamma: f64,
    pub mean_luminance: f64,
    pub photodiode_corner: String,
    /// `true` when flips are locked to the monitor's vertical blank; `false` with a deadline timer.
    pub vsync: bool,
    /// How flips are paced, in words.
    pub pacing: String,
    /// Presenter clock at the answer, seconds.
    pub time: f64,
}

/// One presented frame.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct FlipReport {
    /// Flip counter since the presenter started.
    pub seq: u64,
    /// Presenter clock right after the flip was handed to the display server, seconds.
    pub time: f64,
    /// Clip id, or -1 for gray.
    pub clip: i64,
    /// Frame index in the clip (0 for gray).
    pub frame: u32,
    /// Photodiode patch: 1 white, 0 black.
    pub photodiode: u8,
    /// Seconds since the previous flip (0 for the first).
    pub interval: f64,
    /// Refresh periods missed before this flip (interval over 1.5 periods).
    pub missed: u32,
}

/// Presenter → client, one JSON line each.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    Hello(PresenterInfo),
    Flip(FlipReport),
    Uploaded {
        id: u32,
    },
    Clock {
        echo: u64,
        time: f64,
    },
    /// `fatal`: the presenter closes the connection after it.
    Error {
        message: String,
        fatal: bool,
    },
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE`] bytes; `None` at end of stream.
pub fn read_line<R: BufRead>(r: &mut R) -> Result<Option<String>, ProtocolError> {
    let mut buf = Vec::with_capacity(128);
    let n = r
        .by_ref()
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        if n >= MAX_LINE {
            return Err(ProtocolError::LineTooLong);
        }
        return Ok(None); // the stream ended mid-line
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| ProtocolError::NotUtf8)
}

/// Writes `v` as one JSON line.
pub fn write_json<W: Write, T: Serialize>(w: &mut W, v: &T) -> Result<(), ProtocolError> {
    let mut line = serde_json::to_vec(v).map_err(|e| ProtocolError::Bad(e.to_string()))?;
    line.push(b'\n');
    w.write_all(&line)?;
    Ok(())
}

/// Checks an upload header; returns the payload size.
pub fn upload_size(frames: usize, height: usize, width: usize) -> Result<usize, String> {
    if frames == 0 || height == 0 || width == 0 || height > MAX_SIDE || width > MAX_SIDE {
        return Err(format!(
            "clip shape {frames}x{height}x{width}: frames must be >= 1, sides 1..={MAX_SIDE}"
        ));
    }
    frames
        .checked_mul(height * width)
        .filter(|&n| n <= MAX_CLIP_BYTES)
        .ok_or_else(|| {
            format!("clip {frames}x{height}x{width} is over the {MAX_CLIP_BYTES}-byte limit")
        })
}

/// A connected stream: TCP or Unix.
#[derive(Debug)]
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    /// Connects to `host:port` or `unix:/path`.
    pub fn connect(addr: &str) -> Result<Conn, ProtocolError> {
        let err = |source| ProtocolError::Connect {
            addr: addr.to_string(),
            source,
        };
        match addr.strip_prefix("unix:") {
            Some(p) => Ok(Conn::Unix(UnixStream::connect(p).map_err(err)?)),
            None => {
                let s = TcpStream::connect(addr).map_err(err)?;
                // Flip reports are small and latency matters more than throughput.
                let _ = s.set_nodelay(true);
                Ok(Conn::Tcp(s))
            }
        }
    }
    pub fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
        })
    }
    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(d),
            Conn::Unix(s) => s.set_read_timeout(d),
        }
    }
    /// Closes both directions (wakes a thread blocked reading it).
    pub fn shutdown(&self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            Conn::Unix(s) => s.flush(),
        }
    }
}

/// A listening socket: TCP or Unix (`unix:/path`; a stale socket file is replaced).
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub fn bind(addr: &str) -> Result<Listener, ProtocolError> {
        let err = |source| ProtocolError::Listen {
            addr: addr.to_string(),
            source,
        };
        let l = match addr.strip_prefix("unix:") {
            Some(p) => {
                let path = PathBuf::from(p);
                if path.exists() && UnixStream::connect(&path).is_err() {
                    let _ = std::fs::remove_file(&path);
                }
                Listener::Unix(UnixListener::bind(&path).map_err(err)?, path)
            }
            None => Listener::Tcp(TcpListener::bind(addr).map_err(err)?),
        };
        match &l {
            Listener::Tcp(t) => t.set_nonblocking(true).map_err(err)?,
            Listener::Unix(u, _) => u.set_nonblocking(true).map_err(err)?,
        }
        Ok(l)
    }

    /// The bound address, in the form `Conn::connect` takes.
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(t) => t
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }

    /// Non-blocking accept: `Ok(None)` when nobody is waiting.
    pub fn accept(&self) -> io::Result<Option<Conn>> {
        let r = match self {
            Listener::Tcp(t) => t.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }),
            Listener::Unix(u, _) => u.accept().map(|(s, _)| Conn::Unix(s)),
        };
        match r {
            Ok(c) => {
                match &c {
                    Conn::Tcp(s) => s.set_nonblocking(false)?,
                    Conn::Unix(s) => s.set_nonblocking(false)?,
                }
                Ok(Some(c))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json_lines() {
        let r = Request::Play {
            id: 3,
            at: Some(1.5),
            rate_hz: None,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"play","id":3,"at":1.5}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"op":"play","id":3,"x":1}"#).is_err());
    }

    #[test]
    fn lines_are_bounded() {
        let long = vec![b'a'; MAX_LINE + 10];
        let mut r = io::Cursor::new(long);
        assert!(matches!(read_line(&mut r), Err(ProtocolError::LineTooLong)));
        let mut r = io::Cursor::new(b"{\"op\":\"gray\"}\r\nrest".to_vec());
        assert_eq!(read_line(&mut r).unwrap().unwrap(), "{\"op\":\"gray\"}");
        assert_eq!(read_line(&mut r).unwrap(), None);
    }

    #[test]
    fn upload_limits() {
        assert_eq!(upload_size(2, 36, 64).unwrap(), 2 * 36 * 64);
        assert!(upload_size(0, 36, 64).is_err());
        assert!(upload_size(1 << 40, 4096, 4096).is_err());
        assert!(upload_size(1, 5000, 1).is_err());
    }
}
