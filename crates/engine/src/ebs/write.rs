//! Writing a snapshot block by block: StartSnapshot (with its idempotency and the plan of a new
//! snapshot's lineage) and PutSnapshotBlock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use blocksnap_store::{BlockLog, LogRecord};

use crate::data::BLOCK_SIZE;
use crate::engine::{Engine, Rec, State, settings_key};
use crate::error::{EngineError, Result};
use crate::ids;
use crate::model::{Ctx, DirectWrite, KmsKey, Millis, Snapshot, SnapshotState, Tags, now_millis};

use super::{
    DEFAULT_TIMEOUT_MINUTES, MAX_PENDING_DIRECT, MAX_VOLUME_SIZE_GIB, Pending, PutBlock, StartSnapshot, block_count,
    internal, plain_id, sha256, unreachable_direct, validation,
};

impl Engine {
    /// StartSnapshot. Blocking (creates the block log, commits the row); the caller syncs.
    pub fn ebs_start_snapshot(&self, ctx: &Ctx, req: StartSnapshot) -> Result<Snapshot> {
        if !(1..=MAX_VOLUME_SIZE_GIB).contains(&req.volume_size_gib) {
            return Err(validation(
                "INVALID_VOLUME_SIZE",
                format!("VolumeSize must be 1 to {MAX_VOLUME_SIZE_GIB} GiB, not {}.", req.volume_size_gib),
            ));
        }
        let timeout = req.timeout_minutes.unwrap_or(DEFAULT_TIMEOUT_MINUTES);
        if !(10..=4320).contains(&timeout) {
            return Err(validation(
                "INVALID_PARAMETER_VALUE",
                format!("Timeout must be 10 to 4320 minutes, not {timeout}."),
            ));
        }
        if req.description.as_ref().is_some_and(|d| d.chars().count() > 255) {
            return Err(validation("INVALID_PARAMETER_VALUE", "Description must be at most 255 characters."));
        }
        if let Some(t) = &req.client_token
            && (t.is_empty() || t.len() > 255 || t.chars().any(char::is_whitespace))
        {
            return Err(validation(
                "INVALID_PARAMETER_VALUE",
                "ClientToken must be 1 to 255 characters without white space.",
            ));
        }
        let mut tags = Tags::new();
        for t in &req.tags {
            crate::tags::check_tag(t).map_err(|e| validation("INVALID_TAG", e.message()))?;
            tags.insert(t.key.clone(), t.value.clone());
        }
        if req.parent_snapshot_id.is_some() && req.encrypted.is_some() {
            return Err(validation(
                "INVALID_PARAMETER_VALUE",
                "ParentSnapshotId and Encrypted cannot be given together: a snapshot with a parent takes the parent's encryption (or KmsKeyArn's key).",
            ));
        }
        let fingerprint = format!("{:?}", StartSnapshot { client_token: None, ..req.clone() });
        // Plan under the lock (no I/O), create the log without it, then plan again and commit.
        let id = {
            let st = self.lock();
            if let Some(found) = self.ebs_idempotent(&st, ctx, &req, &fingerprint)? {
                return Ok(found);
            }
            let mut id = ids::new_id("snap");
            while st.snapshots.contains_key(&id) {
                id = ids::new_id("snap");
            }
            self.ebs_plan(&st, ctx, &req, &id, &tags, &fingerprint, timeout)?;
            id
        };
        let path = self.direct_log_path(&id)?;
        let log = BlockLog::create(&path).map_err(|e| internal("creating the block log", e))?;
        let committed = {
            let mut st = self.lock();
            match self.ebs_idempotent(&st, ctx, &req, &fingerprint) {
                Ok(Some(found)) => Err(Ok(found)),
                Err(e) => Err(Err(e)),
                Ok(None) => match self.ebs_plan(&st, ctx, &req, &id, &tags, &fingerprint, timeout) {
                    Ok((snap, recs)) => self.commit(&mut st, recs).map(|()| snap).map_err(Err),
                    Err(e) => Err(Err(e)),
                },
            }
        };
        let snap = match committed {
            Ok(s) => s,
            Err(answer) => {
                drop(log);
                let _ = BlockLog::remove(&path);
                return answer;
            }
        };
        let codec = self.codec(snap.kms_key_id.as_deref(), snap.wrapped_data_key.as_deref())?;
        self.jobs.direct.open.lock().unwrap_or_else(|p| p.into_inner()).insert(
            snap.id.clone(),
            Arc::new(Pending {
                log,
                codec,
                gate: tokio::sync::RwLock::new(false),
                blocks: Mutex::new(BTreeMap::new()),
                stored_bytes: AtomicU64::new(0),
            }),
        );
        tracing::info!(snapshot_id = snap.id, size_gib = snap.volume_size_gib, "direct snapshot started");
        Ok(snap)
    }

