//! Keys: the per-lineage data key, the keys derived from it, and KMS envelope primitives.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};
use aws_lc_rs::{digest, hkdf, hmac};
use rand::RngCore;
use zeroize::Zeroize;

use crate::error::{Result, StoreError};
use crate::id::{BlockId, is_all_zero};

/// HKDF salt for every derivation in store format 1. The data key is random per lineage, so a
/// fixed salt loses nothing; the version in it lets a future format derive different keys.
const HKDF_SALT: &[u8] = b"blocksnap/v1";
const INFO_ENC: &[u8] = b"chunk-enc";
const INFO_ID: &[u8] = b"chunk-id";

/// Version byte of the wrapped-key format produced by [`wrap_key`].
const WRAP_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Length of a wrapped key: version + nonce + key + tag.
pub const WRAPPED_KEY_LEN: usize = 1 + NONCE_LEN + 32 + TAG_LEN;

/// A lineage's random 256-bit data key. Zeroed on drop; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; 32]);

impl DataKey {
    /// A fresh random key (thread-local CSPRNG seeded from the OS).
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        DataKey(k)
    }

    /// Wrap existing key bytes (e.g. after KMS decryption).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(bytes)
    }

    /// The raw key; handle with care.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// HKDF output length helper.
struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn derive(dk: &DataKey, info: &[u8]) -> Result<[u8; 32]> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(dk.as_bytes());
    let info = [info];
    let okm = prk.expand(&info, Len(32)).map_err(|_| StoreError::Crypto("hkdf expand"))?;
    let mut out = [0u8; 32];
    okm.fill(&mut out).map_err(|_| StoreError::Crypto("hkdf fill"))?;
    Ok(out)
}

pub(crate) struct Keys {
    pub(crate) enc: RandomizedNonceKey,
    pub(crate) id: hmac::Key,
}

/// How a lineage's blocks are identified and stored: plain (SHA-256 ids, no encryption) or
/// encrypted under a data key (HMAC ids, AES-256-GCM). Derived keys are computed once; cloning
/// is cheap.
#[derive(Clone)]
pub struct Codec {
    keys: Option<Arc<Keys>>,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.keys.is_some() { "Codec::Encrypted(..)" } else { "Codec::Plain" })
    }
}

impl Codec {
    /// Unencrypted lineage: ids are SHA-256 of the plaintext.
    pub fn plain() -> Self {
        Codec { keys: None }
    }

    /// Encrypted lineage under `data_key` (derives the chunk encryption and id keys via HKDF).
    pub fn encrypted(data_key: &DataKey) -> Result<Self> {
        let mut enc = derive(data_key, INFO_ENC)?;
        let mut idk = derive(data_key, INFO_ID)?;
        let key = RandomizedNonceKey::new(&AES_256_GCM, &enc).map_err(|_| StoreError::Crypto("aes-256-gcm key"));
        let id = hmac::Key::new(hmac::HMAC_SHA256, &idk);
        enc.zeroize();
        idk.zeroize();
        Ok(Codec { keys: Some(Arc::new(Keys { enc: key?, id })) })
    }

    /// True for encrypted lineages.
    pub fn is_encrypted(&self) -> bool {
        self.keys.is_some()
    }

    pub(crate) fn keys(&self) -> Option<&Keys> {
        self.keys.as_deref()
    }

    /// The block id of `plaintext` under this codec ([`BlockId::ZERO`] for an all-zero block).
    /// CPU work (~0.25 ms per 512 KiB): call from a blocking context when throughput matters.
    pub fn block_id(&self, plaintext: &[u8]) -> BlockId {
        if is_all_zero(plaintext) {
            return BlockId::ZERO;
        }
        self.content_id(plaintext)
    }

    /// Hash or HMAC without the zero check.
    pub(crate) fn content_id(&self, plaintext: &[u8]) -> BlockId {
        let mut out = [0u8; 32];
        match &self.keys {
            None => out.copy_from_slice(digest::digest(&digest::SHA256, plaintext).as_ref()),
            Some(k) => out.copy_from_slice(hmac::sign(&k.id, plaintext).as_ref()),
        }
        BlockId(out)
    }
}

