//! Device behaviour, driven the way a controller and the board glue drive it: bytes in, edges
//! in, time passing, bytes out.

mod common;

use common::Owned;
use twinrig_firmware::device::registers::{
    address as reg, clock_config, events, operation_ctrl as op, outputs, reset_dev, REGISTERS,
    WHO_AM_I,
};
use twinrig_firmware::hal::ResetKind;
use twinrig_firmware::harp::{
    ElementType, Message, MessageType, Parser, Payload, PayloadType, Timestamp,
};
use twinrig_firmware::{Device, Hal};

#[derive(Debug, Default)]
struct Sim {
    now: u64,
    outputs: u8,
    led: Option<bool>,
    resets: Vec<ResetKind>,
}

impl Hal for Sim {
    fn now_us(&self) -> u64 {
        self.now
    }
    fn write_outputs(&mut self, state: u8) {
        self.outputs = state;
    }
    fn set_led(&mut self, on: bool) {
        self.led = Some(on);
    }
    fn reset(&mut self, kind: ResetKind) {
        self.resets.push(kind);
    }
}

struct Rig {
    device: Device<Sim>,
    parser: Parser<512>,
}

impl Rig {
    fn new() -> Self {
        Rig::at(0)
    }

    fn at(now: u64) -> Self {
        Rig {
            device: Device::new(Sim {
                now,
                ..Default::default()
            }),
            parser: Parser::new(),
        }
    }

    fn set_time(&mut self, now: u64) {
        self.device.hal_mut().now = now;
    }

    fn drain(&mut self) -> Vec<Owned> {
        let mut bytes = vec![0u8; 8192];
        let n = self.device.poll_tx(&mut bytes);
        let mut out = Vec::new();
        self.parser
            .push(&bytes[..n], |m| out.push(Owned::from_view(&m)));
        assert_eq!(
            self.parser.stats().discarded_bytes,
            0,
            "device sent a malformed message"
        );
        out
    }

    fn send(&mut self, message: Message<'_>) -> Vec<Owned> {
        let mut wire = [0u8; 128];
        let n = message.encode_into(&mut wire).unwrap();
        self.device.on_bytes(&wire[..n]);
        self.drain()
    }

    fn one(&mut self, message: Message<'_>) -> Owned {
        let mut replies = self.send(message);
        assert_eq!(replies.len(), 1, "{replies:?}");
        replies.remove(0)
    }

    fn read(&mut self, address: u8, element: ElementType) -> Owned {
        let reply = self.one(Message::read(address, element));
        assert_eq!(reply.message_type, MessageType::Read, "{reply:?}");
        reply
    }

    fn write(&mut self, address: u8, payload: Payload<'_>) -> Owned {
        self.one(Message::write(address, payload))
    }

    fn set_op_ctrl(&mut self, value: u8) -> Owned {
        let reply = self.write(reg::OPERATION_CTRL, Payload::U8(&[value]));
        assert_eq!(reply.message_type, MessageType::Write);
        reply
    }

    fn activate(&mut self) {
        self.set_op_ctrl(op::MODE_ACTIVE | op::VISUAL_EN | op::OPLED_EN);
    }

    fn tick_until(&mut self, end: u64, step: u64) -> Vec<Owned> {
        let mut out = Vec::new();
        let mut t = self.device.hal().now;
        while t <= end {
            self.set_time(t);
            self.device.tick();
            out.extend(self.drain());
            t += step;
        }
        out
    }
}

fn ts(micros: u64) -> Option<Timestamp> {
    Some(Timestamp::from_micros(micros))
}

// --- handshake -------------------------------------------------------------------------------

