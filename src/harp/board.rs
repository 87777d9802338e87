//! Which registers fill which role on a given Harp board, and the decoding of their events into
//! rig events (frame clock, photodiode flips, treadmill position and speed).
//!
//! Two boards are known (docs/harp-registers.md): the twinrig sync board, whose application
//! registers are one per role, and a stock Harp Behavior board, where the frame clock and the
//! photodiode are bits of the same `DigitalInputState` register (the host counts edges itself) and
//! the encoder is a 16-bit counter inside the 1 kHz `AnalogData` stream (the host unwraps it).

use std::collections::VecDeque;

use serde::Serialize;
use twinrig_firmware::device::registers::address as twin_reg;
use twinrig_firmware::harp::{ElementType, MessageType, MessageView};

use super::HarpError;
use crate::config::{Sync, SyncBoard};

/// WHO_AM_I of a Harp Behavior board.
pub const BEHAVIOR_WHO_AM_I: u16 = 1216;

/// Register addresses of the Harp Behavior board used here (harp-tech/device.behavior `device.yml`).
pub mod behavior {
    /// `DigitalInputState` (U8, event on change): DIPort0..2 in bits 0..2, DI3 in bit 3.
    pub const DIGITAL_INPUT_STATE: u8 = 32;
    /// `OutputSet` (U16); `OutputClear`, `OutputToggle`, `OutputState` follow.
    pub const OUTPUT_SET: u8 = 34;
    /// `AnalogData` (S16[3]: ADC0, encoder, ADC1), streamed at 1 kHz.
    pub const ANALOG_DATA: u8 = 44;
    /// `EventEnable` (U8): `PortDI` 0x01, `PortDIO` 0x02, `AnalogData` 0x04.
    pub const EVENT_ENABLE: u8 = 77;
    /// `EnableEncoders` (U8): `EncoderPort2` 0x04.
    pub const ENABLE_ENCODERS: u8 = 82;
    /// Digital inputs by name, as bits of `DigitalInputState`.
    pub const INPUTS: [(&str, u8); 4] = [
        ("DIPort0", 0x01),
        ("DIPort1", 0x02),
        ("DIPort2", 0x04),
        ("DI3", 0x08),
    ];
}

/// How a digital role (frame clock, photodiode) arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum InputSource {
    /// A U32 counter incremented on every rising edge, one event per edge (twinrig `FRAME_CLOCK`).
    Counter { address: u8 },
    /// A U8 level, one event per change (twinrig `PHOTODIODE`).
    Level { address: u8 },
    /// One bit of a U8 input-state register sent on every change of any input (Behavior).
    Bit { address: u8, mask: u8 },
}

impl InputSource {
    fn address(&self) -> u8 {
        match *self {
            InputSource::Counter { address }
            | InputSource::Level { address }
            | InputSource::Bit { address, .. } => address,
        }
    }

    fn with_address(self, address: u8) -> Self {
        match self {
            InputSource::Counter { .. } => InputSource::Counter { address },
            InputSource::Level { .. } => InputSource::Level { address },
            InputSource::Bit { mask, .. } => InputSource::Bit { address, mask },
        }
    }
}

/// How the treadmill encoder arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EncoderSource {
    /// An S32 position (twinrig `ENCODER`).
    Position32 { address: u8 },
    /// Element `index` of an S16 array, a 16-bit counter the host unwraps (Behavior `AnalogData`).
    Element16 { address: u8, index: usize },
}

impl EncoderSource {
    fn address(&self) -> u8 {
        match *self {
            EncoderSource::Position32 { address } | EncoderSource::Element16 { address, .. } => {
                address
            }
        }
    }
}

/// The four trigger outputs of the rig, in the order of the twinrig board's bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OutputLine {
    /// Acquisition start trigger to the microscope.
    AcqStart,
    /// Stimulus onset trigger.
    StimOnset,
    /// Spare.
    Aux0,
    /// Spare.
    Aux1,
}

