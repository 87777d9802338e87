//! Where a config's relative `twin.onnx` is: the default config names the reference twin as
//! `onnx/reference_twin.onnx`, which only exists relative to the repository, so `rig run` or
//! `rig validate` started in any other folder would fail. A relative path is looked up, in order:
//!
//! 1. as given, relative to the working directory (what a user typing the path means);
//! 2. next to the config file that names it (a rig folder that keeps its config and twin);
//! 3. next to the `rig` binary and in the folders above it (`target/release/../../onnx` in a
//!    checkout, `bin/../onnx` in an install);
//! 4. for the reference twin only, the copy built into the binary (460 KB), written once to a
//!    per-user cache file (named by its content, so a stale or tampered file is never used).
//!
//! A path found nowhere is returned as given, so the error that follows names what the config
//! says.

use std::path::{Path, PathBuf};

/// The reference twin as the default config names it.
pub const REFERENCE_TWIN: &str = "onnx/reference_twin.onnx";

/// The reference twin, built into the binary so the embedded config works from any folder.
static REFERENCE_TWIN_BYTES: &[u8] = include_bytes!("../../onnx/reference_twin.onnx");

/// Folders above the binary searched for a relative twin path.
const EXE_ANCESTORS: usize = 4;

/// Resolves `given` (a config's `twin.onnx`); `config_dir` is the folder of the config file,
/// `None` for the embedded config.
pub fn resolve(given: &Path, config_dir: Option<&Path>) -> PathBuf {
    if given.is_absolute() || given.exists() {
        return given.to_path_buf();
    }
    let beside_config = config_dir.map(|d| d.join(given));
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .into_iter()
        .flat_map(|d| {
            d.ancestors()
                .take(EXE_ANCESTORS + 1)
                .map(|a| a.join(given))
                .collect::<Vec<_>>()
        });
    if let Some(p) = beside_config
        .into_iter()
        .chain(beside_exe)
        .find(|p| p.exists())
    {
        tracing::debug!(twin = %p.display(), "twin.onnx resolved");
        return p;
    }
    if given == Path::new(REFERENCE_TWIN) {
        match embedded_reference() {
            Ok(p) => {
                tracing::debug!(twin = %p.display(), "using the built-in reference twin");
                return p;
            }
            Err(e) => tracing::warn!("cannot write the built-in reference twin: {e}"),
        }
    }
    given.to_path_buf()
}

/// 64-bit FNV-1a: names the cache file by its content.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A per-user cache folder: $XDG_CACHE_HOME/twinrig, ~/.cache/twinrig, else the temp folder.
fn cache_dir() -> PathBuf {
    let home_cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match home_cache {
        Some(d) => d.join("twinrig"),
        // SAFETY: getuid cannot fail.
        None => std::env::temp_dir().join(format!("twinrig-{}", unsafe { libc::getuid() })),
    }
}

/// The built-in reference twin as a file: reused when a file of that name holds exactly these
/// bytes, else written under a temporary name and renamed (atomic, so concurrent `rig`s agree).
fn embedded_reference() -> std::io::Result<PathBuf> {
    let name = format!("reference_twin-{:016x}.onnx", fnv1a(REFERENCE_TWIN_BYTES));
    let mut last = None;
    for dir in [cache_dir(), std::env::temp_dir().join("twinrig-cache")] {
        let path = dir.join(&name);
        if std::fs::read(&path).is_ok_and(|b| b == REFERENCE_TWIN_BYTES) {
            return Ok(path);
        }
        let written = std::fs::create_dir_all(&dir).and_then(|_| {
            let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
            std::fs::write(&tmp, REFERENCE_TWIN_BYTES)?;
            std::fs::rename(&tmp, &path).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        });
        match written {
            Ok(()) => return Ok(path),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no cache folder")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_and_existing_paths_are_kept() {
        let p = Path::new("/no/such/twin.onnx");
        assert_eq!(resolve(p, None), p);
        let here = Path::new("Cargo.toml");
        assert_eq!(resolve(here, None), here);
    }

    #[test]
    fn a_path_beside_the_config_is_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("models")).unwrap();
        let twin = dir.path().join("models/x.onnx");
        std::fs::write(&twin, b"x").unwrap();
        assert_eq!(resolve(Path::new("models/x.onnx"), Some(dir.path())), twin);
        // Found nowhere: returned as given, for the error to name.
        let missing = Path::new("models/none.onnx");
        assert_eq!(resolve(missing, Some(dir.path())), missing);
    }

    #[test]
    fn the_built_in_reference_twin_is_written_once_and_verified() {
        let p = embedded_reference().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), REFERENCE_TWIN_BYTES);
        assert_eq!(embedded_reference().unwrap(), p);
        // The built-in copy is the repository's file.
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join(REFERENCE_TWIN);
        assert_eq!(std::fs::read(repo).unwrap(), REFERENCE_TWIN_BYTES);
    }
}
