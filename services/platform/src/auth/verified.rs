//! Access tokens already verified, remembered until they expire.
//!
//! An Ed25519 check of the same bearer token on every call of a session was about a tenth of
//! a profile read's server CPU (BENCHMARKS.md). A token's signature and claims do not change,
//! so the result of checking them is kept, keyed by a hash of the token, until the token's
//! `exp`, and only for the key that verified it: a token whose key is no longer published is
//! checked again (and refused). Revocation and session checks are not cached here: callers
//! still run them on every call.

use std::collections::HashMap;
use std::sync::RwLock;

use ed25519_dalek::VerifyingKey;
use sha2::{Digest as _, Sha256};
use tonic::Status;

use super::{verify_access_token, UserCaller};

/// Default bound on remembered tokens (about 250 bytes each).
pub const DEFAULT_CAPACITY: usize = 16_384;

/// Verified tokens, bounded in number and by each token's expiry.
pub struct VerifiedTokens {
    entries: RwLock<HashMap<[u8; 32], Verified>>,
    capacity: usize,
}

struct Verified {
    user: UserCaller,
    key: [u8; 32],
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl VerifiedTokens {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// Verifies `token` with `key` (signature, lifetime, issuer, audience), or answers from an
    /// earlier verification with the same key while the token has not expired.
    pub fn verify(
        &self,
        token: &str,
        key: &VerifyingKey,
        issuer: &str,
        audience: &str,
    ) -> Result<UserCaller, Status> {
        let now = chrono::Utc::now().timestamp();
        let id = token_id(token);
        if let Some(user) = self.lookup(&id, key, now) {
            return Ok(user);
        }
        let user = verify_access_token(token, key, issuer, audience)?;
        self.remember(id, key, &user, now);
        Ok(user)
    }

    /// Tokens remembered now.
    pub fn len(&self) -> usize {
        self.entries.read().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lookup(&self, id: &[u8; 32], key: &VerifyingKey, now: i64) -> Option<UserCaller> {
        let entries = self.entries.read().ok()?;
        let hit = entries.get(id)?;
        // Strictly before `exp`: past it the full check applies its leeway and its message.
        (hit.key == key.to_bytes() && now < hit.user.expires_at).then(|| hit.user.clone())
    }

    fn remember(&self, id: [u8; 32], key: &VerifyingKey, user: &UserCaller, now: i64) {
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        if entries.len() >= self.capacity {
            entries.retain(|_, v| v.user.expires_at > now);
            if entries.len() >= self.capacity {
                // Still full of live tokens: start over rather than grow (a miss only costs a
                // signature check).
                entries.clear();
            }
        }
        entries.insert(
            id,
            Verified {
                user: user.clone(),
                key: key.to_bytes(),
            },
        );
    }
}

fn token_id(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::jwt::{self, AccessClaims};
    use ed25519_dalek::SigningKey;
    use tonic::Code;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn token(signing: &SigningKey, exp_in: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = AccessClaims {
            iss: "iss".into(),
            aud: "aud".into(),
            sub: uuid::Uuid::now_v7().to_string(),
            sid: uuid::Uuid::now_v7().to_string(),
            roles: vec!["patient".into()],
            amr: vec!["pwd".into()],
            iat: now,
            exp: now + exp_in,
            jti: uuid::Uuid::new_v4().to_string(),
            pcr: false,
        };
        jwt::sign(&claims, "k1", signing).unwrap()
    }

    #[test]
    fn a_verified_token_is_remembered_for_its_key_only() {
        let cache = VerifiedTokens::new(8);
        let (a, b) = (key(1), key(2));
        let t = token(&a, 300);
        let first = cache.verify(&t, &a.verifying_key(), "iss", "aud").unwrap();
        assert_eq!(cache.len(), 1);
        let again = cache.verify(&t, &a.verifying_key(), "iss", "aud").unwrap();
        assert_eq!(again.user_id, first.user_id);
        // Another key (say the published one was replaced): checked again, and refused.
        let e = cache
            .verify(&t, &b.verifying_key(), "iss", "aud")
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        // A forged token is never remembered.
        let forged = format!("{}x", &t[..t.len() - 1]);
        assert!(cache
            .verify(&forged, &a.verifying_key(), "iss", "aud")
            .is_err());
        assert_eq!(cache.len(), 1);
        // Wrong audience on a remembered token: the cache is per verifier (one issuer and
        // audience), but a miss still checks everything.
        let other = token(&a, 300);
        assert!(cache
            .verify(&other, &a.verifying_key(), "iss", "x")
            .is_err());
    }

    fn user(expires_at: i64) -> UserCaller {
        UserCaller {
            user_id: uuid::Uuid::now_v7(),
            session_id: uuid::Uuid::now_v7(),
            roles: vec![],
            amr: vec![],
            issued_at: expires_at - 600,
            expires_at,
            password_change_required: false,
        }
    }

    #[test]
    fn a_remembered_token_answers_until_just_before_exp() {
        let cache = VerifiedTokens::new(8);
        let a = key(4);
        let t = token(&a, 300);
        assert!(cache.is_empty());
        let first = cache.verify(&t, &a.verifying_key(), "iss", "aud").unwrap();
        assert!(!cache.is_empty());
        let exp = first.expires_at;
        let id = token_id(&t);
        let hit = cache.lookup(&id, &a.verifying_key(), exp - 1).unwrap();
        assert_eq!(hit.session_id, first.session_id);
        assert!(cache.lookup(&id, &a.verifying_key(), exp - 100).is_some());
        assert!(cache.lookup(&id, &a.verifying_key(), exp).is_none());
        assert!(cache
            .lookup(&id, &key(5).verifying_key(), exp - 1)
            .is_none());
    }

    #[test]
    fn a_full_cache_drops_expired_tokens_first() {
        let cache = VerifiedTokens::new(2);
        let k = key(6).verifying_key();
        let now = 1_000_000;
        let (live, ends_now, newer) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        cache.remember(live, &k, &user(now + 300), now);
        cache.remember(ends_now, &k, &user(now), now);
        // Full: the token that ends now makes room; the live one stays.
        cache.remember(newer, &k, &user(now + 300), now);
        assert_eq!(cache.len(), 2);
        assert!(cache.lookup(&live, &k, now).is_some());
        assert!(cache.lookup(&newer, &k, now).is_some());
        assert!(cache.lookup(&ends_now, &k, now - 1).is_none());
    }

    #[test]
    fn expired_tokens_are_not_answered_from_memory_and_the_bound_holds() {
        let cache = VerifiedTokens::new(2);
        let a = key(3);
        // Expired beyond the leeway: refused even though it would be "remembered".
        let old = token(&a, -(jwt::LEEWAY_SECS + 5));
        assert!(cache
            .verify(&old, &a.verifying_key(), "iss", "aud")
            .is_err());
        assert!(cache.is_empty());
        for _ in 0..5 {
            let t = token(&a, 300);
            cache.verify(&t, &a.verifying_key(), "iss", "aud").unwrap();
            assert!(cache.len() <= 2);
        }
        // Within the leeway after `exp` a token is accepted by the full check each time, and
        // never answered from memory.
        let just = token(&a, -1);
        cache
            .verify(&just, &a.verifying_key(), "iss", "aud")
            .unwrap();
        let now = chrono::Utc::now().timestamp();
        assert!(cache
            .lookup(&token_id(&just), &a.verifying_key(), now)
            .is_none());
    }
}
