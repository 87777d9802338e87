//! Sync-board firmware for twinrig: the Harp 8-bit binary protocol and the device logic of the rig's
//! sync board. `no_std` so the same code runs on the board and, in tests, on the host.
//!
//! The crate has three layers, each usable on its own:
//!
//! * [`harp`] — the Harp 8-bit binary protocol: typed payloads, an allocation-free encoder, a
//!   zero-copy message view and an incremental, resynchronising stream [`harp::Parser`]. The host
//!   driver of the `twinrig` crate uses this module directly.
//! * [`device`] — the sync board itself: the Harp core registers (addresses 0–19) and the
//!   application registers (frame clock, photodiode, treadmill encoder, digital outputs), driven
//!   through the small [`hal::Hal`] trait so that the whole device runs in host tests and in the
//!   rig simulator exactly as it runs on the board.
//! * [`board`] — thin RP2040 (Raspberry Pi Pico) glue: register programming written against a
//!   [`board::rp2040::Bus`] trait (host-tested with a fake bus) plus the volatile MMIO bus, which
//!   only exists when compiling for the bare-metal ARM target.
//!
//! Nothing here allocates, and nothing panics on input: malformed bytes become [`harp::Error`]s or
//! are counted and skipped by the parser.
#![no_std]
#![deny(missing_docs, unsafe_op_in_unsafe_fn)]
// Input-derived data must never be able to panic the board; the lints enforce it outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable
    )
)]

pub mod board;
pub mod device;
pub mod hal;
pub mod harp;

pub use device::Device;
pub use hal::Hal;
