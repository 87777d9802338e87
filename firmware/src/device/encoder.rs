//! Quadrature (A/B) decoding of the treadmill encoder, ×4: every edge of either channel counts.

/// Step produced by one sample of the A/B lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No change (or the first sample, which only establishes the state).
    None,
    /// One count forward (A leads B).
    Forward,
    /// One count backward (B leads A).
    Backward,
    /// Both lines changed at once: an edge was missed, the direction is unknown.
    Invalid,
}

/// Decoder state. Forward is the Gray sequence `AB = 00 → 10 → 11 → 01 → 00`, i.e. A leads B.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quadrature {
    /// `A << 1 | B` of the last sample; `None` until the first one.
    state: Option<u8>,
    position: i32,
    errors: u32,
}

/// Indexed by `previous << 2 | current`. Adjacent Gray codes are ±1, identical codes 0, and the
/// two codes that differ in both bits are impossible within one sample.
const TRANSITIONS: [Step; 16] = {
    use Step::{Backward as B, Forward as F, Invalid as X, None as N};
    [
        // previous 00: to 00, 01, 10, 11
        N, B, F, X, //
        // previous 01
        F, N, X, B, //
        // previous 10
        B, X, N, F, //
        // previous 11
        X, F, B, N,
    ]
};

impl Quadrature {
    /// A decoder that has not seen a sample yet.
    pub const fn new() -> Self {
        Quadrature {
            state: None,
            position: 0,
            errors: 0,
        }
    }

    /// Feeds the current levels of the A and B lines (call on every edge of either line, and
    /// once at start-up with the idle levels). Returns the step taken.
    pub fn update(&mut self, a: bool, b: bool) -> Step {
        let current = (u8::from(a) << 1) | u8::from(b);
        let Some(previous) = self.state.replace(current) else {
            return Step::None;
        };
        let step = TRANSITIONS
            .get(usize::from((previous << 2) | current))
            .copied();
        match step {
            Some(Step::Forward) => self.position = self.position.wrapping_add(1),
            Some(Step::Backward) => self.position = self.position.wrapping_sub(1),
            Some(Step::Invalid) => self.errors = self.errors.wrapping_add(1),
            Some(Step::None) | None => {}
        }
        step.unwrap_or(Step::None)
    }

    /// Position in counts (four per encoder line), wrapping at the `i32` range.
    pub const fn position(&self) -> i32 {
        self.position
    }

    /// Overwrites the position (e.g. zero at the start of a session).
    pub fn set_position(&mut self, position: i32) {
        self.position = position;
    }

    /// Transitions where both lines changed at once (missed edges).
    pub const fn errors(&self) -> u32 {
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORWARD: [(bool, bool); 4] = [(true, false), (true, true), (false, true), (false, false)];

    #[test]
    fn full_cycles_both_ways() {
        let mut q = Quadrature::new();
        assert_eq!(q.update(false, false), Step::None);
        for _ in 0..10 {
            for (a, b) in FORWARD {
                assert_eq!(q.update(a, b), Step::Forward);
            }
        }
        assert_eq!(q.position(), 40);
        for _ in 0..15 {
            for (a, b) in FORWARD
                .iter()
                .rev()
                .skip(1)
                .chain(core::iter::once(&(false, false)))
            {
                assert_eq!(q.update(*a, *b), Step::Backward);
            }
        }
        assert_eq!(q.position(), -20);
        assert_eq!(q.errors(), 0);
    }

    #[test]
    fn double_changes_are_errors_not_steps() {
        let mut q = Quadrature::new();
        q.update(false, false);
        assert_eq!(q.update(true, true), Step::Invalid);
        assert_eq!(q.update(true, true), Step::None);
        assert_eq!(q.position(), 0);
        assert_eq!(q.errors(), 1);
    }
}
