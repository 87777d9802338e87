//! The dashboard's HTTP side: the page, the event stream, the field map, plan thumbnails and the
//! controls (see the module docs of `dashboard` for the invariants).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};

use super::snapshot::{self, window_fidelity};
use super::Sources;
use crate::live::feed::FeedCopy;

/// Event streams served at once; more browsers are told to try later.
pub const MAX_BROWSERS: usize = 16;
/// Neurons one browser may follow.
const MAX_CHOSEN: usize = 8;
/// Shuffled-baseline points kept (at 10 Hz, ten minutes).
const SHUFFLED_HISTORY: usize = 6000;

const PAGE: &str = include_str!("page.html");

struct App {
    src: Arc<Sources>,
    addr: SocketAddr,
    ticks: watch::Sender<Option<Arc<Tick>>>,
    slots: Arc<Semaphore>,
    map: OnceLock<String>,
}

/// One snapshot, shared by every browser.
struct Tick {
    shared: Value,
    copy: Arc<FeedCopy>,
    /// The neurons a browser that chose none is shown: the best, the median and the worst.
    default_neurons: Vec<u32>,
}

pub(super) async fn run(listener: tokio::net::TcpListener, addr: SocketAddr, src: Arc<Sources>) {
    let (ticks, _) = watch::channel(None);
    let app = Arc::new(App {
        src,
        addr,
        ticks,
        slots: Arc::new(Semaphore::new(MAX_BROWSERS)),
        map: OnceLock::new(),
    });
    tokio::spawn(ticker(app.clone()));
    let router = Router::new()
        .route("/", get(page))
        .route("/api/events", get(events))
        .route("/api/snapshot", get(snapshot_once))
        .route("/api/map", get(map))
        .route("/api/clip/{id}", get(clip))
        .route("/api/control", post(control))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app);
    if let Err(e) = axum::serve(listener, router).await {
        tracing::warn!("dashboard stopped: {e}");
    }
}

/// On loopback, only requests addressed to loopback: a page on another site cannot reach the
/// dashboard by pointing its own name at 127.0.0.1 (DNS rebinding).
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if app.addr.ip().is_loopback() {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !loopback_host(host, app.addr.port()) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "the dashboard answers requests for 127.0.0.1:{} or localhost:{} only",
                    app.addr.port(),
                    app.addr.port()
                ),
            )
                .into_response();
        }
    }
    next.run(req).await
}

