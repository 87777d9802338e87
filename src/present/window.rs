//! The stimulus window: a borderless fullscreen X11 window (winit), drawn by OpenGL
//! ([`super::gl`], made here with the window) or, without a GL driver, showing CPU-composed frames
//! (softbuffer, X11 `PutImage`/MIT-SHM). softbuffer has no vsync API: the flip loop in
//! [`super::core`] paces flips with a deadline timer, and a flip's time is when the frame was
//! handed to the X server. Without a compositor the server copies it to the screen at once, but
//! not in step with the monitor's scan-out (tearing is possible); the photodiode patch, recorded
//! by the sync board, is the ground truth of when a frame reached the screen.
//!
//! The event loop is pumped from the flip loop (`pump_app_events` with a zero timeout), so one
//! thread owns the window and the flips.

use std::num::NonZeroU32;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use winit::application::ApplicationHandler;
use winit::dpi::{PhysicalPosition, PhysicalSize};
use winit::event::{ElementState, WindowEvent};
use winit::event_loop::{ActiveEventLoop, EventLoop};
use winit::keyboard::{Key, NamedKey};
use winit::platform::pump_events::{EventLoopExtPumpEvents, PumpStatus};
use winit::platform::x11::EventLoopBuilderExtX11;
use winit::window::{Fullscreen, Window, WindowAttributes, WindowId};

use super::gl::{GlParts, GlScreen};
use super::render::{RenderError, Surface};
use super::screen::{CpuScreen, Screen};
use crate::config::{Display as DisplayCfg, Renderer};

type SbSurface = softbuffer::Surface<Rc<Window>, Rc<Window>>;

struct App {
    width: u32,
    height: u32,
    monitor: Option<usize>,
    renderer: Renderer,
    /// The GL context made with the window, when the GL renderer got one.
    gl: Option<GlParts>,
    window: Option<Rc<Window>>,
    surface: Option<SbSurface>,
    closed: bool,
    error: Option<String>,
}

/// The stimulus window's attributes: borderless fullscreen on `monitor` (default the primary),
/// `width x height`, refused when that does not fit the monitor. Both renderers open it.
fn window_attributes(
    el: &ActiveEventLoop,
    width: u32,
    height: u32,
    monitor: Option<usize>,
) -> Result<WindowAttributes, String> {
    let monitors: Vec<_> = el.available_monitors().collect();
    let monitor =
        match monitor {
            Some(i) => Some(monitors.get(i).cloned().ok_or_else(|| {
                format!("--monitor {i}: only {} monitor(s) found", monitors.len())
            })?),
            None => el.primary_monitor().or_else(|| monitors.first().cloned()),
        };
    let pos = monitor
        .as_ref()
        .map(|m| m.position())
        .unwrap_or(PhysicalPosition::new(0, 0));
    if let Some(m) = &monitor {
        let s = m.size();
        // A window larger than its monitor is cut off, and with it the photodiode patch in
        // its corner: the sync board would then never see a flip. Refuse rather than show
        // a stimulus nobody can time.
        if width > s.width || height > s.height {
            return Err(format!(
                "display.width_px x display.height_px = {width}x{height} does not fit monitor \
                 {:?} ({}x{}): the photodiode patch would be off-screen; set them to the \
                 monitor's size or choose another --monitor",
                m.name().unwrap_or_default(),
                s.width,
                s.height
            ));
        }
        if (s.width, s.height) != (width, height) {
            warn!(
                "monitor {:?} is {}x{}, the config says {width}x{height}",
                m.name().unwrap_or_default(),
                s.width,
                s.height,
            );
        }
    }
    Ok(Window::default_attributes()
        .with_title("rig present")
        .with_decorations(false)
        .with_resizable(false)
        .with_position(pos)
        .with_inner_size(PhysicalSize::new(width, height))
        .with_fullscreen(Some(Fullscreen::Borderless(monitor))))
}

impl App {
    fn open(&mut self, el: &ActiveEventLoop) -> Result<(), String> {
        let attrs = window_attributes(el, self.width, self.height, self.monitor)?;
        if self.renderer != Renderer::Cpu {
            match super::gl::create(el, attrs.clone()) {
                Ok((window, parts)) => {
                    window.set_cursor_visible(false);
                    self.window = Some(Rc::new(window));
                    self.gl = Some(parts);
                    return Ok(());
                }
                Err(e) if self.renderer == Renderer::Auto => {
                    warn!("no OpenGL ({e}); drawing on the CPU (softbuffer)");
                }
                Err(e) => return Err(format!("display.renderer = gl: {e}")),
            }
        }
        let window = Rc::new(el.create_window(attrs).map_err(|e| e.to_string())?);
        window.set_cursor_visible(false);
        let ctx = softbuffer::Context::new(window.clone()).map_err(|e| e.to_string())?;
        let surface = softbuffer::Surface::new(&ctx, window.clone()).map_err(|e| e.to_string())?;
        self.window = Some(window);
        self.surface = Some(surface);
        Ok(())
    }
}

