//! All SQL of platform::crypto (tables in `carehub_platform`, see the platform migrations).

use sqlx::{PgPool, Row};

pub(crate) struct StoredKey {
    pub version: u32,
    pub kek_version: u32,
    pub wrapped: Vec<u8>,
}

fn to_u32(value: i32, what: &str) -> Result<u32, sqlx::Error> {
    u32::try_from(value).map_err(|_| sqlx::Error::Decode(format!("negative {what}").into()))
}

fn to_i32(value: u32) -> i32 {
    // Versions are created one at a time from 1; they never come near i32::MAX.
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn stored(row: &sqlx::postgres::PgRow) -> Result<StoredKey, sqlx::Error> {
    Ok(StoredKey {
        version: to_u32(row.try_get("version")?, "version")?,
        kek_version: to_u32(row.try_get("kek_version")?, "kek_version")?,
        wrapped: row.try_get("wrapped_key")?,
    })
}

/// The subject's newest data key.
pub(crate) async fn latest_key(
    pool: &PgPool,
    service: &str,
    subject: &str,
) -> Result<Option<StoredKey>, sqlx::Error> {
    sqlx::query(
        "SELECT version, kek_version, wrapped_key FROM carehub_platform.data_keys
         WHERE service = $1 AND subject = $2 ORDER BY version DESC LIMIT 1",
    )
    .bind(service)
    .bind(subject)
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(stored)
    .transpose()
}

pub(crate) async fn key_version(
    pool: &PgPool,
    service: &str,
    subject: &str,
    version: u32,
) -> Result<Option<StoredKey>, sqlx::Error> {
    sqlx::query(
        "SELECT version, kek_version, wrapped_key FROM carehub_platform.data_keys
         WHERE service = $1 AND subject = $2 AND version = $3",
    )
    .bind(service)
    .bind(subject)
    .bind(to_i32(version))
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(stored)
    .transpose()
}

pub(crate) async fn is_shredded(
    pool: &PgPool,
    service: &str,
    subject: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM carehub_platform.data_key_subjects
         WHERE service = $1 AND subject = $2 AND shredded_at IS NOT NULL)",
    )
    .bind(service)
    .bind(subject)
    .fetch_one(pool)
    .await
}

/// Reserves `batch` encryptions of one data key, unless that would pass `limit`. Atomic in one
/// statement, so concurrent reservers (other tasks, other replicas) never share a count.
pub(crate) async fn reserve(
    pool: &PgPool,
    service: &str,
    subject: &str,
    version: u32,
    batch: u64,
    limit: u64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE carehub_platform.data_keys SET uses = uses + $4
         WHERE service = $1 AND subject = $2 AND version = $3 AND uses + $4 <= $5",
    )
    .bind(service)
    .bind(subject)
    .bind(to_i32(version))
    .bind(to_i64(batch))
    .bind(to_i64(limit))
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

pub(crate) enum Created {
    /// Our key is now version `version`, with the first reservation already counted.
    Inserted,
    /// Someone else created that version first; use theirs.
    Exists,
    Shredded,
}

/// Stores a new data-key version with `initial_uses` encryptions reserved.
///
/// Holds the subject's row FOR SHARE while inserting, so that a concurrent shred (which updates
/// that row) either runs first — and this sees `shredded_at` — or waits and then deletes the
/// new key too.
pub(crate) async fn create_key(
    pool: &PgPool,
    service: &str,
    subject: &str,
    key: &StoredKey,
    initial_uses: u64,
) -> Result<Created, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO carehub_platform.data_key_subjects (service, subject) VALUES ($1, $2)
         ON CONFLICT DO NOTHING",
    )
    .bind(service)
    .bind(subject)
    .execute(&mut *tx)
    .await?;
    let shredded: bool = sqlx::query_scalar(
        "SELECT shredded_at IS NOT NULL FROM carehub_platform.data_key_subjects
         WHERE service = $1 AND subject = $2 FOR SHARE",
    )
    .bind(service)
    .bind(subject)
    .fetch_one(&mut *tx)
    .await?;
    if shredded {
        return Ok(Created::Shredded);
    }
    let inserted = sqlx::query(
        "INSERT INTO carehub_platform.data_keys
             (service, subject, version, kek_version, wrapped_key, uses)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(service)
    .bind(subject)
    .bind(to_i32(key.version))
    .bind(to_i32(key.kek_version))
    .bind(&key.wrapped)
    .bind(to_i64(initial_uses))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(if inserted.rows_affected() == 1 {
        Created::Inserted
    } else {
        Created::Exists
    })
}

