//! Abuse: reports and their review, blocks, and the account states identity reports. Blocks and
//! account changes announce a kick on the channel, so that every replica closes the streams of
//! the user concerned at once (and its catch-up finds them if the notification is lost).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::CHANNEL;
use crate::error::Result;

/// Tells every replica to close `user`'s streams (of `conversation` only, when given).
pub async fn kick(conn: &mut PgConnection, user: Uuid, conversation: Option<Uuid>) -> Result<()> {
    let payload = match conversation {
        Some(c) => format!("k:{user}:{c}"),
        None => format!("k:{user}"),
    };
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct BlockRow {
    pub conversation_id: Uuid,
    pub user_id: Uuid,
    pub blocked_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub lifted_at: Option<DateTime<Utc>>,
}

/// Blocks `user` in `conversation` (again, if a block was lifted); whether it was not blocked.
pub async fn block(
    conn: &mut PgConnection,
    conversation: Uuid,
    user: Uuid,
    by: Uuid,
) -> Result<(bool, BlockRow)> {
    let before: Option<(Option<DateTime<Utc>>,)> = sqlx::query_as(
        "SELECT lifted_at FROM blocks WHERE conversation_id = $1 AND user_id = $2 FOR UPDATE",
    )
    .bind(conversation)
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?;
    let was_active = matches!(before, Some((None,)));
    let row = if was_active {
        get_block(conn, conversation, user).await?
    } else {
        sqlx::query_as(
            "INSERT INTO blocks (conversation_id, user_id, blocked_by) VALUES ($1, $2, $3)
             ON CONFLICT (conversation_id, user_id) DO UPDATE
                SET blocked_by = $3, created_at = now(), lifted_by = NULL, lifted_at = NULL
             RETURNING conversation_id, user_id, blocked_by, created_at, lifted_at",
        )
        .bind(conversation)
        .bind(user)
        .bind(by)
        .fetch_one(&mut *conn)
        .await?
    };
    if !was_active {
        kick(conn, user, Some(conversation)).await?;
    }
    Ok((!was_active, row))
}

async fn get_block(conn: &mut PgConnection, conversation: Uuid, user: Uuid) -> Result<BlockRow> {
    Ok(sqlx::query_as(
        "SELECT conversation_id, user_id, blocked_by, created_at, lifted_at
           FROM blocks WHERE conversation_id = $1 AND user_id = $2",
    )
    .bind(conversation)
    .bind(user)
    .fetch_one(&mut *conn)
    .await?)
}

/// Lifts `user`'s block in `conversation`; the block, and whether it was active (`None`: there
/// was none).
pub async fn unblock(
    conn: &mut PgConnection,
    conversation: Uuid,
    user: Uuid,
    by: Uuid,
) -> Result<Option<(bool, BlockRow)>> {
    let lifted: Option<BlockRow> = sqlx::query_as(
        "UPDATE blocks SET lifted_by = $3, lifted_at = now()
          WHERE conversation_id = $1 AND user_id = $2 AND lifted_at IS NULL
          RETURNING conversation_id, user_id, blocked_by, created_at, lifted_at",
    )
    .bind(conversation)
    .bind(user)
    .bind(by)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = lifted {
        return Ok(Some((true, row)));
    }
    let existing: Option<BlockRow> = sqlx::query_as(
        "SELECT conversation_id, user_id, blocked_by, created_at, lifted_at
           FROM blocks WHERE conversation_id = $1 AND user_id = $2",
    )
    .bind(conversation)
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(existing.map(|row| (false, row)))
}

/// Whether `user` is blocked in `conversation` or their account is not active.
pub async fn barred(conn: &mut PgConnection, conversation: Uuid, user: Uuid) -> Result<bool> {
    let (barred,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM blocks WHERE conversation_id = $1 AND user_id = $2
                          AND lifted_at IS NULL)
             OR COALESCE((SELECT NOT active FROM account_states WHERE user_id = $2), false)",
    )
    .bind(conversation)
    .bind(user)
    .fetch_one(&mut *conn)
    .await?;
    Ok(barred)
}

/// Records identity's word that `user` is (in)active as of `changed_at`, unless a later word is
/// already recorded (deliveries arrive out of order); whether it changed anything.
pub async fn set_account_state(
    conn: &mut PgConnection,
    user: Uuid,
    active: bool,
    changed_at: DateTime<Utc>,
) -> Result<bool> {
    let changed = sqlx::query(
        "INSERT INTO account_states (user_id, active, changed_at) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET active = $2, changed_at = $3
          WHERE account_states.changed_at < $3",
    )
    .bind(user)
    .bind(active)
    .bind(changed_at)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0;
    if changed && !active {
        kick(conn, user, None).await?;
    }
    Ok(changed)
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ReportRow {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub message_id: Uuid,
    pub reported_by: Uuid,
    pub sender_id: Uuid,
    pub reason: String,
    pub details: Vec<u8>,
    pub status: String,
    pub action: Option<String>,
    pub resolved_by: Option<Uuid>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

const REPORT: &str = "SELECT id, conversation_id, message_id, reported_by, sender_id, reason,
        details, status, action, resolved_by, resolved_at, created_at FROM reports";

pub struct NewReport<'a> {
    pub id: Uuid,
    pub conversation: Uuid,
    pub message: Uuid,
    pub reported_by: Uuid,
    pub sender: Uuid,
    pub reason: &'a str,
    pub details: &'a [u8],
}

/// Files report `r`, or finds the one this reporter already filed about the message.
pub async fn file_report(conn: &mut PgConnection, r: &NewReport<'_>) -> Result<(bool, ReportRow)> {
    let inserted = sqlx::query(
        "INSERT INTO reports (id, conversation_id, message_id, reported_by, sender_id, reason, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (message_id, reported_by) DO NOTHING",
    )
    .bind(r.id)
    .bind(r.conversation)
    .bind(r.message)
    .bind(r.reported_by)
    .bind(r.sender)
    .bind(r.reason)
    .bind(r.details)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0;
    let row = sqlx::query_as(&format!(
        "{REPORT} WHERE message_id = $1 AND reported_by = $2"
    ))
    .bind(r.message)
    .bind(r.reported_by)
    .fetch_one(&mut *conn)
    .await?;
    Ok((inserted, row))
}

/// Reports in `status`, oldest first, after the cursor (created_at, id).
pub async fn list_reports(
    conn: &mut PgConnection,
    status: &str,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<ReportRow>> {
    let (at, id) = after.unzip();
    Ok(sqlx::query_as(&format!(
        "{REPORT} WHERE status = $1
            AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
          ORDER BY created_at, id LIMIT $4"
    ))
    .bind(status)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// Report `id`, locked to the commit.
pub async fn lock_report(conn: &mut PgConnection, id: Uuid) -> Result<Option<ReportRow>> {
    Ok(
        sqlx::query_as(&format!("{REPORT} WHERE id = $1 FOR UPDATE"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

pub async fn resolve_report(
    conn: &mut PgConnection,
    id: Uuid,
    status: &str,
    action: &str,
    by: Uuid,
) -> Result<ReportRow> {
    Ok(sqlx::query_as(
        "UPDATE reports SET status = $2, action = $3, resolved_by = $4, resolved_at = now()
          WHERE id = $1
          RETURNING id, conversation_id, message_id, reported_by, sender_id, reason,
                    details, status, action, resolved_by, resolved_at, created_at",
    )
    .bind(id)
    .bind(status)
    .bind(action)
    .bind(by)
    .fetch_one(&mut *conn)
    .await?)
}
