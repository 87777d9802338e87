//! The sync board as a Harp device, independent of the hardware it runs on.
//!
//! The board glue (or the rig simulator, or a test) drives a [`Device`] with four kinds of input
//! and drains one output:
//!
//! * bytes from the controller: [`Device::on_bytes`];
//! * input edges: [`Device::on_frame_clock_edge_at`], [`Device::on_photodiode_edge_at`],
//!   [`Device::on_encoder`] (and the variants that timestamp "now");
//! * the passage of time: [`Device::tick`], called often (every main-loop pass; at least every
//!   millisecond for a 1 kHz encoder rate);
//! * the connection state: [`Device::set_connected`];
//! * output: [`Device::poll_tx`] hands out the encoded replies and events for the serial port.
//!
//! Behaviour follows harp-tech/protocol `Device.md`: every `Read`/`Write` request gets exactly
//! one timestamped reply from the same address and type (unless replies are muted), errors are
//! replies with the error flag, events are only sent in Active mode, and the Harp clock is the
//! board's microsecond counter plus an offset that writes to `R_TIMESTAMP_SECOND` adjust.
//!
//! ```
//! use twinrig_firmware::{Device, Hal};
//! use twinrig_firmware::harp::{ElementType, Message, MessageView};
//! use twinrig_firmware::device::registers::{address, WHO_AM_I};
//!
//! struct Board { now: u64 }
//! impl Hal for Board {
//!     fn now_us(&self) -> u64 { self.now }
//!     fn write_outputs(&mut self, _state: u8) {}
//! }
//!
//! let mut device = Device::new(Board { now: 1_500_000 });
//! let mut request = [0u8; 8];
//! let n = Message::read(address::WHO_AM_I, ElementType::U16).encode_into(&mut request).unwrap();
//! device.on_bytes(&request[..n]);
//!
//! let mut out = [0u8; 64];
//! let n = device.poll_tx(&mut out);
//! let reply = MessageView::decode(&out[..n]).unwrap();
//! assert_eq!(reply.payload().first::<u16>(), Some(WHO_AM_I));
//! assert_eq!(reply.timestamp().unwrap().seconds, 1);
//! ```

pub mod encoder;
pub mod registers;
mod tx;

use core::slice;

use crate::hal::{Hal, ResetKind};
use crate::harp::{
    ElementType, Message, MessageType, MessageView, Parser, ParserStats, Payload, PayloadView,
    Timestamp, DEVICE_PORT,
};

pub use encoder::{Quadrature, Step};
pub use registers::DeviceConfig;
pub use tx::TxQueue;

use registers::{
    address as reg, clock_config, events, heartbeat, operation_ctrl as op, outputs, reset_dev,
    Access, MAX_ENCODER_RATE_HZ,
};

/// Receive buffer: the largest request is a 25-byte name write (32 bytes on the wire).
pub const RX_CAPACITY: usize = 256;

/// Transmit queue: a full register dump (30 messages, about 600 bytes) plus a burst of events.
pub const TX_CAPACITY: usize = 2048;

/// Largest message the device sends: `R_VERSION`, 12 bytes of framing + 32 of payload.
const MAX_OUT_MESSAGE: usize = 64;

const MICROS_PER_SECOND: u64 = 1_000_000;

/// Counters for diagnostics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// `Read`/`Write` requests handled.
    pub requests: u64,
    /// `Write` requests among them (lets a host check that it wrote nothing, e.g. to a board it
    /// did not recognise).
    pub writes: u64,
    /// Replies queued, error replies included.
    pub replies: u64,
    /// Error replies queued.
    pub error_replies: u64,
    /// Events queued.
    pub events: u64,
    /// Messages received that are not requests (events, error-flagged messages): ignored.
    pub ignored: u64,
    /// Messages dropped because the transmit queue was full.
    pub dropped_messages: u64,
    /// Periodic encoder events skipped because `tick` was called too late to send them on time.
    pub encoder_events_skipped: u64,
}

