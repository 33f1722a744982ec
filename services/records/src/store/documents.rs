//! Documents and their encrypted chunks.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;

#[derive(Debug, sqlx::FromRow)]
pub struct DocumentRow {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub info: Vec<u8>,
    pub chunks: i32,
    pub uploaded_by: Uuid,
    pub source: String,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, patient_id, info, chunks, uploaded_by, source, created_at";

pub async fn insert_chunk(
    conn: &mut PgConnection,
    document: Uuid,
    seq: i32,
    data: &[u8],
) -> Result<()> {
    sqlx::query("INSERT INTO document_chunks (document_id, seq, data) VALUES ($1, $2, $3)")
        .bind(document)
        .bind(seq)
        .bind(data)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub struct NewDocument<'a> {
    pub id: Uuid,
    pub patient: Uuid,
    pub info: &'a [u8],
    pub chunks: i32,
    pub uploaded_by: Uuid,
    pub source: &'a str,
}

pub async fn insert(conn: &mut PgConnection, d: &NewDocument<'_>) -> Result<DocumentRow> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO documents (id, patient_id, info, chunks, uploaded_by, source)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    ))
    .bind(d.id)
    .bind(d.patient)
    .bind(d.info)
    .bind(d.chunks)
    .bind(d.uploaded_by)
    .bind(d.source)
    .fetch_one(&mut *conn)
    .await?)
}

pub async fn get(conn: &mut PgConnection, patient: Uuid, id: Uuid) -> Result<Option<DocumentRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM documents WHERE id = $1 AND patient_id = $2"
    ))
    .bind(id)
    .bind(patient)
    .fetch_optional(&mut *conn)
    .await?)
}

pub async fn list(conn: &mut PgConnection, patient: Uuid) -> Result<Vec<DocumentRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM documents WHERE patient_id = $1 ORDER BY created_at DESC, id DESC"
    ))
    .bind(patient)
    .fetch_all(&mut *conn)
    .await?)
}

/// One chunk, still sealed.
pub async fn chunk(pool: &sqlx::PgPool, document: Uuid, seq: i32) -> Result<Vec<u8>> {
    Ok(
        sqlx::query_scalar("SELECT data FROM document_chunks WHERE document_id = $1 AND seq = $2")
            .bind(document)
            .bind(seq)
            .fetch_one(pool)
            .await?,
    )
}
