//! CopySnapshot: a completed snapshot copied within a region or from another region (each region has
//! its own block store), into the caller's account, moving only the blocks the destination lacks.
//!
//! Same key lineage (or unencrypted on both sides): chunks are copied as they are, skipping those the
//! destination store has. Encrypting or changing the key: blocks are decrypted and re-encrypted under
//! the destination lineage's data key; a later copy of the same source volume into the same key reuses
//! that lineage (same data key) and maps unchanged blocks through the previous copy, so it stays
//! incremental.

use std::collections::HashMap;
use std::sync::Arc;

use blocksnap_store::{BlockId, Manifest};

use crate::engine::{Engine, Rec, settings_key};
use crate::error::{EngineError, Result};
use crate::ids;
use crate::model::*;
use crate::tags::{TagSpec, tags_for};

/// Copies one account may run into a region at once (EC2's concurrent-copy limit).
pub const MAX_CONCURRENT_COPIES: usize = 20;
/// The volume id AWS reports for copies.
pub const COPY_VOLUME_ID: &str = "vol-ffffffff";

#[derive(Debug, Clone, Default)]
pub struct CopySnapshot {
    pub source_region: String,
    pub source_snapshot_id: String,
    pub description: Option<String>,
    pub encrypted: Option<bool>,
    pub kms_key_id: Option<String>,
    pub tag_specifications: Vec<TagSpec>,
    pub destination_outpost_arn: Option<String>,
    pub completion_duration_minutes: Option<i64>,
    pub dry_run: bool,
}

/// Where a copy comes from, kept in the copy's row so a restart can resume it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct CopySource {
    pub region: String,
    pub snapshot_id: String,
}

fn encode_source(region: &str, id: &str) -> String {
    format!("{region}/{id}")
}

fn decode_source(s: &str) -> Option<CopySource> {
    let (region, id) = s.split_once('/')?;
    Some(CopySource { region: region.into(), snapshot_id: id.into() })
}

impl Engine {
    pub fn copy_snapshot(&self, ctx: &Ctx, req: CopySnapshot) -> Result<Snapshot> {
        self.copy_snapshot_tagged(ctx, req, Tags::new())
    }