/// A register value, owned so it can be read before the message borrowing it is queued.
#[derive(Debug, Clone, Copy)]
enum RegValue {
    U8(u8),
    U16(u16),
    U32(u32),
    S32(i32),
    Bytes([u8; 32], usize),
}

impl RegValue {
    fn payload(&self) -> Payload<'_> {
        match self {
            RegValue::U8(v) => Payload::U8(slice::from_ref(v)),
            RegValue::U16(v) => Payload::U16(slice::from_ref(v)),
            RegValue::U32(v) => Payload::U32(slice::from_ref(v)),
            RegValue::S32(v) => Payload::S32(slice::from_ref(v)),
            RegValue::Bytes(data, len) => Payload::U8(data.get(..*len).unwrap_or(&[])),
        }
    }

    fn bytes(src: &[u8]) -> RegValue {
        let mut data = [0u8; 32];
        let len = src.len().min(data.len());
        for (dst, s) in data.iter_mut().zip(src) {
            *dst = *s;
        }
        RegValue::Bytes(data, len)
    }
}

/// Why a write was refused (and answered with an error reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refused;

/// Drift-free periodic schedule: the k-th deadline is `origin + k / rate`, computed exactly
/// rather than by accumulating a rounded period (1/30 s is not a whole number of µs).
#[derive(Debug, Clone, Copy)]
struct Schedule {
    origin_us: u64,
    index: u64,
}

impl Schedule {
    fn due(&self, rate_hz: u16) -> u64 {
        let rate = u64::from(rate_hz.max(1));
        self.origin_us
            .saturating_add(self.index.saturating_mul(MICROS_PER_SECOND) / rate)
    }
}

/// Everything but the parser, so that the parser can lend out a message while the rest of the
/// device handles it.
struct Core<H> {
    hal: H,
    config: DeviceConfig,
    version: [u8; 32],
    tx: TxQueue<TX_CAPACITY>,
    stats: DeviceStats,
    /// Harp time = HAL time + offset, in wrapping arithmetic so that the offset may be negative.
    clock_offset_us: u64,
    /// `R_OPERATION_CTRL` as read back (the DUMP bit is never stored).
    op_ctrl: u8,
    clock_locked: bool,
    pending_reset: Option<ResetKind>,
    /// Harp second of the last heartbeat check.
    last_second: u32,
    frame_count: u32,
    photodiode: bool,
    encoder: Quadrature,
    encoder_rate_hz: u16,
    encoder_schedule: Schedule,
    outputs: u8,
    event_enable: u8,
    led: Option<bool>,
}

/// The sync board. See the [module documentation](self).
pub struct Device<H: Hal> {
    parser: Parser<RX_CAPACITY>,
    core: Core<H>,
}

impl<H: Hal> Device<H> {
    /// A device with the default identity ([`DeviceConfig::default`]).
    pub fn new(hal: H) -> Self {
        Self::with_config(hal, DeviceConfig::default())
    }

    /// A device with the given identity (UID, tag, versions).
    pub fn with_config(hal: H, config: DeviceConfig) -> Self {
        let now = hal.now_us();
        let mut core = Core {
            hal,
            version: config.version_bytes(),
            config,
            tx: TxQueue::new(),
            stats: DeviceStats::default(),
            clock_offset_us: 0,
            op_ctrl: op::MODE_STANDBY | op::VISUAL_EN | op::OPLED_EN,
            clock_locked: false,
            pending_reset: None,
            last_second: (now / MICROS_PER_SECOND) as u32,
            frame_count: 0,
            photodiode: false,
            encoder: Quadrature::new(),
            encoder_rate_hz: registers::DEFAULT_ENCODER_RATE_HZ,
            encoder_schedule: Schedule {
                origin_us: now,
                index: 1,
            },
            outputs: 0,
            event_enable: events::ALL,
            led: None,
        };
        core.hal.write_outputs(0);
        core.update_led(now);
        Device {
            parser: Parser::new(),
            core,
        }
    }

    /// Feeds bytes received from the controller; handles every complete request among them.
    pub fn on_bytes(&mut self, bytes: &[u8]) {
        let Device { parser, core } = self;
        parser.push(bytes, |message| core.handle(&message));
    }

