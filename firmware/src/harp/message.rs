//! Messages: the typed form the encoder takes ([`Message`]) and the zero-copy decoded form
//! ([`MessageView`]).

use super::checksum::checksum;
use super::error::Error;
use super::payload::{Element, ElementType, Payload, PayloadType, PayloadView};
use super::{
    DEVICE_PORT, ERROR_FLAG, EXTENDED_LENGTH_MARKER, MAX_SHORT_LENGTH, MIN_LENGTH, TIMESTAMP_SIZE,
};

/// The `MessageType` byte: Read (1), Write (2) or Event (3), optionally with the error flag
/// (`0x08`) that a device sets on replies to requests it could not honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Request (controller → device) or reply carrying a register's contents (1).
    Read,
    /// Request to change a register, or the reply to it (2).
    Write,
    /// Unsolicited report of a register's contents by the device (3).
    Event,
    /// Error reply to a `Read` (9).
    ReadError,
    /// Error reply to a `Write` (10).
    WriteError,
    /// An `Event` with the error flag (11); the specification discourages but does not forbid it.
    EventError,
}

impl MessageType {
    /// The wire byte.
    pub const fn to_byte(self) -> u8 {
        match self {
            MessageType::Read => 1,
            MessageType::Write => 2,
            MessageType::Event => 3,
            MessageType::ReadError => 1 | ERROR_FLAG,
            MessageType::WriteError => 2 | ERROR_FLAG,
            MessageType::EventError => 3 | ERROR_FLAG,
        }
    }

    /// Parses the wire byte; every bit outside the 2-bit type and the error flag must be zero.
    pub const fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => MessageType::Read,
            2 => MessageType::Write,
            3 => MessageType::Event,
            9 => MessageType::ReadError,
            10 => MessageType::WriteError,
            11 => MessageType::EventError,
            _ => return None,
        })
    }

    /// True when the error flag is set.
    pub const fn is_error(self) -> bool {
        self.to_byte() & ERROR_FLAG != 0
    }

    /// The same type with the error flag set.
    pub const fn with_error(self) -> Self {
        match self {
            MessageType::Read | MessageType::ReadError => MessageType::ReadError,
            MessageType::Write | MessageType::WriteError => MessageType::WriteError,
            MessageType::Event | MessageType::EventError => MessageType::EventError,
        }
    }

    /// The same type with the error flag cleared.
    pub const fn without_error(self) -> Self {
        match self {
            MessageType::Read | MessageType::ReadError => MessageType::Read,
            MessageType::Write | MessageType::WriteError => MessageType::Write,
            MessageType::Event | MessageType::EventError => MessageType::Event,
        }
    }
}

/// A Harp timestamp: whole seconds plus the fraction in ticks of 32 µs.
///
/// ```
/// use twinrig_firmware::harp::Timestamp;
/// let t = Timestamp::from_micros(2_500_040);
/// assert_eq!((t.seconds, t.ticks), (2, 15_626)); // 500_040 µs / 32, truncated
/// assert_eq!(t.to_micros(), 2_500_032);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp {
    /// Whole seconds.
    pub seconds: u32,
    /// Fraction of the second in units of 32 µs; at most 31249 on a conforming device.
    pub ticks: u16,
}

impl Timestamp {
    /// Microseconds per tick.
    pub const TICK_MICROS: u32 = 32;
    /// Ticks per second (the exclusive upper bound of [`ticks`](Self::ticks)).
    pub const TICKS_PER_SECOND: u32 = 31_250;

    /// A timestamp from its fields.
    pub const fn new(seconds: u32, ticks: u16) -> Self {
        Timestamp { seconds, ticks }
    }

    /// The timestamp of a microsecond clock value, truncated to the 32 µs tick. Seconds wrap
    /// after 2^32 s (136 years), as the u32 field does.
    pub const fn from_micros(micros: u64) -> Self {
        Timestamp {
            seconds: (micros / 1_000_000) as u32,
            ticks: ((micros % 1_000_000) / Self::TICK_MICROS as u64) as u16,
        }
    }

    /// Microseconds since the clock's epoch.
    pub const fn to_micros(self) -> u64 {
        self.seconds as u64 * 1_000_000 + self.ticks as u64 * Self::TICK_MICROS as u64
    }

    /// Seconds as a float (the specification's `Seconds + Microseconds * 32e-6`).
    pub fn as_secs_f64(self) -> f64 {
        f64::from(self.seconds) + f64::from(self.ticks) * 32e-6
    }

    /// The 6 wire bytes.
    pub const fn to_le_bytes(self) -> [u8; TIMESTAMP_SIZE] {
        let s = self.seconds.to_le_bytes();
        let t = self.ticks.to_le_bytes();
        [s[0], s[1], s[2], s[3], t[0], t[1]]
    }

