//! Token-signing keys: Ed25519 seeds from the key source (Vault `carehub/identity/signing`, or
//! the development key file), every version kept.
//!
//! Rotation is safe for verifiers that cache the published keys (gateways read the JWKS with
//! `max-age`, other services cache `ListSigningKeys`):
//! - a new version is **published at once** but **signs only after the lead time**
//!   (`identity.signing_key_lead_secs`, at least the JWKS cache lifetime plus the key refresh
//!   interval), counted from when the first replica saw it (`signing_key_versions`, shared by
//!   all replicas through the database);
//! - a replaced version **stays published** until every token it signed has expired (the
//!   longest token lifetime plus the verifiers' clock leeway after it stopped signing).
//!
//! The very first version signs at once: no verifier can hold an older set.
//!
//! The schedule, not this replica's copy of the key source, decides: a replica whose key
//! refresh lags (Vault unreachable while the key was rotated) still publishes the new version
//! (its public key is in `signing_key_versions`) and stops signing with the replaced one when
//! the others do — it answers UNAVAILABLE rather than issue tokens that would outlive their key.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use carehub_platform::keys::{KeyError, KeyName, KeySource};

/// A published verification key.
#[derive(Clone, Debug)]
pub struct PublishedKey {
    pub kid: String,
    pub key: VerifyingKey,
    /// When it was first published.
    pub not_before: DateTime<Utc>,
}

/// The key that signs now.
pub struct Signer {
    pub version: u32,
    pub kid: String,
    pub key: SigningKey,
}

/// Which version signs and which are published, at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub signing: Option<u32>,
    pub published: Vec<u32>,
}

/// The rotation rule, as a pure function of what is held, when each version was first seen,
/// and the clock (see the module docs).
pub fn plan(
    held: &[u32],
    first_seen: &BTreeMap<u32, DateTime<Utc>>,
    now: DateTime<Utc>,
    lead: Duration,
    retire_after: Duration,
) -> Plan {
    let seen = first_seen;
    let ready = |v: &u32| seen.get(v).is_some_and(|t| *t + lead <= now);
    let signing = seen
        .keys()
        .copied()
        .filter(ready)
        .max()
        .or_else(|| seen.keys().next().copied());
    let candidates: std::collections::BTreeSet<u32> =
        held.iter().copied().chain(seen.keys().copied()).collect();
    let published = candidates
        .into_iter()
        .filter(|v| {
            let Some(signing) = signing else { return true };
            if *v >= signing || !seen.contains_key(v) {
                return true;
            }
            // Replaced when the first newer version became ready to sign.
            let replaced = seen
                .iter()
                .filter(|(w, t)| **w > *v && **t + lead <= now)
                .map(|(_, t)| *t + lead)
                .min();
            replaced.is_none_or(|at| now < at + retire_after)
        })
        .collect();
    Plan { signing, published }
}

/// `kid`: the first 16 hex digits of SHA-256 of the public key (stable, reveals nothing).
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    data_encoding::HEXLOWER.encode(&digest[..8])
}

/// The signing keys of this replica: the key source's versions plus the shared publication
/// schedule, refreshed by [`SigningKeys::sync`].
pub struct SigningKeys {
    source: Arc<dyn KeySource>,
    lead: Duration,
    retire_after: Duration,
    first_seen: RwLock<BTreeMap<u32, DateTime<Utc>>>,
    /// Public keys recorded by whichever replica first saw each version.
    /// (kid computed once, at sync, not per verified token).
    recorded_public: RwLock<BTreeMap<u32, (String, VerifyingKey)>>,
    derived: Mutex<BTreeMap<u32, Arc<Signer>>>,
}

