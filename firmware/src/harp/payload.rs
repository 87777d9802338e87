//! Payload types: the `PayloadType` byte, typed payloads for encoding and a zero-copy view for
//! decoding.
//!
//! Encoding takes native slices ([`Payload`]); decoding hands out a [`PayloadView`] over the wire
//! bytes, because wire elements are little endian and unaligned and so cannot be borrowed as
//! `&[u16]` & co. without copying.

use core::iter::FusedIterator;
use core::marker::PhantomData;
use core::slice::ChunksExact;

use super::error::Error;

/// `PayloadType` flag: elements are signed integers.
pub const SIGNED_FLAG: u8 = 0x80;
/// `PayloadType` flag: elements are IEEE-754 floats.
pub const FLOAT_FLAG: u8 = 0x40;
/// `PayloadType` flag: a 6-byte timestamp precedes the payload.
pub const TIMESTAMP_FLAG: u8 = 0x10;
/// `PayloadType` mask of the element size in bytes.
pub const SIZE_MASK: u8 = 0x0F;

/// Type of the elements of a payload, i.e. the `PayloadType` byte without the timestamp flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    /// Unsigned 8-bit (`0x01`).
    U8,
    /// Signed 8-bit (`0x81`).
    S8,
    /// Unsigned 16-bit (`0x02`).
    U16,
    /// Signed 16-bit (`0x82`).
    S16,
    /// Unsigned 32-bit (`0x04`).
    U32,
    /// Signed 32-bit (`0x84`).
    S32,
    /// Unsigned 64-bit (`0x08`).
    U64,
    /// Signed 64-bit (`0x88`).
    S64,
    /// 32-bit IEEE-754 float (`0x44`).
    Float,
}

impl ElementType {
    /// Every element type, in `PayloadType` code order.
    pub const ALL: [ElementType; 9] = [
        ElementType::U8,
        ElementType::S8,
        ElementType::U16,
        ElementType::S16,
        ElementType::U32,
        ElementType::S32,
        ElementType::U64,
        ElementType::S64,
        ElementType::Float,
    ];

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        (self.code() & SIZE_MASK) as usize
    }

    /// The `PayloadType` byte of an untimestamped payload of this type.
    pub const fn code(self) -> u8 {
        match self {
            ElementType::U8 => 0x01,
            ElementType::S8 => SIGNED_FLAG | 0x01,
            ElementType::U16 => 0x02,
            ElementType::S16 => SIGNED_FLAG | 0x02,
            ElementType::U32 => 0x04,
            ElementType::S32 => SIGNED_FLAG | 0x04,
            ElementType::U64 => 0x08,
            ElementType::S64 => SIGNED_FLAG | 0x08,
            ElementType::Float => FLOAT_FLAG | 0x04,
        }
    }

    /// Inverse of [`code`](Self::code). Only the nine codes the specification defines are
    /// accepted: a set reserved bit, signed+float, a float that is not 32-bit or a size that is
    /// not 1, 2, 4 or 8 is rejected, which is what lets the stream parser reject noise early.
    pub const fn from_code(code: u8) -> Option<ElementType> {
        Some(match code {
            0x01 => ElementType::U8,
            0x81 => ElementType::S8,
            0x02 => ElementType::U16,
            0x82 => ElementType::S16,
            0x04 => ElementType::U32,
            0x84 => ElementType::S32,
            0x08 => ElementType::U64,
            0x88 => ElementType::S64,
            0x44 => ElementType::Float,
            _ => return None,
        })
    }

    /// True for the signed integer types.
    pub const fn is_signed(self) -> bool {
        self.code() & SIGNED_FLAG != 0
    }

    /// True for [`ElementType::Float`].
    pub const fn is_float(self) -> bool {
        self.code() & FLOAT_FLAG != 0
    }
}

/// The `PayloadType` byte: element type plus the `HasTimestamp` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PayloadType {
    /// Type of the payload elements.
    pub element: ElementType,
    /// Whether the message carries a timestamp before its payload.
    pub timestamped: bool,
}

impl PayloadType {
    /// A payload type from its parts.
    pub const fn new(element: ElementType, timestamped: bool) -> Self {
        PayloadType {
            element,
            timestamped,
        }
    }

    /// The wire byte.
    pub const fn to_byte(self) -> u8 {
        if self.timestamped {
            self.element.code() | TIMESTAMP_FLAG
        } else {
            self.element.code()
        }
    }

