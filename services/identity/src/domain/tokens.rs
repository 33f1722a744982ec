//! Opaque random tokens (refresh tokens, reset tokens, challenge tokens, device secrets,
//! recovery codes): generated from the OS RNG, stored only as SHA-256 hashes, compared in
//! constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use data_encoding::BASE32_NOPAD;
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 32;
/// Longest token a request may carry.
pub const MAX_TOKEN_LEN: usize = 512;
/// Recovery codes issued when TOTP is confirmed.
pub const RECOVERY_CODE_COUNT: usize = 10;

/// A new opaque token: 32 random bytes, base64url without padding (43 characters).
pub fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of a token, the only form stored.
pub fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Constant-time equality of two byte strings (hashes).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// Whether `token` could be one of ours: 1..=512 base64url characters.
pub fn is_token_format(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A new recovery code: 10 base32 characters (50 bits) shown as `xxxxx-xxxxx`, lower case.
pub fn new_recovery_code() -> String {
    let mut bytes = [0u8; 7];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    // 7 bytes give 12 base32 characters; the first 10 carry 50 random bits.
    let s = BASE32_NOPAD.encode(&bytes).to_lowercase();
    format!("{}-{}", &s[..5], &s[5..10])
}

/// The canonical form of a typed recovery code (case, dashes and spaces ignored); `None` when it
/// cannot be one.
pub fn normalize_recovery_code(code: &str) -> Option<String> {
    let clean: String = code
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let ok = clean.len() == 10
        && clean
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
    ok.then_some(clean)
}

/// Hash of a recovery code, over its canonical form.
pub fn hash_recovery_code(code: &str) -> Option<Vec<u8>> {
    normalize_recovery_code(code).map(|c| hash(&c))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(is_token_format(&a));
        assert!(!is_token_format(""));
        assert!(!is_token_format("has space"));
        assert!(!is_token_format(&"a".repeat(513)));
        assert_eq!(hash(&a).len(), 32);
        assert!(ct_eq(&hash(&a), &hash(&a)));
        assert!(!ct_eq(&hash(&a), &hash(&b)));
    }

    #[test]
    fn recovery_codes() {
        let c = new_recovery_code();
        assert_eq!(c.len(), 11);
        assert_eq!(
            normalize_recovery_code(&c.to_uppercase()).unwrap(),
            c.replace('-', "")
        );
        assert_eq!(
            hash_recovery_code(&c),
            hash_recovery_code(&c.replace('-', " "))
        );
        assert!(normalize_recovery_code("short").is_none());
        assert!(normalize_recovery_code("0000000000").is_none());
    }
}
