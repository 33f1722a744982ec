//! TOTP (RFC 6238): HMAC-SHA1, 30-second steps, 6 digits, a window of one step either side,
//! and a replay guard (a step once accepted, or any earlier one, is never accepted again).

use data_encoding::BASE32_NOPAD;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha1::Sha1;
use subtle::ConstantTimeEq as _;

/// Length of a time step in seconds.
pub const STEP_SECS: i64 = 30;
/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Steps accepted on either side of the current one (clock drift).
pub const WINDOW: i64 = 1;
/// Bytes of a generated secret (160 bits, as RFC 4226 recommends).
pub const SECRET_BYTES: usize = 20;

/// A fresh random secret.
pub fn generate_secret() -> Vec<u8> {
    let mut secret = vec![0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    secret
}

/// Base32 (RFC 4648, no padding), the form authenticator apps take.
pub fn encode_secret(secret: &[u8]) -> String {
    BASE32_NOPAD.encode(secret)
}

/// Parses a base32 secret (case-insensitive, padding and spaces ignored).
pub fn decode_secret(text: &str) -> Option<Vec<u8>> {
    let clean: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    BASE32_NOPAD.decode(clean.as_bytes()).ok()
}

/// `otpauth://` URI for a QR code; the label is the user id (no PHI in authenticator backups).
pub fn otpauth_uri(secret: &[u8], account_label: &str) -> String {
    format!(
        "otpauth://totp/carehub:{account_label}?secret={}&issuer=carehub&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        encode_secret(secret)
    )
}

/// HOTP (RFC 4226) value of `counter` with `digits` digits, zero-padded.
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> String {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        // HMAC takes keys of any length; unreachable in practice.
        return String::new();
    };
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[digest.len() - 1] & 0x0f);
    let binary = (u32::from(digest[offset] & 0x7f) << 24)
        | (u32::from(digest[offset + 1]) << 16)
        | (u32::from(digest[offset + 2]) << 8)
        | u32::from(digest[offset + 3]);
    let modulus = 10u64.pow(digits);
    format!(
        "{:0width$}",
        u64::from(binary) % modulus,
        width = digits as usize
    )
}

/// The time step of a unix time.
pub fn step_of(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(STEP_SECS)
}

/// The 6-digit code of `unix_secs`.
pub fn code_at(secret: &[u8], unix_secs: i64) -> String {
    hotp(
        secret,
        u64::try_from(step_of(unix_secs)).unwrap_or(0),
        DIGITS,
    )
}

/// Whether `code` looks like a TOTP code (exactly 6 ASCII digits).
pub fn is_code_format(code: &str) -> bool {
    code.len() == DIGITS as usize && code.bytes().all(|b| b.is_ascii_digit())
}

/// Checks `code` at `unix_secs` within the window. Returns the matched step, which must then be
/// stored as the new `last_step`; steps at or before `last_step` are refused (replay guard).
pub fn verify(secret: &[u8], code: &str, unix_secs: i64, last_step: Option<i64>) -> Option<i64> {
    if !is_code_format(code) {
        return None;
    }
    let now = step_of(unix_secs);
    let mut matched = None;
    // Every candidate is computed and compared in constant time, whatever matches.
    for step in (now - WINDOW)..=(now + WINDOW) {
        let Ok(counter) = u64::try_from(step) else {
            continue;
        };
        let candidate = hotp(secret, counter, DIGITS);
        let fresh = last_step.is_none_or(|last| step > last);
        if bool::from(candidate.as_bytes().ct_eq(code.as_bytes())) && fresh && matched.is_none() {
            matched = Some(step);
        }
    }
    matched
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// RFC 6238 appendix B, SHA-1 (8 digits); the 6-digit code is the last six digits.
    const VECTORS: [(i64, &str); 6] = [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ];
    const SEED: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc6238_vectors() {
        for (t, expected) in VECTORS {
            let counter = u64::try_from(step_of(t)).unwrap();
            assert_eq!(hotp(SEED, counter, 8), expected, "t={t}");
            assert_eq!(code_at(SEED, t), expected[2..], "t={t}");
        }
    }

    #[test]
    fn rfc4226_vectors() {
        let expected = ["755224", "287082", "359152", "969429", "338314"];
        for (i, e) in expected.iter().enumerate() {
            assert_eq!(hotp(SEED, i as u64, 6), *e);
        }
    }

    #[test]
    fn window_and_replay() {
        let t = 1_234_567_890;
        let code = code_at(SEED, t);
        let step = step_of(t);
        assert_eq!(verify(SEED, &code, t, None), Some(step));
        // One step of drift either way is fine, two is not.
        assert_eq!(verify(SEED, &code, t + STEP_SECS, None), Some(step));
        assert_eq!(verify(SEED, &code, t - STEP_SECS, None), Some(step));
        assert_eq!(verify(SEED, &code, t + 2 * STEP_SECS, None), None);
        // Replay of the same step (or an older one) is refused.
        assert_eq!(verify(SEED, &code, t, Some(step)), None);
        assert_eq!(verify(SEED, &code, t, Some(step - 1)), Some(step));
        assert_eq!(verify(SEED, "12345", t, None), None);
        assert_eq!(verify(SEED, "abcdef", t, None), None);
    }

    #[test]
    fn base32_round_trip_and_uri() {
        let s = generate_secret();
        assert_eq!(s.len(), SECRET_BYTES);
        let b32 = encode_secret(&s);
        assert!(!b32.contains('='));
        assert_eq!(decode_secret(&b32.to_lowercase()).unwrap(), s);
        assert_eq!(encode_secret(SEED), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let uri = otpauth_uri(SEED, "0190-user");
        assert!(uri.starts_with("otpauth://totp/carehub:0190-user?secret=GEZDGNBV"));
        assert!(uri.contains("issuer=carehub"));
        assert!(decode_secret("not base32!").is_none());
    }
}
