//! Conversations, their staff members and care participants, and read positions.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::participants::ConversationKind;
use crate::error::Result;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ConversationRow {
    pub id: Uuid,
    pub kind: String,
    pub patient_id: Option<Uuid>,
    pub crypto_subject: Uuid,
    pub subject: Vec<u8>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_seq: i64,
    pub last_activity_at: DateTime<Utc>,
    /// Staff conversations' members (empty for care conversations).
    pub members: Vec<Uuid>,
}

impl ConversationRow {
    pub fn kind(&self) -> ConversationKind {
        ConversationKind::parse(&self.kind).unwrap_or(ConversationKind::Staff)
    }
}

const SELECT: &str = "SELECT c.id, c.kind, c.patient_id, c.crypto_subject, c.subject, c.created_by,
        c.created_at, c.last_seq, c.last_activity_at,
        COALESCE((SELECT array_agg(m.user_id ORDER BY m.added_at, m.user_id)
                    FROM conversation_members m WHERE m.conversation_id = c.id), '{}') AS members
   FROM conversations c";

pub struct NewConversation<'a> {
    pub id: Uuid,
    pub kind: ConversationKind,
    pub patient: Option<Uuid>,
    pub crypto_subject: Uuid,
    pub subject: &'a [u8],
    pub created_by: Uuid,
    pub members: &'a [Uuid],
    /// Care conversations: the patient and the team when it was opened (their listings find
    /// it; later members find it by the patient).
    pub participants: &'a [Uuid],
}

pub async fn insert(conn: &mut PgConnection, c: &NewConversation<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO conversations (id, kind, patient_id, crypto_subject, subject, created_by)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(c.id)
    .bind(c.kind.as_str())
    .bind(c.patient)
    .bind(c.crypto_subject)
    .bind(c.subject)
    .bind(c.created_by)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO conversation_members (conversation_id, user_id)
         SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING",
    )
    .bind(c.id)
    .bind(c.members)
    .execute(&mut *conn)
    .await?;
    if c.kind == ConversationKind::Care {
        sqlx::query(
            "INSERT INTO conversation_participants (conversation_id, user_id)
             SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING",
        )
        .bind(c.id)
        .bind(c.participants)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Remembers that `user` took part in care conversation `id` (how their listing finds it).
pub async fn note_participant(conn: &mut PgConnection, id: Uuid, user: Uuid) -> Result<()> {
    sqlx::query(
        "INSERT INTO conversation_participants (conversation_id, user_id) VALUES ($1, $2)
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(user)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<ConversationRow>> {
    Ok(sqlx::query_as(&format!("{SELECT} WHERE c.id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?)
}

/// Care conversations as first read, kept for sends, which would otherwise read the row again
/// for every message. Only what never changes after a conversation is created is meant to be
/// used from a kept row — its id, kind, patient and crypto subject (rows are never deleted);
/// its counters are as they were when read, and staff conversations, whose members change,
/// are not kept. Bounded: when full, everything goes.
#[derive(Default)]
pub struct CareConversations {
    rows: std::sync::Mutex<std::collections::HashMap<Uuid, std::sync::Arc<ConversationRow>>>,
}

/// Care conversations kept at once (as many as `teams` keeps care teams).
const MAX_KEPT: usize = 10_000;

impl CareConversations {
    pub fn get(&self, id: Uuid) -> Option<std::sync::Arc<ConversationRow>> {
        self.lock().get(&id).cloned()
    }

    /// Keeps `row` if it is a care conversation.
    pub fn keep(&self, row: &std::sync::Arc<ConversationRow>) {
        if row.kind() != ConversationKind::Care {
            return;
        }
        let mut rows = self.lock();
        if rows.len() >= MAX_KEPT {
            rows.clear();
        }
        rows.insert(row.id, row.clone());
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<Uuid, std::sync::Arc<ConversationRow>>>
    {
        // A panic while holding the lock left a map that is still valid.
        self.rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The conversations `user` may be in, most recently active first, after the cursor
/// (`last_activity_at`, id): the patient's care conversations, staff conversations naming them,
/// care conversations they took part in, and with `patient` given, every care conversation of
/// that patient (the handler checks the caller's standing in each).
pub async fn list_for(
    conn: &mut PgConnection,
    user: Uuid,
    patient: Option<Uuid>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<ConversationRow>> {
    let (after_at, after_id) = after.unzip();
    Ok(sqlx::query_as(&format!(
        "{SELECT}
          WHERE (($2::uuid IS NULL AND (c.patient_id = $1
                   OR EXISTS (SELECT 1 FROM conversation_members m
                               WHERE m.conversation_id = c.id AND m.user_id = $1)
                   OR EXISTS (SELECT 1 FROM conversation_participants p
                               WHERE p.conversation_id = c.id AND p.user_id = $1)))
                 OR ($2::uuid IS NOT NULL AND c.patient_id = $2))
            AND ($3::timestamptz IS NULL OR (c.last_activity_at, c.id) < ($3, $4))
          ORDER BY c.last_activity_at DESC, c.id DESC
          LIMIT $5"
    ))
    .bind(user)
    .bind(patient)
    .bind(after_at)
    .bind(after_id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// `user`'s read position and unread count in each of `ids`: messages of others after the
/// position, retracted ones left out.
pub async fn read_states(
    conn: &mut PgConnection,
    user: Uuid,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, i64, i64)>> {
    Ok(sqlx::query_as(
        "SELECT c.id, COALESCE(r.read_seq, 0),
                (SELECT count(*) FROM messages m
                  WHERE m.conversation_id = c.id AND m.seq > COALESCE(r.read_seq, 0)
                    AND m.sender_id <> $1 AND m.retracted_at IS NULL)
           FROM unnest($2::uuid[]) AS c(id)
           LEFT JOIN read_states r ON r.conversation_id = c.id AND r.user_id = $1",
    )
    .bind(user)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?)
}

/// Moves `user`'s read position forward to `seq`; the position before, or `None` when it was
/// already there or beyond.
pub async fn advance_read(
    conn: &mut PgConnection,
    conversation: Uuid,
    user: Uuid,
    seq: i64,
) -> Result<Option<i64>> {
    let before: Option<(i64,)> = sqlx::query_as(
        "SELECT read_seq FROM read_states WHERE conversation_id = $1 AND user_id = $2 FOR UPDATE",
    )
    .bind(conversation)
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?;
    let before = before.map_or(0, |b| b.0);
    if seq <= before {
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO read_states (conversation_id, user_id, read_seq) VALUES ($1, $2, $3)
         ON CONFLICT (conversation_id, user_id)
         DO UPDATE SET read_seq = GREATEST(read_states.read_seq, EXCLUDED.read_seq),
                       updated_at = now()",
    )
    .bind(conversation)
    .bind(user)
    .bind(seq)
    .execute(&mut *conn)
    .await?;
    Ok(Some(before))
}
