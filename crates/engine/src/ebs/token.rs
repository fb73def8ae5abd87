//! Block tokens: the capability ListSnapshotBlocks / ListChangedBlocks hand out and
//! GetSnapshotBlock takes back. A token names the block it reads (its store id), so reading a
//! block costs no manifest lookup, and is bound by a MAC to one snapshot, one block index and an
//! expiry: a token of another snapshot or index, an expired or altered one, is refused.
//!
//! ```text
//! base64( version u8 = 1 | expiry (Unix seconds) u32 BE | block id [32] | MAC [16] )
//! MAC = HMAC-SHA256(token key, "blocksnap/ebs-block-token/v1" | snapshot id | 0 | index u32 BE
//!                              | expiry | block id)[..16]
//! ```
//! The token key is a random 256-bit secret kept in the catalog (so tokens outlive a restart).

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use blocksnap_store::BlockId;

const VERSION: u8 = 1;
const LEN: usize = 1 + 4 + 32 + 16;
const DOMAIN: &[u8] = b"blocksnap/ebs-block-token/v1";

/// Why a token was refused (the caller words the error).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    Malformed,
    /// Valid MAC, but past its expiry.
    Expired,
    /// Not issued for this snapshot and block index (or altered).
    Foreign,
}

/// The token key, prepared once per listing (its HMAC key schedule is most of a token's cost).
pub(crate) struct TokenKey(hmac::Key);

impl TokenKey {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, key))
    }
}

fn mac(key: &TokenKey, snapshot_id: &str, index: u32, expiry: u32, id: &BlockId) -> [u8; 16] {
    let mut ctx = hmac::Context::with_key(&key.0);
    ctx.update(DOMAIN);
    ctx.update(snapshot_id.as_bytes());
    ctx.update(&[0]);
    ctx.update(&index.to_be_bytes());
    ctx.update(&expiry.to_be_bytes());
    ctx.update(id.as_bytes());
    let tag = ctx.sign();
    let mut out = [0u8; 16];
    out.copy_from_slice(&tag.as_ref()[..16]);
    out
}

pub(crate) fn mint(key: &TokenKey, snapshot_id: &str, index: u32, expiry: u32, id: &BlockId) -> String {
    let mut b = [0u8; LEN];
    b[0] = VERSION;
    b[1..5].copy_from_slice(&expiry.to_be_bytes());
    b[5..37].copy_from_slice(id.as_bytes());
    b[37..].copy_from_slice(&mac(key, snapshot_id, index, expiry, id));
    STANDARD.encode(b)
}

/// The block id a token names, if it is this snapshot's and index's and not expired at `now`.
pub(crate) fn verify(
    key: &TokenKey,
    token: &str,
    snapshot_id: &str,
    index: u32,
    now_secs: u64,
) -> Result<BlockId, TokenError> {
    if token.len() > 256 {
        return Err(TokenError::Malformed);
    }
    let b = STANDARD.decode(token).map_err(|_| TokenError::Malformed)?;
    if b.len() != LEN || b[0] != VERSION {
        return Err(TokenError::Malformed);
    }
    let expiry = u32::from_be_bytes([b[1], b[2], b[3], b[4]]);
    let mut id = [0u8; 32];
    id.copy_from_slice(&b[5..37]);
    let id = BlockId(id);
    let want = mac(key, snapshot_id, index, expiry, &id);
    // Constant time: the MAC is the only secret-dependent comparison here.
    if aws_lc_rs::constant_time::verify_slices_are_equal(&want, &b[37..]).is_err() {
        return Err(TokenError::Foreign);
    }
    if u64::from(expiry) <= now_secs {
        return Err(TokenError::Expired);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_to_snapshot_index_and_expiry() {
        let key = TokenKey::new(&[7u8; 32]);
        let id = BlockId([3u8; 32]);
        let t = mint(&key, "snap-1", 5, 1000, &id);
        assert!(t.len() <= 256 && t.bytes().all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c)));
        assert_eq!(verify(&key, &t, "snap-1", 5, 999), Ok(id));
        assert_eq!(verify(&key, &t, "snap-1", 5, 1000), Err(TokenError::Expired));
        assert_eq!(verify(&key, &t, "snap-2", 5, 999), Err(TokenError::Foreign));
        assert_eq!(verify(&key, &t, "snap-1", 6, 999), Err(TokenError::Foreign));
        assert_eq!(verify(&TokenKey::new(&[8u8; 32]), &t, "snap-1", 5, 999), Err(TokenError::Foreign));
        // A later expiry written into the token breaks its MAC.
        let mut raw = STANDARD.decode(&t).unwrap_or_default();
        raw[4] ^= 0x40;
        assert_eq!(verify(&key, &STANDARD.encode(&raw), "snap-1", 5, 999), Err(TokenError::Foreign));
        assert_eq!(verify(&key, "not base64!", "snap-1", 5, 0), Err(TokenError::Malformed));
        assert_eq!(verify(&key, "AAAA", "snap-1", 5, 0), Err(TokenError::Malformed));
    }
}
