//! Codec tests: randomised round trips over every payload type, the byte sequences of the
//! protocol documentation, and error reporting.

mod common;

use common::{Owned, Rng};
use twinrig_firmware::harp::{
    checksum, Element, ElementType, Error, Message, MessageType, MessageView, Parser, Payload,
    PayloadType, Timestamp, Value, MAX_MESSAGE_SIZE,
};

const MESSAGE_TYPES: [MessageType; 6] = [
    MessageType::Read,
    MessageType::Write,
    MessageType::Event,
    MessageType::ReadError,
    MessageType::WriteError,
    MessageType::EventError,
];

/// Random values of an element type from raw bits (floats include NaNs, infinities,
/// subnormals; those are compared bitwise).
trait FromBits: Element {
    fn from_bits(bits: u64) -> Self;
    fn bits(self) -> u64;
}

macro_rules! from_bits {
    ($($t:ty => |$b:ident| $make:expr, |$v:ident| $back:expr;)*) => {$(
        impl FromBits for $t {
            fn from_bits($b: u64) -> Self { $make }
            fn bits(self) -> u64 { let $v = self; $back }
        }
    )*};
}

from_bits! {
    u8 => |b| b as u8, |v| v as u64;
    i8 => |b| b as i8, |v| v as u8 as u64;
    u16 => |b| b as u16, |v| v as u64;
    i16 => |b| b as i16, |v| v as u16 as u64;
    u32 => |b| b as u32, |v| v as u64;
    i32 => |b| b as i32, |v| v as u32 as u64;
    u64 => |b| b, |v| v;
    i64 => |b| b as i64, |v| v as u64;
    f32 => |b| f32::from_bits(b as u32), |v| v.to_bits() as u64;
}

/// Element counts that exercise the short form, the boundary to the extended form and the
/// largest encodable payload.
fn random_count(rng: &mut Rng, element_size: usize, timestamped: bool) -> usize {
    let fixed = 4 + if timestamped { 6 } else { 0 };
    let max_elements = (65_535 - fixed) / element_size;
    let short_max = (254 - fixed) / element_size;
    match rng.below(20) {
        0 => max_elements,
        1 => max_elements - rng.below(3),
        2..=4 => (short_max + rng.below(3)).saturating_sub(1), // around 254 / 255
        5..=7 => rng.below(2000 / element_size + 1),
        _ => rng.below(24),
    }
}

fn round_trip<T: FromBits>(rng: &mut Rng, iterations: usize) -> usize {
    let mut extended = 0;
    let mut wire = vec![0u8; MAX_MESSAGE_SIZE];
    for _ in 0..iterations {
        let timestamped = rng.chance(50);
        let count = random_count(rng, T::TYPE.size(), timestamped);
        let values: Vec<T> = (0..count).map(|_| T::from_bits(rng.next_u64())).collect();
        let timestamp =
            timestamped.then(|| Timestamp::new(rng.next_u64() as u32, rng.below(31_250) as u16));
        let message = Message {
            message_type: rng.pick(&MESSAGE_TYPES),
            address: rng.next_u8(),
            port: rng.next_u8(),
            timestamp,
            payload: Payload::from_slice(&values),
        };
        let n = message.encode_into(&mut wire).unwrap();
        assert_eq!(Ok(n), message.encoded_len());
        let counted = 4 + if timestamped { 6 } else { 0 } + count * T::TYPE.size();
        assert_eq!(n, counted + if counted > 254 { 4 } else { 2 });

        let view = MessageView::decode(&wire[..n]).unwrap();
        extended += usize::from(view.has_extended_length());
        assert_eq!(view.len(), n);
        assert_eq!(view.message_type(), message.message_type);
        assert_eq!(view.address(), message.address);
        assert_eq!(view.port(), message.port);
        assert_eq!(view.payload_type(), PayloadType::new(T::TYPE, timestamped));
        assert_eq!(view.timestamp(), timestamp);
        assert_eq!(view.checksum(), checksum(&wire[..n - 1]));
        let payload = view.payload();
        assert_eq!(payload.len(), count);
        let decoded: Vec<u64> = payload.iter::<T>().unwrap().map(FromBits::bits).collect();
        let original: Vec<u64> = values.iter().map(|v| v.bits()).collect();
        assert_eq!(decoded, original);
        if count > 0 {
            let i = rng.below(count);
            assert_eq!(
                payload.get::<T>(i).map(FromBits::bits),
                Some(values[i].bits())
            );
            assert_eq!(payload.value(i).map(|v| v.element_type()), Some(T::TYPE));
        }

        // The decoded view converts back into an identical encoding.
        let mut storage = vec![T::from_bits(0); count];
        let again = view.to_message(&mut storage).unwrap();
        let mut wire2 = vec![0u8; n];
        assert_eq!(again.encode_into(&mut wire2), Ok(n));
        assert_eq!(wire2, wire[..n]);
    }
    extended
}

