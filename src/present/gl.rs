//! The GL renderer: the stimulus window drawn by OpenGL (3.3 core, or OpenGL ES 3.0) through
//! glutin. Clips are uploaded once as `R8` texture arrays; a fragment shader samples them
//! bilinearly at the coordinates the display geometry gives each pixel (a map texture built once
//! per window size), looks the blend up in the 12-bit gamma table and the photodiode patch is
//! cleared into its corner in the same frame. The swap waits for the monitor when the driver
//! honours the swap interval (vsync, FIFO); [`GlScreen::new`] measures whether it does, and the
//! flip loop falls back to its deadline timer when it does not (Xvfb, llvmpipe without DRI).
//!
//! The arithmetic is the CPU renderer's ([`super::render::Compositor`]), so both draw the same
//! pixels to within the GPU's sub-texel precision (8 bits on Mesa and most hardware).
//!
//! Presentation time is read on the CPU when the swap returns; neither EGL nor GLX on Mesa's X11
//! paths gives a portable presentation timestamp, so the photodiode stays the ground truth.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use glow::HasContext;
use glutin::config::{ConfigTemplateBuilder, GlConfig};
use glutin::context::{
    ContextApi, ContextAttributesBuilder, GlProfile, NotCurrentGlContext, PossiblyCurrentContext,
    Version,
};
use glutin::display::{GetGlDisplay, GlDisplay};
use glutin::surface::{
    GlSurface, Surface as GlutinSurface, SwapInterval, WindowSurface as WinSurf,
};
use glutin_winit::{ApiPreference, DisplayBuilder, GlWindow};
use tracing::{info, warn};
use winit::event_loop::ActiveEventLoop;
use winit::raw_window_handle::HasWindowHandle;
use winit::window::{Window, WindowAttributes};

use super::core::Clip;
use super::geometry::ScreenGeometry;
use super::player::Content;
use super::render::{encode, fine_gamma_lut, patch_rect, RenderError, Surface, LUT_SIZE};
use super::screen::Screen;
use super::window::WindowSurface;
use crate::config::{Corner, Display as DisplayCfg};

/// A current GL context on the stimulus window.
pub(crate) struct GlParts {
    surface: GlutinSurface<WinSurf>,
    context: PossiblyCurrentContext,
    gl: glow::Context,
}

/// Makes the stimulus window with a GL config, a context (3.3 core, else ES 3.0) and its
/// surface, current on this thread.
pub(crate) fn create(
    el: &ActiveEventLoop,
    attrs: WindowAttributes,
) -> Result<(Window, GlParts), String> {
    let template = ConfigTemplateBuilder::new();
    let (window, config) = DisplayBuilder::new()
        .with_preference(ApiPreference::PreferEgl)
        .with_window_attributes(Some(attrs))
        .build(el, template, |configs| {
            // No multisampling: a full-screen triangle has no edges to smooth, and a resolve
            // pass would only add time before the swap.
            configs
                .min_by_key(|c| (c.num_samples(), u8::from(c.alpha_size() > 0)))
                .expect("glutin offers at least one config")
        })
        .map_err(|e| format!("no GL display: {e}"))?;
    let window = window.ok_or("the GL display made no window")?;
    let raw = window
        .window_handle()
        .map_err(|e| format!("no window handle: {e}"))?
        .as_raw();
    let display = config.display();
    let core = ContextAttributesBuilder::new()
        .with_profile(GlProfile::Core)
        .with_context_api(ContextApi::OpenGl(Some(Version::new(3, 3))))
        .build(Some(raw));
    let es = ContextAttributesBuilder::new()
        .with_context_api(ContextApi::Gles(Some(Version::new(3, 0))))
        .build(Some(raw));
    // SAFETY: `raw` is the live window's handle; the context is dropped before the window
    // (GlScreen keeps its GL parts ahead of the window in field order).
    let context = unsafe {
        display
            .create_context(&config, &core)
            .or_else(|_| display.create_context(&config, &es))
    }
    .map_err(|e| format!("no OpenGL 3.3 or OpenGL ES 3.0 context: {e}"))?;
    let sattrs = window
        .build_surface_attributes(Default::default())
        .map_err(|e| format!("no surface attributes: {e}"))?;
    // SAFETY: as above, the surface lives no longer than the window.
    let surface = unsafe { display.create_window_surface(&config, &sattrs) }
        .map_err(|e| format!("no window surface: {e}"))?;
    let context = context
        .make_current(&surface)
        .map_err(|e| format!("cannot make the context current: {e}"))?;
    // SAFETY: the loader returns the current display's entry points, valid while it lives.
    let gl = unsafe { glow::Context::from_loader_function_cstr(|s| display.get_proc_address(s)) };
    Ok((
        window,
        GlParts {
            surface,
            context,
            gl,
        },
    ))
}

