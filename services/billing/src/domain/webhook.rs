//! Stripe's webhook signatures (`Stripe-Signature`).
//!
//! The webhook endpoint is reachable by anyone who can reach the admin port, and the events it
//! receives move payments and refunds along, so an event counts only when it carries an
//! HMAC-SHA256 made with the endpoint's signing secret over `"<t>.<raw body>"`. The signature
//! is computed over the raw bytes as received: re-serialising the JSON first would change them.
//!
//! - The timestamp is part of what is signed, and events older (or newer) than the tolerance
//!   are refused: a captured request cannot be replayed later. Billing also applies each event
//!   id once, so a replay inside the window changes nothing either.
//! - Any `v1` entry may match any configured secret: while a signing secret is rolled, Stripe
//!   signs with both and billing holds both, so no event is lost during the rotation.
//! - Other schemes (`v0`, Stripe's test-mode scheme) are ignored, never trusted.
//! - Signatures are compared in constant time, so the answer's timing tells an attacker nothing
//!   about how close a forgery came.
//! - Errors name the reason only: never the secret, the expected signature or the payload.

use data_encoding::HEXLOWER_PERMISSIVE;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// The HTTP header Stripe puts the signature in.
pub const HEADER_NAME: &str = "stripe-signature";

/// Longest header accepted: a real one (a timestamp and a few signatures) is ~200 bytes, and a
/// cap keeps an attacker from making billing compute an HMAC per entry of a huge header.
pub const MAX_HEADER_LEN: usize = 4096;

type HmacSha256 = Hmac<Sha256>;

/// Why an event's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is missing its timestamp or any `v1` signature, is not `key=value` pairs,
    /// or is too long.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is further from now than the tolerance (a replay, or a skewed clock).
    #[error("signature timestamp outside the tolerance")]
    OutsideTolerance,
    /// No `v1` signature matches any signing secret.
    #[error("no signature matches")]
    NoMatch,
}

impl SignatureError {
    /// A short, fixed reason for logs and HTTP answers.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::Malformed => "malformed_signature_header",
            SignatureError::OutsideTolerance => "timestamp_outside_tolerance",
            SignatureError::NoMatch => "no_matching_signature",
        }
    }
}

/// The parts of a `Stripe-Signature` header billing uses.
struct ParsedHeader {
    timestamp: i64,
    /// Decoded `v1` signatures (entries that are not hex cannot match and are left out).
    signatures: Vec<Vec<u8>>,
}

fn parse(header: &str) -> Result<ParsedHeader, SignatureError> {
    if header.len() > MAX_HEADER_LEN {
        return Err(SignatureError::Malformed);
    }
    let mut timestamp = None;
    let mut v1_entries = 0usize;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let (key, value) = item
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match key {
            "t" => {
                // Two timestamps would leave it open which one was signed.
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed);
                }
                timestamp = Some(parse_timestamp(value)?);
            }
            "v1" => {
                v1_entries += 1;
                if let Ok(bytes) = HEXLOWER_PERMISSIVE.decode(value.as_bytes()) {
                    signatures.push(bytes);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if v1_entries == 0 {
        return Err(SignatureError::Malformed);
    }
    Ok(ParsedHeader {
        timestamp,
        signatures,
    })
}

/// Unix seconds, digits only (no sign, no spaces inside).
fn parse_timestamp(value: &str) -> Result<i64, SignatureError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::Malformed);
    }
    value.parse().map_err(|_| SignatureError::Malformed)
}