    /// Parses the wire byte.
    ///
    /// The specification's bare `Timestamp` code (`0x10`, a timestamp with no element type) is
    /// rejected: it has no element size, so no payload length could be derived from it, and no
    /// device register uses it.
    pub const fn from_byte(byte: u8) -> Result<Self, Error> {
        match ElementType::from_code(byte & !TIMESTAMP_FLAG) {
            Some(element) => Ok(PayloadType {
                element,
                timestamped: byte & TIMESTAMP_FLAG != 0,
            }),
            None => Err(Error::InvalidPayloadType(byte)),
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A Rust type that is one of the Harp element types (`u8`, `i8`, `u16`, `i16`, `u32`, `i32`,
/// `u64`, `i64`, `f32`). Used by the typed accessors of [`PayloadView`] and [`Payload`].
pub trait Element: Copy + PartialEq + core::fmt::Debug + sealed::Sealed {
    /// The matching Harp element type.
    const TYPE: ElementType;
    /// Reads one element from the start of `bytes` (little endian); `None` if too short.
    fn from_le_slice(bytes: &[u8]) -> Option<Self>;
    /// Writes the element little endian to the start of `out`; does nothing if `out` is too short.
    fn write_le(self, out: &mut [u8]);
    /// Wraps a slice of this type as a [`Payload`].
    fn payload(values: &[Self]) -> Payload<'_>;
    /// Borrows the slice back out of a [`Payload`] of the same type.
    fn slice<'p>(payload: &Payload<'p>) -> Option<&'p [Self]>;
    /// Wraps the element as a [`Value`].
    fn into_value(self) -> Value;
}

macro_rules! impl_element {
    ($($t:ty => $variant:ident, $n:literal;)*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const TYPE: ElementType = ElementType::$variant;
            #[inline]
            fn from_le_slice(bytes: &[u8]) -> Option<Self> {
                let raw: [u8; $n] = bytes.get(..$n)?.try_into().ok()?;
                Some(<$t>::from_le_bytes(raw))
            }
            #[inline]
            fn write_le(self, out: &mut [u8]) {
                if let Some(dst) = out.get_mut(..$n) {
                    dst.copy_from_slice(&self.to_le_bytes());
                }
            }
            #[inline]
            fn payload(values: &[Self]) -> Payload<'_> {
                Payload::$variant(values)
            }
            #[inline]
            fn slice<'p>(payload: &Payload<'p>) -> Option<&'p [Self]> {
                match *payload {
                    Payload::$variant(values) => Some(values),
                    _ => None,
                }
            }
            #[inline]
            fn into_value(self) -> Value {
                Value::$variant(self)
            }
        }
        impl<'a> From<&'a [$t]> for Payload<'a> {
            fn from(values: &'a [$t]) -> Self {
                Payload::$variant(values)
            }
        }
        impl<'a, const N: usize> From<&'a [$t; N]> for Payload<'a> {
            fn from(values: &'a [$t; N]) -> Self {
                Payload::$variant(values)
            }
        }
    )*};
}

impl_element! {
    u8 => U8, 1;
    i8 => S8, 1;
    u16 => U16, 2;
    i16 => S16, 2;
    u32 => U32, 4;
    i32 => S32, 4;
    u64 => U64, 8;
    i64 => S64, 8;
    f32 => Float, 4;
}

/// One element of any type, as returned by the untyped accessors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// Unsigned 8-bit.
    U8(u8),
    /// Signed 8-bit.
    S8(i8),
    /// Unsigned 16-bit.
    U16(u16),
    /// Signed 16-bit.
    S16(i16),
    /// Unsigned 32-bit.
    U32(u32),
    /// Signed 32-bit.
    S32(i32),
    /// Unsigned 64-bit.
    U64(u64),
    /// Signed 64-bit.
    S64(i64),
    /// 32-bit float.
    Float(f32),
}

impl Value {
    /// Reads one element of type `element` from the start of `bytes`.
    pub fn read(element: ElementType, bytes: &[u8]) -> Option<Value> {
        Some(match element {
            ElementType::U8 => Value::U8(u8::from_le_slice(bytes)?),
            ElementType::S8 => Value::S8(i8::from_le_slice(bytes)?),
            ElementType::U16 => Value::U16(u16::from_le_slice(bytes)?),
            ElementType::S16 => Value::S16(i16::from_le_slice(bytes)?),
            ElementType::U32 => Value::U32(u32::from_le_slice(bytes)?),
            ElementType::S32 => Value::S32(i32::from_le_slice(bytes)?),
            ElementType::U64 => Value::U64(u64::from_le_slice(bytes)?),
            ElementType::S64 => Value::S64(i64::from_le_slice(bytes)?),
            ElementType::Float => Value::Float(f32::from_le_slice(bytes)?),
        })
    }

