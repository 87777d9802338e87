//! The Harp 8-bit binary protocol (harp-tech/protocol, `BinaryProtocol-8bit.md`).
//!
//! Wire layout of one message (little endian throughout):
//!
//! ```text
//! [MessageType] [Length] ([ExtendedLength u16]) [Address] [Port] [PayloadType]
//! ([Seconds u32] [Ticks u16]) [Payload ...] [Checksum]
//! ```
//!
//! * `Length` counts the bytes after itself, up to and including the checksum. When it is `255`
//!   the next two bytes carry the real count as a `u16` (the *extended length* form) and the count
//!   then starts after those two bytes. The extended form was in the specification until
//!   harp-tech/protocol#209 removed it in March 2026; this codec keeps decoding it (a device may
//!   still send it) and only emits it for messages that cannot be expressed otherwise.
//! * `Checksum` is the low byte of the sum of every preceding byte of the message.
//! * The payload is an array of elements of the type announced in `PayloadType`; its length is
//!   whatever remains, divided by the element size.
//!
//! Entry points: [`Message::encode_into`] to encode, [`MessageView::decode`] to decode one
//! message from a buffer, and [`Parser`] to pull messages out of a byte stream.
//!
//! ```
//! use twinrig_firmware::harp::{Message, MessageType, Parser, Payload};
//!
//! let mut wire = [0u8; 32];
//! let n = Message::write(34, Payload::S32(&[-5])).encode_into(&mut wire).unwrap();
//!
//! let mut parser: Parser = Parser::new();
//! let mut seen = 0;
//! parser.push(&wire[..n], |msg| {
//!     assert_eq!(msg.message_type(), MessageType::Write);
//!     assert_eq!(msg.payload().first::<i32>(), Some(-5));
//!     seen += 1;
//! });
//! assert_eq!(seen, 1);
//! ```

mod checksum;
mod error;
mod message;
mod parser;
mod payload;

pub use checksum::checksum;
pub use error::Error;
pub use message::{Message, MessageType, MessageView, Timestamp};
pub use parser::{Parser, ParserStats, DEFAULT_CAPACITY};
pub use payload::{
    Element, ElementIter, ElementType, Payload, PayloadType, PayloadView, Value, Values,
};

/// `Port` value addressing the device itself (the only value a non-hub device uses).
pub const DEVICE_PORT: u8 = 0xFF;

/// `Length` value announcing that a 16-bit `ExtendedLength` follows.
pub const EXTENDED_LENGTH_MARKER: u8 = 0xFF;

/// Error flag of the `MessageType` byte.
pub const ERROR_FLAG: u8 = 0x08;

/// Bytes every message carries besides timestamp and payload: address, port, payload type and
/// checksum. This is the smallest legal value of `Length`.
pub const MIN_LENGTH: usize = 4;

/// Size of the optional timestamp (u32 seconds + u16 ticks of 32 µs).
pub const TIMESTAMP_SIZE: usize = 6;

/// Largest encoded message: type + marker + u16 extended length + 65535 counted bytes.
pub const MAX_MESSAGE_SIZE: usize = 4 + u16::MAX as usize;

/// Largest `Length` that still fits the one-byte form (255 is the extended-length marker).
pub const MAX_SHORT_LENGTH: usize = 254;
