//! `rig stream`: the reference sender of the frame protocol (docs/frame-protocol.md), playing a
//! recorded session to a receiver; `rig stream-recv`: a receiver that records what arrives, for
//! testing senders and measuring ingest.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use twinrig::acquire::stream::{
    Clock, FrameHeader, FrameSender, StreamOptions, StreamSource, StreamStats,
};
use twinrig::acquire::{AcquireError, FrameInfo, FrameSource, ReplaySource};
use twinrig::config::RigConfig;

use twinrig::pipeline::replay::analysis_for;
use twinrig::pipeline::{PipelineOptions, PipelineSummary, RunControl, Sink};
use twinrig::session::{read_roi_file, RoiTable, SessionInfo, SessionWriter};

#[derive(Clone, Copy, clap::ValueEnum)]
enum ClockArg {
    /// Timestamps are the session's rig-clock times, recorded as sent.
    Rig,
    /// Timestamps on the sender's clock; the receiver shifts them onto its rig clock.
    Sender,
}

#[derive(clap::Args)]
#[command(after_help = "Example:\n  rig stream session.h5 --to 127.0.0.1:7000 --speed 2")]
pub struct SendArgs {
    /// Recorded session (HDF5) whose frames are sent.
    session: PathBuf,
    /// Receiver address: host:port or unix:/path/to/socket.
    #[arg(long)]
    to: String,
    /// Playback speed relative to the recorded timing (2 = twice as fast).
    #[arg(long, default_value_t = 1.0, conflicts_with = "max_speed")]
    speed: f64,
    /// Send as fast as the receiver takes frames (back-pressure paces the sender).
    #[arg(long)]
    max_speed: bool,
    /// Clock the timestamps are declared on.
    #[arg(long, value_enum, default_value = "rig")]
    clock: ClockArg,
    /// Send at most this many frames.
    #[arg(long)]
    frames: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct SendReport {
    session: String,
    to: String,
    frames_sent: u64,
    bytes_sent: u64,
    wall_s: f64,
    frames_per_s: f64,
    mb_per_s: f64,
    /// The receiver's reply to the end-of-stream message.
    receiver_reply: Option<String>,
}

pub fn send(a: SendArgs) -> Result<()> {
    if !(a.speed.is_finite() && a.speed > 0.0) {
        bail!("--speed must be a positive number, got {}", a.speed);
    }
    let speed = (!a.max_speed).then_some(a.speed);
    let mut src = ReplaySource::open(&a.session, speed)?;
    let (h, w) = (src.height(), src.width());
    let total = src
        .len_hint()
        .unwrap_or(0)
        .min(a.frames.unwrap_or(u64::MAX));
    let mut tx = FrameSender::connect(&a.to)?;
    let clock = match a.clock {
        ClockArg::Rig => Clock::Rig,
        ClockArg::Sender => Clock::Sender,
    };
    let mut buf = vec![0u16; h * w];
    let pb = super::progress_bar(total, "stream");
    let t0 = Instant::now();
    while tx.frames_sent() < total {
        let Some(info) = src.next_frame(&mut buf)? else {
            break;
        };
        let hdr = FrameHeader::frame(info.index, info.time, clock, 0, h as u32, w as u32);
        tx.send_frame(&hdr, &buf)
            .with_context(|| format!("frame {}", info.index))?;
        pb.set_position(tx.frames_sent());
    }
    pb.finish_and_clear();
    let (frames, bytes) = (tx.frames_sent(), tx.bytes_sent());
    let reply = tx.finish(Duration::from_secs(30))?;
    let wall = t0.elapsed().as_secs_f64().max(1e-9);
    let r = SendReport {
        session: a.session.display().to_string(),
        to: a.to.clone(),
        frames_sent: frames,
        bytes_sent: bytes,
        wall_s: wall,
        frames_per_s: frames as f64 / wall,
        mb_per_s: bytes as f64 / 1e6 / wall,
        receiver_reply: reply,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("streamed {} -> {}", r.session, r.to);
        println!(
            "  {} frames ({}x{}), {:.1} MB in {:.2} s: {:.0} frames/s, {:.1} MB/s",
            r.frames_sent,
            h,
            w,
            r.bytes_sent as f64 / 1e6,
            r.wall_s,
            r.frames_per_s,
            r.mb_per_s
        );
        println!(
            "  receiver: {}",
            r.receiver_reply.as_deref().unwrap_or("(no reply)")
        );
    }
    Ok(())
}

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  rig stream-recv --listen 127.0.0.1:7000 --out received.h5 --frames 1800"
)]
pub struct RecvArgs {
    /// Rig config (TOML) giving the frame shape; the embedded simulated rig when omitted.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen here instead of the config's imaging.listen (host:port, port 0 = any; unix:/path).
    #[arg(long)]
    listen: Option<String>,
    /// Record the frames to this session file (without it frames are only counted).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace an existing --out file (never one another process has open).
    #[arg(long)]
    overwrite: bool,
    /// Stop after this many frames.
    #[arg(long)]
    frames: Option<u64>,
    /// Stop after this many seconds without a frame.
    #[arg(long)]
    idle_timeout: Option<f64>,
    /// ROI masks (a session's rois/* or a mask file): record through the pipeline with online
    /// extraction, its motion reference made from the first extract.reference_frames frames.
    #[arg(long)]
    rois: Option<PathBuf>,
    /// Keep listening after an end-of-stream message (stop with --frames, --idle-timeout or Ctrl-C).
    #[arg(long)]
    keep_listening: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct RecvReport {
    listen: String,
    out: Option<String>,
    frames_recorded: u64,
    /// From the first frame to the last.
    wall_s: f64,
    frames_per_s: f64,
    mb_per_s: f64,
    stream: StreamStats,
    /// With --rois: the pipeline's summary (analysis, rings, latency).
    pipeline: Option<PipelineSummary>,
}

pub fn recv(a: RecvArgs) -> Result<()> {
    let mut cfg = super::load_budgeted(
        a.config.as_deref(),
        twinrig::budget::Workload::Receive {
            analysis: a.rois.is_some(),
        },
    )?;
    if let Some(l) = &a.listen {
        cfg.imaging.listen = l.clone();
    }
    let idle = match a.idle_timeout {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            bail!("--idle-timeout must be a positive number of seconds, got {s}")
        }
        s => s.map(Duration::from_secs_f64),
    };
    let (h, w) = (cfg.imaging.height, cfg.imaging.width);
    let rois = match &a.rois {
        Some(p) => {
            let r = read_roi_file(p, h, w)?;
            if r.is_empty() {
                bail!("--rois {}: the file has no ROI masks", p.display());
            }
            Some(r)
        }
        None => None,
    };
    let opts = StreamOptions {
        idle_timeout: idle,
        end_on_eos: !a.keep_listening,
        ..StreamOptions::from_config(&cfg.imaging)
    };
    let src = StreamSource::bind(opts)?;
    // The session file only once the address is ours: a busy port leaves nothing behind.
    let writer = match &a.out {
        Some(out) => {
            let info = SessionInfo::for_file(out, &cfg.rig.mouse_id, twinrig::sim::utc_now_iso());
            Some(SessionWriter::create(out, &cfg, &info, a.overwrite)?)
        }
        None => None,
    };
    src.stop_on_ctrl_c();
    let listen = src.local_addr();
    let handle = src.handle();
    // The one line a script waits for before it starts a sender.
    eprintln!("rig: listening on {listen}");
    let _ = std::io::stderr().flush();