    /// The element type of this value.
    pub const fn element_type(&self) -> ElementType {
        match self {
            Value::U8(_) => ElementType::U8,
            Value::S8(_) => ElementType::S8,
            Value::U16(_) => ElementType::U16,
            Value::S16(_) => ElementType::S16,
            Value::U32(_) => ElementType::U32,
            Value::S32(_) => ElementType::S32,
            Value::U64(_) => ElementType::U64,
            Value::S64(_) => ElementType::S64,
            Value::Float(_) => ElementType::Float,
        }
    }

    /// The value as `i64`, for integers that fit (every type except large `U64` and floats).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(i64::from(v)),
            Value::S8(v) => Some(i64::from(v)),
            Value::U16(v) => Some(i64::from(v)),
            Value::S16(v) => Some(i64::from(v)),
            Value::U32(v) => Some(i64::from(v)),
            Value::S32(v) => Some(i64::from(v)),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::S64(v) => Some(v),
            Value::Float(_) => None,
        }
    }

    /// The value as `u64`, for non-negative integers.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::Float(_) => None,
            other => other.as_i64().and_then(|v| u64::try_from(v).ok()),
        }
    }

    /// The value as `f64` (exact for everything but 64-bit integers beyond 2^53).
    pub fn as_f64(&self) -> f64 {
        match *self {
            Value::U8(v) => f64::from(v),
            Value::S8(v) => f64::from(v),
            Value::U16(v) => f64::from(v),
            Value::S16(v) => f64::from(v),
            Value::U32(v) => f64::from(v),
            Value::S32(v) => f64::from(v),
            Value::U64(v) => v as f64,
            Value::S64(v) => v as f64,
            Value::Float(v) => f64::from(v),
        }
    }
}

