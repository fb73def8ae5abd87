//! Blocks: content ids, put (dedup, no-replace create), get (checked and decrypted), copy between
//! stores, quarantine of a damaged chunk.

use super::*;

impl BlockStore {
    /// The id `codec` gives `plaintext` ([`BlockId::ZERO`] for all zeros). CPU work.
    pub fn block_id(&self, codec: &Codec, plaintext: &[u8]) -> BlockId {
        codec.block_id(plaintext)
    }

    /// Store one 512 KiB block. Hashing, compression and encryption run on the blocking pool;
    /// an existing chunk (dedup) costs one hash and one HEAD. Safe to call concurrently.
    pub async fn put_block(&self, codec: &Codec, plaintext: Bytes) -> Result<PutOutcome> {
        let (c, data) = (codec.clone(), plaintext.clone());
        let id = tokio::task::spawn_blocking(move || c.block_id(&data)).await?;
        self.put_block_with_id(codec, id, plaintext).await
    }

    /// [`put_block`](Self::put_block) for a caller that already hashed the block on its own
    /// thread (`id` must be [`block_id`](Self::block_id) of `plaintext` under `codec`; readers
    /// re-derive it, so a wrong id is caught, never served). Saves a thread hop per block.
    pub async fn put_block_with_id(&self, codec: &Codec, id: BlockId, plaintext: Bytes) -> Result<PutOutcome> {
        if plaintext.len() != BLOCK_SIZE {
            return Err(StoreError::Invalid(format!("block is {} bytes, must be {BLOCK_SIZE}", plaintext.len())));
        }
        if id.is_reserved() {
            return Ok(PutOutcome { id, stored_bytes: 0, already_present: true });
        }
        let path = self.chunk_path(&id);
        let _shared = self.shard(&id.0).read().await;
        let (created, n) = match self.local_file(&path) {
            // Local: existence check, encoding and the write in one blocking call.
            Some(dest) => {
                let (c, sync) = (codec.clone(), self.inner.sync == SyncMode::EveryObject);
                tokio::task::spawn_blocking(move || -> Result<(bool, u64)> {
                    if dest.try_exists()? {
                        return Ok((false, 0));
                    }
                    let mut len = 0;
                    let created = crate::direct::put_create_with(
                        &dest,
                        sync,
                        chunk::max_encoded_len(plaintext.len()),
                        |buf| -> Result<usize> {
                            len = chunk::encode_into(&c, &id, &plaintext, buf)?;
                            Ok(len)
                        },
                    )?;
                    Ok((created, len as u64))
                })
                .await??
            }
            None => {
                if self.exists(&path).await? {
                    (false, 0)
                } else {
                    let c = codec.clone();
                    let obj = tokio::task::spawn_blocking(move || chunk::encode(&c, &id, &plaintext)).await??;
                    let n = obj.len() as u64;
                    (self.put_create(&path, Bytes::from(obj)).await?, n)
                }
            }
        };
        if created {
            self.note_created(n);
        } else {
            self.note_hit(ObjKey::Chunk(id.0));
        }
        trace!(%id, created, bytes = n, "chunk put");
        Ok(PutOutcome { id, stored_bytes: if created { n } else { 0 }, already_present: !created })
    }

    /// Read, verify and decode a block. Reserved ids read as zeros without I/O.
    pub async fn get_block(&self, codec: &Codec, id: &BlockId) -> Result<Bytes> {
        if id.is_reserved() {
            return Ok(Bytes::from_static(&ZEROS));
        }
        let path = self.chunk_path(id);
        if let Some(file) = self.local_file(&path) {
            // Local: read around the page cache and decode in one blocking call.
            let (c, i) = (codec.clone(), *id);
            let plain = tokio::task::spawn_blocking(move || {
                read_local_chunk(&file, &i, |raw| chunk::decode(&c, &i, raw, BLOCK_SIZE))
            })
            .await??;
            return Ok(Bytes::from(plain));
        }
        let raw = match self.get_bytes(&path).await {
            Ok(b) => b,
            Err(e) if is_not_found(&e) => return Err(StoreError::BlockNotFound(*id)),
            Err(e) => return Err(e.into()),
        };
        let (c, id) = (codec.clone(), *id);
        let plain = tokio::task::spawn_blocking(move || chunk::decode(&c, &id, &raw, BLOCK_SIZE)).await??;
        Ok(Bytes::from(plain))
    }

