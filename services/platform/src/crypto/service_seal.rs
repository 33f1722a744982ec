//! Sealing of service-owned values (not a patient's fields) under a key derived from the
//! service's KEK: the one helper behind the outbox's payloads, the idempotency store's answers
//! and the audit trail's client fields.
//!
//! The sealing key of a use is HMAC-SHA-256(KEK version v, `label`), so the KEK itself only ever
//! wraps data keys, and two uses with different labels never share a key: a value sealed for
//! one use does not open for another. Rotating the KEK keeps older versions, so values sealed
//! before a rotation still open. Crypto-shredding a subject does not reach these values: keep
//! them only as long as their purpose needs.
//!
//! Derived keys are cached per KEK version (ready AES-GCM key schedule, wiped on drop). Every
//! seal and open still asks the [`KeySource`] for the KEK version first, so a stale source, a
//! destroyed version or a changed key is seen at once: the cache only saves the derivation.
//!
//! Two layouts, both AES-256-GCM with a 96-bit random nonce:
//!
//! - **framed** ([`ServiceSealer::seal_framed`]; the outbox, the audit client fields), the KEK
//!   version travels with the value:
//!
//!   ```text
//!   [0]      format = 1
//!   [1..5]   KEK version, u32 big-endian
//!   [5..17]  96-bit random nonce
//!   [17..]   AES-256-GCM ciphertext, then the 16-byte tag
//!   ```
//!
//!   Associated data: the caller's context (see [`context`]), then the 5 header bytes, so a
//!   value moved elsewhere or relabelled with another version does not open.
//!
//! - **detached** ([`ServiceSealer::seal_detached`]; the idempotency store, which keeps the KEK
//!   version in a column of its own): `nonce ‖ ciphertext ‖ tag`, associated data as given.
//!
//! [`ServiceSealer::mac`] keys an HMAC-SHA-256 with the same derived key (the idempotency
//! store's request fingerprints).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::keys::{KeyError, KeyName, KeySource, SecretKey};

/// The first byte of a framed value.
pub const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const VERSION_HEADER_LEN: usize = 1 + 4;
const HEADER_LEN: usize = VERSION_HEADER_LEN + NONCE_LEN;

/// Why a value could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("service key: {0}")]
    Key(#[from] KeyError),
    #[error("the sealed value is malformed")]
    Malformed,
    #[error("the sealed value does not open (wrong key, or moved from another row)")]
    Authentication,
    #[error("sealing failed")]
    Seal,
}

impl SealError {
    /// True when the keys are only unavailable for now (Vault outage): worth retrying.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SealError::Key(KeyError::Stale { .. } | KeyError::Unavailable(_))
        )
    }
}

/// `domain`, then each part prefixed with its length (u32 big-endian): the associated data a
/// caller binds a value to (for example table and row id). Parts cannot run into each other.
pub fn context(domain: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(domain.len() + parts.iter().map(|p| p.len() + 4).sum::<usize>());
    out.extend_from_slice(domain);
    for part in parts {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The key of one use derived from one KEK version, ready for use.
struct Derived {
    /// The KEK it was derived from: when the source answers another key object for the
    /// version (refreshed, re-created key file), the key is derived afresh.
    kek: Arc<SecretKey>,
    key: Zeroizing<[u8; 32]>,
    cipher: Aes256Gcm,
}

/// Seals and opens values of one use (`label`) under the service's KEK. Clones share the
/// cache of derived keys.
#[derive(Clone)]
pub struct ServiceSealer {
    label: &'static [u8],
    keys: Arc<dyn KeySource>,
    derived: Arc<RwLock<HashMap<u32, Arc<Derived>>>>,
}

impl std::fmt::Debug for ServiceSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceSealer")
            .field("label", &String::from_utf8_lossy(self.label))
            .finish_non_exhaustive()
    }
}

impl ServiceSealer {
    /// `label` names the use and its version (`b"carehub outbox payloads v1"`). A label, once
    /// values are stored under it, never changes: it is part of the key.
    pub fn new(label: &'static [u8], keys: Arc<dyn KeySource>) -> Self {
        ServiceSealer {
            label,
            keys,
            derived: Arc::default(),
        }
    }

