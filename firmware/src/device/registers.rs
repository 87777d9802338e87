//! The register map of the sync board: Harp core registers (0–19, per harp-tech/protocol
//! `Device.md`, core protocol 1.13) and the application registers (32 and up).
//!
//! `docs/harp-registers.md` documents the same table for people; a test keeps the two in step.

use crate::harp::ElementType;

/// Identity class reported in `R_WHO_AM_I`.
///
/// 2176 is not in the harp-tech/whoami registry (checked April 2026: the nearest reserved
/// classes are 2094 and 2110). It must be reserved there with a pull request before boards leave
/// the lab; until then a controller that insists on registered classes will not know it.
pub const WHO_AM_I: u16 = 2176;

/// Register addresses.
pub mod address {
    /// `R_WHO_AM_I` (U16, read-only): device identity class.
    pub const WHO_AM_I: u8 = 0;
    /// `R_HW_VERSION_H` (U8, read-only, deprecated): hardware major version.
    pub const HW_VERSION_H: u8 = 1;
    /// `R_HW_VERSION_L` (U8, read-only, deprecated): hardware minor version.
    pub const HW_VERSION_L: u8 = 2;
    /// `R_ASSEMBLY_VERSION` (U8, read-only, deprecated): always 0.
    pub const ASSEMBLY_VERSION: u8 = 3;
    /// `R_CORE_VERSION_H` (U8, read-only, deprecated): Harp protocol major version.
    pub const CORE_VERSION_H: u8 = 4;
    /// `R_CORE_VERSION_L` (U8, read-only, deprecated): Harp protocol minor version.
    pub const CORE_VERSION_L: u8 = 5;
    /// `R_FW_VERSION_H` (U8, read-only, deprecated): firmware major version.
    pub const FW_VERSION_H: u8 = 6;
    /// `R_FW_VERSION_L` (U8, read-only, deprecated): firmware minor version.
    pub const FW_VERSION_L: u8 = 7;
    /// `R_TIMESTAMP_SECOND` (U32, read/write, event): whole seconds of the Harp clock.
    pub const TIMESTAMP_SECOND: u8 = 8;
    /// `R_TIMESTAMP_MICRO` (U16, read-only): fraction of the second in 32 µs ticks.
    pub const TIMESTAMP_MICRO: u8 = 9;
    /// `R_OPERATION_CTRL` (U8, read/write): operation mode and reporting flags.
    pub const OPERATION_CTRL: u8 = 10;
    /// `R_RESET_DEV` (U8, read/write): reboot / boot state.
    pub const RESET_DEV: u8 = 11;
    /// `R_DEVICE_NAME` (U8[25], read/write): human-readable name.
    pub const DEVICE_NAME: u8 = 12;
    /// `R_SERIAL_NUMBER` (U16, read/write, deprecated): serial number.
    pub const SERIAL_NUMBER: u8 = 13;
    /// `R_CLOCK_CONFIG` (U8, read/write): synchronisation clock configuration.
    pub const CLOCK_CONFIG: u8 = 14;
    /// `R_TIMESTAMP_OFFSET` (U8, read/write, deprecated): always 0.
    pub const TIMESTAMP_OFFSET: u8 = 15;
    /// `R_UID` (U8[16], read-only): unique identifier.
    pub const UID: u8 = 16;
    /// `R_TAG` (U8[8], read-only): firmware build tag.
    pub const TAG: u8 = 17;
    /// `R_HEARTBEAT` (U16, read-only, event): device status.
    pub const HEARTBEAT: u8 = 18;
    /// `R_VERSION` (U8[32], read-only): protocol, firmware and hardware versions.
    pub const VERSION: u8 = 19;

    /// `FRAME_CLOCK` (U32, read/write, event): microscope frames counted since the last write.
    pub const FRAME_CLOCK: u8 = 32;
    /// `PHOTODIODE` (U8, read-only, event): level of the photodiode input.
    pub const PHOTODIODE: u8 = 33;
    /// `ENCODER` (S32, read/write, event): treadmill position in quadrature counts.
    pub const ENCODER: u8 = 34;
    /// `ENCODER_RATE` (U16, read/write): encoder event rate in Hz, 0 = off.
    pub const ENCODER_RATE: u8 = 35;
    /// `OUTPUT_SET` (U8, read/write): raise the given output lines.
    pub const OUTPUT_SET: u8 = 36;
    /// `OUTPUT_CLEAR` (U8, read/write): lower the given output lines.
    pub const OUTPUT_CLEAR: u8 = 37;
    /// `OUTPUT_TOGGLE` (U8, read/write): invert the given output lines.
    pub const OUTPUT_TOGGLE: u8 = 38;
    /// `OUTPUT_STATE` (U8, read/write): all output lines at once.
    pub const OUTPUT_STATE: u8 = 39;
    /// `EVENT_ENABLE` (U8, read/write): which application events are sent.
    pub const EVENT_ENABLE: u8 = 40;
    /// `ENCODER_ERRORS` (U32, read-only): quadrature transitions with both lines changed.
    pub const ENCODER_ERRORS: u8 = 41;
}

