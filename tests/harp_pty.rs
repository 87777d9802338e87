//! The host driver against the simulated sync board over real pseudo-terminals: handshake, event
//! timestamps, clock mapping, unplug/replug, garbage and bad checksums, a silent device.
//!
//! Pty allocation is not thread-safe, so these tests run one at a time. The board runs on the
//! wall clock, but its events carry device timestamps: the tests check those (exact on the
//! device clock), counts and orderings, and collect until enough has arrived rather than for a
//! fixed time, so a loaded machine makes them slower, not red. Latency figures (round trip,
//! event lag) are printed; `cargo bench --bench harp` and `rig validate` measure them.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use twinrig::config::RigConfig;
use twinrig::harp::sim::{SimBoard, SimBoardOptions};
use twinrig::harp::{EventKind, HarpDriver, HarpError, HarpOptions, SyncEvent};
use twinrig_firmware::device::registers::address as reg;
use twinrig_firmware::harp::{ElementType, Payload};

static PTY: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    PTY.lock().unwrap_or_else(|e| e.into_inner())
}

fn options(cfg: &RigConfig) -> HarpOptions {
    HarpOptions::from_config(&cfg.sync).unwrap()
}

fn board(opts: SimBoardOptions) -> (RigConfig, SimBoard) {
    let cfg = RigConfig::embedded_sim();
    let b = SimBoard::spawn(&cfg, opts).unwrap();
    (cfg, b)
}

/// Collects events until `enough` holds for them (or panics after a minute: a liveness bound,
/// far beyond what any load explains).
fn collect_until(
    drv: &HarpDriver,
    what: &str,
    enough: impl Fn(&[SyncEvent]) -> bool,
) -> Vec<SyncEvent> {
    let rx = drv.events();
    let end = Instant::now() + Duration::from_secs(60);
    let mut v = Vec::new();
    while !enough(&v) {
        let left = end
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("waited a minute for {what}: {} events", v.len()));
        if let Ok(e) = rx.recv_timeout(left.min(Duration::from_millis(100))) {
            v.push(e);
        }
    }
    v
}

fn count(events: &[SyncEvent], f: impl Fn(&EventKind) -> bool) -> usize {
    events.iter().filter(|e| f(&e.kind)).count()
}

fn is_frame(k: &EventKind) -> bool {
    matches!(k, EventKind::FrameClock { .. })
}

fn is_flip(k: &EventKind) -> bool {
    matches!(k, EventKind::Photodiode { .. })
}

#[test]
fn handshake_identity_and_register_access() {
    let _g = serial();
    let (cfg, b) = board(SimBoardOptions::default());
    let drv = HarpDriver::open(&b.port(), options(&cfg)).unwrap();
    let id = drv.identity();
    assert_eq!(id.who_am_i, 2176);
    assert_eq!(id.core, "1.13");
    assert_eq!(id.firmware, "0.1");
    assert!(id.name.contains("twinrig"), "{id:?}");
    assert!(id
        .version
        .as_deref()
        .unwrap_or("")
        .contains("protocol 1.13.0"));
    assert!(drv.is_connected());
    assert_eq!(
        drv.read(reg::ENCODER_RATE, ElementType::U16)
            .unwrap()
            .first::<u16>(),
        Some(100)
    );
    let reply = drv.write(reg::OUTPUT_SET, Payload::U8(&[0x03])).unwrap();
    assert_eq!(reply.first::<u8>(), Some(0x03));
    // The device is Active after the handshake.
    let op = drv.read(reg::OPERATION_CTRL, ElementType::U8).unwrap();
    assert_eq!(op.first::<u8>().map(|v| v & 3), Some(1));
    // A wrong type is refused by the device, and said so.
    let err = drv.read(reg::ENCODER, ElementType::U8).unwrap_err();
    assert!(matches!(err, HarpError::Refused { .. }), "{err}");
    let rt = drv.round_trip(50).unwrap();
    // Every read answered and the statistics ordered; the figure itself depends on the load
    // (the benchmark and `rig validate` measure it).
    eprintln!("round trip: {rt:?}");
    assert_eq!(rt.count, 50, "{rt:?}");
    assert!(
        rt.p50_us > 0.0 && rt.p50_us <= rt.p99_us && rt.p99_us <= rt.max_us,
        "{rt:?}"
    );
    drv.close();
}

