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

pub mod latency;
pub mod replay;
pub mod score;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, Receiver, Sender, TryRecvError};
use serde::Serialize;
use thiserror::Error;

use crate::acquire::{AcquireError, FrameSource};
use crate::extract::{Extractor, FrameOutput};
use crate::ring::{frame_ring, FrameConsumer, Overflow, RingStats};
use crate::session::{SessionError, SessionWriter, TraceRow};
use latency::{Latencies, StageLatency};
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

/// What the sink does with frames and traces.
#[derive(Default)]
pub struct Sink {
    pub writer: Option<SessionWriter>,
    pub scorer: Option<GroundTruthScorer>,
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
}

/// One analysed frame on its way to the sink (buffers recycled through the pool).
struct TraceMsg {
    out: FrameOutput,
    time: f64,
    /// Deconvolved rows flushed at the end of the stream, frame-major, with each row's frame.
    tail: Option<(Vec<u64>, Vec<f32>)>,
}

/// Stage names, in `Latencies` index order.
pub const STAGES: &[&str] = &[
    "acquire",
    "queue",
    "motion",
    "traces",
    "dff",
    "deconv",
    "extract",
    "end_to_end",
    "record",
];
const ST_ACQUIRE: usize = 0;
const ST_QUEUE: usize = 1;
const ST_MOTION: usize = 2;
const ST_TRACES: usize = 3;
const ST_DFF: usize = 4;
const ST_DECONV: usize = 5;
const ST_EXTRACT: usize = 6;
const ST_E2E: usize = 7;
const ST_RECORD: usize = 8;
const INDEX_RING: usize = 4096;

/// Peak resident memory of this process, MB (Linux; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Runs `source` through the rings, the extractor and the sink until the source ends.
/// `progress(frames_in)` is called from the acquisition thread every few frames.
pub fn run(
    mut source: Box<dyn FrameSource>,
    mut extractor: Extractor,
    sink: &mut Sink,
    opts: PipelineOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PipelineSummary, PipelineError> {
    let pixels = source.height() * source.width();
    let n_rois = extractor.n_rois();
    let (mut rec_p, mut rec_c) = frame_ring(opts.ring_slots, pixels, Overflow::Block);
    let policy = if opts.lossless_analysis {
        Overflow::Block
    } else {
        Overflow::DropNewest
    };
    let (mut ana_p, mut ana_c) = frame_ring(opts.ring_slots, pixels, policy);
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
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let acq_thread = thread::current();
    rec_c.set_producer_thread(acq_thread.clone());
    ana_c.set_producer_thread(acq_thread);

    thread::scope(|scope| {
        let sink_stop = stop.clone();
        let sink_handle = thread::Builder::new()
            .name("sink".into())
            .spawn_scoped(scope, move || {
                sink_loop(sink, rec_c, msg_rx, pool_tx, &sink_stop)
            })
            .expect("spawn sink thread");
        let sink_thread = sink_handle.thread().clone();
        rec_p.set_consumer_thread(sink_thread.clone());

        let ana_handle = thread::Builder::new()
            .name("analysis".into())
            .spawn_scoped(scope, move || {
                analysis_loop(
                    &mut extractor,
                    ana_c,
                    msg_tx,
                    pool_rx,
                    sink_thread,
                    opts.lossless_analysis,
                )
            })
            .expect("spawn analysis thread");
        ana_p.set_consumer_thread(ana_handle.thread().clone());

        // Acquisition, on this thread.
        let mut acq = Latencies::new(STAGES);
        let mut frames_in = 0u64;
        let mut acq_err = None;
        while !stop.load(Ordering::Relaxed) {
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
            if let Some(a) = ana_p.begin() {
                a.pixels.copy_from_slice(&slot.pixels);
                ana_p.commit(info.index, info.time);
            }
            rec_p.commit(info.index, info.time);
            frames_in += 1;
            if frames_in % 16 == 0 {
                progress(frames_in);
            }
        }
        progress(frames_in);
        let ana_stats_p = ana_p.stats();
        drop(ana_p);
        drop(rec_p);
        let ana = ana_handle
            .join()
            .map_err(|_| PipelineError::Panicked("analysis"))?;
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
            recorder_ring: rec_stats,
            analysis_ring,
            peak_rss_mb: peak_rss_mb(),
            accuracy,
        })
    })
}

struct AnalysisResult {
    latencies: Latencies,
    analysed: u64,
    errors: u64,
    first_error: Option<String>,
    skipped_after_error: u64,
    ring: RingStats,
}