    /// Whether a chunk exists (reserved ids are always "present").
    pub async fn has_block(&self, id: &BlockId) -> Result<bool> {
        if id.is_reserved() {
            return Ok(true);
        }
        self.exists(&self.chunk_path(id)).await
    }

    /// Copy a chunk byte-for-byte from another store (same lineage, e.g. cross-region copy).
    /// The chunk is checked (CRC, and the hash for unencrypted chunks) before it is written.
    /// Returns true if it was copied, false if already present here or reserved.
    pub async fn copy_block_from(&self, src: &BlockStore, id: &BlockId) -> Result<bool> {
        if id.is_reserved() {
            return Ok(false);
        }
        let path = self.chunk_path(id);
        let _shared = self.shard(&id.0).read().await;
        if self.exists(&path).await? {
            self.note_hit(ObjKey::Chunk(id.0));
            return Ok(false);
        }
        let from = src.chunk_path(id);
        let (created, n) = if let (Some(dest), Some(from)) = (self.local_file(&path), src.local_file(&from)) {
            // Local to local: read straight into the aligned write buffer, one blocking call.
            let (i, sync) = (*id, self.inner.sync == SyncMode::EveryObject);
            tokio::task::spawn_blocking(move || -> Result<(bool, u64)> {
                read_local_chunk(&from, &i, |raw| -> Result<(bool, u64)> {
                    check_copy(&i, raw)?;
                    Ok((crate::direct::put_create(&dest, raw, sync)?, raw.len() as u64))
                })
            })
            .await??
        } else {
            let raw = match src.get_bytes(&from).await {
                Ok(b) => b,
                Err(e) if is_not_found(&e) => return Err(StoreError::BlockNotFound(*id)),
                Err(e) => return Err(e.into()),
            };
            let (r, i) = (raw.clone(), *id);
            tokio::task::spawn_blocking(move || check_copy(&i, &r)).await??;
            let n = raw.len() as u64;
            (self.put_create(&path, raw).await?, n)
        };
        if created {
            self.note_created(n);
        } else {
            self.note_hit(ObjKey::Chunk(id.0));
        }
        Ok(created)
    }

    /// Move a chunk aside to `quarantine/` (e.g. after `verify` found it corrupt) so the next
    /// `put_block` of that content uploads a good copy. Returns false if there was none.
    pub async fn quarantine_block(&self, id: &BlockId) -> Result<bool> {
        if id.is_reserved() {
            return Ok(false);
        }
        let from = self.chunk_path(id);
        let to = self.key(&format!("quarantine/{}.{}", id.to_hex(), now_unix_ms()));
        let _exclusive = self.shard(&id.0).write().await;
        match self.inner.os.copy(&from, &to).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        match self.inner.os.delete(&from).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        self.inner.recent_hits.lock().unwrap_or_else(PoisonError::into_inner).remove(&ObjKey::Chunk(id.0));
        warn!(%id, quarantine = %to, "chunk quarantined");
        Ok(true)
    }
}

/// Read a local chunk file (see `direct::read_with`) and hand its bytes to `f`; a missing file is
/// [`StoreError::BlockNotFound`], an oversized one is corrupt.
fn read_local_chunk<T>(file: &FsPath, id: &BlockId, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
    match crate::direct::read_with(file, chunk::max_encoded_len(BLOCK_SIZE), f) {
        Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::BlockNotFound(*id)),
        Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(StoreError::corrupt("chunk", id.to_hex(), e.to_string()))
        }
        r => r,
    }
}

/// A chunk about to be copied byte for byte: structurally sound, and for unencrypted chunks
/// (whose id is the plaintext's hash) its content matches its name.
fn check_copy(id: &BlockId, raw: &[u8]) -> Result<()> {
    if !chunk::check(id, raw)?.encrypted {
        chunk::decode(&Codec::plain(), id, raw, BLOCK_SIZE)?;
    }
    Ok(())
}
