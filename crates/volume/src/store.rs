//! A directory of volumes: create (atomic, temp dir then no-replace rename), open (one shared
//! handle per volume, with the owner's first-open hook), list, resize, delete (renamed away, then
//! removed), and the removal of leftovers of interrupted creates and deletes.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use crate::cbt::Cbt;
use crate::{BLOCK_SIZE, DATA_NAME, Error, Result, Volume, cbt, fsync_dir};

/// Options of a [`VolumeStore`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Keep change bitmaps up to date on writes (off only for benchmarks).
    pub change_tracking: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { change_tracking: true }
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A directory of volumes. Handles are cached: every caller of
/// [`VolumeStore::open`] for one id shares one [`Volume`].
pub struct VolumeStore {
    root: PathBuf,
    opts: StoreOptions,
    /// Also serializes create / resize / delete.
    handles: Mutex<HashMap<String, Arc<Volume>>>,
    /// Runs once per volume when this process first opens it, before the handle is handed out
    /// (lazy recovery: start-up does not touch every volume).
    on_first_open: std::sync::OnceLock<OpenHook>,
}

/// See [`VolumeStore::set_on_first_open`].
pub type OpenHook = Box<dyn Fn(&Volume) -> Result<()> + Send + Sync>;

impl VolumeStore {
    /// Opens (creating if needed) a store at `root`, removing leftovers of
    /// interrupted creates and deletes.
    pub fn open(root: PathBuf) -> Result<VolumeStore> {
        Self::open_with(root, StoreOptions::default())
    }

    /// Opens a store another process may own (read-only tools such as `blocksnap admin verify`):
    /// leftovers of interrupted operations are left alone.
    pub fn open_shared(root: PathBuf) -> Result<VolumeStore> {
        Ok(VolumeStore {
            root,
            opts: StoreOptions::default(),
            handles: Mutex::new(HashMap::new()),
            on_first_open: std::sync::OnceLock::new(),
        })
    }

    pub fn open_with(root: PathBuf, opts: StoreOptions) -> Result<VolumeStore> {
        fs::create_dir_all(&root)?;
        for e in fs::read_dir(&root)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-") || name.starts_with(".del-") {
                tracing::info!(path = %e.path().display(), "removing leftover of an interrupted operation");
                fs::remove_dir_all(e.path())?;
            }
        }
        fsync_dir(&root)?;
        Ok(VolumeStore { root, opts, handles: Mutex::new(HashMap::new()), on_first_open: std::sync::OnceLock::new() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Set (once) what runs when a volume is first opened by this process, before anyone gets
    /// its handle: the owner's recovery of state a previous run left (e.g. orphaned frozen
    /// epochs). A failing hook fails that open; the next open tries again.
    pub fn set_on_first_open(&self, hook: OpenHook) {
        let _ = self.on_first_open.set(hook);
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Volume>>> {
        self.handles.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn checked_dir(&self, id: &str) -> Result<PathBuf> {
        if !valid_id(id) {
            return Err(Error::InvalidId(id.to_string()));
        }
        Ok(self.root.join(id))
    }

    /// Creates an all-zero volume of `size_bytes` (a multiple of 512).
    /// Atomic: built in a temp dir, then renamed into place.
    pub fn create(&self, id: &str, size_bytes: u64) -> Result<()> {
        let dir = self.checked_dir(id)?;
        if size_bytes == 0 || !size_bytes.is_multiple_of(512) || size_bytes > (1u64 << 32) * BLOCK_SIZE {
            return Err(Error::InvalidSize(size_bytes));
        }
        let _ops = self.handles();
        if dir.exists() {
            return Err(Error::AlreadyExists(id.to_string()));
        }
        let tmp = self.root.join(format!(".tmp-{id}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir(&tmp)?;
        let data = File::create(tmp.join(DATA_NAME))?;
        data.set_len(size_bytes)?;
        data.sync_all()?;
        Cbt::create_file(&tmp, cbt::nblocks_for(size_bytes))?;
        fsync_dir(&tmp)?;
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tmp,
            rustix::fs::CWD,
            &dir,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                fs::remove_dir_all(&tmp)?;
                return Err(Error::AlreadyExists(id.to_string()));
            }
            Err(e) => return Err(Error::Io(e.into())),
        }
        fsync_dir(&self.root)?;
        tracing::debug!(volume = id, size_bytes, "volume created");
        Ok(())
    }

    /// Returns the shared handle of a volume, opening it on first use.
    pub fn open_volume(&self, id: &str) -> Result<Arc<Volume>> {
        let dir = self.checked_dir(id)?;
        let mut handles = self.handles();
        if let Some(v) = handles.get(id) {
            return Ok(v.clone());
        }
        if !dir.is_dir() {
            return Err(Error::NotFound(id.to_string()));
        }
        let v = Arc::new(Volume::open(id, dir, self.opts.change_tracking)?);
        if let Some(hook) = self.on_first_open.get() {
            hook(&v)?;
        }
        handles.insert(id.to_string(), v.clone());
        Ok(v)
    }

    pub fn exists(&self, id: &str) -> bool {
        valid_id(id) && self.root.join(id).is_dir()
    }

    /// Ids of all volumes, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.root)? {
            let e = e?;
            if let Some(name) = e.file_name().to_str()
                && valid_id(name)
                && e.file_type()?.is_dir()
            {
                out.push(name.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Grows a volume to `new_size` (shrinking is refused; same size is a no-op).
    pub fn resize(&self, id: &str, new_size: u64) -> Result<()> {
        let v = self.open_volume(id)?;
        let _ops = self.handles();
        v.resize(new_size)
    }

    /// Clean stop: for every open volume, drop a cut staged ahead of time and make completed
    /// writes and the hydration map durable (see [`Volume::close_clean`]), so the next start finds
    /// exactly the state it needs and nothing to recover. Returns how many volumes failed.
    pub fn close_all(&self) -> usize {
        let open: Vec<Arc<Volume>> = self.handles().values().cloned().collect();
        let mut failed = 0;
        for v in open {
            if let Err(e) = v.close_clean() {
                tracing::error!(volume = v.id, error = %e, "volume state could not be saved at stop");
                failed += 1;
            }
        }
        failed
    }

    /// Drops the cached handle (the files stay). Live `Arc`s keep working.
    pub fn close(&self, id: &str) {
        self.handles().remove(id);
    }

    /// Deletes a volume and its files. Atomic: renamed away, then removed.
    /// Handles still held elsewhere fail further I/O with [`Error::Deleted`].
    pub fn delete(&self, id: &str) -> Result<()> {
        let dir = self.checked_dir(id)?;
        let mut handles = self.handles();
        if !dir.is_dir() {
            return Err(Error::NotFound(id.to_string()));
        }
        if let Some(v) = handles.remove(id) {
            // Let in-flight writes finish before the files go away (bounded: a write that never
            // finishes lands in the unlinked file, which is harmless).
            let g = v.gate();
            v.deleted.store(true, Ordering::Release);
            if let Err(e) = &g {
                tracing::warn!(volume = id, error = %e, "deleting a volume with writes still in flight");
            }
            drop(g);
        }
        let gone = self.root.join(format!(".del-{id}"));
        if gone.exists() {
            fs::remove_dir_all(&gone)?;
        }
        fs::rename(&dir, &gone)?;
        fsync_dir(&self.root)?;
        fs::remove_dir_all(&gone)?;
        tracing::debug!(volume = id, "volume deleted");
        Ok(())
    }
}
