//! `FrameRing`: a single-producer single-consumer lock-free ring of preallocated frame slots.
//!
//! Two `ringbuf` queues carry boxed slots in a circle: `full` from producer to consumer and `free`
//! back. A slot is allocated once, at construction, and then only moves between the two queues, so
//! pushing and popping a frame never allocates and never takes a lock (invariant of the hot path).
//!
//! Overflow policy is the producer's, chosen per ring:
//! - [`Overflow::Block`]: the recorder's ring. A frame is never dropped; when no slot is free the
//!   producer waits (back-pressure) and the ring counts a back-pressure event and records its fill
//!   level so the daemon can raise an alarm.
//! - [`Overflow::DropNewest`]: the analysis ring. When no slot is free the incoming frame is not
//!   queued and is counted as skipped; the consumer may also jump to the newest queued frame
//!   ([`FrameConsumer::pop_newest`]), counting every older frame it passes over. Every frame pushed
//!   is therefore either popped or counted as skipped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crossbeam::utils::{Backoff, CachePadded};
use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

/// One frame in flight.
#[derive(Debug)]
pub struct FrameSlot {
    /// Frame index in the session.
    pub index: u64,
    /// Rig-clock time of the frame, seconds.
    pub time: f64,
    /// When the producer pushed it (for queueing latency).
    pub pushed_at: Instant,
    /// What the mouse saw and did at the frame (set by the producer before `commit`).
    pub context: Option<crate::acquire::FrameContext>,
    pub pixels: Box<[u16]>,
}

/// What the producer does when no slot is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Wait for the consumer (never drop).
    Block,
    /// Skip the incoming frame and count it.
    DropNewest,
}

/// Counters shared by both ends; each on its own cache line so the two threads do not contend.
#[derive(Debug, Default)]
pub struct RingCounters {
    pub pushed: CachePadded<AtomicU64>,
    pub popped: CachePadded<AtomicU64>,
    /// Frames not analysed: dropped by the producer or passed over by `pop_newest`.
    pub skipped: CachePadded<AtomicU64>,
    /// Times a `Block` producer found the ring full and had to wait.
    pub backpressure_events: CachePadded<AtomicU64>,
    /// Total time a `Block` producer waited, microseconds.
    pub backpressure_wait_us: CachePadded<AtomicU64>,
    /// Highest number of queued frames seen by the producer.
    pub max_fill: CachePadded<AtomicU64>,
    closed: AtomicBool,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RingStats {
    pub slots: usize,
    pub pushed: u64,
    pub popped: u64,
    pub skipped: u64,
    pub backpressure_events: u64,
    pub backpressure_wait_us: u64,
    pub max_fill: u64,
}

pub struct FrameProducer {
    full: HeapProd<Box<FrameSlot>>,
    free: HeapCons<Box<FrameSlot>>,
    counters: Arc<RingCounters>,
    policy: Overflow,
    slots: usize,
    consumer_thread: Option<Thread>,
    /// A slot taken by `begin` and not yet committed.
    staged: Option<Box<FrameSlot>>,
}

pub struct FrameConsumer {
    full: HeapCons<Box<FrameSlot>>,
    free: HeapProd<Box<FrameSlot>>,
    counters: Arc<RingCounters>,
    slots: usize,
    producer_thread: Option<Thread>,
}

/// Result of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// `DropNewest` ring was full; the frame was counted as skipped.
    Skipped,
}

/// Makes a ring of `slots` frames of `pixels` u16 each.
pub fn frame_ring(slots: usize, pixels: usize, policy: Overflow) -> (FrameProducer, FrameConsumer) {
    let slots = slots.max(2);
    let (full_p, full_c) = HeapRb::<Box<FrameSlot>>::new(slots).split();
    let (mut free_p, free_c) = HeapRb::<Box<FrameSlot>>::new(slots).split();
    for _ in 0..slots {
        let slot = Box::new(FrameSlot {
            index: 0,
            time: 0.0,
            pushed_at: Instant::now(),
            context: None,
            pixels: vec![0u16; pixels].into_boxed_slice(),
        });
        // Capacity equals the slot count, so this cannot fail.
        let _ = free_p.try_push(slot);
    }
    let counters = Arc::new(RingCounters::default());
    (
        FrameProducer {
            full: full_p,
            free: free_c,
            counters: counters.clone(),
            policy,
            slots,
            consumer_thread: None,
            staged: None,
        },
        FrameConsumer {
            full: full_c,
            free: free_p,
            counters,
            slots,
            producer_thread: None,
        },
    )
}

