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
const ZSTD_LEVEL: i32 = 1;

thread_local! {
    // One compressor context per blocking thread: avoids re-allocating zstd state per block.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

/// Compress with zstd into a buffer one byte smaller than the input: if it does not fit, the
/// compressed form would not be smaller and we keep the raw block.
fn compress_if_smaller(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len().saturating_sub(1));
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        let comp = c.as_mut()?;
        match comp.compress_to_buffer(data, &mut out) {
            Ok(n) if n < data.len() => Some(()),
            _ => None,
        }
    })?;
    Some(out)
}

/// Information about a stored chunk that needs no key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkInfo {
    pub compressed: bool,
    pub encrypted: bool,
}

/// Encode a block for storage. `id` must be `codec`'s id for `plaintext`.
pub(crate) fn encode(codec: &Codec, id: &BlockId, plaintext: &[u8]) -> Result<Vec<u8>> {
    let raw_len = u32::try_from(plaintext.len()).map_err(|_| StoreError::Invalid("block larger than 4 GiB".into()))?;
    let compressed = compress_if_smaller(plaintext);
    let mut flags = 0u8;
    let mut aead = AEAD_NONE;
    if compressed.is_some() {
        flags |= FLAG_ZSTD;
    }
    if codec.is_encrypted() {
        flags |= FLAG_ENCRYPTED;
        aead = AEAD_AES256GCM;
    }
    let payload_len =
        compressed.as_ref().map_or(plaintext.len(), Vec::len) + if codec.is_encrypted() { GCM_TAG_LEN } else { 0 };
    let stored_len = u32::try_from(payload_len).map_err(|_| StoreError::Invalid("chunk larger than 4 GiB".into()))?;

    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(MAGIC);
    header[4..6].copy_from_slice(&CHUNK_VERSION.to_le_bytes());
    header[6] = flags;
    header[7] = aead;
    header[8..12].copy_from_slice(&raw_len.to_le_bytes());
    header[12..16].copy_from_slice(&stored_len.to_le_bytes());

    let mut out;
    match codec.keys() {
        None => {
            out = Vec::with_capacity(HEADER_LEN + payload_len);
            out.extend_from_slice(&header);
            out.extend_from_slice(compressed.as_deref().unwrap_or(plaintext));
        }
        Some(keys) => {
            let mut buf = compressed.unwrap_or_else(|| plaintext.to_vec());
            buf.reserve(GCM_TAG_LEN);
            let aad = aad(&header, id);
            let nonce = crypto::seal(keys, &aad, &mut buf)?;
            out = Vec::with_capacity(HEADER_LEN + GCM_NONCE_LEN + buf.len());
            out.extend_from_slice(&header);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&buf);
        }
    }
    let crc = crc_of(&out);
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn aad(header: &[u8], id: &BlockId) -> [u8; AAD_HEADER + 32] {
    let mut a = [0u8; AAD_HEADER + 32];
    a[..AAD_HEADER].copy_from_slice(&header[..AAD_HEADER]);
    a[AAD_HEADER..].copy_from_slice(id.as_bytes());
    a
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