#[test]
fn round_trip_every_payload_type_with_and_without_timestamp() {
    let mut rng = Rng::new(0x5EED_0001);
    let mut extended = 0;
    extended += round_trip::<u8>(&mut rng, 400);
    extended += round_trip::<i8>(&mut rng, 400);
    extended += round_trip::<u16>(&mut rng, 400);
    extended += round_trip::<i16>(&mut rng, 400);
    extended += round_trip::<u32>(&mut rng, 400);
    extended += round_trip::<i32>(&mut rng, 400);
    extended += round_trip::<u64>(&mut rng, 400);
    extended += round_trip::<i64>(&mut rng, 400);
    extended += round_trip::<f32>(&mut rng, 400);
    // The extended-length form really was exercised, a lot.
    assert!(
        extended > 9 * 400 / 4,
        "only {extended} extended-length messages"
    );
}

#[test]
fn oversize_payloads_are_refused_exactly_past_the_16_bit_length() {
    // 65535 counted bytes fit; one element more does not.
    let max = vec![0u8; 65_531];
    assert_eq!(
        Message::write(1, &max[..]).encoded_len(),
        Ok(MAX_MESSAGE_SIZE)
    );
    let over = vec![0u8; 65_532];
    assert_eq!(
        Message::write(1, &over[..]).encoded_len(),
        Err(Error::PayloadTooLarge { bytes: 65_532 })
    );
    let stamped = Message::write(1, &max[..65_525]).with_timestamp(Timestamp::new(1, 2));
    assert_eq!(stamped.encoded_len(), Ok(MAX_MESSAGE_SIZE));
}

#[test]
fn stream_round_trip_in_random_chunks() {
    // Every message of a long random stream comes out of the parser, in order and intact,
    // whatever the chunking, extended-length messages included.
    let mut rng = Rng::new(0x5EED_0002);
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    let data: Vec<u32> = (0..400).map(|_| rng.next_u64() as u32).collect();
    for _ in 0..3000 {
        let count = if rng.chance(5) {
            60 + rng.below(300)
        } else {
            rng.below(8)
        };
        let timestamp = rng
            .chance(60)
            .then(|| Timestamp::new(rng.next_u64() as u32, 5));
        let message = Message {
            message_type: rng.pick(&MESSAGE_TYPES),
            address: rng.next_u8(),
            port: 0xFF,
            timestamp,
            payload: Payload::U32(&data[..count]),
        };
        let mut wire = vec![0u8; message.encoded_len().unwrap()];
        message.encode_into(&mut wire).unwrap();
        expected.push(wire.clone());
        stream.extend_from_slice(&wire);
    }
    let mut parser: Box<Parser<2048>> = Box::new(Parser::new());
    let mut got = Vec::new();
    let mut rest = &stream[..];
    while !rest.is_empty() {
        let n = (1 + rng.below(700)).min(rest.len());
        parser.push(&rest[..n], |m| got.push(m.as_bytes().to_vec()));
        rest = &rest[n..];
    }
    assert_eq!(got, expected);
    assert_eq!(parser.stats().discarded_bytes, 0);
    assert_eq!(parser.buffered(), 0);
}

// ---------------------------------------------------------------------------------------------
// Byte sequences from the protocol documentation.
//
// harp-tech/protocol gives its exchanges as templates rather than hex dumps; the vectors below
// instantiate those templates with concrete registers. Checksums were worked out by hand from
// the specification's C example (`for (i = 0; i < Length + 1; i++) Checksum += HarpMessage(i)`)
// and are asserted independently of the codec's own checksum function.
// ---------------------------------------------------------------------------------------------

/// Device.md "Message Exchange Examples" (and BinaryProtocol-8bit.md v1.4 "Typical usage"):
/// `[REQ] Controller: 1 4 Address Port PayloadType Checksum`, here reading R_WHO_AM_I (address
/// 0, U16 = 0x02) on the device port 255: 1 + 4 + 0 + 255 + 2 = 262 → 0x06.
const READ_WHO_AM_I: [u8; 6] = [0x01, 0x04, 0x00, 0xFF, 0x02, 0x06];