    /// Parses the 6 wire bytes at the start of `bytes`.
    pub fn from_le_slice(bytes: &[u8]) -> Option<Self> {
        Some(Timestamp {
            seconds: u32::from_le_slice(bytes)?,
            ticks: u16::from_le_slice(bytes.get(4..)?)?,
        })
    }
}

/// A message to encode.
///
/// ```
/// use twinrig_firmware::harp::{ElementType, Message, Payload, Timestamp};
/// let mut buf = [0u8; 16];
/// // The read request of BinaryProtocol-8bit.md: `1 4 Address Port PayloadType Checksum`.
/// let n = Message::read(0, ElementType::U16).encode_into(&mut buf).unwrap();
/// assert_eq!(&buf[..n], &[0x01, 0x04, 0x00, 0xFF, 0x02, 0x06]);
///
/// let event = Message::event(32, Timestamp::new(7, 0), Payload::U32(&[42]));
/// assert_eq!(event.encoded_len(), Ok(16));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Message<'a> {
    /// Read, Write or Event, with or without the error flag.
    pub message_type: MessageType,
    /// Register address.
    pub address: u8,
    /// Hub port; [`DEVICE_PORT`] (255) for the device itself.
    pub port: u8,
    /// Present on everything a device sends; usually absent on controller requests.
    pub timestamp: Option<Timestamp>,
    /// The register contents (empty for read requests).
    pub payload: Payload<'a>,
}

impl<'a> Message<'a> {
    /// A message to the device port, without timestamp.
    pub fn new(message_type: MessageType, address: u8, payload: impl Into<Payload<'a>>) -> Self {
        Message {
            message_type,
            address,
            port: DEVICE_PORT,
            timestamp: None,
            payload: payload.into(),
        }
    }

    /// A read request for a register of the given type (empty payload).
    pub fn read(address: u8, element: ElementType) -> Message<'static> {
        Message::new(MessageType::Read, address, Payload::empty(element))
    }

    /// A write request.
    pub fn write(address: u8, payload: impl Into<Payload<'a>>) -> Self {
        Message::new(MessageType::Write, address, payload)
    }

    /// A timestamped event.
    pub fn event(address: u8, timestamp: Timestamp, payload: impl Into<Payload<'a>>) -> Self {
        Message::new(MessageType::Event, address, payload).with_timestamp(timestamp)
    }

    /// The same message with a timestamp.
    pub fn with_timestamp(mut self, timestamp: Timestamp) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// The same message to another hub port.
    pub fn with_port(mut self, port: u8) -> Self {
        self.port = port;
        self
    }

    /// The `PayloadType` this message is encoded with.
    pub fn payload_type(&self) -> PayloadType {
        PayloadType::new(self.payload.element_type(), self.timestamp.is_some())
    }

    /// Bytes counted by the length field: everything after it, checksum included.
    fn counted_len(&self) -> Result<usize, Error> {
        let payload_bytes = self.payload.byte_len();
        let timestamp = if self.timestamp.is_some() {
            TIMESTAMP_SIZE
        } else {
            0
        };
        let counted = MIN_LENGTH + timestamp + payload_bytes;
        if counted <= usize::from(u16::MAX) {
            Ok(counted)
        } else {
            Err(Error::PayloadTooLarge {
                bytes: payload_bytes,
            })
        }
    }

    /// Size of the encoded message. Messages whose `Length` would exceed 254 use the extended
    /// length form (255 is its marker); beyond 65535 counted bytes the message cannot be encoded.
    pub fn encoded_len(&self) -> Result<usize, Error> {
        let counted = self.counted_len()?;
        Ok(counted + if counted <= MAX_SHORT_LENGTH { 2 } else { 4 })
    }

    /// Encodes into the start of `buf`; returns the number of bytes written.
    ///
    /// Nothing is written when the buffer is too small.
    pub fn encode_into(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let counted = self.counted_len()?;
        let total = self.encoded_len()?;
        let available = buf.len();
        let out = buf.get_mut(..total).ok_or(Error::BufferTooSmall {
            needed: total,
            available,
        })?;

        let mut w = Writer { out, pos: 0 };
        w.put(&[self.message_type.to_byte()]);
        if counted <= MAX_SHORT_LENGTH {
            w.put(&[counted as u8]);
        } else {
            w.put(&[EXTENDED_LENGTH_MARKER]);
            w.put(&(counted as u16).to_le_bytes());
        }
        w.put(&[self.address, self.port, self.payload_type().to_byte()]);
        if let Some(timestamp) = self.timestamp {
            w.put(&timestamp.to_le_bytes());
        }
        let payload_bytes = self.payload.byte_len();
        let Writer { out, pos } = w;
        let written = match out.get_mut(pos..pos + payload_bytes) {
            Some(dst) => self.payload.write_le(dst),
            None => 0,
        };
        debug_assert_eq!(written, payload_bytes);
        if let Some((last, body)) = out.split_last_mut() {
            *last = checksum(body);
        }
        Ok(total)
    }
}