#[test]
fn handshake_reads_identify_the_board() {
    let mut rig = Rig::at(3_250_000);
    let who = rig.read(reg::WHO_AM_I, ElementType::U16);
    assert_eq!(who.u16(), WHO_AM_I);
    assert_eq!(who.address, 0);
    assert_eq!(who.port, 255);
    assert_eq!(who.payload_type, PayloadType::new(ElementType::U16, true));
    assert_eq!(who.timestamp, ts(3_250_000));

    assert_eq!(rig.read(reg::HW_VERSION_H, ElementType::U8).u8(), 1);
    assert_eq!(rig.read(reg::HW_VERSION_L, ElementType::U8).u8(), 0);
    assert_eq!(rig.read(reg::ASSEMBLY_VERSION, ElementType::U8).u8(), 0);
    assert_eq!(rig.read(reg::CORE_VERSION_H, ElementType::U8).u8(), 1);
    assert_eq!(rig.read(reg::CORE_VERSION_L, ElementType::U8).u8(), 13);
    assert_eq!(rig.read(reg::FW_VERSION_H, ElementType::U8).u8(), 0);
    assert_eq!(rig.read(reg::FW_VERSION_L, ElementType::U8).u8(), 1);

    let name = rig.read(reg::DEVICE_NAME, ElementType::U8);
    assert_eq!(name.payload.len(), 25);
    assert!(name.payload.starts_with(b"twinrig sync board\0"));

    let version = rig.read(reg::VERSION, ElementType::U8);
    assert_eq!(version.payload.len(), 32);
    assert_eq!(
        &version.payload[..12],
        &[1, 13, 0, 0, 1, 0, 1, 0, 0, b'T', b'R', b'G']
    );

    assert_eq!(rig.read(reg::SERIAL_NUMBER, ElementType::U16).u16(), 0);
    assert_eq!(rig.read(reg::UID, ElementType::U8).payload, [0; 16]);
    assert_eq!(rig.read(reg::TAG, ElementType::U8).payload, [0; 8]);
    assert_eq!(
        rig.read(reg::RESET_DEV, ElementType::U8).u8(),
        reset_dev::BOOT_DEF
    );
    assert_eq!(
        rig.read(reg::CLOCK_CONFIG, ElementType::U8).u8(),
        clock_config::CLK_UNLOCK
    );
    assert_eq!(rig.read(reg::TIMESTAMP_OFFSET, ElementType::U8).u8(), 0);
    // Boots in Standby, indicators on.
    assert_eq!(
        rig.read(reg::OPERATION_CTRL, ElementType::U8).u8(),
        op::VISUAL_EN | op::OPLED_EN
    );
    assert_eq!(rig.read(reg::HEARTBEAT, ElementType::U16).u16(), 0);
}

#[test]
fn every_register_answers_reads_with_its_declared_type_and_length() {
    let mut rig = Rig::new();
    for spec in &REGISTERS {
        let reply = rig.read(spec.address, spec.element);
        assert_eq!(reply.address, spec.address);
        assert_eq!(reply.payload_type.element, spec.element, "{}", spec.name);
        assert_eq!(
            reply.payload.len(),
            usize::from(spec.count) * spec.element.size(),
            "{}",
            spec.name
        );
    }
    assert_eq!(rig.device.stats().error_replies, 0);
}

// --- the Harp clock --------------------------------------------------------------------------

#[test]
fn timestamp_registers_follow_the_clock_and_accept_a_new_second() {
    let mut rig = Rig::at(12_345_678);
    assert_eq!(rig.read(reg::TIMESTAMP_SECOND, ElementType::U32).u32(), 12);
    assert_eq!(
        rig.read(reg::TIMESTAMP_MICRO, ElementType::U16).u16(),
        (345_678 / 32) as u16
    );

    // Writing the seconds keeps the fraction running (the clock-sync scheme relies on it).
    let reply = rig.write(reg::TIMESTAMP_SECOND, Payload::U32(&[1000]));
    assert_eq!(reply.message_type, MessageType::Write);
    assert_eq!(reply.u32(), 1000);
    assert_eq!(reply.timestamp, ts(1_000_345_678));
    assert_eq!(
        rig.device.harp_time(),
        Timestamp::from_micros(1_000_345_678)
    );

    rig.set_time(13_345_678 + 700_000);
    assert_eq!(
        rig.read(reg::TIMESTAMP_SECOND, ElementType::U32).u32(),
        1002
    );
    let micro = rig.read(reg::TIMESTAMP_MICRO, ElementType::U16);
    assert_eq!(micro.u16(), (45_678 / 32) as u16);
    assert_eq!(micro.timestamp, ts(1_002_045_678));

    // Going back in time works too (the offset is signed).
    rig.write(reg::TIMESTAMP_SECOND, Payload::U32(&[0]));
    assert_eq!(rig.device.harp_time_us(), 45_678);
}

