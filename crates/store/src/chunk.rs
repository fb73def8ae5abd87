//! Chunk object encoding (format 1). See the crate docs for the byte layout.

use std::cell::RefCell;

use crate::crypto::{self, Codec, GCM_NONCE_LEN, GCM_TAG_LEN};
use crate::error::{Result, StoreError};
use crate::id::BlockId;

const MAGIC: &[u8; 4] = b"BSNC";
pub(crate) const CHUNK_VERSION: u16 = 1;
const FLAG_ZSTD: u8 = 1 << 0;
const FLAG_ENCRYPTED: u8 = 1 << 1;
const AEAD_NONE: u8 = 0;
const AEAD_AES256GCM: u8 = 1;
/// Bytes covered by the AAD (everything before the CRC field).
const AAD_HEADER: usize = 16;
pub(crate) const HEADER_LEN: usize = 20;
/// zstd level 1: fast enough to stay off the critical path (PBS uses the same).
pub(crate) const ZSTD_LEVEL: i32 = 1;

thread_local! {
    // One compressor context per blocking thread and level: avoids re-allocating zstd state per
    // block. The standard store uses `ZSTD_LEVEL`; the archive tier a stronger one.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

/// Slices of the block compressed first to predict whether the whole block compresses.
const SAMPLE_SLICES: usize = 8;
const SAMPLE_SLICE_LEN: usize = 4096;

/// Compress with zstd into `out` when the result is strictly smaller than `data` (zstd stops as
/// soon as it would not fit). Returns the compressed length.
///
/// Blocks of large enough size are probed first: eight 4 KiB slices spread over the block are
/// compressed together, and a sample that saves less than 1/32 means the block is stored raw
/// without compressing the rest (incompressible data — media, ciphertext, already-compressed
/// files — then costs 1/16 of a full attempt; a block of mixed content shows it in its slices).
fn compress_if_smaller(data: &[u8], out: &mut [u8], level: i32) -> Option<usize> {
    let room = data.len().saturating_sub(1).min(out.len());
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = zstd::bulk::Compressor::new(level).ok().map(|comp| (level, comp));
        }
        let (_, comp) = c.as_mut()?;
        if data.len() >= 4 * SAMPLE_SLICES * SAMPLE_SLICE_LEN {
            let stride = data.len() / SAMPLE_SLICES;
            let mut sample = [0u8; SAMPLE_SLICES * SAMPLE_SLICE_LEN];
            for (i, dst) in sample.chunks_exact_mut(SAMPLE_SLICE_LEN).enumerate() {
                dst.copy_from_slice(&data[i * stride..i * stride + SAMPLE_SLICE_LEN]);
            }
            let limit = sample.len() - sample.len() / 32;
            match comp.compress_to_buffer(&sample[..], &mut out[..limit.min(room)]) {
                Ok(n) if n < limit => {}
                _ => return None,
            }
        }
        match comp.compress_to_buffer(data, &mut out[..room]) {
            Ok(n) if n < data.len() => Some(n),
            _ => None,
        }
    })
}

/// Information about a stored chunk that needs no key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkInfo {
    pub compressed: bool,
    pub encrypted: bool,
}

/// The largest object [`encode_into`] can produce for `raw_len` plaintext bytes.
pub(crate) fn max_encoded_len(raw_len: usize) -> usize {
    HEADER_LEN + GCM_NONCE_LEN + raw_len + GCM_TAG_LEN
}

/// Encode a block for storage. `id` must be `codec`'s id for `plaintext`.
pub(crate) fn encode(codec: &Codec, id: &BlockId, plaintext: &[u8]) -> Result<Vec<u8>> {
    encode_at(codec, id, plaintext, ZSTD_LEVEL)
}

/// [`encode`] with another zstd level (the archive tier compresses harder).
pub(crate) fn encode_at(codec: &Codec, id: &BlockId, plaintext: &[u8], level: i32) -> Result<Vec<u8>> {
    let mut out = vec![0u8; max_encoded_len(plaintext.len())];
    let n = encode_into_at(codec, id, plaintext, &mut out, level)?;
    out.truncate(n);
    Ok(out)
}

/// Encode a block into `out` (at least [`max_encoded_len`] bytes) and return the object's length.
/// Compression and encryption work in place in `out`: the block is copied at most once.
pub(crate) fn encode_into(codec: &Codec, id: &BlockId, plaintext: &[u8], out: &mut [u8]) -> Result<usize> {
    encode_into_at(codec, id, plaintext, out, ZSTD_LEVEL)
}

