//! Random access to a completed snapshot's bytes (the read-only NBD export `snap-…`).

use std::sync::Arc;

use blocksnap_store::{BlockId, BlockStore, Codec, Manifest};

use crate::engine::Engine;
use crate::error::EngineError;
use crate::model::{Snapshot, SnapshotState};
use crate::volumes::GIB;

use super::{BLOCK_SIZE, internal};

impl Engine {
    /// Reads a snapshot's bytes (for the read-only NBD export `snap-…`). Cheap: the manifest is
    /// loaded on the first read, on the caller's blocking thread.
    pub fn snapshot_reader(&self, snapshot_id: &str) -> Option<SnapshotReader> {
        let snap = self.lock().snapshots.get(snapshot_id).cloned()?;
        if snap.state != SnapshotState::Completed || !crate::archive::in_standard_tier(&snap) {
            return None;
        }
        Some(SnapshotReader {
            engine: self.me()?,
            runtime: self.storage.as_ref()?.runtime.clone(),
            size: snap.volume_size_gib as u64 * GIB,
            snap,
            loaded: std::sync::OnceLock::new(),
        })
    }
}

type Loaded = (Arc<Manifest>, Arc<BlockStore>, Arc<Codec>);

/// Random access to a completed snapshot's bytes. Synchronous: call from blocking threads.
pub struct SnapshotReader {
    engine: Arc<Engine>,
    runtime: tokio::runtime::Handle,
    snap: Snapshot,
    size: u64,
    loaded: std::sync::OnceLock<Loaded>,
}

impl SnapshotReader {
    pub fn size(&self) -> u64 {
        self.size
    }

    fn loaded(&self) -> std::io::Result<&Loaded> {
        if let Some(l) = self.loaded.get() {
            return Ok(l);
        }
        let e = &self.engine;
        let snap = &self.snap;
        let l = self.runtime.block_on(async {
            let store = e.store(&snap.region).await?;
            let m = store.read_manifest(&snap.id).await.map_err(|err| internal("reading the manifest", err))?;
            let codec = e.codec(snap.kms_key_id.as_deref(), snap.wrapped_data_key.as_deref())?;
            Ok::<_, EngineError>((Arc::new(m), store, Arc::new(codec)))
        });
        let l = l.map_err(|err| std::io::Error::other(err.message()))?;
        Ok(self.loaded.get_or_init(|| l))
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|e| *e <= self.size()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "read past the end of the snapshot")
        })?;
        let mut pos = offset;
        while pos < end {
            let b = (pos / BLOCK_SIZE) as usize;
            let within = (pos % BLOCK_SIZE) as usize;
            let n = ((BLOCK_SIZE as usize - within) as u64).min(end - pos) as usize;
            let out = &mut buf[(pos - offset) as usize..(pos - offset) as usize + n];
            let (manifest, store, codec) = self.loaded()?;
            let id = manifest.blocks.get(b).copied().unwrap_or(BlockId::UNWRITTEN);
            if id == BlockId::UNWRITTEN || id == BlockId::ZERO {
                out.fill(0);
            } else {
                let data = self
                    .runtime
                    .block_on(store.get_block(codec, &id))
                    .map_err(|e| std::io::Error::other(format!("snapshot block {b}: {e}")))?;
                let avail = data.len().saturating_sub(within).min(n);
                out[..avail].copy_from_slice(&data[within..within + avail]);
                out[avail..].fill(0);
            }
            pos += n as u64;
        }
        Ok(())
    }

    /// Which ranges hold data: never-written and zero blocks read as holes.
    pub fn allocated(&self, offset: u64, len: u64) -> std::io::Result<Vec<(u64, bool)>> {
        let (manifest, _, _) = self.loaded()?;
        let end = offset.saturating_add(len).min(self.size());
        let mut out: Vec<(u64, bool)> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let b = (pos / BLOCK_SIZE) as usize;
            let next = ((b as u64 + 1) * BLOCK_SIZE).min(end);
            let id = manifest.blocks.get(b).copied().unwrap_or(BlockId::UNWRITTEN);
            let data = id != BlockId::UNWRITTEN && id != BlockId::ZERO;
            match out.last_mut() {
                Some(last) if last.1 == data => last.0 += next - pos,
                _ => out.push((next - pos, data)),
            }
            pos = next;
        }
        Ok(out)
    }
}
