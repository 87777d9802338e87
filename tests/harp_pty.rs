//! The host driver against the simulated sync board over real pseudo-terminals: handshake, event
//! timestamps, clock mapping, unplug/replug, garbage and bad checksums, a silent device.
//!
//! Pty allocation is not thread-safe, and these tests measure timing, so they run one at a time.

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

fn collect(drv: &HarpDriver, for_s: f64) -> Vec<SyncEvent> {
    let rx = drv.events();
    let end = Instant::now() + Duration::from_secs_f64(for_s);
    let mut v = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if let Ok(e) = rx.recv_timeout(left) {
            v.push(e);
        }
    }
    v
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
    // Loose bound: the test machine is shared; the benchmark measures the real figure.
    assert!(rt.p50_us > 0.0 && rt.p50_us < 20_000.0, "{rt:?}");
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
    let events = collect(&drv, 2.0);
    let frames: Vec<&SyncEvent> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::FrameClock { .. }))
        .collect();
    assert!(frames.len() >= 50, "{} frame events", frames.len());
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
    // Photodiode flips alternate at the display refresh, 4 ms after the flip.
    let flips: Vec<(f64, bool)> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Photodiode { level } => Some((e.device_s, level)),
            _ => None,
        })
        .collect();
    assert!(flips.len() >= 90, "{} flips", flips.len());
    assert!(flips.windows(2).all(|w| w[0].1 != w[1].1));
    let refresh = 1.0 / cfg.display.refresh_hz * (1.0 + drift * 1e-6);
    for w in flips.windows(2) {
        assert!((w[1].0 - w[0].0 - refresh).abs() < 40e-6);
    }
    let encoders = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Encoder { .. }))
        .count();
    assert!((100..=230).contains(&encoders), "{encoders} encoder events");
    // Events map onto the host clock shortly before they were read.
    for e in &events[events.len() / 2..] {
        let lag = e.received_s - e.rig_s;
        assert!((-0.001..0.5).contains(&lag), "lag {lag} of {e:?}");
    }
    let est = drv.clock().unwrap();
    let err_ppm = est.drift_ppm - (1.0 / (1.0 + drift * 1e-6) - 1.0) * 1e6;
    eprintln!(
        "clock: drift {:.1} ppm (truth {:.1}), error {err_ppm:.1} ppm, residual {:.1} us over {:.1} s",
        est.drift_ppm,
        -drift,
        est.residual_rms_s * 1e6,
        est.span_s
    );
    assert!(err_ppm.abs() < 40.0, "{est:?}");
    assert_eq!(drv.stats().events_dropped, 0);
}

#[test]
fn unplug_and_replug_reconnects_and_records_the_gap() {
    let _g = serial();
    let (cfg, mut b) = board(SimBoardOptions::default());
    let drv = HarpDriver::open(&b.port(), options(&cfg)).unwrap();
    let before = collect(&drv, 0.3);
    assert!(before.iter().all(|e| e.connection == 0) && !before.is_empty());
    b.unplug();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!drv.is_connected());
    let err = drv.read(reg::WHO_AM_I, ElementType::U16).unwrap_err();
    assert!(matches!(err, HarpError::Disconnected { .. }), "{err}");
    b.replug();
    assert!(
        drv.wait_connected(Duration::from_secs(3)),
        "{:?}",
        drv.stats()
    );
    let gaps = drv.gaps();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(
        gaps[0].duration_s > 0.25 && gaps[0].duration_s < 2.0,
        "{gaps:?}"
    );
    assert!(!gaps[0].reason.is_empty());
    let after = collect(&drv, 0.4);
    assert!(
        after
            .iter()
            .any(|e| e.connection == 1 && matches!(e.kind, EventKind::FrameClock { .. })),
        "no frame events after the replug"
    );
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
    let events = collect(&drv, 0.5);
    let s = drv.stats();
    assert_eq!(b.status().corrupted, 6);
    assert!(s.bad_checksums - base.bad_checksums >= 6, "{s:?}");
    assert!(s.discarded_bytes - base.discarded_bytes >= 8, "{s:?}");
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
    assert!(waited >= Duration::from_millis(290) && waited < Duration::from_secs(2));

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
