//! The search: screen a random sample of every family, keep the best per goal, then run CMA-ES
//! from the best screened candidates of the families it can optimise, all under one budget of twin
//! evaluations (and optionally a wall-time limit).
//!
//! Candidate i of the screen is drawn from `FastRng::new(mix(seed, i))` in family `i % F`, and
//! screened in batch `i / batch`: both depend only on the seed and i, which is what lets
//! `--shard K/N` screen batches K, K+N, ... and `merge` rebuild the unsharded screen's survivors
//! exactly (the top k of a union is the top k of the union of each part's top k). The optimiser
//! stage then runs identically from those survivors, in the unsharded run and in `merge` alike.

use std::path::Path;
use std::time::Instant;

use super::cmaes::{default_lambda, Cmaes};
use super::family::{ClipSet, Renderer, GRAY};
use super::objective::{goals, target_columns, Goal, Objective};
use super::plan::{Entry, Plan, Stage, FORMAT_VERSION};
use super::pool::{eval_frames, with_pool, worker_count, Cand, Pool};
use super::shard::Shard;
use super::{mix, InsilicoError, SearchOptions};
use crate::sim::rng::FastRng;
use crate::twin::{Kind, Twin};

/// A scored candidate.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub stage: Stage,
    pub index: u64,
    pub cand: Cand,
    /// Mean predicted response of every twin neuron over the clip.
    pub response: Vec<f32>,
}

/// What a search needs besides the pool: checked options, renderer, goals, baseline.
pub(crate) struct Prepared {
    pub renderer: Renderer,
    pub goals: Vec<Goal>,
    pub target_cols: Vec<usize>,
    pub behavior: Vec<f32>,
    pub baseline: Vec<f32>,
    pub roi_ids: Vec<u32>,
}

/// Checks the options against the twin and builds everything the search needs.
pub(crate) fn prepare(twin: &mut Twin, o: &SearchOptions) -> Result<Prepared, InsilicoError> {
    let c = twin.contract().clone();
    let tw = twin.path().display().to_string();
    if c.kind != Kind::Twin {
        return Err(InsilicoError::input(format!(
            "{tw}: is a core (twin.kind = core); in-silico search needs a twin (rig twin adapt makes one)"
        )));
    }
    if o.budget == 0 {
        return Err(InsilicoError::input(
            "--budget: 0 twin evaluations; the search needs at least 1",
        ));
    }
    if !(o.clip_s > 0.0 && o.clip_s <= 60.0) {
        return Err(InsilicoError::input(format!(
            "--clip-s: {} s; expected a clip length in (0, 60] seconds",
            o.clip_s
        )));
    }
    if !(o.max_rms_contrast > 0.0 && o.max_rms_contrast <= 1.0) {
        return Err(InsilicoError::input(format!(
            "--max-rms: {}; expected an RMS contrast in (0, 1]",
            o.max_rms_contrast
        )));
    }
    if !(0.0..=1.0).contains(&o.screen_fraction) {
        return Err(InsilicoError::input(format!(
            "screen_fraction: {}; expected 0..=1",
            o.screen_fraction
        )));
    }
    if !(o.deg_per_px > 0.0 && o.deg_per_px.is_finite()) {
        return Err(InsilicoError::input(format!(
            "deg_per_px: {}; expected a positive number",
            o.deg_per_px
        )));
    }
    if o.batch == 0 || o.plan_size == 0 || o.keep == 0 {
        return Err(InsilicoError::input(
            "--batch, --plan-size and keep must each be at least 1",
        ));
    }
    if let Some(s) = &o.shard {
        s.check()?;
    }
    // Targets: ROI ids of the twin's neurons, each once.
    let target_cols = target_columns(o.objective, &o.targets, &c.roi_ids, &tw)?;
    if o.objective == Objective::Explore
        && !o.explore_weights.is_empty()
        && o.explore_weights.len() != c.n_neurons
    {
        return Err(InsilicoError::input(format!(
            "explore weights: {} values, expected one per twin neuron ({})",
            o.explore_weights.len(),
            c.n_neurons
        )));
    }
    let library = match &o.library {
        Some(p) => Some(ClipSet::from_session(p)?),
        None => None,
    };
    let frames = (o.clip_s * c.frame_rate_hz).round().max(1.0) as usize;
    let renderer = Renderer::new(
        &o.families,
        (c.height, c.width, frames),
        c.frame_rate_hz,
        o,
        library,
    )?;
    let behavior: Vec<f32> = c
        .behavior_channels
        .iter()
        .map(|ch| match ch.as_str() {
            "running_speed" => o.running_speed,
            "pupil_diameter" => o.pupil_mm,
            _ => 0.0, // eye position: straight ahead
        })
        .collect();
    let gray = vec![GRAY.round() as u8; renderer.clip_len()];
    // The twin's response to the blank screen (127.5 is not an 8-bit value; the gray the display
    // shows is 128) is every objective's zero.
    let baseline = eval_frames(twin, &gray, &behavior)?;
    let goals = goals(o.objective, &target_cols, &c.roi_ids, &o.explore_weights);
    Ok(Prepared {
        renderer,
        goals,
        target_cols,
        behavior,
        baseline,
        roi_ids: c.roi_ids.clone(),
    })
}