#[test]
fn events_carry_device_timestamps_and_the_clock_mapping_converges() {
    let _g = serial();
    let drift = 80.0;
    let (cfg, b) = board(SimBoardOptions {
        drift_ppm: drift,
        ..Default::default()
    });
    let drv = HarpDriver::open(&b.port(), options(&cfg)).unwrap();
    let events = collect_until(&drv, "50 frames and 90 flips", |v| {
        count(v, is_frame) >= 50 && count(v, is_flip) >= 90
    });
    let frames: Vec<&SyncEvent> = events.iter().filter(|e| is_frame(&e.kind)).collect();
    // Consecutive counts, one imaging period apart on the device clock (which runs `drift` fast),
    // to within the 32 µs Harp tick.
    let period = 1.0 / cfg.imaging.frame_rate_hz * (1.0 + drift * 1e-6);
    for w in frames.windows(2) {
        let (EventKind::FrameClock { count: a }, EventKind::FrameClock { count: c }) =
            (w[0].kind, w[1].kind)
        else {
            unreachable!()
        };
        assert_eq!(c, a + 1);
        let dt = w[1].device_s - w[0].device_s;
        assert!((dt - period).abs() < 40e-6, "frame interval {dt}");
        // Device time is the edge's capture time: an exact multiple of the period.
        let k = (w[1].device_s - 1000.0) / period;
        assert!(
            (k - k.round()).abs() * period < 40e-6,
            "frame at {}",
            w[1].device_s
        );
    }
    // Photodiode flips alternate, 4 ms after a flip on the display's refresh grid: whole
    // refresh periods apart on the device clock. (A board thread stalled for over half a second
    // drops the stale flips, so "whole periods", not "one period".)
    let flips: Vec<(f64, bool)> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Photodiode { level } => Some((e.device_s, level)),
            _ => None,
        })
        .collect();
    let refresh = 1.0 / cfg.display.refresh_hz * (1.0 + drift * 1e-6);
    for w in flips.windows(2) {
        let periods = (w[1].0 - w[0].0) / refresh;
        assert!(
            periods.round() >= 1.0 && (periods - periods.round()).abs() * refresh < 40e-6,
            "flip interval {}",
            w[1].0 - w[0].0
        );
        if periods.round() == 1.0 {
            assert_ne!(w[0].1, w[1].1, "consecutive flips alternate");
        }
    }
    // Encoder events are periodic on the device clock (100 Hz, the ENCODER_RATE read above):
    // the device sends one late rather than a burst, so never more than the rate allows over
    // the device time the events span.
    let encoders = count(&events, |k| matches!(k, EventKind::Encoder { .. }));
    let span = events.last().unwrap().device_s - events[0].device_s;
    eprintln!("{encoders} encoder events over {span:.2} s of device time");
    assert!(
        encoders >= 1 && encoders as f64 <= span * 100.0 + 2.0,
        "{encoders} in {span} s"
    );
    // Events map onto the host clock before they were read (how long before depends on the
    // load, and is printed).
    let mut worst = 0f64;
    for e in &events[events.len() / 2..] {
        let lag = e.received_s - e.rig_s;
        worst = worst.max(lag);
        assert!(lag >= -0.001, "lag {lag} of {e:?}");
    }
    eprintln!("largest event lag {:.1} ms", worst * 1e3);
    let est = drv.clock().unwrap();
    let err_ppm = est.drift_ppm - (1.0 / (1.0 + drift * 1e-6) - 1.0) * 1e6;
    eprintln!(
        "clock: drift {:.1} ppm (truth {:.1}), error {err_ppm:.1} ppm, residual {:.1} us over {:.1} s",
        est.drift_ppm,
        -drift,
        est.residual_rms_s * 1e6,
        est.span_s
    );
    // The estimate is within its own error bar: a line fitted to `bins` points spread over
    // `span_s` with residual `r` has a slope error of about r * sqrt(12 / bins) / span. Six of
    // those, plus the 40 ppm an idle machine reaches: link jitter on a loaded machine widens
    // the residual, and the bound with it.
    let own = est.residual_rms_s * (12.0 / est.bins.max(1) as f64).sqrt() / est.span_s * 1e6;
    assert!(
        err_ppm.abs() < 40.0 + 6.0 * own,
        "{est:?} (own error {own:.1} ppm)"
    );
    assert_eq!(drv.stats().events_dropped, 0);
}