    pub fn label(&self) -> &'static [u8] {
        self.label
    }

    /// The KEK version new values are sealed under.
    pub fn current_version(&self) -> Result<u32, SealError> {
        Ok(self.keys.current(KeyName::Kek)?.0)
    }

    /// The derived key of `version`: asks the source for the KEK (its checks apply), derives
    /// only on a cache miss.
    fn derived(&self, version: u32) -> Result<Arc<Derived>, SealError> {
        let kek = self.keys.version(KeyName::Kek, version)?;
        self.derived_from(version, kek)
    }

    fn derived_from(&self, version: u32, kek: Arc<SecretKey>) -> Result<Arc<Derived>, SealError> {
        // The very key the source holds now (the entry keeps its `Arc`, so the address cannot be
        // reused by another key). A provider that rebuilds its keys on refresh costs one
        // derivation per version and refresh; no secret is compared.
        let same = |d: &Derived| Arc::ptr_eq(&d.kek, &kek);
        {
            let cache = self.derived.read().unwrap_or_else(|e| e.into_inner());
            if let Some(d) = cache.get(&version).filter(|d| same(d)) {
                return Ok(Arc::clone(d));
            }
        }
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(kek.as_bytes()).map_err(|_| SealError::Seal)?;
        mac.update(self.label);
        let key = Zeroizing::new(<[u8; 32]>::from(mac.finalize().into_bytes()));
        let cipher = Aes256Gcm::new(key.as_ref().into());
        let d = Arc::new(Derived { kek, key, cipher });
        // Only versions the source holds get here, so the map stays as small as the KEK's
        // version list.
        self.derived
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(version, Arc::clone(&d));
        Ok(d)
    }

    fn encrypt(
        d: &Derived,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        d.cipher
            .encrypt(Nonce::from_slice(nonce), Payload { msg: plain, aad })
            .map_err(|_| SealError::Seal)
    }

    fn decrypt(d: &Derived, nonce: &[u8], aad: &[u8], body: &[u8]) -> Result<Vec<u8>, SealError> {
        d.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
            .map_err(|_| SealError::Authentication)
    }

    fn nonce() -> [u8; NONCE_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        nonce
    }

    /// Seals `plain` in the framed layout under the current KEK version; the associated data
    /// is `context` then the version header.
    pub fn seal_framed(&self, context: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let (version, kek) = self.keys.current(KeyName::Kek)?;
        let d = self.derived_from(version, kek)?;
        let nonce = Self::nonce();
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
        out.push(FORMAT_V1);
        out.extend_from_slice(&version.to_be_bytes());
        let mut aad = Vec::with_capacity(context.len() + VERSION_HEADER_LEN);
        aad.extend_from_slice(context);
        aad.extend_from_slice(&out);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&Self::encrypt(&d, &nonce, &aad, plain)?);
        Ok(out)
    }

    /// Opens a value sealed by [`ServiceSealer::seal_framed`] with the same label and context.
    pub fn open_framed(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let version = key_version(sealed).ok_or(SealError::Malformed)?;
        let d = self.derived(version)?;
        let mut aad = Vec::with_capacity(context.len() + VERSION_HEADER_LEN);
        aad.extend_from_slice(context);
        aad.extend_from_slice(&sealed[..VERSION_HEADER_LEN]);
        Self::decrypt(
            &d,
            &sealed[VERSION_HEADER_LEN..HEADER_LEN],
            &aad,
            &sealed[HEADER_LEN..],
        )
    }

    /// [`ServiceSealer::seal_framed`] bound to one `binding` (context: the binding,
    /// length-prefixed).
    pub fn seal(&self, binding: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        self.seal_framed(&context(b"", &[binding]), plain)
    }

    /// Opens a value sealed by [`ServiceSealer::seal`] with the same label and binding.
    pub fn open(&self, binding: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        self.open_framed(&context(b"", &[binding]), sealed)
    }

    /// Seals `plain` in the detached layout (`nonce ‖ ciphertext ‖ tag`) under KEK `version`,
    /// which the caller stores beside the value.
    pub fn seal_detached(
        &self,
        version: u32,
        aad: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let d = self.derived(version)?;
        let nonce = Self::nonce();
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&Self::encrypt(&d, &nonce, aad, plain)?);
        Ok(out)
    }

    /// Opens a value sealed by [`ServiceSealer::seal_detached`] under the same label, version
    /// and associated data.
    pub fn open_detached(
        &self,
        version: u32,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Malformed);
        }
        let d = self.derived(version)?;
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        Self::decrypt(&d, nonce, aad, body)
    }

    /// HMAC-SHA-256 of `data` keyed with the derived key of KEK `version`.
    pub fn mac(&self, version: u32, data: &[u8]) -> Result<[u8; 32], SealError> {
        let d = self.derived(version)?;
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(d.key.as_ref()).map_err(|_| SealError::Seal)?;
        mac.update(data);
        Ok(mac.finalize().into_bytes().into())
    }

    /// How many KEK versions have a derived key cached (for tests).
    #[cfg(test)]
    fn cached_versions(&self) -> usize {
        self.derived.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The KEK version a framed value names, if its header is well formed.
pub fn key_version(sealed: &[u8]) -> Option<u32> {
    if sealed.len() < HEADER_LEN + TAG_LEN || sealed[0] != FORMAT_V1 {
        return None;
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&sealed[1..VERSION_HEADER_LEN]);
    Some(u32::from_be_bytes(v))
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::keys::{KeyVersions, StaticKeys};

    /// KEK v1 = 0x11 × 32, v2 = 0x22 × 32 (current): the keys the fixed test vectors in this
    /// crate were sealed under.
    pub(crate) fn vector_keys() -> Arc<dyn KeySource> {
        let kek = KeyVersions::from_versions(
            2,
            [
                (1, Arc::new(SecretKey::from_bytes([0x11; 32]))),
                (2, Arc::new(SecretKey::from_bytes([0x22; 32]))),
            ]
            .into_iter()
            .collect(),
        )
        .unwrap();
        Arc::new(StaticKeys::generate().with(KeyName::Kek, kek))
    }

    pub(crate) fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Sealed by the outbox's `ServiceSealer` before the helper was shared (d94bdee), under
    /// [`vector_keys`], label `carehub outbox payloads v1`, binding: the row id below.
    const OUTBOX_VECTOR: &str = "010000000294367cd6b128eff7cdd6c726a8d272372fa3c2e939f3760dc34244ce6324cc38a2623cb6f354be24fb";

    #[test]
    fn opens_what_the_previous_outbox_sealer_sealed() {
        let sealer = ServiceSealer::new(b"carehub outbox payloads v1", vector_keys());
        let id = uuid::Uuid::parse_str("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").unwrap();
        let sealed = unhex(OUTBOX_VECTOR);
        assert_eq!(key_version(&sealed), Some(2));
        assert_eq!(
            sealer.open(id.as_bytes(), &sealed).unwrap(),
            b"payload bytes"
        );
        // The same bytes through the general form: context = the binding, length-prefixed.
        assert_eq!(
            sealer
                .open_framed(&context(b"", &[id.as_bytes()]), &sealed)
                .unwrap(),
            b"payload bytes"
        );
    }

    #[test]
    fn opens_only_with_its_label_and_binding() {
        let keys: Arc<dyn KeySource> = Arc::new(StaticKeys::generate());
        let a = ServiceSealer::new(b"test a v1", keys.clone());
        let b = ServiceSealer::new(b"test b v1", keys);
        let sealed = a.seal(b"row-1", b"hello").unwrap();
        assert_eq!(a.open(b"row-1", &sealed).unwrap(), b"hello");
        assert!(matches!(
            a.open(b"row-2", &sealed),
            Err(SealError::Authentication)
        ));
        assert!(matches!(
            b.open(b"row-1", &sealed),
            Err(SealError::Authentication)
        ));
        assert!(matches!(
            a.open(b"row-1", &sealed[..10]),
            Err(SealError::Malformed)
        ));
        assert_eq!(key_version(&sealed), Some(1));
        // Detached values and MACs are per label too.
        let detached = a.seal_detached(1, b"aad", b"hello").unwrap();
        assert_eq!(a.open_detached(1, b"aad", &detached).unwrap(), b"hello");
        assert!(matches!(
            b.open_detached(1, b"aad", &detached),
            Err(SealError::Authentication)
        ));
        assert!(matches!(
            a.open_detached(1, b"other", &detached),
            Err(SealError::Authentication)
        ));
        assert!(matches!(
            a.open_detached(1, b"aad", &detached[..20]),
            Err(SealError::Malformed)
        ));
        assert_ne!(a.mac(1, b"x").unwrap(), b.mac(1, b"x").unwrap());
    }

    #[test]
    fn derived_keys_are_cached_per_version_and_follow_the_source() {
        let mut kek = KeyVersions::generate();
        let sealer = ServiceSealer::new(
            b"test v1",
            Arc::new(StaticKeys::generate().with(KeyName::Kek, kek.clone())),
        );
        let one = sealer.seal(b"r", b"one").unwrap();
        for _ in 0..3 {
            sealer.open(b"r", &one).unwrap();
            sealer.seal(b"r", b"again").unwrap();
        }
        assert_eq!(sealer.cached_versions(), 1);
        // A clone shares the cache; an unknown version is a key error and caches nothing.
        let clone = sealer.clone();
        assert!(matches!(
            clone.open_detached(9, b"", &[0; 40]),
            Err(SealError::Key(KeyError::UnknownVersion { .. }))
        ));
        assert_eq!(sealer.cached_versions(), 1);
        // After a rotation: new values under v2, old ones still open, both versions cached.
        kek.rotate();
        let rotated = ServiceSealer::new(
            b"test v1",
            Arc::new(StaticKeys::generate().with(KeyName::Kek, kek)),
        );
        assert_eq!(rotated.open(b"r", &one).unwrap(), b"one");
        let two = rotated.seal(b"r", b"two").unwrap();
        assert_eq!(key_version(&two), Some(2));
        assert_eq!(rotated.cached_versions(), 2);
        // A source that answers another key for the same version is not served from the
        // cache: the sealer that cached v1 above refuses v2 (unknown to it), and a sealer
        // whose key changed under it re-derives.
        assert!(matches!(
            sealer.open(b"r", &two),
            Err(SealError::Key(KeyError::UnknownVersion { .. }))
        ));
        let other: Arc<dyn KeySource> = Arc::new(StaticKeys::generate());
        let swapped = ServiceSealer {
            keys: other,
            ..sealer.clone()
        };
        assert!(matches!(
            swapped.open(b"r", &one),
            Err(SealError::Authentication)
        ));
    }
}