/// A typed payload borrowed from native slices: what the encoder takes.
///
/// ```
/// use twinrig_firmware::harp::{ElementType, Payload, Value};
/// let p = Payload::from(&[1u16, 2, 3]);
/// assert_eq!(p.element_type(), ElementType::U16);
/// assert_eq!(p.byte_len(), 6);
/// assert_eq!(p.get(2), Some(Value::U16(3)));
/// assert_eq!(p.as_slice::<u16>(), Some(&[1u16, 2, 3][..]));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Payload<'a> {
    /// `U8` array.
    U8(&'a [u8]),
    /// `S8` array.
    S8(&'a [i8]),
    /// `U16` array.
    U16(&'a [u16]),
    /// `S16` array.
    S16(&'a [i16]),
    /// `U32` array.
    U32(&'a [u32]),
    /// `S32` array.
    S32(&'a [i32]),
    /// `U64` array.
    U64(&'a [u64]),
    /// `S64` array.
    S64(&'a [i64]),
    /// `Float` (f32) array.
    Float(&'a [f32]),
}

/// Runs `$body` with `$s` bound to the slice inside whichever variant `$p` is.
macro_rules! with_slice {
    ($p:expr, $s:ident => $body:expr) => {
        match $p {
            Payload::U8($s) => $body,
            Payload::S8($s) => $body,
            Payload::U16($s) => $body,
            Payload::S16($s) => $body,
            Payload::U32($s) => $body,
            Payload::S32($s) => $body,
            Payload::U64($s) => $body,
            Payload::S64($s) => $body,
            Payload::Float($s) => $body,
        }
    };
}

impl<'a> Payload<'a> {
    /// An empty payload of the given type, as a `Read` request carries.
    pub const fn empty(element: ElementType) -> Payload<'static> {
        match element {
            ElementType::U8 => Payload::U8(&[]),
            ElementType::S8 => Payload::S8(&[]),
            ElementType::U16 => Payload::U16(&[]),
            ElementType::S16 => Payload::S16(&[]),
            ElementType::U32 => Payload::U32(&[]),
            ElementType::S32 => Payload::S32(&[]),
            ElementType::U64 => Payload::U64(&[]),
            ElementType::S64 => Payload::S64(&[]),
            ElementType::Float => Payload::Float(&[]),
        }
    }

    /// Wraps a slice of any element type.
    pub fn from_slice<T: Element>(values: &'a [T]) -> Self {
        T::payload(values)
    }

    /// Element type of the payload.
    pub const fn element_type(&self) -> ElementType {
        match self {
            Payload::U8(_) => ElementType::U8,
            Payload::S8(_) => ElementType::S8,
            Payload::U16(_) => ElementType::U16,
            Payload::S16(_) => ElementType::S16,
            Payload::U32(_) => ElementType::U32,
            Payload::S32(_) => ElementType::S32,
            Payload::U64(_) => ElementType::U64,
            Payload::S64(_) => ElementType::S64,
            Payload::Float(_) => ElementType::Float,
        }
    }

    /// Number of elements.
    pub const fn len(&self) -> usize {
        with_slice!(self, s => s.len())
    }

    /// True when the payload has no elements.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encoded size in bytes.
    pub const fn byte_len(&self) -> usize {
        self.len() * self.element_type().size()
    }

    /// Element `index` as a [`Value`].
    pub fn get(&self, index: usize) -> Option<Value> {
        with_slice!(*self, s => s.get(index).map(|v| v.into_value()))
    }

    /// All elements as [`Value`]s.
    pub fn values(&self) -> impl Iterator<Item = Value> + 'a {
        let payload = *self;
        (0..payload.len()).filter_map(move |i| payload.get(i))
    }

    /// The underlying slice, if the payload holds elements of type `T`.
    pub fn as_slice<T: Element>(&self) -> Option<&'a [T]> {
        T::slice(self)
    }

    /// Writes the elements little endian to `out`; returns the bytes written. Writes only whole
    /// elements that fit, so a short `out` yields a short count rather than a panic.
    pub(crate) fn write_le(&self, out: &mut [u8]) -> usize {
        fn write<T: Element>(values: &[T], out: &mut [u8]) -> usize {
            let size = T::TYPE.size();
            let mut written = 0;
            for (value, dst) in values.iter().zip(out.chunks_exact_mut(size)) {
                value.write_le(dst);
                written += size;
            }
            written
        }
        with_slice!(*self, s => write(s, out))
    }
}

/// A zero-copy view of a decoded payload: the element type and the little-endian wire bytes.
///
/// ```
/// use twinrig_firmware::harp::{ElementType, PayloadView};
/// let view = PayloadView::new(ElementType::S16, &[0xFF, 0xFF, 0x02, 0x00]).unwrap();
/// assert_eq!(view.len(), 2);
/// assert_eq!(view.get::<i16>(0), Some(-1));
/// assert_eq!(view.get::<u16>(0), None); // wrong type
/// assert_eq!(view.iter::<i16>().unwrap().collect::<Vec<_>>(), [-1, 2]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadView<'a> {
    element: ElementType,
    bytes: &'a [u8],
}

impl PayloadView<'static> {
    /// An empty `U8` payload.
    pub const EMPTY: PayloadView<'static> = PayloadView {
        element: ElementType::U8,
        bytes: &[],
    };
}

impl<'a> PayloadView<'a> {
    /// A view over `bytes`, which must be a whole number of `element`s.
    pub fn new(element: ElementType, bytes: &'a [u8]) -> Result<Self, Error> {
        if bytes.len() % element.size() != 0 {
            return Err(Error::PayloadLengthMismatch {
                bytes: bytes.len(),
                element_size: element.size(),
            });
        }
        Ok(PayloadView { element, bytes })
    }

    /// Element type of the payload.
    pub const fn element_type(&self) -> ElementType {
        self.element
    }

    /// Number of elements.
    pub const fn len(&self) -> usize {
        self.bytes.len() / self.element.size()
    }

    /// True when the payload has no elements.
    pub const fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The raw little-endian payload bytes.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Element `index` as `T`; `None` if out of range or if the payload is not of type `T`.
    pub fn get<T: Element>(&self, index: usize) -> Option<T> {
        if T::TYPE != self.element {
            return None;
        }
        let start = index.checked_mul(self.element.size())?;
        T::from_le_slice(self.bytes.get(start..)?)
    }

    /// The first element as `T` (registers mostly hold a single value).
    pub fn first<T: Element>(&self) -> Option<T> {
        self.get(0)
    }

    /// Iterates the elements as `T`; fails if the payload is not of type `T`.
    pub fn iter<T: Element>(&self) -> Result<ElementIter<'a, T>, Error> {
        if T::TYPE != self.element {
            return Err(Error::TypeMismatch {
                requested: T::TYPE,
                actual: self.element,
            });
        }
        Ok(ElementIter {
            chunks: self.bytes.chunks_exact(self.element.size()),
            _t: PhantomData,
        })
    }

    /// Copies elements into `out` (as many as both hold); returns the number copied.
    pub fn copy_to<T: Element>(&self, out: &mut [T]) -> Result<usize, Error> {
        let mut copied = 0;
        for (dst, value) in out.iter_mut().zip(self.iter::<T>()?) {
            *dst = value;
            copied += 1;
        }
        Ok(copied)
    }

    /// Element `index` as a [`Value`].
    pub fn value(&self, index: usize) -> Option<Value> {
        let start = index.checked_mul(self.element.size())?;
        Value::read(self.element, self.bytes.get(start..)?)
    }

    /// Iterates the elements as [`Value`]s.
    pub fn values(&self) -> Values<'a> {
        Values {
            element: self.element,
            chunks: self.bytes.chunks_exact(self.element.size()),
        }
    }

    /// The bytes themselves when the payload is `U8` (names, UIDs, byte arrays).
    pub fn as_u8(&self) -> Option<&'a [u8]> {
        (self.element == ElementType::U8).then_some(self.bytes)
    }
}