#[test]
fn unplug_and_replug_reconnects_and_records_the_gap() {
    let _g = serial();
    let (cfg, mut b) = board(SimBoardOptions::default());
    let drv = HarpDriver::open(&b.port(), options(&cfg)).unwrap();
    let before = collect_until(&drv, "an event", |v| !v.is_empty());
    assert!(before.iter().all(|e| e.connection == 0));
    b.unplug();
    // The driver notices on its reader thread; wait for that, then leave the board unplugged
    // for 300 ms of the gap.
    let noticed = Instant::now() + Duration::from_secs(60);
    while drv.is_connected() {
        assert!(Instant::now() < noticed, "the unplug was never noticed");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let err = drv.read(reg::WHO_AM_I, ElementType::U16).unwrap_err();
    assert!(matches!(err, HarpError::Disconnected { .. }), "{err}");
    b.replug();
    assert!(
        drv.wait_connected(Duration::from_secs(60)),
        "{:?}",
        drv.stats()
    );
    let gaps = drv.gaps();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    // At least the 300 ms it stayed unplugged after the driver noticed (longer under load).
    assert!(gaps[0].duration_s > 0.25, "{gaps:?}");
    assert!(!gaps[0].reason.is_empty());
    let after = collect_until(&drv, "a frame event after the replug", |v| {
        v.iter().any(|e| e.connection == 1 && is_frame(&e.kind))
    });
    // The rig clock continues across the replug although the device clock restarted.
    let last_before = before.last().unwrap().rig_s;
    let first_after = after.iter().find(|e| e.connection == 1).unwrap().rig_s;
    assert!(
        first_after - last_before > 0.25,
        "{last_before} -> {first_after}"
    );
    assert_eq!(drv.stats().reconnects, 1);
    assert_eq!(b.status().boots, 2);
}

#[test]
fn garbage_and_bad_checksums_are_counted_and_survived() {
    let _g = serial();
    let (cfg, mut b) = board(SimBoardOptions::default());
    let drv = HarpDriver::open(&b.port(), options(&cfg)).unwrap();
    let base = drv.stats();
    b.inject_garbage(&[0x00, 0x42, 0xFF, 0x17, 0x99, 0x00, 0x00, 0x31]);
    b.corrupt_next(6);
    // Until the driver has counted all of it (and kept receiving events after it).
    let events = collect_until(&drv, "the corrupted messages to be counted", |v| {
        let s = drv.stats();
        s.bad_checksums - base.bad_checksums >= 6
            && s.discarded_bytes - base.discarded_bytes >= 8
            && v.len() > 50
    });
    assert_eq!(b.status().corrupted, 6);
    assert!(events.len() > 50);
    // The link still works.
    assert_eq!(
        drv.read(reg::WHO_AM_I, ElementType::U16)
            .unwrap()
            .first::<u16>(),
        Some(2176)
    );
}

#[test]
fn a_device_that_never_answers_times_out_with_a_clear_error() {
    let _g = serial();
    let (cfg, mut b) = board(SimBoardOptions::default());
    b.set_mute(true);
    let t = Instant::now();
    let err = HarpDriver::open(&b.port(), options(&cfg)).err().unwrap();
    let waited = t.elapsed();
    let msg = err.to_string();
    assert!(matches!(err, HarpError::Timeout { tries: 3, .. }), "{msg}");
    assert!(
        msg.contains("R_WHO_AM_I") && msg.contains("no reply"),
        "{msg}"
    );
    // Three tries of 100 ms each at least (a loaded machine only makes it longer).
    assert!(waited >= Duration::from_millis(290), "{waited:?}");

    // A device that stops answering after the handshake: requests time out, retries are counted.
    b.set_mute(false);
    let drv = HarpDriver::open(&b.port(), options(&cfg)).unwrap();
    b.set_mute(true);
    let err = drv.read(reg::FRAME_CLOCK, ElementType::U32).unwrap_err();
    assert!(matches!(err, HarpError::Timeout { .. }), "{err}");
    let s = drv.stats();
    assert_eq!((s.timeouts, s.retries), (1, 2), "{s:?}");
}

#[test]
fn wrong_device_is_refused_by_name() {
    let _g = serial();
    let (mut cfg, b) = board(SimBoardOptions::default());
    cfg.sync.who_am_i = 1216;
    let err = HarpDriver::open(&b.port(), options(&cfg)).err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("2176") && msg.contains("1216"), "{msg}");
}
