//! The streaming pipeline: a frame source feeds two `FrameRing`s, one to the recorder (never drops)
//! and one to the extractor (may skip to the newest frame, and counts what it skipped).
//!
//! Threads and owners:
//! - the caller's thread runs acquisition: it owns the `FrameSource` and both ring producers; it
//!   reads each frame straight into a recorder slot and copies it into an analysis slot;
//! - `analysis` owns the `Extractor` and the analysis ring's consumer; it sends each frame's outputs
//!   to the sink in recycled buffers (a `crossbeam` channel pair), so it allocates nothing per frame;
//! - `sink` owns the `SessionWriter` and the ground-truth scorer; it writes every frame from the
//!   recorder ring and every trace row from the analysis thread.
//!
//! An analysis error (bad numbers in a frame) is logged and counted, and analysis stops; recording
//! goes on. A recorder error (e.g. a full disk) stops the run with that error.

pub mod events;
pub mod priority;
pub mod replay;
pub mod score;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, Receiver, Sender, TryRecvError};
use serde::Serialize;
use thiserror::Error;

use crate::acquire::{AcquireError, FrameContext, FrameSource};
use crate::closedloop::{
    self, FrameStamp, LoopInput, LoopOutput, LoopStage, LoopSummary, CONTEXT_BACKLOG,
};
use crate::extract::{ExtractError, Extractor, FrameOutput};
use crate::live::latency::*;
use crate::live::LiveCounters;
use crate::ring::{frame_ring, FrameConsumer, Overflow, RingStats};
use crate::session::{SessionError, SessionWriter, TraceRow};
use events::{EventReceiver, SessionEvent};
use score::{Accuracy, GroundTruthScorer};

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Acquire(#[from] AcquireError),
    #[error("recorder: {0}")]
    Record(#[from] SessionError),
    #[error("pipeline thread `{0}` panicked")]
    Panicked(&'static str),
}

/// How the pipeline treats a slow analysis stage.
#[derive(Debug, Clone, Copy)]
pub struct PipelineOptions {
    /// Slots in each ring.
    pub ring_slots: usize,
    /// `true`: acquisition waits for analysis (offline replay, reproducible traces); `false`:
    /// analysis skips to the newest frame (live sessions, `--realtime`).
    pub lossless_analysis: bool,
    /// Nominal frame rate, for the real-time factor.
    pub frame_rate_hz: f64,
}

/// What the sink does with frames, events and traces.
#[derive(Default)]
pub struct Sink {
    pub writer: Option<SessionWriter>,
    pub scorer: Option<GroundTruthScorer>,
    /// Events from the source (flips, behaviour, sync, ground truth), recorded in arrival order.
    pub events: Option<EventReceiver>,
}

/// Builds the extractor from the first frames of the stream (its motion reference), inside the
/// analysis thread, so a live run and a replay of its file build the same extractor.
pub type ExtractorFactory = Box<dyn FnOnce(&[Vec<u16>]) -> Result<Extractor, ExtractError> + Send>;

/// The analysis stage of a run.
pub struct Analysis {
    /// Frames collected for the reference before extraction starts.
    pub reference_frames: usize,
    pub n_rois: usize,
    pub build: ExtractorFactory,
    /// Deliberate extra time per frame (config `extract.analysis_delay_ms`; tests only).
    pub delay: Duration,
    /// The closed loop after extraction (twin, comparison, scheduling), on its own thread.
    pub closed_loop: Option<LoopStage>,
}

/// Shared run controls: set `stop` to end acquisition at the next frame (SIGTERM, `rig status
/// --stop`); the rest of the pipeline drains and the recorder flushes.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    pub stop: Arc<AtomicBool>,
    /// Live counters, for the status endpoint.
    pub live: Arc<LiveCounters>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PipelineSummary {
    pub frames_in: u64,
    pub frames_analysed: u64,
    pub frames_skipped: u64,
    pub frames_recorded: u64,
    /// Frames the recorder did not get: must be 0.
    pub frames_lost: u64,
    pub analysis_errors: u64,
    pub first_analysis_error: Option<String>,
    pub wall_s: f64,
    pub frames_per_s: f64,
    pub realtime_factor: f64,
    pub latency: Vec<StageLatency>,
    pub recorder_ring: RingStats,
    pub analysis_ring: RingStats,
    pub peak_rss_mb: f64,
    pub accuracy: Option<Accuracy>,
    /// The closed-loop stage (twin and comparison), when it ran.
    pub closed_loop: Option<LoopSummary>,
    /// Per-stage latency histograms (stage, bucket upper values in us, counts).
    #[serde(skip)]
    pub histograms: Vec<(String, Vec<u64>, Vec<u64>)>,
}

impl PipelineSummary {
    /// Writes the latency histograms into the session (`latency/<stage>/{value_us,count}`).
    pub fn record_latency(&self, w: &mut SessionWriter) -> Result<(), SessionError> {
        for (stage, v, c) in &self.histograms {
            w.write_latency(stage, v, c)?;
        }
        Ok(())
    }
}

/// One analysed frame on its way to the sink (buffers recycled through the pool).
struct TraceMsg {
    out: FrameOutput,
    time: f64,
    /// Deconvolved rows flushed at the end of the stream, frame-major, with each row's frame.
    tail: Option<(Vec<u64>, Vec<f32>)>,
}

/// Buffers in flight between analysis, the loop and the sink.
const LOOP_BUFFERS: usize = 64;
const INDEX_RING: usize = 4096;

pub use crate::budget::peak_rss_mb;

/// Runs `source` through the rings, the extractor and the sink until the source ends.
/// `progress(frames_in)` is called from the acquisition thread every few frames.
pub fn run(
    mut source: Box<dyn FrameSource>,
    mut analysis: Option<Analysis>,
    sink: &mut Sink,
    opts: PipelineOptions,
    control: &RunControl,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PipelineSummary, PipelineError> {
    let pixels = source.height() * source.width();
    let n_rois = analysis.as_ref().map(|a| a.n_rois).unwrap_or(0);
    let (mut rec_p, mut rec_c) = frame_ring(opts.ring_slots, pixels, Overflow::Block);
    let policy = if opts.lossless_analysis {
        Overflow::Block
    } else {
        Overflow::DropNewest
    };
    let (mut ana_p, mut ana_c) = frame_ring(opts.ring_slots, pixels, policy);
    let _ = control.live.rings.set((rec_p.counters(), ana_p.counters()));
    let (msg_tx, msg_rx) = bounded::<Box<TraceMsg>>(64);
    let (pool_tx, pool_rx) = bounded::<Box<TraceMsg>>(64);
    for _ in 0..64 {
        let m = Box::new(TraceMsg {
            out: FrameOutput::new(n_rois),
            time: 0.0,
            tail: None,
        });
        let _ = pool_tx.send(m);
    }
    // The closed-loop stage, if any, and its two recycled-buffer channel pairs.
    let loop_stage = analysis.as_mut().and_then(|a| a.closed_loop.take());
    let (ctx_tx, ctx_rx) = match loop_stage.is_some() {
        true => {
            let (t, r) = bounded::<FrameStamp>(CONTEXT_BACKLOG);
            (Some(t), Some(r))
        }
        false => (None, None),
    };
    let loop_links = loop_stage.as_ref().map(|st| {
        let m = st.twin.as_ref().map_or(0, |t| t.roi_ids().len());
        let (in_tx, in_rx) = bounded::<Box<LoopInput>>(LOOP_BUFFERS);
        let (in_pool_tx, in_pool_rx) = bounded::<Box<LoopInput>>(LOOP_BUFFERS);
        let (out_tx, out_rx) = bounded::<Box<LoopOutput>>(LOOP_BUFFERS);
        let (out_pool_tx, out_pool_rx) = bounded::<Box<LoopOutput>>(LOOP_BUFFERS);
        for _ in 0..LOOP_BUFFERS {
            let _ = in_pool_tx.send(Box::new(LoopInput {
                frame_index: 0,
                time: 0.0,
                context: None,
                measured: vec![0.0; n_rois],
                arrived: Instant::now(),
                startup: true,
            }));
            let _ = out_pool_tx.send(Box::new(LoopOutput {
                frame_index: 0,
                time: 0.0,
                predicted: Vec::with_capacity(m),
                fidelity: Default::default(),
                trial: None,
            }));
        }
        (
            (in_tx, in_pool_rx),
            (in_rx, in_pool_tx, out_tx, out_pool_rx),
            (out_rx, out_pool_tx),
        )
    });
    let (to_loop, loop_ends, sink_loop_ends) = match loop_links {
        Some((a, l, s)) => (Some(a), Some(l), Some(s)),
        None => (None, None, None),
    };
    let stop = control.stop.clone();
    let started = Instant::now();
    // Live and paced runs care about each frame's latency, offline runs about throughput: only
    // the former keep a CPU for the closed loop (`priority::place_this_thread`).
    let live = !opts.lossless_analysis;

    thread::scope(|scope| {
        // Acquisition runs on a thread of its own, so that a source may set that thread's
        // priority (the simulated microscope steps back, see `priority`) without touching the
        // caller's. It starts once it knows whom to wake (the sink and analysis threads).
        let (go_tx, go_rx) = bounded::<(thread::Thread, thread::Thread)>(1);
        let acq_stop = stop.clone();
        let live_q = control.live.clone();
        let acq_handle = thread::Builder::new()
            .name("acquire".into())
            .spawn_scoped(scope, move || {
                let mut acq = Latencies::live(live_q.latency.clone());
                let mut frames_in = 0u64;
                let mut acq_err = None;
                let mut contexts_dropped = 0u64;
                let mut first_context_dropped = None;
                if let Ok((sink_thread, ana_thread)) = go_rx.recv() {
                    rec_p.set_consumer_thread(sink_thread);
                    ana_p.set_consumer_thread(ana_thread);
                    while !acq_stop.load(Ordering::Relaxed) {
                        let t0 = Instant::now();
                        let Some(slot) = rec_p.begin() else { break };
                        let info = match source.next_frame(&mut slot.pixels) {
                            Ok(Some(info)) => info,
                            Ok(None) => break,
                            Err(e) => {
                                acq_err = Some(e);
                                break;
                            }
                        };
                        acq.record(ST_ACQUIRE, t0.elapsed());
                        // Ahead of the frame's analysis, so the loop has it when the frame
                        // arrives there.
                        if let Some(tx) = &ctx_tx {
                            let stamp = FrameStamp {
                                index: info.index,
                                context: info.context,
                            };
                            if tx.try_send(stamp).is_err() {
                                contexts_dropped += 1;
                                first_context_dropped = first_context_dropped.or(Some(info.index));
                            }
                        }
                        if let Some(a) = ana_p.begin() {
                            a.pixels.copy_from_slice(&slot.pixels);
                            a.context = info.context;
                            ana_p.commit(info.index, info.time);
                        }
                        rec_p.commit(info.index, info.time);
                        frames_in += 1;
                        live_q.frames_in.store(frames_in, Ordering::Relaxed);
                        if frames_in % 16 == 0 {
                            progress(frames_in);
                        }
                    }
                }
                progress(frames_in);
                // Dropping the source closes its event stream, which lets the sink finish.
                drop(source);
                let ana_stats_p = ana_p.stats();
                drop(ana_p);
                drop(rec_p);
                (
                    frames_in,
                    acq,
                    acq_err,
                    (contexts_dropped, first_context_dropped),
                    ana_stats_p,
                )
            })
            .expect("spawn acquisition thread");
        rec_c.set_producer_thread(acq_handle.thread().clone());
        ana_c.set_producer_thread(acq_handle.thread().clone());
        let sink_stop = stop.clone();
        let live_s = control.live.clone();
        let sink_handle = thread::Builder::new()
            .name("sink".into())
            .spawn_scoped(scope, move || {
                priority::lower_this_thread(priority::Yield::Slack);
                if live {
                    priority::place_this_thread(priority::Place::OffClosedLoop);
                }
                sink_loop(
                    sink,
                    rec_c,
                    msg_rx,
                    pool_tx,
                    sink_loop_ends,
                    &sink_stop,
                    &live_s,
                )
            })
            .expect("spawn sink thread");
        let sink_thread = sink_handle.thread().clone();
        let sink_wake = sink_thread.clone();

        let loop_handle = match (loop_stage, loop_ends, ctx_rx) {
            (Some(stage), Some((in_rx, in_pool, out_tx, out_pool)), Some(ctx_rx)) => {
                let to_sink = sink_thread.clone();
                let live_l = control.live.clone();
                Some(
                    thread::Builder::new()
                        .name("loop".into())
                        .spawn_scoped(scope, move || {
                            closedloop::stage::run(
                                stage, ctx_rx, in_rx, in_pool, out_tx, out_pool, to_sink, live_l,
                            )
                        })
                        .expect("spawn loop thread"),
                )
            }
            _ => None,
        };

        let live_a = control.live.clone();
        let ana_handle = thread::Builder::new()
            .name("analysis".into())
            .spawn_scoped(scope, move || {
                if live {
                    priority::place_this_thread(priority::Place::ClosedLoop);
                }
                analysis_loop(
                    live_a,
                    analysis,
                    ana_c,
                    (msg_tx, pool_rx),
                    to_loop,
                    sink_thread,
                    opts.lossless_analysis,
                )
            })
            .expect("spawn analysis thread");
        let _ = go_tx.send((sink_wake, ana_handle.thread().clone()));
        let (frames_in, acq, acq_err, contexts_dropped, ana_stats_p) = acq_handle
            .join()
            .map_err(|_| PipelineError::Panicked("acquisition"))?;
        let ana = ana_handle
            .join()
            .map_err(|_| PipelineError::Panicked("analysis"))?;
        let looped = match loop_handle {
            Some(h) => Some(h.join().map_err(|_| PipelineError::Panicked("loop"))?),
            None => None,
        };
        let sink_out = sink_handle
            .join()
            .map_err(|_| PipelineError::Panicked("sink"))?;
        if let Some(e) = acq_err {
            return Err(e.into());
        }
        let (sink_lat, frames_recorded, rec_stats, accuracy) = sink_out?;
        let mut lat = acq;
        lat.merge(&ana.latencies);
        lat.merge(&sink_lat);
        let closed_loop = looped.map(|l| {
            lat.merge(&l.latencies);
            LoopSummary {
                frames_skipped: ana.loop_skipped,
                contexts_dropped: contexts_dropped.0,
                first_context_dropped: contexts_dropped.1,
                ..l.summary
            }
        });
        let wall = started.elapsed().as_secs_f64();
        let analysis_ring = RingStats {
            max_fill: ana_stats_p.max_fill,
            ..ana.ring
        };
        Ok(PipelineSummary {
            frames_in,
            frames_analysed: ana.analysed,
            frames_skipped: analysis_ring.skipped + ana.skipped_after_error,
            frames_recorded,
            frames_lost: frames_in.saturating_sub(frames_recorded),
            analysis_errors: ana.errors,
            first_analysis_error: ana.first_error,
            wall_s: wall,
            frames_per_s: frames_in as f64 / wall.max(1e-9),
            realtime_factor: frames_in as f64 / opts.frame_rate_hz / wall.max(1e-9),
            latency: lat.report(),
            histograms: lat.buckets(),
            recorder_ring: rec_stats,
            analysis_ring,
            peak_rss_mb: peak_rss_mb(),
            accuracy,
            closed_loop,
        })
    })
}

struct AnalysisResult {
    latencies: Latencies,
    analysed: u64,
    errors: u64,
    first_error: Option<String>,
    skipped_after_error: u64,
    /// Analysed frames the closed loop was too busy to take.
    loop_skipped: u64,
    ring: RingStats,
}

fn analysis_loop(
    live: Arc<LiveCounters>,
    analysis: Option<Analysis>,
    mut ring: FrameConsumer,
    (tx, pool): (Sender<Box<TraceMsg>>, Receiver<Box<TraceMsg>>),
    to_loop: Option<ToLoop>,
    sink: thread::Thread,
    lossless: bool,
) -> AnalysisResult {
    let delay = analysis.as_ref().map(|a| a.delay).unwrap_or_default();
    let mut st = AnalysisState {
        lat: Latencies::live(live.latency.clone()),
        live,
        delay,
        analysed: 0,
        errors: 0,
        first_error: None,
        skipped_after_error: 0,
        index_of: vec![0u64; INDEX_RING],
        tx,
        pool,
        to_loop,
        loop_skipped: 0,
        loop_gone: false,
        lossless,
        ready_at: None,
        sink,
    };
    let Some(analysis) = analysis else {
        // No analysis configured: frames are only recorded; count them as not analysed.
        while let Some(slot) = next_slot(&mut ring, lossless) {
            st.skipped_after_error += 1;
            ring.recycle(slot);
        }
        return st.finish(ring);
    };

    // Warm-up: copy the first frames for the motion reference (allocated once, at start-up).
    let want = analysis.reference_frames.max(1);
    let mut warm: Vec<(u64, f64, Option<FrameContext>, Vec<u16>)> = Vec::with_capacity(want);
    while warm.len() < want {
        let Some(slot) = next_slot(&mut ring, lossless) else {
            break;
        };
        warm.push((slot.index, slot.time, slot.context, slot.pixels.to_vec()));
        ring.recycle(slot);
    }
    if warm.is_empty() {
        return st.finish(ring);
    }
    let frames: Vec<Vec<u16>> = warm.iter().map(|w| w.3.clone()).collect();
    let mut ex = match (analysis.build)(&frames) {
        Ok(ex) => ex,
        Err(e) => {
            st.fail(warm[0].0, &e);
            st.skipped_after_error += warm.len() as u64;
            while let Some(slot) = next_slot(&mut ring, lossless) {
                st.skipped_after_error += 1;
                ring.recycle(slot);
            }
            return st.finish(ring);
        }
    };
    drop(frames);
    let warm_start = Instant::now();
    for (index, time, ctx, px) in &warm {
        if !st.process(&mut ex, *index, *time, *ctx, px, warm_start) {
            break;
        }
    }
    drop(warm);
    // Start-up is over: frames that arrived from now on are the steady state the latency
    // figures describe (the reference warm-up and the catch-up behind it are not).
    st.ready_at = Some(Instant::now());

    while let Some(slot) = next_slot(&mut ring, lossless) {
        if st.first_error.is_some() {
            st.skipped_after_error += 1;
            ring.recycle(slot);
            continue;
        }
        if st.steady(slot.pushed_at) {
            st.lat.record(ST_QUEUE, slot.pushed_at.elapsed());
        }
        let ok = st.process(
            &mut ex,
            slot.index,
            slot.time,
            slot.context,
            &slot.pixels,
            slot.pushed_at,
        );
        ring.recycle(slot);
        if !ok && st.first_error.is_none() {
            break;
        }
    }
    // The deconvolution holds back its last `lag` frames: hand them over at the end.
    if st.first_error.is_none() {
        if let Some(pending) = ex.deconv().map(|d| d.pending()) {
            let mut buf = vec![0f32; pending * ex.n_rois()];
            let first = st.analysed.saturating_sub(pending as u64);
            if let Ok(n) = ex.flush_deconv(&mut buf) {
                buf.truncate(n * ex.n_rois());
                if let Ok(mut msg) = st.pool.recv() {
                    // Row k of the tail belongs to extractor frame first+k; map each to its
                    // session index (consecutive only in lossless mode).
                    let mapped: Vec<u64> = (0..n as u64)
                        .map(|k| st.index_of[((first + k) as usize) % INDEX_RING])
                        .collect();
                    msg.tail = Some((mapped, buf));
                    let _ = st.tx.send(msg);
                    st.sink.unpark();
                }
            }
        }
    }
    st.finish(ring)
}

/// The next frame for analysis, waiting while the ring is empty; `None` at the end of the stream.
fn next_slot(ring: &mut FrameConsumer, lossless: bool) -> Option<Box<crate::ring::FrameSlot>> {
    loop {
        let slot = if lossless {
            ring.pop()
        } else {
            ring.pop_newest()
        };
        if slot.is_some() {
            return slot;
        }
        if ring.is_finished() {
            return None;
        }
        ring.wait(Duration::from_millis(2));
    }
}

struct AnalysisState {
    live: Arc<LiveCounters>,
    delay: Duration,
    lat: Latencies,
    analysed: u64,
    errors: u64,
    first_error: Option<String>,
    skipped_after_error: u64,
    /// Extractor frame counter -> session frame index, for the lagged deconvolution output (the
    /// two differ once analysis skips frames). Preallocated: the lag is far below its length.
    index_of: Vec<u64>,
    tx: Sender<Box<TraceMsg>>,
    pool: Receiver<Box<TraceMsg>>,
    to_loop: Option<ToLoop>,
    loop_skipped: u64,
    /// The loop thread ended before analysis did.
    loop_gone: bool,
    /// Offline runs wait for the loop (reproducible); live runs skip it when it is behind.
    lossless: bool,
    /// When the extractor was built and had processed its warm-up frames.
    ready_at: Option<Instant>,
    sink: thread::Thread,
}

impl AnalysisState {
    fn fail(&mut self, index: u64, e: &dyn std::fmt::Display) {
        self.errors += 1;
        tracing::error!(frame = index, "analysis stopped: {e}; recording continues");
        self.first_error = Some(format!("frame {index}: {e}"));
    }

    /// Extracts one frame and sends its outputs to the sink; false when the sink is gone.
    fn process(
        &mut self,
        ex: &mut Extractor,
        index: u64,
        time: f64,
        context: Option<FrameContext>,
        px: &[u16],
        since: Instant,
    ) -> bool {
        let Ok(mut msg) = self.pool.recv() else {
            return false;
        };
        let t0 = Instant::now();
        if !self.delay.is_zero() {
            thread::sleep(self.delay);
        }
        match ex.process(px, &mut msg.out) {
            Ok(times) => {
                self.lat.record(ST_MOTION, times.motion);
                self.lat.record(ST_TRACES, times.traces);
                self.lat.record(ST_DFF, times.dff);
                if !times.deconv.is_zero() {
                    self.lat.record(ST_DECONV, times.deconv);
                }
                self.lat.record(ST_EXTRACT, t0.elapsed());
                // The extractor counts the frames it saw; the session index is the slot's.
                self.index_of[(msg.out.frame_index as usize) % INDEX_RING] = index;
                if let Some(sf) = msg.out.spikes_frame {
                    msg.out.spikes_frame = Some(self.index_of[(sf as usize) % INDEX_RING]);
                }
                msg.out.frame_index = index;
                msg.time = time;
                msg.tail = None;
                if self.steady(since) {
                    self.lat.record(ST_E2E, since.elapsed());
                }
                self.analysed += 1;
                self.live
                    .frames_analysed
                    .store(self.analysed, Ordering::Relaxed);
                self.hand_to_loop(index, time, context, &msg.out.dff, since);
                if self.tx.send(msg).is_err() {
                    return false;
                }
                self.sink.unpark();
                true
            }
            Err(e) => {
                self.fail(index, &e);
                false
            }
        }
    }

    /// Counts a frame the loop did not get, live too.
    fn skip_loop(&mut self) {
        self.loop_skipped += 1;
        self.live
            .loop_skipped
            .store(self.loop_skipped, Ordering::Relaxed);
    }

    /// Whether a frame that arrived at `arrived` belongs to the steady state (not start-up).
    fn steady(&self, arrived: Instant) -> bool {
        self.ready_at.is_some_and(|r| arrived >= r)
    }

    /// Gives the frame's measurements to the closed loop: waits for a free buffer offline, skips
    /// (and counts) when the loop is behind in a live run.
    fn hand_to_loop(
        &mut self,
        index: u64,
        time: f64,
        context: Option<FrameContext>,
        dff: &[f32],
        arrived: Instant,
    ) {
        let Some((tx, pool)) = self.to_loop.as_ref() else {
            if self.loop_gone {
                self.skip_loop();
            }
            return;
        };
        let buf = if self.lossless {
            pool.recv().ok()
        } else {
            pool.try_recv().ok()
        };
        let Some(mut m) = buf else {
            self.skip_loop();
            return;
        };
        m.frame_index = index;
        m.time = time;
        m.context = context;
        m.measured.copy_from_slice(dff);
        m.arrived = arrived;
        m.startup = !self.steady(arrived);
        if tx.send(m).is_err() {
            // The loop is gone (it stopped early); what it did not get is still counted.
            self.skip_loop();
            self.to_loop = None;
            self.loop_gone = true;
        }
    }

    fn finish(self, ring: FrameConsumer) -> AnalysisResult {
        AnalysisResult {
            latencies: self.lat,
            analysed: self.analysed,
            errors: self.errors,
            first_error: self.first_error,
            skipped_after_error: self.skipped_after_error,
            loop_skipped: self.loop_skipped,
            ring: ring.stats(),
        }
    }
}

type SinkOut = Result<(Latencies, u64, RingStats, Option<Accuracy>), PipelineError>;

/// The analysis thread's end of the closed loop: inputs out, buffers back.
type ToLoop = (Sender<Box<LoopInput>>, Receiver<Box<LoopInput>>);

/// The sink's end of the closed loop: outputs in, buffers back.
type LoopLink = (Receiver<Box<LoopOutput>>, Sender<Box<LoopOutput>>);

fn sink_loop(
    sink: &mut Sink,
    mut ring: FrameConsumer,
    rx: Receiver<Box<TraceMsg>>,
    pool: Sender<Box<TraceMsg>>,
    from_loop: Option<LoopLink>,
    stop: &AtomicBool,
    live: &LiveCounters,
) -> SinkOut {
    let result = sink_inner(sink, &mut ring, &rx, &pool, from_loop.as_ref(), live);
    if result.is_err() {
        stop.store(true, Ordering::Relaxed);
        // Keep draining so acquisition and analysis can finish and report.
        loop {
            let mut busy = false;
            if let Some(s) = ring.pop() {
                ring.recycle(s);
                busy = true;
            }
            if let Some(e) = sink.events.as_ref() {
                while let Ok(ev) = e.rx.try_recv() {
                    if let SessionEvent::Truth(row) = ev {
                        let _ = e.truth_return.send(row);
                    }
                    busy = true;
                }
            }
            if let Some((lrx, lpool)) = from_loop.as_ref() {
                while let Ok(m) = lrx.try_recv() {
                    let _ = lpool.send(m);
                    busy = true;
                }
            }
            match rx.try_recv() {
                Ok(m) => {
                    let _ = pool.send(m);
                    busy = true;
                }
                Err(TryRecvError::Disconnected) if ring.is_finished() => break,
                _ => {}
            }
            if !busy {
                thread::park_timeout(Duration::from_millis(1));
            }
        }
    }
    result.map(|(l, n)| {
        (
            l,
            n,
            ring.stats(),
            sink.scorer.as_ref().map(|s| s.accuracy()),
        )
    })
}

fn sink_inner(
    sink: &mut Sink,
    ring: &mut FrameConsumer,
    rx: &Receiver<Box<TraceMsg>>,
    pool: &Sender<Box<TraceMsg>>,
    from_loop: Option<&LoopLink>,
    live: &LiveCounters,
) -> Result<(Latencies, u64), PipelineError> {
    let mut lat = Latencies::live(live.latency.clone());
    let mut recorded = 0u64;
    let mut traces_done = false;
    let mut loop_done = from_loop.is_none();
    let mut events_done = sink.events.is_none();
    loop {
        let mut busy = false;
        // Events before traces: a frame's ground truth must be in hand when its traces are scored.
        if !events_done {
            loop {
                let ev = match sink.events.as_ref().map(|e| e.rx.try_recv()) {
                    Some(Ok(ev)) => ev,
                    Some(Err(TryRecvError::Disconnected)) | None => {
                        events_done = true;
                        break;
                    }
                    Some(Err(TryRecvError::Empty)) => break,
                };
                busy = true;
                handle_event(sink, ev)?;
            }
        }
        // Frames next: the recorder must keep up whatever analysis does.
        while let Some(slot) = ring.pop() {
            let t0 = Instant::now();
            if let Some(w) = sink.writer.as_mut() {
                w.append_frame(&slot.pixels, slot.time)?;
            }
            lat.record(ST_RECORD, t0.elapsed());
            recorded += 1;
            live.frames_recorded.store(recorded, Ordering::Relaxed);
            ring.recycle(slot);
            busy = true;
        }
        if !traces_done {
            match rx.try_recv() {
                Ok(msg) => {
                    handle_traces(sink, &msg)?;
                    let _ = pool.send(msg);
                    busy = true;
                }
                Err(TryRecvError::Disconnected) => traces_done = true,
                Err(TryRecvError::Empty) => {}
            }
        }
        if let (false, Some((lrx, lpool))) = (loop_done, from_loop) {
            match lrx.try_recv() {
                Ok(m) => {
                    handle_loop(sink, &m)?;
                    let _ = lpool.send(m);
                    busy = true;
                }
                Err(TryRecvError::Disconnected) => loop_done = true,
                Err(TryRecvError::Empty) => {}
            }
        }
        if traces_done && events_done && loop_done && ring.is_finished() {
            break;
        }
        if !busy {
            thread::park_timeout(Duration::from_millis(1));
        }
    }
    if let Some(w) = sink.writer.as_mut() {
        w.flush()?;
    }
    Ok((lat, recorded))
}

fn handle_event(sink: &mut Sink, ev: SessionEvent) -> Result<(), SessionError> {
    if let Some(w) = sink.writer.as_mut() {
        events::record(w, &ev)?;
    }
    if let SessionEvent::Truth(row) = ev {
        if let Some(s) = sink.scorer.as_mut() {
            s.push_truth(&row);
        }
        if let Some(e) = sink.events.as_ref() {
            let _ = e.truth_return.send(row);
        }
    }
    Ok(())
}

fn handle_loop(sink: &mut Sink, m: &LoopOutput) -> Result<(), SessionError> {
    let Some(w) = sink.writer.as_mut() else {
        return Ok(());
    };
    if let Some(t) = &m.trial {
        w.append_twin_trial(t.clip, t.start_frame, &t.predicted, &t.measured)?;
    }
    if !m.predicted.is_empty() {
        w.append_twin(
            m.frame_index,
            m.time,
            &m.predicted,
            m.fidelity.population,
            m.fidelity.alarm,
        )?;
    }
    Ok(())
}

fn handle_traces(sink: &mut Sink, msg: &TraceMsg) -> Result<(), SessionError> {
    let o = &msg.out;
    let n = o.dff.len();
    if let Some((frames, rows)) = &msg.tail {
        for (&f, row) in frames.iter().zip(rows.chunks_exact(n.max(1))) {
            if let Some(w) = sink.writer.as_mut() {
                w.append_spikes(f, row)?;
            }
            if let Some(s) = sink.scorer.as_mut() {
                s.add_events(f, row)?;
            }
        }
        return Ok(());
    }
    let shift = [o.shift.dy, o.shift.dx];
    if let Some(w) = sink.writer.as_mut() {
        w.append_traces(&TraceRow {
            frame_index: o.frame_index,
            time: msg.time,
            shift,
            raw: &o.raw,
            neuropil: &o.neuropil,
            corrected: &o.corrected,
            f0: &o.f0,
            dff: &o.dff,
        })?;
    }
    if let Some(s) = sink.scorer.as_mut() {
        s.add_frame(o.frame_index, &o.dff, shift)?;
    }
    if let Some(sf) = o.spikes_frame {
        if let Some(w) = sink.writer.as_mut() {
            w.append_spikes(sf, &o.spikes)?;
        }
        if let Some(s) = sink.scorer.as_mut() {
            s.add_events(sf, &o.spikes)?;
        }
    }
    Ok(())
}
