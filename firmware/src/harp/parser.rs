//! Incremental stream parser.
//!
//! Serial links drop, duplicate and corrupt bytes, and a reader may open a port in the middle of
//! a message. The parser therefore never trusts a frame boundary: whenever the bytes at the front
//! of its buffer cannot be a message (impossible header, bad checksum, a length it could never
//! buffer), it drops exactly one byte and tries again from the next. Because only one byte is
//! dropped at a time, a valid message that follows garbage — or hides inside a frame that turned
//! out to be bogus — is still found.

use super::error::Error;
use super::message::MessageView;

/// Default buffer size: ample for every sync-board message (the largest, `R_VERSION`, is 44
/// bytes) while small enough for a microcontroller.
pub const DEFAULT_CAPACITY: usize = 512;

/// Counters of what the parser has seen. They only grow (until [`Parser::reset_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParserStats {
    /// Valid messages handed out.
    pub messages: u64,
    /// Bytes dropped while resynchronising (noise, and the first byte of each rejected frame).
    pub discarded_bytes: u64,
    /// Complete frames whose checksum did not match (each also discards one byte).
    pub bad_checksums: u64,
    /// Headers announcing a message longer than the buffer (each also discards one byte).
    pub oversized: u64,
}

/// Pulls Harp messages out of a byte stream delivered in arbitrary chunks.
///
/// `N` is the size of the internal buffer and therefore of the largest message accepted; longer
/// messages are counted in [`ParserStats::oversized`] and skipped. Nothing is allocated.
///
/// Two ways to use it:
///
/// * [`push`](Self::push) feeds a whole chunk and calls a closure for every message in it;
/// * [`feed`](Self::feed) + [`next_message`](Self::next_message) for pull-style loops.
///
/// ```
/// use twinrig_firmware::harp::{Message, Parser, Payload};
/// let mut wire = [0u8; 64];
/// let n = Message::write(36, Payload::U8(&[1])).encode_into(&mut wire).unwrap();
///
/// let mut parser: Parser<64> = Parser::new();
/// // Garbage first, then the message split in two chunks.
/// parser.feed(&[0x00, 0x42]);
/// assert!(parser.next_message().is_none());
/// parser.feed(&wire[..3]);
/// assert!(parser.next_message().is_none());
/// parser.feed(&wire[3..n]);
/// let msg = parser.next_message().unwrap();
/// assert_eq!(msg.address(), 36);
/// assert_eq!(parser.stats().discarded_bytes, 2);
/// ```
#[derive(Debug, Clone)]
pub struct Parser<const N: usize = DEFAULT_CAPACITY> {
    buf: [u8; N],
    /// Start of unconsumed bytes.
    head: usize,
    /// End of buffered bytes; `head <= tail <= N` always.
    tail: usize,
    /// Size of the message last returned by `next_message`, still borrowed by the caller at the
    /// time; consumed on the next call.
    pending: usize,
    stats: ParserStats,
}

impl ParserStats {
    /// All counters zero.
    pub const ZERO: ParserStats = ParserStats {
        messages: 0,
        discarded_bytes: 0,
        bad_checksums: 0,
        oversized: 0,
    };
}

impl<const N: usize> Default for Parser<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Parser<N> {
    /// Buffer size, i.e. the largest message this parser accepts.
    pub const CAPACITY: usize = N;

    /// An extended header is 7 bytes and the smallest message 6; anything below 8 is a bug.
    const CAPACITY_CHECK: () = assert!(N >= 8, "Parser capacity must be at least 8 bytes");

