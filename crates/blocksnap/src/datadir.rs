//! One owner per data dir: an exclusive `flock` on `DATA/lock`, held for the life of the process.
//!
//! `flock` (not `fcntl` record locks) because it belongs to the open file description: it is not
//! dropped when some other handle of the same file in this process is closed, it is released by the
//! kernel when the process dies however it dies (kill -9 included), and it never outlives the
//! process (the descriptor is close-on-exec). The owner's pid and start time are written inside so a
//! refused second process can say who holds the dir; the content is only informative, the lock is
//! the kernel's.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

pub const LOCK_NAME: &str = "lock";

/// The held lock: dropping it (or the process ending) releases the data dir.
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}", held_message(.dir, .holder))]
    Held { dir: PathBuf, holder: String },
    #[error("{0:#}")]
    Other(anyhow::Error),
}

fn held_message(dir: &Path, holder: &str) -> String {
    format!(
        "the data dir {} is in use by another blocksnap process ({holder}); stop it first or choose another --data-dir",
        dir.display()
    )
}

impl DataDirLock {
    /// Take the data dir's lock without waiting, creating the dir (mode 0700) if it does not exist.
    /// Nothing else in the dir is read or written before the lock is held; on refusal nothing at
    /// all is written.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating data dir {}", dir.display()))
            .map_err(LockError::Other)?;
        let path = dir.join(LOCK_NAME);
        // No truncate on open: a refused process must leave the owner's record alone.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
            .map_err(LockError::Other)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(LockError::Held { dir: dir.to_path_buf(), holder: read_holder(&mut file) });
            }
            Err(e) => {
                return Err(LockError::Other(
                    anyhow::Error::from(std::io::Error::from(e)).context(format!("locking {}", path.display())),
                ));
            }
        }
        let started =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let record = format!("pid={}\nstarted={started}\n", std::process::id());
        (|| -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(record.as_bytes())?;
            file.sync_data()
        })()
        .with_context(|| format!("writing {}", path.display()))
        .map_err(LockError::Other)?;
        // The catalog holds credentials and the built-in KMS's key material: owner only.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to its owner", dir.display()))
            .map_err(LockError::Other)?;
        tracing::debug!(path = %path.display(), "data dir locked");
        Ok(DataDirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Who holds the lock, as written by the owner. The owner writes its record right after taking
/// the lock, so an empty file is re-read a few times before giving up.
fn read_holder(file: &mut File) -> String {
    for _ in 0..20 {
        let mut text = String::new();
        if file.seek(SeekFrom::Start(0)).is_ok() && file.read_to_string(&mut text).is_ok() {
            let field =
                |k: &str| text.lines().find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('='))).map(str::trim);
            if let Some(pid) = field("pid").filter(|p| !p.is_empty()) {
                return match field("started").and_then(|s| s.parse::<u64>().ok()) {
                    Some(t) => format!("pid {pid}, started at unix time {t}"),
                    None => format!("pid {pid}"),
                };
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    "pid unknown".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_and_names_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let held = DataDirLock::acquire(&data).unwrap();
        let before = std::fs::read_to_string(held.path()).unwrap();
        match DataDirLock::acquire(&data) {
            Err(LockError::Held { holder, .. }) => {
                assert!(holder.contains(&format!("pid {}", std::process::id())), "{holder}");
            }
            other => panic!("expected Held, got {:?}", other.map(|_| ())),
        }
        assert_eq!(std::fs::read_to_string(held.path()).unwrap(), before, "the refused process wrote");
        drop(held);
        let again = DataDirLock::acquire(&data).unwrap();
        drop(again);
    }
}
