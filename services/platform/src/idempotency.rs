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

use sqlx::{PgConnection, PgPool};
use tonic::{Code, Status};

use crate::crypto::service_seal::{SealError, ServiceSealer};
use crate::errors;
use crate::keys::{KeyError, KeySource};

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
///
/// Sealing is [`crate::crypto::service_seal`]'s detached layout (`nonce ‖ ciphertext ‖ tag`,
/// the KEK version in the row's `key_version` column) under the label below; the fingerprint is
/// that key's HMAC of the encoded request.
#[derive(Clone)]
pub struct IdempotencyStore {
    pool: PgPool,
    sealer: ServiceSealer,
}

impl IdempotencyStore {
    pub fn new(pool: PgPool, keys: Arc<dyn KeySource>) -> Self {
        IdempotencyStore {
            pool,
            sealer: ServiceSealer::new(SEALING_KEY_LABEL, keys),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn fingerprint(&self, version: u32, request: &[u8]) -> Result<Vec<u8>, Status> {
        self.sealer
            .mac(version, request)
            .map(|mac| mac.to_vec())
            .map_err(|e| seal_status(e, "idempotency fingerprint"))
    }

    fn seal(&self, version: u32, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, Status> {
        self.sealer
            .seal_detached(version, aad, plain)
            .map_err(|e| seal_status(e, "sealing the idempotent response"))
    }

    fn open(&self, version: u32, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Status> {
        self.sealer
            .open_detached(version, aad, sealed)
            .map_err(|e| seal_status(e, "stored idempotent response unreadable"))
    }
}

/// The derivation label of the answers' key: part of the key, never to change (stored answers
/// would stop opening).
const SEALING_KEY_LABEL: &[u8] = b"carehub idempotency responses v1";

fn seal_status(e: SealError, what: &'static str) -> Status {
    match e {
        SealError::Key(e) => key_status(&e),
        _ => errors::internal(what),
    }
}

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
    let version = store
        .sealer
        .current_version()
        .map_err(|e| E::from(seal_status(e, "idempotency key")))?;
    let fingerprint = store.fingerprint(version, &encoded_request)?;
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
        let same_request =
            store.fingerprint(stored_version, &encoded_request)? == stored_fingerprint;
        if !same_request {
            return Err(errors::status(
                Code::InvalidArgument,
                ErrorReason::IdempotencyKeyReused,
                "idempotency-key was already used with a different request",
            )
            .into());
        }
        let response = store.open(stored_version, &aad, &sealed)?;
        let answer = Resp::decode(response.as_slice())
            .map_err(|_| E::from(errors::internal("stored idempotent response unreadable")))?;
        return Ok(Ran {
            answer,
            replayed: true,
        });
    }
    let answer = op(&mut tx).await?;
    let sealed = store.seal(version, &aad, &answer.encode_to_vec())?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::crypto::service_seal::tests::{unhex, vector_keys};

    const SCOPE: &str = "/carehub.identity.v1.Identity/Register";
    const ACTOR: &str = "user:42";
    const KEY: &str = "retry-key-0001";
    /// Rows written by the store before it used the shared helper (d94bdee, its own copy of the
    /// derivation and sealing), under `vector_keys()`: (KEK version, fingerprint of
    /// `request bytes`, sealed `answer bytes` bound to SCOPE, ACTOR, KEY). Rows live 24 h, so
    /// a deploy finds such rows and their retries must replay.
    const VECTORS: [(u32, &str, &str); 2] = [
        (
            1,
            "b0caa79fceeaf31d7dbbeeebb429a37f8660ca5b0c8ffd8e4db8dae336efa892",
            "17ac16aafadeaf6f8ebbfbde2713851dfc78f4dc57ca706640139fe2c3c82ad72b48da35ec131dcc",
        ),
        (
            2,
            "c262f87f59289e2e54f378fdbe383cf743dbf6fb86c9c6be53b6626f541c57ed",
            "11a28e925323e6b07767f4b7e21a21a84422b05ac603a95c4cfe59e7ff8a25e3b6dabb7f147da2ad",
        ),
    ];

    fn store() -> IdempotencyStore {
        let pool = PgPool::connect_lazy("postgres://unused@127.0.0.1/unused").unwrap();
        IdempotencyStore::new(pool, vector_keys())
    }

    #[tokio::test]
    async fn rows_of_the_previous_code_still_match_and_open() {
        let store = store();
        let aad = associated_data(SCOPE, ACTOR, KEY);
        for (version, fingerprint, sealed) in VECTORS {
            assert_eq!(
                store.fingerprint(version, b"request bytes").unwrap(),
                unhex(fingerprint),
                "v{version}"
            );
            assert_eq!(
                store.open(version, &aad, &unhex(sealed)).unwrap(),
                b"answer bytes",
                "v{version}"
            );
            // Bound to its row and its version.
            assert!(store
                .open(
                    version,
                    &associated_data(SCOPE, ACTOR, "other-key-01"),
                    &unhex(sealed)
                )
                .is_err());
            assert!(store.open(3 - version, &aad, &unhex(sealed)).is_err());
        }
    }

    #[tokio::test]
    async fn answers_do_not_open_for_other_uses() {
        // The same KEK and layout under the outbox's or the audit trail's label: refused both
        // ways, and the fingerprint key differs too.
        let store = store();
        let aad = associated_data(SCOPE, ACTOR, KEY);
        let sealed = unhex(VECTORS[1].2);
        for label in [
            &b"carehub outbox payloads v1"[..],
            b"carehub audit client fields v1",
        ] {
            let other = ServiceSealer::new(label, vector_keys());
            assert!(matches!(
                other.open_detached(2, &aad, &sealed),
                Err(SealError::Authentication)
            ));
            let foreign = other.seal_detached(2, &aad, b"answer bytes").unwrap();
            assert!(store.open(2, &aad, &foreign).is_err());
            assert_ne!(
                other.mac(2, b"request bytes").unwrap().to_vec(),
                unhex(VECTORS[1].1)
            );
        }
    }
}
