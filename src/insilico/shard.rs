//! Scale-out: a search split over a job array, merged back into exactly the plan one run gives.
//!
//! - `--shard K/N` screens screening batches K, K+N, K+2N, ... and writes its survivors.
//! - `optimise_part` (`rig insilico optimise --part K/M`) re-selects the survivors from every
//!   screening shard and runs CMA-ES runs K, K+M, ... of the optimiser stage, keeping each goal's
//!   best `plan_size` of what it found.
//! - `merge` unites the screens' survivors with the optimiser parts (or, given no parts, runs the
//!   optimiser stage itself) and ranks them into the plan.
//!
//! Why this is exact: a screening candidate depends on the seed and its index alone; the
//! survivors of a union are the survivors of the union of each shard's survivors (top k); a
//! CMA-ES run depends only on the survivors, its seed and its share of the budget, and its
//! generations are batched on their own (`Pool::eval_groups`), so which part ran it changes
//! nothing; and the plan's top k per goal is the top k of the union of each part's top k. So
//! the same options and seed give the same plan, bit for bit, for any N and M.
//! Shard and part numbers are 0-based (Slurm's SLURM_ARRAY_TASK_ID with `--array=0-(N-1)`).

use serde::{Deserialize, Serialize};

use super::plan::{Entry, Plan, Stage};
use super::search::{
    best_per_goal, build_plan, optimise_stage, prepare, survivors, Header, Prepared, Record,
};
use super::{InsilicoError, SearchOptions};
use crate::twin::Twin;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Parses "K/N" (0 <= K < N).
    pub fn parse(s: &str) -> Result<Shard, InsilicoError> {
        let err = || {
            InsilicoError::input(format!(
                "--shard: {s:?}; expected K/N with 0 <= K < N (e.g. 0/4 ... 3/4)"
            ))
        };
        let (k, n) = s.split_once('/').ok_or_else(err)?;
        let sh = Shard {
            index: k.trim().parse().map_err(|_| err())?,
            count: n.trim().parse().map_err(|_| err())?,
        };
        sh.check().map_err(|_| err())?;
        Ok(sh)
    }

    pub fn check(&self) -> Result<(), InsilicoError> {
        if self.count == 0 || self.index >= self.count {
            return Err(InsilicoError::input(format!(
                "--shard: {}/{}; expected K/N with 0 <= K < N",
                self.index, self.count
            )));
        }
        Ok(())
    }

    /// Whether screening batch (or optimiser run) `chunk` belongs to this shard.
    pub fn owns(&self, chunk: u64) -> bool {
        chunk % self.count as u64 == self.index as u64
    }

    /// Screening evaluations this shard does out of `n` in batches of `b`.
    pub fn screen_share(&self, n: u64, b: u64) -> u64 {
        (0..n.div_ceil(b))
            .filter(|&c| self.owns(c))
            .map(|c| ((c + 1) * b).min(n) - c * b)
            .sum()
    }
}

/// A shard's or a part's output: its records, each once, best (for its best goal) first. Merge
/// reads back `params` and `response`, which HDF5 stores bit-exactly.
pub(crate) fn records_plan(
    h: Header,
    p: &Prepared,
    recs: &[Record],
) -> Result<Plan, InsilicoError> {
    let mut plan = super::search::build_plan(h, p, &[], 1)?;
    let mut best: Vec<(f64, i64, &Record)> = recs
        .iter()
        .map(|r| {
            p.goals
                .iter()
                .map(|g| (g.score(&r.response, &p.baseline), g.label, r))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .expect("at least one goal")
        })
        .collect();
    best.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.index.cmp(&b.2.index)));
    let mut frames = vec![0u8; p.renderer.clip_len()];
    let rest: Vec<usize> = (0..p.roi_ids.len())
        .filter(|c| !p.target_cols.contains(c))
        .collect();
    for (rank, (score, goal, r)) in best.into_iter().enumerate() {
        let fam = &p.renderer.families[r.cand.fam];
        p.renderer.render(r.cand.fam, &r.cand.params, &mut frames);
        plan.entries.push(Entry {
            rank: rank as u32,
            goal,
            family: fam.name().to_string(),
            param_names: fam.param_names(),
            params: r.cand.params.clone(),
            stage: r.stage,
            index: r.index,
            score,
            target_response: p.target_cols.iter().map(|&c| r.response[c]).collect(),
            rest_mean: if rest.is_empty() {
                0.0
            } else {
                (rest.iter().map(|&c| r.response[c] as f64).sum::<f64>() / rest.len() as f64) as f32
            },
            response: r.response.clone(),
            frames: frames.clone(),
        });
    }
    Ok(plan)
}

