//! Attachments and their sealed chunks.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{MessagingError, Result};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AttachmentRow {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub uploaded_by: Uuid,
    pub info: Vec<u8>,
    pub chunks: i32,
    pub message_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, conversation_id, uploaded_by, info, chunks, message_id, created_at";

pub async fn insert_chunk(conn: &mut PgConnection, id: Uuid, seq: i32, data: &[u8]) -> Result<()> {
    sqlx::query("INSERT INTO attachment_chunks (attachment_id, seq, data) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(seq)
        .bind(data)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Writes the attachment's row before its chunks (they reference it), with a chunk count that
/// [`complete`] sets once the last one arrived, in the same transaction.
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    conversation: Uuid,
    uploaded_by: Uuid,
    info: &[u8],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO attachments (id, conversation_id, uploaded_by, info, chunks)
         VALUES ($1, $2, $3, $4, 1)",
    )
    .bind(id)
    .bind(conversation)
    .bind(uploaded_by)
    .bind(info)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn complete(conn: &mut PgConnection, id: Uuid, chunks: i32) -> Result<AttachmentRow> {
    Ok(sqlx::query_as(&format!(
        "UPDATE attachments SET chunks = $2 WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(chunks)
    .fetch_one(&mut *conn)
    .await?)
}

pub async fn get(
    conn: &mut PgConnection,
    conversation: Uuid,
    id: Uuid,
) -> Result<Option<AttachmentRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM attachments WHERE id = $1 AND conversation_id = $2"
    ))
    .bind(id)
    .bind(conversation)
    .fetch_optional(&mut *conn)
    .await?)
}

pub async fn of_message(conn: &mut PgConnection, message: Uuid) -> Result<Vec<AttachmentRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM attachments WHERE message_id = $1 ORDER BY created_at, id"
    ))
    .bind(message)
    .fetch_all(&mut *conn)
    .await?)
}

/// The attachments of every message in `messages`, in one query.
pub async fn of_messages(conn: &mut PgConnection, messages: &[Uuid]) -> Result<Vec<AttachmentRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM attachments WHERE message_id = ANY($1) ORDER BY created_at, id"
    ))
    .bind(messages)
    .fetch_all(&mut *conn)
    .await?)
}

/// Sends `ids` with `message`: each must be an unsent upload of `sender` in `conversation`.
pub async fn attach(
    conn: &mut PgConnection,
    conversation: Uuid,
    sender: Uuid,
    message: Uuid,
    ids: &[Uuid],
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let attached = sqlx::query(
        "UPDATE attachments SET message_id = $3
          WHERE id = ANY($4) AND conversation_id = $1 AND uploaded_by = $2 AND message_id IS NULL",
    )
    .bind(conversation)
    .bind(sender)
    .bind(message)
    .bind(ids)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let mut distinct = ids.to_vec();
    distinct.sort();
    distinct.dedup();
    if attached != distinct.len() as u64 {
        return Err(MessagingError::Status(
            carehub_platform::errors::invalid_field(
                "attachment_ids",
                "must name attachments the sender uploaded to this conversation and has not sent",
            ),
        ));
    }
    Ok(())
}

/// Destroys the chunks of a retracted message's attachments (their description stays, sealed).
pub async fn destroy_of_message(conn: &mut PgConnection, message: Uuid) -> Result<()> {
    sqlx::query(
        "DELETE FROM attachment_chunks WHERE attachment_id IN
           (SELECT id FROM attachments WHERE message_id = $1)",
    )
    .bind(message)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One chunk, still sealed; `None` once destroyed.
pub async fn chunk(pool: &sqlx::PgPool, attachment: Uuid, seq: i32) -> Result<Option<Vec<u8>>> {
    Ok(sqlx::query_scalar(
        "SELECT data FROM attachment_chunks WHERE attachment_id = $1 AND seq = $2",
    )
    .bind(attachment)
    .bind(seq)
    .fetch_optional(pool)
    .await?)
}
