//! The live dashboard `rig run` serves to a browser: predicted against measured traces, fidelity
//! over time with the drift alarm and a shuffled-neuron baseline, the fidelity map, the stimulus
//! on screen, the plan's stimuli with their responses so far, latency histograms, frame counters,
//! sync board and presenter health, and the controls (pause, resume, stop, set objective).
//!
//! A room of its own: it reads the session's live counters and the loop's feed (`crate::live`)
//! and answers controls through `control::ControlState`, the endpoint's own checks; it knows
//! nothing of the pipeline. It runs on the control endpoint's tokio runtime.
//!
//! Invariants:
//! - The loop never waits for a browser. One ticker task copies the feed a few times a second
//!   (`dashboard.rate_hz`, at most 10) and only while a browser is connected; every connected
//!   browser gets that one snapshot (server-sent events), plus the traces of the neurons it
//!   chose, cut from the same copy.
//! - Bounded: at most [`MAX_BROWSERS`] event streams, request bodies of 64 KiB.
//! - Bound to loopback unless the config says otherwise, and on loopback it answers only
//!   requests addressed to loopback (a page elsewhere cannot reach it through DNS rebinding); a
//!   control request must be JSON and, when the browser names its origin, come from this page.
//! - The listener is bound before the session file exists, so a refused address leaves nothing
//!   behind.

mod server;
pub mod snapshot;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use thiserror::Error;

use crate::control::ControlState;
use crate::live::feed::LoopFeed;

pub use server::MAX_BROWSERS;

#[derive(Debug, Error)]
pub enum DashboardError {
    #[error(
        "dashboard: cannot listen on {addr}: {io}; give another address with --dashboard ADDR \
         (127.0.0.1:0 picks a free port) or dashboard.listen in the config, or run with \
         --no-dashboard"
    )]
    Bind { addr: String, io: std::io::Error },
    #[error("dashboard: {0}")]
    Io(std::io::Error),
}

/// A health source: the figures of one part of the rig (sync board, presenter), as JSON.
pub type Health = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

/// What the dashboard shows, handed over once the session is wired.
pub struct Sources {
    pub control: Arc<ControlState>,
    pub feed: Arc<LoopFeed>,
    pub frame_rate_hz: f64,
    /// Pushes per second to each browser.
    pub rate_hz: f64,
    /// Seconds of traces shown.
    pub traces_s: f64,
    /// (height, width) of a stimulus frame.
    pub stimulus_shape: (usize, usize),
    pub health: Vec<(&'static str, Health)>,
}

/// A bound, not yet serving, dashboard.
pub struct Bound {
    listener: TcpListener,
    pub addr: SocketAddr,
}

impl Bound {
    /// The page's address.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Serves on `runtime` until the runtime shuts down.
    pub fn serve(
        self,
        runtime: &tokio::runtime::Handle,
        sources: Sources,
    ) -> Result<(), DashboardError> {
        self.listener
            .set_nonblocking(true)
            .map_err(DashboardError::Io)?;
        let _guard = runtime.enter();
        let listener =
            tokio::net::TcpListener::from_std(self.listener).map_err(DashboardError::Io)?;
        runtime.spawn(server::run(listener, self.addr, Arc::new(sources)));
        Ok(())
    }
}

/// Binds `listen`. With `strict` (an address the operator typed) a taken port refuses the run;
/// otherwise (the config's default) the next nine ports are tried, then any free one, and the
/// caller prints where the dashboard ended up.
pub fn bind(listen: &str, strict: bool) -> Result<Bound, DashboardError> {
    let refuse = |io| DashboardError::Bind {
        addr: listen.to_string(),
        io,
    };
    let first = TcpListener::bind(listen);
    let listener = match first {
        Ok(l) => l,
        Err(e) if strict || e.kind() != std::io::ErrorKind::AddrInUse => return Err(refuse(e)),
        Err(e) => {
            let addr: SocketAddr = listen.parse().map_err(|_| refuse(e))?;
            (1..10)
                .filter_map(|k| addr.port().checked_add(k))
                .chain([0])
                .find_map(|port| TcpListener::bind(SocketAddr::new(addr.ip(), port)).ok())
                .ok_or_else(|| {
                    refuse(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "no free port",
                    ))
                })?
        }
    };
    let addr = listener.local_addr().map_err(DashboardError::Io)?;
    Ok(Bound { listener, addr })
}
