//! Shared test helpers: a small deterministic PRNG (no crates) and owned message copies.
#![allow(dead_code)]

use twinrig_firmware::harp::{MessageType, MessageView, PayloadType, Timestamp};

/// SplitMix64: tiny, fast, and good enough to drive property and fuzz tests reproducibly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn next_u8(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) % n as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.next_u8();
        }
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// An owned copy of a decoded message, for assertions after the parser's buffer moves on.
#[derive(Debug, Clone, PartialEq)]
pub struct Owned {
    pub message_type: MessageType,
    pub address: u8,
    pub port: u8,
    pub payload_type: PayloadType,
    pub timestamp: Option<Timestamp>,
    pub payload: Vec<u8>,
    pub bytes: Vec<u8>,
}

impl Owned {
    pub fn from_view(m: &MessageView<'_>) -> Self {
        Owned {
            message_type: m.message_type(),
            address: m.address(),
            port: m.port(),
            payload_type: m.payload_type(),
            timestamp: m.timestamp(),
            payload: m.payload().as_bytes().to_vec(),
            bytes: m.as_bytes().to_vec(),
        }
    }

    pub fn u8(&self) -> u8 {
        assert_eq!(self.payload.len(), 1, "{self:?}");
        self.payload[0]
    }

    pub fn u16(&self) -> u16 {
        u16::from_le_bytes(self.payload[..2].try_into().unwrap())
    }

    pub fn u32(&self) -> u32 {
        u32::from_le_bytes(self.payload[..4].try_into().unwrap())
    }

    pub fn i32(&self) -> i32 {
        i32::from_le_bytes(self.payload[..4].try_into().unwrap())
    }
}
