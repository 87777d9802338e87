//! The in-silico worker of `rig run`: whenever the objective or its targets change (from
//! `rig run --insilico` at start, or `rig status --objective ... --targets ...` while the session
//! runs), it searches the twin on a background thread (`insilico::spawn`) and hands the plan's
//! best stimuli to the `loop` thread, whose scheduler adds them to the library and interleaves
//! them with library clips from then on. The search gets one worker thread and a time limit, so
//! acquisition, recording and extraction keep their cores.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::Sender;
use serde::Serialize;

use super::plan::{plan_clips, PlanClip, CONTROL_SEED};
use crate::config::Backend;
use crate::control::{ControlState, ObjectiveRequest};
use crate::insilico::{self, Objective, SearchOptions};

/// What the worker needs to know once.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub twin: PathBuf,
    pub backend: Backend,
    pub budget: u64,
    pub time_limit_s: f64,
    pub seed: u64,
    pub clip_s: f64,
    pub deg_per_px: f64,
    /// Plan entries per goal handed to the scheduler.
    pub top: usize,
    /// Control stimuli per plan stimulus (`stimulus.plan_controls`).
    pub controls: usize,
    pub frames_per_clip: usize,
    pub height: usize,
    pub width: usize,
}

/// One finished search.
#[derive(Debug, Clone, Serialize)]
pub struct Refresh {
    pub objective: String,
    pub targets: Vec<u32>,
    pub evaluations: u64,
    pub seconds: f64,
    pub stopped_early: bool,
    pub clips: Vec<PlanClip>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerSummary {
    pub refreshes: Vec<Refresh>,
    pub errors: Vec<String>,
}

pub struct Worker {
    handle: Option<JoinHandle<WorkerSummary>>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    /// Starts the worker. It follows the control endpoint's objective slot; `to_loop` takes each
    /// refreshed plan's clips.
    pub fn spawn(
        cfg: WorkerConfig,
        objective: Arc<ControlState>,
        to_loop: Sender<Vec<PlanClip>>,
    ) -> Worker {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::Builder::new()
            .name("insilico-worker".into())
            .spawn(move || work(cfg, objective, to_loop, st))
            .ok();
        Worker { handle, stop }
    }

    /// Stops after the search in progress, if any (its result is dropped); returns what was done.
    pub fn finish(mut self) -> WorkerSummary {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

fn work(
    cfg: WorkerConfig,
    control: Arc<ControlState>,
    to_loop: Sender<Vec<PlanClip>>,
    stop: Arc<AtomicBool>,
) -> WorkerSummary {
    let mut summary = WorkerSummary::default();
    let mut done: Option<ObjectiveRequest> = None;
    while !stop.load(Ordering::Relaxed) {
        let want = control.objective.lock().ok().and_then(|o| o.clone());
        let Some(req) = want.filter(|r| Some(r) != done.as_ref()) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        done = Some(req.clone());
        let obj = match Objective::parse(&req.objective) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("in-silico objective refused: {e}");
                summary.errors.push(e.to_string());
                continue;
            }
        };
        let opts = SearchOptions {
            objective: obj,
            targets: req.targets.clone(),
            budget: cfg.budget,
            seed: cfg.seed,
            clip_s: cfg.clip_s,
            deg_per_px: cfg.deg_per_px,
            plan_size: cfg.top,
            threads: 1,
            time_limit_s: Some(cfg.time_limit_s),
            ..Default::default()
        };
        tracing::info!(objective = %req.objective, targets = ?req.targets, "in-silico search started");
        let bg = match insilico::spawn(cfg.twin.clone(), cfg.backend, opts) {
            Ok(b) => b,
            Err(e) => {
                summary.errors.push(e.to_string());
                continue;
            }
        };
        while !bg.is_finished() && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !bg.is_finished() {
            // The session ended first; the search thread finishes on its own (bounded by its
            // time limit) and nobody waits for it.
            break;
        }
        let plan = match bg.join() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("in-silico search failed: {e}");
                summary.errors.push(e.to_string());
                continue;
            }
        };
        match plan_clips(
            &plan,
            &cfg.twin,
            cfg.top,
            (cfg.frames_per_clip, cfg.height, cfg.width),
            cfg.controls,
            cfg.seed ^ CONTROL_SEED,
        ) {
            Ok(clips) => {
                tracing::info!(
                    evaluations = plan.evaluations,
                    seconds = %format_args!("{:.1}", plan.elapsed_s),
                    stimuli = clips.len(),
                    "in-silico plan refreshed"
                );
                summary.refreshes.push(Refresh {
                    objective: req.objective.clone(),
                    targets: req.targets.clone(),
                    evaluations: plan.evaluations,
                    seconds: plan.elapsed_s,
                    stopped_early: plan.stopped_early,
                    clips: clips.clone(),
                });
                if to_loop.send(clips).is_err() {
                    break;
                }
            }
            Err(e) => summary.errors.push(e),
        }
    }
    summary
}
