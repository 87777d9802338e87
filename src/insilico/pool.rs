//! Scoring candidates on the twin, on every core.
//!
//! tract gains little from batching this small model (onnx/README.md: per-frame cost at B = 32 is
//! no lower than at B = 1), so the cores are used by several twins side by side: the caller's
//! twin on the calling thread plus one twin per extra worker thread, each loaded inside its own
//! thread (a tract plan is not shared between threads). Candidates travel as (family, params),
//! are rendered by whichever thread scores them, and come back as the mean response of every
//! neuron over the clip.
//!
//! Determinism: `eval` cuts its list into batches of `batch` by position, and each batch is run
//! from the rest state on an identical plan, so a candidate's score does not depend on which
//! thread ran it or how many threads there were.

use std::path::PathBuf;

use crossbeam::channel::{unbounded, Receiver, Sender};

use super::family::Renderer;
use super::InsilicoError;
use crate::config::Backend;
use crate::twin::{Device, Twin, TwinError, TwinOptions};

/// A candidate to score: family index into the renderer's families, and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Cand {
    pub fam: usize,
    pub params: Vec<f64>,
}

struct Job {
    id: usize,
    cands: Vec<Cand>,
}

type JobResult = (usize, Result<Vec<Vec<f32>>, String>);

pub struct Pool<'a> {
    twin: &'a mut Twin,
    renderer: &'a Renderer,
    behavior: &'a [f32],
    batch: usize,
    jobs: Sender<Job>,
    jobs_rx: Receiver<Job>,
    results: Receiver<JobResult>,
    pub evaluated: u64,
    pub workers: usize,
}

/// Scores one batch of candidates from the rest state: mean response [N] of each.
pub fn eval_chunk(
    twin: &mut Twin,
    renderer: &Renderer,
    behavior: &[f32],
    cands: &[Cand],
) -> Result<Vec<Vec<f32>>, TwinError> {
    let b = cands.len();
    let hw = renderer.frame_len();
    let n = twin.contract().output_len();
    let t_n = renderer.frames;
    let mut clips = vec![0u8; b * renderer.clip_len()];
    for (c, out) in cands
        .iter()
        .zip(clips.chunks_exact_mut(renderer.clip_len()))
    {
        renderer.render(c.fam, &c.params, out);
    }
    let mut state = twin.new_batch_state(b);
    let mut stim = vec![0f32; b * hw];
    let beh: Vec<f32> = (0..b).flat_map(|_| behavior.iter().copied()).collect();
    let mut out = vec![0f32; b * n];
    let mut sums = vec![0f64; b * n];
    for t in 0..t_n {
        for j in 0..b {
            let src = &clips[j * renderer.clip_len() + t * hw..][..hw];
            stim[j * hw..(j + 1) * hw]
                .iter_mut()
                .zip(src)
                .for_each(|(s, &v)| *s = v as f32);
        }
        twin.run_batch(&mut state, &stim, &beh, &mut out)?;
        sums.iter_mut().zip(&out).for_each(|(s, &o)| *s += o as f64);
    }
    Ok(sums
        .chunks_exact(n)
        .map(|r| r.iter().map(|&s| (s / t_n as f64) as f32).collect())
        .collect())
}

/// Mean response of every neuron to `frames` (u8 [T*H*W]) from the rest state, batch 1.
pub fn eval_frames(
    twin: &mut Twin,
    frames: &[u8],
    behavior: &[f32],
) -> Result<Vec<f32>, TwinError> {
    let c = twin.contract();
    let (hw, n) = (c.stimulus_len(), c.output_len());
    let t_n = frames.len() / hw.max(1);
    let mut st = twin.new_state();
    let mut out = vec![0f32; n];
    let mut sums = vec![0f64; n];
    for fr in frames.chunks_exact(hw) {
        twin.step_u8(&mut st, fr, behavior, &mut out)?;
        sums.iter_mut().zip(&out).for_each(|(s, &o)| *s += o as f64);
    }
    Ok(sums
        .iter()
        .map(|&s| (s / t_n.max(1) as f64) as f32)
        .collect())
}

