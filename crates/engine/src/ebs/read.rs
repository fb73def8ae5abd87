//! GetSnapshotBlock: one block, named by its block token.

use crate::engine::Engine;
use crate::error::Result;
use crate::model::{Ctx, SnapshotState, now_millis};

use super::{BlockData, GetBlock, block_count, denied, internal, sha256, token, validation};

impl Engine {
    /// GetSnapshotBlock.
    pub async fn ebs_get_block(&self, ctx: &Ctx, req: GetBlock) -> Result<BlockData> {
        let _slot = self.ebs_slot(ctx)?;
        let snap = {
            let st = self.lock();
            self.ebs_readable(&st, ctx, &req.snapshot_id)?
        };
        if snap.state != SnapshotState::Completed {
            return Err(validation(
                "INVALID_PARAMETER_VALUE",
                format!(
                    "Snapshot {} is {}: its blocks can be read once it is completed.",
                    snap.id,
                    snap.state.as_str()
                ),
            ));
        }
        let index =
            u32::try_from(req.block_index).ok().filter(|i| u64::from(*i) < block_count(&snap)).ok_or_else(|| {
                validation("INVALID_BLOCK", format!("Block index {} is outside the snapshot.", req.block_index))
            })?;
        let key = self.ebs_token_key_async().await?;
        let now = now_millis().max(0) as u64 / 1000;
        let id = token::verify(&token::TokenKey::new(&key), &req.block_token, &snap.id, index, now).map_err(|e| {
            validation(
                "INVALID_BLOCK_TOKEN",
                match e {
                    token::TokenError::Expired => {
                        "The block token has expired: list the blocks again for fresh tokens."
                    }
                    token::TokenError::Foreign => "The block token was not issued for this snapshot and block index.",
                    token::TokenError::Malformed => "The block token is malformed.",
                },
            )
        })?;
        let codec = self.codec(snap.kms_key_id.as_deref(), snap.wrapped_data_key.as_deref()).map_err(|e| {
            denied("DEPENDENCY_ACCESS_DENIED", format!("The snapshot's KMS key cannot be used: {}", e.message()))
        })?;
        let store = self.store(&snap.region).await?;
        let data = store.get_block(&codec, &id).await.map_err(|e| internal("reading a block", e))?;
        let checksum = if codec.is_encrypted() || id.is_reserved() {
            let d = data.clone();
            tokio::task::spawn_blocking(move || sha256(&d)).await.map_err(|e| internal("hashing a block", e))?
        } else {
            // Unencrypted ids are the SHA-256 of the block, verified by the read.
            *id.as_bytes()
        };
        Ok(BlockData { data, checksum })
    }
}
