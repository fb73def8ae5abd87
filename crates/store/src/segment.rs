//! Segment objects (format 1): a run of up to 1,024 block ids, content-addressed.

use aws_lc_rs::digest;

use crate::SEGMENT_BLOCKS;
use crate::error::{Result, StoreError};
use crate::id::{BlockId, SegmentId};

const MAGIC: &[u8; 4] = b"BSNS";
const SEGMENT_VERSION: u16 = 1;
const FLAG_ZSTD: u16 = 1;
const HEADER_LEN: usize = 12;
/// Fixed level so the same ids always give the same bytes (and so the same segment id).
const ZSTD_LEVEL: i32 = 3;

/// An encoded segment: its id, and the object bytes unless the id is reserved.
pub(crate) struct EncodedSegment {
    pub id: SegmentId,
    pub bytes: Option<Vec<u8>>,
}

pub(crate) fn encode(ids: &[BlockId]) -> Result<EncodedSegment> {
    if ids.is_empty() || ids.len() > SEGMENT_BLOCKS {
        return Err(StoreError::Invalid(format!("segment of {} ids (1..={SEGMENT_BLOCKS})", ids.len())));
    }
    // Uniform runs of a reserved id are themselves a reserved segment id: nothing to store.
    for reserved in [BlockId::UNWRITTEN, BlockId::ZERO] {
        if ids.iter().all(|i| *i == reserved) {
            return Ok(EncodedSegment { id: SegmentId(reserved.0), bytes: None });
        }
    }
    let mut raw = Vec::with_capacity(ids.len() * 32);
    for id in ids {
        raw.extend_from_slice(id.as_bytes());
    }
    let mut flags = 0u16;
    let payload = match zstd::bulk::compress(&raw, ZSTD_LEVEL) {
        Ok(c) if c.len() < raw.len() => {
            flags |= FLAG_ZSTD;
            c
        }
        _ => raw,
    };
    let count = u32::try_from(ids.len()).map_err(|_| StoreError::Invalid("segment size".into()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(EncodedSegment { id: segment_id_of(&out), bytes: Some(out) })
}

pub(crate) fn segment_id_of(bytes: &[u8]) -> SegmentId {
    let mut id = [0u8; 32];
    id.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    SegmentId(id)
}

/// Ids of a reserved segment of `count` entries, or `None` if `id` is not reserved.
pub(crate) fn reserved_ids(id: &SegmentId, count: usize) -> Option<Vec<BlockId>> {
    if *id == SegmentId::UNWRITTEN {
        Some(vec![BlockId::UNWRITTEN; count])
    } else if *id == SegmentId::ZERO {
        Some(vec![BlockId::ZERO; count])
    } else {
        None
    }
}

/// Decode and verify a stored segment (SHA-256 must equal `id`).
pub(crate) fn decode(id: &SegmentId, obj: &[u8]) -> Result<Vec<BlockId>> {
    let bad = |reason: String| StoreError::corrupt("segment", id.to_hex(), reason);
    if segment_id_of(obj) != *id {
        return Err(bad("SHA-256 does not match the segment id".into()));
    }
    if obj.len() < HEADER_LEN || &obj[0..4] != MAGIC {
        return Err(bad("bad magic".into()));
    }
    let version = u16::from_le_bytes([obj[4], obj[5]]);
    if version != SEGMENT_VERSION {
        return Err(bad(format!("unsupported segment format version {version}")));
    }
    let flags = u16::from_le_bytes([obj[6], obj[7]]);
    if flags & !FLAG_ZSTD != 0 {
        return Err(bad(format!("unknown flags {flags:#x}")));
    }
    let count = u32::from_le_bytes([obj[8], obj[9], obj[10], obj[11]]) as usize;
    if count == 0 || count > SEGMENT_BLOCKS {
        return Err(bad(format!("count {count} out of range")));
    }
    let payload = &obj[HEADER_LEN..];
    let raw;
    let raw_ref: &[u8] = if flags & FLAG_ZSTD != 0 {
        raw = zstd::bulk::decompress(payload, count * 32).map_err(|e| bad(format!("zstd: {e}")))?;
        &raw
    } else {
        payload
    };
    if raw_ref.len() != count * 32 {
        return Err(bad(format!("{} id bytes for {count} ids", raw_ref.len())));
    }
    Ok(raw_ref.chunks_exact(32).filter_map(BlockId::from_slice).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reserved() {
        let mut ids = vec![BlockId::UNWRITTEN; 1024];
        assert!(encode(&ids).unwrap().bytes.is_none());
        ids[7] = BlockId([9; 32]);
        let e = encode(&ids).unwrap();
        let bytes = e.bytes.unwrap();
        assert!(bytes.len() < 1024, "runs of sentinels compress");
        assert_eq!(decode(&e.id, &bytes).unwrap(), ids);
        let mut bad = bytes.clone();
        bad[HEADER_LEN] ^= 1;
        assert!(decode(&e.id, &bad).is_err());
        assert_eq!(encode(&ids).unwrap().id, e.id, "deterministic");
        assert_eq!(encode(&[BlockId::ZERO; 3]).unwrap().id, SegmentId::ZERO);
        assert!(encode(&[]).is_err());
    }
}