#[test]
fn a_locked_clock_refuses_new_seconds_without_an_error() {
    let mut rig = Rig::at(5_000_000);
    let reply = rig.write(reg::CLOCK_CONFIG, Payload::U8(&[clock_config::CLK_LOCK]));
    assert_eq!(reply.u8(), clock_config::CLK_LOCK);
    let reply = rig.write(reg::TIMESTAMP_SECOND, Payload::U32(&[77]));
    assert_eq!(reply.message_type, MessageType::Write);
    assert_eq!(reply.u32(), 5, "the reply carries the value actually kept");
    rig.write(reg::CLOCK_CONFIG, Payload::U8(&[clock_config::CLK_UNLOCK]));
    assert_eq!(
        rig.write(reg::TIMESTAMP_SECOND, Payload::U32(&[77])).u32(),
        77
    );
    let both = clock_config::CLK_LOCK | clock_config::CLK_UNLOCK;
    assert_eq!(
        rig.write(reg::CLOCK_CONFIG, Payload::U8(&[both]))
            .message_type,
        MessageType::WriteError
    );
}

// --- operation mode and events ---------------------------------------------------------------

#[test]
fn events_only_in_active_mode() {
    let mut rig = Rig::at(1_000);
    rig.device.on_frame_clock_edge();
    rig.device.on_photodiode_edge(true);
    assert!(
        rig.tick_until(3_000_000, 1_000).is_empty(),
        "standby must be silent"
    );
    assert_eq!(
        rig.device.frame_count(),
        1,
        "frames are counted even in standby"
    );

    rig.activate();
    assert!(rig.device.is_active());
    assert_eq!(rig.read(reg::HEARTBEAT, ElementType::U16).u16(), 1);
    rig.device.on_frame_clock_edge();
    let events = rig.drain();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].message_type, events[0].address, events[0].u32()),
        (MessageType::Event, 32, 2)
    );

    rig.set_op_ctrl(op::MODE_STANDBY);
    rig.device.on_frame_clock_edge();
    rig.device.on_photodiode_edge(false);
    assert!(rig.tick_until(6_000_000, 1_000).is_empty());
}

#[test]
fn event_enable_masks_application_events() {
    let mut rig = Rig::new();
    rig.activate();
    rig.write(reg::ENCODER_RATE, Payload::U16(&[0]));
    assert_eq!(
        rig.write(reg::EVENT_ENABLE, Payload::U8(&[events::PHOTODIODE]))
            .u8(),
        events::PHOTODIODE
    );
    rig.device.on_frame_clock_edge();
    rig.device.on_photodiode_edge(true);
    let got = rig.drain();
    assert_eq!(
        got.iter().map(|m| m.address).collect::<Vec<_>>(),
        [reg::PHOTODIODE]
    );
    let refused = rig.write(reg::EVENT_ENABLE, Payload::U8(&[0x80]));
    assert_eq!(refused.message_type, MessageType::WriteError);
    assert_eq!(
        refused.u8(),
        events::PHOTODIODE,
        "error reply carries the unchanged value"
    );
}

