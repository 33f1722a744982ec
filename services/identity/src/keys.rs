//! Token-signing keys. Today one Ed25519 key from a local PKCS#8 PEM file; Vault replaces the
//! file with the keys issue (rotation publishes a key before it signs).

use std::path::Path;

use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// A published verification key.
#[derive(Clone, Debug)]
pub struct PublishedKey {
    pub kid: String,
    pub key: VerifyingKey,
    pub not_before: DateTime<Utc>,
}

/// The key that signs now, and every key whose tokens may still be alive.
pub struct SigningKeys {
    current_kid: String,
    current: SigningKey,
    published: Vec<PublishedKey>,
}

impl SigningKeys {
    pub fn from_key(key: SigningKey, not_before: DateTime<Utc>) -> Self {
        let kid = key_id(&key.verifying_key());
        Self {
            published: vec![PublishedKey {
                kid: kid.clone(),
                key: key.verifying_key(),
                not_before,
            }],
            current_kid: kid,
            current: key,
        }
    }

    /// Loads a PKCS#8 PEM Ed25519 private key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read signing key {}: {e}", path.display()))?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
            anyhow::anyhow!(
                "signing key {} is not an Ed25519 PKCS#8 PEM: {e}",
                path.display()
            )
        })?;
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(|_| Utc::now());
        Ok(Self::from_key(key, modified))
    }

    /// Writes a new random key (mode 0600) unless `path` exists; for development setups.
    pub fn generate_file_if_missing(path: &Path) -> anyhow::Result<bool> {
        if path.exists() {
            return Ok(false);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = key
            .to_pkcs8_pem(Default::default())
            .map_err(|e| anyhow::anyhow!("encoding signing key: {e}"))?;
        write_private(path, pem.as_bytes())?;
        Ok(true)
    }

    pub fn current(&self) -> (&str, &SigningKey) {
        (&self.current_kid, &self.current)
    }

    pub fn published(&self) -> &[PublishedKey] {
        &self.published
    }

    pub fn verifying_key(&self, kid: &str) -> Option<&VerifyingKey> {
        self.published.iter().find(|k| k.kid == kid).map(|k| &k.key)
    }
}

/// `kid`: the first 16 hex digits of SHA-256 of the public key (stable, reveals nothing).
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(bytes)
}