/// One clip on the GPU: texture arrays of at most `GL_MAX_ARRAY_TEXTURE_LAYERS` frames each.
struct GlClip {
    frames: usize,
    chunk: usize,
    textures: Vec<glow::Texture>,
}

const VERTEX: &str = r#"
void main() {
    // One triangle that covers the screen: (-1,-1), (3,-1), (-1,3).
    vec2 p = vec2(float((gl_VertexID << 1) & 2), float(gl_VertexID & 2));
    gl_Position = vec4(p * 2.0 - 1.0, 0.0, 1.0);
}
"#;

const FRAGMENT: &str = r#"
uniform sampler2DArray u_clip;
uniform sampler2D u_map;
uniform sampler2D u_lut;
uniform float u_layer;
uniform int u_height;
uniform float u_gray;
out vec4 o_color;
void main() {
    // The map is stored top row first; GL counts rows from the bottom.
    ivec2 p = ivec2(int(gl_FragCoord.x), u_height - 1 - int(gl_FragCoord.y));
    vec2 uv = texelFetch(u_map, p, 0).rg;
    float v = u_gray;
    if (uv.x >= 0.0) {
        // Bilinear in linear luminance (an R8 texture is not sRGB), then the gamma table.
        float lum = texture(u_clip, vec3(uv, u_layer)).r;
        int i = int(lum * 4095.0 + 0.5);
        v = texelFetch(u_lut, ivec2(i % 64, i / 64), 0).r;
    }
    o_color = vec4(v, v, v, 1.0);
}
"#;

/// The stimulus window drawn by OpenGL.
pub struct GlScreen {
    // Field order is drop order: GL objects and the context go before the window.
    parts: GlParts,
    program: glow::Program,
    vao: glow::VertexArray,
    map: glow::Texture,
    lut: glow::Texture,
    u_layer: Option<glow::UniformLocation>,
    u_height: Option<glow::UniformLocation>,
    clips: HashMap<u32, GlClip>,
    max_layers: usize,
    cfg: DisplayCfg,
    size: (u32, u32),
    gray: f32,
    corner: Corner,
    patch: usize,
    vsync: bool,
    name: String,
    win: WindowSurface,
}

