//! Sealing of service-owned blobs (not a patient's fields) under a key derived from the
//! service's KEK: one small helper for what the idempotency store and the audit trail's client
//! fields each do by hand, first used by the outbox.
//!
//! The sealing key is HMAC-SHA-256(KEK version v, `label`), so the KEK itself only ever wraps
//! data keys, and two uses with different labels never share a key. Rotating the KEK keeps
//! older versions, so values sealed before a rotation still open. Crypto-shredding a subject
//! does not reach these values: keep them only as long as their purpose needs.
//!
//! Layout (stored as `bytea`):
//!
//! ```text
//! [0]      format = 1
//! [1..5]   KEK version, u32 big-endian
//! [5..17]  96-bit random nonce
//! [17..]   AES-256-GCM ciphertext, then the 16-byte tag
//! ```
//!
//! Associated data: the caller's binding (for example table and row id), then the 5 header
//! bytes, so a value moved to another row or relabelled with another version does not open.

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::keys::{KeyError, KeyName, KeySource};

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;

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

/// Seals and opens values of one purpose (`label`) under the service's KEK.
#[derive(Clone)]
pub struct ServiceSealer {
    label: &'static [u8],
    keys: Arc<dyn KeySource>,
}

impl std::fmt::Debug for ServiceSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceSealer")
            .field("label", &String::from_utf8_lossy(self.label))
            .finish_non_exhaustive()
    }
}

impl ServiceSealer {
    /// `label` names the purpose and its version (`b"carehub outbox payloads v1"`).
    pub fn new(label: &'static [u8], keys: Arc<dyn KeySource>) -> Self {
        ServiceSealer { label, keys }
    }

    fn key(&self, version: u32) -> Result<Zeroizing<[u8; 32]>, SealError> {
        let kek = self.keys.version(KeyName::Kek, version)?;
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(kek.as_bytes()).map_err(|_| SealError::Seal)?;
        mac.update(self.label);
        Ok(Zeroizing::new(mac.finalize().into_bytes().into()))
    }

    fn aad(binding: &[u8], header: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(binding.len() + header.len() + 4);
        let len = u32::try_from(binding.len()).unwrap_or(u32::MAX);
        aad.extend_from_slice(&len.to_be_bytes());
        aad.extend_from_slice(binding);
        aad.extend_from_slice(header);
        aad
    }

    /// Seals `plain` under the current KEK version, bound to `binding`.
    pub fn seal(&self, binding: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let version = self.keys.current(KeyName::Kek)?.0;
        let key = self.key(version)?;
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
        out.push(FORMAT_V1);
        out.extend_from_slice(&version.to_be_bytes());
        let mut nonce = [0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        out.extend_from_slice(&nonce);
        let aad = Self::aad(binding, &out[..5]);
        let sealed = Aes256Gcm::new(key.as_ref().into())
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Seal)?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a value sealed by [`ServiceSealer::seal`] with the same label and binding.
    pub fn open(&self, binding: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let version = key_version(sealed).ok_or(SealError::Malformed)?;
        let key = self.key(version)?;
        let aad = Self::aad(binding, &sealed[..5]);
        Aes256Gcm::new(key.as_ref().into())
            .decrypt(
                Nonce::from_slice(&sealed[5..HEADER_LEN]),
                Payload {
                    msg: &sealed[HEADER_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Authentication)
    }
}

/// The KEK version a sealed value names, if its header is well formed.
pub fn key_version(sealed: &[u8]) -> Option<u32> {
    if sealed.len() < HEADER_LEN + TAG_LEN || sealed[0] != FORMAT_V1 {
        return None;
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&sealed[1..5]);
    Some(u32::from_be_bytes(v))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::keys::StaticKeys;

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
    }
}
