//! The live frame stream (docs/frame-protocol.md): `rig stream` and test clients send to a
//! `StreamSource` (or `rig stream-recv`) over TCP on 127.0.0.1 and over a Unix socket; good frames
//! arrive byte-exact, bad clients are logged, counted and closed, and good frames keep coming.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{small_config_text, stderr, stdout, write_config};
use twinrig::acquire::stream::{
    Clock, FrameHeader, StreamHandle, StreamOptions, StreamSource, StreamStats, HEADER_LEN,
};
use twinrig::acquire::{FrameInfo, FrameSource};
use twinrig::session::SessionReader;

const H: usize = 96;
const W: usize = 96;

/// The `rig` binary. `RIG_BIN` overrides Cargo's: a target dir shared by several worktrees may hold
/// another branch's `target/release/rig` by the time the tests run.
fn rig() -> Command {
    let bin = std::env::var_os("RIG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rig")));
    let mut c = Command::new(bin);
    c.env_remove("RUST_LOG");
    twinrig::child::no_inherited_fds(&mut c);
    c
}

fn run(args: &[&str]) -> Output {
    rig().args(args).output().expect("spawn rig")
}

/// A small simulated session (96x96), made in-process.
fn simulate(dir: &Path, name: &str, seconds: f64, seed: u64) -> PathBuf {
    let cfg = twinrig::config::RigConfig::parse(&small_config_text(), "small.toml").unwrap();
    let out = dir.join(name);
    twinrig::sim::simulate_session(&cfg, seconds / 60.0, seed, &out, false, |_, _| {}).unwrap();
    out
}

/// Serialises the tests that use HDF5 files in this process or spawn `rig`. HDF5 locks files with
/// `flock` and opens them without `O_CLOEXEC`, so a child spawned while another test holds a session
/// open for writing inherits that lock, and a later open of the file fails ("unable to lock file").
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits for `rig stream-recv` to say where it listens; returns its stderr and the address.
fn listening(recv: &mut std::process::Child) -> (BufReader<std::process::ChildStderr>, String) {
    let mut err = BufReader::new(recv.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            let status = recv.wait().unwrap();
            panic!("stream-recv exited ({status}) before listening:\n{seen}");
        }
        if let Some(a) = line.trim_end().strip_prefix("rig: listening on ") {
            return (err, a.to_string());
        }
        seen.push_str(&line);
    }
}

/// Everything the library logs in this test binary (tests run in parallel: each looks for its own
/// peer addresses).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(b.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(sub);
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log line that mentions both `peer` and `reason`, if any.
fn logged(peer: &str, reason: &str) -> Option<String> {
    let l = logs();
    let text = String::from_utf8_lossy(&l.lock().unwrap()).into_owned();
    text.lines()
        .find(|l| l.contains(peer) && l.contains(reason))
        .map(str::to_string)
}

fn opts(listen: &str) -> StreamOptions {
    StreamOptions {
        listen: listen.to_string(),
        height: H,
        width: W,
        planes: 1,
        buffers: 8,
        stall_timeout: Duration::from_secs(5),
        first_header_timeout: Duration::from_secs(30),
        idle_timeout: Some(Duration::from_secs(60)),
        end_on_eos: true,
        clock_origin: Instant::now(),
    }
}

type Received = Vec<(FrameInfo, Vec<u16>)>;

/// Drains the source on its own thread until the stream ends.
fn consume(mut src: StreamSource) -> JoinHandle<(Received, StreamSource)> {
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u16; H * W];
        while let Some(info) = src.next_frame(&mut buf).expect("next_frame") {
            got.push((info, buf.clone()));
        }
        (got, src)
    })
}

fn pattern(i: u64) -> Vec<u16> {
    (0..H * W)
        .map(|p| (p as u64 * 31 + i * 1009) as u16)
        .collect()
}

fn bytes(px: &[u16]) -> Vec<u8> {
    px.iter().flat_map(|p| p.to_le_bytes()).collect()
}

fn frame_msg(i: u64, t: f64) -> Vec<u8> {
    let mut m = FrameHeader::frame(i, t, Clock::Rig, 0, H as u32, W as u32)
        .encode()
        .to_vec();
    m.extend(bytes(&pattern(i)));
    m
}