impl RingCounters {
    fn snapshot(&self, slots: usize) -> RingStats {
        RingStats {
            slots,
            pushed: self.pushed.load(Ordering::Relaxed),
            popped: self.popped.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            backpressure_events: self.backpressure_events.load(Ordering::Relaxed),
            backpressure_wait_us: self.backpressure_wait_us.load(Ordering::Relaxed),
            max_fill: self.max_fill.load(Ordering::Relaxed),
        }
    }
}

impl FrameProducer {
    /// Lets the producer wake a consumer parked in [`FrameConsumer::wait`].
    pub fn set_consumer_thread(&mut self, t: Thread) {
        self.consumer_thread = Some(t);
    }

    /// Frames queued now.
    pub fn fill(&self) -> usize {
        self.full.occupied_len()
    }

    pub fn stats(&self) -> RingStats {
        self.counters.snapshot(self.slots)
    }

    /// Shared counters (for a monitor thread).
    pub fn counters(&self) -> Arc<RingCounters> {
        self.counters.clone()
    }

    /// Takes a free slot for the caller to fill in place, then `commit`. With `Block`, waits for a
    /// slot; with `DropNewest`, returns `None` when the ring is full and counts the frame as skipped.
    /// A slot begun and not committed stays staged for the next `begin`.
    pub fn begin(&mut self) -> Option<&mut FrameSlot> {
        if self.staged.is_none() {
            self.staged = match self.free.try_pop() {
                Some(s) => Some(s),
                None => match self.policy {
                    Overflow::DropNewest => {
                        self.counters.pushed.fetch_add(1, Ordering::Relaxed);
                        self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                    Overflow::Block => Some(self.wait_for_slot()),
                },
            };
        }
        self.staged.as_deref_mut()
    }

    /// Queues the slot filled since `begin` as frame `index` at rig time `time`.
    pub fn commit(&mut self, index: u64, time: f64) {
        let Some(mut slot) = self.staged.take() else {
            return;
        };
        slot.index = index;
        slot.time = time;
        slot.pushed_at = Instant::now();
        let _ = self.full.try_push(slot);
        self.counters.pushed.fetch_add(1, Ordering::Relaxed);
        let fill_now = self.full.occupied_len() as u64;
        self.counters
            .max_fill
            .fetch_max(fill_now, Ordering::Relaxed);
        if let Some(t) = &self.consumer_thread {
            t.unpark();
        }
    }

    /// Fills a free slot with `fill` and queues it. With `Block`, waits for a slot; with
    /// `DropNewest`, counts the frame as skipped when none is free (and does not call `fill`).
    pub fn push_with(&mut self, index: u64, time: f64, fill: impl FnOnce(&mut [u16])) -> Pushed {
        let mut slot = match self.free.try_pop() {
            Some(s) => s,
            None => match self.policy {
                Overflow::DropNewest => {
                    self.counters.pushed.fetch_add(1, Ordering::Relaxed);
                    self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                    return Pushed::Skipped;
                }
                Overflow::Block => self.wait_for_slot(),
            },
        };
        fill(&mut slot.pixels);
        slot.index = index;
        slot.time = time;
        slot.pushed_at = Instant::now();
        // A slot came from `free`, so `full` (same capacity) has room for it.
        let _ = self.full.try_push(slot);
        self.counters.pushed.fetch_add(1, Ordering::Relaxed);
        let fill_now = self.full.occupied_len() as u64;
        self.counters
            .max_fill
            .fetch_max(fill_now, Ordering::Relaxed);
        if let Some(t) = &self.consumer_thread {
            t.unpark();
        }
        Pushed::Queued
    }

    fn wait_for_slot(&mut self) -> Box<FrameSlot> {
        let start = Instant::now();
        self.counters
            .backpressure_events
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .max_fill
            .fetch_max(self.slots as u64, Ordering::Relaxed);
        let backoff = Backoff::new();
        self.producer_park_hint();
        loop {
            if let Some(s) = self.free.try_pop() {
                let us = start.elapsed().as_micros() as u64;
                self.counters
                    .backpressure_wait_us
                    .fetch_add(us, Ordering::Relaxed);
                return s;
            }
            if backoff.is_completed() {
                thread::park_timeout(Duration::from_micros(200));
            } else {
                backoff.snooze();
            }
        }
    }

    fn producer_park_hint(&self) {
        if let Some(t) = &self.consumer_thread {
            t.unpark();
        }
    }
}

impl Drop for FrameProducer {
    fn drop(&mut self) {
        self.counters.closed.store(true, Ordering::Release);
        if let Some(t) = &self.consumer_thread {
            t.unpark();
        }
    }
}

impl FrameConsumer {
    /// Lets the consumer wake a `Block` producer waiting for a slot.
    pub fn set_producer_thread(&mut self, t: Thread) {
        self.producer_thread = Some(t);
    }