/// Screening budget: all of it when no family can be optimised.
pub(crate) fn screen_budget(o: &SearchOptions, r: &Renderer) -> u64 {
    if !r.families.iter().any(|f| f.optimisable()) {
        return o.budget;
    }
    ((o.budget as f64 * o.screen_fraction).round() as u64).clamp(1, o.budget)
}

/// Whether the search must stop: its time limit, or the operator's stop request (the caller
/// tells the two apart with `interrupt::requested`).
fn time_over(o: &SearchOptions, t0: Instant) -> bool {
    crate::interrupt::requested()
        || o.time_limit_s
            .is_some_and(|lim| t0.elapsed().as_secs_f64() >= lim)
}

/// Screening candidate `i`.
pub(crate) fn screen_candidate(seed: u64, i: u64, r: &Renderer) -> Cand {
    let fam = (i % r.families.len() as u64) as usize;
    let mut rng = FastRng::new(mix(seed, i));
    Cand {
        fam,
        params: r.sample(fam, &mut rng),
    }
}

/// Screens the batches this run owns (all, or those of its shard).
fn screen(
    pool: &mut Pool,
    p: &Prepared,
    o: &SearchOptions,
    t0: Instant,
    progress: &mut dyn FnMut(u64),
) -> Result<(Vec<Record>, bool), InsilicoError> {
    let n = screen_budget(o, &p.renderer);
    let b = o.batch as u64;
    let chunks = n.div_ceil(b);
    let owned: Vec<u64> = (0..chunks)
        .filter(|c| o.shard.as_ref().is_none_or(|s| s.owns(*c)))
        .collect();
    // Waves of a few batches per worker: the time limit is checked between waves.
    let wave = pool.workers * 2;
    let mut out = Vec::new();
    let mut stopped = false;
    for (w, group) in owned.chunks(wave).enumerate() {
        if w > 0 && time_over(o, t0) {
            stopped = true;
            break;
        }
        let idx: Vec<u64> = group
            .iter()
            .flat_map(|&c| c * b..((c + 1) * b).min(n))
            .collect();
        let cands: Vec<Cand> = idx
            .iter()
            .map(|&i| screen_candidate(o.seed, i, &p.renderer))
            .collect();
        let resp = pool.eval(&cands, progress)?;
        for ((i, cand), response) in idx.into_iter().zip(cands).zip(resp) {
            out.push(Record {
                stage: Stage::Screen,
                index: i,
                cand,
                response,
            });
        }
    }
    Ok((out, stopped))
}

/// Records ranked for a goal, best first (ties: screen before optimise, then by index).
pub(crate) fn ranked<'r>(recs: &'r [Record], g: &Goal, base: &[f32]) -> Vec<(f64, &'r Record)> {
    let mut v: Vec<(f64, &Record)> = recs
        .iter()
        .map(|r| (g.score(&r.response, base), r))
        .collect();
    v.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.stage.cmp(&b.1.stage))
            .then(a.1.index.cmp(&b.1.index))
    });
    v
}

/// Survivors of the screen: per goal the best `keep`, and the best `starts` of the families CMA-ES
/// can optimise (its seeds). Sorted by index, without duplicates.
pub(crate) fn survivors(recs: &[Record], p: &Prepared, o: &SearchOptions) -> Vec<Record> {
    let mut keep: Vec<u64> = Vec::new();
    for g in &p.goals {
        let r = ranked(recs, g, &p.baseline);
        keep.extend(r.iter().take(o.keep).map(|(_, x)| x.index));
        keep.extend(
            r.iter()
                .filter(|(_, x)| p.renderer.families[x.cand.fam].optimisable())
                .take(o.starts)
                .map(|(_, x)| x.index),
        );
    }
    keep.sort_unstable();
    keep.dedup();
    let mut out: Vec<Record> = recs
        .iter()
        .filter(|r| keep.binary_search(&r.index).is_ok())
        .cloned()
        .collect();
    out.sort_by_key(|r| r.index);
    out
}

