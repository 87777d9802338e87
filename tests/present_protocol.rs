//! The display protocol against a headless presenter (no window): PresenterClient ↔ protocol
//! server, what reaches the framebuffer, bad input, a second client, reconnection.
//!
//! The headless presenter flips on the wall clock, so a loaded machine makes it miss flips and
//! run late. The tests check what must hold whatever the load (sequence numbers, orderings, the
//! frames shown up to the first missed flip, never early); the timing figures are printed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use twinrig::config::RigConfig;
use twinrig::present::client::monotonic_clock;
use twinrig::present::render::encode;
use twinrig::present::server::HeadlessPresenter;
use twinrig::present::{Display, DisplayError, PresentedFrame, PresenterClient};

fn config() -> RigConfig {
    let text = twinrig::config::EMBEDDED_SIM_CONFIG
        .replace("width_px = 1920", "width_px = 160")
        .replace("height_px = 1080", "height_px = 120")
        .replace("photodiode_size_px = 64", "photodiode_size_px = 16")
        .replace("width = 64 ", "width = 16 ")
        .replace("height = 36", "height = 12");
    RigConfig::parse(&text, "test.toml").unwrap()
}

/// A 4-frame 12x16 clip: frame i is uniform at value 40*i + 20.
fn clip() -> Vec<u8> {
    (0..4)
        .flat_map(|i| vec![40 * i as u8 + 20; 12 * 16])
        .collect()
}