    pub fn stats(&self) -> RingStats {
        self.counters.snapshot(self.slots)
    }

    /// Oldest queued frame, if any.
    pub fn pop(&mut self) -> Option<Box<FrameSlot>> {
        let s = self.full.try_pop()?;
        self.counters.popped.fetch_add(1, Ordering::Relaxed);
        Some(s)
    }

    /// Newest queued frame, if any; every older queued frame is recycled and counted as skipped.
    pub fn pop_newest(&mut self) -> Option<Box<FrameSlot>> {
        let mut newest = self.full.try_pop()?;
        while let Some(next) = self.full.try_pop() {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            let old = std::mem::replace(&mut newest, next);
            self.recycle(old);
        }
        self.counters.popped.fetch_add(1, Ordering::Relaxed);
        Some(newest)
    }

    /// Returns a slot to the producer.
    pub fn recycle(&mut self, slot: Box<FrameSlot>) {
        // Slots only circulate, so `free` always has room for one that came out of `full`.
        let _ = self.free.try_push(slot);
        if let Some(t) = &self.producer_thread {
            t.unpark();
        }
    }

    /// True once the producer is gone and every queued frame was taken.
    pub fn is_finished(&self) -> bool {
        self.counters.closed.load(Ordering::Acquire) && self.full.is_empty()
    }

    /// Waits until a frame may be available (or `timeout` passes): spins and yields briefly first,
    /// because a frame usually follows within microseconds and a park/unpark pair costs two
    /// system calls per frame.
    pub fn wait(&self, timeout: Duration) {
        let backoff = Backoff::new();
        while self.full.is_empty() && !self.counters.closed.load(Ordering::Acquire) {
            if backoff.is_completed() {
                thread::park_timeout(timeout);
                return;
            }
            backoff.snooze();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ring_delivers_every_frame_in_order() {
        let (mut p, mut c) = frame_ring(4, 16, Overflow::Block);
        c.set_producer_thread(thread::current());
        let consumer = thread::spawn(move || {
            let mut seen = Vec::new();
            loop {
                match c.pop() {
                    Some(s) => {
                        assert!(s.pixels.iter().all(|&v| v == s.index as u16));
                        seen.push(s.index);
                        c.recycle(s);
                    }
                    None if c.is_finished() => break,
                    None => c.wait(Duration::from_millis(1)),
                }
            }
            (seen, c.stats())
        });
        p.set_consumer_thread(consumer.thread().clone());
        for i in 0..10_000u64 {
            assert_eq!(p.push_with(i, 0.0, |px| px.fill(i as u16)), Pushed::Queued);
        }
        drop(p);
        let (seen, st) = consumer.join().unwrap();
        assert_eq!(seen, (0..10_000).collect::<Vec<_>>());
        assert_eq!((st.pushed, st.popped, st.skipped), (10_000, 10_000, 0));
    }

    #[test]
    fn drop_ring_accounts_for_every_frame() {
        let (mut p, mut c) = frame_ring(3, 4, Overflow::DropNewest);
        for i in 0..10u64 {
            p.push_with(i, 0.0, |_| {});
        }
        // 3 queued, 7 skipped at the producer; pop_newest passes over 2 more.
        let s = c.pop_newest().unwrap();
        assert_eq!(s.index, 2);
        c.recycle(s);
        let st = c.stats();
        assert_eq!(st.pushed, 10);
        assert_eq!(st.popped + st.skipped, 10);
        assert_eq!(st.skipped, 9);
        assert_eq!(st.max_fill, 3);
    }

    #[test]
    fn full_block_ring_counts_backpressure() {
        let (mut p, mut c) = frame_ring(2, 4, Overflow::Block);
        p.push_with(0, 0.0, |_| {});
        p.push_with(1, 0.0, |_| {});
        let h = thread::spawn(move || {
            // Free a slot only once the producer has found the ring full: a fixed sleep here
            // raced a descheduled producer on a loaded machine (the slot was free before it
            // pushed, so no back-pressure was counted).
            while c.stats().backpressure_events == 0 {
                thread::yield_now();
            }
            let s = c.pop().unwrap();
            c.recycle(s);
            c
        });
        p.push_with(2, 0.0, |_| {}); // waits for the consumer
        let c = h.join().unwrap();
        assert_eq!(c.stats().backpressure_events, 1);
        assert_eq!(p.fill(), 2);
    }
}