struct Run {
    goal: usize,
    fam: usize,
    es: Cmaes,
    budget: u64,
    used: u64,
    /// Position in the list of every (goal, start) run of the search: the high half of its
    /// candidates' indices, and what `--part K/M` divides.
    id: u64,
}

/// Index of the `k`-th candidate of optimiser run `run`. Depends on the run and the candidate
/// alone, so the optimiser's records are named the same however the runs are divided over jobs
/// (ranking breaks ties by index).
pub(crate) fn optimise_index(run: u64, k: u64) -> u64 {
    (run << 32) | k
}

/// CMA-ES from the survivors: one run per (goal, start), each with its share of `budget`. With
/// `part = K/M` only runs K, K+M, ... are run (`rig insilico optimise`). All runs of this job
/// advance one generation at a time together, so a generation fills every core; each run's
/// generation is batched on its own, so its candidates and scores do not depend on its
/// neighbours, and the union of M parts equals the whole stage bit for bit.
fn optimise(
    pool: &mut Pool,
    p: &Prepared,
    o: &SearchOptions,
    (seeds_from, budget, part): (&[Record], u64, Option<Shard>),
    t0: Instant,
    progress: &mut dyn FnMut(u64),
) -> Result<(Vec<Record>, bool), InsilicoError> {
    let mut runs: Vec<Run> = Vec::new();
    let g_n = p.goals.len() as u64;
    if g_n == 0 || o.starts == 0 {
        return Ok((Vec::new(), false));
    }
    let mut id = 0u64;
    for (gi, g) in p.goals.iter().enumerate() {
        let gb = budget / g_n + u64::from((gi as u64) < budget % g_n);
        let seeds: Vec<&Record> = ranked(seeds_from, g, &p.baseline)
            .into_iter()
            .filter(|(_, r)| p.renderer.families[r.cand.fam].optimisable())
            .take(o.starts)
            .map(|(_, r)| r)
            .collect();
        let k = seeds.len() as u64;
        for (si, s) in seeds.iter().enumerate() {
            let rb = gb / k + u64::from((si as u64) < gb % k);
            if rb == 0 {
                continue;
            }
            let run_id = id;
            id += 1;
            if part.is_some_and(|pt| !pt.owns(run_id)) {
                continue;
            }
            let fam = &p.renderer.families[s.cand.fam];
            let lambda = (default_lambda(fam.dim()) as u64).min(rb).max(2) as usize;
            let es = Cmaes::new(
                fam.to_unit(&s.cand.params),
                0.2,
                lambda,
                mix(mix(o.seed, 0x000C_3AE5), (gi * 1024 + si) as u64),
            );
            runs.push(Run {
                goal: gi,
                fam: s.cand.fam,
                es,
                budget: rb,
                used: 0,
                id: run_id,
            });
        }
    }
    let mut out = Vec::new();
    let mut stopped = false;
    let mut first = true;
    loop {
        if !first && time_over(o, t0) {
            stopped = runs.iter().any(|r| r.used < r.budget);
            break;
        }
        first = false;
        let mut asked: Vec<(usize, Vec<Vec<f64>>, Vec<Cand>)> = Vec::new();
        for (ri, r) in runs.iter_mut().enumerate() {
            let k = (r.es.lambda as u64).min(r.budget - r.used) as usize;
            if k > 0 {
                let xs = r.es.ask(k);
                let cands = xs
                    .iter()
                    .map(|x| Cand {
                        fam: r.fam,
                        params: p.renderer.families[r.fam].at_unit(x),
                    })
                    .collect();
                asked.push((ri, xs, cands));
            }
        }
        if asked.is_empty() {
            break;
        }
        let groups: Vec<&[Cand]> = asked.iter().map(|(_, _, c)| c.as_slice()).collect();
        let mut resp = pool.eval_groups(&groups, progress)?.into_iter();
        for (ri, xs, cands) in asked {
            let run = &mut runs[ri];
            let g = &p.goals[run.goal];
            let mut f = Vec::with_capacity(xs.len());
            for cand in cands {
                let response = resp.next().expect("one per candidate");
                f.push(-g.score(&response, &p.baseline));
                out.push(Record {
                    stage: Stage::Optimise,
                    index: optimise_index(run.id, run.used),
                    cand,
                    response,
                });
                run.used += 1;
            }
            if xs.len() == run.es.lambda {
                run.es.tell(&xs, &f);
            }
        }
    }
    Ok((out, stopped))
}

