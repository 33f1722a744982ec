//! Calendar feed tokens (only their SHA-256 is stored) and what a feed shows.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct FeedRow {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub owner_kind: String,
    pub time_zone: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, owner_id, owner_kind, time_zone, created_at, revoked_at";

pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    owner: Uuid,
    kind: &str,
    time_zone: &str,
    token_hash: &[u8],
) -> Result<FeedRow> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO calendar_feeds (id, owner_id, owner_kind, time_zone, token_hash)
         VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(owner)
    .bind(kind)
    .bind(time_zone)
    .bind(token_hash)
    .fetch_one(conn)
    .await?)
}

/// Feeds of `owner` not revoked.
pub async fn live_of_owner(conn: &mut PgConnection, owner: Uuid) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM calendar_feeds WHERE owner_id = $1 AND revoked_at IS NULL",
    )
    .bind(owner)
    .fetch_one(conn)
    .await?)
}

pub async fn of_owner(conn: &mut PgConnection, owner: Uuid) -> Result<Vec<FeedRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM calendar_feeds WHERE owner_id = $1 ORDER BY created_at, id LIMIT 100"
    ))
    .bind(owner)
    .fetch_all(conn)
    .await?)
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<FeedRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM calendar_feeds WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

pub async fn revoke(conn: &mut PgConnection, id: Uuid) -> Result<FeedRow> {
    Ok(sqlx::query_as(&format!(
        "UPDATE calendar_feeds SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_one(conn)
    .await?)
}

/// The live feed whose token hashes to `hash`.
pub async fn by_token(conn: &mut PgConnection, hash: &[u8]) -> Result<Option<FeedRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM calendar_feeds WHERE token_hash = $1 AND revoked_at IS NULL"
    ))
    .bind(hash)
    .fetch_optional(conn)
    .await?)
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct FeedItem {
    pub id: Uuid,
    pub modality: String,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub status: String,
    pub revision: i64,
    pub updated_at: DateTime<Utc>,
}

/// The owner's appointments starting after `since` (at most 1000, by start).
pub async fn items(
    conn: &mut PgConnection,
    feed: &FeedRow,
    since: DateTime<Utc>,
) -> Result<Vec<FeedItem>> {
    let column = if feed.owner_kind == "provider" {
        "provider_id"
    } else {
        "patient_id"
    };
    Ok(sqlx::query_as(&format!(
        "SELECT id, modality, start_time, end_time, status, revision, updated_at
           FROM appointments WHERE {column} = $1 AND start_time >= $2
          ORDER BY start_time, id LIMIT 1000"
    ))
    .bind(feed.owner_id)
    .bind(since)
    .fetch_all(conn)
    .await?)
}