#[test]
fn heartbeat_once_per_second_when_enabled_and_active() {
    let mut rig = Rig::at(500_000);
    rig.set_op_ctrl(op::MODE_STANDBY | op::HEARTBEAT_EN);
    assert!(
        rig.tick_until(2_600_000, 10_000).is_empty(),
        "no heartbeat in standby"
    );

    rig.set_op_ctrl(op::MODE_ACTIVE | op::HEARTBEAT_EN);
    rig.write(reg::ENCODER_RATE, Payload::U16(&[0]));
    let beats = rig.tick_until(6_200_000, 10_000);
    // Second boundaries at 3, 4, 5 and 6 s.
    assert_eq!(beats.len(), 4, "{beats:?}");
    for (k, beat) in beats.iter().enumerate() {
        assert_eq!(
            (beat.message_type, beat.address),
            (MessageType::Event, reg::HEARTBEAT)
        );
        assert_eq!(beat.u16(), 1, "IS_ACTIVE");
        assert_eq!(beat.timestamp.unwrap().seconds, 3 + k as u32);
    }

    // The deprecated ALIVE_EN sends R_TIMESTAMP_SECOND instead; HEARTBEAT_EN wins if both.
    rig.set_op_ctrl(op::MODE_ACTIVE | op::ALIVE_EN);
    let alive = rig.tick_until(8_100_000, 10_000);
    assert_eq!(
        alive
            .iter()
            .map(|m| (m.address, m.u32()))
            .collect::<Vec<_>>(),
        [(8, 7), (8, 8)]
    );
    rig.set_op_ctrl(op::MODE_ACTIVE | op::ALIVE_EN | op::HEARTBEAT_EN);
    let both = rig.tick_until(9_100_000, 10_000);
    assert_eq!(
        both.iter().map(|m| m.address).collect::<Vec<_>>(),
        [reg::HEARTBEAT]
    );
}

#[test]
fn frame_clock_events_carry_count_and_capture_time_on_the_harp_clock() {
    let mut rig = Rig::at(2_000_000);
    rig.activate();
    rig.write(reg::ENCODER_RATE, Payload::U16(&[0]));
    rig.write(reg::TIMESTAMP_SECOND, Payload::U32(&[500])); // Harp = HAL + 498 s
    rig.set_time(2_100_000);
    // Edges captured earlier (in the interrupt) are stamped with their capture time.
    for (k, capture) in [2_033_333u64, 2_066_666, 2_099_999].iter().enumerate() {
        rig.device.on_frame_clock_edge_at(*capture);
        let event = rig.drain().remove(0);
        assert_eq!(event.address, reg::FRAME_CLOCK);
        assert_eq!(event.u32(), k as u32 + 1);
        assert_eq!(event.timestamp, ts(498_000_000 + capture));
        assert_eq!(event.timestamp.unwrap(), rig.device.harp_time_of(*capture));
    }
    assert_eq!(rig.write(reg::FRAME_CLOCK, Payload::U32(&[0])).u32(), 0);
    rig.device.on_frame_clock_edge();
    assert_eq!(rig.drain()[0].u32(), 1);
}

#[test]
fn photodiode_events_report_each_flip_with_its_level() {
    let mut rig = Rig::at(10);
    rig.activate();
    rig.write(reg::ENCODER_RATE, Payload::U16(&[0]));
    let flips = [
        (true, 1_000u64),
        (true, 1_500),
        (false, 17_700),
        (true, 34_400),
    ];
    for (level, t) in flips {
        rig.device.on_photodiode_edge_at(level, t);
    }
    let got = rig.drain();
    let seen: Vec<_> = got
        .iter()
        .map(|m| (m.address, m.u8(), m.timestamp))
        .collect();
    assert_eq!(
        seen,
        [(33, 1, ts(1_000)), (33, 0, ts(17_700)), (33, 1, ts(34_400))]
    );
    assert_eq!(rig.read(reg::PHOTODIODE, ElementType::U8).u8(), 1);
}

// --- encoder ---------------------------------------------------------------------------------

