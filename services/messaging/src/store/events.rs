//! A conversation's ordered events and its messages. Appending takes the conversation's row
//! lock ([`lock`]) and holds it to the commit, so the events of one conversation commit in
//! sequence order: a reader that sees seq N sees every n < N, and the live catch-up reads by
//! `seq > last` never step over an event still committing.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;

/// What the sender's append finds under the conversation's lock.
#[derive(Debug)]
pub struct Locked {
    pub last_seq: i64,
    /// The message this sender already sent with this client message id (a retry).
    pub existing: Option<Uuid>,
    /// Whether staff blocked the sender here.
    pub blocked: bool,
    /// Whether identity reported the sender's account suspended or terminated.
    pub inactive: bool,
}

/// Locks conversation `id` for an append by `sender` (to the commit) and tells what the append
/// must know; `None` when there is no such conversation.
///
/// Two statements, on purpose: under READ COMMITTED a statement that waited for the row lock
/// re-reads only the locked row, while its other reads keep the snapshot taken before the wait.
/// A retry racing the send it repeats would then miss the message that send just committed
/// and collide with it. The checks run after the lock, in a snapshot that sees it.
pub async fn lock(
    conn: &mut PgConnection,
    id: Uuid,
    sender: Uuid,
    client_message_id: &str,
) -> Result<Option<Locked>> {
    let Some((last_seq,)) =
        sqlx::query_as::<_, (i64,)>("SELECT last_seq FROM conversations WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
    else {
        return Ok(None);
    };
    let (existing, blocked, inactive): (Option<Uuid>, bool, bool) = sqlx::query_as(
        "SELECT (SELECT m.id FROM messages m WHERE m.conversation_id = $1
                    AND m.sender_id = $2 AND m.client_message_id = $3),
                EXISTS (SELECT 1 FROM blocks b WHERE b.conversation_id = $1
                           AND b.user_id = $2 AND b.lifted_at IS NULL),
                COALESCE((SELECT NOT a.active FROM account_states a WHERE a.user_id = $2), false)",
    )
    .bind(id)
    .bind(sender)
    .bind(client_message_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Some(Locked {
        last_seq,
        existing,
        blocked,
        inactive,
    }))
}

pub struct NewMessage<'a> {
    pub id: Uuid,
    pub conversation: Uuid,
    pub seq: i64,
    pub sender: Uuid,
    pub client_message_id: &'a str,
    pub body: &'a [u8],
    /// A care conversation: the sender joins its participants (how their listing finds it).
    pub care: bool,
    /// When the others are alerted if they have not read it (`crate::alerts`).
    pub alert_after_secs: u32,
}

/// Appends message `m` as event `m.seq` (the next after [`lock`]'s `last_seq`), notes the sender
/// as a participant and queues the conversation's new-message alert, in one statement; when it
/// was sent. The caller announces it once committed (`crate::live::Hub::published`).
pub async fn append_message(conn: &mut PgConnection, m: &NewMessage<'_>) -> Result<DateTime<Utc>> {
    let (sent_at,): (DateTime<Utc>,) = sqlx::query_as(
        "WITH c AS (UPDATE conversations SET last_seq = $3, last_activity_at = now()
                     WHERE id = $2),
              m AS (INSERT INTO messages (id, conversation_id, seq, sender_id, client_message_id, body)
                    VALUES ($1, $2, $3, $4, $5, $6)),
              e AS (INSERT INTO conversation_events (conversation_id, seq, kind, actor_id, message_id)
                    VALUES ($2, $3, 'message', $4, $1)),
              p AS (INSERT INTO conversation_participants (conversation_id, user_id)
                    SELECT $2, $4 WHERE $7 ON CONFLICT DO NOTHING),
              a AS (INSERT INTO alert_queue (conversation_id, due_at)
                    VALUES ($2, now() + make_interval(secs => $8)) ON CONFLICT DO NOTHING)
         SELECT now()",
    )
    .bind(m.id)
    .bind(m.conversation)
    .bind(m.seq)
    .bind(m.sender)
    .bind(m.client_message_id)
    .bind(m.body)
    .bind(m.care)
    .bind(f64::from(m.alert_after_secs))
    .fetch_one(&mut *conn)
    .await?;
    Ok(sent_at)
}

