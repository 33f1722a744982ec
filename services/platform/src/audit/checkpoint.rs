//! Signed checkpoints of the chain head, so that cutting off the tail of the log is detected:
//! a checkpoint signs (service, seq, hash), and the verifier requires the row at that seq to
//! exist with that hash. The signing seed is the service's `audit-checkpoint` key (Vault, see
//! `platform::keys`); the key version is stored with the checkpoint so rotation keeps old
//! checkpoints verifiable. Checkpoints also go to the JSON-lines sink, an external copy that
//! someone with write access to the database cannot take back.

use chrono::{DateTime, SubsecRound as _, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use super::chain::{self, AuditError};
use super::event::hex_bytes;
use crate::keys::{KeyName, KeySource};

const CHECKPOINT_DOMAIN: &[u8] = b"carehub.audit.checkpoint.v1\0";

/// A signed statement "the chain of `service` had `hash` at `seq`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    #[serde(with = "hex_bytes")]
    pub hash: Vec<u8>,
    pub signed_at: DateTime<Utc>,
    pub key_version: u32,
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
}

/// The signed bytes.
pub fn signed_bytes(
    service: &str,
    seq: i64,
    hash: &[u8],
    signed_at: DateTime<Utc>,
    key_version: u32,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128);
    buf.extend_from_slice(CHECKPOINT_DOMAIN);
    buf.extend_from_slice(&(service.len() as u32).to_be_bytes());
    buf.extend_from_slice(service.as_bytes());
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(hash);
    buf.extend_from_slice(&signed_at.timestamp_micros().to_be_bytes());
    buf.extend_from_slice(&key_version.to_be_bytes());
    buf
}

fn signing_key(
    keys: &dyn KeySource,
    version: Option<u32>,
) -> Result<(u32, SigningKey), AuditError> {
    let (version, seed) = match version {
        None => keys.current(KeyName::AuditCheckpoint)?,
        Some(v) => (v, keys.version(KeyName::AuditCheckpoint, v)?),
    };
    Ok((version, SigningKey::from_bytes(seed.as_bytes())))
}

/// The public key of a checkpoint key version (what verification uses).
pub fn verifying_key(keys: &dyn KeySource, version: u32) -> Result<VerifyingKey, AuditError> {
    Ok(signing_key(keys, Some(version))?.1.verifying_key())
}

/// Whether `cp` carries a valid signature by this service's key version `cp.key_version`.
pub fn signature_valid(
    keys: &dyn KeySource,
    service: &str,
    cp: &Checkpoint,
) -> Result<bool, AuditError> {
    let key = verifying_key(keys, cp.key_version)?;
    let Ok(signature) = Signature::from_slice(&cp.signature) else {
        return Ok(false);
    };
    let msg = signed_bytes(service, cp.seq, &cp.hash, cp.signed_at, cp.key_version);
    Ok(key.verify(&msg, &signature).is_ok())
}

/// Signs the current head unless it is already checkpointed (or empty). Returns the new
/// checkpoint, if one was written. Replicas racing here write the same seq once.
pub async fn checkpoint_now(
    pool: &PgPool,
    keys: &dyn KeySource,
    service: &str,
) -> Result<Option<Checkpoint>, AuditError> {
    let mut conn = pool.acquire().await?;
    let (seq, hash) = chain::head(&mut conn).await?;
    if seq == 0 || latest(&mut conn).await?.is_some_and(|cp| cp.seq >= seq) {
        return Ok(None);
    }
    let (key_version, key) = signing_key(keys, None)?;
    let signed_at = Utc::now().trunc_subsecs(6);
    let signature = key
        .sign(&signed_bytes(service, seq, &hash, signed_at, key_version))
        .to_bytes()
        .to_vec();
    let cp = Checkpoint {
        seq,
        hash,
        signed_at,
        key_version,
        signature,
    };
    let inserted = sqlx::query(
        "INSERT INTO carehub_platform.audit_checkpoints (seq, hash, signed_at, key_version, signature)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING",
    )
    .bind(cp.seq)
    .bind(&cp.hash)
    .bind(cp.signed_at)
    .bind(i64::from(cp.key_version))
    .bind(&cp.signature)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(None);
    }
    super::sink::emit_checkpoint(service, &cp);
    Ok(Some(cp))
}

