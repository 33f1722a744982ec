//! Clinical notes and their addenda. A draft changes with a compare-and-set on its version;
//! signing is the last change a note ever sees (a trigger refuses any later one).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{RecordsError, Result};

#[derive(Debug, sqlx::FromRow)]
pub struct NoteRow {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub author_id: Uuid,
    pub status: String,
    pub body: Vec<u8>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub signed_at: Option<DateTime<Utc>>,
    pub content_sha256: Option<Vec<u8>>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct AddendumRow {
    pub id: Uuid,
    pub note_id: Uuid,
    pub author_id: Uuid,
    pub body: Vec<u8>,
    pub signed_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, patient_id, author_id, status, body, version, created_at, updated_at, \
    signed_at, content_sha256";

pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    patient: Uuid,
    author: Uuid,
    body: &[u8],
) -> Result<NoteRow> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO notes (id, patient_id, author_id, status, body, version)
         VALUES ($1, $2, $3, 'draft', $4, 1) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(patient)
    .bind(author)
    .bind(body)
    .fetch_one(&mut *conn)
    .await?)
}

pub fn not_found(id: Uuid) -> RecordsError {
    RecordsError::NotFound {
        what: "note",
        id: id.to_string(),
    }
}

/// Note `id` of `patient`, locked until the transaction ends.
pub async fn lock(conn: &mut PgConnection, patient: Uuid, id: Uuid) -> Result<NoteRow> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM notes WHERE id = $1 AND patient_id = $2 FOR UPDATE"
    ))
    .bind(id)
    .bind(patient)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| not_found(id))
}

/// Replaces a draft's body (sealed for `version + 1`).
pub async fn update_draft(
    conn: &mut PgConnection,
    id: Uuid,
    version: i64,
    body: &[u8],
) -> Result<NoteRow> {
    Ok(sqlx::query_as(&format!(
        "UPDATE notes SET body = $3, version = version + 1, updated_at = now()
          WHERE id = $1 AND version = $2 AND status = 'draft' RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(version)
    .bind(body)
    .fetch_one(&mut *conn)
    .await?)
}

pub async fn sign(
    conn: &mut PgConnection,
    id: Uuid,
    version: i64,
    sha256: &[u8],
) -> Result<NoteRow> {
    Ok(sqlx::query_as(&format!(
        "UPDATE notes SET status = 'signed', signed_at = now(), updated_at = now(),
                content_sha256 = $3
          WHERE id = $1 AND version = $2 AND status = 'draft' RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(version)
    .bind(sha256)
    .fetch_one(&mut *conn)
    .await?)
}

pub async fn insert_addendum(
    conn: &mut PgConnection,
    id: Uuid,
    note: Uuid,
    author: Uuid,
    body: &[u8],
) -> Result<()> {
    sqlx::query("INSERT INTO note_addenda (id, note_id, author_id, body) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(note)
        .bind(author)
        .bind(body)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// `patient`'s signed notes and `viewer`'s own drafts, newest first.
pub async fn list(conn: &mut PgConnection, patient: Uuid, viewer: Uuid) -> Result<Vec<NoteRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM notes
          WHERE patient_id = $1 AND (status = 'signed' OR author_id = $2)
          ORDER BY created_at DESC, id DESC"
    ))
    .bind(patient)
    .bind(viewer)
    .fetch_all(&mut *conn)
    .await?)
}

/// The addenda of `notes`, oldest first.
pub async fn addenda(conn: &mut PgConnection, notes: &[Uuid]) -> Result<Vec<AddendumRow>> {
    Ok(sqlx::query_as(
        "SELECT id, note_id, author_id, body, signed_at FROM note_addenda
          WHERE note_id = ANY($1) ORDER BY signed_at, id",
    )
    .bind(notes)
    .fetch_all(&mut *conn)
    .await?)
}
