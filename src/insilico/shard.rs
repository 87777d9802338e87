//! Scale-out: `--shard K/N` screens screening batches K, K+N, K+2N, ... and writes its survivors;
//! `merge` unites the shards' survivors and runs the optimiser stage once, giving exactly the plan
//! the unsharded run gives for the same seed.
//!
//! Why only screening is split: screening candidates are independent (each depends on the seed and
//! its index alone), while CMA-ES is a sequence of generations, each depending on the last. The
//! optimiser stage is a small share of a big search's wall time when shards screen a large library
//! or grid; `merge` runs it on one node with every core. Shard numbers are 0-based (Slurm's
//! SLURM_ARRAY_TASK_ID with `--array=0-(N-1)`).

use serde::{Deserialize, Serialize};

use super::plan::{Entry, Plan, Stage};
use super::search::{finish, prepare, survivors, Header, Prepared, Record};
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

    /// Whether screening batch `chunk` belongs to this shard.
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

/// A shard's output: its screening survivors, each once, best (for its best goal) first. Merge
/// reads back `params` and `response`, which HDF5 stores bit-exactly.
pub(crate) fn screen_plan(h: Header, p: &Prepared, recs: &[Record]) -> Result<Plan, InsilicoError> {
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
            stage: Stage::Screen,
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

/// Combines the screens of shards 0..N of one search into the plan the unsharded search gives.
/// `twin` must be the file the shards used (checked by digest).
pub fn merge(
    shards: &[Plan],
    twin: &mut Twin,
    progress: &dyn Fn(u64, u64),
) -> Result<Plan, InsilicoError> {
    let Some(first) = shards.first() else {
        return Err(InsilicoError::input("merge: no shard files given"));
    };
    let mut opts: SearchOptions = first.options()?;
    let count = match first.shard {
        Some(s) => s.count,
        None => return Err(InsilicoError::input(
            "merge: the first file is a final plan, not a shard's screen (made with --shard K/N)",
        )),
    };
    let mut seen = vec![false; count as usize];
    for (i, s) in shards.iter().enumerate() {
        let sh = s
            .shard
            .filter(|_| s.stage == Stage::Screen)
            .ok_or_else(|| {
                InsilicoError::input(format!("merge: file {} is not a shard's screen", i + 1))
            })?;
        // Thread counts and time limits do not change what a search finds; all else must match.
        let norm = |mut o: SearchOptions| {
            o.shard = None;
            o.threads = 0;
            o.time_limit_s = None;
            o
        };
        let (o, o0) = (norm(s.options()?), norm(opts.clone()));
        if sh.count != count || o != o0 || s.twin_digest != first.twin_digest {
            return Err(InsilicoError::input(format!(
                "merge: shard {}/{} is from a different search than shard {}/{} (options, shard count or twin differ)",
                sh.index,
                sh.count,
                first.shard.map_or(0, |x| x.index),
                count
            )));
        }
        if std::mem::replace(&mut seen[sh.index as usize], true) {
            return Err(InsilicoError::input(format!(
                "merge: shard {}/{count} is given twice",
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
            "merge: missing shard(s) {}",
            missing.join(", ")
        )));
    }
    let digest = super::plan::file_digest(twin.path())?;
    if digest != first.twin_digest {
        return Err(InsilicoError::input(format!(
            "merge: {} is not the twin the shards used ({}; digest {digest} vs {})",
            twin.path().display(),
            first.twin,
            first.twin_digest
        )));
    }
    opts.shard = None;
    let p = prepare(twin, &opts)?;
    let mut recs: Vec<Record> = Vec::new();
    for s in shards {
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
                stage: Stage::Screen,
                index: e.index,
                cand: super::pool::Cand {
                    fam,
                    params: e.params.clone(),
                },
                response: e.response.clone(),
            });
        }
    }
    recs.sort_by_key(|r| r.index);
    recs.dedup_by_key(|r| r.index);
    // Re-selecting from the union gives the unsharded survivors (top k of a union).
    let kept = survivors(&recs, &p, &opts);
    let screen_evals: u64 = shards.iter().map(|s| s.evaluations).sum();
    let stopped = shards.iter().any(|s| s.stopped_early);
    finish(twin, &opts, &p, kept, screen_evals, stopped, progress)
}