/// The output registers: `set`, then clear, toggle and state at the next addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Outputs {
    pub set: u8,
    #[serde(skip)]
    pub element: ElementType,
    /// Bit mask of each [`OutputLine`].
    pub lines: [u16; 4],
}

/// A register write applied when the board is activated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SetupWrite {
    pub address: u8,
    #[serde(skip)]
    pub element: ElementType,
    pub value: i64,
    pub what: &'static str,
}

/// Registers per role of one board.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoardMap {
    pub kind: SyncBoard,
    /// WHO_AM_I the config expects.
    pub who_am_i: u16,
    pub frame_clock: InputSource,
    pub photodiode: InputSource,
    pub encoder: EncoderSource,
    pub outputs: Outputs,
    /// Writes that reset counters and enable the events, in order, before going Active.
    pub setup: Vec<SetupWrite>,
    pub encoder_cm_per_count: f64,
}

impl BoardMap {
    /// The twinrig sync board with its documented registers.
    pub fn twinrig() -> Self {
        BoardMap {
            kind: SyncBoard::Twinrig,
            who_am_i: twinrig_firmware::device::registers::WHO_AM_I,
            frame_clock: InputSource::Counter {
                address: twin_reg::FRAME_CLOCK,
            },
            photodiode: InputSource::Level {
                address: twin_reg::PHOTODIODE,
            },
            encoder: EncoderSource::Position32 {
                address: twin_reg::ENCODER,
            },
            outputs: Outputs {
                set: twin_reg::OUTPUT_SET,
                element: ElementType::U8,
                lines: [0x01, 0x02, 0x04, 0x08],
            },
            setup: vec![
                SetupWrite {
                    address: twin_reg::FRAME_CLOCK,
                    element: ElementType::U32,
                    value: 0,
                    what: "FRAME_CLOCK = 0",
                },
                SetupWrite {
                    address: twin_reg::ENCODER,
                    element: ElementType::S32,
                    value: 0,
                    what: "ENCODER = 0",
                },
                SetupWrite {
                    address: twin_reg::EVENT_ENABLE,
                    element: ElementType::U8,
                    value: 0x07,
                    what: "EVENT_ENABLE = frame clock | photodiode | encoder",
                },
            ],
            encoder_cm_per_count: 1.0,
        }
    }

    /// A Harp Behavior board with the frame clock and photodiode on the given digital inputs.
    pub fn harp_behavior(frame_clock_mask: u8, photodiode_mask: u8) -> Self {
        let di = behavior::DIGITAL_INPUT_STATE;
        BoardMap {
            kind: SyncBoard::HarpBehavior,
            who_am_i: BEHAVIOR_WHO_AM_I,
            frame_clock: InputSource::Bit {
                address: di,
                mask: frame_clock_mask,
            },
            photodiode: InputSource::Bit {
                address: di,
                mask: photodiode_mask,
            },
            encoder: EncoderSource::Element16 {
                address: behavior::ANALOG_DATA,
                index: 1,
            },
            outputs: Outputs {
                set: behavior::OUTPUT_SET,
                element: ElementType::U16,
                lines: [0x0400, 0x0800, 0x1000, 0x2000],
            },
            setup: vec![
                SetupWrite {
                    address: behavior::ENABLE_ENCODERS,
                    element: ElementType::U8,
                    value: 0x04,
                    what: "EnableEncoders = EncoderPort2",
                },
                SetupWrite {
                    address: behavior::EVENT_ENABLE,
                    element: ElementType::U8,
                    value: 0x05,
                    what: "EventEnable = PortDI | AnalogData",
                },
            ],
            encoder_cm_per_count: 1.0,
        }
    }

