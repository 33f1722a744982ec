//! New-message alerts. A sent message queues its conversation (`alert_queue`, debounced: one
//! row per conversation, due `messaging.new_message_alert_secs` after the first unalerted
//! message). Each replica's alerter takes due rows (`FOR UPDATE SKIP LOCKED`, so replicas share
//! the work and none alerts twice) and, for every participant with unread messages from others
//! who has not been alerted since they last read, writes `SendNotification` with the
//! NEW_MESSAGE template ("You have a new message from your care team": no sender, no text) to
//! messaging's own outbox — in the same transaction that takes the row. The outbox delivers it
//! (retries, the contact lookup in identity, preferences and quiet hours are the notification
//! path's), keyed by conversation, recipient and sequence number, so a redelivery is one alert.

use std::sync::Arc;
use std::time::Duration;

use carehub_proto::messaging::v1::{SendNotificationRequest, Template};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::api::conversations::roster;
use crate::domain::participants;
use crate::error::{MessagingError, Result};
use crate::store::conversations::{self as conversations_store};
use crate::AppState;

/// Where the alerts go: messaging's own SendNotification, through its outbox.
pub const SEND_NOTIFICATION: &str = "/carehub.messaging.v1.MessagingInternal/SendNotification";
/// Conversations one round takes.
const BATCH: i64 = 100;
/// How often each replica looks for due alerts.
const POLL: Duration = Duration::from_secs(1);

/// Runs the alerter of this replica until the process ends.
pub fn spawn(state: &Arc<AppState>) {
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = round(&state).await {
                tracing::warn!(error = %e, "new-message alerts: round failed");
            }
        }
    });
}

/// One round: the due conversations' alerts, in one transaction; how many were queued.
pub async fn round(state: &AppState) -> Result<usize> {
    let mut tx = state.pool.begin().await?;
    let due: Vec<(Uuid,)> = sqlx::query_as(
        "DELETE FROM alert_queue WHERE conversation_id IN
           (SELECT conversation_id FROM alert_queue WHERE due_at <= now()
             ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING conversation_id",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let mut queued = 0;
    for (id,) in due {
        queued += alert(state, &mut tx, id).await?;
    }
    tx.commit().await?;
    Ok(queued)
}

/// Queues the alerts of conversation `id`.
async fn alert(state: &AppState, conn: &mut PgConnection, id: Uuid) -> Result<usize> {
    let Some(row) = conversations_store::get(conn, id).await? else {
        return Ok(0);
    };
    let everyone = participants::everyone(&roster(state, &row).await?);
    // Participants with unread messages from others whose last alert (if any) they have read
    // past: each gets one alert now, marked at the conversation's last sequence number.
    let recipients: Vec<(Uuid, i64)> = sqlx::query_as(
        "WITH p AS (SELECT unnest($2::uuid[]) AS user_id)
         SELECT p.user_id, c.last_seq
           FROM p CROSS JOIN conversations c
           LEFT JOIN read_states r ON r.conversation_id = c.id AND r.user_id = p.user_id
           LEFT JOIN alert_marks a ON a.conversation_id = c.id AND a.user_id = p.user_id
          WHERE c.id = $1
            AND (a.alerted_seq IS NULL OR a.alerted_seq <= COALESCE(r.read_seq, 0))
            AND EXISTS (SELECT 1 FROM messages m
                         WHERE m.conversation_id = c.id AND m.seq > COALESCE(r.read_seq, 0)
                           AND m.sender_id <> p.user_id AND m.retracted_at IS NULL)",
    )
    .bind(id)
    .bind(&everyone)
    .fetch_all(&mut *conn)
    .await?;
    for (user, seq) in &recipients {
        let request = SendNotificationRequest {
            user_id: user.to_string(),
            template: Template::NewMessage as i32,
            channels: vec![],
            urgent: false,
            params: Default::default(),
            idempotency_key: format!("alert:{id}:{user}:{seq}"),
            address: String::new(),
        };
        state
            .outbox
            .enqueue(conn, "messaging", SEND_NOTIFICATION, &request)
            .await
            .map_err(|e| MessagingError::Status(e.into()))?;
        sqlx::query(
            "INSERT INTO alert_marks (conversation_id, user_id, alerted_seq) VALUES ($1, $2, $3)
             ON CONFLICT (conversation_id, user_id) DO UPDATE SET alerted_seq = $3",
        )
        .bind(id)
        .bind(user)
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    }
    Ok(recipients.len())
}