fn loopback_host(host: &str, port: u16) -> bool {
    let Some((name, p)) = host.rsplit_once(':') else {
        return false;
    };
    p.parse::<u16>() == Ok(port) && matches!(name, "127.0.0.1" | "localhost" | "[::1]")
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

/// Copies the feed and builds the shared snapshot while a browser listens.
async fn ticker(app: Arc<App>) {
    let period = Duration::from_secs_f64(1.0 / app.src.rate_hz.clamp(0.5, 10.0));
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut shuffled: VecDeque<(f64, f64)> = VecDeque::new();
    loop {
        every.tick().await;
        if app.ticks.receiver_count() == 0 {
            continue;
        }
        let tick = build(&app.src, &mut shuffled);
        app.ticks.send_replace(Some(Arc::new(tick)));
    }
}

fn build(src: &Sources, shuffled: &mut VecDeque<(f64, f64)>) -> Tick {
    let copy = Arc::new(src.feed.copy());
    let wf = window_fidelity(&copy);
    let now = copy.times.last().copied();
    if let (Some(t), Some(s)) = (now, wf.shuffled_median) {
        if shuffled.back().is_none_or(|b| b.0 < t) {
            if shuffled.len() == SHUFFLED_HISTORY {
                shuffled.pop_front();
            }
            shuffled.push_back((t, s));
        }
    }
    let mut ranked: Vec<(f64, u32)> = wf
        .corr
        .iter()
        .zip(&wf.roi_ids)
        .filter_map(|(c, &id)| c.map(|c| (c, id)))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let default_neurons = match ranked.len() {
        0 => copy.roi_ids.iter().take(3).copied().collect(),
        n => {
            let mut v = vec![ranked[0].1, ranked[n / 2].1, ranked[n - 1].1];
            v.dedup();
            v
        }
    };
    let status = src.control.status();
    let live = &src.control.live;
    let shuffled: Vec<(f64, f64)> = shuffled.iter().copied().collect();
    let (sh, sw) = copy.stim_shape;
    let health: serde_json::Map<String, Value> = src
        .health
        .iter()
        .map(|(name, f)| (name.to_string(), f()))
        .collect();
    let shared = json!({
        "status": status,
        "frame_rate_hz": src.frame_rate_hz,
        "counts": live.counts(),
        "feed": {
            "published": src.feed.published.load(std::sync::atomic::Ordering::Relaxed),
            "missed": src.feed.missed.load(std::sync::atomic::Ordering::Relaxed),
        },
        "neurons": {
            "roi_ids": wf.roi_ids,
            "corr": wf.corr.iter().map(|c| c.map(|c| (c * 1e3).round() / 1e3)).collect::<Vec<_>>(),
            "color": wf.corr.iter().map(|c| crate::picture::fidelity_color(c.unwrap_or(f64::NAN))).collect::<Vec<_>>(),
            "median": wf.median,
            "shuffled_median": wf.shuffled_median,
            "window_frames": wf.frames,
        },
        "fidelity": snapshot::fidelity_series(&copy, &shuffled),
        "on_screen": copy.on_screen,
        "stimulus": {
            "height": sh,
            "width": sw,
            "gray": base64::engine::general_purpose::STANDARD.encode(snapshot::stimulus_bytes(&copy)),
        },
        "plan": snapshot::plan(&src.feed.plan(), &copy, src.feed.first_plan_clip()),
        "latency": snapshot::latency(&live.latency),
        "health": health,
    });
    Tick {
        shared,
        copy,
        default_neurons,
    }
}

#[derive(serde::Deserialize)]
struct Chosen {
    /// Comma-separated ROI ids.
    #[serde(default)]
    neurons: String,
}

fn parse_chosen(q: &Chosen) -> Result<Vec<u32>, String> {
    let ids: Result<Vec<u32>, _> = q
        .neurons
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse::<u32>)
        .collect();
    let ids = ids.map_err(|_| {
        format!(
            "neurons={:?}: expected ROI ids separated by commas",
            q.neurons
        )
    })?;
    if ids.len() > MAX_CHOSEN {
        return Err(format!(
            "{} neurons asked for; a browser follows at most {MAX_CHOSEN}",
            ids.len()
        ));
    }
    Ok(ids)
}

fn event_json(src: &Sources, tick: &Tick, chosen: &[u32]) -> String {
    let ids = if chosen.is_empty() {
        &tick.default_neurons
    } else {
        chosen
    };
    let frames = (src.traces_s * src.frame_rate_hz).round() as usize;
    let mut v = tick.shared.clone();
    v["traces"] = snapshot::traces(&tick.copy, ids, frames);
    v.to_string()
}