    /// The map the `[sync]` section of a rig config describes.
    pub fn from_config(sync: &Sync) -> Result<Self, HarpError> {
        let mut map = match sync.board {
            SyncBoard::Twinrig => BoardMap::twinrig(),
            SyncBoard::HarpBehavior => {
                let fc = behavior_input("sync.frame_clock_input", &sync.frame_clock_input)?;
                let pd = behavior_input("sync.photodiode_input", &sync.photodiode_input)?;
                if fc == pd {
                    return Err(HarpError::Config(format!(
                        "sync.frame_clock_input and sync.photodiode_input are both {}",
                        sync.frame_clock_input
                    )));
                }
                BoardMap::harp_behavior(fc, pd)
            }
        };
        map.who_am_i = sync.who_am_i;
        map.encoder_cm_per_count = sync.encoder_cm_per_count;
        if let Some(r) = &sync.registers {
            if let Some(a) = r.frame_clock {
                map.frame_clock = map.frame_clock.with_address(a);
            }
            if let Some(a) = r.photodiode {
                map.photodiode = map.photodiode.with_address(a);
            }
            if let Some(a) = r.encoder {
                map.encoder = match map.encoder {
                    EncoderSource::Position32 { .. } => EncoderSource::Position32 { address: a },
                    EncoderSource::Element16 { index, .. } => {
                        EncoderSource::Element16 { address: a, index }
                    }
                };
            }
            if let Some(a) = r.output_set {
                map.outputs.set = a;
            }
            if let Some(a) = r.event_enable {
                let default_gate = match map.kind {
                    SyncBoard::Twinrig => twin_reg::EVENT_ENABLE,
                    SyncBoard::HarpBehavior => behavior::EVENT_ENABLE,
                };
                for w in &mut map.setup {
                    if w.address == default_gate {
                        w.address = a;
                    }
                }
            }
        }
        Ok(map)
    }

    /// The mask of an output line on this board.
    pub fn line_mask(&self, line: OutputLine) -> u16 {
        let i = match line {
            OutputLine::AcqStart => 0,
            OutputLine::StimOnset => 1,
            OutputLine::Aux0 => 2,
            OutputLine::Aux1 => 3,
        };
        self.outputs.lines[i]
    }
}

fn behavior_input(key: &str, name: &str) -> Result<u8, HarpError> {
    behavior::INPUTS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, m)| *m)
        .ok_or_else(|| {
            HarpError::Config(format!(
                "{key} = {name:?} is not a Harp Behavior digital input; expected one of \
                 DIPort0, DIPort1, DIPort2, DI3"
            ))
        })
}

/// What an event from the board means for the rig.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// A microscope frame started. `count` is the board's frame counter (the host's count of
    /// rising edges on boards without one).
    FrameClock { count: u64 },
    /// The photodiode changed level: a display flip became visible.
    Photodiode { level: bool },
    /// Treadmill position (counts, unwrapped) and running speed over the last 100 ms.
    Encoder { position: i64, speed_cm_s: f64 },
    /// The board's heartbeat (once a second).
    Heartbeat { active: bool },
}

/// Window over which running speed is computed, seconds.
const SPEED_WINDOW_S: f64 = 0.1;
/// Shortest interval between encoder events handed on (the Behavior board streams at 1 kHz).
const ENCODER_MIN_INTERVAL_S: f64 = 0.005;

/// Turns board messages into [`EventKind`]s; keeps the state that edge counting, 16-bit unwrapping
/// and speed estimation need. Call [`reset`](Self::reset) after a reconnection.
#[derive(Debug, Clone)]
pub struct Decoder {
    map: BoardMap,
    input_bits: Option<u8>,
    frames: u64,
    encoder_raw: Option<i16>,
    encoder_pos: i64,
    speed_window: VecDeque<(f64, i64)>,
    last_encoder_emit: f64,
    speed_cm_s: f64,
}

impl Decoder {
    pub fn new(map: BoardMap) -> Self {
        Decoder {
            map,
            input_bits: None,
            frames: 0,
            encoder_raw: None,
            encoder_pos: 0,
            speed_window: VecDeque::new(),
            last_encoder_emit: f64::NEG_INFINITY,
            speed_cm_s: 0.0,
        }
    }

    pub fn map(&self) -> &BoardMap {
        &self.map
    }