    let limit = a.frames.unwrap_or(u64::MAX);
    let (n, wall, writer, pipeline) = match &rois {
        None => {
            let (n, wall, wr) = record_direct(src, writer, limit)?;
            (n, wall, wr, None)
        }
        Some(rois) => {
            let (p, wr) = record_pipeline(&cfg, src, rois, writer, limit)?;
            let (n, wall) = p
                .as_ref()
                .map(|p| (p.frames_recorded, p.wall_s))
                .unwrap_or((0, 0.0));
            (n, wall, wr, p)
        }
    };
    handle.stop();
    if let Some(w) = writer {
        w.finish(&twinrig::sim::utc_now_iso())?;
    }
    let wall = wall.max(1e-9);
    let frame_bytes = (h * w * 2) as f64;
    let r = RecvReport {
        listen,
        out: a.out.as_ref().map(|p| p.display().to_string()),
        frames_recorded: n,
        wall_s: wall,
        frames_per_s: n.saturating_sub(1) as f64 / wall,
        mb_per_s: n.saturating_sub(1) as f64 * frame_bytes / 1e6 / wall,
        stream: handle.stats(),
        pipeline,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_recv(&r);
    }
    // As `rig run`: with --rois the traces are what was asked for, and scripts must see them stop.
    if let Some(e) = r
        .pipeline
        .as_ref()
        .and_then(|p| p.first_analysis_error.as_ref())
    {
        bail!("analysis stopped ({e}); the frames received were recorded, their traces are not");
    }
    Ok(())
}

