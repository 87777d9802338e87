//! Codec errors.

use core::fmt;

use super::payload::ElementType;

/// Everything that can go wrong encoding or decoding a Harp message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The destination buffer is shorter than the encoded message.
    BufferTooSmall {
        /// Bytes the message needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// The payload does not fit even the 16-bit extended length field.
    PayloadTooLarge {
        /// Payload size in bytes.
        bytes: usize,
    },
    /// The input ends before the message does. More bytes may complete it.
    Truncated {
        /// Bytes needed to make progress (the whole message once the header is known).
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The `MessageType` byte is not Read, Write or Event (optionally with the error flag).
    InvalidMessageType(u8),
    /// The `PayloadType` byte does not name a defined element type.
    InvalidPayloadType(u8),
    /// `Length` is too small to cover address, port, payload type, timestamp and checksum.
    InvalidLength {
        /// The announced length (bytes after the length field).
        length: u16,
        /// The smallest length the payload type allows.
        minimum: u16,
    },
    /// The payload is not a whole number of elements.
    PayloadLengthMismatch {
        /// Payload size in bytes.
        bytes: usize,
        /// Size of one element.
        element_size: usize,
    },
    /// The checksum byte does not match the sum of the message bytes.
    ChecksumMismatch {
        /// Checksum computed over the received bytes.
        computed: u8,
        /// Checksum carried by the message.
        received: u8,
    },
    /// A typed accessor asked for a different element type than the payload holds.
    TypeMismatch {
        /// Requested element type.
        requested: ElementType,
        /// Element type of the payload.
        actual: ElementType,
    },
}

impl Error {
    /// True when more input could turn this error into a valid message, i.e. the bytes seen so
    /// far are a plausible prefix. The stream parser waits on these and resynchronises on all
    /// others.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, Error::Truncated { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::BufferTooSmall { needed, available } => {
                write!(
                    f,
                    "buffer too small: message needs {needed} bytes, buffer has {available}"
                )
            }
            Error::PayloadTooLarge { bytes } => {
                write!(
                    f,
                    "payload of {bytes} bytes exceeds the 16-bit Harp length field"
                )
            }
            Error::Truncated { needed, available } => {
                write!(
                    f,
                    "truncated message: need {needed} bytes, have {available}"
                )
            }
            Error::InvalidMessageType(b) => write!(f, "invalid message type byte 0x{b:02X}"),
            Error::InvalidPayloadType(b) => write!(f, "invalid payload type byte 0x{b:02X}"),
            Error::InvalidLength { length, minimum } => {
                write!(
                    f,
                    "invalid length {length}: this payload type needs at least {minimum}"
                )
            }
            Error::PayloadLengthMismatch {
                bytes,
                element_size,
            } => write!(
                f,
                "payload of {bytes} bytes is not a whole number of {element_size}-byte elements"
            ),
            Error::ChecksumMismatch { computed, received } => write!(
                f,
                "checksum mismatch: computed 0x{computed:02X}, message carries 0x{received:02X}"
            ),
            Error::TypeMismatch { requested, actual } => {
                write!(
                    f,
                    "payload holds {actual:?} elements, {requested:?} requested"
                )
            }
        }
    }
}

impl core::error::Error for Error {}