fn encode_into_at(codec: &Codec, id: &BlockId, plaintext: &[u8], out: &mut [u8], level: i32) -> Result<usize> {
    let raw_len = u32::try_from(plaintext.len()).map_err(|_| StoreError::Invalid("block larger than 4 GiB".into()))?;
    if out.len() < max_encoded_len(plaintext.len()) {
        return Err(StoreError::Invalid("chunk buffer too small".into()));
    }
    let body_at = HEADER_LEN + if codec.is_encrypted() { GCM_NONCE_LEN } else { 0 };
    let mut flags = 0u8;
    let body_len = match compress_if_smaller(plaintext, &mut out[body_at..], level) {
        Some(n) => {
            flags |= FLAG_ZSTD;
            n
        }
        None => {
            out[body_at..body_at + plaintext.len()].copy_from_slice(plaintext);
            plaintext.len()
        }
    };
    let mut aead = AEAD_NONE;
    if codec.is_encrypted() {
        flags |= FLAG_ENCRYPTED;
        aead = AEAD_AES256GCM;
    }
    let payload_len = body_len + if codec.is_encrypted() { GCM_TAG_LEN } else { 0 };
    let stored_len = u32::try_from(payload_len).map_err(|_| StoreError::Invalid("chunk larger than 4 GiB".into()))?;

    out[0..4].copy_from_slice(MAGIC);
    out[4..6].copy_from_slice(&CHUNK_VERSION.to_le_bytes());
    out[6] = flags;
    out[7] = aead;
    out[8..12].copy_from_slice(&raw_len.to_le_bytes());
    out[12..16].copy_from_slice(&stored_len.to_le_bytes());
    out[16..20].fill(0);
    if let Some(keys) = codec.keys() {
        let aad = aad(&out[..HEADER_LEN], id);
        let (nonce, tag) = crypto::seal_detached(keys, &aad, &mut out[body_at..body_at + body_len])?;
        out[HEADER_LEN..body_at].copy_from_slice(&nonce);
        out[body_at + body_len..body_at + payload_len].copy_from_slice(&tag);
    }
    let len = body_at + payload_len;
    let crc = crc_of(&out[..len]);
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    Ok(len)
}

fn aad(header: &[u8], id: &BlockId) -> [u8; AAD_HEADER + 32] {
    let mut a = [0u8; AAD_HEADER + 32];
    a[..AAD_HEADER].copy_from_slice(&header[..AAD_HEADER]);
    a[AAD_HEADER..].copy_from_slice(id.as_bytes());
    a
}

/// Writes the CRC of `obj` into its CRC field (no-op on objects shorter than the header).
pub(crate) fn set_crc(obj: &mut [u8]) {
    if obj.len() >= HEADER_LEN {
        let crc = crc_of(obj);
        obj[16..20].copy_from_slice(&crc.to_le_bytes());
    }
}

