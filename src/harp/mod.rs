//! Host driver for Harp devices over a serial port: the rig's sync board (or a stock Harp
//! Behavior board) as seen from the workstation.
//!
//! * [`HarpDriver`] opens the port, performs the handshake (WHO_AM_I, versions, name), applies the
//!   board's setup writes and sets the device Active; then a reader thread turns the byte stream
//!   into [`SyncEvent`]s (frame clock, photodiode flips, treadmill position and speed) on the rig
//!   clock, answers register reads and writes (with timeouts and retries), keeps a running
//!   [`ClockSync`] estimate of the device-to-host clock mapping, and reopens the port when the
//!   device disappears, recording the [`Gap`].
//! * [`BoardMap`] says which registers fill which role, from the `[sync]` section of the rig
//!   config (`board = "twinrig" | "harp-behavior"`, optional `[sync.registers]` overrides).
//! * [`sim::SimBoard`] runs the real firmware `Device` on the host behind a pseudo-terminal, fed
//!   by the simulated rig, so the simulated rig goes through the same serial path as a real one;
//!   it can inject faults (garbage, bad checksums, silence, unplug and replug).
//!
//! The wire codec is the firmware crate's ([`twinrig_firmware::harp`]): one implementation on
//! both ends of the cable.

pub mod board;
pub mod clock;
pub mod driver;
pub mod sim;

pub use board::{BoardMap, Decoder, EventKind, OutputLine};
pub use clock::{ClockEstimate, ClockSync};
pub use driver::{
    Gap, HarpDriver, HarpOptions, HostClock, Identity, LinkStats, RegisterValue, RoundTrip,
    SyncEvent,
};

use thiserror::Error;

/// Everything the driver and the simulated board report as a failure.
#[derive(Debug, Error)]
pub enum HarpError {
    #[error("cannot open serial port {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("serial port {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "no reply from the device on {path} to {what} after {tries} tries of {timeout_ms} ms \
         (is the board powered, on this port, at {baud} baud?)"
    )]
    Timeout {
        path: String,
        what: String,
        tries: u32,
        timeout_ms: u64,
        baud: u32,
    },
    #[error(
        "wrong device on {path}: WHO_AM_I {}, expected {} (sync.who_am_i); nothing was written \
         to it",
        WhoAmI(*.found),
        WhoAmI(*.expected)
    )]
    WrongDevice {
        path: String,
        found: u16,
        expected: u16,
    },
    #[error("the device refused {what} (error reply)")]
    Refused { what: String },
    #[error("unexpected reply to {what}: {detail}")]
    BadReply { what: String, detail: String },
    #[error("the device on {path} is disconnected")]
    Disconnected { path: String },
    #[error("sync config: {0}")]
    Config(String),
    #[error("simulated board: {0}")]
    Sim(String),
    #[error("cannot encode request: {0}")]
    Codec(twinrig_firmware::harp::Error),
}

/// A WHO_AM_I as an error shows it: the number, and the board it names when it is one the rig
/// knows ("1216 (Harp Behavior)").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhoAmI(pub u16);

impl std::fmt::Display for WhoAmI {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            twinrig_firmware::device::registers::WHO_AM_I => " (twinrig sync board)",
            board::BEHAVIOR_WHO_AM_I => " (Harp Behavior)",
            _ => "",
        };
        write!(f, "{}{name}", self.0)
    }
}
