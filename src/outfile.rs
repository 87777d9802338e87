//! New output files that never truncate or replace a file in use.
//!
//! A second `rig run --out same.h5` used to truncate the first run's live session before HDF5
//! refused it a lock, and the first run then closed an unreadable file. The rule here: a file is
//! written under a temporary name in its own folder (`.NAME.PID-N.partial`) and only appears under
//! its name when it is *published*: for a session, once every start-up step that can fail (ports,
//! serial link, twin, presenter) has succeeded; for a plan or a model, once it is whole. Publishing
//! is an atomic rename that never replaces an existing file (`renameat2(RENAME_NOREPLACE)`, or a
//! hard link where a file system lacks it), unless the caller asked to overwrite — and even then
//! not a file another process holds open with a lock (HDF5 locks every file it writes or reads).
//! A claim dropped before it was published removes its temporary file, so a start-up failure
//! leaves nothing behind.
//!
//! Invariant: nothing here ever opens an existing file for writing.

use std::ffi::CString;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum OutputError {
    #[error("{path} already exists; pass --overwrite to replace it, or choose another name")]
    Exists { path: PathBuf },
    #[error(
        "{path} is open in another process (a session being recorded or read); it was left \
         untouched"
    )]
    InUse { path: PathBuf },
    #[error("{path}: cannot {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A claimed output path: written under `tmp_path()`, visible at `path()` once published.
#[derive(Debug)]
pub struct NewFile {
    path: PathBuf,
    tmp: PathBuf,
    overwrite: bool,
    published: bool,
}

impl NewFile {
    /// Claims `path`: refuses an existing file (unless `overwrite`) and one in use (always), and
    /// creates the folder. Nothing else is created until the caller writes `tmp_path()`.
    pub fn claim(path: &Path, overwrite: bool) -> Result<NewFile, OutputError> {
        check_target(path, overwrite)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(|source| OutputError::Io {
                path: dir.to_path_buf(),
                what: "create the folder",
                source,
            })?;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| OutputError::Io {
                path: path.to_path_buf(),
                what: "use it as a file name",
                source: std::io::Error::from(ErrorKind::InvalidInput),
            })?;
        // Unique per process and claim, so two claims never share a temporary file.
        static CLAIMS: AtomicU64 = AtomicU64::new(0);
        let n = CLAIMS.fetch_add(1, Ordering::Relaxed);
        let tmp_name = format!(".{name}.{}-{n}.partial", std::process::id());
        let tmp = match dir {
            Some(d) => d.join(tmp_name),
            None => PathBuf::from(tmp_name),
        };
        Ok(NewFile {
            path: path.to_path_buf(),
            tmp,
            overwrite,
            published: false,
        })
    }

    /// Where the file is written until it is published.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// The name the file is published under.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_published(&self) -> bool {
        self.published
    }

    /// Moves the written file to its name, atomically; refuses (and removes the temporary file)
    /// if another process published or locked that name since the claim.
    pub fn publish(&mut self) -> Result<(), OutputError> {
        if self.published {
            return Ok(());
        }
        let r = if self.overwrite {
            // The claim checked this too; a process that started recording to the name since
            // then holds its lock now.
            check_target(&self.path, true).and_then(|()| {
                std::fs::rename(&self.tmp, &self.path).map_err(|source| OutputError::Io {
                    path: self.path.clone(),
                    what: "rename the new file into place",
                    source,
                })
            })
        } else {
            rename_noreplace(&self.tmp, &self.path)
        };
        match r {
            Ok(()) => {
                self.published = true;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.tmp);
                Err(e)
            }
        }
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Refuses an existing `path` unless `overwrite`, and a locked one always.
pub fn check_target(path: &Path, overwrite: bool) -> Result<(), OutputError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(OutputError::Io {
                path: path.to_path_buf(),
                what: "check the existing file",
                source,
            })
        }
    };
    if is_locked(&file) {
        return Err(OutputError::InUse {
            path: path.to_path_buf(),
        });
    }
    if !overwrite {
        return Err(OutputError::Exists {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Whether another open file description holds a lock on the file (HDF5 takes `flock` on every
/// file it opens, shared for readers and exclusive for writers).
fn is_locked(file: &std::fs::File) -> bool {
    let fd = file.as_raw_fd();
    // SAFETY: flock on a descriptor we own; the probe lock is released at once.
    let r = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        unsafe { libc::flock(fd, libc::LOCK_UN) };
        return false;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

fn rename_noreplace(from: &Path, to: &Path) -> Result<(), OutputError> {
    let io = |source: std::io::Error| {
        if source.kind() == ErrorKind::AlreadyExists {
            OutputError::Exists {
                path: to.to_path_buf(),
            }
        } else {
            OutputError::Io {
                path: to.to_path_buf(),
                what: "move the new file into place",
                source,
            }
        }
    };
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|e| io(e.into()));
    let (cf, ct) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths relative to the working directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cf.as_ptr(),
            libc::AT_FDCWD,
            ct.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // The file system (or an old kernel) has no RENAME_NOREPLACE: a hard link also fails
        // when the name exists, and is just as atomic.
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
            std::fs::hard_link(from, to).map_err(io)?;
            let _ = std::fs::remove_file(from);
            Ok(())
        }
        _ => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_never_replaces_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.h5");
        let mut a = NewFile::claim(&p, false).unwrap();
        std::fs::write(a.tmp_path(), b"first").unwrap();
        // A second claim before the first is published sees no file yet ...
        let mut b = NewFile::claim(&p, false).unwrap();
        a.publish().unwrap();
        // ... but its publish must not replace the first.
        std::fs::write(b.tmp_path(), b"second").unwrap();
        assert!(matches!(b.publish(), Err(OutputError::Exists { .. })));
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        drop(b);
        // Only the published file is left.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        // An unpublished claim leaves nothing behind.
        let q = dir.path().join("b.h5");
        let c = NewFile::claim(&q, false).unwrap();
        std::fs::write(c.tmp_path(), b"x").unwrap();
        drop(c);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn existing_needs_overwrite_and_locked_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.h5");
        std::fs::write(&p, b"old").unwrap();
        assert!(matches!(
            NewFile::claim(&p, false),
            Err(OutputError::Exists { .. })
        ));
        let mut c = NewFile::claim(&p, true).unwrap();
        std::fs::write(c.tmp_path(), b"new").unwrap();
        // Someone opens and locks the old file (as HDF5 does) before the publish.
        let holder = std::fs::File::open(&p).unwrap();
        assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_SH) }, 0);
        assert!(matches!(c.publish(), Err(OutputError::InUse { .. })));
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(matches!(
            NewFile::claim(&p, true),
            Err(OutputError::InUse { .. })
        ));
        drop(holder);
        let mut c = NewFile::claim(&p, true).unwrap();
        std::fs::write(c.tmp_path(), b"new").unwrap();
        c.publish().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }
}