fn turn(device: &mut Device<Sim>, steps: i32) {
    // Gray sequence A,B: 00 → 10 → 11 → 01 → 00 is forward.
    const SEQ: [(bool, bool); 4] = [(false, false), (true, false), (true, true), (false, true)];
    let mut phase = (device.encoder_position().rem_euclid(4)) as usize;
    for _ in 0..steps.unsigned_abs() {
        phase = if steps > 0 {
            (phase + 1) % 4
        } else {
            (phase + 3) % 4
        };
        let (a, b) = SEQ[phase];
        device.on_encoder(a, b);
    }
}

#[test]
fn quadrature_decoding_forwards_and_backwards() {
    let mut rig = Rig::new();
    rig.device.on_encoder(false, false); // idle levels at start-up
    turn(&mut rig.device, 4 * 250);
    assert_eq!(rig.read(reg::ENCODER, ElementType::S32).i32(), 1000);
    turn(&mut rig.device, -4 * 300);
    assert_eq!(rig.read(reg::ENCODER, ElementType::S32).i32(), -200);
    // A missed edge (both lines change) is counted, not guessed.
    let (a, b) = if rig.device.encoder_position().rem_euclid(4) == 0 {
        (true, true)
    } else {
        (false, false)
    };
    rig.device.on_encoder(a, b);
    assert_eq!(rig.read(reg::ENCODER_ERRORS, ElementType::U32).u32(), 1);
    assert_eq!(rig.read(reg::ENCODER, ElementType::S32).i32(), -200);
    assert_eq!(rig.write(reg::ENCODER, Payload::S32(&[0])).i32(), 0);
    assert_eq!(
        rig.write(reg::ENCODER_ERRORS, Payload::U32(&[0]))
            .message_type,
        MessageType::WriteError
    );
}

#[test]
fn encoder_events_at_the_configured_rate() {
    let mut rig = Rig::at(1_000_000);
    rig.device.on_encoder(false, false);
    rig.activate();
    assert_eq!(rig.write(reg::ENCODER_RATE, Payload::U16(&[30])).u16(), 30);
    let mut events = Vec::new();
    for ms in 1..=2_000u64 {
        rig.set_time(1_000_000 + ms * 1_000);
        if ms % 7 == 0 {
            turn(&mut rig.device, 3);
        }
        rig.device.tick();
        events.extend(
            rig.drain()
                .into_iter()
                .filter(|m| m.address == reg::ENCODER),
        );
    }
    assert_eq!(events.len(), 60, "30 Hz for 2 s");
    // Deadlines are k/30 s after the rate was set, exactly, despite 1/30 s not being whole µs;
    // with a 1 ms tick each event is sent within 1 ms of its deadline.
    for (k, e) in events.iter().enumerate() {
        let due = 1_000_000 + (k as u64 + 1) * 1_000_000 / 30;
        let sent = e.timestamp.unwrap().to_micros();
        assert!(
            sent >= due - 32 && sent < due + 1_000,
            "event {k}: {sent} vs {due}"
        );
        assert_eq!(e.payload_type, PayloadType::new(ElementType::S32, true));
    }
    assert!(events.windows(2).all(|w| w[1].i32() >= w[0].i32()));
    assert_eq!(events.last().unwrap().i32(), rig.device.encoder_position());

    // Rate 0 stops them; beyond 1 kHz is refused.
    rig.write(reg::ENCODER_RATE, Payload::U16(&[0]));
    assert!(rig.tick_until(4_000_000, 1_000).is_empty());
    let refused = rig.write(reg::ENCODER_RATE, Payload::U16(&[1001]));
    assert_eq!(
        (refused.message_type, refused.u16()),
        (MessageType::WriteError, 0)
    );
}

#[test]
fn a_late_tick_sends_one_encoder_event_not_a_burst() {
    let mut rig = Rig::at(0);
    rig.activate();
    rig.write(reg::ENCODER_RATE, Payload::U16(&[1000]));
    rig.set_time(50_500);
    rig.device.tick();
    let got: Vec<_> = rig
        .drain()
        .into_iter()
        .filter(|m| m.address == reg::ENCODER)
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(rig.device.stats().encoder_events_skipped, 49);
    rig.set_time(51_000);
    rig.device.tick();
    assert_eq!(rig.drain().len(), 1, "back on the 1 ms grid");
}

