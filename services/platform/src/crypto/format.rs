//! Byte layouts: the field ciphertext, the wrapped data key, and the associated data that binds
//! each to where it belongs.
//!
//! Field ciphertext (format 1), stored as `bytea`:
//!
//! ```text
//! [0]      format version = 1
//! [1..5]   data-key version, u32 big-endian (the key is the subject's; the subject is bound by AAD)
//! [5..17]  96-bit random nonce
//! [17..]   AES-256-GCM ciphertext, then the 16-byte tag
//! ```
//!
//! Associated data of a field: `"carehub/field/v1"`, then service, table, column, row id and
//! subject, each length-prefixed (u32 BE) so that no two bindings can run together, then the
//! 5 header bytes (so the format and key version cannot be swapped either).
//!
//! Wrapped data key: `nonce(12) || AES-256-GCM(KEK, key)(32) || tag(16)`, associated data
//! `"carehub/data-key/v1"`, service, subject (length-prefixed), data-key version (u32 BE).

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use rand::RngCore;
use zeroize::Zeroizing;

pub const FORMAT_V1: u8 = 1;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
pub const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
pub const WRAPPED_KEY_LEN: usize = NONCE_LEN + 32 + TAG_LEN;

const FIELD_DOMAIN: &[u8] = b"carehub/field/v1";
const DATA_KEY_DOMAIN: &[u8] = b"carehub/data-key/v1";

/// Where a field value lives. Every part is bound into the ciphertext: decrypting it anywhere
/// else fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub table: &'a str,
    pub column: &'a str,
    /// The row's primary key (as text); known before the insert, so ids are made by the app.
    pub row: &'a str,
    /// Whose data this is (the patient's user id): selects the data key.
    pub subject: &'a str,
}

impl<'a> Field<'a> {
    pub fn new(table: &'a str, column: &'a str, row: &'a str, subject: &'a str) -> Self {
        Field {
            table,
            column,
            row,
            subject,
        }
    }
}

/// The parsed fixed-size front of a field ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub format: u8,
    pub key_version: u32,
}

pub(crate) enum ParseError {
    TooShort,
    UnknownFormat,
}

impl ParseError {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ParseError::TooShort => "too short",
            ParseError::UnknownFormat => "unknown format version",
        }
    }
}

/// Reads the header of a field ciphertext without decrypting it.
pub fn header(ciphertext: &[u8]) -> Option<Header> {
    parse_header(ciphertext).ok()
}

pub(crate) fn parse_header(ciphertext: &[u8]) -> Result<Header, ParseError> {
    if ciphertext.len() < HEADER_LEN + TAG_LEN {
        return Err(ParseError::TooShort);
    }
    if ciphertext[0] != FORMAT_V1 {
        return Err(ParseError::UnknownFormat);
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&ciphertext[1..5]);
    Ok(Header {
        format: FORMAT_V1,
        key_version: u32::from_be_bytes(version),
    })
}

fn push_part(aad: &mut Vec<u8>, part: &[u8]) {
    // Identifiers are far below 4 GiB; saturating keeps this total without a panic path.
    let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
    aad.extend_from_slice(&len.to_be_bytes());
    aad.extend_from_slice(part);
}

fn field_aad(service: &str, field: &Field<'_>, header: &[u8]) -> Vec<u8> {
    let parts = [service, field.table, field.column, field.row, field.subject];
    let mut aad = Vec::with_capacity(
        FIELD_DOMAIN.len() + parts.iter().map(|p| p.len() + 4).sum::<usize>() + header.len(),
    );
    aad.extend_from_slice(FIELD_DOMAIN);
    for part in parts {
        push_part(&mut aad, part.as_bytes());
    }
    aad.extend_from_slice(header);
    aad
}

fn data_key_aad(service: &str, subject: &str, version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DATA_KEY_DOMAIN.len() + service.len() + subject.len() + 12);
    aad.extend_from_slice(DATA_KEY_DOMAIN);
    push_part(&mut aad, service.as_bytes());
    push_part(&mut aad, subject.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    // ChaCha12 reseeded from the OS: a CSPRNG without a syscall per nonce.
    rand::thread_rng().fill_bytes(&mut nonce);
    nonce
}