/// Wrap (encrypt) a data key under a 256-bit master key with AES-256-GCM, binding `aad` (e.g.
/// key id ‖ lineage id). Output: `version u8 = 1 | nonce [12] | ciphertext [32] | tag [16]`.
pub fn wrap_key(master: &[u8; 32], data_key: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
    let key = RandomizedNonceKey::new(&AES_256_GCM, master).map_err(|_| StoreError::Crypto("aes-256-gcm key"))?;
    let mut buf = data_key.as_bytes().to_vec();
    let nonce =
        key.seal_in_place_append_tag(Aad::from(aad), &mut buf).map_err(|_| StoreError::Crypto("aes-256-gcm seal"))?;
    let mut out = Vec::with_capacity(WRAPPED_KEY_LEN);
    out.push(WRAP_VERSION);
    out.extend_from_slice(nonce.as_ref());
    out.extend_from_slice(&buf);
    buf.zeroize();
    Ok(out)
}

/// Reverse of [`wrap_key`]. Fails on a wrong master key, wrong AAD, or damaged bytes.
pub fn unwrap_key(master: &[u8; 32], wrapped: &[u8], aad: &[u8]) -> Result<DataKey> {
    if wrapped.len() != WRAPPED_KEY_LEN {
        return Err(StoreError::Unwrap("wrong length"));
    }
    if wrapped[0] != WRAP_VERSION {
        return Err(StoreError::Unwrap("unknown wrapped-key version"));
    }
    let key = RandomizedNonceKey::new(&AES_256_GCM, master).map_err(|_| StoreError::Crypto("aes-256-gcm key"))?;
    let nonce =
        Nonce::try_assume_unique_for_key(&wrapped[1..1 + NONCE_LEN]).map_err(|_| StoreError::Unwrap("bad nonce"))?;
    let mut buf = wrapped[1 + NONCE_LEN..].to_vec();
    let result = match key.open_in_place(nonce, Aad::from(aad), &mut buf) {
        Ok(plain) => <[u8; 32]>::try_from(&plain[..]).map(DataKey).map_err(|_| StoreError::Unwrap("wrong length")),
        Err(_) => Err(StoreError::Unwrap("authentication failed")),
    };
    buf.zeroize();
    result
}

/// AES-256-GCM tag length, exposed for chunk-format arithmetic.
pub(crate) const GCM_TAG_LEN: usize = TAG_LEN;
pub(crate) const GCM_NONCE_LEN: usize = NONCE_LEN;

/// Encrypts `buf` in place; returns the nonce and the 16-byte tag (for callers that lay the
/// object out themselves, without a second buffer).
pub(crate) fn seal_detached(keys: &Keys, aad: &[u8], buf: &mut [u8]) -> Result<([u8; NONCE_LEN], [u8; TAG_LEN])> {
    let (nonce, tag) =
        keys.enc.seal_in_place_separate_tag(Aad::from(aad), buf).map_err(|_| StoreError::Crypto("aes-256-gcm seal"))?;
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(nonce.as_ref());
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(tag.as_ref());
    Ok((n, t))
}

/// Decrypts `buf` (ciphertext ‖ tag) in place; returns the plaintext length.
pub(crate) fn open(keys: &Keys, nonce: &[u8], aad: &[u8], buf: &mut [u8]) -> std::result::Result<usize, ()> {
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| ())?;
    keys.enc.open_in_place(nonce, Aad::from(aad), buf).map(|p| p.len()).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap() {
        let master = [7u8; 32];
        let dk = DataKey::generate();
        let w = wrap_key(&master, &dk, b"key-1").unwrap();
        assert_eq!(w.len(), WRAPPED_KEY_LEN);
        assert_eq!(unwrap_key(&master, &w, b"key-1").unwrap(), dk);
        assert!(unwrap_key(&master, &w, b"key-2").is_err());
        assert!(unwrap_key(&[8u8; 32], &w, b"key-1").is_err());
        let mut bad = w.clone();
        bad[20] ^= 1;
        assert!(unwrap_key(&master, &bad, b"key-1").is_err());
        // Random nonce: wrapping twice differs.
        assert_ne!(wrap_key(&master, &dk, b"key-1").unwrap(), w);
    }

    #[test]
    fn ids_differ_per_key_and_codec() {
        let data = vec![5u8; 4096];
        let plain = Codec::plain();
        let a = Codec::encrypted(&DataKey::generate()).unwrap();
        let b = Codec::encrypted(&DataKey::generate()).unwrap();
        let ids = [plain.block_id(&data), a.block_id(&data), b.block_id(&data)];
        assert_ne!(ids[0], ids[1]);
        assert_ne!(ids[1], ids[2]);
        assert_eq!(a.block_id(&data), ids[1]);
        assert_eq!(plain.block_id(&[0u8; 64]), BlockId::ZERO);
        assert_eq!(a.block_id(&[0u8; 64]), BlockId::ZERO);
    }
}