// --- outputs ---------------------------------------------------------------------------------

#[test]
fn digital_outputs_set_clear_toggle_and_state() {
    let mut rig = Rig::new();
    let r = rig.write(reg::OUTPUT_SET, Payload::U8(&[outputs::ACQ_START]));
    assert_eq!((r.message_type, r.u8()), (MessageType::Write, 0b0001));
    assert_eq!(rig.device.hal().outputs, 0b0001);
    rig.write(
        reg::OUTPUT_SET,
        Payload::U8(&[outputs::STIM_ONSET | outputs::AUX1]),
    );
    assert_eq!(rig.device.hal().outputs, 0b1011);
    rig.write(reg::OUTPUT_CLEAR, Payload::U8(&[outputs::ACQ_START]));
    assert_eq!(rig.device.hal().outputs, 0b1010);
    assert_eq!(
        rig.write(reg::OUTPUT_TOGGLE, Payload::U8(&[0b0110])).u8(),
        0b1100
    );
    assert_eq!(
        rig.write(reg::OUTPUT_STATE, Payload::U8(&[0b0011])).u8(),
        0b0011
    );
    assert_eq!(rig.read(reg::OUTPUT_SET, ElementType::U8).u8(), 0b0011);
    // Lines the board does not have: refused, nothing changes.
    let r = rig.write(reg::OUTPUT_SET, Payload::U8(&[0x10]));
    assert_eq!((r.message_type, r.u8()), (MessageType::WriteError, 0b0011));
    assert_eq!(rig.device.hal().outputs, 0b0011);
    // Outputs work in standby: triggers are commands, not events.
    assert!(!rig.device.is_active());
}

// --- errors ----------------------------------------------------------------------------------

#[test]
fn error_replies() {
    let mut rig = Rig::at(7_000_000);
    // Unknown registers: reserved core range and beyond the application map.
    for address in [20u8, 31, 42, 200, 255] {
        let r = rig.one(Message::read(address, ElementType::U8));
        assert_eq!(r.message_type, MessageType::ReadError, "address {address}");
        assert_eq!(r.address, address);
        assert!(r.payload.is_empty());
        assert_eq!(r.payload_type, PayloadType::new(ElementType::U8, true));
        assert_eq!(r.timestamp, ts(7_000_000));
        let w = rig.write(address, Payload::U8(&[1]));
        assert_eq!(w.message_type, MessageType::WriteError);
    }
    // Read-only register: error, carrying the real value.
    let r = rig.write(reg::WHO_AM_I, Payload::U16(&[1216]));
    assert_eq!(
        (r.message_type, r.u16()),
        (MessageType::WriteError, WHO_AM_I)
    );
    let r = rig.write(reg::TIMESTAMP_MICRO, Payload::U16(&[1]));
    assert_eq!(r.message_type, MessageType::WriteError);
    // Wrong payload type, on read and on write: the error tells the right type.
    let r = rig.one(Message::read(reg::WHO_AM_I, ElementType::U8));
    assert_eq!(r.message_type, MessageType::ReadError);
    assert_eq!(r.payload_type.element, ElementType::U16);
    let r = rig.write(reg::ENCODER_RATE, Payload::U32(&[10]));
    assert_eq!(r.message_type, MessageType::WriteError);
    // Wrong length.
    let r = rig.write(reg::DEVICE_NAME, Payload::U8(b"abc"));
    assert_eq!(r.message_type, MessageType::WriteError);
    let r = rig.write(reg::OUTPUT_SET, Payload::U8(&[1, 1]));
    assert_eq!(r.message_type, MessageType::WriteError);
    // Speed mode (deprecated) and the reserved mode 2 are refused.
    for mode in [2u8, op::MODE_SPEED] {
        let r = rig.write(reg::OPERATION_CTRL, Payload::U8(&[mode]));
        assert_eq!(r.message_type, MessageType::WriteError);
    }
    assert!(!rig.device.is_active());
    // A port other than the device's own: error, echoing the port.
    let r = rig.one(Message::read(reg::WHO_AM_I, ElementType::U16).with_port(3));
    assert_eq!((r.message_type, r.port), (MessageType::ReadError, 3));
    assert!(r.payload.is_empty());
    // Not requests at all: ignored silently.
    let ev = Message::event(reg::WHO_AM_I, Timestamp::new(0, 0), Payload::U16(&[1]));
    assert!(rig.send(ev).is_empty());
    let flagged = Message::new(MessageType::ReadError, reg::WHO_AM_I, Payload::U16(&[]));
    assert!(rig.send(flagged).is_empty());
    assert_eq!(rig.device.stats().ignored, 2);
    // The name and serial number cannot change without non-volatile memory: normal reply with
    // the unchanged value.
    let mut name = [0u8; 25];
    name[..3].copy_from_slice(b"rig");
    let r = rig.write(reg::DEVICE_NAME, Payload::U8(&name));
    assert_eq!(r.message_type, MessageType::Write);
    assert!(r.payload.starts_with(b"twinrig"));
    assert_eq!(
        rig.write(reg::SERIAL_NUMBER, Payload::U16(&[0xFFFF])).u16(),
        0
    );
}

