//! Idempotency keys for mutating RPCs.
//!
//! A client sends `idempotency-key` with a mutating call. The first call runs and its encoded
//! answer is stored in the same transaction as its change; a retry with the same key and the
//! same request gets that answer back without running again; the same key with a different
//! request is refused (INVALID_ARGUMENT / IDEMPOTENCY_KEY_REUSED). Two concurrent calls with one
//! key serialize on the key's row: the second waits for the first to commit, then replays it.
//! A failed call stores nothing, so its retry runs afresh.

use carehub_proto::common::v1::ErrorReason;
use futures::future::BoxFuture;
use prost::Message;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::{PgConnection, PgPool};
use tonic::{Code, Status};
use zeroize::Zeroizing;

use crate::errors;
use crate::keys::{KeyError, KeyName, KeySource};

/// Metadata key carrying the client's idempotency key.
pub const HEADER: &str = "idempotency-key";

/// Reads and checks the request's idempotency key (8..=128 visible ASCII characters), if any.
pub fn key_of<T>(req: &tonic::Request<T>) -> Result<Option<String>, Status> {
    let Some(value) = req.metadata().get(HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| errors::invalid_field(HEADER, "must be visible ASCII"))?;
    if !(8..=128).contains(&key.len()) || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(errors::invalid_field(
            HEADER,
            "must be 8 to 128 visible ASCII characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

/// Where answers are kept: the service's database, sealed with a key derived from its KEK.
///
/// Answers can carry personal data (a registration echoes name and email), so they never sit in
/// the database in clear; the request fingerprint is keyed as well, so it cannot be used to test
/// guesses of what a request contained. A rotated KEK keeps older versions, so answers stored
/// before a rotation still replay. Answers of a crypto-shredded subject stay readable only until
/// [`purge_older_than`] removes them (the retention is short: they only serve retries).
#[derive(Clone)]
pub struct IdempotencyStore {
    pool: PgPool,
    keys: Arc<dyn KeySource>,
}

impl IdempotencyStore {
    pub fn new(pool: PgPool, keys: Arc<dyn KeySource>) -> Self {
        IdempotencyStore { pool, keys }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The sealing key of KEK `version`: derived, so the KEK itself only ever wraps data keys.
    fn sealing_key(&self, version: u32) -> Result<Zeroizing<[u8; 32]>, Status> {
        let kek = self
            .keys
            .version(KeyName::Kek, version)
            .map_err(|e| key_status(&e))?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(kek.as_bytes())
            .map_err(|_| errors::internal("idempotency key derivation"))?;
        mac.update(SEALING_KEY_LABEL);
        Ok(Zeroizing::new(mac.finalize().into_bytes().into()))
    }

    fn fingerprint(&self, key: &[u8; 32], request: &[u8]) -> Result<Vec<u8>, Status> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .map_err(|_| errors::internal("idempotency fingerprint"))?;
        mac.update(request);
        Ok(mac.finalize().into_bytes().to_vec())
    }

    fn seal(&self, key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, Status> {
        let mut nonce = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let sealed = Aes256Gcm::new(key.into())
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| errors::internal("sealing the idempotent response"))?;
        let mut out = Vec::with_capacity(12 + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn open(&self, key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Status> {
        if sealed.len() < 12 {
            return Err(errors::internal("stored idempotent response unreadable"));
        }
        let (nonce, body) = sealed.split_at(12);
        Aes256Gcm::new(key.into())
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
            .map_err(|_| errors::internal("stored idempotent response unreadable"))
    }
}

const SEALING_KEY_LABEL: &[u8] = b"carehub idempotency responses v1";

fn key_status(e: &KeyError) -> Status {
    let code = match e {
        KeyError::Stale { .. } | KeyError::Unavailable(_) => Code::Unavailable,
        _ => Code::Internal,
    };
    let reason = if code == Code::Unavailable {
        ErrorReason::Unavailable
    } else {
        ErrorReason::Internal
    };
    errors::status(
        code,
        reason,
        "keys needed to store the answer are unavailable",
    )
}

/// Binds a sealed answer to its row: copied to another key, scope or actor it does not open.
fn associated_data(scope: &str, actor: &str, key: &str) -> Vec<u8> {
    [scope, actor, key].join("\u{1f}").into_bytes()
}

/// Runs `op` in one transaction, at most once per (`scope`, `actor`, `key`).
///
/// `scope` is the RPC path, `actor` the caller's [`crate::auth::Caller::actor_key`]. Without a
/// key the call simply runs in a transaction. `op` gets the open transaction and must do all of
/// its writes through it; its error rolls everything back.
///
/// Handlers use [`crate::call::Call::mutate`], which also records the change's audit events in
/// the transaction; this is the boxed-closure form it grew from, kept for callers outside RPCs.
pub async fn run<Req, Resp, E, F>(
    store: &IdempotencyStore,
    scope: &str,
    actor: &str,
    key: Option<&str>,
    request: &Req,
    op: F,
) -> Result<Resp, E>
where
    Req: Message,
    Resp: Message + Default,
    E: From<Status> + From<sqlx::Error>,
    F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<Resp, E>>,
{
    let once = Once {
        scope,
        actor,
        key,
        request,
    };
    Ok(run_once(store, &once, async move |tx: &mut PgConnection| {
        op(tx).await
    })
    .await?
    .answer)
}

/// Which call [`run_once`] runs at most once: the RPC path, who called, the client's key and
/// the request the key is bound to.
pub struct Once<'a, Req> {
    pub scope: &'a str,
    pub actor: &'a str,
    pub key: Option<&'a str>,
    pub request: &'a Req,
}

/// An answer, and whether it is the stored answer of an earlier call with the same key (the
/// operation did not run: no effect of it may be repeated, no notification sent again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran<T> {
    pub answer: T,
    pub replayed: bool,
}

/// [`run`] with `op` as an async closure, telling a replay from a first run.
pub async fn run_once<Req, Resp, E, F>(
    store: &IdempotencyStore,
    once: &Once<'_, Req>,
    op: F,
) -> Result<Ran<Resp>, E>
where
    Req: Message,
    Resp: Message + Default,
    E: From<Status> + From<sqlx::Error>,
    F: AsyncFnOnce(&mut PgConnection) -> Result<Resp, E>,
{
    let Once {
        scope,
        actor,
        key,
        request,
    } = *once;
    let mut tx = store.pool.begin().await?;
    let Some(key) = key else {
        let answer = op(&mut tx).await?;
        tx.commit().await?;
        return Ok(Ran {
            answer,
            replayed: false,
        });
    };
    let encoded_request = request.encode_to_vec();
    let (version, _) = store
        .keys
        .current(KeyName::Kek)
        .map_err(|e| E::from(key_status(&e)))?;
    let sealing_key = store.sealing_key(version)?;
    let fingerprint = store.fingerprint(&sealing_key, &encoded_request)?;
    let aad = associated_data(scope, actor, key);
    // Claim the key; a concurrent holder makes this wait until it commits or rolls back.
    let claimed = sqlx::query(
        "INSERT INTO carehub_platform.idempotency_keys
             (scope, actor, key, request_hash, response, key_version)
         VALUES ($1, $2, $3, $4, '', $5) ON CONFLICT DO NOTHING",
    )
    .bind(scope)
    .bind(actor)
    .bind(key)
    .bind(&fingerprint)
    .bind(i64::from(version))
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !claimed {
        let (stored_fingerprint, sealed, stored_version): (Vec<u8>, Vec<u8>, i32) = sqlx::query_as(
            "SELECT request_hash, response, key_version FROM carehub_platform.idempotency_keys
             WHERE scope = $1 AND actor = $2 AND key = $3",
        )
        .bind(scope)
        .bind(actor)
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
        tx.rollback().await?;
        let stored_version = u32::try_from(stored_version)
            .map_err(|_| E::from(errors::internal("stored idempotent response unreadable")))?;
        let stored_key = store.sealing_key(stored_version)?;
        let same_request = store.fingerprint(&stored_key, &encoded_request)? == stored_fingerprint;
        if !same_request {
            return Err(errors::status(
                Code::InvalidArgument,
                ErrorReason::IdempotencyKeyReused,
                "idempotency-key was already used with a different request",
            )
            .into());
        }
        let response = store.open(&stored_key, &aad, &sealed)?;
        let answer = Resp::decode(response.as_slice())
            .map_err(|_| E::from(errors::internal("stored idempotent response unreadable")))?;
        return Ok(Ran {
            answer,
            replayed: true,
        });
    }
    let answer = op(&mut tx).await?;
    let sealed = store.seal(&sealing_key, &aad, &answer.encode_to_vec())?;
    sqlx::query(
        "UPDATE carehub_platform.idempotency_keys SET response = $4
         WHERE scope = $1 AND actor = $2 AND key = $3",
    )
    .bind(scope)
    .bind(actor)
    .bind(key)
    .bind(sealed)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ran {
        answer,
        replayed: false,
    })
}

/// Deletes stored answers older than `max_age` (run periodically by each service).
pub async fn purge_older_than(
    pool: &PgPool,
    max_age: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    let secs = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    Ok(sqlx::query(
        "DELETE FROM carehub_platform.idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
    )
    .bind(secs as f64)
    .execute(pool)
    .await?
    .rows_affected())
}

/// How long answers are kept for retries: long enough for any client's retry policy, short
/// enough that sealed personal data does not pile up.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Purges answers older than `retention` every `every`, until the task is aborted.
pub fn spawn_purger(
    pool: PgPool,
    retention: std::time::Duration,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match purge_older_than(&pool, retention).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(purged = n, "old idempotent answers purged"),
                Err(err) => tracing::warn!(error = %err, "purging idempotent answers failed"),
            }
        }
    })
}