impl SigningKeys {
    /// `lead`: how long a new version is published before it signs; `retire_after`: the
    /// longest token lifetime plus clock leeway.
    pub fn new(source: Arc<dyn KeySource>, lead: Duration, retire_after: Duration) -> Self {
        SigningKeys {
            source,
            lead,
            retire_after,
            first_seen: RwLock::new(BTreeMap::new()),
            recorded_public: RwLock::new(BTreeMap::new()),
            derived: Mutex::new(BTreeMap::new()),
        }
    }

    fn signer(&self, version: u32) -> Result<Arc<Signer>, KeyError> {
        let mut derived = self.derived.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = derived.get(&version) {
            return Ok(Arc::clone(s));
        }
        let seed = self.source.version(KeyName::Signing, version)?;
        let key = SigningKey::from_bytes(seed.as_bytes());
        let signer = Arc::new(Signer {
            version,
            kid: key_id(&key.verifying_key()),
            key,
        });
        derived.insert(version, Arc::clone(&signer));
        Ok(signer)
    }

    /// Records versions this replica sees for the first time and reloads when every version
    /// was first seen by any replica. Runs at start and then periodically.
    pub async fn sync(&self, pool: &PgPool) -> anyhow::Result<()> {
        let versions = self.source.versions(KeyName::Signing)?;
        let known: Vec<u32> = self
            .first_seen
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        let recorded: Vec<u32> = self
            .recorded_public
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        for version in versions
            .versions()
            .filter(|v| !known.contains(v) || !recorded.contains(v))
        {
            let signer = self.signer(version)?;
            // The first sighting wins; a public key missing from an older row is filled in.
            sqlx::query(
                "INSERT INTO signing_key_versions (version, kid, public_key) VALUES ($1, $2, $3)
                 ON CONFLICT (version) DO UPDATE
                 SET public_key = COALESCE(signing_key_versions.public_key, EXCLUDED.public_key)",
            )
            .bind(i32::try_from(version)?)
            .bind(&signer.kid)
            .bind(signer.key.verifying_key().as_bytes().to_vec())
            .execute(pool)
            .await?;
        }
        let rows: Vec<(i32, DateTime<Utc>, Option<Vec<u8>>)> =
            sqlx::query_as("SELECT version, first_seen_at, public_key FROM signing_key_versions")
                .fetch_all(pool)
                .await?;
        let mut first_seen = BTreeMap::new();
        let mut public = BTreeMap::new();
        for (v, t, key) in rows {
            let Ok(v) = u32::try_from(v) else { continue };
            first_seen.insert(v, t);
            let key = key
                .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
                .and_then(|k| VerifyingKey::from_bytes(&k).ok());
            if let Some(key) = key {
                public.insert(v, (key_id(&key), key));
            }
        }
        *self.first_seen.write().unwrap_or_else(|e| e.into_inner()) = first_seen;
        *self
            .recorded_public
            .write()
            .unwrap_or_else(|e| e.into_inner()) = public;
        Ok(())
    }

    fn plan_now(&self) -> Result<Plan, KeyError> {
        let versions = self.source.versions(KeyName::Signing)?;
        let held: Vec<u32> = versions.versions().collect();
        let first_seen = self.first_seen.read().unwrap_or_else(|e| e.into_inner());
        Ok(plan(
            &held,
            &first_seen,
            Utc::now(),
            self.lead,
            self.retire_after,
        ))
    }

    /// The key that signs new tokens now.
    pub fn current(&self) -> Result<Arc<Signer>, KeyError> {
        let version = self
            .plan_now()?
            .signing
            .ok_or(KeyError::Unavailable(KeyName::Signing))?;
        // The schedule says another replica's newer key signs now, and ours has not arrived.
        self.signer(version).map_err(|e| match e {
            KeyError::UnknownVersion { .. } => KeyError::Unavailable(KeyName::Signing),
            other => other,
        })
    }

