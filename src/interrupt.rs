//! The operator's stop request: SIGINT (Ctrl-C) and SIGTERM, process-wide.
//!
//! Every long command (`rig run`, `demo`, `replay`, `insilico`, `twin adapt`) polls one flag
//! instead of each stage owning a signal handler of its own: a handler owned by one phase (the
//! control endpoint of one `rig run`) left the next phase of `rig demo` deaf to Ctrl-C, and the
//! demo then ran its search and its closed-loop block on a calibration cut short. With one flag,
//! the first signal stops the phase in hand at a clean point and every later phase sees it and
//! does not start.
//!
//! Invariant: the handler only increments an atomic (async-signal-safe); everything else happens
//! on the threads that poll it. Further signals are counted, never escalated: the clean stop that
//! is already under way is what keeps the session file whole.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use thiserror::Error;

static SIGNALS: AtomicU32 = AtomicU32::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// A long operation stopped because the operator asked (SIGINT/SIGTERM).
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
#[error("interrupted (SIGINT/SIGTERM)")]
pub struct Interrupted;

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to the stop flag. Idempotent. Only commands that poll the flag
/// install it: anywhere else Ctrl-C must keep its default (end the process at once).
pub fn install() {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: sigaction with a handler that only touches an atomic; the struct is zeroed and
    // then filled as POSIX requires. SA_RESTART keeps blocking reads elsewhere from failing with
    // EINTR because of a stop request that is handled by polling anyway.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    SIGNALS.load(Ordering::Relaxed) > 0
}

/// How many stop signals arrived (the ones after the first are only logged).
pub fn count() -> u32 {
    SIGNALS.load(Ordering::Relaxed)
}

/// `Err(Interrupted)` once a stop was requested: for loops that check between units of work.
pub fn check() -> Result<(), Interrupted> {
    if requested() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

/// Asks for a stop as a signal would (tests, and an in-process stop of every phase).
pub fn request() {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

/// Sets `stop` when a stop is requested, until the guard is dropped: for stages that already
/// end on a flag of their own (the pipeline's `RunControl::stop`).
pub fn forward_to(stop: std::sync::Arc<AtomicBool>) -> Forward {
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let thread = std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            while !d.load(Ordering::Relaxed) {
                if requested() {
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
        .ok();
    Forward { done, thread }
}

/// Stops forwarding when dropped.
pub struct Forward {
    done: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
