//! The hardware the device logic needs, as a trait.
//!
//! Deliberately tiny: a microsecond clock, the output lines and an LED. Inputs are not read
//! through the HAL — the board glue *pushes* edges into the device (`on_frame_clock_edge_at` & co.)
//! with the time it captured them, because on the board edges are captured in an interrupt and
//! handled later in the main loop, and the timestamp must be the capture time.

/// What a reset request asks the board to do, once the reply has been sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    /// Reboot with default register values (`R_RESET_DEV` bits `RST_DEF` / `NAME_TO_DEFAULT`;
    /// the board has no non-volatile registers, so both mean a plain reboot).
    Reboot,
    /// Reboot into the firmware update mode (`UPDATE_FIRMWARE`); the RP2040's USB bootloader.
    Bootloader,
}

/// Board services used by [`Device`](crate::Device).
pub trait Hal {
    /// A free-running, monotonic microsecond counter. The Harp clock of the device is this
    /// counter plus an offset, so it must never jump or wrap (the RP2040 timer is 64-bit).
    fn now_us(&self) -> u64;

    /// Drive the digital output lines: bit `i` of `state` is output line `i`.
    fn write_outputs(&mut self, state: u8);

    /// Switch the front-panel LED. Boards without one can ignore it.
    fn set_led(&mut self, on: bool) {
        let _ = on;
    }

    /// Reset the board. Called by [`Device::tick`](crate::Device::tick) only after every byte
    /// of the reply to the reset request has been drained, so the controller sees the reply.
    /// On hardware this does not return.
    fn reset(&mut self, kind: ResetKind) {
        let _ = kind;
    }
}

impl<H: Hal + ?Sized> Hal for &mut H {
    fn now_us(&self) -> u64 {
        (**self).now_us()
    }
    fn write_outputs(&mut self, state: u8) {
        (**self).write_outputs(state)
    }
    fn set_led(&mut self, on: bool) {
        (**self).set_led(on)
    }
    fn reset(&mut self, kind: ResetKind) {
        (**self).reset(kind)
    }
}
