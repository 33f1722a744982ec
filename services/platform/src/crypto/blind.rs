//! Blind indexes: a keyed hash of an encrypted field's normalized value, stored beside the
//! ciphertext, so that equality lookups (login by email, uniqueness) work without decrypting
//! and without the database learning the value.
//!
//! Layout (37 bytes): `[0]` format = 1, `[1..5]` blind-index key version (u32 BE), `[5..37]`
//! HMAC-SHA-256 over `"carehub/blind-index/v1"`, service, scope (length-prefixed) and the
//! normalized value. The scope (`"users.email"`) keeps equal values in different columns from
//! matching. After the blind-index key is rotated, rows keep their old version until rewritten:
//! look up with [`BlindIndexer::candidates`] (one index per held version).

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::crypto::CryptoError;
use crate::keys::{KeyName, KeySource};

pub const BLIND_INDEX_FORMAT_V1: u8 = 1;
pub const BLIND_INDEX_LEN: usize = 1 + 4 + 32;

const DOMAIN: &[u8] = b"carehub/blind-index/v1";

/// How a value is normalized before hashing, so that lookups match what users mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalization {
    /// Byte-exact.
    Exact,
    /// Surrounding whitespace trimmed, lower-cased (emails, user names).
    CaseInsensitive,
    /// Digits only, with a leading `+` kept (phone numbers typed with spaces or dashes).
    Phone,
}

impl Normalization {
    pub fn apply(self, value: &str) -> String {
        match self {
            Normalization::Exact => value.to_owned(),
            Normalization::CaseInsensitive => value.trim().to_lowercase(),
            Normalization::Phone => {
                let trimmed = value.trim();
                let mut out = String::with_capacity(trimmed.len());
                if trimmed.starts_with('+') {
                    out.push('+');
                }
                out.extend(trimmed.chars().filter(char::is_ascii_digit));
                out
            }
        }
    }
}

/// Computes blind indexes with the service's blind-index keys (memory only).
#[derive(Clone)]
pub struct BlindIndexer {
    service: String,
    keys: Arc<dyn KeySource>,
}

impl BlindIndexer {
    pub fn new(service: impl Into<String>, keys: Arc<dyn KeySource>) -> Self {
        BlindIndexer {
            service: service.into(),
            keys,
        }
    }

    /// The index to store, under the current blind-index key.
    pub fn compute(
        &self,
        scope: &str,
        normalization: Normalization,
        value: &str,
    ) -> Result<Vec<u8>, CryptoError> {
        let (version, key) = self.keys.current(KeyName::BlindIndex)?;
        self.index(scope, version, key.as_bytes(), &normalization.apply(value))
    }

    /// The indexes the value may be stored under, one per held key version (current first):
    /// look up with `WHERE column = ANY($1)`.
    pub fn candidates(
        &self,
        scope: &str,
        normalization: Normalization,
        value: &str,
    ) -> Result<Vec<Vec<u8>>, CryptoError> {
        let versions = self.keys.versions(KeyName::BlindIndex)?;
        let normalized = normalization.apply(value);
        let current = versions.current_version();
        let mut order: Vec<u32> = versions.versions().filter(|v| *v != current).collect();
        order.insert(0, current);
        order
            .into_iter()
            .filter_map(|v| versions.get(v).map(|k| (v, k)))
            .map(|(v, key)| self.index(scope, v, key.as_bytes(), &normalized))
            .collect()
    }

    /// The key version an index was computed with.
    pub fn version_of(index: &[u8]) -> Option<u32> {
        if index.len() != BLIND_INDEX_LEN || index[0] != BLIND_INDEX_FORMAT_V1 {
            return None;
        }
        let mut version = [0u8; 4];
        version.copy_from_slice(&index[1..5]);
        Some(u32::from_be_bytes(version))
    }

    fn index(
        &self,
        scope: &str,
        version: u32,
        key: &[u8; 32],
        normalized: &str,
    ) -> Result<Vec<u8>, CryptoError> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .map_err(|_| CryptoError::Invalid("blind-index key length".into()))?;
        mac.update(DOMAIN);
        for part in [self.service.as_bytes(), scope.as_bytes()] {
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            mac.update(&len.to_be_bytes());
            mac.update(part);
        }
        mac.update(normalized.as_bytes());
        let mut out = Vec::with_capacity(BLIND_INDEX_LEN);
        out.push(BLIND_INDEX_FORMAT_V1);
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::keys::{KeyVersions, StaticKeys};

    #[test]
    fn normalization() {
        assert_eq!(
            Normalization::CaseInsensitive.apply("  Ann@Example.COM "),
            "ann@example.com"
        );
        assert_eq!(
            Normalization::Phone.apply(" +1 (555) 010-0000"),
            "+15550100000"
        );
        assert_eq!(Normalization::Exact.apply(" A "), " A ");
    }

    #[test]
    fn scoped_versioned_and_rotatable() {
        let mut bi = KeyVersions::generate();
        let keys = StaticKeys::generate().with(KeyName::BlindIndex, bi.clone());
        let idx = BlindIndexer::new("identity", Arc::new(keys));
        let a = idx
            .compute("users.email", Normalization::CaseInsensitive, "A@x.io")
            .unwrap();
        assert_eq!(
            a,
            idx.compute("users.email", Normalization::CaseInsensitive, " a@x.io")
                .unwrap()
        );
        assert_ne!(
            a,
            idx.compute("users.phone", Normalization::CaseInsensitive, "a@x.io")
                .unwrap()
        );
        assert_eq!(BlindIndexer::version_of(&a), Some(1));

        bi.rotate();
        let rotated = BlindIndexer::new(
            "identity",
            Arc::new(StaticKeys::generate().with(KeyName::BlindIndex, bi)),
        );
        let c = rotated
            .candidates("users.email", Normalization::CaseInsensitive, "a@x.io")
            .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(BlindIndexer::version_of(&c[0]), Some(2));
        assert_eq!(c[1], a);
    }
}