/// Sequential writer over a buffer already checked to be large enough.
struct Writer<'b> {
    out: &'b mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        if let Some(dst) = self.out.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }
}

/// The fields of a message header, validated as far as they go without the checksum.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub message_type: MessageType,
    pub payload_type: PayloadType,
    pub address: u8,
    pub port: u8,
    /// Offset of the address byte: 2, or 4 in the extended-length form.
    pub fields_start: usize,
    /// Size of the whole message including the checksum.
    pub total: usize,
}

/// Validates the header at the start of `bytes`, looking at as few bytes as possible so that a
/// stream parser rejects noise early. Returns [`Error::Truncated`] while the bytes so far are a
/// plausible prefix.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<Header, Error> {
    let truncated = |needed: usize| Error::Truncated {
        needed,
        available: bytes.len(),
    };

    let type_byte = *bytes.first().ok_or(truncated(1))?;
    let message_type =
        MessageType::from_byte(type_byte).ok_or(Error::InvalidMessageType(type_byte))?;

    let length_byte = *bytes.get(1).ok_or(truncated(2))?;
    let (counted, fields_start) = if length_byte == EXTENDED_LENGTH_MARKER {
        let extended = bytes
            .get(2..)
            .and_then(u16::from_le_slice)
            .ok_or(truncated(4))?;
        (usize::from(extended), 4)
    } else {
        (usize::from(length_byte), 2)
    };
    if counted < MIN_LENGTH {
        return Err(Error::InvalidLength {
            length: counted as u16,
            minimum: MIN_LENGTH as u16,
        });
    }

    let Some(&[address, port, payload_type_byte]) = bytes.get(fields_start..fields_start + 3)
    else {
        return Err(truncated(fields_start + 3));
    };
    let payload_type = PayloadType::from_byte(payload_type_byte)?;

    let fixed = MIN_LENGTH
        + if payload_type.timestamped {
            TIMESTAMP_SIZE
        } else {
            0
        };
    if counted < fixed {
        return Err(Error::InvalidLength {
            length: counted as u16,
            minimum: fixed as u16,
        });
    }
    let payload_bytes = counted - fixed;
    let element_size = payload_type.element.size();
    if payload_bytes % element_size != 0 {
        return Err(Error::PayloadLengthMismatch {
            bytes: payload_bytes,
            element_size,
        });
    }
    Ok(Header {
        message_type,
        payload_type,
        address,
        port,
        fields_start,
        total: fields_start + counted,
    })
}

/// A decoded message borrowing its bytes: nothing is copied until an accessor reads a field.
///
/// ```
/// use twinrig_firmware::harp::{MessageType, MessageView};
/// // Reply of a Harp Behavior board (WHO_AM_I = 1216 = 0x04C0) at t = 1 s + 2 ticks.
/// let bytes = [0x01, 0x0C, 0x00, 0xFF, 0x12, 1, 0, 0, 0, 2, 0, 0xC0, 0x04, 0xE5];
/// let msg = MessageView::decode(&bytes).unwrap();
/// assert_eq!(msg.message_type(), MessageType::Read);
/// assert_eq!(msg.timestamp().map(|t| (t.seconds, t.ticks)), Some((1, 2)));
/// assert_eq!(msg.payload().first::<u16>(), Some(1216));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageView<'a> {
    bytes: &'a [u8],
    message_type: MessageType,
    payload_type: PayloadType,
    address: u8,
    port: u8,
    fields_start: usize,
}