    /// A rising edge of the microscope frame clock, now.
    pub fn on_frame_clock_edge(&mut self) {
        let now = self.core.hal.now_us();
        self.on_frame_clock_edge_at(now);
    }

    /// A rising edge of the microscope frame clock captured at HAL time `t_us`: counts the frame
    /// and, when active and enabled, sends a `FRAME_CLOCK` event stamped with the capture time.
    pub fn on_frame_clock_edge_at(&mut self, t_us: u64) {
        let core = &mut self.core;
        core.frame_count = core.frame_count.wrapping_add(1);
        if core.event_enable & events::FRAME_CLOCK != 0 {
            let count = core.frame_count;
            core.event(reg::FRAME_CLOCK, t_us, Payload::U32(&[count]));
        }
    }

    /// The photodiode input changed to `level`, now.
    pub fn on_photodiode_edge(&mut self, level: bool) {
        let now = self.core.hal.now_us();
        self.on_photodiode_edge_at(level, now);
    }

    /// The photodiode input changed to `level` at HAL time `t_us`. Repeated reports of the same
    /// level (contact bounce already filtered, or a glitch shorter than the capture) are ignored
    /// so that every event is a real flip.
    pub fn on_photodiode_edge_at(&mut self, level: bool, t_us: u64) {
        let core = &mut self.core;
        if level == core.photodiode {
            return;
        }
        core.photodiode = level;
        if core.event_enable & events::PHOTODIODE != 0 {
            core.event(reg::PHOTODIODE, t_us, Payload::U8(&[u8::from(level)]));
        }
    }

    /// The current levels of the encoder's A and B lines; call on every edge of either, and once
    /// at start-up. Position is reported by the periodic `ENCODER` events, not per edge: a
    /// treadmill makes tens of thousands of edges per second, far more than the link carries.
    pub fn on_encoder(&mut self, a: bool, b: bool) -> Step {
        self.core.encoder.update(a, b)
    }

    /// The controller connection went up or down (e.g. the serial DTR line). Losing it drops the
    /// device to Standby, as `Device.md` requires, so no events pile up for nobody.
    pub fn set_connected(&mut self, connected: bool) {
        if !connected {
            self.core.op_ctrl &= !op::OP_MODE_MASK;
            let now = self.core.hal.now_us();
            self.core.update_led(now);
        }
    }

    /// Periodic work: heartbeat, encoder events, LED, and a requested reset once its reply is out.
    pub fn tick(&mut self) {
        let core = &mut self.core;
        let now = core.hal.now_us();
        core.heartbeat(now);
        core.encoder_events(now);
        core.update_led(now);
        if core.tx.is_empty() {
            if let Some(kind) = core.pending_reset.take() {
                core.hal.reset(kind);
            }
        }
    }

    /// Moves queued output bytes into `out`; returns how many. Messages are queued whole, so a
    /// caller that drains everything eventually always sends whole messages.
    pub fn poll_tx(&mut self, out: &mut [u8]) -> usize {
        self.core.tx.pop_into(out)
    }

    /// Bytes waiting in the transmit queue.
    pub fn tx_pending(&self) -> usize {
        self.core.tx.len()
    }

    /// The HAL.
    pub fn hal(&self) -> &H {
        &self.core.hal
    }

    /// The HAL, mutably (tests advance simulated time through it).
    pub fn hal_mut(&mut self) -> &mut H {
        &mut self.core.hal
    }

    /// The identity the device reports.
    pub fn config(&self) -> &DeviceConfig {
        &self.core.config
    }

    /// Device counters.
    pub fn stats(&self) -> DeviceStats {
        self.core.stats
    }

    /// Counters of the request parser (noise, bad checksums).
    pub fn parser_stats(&self) -> ParserStats {
        self.parser.stats()
    }

    /// True in Active mode (events enabled).
    pub fn is_active(&self) -> bool {
        self.core.is_active()
    }

