//! Chart entries and their versions. An entry's current version is `entries.version`; every
//! version ever written stays in `entry_versions`. A change advances the version with a
//! compare-and-set on the version the caller's etag names, so of two writers holding the same
//! etag exactly one wins and the other learns the version that beat it.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::content::Kind;
use crate::error::{RecordsError, Result};

/// Who put a version into the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Patient,
    Provider,
    Staff,
    Integration,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Patient => "patient",
            Source::Provider => "provider",
            Source::Staff => "staff",
            Source::Integration => "integration",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "patient" => Some(Source::Patient),
            "provider" => Some(Source::Provider),
            "staff" => Some(Source::Staff),
            "integration" => Some(Source::Integration),
            _ => None,
        }
    }
}

/// One version of one entry, content still sealed.
#[derive(Debug, sqlx::FromRow)]
pub struct VersionRow {
    pub entry_id: Uuid,
    pub patient_id: Uuid,
    pub kind: String,
    pub version: i64,
    pub content: Vec<u8>,
    pub source: String,
    pub entered_by: Option<Uuid>,
    pub entered_at: DateTime<Utc>,
    pub verified_by: Option<Uuid>,
    pub verified_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Who entered the first version (none for an integration).
    pub created_by: Option<Uuid>,
}

impl VersionRow {
    /// Whether `user` entered this entry's first version or this version.
    pub fn authored_by(&self, user: Uuid) -> bool {
        self.created_by == Some(user) || self.entered_by == Some(user)
    }
}

const VERSION_COLUMNS: &str = "e.id AS entry_id, e.patient_id, e.kind, v.version, v.content, \
    v.source, v.entered_by, v.entered_at, v.verified_by, v.verified_at, e.created_at, \
    e.created_by";

/// A new version's provenance.
#[derive(Clone, Copy, Debug)]
pub struct Entered {
    pub source: Source,
    /// `None` only for an integration.
    pub by: Option<Uuid>,
    /// The provider who verified this version (VerifyEntry).
    pub verified_by: Option<Uuid>,
}

/// Creates entry `id` of `patient` at version 1 with `content` (sealed for version 1).
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    patient: Uuid,
    kind: Kind,
    content: &[u8],
    entered: Entered,
) -> Result<VersionRow> {
    sqlx::query(
        "INSERT INTO entries (id, patient_id, kind, version, created_by) VALUES ($1, $2, $3, 1, $4)",
    )
    .bind(id)
    .bind(patient)
    .bind(kind.as_str())
    .bind(entered.by)
        .execute(&mut *conn)
        .await?;
    insert_version(conn, id, 1, content, entered).await?;
    current(conn, patient, id)
        .await?
        .ok_or_else(|| RecordsError::Internal(format!("entry {id} vanished in its transaction")))
}

async fn insert_version(
    conn: &mut PgConnection,
    entry: Uuid,
    version: i64,
    content: &[u8],
    entered: Entered,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO entry_versions
             (entry_id, version, content, source, entered_by, verified_by, verified_at)
         VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $6::uuid IS NULL THEN NULL ELSE now() END)",
    )
    .bind(entry)
    .bind(version)
    .bind(content)
    .bind(entered.source.as_str())
    .bind(entered.by)
    .bind(entered.verified_by)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The current version of `entry` in `patient`'s chart.
pub async fn current(
    conn: &mut PgConnection,
    patient: Uuid,
    entry: Uuid,
) -> Result<Option<VersionRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {VERSION_COLUMNS} FROM entries e
           JOIN entry_versions v ON v.entry_id = e.id AND v.version = e.version
          WHERE e.id = $1 AND e.patient_id = $2"
    ))
    .bind(entry)
    .bind(patient)
    .fetch_optional(&mut *conn)
    .await?)
}

/// The current version of every entry of `patient`, oldest entry first; at most `limit`.
pub async fn chart(conn: &mut PgConnection, patient: Uuid, limit: i64) -> Result<Vec<VersionRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {VERSION_COLUMNS} FROM entries e
           JOIN entry_versions v ON v.entry_id = e.id AND v.version = e.version
          WHERE e.patient_id = $1
          ORDER BY e.created_at, e.id
          LIMIT $2"
    ))
    .bind(patient)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// Every version of `entry`, newest first (empty when `patient` has no such entry).
pub async fn history(
    conn: &mut PgConnection,
    patient: Uuid,
    entry: Uuid,
) -> Result<Vec<VersionRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {VERSION_COLUMNS} FROM entries e
           JOIN entry_versions v ON v.entry_id = e.id
          WHERE e.id = $1 AND e.patient_id = $2
          ORDER BY v.version DESC"
    ))
    .bind(entry)
    .bind(patient)
    .fetch_all(&mut *conn)
    .await?)
}

/// Advances `entry` from version `expected` to the next one and stores `content` (sealed for
/// that version) under it: ABORTED / ETAG_MISMATCH when the entry is no longer at `expected`,
/// NOT_FOUND when `patient` has no such entry. The row stays locked until the transaction ends.
pub async fn advance(
    conn: &mut PgConnection,
    patient: Uuid,
    entry: Uuid,
    expected: i64,
    content: &[u8],
    entered: Entered,
) -> Result<VersionRow> {
    let advanced: Option<i64> = sqlx::query_scalar(
        "UPDATE entries SET version = version + 1, updated_at = now()
          WHERE id = $1 AND patient_id = $2 AND version = $3
          RETURNING version",
    )
    .bind(entry)
    .bind(patient)
    .bind(expected)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(version) = advanced else {
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM entries WHERE id = $1 AND patient_id = $2")
                .bind(entry)
                .bind(patient)
                .fetch_optional(&mut *conn)
                .await?;
        return Err(match current {
            Some(current) => RecordsError::EtagMismatch {
                entry: entry.to_string(),
                current,
            },
            None => not_found(entry),
        });
    };
    insert_version(conn, entry, version, content, entered).await?;
    current(conn, patient, entry)
        .await?
        .ok_or_else(|| not_found(entry))
}

pub fn not_found(entry: Uuid) -> RecordsError {
    RecordsError::NotFound {
        what: "entry",
        id: entry.to_string(),
    }
}
