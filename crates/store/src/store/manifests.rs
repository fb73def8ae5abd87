//! Segments and manifests: a snapshot's block list written as segments plus a manifest (the
//! commit point), read back whole or header only, listed and deleted.

use super::*;

impl BlockStore {
    /// The `count` block ids of one segment of a manifest (reserved ids cost no I/O). The
    /// segment is verified against its id; a manifest's segment `i` holds blocks
    /// `i * SEGMENT_BLOCKS ..`, so two manifests can be compared segment by segment.
    pub async fn read_segment(&self, id: SegmentId, count: usize) -> Result<Vec<BlockId>> {
        if let Some(ids) = segment::reserved_ids(&id, count) {
            return Ok(ids);
        }
        let raw = match self.get_bytes(&self.segment_path(&id)).await {
            Ok(b) => b,
            Err(e) if is_not_found(&e) => {
                return Err(StoreError::corrupt("segment", id.to_hex(), "missing"));
            }
            Err(e) => return Err(e.into()),
        };
        let ids = segment::decode(&id, &raw)?;
        if ids.len() != count {
            return Err(StoreError::corrupt(
                "segment",
                id.to_hex(),
                format!("{} ids, manifest expects {count}", ids.len()),
            ));
        }
        Ok(ids)
    }

    pub(crate) async fn read_segment_any(&self, id: SegmentId) -> Result<Vec<BlockId>> {
        let raw = match self.get_bytes(&self.segment_path(&id)).await {
            Ok(b) => b,
            Err(e) if is_not_found(&e) => {
                return Err(StoreError::corrupt("segment", id.to_hex(), "missing"));
            }
            Err(e) => return Err(e.into()),
        };
        segment::decode(&id, &raw)
    }

    /// Commit a snapshot: write its segments, then (after a durability barrier) its manifest.
    /// Idempotent: rewriting an identical manifest succeeds; a different one under the same
    /// snapshot id fails with [`StoreError::ManifestExists`].
    pub async fn write_manifest(&self, m: &Manifest) -> Result<()> {
        m.validate()?;
        let blocks = m.blocks.clone();
        let encoded = tokio::task::spawn_blocking(move || {
            blocks.chunks(SEGMENT_BLOCKS).map(segment::encode).collect::<Result<Vec<_>>>()
        })
        .await??;
        let segments: Vec<SegmentId> = encoded.iter().map(|e| e.id).collect();
        let mut seen = HashSet::new();
        let uploads: Vec<(SegmentId, Vec<u8>)> =
            encoded.into_iter().filter_map(|e| e.bytes.map(|b| (e.id, b))).filter(|(id, _)| seen.insert(*id)).collect();
        let n_unique = uploads.len();
        let new_segments: usize = stream::iter(uploads)
            .map(|(id, bytes)| async move {
                let _shared = self.shard(&id.0).read().await;
                let created = self.put_create(&self.segment_path(&id), Bytes::from(bytes)).await?;
                if !created {
                    self.note_hit(ObjKey::Segment(id.0));
                }
                Ok::<_, StoreError>(usize::from(created))
            })
            .buffer_unordered(IO_CONCURRENCY)
            .try_fold(0, |a, b| async move { Ok(a + b) })
            .await?;

        let header = ManifestHeader {
            snapshot_id: m.snapshot_id.clone(),
            volume_id: m.volume_id.clone(),
            volume_size: m.volume_size,
            block_count: m.blocks.len() as u64,
            encryption: m.encryption.clone(),
            parent: m.parent.clone(),
            created_unix_ms: m.created_unix_ms,
            description: m.description.clone(),
            segments,
        };
        let bytes = manifest::to_bytes(&header)?;
        // Chunks and segments must be durable before the manifest that makes them reachable.
        self.sync_barrier().await?;
        let path = self.manifest_path(&m.snapshot_id);
        if !self.put_create(&path, Bytes::from(bytes.clone())).await? {
            let existing = self.get_bytes(&path).await?;
            if existing.as_ref() != bytes.as_slice() {
                return Err(StoreError::ManifestExists(m.snapshot_id.clone()));
            }
            debug!(snapshot = %m.snapshot_id, "identical manifest already committed");
        }
        self.sync_barrier().await?;
        info!(
            snapshot = %m.snapshot_id,
            blocks = m.blocks.len(),
            segments = header.segments.len(),
            unique_segments = n_unique,
            new_segments,
            "manifest committed"
        );
        Ok(())
    }

    /// Read a manifest's metadata and segment list (one GET).
    pub async fn read_manifest_header(&self, snapshot_id: &str) -> Result<ManifestHeader> {
        check_snapshot_id(snapshot_id)?;
        match self.get_bytes(&self.manifest_path(snapshot_id)).await {
            Ok(b) => manifest::from_bytes(snapshot_id, &b),
            Err(e) if is_not_found(&e) => Err(StoreError::ManifestNotFound(snapshot_id.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Read a manifest with its full block list (segments fetched concurrently and verified).
    pub async fn read_manifest(&self, snapshot_id: &str) -> Result<Manifest> {
        let h = self.read_manifest_header(snapshot_id).await?;
        let total = usize::try_from(h.block_count)
            .map_err(|_| StoreError::corrupt("manifest", snapshot_id, "too many blocks"))?;
        // Owned items: a closure over borrowed ones makes the future not `Send` for every lifetime
        // (rustc's higher-ranked inference), so callers could not spawn it.
        let parts: Vec<Vec<BlockId>> = stream::iter(h.segments.clone().into_iter().enumerate())
            .map(|(i, id)| {
                let count = (total - i * SEGMENT_BLOCKS).min(SEGMENT_BLOCKS);
                self.read_segment(id, count)
            })
            .buffered(IO_CONCURRENCY)
            .try_collect()
            .await?;
        let blocks: Vec<BlockId> = parts.into_iter().flatten().collect();
        Ok(Manifest {
            snapshot_id: h.snapshot_id,
            volume_id: h.volume_id,
            volume_size: h.volume_size,
            blocks,
            encryption: h.encryption,
            parent: h.parent,
            created_unix_ms: h.created_unix_ms,
            description: h.description,
        })
    }

    /// Delete a manifest (idempotent). Its space returns at the next GC.
    pub async fn delete_manifest(&self, snapshot_id: &str) -> Result<()> {
        check_snapshot_id(snapshot_id)?;
        match self.inner.os.delete(&self.manifest_path(snapshot_id)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        info!(snapshot = %snapshot_id, "manifest deleted");
        Ok(())
    }

    /// The bytes and the number of the chunk objects, from one listing (local directory or
    /// bucket alike): what the store takes.
    pub async fn chunk_usage(&self) -> Result<(u64, u64)> {
        let prefix = self.dir("chunks");
        let mut listing = self.inner.os.list(Some(&prefix));
        let (mut bytes, mut count) = (0u64, 0u64);
        while let Some(meta) = listing.next().await {
            bytes += meta?.size;
            count += 1;
        }
        Ok((bytes, count))
    }

    /// Snapshot ids of all committed manifests, sorted.
    pub async fn list_manifests(&self) -> Result<Vec<String>> {
        let prefix = self.dir("snaps");
        let metas: Vec<_> = self.inner.os.list(Some(&prefix)).try_collect().await?;
        let mut ids: Vec<String> = metas
            .iter()
            .filter_map(|m| m.location.filename())
            .filter_map(|f| f.strip_suffix(".manifest"))
            .filter(|id| check_snapshot_id(id).is_ok())
            .map(str::to_string)
            .collect();
        ids.sort();
        Ok(ids)
    }
}