    /// `R_OPERATION_CTRL` as a read would return it.
    pub fn operation_ctrl(&self) -> u8 {
        self.core.op_ctrl
    }

    /// The Harp clock now, in µs.
    pub fn harp_time_us(&self) -> u64 {
        self.core.harp_us(self.core.hal.now_us())
    }

    /// The Harp clock now.
    pub fn harp_time(&self) -> Timestamp {
        Timestamp::from_micros(self.harp_time_us())
    }

    /// Converts a HAL time (e.g. an edge capture) to the Harp clock.
    pub fn harp_time_of(&self, t_us: u64) -> Timestamp {
        Timestamp::from_micros(self.core.harp_us(t_us))
    }

    /// Frames counted (`FRAME_CLOCK`).
    pub fn frame_count(&self) -> u32 {
        self.core.frame_count
    }

    /// Photodiode level (`PHOTODIODE`).
    pub fn photodiode(&self) -> bool {
        self.core.photodiode
    }

    /// Encoder position in counts (`ENCODER`).
    pub fn encoder_position(&self) -> i32 {
        self.core.encoder.position()
    }

    /// Quadrature errors (`ENCODER_ERRORS`).
    pub fn encoder_errors(&self) -> u32 {
        self.core.encoder.errors()
    }

    /// Output line state (`OUTPUT_STATE`).
    pub fn outputs(&self) -> u8 {
        self.core.outputs
    }

    /// A reset requested by the controller and not yet carried out.
    pub fn pending_reset(&self) -> Option<ResetKind> {
        self.core.pending_reset
    }
}

impl<H: Hal> Core<H> {
    fn harp_us(&self, hal_us: u64) -> u64 {
        hal_us.wrapping_add(self.clock_offset_us)
    }

    fn is_active(&self) -> bool {
        self.op_ctrl & op::OP_MODE_MASK == op::MODE_ACTIVE
    }

    fn muted(&self) -> bool {
        self.op_ctrl & op::MUTE_RPL != 0
    }

    /// Encodes and queues a message whole, or counts it as dropped.
    fn send(&mut self, message: &Message<'_>) -> bool {
        let mut buf = [0u8; MAX_OUT_MESSAGE];
        let queued = match message.encode_into(&mut buf) {
            Ok(n) => buf.get(..n).is_some_and(|bytes| self.tx.push(bytes)),
            Err(_) => false,
        };
        if !queued {
            self.stats.dropped_messages += 1;
        }
        queued
    }

    /// Sends an event stamped with HAL time `t_us`, if events are enabled (Active mode).
    fn event(&mut self, address: u8, t_us: u64, payload: Payload<'_>) {
        if !self.is_active() {
            return;
        }
        let timestamp = Timestamp::from_micros(self.harp_us(t_us));
        if self.send(&Message::event(address, timestamp, payload)) {
            self.stats.events += 1;
        }
    }

