//! The stimulus schedule: which clip each trial shows.
//!
//! The display plays a queue of trials (a clip, then gray) and falls back to the shuffled library
//! when the queue is empty. The scheduler keeps that queue [`AHEAD_S`] seconds deep: it fills it
//! when the run starts and adds one trial each time it sees a trial start in a frame's context,
//! so a decision is made every frame (usually "nothing to do") on the `loop` thread, right after
//! the comparison, and the display never waits for it.
//!
//! Orders: the shuffled library (the display's own default; the scheduler stays idle), a fixed
//! list from the config, or an in-silico plan's best stimuli interleaved at random with the two
//! comparisons a plan is judged against: its control stimuli (same family, same contrast, random
//! parameters) and natural library clips. A running search can replace the plan.

use crossbeam::channel::Sender;

use super::clips::ClipStore;
use super::TrialOnsets;
use crate::acquire::FrameContext;
use crate::session::ClipParams;
use crate::sim::rng::FastRng;

/// Trials queued ahead: enough to cover this much session time, so that a loop running a few
/// seconds behind acquisition (offline, at full speed) never leaves the display without a choice.
pub const AHEAD_S: f64 = 10.0;

/// What the scheduler asks of whoever owns the display.
#[derive(Debug)]
pub enum DisplayCommand {
    /// Add a clip to the library (its id is the next free one, in command order).
    AddClip(Box<(Vec<u8>, ClipParams)>),
    /// Show this clip in the next free trial.
    Enqueue(i32),
}

#[derive(Debug, Clone)]
pub enum Order {
    /// The display's shuffled library; the scheduler does nothing.
    Shuffle,
    /// These clips, cycled.
    List(Vec<i32>),
    /// Plan clips with probability `fraction`; otherwise a control clip with probability
    /// `control_fraction`, else a random clip of `library`.
    Plan {
        plan: Vec<i32>,
        controls: Vec<i32>,
        library: Vec<i32>,
        fraction: f64,
        control_fraction: f64,
    },
}

pub struct Scheduler {
    order: Order,
    /// Library clips and fractions used when a plan arrives while another order runs.
    library: Vec<i32>,
    fraction: f64,
    control_fraction: f64,
    ahead: usize,
    clips: ClipStore,
    tx: Sender<DisplayCommand>,
    rng: FastRng,
    next: usize,
    /// Shuffled decks of the plan's, the controls' and the library's clips: each pool is dealt
    /// without replacement and reshuffled when empty, so that with many targets every target's
    /// stimuli get their share of trials early and evenly, not by the luck of random draws.
    decks: [Vec<i32>; 3],
    onsets: TrialOnsets,
    decisions: u64,
    started: bool,
}

impl Scheduler {
    /// `trial_s`: length of one trial (clip + gray), seconds; `clips`: the session's library, to
    /// which [`Scheduler::add_clip`] adds.
    pub fn new(
        order: Order,
        tx: Sender<DisplayCommand>,
        clips: ClipStore,
        trial_s: f64,
        seed: u64,
    ) -> Self {
        Scheduler {
            order,
            library: Vec::new(),
            fraction: 0.5,
            control_fraction: 0.0,
            ahead: ((AHEAD_S / trial_s.max(1e-3)).ceil() as usize).max(2),
            clips,
            tx,
            rng: FastRng::new(seed ^ 0x5C4E_D01E),
            next: 0,
            decks: Default::default(),
            onsets: TrialOnsets::default(),
            decisions: 0,
            started: false,
        }
    }