    /// Forgets the per-connection state (a replugged board restarts its counters).
    pub fn reset(&mut self) {
        self.input_bits = None;
        self.encoder_raw = None;
        self.speed_window.clear();
        self.last_encoder_emit = f64::NEG_INFINITY;
    }

    /// Decodes one event message stamped `device_s`; calls `out` for each rig event in it.
    pub fn decode(
        &mut self,
        msg: &MessageView<'_>,
        device_s: f64,
        out: &mut impl FnMut(EventKind),
    ) {
        if msg.message_type() != MessageType::Event {
            return;
        }
        let address = msg.address();
        let payload = msg.payload();
        if address == twin_reg::HEARTBEAT {
            if let Some(bits) = payload.first::<u16>() {
                out(EventKind::Heartbeat {
                    active: bits & 1 != 0,
                });
            }
            return;
        }
        // Digital roles; on the Behavior board both share one register.
        let mut bits_now = None;
        for (role, source) in [(0, self.map.frame_clock), (1, self.map.photodiode)] {
            if source.address() != address {
                continue;
            }
            match source {
                InputSource::Counter { .. } => {
                    if let Some(c) = payload.first::<u32>() {
                        self.frames = u64::from(c);
                        out(EventKind::FrameClock { count: self.frames });
                    }
                }
                InputSource::Level { .. } => {
                    if let Some(l) = payload.first::<u8>() {
                        let kind = if role == 0 {
                            // A level-reporting frame clock: count rising edges.
                            if l == 0 {
                                continue;
                            }
                            self.frames += 1;
                            EventKind::FrameClock { count: self.frames }
                        } else {
                            EventKind::Photodiode { level: l != 0 }
                        };
                        out(kind);
                    }
                }
                InputSource::Bit { mask, .. } => {
                    let Some(now) = payload.first::<u8>() else {
                        continue;
                    };
                    bits_now = Some(now);
                    let before = self.input_bits;
                    let changed = before.is_none_or(|b| (b ^ now) & mask != 0);
                    let high = now & mask != 0;
                    if !changed || (before.is_none() && role == 0) {
                        continue;
                    }
                    if role == 0 {
                        if high {
                            self.frames += 1;
                            out(EventKind::FrameClock { count: self.frames });
                        }
                    } else {
                        out(EventKind::Photodiode { level: high });
                    }
                }
            }
        }
        if let Some(b) = bits_now {
            self.input_bits = Some(b);
        }
        if self.map.encoder.address() == address {
            let position = match self.map.encoder {
                EncoderSource::Position32 { .. } => payload.first::<i32>().map(i64::from),
                EncoderSource::Element16 { index, .. } => payload.get::<i16>(index).map(|raw| {
                    if let Some(prev) = self.encoder_raw {
                        self.encoder_pos += i64::from(raw.wrapping_sub(prev));
                    } else {
                        self.encoder_pos = i64::from(raw);
                    }
                    self.encoder_raw = Some(raw);
                    self.encoder_pos
                }),
            };
            if let Some(p) = position {
                self.encoder_sample(device_s, p, out);
            }
        }
    }