/// Encrypts a field value under data key `key_version` of `field.subject`.
pub(crate) fn seal_field(
    cipher: &Aes256Gcm,
    service: &str,
    field: &Field<'_>,
    key_version: u32,
    plaintext: &[u8],
) -> Result<Vec<u8>, aes_gcm::Error> {
    let nonce = random_nonce();
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.push(FORMAT_V1);
    out.extend_from_slice(&key_version.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let aad = field_aad(service, field, &out[..5]);
    let tag = cipher.encrypt_in_place_detached(
        Nonce::from_slice(&nonce),
        &aad,
        &mut out[HEADER_LEN..],
    )?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Decrypts a field ciphertext whose header was parsed already.
pub(crate) fn open_field(
    cipher: &Aes256Gcm,
    service: &str,
    field: &Field<'_>,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, aes_gcm::Error> {
    let body_end = ciphertext.len() - TAG_LEN;
    let aad = field_aad(service, field, &ciphertext[..5]);
    let mut plaintext = Zeroizing::new(ciphertext[HEADER_LEN..body_end].to_vec());
    cipher.decrypt_in_place_detached(
        Nonce::from_slice(&ciphertext[5..HEADER_LEN]),
        &aad,
        plaintext.as_mut_slice(),
        Tag::from_slice(&ciphertext[body_end..]),
    )?;
    Ok(plaintext)
}

/// Wraps a fresh data key under a KEK.
pub(crate) fn wrap_key(
    kek: &Aes256Gcm,
    service: &str,
    subject: &str,
    version: u32,
    key: &[u8; 32],
) -> Result<Vec<u8>, aes_gcm::Error> {
    let nonce = random_nonce();
    let mut out = Vec::with_capacity(WRAPPED_KEY_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(key);
    let aad = data_key_aad(service, subject, version);
    let tag =
        kek.encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut out[NONCE_LEN..])?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Unwraps a stored data key; `None` when the KEK or the binding is wrong.
pub(crate) fn unwrap_key(
    kek: &Aes256Gcm,
    service: &str,
    subject: &str,
    version: u32,
    wrapped: &[u8],
) -> Option<Zeroizing<[u8; 32]>> {
    if wrapped.len() != WRAPPED_KEY_LEN {
        return None;
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&wrapped[NONCE_LEN..NONCE_LEN + 32]);
    let aad = data_key_aad(service, subject, version);
    kek.decrypt_in_place_detached(
        Nonce::from_slice(&wrapped[..NONCE_LEN]),
        &aad,
        key.as_mut_slice(),
        Tag::from_slice(&wrapped[NONCE_LEN + 32..]),
    )
    .ok()?;
    Some(key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use aes_gcm::KeyInit;

    fn cipher() -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&[7u8; 32]).unwrap()
    }

    #[test]
    fn bindings_cannot_run_together() {
        let a = Field::new("ab", "c", "1", "s");
        let b = Field::new("a", "bc", "1", "s");
        assert_ne!(field_aad("svc", &a, &[1]), field_aad("svc", &b, &[1]));
    }

    #[test]
    fn field_round_trips_and_header_is_bound() {
        let f = Field::new("users", "email", "r1", "u1");
        let mut ct = seal_field(&cipher(), "identity", &f, 3, b"hello").unwrap();
        assert_eq!(
            header(&ct),
            Some(Header {
                format: 1,
                key_version: 3
            })
        );
        assert_eq!(
            open_field(&cipher(), "identity", &f, &ct)
                .unwrap()
                .as_slice(),
            b"hello"
        );
        ct[4] ^= 1;
        assert!(open_field(&cipher(), "identity", &f, &ct).is_err());
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        assert_eq!((HEADER_LEN, TAG_LEN, WRAPPED_KEY_LEN), (17, 16, 60));
        let f = Field::new("t", "c", "r", "s");
        let ct = seal_field(&cipher(), "svc", &f, 0x0102_0304, b"abc").unwrap();
        assert_eq!(ct.len(), HEADER_LEN + 3 + TAG_LEN);
        assert_eq!(&ct[..5], &[1, 1, 2, 3, 4]);
        // The shortest ciphertext (empty plaintext) parses and opens; one byte less does not parse.
        let empty = seal_field(&cipher(), "svc", &f, 9, b"").unwrap();
        assert_eq!(empty.len(), HEADER_LEN + TAG_LEN);
        assert_eq!(
            header(&empty),
            Some(Header {
                format: FORMAT_V1,
                key_version: 9
            })
        );
        assert!(open_field(&cipher(), "svc", &f, &empty).unwrap().is_empty());
        assert!(matches!(
            parse_header(&empty[..HEADER_LEN + TAG_LEN - 1]),
            Err(ParseError::TooShort)
        ));
        assert_eq!(header(&empty[..HEADER_LEN + TAG_LEN - 1]), None);
        let mut other = ct.clone();
        other[0] = 2;
        assert!(matches!(
            parse_header(&other),
            Err(ParseError::UnknownFormat)
        ));
        assert_eq!(header(&other), None);
        assert_eq!(ParseError::TooShort.reason(), "too short");
        assert_eq!(ParseError::UnknownFormat.reason(), "unknown format version");
        // Tampering with the nonce or the tag breaks it too.
        for i in [5, HEADER_LEN - 1, ct.len() - 1] {
            let mut bad = ct.clone();
            bad[i] ^= 0x80;
            assert!(open_field(&cipher(), "svc", &f, &bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn associated_data_is_length_prefixed_parts() {
        let aad = field_aad("svc", &Field::new("t", "c", "r", "s"), &[1, 0, 0, 0, 2]);
        let mut want = b"carehub/field/v1".to_vec();
        for part in ["svc", "t", "c", "r", "s"] {
            want.extend_from_slice(&u32::try_from(part.len()).unwrap().to_be_bytes());
            want.extend_from_slice(part.as_bytes());
        }
        want.extend_from_slice(&[1, 0, 0, 0, 2]);
        assert_eq!(aad, want);
        let mut want = b"carehub/data-key/v1".to_vec();
        want.extend_from_slice(&[0, 0, 0, 3]);
        want.extend_from_slice(b"svc");
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(b"s");
        want.extend_from_slice(&7u32.to_be_bytes());
        assert_eq!(data_key_aad("svc", "s", 7), want);
        // Empty parts still take their length prefix.
        let f = Field::new("", "", "", "");
        let ct = seal_field(&cipher(), "", &f, 1, b"x").unwrap();
        assert_eq!(open_field(&cipher(), "", &f, &ct).unwrap().as_slice(), b"x");
    }

    #[test]
    fn every_seal_and_wrap_takes_a_fresh_nonce() {
        let f = Field::new("users", "email", "r1", "u1");
        let a = seal_field(&cipher(), "identity", &f, 1, b"same").unwrap();
        let b = seal_field(&cipher(), "identity", &f, 1, b"same").unwrap();
        assert_ne!(a[5..HEADER_LEN], b[5..HEADER_LEN]);
        assert_ne!(a, b);
        for nonce in [&a[5..HEADER_LEN], &b[5..HEADER_LEN]] {
            assert_ne!(nonce, [0u8; NONCE_LEN]);
            assert_ne!(nonce, [1u8; NONCE_LEN]);
        }
        let w1 = wrap_key(&cipher(), "identity", "u1", 1, &[9u8; 32]).unwrap();
        let w2 = wrap_key(&cipher(), "identity", "u1", 1, &[9u8; 32]).unwrap();
        assert_ne!(w1[..NONCE_LEN], w2[..NONCE_LEN]);
        assert_ne!(&w1[..NONCE_LEN], &[0u8; NONCE_LEN]);
    }

    #[test]
    fn wrapped_keys_have_one_length_and_their_tag_is_checked() {
        let w = wrap_key(&cipher(), "identity", "u1", 1, &[9u8; 32]).unwrap();
        assert_eq!(w.len(), WRAPPED_KEY_LEN);
        assert!(unwrap_key(&cipher(), "identity", "u1", 1, &w[..WRAPPED_KEY_LEN - 1]).is_none());
        let mut longer = w.clone();
        longer.push(0);
        assert!(unwrap_key(&cipher(), "identity", "u1", 1, &longer).is_none());
        for i in [
            0,
            NONCE_LEN,
            NONCE_LEN + 31,
            NONCE_LEN + 32,
            WRAPPED_KEY_LEN - 1,
        ] {
            let mut bad = w.clone();
            bad[i] ^= 1;
            assert!(
                unwrap_key(&cipher(), "identity", "u1", 1, &bad).is_none(),
                "byte {i}"
            );
        }
        let other_kek = Aes256Gcm::new_from_slice(&[8u8; 32]).unwrap();
        assert!(unwrap_key(&other_kek, "identity", "u1", 1, &w).is_none());
    }

    #[test]
    fn wrapped_keys_are_bound_to_subject_and_version() {
        let w = wrap_key(&cipher(), "identity", "u1", 1, &[9u8; 32]).unwrap();
        assert_eq!(
            *unwrap_key(&cipher(), "identity", "u1", 1, &w).unwrap(),
            [9u8; 32]
        );
        assert!(unwrap_key(&cipher(), "identity", "u2", 1, &w).is_none());
        assert!(unwrap_key(&cipher(), "identity", "u1", 2, &w).is_none());
        assert!(unwrap_key(&cipher(), "billing", "u1", 1, &w).is_none());
    }
}
