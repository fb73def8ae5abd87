//! Page tokens: the one codec of every listing's continuation token. A token is a protocol's
//! prefix (which also versions it) and the hex of the key the previous page ended at; listings are
//! in key order, so the next page starts after that key. Tokens carry no secret and grant nothing:
//! the listing is filtered by the caller as always.
//!
//! | prefix  | listing                                   | key                              | made in          |
//! |---------|-------------------------------------------|----------------------------------|------------------|
//! | `bsnt1` | EC2 Describe*, EBS direct block listings  | last id (block listings: index)  | `describe.rs`    |
//! | `lsnt1` | Lightsail Get*                            | last name (operations: row key)  | `api/lightsail`  |
//! | `bskm1` | KMS ListKeys / ListAliases markers        | last key id / alias name         | `api/kms`        |
//! | `rbin1` | Recycle Bin ListRules                     | last rule identifier             | `recycle_bin.rs` |

/// EC2 (and the EBS direct APIs') `NextToken`.
pub const EC2: &str = "bsnt1";
/// Lightsail's `nextPageToken`.
pub const LIGHTSAIL: &str = "lsnt1";
/// KMS's `NextMarker`.
pub const KMS: &str = "bskm1";
/// The Recycle Bin's `NextToken`.
pub const RBIN: &str = "rbin1";

/// The token that continues after `key`.
pub fn encode(prefix: &str, key: &str) -> String {
    format!("{prefix}{}", hex::encode(key))
}

/// The key a token of this prefix continues after; `None` when it is not such a token.
pub fn decode(prefix: &str, token: &str) -> Option<String> {
    token.strip_prefix(prefix).and_then(|h| hex::decode(h).ok()).and_then(|b| String::from_utf8(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for p in [EC2, LIGHTSAIL, KMS, RBIN] {
            assert_eq!(decode(p, &encode(p, "Disk-1")).as_deref(), Some("Disk-1"));
            assert_eq!(decode(p, "nope"), None);
        }
        assert_eq!(encode(EC2, "vol-1"), "bsnt1766f6c2d31");
        assert_eq!(decode(LIGHTSAIL, &encode(EC2, "x")), None);
        assert_eq!(decode(KMS, "bskm1zz"), None);
    }
}