fn worker(
    path: PathBuf,
    backend: Backend,
    renderer: &Renderer,
    behavior: &[f32],
    jobs: Receiver<Job>,
    results: Sender<JobResult>,
) {
    let mut twin = match Twin::load_with(
        &path,
        &TwinOptions {
            backend,
            threads: 1,
        },
    ) {
        Ok(t) => t,
        Err(e) => {
            // Fewer workers is slower, not wrong: the others (and the caller) take the jobs.
            tracing::warn!("insilico: a worker could not load its twin: {e}");
            return;
        }
    };
    for job in jobs.iter() {
        let r = eval_chunk(&mut twin, renderer, behavior, &job.cands).map_err(|e| e.to_string());
        if results.send((job.id, r)).is_err() {
            return;
        }
    }
}

/// Number of worker threads to use: `threads` (0 = every core); one on CUDA, where a single
/// device does the work and larger batches are the way to fill it.
pub fn worker_count(threads: usize, device: Device) -> usize {
    if device == Device::Cuda {
        return 1;
    }
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Runs `f` with a pool of `workers` twins (the caller's and `workers - 1` more).
pub fn with_pool<R>(
    twin: &mut Twin,
    renderer: &Renderer,
    behavior: &[f32],
    batch: usize,
    workers: usize,
    f: impl FnOnce(&mut Pool) -> R,
) -> R {
    let path = twin.path().to_path_buf();
    let backend = match twin.device() {
        Device::Cpu => Backend::Cpu,
        Device::Cuda => Backend::Cuda,
    };
    let (jtx, jrx) = unbounded::<Job>();
    let (rtx, rrx) = unbounded::<JobResult>();
    std::thread::scope(|s| {
        for _ in 1..workers {
            let (p, jr, rt) = (path.clone(), jrx.clone(), rtx.clone());
            s.spawn(move || worker(p, backend, renderer, behavior, jr, rt));
        }
        drop(rtx);
        let mut pool = Pool {
            twin,
            renderer,
            behavior,
            batch: batch.max(1),
            jobs: jtx,
            jobs_rx: jrx,
            results: rrx,
            evaluated: 0,
            workers: workers.max(1),
        };
        // Dropping the pool closes the job queue, which ends the workers before the scope joins.
        f(&mut pool)
    })
}

impl Pool<'_> {
    /// Mean response [N] of each candidate, in order. `progress` gets the running count of
    /// evaluations after each batch.
    pub fn eval(
        &mut self,
        cands: &[Cand],
        progress: &mut dyn FnMut(u64),
    ) -> Result<Vec<Vec<f32>>, InsilicoError> {
        let chunks: Vec<&[Cand]> = cands.chunks(self.batch).collect();
        self.eval_chunks(chunks, progress)
    }

    /// Like `eval` on the groups one after another, but each group is cut into batches of its
    /// own, so a candidate's batch (and so its score, bit for bit) depends on its group alone,
    /// not on which other groups are scored beside it. The optimiser scores each CMA-ES run's
    /// generation as a group, so a run gives the same candidates whichever runs share its job.
    pub fn eval_groups(
        &mut self,
        groups: &[&[Cand]],
        progress: &mut dyn FnMut(u64),
    ) -> Result<Vec<Vec<f32>>, InsilicoError> {
        let chunks: Vec<&[Cand]> = groups.iter().flat_map(|g| g.chunks(self.batch)).collect();
        self.eval_chunks(chunks, progress)
    }

    fn eval_chunks(
        &mut self,
        chunks: Vec<&[Cand]>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Vec<Vec<f32>>, InsilicoError> {
        let mut out: Vec<Option<Vec<Vec<f32>>>> = vec![None; chunks.len()];
        for (id, c) in chunks.iter().enumerate() {
            self.jobs
                .send(Job {
                    id,
                    cands: c.to_vec(),
                })
                .map_err(|_| InsilicoError::input("insilico: worker queue closed"))?;
        }
        let mut done = 0;
        let mut first_err: Option<String> = None;
        while done < chunks.len() {
            // The calling thread works too, and only waits once the queue is empty.
            let (id, r) = match self.jobs_rx.try_recv() {
                Ok(job) => (
                    job.id,
                    eval_chunk(self.twin, self.renderer, self.behavior, &job.cands)
                        .map_err(|e| e.to_string()),
                ),
                Err(_) => self
                    .results
                    .recv()
                    .map_err(|_| InsilicoError::input("insilico: workers ended early"))?,
            };
            done += 1;
            match r {
                Ok(v) => {
                    self.evaluated += v.len() as u64;
                    out[id] = Some(v);
                    progress(self.evaluated);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(InsilicoError::input(format!(
                "insilico: scoring on the twin: {e}"
            )));
        }
        Ok(out.into_iter().flatten().flatten().collect())
    }
}