/// `[REP] Device: 1 Length Address Port PayloadType Timestamp Payload Checksum`: the reply of a
/// Harp Behavior board (WHO_AM_I 1216 = 0x04C0, a value from harp-tech/whoami) at 1 s + 2 ticks.
/// Length = 3 + 6 + 2 + 1 = 12; payload type U16 | HasTimestamp = 0x12.
/// Sum = 1 + 12 + 0 + 255 + 18 + 1 + 2 + 0xC0 + 0x04 = 485 → 0xE5.
const REPLY_WHO_AM_I: [u8; 14] = [
    0x01, 0x0C, 0x00, 0xFF, 0x12, 1, 0, 0, 0, 2, 0, 0xC0, 0x04, 0xE5,
];

/// `[REP] Device: 9 10 Address Port PayloadType Timestamp Checksum`: the read error reply, whose
/// Length of 10 leaves no payload. Address 0x20, U8 | HasTimestamp = 0x11, timestamp 0.
/// Sum = 9 + 10 + 32 + 255 + 17 = 323 → 0x43.
const READ_ERROR: [u8; 12] = [0x09, 0x0A, 0x20, 0xFF, 0x11, 0, 0, 0, 0, 0, 0, 0x43];

/// `[REQ] Controller: 2 Length Address Port PayloadType Payload Checksum`: writing 0x01 (Active)
/// to R_OPERATION_CTRL (address 10, U8). Sum = 2 + 5 + 10 + 255 + 1 + 1 = 274 → 0x12.
const WRITE_OPERATION_CTRL: [u8; 7] = [0x02, 0x05, 0x0A, 0xFF, 0x01, 0x01, 0x12];

/// `[EVT] Device: 3 Length Address Port PayloadType Timestamp Payload Checksum`, with a payload
/// array (BinaryProtocol-8bit.md "Parsing [Payload] with Arrays": arrayLength = (Length − 10) /
/// size): three S16 values −1, 2, 0x7FFF at t = 0x01020304 s + 0x0506 ticks; Length = 16.
/// Sum = (3 + 16 + 44 + 255 + 146) + (4 + 3 + 2 + 1 + 6 + 5) + (255 + 255 + 2 + 0 + 255 + 127)
/// = 464 + 21 + 894 = 1379 → 0x63.
const EVENT_S16_ARRAY: [u8; 18] = [
    0x03, 0x10, 0x2C, 0xFF, 0x92, 4, 3, 2, 1, 6, 5, 0xFF, 0xFF, 0x02, 0x00, 0xFF, 0x7F, 0x63,
];

fn sum_check(bytes: &[u8]) {
    let (last, body) = bytes.split_last().unwrap();
    let sum: u32 = body.iter().map(|&b| u32::from(b)).sum();
    assert_eq!(sum as u8, *last, "hand-computed checksum of {bytes:02X?}");
}

#[test]
fn documented_read_request() {
    sum_check(&READ_WHO_AM_I);
    let m = MessageView::decode(&READ_WHO_AM_I).unwrap();
    assert_eq!(m.message_type(), MessageType::Read);
    assert_eq!((m.address(), m.port()), (0, 255));
    assert_eq!(m.payload_type(), PayloadType::new(ElementType::U16, false));
    assert!(m.payload().is_empty() && m.timestamp().is_none());
    // And the encoder produces exactly these bytes.
    let mut buf = [0u8; 6];
    Message::read(0, ElementType::U16)
        .encode_into(&mut buf)
        .unwrap();
    assert_eq!(buf, READ_WHO_AM_I);
}

#[test]
fn documented_read_reply() {
    sum_check(&REPLY_WHO_AM_I);
    let m = MessageView::decode(&REPLY_WHO_AM_I).unwrap();
    assert_eq!(m.message_type(), MessageType::Read);
    assert_eq!(m.timestamp(), Some(Timestamp::new(1, 2)));
    assert_eq!(m.timestamp().unwrap().as_secs_f64(), 1.0 + 2.0 * 32e-6);
    assert_eq!(m.payload().first::<u16>(), Some(1216));
    let reply = Message::new(MessageType::Read, 0, &[1216u16]).with_timestamp(Timestamp::new(1, 2));
    let mut buf = [0u8; 14];
    reply.encode_into(&mut buf).unwrap();
    assert_eq!(buf, REPLY_WHO_AM_I);
}

#[test]
fn documented_read_error_reply() {
    sum_check(&READ_ERROR);
    let m = MessageView::decode(&READ_ERROR).unwrap();
    assert_eq!(m.message_type(), MessageType::ReadError);
    assert!(m.is_error());
    assert_eq!(m.as_bytes()[1], 10);
    assert!(m.payload().is_empty());
    assert_eq!(m.timestamp(), Some(Timestamp::new(0, 0)));
}

