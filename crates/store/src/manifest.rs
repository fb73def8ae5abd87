//! Snapshot manifests (format 1): self-describing JSON, the commit point of a snapshot.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Result, StoreError};
use crate::id::{BlockId, SegmentId};
use crate::{BLOCK_SIZE, SEGMENT_BLOCKS};

pub(crate) const MANIFEST_FORMAT: u32 = 1;
const KIND: &str = "blocksnap.manifest";

/// Encryption of a snapshot's lineage, as the caller's KMS layer describes it. The store never
/// interprets the wrapped key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionInfo {
    /// ARN of the KMS key that wrapped the data key.
    pub kms_key_arn: String,
    /// The wrapped data key, exactly as the KMS returned it.
    pub wrapped_key: Vec<u8>,
}

/// A complete snapshot: metadata plus one id per 512 KiB block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub snapshot_id: String,
    pub volume_id: String,
    /// Volume size in bytes; `blocks.len()` must equal `ceil(volume_size / BLOCK_SIZE)`.
    pub volume_size: u64,
    /// One id per block; [`BlockId::UNWRITTEN`] for never-written blocks.
    pub blocks: Vec<BlockId>,
    pub encryption: Option<EncryptionInfo>,
    pub parent: Option<String>,
    pub created_unix_ms: i64,
    pub description: String,
}

/// A manifest without its block list: cheap to read (one GET), enough to rebuild a catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHeader {
    pub snapshot_id: String,
    pub volume_id: String,
    pub volume_size: u64,
    pub block_count: u64,
    pub encryption: Option<EncryptionInfo>,
    pub parent: Option<String>,
    pub created_unix_ms: i64,
    pub description: String,
    /// Segment ids in volume order (reserved ids for all-unwritten / all-zero stretches).
    pub segments: Vec<SegmentId>,
}

#[derive(Serialize, Deserialize)]
struct EncBody {
    encrypted: bool,
    kms_key_arn: String,
    wrapped_key_hex: String,
}

#[derive(Serialize, Deserialize)]
struct Body {
    snapshot_id: String,
    volume_id: String,
    volume_size: u64,
    block_size: u64,
    block_count: u64,
    segment_blocks: u64,
    encryption: Option<EncBody>,
    parent: Option<String>,
    created_unix_ms: i64,
    description: String,
    segments: Vec<SegmentId>,
}

#[derive(Serialize, Deserialize)]
struct Outer<'a> {
    format: u32,
    kind: String,
    /// SHA-256 (hex) of the exact `body` bytes: catches damage that still parses as JSON.
    sha256: String,
    #[serde(borrow)]
    body: &'a RawValue,
}

#[derive(Deserialize)]
struct Probe {
    format: u32,
}

/// Snapshot ids become object names: keep them to a safe alphabet.
pub(crate) fn check_snapshot_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok { Ok(()) } else { Err(StoreError::Invalid(format!("bad snapshot id {id:?}"))) }
}

pub(crate) fn block_count(volume_size: u64) -> u64 {
    volume_size.div_ceil(BLOCK_SIZE as u64)
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref())
}

impl Manifest {
    pub(crate) fn validate(&self) -> Result<()> {
        check_snapshot_id(&self.snapshot_id)?;
        if let Some(p) = &self.parent {
            check_snapshot_id(p)?;
        }
        let want = block_count(self.volume_size);
        if self.blocks.len() as u64 != want {
            return Err(StoreError::Invalid(format!(
                "manifest {} has {} blocks, volume size {} needs {want}",
                self.snapshot_id,
                self.blocks.len(),
                self.volume_size
            )));
        }
        Ok(())
    }
}