type CheckpointRow = (i64, Vec<u8>, DateTime<Utc>, i32, Vec<u8>);

fn from_tuple((seq, hash, signed_at, key_version, signature): CheckpointRow) -> Checkpoint {
    Checkpoint {
        seq,
        hash,
        signed_at,
        key_version: u32::try_from(key_version).unwrap_or(u32::MAX),
        signature,
    }
}

/// The newest checkpoint.
pub async fn latest(conn: &mut PgConnection) -> Result<Option<Checkpoint>, AuditError> {
    let row: Option<CheckpointRow> = sqlx::query_as(
        "SELECT seq, hash, signed_at, key_version, signature FROM carehub_platform.audit_checkpoints
         ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(from_tuple))
}

/// Every checkpoint with `from <= seq`, oldest first.
pub async fn since(conn: &mut PgConnection, from: i64) -> Result<Vec<Checkpoint>, AuditError> {
    let rows: Vec<CheckpointRow> = sqlx::query_as(
        "SELECT seq, hash, signed_at, key_version, signature FROM carehub_platform.audit_checkpoints
         WHERE seq >= $1 ORDER BY seq",
    )
    .bind(from)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(from_tuple).collect())
}

/// When the background task signs: after `every` new rows, or once new rows are `max_age` old.
pub(crate) fn due(
    rows_since: i64,
    every: u64,
    last_signed: Option<DateTime<Utc>>,
    max_age: chrono::Duration,
) -> bool {
    if rows_since <= 0 {
        return false;
    }
    if rows_since >= i64::try_from(every.max(1)).unwrap_or(i64::MAX) {
        return true;
    }
    last_signed.is_none_or(|t| Utc::now() - t >= max_age)
}

/// One pass of the background checkpointer.
pub async fn maybe_checkpoint(
    pool: &PgPool,
    keys: &dyn KeySource,
    service: &str,
    every: u64,
    max_age: chrono::Duration,
) -> Result<Option<Checkpoint>, AuditError> {
    let mut conn = pool.acquire().await?;
    let (seq, _) = chain::head(&mut conn).await?;
    let last = latest(&mut conn).await?;
    drop(conn);
    let rows_since = seq - last.as_ref().map_or(0, |cp| cp.seq);
    if due(rows_since, every, last.map(|cp| cp.signed_at), max_age) {
        checkpoint_now(pool, keys, service).await
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::keys::StaticKeys;

    #[test]
    fn signatures_bind_service_position_and_key() {
        let keys = StaticKeys::generate();
        let (v, key) = signing_key(&keys, None).unwrap();
        let at = Utc::now().trunc_subsecs(6);
        let sig = key.sign(&signed_bytes("identity", 7, &[3; 32], at, v));
        let cp = Checkpoint {
            seq: 7,
            hash: vec![3; 32],
            signed_at: at,
            key_version: v,
            signature: sig.to_bytes().to_vec(),
        };
        assert!(signature_valid(&keys, "identity", &cp).unwrap());
        assert!(!signature_valid(&keys, "records", &cp).unwrap());
        let moved = Checkpoint {
            seq: 6,
            ..cp.clone()
        };
        assert!(!signature_valid(&keys, "identity", &moved).unwrap());
        let other_keys = StaticKeys::generate();
        assert!(!signature_valid(&other_keys, "identity", &cp).unwrap());
        let unknown = Checkpoint {
            key_version: 9,
            ..cp
        };
        assert!(signature_valid(&keys, "identity", &unknown).is_err());
    }

    #[test]
    fn checkpoints_fall_due_by_rows_or_age() {
        let hour = chrono::Duration::hours(1);
        assert!(!due(0, 10, None, hour));
        assert!(due(10, 10, Some(Utc::now()), hour));
        assert!(!due(3, 10, Some(Utc::now()), hour));
        assert!(due(
            3,
            10,
            Some(Utc::now() - chrono::Duration::hours(2)),
            hour
        ));
        assert!(due(1, 10, None, hour));
    }
}
