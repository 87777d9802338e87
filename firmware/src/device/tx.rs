//! Outgoing byte queue between the device logic and the serial port.

/// Fixed-capacity FIFO of encoded messages.
///
/// Messages go in whole or not at all: a half-queued message would desynchronise the
/// controller's parser, whereas a dropped one only loses that message (and is counted).
#[derive(Debug, Clone)]
pub struct TxQueue<const N: usize> {
    buf: [u8; N],
    /// Index of the oldest byte.
    head: usize,
    /// Bytes queued; `len <= N`.
    len: usize,
}

impl<const N: usize> Default for TxQueue<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> TxQueue<N> {
    /// An empty queue.
    pub const fn new() -> Self {
        TxQueue {
            buf: [0; N],
            head: 0,
            len: 0,
        }
    }

    /// Bytes queued.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is queued.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Free space in bytes.
    pub const fn free(&self) -> usize {
        N - self.len
    }

    /// Queues `message` if it fits entirely; returns whether it did.
    pub fn push(&mut self, message: &[u8]) -> bool {
        if message.len() > self.free() {
            return false;
        }
        let tail = (self.head + self.len) % N.max(1);
        let first = message.len().min(N - tail);
        let (a, b) = message.split_at(first);
        if let Some(dst) = self.buf.get_mut(tail..tail + a.len()) {
            dst.copy_from_slice(a);
        }
        if let Some(dst) = self.buf.get_mut(..b.len()) {
            dst.copy_from_slice(b);
        }
        self.len += message.len();
        true
    }

    /// Moves up to `out.len()` bytes into `out`; returns how many.
    pub fn pop_into(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len);
        let first = n.min(N - self.head);
        let (a, b) = out.split_at_mut(n).0.split_at_mut(first);
        if let Some(src) = self.buf.get(self.head..self.head + a.len()) {
            a.copy_from_slice(src);
        }
        if let Some(src) = self.buf.get(..b.len()) {
            b.copy_from_slice(src);
        }
        self.head = (self.head + n) % N.max(1);
        self.len -= n;
        if self.len == 0 {
            self.head = 0;
        }
        n
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::TxQueue;

    #[test]
    fn wraps_around_and_refuses_partial_messages() {
        let mut q: TxQueue<8> = TxQueue::new();
        assert!(q.push(&[1, 2, 3, 4, 5]));
        let mut out = [0u8; 3];
        assert_eq!(q.pop_into(&mut out), 3);
        assert_eq!(out, [1, 2, 3]);
        assert!(q.push(&[6, 7, 8, 9, 10])); // wraps
        assert!(!q.push(&[11, 12])); // 7 queued, 1 free
        let mut all = [0u8; 16];
        assert_eq!(q.pop_into(&mut all), 7);
        assert_eq!(&all[..7], &[4, 5, 6, 7, 8, 9, 10]);
        assert!(q.is_empty());
    }
}