impl<'a> MessageView<'a> {
    /// Decodes the message at the start of `bytes` and verifies its checksum. Bytes after the
    /// message are ignored; [`len`](Self::len) tells where the next one starts.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        let header = parse_header(bytes)?;
        let message = bytes.get(..header.total).ok_or(Error::Truncated {
            needed: header.total,
            available: bytes.len(),
        })?;
        let (&received, body) = message.split_last().ok_or(Error::Truncated {
            needed: header.total,
            available: 0,
        })?;
        let computed = checksum(body);
        if computed != received {
            return Err(Error::ChecksumMismatch { computed, received });
        }
        Ok(MessageView {
            bytes: message,
            message_type: header.message_type,
            payload_type: header.payload_type,
            address: header.address,
            port: header.port,
            fields_start: header.fields_start,
        })
    }

    /// Message type (with the error flag folded in).
    pub const fn message_type(&self) -> MessageType {
        self.message_type
    }

    /// True when the error flag is set.
    pub const fn is_error(&self) -> bool {
        self.message_type.is_error()
    }

    /// Register address.
    pub const fn address(&self) -> u8 {
        self.address
    }

    /// Hub port (255 = the device itself).
    pub const fn port(&self) -> u8 {
        self.port
    }

    /// The `PayloadType` byte, parsed.
    pub const fn payload_type(&self) -> PayloadType {
        self.payload_type
    }

    /// The timestamp, when the message carries one.
    pub fn timestamp(&self) -> Option<Timestamp> {
        if !self.payload_type.timestamped {
            return None;
        }
        Timestamp::from_le_slice(self.bytes.get(self.fields_start + 3..)?)
    }

    /// The payload.
    pub fn payload(&self) -> PayloadView<'a> {
        let start = self.fields_start
            + 3
            + if self.payload_type.timestamped {
                TIMESTAMP_SIZE
            } else {
                0
            };
        let end = self.bytes.len().saturating_sub(1);
        let bytes = self.bytes.get(start..end).unwrap_or(&[]);
        // Decoding checked that the payload is a whole number of elements.
        PayloadView::new(self.payload_type.element, bytes).unwrap_or(PayloadView::EMPTY)
    }

    /// The checksum byte.
    pub fn checksum(&self) -> u8 {
        self.bytes.last().copied().unwrap_or(0)
    }

    /// True when the message used the extended (16-bit) length form.
    pub const fn has_extended_length(&self) -> bool {
        self.fields_start == 4
    }

    /// The whole message as it was on the wire.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Size of the message on the wire.
    #[allow(clippy::len_without_is_empty)] // a message is never empty
    pub const fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The message re-expressed as an encodable [`Message`] borrowing `storage` for the payload,
    /// e.g. to forward it to another port. `storage` must hold at least as many `T` as the
    /// payload has elements; the payload must be of type `T`.
    pub fn to_message<'s, T: Element>(&self, storage: &'s mut [T]) -> Result<Message<'s>, Error> {
        let payload = self.payload();
        let n = payload.copy_to(storage)?;
        if n != payload.len() {
            return Err(Error::BufferTooSmall {
                needed: payload.len(),
                available: n,
            });
        }
        let values: &'s [T] = storage.get(..n).unwrap_or(&[]);
        Ok(Message {
            message_type: self.message_type,
            address: self.address,
            port: self.port,
            timestamp: self.timestamp(),
            payload: T::payload(values),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_bytes() {
        for b in 0u8..=255 {
            if let Some(t) = MessageType::from_byte(b) {
                assert_eq!(t.to_byte(), b);
                assert_eq!(t.is_error(), b & ERROR_FLAG != 0);
                assert_eq!(t.with_error().without_error(), t.without_error());
            }
        }
        assert_eq!(MessageType::Read.with_error().to_byte(), 9);
        assert_eq!(MessageType::Write.with_error().to_byte(), 10);
    }

    #[test]
    fn timestamp_round_trip() {
        let t = Timestamp::new(0xDEAD_BEEF, 31_249);
        assert_eq!(Timestamp::from_le_slice(&t.to_le_bytes()), Some(t));
        assert_eq!(Timestamp::from_micros(t.to_micros()), t);
        assert!(Timestamp::new(1, 0) > Timestamp::new(0, 31_249));
        assert_eq!(Timestamp::from_le_slice(&[0; 5]), None);
    }

    #[test]
    fn encode_refuses_short_buffers_without_writing() {
        let mut buf = [0xAAu8; 8];
        let msg = Message::write(40, Payload::U32(&[1]));
        assert_eq!(
            msg.encode_into(&mut buf),
            Err(Error::BufferTooSmall {
                needed: 10,
                available: 8
            })
        );
        assert_eq!(buf, [0xAA; 8]);
    }

    #[test]
    fn extended_length_boundary() {
        // counted = 4 + n: 250 payload bytes → 254 (short form), 251 → 255 (extended form).
        let data = [7u8; 251];
        let short = Message::write(1, Payload::U8(&data[..250]));
        let long = Message::write(1, Payload::U8(&data[..251]));
        assert_eq!(short.encoded_len(), Ok(256));
        assert_eq!(long.encoded_len(), Ok(259));
        let mut buf = [0u8; 300];
        let n = long.encode_into(&mut buf).unwrap();
        assert_eq!(&buf[..4], &[2, 0xFF, 255, 0]);
        let view = MessageView::decode(&buf[..n]).unwrap();
        assert!(view.has_extended_length());
        assert_eq!(view.payload().as_u8(), Some(&data[..]));
        let too_big = [0u64; 8192];
        assert_eq!(
            Message::write(1, &too_big).encoded_len(),
            Err(Error::PayloadTooLarge { bytes: 65536 })
        );
    }
}