impl ApplicationHandler for App {
    fn resumed(&mut self, el: &ActiveEventLoop) {
        if self.window.is_none() {
            if let Err(e) = self.open(el) {
                self.error = Some(e);
            }
        }
    }

    fn window_event(&mut self, _el: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        match event {
            WindowEvent::CloseRequested => self.closed = true,
            WindowEvent::KeyboardInput { event, .. }
                if event.state == ElementState::Pressed
                    && event.logical_key == Key::Named(NamedKey::Escape) =>
            {
                info!("Escape pressed: closing the presenter");
                self.closed = true;
            }
            _ => {}
        }
    }
}

/// winit's event loop on the X11 display `DISPLAY` names.
pub(crate) fn x11_event_loop() -> Result<EventLoop<()>, RenderError> {
    if std::env::var_os("DISPLAY").is_none() {
        return Err(RenderError::Surface(
            "DISPLAY is not set: rig present needs an X11 display (e.g. DISPLAY=:0)".into(),
        ));
    }
    EventLoop::builder()
        .with_x11()
        .build()
        .map_err(|e| RenderError::Surface(format!("cannot open the X11 display: {e}")))
}

/// The presenter's window as a [`Surface`].
pub struct WindowSurface {
    event_loop: EventLoop<()>,
    app: App,
}

/// Opens the stimulus window with the renderer `renderer` asks for: GL when it can be had (or
/// must be, for [`Renderer::Gl`]), else the CPU renderer over softbuffer. Logs which one runs.
pub fn open_screen(
    cfg: &DisplayCfg,
    monitor: Option<usize>,
    renderer: Renderer,
) -> Result<Box<dyn Screen>, RenderError> {
    let mut win = WindowSurface::open(cfg, monitor, renderer)?;
    let screen: Box<dyn Screen> = match win.app.gl.take() {
        Some(parts) => Box::new(GlScreen::new(win, parts, cfg)?),
        None => Box::new(CpuScreen::new(win, cfg)),
    };
    Ok(screen)
}

impl WindowSurface {
    /// Opens the window (`monitor`: index among the X screen's monitors; default the primary),
    /// with a GL context on it unless `renderer` is [`Renderer::Cpu`] or GL cannot be had.
    fn open(
        cfg: &DisplayCfg,
        monitor: Option<usize>,
        renderer: Renderer,
    ) -> Result<Self, RenderError> {
        let event_loop = x11_event_loop()?;
        let mut s = WindowSurface {
            event_loop,
            app: App {
                width: cfg.width_px,
                height: cfg.height_px,
                monitor,
                renderer,
                gl: None,
                window: None,
                surface: None,
                closed: false,
                error: None,
            },
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.app.window.is_none() {
            if let Some(e) = s.app.error.take() {
                return Err(RenderError::Surface(format!("cannot open the window: {e}")));
            }
            if Instant::now() > deadline {
                return Err(RenderError::Surface(
                    "the window did not open in 10 s".into(),
                ));
            }
            if let PumpStatus::Exit(c) = s
                .event_loop
                .pump_app_events(Some(Duration::from_millis(10)), &mut s.app)
            {
                return Err(RenderError::Surface(format!("event loop exited ({c})")));
            }
        }
        let (w, h) = s.size();
        info!("window open: {w}x{h}");
        Ok(s)
    }
}

impl Surface for WindowSurface {
    fn size(&self) -> (u32, u32) {
        match &self.app.window {
            Some(w) => {
                let s = w.inner_size();
                (s.width.max(1), s.height.max(1))
            }
            None => (self.app.width, self.app.height),
        }
    }

    fn pump(&mut self) -> bool {
        let st = self
            .event_loop
            .pump_app_events(Some(Duration::ZERO), &mut self.app);
        !(self.app.closed || matches!(st, PumpStatus::Exit(_)))
    }

    fn present(&mut self, fb: &[u32], width: u32, height: u32) -> Result<(), RenderError> {
        let err = |e: softbuffer::SoftBufferError| RenderError::Surface(e.to_string());
        let (Some(w), Some(h)) = (NonZeroU32::new(width), NonZeroU32::new(height)) else {
            return Ok(());
        };
        let Some(surface) = self.app.surface.as_mut() else {
            return Err(RenderError::Surface("no window".into()));
        };
        surface.resize(w, h).map_err(err)?;
        let mut buf = surface.buffer_mut().map_err(err)?;
        if buf.len() == fb.len() {
            buf.copy_from_slice(fb);
        }
        buf.present().map_err(err)
    }
}