/// Iterator over the elements of a [`PayloadView`] as `T`.
#[derive(Debug, Clone)]
pub struct ElementIter<'a, T> {
    chunks: ChunksExact<'a, u8>,
    _t: PhantomData<T>,
}

impl<T: Element> Iterator for ElementIter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.chunks.next().and_then(T::from_le_slice)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl<T: Element> DoubleEndedIterator for ElementIter<'_, T> {
    fn next_back(&mut self) -> Option<T> {
        self.chunks.next_back().and_then(T::from_le_slice)
    }
}

impl<T: Element> ExactSizeIterator for ElementIter<'_, T> {}
impl<T: Element> FusedIterator for ElementIter<'_, T> {}

/// Iterator over the elements of a [`PayloadView`] as [`Value`]s.
#[derive(Debug, Clone)]
pub struct Values<'a> {
    element: ElementType,
    chunks: ChunksExact<'a, u8>,
}

impl Iterator for Values<'_> {
    type Item = Value;
    fn next(&mut self) -> Option<Value> {
        let element = self.element;
        self.chunks.next().and_then(|c| Value::read(element, c))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for Values<'_> {}
impl FusedIterator for Values<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_type_codes_match_the_specification_table() {
        // BinaryProtocol-8bit.md, "Parsing PayloadType": U8 = 1, S8 = 0x80|1, ..., Float = 0x40|4,
        // Timestamped* = 0x10|*.
        let expected: [(ElementType, u8); 9] = [
            (ElementType::U8, 0x01),
            (ElementType::S8, 0x81),
            (ElementType::U16, 0x02),
            (ElementType::S16, 0x82),
            (ElementType::U32, 0x04),
            (ElementType::S32, 0x84),
            (ElementType::U64, 0x08),
            (ElementType::S64, 0x88),
            (ElementType::Float, 0x44),
        ];
        for (element, code) in expected {
            assert_eq!(element.code(), code);
            assert_eq!(PayloadType::new(element, true).to_byte(), code | 0x10);
            assert_eq!(
                PayloadType::from_byte(code),
                Ok(PayloadType::new(element, false))
            );
            assert_eq!(
                PayloadType::from_byte(code | 0x10),
                Ok(PayloadType::new(element, true))
            );
        }
        let valid = (0u8..=255)
            .filter(|&b| PayloadType::from_byte(b).is_ok())
            .count();
        assert_eq!(valid, 18);
        assert_eq!(
            PayloadType::from_byte(0x10),
            Err(Error::InvalidPayloadType(0x10))
        );
        assert!(PayloadType::from_byte(0xC4).is_err()); // signed + float
        assert!(PayloadType::from_byte(0x42).is_err()); // 16-bit float
        assert!(PayloadType::from_byte(0x21).is_err()); // reserved bit 5
    }

    #[test]
    fn view_rejects_partial_elements_and_wrong_types() {
        assert!(PayloadView::new(ElementType::U32, &[1, 2, 3]).is_err());
        let view = PayloadView::new(ElementType::U32, &[1, 0, 0, 0]).unwrap();
        assert_eq!(view.first::<u32>(), Some(1));
        assert_eq!(view.get::<u32>(1), None);
        assert_eq!(view.get::<u32>(usize::MAX), None);
        assert!(matches!(
            view.iter::<i32>(),
            Err(Error::TypeMismatch { .. })
        ));
        assert_eq!(view.value(0), Some(Value::U32(1)));
        assert_eq!(view.as_u8(), None);
        let mut out = [0u32; 4];
        assert_eq!(view.copy_to(&mut out), Ok(1));
    }

    #[test]
    fn value_conversions() {
        assert_eq!(Value::S8(-3).as_i64(), Some(-3));
        assert_eq!(Value::S8(-3).as_u64(), None);
        assert_eq!(Value::U64(u64::MAX).as_i64(), None);
        assert_eq!(Value::U64(u64::MAX).as_u64(), Some(u64::MAX));
        assert_eq!(Value::Float(1.5).as_f64(), 1.5);
        assert_eq!(Value::Float(1.5).as_i64(), None);
    }
}
