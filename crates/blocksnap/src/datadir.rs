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

/// `DATA/format`: the data dir's layout version (the catalog's schema, the volume files' and the
/// local snapshot stores' formats all carry their own versions too). Checked before anything else
/// is read; a newer one is refused with nothing changed.
pub const FORMAT_NAME: &str = "format";
/// The layout this binary writes. Dirs written before the file existed are format 1 without it.
pub const DATA_DIR_FORMAT: u32 = 1;

/// What `DATA/format` says: `None` when absent (a new dir, or one written before the file
/// existed). Refuses a format newer than this binary's, and an unreadable file.
pub fn check_format(dir: &Path) -> anyhow::Result<Option<u32>> {
    let path = dir.join(FORMAT_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::Error::from(e).context(format!("reading {}", path.display()))),
    };
    let format = text
        .lines()
        .find_map(|l| l.strip_prefix("format=").map(str::trim))
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or_else(|| anyhow::anyhow!("{} is not a blocksnap data dir format file", path.display()))?;
    if format > DATA_DIR_FORMAT {
        anyhow::bail!(
            "the data dir {} has format {format}, written by a newer blocksnap (this binary supports up to \
             {DATA_DIR_FORMAT}); run the newer binary; nothing was changed",
            dir.display()
        );
    }
    Ok(Some(format))
}

/// Record this binary's format (owner only, after every part of the dir was upgraded): temp file,
/// fsync, rename, directory fsync; a crash leaves the old file or the new one.
pub fn record_format(_lock: &DataDirLock, dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(FORMAT_NAME);
    let tmp = dir.join(format!("{FORMAT_NAME}.tmp"));
    (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(format!("format={DATA_DIR_FORMAT}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    })()
    .with_context(|| format!("writing {}", path.display()))
}

/// Refuse the data dir when a local snapshot store (`DATA/snapshots/<region>/store.json`) was
/// written by a newer format, before anything is recovered (stores are otherwise opened on first use).
pub fn check_local_stores(dir: &Path) -> anyhow::Result<()> {
    let root = dir.join("snapshots");
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(anyhow::Error::from(e).context(format!("listing {}", root.display()))),
    };
    for e in entries {
        let path = e?.path().join("store.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(anyhow::Error::from(e).context(format!("reading {}", path.display()))),
        };
        #[derive(serde::Deserialize)]
        struct Probe {
            format: u32,
        }
        let probe: Probe = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a blocksnap store description", path.display()))?;
        if !blocksnap_store::STORE_FORMATS.contains(&probe.format) {
            anyhow::bail!(
                "the snapshot store {} has format {}, which this blocksnap does not read (it reads {:?}); \
                 run the blocksnap that wrote it; nothing was changed",
                path.display(),
                probe.format,
                blocksnap_store::STORE_FORMATS
            );
        }
    }
    Ok(())
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

    #[test]
    fn format_file_is_checked_and_recorded_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let lock = DataDirLock::acquire(&data).unwrap();
        assert_eq!(check_format(&data).unwrap(), None);
        record_format(&lock, &data).unwrap();
        assert_eq!(check_format(&data).unwrap(), Some(DATA_DIR_FORMAT));
        assert!(!data.join("format.tmp").exists());
        std::fs::write(data.join(FORMAT_NAME), format!("format={}\n", DATA_DIR_FORMAT + 1)).unwrap();
        let e = check_format(&data).unwrap_err().to_string();
        assert!(e.contains("newer") && e.contains("nothing was changed"), "{e}");
        std::fs::write(data.join(FORMAT_NAME), "garbage").unwrap();
        assert!(check_format(&data).is_err());
    }

    #[test]
    fn many_at_once_exactly_one_wins() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("data");
            let barrier = std::sync::Barrier::new(8);
            let won: Vec<DataDirLock> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            DataDirLock::acquire(&data)
                        })
                    })
                    .collect();
                hs.into_iter()
                    .filter_map(|h| match h.join().unwrap() {
                        Ok(l) => Some(l),
                        Err(LockError::Held { .. }) => None,
                        Err(e) => panic!("{e}"),
                    })
                    .collect()
            });
            assert_eq!(won.len(), 1);
        }
    }
}