/// Polls flips until `until` holds for one of them (or the timeout); returns all polled.
fn flips_until(
    c: &mut PresenterClient,
    until: impl Fn(&PresentedFrame) -> bool,
) -> Vec<PresentedFrame> {
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n0 = all.len();
        c.poll_flips(&mut all).expect("poll_flips");
        if all[n0..].iter().any(&until) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "timed out; flips: {:?}",
            all.last()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn px(v: u8) -> u32 {
    v as u32 * 0x010101
}

#[test]
fn a_clip_plays_frame_by_frame_then_gray_with_a_toggling_photodiode() {
    let cfg = config();
    let p = HeadlessPresenter::start(&cfg, "127.0.0.1:0").unwrap();
    let mut c = PresenterClient::connect(p.addr(), monotonic_clock()).unwrap();
    assert_eq!(c.info().version, 1);
    assert!(!c.info().vsync);
    let (_, rtt) = c.clock_offset();
    assert!(rtt.is_finite() && rtt >= 0.0, "rtt {:?}", c.clock_offset());
    c.upload_clip(3, &clip(), 4, 12, 16).unwrap();
    c.play(3, None).unwrap();
    let flips = flips_until(&mut c, |f| f.clip == 3 && f.frame == 3);
    let flips = flips_until(&mut c, |f| f.clip == -1)
        .into_iter()
        .fold(flips, |mut a, f| {
            a.push(f);
            a
        });
    let shown: Vec<(i64, u32)> = flips
        .iter()
        .skip_while(|f| f.clip != 3)
        .take_while(|f| f.clip == 3)
        .map(|f| (f.clip, f.frame))
        .collect();
    // 30 Hz stimulus on a 60 Hz display: each frame on two consecutive flips. A missed flip
    // skips frames, never stretches them, so the sequence is exact up to the first flip that
    // came after a miss (the clip's first flip may follow one: that miss was before the clip),
    // and after it frames still only move forward, none shown more than twice.
    let want = [
        (3, 0),
        (3, 0),
        (3, 1),
        (3, 1),
        (3, 2),
        (3, 2),
        (3, 3),
        (3, 3),
    ];
    let clip_flips: Vec<&PresentedFrame> = flips
        .iter()
        .skip_while(|f| f.clip != 3)
        .take_while(|f| f.clip == 3)
        .collect();
    assert_eq!(clip_flips.len(), shown.len());
    let exact = clip_flips
        .iter()
        .skip(1)
        .position(|f| f.missed > 0)
        .map_or(shown.len(), |i| i + 1);
    assert!(exact >= 1, "the clip was shown");
    assert_eq!(shown[..exact], want[..exact], "flips: {clip_flips:?}");
    assert_eq!(shown[0], (3, 0), "the clip starts at its first frame");
    assert!(
        shown.windows(2).all(|w| w[1].1 >= w[0].1),
        "frames only move forward: {shown:?}"
    );
    for k in 0..4 {
        assert!(shown.iter().filter(|s| s.1 == k).count() <= 2, "{shown:?}");
    }
    if exact == shown.len() {
        assert_eq!(shown, want, "no flip missed: the whole clip");
    }
    assert!(flips.windows(2).all(|w| w[0].photodiode != w[1].photodiode));
    assert!(flips.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    // Flip times are on the rig clock and move forward; about a refresh apart when the machine
    // is idle (printed: how close depends on the load).
    assert!(flips.windows(2).all(|w| w[1].time > w[0].time));
    let dt: Vec<f64> = flips.windows(2).map(|w| w[1].time - w[0].time).collect();
    let mean = dt.iter().sum::<f64>() / dt.len() as f64;
    let missed: u32 = flips.iter().map(|f| f.missed).sum();
    eprintln!(
        "{} flips, mean interval {:.2} ms, {missed} missed",
        flips.len(),
        mean * 1e3
    );

    // A held frame reaches the framebuffer gamma-corrected, with the patch in its corner.
    c.show(3, 2).unwrap();
    flips_until(&mut c, |f| f.clip == 3 && f.frame == 2);
    flips_until(&mut c, |f| f.clip == 3 && f.frame == 2);
    let (fb, w) = p.last_frame();
    let w = w as usize;
    assert_eq!(fb.len(), 160 * 120);
    assert_eq!(fb[60 * w + 80], px(encode(100.0 / 255.0, 2.2)));
    let patch = fb[119 * w + 159];
    assert!(patch == 0 || patch == 0xFF_FFFF, "patch {patch:x}");
    assert_eq!(fb[104 * w + 144], patch);
    assert_eq!(fb[103 * w + 143], px(encode(100.0 / 255.0, 2.2)));
    c.gray().unwrap();
    flips_until(&mut c, |f| f.clip == -1);
    flips_until(&mut c, |f| f.clip == -1);
    let (fb, _) = p.last_frame();
    assert_eq!(fb[60 * w + 80], px(encode(0.5, 2.2)));
}

#[test]
fn play_at_a_rig_time_starts_on_the_flip_nearest_it() {
    let cfg = config();
    let p = HeadlessPresenter::start(&cfg, "127.0.0.1:0").unwrap();
    let clock = monotonic_clock();
    let mut c = PresenterClient::connect(p.addr(), clock.clone()).unwrap();
    c.upload_clip(1, &clip(), 4, 12, 16).unwrap();
    let at = clock() + 0.3;
    c.play(1, Some(at)).unwrap();
    let flips = flips_until(&mut c, |f| f.clip == 1);
    let first = flips.iter().find(|f| f.clip == 1).unwrap();
    // Gray until then. (Not "the gray flip was before `at`": a flip due before `at` may be
    // handed over after it on a loaded machine.)
    let before = flips.iter().rev().find(|f| f.clip == -1).unwrap();
    assert!(
        before.seq < first.seq && before.time < first.time,
        "{flips:?}"
    );
    assert!(flips
        .iter()
        .take_while(|f| f.seq < first.seq)
        .all(|f| f.clip == -1));
    // The flip time is when the frame was handed over; it may run late under load (by how much
    // is printed, not bounded), never early by more than half a period plus the clock-offset
    // error, which is at most half the round trip the offset was measured over.
    let slack = 0.5 / 60.0 + c.clock_offset().1 / 2.0 + 0.002;
    assert!(
        first.time > at - slack,
        "started at {} for {at}",
        first.time
    );
    eprintln!("started {:.1} ms after {at}", (first.time - at) * 1e3);
    assert!(matches!(c.play(9, None), Err(DisplayError::UnknownClip(9))));
    assert!(matches!(
        c.upload_clip(2, &[0; 10], 4, 12, 16),
        Err(DisplayError::BadClip(_))
    ));
}

fn raw(addr: &str) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

/// Reads event lines until one contains `needle`; `None` if the connection closes first.
fn read_until(r: &mut BufReader<TcpStream>, needle: &str) -> Option<String> {
    loop {
        let mut l = String::new();
        match r.read_line(&mut l) {
            Ok(0) | Err(_) => return None,
            Ok(_) if l.contains(needle) => return Some(l),
            Ok(_) => {}
        }
    }
}

fn closed(r: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    // Read whatever is left; a closed connection ends with EOF.
    r.read_to_end(&mut rest).is_ok()
}

#[test]
fn garbage_is_refused_and_the_presenter_serves_the_next_client() {
    let cfg = config();
    let p = HeadlessPresenter::start(&cfg, "127.0.0.1:0").unwrap();

    // Not a hello.
    let (mut s, mut r) = raw(p.addr());
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let l = read_until(&mut r, "error").expect("an error");
    assert!(l.contains("\"fatal\":true") && l.contains("hello"), "{l}");
    assert!(closed(&mut r));

    // Binary noise with no newline: refused at the line limit.
    let (mut s, mut r) = raw(p.addr());
    let _ = s.write_all(&[0xA5u8; 10_000]);
    let l = read_until(&mut r, "error").expect("an error");
    assert!(l.contains("longer than"), "{l}");
    assert!(closed(&mut r));

    // A wrong version.
    let (mut s, mut r) = raw(p.addr());
    s.write_all(b"{\"hello\":\"twinrig-display\",\"version\":99}\n")
        .unwrap();
    let l = read_until(&mut r, "error").expect("an error");
    assert!(l.contains("version 99"), "{l}");
    assert!(closed(&mut r));

    // A good hello, then: a play of an unknown clip (answered, connection kept), a bad header
    // (fatal), each named.
    let (mut s, mut r) = raw(p.addr());
    s.write_all(b"{\"hello\":\"twinrig-display\",\"version\":1}\n")
        .unwrap();
    read_until(&mut r, "\"ev\":\"hello\"").expect("hello");
    s.write_all(b"{\"op\":\"play\",\"id\":42}\n").unwrap();
    let l = read_until(&mut r, "\"ev\":\"error\"").unwrap();
    assert!(
        l.contains("no clip 42") && l.contains("\"fatal\":false"),
        "{l}"
    );
    s.write_all(b"{\"op\":\"clock\",\"echo\":7}\n").unwrap();
    read_until(&mut r, "\"echo\":7").expect("still connected");
    s.write_all(b"{\"op\":\"upload\",\"id\":1,\"frames\":100000,\"height\":4096,\"width\":4096}\n")
        .unwrap();
    let l = read_until(&mut r, "\"ev\":\"error\"").unwrap();
    assert!(l.contains("limit") && l.contains("\"fatal\":true"), "{l}");
    assert!(closed(&mut r));

    let (mut s, mut r) = raw(p.addr());
    s.write_all(b"{\"hello\":\"twinrig-display\",\"version\":1}\n")
        .unwrap();
    read_until(&mut r, "\"ev\":\"hello\"").expect("hello");
    s.write_all(b"{\"op\":\"dance\"}\n").unwrap();
    let l = read_until(&mut r, "\"ev\":\"error\"").unwrap();
    assert!(l.contains("bad header"), "{l}");
    drop(s);

    // After all that, a proper client gets flips.
    let mut c = PresenterClient::connect(p.addr(), monotonic_clock()).unwrap();
    c.upload_clip(1, &clip(), 4, 12, 16).unwrap();
    c.play(1, None).unwrap();
    flips_until(&mut c, |f| f.clip == 1);
}

#[test]
fn one_client_at_a_time_and_a_client_that_leaves_leaves_gray() {
    let cfg = config();
    let p = HeadlessPresenter::start(&cfg, "127.0.0.1:0").unwrap();
    let mut c = PresenterClient::connect(p.addr(), monotonic_clock()).unwrap();
    c.upload_clip(1, &clip(), 4, 12, 16).unwrap();
    c.show(1, 3).unwrap();
    flips_until(&mut c, |f| f.clip == 1 && f.frame == 3);

    match PresenterClient::connect(p.addr(), monotonic_clock()) {
        Err(DisplayError::Presenter(m)) => assert!(m.contains("busy"), "{m}"),
        Err(e) => panic!("expected busy, got {e}"),
        Ok(_) => panic!("a second client was accepted"),
    }

    // The daemon goes away without a word: the presenter shows gray.
    drop(c);
    let gray = px(encode(0.5, 2.2));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (fb, w) = p.last_frame();
        if fb.get(60 * w as usize + 80) == Some(&gray) {
            break;
        }
        assert!(Instant::now() < deadline, "not gray after the client left");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The next client finds no clips of the last one.
    let mut c2 = PresenterClient::connect(p.addr(), monotonic_clock()).unwrap();
    flips_until(&mut c2, |f| f.clip == -1);
}

#[test]
fn the_client_reconnects_and_uploads_its_clips_again() {
    let cfg = config();
    let p = HeadlessPresenter::start(&cfg, "127.0.0.1:0").unwrap();
    let addr = p.addr().to_string();
    let mut c = PresenterClient::connect(&addr, monotonic_clock()).unwrap();
    c.upload_clip(5, &clip(), 4, 12, 16).unwrap();
    // The presenter goes away...
    drop(p);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    while c.poll_flips(&mut out).is_ok() {
        assert!(Instant::now() < deadline, "no disconnect noticed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!c.is_connected());
    assert!(matches!(c.gray(), Err(DisplayError::Disconnected)));
    assert!(c.reconnect().is_err());
    // ...and comes back on the same address.
    let p = HeadlessPresenter::start(&cfg, &addr).unwrap();
    c.reconnect().unwrap();
    c.play(5, None).unwrap();
    flips_until(&mut c, |f| f.clip == 5 && f.frame == 1);
    c.close();
    drop(p);
}

#[test]
fn unix_socket_transport() {
    let cfg = config();
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix:{}", dir.path().join("present.sock").display());
    let p = HeadlessPresenter::start(&cfg, &addr).unwrap();
    assert_eq!(p.addr(), addr);
    let mut c = PresenterClient::connect(&addr, monotonic_clock()).unwrap();
    c.upload_clip(1, &clip(), 4, 12, 16).unwrap();
    c.play(1, None).unwrap();
    flips_until(&mut c, |f| f.clip == 1);
}