    /// Queues the first trials; call before the first frame.
    pub fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        for _ in 0..self.ahead {
            self.queue_one();
        }
    }

    /// The decision for one frame: when a trial started, queue the trial after the queued ones.
    /// Returns the clip queued, if any.
    pub fn on_frame(&mut self, ctx: &FrameContext) -> Option<i32> {
        if self.onsets.is_onset(ctx) {
            self.queue_one()
        } else {
            None
        }
    }

    /// The library clips a plan is interleaved with, the share of plan trials and the share of
    /// control trials among the rest, for a plan that arrives while the order is not (yet) a
    /// plan.
    pub fn with_plan_defaults(
        mut self,
        library: Vec<i32>,
        fraction: f64,
        control_fraction: f64,
    ) -> Self {
        self.library = library;
        self.fraction = fraction;
        self.control_fraction = control_fraction;
        self
    }

    /// Replaces the plan's clips and their controls (e.g. with a refreshed search); later trials
    /// use them. Under another order, the plan takes over, interleaved with the library.
    pub fn set_plan(&mut self, clips: Vec<i32>, control_clips: Vec<i32>) {
        match &mut self.order {
            Order::Plan { plan, controls, .. } => {
                *plan = clips;
                *controls = control_clips;
                self.decks = Default::default();
            }
            _ => {
                self.order = Order::Plan {
                    plan: clips,
                    controls: control_clips,
                    library: self.library.clone(),
                    fraction: self.fraction,
                    control_fraction: self.control_fraction,
                };
                // Trials were queued only as far as the old order went (none for a shuffle).
                if self.decisions == 0 {
                    for _ in 0..self.ahead {
                        self.queue_one();
                    }
                }
            }
        }
    }

    /// Adds a clip to the library (the twin's, the display's and the session's); returns its id,
    /// or None when its size is not the library's or the display is gone.
    pub fn add_clip(&self, frames: Vec<u8>, params: ClipParams) -> Option<i32> {
        let id = self.clips.push(&frames)?;
        self.tx
            .send(DisplayCommand::AddClip(Box::new((frames, params))))
            .ok()?;
        Some(id)
    }

    pub fn decisions(&self) -> u64 {
        self.decisions
    }

    fn pick(&mut self) -> Option<i32> {
        match &self.order {
            Order::Shuffle => None,
            Order::List(l) if l.is_empty() => None,
            Order::List(l) => {
                let c = l[self.next % l.len()];
                self.next += 1;
                Some(c)
            }
            Order::Plan {
                plan,
                controls,
                library,
                fraction,
                control_fraction,
            } => {
                let others = library.is_empty() && controls.is_empty();
                let from_plan = !plan.is_empty() && (others || self.rng.uniform() < *fraction);
                let (pool, which) = if from_plan {
                    (plan, 0)
                } else if !controls.is_empty()
                    && (library.is_empty() || self.rng.uniform() < *control_fraction)
                {
                    (controls, 1)
                } else {
                    (library, 2)
                };
                if pool.is_empty() {
                    return None;
                }
                let deck = &mut self.decks[which];
                if deck.is_empty() {
                    deck.extend_from_slice(pool);
                    // Dealt from the end.
                    self.rng.shuffle(deck);
                }
                deck.pop()
            }
        }
    }

    fn queue_one(&mut self) -> Option<i32> {
        let c = self.pick()?;
        if self.tx.send(DisplayCommand::Enqueue(c)).is_err() {
            return None;
        }
        self.decisions += 1;
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam::channel::unbounded;

    fn store() -> ClipStore {
        ClipStore::new(2, 2, 2)
    }

    fn ctx(clip: i32, f: u32) -> FrameContext {
        FrameContext {
            clip,
            clip_frame: f,
            ..FrameContext::GRAY
        }
    }

    fn drain(rx: &crossbeam::channel::Receiver<DisplayCommand>) -> Vec<i32> {
        rx.try_iter()
            .filter_map(|c| match c {
                DisplayCommand::Enqueue(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_list_is_queued_ahead_and_one_trial_is_added_per_onset() {
        let (tx, rx) = unbounded();
        let mut s = Scheduler::new(Order::List(vec![4, 2, 7]), tx, store(), 5.0, 1);
        s.start();
        assert_eq!(drain(&rx), vec![4, 2]);
        // Trial 1 (clip 4) runs: one decision at its onset, none during it or the gray.
        for f in 0..60 {
            s.on_frame(&ctx(4, f));
        }
        for _ in 0..15 {
            s.on_frame(&ctx(-1, 0));
        }
        assert_eq!(drain(&rx), vec![7]);
        // The same clip back to back is still a new trial.
        s.on_frame(&ctx(2, 0));
        s.on_frame(&ctx(2, 59));
        s.on_frame(&ctx(2, 0));
        assert_eq!(drain(&rx), vec![4, 2]);
        assert_eq!(s.decisions(), 5);
    }

    #[test]
    fn a_plan_is_interleaved_with_controls_and_library_clips_at_the_configured_fractions() {
        let (tx, rx) = unbounded();
        let library: Vec<i32> = (0..24).collect();
        let plan = vec![24, 25, 26];
        let mut s = Scheduler::new(
            Order::Plan {
                plan: plan.clone(),
                controls: vec![30, 31],
                library,
                fraction: 0.25,
                control_fraction: 0.4,
            },
            tx,
            store(),
            2.5,
            3,
        );
        for k in 0..4000 {
            s.on_frame(&ctx(k % 2, 0));
        }
        let got = drain(&rx);
        let from_plan = got.iter().filter(|c| plan.contains(c)).count() as f64;
        let frac = from_plan / got.len() as f64;
        assert!((frac - 0.25).abs() < 0.04, "{frac}");
        // Controls: 40% of the other 75%.
        let control = got.iter().filter(|&&c| c >= 30).count() as f64 / got.len() as f64;
        assert!((control - 0.3).abs() < 0.04, "{control}");
        assert!(got.iter().any(|&c| c < 24));
        // Dealt from decks: each plan clip's count is within one deck of the others'.
        let counts: Vec<usize> = plan
            .iter()
            .map(|p| got.iter().filter(|&c| c == p).count())
            .collect();
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{counts:?}"
        );
        s.set_plan(vec![99], vec![98]);
        for k in 0..400 {
            s.on_frame(&ctx(k % 2, 0));
        }
        let got = drain(&rx);
        assert!(got.contains(&99) && got.contains(&98));
        assert!(!got.iter().any(|c| plan.contains(c) || *c >= 30 && *c < 90));
    }

    #[test]
    fn added_clips_get_the_next_ids_in_every_copy_of_the_library() {
        let (tx, rx) = unbounded();
        let st = store();
        st.push(&[0; 8]);
        let s = Scheduler::new(Order::Shuffle, tx, st.clone(), 2.5, 1);
        let p = ClipParams {
            kind: 4,
            orientation: f32::NAN,
            spatial_frequency: f32::NAN,
            temporal_frequency: f32::NAN,
            contrast: 0.2,
        };
        assert_eq!(s.add_clip(vec![7; 8], p), Some(1));
        assert_eq!(s.add_clip(vec![7; 5], p), None, "wrong size refused");
        let mut buf = [0f32; 4];
        assert!(st.frame_into(1, 1, &mut buf));
        assert_eq!(buf, [7.0; 4]);
        assert!(matches!(rx.try_recv(), Ok(DisplayCommand::AddClip(_))));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_plan_arriving_during_a_shuffle_takes_over() {
        let (tx, rx) = unbounded();
        let mut s = Scheduler::new(Order::Shuffle, tx, store(), 5.0, 1).with_plan_defaults(
            vec![0, 1],
            0.5,
            0.0,
        );
        s.start();
        s.on_frame(&ctx(3, 0));
        assert!(drain(&rx).is_empty());
        s.set_plan(vec![9], Vec::new());
        let first = drain(&rx);
        assert_eq!(first.len(), 2, "the queue is filled at once: {first:?}");
        for k in 0..200 {
            s.on_frame(&ctx(k % 2, 0));
        }
        let got = drain(&rx);
        assert!(got.contains(&9) && got.iter().any(|&c| c < 2), "{got:?}");
    }

    #[test]
    fn shuffle_leaves_the_display_alone() {
        let (tx, rx) = unbounded();
        let mut s = Scheduler::new(Order::Shuffle, tx, store(), 2.5, 1);
        s.start();
        s.on_frame(&ctx(3, 0));
        assert!(drain(&rx).is_empty());
    }
}