/// Plan-level description shared by the final plan and a shard's screen.
pub(crate) struct Header<'a> {
    pub twin: &'a Twin,
    pub opts: &'a SearchOptions,
    pub stage: Stage,
    pub evaluations: u64,
    pub stopped_early: bool,
    pub elapsed_s: f64,
}

/// Ranks `recs` per goal and renders the top `per_goal` of each into plan entries: rank 0 of
/// every goal first, then rank 1, ...
pub(crate) fn build_plan(
    h: Header,
    p: &Prepared,
    recs: &[Record],
    per_goal: usize,
) -> Result<Plan, InsilicoError> {
    let per: Vec<Vec<(f64, &Record)>> = p
        .goals
        .iter()
        .map(|g| {
            ranked(recs, g, &p.baseline)
                .into_iter()
                .take(per_goal)
                .collect()
        })
        .collect();
    let rest: Vec<usize> = (0..p.roi_ids.len())
        .filter(|c| !p.target_cols.contains(c))
        .collect();
    let mut entries = Vec::new();
    let mut frames = vec![0u8; p.renderer.clip_len()];
    for rank in 0..per_goal {
        for (gi, list) in per.iter().enumerate() {
            let Some((score, r)) = list.get(rank) else {
                continue;
            };
            let fam = &p.renderer.families[r.cand.fam];
            p.renderer.render(r.cand.fam, &r.cand.params, &mut frames);
            let rest_mean = if rest.is_empty() {
                0.0
            } else {
                (rest.iter().map(|&c| r.response[c] as f64).sum::<f64>() / rest.len() as f64) as f32
            };
            entries.push(Entry {
                rank: rank as u32,
                goal: p.goals[gi].label,
                family: fam.name().to_string(),
                param_names: fam.param_names(),
                params: r.cand.params.clone(),
                stage: r.stage,
                index: r.index,
                score: *score,
                target_response: p.target_cols.iter().map(|&c| r.response[c]).collect(),
                rest_mean,
                response: r.response.clone(),
                frames: frames.clone(),
            });
        }
    }
    let c = h.twin.contract();
    Ok(Plan {
        format_version: FORMAT_VERSION,
        twin: h.twin.path().display().to_string(),
        twin_digest: super::plan::file_digest(h.twin.path())?,
        objective: h.opts.objective.name().to_string(),
        targets: h.opts.targets.clone(),
        seed: h.opts.seed,
        budget: h.opts.budget,
        evaluations: h.evaluations,
        stage: h.stage,
        shard: h.opts.shard,
        stopped_early: h.stopped_early,
        elapsed_s: h.elapsed_s,
        frame_rate_hz: c.frame_rate_hz,
        height: c.height,
        width: c.width,
        frames: p.renderer.frames,
        roi_ids: p.roi_ids.clone(),
        baseline: p.baseline.clone(),
        options_json: serde_json::to_string(h.opts)
            .map_err(|e| InsilicoError::input(format!("options: {e}")))?,
        software_version: crate::VERSION.to_string(),
        entries,
    })
}