#[test]
fn documented_write_request_and_payload_array() {
    sum_check(&WRITE_OPERATION_CTRL);
    let m = MessageView::decode(&WRITE_OPERATION_CTRL).unwrap();
    assert_eq!(m.message_type(), MessageType::Write);
    assert_eq!((m.address(), m.payload().first::<u8>()), (10, Some(1)));

    sum_check(&EVENT_S16_ARRAY);
    let m = MessageView::decode(&EVENT_S16_ARRAY).unwrap();
    let length = usize::from(m.as_bytes()[1]);
    assert_eq!(m.payload().len(), (length - 10) / 2); // the specification's formula
    assert_eq!(
        m.payload().iter::<i16>().unwrap().collect::<Vec<_>>(),
        [-1, 2, 0x7FFF]
    );
    assert_eq!(m.timestamp(), Some(Timestamp::new(0x0102_0304, 0x0506)));
    assert_eq!(
        m.payload().values().collect::<Vec<_>>(),
        [Value::S16(-1), Value::S16(2), Value::S16(0x7FFF)]
    );
}

#[test]
fn documented_messages_back_to_back_through_the_parser() {
    let mut stream = Vec::new();
    for m in [
        &READ_WHO_AM_I[..],
        &REPLY_WHO_AM_I,
        &READ_ERROR,
        &WRITE_OPERATION_CTRL,
        &EVENT_S16_ARRAY,
    ] {
        stream.extend_from_slice(m);
    }
    let mut parser: Parser = Parser::new();
    let mut seen = Vec::new();
    for b in &stream {
        parser.push(std::slice::from_ref(b), |m| {
            seen.push(Owned::from_view(&m).message_type)
        });
    }
    use MessageType::*;
    assert_eq!(seen, [Read, Read, ReadError, Write, Event]);
}

#[test]
fn decode_errors_are_specific_and_displayable() {
    let cases: Vec<(&[u8], Error)> = vec![
        (
            &[],
            Error::Truncated {
                needed: 1,
                available: 0,
            },
        ),
        (&[0x04], Error::InvalidMessageType(0x04)),
        (
            &[0x01],
            Error::Truncated {
                needed: 2,
                available: 1,
            },
        ),
        (
            &[0x01, 0x03],
            Error::InvalidLength {
                length: 3,
                minimum: 4,
            },
        ),
        (
            &[0x01, 0xFF, 0x02],
            Error::Truncated {
                needed: 4,
                available: 3,
            },
        ),
        (
            &[0x01, 0x04, 0x00, 0xFF, 0x20],
            Error::InvalidPayloadType(0x20),
        ),
        (
            &[0x01, 0x06, 0x00, 0xFF, 0x12],
            Error::InvalidLength {
                length: 6,
                minimum: 10,
            },
        ),
        (
            &[0x02, 0x05, 0x00, 0xFF, 0x02],
            Error::PayloadLengthMismatch {
                bytes: 1,
                element_size: 2,
            },
        ),
        (
            &READ_WHO_AM_I[..5],
            Error::Truncated {
                needed: 6,
                available: 5,
            },
        ),
        (
            &[0x01, 0x04, 0x00, 0xFF, 0x02, 0x07],
            Error::ChecksumMismatch {
                computed: 6,
                received: 7,
            },
        ),
    ];
    for (bytes, expected) in cases {
        let err = MessageView::decode(bytes).unwrap_err();
        assert_eq!(err, expected, "{bytes:02X?}");
        assert!(!err.to_string().is_empty());
        assert_eq!(
            err.is_incomplete(),
            matches!(expected, Error::Truncated { .. })
        );
    }
    let err: Box<dyn std::error::Error> = Box::new(Error::InvalidMessageType(0));
    assert_eq!(err.to_string(), "invalid message type byte 0x00");
}

#[test]
fn trailing_bytes_are_left_for_the_next_decode() {
    let mut two = READ_WHO_AM_I.to_vec();
    two.extend_from_slice(&WRITE_OPERATION_CTRL);
    let first = MessageView::decode(&two).unwrap();
    let second = MessageView::decode(&two[first.len()..]).unwrap();
    assert_eq!(second.as_bytes(), WRITE_OPERATION_CTRL);
}

#[test]
fn payload_accessors() {
    let p = Payload::from(&[1.5f32, -2.0]);
    assert_eq!(p.element_type(), ElementType::Float);
    assert_eq!((p.len(), p.byte_len()), (2, 8));
    assert_eq!(p.get(1), Some(Value::Float(-2.0)));
    assert_eq!(p.as_slice::<f32>(), Some(&[1.5f32, -2.0][..]));
    assert_eq!(p.as_slice::<u32>(), None);
    assert_eq!(p.values().map(|v| v.as_f64()).sum::<f64>(), -0.5);
    assert!(Payload::empty(ElementType::S64).is_empty());
}