    fn read_register(&self, address: u8, harp_us: u64) -> Option<RegValue> {
        let cfg = &self.config;
        let seconds = (harp_us / MICROS_PER_SECOND) as u32;
        Some(match address {
            reg::WHO_AM_I => RegValue::U16(cfg.who_am_i),
            reg::HW_VERSION_H => RegValue::U8(cfg.hardware_version[0]),
            reg::HW_VERSION_L => RegValue::U8(cfg.hardware_version[1]),
            reg::ASSEMBLY_VERSION => RegValue::U8(0),
            reg::CORE_VERSION_H => RegValue::U8(registers::PROTOCOL_VERSION[0]),
            reg::CORE_VERSION_L => RegValue::U8(registers::PROTOCOL_VERSION[1]),
            reg::FW_VERSION_H => RegValue::U8(cfg.firmware_version[0]),
            reg::FW_VERSION_L => RegValue::U8(cfg.firmware_version[1]),
            reg::TIMESTAMP_SECOND => RegValue::U32(seconds),
            reg::TIMESTAMP_MICRO => RegValue::U16(Timestamp::from_micros(harp_us).ticks),
            reg::OPERATION_CTRL => RegValue::U8(self.op_ctrl),
            // No non-volatile memory: always booted from defaults.
            reg::RESET_DEV => RegValue::U8(reset_dev::BOOT_DEF),
            reg::DEVICE_NAME => RegValue::bytes(&cfg.name),
            reg::SERIAL_NUMBER => RegValue::U16(cfg.serial_number()),
            reg::CLOCK_CONFIG => RegValue::U8(if self.clock_locked {
                clock_config::CLK_LOCK
            } else {
                clock_config::CLK_UNLOCK
            }),
            reg::TIMESTAMP_OFFSET => RegValue::U8(0),
            reg::UID => RegValue::bytes(&cfg.uid),
            reg::TAG => RegValue::bytes(&cfg.tag),
            reg::HEARTBEAT => RegValue::U16(self.heartbeat_bits()),
            reg::VERSION => RegValue::bytes(&self.version),
            reg::FRAME_CLOCK => RegValue::U32(self.frame_count),
            reg::PHOTODIODE => RegValue::U8(u8::from(self.photodiode)),
            reg::ENCODER => RegValue::S32(self.encoder.position()),
            reg::ENCODER_RATE => RegValue::U16(self.encoder_rate_hz),
            reg::OUTPUT_SET | reg::OUTPUT_CLEAR | reg::OUTPUT_TOGGLE | reg::OUTPUT_STATE => {
                RegValue::U8(self.outputs)
            }
            reg::EVENT_ENABLE => RegValue::U8(self.event_enable),
            reg::ENCODER_ERRORS => RegValue::U32(self.encoder.errors()),
            _ => return None,
        })
    }

    fn heartbeat_bits(&self) -> u16 {
        // IS_SYNCHRONIZED stays clear: the board has no Harp clock input to lock to.
        if self.is_active() {
            heartbeat::IS_ACTIVE
        } else {
            0
        }
    }

    fn handle(&mut self, request: &MessageView<'_>) {
        let message_type = request.message_type();
        if !matches!(message_type, MessageType::Read | MessageType::Write) {
            // Controllers send only requests, and never with the error flag.
            self.stats.ignored += 1;
            return;
        }
        self.stats.requests += 1;
        if message_type == MessageType::Write {
            self.stats.writes += 1;
        }
        let address = request.address();
        let requested = request.payload_type().element;

        if request.port() != DEVICE_PORT {
            // Not a hub: nothing lives behind other ports.
            self.reply_error(message_type, address, request.port(), requested);
            return;
        }
        let Some(spec) = registers::spec(address) else {
            self.reply_error(message_type, address, DEVICE_PORT, requested);
            return;
        };
        if requested != spec.element {
            self.reply_error(message_type, address, DEVICE_PORT, requested);
            return;
        }
        if message_type == MessageType::Read {
            self.reply(MessageType::Read, address);
            return;
        }
        let payload = request.payload();
        if spec.access == Access::ReadOnly || payload.len() != usize::from(spec.count) {
            self.reply_error(message_type, address, DEVICE_PORT, requested);
            return;
        }
        match self.write_register(address, payload) {
            Ok(dump) => {
                self.reply(MessageType::Write, address);
                if dump {
                    for spec in &registers::REGISTERS {
                        self.reply(MessageType::Read, spec.address);
                    }
                }
            }
            Err(Refused) => self.reply_error(message_type, address, DEVICE_PORT, requested),
        }
    }

    /// Replies with the register's current contents, stamped with the time of the reply.
    fn reply(&mut self, message_type: MessageType, address: u8) {
        if self.muted() {
            return;
        }
        let now = self.harp_us(self.hal.now_us());
        let Some(value) = self.read_register(address, now) else {
            return;
        };
        let message = Message::new(message_type, address, value.payload())
            .with_timestamp(Timestamp::from_micros(now));
        if self.send(&message) {
            self.stats.replies += 1;
        }
    }

