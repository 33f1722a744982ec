//! Password policy and argon2id hashing.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};

pub const MIN_LEN: usize = 12;
pub const MAX_LEN: usize = 128;

/// The most common passwords of 10+ characters, lower-cased, from the password frequency list
/// of the zxcvbn project (MIT licence); rejected outright.
static COMMON: &str = include_str!("common-passwords.txt");

/// Why a password is refused, worded for the user.
pub fn policy_violation(password: &str) -> Option<&'static str> {
    let n = password.chars().count();
    if n < MIN_LEN {
        return Some("must be at least 12 characters");
    }
    if n > MAX_LEN {
        return Some("must be at most 128 characters");
    }
    let lower = password.to_lowercase();
    if COMMON.lines().any(|l| l == lower) {
        return Some("is too common; choose another");
    }
    None
}

/// argon2id with the configured costs.
#[derive(Clone)]
pub struct PasswordHasher {
    argon2: Argon2<'static>,
    /// A hash of nothing, verified against when no account matches so that timing matches.
    dummy_hash: String,
}

#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

impl PasswordHasher {
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, HashError> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| HashError(e.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        let dummy_hash = argon2
            .hash_password(b"carehub-timing-equalizer", &salt)
            .map_err(|e| HashError(e.to_string()))?
            .to_string();
        Ok(Self { argon2, dummy_hash })
    }

    /// PHC string of `secret` (CPU-heavy: call from `spawn_blocking`).
    pub fn hash(&self, secret: &str) -> Result<String, HashError> {
        let salt = SaltString::generate(&mut OsRng);
        Ok(self
            .argon2
            .hash_password(secret.as_bytes(), &salt)
            .map_err(|e| HashError(e.to_string()))?
            .to_string())
    }

    /// Whether `secret` matches `phc`; `None` verifies against a dummy hash and returns false,
    /// taking the same time (CPU-heavy: call from `spawn_blocking`).
    pub fn verify(&self, secret: &str, phc: Option<&str>) -> bool {
        let (target, real) = match phc {
            Some(p) => (p, true),
            None => (self.dummy_hash.as_str(), false),
        };
        let Ok(parsed) = PasswordHash::new(target) else {
            return false;
        };
        let ok = self
            .argon2
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok();
        ok && real
    }

    /// Hashes on the blocking pool.
    pub async fn hash_async(&self, secret: String) -> Result<String, HashError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.hash(&secret))
            .await
            .map_err(|e| HashError(e.to_string()))?
    }

    /// Verifies on the blocking pool.
    pub async fn verify_async(&self, secret: String, phc: Option<String>) -> bool {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.verify(&secret, phc.as_deref()))
            .await
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn policy() {
        assert_eq!(
            policy_violation("short"),
            Some("must be at least 12 characters")
        );
        assert!(policy_violation(&"x".repeat(129)).is_some());
        assert!(policy_violation(&"Ab1!".repeat(32)).is_none());
        assert_eq!(
            policy_violation("Password1234"),
            Some("is too common; choose another")
        );
        assert!(policy_violation("correct horse battery staple").is_none());
    }

    #[test]
    fn hash_and_verify() {
        let h = PasswordHasher::new(19 * 1024, 2, 1).unwrap();
        let phc = h.hash("correct horse battery staple").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(h.verify("correct horse battery staple", Some(&phc)));
        assert!(!h.verify("wrong horse battery staple", Some(&phc)));
        assert!(!h.verify("carehub-timing-equalizer", None));
    }
}