/// Appends a retraction or read receipt (the conversation locked by the caller); its sequence
/// number, for the caller to announce once committed.
pub async fn append_other(
    conn: &mut PgConnection,
    conversation: Uuid,
    actor: Uuid,
    event: OtherEvent,
) -> Result<i64> {
    let (kind, message, read_seq) = match event {
        OtherEvent::Retraction(m) => ("retraction", Some(m), None),
        OtherEvent::Read(seq) => ("read", None, Some(seq)),
    };
    let (seq,): (i64,) = sqlx::query_as(
        "WITH c AS (UPDATE conversations SET last_seq = last_seq + 1
                     WHERE id = $1 RETURNING last_seq),
              e AS (INSERT INTO conversation_events
                        (conversation_id, seq, kind, actor_id, message_id, read_seq)
                    SELECT $1, c.last_seq, $2, $3, $4, $5 FROM c)
         SELECT c.last_seq FROM c",
    )
    .bind(conversation)
    .bind(kind)
    .bind(actor)
    .bind(message)
    .bind(read_seq)
    .fetch_one(&mut *conn)
    .await?;
    Ok(seq)
}

pub enum OtherEvent {
    Retraction(Uuid),
    Read(i64),
}

/// Locks conversation `id` (to the commit) for a retraction or read receipt; its last sequence
/// number, or `None` when there is no such conversation.
pub async fn lock_plain(conn: &mut PgConnection, id: Uuid) -> Result<Option<i64>> {
    Ok(
        sqlx::query_as::<_, (i64,)>("SELECT last_seq FROM conversations WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.0),
    )
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct MessageRow {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub seq: i64,
    pub sender_id: Uuid,
    pub client_message_id: String,
    pub body: Option<Vec<u8>>,
    pub sent_at: DateTime<Utc>,
    pub retracted_at: Option<DateTime<Utc>>,
}

pub async fn message(
    conn: &mut PgConnection,
    conversation: Uuid,
    id: Uuid,
) -> Result<Option<MessageRow>> {
    Ok(sqlx::query_as(
        "SELECT id, conversation_id, seq, sender_id, client_message_id, body, sent_at, retracted_at
           FROM messages WHERE conversation_id = $1 AND id = $2",
    )
    .bind(conversation)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Destroys message `id`'s body and marks it retracted (its row locked by the caller's
/// transaction through the conversation); when.
pub async fn retract(conn: &mut PgConnection, id: Uuid) -> Result<DateTime<Utc>> {
    let (at,): (DateTime<Utc>,) = sqlx::query_as(
        "UPDATE messages SET body = NULL, retracted_at = now() WHERE id = $1 RETURNING retracted_at",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(at)
}

/// One event as the reader gets it, with its message when it is one.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub kind: String,
    pub actor_id: Uuid,
    pub message_id: Option<Uuid>,
    pub read_seq: Option<i64>,
    pub occurred_at: DateTime<Utc>,
    /// The message's own fields (message events) or the retracted message's seq (retractions).
    pub message_seq: Option<i64>,
    pub client_message_id: Option<String>,
    pub body: Option<Vec<u8>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub retracted_at: Option<DateTime<Utc>>,
    /// Whether the message has attachments (the reader looks them up only then).
    pub has_attachments: bool,
}

/// Events of `conversation` after `after`, in order, at most `limit`.
pub async fn after(
    conn: &mut PgConnection,
    conversation: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<EventRow>> {
    Ok(sqlx::query_as(
        "SELECT e.seq, e.kind, e.actor_id, e.message_id, e.read_seq, e.occurred_at,
                m.seq AS message_seq, m.client_message_id, m.body, m.sent_at, m.retracted_at,
                -- A scalar subquery: an EXISTS here may be planned as a hash of the table.
                COALESCE((SELECT true FROM attachments a WHERE a.message_id = m.id LIMIT 1), false)
                  AS has_attachments
           FROM conversation_events e
           LEFT JOIN messages m ON m.id = e.message_id
          WHERE e.conversation_id = $1 AND e.seq > $2
          ORDER BY e.seq LIMIT $3",
    )
    .bind(conversation)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}