    /// Error reply: same address, port and type as the request. It carries the register's current
    /// contents when the register exists (so a controller that got the type wrong learns the
    /// right one) and an empty payload otherwise, as in the `Device.md` exchange examples.
    fn reply_error(
        &mut self,
        message_type: MessageType,
        address: u8,
        port: u8,
        element: ElementType,
    ) {
        if self.muted() {
            return;
        }
        let now = self.harp_us(self.hal.now_us());
        let value = if port == DEVICE_PORT {
            self.read_register(address, now)
        } else {
            None
        };
        let payload = match &value {
            Some(v) => v.payload(),
            None => Payload::empty(element),
        };
        let message = Message::new(message_type.with_error(), address, payload)
            .with_port(port)
            .with_timestamp(Timestamp::from_micros(now));
        if self.send(&message) {
            self.stats.replies += 1;
            self.stats.error_replies += 1;
        }
    }

    /// Applies a write whose type and length have been checked. `Ok(true)` asks for a register
    /// dump after the reply.
    fn write_register(&mut self, address: u8, payload: PayloadView<'_>) -> Result<bool, Refused> {
        let byte = || payload.first::<u8>().ok_or(Refused);
        let now = self.hal.now_us();
        match address {
            reg::TIMESTAMP_SECOND => {
                let seconds = payload.first::<u32>().ok_or(Refused)?;
                // A locked clock keeps its value; the reply (with the unchanged value) says so.
                if !self.clock_locked {
                    self.set_seconds(seconds, now);
                }
            }
            reg::OPERATION_CTRL => {
                let value = byte()?;
                let mode = value & op::OP_MODE_MASK;
                if mode != op::MODE_STANDBY && mode != op::MODE_ACTIVE {
                    // Speed mode is deprecated and 2 is reserved: "MUST reply with Error".
                    return Err(Refused);
                }
                let was_active = self.is_active();
                self.op_ctrl = value & !op::DUMP;
                if self.is_active() && !was_active {
                    self.last_second = (self.harp_us(now) / MICROS_PER_SECOND) as u32;
                    self.encoder_schedule = Schedule {
                        origin_us: now,
                        index: 1,
                    };
                }
                self.update_led(now);
                return Ok(value & op::DUMP != 0);
            }
            reg::RESET_DEV => {
                let value = byte()?;
                let unsupported = reset_dev::RST_EE
                    | reset_dev::SAVE
                    | reset_dev::BOOT_DEF
                    | reset_dev::BOOT_EE
                    | 0x10;
                if value & unsupported != 0 {
                    return Err(Refused);
                }
                if value & reset_dev::UPDATE_FIRMWARE != 0 {
                    self.pending_reset = Some(ResetKind::Bootloader);
                } else if value & (reset_dev::RST_DEF | reset_dev::NAME_TO_DEFAULT) != 0 {
                    self.pending_reset = Some(ResetKind::Reboot);
                }
            }
            // Without non-volatile memory the name, serial number and (deprecated) offset cannot
            // change; the specification asks for a normal reply carrying the unchanged value.
            reg::DEVICE_NAME | reg::SERIAL_NUMBER | reg::TIMESTAMP_OFFSET => {}
            reg::CLOCK_CONFIG => {
                let value = byte()?;
                let lock = value & clock_config::CLK_LOCK != 0;
                let unlock = value & clock_config::CLK_UNLOCK != 0;
                if lock && unlock {
                    return Err(Refused);
                }
                // CLK_REP / CLK_GEN need a clock connector this board does not have: ignored,
                // and the read-back (REP_ABLE / GEN_ABLE clear) tells the controller why.
                if lock || unlock {
                    self.clock_locked = lock;
                }
            }
            reg::FRAME_CLOCK => self.frame_count = payload.first::<u32>().ok_or(Refused)?,
            reg::ENCODER => self
                .encoder
                .set_position(payload.first::<i32>().ok_or(Refused)?),
            reg::ENCODER_RATE => {
                let rate = payload.first::<u16>().ok_or(Refused)?;
                if rate > MAX_ENCODER_RATE_HZ {
                    return Err(Refused);
                }
                self.encoder_rate_hz = rate;
                self.encoder_schedule = Schedule {
                    origin_us: now,
                    index: 1,
                };
            }
            reg::OUTPUT_SET | reg::OUTPUT_CLEAR | reg::OUTPUT_TOGGLE | reg::OUTPUT_STATE => {
                let mask = byte()?;
                if mask & !outputs::ALL != 0 {
                    return Err(Refused);
                }
                self.outputs = match address {
                    reg::OUTPUT_SET => self.outputs | mask,
                    reg::OUTPUT_CLEAR => self.outputs & !mask,
                    reg::OUTPUT_TOGGLE => self.outputs ^ mask,
                    _ => mask,
                };
                self.hal.write_outputs(self.outputs);
            }
            reg::EVENT_ENABLE => {
                let mask = byte()?;
                if mask & !events::ALL != 0 {
                    return Err(Refused);
                }
                if mask & events::ENCODER != 0 && self.event_enable & events::ENCODER == 0 {
                    self.encoder_schedule = Schedule {
                        origin_us: now,
                        index: 1,
                    };
                }
                self.event_enable = mask;
            }
            _ => return Err(Refused),
        }
        Ok(false)
    }

