//! A search on a background thread, for `rig run`: the thread loads its own twin (a tract plan
//! lives on the thread that runs it), reports progress through atomics the session loop can read
//! without locking, and hands back the plan when joined. Bound a refresh with
//! `SearchOptions::time_limit_s` and leave cores to acquisition with `SearchOptions::threads`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{search, InsilicoError, Plan, SearchOptions};
use crate::config::Backend;
use crate::twin::{Twin, TwinOptions};

pub struct Background {
    handle: JoinHandle<Result<Plan, InsilicoError>>,
    done: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
}

/// Starts `search(twin, opts)` on a new thread named `insilico`.
pub fn spawn(
    twin: PathBuf,
    backend: Backend,
    opts: SearchOptions,
) -> Result<Background, InsilicoError> {
    let done = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(opts.budget));
    let (d, t) = (done.clone(), total.clone());
    let handle = std::thread::Builder::new()
        .name("insilico".into())
        .spawn(move || {
            crate::pipeline::priority::lower_this_thread(
                crate::pipeline::priority::Yield::Background,
            );
            let mut tw = Twin::load_with(
                &twin,
                &TwinOptions {
                    backend,
                    threads: 1,
                },
            )?;
            search(&mut tw, &opts, &|a, b| {
                d.store(a, Ordering::Relaxed);
                t.store(b, Ordering::Relaxed);
            })
        })
        .map_err(|e| {
            InsilicoError::input(format!("insilico: cannot start the search thread: {e}"))
        })?;
    Ok(Background {
        handle,
        done,
        total,
    })
}

impl Background {
    /// (evaluations done, evaluations planned).
    pub fn progress(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the plan.
    pub fn join(self) -> Result<Plan, InsilicoError> {
        self.handle
            .join()
            .map_err(|_| InsilicoError::input("insilico: the search thread panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insilico::Objective;

    #[test]
    fn a_background_search_returns_its_plan() {
        let twin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("onnx/reference_twin.onnx");
        let opts = SearchOptions {
            objective: Objective::Neuron,
            targets: vec![133],
            budget: 8,
            clip_s: 0.2,
            threads: 1,
            ..SearchOptions::default()
        };
        let bg = spawn(twin, Backend::Cpu, opts).unwrap();
        let plan = bg.join().unwrap();
        assert_eq!(plan.evaluations, 8);
        assert_eq!(plan.entries[0].goal, 133);
    }
}