    /// An empty parser.
    pub const fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::CAPACITY_CHECK;
        Parser {
            buf: [0; N],
            head: 0,
            tail: 0,
            pending: 0,
            stats: ParserStats::ZERO,
        }
    }

    /// Copies as much of `input` as fits into the buffer; returns how many bytes were taken.
    /// Call [`next_message`](Self::next_message) until it returns `None` before feeding again
    /// if this returns less than `input.len()`.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        self.release_pending();
        if N - self.tail < input.len() && self.head > 0 {
            self.buf.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
        let n = input.len().min(N - self.tail);
        if let (Some(dst), Some(src)) = (self.buf.get_mut(self.tail..self.tail + n), input.get(..n))
        {
            dst.copy_from_slice(src);
            self.tail += n;
            n
        } else {
            0
        }
    }

    /// The next complete, checksum-verified message in the buffer, or `None` when more bytes are
    /// needed. The message borrows the parser's buffer until the next call.
    pub fn next_message(&mut self) -> Option<MessageView<'_>> {
        self.release_pending();
        loop {
            if self.head == self.tail {
                // Empty: rewind for free so that feeding rarely needs to compact.
                self.head = 0;
                self.tail = 0;
                return None;
            }
            let available = self.buf.get(self.head..self.tail)?;
            match MessageView::decode(available) {
                Ok(message) => {
                    self.pending = message.len();
                    self.stats.messages += 1;
                    return Some(message);
                }
                Err(Error::Truncated { needed, .. }) if needed <= N => return None,
                Err(Error::Truncated { .. }) => self.stats.oversized += 1,
                Err(Error::ChecksumMismatch { .. }) => self.stats.bad_checksums += 1,
                Err(_) => {}
            }
            // Not a message start: skip one byte and look again from the next.
            self.head += 1;
            self.stats.discarded_bytes += 1;
        }
    }

    /// Feeds all of `input` and calls `on_message` for every message completed by it. Returns
    /// the number of messages delivered.
    pub fn push<F>(&mut self, input: &[u8], mut on_message: F) -> usize
    where
        F: FnMut(MessageView<'_>),
    {
        let mut rest = input;
        let mut delivered = 0;
        loop {
            let taken = self.feed(rest);
            rest = rest.get(taken..).unwrap_or(&[]);
            while let Some(message) = self.next_message() {
                on_message(message);
                delivered += 1;
            }
            if rest.is_empty() {
                return delivered;
            }
            if taken == 0 {
                // Unreachable by construction (a full buffer always yields a message or drops a
                // byte), but guarantee progress rather than spin if that reasoning is ever wrong.
                self.head = (self.head + 1).min(self.tail);
                self.stats.discarded_bytes += 1;
            }
        }
    }

    /// Bytes buffered and not yet consumed (a partial message, usually).
    pub fn buffered(&self) -> usize {
        self.tail - self.head - self.pending
    }

    /// The counters.
    pub fn stats(&self) -> ParserStats {
        self.stats
    }

    /// Zeroes the counters.
    pub fn reset_stats(&mut self) {
        self.stats = ParserStats::default();
    }

    /// Forgets buffered bytes (e.g. after reopening the port); they are not counted as discarded.
    pub fn clear(&mut self) {
        self.head = 0;
        self.tail = 0;
        self.pending = 0;
    }

    fn release_pending(&mut self) {
        self.head = (self.head + self.pending).min(self.tail);
        self.pending = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harp::{Message, Payload};

    fn encode(msg: &Message<'_>, buf: &mut [u8]) -> usize {
        msg.encode_into(buf).unwrap()
    }

    #[test]
    fn byte_by_byte_delivery() {
        let mut wire = [0u8; 64];
        let n = encode(&Message::write(40, Payload::U16(&[1, 2, 3])), &mut wire);
        let mut parser: Parser<16> = Parser::new();
        let mut got = 0;
        for &b in &wire[..n] {
            parser.push(&[b], |m| {
                assert_eq!(m.payload().iter::<u16>().unwrap().sum::<u16>(), 6);
                got += 1;
            });
        }
        assert_eq!(got, 1);
        assert_eq!(parser.buffered(), 0);
    }

    #[test]
    fn oversized_frames_are_skipped_and_counted() {
        let data = [0u8; 40];
        let mut wire = [0u8; 64];
        let n = encode(&Message::write(40, Payload::U8(&data)), &mut wire);
        let m = encode(&Message::write(41, Payload::U8(&[9])), &mut wire[n..]);
        let mut parser: Parser<16> = Parser::new();
        let mut addresses = [0u8; 4];
        let mut count = 0;
        parser.push(&wire[..n + m], |msg| {
            addresses[count] = msg.address();
            count += 1;
        });
        assert_eq!(&addresses[..count], &[41]);
        assert!(parser.stats().oversized >= 1);
        assert_eq!(parser.stats().discarded_bytes, n as u64);
    }

    #[test]
    fn bad_checksum_resyncs_onto_following_message() {
        let mut wire = [0u8; 64];
        let n = encode(&Message::write(40, Payload::U8(&[1])), &mut wire);
        wire[n - 1] ^= 0x55;
        let m = encode(&Message::write(41, Payload::U8(&[2])), &mut wire[n..]);
        let mut parser: Parser = Parser::new();
        let mut seen = 0;
        parser.push(&wire[..n + m], |msg| {
            assert_eq!(msg.address(), 41);
            seen += 1;
        });
        assert_eq!(seen, 1);
        assert_eq!(parser.stats().bad_checksums, 1);
        assert_eq!(parser.stats().discarded_bytes, n as u64);
    }

    #[test]
    fn feed_reports_partial_acceptance() {
        let mut parser: Parser<8> = Parser::new();
        assert_eq!(parser.feed(&[0; 20]), 8);
        assert!(parser.next_message().is_none());
        assert_eq!(parser.stats().discarded_bytes, 8);
        assert_eq!(parser.feed(&[0; 20]), 8);
    }
}