    /// Sets the whole seconds of the Harp clock, keeping the fraction running, as the Harp
    /// clock-synchronisation scheme expects (it sends whole seconds on second boundaries).
    fn set_seconds(&mut self, seconds: u32, now: u64) {
        let fraction = self.harp_us(now) % MICROS_PER_SECOND;
        let target = u64::from(seconds) * MICROS_PER_SECOND + fraction;
        self.clock_offset_us = target.wrapping_sub(now);
        // The heartbeat follows the new clock from its next second boundary.
        self.last_second = seconds;
    }

    fn heartbeat(&mut self, now: u64) {
        let seconds = (self.harp_us(now) / MICROS_PER_SECOND) as u32;
        if seconds == self.last_second {
            return;
        }
        self.last_second = seconds;
        // HEARTBEAT_EN takes precedence over the deprecated ALIVE_EN (Device.md, R_OPERATION_CTRL).
        if self.op_ctrl & op::HEARTBEAT_EN != 0 {
            let bits = self.heartbeat_bits();
            self.event(reg::HEARTBEAT, now, Payload::U16(&[bits]));
        } else if self.op_ctrl & op::ALIVE_EN != 0 {
            self.event(reg::TIMESTAMP_SECOND, now, Payload::U32(&[seconds]));
        }
    }

    fn encoder_events(&mut self, now: u64) {
        let rate = self.encoder_rate_hz;
        if rate == 0 || !self.is_active() || self.event_enable & events::ENCODER == 0 {
            return;
        }
        if now < self.encoder_schedule.due(rate) {
            return;
        }
        let position = self.encoder.position();
        self.event(reg::ENCODER, now, Payload::S32(&[position]));
        self.encoder_schedule.index += 1;
        if self.encoder_schedule.due(rate) <= now {
            // Late by more than a period: send one event now, not a burst of stale ones.
            let elapsed = now.saturating_sub(self.encoder_schedule.origin_us);
            let current = elapsed.saturating_mul(u64::from(rate)) / MICROS_PER_SECOND;
            let next = current + 1;
            self.stats.encoder_events_skipped += next.saturating_sub(self.encoder_schedule.index);
            self.encoder_schedule.index = next;
        }
    }

    /// LED: off unless visual indicators are enabled; blinking with the operation mode when
    /// OPLED_EN is set (period 4 s in Standby, 2 s in Active, per `Device.md`); steady otherwise.
    fn update_led(&mut self, now: u64) {
        let on = if self.op_ctrl & op::VISUAL_EN == 0 {
            false
        } else if self.op_ctrl & op::OPLED_EN != 0 {
            let half_period = if self.is_active() {
                1_000_000
            } else {
                2_000_000
            };
            (now / half_period) % 2 == 0
        } else {
            true
        };
        if self.led != Some(on) {
            self.led = Some(on);
            self.hal.set_led(on);
        }
    }
}