    /// The snapshot an earlier StartSnapshot with this ClientToken made, if any.
    fn ebs_idempotent(
        &self,
        st: &State,
        ctx: &Ctx,
        req: &StartSnapshot,
        fingerprint: &str,
    ) -> Result<Option<Snapshot>> {
        let Some(token) = &req.client_token else { return Ok(None) };
        let found = st.snapshots.values().find(|s| {
            s.account == ctx.account
                && s.region == ctx.region
                && s.direct.as_ref().is_some_and(|d| d.client_token.as_deref() == Some(token))
        });
        match found {
            None => Ok(None),
            Some(s) if s.direct.as_ref().is_some_and(|d| d.fingerprint == fingerprint) => Ok(Some(s.clone())),
            Some(s) => Err(EngineError::client(
                "ConflictException",
                format!("The client token was already used for snapshot {} with other parameters.", s.id),
            )),
        }
    }

    /// What StartSnapshot commits: the row (and a default KMS key made on first use).
    #[allow(clippy::too_many_arguments)]
    fn ebs_plan(
        &self,
        st: &State,
        ctx: &Ctx,
        req: &StartSnapshot,
        id: &str,
        tags: &Tags,
        fingerprint: &str,
        timeout: i64,
    ) -> Result<(Snapshot, Vec<Rec>)> {
        let pending = st
            .snapshots
            .values()
            .filter(|s| {
                s.account == ctx.account
                    && s.region == ctx.region
                    && s.state == SnapshotState::Pending
                    && s.direct.is_some()
            })
            .count();
        if pending >= MAX_PENDING_DIRECT {
            return Err(EngineError::client(
                "ConcurrentLimitExceededException",
                format!(
                    "You have {pending} snapshots pending from StartSnapshot; the limit is {MAX_PENDING_DIRECT}. Complete one or let it time out."
                ),
            ));
        }
        let total = st.snapshots.values().filter(|s| s.account == ctx.account && s.region == ctx.region).count();
        if total >= crate::snapshots::MAX_SNAPSHOTS_PER_REGION {
            return Err(EngineError::reasoned(
                "ServiceQuotaExceededException",
                "DEPENDENCY_SERVICE_QUOTA_EXCEEDED",
                format!(
                    "The maximum number of snapshots per region ({}) has been reached.",
                    crate::snapshots::MAX_SNAPSHOTS_PER_REGION
                ),
            ));
        }
        let parent = match &req.parent_snapshot_id {
            None => None,
            Some(pid) => {
                let p = self.ebs_readable(st, ctx, pid)?;
                if p.state != SnapshotState::Completed {
                    return Err(validation(
                        "INVALID_PARAMETER_VALUE",
                        format!("The parent snapshot {pid} is {}; it must be completed.", p.state.as_str()),
                    ));
                }
                if i64::from(p.volume_size_gib) > req.volume_size_gib {
                    return Err(validation(
                        "INVALID_VOLUME_SIZE",
                        format!(
                            "VolumeSize {} GiB is smaller than the parent snapshot's {} GiB.",
                            req.volume_size_gib, p.volume_size_gib
                        ),
                    ));
                }
                Some(p)
            }
        };
        let settings = st.settings.get(&settings_key(&ctx.account, &ctx.region)).cloned().unwrap_or_default();
        let mut recs = Vec::new();
        let key_err = |e: EngineError| validation("INVALID_CUSTOMER_KEY", e.message());
        let resolve = |recs: &mut Vec<Rec>, arn: &str| -> Result<KmsKey> {
            let k = self.resolve_kms_key(st, ctx, recs, arn).map_err(key_err)?;
            if !k.enabled {
                return Err(validation("INVALID_CUSTOMER_KEY", format!("The KMS key {arn} is disabled.")));
            }
            Ok(k)
        };
        // (KMS key, whether the parent's blocks can be referenced as they are)
        let (key, same_lineage): (Option<KmsKey>, bool) = match &parent {
            Some(p) if p.encrypted => {
                let pkey = Self::usable_key(st, ctx, p)?.cloned();
                match (&req.kms_key_arn, pkey) {
                    (Some(arn), pk) => {
                        let k = resolve(&mut recs, arn)?;
                        let same = pk.is_some_and(|pk| pk.arn == k.arn);
                        (Some(k), same)
                    }
                    (None, pk) => (pk, true),
                }
            }
            Some(_) => match &req.kms_key_arn {
                Some(arn) => (Some(resolve(&mut recs, arn)?), false),
                None if settings.ebs_encryption_by_default => {
                    return Err(validation(
                        "INVALID_PARAMETER_VALUE",
                        "Encryption by default is enabled: an unencrypted parent snapshot cannot be used. Copy it to an encrypted snapshot first, or give KmsKeyArn.",
                    ));
                }
                None => (None, true),
            },
            None => {
                if req.encrypted == Some(false) && settings.ebs_encryption_by_default {
                    return Err(validation(
                        "INVALID_PARAMETER_VALUE",
                        "Encryption by default is enabled for this account: Encrypted cannot be false.",
                    ));
                }
                if req.kms_key_arn.is_some() && req.encrypted != Some(true) {
                    return Err(validation("INVALID_PARAMETER_VALUE", "KmsKeyArn requires Encrypted to be true."));
                }
                if req.encrypted == Some(true) || settings.ebs_encryption_by_default {
                    let k = match (&req.kms_key_arn, &settings.default_kms_key) {
                        (Some(arn), _) | (None, Some(arn)) => resolve(&mut recs, arn)?,
                        (None, None) => self.default_ebs_key(st, ctx, &mut recs),
                    };
                    (Some(k), true)
                } else {
                    (None, true)
                }
            }
        };
        let (wrapped, dek_id) = match (&key, &parent) {
            (Some(_), Some(p)) if same_lineage && p.encrypted => {
                (p.wrapped_data_key.clone(), p.data_encryption_key_id.clone())
            }
            (Some(k), _) => {
                let (w, i) = Self::new_data_key(k)?;
                (Some(w), Some(i))
            }
            (None, _) => (None, None),
        };
        let now = now_millis();
        let minute = self.config.direct_minute.as_millis() as Millis;
        let snap = Snapshot {
            id: id.to_string(),
            account: ctx.account.clone(),
            region: ctx.region.clone(),
            volume_id: crate::copy::COPY_VOLUME_ID.to_string(),
            volume_size_gib: req.volume_size_gib as u32,
            state: SnapshotState::Pending,
            state_message: None,
            progress: 0,
            start_time: now,
            completion_time: None,
            description: req.description.clone().unwrap_or_default(),
            encrypted: key.is_some(),
            kms_key_id: key.as_ref().map(|k| k.arn.clone()),
            tags: tags.clone(),
            parent: parent.as_ref().map(|p| p.id.clone()),
            epoch: None,
            create_volume_permissions: vec![],
            wrapped_data_key: wrapped,
            data_encryption_key_id: dek_id,
            stored_bytes: 0,
            blocks_total: 0,
            instance_set: None,
            tiering: None,
            source_snapshot: None,
            direct: Some(DirectWrite {
                deadline: now + timeout * minute,
                timeout_minutes: timeout as u32,
                client_token: req.client_token.clone(),
                fingerprint: fingerprint.to_string(),
                completing: false,
                reencode_parent: parent.is_some() && !same_lineage,
            }),
        };
        recs.push(Rec::Snapshot(snap.clone()));
        Ok((snap, recs))
    }