    /// Every key whose tokens may be alive, and any key about to sign.
    pub fn published(&self) -> Vec<PublishedKey> {
        let Ok(plan) = self.plan_now() else {
            return Vec::new();
        };
        let first_seen = self.first_seen.read().unwrap_or_else(|e| e.into_inner());
        let recorded = self
            .recorded_public
            .read()
            .unwrap_or_else(|e| e.into_inner());
        plan.published
            .into_iter()
            .filter_map(|v| {
                let (kid, key) = match self.signer(v) {
                    Ok(signer) => (signer.kid.clone(), signer.key.verifying_key()),
                    // Not in our key source (yet): the public key another replica recorded.
                    Err(_) => recorded.get(&v).cloned()?,
                };
                Some(PublishedKey {
                    kid,
                    key,
                    not_before: first_seen.get(&v).copied().unwrap_or_else(Utc::now),
                })
            })
            .collect()
    }

    /// The published key with this id.
    pub fn verifying_key(&self, kid: &str) -> Option<VerifyingKey> {
        self.published()
            .into_iter()
            .find(|k| k.kid == kid)
            .map(|k| k.key)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn first_version_signs_at_once() {
        let seen = BTreeMap::from([(1, at(0))]);
        let p = plan(
            &[1],
            &seen,
            at(1),
            Duration::seconds(600),
            Duration::seconds(660),
        );
        assert_eq!(
            p,
            Plan {
                signing: Some(1),
                published: vec![1]
            }
        );
    }

    #[test]
    fn rotation_publishes_first_signs_after_the_lead_and_retires_after_token_lifetime() {
        let lead = Duration::seconds(600);
        let retire = Duration::seconds(660);
        let seen = BTreeMap::from([(1, at(0)), (2, at(10_000))]);
        // Held but not yet recorded by any replica: published, not signing.
        let p = plan(
            &[1, 2],
            &BTreeMap::from([(1, at(0))]),
            at(9_000),
            lead,
            retire,
        );
        assert_eq!(
            p,
            Plan {
                signing: Some(1),
                published: vec![1, 2]
            }
        );
        // Recorded, within the lead time: still version 1 signs, both published.
        let p = plan(&[1, 2], &seen, at(10_599), lead, retire);
        assert_eq!(
            p,
            Plan {
                signing: Some(1),
                published: vec![1, 2]
            }
        );
        // Lead time over: version 2 signs, version 1 stays published for its tokens.
        let p = plan(&[1, 2], &seen, at(10_600), lead, retire);
        assert_eq!(
            p,
            Plan {
                signing: Some(2),
                published: vec![1, 2]
            }
        );
        let p = plan(&[1, 2], &seen, at(11_259), lead, retire);
        assert_eq!(p.published, vec![1, 2]);
        // Every token version 1 signed has expired: no longer published.
        let p = plan(&[1, 2], &seen, at(11_260), lead, retire);
        assert_eq!(
            p,
            Plan {
                signing: Some(2),
                published: vec![2]
            }
        );
    }

    #[test]
    fn a_replica_without_the_new_key_follows_the_schedule() {
        let (lead, retire) = (Duration::seconds(600), Duration::seconds(660));
        // Another replica recorded version 2; this one still holds only version 1.
        let seen = BTreeMap::from([(1, at(0)), (2, at(10_000))]);
        let p = plan(&[1], &seen, at(10_000), lead, retire);
        assert_eq!(
            p,
            Plan {
                signing: Some(1),
                published: vec![1, 2]
            }
        );
        // Once version 2 is due, version 1 no longer signs anywhere.
        let p = plan(&[1], &seen, at(10_600), lead, retire);
        assert_eq!(p.signing, Some(2));
        let p = plan(&[1], &seen, at(11_260), lead, retire);
        assert_eq!(p.published, vec![2]);
    }

    #[test]
    fn nothing_recorded_means_nothing_signs() {
        let p = plan(
            &[1],
            &BTreeMap::new(),
            at(0),
            Duration::zero(),
            Duration::zero(),
        );
        assert_eq!(
            p,
            Plan {
                signing: None,
                published: vec![1]
            }
        );
    }
}
