use std::fmt;
use std::str::FromStr;

use crate::error::StoreError;

macro_rules! digest_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Reserved: nothing was ever written here. Never stored.
            pub const UNWRITTEN: $name = $name([0; 32]);
            /// Reserved: written, all zeros. Never stored.
            pub const ZERO: $name = {
                let mut b = [0u8; 32];
                b[31] = 1;
                $name(b)
            };

            /// True for the two reserved ids, which have no object.
            pub fn is_reserved(&self) -> bool {
                *self == Self::UNWRITTEN || *self == Self::ZERO
            }

            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lowercase hex (64 characters).
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($kind, "({})"), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut b = [0u8; 32];
                hex::decode_to_slice(s, &mut b).map_err(|e| {
                    StoreError::Invalid(format!(concat!("bad ", $kind, " hex {:?}: {}"), s, e))
                })?;
                Ok($name(b))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

digest_id!(
    /// Identifies one 512 KiB block: SHA-256 (plain) or HMAC-SHA256 (encrypted lineage) of the
    /// plaintext. Displays and parses as 64 lowercase hex characters.
    BlockId,
    "BlockId"
);

digest_id!(
    /// Identifies a segment object: SHA-256 of its stored bytes.
    SegmentId,
    "SegmentId"
);

impl BlockId {
    pub(crate) fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(b).ok().map(BlockId)
    }
}

/// True when every byte is zero. Word-at-a-time so it runs near memory speed.
pub(crate) fn is_all_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(8);
    let tail_zero = words.remainder().iter().all(|b| *b == 0);
    tail_zero
        && words.all(|w| {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            u64::from_ne_bytes(a) == 0
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_reserved() {
        let id = BlockId([0xab; 32]);
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<BlockId>().ok(), Some(id));
        assert!(BlockId::ZERO.is_reserved() && BlockId::UNWRITTEN.is_reserved());
        assert!(!id.is_reserved());
        assert_eq!(BlockId::ZERO.to_string(), "0000000000000000000000000000000000000000000000000000000000000001");
        assert!("zz".parse::<BlockId>().is_err());
    }

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 1001];
        assert!(is_all_zero(&v));
        v[1000] = 1;
        assert!(!is_all_zero(&v));
        v[1000] = 0;
        v[3] = 1;
        assert!(!is_all_zero(&v));
    }
}
