//! Envelope encryption of PHI fields (DESIGN.md §4, issue 3 item 2).
//!
//! - Each subject (patient) has, per service, a **data key**: random AES-256, wrapped
//!   (AES-256-GCM) by the service's key-encryption key (KEK, from Vault through
//!   [`KeySource`]) and stored in `carehub_platform.data_keys` with the KEK version. The
//!   database never holds a usable key; Vault never sees data.
//! - A field is encrypted with AES-256-GCM under the subject's current data key, with a random
//!   96-bit nonce and associated data binding service, table, column, row id and subject (layout
//!   in [`format`]). Copied anywhere else, it fails to decrypt with
//!   [`CryptoError::Authentication`].
//! - Each data key counts its encryptions in the database; at `max_uses_per_key` (default
//!   2^30, far below the 2^32 bound for random nonces) the next encryption creates a new
//!   version. Counts are reserved in batches, so most encryptions touch no database; a batch
//!   lost in a crash only retires the key a little early.
//! - Unwrapped keys are cached (bounded, aged out, wiped on drop): a read with a cached key
//!   makes no Vault and no database call.
//! - [`Envelope::shred`] destroys a subject's data keys: everything written for it becomes
//!   unreadable ([`CryptoError::Shredded`]), other subjects are untouched. Other replicas stop
//!   using their cached copy within `cache_ttl_secs`.
//! - [`rewrap`] moves data keys to the newest KEK without touching the encrypted data;
//!   [`data_key_stats`] counts keys per KEK version.
//!
//! Encrypting and decrypting inside the caller's transaction is fine: the key table is read
//! and written through a small pool of the envelope's own (`key_pool_connections`), so a burst
//! of transactions holding every connection of the service's pool cannot starve key loads.

mod blind;
mod cache;
mod error;
pub mod format;
mod rewrap;
pub mod service_seal;
mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::{Aes256Gcm, KeyInit};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use zeroize::Zeroizing;

pub use blind::{BlindIndexer, Normalization, BLIND_INDEX_LEN};
pub use error::CryptoError;
pub use format::{Field, Header};
pub use rewrap::{data_key_stats, rewrap, rewrap_in_batches, DataKeyStats, RewrapProgress};
pub use service_seal::ServiceSealer;

use crate::keys::{KeyName, KeySource};
use cache::{Cipher, KeyCache};
use store::StoredKey;

/// Tuning of envelope encryption; the defaults suit production.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CryptoConfig {
    /// Encryptions per data key before a new version is made (at most 2^31).
    pub max_uses_per_key: u64,
    /// Encryptions reserved per database round trip.
    pub reservation_batch: u64,
    /// Subjects whose unwrapped keys are kept in memory.
    pub cache_capacity: usize,
    /// How long an unwrapped key is used before it is read again (bounds how long a replica
    /// can still use a key shredded by another).
    pub cache_ttl_secs: u64,
    /// Connections of the envelope's own pool for the key tables (opened on demand).
    pub key_pool_connections: u32,
}

impl Default for CryptoConfig {
    fn default() -> Self {
        CryptoConfig {
            max_uses_per_key: 1 << 30,
            reservation_batch: 256,
            cache_capacity: 10_000,
            cache_ttl_secs: 300,
            key_pool_connections: 4,
        }
    }
}