    /// PutSnapshotBlock: verify the checksum, store the block, record it durably. Answers the
    /// checksum. Nothing is recorded when the checksum does not match.
    pub async fn ebs_put_block(&self, ctx: &Ctx, req: PutBlock) -> Result<[u8; 32]> {
        let _slot = self.ebs_slot(ctx)?;
        let snap = {
            let st = self.lock();
            self.ebs_own_direct(&st, ctx, &req.snapshot_id)?
        };
        let direct = snap.direct.clone().unwrap_or_else(|| unreachable_direct(&snap));
        if snap.state != SnapshotState::Pending || direct.completing {
            return Err(validation(
                "INVALID_PARAMETER_VALUE",
                format!(
                    "Snapshot {} is {}: it no longer accepts blocks.",
                    snap.id,
                    if direct.completing { "completing" } else { snap.state.as_str() }
                ),
            ));
        }
        let nblocks = block_count(&snap);
        let index = u32::try_from(req.block_index).ok().filter(|i| u64::from(*i) < nblocks).ok_or_else(|| {
            validation(
                "INVALID_BLOCK",
                format!(
                    "Block index {} is outside the volume: {} blocks of 512 KiB (0 to {}).",
                    req.block_index,
                    nblocks,
                    nblocks - 1
                ),
            )
        })?;
        if req.data.len() != BLOCK_SIZE as usize {
            return Err(validation(
                "INVALID_BLOCK",
                format!("A block must be {BLOCK_SIZE} bytes; this one is {}.", req.data.len()),
            ));
        }
        let pending = self.pending_direct(&snap.id).ok_or_else(|| {
            validation("INVALID_PARAMETER_VALUE", format!("Snapshot {} no longer accepts blocks.", snap.id))
        })?;
        let open = pending.gate.read().await;
        if *open {
            return Err(validation(
                "INVALID_PARAMETER_VALUE",
                format!("Snapshot {} is being completed: it no longer accepts blocks.", snap.id),
            ));
        }
        let (p2, data) = (pending.clone(), req.data.clone());
        let (sum, id) = tokio::task::spawn_blocking(move || {
            let sum = sha256(&data);
            let id = if p2.codec.is_encrypted() { p2.codec.block_id(&data) } else { plain_id(&sum, &data) };
            (sum, id)
        })
        .await
        .map_err(|e| internal("hashing a block", e))?;
        if sum != req.checksum {
            return Err(validation(
                "INVALID_CHECKSUM",
                "The block's SHA-256 does not match x-amz-Checksum: nothing was stored.",
            ));
        }
        let store = self.store(&snap.region).await?;
        let out = {
            let _blocks_in_flight = self.jobs.gc_gate.read().await;
            let out = store
                .put_block_with_id(&pending.codec, id, req.data)
                .await
                .map_err(|e| internal("storing a block", e))?;
            let p2 = pending.clone();
            tokio::task::spawn_blocking(move || p2.log.append(&LogRecord { index, id, sha256: sum }))
                .await
                .map_err(|e| internal("block log", e))?
                .map_err(|e| internal("recording a block", e))?;
            pending.blocks.lock().unwrap_or_else(|p| p.into_inner()).insert(index, (id, sum));
            out
        };
        pending.stored_bytes.fetch_add(out.stored_bytes, Ordering::Relaxed);
        drop(open);
        if let Some(p) = req.progress {
            self.set_progress(&snap.id, p.clamp(0, 99) as u8);
        }
        Ok(sum)
    }
}
