//! Resource ids shaped like AWS's: a prefix and 17 lowercase hex digits; accounts are 12 digits.

use rand::Rng;

pub fn new_id(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut s = String::with_capacity(prefix.len() + 18);
    s.push_str(prefix);
    s.push('-');
    for _ in 0..17 {
        let d: u8 = rng.random_range(0..16);
        s.push(char::from_digit(d as u32, 16).unwrap_or('0'));
    }
    s
}

pub fn new_account_id() -> String {
    let mut rng = rand::rng();
    // First digit non-zero so the id never looks like a truncated number.
    let mut s = rng.random_range(1..10u8).to_string();
    for _ in 0..11 {
        s.push(char::from(b'0' + rng.random_range(0..10u8)));
    }
    s
}

/// An access key id like AWS's long-term keys: `AKIA` + 16 uppercase base32 characters.
pub fn new_access_key_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::rng();
    let mut s = String::from("AKIA");
    for _ in 0..16 {
        s.push(char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]));
    }
    s
}

pub fn new_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    (0..40).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

pub fn new_uuid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let h = hex::encode(b);
    format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

/// Is `s` a well-formed id with this prefix (8 or 17 hex digits, as AWS accepts)?
pub fn is_valid(prefix: &str, s: &str) -> bool {
    let Some(rest) = s.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    (rest.len() == 17 || rest.len() == 8) && rest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn shapes() {
        let v = new_id("vol");
        assert!(is_valid("vol", &v), "{v}");
        assert!(!is_valid("vol", "vol-XYZ"));
        assert!(!is_valid("i", &v));
        assert_eq!(new_account_id().len(), 12);
        assert_eq!(new_access_key_id().len(), 20);
        assert_eq!(new_uuid().len(), 36);
    }
}