fn analysis_loop(
    ex: &mut Extractor,
    mut ring: FrameConsumer,
    tx: Sender<Box<TraceMsg>>,
    pool: Receiver<Box<TraceMsg>>,
    sink: thread::Thread,
    lossless: bool,
) -> AnalysisResult {
    let mut lat = Latencies::new(STAGES);
    let (mut analysed, mut errors, mut skipped_after_error) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    // Extractor frame counter -> session frame index, for the lagged deconvolution output (the
    // two differ once analysis skips frames). Preallocated: the lag is far below its length.
    let mut index_of = vec![0u64; INDEX_RING];
    loop {
        let slot = if lossless {
            ring.pop()
        } else {
            ring.pop_newest()
        };
        let Some(slot) = slot else {
            if ring.is_finished() {
                break;
            }
            ring.wait(Duration::from_millis(2));
            continue;
        };
        if first_error.is_some() {
            skipped_after_error += 1;
            ring.recycle(slot);
            continue;
        }
        lat.record(ST_QUEUE, slot.pushed_at.elapsed());
        let Ok(mut msg) = pool.recv() else { break };
        let t0 = Instant::now();
        match ex.process(&slot.pixels, &mut msg.out) {
            Ok(st) => {
                lat.record(ST_MOTION, st.motion);
                lat.record(ST_TRACES, st.traces);
                lat.record(ST_DFF, st.dff);
                if !st.deconv.is_zero() {
                    lat.record(ST_DECONV, st.deconv);
                }
                lat.record(ST_EXTRACT, t0.elapsed());
                // The extractor counts the frames it saw; the session index is the slot's.
                index_of[(msg.out.frame_index as usize) % INDEX_RING] = slot.index;
                if let Some(sf) = msg.out.spikes_frame {
                    msg.out.spikes_frame = Some(index_of[(sf as usize) % INDEX_RING]);
                }
                msg.out.frame_index = slot.index;
                msg.time = slot.time;
                msg.tail = None;
                lat.record(ST_E2E, slot.pushed_at.elapsed());
                analysed += 1;
                if tx.send(msg).is_err() {
                    break;
                }
                sink.unpark();
            }
            Err(e) => {
                errors += 1;
                tracing::error!(
                    frame = slot.index,
                    "analysis stopped: {e}; recording continues"
                );
                first_error = Some(format!("frame {}: {e}", slot.index));
            }
        }
        ring.recycle(slot);
    }
    // The deconvolution holds back its last `lag` frames: hand them over at the end.
    if first_error.is_none() {
        if let Some(pending) = ex.deconv().map(|d| d.pending()) {
            let mut buf = vec![0f32; pending * ex.n_rois()];
            let first = analysed.saturating_sub(pending as u64);
            if let Ok(n) = ex.flush_deconv(&mut buf) {
                buf.truncate(n * ex.n_rois());
                if let Ok(mut msg) = pool.recv() {
                    // Rows k of the tail belong to extractor frames first+k; map each to its
                    // session index (consecutive only in lossless mode, so send them one by one).
                    let mapped: Vec<u64> = (0..n as u64)
                        .map(|k| index_of[((first + k) as usize) % INDEX_RING])
                        .collect();
                    msg.tail = Some((mapped, buf));
                    let _ = tx.send(msg);
                    sink.unpark();
                }
            }
        }
    }
    AnalysisResult {
        latencies: lat,
        analysed,
        errors,
        first_error,
        skipped_after_error,
        ring: ring.stats(),
    }
}

type SinkOut = Result<(Latencies, u64, RingStats, Option<Accuracy>), PipelineError>;

fn sink_loop(
    sink: &mut Sink,
    mut ring: FrameConsumer,
    rx: Receiver<Box<TraceMsg>>,
    pool: Sender<Box<TraceMsg>>,
    stop: &AtomicBool,
) -> SinkOut {
    let result = sink_inner(sink, &mut ring, &rx, &pool);
    if result.is_err() {
        stop.store(true, Ordering::Relaxed);
        // Keep draining so acquisition and analysis can finish and report.
        loop {
            let mut busy = false;
            if let Some(s) = ring.pop() {
                ring.recycle(s);
                busy = true;
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
) -> Result<(Latencies, u64), PipelineError> {
    let mut lat = Latencies::new(STAGES);
    let mut recorded = 0u64;
    let mut traces_done = false;
    loop {
        let mut busy = false;
        // Frames first: the recorder must keep up whatever analysis does.
        while let Some(slot) = ring.pop() {
            let t0 = Instant::now();
            if let Some(w) = sink.writer.as_mut() {
                w.append_frame(&slot.pixels, slot.time)?;
            }
            lat.record(ST_RECORD, t0.elapsed());
            recorded += 1;
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
        if traces_done && ring.is_finished() {
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
