//! Child processes start with no descriptor but stdin, stdout and stderr.
//!
//! libhdf5 opens files without `O_CLOEXEC` and locks them with `flock`. A child forked while a
//! session file is open inherits that descriptor, and with it the lock, for as long as it runs:
//! the recorder's own file, once published, is then "unable to lock file" for every reader until
//! the child exits (seen with `rig present` started by `rig run`, and between the parallel threads
//! of the test suite under load). Marking every inherited descriptor close-on-exec in the child,
//! between fork and exec, keeps the lock with the process that took it.

use std::process::Command;

/// Makes `cmd`'s child close every descriptor above stderr when it execs.
pub fn no_inherited_fds(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (close_range, fcntl); it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(|| {
            mark_cloexec_from(3);
            Ok(())
        })
    }
}

/// Sets FD_CLOEXEC on every descriptor >= `first`: close_range where the kernel has it (5.11 for
/// the CLOEXEC flag), else fcntl over the descriptor table's soft limit.
fn mark_cloexec_from(first: libc::c_uint) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: plain system calls on descriptor numbers; unknown ones fail with EBADF.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return;
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 16) as libc::c_int
        } else {
            1024
        };
        for fd in first as libc::c_int..top {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A descriptor opened without close-on-exec (as libhdf5 opens) is not in the child.
    #[test]
    fn the_child_does_not_inherit_an_open_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let fd = f.as_raw_fd();
        // Undo Rust's O_CLOEXEC, as libhdf5's open() would have it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        let probe = format!("test -e /proc/self/fd/{fd} && echo inherited || echo closed");
        let plain = Command::new("sh").args(["-c", &probe]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&plain.stdout).trim(), "inherited");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &probe]);
        let out = no_inherited_fds(&mut cmd).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "closed");
    }
}
