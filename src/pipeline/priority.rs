//! CPU priority of the threads of a run, so that the closed-loop path (acquisition of a live
//! frame, extraction, the loop) wins the cores when the machine is busy.
//!
//! The path from a frame's arrival to the loop's decision has a few milliseconds of work per
//! frame and a latency target of a few milliseconds; the threads around it have slack:
//! - the recorder (`sink`) sits behind a blocking ring of 32 frames (a second at 30 Hz): a few
//!   milliseconds late costs it nothing, and it never drops a frame anyway;
//! - the simulated rig (the microscope's rendering on the acquisition thread, its sync board)
//!   stands in for hardware that has machines of its own on a real rig, with a frame period of
//!   budget; a live source's acquisition keeps the process's priority;
//! - the in-silico search is a background job.
//!
//! These threads lower their own priority (a higher nice value, which needs no privilege); the
//! closed-loop threads keep the process's. Only threads that live for one job do it: a raised
//! nice value cannot be lowered again without privilege, and threads inherit it. Linux only (`setpriority` on a thread id); elsewhere,
//! or if the call fails, nothing changes and the run goes on.

/// How far a thread steps back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Yield {
    /// Has a buffer's worth of slack (the recorder, the simulated sync board): nice +5.
    Slack,
    /// Stand-ins and background work (the simulated microscope, the in-silico search): nice +10.
    Background,
}

impl Yield {
    fn nice(self) -> i32 {
        match self {
            Yield::Slack => 5,
            Yield::Background => 10,
        }
    }
}

/// Lowers the calling thread's priority by `how`, relative to its own (on Linux
/// `getpriority(PRIO_PROCESS, 0)` is the calling thread's nice value). Call it once, from a
/// thread that lives for one job and spawns nothing: a raised nice value is inherited and cannot
/// be taken back.
pub fn lower_this_thread(how: Yield) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid/getpriority/setpriority take plain integers and touch no memory.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let process = libc::getpriority(libc::PRIO_PROCESS, 0);
            let nice = (process + how.nice()).min(19);
            if libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0 {
                tracing::debug!(
                    "cannot lower the priority of thread {tid}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = how;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_lowers_its_own_priority_and_not_the_process() {
        let process = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let mine = std::thread::spawn(|| {
            lower_this_thread(Yield::Slack);
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
            unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) }
        })
        .join()
        .unwrap();
        assert_eq!(mine, (process + 5).min(19));
        assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }, process);
    }

    fn my_cpus() -> Vec<usize> {
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }

    #[test]
    fn the_closed_loop_gets_the_last_cpu_and_the_rest_stay_off_it() {
        let all = my_cpus();
        let placed = |p: Place| {
            std::thread::spawn(move || {
                place_this_thread(p);
                my_cpus()
            })
            .join()
            .unwrap()
        };
        let (on, off) = (placed(Place::ClosedLoop), placed(Place::OffClosedLoop));
        if all.len() < 2 || std::env::var_os("TWINRIG_NO_PIN").is_some() {
            assert_eq!((&on, &off), (&all, &all));
        } else {
            assert_eq!(on, vec![*all.last().unwrap()]);
            assert_eq!(off, all[..all.len() - 1].to_vec());
        }
        assert_eq!(my_cpus(), all, "the calling thread is not moved");
    }
}

/// Core placement in live and paced runs: on a machine with at least two CPUs available, the
/// last of them is kept for extraction (`analysis`) and the threads with slack (the recorder, the
/// simulated microscope) are kept off it, so a frame's extraction never queues behind the
/// simulator's rendering or the recorder's writes. The `loop` thread is not placed: sharing the
/// extraction's CPU, a twin step would hold up the next frame's extraction (measured: with the
/// twin, `closed_loop` p99 8.5 ms placed, 5.2 ms not). Threads not placed run anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// On the closed loop's CPU.
    ClosedLoop,
    /// Anywhere but the closed loop's CPU.
    OffClosedLoop,
}

/// Places the calling thread (Linux; elsewhere, with fewer than two CPUs, or with
/// `TWINRIG_NO_PIN` set, nothing happens).
pub fn place_this_thread(place: Place) {
    #[cfg(target_os = "linux")]
    {
        if std::env::var_os("TWINRIG_NO_PIN").is_some() {
            return;
        }
        // SAFETY: the cpu_set_t is a plain bitmask on this stack frame, sized as the calls
        // expect.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            if libc::sched_getaffinity(0, size, &mut set) != 0 {
                return;
            }
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect();
            let (Some(&last), true) = (cpus.last(), cpus.len() >= 2) else {
                return;
            };
            let mut want: libc::cpu_set_t = std::mem::zeroed();
            match place {
                Place::ClosedLoop => libc::CPU_SET(last, &mut want),
                Place::OffClosedLoop => {
                    for &c in &cpus[..cpus.len() - 1] {
                        libc::CPU_SET(c, &mut want);
                    }
                }
            }
            if libc::sched_setaffinity(0, size, &want) != 0 {
                tracing::debug!("cannot place a thread: {}", std::io::Error::last_os_error());
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = place;
}