/// Reads what the receiver says until it closes the connection.
fn reply(s: &mut impl Read) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn tcp(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn rig_stream_over_tcp_arrives_byte_exact() {
    let _serial = serial();
    logs();
    let dir = tempfile::tempdir().unwrap();
    let session = simulate(dir.path(), "s.h5", 2.0, 3);
    let src = StreamSource::bind(opts("127.0.0.1:0")).unwrap();
    let addr = src.local_addr();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let rx = consume(src);
    let o = run(&[
        "stream",
        session.to_str().unwrap(),
        "--to",
        &addr,
        "--max-speed",
        "--json",
    ]);
    assert!(o.status.success(), "rig stream: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let (got, src) = rx.join().unwrap();

    let r = SessionReader::open(&session).unwrap();
    let times = r.frame_times().unwrap();
    assert_eq!(v["frames_sent"], times.len() as u64);
    assert_eq!(
        v["receiver_reply"],
        format!("OK frames={} rejected=0", times.len())
    );
    assert!(v["mb_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(got.len(), times.len());
    let mut want = vec![0u16; H * W];
    for (i, (info, px)) in got.iter().enumerate() {
        r.read_frame_into(i, &mut want).unwrap();
        assert_eq!(info.index, i as u64);
        assert_eq!(info.time.to_bits(), times[i].to_bits(), "time of frame {i}");
        assert!(px == &want, "pixels of frame {i}");
    }
    let s = src.stats();
    assert_eq!(s.frames_ok, times.len() as u64);
    assert_eq!(s.frames_delivered, times.len() as u64);
    assert_eq!(s.frames_rejected.total(), 0);
    assert_eq!(s.end_of_stream, 1);
    assert_eq!(s.clients_accepted, 1);
    assert_eq!(s.bytes, (times.len() * H * W * 2) as u64);
}

#[test]
fn rig_stream_to_rig_stream_recv_over_a_unix_socket() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let session = simulate(dir.path(), "s.h5", 1.0, 5);
    let cfg = write_config(dir.path(), "recv.toml", &small_config_text());
    let sock = format!("unix:{}", dir.path().join("rig.sock").display());
    let out = dir.path().join("recv.h5");
    let mut recv = rig()
        .args([
            "stream-recv",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            &sock,
            "--out",
            out.to_str().unwrap(),
            "--idle-timeout",
            "30",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut err, addr) = listening(&mut recv);
    assert_eq!(addr, sock);
    // Recorded timing, four times faster: 30 frames over ~0.25 s.
    let o = run(&[
        "stream",
        session.to_str().unwrap(),
        "--to",
        &sock,
        "--speed",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "rig stream: {}", stderr(&o));
    let sent: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let ro = recv.wait_with_output().unwrap();
    assert!(ro.status.success(), "stream-recv: {rest}");
    let v: serde_json::Value = serde_json::from_slice(&ro.stdout).unwrap();

    let r = SessionReader::open(&session).unwrap();
    let times = r.frame_times().unwrap();
    let n = times.len();
    assert!(
        sent["wall_s"].as_f64().unwrap() > 0.8 * (times[n - 1] - times[0]) / 4.0,
        "{sent}"
    );
    assert_eq!(v["frames_recorded"], n as u64);
    assert_eq!(v["stream"]["frames_ok"], n as u64);
    let w = SessionReader::open(&out).unwrap();
    assert!(w.meta().complete);
    assert_eq!(w.meta().n_frames, n);
    assert_eq!(w.frame_times().unwrap(), times);
    let (mut a, mut b) = (vec![0u16; H * W], vec![0u16; H * W]);
    for i in 0..n {
        r.read_frame_into(i, &mut a).unwrap();
        w.read_frame_into(i, &mut b).unwrap();
        assert!(a == b, "frame {i}");
    }
    assert!(!dir.path().join("rig.sock").exists(), "socket file removed");
}

#[test]
fn bad_clients_are_refused_and_recording_continues() {
    logs();
    let src = StreamSource::bind(opts("127.0.0.1:0")).unwrap();
    let addr = src.local_addr();
    let probe = StatsProbe::new(&src);
    let rx = consume(src);

    // A first good client: 3 frames, then it hangs up without an end-of-stream message.
    let mut c = tcp(&addr);
    for i in 0..3 {
        c.write_all(&frame_msg(i, i as f64 * 0.1)).unwrap();
    }
    drop(c);
    wait_for("3 frames and a disconnect", || {
        let s = probe.get();
        s.frames_ok == 3 && s.disconnects == 1
    });

    // Each bad client is closed with a reply naming the reason, and logged with its peer address.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad_magic", {
            let mut m = frame_msg(3, 0.3);
            m[..8].copy_from_slice(b"GET / HT");
            m
        }),
        ("bad_version", {
            let mut m = frame_msg(3, 0.3);
            m[8] = 9;
            m
        }),
        ("bad_checksum", {
            let mut m = frame_msg(3, 0.3);
            m[17] ^= 0x40;
            m
        }),
        ("bad_shape", {
            let mut m = FrameHeader::frame(3, 0.3, Clock::Rig, 0, 64, 64)
                .encode()
                .to_vec();
            m.extend(vec![0u8; 64 * 64 * 2]);
            m
        }),
        ("bad_size", {
            let mut h = FrameHeader::frame(3, 0.3, Clock::Rig, 0, H as u32, W as u32);
            h.payload_len = 1 << 40;
            h.encode().to_vec()
        }),
        ("bad_dtype", {
            let mut h = FrameHeader::frame(3, 0.3, Clock::Rig, 0, H as u32, W as u32);
            h.dtype = 7;
            h.encode().to_vec()
        }),
    ];
    for (i, (reason, msg)) in cases.iter().enumerate() {
        let mut c = tcp(&addr);
        let peer = c.local_addr().unwrap().to_string();
        let _ = c.write_all(msg);
        let said = reply(&mut c);
        assert!(
            said.starts_with(&format!("ERR {reason}")),
            "{reason}: {said:?}"
        );
        wait_for(reason, || {
            probe.get().frames_rejected.total() == i as u64 + 1
        });
        // The counter moves before the warning is written: wait for the line too.
        wait_for(&format!("{reason} logged with {peer}"), || {
            logged(&peer, reason).is_some()
        });
        let line = logged(&peer, reason).unwrap_or_else(|| panic!("{reason} logged with {peer}"));
        assert!(line.contains("WARN"), "{line}");
    }

    // A packet cut short: the header and half the pixels, then the sender vanishes.
    let mut c = tcp(&addr);
    let peer = c.local_addr().unwrap().to_string();
    let m = frame_msg(3, 0.3);
    c.write_all(&m[..HEADER_LEN + H * W]).unwrap();
    drop(c);
    wait_for("truncated payload", || {
        probe.get().frames_rejected.truncated == 1
    });
    wait_for("truncated payload logged", || {
        logged(&peer, "truncated").is_some()
    });
    // A header cut short.
    let mut c = tcp(&addr);
    c.write_all(&m[..20]).unwrap();
    drop(c);
    wait_for("truncated header", || {
        probe.get().frames_rejected.truncated == 2
    });

    // A later good client: all its frames arrive, then its end-of-stream ends the stream.
    let mut c = tcp(&addr);
    for i in 3..10 {
        c.write_all(&frame_msg(i, i as f64 * 0.1)).unwrap();
    }
    c.write_all(&FrameHeader::end_of_stream(7).encode())
        .unwrap();
    assert_eq!(reply(&mut c), "OK frames=7 rejected=0\n");
    let (got, src) = rx.join().unwrap();
    assert_eq!(got.len(), 10);
    for (i, (info, px)) in got.iter().enumerate() {
        assert_eq!(info.index, i as u64);
        assert_eq!(info.time, i as f64 * 0.1);
        assert!(px == &pattern(i as u64), "pixels of frame {i}");
    }
    let s = src.stats();
    assert_eq!(s.frames_ok, 10);
    let r = &s.frames_rejected;
    assert_eq!(
        (
            r.bad_magic,
            r.bad_version,
            r.bad_checksum,
            r.bad_shape,
            r.bad_size,
            r.bad_dtype,
            r.truncated
        ),
        (1, 1, 1, 1, 1, 1, 2)
    );
    assert_eq!(s.clients_accepted, 10);
    assert_eq!(s.clients_refused, 0);
    assert_eq!(s.end_of_stream, 1);
    // One clean hang-up and two mid-frame ones.
    assert_eq!(s.disconnects, 3);
}

#[test]
fn a_second_client_is_refused_and_the_first_keeps_streaming_over_a_unix_socket() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frames.sock");
    let src = StreamSource::bind(opts(&format!("unix:{}", path.display()))).unwrap();
    let probe = StatsProbe::new(&src);
    let rx = consume(src);

    let mut a = UnixStream::connect(&path).unwrap();
    for i in 0..5 {
        a.write_all(&frame_msg(i, 1.0 + i as f64)).unwrap();
    }
    wait_for("first client's frames", || probe.get().frames_ok == 5);
    let mut b = UnixStream::connect(&path).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let said = reply(&mut b);
    assert!(said.starts_with("ERR busy"), "{said:?}");
    assert_eq!(probe.get().clients_refused, 1);
    wait_for("second client refusal logged", || {
        logged("#2", "refused a second client").is_some()
    });
    for i in 5..12 {
        a.write_all(&frame_msg(i, 1.0 + i as f64)).unwrap();
    }
    a.write_all(&FrameHeader::end_of_stream(12).encode())
        .unwrap();
    a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(reply(&mut a), "OK frames=12 rejected=0\n");
    let (got, src) = rx.join().unwrap();
    assert_eq!(got.len(), 12);
    for (i, (_, px)) in got.iter().enumerate() {
        assert!(px == &pattern(i as u64), "pixels of frame {i}");
    }
    let s = src.stats();
    assert_eq!((s.clients_accepted, s.clients_refused), (1, 1));
    drop(src);
    assert!(!path.exists(), "socket file removed");
}

#[test]
fn stalls_bad_timestamps_and_a_full_pool_neither_wedge_the_receiver_nor_the_sender() {
    logs();
    let mut o = opts("127.0.0.1:0");
    o.buffers = 2;
    o.stall_timeout = Duration::from_millis(300);
    o.end_on_eos = false;
    let mut src = StreamSource::bind(o).unwrap();
    let addr = src.local_addr();
    let probe = StatsProbe::new(&src);

    // A sender that starts a frame and stops sending is dropped after the stall timeout.
    let mut c = tcp(&addr);
    let m = frame_msg(0, 0.0);
    c.write_all(&m[..HEADER_LEN + 100]).unwrap();
    let said = reply(&mut c);
    assert!(said.starts_with("ERR stalled"), "{said:?}");
    assert_eq!(probe.get().frames_rejected.stalled, 1);

    // Frames out of order or with a time that goes back are dropped; the connection stays up.
    let mut c = tcp(&addr);
    c.write_all(&frame_msg(0, 5.0)).unwrap();
    c.write_all(&frame_msg(1, 4.0)).unwrap(); // time goes back
    c.write_all(&frame_msg(1, 6.0)).unwrap(); // index 1 again
    let mut nan = FrameHeader::frame(2, f64::NAN, Clock::Rig, 0, H as u32, W as u32)
        .encode()
        .to_vec();
    nan.extend(bytes(&pattern(2)));
    c.write_all(&nan).unwrap();
    // Nobody reads frames now: the pool (2 buffers) is full after frame 0 and 4, so the next ones
    // wait for a buffer, then are dropped after the stall timeout instead of blocking the sender.
    for i in 4..8 {
        c.write_all(&frame_msg(i, 6.0 + i as f64)).unwrap();
    }
    c.write_all(&FrameHeader::end_of_stream(8).encode())
        .unwrap();
    let said = reply(&mut c);
    assert_eq!(said, "OK frames=2 rejected=6\n");
    let s = probe.get();
    assert_eq!(s.frames_rejected.bad_timestamp, 2);
    assert_eq!(s.frames_rejected.out_of_order, 1);
    assert_eq!(s.frames_dropped, 3);
    assert!(s.backpressure_waits >= 3);

    // The two accepted frames are still there, in order; then the stream is stopped.
    let mut buf = vec![0u16; H * W];
    let a = src.next_frame(&mut buf).unwrap().unwrap();
    assert_eq!((a.index, a.time), (0, 5.0));
    assert!(buf == pattern(0));
    let b = src.next_frame(&mut buf).unwrap().unwrap();
    assert_eq!((b.index, b.time), (1, 10.0));
    assert!(buf == pattern(4));
    src.handle().stop();
    assert!(src.next_frame(&mut buf).unwrap().is_none());
    // A wrong-sized caller buffer is an error, not a panic.
    assert!(src.next_frame(&mut [0u16; 3]).is_err());
}

#[test]
fn idle_timeout_ends_the_stream_and_bind_errors_are_clear() {
    let _serial = serial();
    let mut o = opts("127.0.0.1:0");
    o.idle_timeout = Some(Duration::from_millis(200));
    // The idle time counts from the bind.
    let t0 = Instant::now();
    let mut src = StreamSource::bind(o).unwrap();
    // The port is taken while the source listens.
    let taken = src.local_addr();
    let e = StreamSource::bind(opts(&taken)).err().unwrap();
    assert!(e.to_string().contains(&taken), "{e}");
    let mut buf = vec![0u16; H * W];
    assert!(src.next_frame(&mut buf).unwrap().is_none());
    assert!(t0.elapsed() >= Duration::from_millis(200));

    let e = StreamSource::bind(opts("localhost:7700")).err().unwrap();
    assert!(e.to_string().contains("unix:/path"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("not-a-socket");
    std::fs::write(&f, b"x").unwrap();
    let e = StreamSource::bind(opts(&format!("unix:{}", f.display())))
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a socket"), "{e}");

    // The CLI refuses a receiver that is not there with one line.
    let o = run(&["stream", "/nonexistent.h5", "--to", "127.0.0.1:1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).starts_with("rig: error:"), "{}", stderr(&o));
}

/// Reads a source's stats while the source itself is on the consumer thread.
struct StatsProbe(StreamHandle);

impl StatsProbe {
    fn new(src: &StreamSource) -> Self {
        StatsProbe(src.handle())
    }
    fn get(&self) -> StreamStats {
        self.0.stats()
    }
}

/// What `rig run` does with `imaging.source = "stream"`: the source inside `pipeline::run`, with
/// extraction and the session recorder. Every frame sent is recorded, byte-exact, none lost.
#[test]
fn stream_source_feeds_the_pipeline_recorder_and_extraction() {
    let _serial = serial();

    use twinrig::pipeline::replay::analysis_for;
    use twinrig::pipeline::{run as run_pipeline, PipelineOptions, Sink};
    use twinrig::session::{SessionInfo, SessionWriter};

    logs();
    let dir = tempfile::tempdir().unwrap();
    let session = simulate(dir.path(), "s.h5", 3.0, 8);
    let r = SessionReader::open(&session).unwrap();
    let cfg = r.config().unwrap();
    let n = r.meta().n_frames;
    let times = r.frame_times().unwrap();
    let mut frames = vec![vec![0u16; H * W]; n];
    for (i, f) in frames.iter_mut().enumerate() {
        r.read_frame_into(i, f).unwrap();
    }
    let rois = r
        .rois()
        .unwrap()
        .expect("simulated sessions carry ROI masks");
    let analysis = analysis_for(&cfg, H, W, rois.clone(), false, Default::default());

    let src = StreamSource::bind(StreamOptions::from_config(&twinrig::config::Imaging {
        listen: "127.0.0.1:0".into(),
        ..cfg.imaging.clone()
    }))
    .unwrap();
    let addr = src.local_addr();
    let handle = src.handle();
    let out = dir.path().join("live.h5");
    let info = SessionInfo {
        mouse_id: "m".into(),
        session_id: "live".into(),
        start_time: "2026-01-01T00:00:00Z".into(),
    };
    let mut wr = SessionWriter::create(&out, &cfg, &info, false).unwrap();
    wr.begin_traces(rois.len()).unwrap();
    let mut sink = Sink {
        writer: Some(wr),
        ..Default::default()
    };
    let sender = {
        let (frames, times) = (frames.clone(), times.clone());
        std::thread::spawn(move || {
            let mut tx = twinrig::acquire::stream::FrameSender::connect(&addr).unwrap();
            for (i, (f, &t)) in frames.iter().zip(&times).enumerate() {
                let h = FrameHeader::frame(i as u64, t, Clock::Rig, 0, H as u32, W as u32);
                tx.send_frame(&h, f).unwrap();
            }
            tx.finish(Duration::from_secs(30)).unwrap()
        })
    };
    let popts = PipelineOptions {
        ring_slots: 16,
        lossless_analysis: false,
        frame_rate_hz: cfg.imaging.frame_rate_hz,
    };
    let control = twinrig::pipeline::RunControl::default();
    let summary = run_pipeline(
        Box::new(src),
        Some(analysis),
        &mut sink,
        popts,
        &control,
        &|_| {},
    )
    .unwrap();
    let reply = sender.join().unwrap();
    assert_eq!(
        reply.as_deref(),
        Some(format!("OK frames={n} rejected=0").as_str())
    );
    assert_eq!(summary.frames_in, n as u64);
    assert_eq!(summary.frames_recorded, n as u64);
    assert_eq!(summary.frames_lost, 0);
    assert_eq!(
        summary.frames_analysed + summary.frames_skipped,
        n as u64,
        "analysis accounts for every frame"
    );
    assert_eq!(handle.stats().frames_delivered, n as u64);
    sink.writer
        .take()
        .unwrap()
        .finish("2026-01-01T00:01:00Z")
        .unwrap();
    let w = SessionReader::open(&out).unwrap();
    assert_eq!(w.frame_times().unwrap(), times);
    let mut b = vec![0u16; H * W];
    for (i, f) in frames.iter().enumerate() {
        w.read_frame_into(i, &mut b).unwrap();
        assert!(&b == f, "frame {i}");
    }
    assert!(w.traces().unwrap().is_some());
}

/// `rig stream-recv --rois`: what arrives goes through the pipeline (recorder ring, extraction with
/// a reference from the first frames), as in `rig run`; `rig stream` is the sender.
#[test]
fn rig_stream_recv_with_rois_records_frames_and_traces_through_the_pipeline() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let session = simulate(dir.path(), "s.h5", 3.0, 9);
    let text = small_config_text().replace("reference_frames = 200", "reference_frames = 30");
    let cfg = write_config(dir.path(), "recv.toml", &text);
    let out = dir.path().join("live.h5");
    let mut recv = rig()
        .args([
            "stream-recv",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--rois",
            session.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--idle-timeout",
            "30",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut err, addr) = listening(&mut recv);
    let o = run(&[
        "stream",
        session.to_str().unwrap(),
        "--to",
        &addr,
        "--max-speed",
    ]);
    assert!(o.status.success(), "rig stream: {}", stderr(&o));
    assert!(
        stdout(&o).contains("receiver: OK frames=90 rejected=0"),
        "{}",
        stdout(&o)
    );
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let ro = recv.wait_with_output().unwrap();
    assert!(ro.status.success(), "stream-recv: {rest}");
    let v: serde_json::Value = serde_json::from_slice(&ro.stdout).unwrap();
    assert_eq!(v["frames_recorded"], 90);
    let p = &v["pipeline"];
    assert_eq!(p["frames_in"], 90);
    assert_eq!(p["frames_lost"], 0);
    assert_eq!(
        p["frames_analysed"].as_u64().unwrap() + p["frames_skipped"].as_u64().unwrap(),
        90
    );

    let r = SessionReader::open(&session).unwrap();
    let w = SessionReader::open(&out).unwrap();
    assert!(w.meta().complete);
    assert_eq!(w.frame_times().unwrap(), r.frame_times().unwrap());
    assert_eq!(w.meta().n_rois, r.meta().n_rois);
    let (mut a, mut b) = (vec![0u16; H * W], vec![0u16; H * W]);
    for i in 0..90 {
        r.read_frame_into(i, &mut a).unwrap();
        w.read_frame_into(i, &mut b).unwrap();
        assert!(a == b, "frame {i}");
    }
    let t = w.traces().unwrap().expect("traces recorded");
    assert_eq!(
        t.frame_index.len() as u64,
        p["frames_analysed"].as_u64().unwrap()
    );
    assert!(t.frame_index.windows(2).all(|f| f[1] > f[0]));
}