impl GlScreen {
    /// Builds the shader and tables on `parts`' context and finds out whether its swap waits
    /// for the monitor.
    pub(crate) fn new(
        win: WindowSurface,
        parts: GlParts,
        cfg: &DisplayCfg,
    ) -> Result<Self, RenderError> {
        let err = |e: String| RenderError::Surface(format!("OpenGL: {e}"));
        let gl = &parts.gl;
        let version = gl.version().clone();
        let header = if version.is_embedded {
            "#version 300 es\nprecision highp float;\nprecision highp int;\n\
             precision highp sampler2DArray;\n"
        } else {
            "#version 330 core\n"
        };
        // SAFETY: every call below runs on the thread where `parts.context` is current, with
        // objects made on that context.
        let (program, vao, map, lut, max_layers, name) = unsafe {
            let program = gl.create_program().map_err(err)?;
            for (kind, src) in [
                (glow::VERTEX_SHADER, VERTEX),
                (glow::FRAGMENT_SHADER, FRAGMENT),
            ] {
                let sh = gl.create_shader(kind).map_err(err)?;
                gl.shader_source(sh, &format!("{header}{src}"));
                gl.compile_shader(sh);
                if !gl.get_shader_compile_status(sh) {
                    return Err(err(format!(
                        "shader does not compile: {}",
                        gl.get_shader_info_log(sh)
                    )));
                }
                gl.attach_shader(program, sh);
                gl.delete_shader(sh);
            }
            gl.link_program(program);
            if !gl.get_program_link_status(program) {
                return Err(err(format!(
                    "program does not link: {}",
                    gl.get_program_info_log(program)
                )));
            }
            gl.use_program(Some(program));
            for (name, unit) in [("u_clip", 0), ("u_map", 1), ("u_lut", 2)] {
                gl.uniform_1_i32(gl.get_uniform_location(program, name).as_ref(), unit);
            }
            let vao = gl.create_vertex_array().map_err(err)?;
            gl.bind_vertex_array(Some(vao));
            gl.pixel_store_i32(glow::UNPACK_ALIGNMENT, 1);

            // The gamma table: 4096 display values as a 64 x 64 R8 texture, read by texelFetch.
            let lut = gl.create_texture().map_err(err)?;
            gl.active_texture(glow::TEXTURE2);
            gl.bind_texture(glow::TEXTURE_2D, Some(lut));
            let table = fine_gamma_lut(cfg.gamma);
            debug_assert_eq!(table.len(), LUT_SIZE);
            gl.tex_image_2d(
                glow::TEXTURE_2D,
                0,
                glow::R8 as i32,
                64,
                64,
                0,
                glow::RED,
                glow::UNSIGNED_BYTE,
                glow::PixelUnpackData::Slice(Some(&table)),
            );
            nearest(gl, glow::TEXTURE_2D);
            let map = gl.create_texture().map_err(err)?;
            let max_layers = gl.get_parameter_i32(glow::MAX_ARRAY_TEXTURE_LAYERS).max(1) as usize;
            let name = format!(
                "gl: {} ({})",
                gl.get_parameter_string(glow::RENDERER),
                gl.get_parameter_string(glow::VERSION)
            );
            (program, vao, map, lut, max_layers, name)
        };
        let (u_layer, u_height, u_gray) = unsafe {
            (
                gl.get_uniform_location(program, "u_layer"),
                gl.get_uniform_location(program, "u_height"),
                gl.get_uniform_location(program, "u_gray"),
            )
        };
        let gray = encode(cfg.mean_luminance, cfg.gamma) as f32 / 255.0;
        // SAFETY: as above.
        unsafe { gl.uniform_1_f32(u_gray.as_ref(), gray) };
        let mut s = GlScreen {
            parts,
            program,
            vao,
            map,
            lut,
            u_layer,
            u_height,
            clips: HashMap::new(),
            max_layers,
            cfg: cfg.clone(),
            size: (0, 0),
            gray,
            corner: cfg.photodiode_corner,
            patch: cfg.photodiode_size_px as usize,
            vsync: false,
            name,
            win,
        };
        s.fit_to_window();
        s.vsync = s.probe_vsync(cfg.refresh_hz);
        Ok(s)
    }

    /// Sizes the surface and the geometry map to the window (at start and on a resize).
    fn fit_to_window(&mut self) {
        let size = self.win.size();
        if size == self.size {
            return;
        }
        self.size = size;
        let (w, h) = size;
        if let (Some(nw), Some(nh)) = (NonZeroU32::new(w), NonZeroU32::new(h)) {
            self.parts.surface.resize(&self.parts.context, nw, nh);
        }
        let map = ScreenGeometry::new(&self.cfg, w, h).map();
        let bytes: Vec<u8> = map
            .iter()
            .flat_map(|p| [p[0].to_ne_bytes(), p[1].to_ne_bytes()])
            .flatten()
            .collect();
        let gl = &self.parts.gl;
        // SAFETY: on the context's thread, with its own objects.
        unsafe {
            gl.active_texture(glow::TEXTURE1);
            gl.bind_texture(glow::TEXTURE_2D, Some(self.map));
            gl.tex_image_2d(
                glow::TEXTURE_2D,
                0,
                glow::RG32F as i32,
                w as i32,
                h as i32,
                0,
                glow::RG,
                glow::FLOAT,
                glow::PixelUnpackData::Slice(Some(&bytes)),
            );
            nearest(gl, glow::TEXTURE_2D);
            gl.uniform_1_i32(self.u_height.as_ref(), h as i32);
            gl.viewport(0, 0, w as i32, h as i32);
        }
        info!("GL drawing at {w}x{h}");
    }

