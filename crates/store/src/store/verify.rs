//! Verify: a snapshot's manifest, segments and (in full mode) every chunk read back and checked.

use super::*;

/// How deeply [`BlockStore::verify`] checks chunks.
#[derive(Debug, Clone)]
pub enum VerifyMode {
    /// Header and CRC32C only; needs no key.
    Crc,
    /// Decrypt, decompress and re-derive every id.
    Full(Codec),
}

/// Result of [`BlockStore::verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub snapshot_id: String,
    /// Blocks in the volume (including unwritten and zero blocks).
    pub blocks: u64,
    /// Distinct stored chunks referenced.
    pub unique_chunks: u64,
    /// Chunks that passed.
    pub ok_chunks: u64,
    pub bytes_read: u64,
    pub missing: Vec<BlockId>,
    pub corrupt: Vec<(BlockId, String)>,
}

impl VerifyReport {
    /// True when every referenced chunk was present and passed.
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.corrupt.is_empty()
    }
}

impl BlockStore {
    /// Read every distinct chunk of a snapshot and check it (see [`VerifyMode`]). Missing and
    /// corrupt chunks are reported, not returned as errors; backend failures are errors.
    pub async fn verify(&self, snapshot_id: &str, mode: VerifyMode) -> Result<VerifyReport> {
        let m = self.read_manifest(snapshot_id).await?;
        let mut ids: Vec<BlockId> = m.blocks.iter().copied().filter(|i| !i.is_reserved()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut report = VerifyReport {
            snapshot_id: snapshot_id.to_string(),
            blocks: m.blocks.len() as u64,
            unique_chunks: ids.len() as u64,
            ..Default::default()
        };
        enum Outcome {
            Ok(u64),
            Missing,
            Corrupt(String),
        }
        let mode = &mode;
        let mut results = stream::iter(ids)
            .map(|id| async move {
                let raw = match self.get_bytes(&self.chunk_path(&id)).await {
                    Ok(b) => b,
                    Err(e) if is_not_found(&e) => return Ok((id, Outcome::Missing)),
                    Err(e) => return Err(StoreError::from(e)),
                };
                let n = raw.len() as u64;
                let mode = mode.clone();
                let checked = tokio::task::spawn_blocking(move || match &mode {
                    VerifyMode::Crc => chunk::check(&id, &raw).map(|_| ()),
                    VerifyMode::Full(codec) => chunk::decode(codec, &id, &raw, BLOCK_SIZE).map(|_| ()),
                })
                .await?;
                Ok((
                    id,
                    match checked {
                        Ok(()) => Outcome::Ok(n),
                        Err(e) => Outcome::Corrupt(e.to_string()),
                    },
                ))
            })
            .buffer_unordered(IO_CONCURRENCY);
        while let Some(r) = results.next().await {
            match r? {
                (_, Outcome::Ok(n)) => {
                    report.ok_chunks += 1;
                    report.bytes_read += n;
                }
                (id, Outcome::Missing) => {
                    warn!(snapshot = %snapshot_id, %id, "verify: chunk missing");
                    report.missing.push(id);
                }
                (id, Outcome::Corrupt(why)) => {
                    warn!(snapshot = %snapshot_id, %id, %why, "verify: chunk corrupt");
                    report.corrupt.push((id, why));
                }
            }
        }
        report.missing.sort_unstable();
        report.corrupt.sort_unstable_by_key(|c| c.0);
        info!(
            snapshot = %snapshot_id,
            chunks = report.unique_chunks,
            ok = report.ok_chunks,
            missing = report.missing.len(),
            corrupt = report.corrupt.len(),
            "verify finished"
        );
        Ok(report)
    }
}