/// CRC32C over everything except the CRC field itself.
fn crc_of(obj: &[u8]) -> u32 {
    let c = crc32c::crc32c(&obj[..16]);
    crc32c::crc32c_append(c, &obj[HEADER_LEN..])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Key-less structural check: magic, version, lengths and CRC32C.
pub(crate) fn check(id: &BlockId, obj: &[u8]) -> Result<ChunkInfo> {
    let bad = |reason: String| StoreError::corrupt("chunk", id.to_hex(), reason);
    if obj.len() < HEADER_LEN {
        return Err(bad(format!("object is {} bytes, shorter than the header", obj.len())));
    }
    if &obj[0..4] != MAGIC {
        return Err(bad("bad magic".into()));
    }
    let version = u16::from_le_bytes([obj[4], obj[5]]);
    if version != CHUNK_VERSION {
        return Err(bad(format!("unsupported chunk format version {version}")));
    }
    let flags = obj[6];
    let aead = obj[7];
    if flags & !(FLAG_ZSTD | FLAG_ENCRYPTED) != 0 {
        return Err(bad(format!("unknown flags {flags:#x}")));
    }
    let encrypted = flags & FLAG_ENCRYPTED != 0;
    if encrypted != (aead == AEAD_AES256GCM) || (aead != AEAD_NONE && aead != AEAD_AES256GCM) {
        return Err(bad(format!("inconsistent aead {aead} for flags {flags:#x}")));
    }
    let stored_len = le_u32(obj, 12) as usize;
    let expect = HEADER_LEN + if encrypted { GCM_NONCE_LEN } else { 0 } + stored_len;
    if obj.len() != expect {
        return Err(bad(format!("object is {} bytes, header says {expect}", obj.len())));
    }
    let crc = le_u32(obj, 16);
    if crc != crc_of(obj) {
        return Err(bad("CRC32C mismatch".into()));
    }
    Ok(ChunkInfo { compressed: flags & FLAG_ZSTD != 0, encrypted })
}

/// Full decode: structural check, decrypt, decompress, and re-derive the id.
pub(crate) fn decode(codec: &Codec, id: &BlockId, obj: &[u8], max_len: usize) -> Result<Vec<u8>> {
    let info = check(id, obj)?;
    let bad = |reason: String| StoreError::corrupt("chunk", id.to_hex(), reason);
    let raw_len = le_u32(obj, 8) as usize;
    if raw_len > max_len {
        return Err(bad(format!("raw length {raw_len} exceeds {max_len}")));
    }
    let decrypted;
    let payload: &[u8] = match (info.encrypted, codec.keys()) {
        (false, None) => &obj[HEADER_LEN..],
        (true, Some(keys)) => {
            let nonce = &obj[HEADER_LEN..HEADER_LEN + GCM_NONCE_LEN];
            let mut buf = obj[HEADER_LEN + GCM_NONCE_LEN..].to_vec();
            let n = crypto::open(keys, nonce, &aad(obj, id), &mut buf).map_err(|()| StoreError::Decrypt(*id))?;
            buf.truncate(n);
            decrypted = buf;
            &decrypted
        }
        (true, None) => {
            return Err(StoreError::CodecMismatch { id: *id, reason: "chunk is encrypted but no data key was given" });
        }
        (false, Some(_)) => {
            return Err(StoreError::CodecMismatch { id: *id, reason: "chunk is not encrypted but the lineage is" });
        }
    };
    let plain = if info.compressed {
        let out = zstd::bulk::decompress(payload, raw_len).map_err(|e| bad(format!("zstd: {e}")))?;
        if out.len() != raw_len {
            return Err(bad(format!("decompressed {} bytes, expected {raw_len}", out.len())));
        }
        out
    } else {
        if payload.len() != raw_len {
            return Err(bad(format!("payload {} bytes, expected {raw_len}", payload.len())));
        }
        payload.to_vec()
    };
    if codec.content_id(&plain) != *id {
        return Err(bad("content does not match its id".into()));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DataKey;

    fn random(n: usize) -> Vec<u8> {
        use rand::RngCore;
        let mut v = vec![0u8; n];
        rand::rng().fill_bytes(&mut v);
        v
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        for codec in [Codec::plain(), Codec::encrypted(&DataKey::generate()).unwrap()] {
            let data = random(1000);
            let id = codec.block_id(&data);
            let obj = encode(&codec, &id, &data).unwrap();
            assert_eq!(decode(&codec, &id, &obj, 1000).unwrap(), data);
            for i in 0..obj.len() {
                let mut o = obj.clone();
                o[i] ^= 0x10;
                assert!(decode(&codec, &id, &o, 1000).is_err(), "flip at {i} undetected");
            }
            assert!(decode(&codec, &id, &obj[..obj.len() - 1], 1000).is_err());
        }
    }

    #[test]
    fn compression_only_when_smaller() {
        let c = Codec::plain();
        let rnd = random(4096);
        let obj = encode(&c, &c.block_id(&rnd), &rnd).unwrap();
        assert!(!check(&c.block_id(&rnd), &obj).unwrap().compressed);
        assert_eq!(obj.len(), HEADER_LEN + 4096);
        let text = b"hello world ".repeat(400);
        let id = c.block_id(&text);
        let obj = encode(&c, &id, &text).unwrap();
        assert!(check(&id, &obj).unwrap().compressed);
        assert!(obj.len() < text.len() / 4);
    }

    #[test]
    fn incompressible_probe_keeps_mixed_blocks_compressed() {
        let c = Codec::plain();
        // Random: stored raw. Half random, half zeros: the probe sees the zeros and compresses.
        let rnd = random(524_288);
        assert!(!check(&c.block_id(&rnd), &encode(&c, &c.block_id(&rnd), &rnd).unwrap()).unwrap().compressed);
        let mut mixed = random(524_288);
        mixed[262_144..].fill(0);
        let obj = encode(&c, &c.block_id(&mixed), &mixed).unwrap();
        assert!(check(&c.block_id(&mixed), &obj).unwrap().compressed);
        assert!(obj.len() < 300_000);
        assert_eq!(decode(&c, &c.block_id(&mixed), &obj, 524_288).unwrap(), mixed);
    }

    #[test]
    fn ciphertext_is_bound_to_its_id() {
        let c = Codec::encrypted(&DataKey::generate()).unwrap();
        let a = random(512);
        let b = random(512);
        let (ia, ib) = (c.block_id(&a), c.block_id(&b));
        let oa = encode(&c, &ia, &a).unwrap();
        // The object of A presented under B's name fails authentication.
        assert!(matches!(decode(&c, &ib, &oa, 512), Err(StoreError::Decrypt(_))));
    }
}