    /// Asks for vsync and times a dozen swaps: they wait for the monitor only if the driver
    /// honours the interval. Without it the swap is set not to wait and the timer paces.
    fn probe_vsync(&mut self, refresh_hz: f64) -> bool {
        let one = NonZeroU32::new(1).expect("1 is not zero");
        let parts = &self.parts;
        if let Err(e) = parts
            .surface
            .set_swap_interval(&parts.context, SwapInterval::Wait(one))
        {
            warn!("GL: vsync cannot be asked for ({e}); the deadline timer paces the flips");
            return false;
        }
        let mut times = Vec::with_capacity(13);
        for _ in 0..13 {
            let _ = self.draw(Content::Gray, false);
            if self.present().is_err() {
                return false;
            }
            times.push(Instant::now());
        }
        let mut iv: Vec<f64> = times
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect();
        iv.sort_by(f64::total_cmp);
        let median = iv[iv.len() / 2];
        let period = 1.0 / refresh_hz;
        if median >= 0.5 * period {
            if (median - period).abs() > 0.1 * period {
                warn!(
                    "the monitor refreshes every {:.2} ms, display.refresh_hz says {:.2} ms",
                    median * 1e3,
                    period * 1e3
                );
            }
            info!("GL: vsync works (swap interval {:.2} ms)", median * 1e3);
            true
        } else {
            let _ = self
                .parts
                .surface
                .set_swap_interval(&self.parts.context, SwapInterval::DontWait);
            info!(
                "GL: the swap does not wait for the monitor (median {:.2} ms); the deadline \
                 timer paces the flips",
                median * 1e3
            );
            false
        }
    }
}

/// Nearest filtering, clamped: for tables read with texelFetch.
unsafe fn nearest(gl: &glow::Context, target: u32) {
    gl.tex_parameter_i32(target, glow::TEXTURE_MIN_FILTER, glow::NEAREST as i32);
    gl.tex_parameter_i32(target, glow::TEXTURE_MAG_FILTER, glow::NEAREST as i32);
    gl.tex_parameter_i32(target, glow::TEXTURE_WRAP_S, glow::CLAMP_TO_EDGE as i32);
    gl.tex_parameter_i32(target, glow::TEXTURE_WRAP_T, glow::CLAMP_TO_EDGE as i32);
}

impl Screen for GlScreen {
    fn size(&self) -> (u32, u32) {
        self.win.size()
    }

    fn pump(&mut self) -> bool {
        self.win.pump()
    }

