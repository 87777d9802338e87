//! Interrupt → main-loop queue of input edges.
//!
//! The GPIO interrupt must be short and must timestamp the edge at once; the device logic runs
//! in the main loop. This queue connects the two without a critical section: one producer (the
//! interrupt) and one consumer (the main loop), each owning one index. Only atomic loads and
//! stores are used, so it works on the Cortex-M0+, which has no atomic read-modify-write.

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// One captured edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Low 32 bits of the microsecond timer at capture; see [`Edge::time_us`].
    pub t_us_low: u32,
    /// GPIO number that fired.
    pub pin: u8,
    /// `GPIO_IN` snapshot at capture (bits 0–23: GPIO 0–23).
    pub levels: u32,
}

impl Edge {
    /// Level of `pin` in the snapshot.
    pub fn level(&self, pin: u8) -> bool {
        pin < 24 && self.levels & (1 << pin) != 0
    }

    /// The full 64-bit capture time, given the timer's current value. Edges are drained within
    /// milliseconds, far less than the 71 minutes after which the low 32 bits wrap.
    pub fn time_us(&self, now_us: u64) -> u64 {
        let age = (now_us as u32).wrapping_sub(self.t_us_low);
        now_us.saturating_sub(u64::from(age))
    }
}

/// Single-producer single-consumer queue of [`Edge`]s with `N` slots (a power of two, so the
/// free-running indices stay consistent when they wrap).
#[derive(Debug)]
pub struct EdgeQueue<const N: usize> {
    times: [AtomicU32; N],
    infos: [AtomicU32; N],
    /// Next slot to read; written by the consumer only.
    head: AtomicUsize,
    /// Next slot to write; written by the producer only.
    tail: AtomicUsize,
    /// Edges lost because the queue was full; written by the producer only.
    overflows: AtomicU32,
}

impl<const N: usize> Default for EdgeQueue<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> EdgeQueue<N> {
    const POWER_OF_TWO: () = assert!(N.is_power_of_two(), "EdgeQueue size must be a power of two");

    /// An empty queue; `const` so it can be a `static` shared with the interrupt handler.
    pub const fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::POWER_OF_TWO;
        EdgeQueue {
            times: [const { AtomicU32::new(0) }; N],
            infos: [const { AtomicU32::new(0) }; N],
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
            overflows: AtomicU32::new(0),
        }
    }

    /// Producer side (the interrupt handler only). Returns `false` and counts an overflow when
    /// the queue is full: losing the newest edge is the only option that never blocks.
    pub fn push(&self, edge: Edge) -> bool {
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        if tail.wrapping_sub(head) >= N {
            let lost = self.overflows.load(Ordering::Relaxed).wrapping_add(1);
            self.overflows.store(lost, Ordering::Relaxed);
            return false;
        }
        let slot = tail % N;
        let info = (u32::from(edge.pin) << 24) | (edge.levels & 0x00FF_FFFF);
        if let (Some(t), Some(i)) = (self.times.get(slot), self.infos.get(slot)) {
            t.store(edge.t_us_low, Ordering::Relaxed);
            i.store(info, Ordering::Relaxed);
        }
        // Release: the slot contents become visible before the new tail does.
        self.tail.store(tail.wrapping_add(1), Ordering::Release);
        true
    }

    /// Consumer side (the main loop only).
    pub fn pop(&self) -> Option<Edge> {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Acquire);
        if head == tail {
            return None;
        }
        let slot = head % N;
        let t_us_low = self.times.get(slot)?.load(Ordering::Relaxed);
        let info = self.infos.get(slot)?.load(Ordering::Relaxed);
        // Release: the slot is read before the producer may reuse it.
        self.head.store(head.wrapping_add(1), Ordering::Release);
        Some(Edge {
            t_us_low,
            pin: (info >> 24) as u8,
            levels: info & 0x00FF_FFFF,
        })
    }

    /// Edges lost to a full queue.
    pub fn overflows(&self) -> u32 {
        self.overflows.load(Ordering::Relaxed)
    }

    /// Edges waiting.
    pub fn len(&self) -> usize {
        self.tail
            .load(Ordering::Acquire)
            .wrapping_sub(self.head.load(Ordering::Acquire))
    }

    /// True when no edge is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::thread;

    #[test]
    fn fifo_order_and_overflow() {
        let q: EdgeQueue<4> = EdgeQueue::new();
        for i in 0..6u32 {
            q.push(Edge {
                t_us_low: i,
                pin: 2,
                levels: 1 << 2,
            });
        }
        assert_eq!(q.overflows(), 2);
        let got: std::vec::Vec<u32> = core::iter::from_fn(|| q.pop())
            .map(|e| e.t_us_low)
            .collect();
        assert_eq!(got, [0, 1, 2, 3]);
        assert!(q.is_empty());
    }

    #[test]
    fn time_reconstruction_across_low_word_wrap() {
        let now = (5u64 << 32) + 10;
        let e = Edge {
            t_us_low: u32::MAX - 5,
            pin: 3,
            levels: 0,
        };
        assert_eq!(e.time_us(now), (5u64 << 32) - 6);
        assert!(!e.level(3));
    }

    #[test]
    fn concurrent_producer_consumer_loses_nothing_it_accepted() {
        static QUEUE: EdgeQueue<64> = EdgeQueue::new();
        let q = &QUEUE;
        let total = 200_000u32;
        let producer = thread::spawn(move || {
            let mut accepted = std::vec::Vec::new();
            for i in 0..total {
                if q.push(Edge {
                    t_us_low: i,
                    pin: (i % 24) as u8,
                    levels: i & 0xFF_FFFF,
                }) {
                    accepted.push(i);
                }
            }
            accepted
        });
        let mut local = std::vec::Vec::new();
        loop {
            if let Some(e) = q.pop() {
                assert_eq!(e.levels, e.t_us_low & 0xFF_FFFF);
                assert_eq!(u32::from(e.pin), e.t_us_low % 24);
                local.push(e.t_us_low);
            } else if producer.is_finished() && q.is_empty() {
                break;
            }
        }
        let accepted = producer.join().unwrap();
        assert_eq!(local, accepted);
        assert_eq!(accepted.len() as u32 + q.overflows(), total);
    }
}
