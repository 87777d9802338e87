//! The control a plan is judged against: random stimuli of the plan stimulus's own family, drawn
//! from the space the search drew from and scaled to the plan stimulus's RMS contrast.
//!
//! Natural clips alone flatter a plan: a drifting grating at full contrast beats most natural
//! clips for most neurons whether or not the search chose it well. A control of the same kind and
//! contrast asks the question the search answers — did *choosing* the parameters matter? Both
//! `rig insilico evaluate` (on the simulated mouse) and `rig run --plan` (in the session, next to
//! the plan's stimuli) show these.

use super::family::{rms_contrast, ClipSet, Renderer, GRAY};
use super::{InsilicoError, Plan};
use crate::sim::rng::FastRng;

/// One control stimulus for a plan entry.
#[derive(Debug, Clone)]
pub struct Control {
    /// The plan entry (index into `plan.entries`) it is the control of.
    pub entry: usize,
    pub family: String,
    pub param_names: Vec<String>,
    /// Its parameters as drawn (before the contrast was matched).
    pub params: Vec<f64>,
    /// `plan.frames` x height x width, 8-bit luminance.
    pub frames: Vec<u8>,
}

/// For each of `entries` (indices into the plan), `per_entry` random candidates of the entry's
/// own family rendered as the search renders them, then scaled to the entry's RMS contrast.
/// Deterministic in `seed`. A natural-family entry whose library cannot be read gets none (the
/// plan's options name the session the library came from).
pub fn controls(
    plan: &Plan,
    entries: &[usize],
    per_entry: usize,
    seed: u64,
) -> Result<Vec<Vec<Control>>, InsilicoError> {
    if per_entry == 0 || entries.is_empty() {
        return Ok(vec![Vec::new(); entries.len()]);
    }
    let opts = plan.options()?;
    let library = opts
        .library
        .as_ref()
        .and_then(|p| ClipSet::from_session(p).ok());
    let mut names: Vec<String> = entries
        .iter()
        .map(|&e| plan.entries[e].family.clone())
        .filter(|f| f != "natural" || library.is_some())
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Ok(vec![Vec::new(); entries.len()]);
    }
    let renderer = Renderer::new(
        &names,
        (plan.height, plan.width, plan.frames),
        plan.frame_rate_hz,
        &opts,
        library,
    )?;
    let mut rng = FastRng::new(seed);
    let mut out = Vec::with_capacity(entries.len());
    for &e in entries {
        let entry = &plan.entries[e];
        let Some(fam) = names.iter().position(|n| *n == entry.family) else {
            out.push(Vec::new());
            continue;
        };
        let want = rms_contrast(&entry.frames);
        let param_names: Vec<String> = renderer.families[fam]
            .params
            .iter()
            .map(|p| p.name.clone())
            .collect();
        let mut set = Vec::with_capacity(per_entry);
        for _ in 0..per_entry {
            let params = renderer.sample(fam, &mut rng);
            let mut frames = vec![0u8; renderer.clip_len()];
            renderer.render(fam, &params, &mut frames);
            match_contrast(&mut frames, want);
            set.push(Control {
                entry: e,
                family: entry.family.clone(),
                param_names: param_names.clone(),
                params,
                frames,
            });
        }
        out.push(set);
    }
    Ok(out)
}

/// Scales a clip's deviations from mean gray so its RMS contrast is `want` (as far as the 8-bit
/// range allows): a control at lower contrast would flatter the plan.
fn match_contrast(frames: &mut [u8], want: f64) {
    let have = rms_contrast(frames);
    if have <= 1e-9 {
        return;
    }
    let k = want / have;
    for v in frames.iter_mut() {
        let c = *v as f64 / GRAY - 1.0;
        *v = (GRAY + GRAY * c * k).round().clamp(0.0, 255.0) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contrast_is_matched() {
        let mut f: Vec<u8> = (0..1000)
            .map(|i| if i % 2 == 0 { 107 } else { 148 })
            .collect();
        let before = rms_contrast(&f);
        match_contrast(&mut f, 0.4);
        let after = rms_contrast(&f);
        assert!(before < 0.2, "{before}");
        assert!((after - 0.4).abs() < 0.01, "{after}");
        // Lowered as well as raised.
        match_contrast(&mut f, 0.1);
        assert!((rms_contrast(&f) - 0.1).abs() < 0.01);
    }
}