/// Bits of `R_OPERATION_CTRL`.
pub mod operation_ctrl {
    /// `OP_MODE` field mask (bits 1:0).
    pub const OP_MODE_MASK: u8 = 0x03;
    /// `OP_MODE` = Standby: no events.
    pub const MODE_STANDBY: u8 = 0;
    /// `OP_MODE` = Active: events enabled.
    pub const MODE_ACTIVE: u8 = 1;
    /// `OP_MODE` = Speed (deprecated; not supported, answered with an error).
    pub const MODE_SPEED: u8 = 3;
    /// `HEARTBEAT_EN`: send `R_HEARTBEAT` every second.
    pub const HEARTBEAT_EN: u8 = 0x04;
    /// `DUMP`: after the reply, send a `Read` message for every register. Never read back set.
    pub const DUMP: u8 = 0x08;
    /// `MUTE_RPL`: send no replies at all.
    pub const MUTE_RPL: u8 = 0x10;
    /// `VISUAL_EN`: visual indicators on.
    pub const VISUAL_EN: u8 = 0x20;
    /// `OPLED_EN`: the LED blinks the operation mode.
    pub const OPLED_EN: u8 = 0x40;
    /// `ALIVE_EN` (deprecated): send `R_TIMESTAMP_SECOND` every second.
    pub const ALIVE_EN: u8 = 0x80;
}

/// Bits of `R_RESET_DEV`.
pub mod reset_dev {
    /// `RST_DEF`: reboot with defaults.
    pub const RST_DEF: u8 = 0x01;
    /// `RST_EE`: reboot from non-volatile memory (none on this board: error).
    pub const RST_EE: u8 = 0x02;
    /// `SAVE`: save to non-volatile memory (none on this board: error).
    pub const SAVE: u8 = 0x04;
    /// `NAME_TO_DEFAULT`: reboot with the default name.
    pub const NAME_TO_DEFAULT: u8 = 0x08;
    /// `UPDATE_FIRMWARE`: enter the firmware update mode.
    pub const UPDATE_FIRMWARE: u8 = 0x20;
    /// `BOOT_DEF` (read-only): booted with default values — always, without non-volatile memory.
    pub const BOOT_DEF: u8 = 0x40;
    /// `BOOT_EE` (read-only): booted from non-volatile memory.
    pub const BOOT_EE: u8 = 0x80;
}

/// Bits of `R_CLOCK_CONFIG`.
pub mod clock_config {
    /// `CLK_REP`: repeat the synchronisation clock (no clock connector on this board).
    pub const CLK_REP: u8 = 0x01;
    /// `CLK_GEN`: generate the synchronisation clock (no clock connector on this board).
    pub const CLK_GEN: u8 = 0x02;
    /// `REP_ABLE` (read-only): able to repeat.
    pub const REP_ABLE: u8 = 0x08;
    /// `GEN_ABLE` (read-only): able to generate.
    pub const GEN_ABLE: u8 = 0x10;
    /// `CLK_UNLOCK`: allow writes to `R_TIMESTAMP_SECOND`.
    pub const CLK_UNLOCK: u8 = 0x40;
    /// `CLK_LOCK`: refuse writes to `R_TIMESTAMP_SECOND`.
    pub const CLK_LOCK: u8 = 0x80;
}

/// Bits of `R_HEARTBEAT`.
pub mod heartbeat {
    /// `IS_ACTIVE`: the device is in Active mode.
    pub const IS_ACTIVE: u16 = 0x0001;
    /// `IS_SYNCHRONIZED`: locked to an external Harp clock (never, on this board).
    pub const IS_SYNCHRONIZED: u16 = 0x0002;
}

/// Bits of `EVENT_ENABLE`.
pub mod events {
    /// Frame clock events.
    pub const FRAME_CLOCK: u8 = 0x01;
    /// Photodiode events.
    pub const PHOTODIODE: u8 = 0x02;
    /// Periodic encoder events.
    pub const ENCODER: u8 = 0x04;
    /// Every defined bit; writes with other bits set are refused.
    pub const ALL: u8 = FRAME_CLOCK | PHOTODIODE | ENCODER;
}

/// Output lines (bits of the `OUTPUT_*` registers).
pub mod outputs {
    /// DO0: acquisition start trigger to the microscope.
    pub const ACQ_START: u8 = 0x01;
    /// DO1: stimulus onset trigger.
    pub const STIM_ONSET: u8 = 0x02;
    /// DO2: spare.
    pub const AUX0: u8 = 0x04;
    /// DO3: spare.
    pub const AUX1: u8 = 0x08;
    /// Every line the board has; writes with other bits set are refused.
    pub const ALL: u8 = ACQ_START | STIM_ONSET | AUX0 | AUX1;
}