impl CryptoConfig {
    pub fn validate(&self) -> Result<(), CryptoError> {
        if self.max_uses_per_key == 0 || self.max_uses_per_key > 1 << 31 {
            return Err(CryptoError::Invalid(
                "max_uses_per_key must be between 1 and 2^31".into(),
            ));
        }
        if self.reservation_batch == 0 || self.reservation_batch > self.max_uses_per_key {
            return Err(CryptoError::Invalid(
                "reservation_batch must be between 1 and max_uses_per_key".into(),
            ));
        }
        if self.key_pool_connections == 0 {
            return Err(CryptoError::Invalid(
                "key_pool_connections must be at least 1".into(),
            ));
        }
        if self.cache_capacity == 0 {
            return Err(CryptoError::Invalid(
                "cache_capacity must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What this process did with data keys; tests read it to prove what the hot path touches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CryptoCounters {
    /// Statements sent to the key tables (loads, reservations, creations, shreds).
    pub db_calls: u64,
    /// Data keys unwrapped with a KEK.
    pub unwraps: u64,
    /// Data-key versions this process created.
    pub keys_created: u64,
}

#[derive(Default)]
struct Counters {
    db_calls: AtomicU64,
    unwraps: AtomicU64,
    keys_created: AtomicU64,
}

/// Envelope encryption for one service. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Envelope {
    inner: Arc<Inner>,
}

struct Inner {
    service: String,
    /// The key tables' own pool (same database as the service's pool).
    pool: PgPool,
    keys: Arc<dyn KeySource>,
    config: CryptoConfig,
    cache: KeyCache,
    counters: Counters,
    blind: BlindIndexer,
    /// Single-flight for refilling a subject's reservation: one task per process (per stripe)
    /// goes to the database, the others wait and take from what it reserved. Without it, many
    /// tasks of one replica race each other for the same few batches.
    refill: Vec<tokio::sync::Mutex<()>>,
}

const REFILL_STRIPES: usize = 64;

/// Creating or reserving a data key retries when other writers win the race; each retry sees
/// their result, so a handful always suffices short of a pathological configuration.
const MAX_ATTEMPTS: u32 = 16;

fn cipher_of(key: &[u8; 32]) -> Result<Aes256Gcm, CryptoError> {
    Aes256Gcm::new_from_slice(key).map_err(|_| CryptoError::Invalid("key length".into()))
}

impl Envelope {
    /// Envelope encryption for `service` in the database of `pool` (whose connection settings
    /// the envelope's own key pool copies).
    ///
    /// The key pool is as warm as `pool`: a service that keeps its own connections open keeps
    /// all `key_pool_connections` open too (opened in the background, kept), so that data-key
    /// reservations running out together mid-load never open a connection on the request path
    /// (DESIGN.md §9); a service whose pool opens on demand (tests, small tools) opens its key
    /// connections on demand as well.
    pub fn new(
        service: impl Into<String>,
        pool: PgPool,
        keys: Arc<dyn KeySource>,
        config: CryptoConfig,
    ) -> Result<Self, CryptoError> {
        config.validate()?;
        let options = pool.connect_options().as_ref().clone();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(config.key_pool_connections)
            .min_connections(key_pool_min(&pool, &config))
            .idle_timeout(None)
            // Neither idle timeout nor lifetime: sqlx then opens the minimum at once (with
            // either, its maintenance task would only refill after the first reaping), and a
            // kept key connection is never replaced mid-load.
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|_, _| {
                Box::pin(async {
                    crate::stats::db_connection_opened();
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        let service = service.into();
        if service.is_empty() {
            return Err(CryptoError::Invalid("service name is empty".into()));
        }
        let ttl = Duration::from_secs(config.cache_ttl_secs);
        Ok(Envelope {
            inner: Arc::new(Inner {
                blind: BlindIndexer::new(service.clone(), Arc::clone(&keys)),
                cache: KeyCache::new(config.cache_capacity, ttl),
                service,
                pool,
                keys,
                config,
                counters: Counters::default(),
                refill: (0..REFILL_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
            }),
        })
    }

    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// Blind indexes with this service's blind-index key.
    pub fn blind_index(&self) -> &BlindIndexer {
        &self.inner.blind
    }

    pub fn counters(&self) -> CryptoCounters {
        let c = &self.inner.counters;
        CryptoCounters {
            db_calls: c.db_calls.load(Ordering::Relaxed),
            unwraps: c.unwraps.load(Ordering::Relaxed),
            keys_created: c.keys_created.load(Ordering::Relaxed),
        }
    }

    /// Encrypts `plaintext` for `field` under the subject's current data key.
    pub async fn encrypt(
        &self,
        field: &Field<'_>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        check_field(field)?;
        let (version, cipher) = self.current_key(field.subject).await?;
        format::seal_field(&cipher, &self.inner.service, field, version, plaintext)
            .map_err(|_| CryptoError::Invalid("plaintext too long for AES-GCM".into()))
    }

    pub async fn encrypt_str(
        &self,
        field: &Field<'_>,
        plaintext: &str,
    ) -> Result<Vec<u8>, CryptoError> {
        self.encrypt(field, plaintext.as_bytes()).await
    }

    /// Decrypts a ciphertext read from `field`.
    pub async fn decrypt(
        &self,
        field: &Field<'_>,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        check_field(field)?;
        let header = format::parse_header(ciphertext).map_err(|e| CryptoError::Malformed {
            table: field.table.to_owned(),
            column: field.column.to_owned(),
            row: field.row.to_owned(),
            reason: e.reason(),
        })?;
        let cipher = self.key(field.subject, header.key_version).await?;
        format::open_field(&cipher, &self.inner.service, field, ciphertext).map_err(|_| {
            CryptoError::Authentication {
                table: field.table.to_owned(),
                column: field.column.to_owned(),
                row: field.row.to_owned(),
            }
        })
    }

    /// Decrypts a field that holds UTF-8 text.
    pub async fn decrypt_string(
        &self,
        field: &Field<'_>,
        ciphertext: &[u8],
    ) -> Result<String, CryptoError> {
        let plaintext = self.decrypt(field, ciphertext).await?;
        String::from_utf8(plaintext.to_vec()).map_err(|_| CryptoError::Malformed {
            table: field.table.to_owned(),
            column: field.column.to_owned(),
            row: field.row.to_owned(),
            reason: "plaintext is not UTF-8",
        })
    }

    /// Seals `text` in the cell (`table`, `column`, `row`) under `subject`'s data key: what most
    /// services store encrypted, a row's text column keyed by ids.
    pub async fn seal_cell(
        &self,
        subject: uuid::Uuid,
        (table, column, row): (&str, &str, uuid::Uuid),
        text: &str,
    ) -> Result<Vec<u8>, CryptoError> {
        let (row, subject) = (row.to_string(), subject.to_string());
        self.encrypt_str(&Field::new(table, column, &row, &subject), text)
            .await
    }

    /// Opens what [`Envelope::seal_cell`] sealed for the same cell and subject.
    pub async fn open_cell(
        &self,
        subject: uuid::Uuid,
        (table, column, row): (&str, &str, uuid::Uuid),
        sealed: &[u8],
    ) -> Result<String, CryptoError> {
        let (row, subject) = (row.to_string(), subject.to_string());
        self.decrypt_string(&Field::new(table, column, &row, &subject), sealed)
            .await
    }

    /// Destroys all data keys of `subject` (crypto-shredding) and refuses new data for it.
    /// Idempotent; returns how many key versions were destroyed by this call.
    pub async fn shred(&self, subject: &str) -> Result<u64, CryptoError> {
        check_id("subject", subject)?;
        self.db_call();
        let destroyed = store::shred(&self.inner.pool, &self.inner.service, subject).await?;
        self.inner.cache.forget(subject);
        Ok(destroyed)
    }

    fn db_call(&self) {
        self.inner.counters.db_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// The data key version `version` of `subject`, from the cache or unwrapped from the table.
    async fn key(&self, subject: &str, version: u32) -> Result<Cipher, CryptoError> {
        if let Some(cipher) = self.inner.cache.get(subject, version) {
            return Ok(cipher);
        }
        let inner = &self.inner;
        self.db_call();
        match store::key_version(&inner.pool, &inner.service, subject, version).await? {
            Some(stored) => {
                let cipher = self.unwrap_stored(subject, &stored)?;
                inner.cache.insert(subject, version, Arc::clone(&cipher));
                Ok(cipher)
            }
            None => {
                self.db_call();
                if store::is_shredded(&inner.pool, &inner.service, subject).await? {
                    Err(CryptoError::Shredded {
                        subject: subject.to_owned(),
                    })
                } else {
                    Err(CryptoError::UnknownDataKey {
                        subject: subject.to_owned(),
                        version,
                    })
                }
            }
        }
    }

    fn unwrap_stored(&self, subject: &str, stored: &StoredKey) -> Result<Cipher, CryptoError> {
        let kek = self.inner.keys.version(KeyName::Kek, stored.kek_version)?;
        let kek = cipher_of(kek.as_bytes())?;
        let key = format::unwrap_key(
            &kek,
            &self.inner.service,
            subject,
            stored.version,
            &stored.wrapped,
        )
        .ok_or_else(|| CryptoError::Unwrap {
            subject: subject.to_owned(),
            version: stored.version,
            kek_version: stored.kek_version,
        })?;
        self.inner.counters.unwraps.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(cipher_of(&key)?))
    }

    /// The key to encrypt with now, with one encryption counted against it.
    async fn current_key(&self, subject: &str) -> Result<(u32, Cipher), CryptoError> {
        let inner = &self.inner;
        let (batch, limit) = (
            inner.config.reservation_batch,
            inner.config.max_uses_per_key,
        );
        if let Ok(current) = inner.cache.take_current(subject) {
            return Ok(current);
        }
        let stripe = {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(subject, &mut hasher);
            // The modulo keeps the index below REFILL_STRIPES, so it fits usize.
            (std::hash::Hasher::finish(&hasher) % REFILL_STRIPES as u64) as usize
        };
        let _refilling = inner.refill[stripe].lock().await;
        // Whoever held the lock before may have refilled it already.
        let mut known = match inner.cache.take_current(subject) {
            Ok(current) => return Ok(current),
            Err(exhausted) => exhausted,
        };
        for _ in 0..MAX_ATTEMPTS {
            let version = match known.take() {
                Some(version) => version,
                None => {
                    self.db_call();
                    match store::latest_key(&inner.pool, &inner.service, subject).await? {
                        Some(stored) => {
                            if inner.cache.get(subject, stored.version).is_none() {
                                let cipher = self.unwrap_stored(subject, &stored)?;
                                inner.cache.insert(subject, stored.version, cipher);
                            }
                            stored.version
                        }
                        None => 0,
                    }
                }
            };
            if version > 0 {
                self.db_call();
                if store::reserve(&inner.pool, &inner.service, subject, version, batch, limit)
                    .await?
                {
                    let cipher = self.key(subject, version).await?;
                    inner
                        .cache
                        .add_reservation(subject, version, Arc::clone(&cipher), batch);
                    return Ok((version, cipher));
                }
            }
            // Version `version` is used up (or none exists): make the next one.
            let next = version + 1;
            let (kek_version, kek) = inner.keys.current(KeyName::Kek)?;
            let kek = cipher_of(kek.as_bytes())?;
            // Keys come straight from the OS generator (nonces use the faster thread-local CSPRNG).
            let mut key = Zeroizing::new([0u8; 32]);
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, key.as_mut());
            let wrapped = format::wrap_key(&kek, &inner.service, subject, next, &key)
                .map_err(|_| CryptoError::Invalid("wrap failed".into()))?;
            let stored = StoredKey {
                version: next,
                kek_version,
                wrapped,
            };
            self.db_call();
            match store::create_key(&inner.pool, &inner.service, subject, &stored, batch).await? {
                store::Created::Inserted => {
                    inner.counters.keys_created.fetch_add(1, Ordering::Relaxed);
                    let cipher = Arc::new(cipher_of(&key)?);
                    inner
                        .cache
                        .add_reservation(subject, next, Arc::clone(&cipher), batch);
                    return Ok((next, cipher));
                }
                store::Created::Exists => {
                    // Another writer made `next` first: reserve from theirs.
                    known = Some(next);
                }
                store::Created::Shredded => {
                    inner.cache.forget(subject);
                    return Err(CryptoError::Shredded {
                        subject: subject.to_owned(),
                    });
                }
            }
        }
        Err(CryptoError::Contended {
            subject: subject.to_owned(),
            attempts: MAX_ATTEMPTS,
        })
    }
}

fn check_id(what: &str, value: &str) -> Result<(), CryptoError> {
    if value.is_empty() || value.len() > 256 {
        return Err(CryptoError::Invalid(format!(
            "{what} must be 1 to 256 bytes"
        )));
    }
    Ok(())
}

fn check_field(field: &Field<'_>) -> Result<(), CryptoError> {
    check_id("table", field.table)?;
    check_id("column", field.column)?;
    check_id("row", field.row)?;
    check_id("subject", field.subject)
}

/// The key pool's connections kept open: all of them when the service's own pool keeps some open.
fn key_pool_min(service_pool: &PgPool, config: &CryptoConfig) -> u32 {
    if service_pool.options().get_min_connections() > 0 {
        config.key_pool_connections
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn lazy_pool(min: u32) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .min_connections(min)
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap()
    }

    #[tokio::test]
    async fn the_key_pool_is_kept_open_when_the_service_pool_is() {
        let config = CryptoConfig::default();
        let keys: Arc<dyn KeySource> = Arc::new(crate::keys::StaticKeys::generate());
        let warm =
            Envelope::new("records", lazy_pool(16), Arc::clone(&keys), config.clone()).unwrap();
        assert_eq!(
            warm.inner.pool.options().get_min_connections(),
            config.key_pool_connections
        );
        let on_demand = Envelope::new("records", lazy_pool(0), keys, config).unwrap();
        assert_eq!(on_demand.inner.pool.options().get_min_connections(), 0);
    }
}