/// What does not change what a search finds: threads, time limit, which shard.
fn normalised(mut o: SearchOptions) -> SearchOptions {
    o.shard = None;
    o.threads = 0;
    o.time_limit_s = None;
    o
}

/// A checked set of pieces of one search: its options, how many pieces, their evaluations.
struct Pieces<'a> {
    opts: SearchOptions,
    evaluations: u64,
    stopped: bool,
    plans: Vec<&'a Plan>,
}

/// Checks that `plans` are pieces 0..N of one search, of stage `stage`, each once.
fn check_pieces<'a>(
    plans: &[&'a Plan],
    stage: Stage,
    what: &str,
    reference: Option<(&SearchOptions, &str)>,
) -> Result<Pieces<'a>, InsilicoError> {
    let first = plans[0];
    let opts = normalised(first.options()?);
    let count = first.shard.map_or(0, |s| s.count);
    let mut seen = vec![false; count as usize];
    for s in plans {
        let sh = s.shard.filter(|_| s.stage == stage).ok_or_else(|| {
            InsilicoError::input(format!(
                "merge: a file that is not a {what} among the {what}s"
            ))
        })?;
        let o = normalised(s.options()?);
        if sh.count != count || o != opts || s.twin_digest != first.twin_digest {
            return Err(InsilicoError::input(format!(
                "merge: {what} {}/{} is from a different search than {what} {}/{count} \
                 (options, {what} count or twin differ)",
                sh.index,
                sh.count,
                first.shard.map_or(0, |x| x.index),
            )));
        }
        if let Some((ro, rdigest)) = reference {
            if &o != ro || s.twin_digest != rdigest {
                return Err(InsilicoError::input(format!(
                    "merge: {what} {}/{count} is from a different search than the screening shards \
                     (options or twin differ)",
                    sh.index
                )));
            }
        }
        if std::mem::replace(&mut seen[sh.index as usize], true) {
            return Err(InsilicoError::input(format!(
                "merge: {what} {}/{count} is given twice",
                sh.index
            )));
        }
    }
    let missing: Vec<String> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| !**s)
        .map(|(i, _)| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(InsilicoError::input(format!(
            "merge: missing {what}(s) {}",
            missing.join(", ")
        )));
    }
    Ok(Pieces {
        opts,
        evaluations: plans.iter().map(|s| s.evaluations).sum(),
        stopped: plans.iter().any(|s| s.stopped_early),
        plans: plans.to_vec(),
    })
}

/// The records stored in `plans`' entries, each once, in (stage, index) order.
fn records_of(plans: &[&Plan], p: &Prepared) -> Result<Vec<Record>, InsilicoError> {
    let mut recs: Vec<Record> = Vec::new();
    for s in plans {
        for e in &s.entries {
            let fam = p
                .renderer
                .families
                .iter()
                .position(|f| f.name() == e.family)
                .ok_or_else(|| {
                    InsilicoError::input(format!(
                        "merge: entry of family {} not in the search's families",
                        e.family
                    ))
                })?;
            recs.push(Record {
                stage: e.stage,
                index: e.index,
                cand: super::pool::Cand {
                    fam,
                    params: e.params.clone(),
                },
                response: e.response.clone(),
            });
        }
    }
    recs.sort_by_key(|r| (r.stage, r.index));
    recs.dedup_by_key(|r| (r.stage, r.index));
    Ok(recs)
}

/// Splits `files` into screening shards and optimiser parts, checking each set.
fn sort_files(files: &[Plan]) -> Result<(Vec<&Plan>, Vec<&Plan>), InsilicoError> {
    if files.is_empty() {
        return Err(InsilicoError::input("merge: no shard files given"));
    }
    let mut screens = Vec::new();
    let mut parts = Vec::new();
    for (i, f) in files.iter().enumerate() {
        match (f.stage, f.shard) {
            (Stage::Screen, Some(_)) => screens.push(f),
            (Stage::Optimise, Some(_)) => parts.push(f),
            _ => {
                return Err(InsilicoError::input(format!(
                    "merge: file {} is a final plan, not a shard's screen (--shard K/N) or an \
                     optimiser part (rig insilico optimise --part K/M)",
                    i + 1
                )))
            }
        }
    }
    if screens.is_empty() {
        return Err(InsilicoError::input(
            "merge: no screening shard among the files (made with rig insilico --shard K/N)",
        ));
    }
    Ok((screens, parts))
}

