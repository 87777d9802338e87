//! What is on screen at each flip: gray, a playing clip, or a held frame. Shared by the presenter
//! and the virtual display so both follow the same rules.
//!
//! Flips sit on a grid, flip `k` due at `k / refresh_hz`. A clip that starts at flip `k0` shows its
//! frame `floor((k - k0) * rate / refresh)` at flip `k`: timing follows the refresh grid, so a
//! missed flip skips stimulus frames instead of stretching the clip (like a vsync-locked display).

/// Content of one flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Gray,
    Frame { clip: u32, frame: usize },
}

impl Content {
    /// `(clip, frame)` as reported: clip -1 for gray.
    pub fn report(self) -> (i64, u32) {
        match self {
            Content::Gray => (-1, 0),
            Content::Frame { clip, frame } => (clip as i64, frame as u32),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Gray,
    Playing {
        clip: u32,
        frames: usize,
        start: u64,
        ratio: f64,
    },
    Still {
        clip: u32,
        frame: usize,
    },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    clip: u32,
    frames: usize,
    at: Option<f64>,
    ratio: f64,
}

#[derive(Debug, Clone)]
pub struct Player {
    refresh_hz: f64,
    state: State,
    pending: Option<Pending>,
}

impl Player {
    pub fn new(refresh_hz: f64) -> Self {
        Player {
            refresh_hz,
            state: State::Gray,
            pending: None,
        }
    }

    /// Schedules `clip` (of `frames` frames, at `rate_hz`) to start at the next flip, or at the
    /// flip nearest `at`; what is on screen stays until then. Replaces an earlier pending play.
    pub fn play(&mut self, clip: u32, frames: usize, at: Option<f64>, rate_hz: f64) {
        self.pending = Some(Pending {
            clip,
            frames,
            at,
            ratio: rate_hz / self.refresh_hz,
        });
    }

    /// Holds one frame from the next flip on.
    pub fn show(&mut self, clip: u32, frame: usize) {
        self.pending = None;
        self.state = State::Still { clip, frame };
    }

    /// Gray from the next flip on (cancels a pending play).
    pub fn gray(&mut self) {
        self.pending = None;
        self.state = State::Gray;
    }

    /// Gray, with nothing pending.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Gray) && self.pending.is_none()
    }

    /// Content of flip `k`, due at `t_k` (seconds, the presenter's clock).
    pub fn content(&mut self, k: u64, t_k: f64) -> Content {
        if let Some(p) = self.pending {
            let half = 0.5 / self.refresh_hz;
            if p.at.is_none_or(|a| t_k >= a - half) {
                self.state = State::Playing {
                    clip: p.clip,
                    frames: p.frames,
                    start: k,
                    ratio: p.ratio,
                };
                self.pending = None;
            }
        }
        match self.state {
            State::Gray => Content::Gray,
            State::Still { clip, frame } => Content::Frame { clip, frame },
            State::Playing {
                clip,
                frames,
                start,
                ratio,
            } => {
                let i = ((k.saturating_sub(start)) as f64 * ratio + 1e-9).floor() as usize;
                if i >= frames {
                    self.state = State::Gray;
                    Content::Gray
                } else {
                    Content::Frame { clip, frame: i }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_at_half_the_refresh_shows_each_frame_twice_then_gray() {
        let mut p = Player::new(60.0);
        assert_eq!(p.content(0, 0.0), Content::Gray);
        p.play(7, 3, None, 30.0);
        let got: Vec<(i64, u32)> = (1..9)
            .map(|k| p.content(k, k as f64 / 60.0).report())
            .collect();
        assert_eq!(
            got,
            vec![
                (7, 0),
                (7, 0),
                (7, 1),
                (7, 1),
                (7, 2),
                (7, 2),
                (-1, 0),
                (-1, 0)
            ]
        );
    }

    #[test]
    fn timed_play_starts_at_the_nearest_flip_and_skips_on_missed_flips() {
        let mut p = Player::new(100.0);
        p.play(1, 10, Some(0.1), 100.0);
        assert_eq!(p.content(9, 0.09), Content::Gray);
        assert_eq!(p.content(10, 0.10).report(), (1, 0));
        // flips 11..13 missed: the clip keeps time
        assert_eq!(p.content(14, 0.14).report(), (1, 4));
        p.show(1, 2);
        assert_eq!(p.content(15, 0.15).report(), (1, 2));
        assert_eq!(p.content(99, 0.99).report(), (1, 2));
        p.gray();
        assert!(p.is_idle());
    }
}