#[test]
fn requests_are_found_in_noise_and_split_reads() {
    let mut rig = Rig::new();
    let mut wire = vec![0x00, 0x55, 0xFF, 0x04];
    let mut request = [0u8; 6];
    Message::read(reg::WHO_AM_I, ElementType::U16)
        .encode_into(&mut request)
        .unwrap();
    wire.extend_from_slice(&request);
    wire.extend_from_slice(&[0x01, 0x04, 0x00]); // half a request, completed below
    rig.device.on_bytes(&wire);
    rig.device.on_bytes(&[0xFF, 0x02, 0x06]);
    let replies = rig.drain();
    assert_eq!(replies.len(), 2);
    assert!(replies.iter().all(|r| r.u16() == WHO_AM_I));
    assert_eq!(rig.device.parser_stats().discarded_bytes, 4);
}

// --- reply muting, dump, reset, connection ---------------------------------------------------

#[test]
fn muted_replies_and_unmuting() {
    let mut rig = Rig::new();
    let mut wire = [0u8; 16];
    let n = Message::write(reg::OPERATION_CTRL, Payload::U8(&[op::MUTE_RPL]))
        .encode_into(&mut wire)
        .unwrap();
    rig.device.on_bytes(&wire[..n]);
    assert!(
        rig.drain().is_empty(),
        "the reply to the muting write is muted too"
    );
    assert!(rig
        .send(Message::read(reg::WHO_AM_I, ElementType::U16))
        .is_empty());
    assert!(
        rig.send(Message::read(200, ElementType::U8)).is_empty(),
        "errors are muted too"
    );
    let r = rig.set_op_ctrl(op::MODE_STANDBY);
    assert_eq!(r.u8(), 0);
    assert_eq!(rig.read(reg::WHO_AM_I, ElementType::U16).u16(), WHO_AM_I);
}

#[test]
fn dump_sends_every_register_after_the_write_reply() {
    let mut rig = Rig::new();
    let value = op::MODE_ACTIVE | op::DUMP | op::VISUAL_EN;
    let replies = rig.send(Message::write(reg::OPERATION_CTRL, Payload::U8(&[value])));
    assert_eq!(replies.len(), 1 + REGISTERS.len());
    assert_eq!(
        (replies[0].message_type, replies[0].u8()),
        (MessageType::Write, value & !op::DUMP)
    );
    for (reply, spec) in replies[1..].iter().zip(&REGISTERS) {
        assert_eq!(
            (reply.message_type, reply.address),
            (MessageType::Read, spec.address)
        );
        assert_eq!(reply.payload_type.element, spec.element);
    }
    let op_ctrl = replies
        .iter()
        .find(|r| r.message_type == MessageType::Read && r.address == reg::OPERATION_CTRL);
    assert_eq!(
        op_ctrl.unwrap().u8() & op::DUMP,
        0,
        "DUMP never reads back set"
    );
}