/// Server-sent events: one `data:` line of JSON per snapshot.
async fn events(State(app): State<Arc<App>>, Query(q): Query<Chosen>) -> Response {
    let chosen = match parse_chosen(&q) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let Ok(permit) = app.slots.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_BROWSERS} dashboards are open; close one and reload"),
        )
            .into_response();
    };
    let rx = app.ticks.subscribe();
    let state = (app, rx, chosen, permit);
    let stream = futures_util::stream::unfold(state, |(app, mut rx, chosen, permit)| async move {
        rx.changed().await.ok()?;
        let tick = rx.borrow_and_update().clone()?;
        let data = event_json(&app.src, &tick, &chosen);
        let ev = Event::default().data(data);
        Some((
            Ok::<_, std::convert::Infallible>(ev),
            (app, rx, chosen, permit),
        ))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One snapshot as plain JSON (for scripts and `curl`).
async fn snapshot_once(State(app): State<Arc<App>>, Query(q): Query<Chosen>) -> Response {
    let chosen = match parse_chosen(&q) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let tick = build(&app.src, &mut VecDeque::new());
    (
        [(header::CONTENT_TYPE, "application/json")],
        event_json(&app.src, &tick, &chosen),
    )
        .into_response()
}

/// The mean image and every ROI's outline, once extraction has its reference.
async fn map(State(app): State<Arc<App>>) -> Response {
    let Some(m) = app.src.feed.map() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no mean image yet: extraction is still collecting its reference frames",
        )
            .into_response();
    };
    let body = app.map.get_or_init(|| {
        let mean: Vec<f64> = m.mean.iter().map(|&v| f64::from(v)).collect();
        let px = crate::picture::to_u8(&mean);
        let image = crate::picture::gray_png_uri(m.width, m.height, &px).unwrap_or_default();
        let r = &m.rois;
        let rois: Vec<Value> = (0..r.len())
            .map(|i| {
                let (a, b) = (r.offsets[i] as usize, r.offsets[i + 1] as usize);
                let pixels = &r.pixels[a..b];
                let n = pixels.len().max(1) as f64;
                let cx = pixels
                    .iter()
                    .map(|&p| (p as usize % m.width) as f64)
                    .sum::<f64>()
                    / n;
                let cy = pixels
                    .iter()
                    .map(|&p| (p as usize / m.width) as f64)
                    .sum::<f64>()
                    / n;
                json!({
                    "id": r.ids[i],
                    "d": crate::picture::outline_path(pixels, m.width, m.height),
                    "cx": (cx * 10.0).round() / 10.0,
                    "cy": (cy * 10.0).round() / 10.0,
                    // Radius of a disc of the ROI's area: where a click on the neuron lands.
                    "r": ((n / std::f64::consts::PI).sqrt() * 10.0).round() / 10.0,
                })
            })
            .collect();
        json!({"width": m.width, "height": m.height, "image": image, "rois": rois}).to_string()
    });
    ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response()
}

/// A plan stimulus's middle frame as PNG.
async fn clip(State(app): State<Arc<App>>, Path(id): Path<i32>) -> Response {
    let (h, w) = app.src.stimulus_shape;
    let Some(e) = app.src.feed.plan().into_iter().find(|e| e.clip == id) else {
        return (
            StatusCode::NOT_FOUND,
            format!("clip {id} is not a stimulus of the plan being shown"),
        )
            .into_response();
    };
    match crate::picture::gray_png(w, h, &e.thumbnail) {
        Ok(png) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "max-age=3600"),
            ],
            png,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// Pause, resume, stop, set objective: the control endpoint's request, answered by its own
/// checks. JSON only (a form on another site cannot send it without a preflight nobody answers)
/// and, when the browser names its origin, from this page.
async fn control(State(app): State<Arc<App>>, headers: HeaderMap, body: String) -> Response {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a control request is JSON (Content-Type: application/json)",
        )
            .into_response();
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if origin.to_str().ok() != Some(&format!("http://{host}")) {
            return (
                StatusCode::FORBIDDEN,
                "a control request must come from the dashboard's own page",
            )
                .into_response();
        }
    }
    if body.contains('\n') {
        return (
            StatusCode::BAD_REQUEST,
            "a control request is one JSON object on one line",
        )
            .into_response();
    }
    let reply = app.src.control.handle(&body);
    let ok = serde_json::from_str::<Value>(&reply)
        .ok()
        .and_then(|v| v.get("ok").and_then(Value::as_bool))
        .unwrap_or(false);
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (code, [(header::CONTENT_TYPE, "application/json")], reply).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_with_our_port_pass() {
        assert!(loopback_host("127.0.0.1:7702", 7702));
        assert!(loopback_host("localhost:7702", 7702));
        assert!(loopback_host("[::1]:7702", 7702));
        assert!(!loopback_host("127.0.0.1:7703", 7702));
        assert!(!loopback_host("evil.example:7702", 7702));
        assert!(!loopback_host("127.0.0.1", 7702));
    }

    #[test]
    fn chosen_neurons_are_ids_and_bounded() {
        let q = |s: &str| Chosen {
            neurons: s.to_string(),
        };
        assert_eq!(parse_chosen(&q("")).unwrap(), Vec::<u32>::new());
        assert_eq!(parse_chosen(&q("3, 17")).unwrap(), vec![3, 17]);
        assert!(parse_chosen(&q("3,x")).unwrap_err().contains("ROI ids"));
        assert!(parse_chosen(&q("1,2,3,4,5,6,7,8,9"))
            .unwrap_err()
            .contains("at most 8"));
    }
}