fn check_twin(twin: &Twin, first: &Plan) -> Result<(), InsilicoError> {
    let digest = super::plan::file_digest(twin.path())?;
    if digest != first.twin_digest {
        return Err(InsilicoError::input(format!(
            "merge: {} is not the twin the shards used ({}; digest {digest} vs {})",
            twin.path().display(),
            first.twin,
            first.twin_digest
        )));
    }
    Ok(())
}

/// What every piece after the screen starts from: the checked screens' search options (run on
/// `threads` workers), the search prepared on `twin` (which must be the screens' twin), and the
/// survivors of the screens' union, which are the unsharded screen's survivors.
fn united(
    sc: &Pieces,
    first: &Plan,
    twin: &mut Twin,
    threads: usize,
) -> Result<(SearchOptions, Prepared, Vec<Record>), InsilicoError> {
    check_twin(twin, first)?;
    let mut opts = sc.opts.clone();
    opts.threads = threads;
    let p = prepare(twin, &opts)?;
    let kept = survivors(&records_of(&sc.plans, &p)?, &p, &opts);
    Ok((opts, p, kept))
}

/// Part `part` of the optimiser stage of the search whose screening shards are `files`: CMA-ES
/// runs K, K+M, ... from the united survivors, on `threads` workers (0 = every core). The
/// result (stage `optimise`, shard K/M) holds each goal's best `plan_size` of those runs.
pub fn optimise_part(
    files: &[Plan],
    part: Shard,
    twin: &mut Twin,
    threads: usize,
    progress: &dyn Fn(u64, u64),
) -> Result<Plan, InsilicoError> {
    part.check()?;
    let t0 = std::time::Instant::now();
    let (screens, parts) = sort_files(files)?;
    if !parts.is_empty() {
        return Err(InsilicoError::input(
            "optimise: give the screening shards only, not optimiser parts",
        ));
    }
    let sc = check_pieces(&screens, Stage::Screen, "shard", None)?;
    let (opts, p, kept) = united(&sc, screens[0], twin, threads)?;
    let (opt, evals, stopped) =
        optimise_stage(twin, &opts, &p, &kept, sc.evaluations, Some(part), progress)?;
    let best = best_per_goal(&opt, &p, opts.plan_size);
    let mut popts = opts.clone();
    popts.shard = Some(part);
    // The plan's `shard` (K/M) comes from the options it is written with.
    records_plan(
        Header {
            twin,
            opts: &popts,
            stage: Stage::Optimise,
            evaluations: evals,
            stopped_early: stopped || sc.stopped,
            elapsed_s: t0.elapsed().as_secs_f64(),
        },
        &p,
        &best,
    )
}

/// Combines the screens of shards 0..N of one search, and the optimiser parts 0..M when given,
/// into the plan the unsharded search gives. Without parts the optimiser stage runs here, on
/// `threads` workers (0 = every core). `twin` must be the file the shards used (checked by
/// digest).
pub fn merge(
    files: &[Plan],
    twin: &mut Twin,
    threads: usize,
    progress: &dyn Fn(u64, u64),
) -> Result<Plan, InsilicoError> {
    let t0 = std::time::Instant::now();
    let (screens, parts) = sort_files(files)?;
    let sc = check_pieces(&screens, Stage::Screen, "shard", None)?;
    let pt = if parts.is_empty() {
        None
    } else {
        Some(check_pieces(
            &parts,
            Stage::Optimise,
            "optimiser part",
            Some((&sc.opts, &screens[0].twin_digest)),
        )?)
    };
    let (opts, p, kept) = united(&sc, screens[0], twin, threads)?;
    let (all, evaluations, stopped) = match &pt {
        Some(pt) => {
            let mut all = kept;
            all.extend(records_of(&pt.plans, &p)?);
            (
                all,
                sc.evaluations + pt.evaluations,
                sc.stopped || pt.stopped,
            )
        }
        None => {
            let (opt, evals, stopped) =
                optimise_stage(twin, &opts, &p, &kept, sc.evaluations, None, progress)?;
            let mut all = kept;
            all.extend(opt);
            (all, sc.evaluations + evals, sc.stopped || stopped)
        }
    };
    let h = Header {
        twin,
        opts: &opts,
        stage: Stage::Final,
        evaluations,
        stopped_early: stopped,
        elapsed_s: t0.elapsed().as_secs_f64(),
    };
    build_plan(h, &p, &all, opts.plan_size)
}
