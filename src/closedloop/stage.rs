//! The `loop` thread: twin step, comparison and scheduling decision for each analysed frame.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};

use super::{FrameStamp, LoopInput, LoopOutput, LoopStage, LoopSummary, TwinSummary};
use crate::live::feed::{OnScreen, PlanEntry};
use crate::live::latency::{Latencies, ST_CLOSED_LOOP, ST_COMPARE, ST_TWIN_STEP};
use crate::live::LiveCounters;

/// How old (since its arrival) the frame in hand may be while the loop still steps the twin on
/// the frames it did not get: beyond this the loop is behind real time, and catching up would
/// only put it further behind (those frames are counted as not stepped). Not applied during
/// start-up.
pub const CATCH_UP_WINDOW: Duration = Duration::from_millis(500);

/// A twin error stops the twin, not the session: logged once, reported in the summary.
fn twin_stopped(frame: u64, e: &crate::twin::TwinError) -> String {
    tracing::error!(
        frame,
        "twin stopped: {e}; recording and extraction continue"
    );
    format!("frame {frame}: {e}")
}

pub(crate) struct LoopResult {
    pub latencies: Latencies,
    pub summary: LoopSummary,
}

/// Runs until the analysis thread hangs up. `input`/`input_pool` and `output`/`output_pool` are
/// the two recycled-buffer channel pairs (analysis -> loop, loop -> sink); `contexts` carries
/// every acquired frame's context, ahead of its analysis.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    mut stage: LoopStage,
    contexts: Receiver<FrameStamp>,
    input: Receiver<Box<LoopInput>>,
    input_pool: Sender<Box<LoopInput>>,
    output: Sender<Box<LoopOutput>>,
    output_pool: Receiver<Box<LoopOutput>>,
    sink: thread::Thread,
    live: Arc<LiveCounters>,
) -> LoopResult {
    let mut lat = Latencies::live(live.latency.clone());
    if let (Some(feed), Some(tw)) = (stage.feed.as_ref(), stage.twin.as_ref()) {
        feed.set_neurons(tw.roi_ids(), stage.feed_window, tw.stimulus_shape());
    }
    let mut frames = 0u64;
    let mut stepped = 0u64;
    let mut without_context = 0u64;
    let mut caught_up = 0u64;
    let mut not_stepped = 0u64;
    let mut first_not_stepped: Option<u64> = None;
    let mut held: Option<FrameStamp> = None;
    let mut error: Option<String> = None;
    let mut added: Vec<Vec<i32>> = Vec::new();
    for msg in input.iter() {
        frames += 1;
        let Ok(mut out) = output_pool.recv() else {
            tracing::warn!("closed loop: the recorder is gone; the loop stops");
            let _ = input_pool.send(msg);
            break;
        };
        out.frame_index = msg.frame_index;
        out.time = msg.time;
        out.trial = None;
        out.predicted.clear();
        out.fidelity = Default::default();
        // The frames before this one that the loop did not get: the twin and the schedule still
        // follow their stimulus.
        loop {
            let c = match held.take() {
                Some(c) => c,
                None => match contexts.try_recv() {
                    Ok(c) => c,
                    Err(_) => break,
                },
            };
            if c.index >= msg.frame_index {
                if c.index > msg.frame_index {
                    held = Some(c);
                }
                break;
            }
            let Some(ctx) = c.context else {
                if stage.twin.is_some() {
                    without_context += 1;
                }
                continue;
            };
            if let (Some(tw), None) = (stage.twin.as_mut(), &error) {
                // Start-up frames (the extractor's reference warm-up) are caught up on whatever
                // their age: the backlog behind the warm-up is a one-off.
                if msg.startup || msg.arrived.elapsed() < CATCH_UP_WINDOW {
                    let t0 = Instant::now();
                    if !stage.delay.is_zero() {
                        thread::sleep(stage.delay);
                    }
                    match tw.advance(c.index, &ctx) {
                        Ok(trial) => {
                            lat.record(ST_TWIN_STEP, t0.elapsed());
                            caught_up += 1;
                            if out.trial.is_none() {
                                out.trial = trial;
                            }
                        }
                        Err(e) => error = Some(twin_stopped(c.index, &e)),
                    }
                } else {
                    not_stepped += 1;
                    first_not_stepped = first_not_stepped.or(Some(c.index));
                }
            }
            if let Some(s) = stage.scheduler.as_mut() {
                s.on_frame(&ctx);
            }
        }
        if let (Some(tw), None) = (stage.twin.as_mut(), &error) {
            match msg.context {
                None => without_context += 1,
                Some(ctx) => {
                    let t0 = Instant::now();
                    if !stage.delay.is_zero() {
                        thread::sleep(stage.delay);
                    }
                    let delayed = t0.elapsed();
                    out.predicted.resize(tw.roi_ids().len(), 0.0);
                    match tw.step(msg.frame_index, &ctx, &msg.measured, &mut out.predicted) {
                        Ok((fid, trial, twin_time)) => {
                            lat.record(ST_TWIN_STEP, delayed + twin_time);
                            lat.record(
                                ST_COMPARE,
                                t0.elapsed().saturating_sub(delayed + twin_time),
                            );
                            out.fidelity = fid;
                            if trial.is_some() {
                                out.trial = trial;
                            }
                            stepped += 1;
                            live.twin_frames.store(stepped, Ordering::Relaxed);
                            if fid.population.is_finite() {
                                live.twin_fidelity_bits
                                    .store(fid.population.to_bits(), Ordering::Relaxed);
                            }
                            live.twin_alarm.store(fid.alarm, Ordering::Relaxed);
                            if let Some(feed) = &stage.feed {
                                let on_screen = OnScreen {
                                    clip: ctx.clip,
                                    clip_frame: ctx.clip_frame,
                                    running_speed: ctx.running_speed,
                                    trials: tw.trials(),
                                };
                                feed.frame(
                                    msg.frame_index,
                                    msg.time,
                                    &out.predicted,
                                    tw.measured(),
                                    fid.population,
                                    fid.alarm,
                                    on_screen,
                                    tw.stimulus(),
                                );
                            }
                        }
                        Err(e) => {
                            error = Some(twin_stopped(msg.frame_index, &e));
                            out.predicted.clear();
                        }
                    }
                }
            }
        }
        if let (Some(feed), Some(t)) = (stage.feed.as_ref(), out.trial.as_ref()) {
            feed.trial(t.clip, &t.predicted, &t.measured);
        }
        if let (Some(s), Some(up)) = (stage.scheduler.as_mut(), stage.plan_updates.as_ref()) {
            // A refreshed plan: its stimuli and their controls join the library and replace the
            // plan's clips.
            while let Ok(clips) = up.try_recv() {
                let (mut ids, mut plan, mut controls) = (Vec::new(), Vec::new(), Vec::new());
                let mut entries = Vec::new();
                let frame_len = stage.twin.as_ref().map_or(0, |t| t.stimulus().len());
                for c in clips {
                    let control = c.control_of.is_some();
                    let entry = stage.feed.is_some().then(|| c.feed_entry(-1, frame_len));
                    if let Some(id) = s.add_clip(c.frames, c.clip_params) {
                        if let Some(e) = entry {
                            entries.push(PlanEntry { clip: id, ..e });
                        }
                        ids.push(id);
                        if control { &mut controls } else { &mut plan }.push(id);
                    }
                }
                s.set_plan(plan, controls);
                if let Some(feed) = &stage.feed {
                    feed.set_plan(entries);
                }
                added.push(ids);
                live.plan_refreshes
                    .store(added.len() as u64, Ordering::Relaxed);
            }
        }
        if let (Some(s), Some(ctx)) = (stage.scheduler.as_mut(), msg.context.as_ref()) {
            s.on_frame(ctx);
        }
        if !msg.startup {
            lat.record(ST_CLOSED_LOOP, msg.arrived.elapsed());
        }
        let _ = input_pool.send(msg);
        if output.send(out).is_err() {
            tracing::warn!("closed loop: the recorder is gone; the loop stops");
            break;
        }
        sink.unpark();
    }
    // Frames after the last one the loop got (analysis skipped the end of the run): the twin
    // never saw them.
    if stage.twin.is_some() && error.is_none() {
        for c in held
            .into_iter()
            .chain(contexts.try_iter())
            .filter(|c| c.context.is_some())
        {
            not_stepped += 1;
            first_not_stepped = first_not_stepped.or(Some(c.index));
        }
    }
    let twin = stage.twin.as_ref().map(|tw| TwinSummary {
        model: tw.model().display().to_string(),
        device: tw.device(),
        neurons_compared: tw.roi_ids().len(),
        neurons_in_model: tw.neurons_in_model(),
        frames_stepped: stepped,
        frames_caught_up: caught_up,
        frames_not_stepped: not_stepped,
        first_frame_not_stepped: first_not_stepped,
        frames_without_context: without_context,
        trials: tw.trials(),
        error,
        fidelity: tw.fidelity(),
    });
    LoopResult {
        latencies: lat,
        summary: LoopSummary {
            frames,
            frames_skipped: 0,
            contexts_dropped: 0,
            first_context_dropped: None,
            trials_scheduled: stage.scheduler.as_ref().map_or(0, |s| s.decisions()),
            plan_clips_added: added,
            twin,
        },
    }
}