/// Highest accepted `ENCODER_RATE`, in Hz. At 1 Mbaud an encoder event (16 bytes) takes 160 µs
/// on the wire, so 1 kHz uses 16 % of the link and leaves room for frame and photodiode events.
pub const MAX_ENCODER_RATE_HZ: u16 = 1000;

/// Default `ENCODER_RATE`: comfortably above the 30 Hz frame rate the twin is stepped at.
pub const DEFAULT_ENCODER_RATE_HZ: u16 = 100;

/// Who may write a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read requests only; writes get an error reply.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// Static description of one register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterSpec {
    /// Address.
    pub address: u8,
    /// Name as in the specification / `docs/harp-registers.md`.
    pub name: &'static str,
    /// Element type.
    pub element: ElementType,
    /// Number of elements.
    pub count: u8,
    /// Access.
    pub access: Access,
    /// Whether the register sends events.
    pub events: bool,
}

const fn reg(
    address: u8,
    name: &'static str,
    element: ElementType,
    count: u8,
    access: Access,
    events: bool,
) -> RegisterSpec {
    RegisterSpec {
        address,
        name,
        element,
        count,
        access,
        events,
    }
}

use Access::{ReadOnly as RO, ReadWrite as RW};
use ElementType::{S32, U16, U32, U8};

/// Every register of the board, in address order.
pub const REGISTERS: [RegisterSpec; 30] = [
    reg(address::WHO_AM_I, "R_WHO_AM_I", U16, 1, RO, false),
    reg(address::HW_VERSION_H, "R_HW_VERSION_H", U8, 1, RO, false),
    reg(address::HW_VERSION_L, "R_HW_VERSION_L", U8, 1, RO, false),
    reg(
        address::ASSEMBLY_VERSION,
        "R_ASSEMBLY_VERSION",
        U8,
        1,
        RO,
        false,
    ),
    reg(
        address::CORE_VERSION_H,
        "R_CORE_VERSION_H",
        U8,
        1,
        RO,
        false,
    ),
    reg(
        address::CORE_VERSION_L,
        "R_CORE_VERSION_L",
        U8,
        1,
        RO,
        false,
    ),
    reg(address::FW_VERSION_H, "R_FW_VERSION_H", U8, 1, RO, false),
    reg(address::FW_VERSION_L, "R_FW_VERSION_L", U8, 1, RO, false),
    reg(
        address::TIMESTAMP_SECOND,
        "R_TIMESTAMP_SECOND",
        U32,
        1,
        RW,
        true,
    ),
    reg(
        address::TIMESTAMP_MICRO,
        "R_TIMESTAMP_MICRO",
        U16,
        1,
        RO,
        false,
    ),
    reg(
        address::OPERATION_CTRL,
        "R_OPERATION_CTRL",
        U8,
        1,
        RW,
        false,
    ),
    reg(address::RESET_DEV, "R_RESET_DEV", U8, 1, RW, false),
    reg(address::DEVICE_NAME, "R_DEVICE_NAME", U8, 25, RW, false),
    reg(address::SERIAL_NUMBER, "R_SERIAL_NUMBER", U16, 1, RW, false),
    reg(address::CLOCK_CONFIG, "R_CLOCK_CONFIG", U8, 1, RW, false),
    reg(
        address::TIMESTAMP_OFFSET,
        "R_TIMESTAMP_OFFSET",
        U8,
        1,
        RW,
        false,
    ),
    reg(address::UID, "R_UID", U8, 16, RO, false),
    reg(address::TAG, "R_TAG", U8, 8, RO, false),
    reg(address::HEARTBEAT, "R_HEARTBEAT", U16, 1, RO, true),
    reg(address::VERSION, "R_VERSION", U8, 32, RO, false),
    reg(address::FRAME_CLOCK, "FRAME_CLOCK", U32, 1, RW, true),
    reg(address::PHOTODIODE, "PHOTODIODE", U8, 1, RO, true),
    reg(address::ENCODER, "ENCODER", S32, 1, RW, true),
    reg(address::ENCODER_RATE, "ENCODER_RATE", U16, 1, RW, false),
    reg(address::OUTPUT_SET, "OUTPUT_SET", U8, 1, RW, false),
    reg(address::OUTPUT_CLEAR, "OUTPUT_CLEAR", U8, 1, RW, false),
    reg(address::OUTPUT_TOGGLE, "OUTPUT_TOGGLE", U8, 1, RW, false),
    reg(address::OUTPUT_STATE, "OUTPUT_STATE", U8, 1, RW, false),
    reg(address::EVENT_ENABLE, "EVENT_ENABLE", U8, 1, RW, false),
    reg(address::ENCODER_ERRORS, "ENCODER_ERRORS", U32, 1, RO, false),
];

