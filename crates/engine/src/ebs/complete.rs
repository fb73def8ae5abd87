//! Finishing a snapshot written block by block: CompleteSnapshot, the manifest it writes, resuming
//! completions after a restart and ending snapshots past their timeout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blocksnap_store::{BlockId, BlockLog, Manifest};

use crate::engine::{Engine, Rec};
use crate::error::{EngineError, Result};
use crate::model::{Ctx, Snapshot, SnapshotState, now_millis};
use crate::volumes::GIB;

use super::{
    COMPLETE_WAIT, CompleteSnapshot, GATE_WAIT, Pending, block_count, internal, linear_checksum, not_found,
    unreachable_direct, validation,
};

impl Engine {
    /// CompleteSnapshot: `Completed` when the manifest is written within a few seconds, `Pending`
    /// while it is still being written (a restart finishes it), `Error` when the aggregated
    /// checksum does not match (the snapshot is then in `error`).
    pub async fn ebs_complete_snapshot(&self, ctx: &Ctx, req: CompleteSnapshot) -> Result<SnapshotState> {
        let snap = {
            let st = self.lock();
            self.ebs_own_direct(&st, ctx, &req.snapshot_id)?
        };
        if snap.state != SnapshotState::Pending {
            return Ok(snap.state);
        }
        if snap.direct.as_ref().is_some_and(|d| d.completing) {
            return Ok(SnapshotState::Pending);
        }
        if req.changed_blocks_count < 0 {
            return Err(validation("INVALID_PARAMETER_VALUE", "ChangedBlocksCount must not be negative."));
        }
        let pending = self.pending_direct(&snap.id).ok_or_else(|| {
            validation("INVALID_PARAMETER_VALUE", format!("Snapshot {} is no longer being written.", snap.id))
        })?;
        let mut closed = tokio::time::timeout(GATE_WAIT, pending.gate.write()).await.map_err(|_| {
            EngineError::client("InternalServerException", "Block writes in flight did not finish in time; retry.")
        })?;
        if *closed {
            return Ok(SnapshotState::Pending);
        }
        let written = pending.written();
        if written.len() as i64 != req.changed_blocks_count {
            return Err(validation(
                "INVALID_PARAMETER_VALUE",
                format!(
                    "ChangedBlocksCount is {} but {} blocks were written to snapshot {}; the snapshot stays pending.",
                    req.changed_blocks_count,
                    written.len(),
                    snap.id
                ),
            ));
        }
        let me = self.me().ok_or_else(|| internal("complete", "engine not started"))?;
        if let Some(want) = req.linear_checksum
            && linear_checksum(&written) != want
        {
            *closed = true;
            drop(closed);
            let (m, id) = (me.clone(), snap.id.clone());
            let durable = tokio::task::spawn_blocking(move || {
                let durable = m.fail_snapshot(
                    &id,
                    "The aggregated checksum given to CompleteSnapshot does not match the blocks written.".into(),
                );
                if durable {
                    m.forget_direct(&id);
                }
                durable
            })
            .await
            .unwrap_or(false);
            if !durable {
                return Err(internal("complete", "the failed snapshot could not be recorded; try again"));
            }
            return Ok(SnapshotState::Error);
        }
        // Durably `completing` before answering: a restart writes the manifest.
        let (m, id) = (me.clone(), snap.id.clone());
        let marked = tokio::task::spawn_blocking(move || -> Result<bool> {
            {
                let mut st = m.lock();
                let Some(mut s) = st.snapshots.get(&id).cloned() else { return Ok(false) };
                if s.state != SnapshotState::Pending {
                    return Ok(false);
                }
                if let Some(d) = s.direct.as_mut() {
                    d.completing = true;
                }
                m.commit(&mut st, vec![Rec::Snapshot(s)])?;
            }
            m.sync_pending()?;
            Ok(true)
        })
        .await
        .map_err(|e| internal("complete", e))??;
        if !marked {
            return Err(not_found(&snap.id));
        }
        *closed = true;
        drop(closed);
        let job = self.spawn_direct_finalize(snap.id.clone());
        match tokio::time::timeout(COMPLETE_WAIT, job).await {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(e)) => Err(internal("completing the snapshot", e)),
            Err(_) => Ok(SnapshotState::Pending),
        }
    }

    /// Write the manifest of a snapshot whose completion was accepted, then mark it completed
    /// (or failed). Runs to its end whoever waits for it.
    fn spawn_direct_finalize(&self, id: String) -> tokio::task::JoinHandle<SnapshotState> {
        let me = self.me();
        let rt = self.storage.as_ref().map(|s| s.runtime.clone()).unwrap_or_else(tokio::runtime::Handle::current);
        rt.spawn(async move {
            let Some(me) = me else { return SnapshotState::Error };
            let result = me.direct_manifest(&id).await;
            let m = me.clone();
            let idc = id.clone();
            let state = tokio::task::spawn_blocking(move || match result {
                Ok(stored) => match m.complete_snapshot(&idc, stored) {
                    Ok(_) => {
                        tracing::info!(snapshot_id = idc, stored_bytes = stored, "direct snapshot completed");
                        SnapshotState::Completed
                    }
                    Err(e) => {
                        tracing::error!(snapshot_id = idc, error = %e, "recording a completed snapshot");
                        SnapshotState::Pending
                    }
                },
                Err(e) => {
                    tracing::warn!(snapshot_id = idc, error = %e, "completing a direct snapshot failed");
                    // Pending (the log kept) unless the `error` row is durable.
                    if m.fail_snapshot(&idc, format!("The snapshot could not be completed: {}", e.message())) {
                        SnapshotState::Error
                    } else {
                        SnapshotState::Pending
                    }
                }
            })
            .await
            .unwrap_or(SnapshotState::Pending);
            if state != SnapshotState::Pending {
                // The row is durable (completed or error): the log is no longer needed.
                let m = me.clone();
                let _ = tokio::task::spawn_blocking(move || m.forget_direct(&id)).await;
            }
            state
        })
    }

    /// The manifest: the parent's blocks (referenced, or re-encoded into this lineage) with the
    /// written ones over them. Returns the bytes this snapshot added to the store.
    async fn direct_manifest(&self, id: &str) -> Result<u64> {
        let snap = self.lock().snapshots.get(id).cloned().ok_or_else(|| not_found(id))?;
        let direct = snap.direct.clone().unwrap_or_else(|| unreachable_direct(&snap));
        let pending = self.pending_direct(id).ok_or_else(|| internal("complete", "the block log is not loaded"))?;
        let store = self.store(&snap.region).await?;
        let nblocks = block_count(&snap) as usize;
        let written = pending.written();
        let mut stored = pending.stored_bytes.load(Ordering::Relaxed);
        let _blocks_in_flight = self.jobs.gc_gate.read().await;
        let mut blocks = vec![BlockId::UNWRITTEN; nblocks];
        let mut parent_used = None;
        if let Some(pid) = &snap.parent {
            let psnap = self
                .lock()
                .snapshots
                .get(pid)
                .cloned()
                .ok_or_else(|| internal("complete", format!("the parent snapshot {pid} was deleted")))?;
            let pm = store.read_manifest(pid).await.map_err(|e| internal("reading the parent manifest", e))?;
            if !direct.reencode_parent {
                for (i, b) in pm.blocks.iter().enumerate().take(nblocks) {
                    blocks[i] = *b;
                }
                parent_used = Some(pid.clone());
            } else {
                let pcodec = self.codec(psnap.kms_key_id.as_deref(), psnap.wrapped_data_key.as_deref())?;
                let todo: Vec<(usize, BlockId)> = pm
                    .blocks
                    .iter()
                    .enumerate()
                    .take(nblocks)
                    .filter(|(i, b)| !b.is_reserved() && !written.contains_key(&(*i as u32)))
                    .map(|(i, b)| (i, *b))
                    .collect();
                use futures::StreamExt;
                let mut moved = futures::stream::iter(todo)
                    .map(|(i, b)| {
                        let (store, pcodec, codec) = (store.clone(), pcodec.clone(), pending.codec.clone());
                        async move {
                            let data = store.get_block(&pcodec, &b).await?;
                            let out = store.put_block(&codec, data).await?;
                            Ok::<_, blocksnap_store::StoreError>((i, out))
                        }
                    })
                    .buffer_unordered(crate::data::UPLOAD_CONCURRENCY);
                while let Some(r) = moved.next().await {
                    let (i, out) = r.map_err(|e| internal("re-encoding a parent block", e))?;
                    blocks[i] = out.id;
                    stored += out.stored_bytes;
                }
                for (i, b) in pm.blocks.iter().enumerate().take(nblocks) {
                    if b.is_reserved() {
                        blocks[i] = *b;
                    }
                }
            }
        }
        for (i, (b, _)) in &written {
            if let Some(slot) = blocks.get_mut(*i as usize) {
                *slot = *b;
            }
        }
        let manifest = Manifest {
            snapshot_id: snap.id.clone(),
            volume_id: snap.volume_id.clone(),
            volume_size: snap.volume_size_gib as u64 * GIB,
            blocks,
            encryption: Self::manifest_encryption(&snap),
            parent: parent_used,
            created_unix_ms: snap.start_time,
            description: snap.description.clone(),
        };
        self.put_manifest(&snap.region, &store, &manifest).await?;
        Ok(stored)
    }

    /// At start: reload the block logs of pending direct snapshots, finish the completions a stop
    /// interrupted, remove logs no row needs, and start the expiry of abandoned snapshots.
    pub(crate) fn ebs_resume(&self) {
        let Some(storage) = &self.storage else { return };
        let rows: Vec<Snapshot> = self
            .lock()
            .snapshots
            .values()
            .filter(|s| s.state == SnapshotState::Pending && s.direct.is_some())
            .cloned()
            .collect();
        for s in &rows {
            let loaded = self.direct_log_path(&s.id).and_then(|path| {
                let (log, records) = BlockLog::open(&path).map_err(|e| internal("opening the block log", e))?;
                let codec = self.codec(s.kms_key_id.as_deref(), s.wrapped_data_key.as_deref())?;
                let blocks: BTreeMap<u32, (BlockId, [u8; 32])> =
                    records.into_iter().map(|r| (r.index, (r.id, r.sha256))).collect();
                Ok(Pending {
                    log,
                    codec,
                    gate: tokio::sync::RwLock::new(false),
                    blocks: Mutex::new(blocks),
                    stored_bytes: AtomicU64::new(0),
                })
            });
            match loaded {
                Ok(p) => {
                    self.jobs.direct.open.lock().unwrap_or_else(|p| p.into_inner()).insert(s.id.clone(), Arc::new(p));
                    if s.direct.as_ref().is_some_and(|d| d.completing) {
                        drop(self.spawn_direct_finalize(s.id.clone()));
                    }
                }
                Err(e) => {
                    if self.fail_snapshot(
                        &s.id,
                        format!("The snapshot's written blocks could not be reloaded: {}", e.message()),
                    ) {
                        self.forget_direct(&s.id);
                    }
                }
            }
        }
        // Logs without a pending row: a crash after the row changed, before the log went.
        if let Ok(path) = self.direct_log_path("x")
            && let Some(dir) = path.parent()
            && let Ok(entries) = std::fs::read_dir(dir)
        {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let Some(id) = name.strip_suffix(".blocks") else { continue };
                if !rows.iter().any(|s| s.id == id) {
                    let _ = BlockLog::remove(&e.path());
                }
            }
        }
        let Some(me) = self.me() else { return };
        let weak = Arc::downgrade(&me);
        drop(me);
        let interval = (self.config.direct_minute / 6).clamp(Duration::from_millis(200), Duration::from_secs(30));
        storage.runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(engine) = weak.upgrade() else { return };
                engine.expire_direct().await;
            }
        });
    }

    /// Move pending direct snapshots past their deadline to `error`.
    async fn expire_direct(self: &Arc<Self>) {
        let now = now_millis();
        let expired: Vec<(String, u32)> = self
            .lock()
            .snapshots
            .values()
            .filter_map(|s| {
                let d = s.direct.as_ref()?;
                (s.state == SnapshotState::Pending && !d.completing && d.deadline <= now)
                    .then(|| (s.id.clone(), d.timeout_minutes))
            })
            .collect();
        for (id, minutes) in expired {
            if let Some(p) = self.pending_direct(&id) {
                let Ok(mut closed) = tokio::time::timeout(GATE_WAIT, p.gate.write()).await else { continue };
                if *closed {
                    continue;
                }
                *closed = true;
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                // Completion may have won the race for the gate: only a still-open snapshot expires.
                let still_open = me.lock().snapshots.get(&id).is_some_and(|s| {
                    s.state == SnapshotState::Pending && s.direct.as_ref().is_some_and(|d| !d.completing)
                });
                if still_open {
                    tracing::info!(snapshot_id = id, minutes, "direct snapshot timed out");
                    // The block log goes only once the `error` row is durable (else a restart
                    // finds the row pending with its log, and ends it itself).
                    if me.fail_snapshot(
                        &id,
                        format!("The snapshot was not completed within its timeout of {minutes} minutes."),
                    ) {
                        me.forget_direct(&id);
                    }
                }
            })
            .await;
        }
    }
}