#[test]
fn reset_happens_only_after_the_reply_is_sent() {
    let mut rig = Rig::new();
    let mut wire = [0u8; 16];
    let n = Message::write(reg::RESET_DEV, Payload::U8(&[reset_dev::RST_DEF]))
        .encode_into(&mut wire)
        .unwrap();
    rig.device.on_bytes(&wire[..n]);
    assert_eq!(rig.device.pending_reset(), Some(ResetKind::Reboot));
    rig.device.tick();
    assert!(rig.device.hal().resets.is_empty(), "reply still queued");
    let reply = rig.drain();
    assert_eq!(
        (reply[0].message_type, reply[0].u8()),
        (MessageType::Write, reset_dev::BOOT_DEF)
    );
    rig.device.tick();
    assert_eq!(rig.device.hal().resets, [ResetKind::Reboot]);

    rig.write(reg::RESET_DEV, Payload::U8(&[reset_dev::UPDATE_FIRMWARE]));
    rig.device.tick();
    assert_eq!(
        rig.device.hal().resets,
        [ResetKind::Reboot, ResetKind::Bootloader]
    );

    // No non-volatile memory: SAVE and RST_EE are errors, as are the read-only boot bits.
    for bits in [reset_dev::SAVE, reset_dev::RST_EE, reset_dev::BOOT_EE] {
        let r = rig.write(reg::RESET_DEV, Payload::U8(&[bits]));
        assert_eq!(r.message_type, MessageType::WriteError);
    }
    rig.device.tick();
    assert_eq!(rig.device.hal().resets.len(), 2);
}

#[test]
fn losing_the_connection_drops_to_standby() {
    let mut rig = Rig::new();
    rig.activate();
    rig.device.set_connected(false);
    assert!(!rig.device.is_active());
    rig.device.on_frame_clock_edge();
    assert!(rig.drain().is_empty());
    rig.device.set_connected(true);
    assert!(
        !rig.device.is_active(),
        "the controller re-activates explicitly"
    );
}

#[test]
fn led_follows_visual_indicator_bits() {
    let mut rig = Rig::at(0);
    assert_eq!(rig.device.hal().led, Some(true));
    rig.set_time(2_100_000); // standby blinks with a 4 s period
    rig.device.tick();
    assert_eq!(rig.device.hal().led, Some(false));
    rig.set_op_ctrl(op::MODE_ACTIVE); // VISUAL_EN cleared
    rig.set_time(4_100_000);
    rig.device.tick();
    rig.drain(); // encoder events
    assert_eq!(rig.device.hal().led, Some(false));
    rig.set_op_ctrl(op::MODE_ACTIVE | op::VISUAL_EN);
    assert_eq!(
        rig.device.hal().led,
        Some(true),
        "steady when OPLED_EN is clear"
    );
}

#[test]
fn full_transmit_queue_drops_whole_messages_only() {
    let mut rig = Rig::new();
    rig.activate();
    rig.write(reg::ENCODER_RATE, Payload::U16(&[0]));
    for _ in 0..1000 {
        rig.device.on_frame_clock_edge(); // 16-byte events, never drained
    }
    let dropped = rig.device.stats().dropped_messages;
    assert!(dropped > 0);
    let events = rig.drain();
    assert_eq!(events.len() as u64 + dropped, 1000);
    assert!(events
        .iter()
        .enumerate()
        .all(|(k, e)| e.u32() == k as u32 + 1));
}
