//! Board glue for the Raspberry Pi Pico (RP2040).
//!
//! Kept thin and split so that as much as possible is compiled and tested on the host:
//!
//! * [`edges`] — a lock-free single-producer/single-consumer queue that carries input edges,
//!   timestamped in the GPIO interrupt, to the main loop. Safe code only (atomic loads and
//!   stores, which the Cortex-M0+ has; it has no compare-and-swap).
//! * [`rp2040`] — clock, UART, GPIO and interrupt programming, the [`Hal`](crate::Hal)
//!   implementation and the main-loop [`service`](rp2040::Board::service) routine, all written
//!   against the [`Bus`](rp2040::Bus) trait. Host tests run it against a simulated register file.
//! * `mmio` — the real bus: volatile reads and writes of the RP2040 address space plus the ROM
//!   call into the USB bootloader. Compiled only for bare-metal ARM
//!   (`thumbv6m-none-eabi`); the host never sees it.
//!
//! The binary that owns the vector table, the second-stage bootloader and `main` lives in
//! `firmware/board-pico/` (a separate crate, because it needs `cortex-m-rt` and `rp2040-boot2`,
//! which this dependency-free library must not pull in). See `firmware/README.md`.

pub mod edges;
pub mod rp2040;

#[cfg(all(target_arch = "arm", target_os = "none"))]
pub mod mmio;