/// The register at `address`, if the board has one there.
pub fn spec(address: u8) -> Option<&'static RegisterSpec> {
    REGISTERS.iter().find(|r| r.address == address)
}

/// Version of the Harp core protocol implemented (`schema/core.yml` `protocolVersion: "1.13"`).
pub const PROTOCOL_VERSION: [u8; 3] = [1, 13, 0];

/// Three-character core identifier reported in `R_VERSION` (the twinrig RP2040 core).
pub const CORE_ID: [u8; 3] = *b"TRG";

/// Length of `R_DEVICE_NAME`.
pub const NAME_LEN: usize = 25;

/// Per-unit and per-build facts the registers report. The board glue fills it from the flash
/// unique ID and build metadata; tests use [`DeviceConfig::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConfig {
    /// `R_WHO_AM_I`.
    pub who_am_i: u16,
    /// Hardware version (major, minor, patch).
    pub hardware_version: [u8; 3],
    /// Firmware version (major, minor, patch).
    pub firmware_version: [u8; 3],
    /// `R_UID`; its first two bytes double as `R_SERIAL_NUMBER`, as the specification requires.
    pub uid: [u8; 16],
    /// `R_TAG`, e.g. the first 8 bytes of the git commit the firmware was built from.
    pub tag: [u8; 8],
    /// `R_DEVICE_NAME`, zero padded. Fixed: the board has no non-volatile memory to store
    /// another.
    pub name: [u8; NAME_LEN],
}

impl DeviceConfig {
    /// `R_SERIAL_NUMBER`: the first two bytes of the UID, little endian.
    pub const fn serial_number(&self) -> u16 {
        u16::from_le_bytes([self.uid[0], self.uid[1]])
    }

    /// The 32 bytes of `R_VERSION`: protocol, firmware, hardware (major, minor, patch each),
    /// core id, and a zero interface hash (which tells controllers not to validate a schema).
    pub fn version_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let parts = PROTOCOL_VERSION
            .iter()
            .chain(&self.firmware_version)
            .chain(&self.hardware_version)
            .chain(&CORE_ID);
        for (dst, src) in out.iter_mut().zip(parts) {
            *dst = *src;
        }
        out
    }
}

/// `env!("CARGO_PKG_VERSION_*")` as numbers, at compile time.
// Only ever evaluated at compile time: a bad index fails the build, never the board.
#[allow(clippy::indexing_slicing)]
const fn parse_u8(s: &str) -> u8 {
    let bytes = s.as_bytes();
    let mut value: u8 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let digit = bytes[i];
        if digit < b'0' || digit > b'9' {
            break;
        }
        value = value.saturating_mul(10).saturating_add(digit - b'0');
        i += 1;
    }
    value
}

/// Firmware version from the crate version.
pub const FIRMWARE_VERSION: [u8; 3] = [
    parse_u8(env!("CARGO_PKG_VERSION_MAJOR")),
    parse_u8(env!("CARGO_PKG_VERSION_MINOR")),
    parse_u8(env!("CARGO_PKG_VERSION_PATCH")),
];

/// Default name.
// Evaluated at compile time: a bad index fails the build, never the board.
#[allow(clippy::indexing_slicing)]
pub const DEFAULT_NAME: [u8; NAME_LEN] = {
    let mut name = [0u8; NAME_LEN];
    let text = b"twinrig sync board";
    let mut i = 0;
    while i < text.len() {
        name[i] = text[i];
        i += 1;
    }
    name
};

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            who_am_i: WHO_AM_I,
            hardware_version: [1, 0, 0],
            firmware_version: FIRMWARE_VERSION,
            uid: [0; 16],
            tag: [0; 8],
            name: DEFAULT_NAME,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_application_registers_start_at_32() {
        for pair in REGISTERS.windows(2) {
            assert!(pair[0].address < pair[1].address);
        }
        for r in &REGISTERS {
            assert_eq!(r.address >= 32, !r.name.starts_with("R_"), "{}", r.name);
        }
        assert!(spec(20).is_none() && spec(31).is_none() && spec(255).is_none());
    }

    #[test]
    fn version_bytes_layout() {
        let cfg = DeviceConfig {
            uid: [0x34, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        };
        let v = cfg.version_bytes();
        assert_eq!(&v[..3], &PROTOCOL_VERSION);
        assert_eq!(&v[3..6], &FIRMWARE_VERSION);
        assert_eq!(&v[6..9], &[1, 0, 0]);
        assert_eq!(&v[9..12], b"TRG");
        assert!(v[12..].iter().all(|&b| b == 0));
        assert_eq!(cfg.serial_number(), 0x1234);
    }
}