    /// CopySnapshot with tags the engine itself adds (e.g. DLM's `aws:dlm:*`), unchecked.
    pub(crate) fn copy_snapshot_tagged(&self, ctx: &Ctx, req: CopySnapshot, extra: Tags) -> Result<Snapshot> {
        if req.destination_outpost_arn.is_some() {
            return Err(EngineError::invalid_value(
                "Outposts are not available in blocksnap: DestinationOutpostArn cannot be used.",
            ));
        }
        if let Some(m) = req.completion_duration_minutes {
            if !(15..=2880).contains(&m) {
                return Err(EngineError::invalid_value(format!(
                    "CompletionDurationMinutes must be between 15 and 2880, in 15-minute steps; got {m}."
                )));
            }
            if m % 15 != 0 {
                return Err(EngineError::invalid_value(format!(
                    "CompletionDurationMinutes must be a multiple of 15; got {m}."
                )));
            }
        }
        if !self.config.regions.contains(&req.source_region) {
            return Err(EngineError::invalid_value(format!(
                "The source region '{}' is not served by this endpoint.",
                req.source_region
            )));
        }
        if req.kms_key_id.is_some() && req.encrypted != Some(true) {
            return Err(EngineError::client(
                "InvalidParameterDependency",
                "The parameter KmsKeyId requires the parameter Encrypted to be set.",
            ));
        }
        let description = req.description.clone().unwrap_or_default();
        if description.chars().count() > 255 {
            return Err(EngineError::invalid_value("The snapshot description must be at most 255 characters."));
        }
        let mut tags = tags_for(&req.tag_specifications, ResourceType::Snapshot)?;
        tags.extend(extra);
        let mut st = self.lock();
        let src_ctx = Ctx { account: ctx.account.clone(), region: req.source_region.clone() };
        let src = self.visible_snapshot(&st, &src_ctx, &req.source_snapshot_id)?.clone();
        if src.state != SnapshotState::Completed {
            return Err(EngineError::client(
                "IncorrectState",
                format!(
                    "Snapshot {} is in invalid state - {}; only completed snapshots can be copied.",
                    src.id,
                    src.state.as_str()
                ),
            ));
        }
        crate::archive::check_usable(&src)?;
        let running = st
            .snapshots
            .values()
            .filter(|s| s.account == ctx.account && s.region == ctx.region && s.state == SnapshotState::Pending)
            .filter(|s| s.source_snapshot.is_some())
            .count();
        if running >= MAX_CONCURRENT_COPIES {
            return Err(EngineError::client(
                "ResourceLimitExceeded",
                format!("Too many snapshot copies in progress ({running}); the limit is {MAX_CONCURRENT_COPIES}."),
            ));
        }
        let settings = st.settings.get(&settings_key(&ctx.account, &ctx.region)).cloned().unwrap_or_default();
        // Encrypted stays encrypted; Encrypted=true or encryption by default encrypts a plain one.
        let encrypted = src.encrypted || req.encrypted == Some(true) || settings.ebs_encryption_by_default;
        let mut recs = Vec::new();
        // The destination key: named, else the source's when it is usable here (same region and
        // account), else the destination's default. An unknown named key fails the copy later, as AWS
        // documents, not the call.
        let mut key_error = None;
        let key: Option<KmsKey> = if !encrypted {
            None
        } else if let Some(k) = &req.kms_key_id {
            match self.resolve_kms_key(&st, ctx, &mut recs, k) {
                Ok(k) => Some(k),
                Err(e) => {
                    key_error = Some(format!("The KMS key '{k}' cannot be used: {}", e.message()));
                    None
                }
            }
        } else if let Some(k) = src.kms_key_id.as_ref().and_then(|arn| {
            st.kms_keys.values().find(|k| &k.arn == arn && k.region == ctx.region && k.account == ctx.account)
        }) {
            Some(k.clone())
        } else {
            Some(match settings.default_kms_key.as_deref() {
                Some(k) => self.resolve_kms_key(&st, ctx, &mut recs, k)?,
                None => self.default_ebs_key(&st, ctx, &mut recs),
            })
        };
        // The destination lineage: the source's when the key is unchanged; a previous copy's of the
        // same source volume under the same key (keeps repeated copies incremental); else a new one.
        let (wrapped, dek_id) = match &key {
            None => (None, None),
            Some(k) if src.kms_key_id.as_deref() == Some(k.arn.as_str()) => {
                (src.wrapped_data_key.clone(), src.data_encryption_key_id.clone())
            }
            Some(k) => match st.snapshots.values().find(|s| {
                s.account == ctx.account
                    && s.region == ctx.region
                    && s.kms_key_id.as_deref() == Some(k.arn.as_str())
                    && s.source_snapshot.as_deref().and_then(decode_source).is_some_and(|cs| {
                        st.snapshots.get(&cs.snapshot_id).is_some_and(|p| p.volume_id == src.volume_id)
                    })
            }) {
                Some(prev) => (prev.wrapped_data_key.clone(), prev.data_encryption_key_id.clone()),
                None => {
                    let (w, id) = Self::new_data_key(k)?;
                    (Some(w), Some(id))
                }
            },
        };
        if req.dry_run {
            return Err(EngineError::DryRun);
        }
        let mut id = ids::new_id("snap");
        while st.snapshots.contains_key(&id) {
            id = ids::new_id("snap");
        }
        let snap = Snapshot {
            id,
            account: ctx.account.clone(),
            region: ctx.region.clone(),
            volume_id: COPY_VOLUME_ID.into(),
            volume_size_gib: src.volume_size_gib,
            state: SnapshotState::Pending,
            state_message: None,
            progress: 0,
            start_time: now_millis(),
            completion_time: None,
            description,
            encrypted,
            kms_key_id: key.as_ref().map(|k| k.arn.clone()).or_else(|| req.kms_key_id.clone().filter(|_| encrypted)),
            tags,
            parent: None,
            epoch: None,
            create_volume_permissions: vec![],
            wrapped_data_key: wrapped,
            data_encryption_key_id: dek_id,
            stored_bytes: 0,
            blocks_total: 0,
            instance_set: None,
            tiering: None,
            source_snapshot: Some(encode_source(&src.region, &src.id)),
            direct: None,
        };
        recs.push(Rec::Snapshot(snap.clone()));
        self.commit(&mut st, recs)?;
        drop(st);
        match key_error {
            Some(msg) => {
                self.fail_snapshot(&snap.id, msg);
            }
            None => self.spawn_copy(snap.id.clone()),
        }
        Ok(snap)
    }

    /// Start (or resume) a copy's background job.
    pub(crate) fn spawn_copy(&self, snapshot_id: String) {
        let (Some(me), Some(storage)) = (self.me(), &self.storage) else { return };
        let Some(source) = self.lock().snapshots.get(&snapshot_id).and_then(|s| s.source_snapshot.clone()) else {
            return;
        };
        let Some(cs) = decode_source(&source) else { return };
        let guard = self.read_guard(&cs.snapshot_id);
        storage.runtime.spawn(async move {
            let _guard = guard;
            if let Err(e) = me.copy(&snapshot_id, &cs).await {
                me.job_failed(&snapshot_id, "snapshot copy", format!("The copy failed: {}", e.message()));
            }
        });
    }