/// The MAC over `"<t>.<payload>"` under `secret`, before finalisation.
fn mac(secret: &[u8], timestamp: i64, payload: &[u8]) -> HmacSha256 {
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC takes keys of any length (long ones are hashed first).
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

/// Checks a `Stripe-Signature` header against the raw request body and returns the signed
/// timestamp (Unix seconds).
///
/// Accepts when any `v1` signature matches any of `secrets` and the timestamp is within
/// `tolerance_secs` of `now_unix` in either direction.
pub fn verify(
    header: &str,
    payload: &[u8],
    secrets: &[SecretString],
    now_unix: i64,
    tolerance_secs: u64,
) -> Result<i64, SignatureError> {
    let parsed = parse(header)?;
    let matched = secrets.iter().any(|secret| {
        let expected = mac(secret.expose_secret().as_bytes(), parsed.timestamp, payload);
        parsed
            .signatures
            .iter()
            .any(|signature| expected.clone().verify_slice(signature).is_ok())
    });
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    // Checked after the signature, so that a stale but genuine event is told apart (in logs)
    // from a forgery.
    if now_unix.abs_diff(parsed.timestamp) > tolerance_secs {
        return Err(SignatureError::OutsideTolerance);
    }
    Ok(parsed.timestamp)
}

/// A full `Stripe-Signature` header value (`t=<t>,v1=<hex>`) for `payload` signed with
/// `secret` at `t`: what Stripe sends, for tests and the Stripe test double.
pub fn sign(payload: &[u8], secret: &str, t: i64) -> String {
    let signature = mac(secret.as_bytes(), t, payload).finalize().into_bytes();
    format!(
        "t={t},v1={}",
        data_encoding::HEXLOWER.encode(signature.as_slice())
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const SECRET: &str = "whsec_test";
    const T: i64 = 1_700_000_000;
    const PAYLOAD: &[u8] = b"{}";
    /// `hmac.new(b"whsec_test", b"1700000000.{}", hashlib.sha256).hexdigest()` (Python).
    const KNOWN: &str = "35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91";

    fn secrets(values: &[&str]) -> Vec<SecretString> {
        values.iter().map(|s| SecretString::from(*s)).collect()
    }

    #[test]
    fn known_vector() {
        assert_eq!(sign(PAYLOAD, SECRET, T), format!("t={T},v1={KNOWN}"));
        let header = format!("t={T},v1={KNOWN}");
        assert_eq!(verify(&header, PAYLOAD, &secrets(&[SECRET]), T, 300), Ok(T));
    }

    #[test]
    fn round_trip() {
        let payload = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
        let header = sign(payload, SECRET, T);
        assert_eq!(
            verify(&header, payload, &secrets(&[SECRET]), T + 10, 300),
            Ok(T)
        );
    }

    #[test]
    fn upper_case_hex_is_accepted() {
        let header = format!("t={T},v1={}", KNOWN.to_uppercase());
        assert_eq!(verify(&header, PAYLOAD, &secrets(&[SECRET]), T, 300), Ok(T));
    }

    #[test]
    fn forged_signature_is_refused() {
        let mut forged = KNOWN.to_string();
        forged.replace_range(0..1, "4");
        let header = format!("t={T},v1={forged}");
        assert_eq!(
            verify(&header, PAYLOAD, &secrets(&[SECRET]), T, 300),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn tampered_payload_or_timestamp_is_refused() {
        let header = sign(PAYLOAD, SECRET, T);
        assert_eq!(
            verify(&header, b"{ }", &secrets(&[SECRET]), T, 300),
            Err(SignatureError::NoMatch)
        );
        let moved = format!("t={},v1={KNOWN}", T + 1);
        assert_eq!(
            verify(&moved, PAYLOAD, &secrets(&[SECRET]), T, 300),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn wrong_secret_is_refused() {
        let header = sign(PAYLOAD, SECRET, T);
        assert_eq!(
            verify(&header, PAYLOAD, &secrets(&["whsec_other"]), T, 300),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(&header, PAYLOAD, &[], T, 300),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn truncated_signature_is_refused() {
        let header = format!("t={T},v1={}", &KNOWN[..32]);
        assert_eq!(
            verify(&header, PAYLOAD, &secrets(&[SECRET]), T, 300),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let header = sign(PAYLOAD, SECRET, T);
        let s = secrets(&[SECRET]);
        assert_eq!(verify(&header, PAYLOAD, &s, T + 300, 300), Ok(T));
        assert_eq!(verify(&header, PAYLOAD, &s, T - 300, 300), Ok(T));
        assert_eq!(
            verify(&header, PAYLOAD, &s, T + 301, 300),
            Err(SignatureError::OutsideTolerance)
        );
        assert_eq!(
            verify(&header, PAYLOAD, &s, T - 301, 300),
            Err(SignatureError::OutsideTolerance)
        );
        // Extreme clocks neither overflow nor slip through.
        assert_eq!(
            verify(&header, PAYLOAD, &s, i64::MIN, 300),
            Err(SignatureError::OutsideTolerance)
        );
        assert_eq!(
            verify(&header, PAYLOAD, &s, i64::MAX, 300),
            Err(SignatureError::OutsideTolerance)
        );
        assert_eq!(verify(&header, PAYLOAD, &s, i64::MIN, u64::MAX), Ok(T));
    }

    #[test]
    fn any_configured_secret_may_match() {
        let header = sign(PAYLOAD, "whsec_new", T);
        assert_eq!(
            verify(
                &header,
                PAYLOAD,
                &secrets(&["whsec_old", "whsec_new"]),
                T,
                300
            ),
            Ok(T)
        );
    }

    #[test]
    fn any_v1_entry_may_match() {
        let old = sign(PAYLOAD, "whsec_old", T);
        let new = sign(PAYLOAD, "whsec_new", T);
        let old_sig = old.split_once(",v1=").unwrap().1;
        let new_sig = new.split_once(",v1=").unwrap().1;
        let header = format!("t={T},v1={old_sig},v1={new_sig}");
        assert_eq!(
            verify(&header, PAYLOAD, &secrets(&["whsec_new"]), T, 300),
            Ok(T)
        );
        assert_eq!(
            verify(&header, PAYLOAD, &secrets(&["whsec_old"]), T, 300),
            Ok(T)
        );
        let garbage_first = format!("t={T},v1=zz,v1={KNOWN}");
        assert_eq!(
            verify(&garbage_first, PAYLOAD, &secrets(&[SECRET]), T, 300),
            Ok(T)
        );
    }

    #[test]
    fn spaces_and_other_schemes_are_tolerated() {
        let header = format!("t={T}, v0=deadbeef, v1={KNOWN}, x=1");
        assert_eq!(verify(&header, PAYLOAD, &secrets(&[SECRET]), T, 300), Ok(T));
        let header = format!("v1={KNOWN},t={T}");
        assert_eq!(verify(&header, PAYLOAD, &secrets(&[SECRET]), T, 300), Ok(T));
    }

    #[test]
    fn v0_alone_is_not_trusted() {
        let header = format!("t={T},v0={KNOWN}");
        assert_eq!(
            verify(&header, PAYLOAD, &secrets(&[SECRET]), T, 300),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let s = secrets(&[SECRET]);
        let too_long = format!("t={T},v1={KNOWN},{}", "v0=00,".repeat(1000));
        for header in [
            String::new(),
            "garbage".to_string(),
            format!("v1={KNOWN}"),
            format!("t={T}"),
            format!("t=,v1={KNOWN}"),
            format!("t=-{T},v1={KNOWN}"),
            format!("t=+{T},v1={KNOWN}"),
            format!("t=1.5,v1={KNOWN}"),
            format!("t=99999999999999999999,v1={KNOWN}"),
            format!("t={T},t={T},v1={KNOWN}"),
            format!("t={T},,v1={KNOWN}"),
            format!("t={T};v1={KNOWN}"),
            too_long,
        ] {
            assert_eq!(
                verify(&header, PAYLOAD, &s, T, 300),
                Err(SignatureError::Malformed),
                "{header:.80}"
            );
        }
    }

    #[test]
    fn a_header_of_exactly_the_limit_is_read() {
        let header = format!("t={T},v1={KNOWN}");
        let padded = format!(
            "{header},v0={}",
            "0".repeat(MAX_HEADER_LEN - header.len() - 4)
        );
        assert_eq!(padded.len(), MAX_HEADER_LEN);
        let s = secrets(&[SECRET]);
        assert_eq!(verify(&padded, PAYLOAD, &s, T, 300), Ok(T));
        let over = format!("{padded}0");
        assert_eq!(
            verify(&over, PAYLOAD, &s, T, 300),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn reasons_are_distinct_codes() {
        assert_eq!(
            SignatureError::Malformed.reason(),
            "malformed_signature_header"
        );
        assert_eq!(
            SignatureError::OutsideTolerance.reason(),
            "timestamp_outside_tolerance"
        );
        assert_eq!(SignatureError::NoMatch.reason(), "no_matching_signature");
    }

    #[test]
    fn reasons_hold_no_secret() {
        for error in [
            SignatureError::Malformed,
            SignatureError::OutsideTolerance,
            SignatureError::NoMatch,
        ] {
            assert!(!error.reason().contains("whsec"));
            assert!(!error.to_string().contains("whsec"));
        }
    }
}