    fn encoder_sample(&mut self, t: f64, position: i64, out: &mut impl FnMut(EventKind)) {
        self.speed_window.push_back((t, position));
        while let Some(&(t0, _)) = self.speed_window.front() {
            if t - t0 > SPEED_WINDOW_S && self.speed_window.len() > 2 {
                self.speed_window.pop_front();
            } else {
                break;
            }
        }
        if let Some(&(t0, p0)) = self.speed_window.front() {
            if t > t0 {
                self.speed_cm_s = (position - p0) as f64 * self.map.encoder_cm_per_count / (t - t0);
            }
        }
        if t - self.last_encoder_emit >= ENCODER_MIN_INTERVAL_S {
            self.last_encoder_emit = t;
            out(EventKind::Encoder {
                position,
                speed_cm_s: self.speed_cm_s,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinrig_firmware::harp::{Message, Payload, Timestamp};

    fn decode_all(d: &mut Decoder, msg: Message<'_>, t: f64) -> Vec<EventKind> {
        let mut buf = [0u8; 64];
        let n = msg.encode_into(&mut buf).unwrap();
        let view = MessageView::decode(&buf[..n]).unwrap();
        let mut v = Vec::new();
        d.decode(&view, t, &mut |k| v.push(k));
        v
    }

    fn ev<'a>(address: u8, payload: Payload<'a>) -> Message<'a> {
        Message::event(address, Timestamp::new(1, 0), payload)
    }

    #[test]
    fn twinrig_events() {
        let mut map = BoardMap::twinrig();
        map.encoder_cm_per_count = 0.5;
        let mut d = Decoder::new(map);
        assert_eq!(
            decode_all(&mut d, ev(32, Payload::U32(&[7])), 0.0),
            vec![EventKind::FrameClock { count: 7 }]
        );
        assert_eq!(
            decode_all(&mut d, ev(33, Payload::U8(&[1])), 0.0),
            vec![EventKind::Photodiode { level: true }]
        );
        decode_all(&mut d, ev(34, Payload::S32(&[0])), 1.0);
        let e = decode_all(&mut d, ev(34, Payload::S32(&[40])), 1.05);
        match e[..] {
            [EventKind::Encoder {
                position,
                speed_cm_s,
            }] => {
                assert_eq!(position, 40);
                assert!((speed_cm_s - 400.0).abs() < 1e-6, "{speed_cm_s}");
            }
            _ => panic!("{e:?}"),
        }
        // Replies and unknown registers are not events.
        assert!(decode_all(&mut d, ev(99, Payload::U8(&[1])), 0.0).is_empty());
    }

    #[test]
    fn behavior_bits_and_16_bit_encoder() {
        let mut d = Decoder::new(BoardMap::harp_behavior(0x08, 0x01));
        // First state: establishes levels; a high photodiode is reported, no frame is counted.
        assert_eq!(
            decode_all(&mut d, ev(32, Payload::U8(&[0x09])), 0.0),
            vec![EventKind::Photodiode { level: true }]
        );
        assert!(decode_all(&mut d, ev(32, Payload::U8(&[0x01])), 0.01).is_empty());
        assert_eq!(
            decode_all(&mut d, ev(32, Payload::U8(&[0x08])), 0.02),
            vec![
                EventKind::FrameClock { count: 1 },
                EventKind::Photodiode { level: false }
            ]
        );
        // Other inputs changing are ignored.
        assert!(decode_all(&mut d, ev(32, Payload::U8(&[0x0C])), 0.03).is_empty());
        // The encoder counter wraps at 16 bits; the host unwraps it.
        decode_all(&mut d, ev(44, Payload::S16(&[0, 32_760, 0])), 1.0);
        let e = decode_all(&mut d, ev(44, Payload::S16(&[0, -32_766, 0])), 1.01);
        assert!(
            matches!(
                e[..],
                [EventKind::Encoder {
                    position: 32_770,
                    ..
                }]
            ),
            "{e:?}"
        );
    }

    #[test]
    fn config_mapping() {
        let mut cfg = crate::config::RigConfig::embedded_sim();
        assert_eq!(BoardMap::from_config(&cfg.sync).unwrap().who_am_i, 2176);
        cfg.sync.board = SyncBoard::HarpBehavior;
        let err = BoardMap::from_config(&cfg.sync).unwrap_err().to_string();
        assert!(err.contains("DI0") && err.contains("DIPort0"), "{err}");
        cfg.sync.frame_clock_input = "DI3".into();
        cfg.sync.photodiode_input = "DIPort0".into();
        cfg.sync.registers = Some(crate::config::SyncRegisters {
            event_enable: Some(78),
            ..Default::default()
        });
        let m = BoardMap::from_config(&cfg.sync).unwrap();
        assert_eq!(
            m.frame_clock,
            InputSource::Bit {
                address: 32,
                mask: 8
            }
        );
        assert!(m.setup.iter().any(|w| w.address == 78));
        assert_eq!(m.line_mask(OutputLine::StimOnset), 0x0800);
    }
}