fn print_recv(r: &RecvReport) {
    let s = &r.stream;
    match &r.out {
        Some(o) => println!("received on {} -> {}", r.listen, o),
        None => println!("received on {}", r.listen),
    }
    println!(
        "  {} frames recorded ({:.0} frames/s, {:.1} MB/s); {} rejected, {} dropped",
        r.frames_recorded,
        r.frames_per_s,
        r.mb_per_s,
        s.frames_rejected.total(),
        s.frames_dropped
    );
    println!(
        "  clients: {} accepted, {} refused, {} disconnects, {} end-of-stream",
        s.clients_accepted, s.clients_refused, s.disconnects, s.end_of_stream
    );
    if s.idle_closed + s.end_of_stream_ignored > 0 {
        println!(
            "  {} closed for sending no valid frame header in time, {} end-of-stream ignored \
             (from connections with no accepted frame)",
            s.idle_closed, s.end_of_stream_ignored
        );
    }
    if let Some(p) = &r.pipeline {
        println!(
            "  pipeline: {} analysed, {} skipped, {} recorded, {} lost",
            p.frames_analysed, p.frames_skipped, p.frames_recorded, p.frames_lost
        );
        if let Some(e) = &p.first_analysis_error {
            println!("  analysis stopped after an error (the frames after it were recorded, not analysed): {e}");
        }
    }
}

/// Frames straight into the session writer. Returns (frames, seconds from the first to the last,
/// the writer).
fn record_direct(
    mut src: StreamSource,
    mut writer: Option<SessionWriter>,
    limit: u64,
) -> Result<(u64, f64, Option<SessionWriter>)> {
    let mut buf = vec![0u16; src.height() * src.width()];
    let mut n = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    while n < limit {
        let Some(info) = src.next_frame(&mut buf)? else {
            break;
        };
        first.get_or_insert_with(Instant::now);
        if let Some(w) = writer.as_mut() {
            w.append_frame(&buf, info.time)
                .with_context(|| format!("recording frame {}", info.index))?;
        }
        n += 1;
        last = Instant::now();
    }
    let wall = first.map(|f| last.duration_since(f).as_secs_f64());
    Ok((n, wall.unwrap_or(0.0), writer))
}

/// Frames through `pipeline::run` (recorder ring, online extraction, sink), as `rig run` runs a
/// live session: the first `extract.reference_frames` frames are held back to make the motion
/// reference, then go into the pipeline ahead of the live ones.
fn record_pipeline(
    cfg: &RigConfig,
    src: StreamSource,
    rois: &RoiTable,
    mut writer: Option<SessionWriter>,
    limit: u64,
) -> Result<(Option<PipelineSummary>, Option<SessionWriter>)> {
    let (h, w) = (src.height(), src.width());
    if let Some(wr) = writer.as_mut() {
        wr.write_rois(rois)?;
        wr.begin_traces(rois.len())?;
    }
    let mut sink = Sink {
        writer: writer.take(),
        ..Default::default()
    };
    // The pipeline builds the motion reference from the first frames of the stream itself.
    let analysis = analysis_for(
        cfg,
        h,
        w,
        rois.clone(),
        cfg.extract.deconvolve,
        Default::default(),
    );
    let source = Primed {
        head: VecDeque::new(),
        live: src,
        left: limit,
    };
    let opts = PipelineOptions {
        ring_slots: 16,
        lossless_analysis: false,
        frame_rate_hz: cfg.imaging.frame_rate_hz,
    };
    let summary = twinrig::pipeline::run(
        Box::new(source),
        Some(analysis),
        &mut sink,
        opts,
        &RunControl::default(),
        &|_| {},
    )?;
    Ok((Some(summary), sink.writer.take()))
}

/// Frames already received, then the live stream; at most `left` in all.
struct Primed {
    head: VecDeque<(FrameInfo, Vec<u16>)>,
    live: StreamSource,
    left: u64,
}

impl FrameSource for Primed {
    fn height(&self) -> usize {
        self.live.height()
    }

    fn width(&self) -> usize {
        self.live.width()
    }

    fn len_hint(&self) -> Option<u64> {
        None
    }

    fn next_frame(&mut self, out: &mut [u16]) -> Result<Option<FrameInfo>, AcquireError> {
        if self.left == 0 {
            return Ok(None);
        }
        let got = match self.head.pop_front() {
            Some((info, f)) => {
                if out.len() != f.len() {
                    return Err(AcquireError::Invalid("frame buffer size".into()));
                }
                out.copy_from_slice(&f);
                Some(info)
            }
            None => self.live.next_frame(out)?,
        };
        if got.is_some() {
            self.left -= 1;
        }
        Ok(got)
    }
}