/// Serialize a manifest header to its object bytes.
pub(crate) fn to_bytes(h: &ManifestHeader) -> Result<Vec<u8>> {
    let body = Body {
        snapshot_id: h.snapshot_id.clone(),
        volume_id: h.volume_id.clone(),
        volume_size: h.volume_size,
        block_size: BLOCK_SIZE as u64,
        block_count: h.block_count,
        segment_blocks: SEGMENT_BLOCKS as u64,
        encryption: h.encryption.as_ref().map(|e| EncBody {
            encrypted: true,
            kms_key_arn: e.kms_key_arn.clone(),
            wrapped_key_hex: hex::encode(&e.wrapped_key),
        }),
        parent: h.parent.clone(),
        created_unix_ms: h.created_unix_ms,
        description: h.description.clone(),
        segments: h.segments.clone(),
    };
    let body = serde_json::to_string(&body).map_err(|e| StoreError::Invalid(format!("manifest serialization: {e}")))?;
    let sha256 = sha256_hex(body.as_bytes());
    let raw = RawValue::from_string(body).map_err(|e| StoreError::Invalid(format!("manifest serialization: {e}")))?;
    let outer = Outer { format: MANIFEST_FORMAT, kind: KIND.to_string(), sha256, body: &raw };
    let mut out =
        serde_json::to_vec(&outer).map_err(|e| StoreError::Invalid(format!("manifest serialization: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

/// Parse and validate manifest object bytes; `name` is the snapshot id it was stored under.
pub(crate) fn from_bytes(name: &str, bytes: &[u8]) -> Result<ManifestHeader> {
    let bad = |reason: String| StoreError::corrupt("manifest", name, reason);
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| bad(format!("json: {e}")))?;
    if probe.format != MANIFEST_FORMAT {
        return Err(StoreError::Incompatible(format!(
            "manifest {name} has format {}, this build reads {MANIFEST_FORMAT}",
            probe.format
        )));
    }
    let outer: Outer<'_> = serde_json::from_slice(bytes).map_err(|e| bad(format!("json: {e}")))?;
    if outer.kind != KIND {
        return Err(bad(format!("kind {:?}", outer.kind)));
    }
    if sha256_hex(outer.body.get().as_bytes()) != outer.sha256 {
        return Err(bad("body SHA-256 mismatch".into()));
    }
    let body: Body = serde_json::from_str(outer.body.get()).map_err(|e| bad(format!("body: {e}")))?;
    if body.snapshot_id != name {
        return Err(bad(format!("contains snapshot id {:?}", body.snapshot_id)));
    }
    if body.block_size != BLOCK_SIZE as u64 || body.segment_blocks != SEGMENT_BLOCKS as u64 {
        return Err(StoreError::Incompatible(format!(
            "manifest {name}: block size {} / segment {} (this build: {BLOCK_SIZE} / {SEGMENT_BLOCKS})",
            body.block_size, body.segment_blocks
        )));
    }
    if body.block_count != block_count(body.volume_size) {
        return Err(bad(format!("block count {} for volume size {}", body.block_count, body.volume_size)));
    }
    if body.segments.len() as u64 != body.block_count.div_ceil(SEGMENT_BLOCKS as u64) {
        return Err(bad(format!("{} segments for {} blocks", body.segments.len(), body.block_count)));
    }
    let encryption = match body.encryption {
        None => None,
        Some(e) => Some(EncryptionInfo {
            kms_key_arn: e.kms_key_arn,
            wrapped_key: hex::decode(&e.wrapped_key_hex).map_err(|err| bad(format!("wrapped key hex: {err}")))?,
        }),
    };
    Ok(ManifestHeader {
        snapshot_id: body.snapshot_id,
        volume_id: body.volume_id,
        volume_size: body.volume_size,
        block_count: body.block_count,
        encryption,
        parent: body.parent,
        created_unix_ms: body.created_unix_ms,
        description: body.description,
        segments: body.segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ManifestHeader {
        ManifestHeader {
            snapshot_id: "snap-0123456789abcdef0".into(),
            volume_id: "vol-0123456789abcdef0".into(),
            volume_size: 1 << 30,
            block_count: 2048,
            encryption: Some(EncryptionInfo {
                kms_key_arn: "arn:aws:kms:us-east-1:000000000000:key/x".into(),
                wrapped_key: vec![1, 2, 3],
            }),
            parent: None,
            created_unix_ms: 1_700_000_000_000,
            description: "d \"quoted\" ✓".into(),
            segments: vec![SegmentId([3; 32]), SegmentId::UNWRITTEN],
        }
    }

    #[test]
    fn round_trip_and_tamper() {
        let h = header();
        let b = to_bytes(&h).unwrap();
        assert_eq!(from_bytes(&h.snapshot_id, &b).unwrap(), h);
        assert!(from_bytes("snap-other", &b).is_err());
        // Change one hex digit of a segment id: still valid JSON, caught by the SHA-256.
        let s = String::from_utf8(b.clone()).unwrap().replacen("0303", "0304", 1);
        assert!(matches!(from_bytes(&h.snapshot_id, s.as_bytes()), Err(StoreError::Corrupt { .. })));
        let v2 = String::from_utf8(b).unwrap().replacen("\"format\":1", "\"format\":2", 1);
        assert!(matches!(from_bytes(&h.snapshot_id, v2.as_bytes()), Err(StoreError::Incompatible(_))));
    }

    #[test]
    fn snapshot_ids() {
        assert!(check_snapshot_id("snap-0abc").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(check_snapshot_id(bad).is_err(), "{bad}");
        }
    }
}
