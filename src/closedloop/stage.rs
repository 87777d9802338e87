//! The `loop` thread: twin step, comparison and scheduling decision for each analysed frame.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use crossbeam::channel::{Receiver, Sender};

use super::{LoopInput, LoopOutput, LoopStage, LoopSummary, TwinSummary};
use crate::pipeline::latency::Latencies;
use crate::pipeline::{LiveCounters, STAGES, ST_CLOSED_LOOP, ST_COMPARE, ST_TWIN_STEP};

pub(crate) struct LoopResult {
    pub latencies: Latencies,
    pub summary: LoopSummary,
}

/// Runs until the analysis thread hangs up. `input`/`input_pool` and `output`/`output_pool` are
/// the two recycled-buffer channel pairs (analysis -> loop, loop -> sink).
pub(crate) fn run(
    mut stage: LoopStage,
    input: Receiver<Box<LoopInput>>,
    input_pool: Sender<Box<LoopInput>>,
    output: Sender<Box<LoopOutput>>,
    output_pool: Receiver<Box<LoopOutput>>,
    sink: thread::Thread,
    live: Arc<LiveCounters>,
) -> LoopResult {
    let mut lat = Latencies::new(STAGES);
    let mut frames = 0u64;
    let mut stepped = 0u64;
    let mut without_context = 0u64;
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
                            out.trial = trial;
                            stepped += 1;
                            live.twin_frames.store(stepped, Ordering::Relaxed);
                            if fid.population.is_finite() {
                                live.twin_fidelity_bits
                                    .store(fid.population.to_bits(), Ordering::Relaxed);
                            }
                            live.twin_alarm.store(fid.alarm, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::error!(
                                frame = msg.frame_index,
                                "twin stopped: {e}; recording and extraction continue"
                            );
                            error = Some(format!("frame {}: {e}", msg.frame_index));
                            out.predicted.clear();
                        }
                    }
                }
            }
        }
        if let (Some(s), Some(up)) = (stage.scheduler.as_mut(), stage.plan_updates.as_ref()) {
            // A refreshed plan: its stimuli join the library and replace the plan's clips.
            while let Ok(clips) = up.try_recv() {
                let ids: Vec<i32> = clips
                    .into_iter()
                    .filter_map(|c| s.add_clip(c.frames, c.clip_params))
                    .collect();
                s.set_plan(ids.clone());
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
    let twin = stage.twin.as_ref().map(|tw| TwinSummary {
        model: tw.model().display().to_string(),
        device: tw.device(),
        neurons_compared: tw.roi_ids().len(),
        neurons_in_model: tw.neurons_in_model(),
        frames_stepped: stepped,
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
            trials_scheduled: stage.scheduler.as_ref().map_or(0, |s| s.decisions()),
            plan_clips_added: added,
            twin,
        },
    }
}
