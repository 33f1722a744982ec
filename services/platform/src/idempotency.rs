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
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use tonic::{Code, Status};

use crate::errors;

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

/// Runs `op` in one transaction, at most once per (`scope`, `actor`, `key`).
///
/// `scope` is the RPC path, `actor` the caller's [`crate::auth::Caller::actor_key`]. Without a
/// key the call simply runs in a transaction. `op` gets the open transaction and must do all of
/// its writes through it; its error rolls everything back.
pub async fn run<Req, Resp, E, F>(
    pool: &PgPool,
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
    let mut tx = pool.begin().await?;
    let Some(key) = key else {
        let resp = op(&mut tx).await?;
        tx.commit().await?;
        return Ok(resp);
    };
    let hash = Sha256::digest(request.encode_to_vec()).to_vec();
    // Claim the key; a concurrent holder makes this wait until it commits or rolls back.
    let claimed = sqlx::query(
        "INSERT INTO carehub_platform.idempotency_keys (scope, actor, key, request_hash, response)
         VALUES ($1, $2, $3, $4, '') ON CONFLICT DO NOTHING",
    )
    .bind(scope)
    .bind(actor)
    .bind(key)
    .bind(&hash)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !claimed {
        let (stored_hash, response): (Vec<u8>, Vec<u8>) = sqlx::query_as(
            "SELECT request_hash, response FROM carehub_platform.idempotency_keys
             WHERE scope = $1 AND actor = $2 AND key = $3",
        )
        .bind(scope)
        .bind(actor)
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
        tx.rollback().await?;
        if stored_hash != hash {
            return Err(errors::status(
                Code::InvalidArgument,
                ErrorReason::IdempotencyKeyReused,
                "idempotency-key was already used with a different request",
            )
            .into());
        }
        return Resp::decode(response.as_slice())
            .map_err(|_| E::from(errors::internal("stored idempotent response unreadable")));
    }
    let resp = op(&mut tx).await?;
    sqlx::query(
        "UPDATE carehub_platform.idempotency_keys SET response = $4
         WHERE scope = $1 AND actor = $2 AND key = $3",
    )
    .bind(scope)
    .bind(actor)
    .bind(key)
    .bind(resp.encode_to_vec())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(resp)
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