/// Runs a search on `twin` (the plan of an unsharded run, or the screen of one shard when
/// `opts.shard` is set). `progress(done, total)` counts twin evaluations. Usable from a background
/// thread: it only borrows the twin, and loads one more copy per extra worker thread.
pub fn search(
    twin: &mut Twin,
    opts: &SearchOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<Plan, InsilicoError> {
    let t0 = Instant::now();
    let p = prepare(twin, opts)?;
    let total = match &opts.shard {
        Some(s) => s.screen_share(screen_budget(opts, &p.renderer), opts.batch as u64),
        None => opts.budget,
    };
    let workers = worker_count(opts.threads, twin.device());
    let (recs, evaluations, stopped) = with_pool(
        twin,
        &p.renderer,
        &p.behavior,
        opts.batch,
        workers,
        |pool| -> Result<_, InsilicoError> {
            let mut prog = |d: u64| progress(d, total);
            let (screened, stopped) = screen(pool, &p, opts, t0, &mut prog)?;
            let kept = survivors(&screened, &p, opts);
            if opts.shard.is_some() {
                return Ok((kept, pool.evaluated, stopped));
            }
            let left = opts.budget.saturating_sub(pool.evaluated);
            let (mut opt, stopped2) = optimise(pool, &p, opts, (&kept, left, None), t0, &mut prog)?;
            let mut all = kept;
            all.append(&mut opt);
            Ok((all, pool.evaluated, stopped || stopped2))
        },
    )?;
    let (stage, per_goal) = if opts.shard.is_some() {
        (Stage::Screen, opts.keep.max(opts.starts))
    } else {
        (Stage::Final, opts.plan_size)
    };
    // A shard keeps its survivors whole (merge needs every one), not just a plan's worth.
    let recs_for_plan = recs;
    let h = Header {
        twin,
        opts,
        stage,
        evaluations,
        stopped_early: stopped,
        elapsed_s: t0.elapsed().as_secs_f64(),
    };
    if stage == Stage::Screen {
        return super::shard::records_plan(h, &p, &recs_for_plan);
    }
    build_plan(h, &p, &recs_for_plan, per_goal)
}

/// The optimiser stage (or part `part` of it) from merged survivors, for `merge` and
/// `optimise_part`: the optimised records, their evaluations and whether the time limit cut them.
pub(crate) fn optimise_stage(
    twin: &mut Twin,
    opts: &SearchOptions,
    p: &Prepared,
    kept: &[Record],
    screen_evals: u64,
    part: Option<Shard>,
    progress: &dyn Fn(u64, u64),
) -> Result<(Vec<Record>, u64, bool), InsilicoError> {
    let t0 = Instant::now();
    let workers = worker_count(opts.threads, twin.device());
    let left = opts.budget.saturating_sub(screen_evals);
    with_pool(
        twin,
        &p.renderer,
        &p.behavior,
        opts.batch,
        workers,
        |pool| -> Result<_, InsilicoError> {
            let mut prog = |d: u64| progress(screen_evals + d, opts.budget);
            let (opt, s) = optimise(pool, p, opts, (kept, left, part), t0, &mut prog)?;
            Ok((opt, pool.evaluated, s))
        },
    )
}

/// The best `per_goal` records of each goal, each once, in index order: all that a merge needs
/// of a part's records (the top k of a union is the top k of the union of each part's top k).
pub(crate) fn best_per_goal(recs: &[Record], p: &Prepared, per_goal: usize) -> Vec<Record> {
    let mut keep: Vec<(Stage, u64)> = Vec::new();
    for g in &p.goals {
        keep.extend(
            ranked(recs, g, &p.baseline)
                .iter()
                .take(per_goal)
                .map(|(_, r)| (r.stage, r.index)),
        );
    }
    keep.sort_unstable();
    keep.dedup();
    let mut out: Vec<Record> = recs
        .iter()
        .filter(|r| keep.binary_search(&(r.stage, r.index)).is_ok())
        .cloned()
        .collect();
    out.sort_by_key(|r| (r.stage, r.index));
    out
}

/// Explore weights from a recorded session: 1 - r per twin neuron, r the correlation of the twin's
/// prediction with the measured response (so neurons the twin gets most wrong weigh most).
pub fn explore_weights_from_session(
    twin: &mut Twin,
    session: &Path,
) -> Result<Vec<f32>, InsilicoError> {
    use crate::twin::data::SessionData;
    use crate::twin::metrics::{accuracy, clip_repeats};
    let c = twin.contract().clone();
    let s = SessionData::open(session, true)?;
    s.check_compatible(&c, twin.path())?;
    let tg = s.targets.as_ref().expect("need_targets");
    let mut cols = Vec::new();
    for id in &c.roi_ids {
        match tg.column(*id) {
            Some(col) => cols.push(col),
            None => {
                return Err(InsilicoError::File {
                    path: session.into(),
                    message: format!(
                        "has no measured response for the twin's ROI id {id} ({})",
                        tg.source
                    ),
                })
            }
        }
    }
    let (t_n, n) = (s.n_frames, c.n_neurons);
    let pred = s.predict(twin, &|_| {})?;
    let frames: Vec<usize> = (0..t_n).collect();
    let acc = accuracy(
        &pred,
        n,
        &tg.data,
        tg.n(),
        &cols,
        &frames,
        &clip_repeats(&s),
    );
    Ok(acc
        .per_neuron
        .iter()
        .map(|&r| (1.0 - if r.is_finite() { r } else { 0.0 }).clamp(0.0, 2.0) as f32)
        .collect())
}