    async fn copy(self: &Arc<Self>, snapshot_id: &str, cs: &CopySource) -> Result<()> {
        let dst = self
            .lock()
            .snapshots
            .get(snapshot_id)
            .cloned()
            .ok_or_else(|| EngineError::Internal("copy row vanished".into()))?;
        let src =
            self.lock().snapshots.get(&cs.snapshot_id).cloned().ok_or_else(|| {
                EngineError::Internal(format!("the source snapshot {} no longer exists", cs.snapshot_id))
            })?;
        let src_store = self.store(&cs.region).await?;
        let dst_store = self.store(&dst.region).await?;
        let manifest = src_store
            .read_manifest(&src.id)
            .await
            .map_err(|e| EngineError::Internal(format!("reading the source manifest: {e}")))?;
        let same_lineage = dst.wrapped_data_key == src.wrapped_data_key;
        let src_codec = Arc::new(self.codec(src.kms_key_id.as_deref(), src.wrapped_data_key.as_deref())?);
        let dst_codec = Arc::new(self.codec(dst.kms_key_id.as_deref(), dst.wrapped_data_key.as_deref())?);
        // Blocks a previous copy of the same volume into this lineage already translated.
        let mut known: HashMap<BlockId, BlockId> = HashMap::new();
        if !same_lineage {
            let prev = {
                let st = self.lock();
                st.snapshots
                    .values()
                    .filter(|s| s.id != dst.id && s.state == SnapshotState::Completed && s.region == dst.region)
                    .filter(|s| s.wrapped_data_key == dst.wrapped_data_key && s.wrapped_data_key.is_some())
                    // An archived copy's blocks may be gone from the store: nothing to reuse from it.
                    .filter(|s| crate::archive::in_standard_tier(s))
                    .filter_map(|s| {
                        let c = decode_source(s.source_snapshot.as_deref()?)?;
                        let p = st.snapshots.get(&c.snapshot_id)?;
                        (p.volume_id == src.volume_id).then(|| (s.id.clone(), c))
                    })
                    .max_by(|a, b| a.0.cmp(&b.0))
            };
            if let Some((prev_copy, prev_src)) = prev
                && let (Ok(pm), Ok(ps)) = (
                    dst_store.read_manifest(&prev_copy).await,
                    self.store(&prev_src.region).await?.read_manifest(&prev_src.snapshot_id).await,
                )
            {
                for (s, d) in ps.blocks.iter().zip(pm.blocks.iter()) {
                    known.insert(*s, *d);
                }
            }
        }
        let total = manifest.blocks.iter().filter(|b| !b.is_reserved()).count().max(1) as u64;
        let mut blocks = manifest.blocks.clone();
        // Blocks written or found in the destination store are not referenced until the manifest:
        // no GC sweep meanwhile (see `Jobs::gc_gate`).
        let _blocks_in_flight = self.jobs.gc_gate.read().await;
        let mut running = tokio::task::JoinSet::new();
        let mut queue = manifest.blocks.iter().copied().enumerate().filter(|(_, b)| !b.is_reserved());
        let (mut done, mut stored) = (0u64, 0u64);
        loop {
            while running.len() < crate::data::UPLOAD_CONCURRENCY {
                let Some((i, id)) = queue.next() else { break };
                if let Some(d) = known.get(&id) {
                    blocks[i] = *d;
                    done += 1;
                    continue;
                }
                let (s, d, sc, dc) = (src_store.clone(), dst_store.clone(), src_codec.clone(), dst_codec.clone());
                running.spawn(async move {
                    if same_lineage {
                        let copied = d
                            .copy_block_from(&s, &id)
                            .await
                            .map_err(|e| EngineError::Internal(format!("copying block {id}: {e}")))?;
                        Ok::<_, EngineError>((i, id, if copied { crate::data::BLOCK_SIZE } else { 0 }))
                    } else {
                        let data = s
                            .get_block(&sc, &id)
                            .await
                            .map_err(|e| EngineError::Internal(format!("reading block {id}: {e}")))?;
                        let out = d
                            .put_block(&dc, data)
                            .await
                            .map_err(|e| EngineError::Internal(format!("storing a block: {e}")))?;
                        Ok((i, out.id, out.stored_bytes))
                    }
                });
            }
            let Some(joined) = running.join_next().await else { break };
            let (i, id, bytes) = joined.map_err(|e| EngineError::Internal(format!("copy task: {e}")))??;
            blocks[i] = id;
            stored += bytes;
            done += 1;
            if done.is_multiple_of(16) {
                self.set_progress(snapshot_id, ((done * 99) / total) as u8);
            }
        }
        let m = Manifest {
            snapshot_id: dst.id.clone(),
            volume_id: dst.volume_id.clone(),
            volume_size: manifest.volume_size,
            blocks,
            encryption: Self::manifest_encryption(&dst),
            parent: None,
            created_unix_ms: dst.start_time,
            description: dst.description.clone(),
        };
        self.put_manifest(&dst.region, &dst_store, &m).await?;
        if !self.complete_snapshot(snapshot_id, stored)? {
            return Ok(());
        }
        tracing::info!(snapshot_id, source = cs.snapshot_id, blocks = done, moved_bytes = stored, "snapshot copied");
        Ok(())
    }
}