    fn upload(&mut self, id: u32, clip: &Arc<Clip>) -> Result<(), RenderError> {
        let (f, h, w) = (clip.frames, clip.height, clip.width);
        if f == 0 || h == 0 || w == 0 || clip.data.len() < f * h * w {
            return Err(RenderError::Surface(format!(
                "clip {id}: {f}x{h}x{w} with {} bytes",
                clip.data.len()
            )));
        }
        self.clear_clip(id);
        let gl = &self.parts.gl;
        let chunk = self.max_layers.min(f);
        let mut textures = Vec::new();
        // SAFETY: on the context's thread; each slice holds exactly the layers uploaded.
        unsafe {
            gl.active_texture(glow::TEXTURE0);
            for first in (0..f).step_by(chunk) {
                let n = chunk.min(f - first);
                let t = gl
                    .create_texture()
                    .map_err(|e| RenderError::Surface(format!("OpenGL: {e}")))?;
                gl.bind_texture(glow::TEXTURE_2D_ARRAY, Some(t));
                gl.tex_image_3d(
                    glow::TEXTURE_2D_ARRAY,
                    0,
                    glow::R8 as i32,
                    w as i32,
                    h as i32,
                    n as i32,
                    0,
                    glow::RED,
                    glow::UNSIGNED_BYTE,
                    glow::PixelUnpackData::Slice(Some(
                        &clip.data[first * h * w..(first + n) * h * w],
                    )),
                );
                let p = |k, v: u32| gl.tex_parameter_i32(glow::TEXTURE_2D_ARRAY, k, v as i32);
                p(glow::TEXTURE_MIN_FILTER, glow::LINEAR);
                p(glow::TEXTURE_MAG_FILTER, glow::LINEAR);
                p(glow::TEXTURE_WRAP_S, glow::CLAMP_TO_EDGE);
                p(glow::TEXTURE_WRAP_T, glow::CLAMP_TO_EDGE);
                textures.push(t);
            }
        }
        self.clips.insert(
            id,
            GlClip {
                frames: f,
                chunk,
                textures,
            },
        );
        Ok(())
    }

    fn clear_clips(&mut self) {
        let ids: Vec<u32> = self.clips.keys().copied().collect();
        for id in ids {
            self.clear_clip(id);
        }
    }

    fn draw(&mut self, content: Content, patch_on: bool) -> Result<(), RenderError> {
        self.fit_to_window();
        let (w, h) = self.size;
        let gl = &self.parts.gl;
        let frame = match content {
            Content::Gray => None,
            Content::Frame { clip, frame } => self
                .clips
                .get(&clip)
                .filter(|c| frame < c.frames)
                .map(|c| (c.textures[frame / c.chunk], (frame % c.chunk) as f32)),
        };
        // SAFETY: on the context's thread, with its own objects.
        unsafe {
            match frame {
                Some((tex, layer)) => {
                    gl.active_texture(glow::TEXTURE0);
                    gl.bind_texture(glow::TEXTURE_2D_ARRAY, Some(tex));
                    gl.uniform_1_f32(self.u_layer.as_ref(), layer);
                    gl.draw_arrays(glow::TRIANGLES, 0, 3);
                }
                None => {
                    gl.clear_color(self.gray, self.gray, self.gray, 1.0);
                    gl.clear(glow::COLOR_BUFFER_BIT);
                }
            }
            if let Some((x, y, s)) = patch_rect(self.corner, self.patch, w as usize, h as usize) {
                let v = if patch_on { 1.0 } else { 0.0 };
                gl.enable(glow::SCISSOR_TEST);
                gl.scissor(x as i32, (h as usize - y - s) as i32, s as i32, s as i32);
                gl.clear_color(v, v, v, 1.0);
                gl.clear(glow::COLOR_BUFFER_BIT);
                gl.disable(glow::SCISSOR_TEST);
            }
            // Render now, so that the flip's deadline waits only for the swap.
            gl.finish();
        }
        Ok(())
    }

    fn present(&mut self) -> Result<(), RenderError> {
        self.parts
            .surface
            .swap_buffers(&self.parts.context)
            .map_err(|e| RenderError::Surface(format!("swap: {e}")))
    }

    fn vsync_paced(&self) -> bool {
        self.vsync
    }

    fn renderer(&self) -> String {
        self.name.clone()
    }
}

impl GlScreen {
    fn clear_clip(&mut self, id: u32) {
        if let Some(c) = self.clips.remove(&id) {
            for t in c.textures {
                // SAFETY: on the context's thread; the texture is this context's.
                unsafe { self.parts.gl.delete_texture(t) };
            }
        }
    }
}

impl Drop for GlScreen {
    fn drop(&mut self) {
        self.clear_clips();
        let gl = &self.parts.gl;
        // SAFETY: on the context's thread, before the context goes.
        unsafe {
            gl.delete_texture(self.map);
            gl.delete_texture(self.lut);
            gl.delete_vertex_array(self.vao);
            gl.delete_program(self.program);
        }
    }
}