/// Destroys every data key of the subject and marks it shredded; returns how many keys went.
pub(crate) async fn shred(pool: &PgPool, service: &str, subject: &str) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO carehub_platform.data_key_subjects (service, subject, shredded_at)
         VALUES ($1, $2, now())
         ON CONFLICT (service, subject) DO UPDATE
         SET shredded_at = COALESCE(data_key_subjects.shredded_at, now())",
    )
    .bind(service)
    .bind(subject)
    .execute(&mut *tx)
    .await?;
    let deleted =
        sqlx::query("DELETE FROM carehub_platform.data_keys WHERE service = $1 AND subject = $2")
            .bind(service)
            .bind(subject)
            .execute(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(deleted.rows_affected())
}

/// Keys wrapped under a KEK version older than `target`, in a stable order.
pub(crate) async fn keys_to_rewrap(
    pool: &PgPool,
    service: &str,
    target: u32,
    limit: u32,
) -> Result<Vec<(String, StoredKey)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT subject, version, kek_version, wrapped_key FROM carehub_platform.data_keys
         WHERE service = $1 AND kek_version < $2
         ORDER BY subject, version LIMIT $3",
    )
    .bind(service)
    .bind(to_i32(target))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("subject")?, stored(row)?)))
        .collect()
}

pub(crate) async fn count_to_rewrap(
    pool: &PgPool,
    service: &str,
    target: u32,
) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM carehub_platform.data_keys WHERE service = $1 AND kek_version < $2",
    )
    .bind(service)
    .bind(to_i32(target))
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Replaces one wrapped key, only if it is still wrapped under `from_kek` (so concurrent or
/// repeated rewraps are harmless). Returns whether this call changed it.
pub(crate) async fn replace_wrapped(
    tx: &mut sqlx::PgConnection,
    service: &str,
    subject: &str,
    version: u32,
    from_kek: u32,
    to_kek: u32,
    wrapped: &[u8],
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE carehub_platform.data_keys
         SET kek_version = $5, wrapped_key = $6, rewrapped_at = now()
         WHERE service = $1 AND subject = $2 AND version = $3 AND kek_version = $4",
    )
    .bind(service)
    .bind(subject)
    .bind(to_i32(version))
    .bind(to_i32(from_kek))
    .bind(to_i32(to_kek))
    .bind(wrapped)
    .execute(&mut *tx)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// (KEK version, data keys) for one service, plus subject counts.
pub(crate) async fn stats(
    pool: &PgPool,
    service: &str,
) -> Result<(Vec<(u32, u64)>, u64, u64), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT kek_version, count(*) AS n FROM carehub_platform.data_keys
         WHERE service = $1 GROUP BY kek_version ORDER BY kek_version",
    )
    .bind(service)
    .fetch_all(pool)
    .await?;
    let mut by_kek = Vec::with_capacity(rows.len());
    for row in &rows {
        let n: i64 = row.try_get("n")?;
        by_kek.push((
            to_u32(row.try_get("kek_version")?, "kek_version")?,
            u64::try_from(n).unwrap_or(0),
        ));
    }
    let (subjects, shredded): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE shredded_at IS NULL), count(*) FILTER (WHERE shredded_at IS NOT NULL)
         FROM carehub_platform.data_key_subjects WHERE service = $1",
    )
    .bind(service)
    .fetch_one(pool)
    .await?;
    Ok((
        by_kek,
        u64::try_from(subjects).unwrap_or(0),
        u64::try_from(shredded).unwrap_or(0),
    ))
}
