//! Messages and the conversation's order: send (idempotent by the client's message id),
//! retract (the sender, within the window), read events after a sequence number, and move the
//! caller's read position (a read receipt in the order).

use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::messaging::v1::*;
use chrono::Utc;
use uuid::Uuid;

use super::conversations::{enter, enter_to_send, event};
use super::convert::ts;
use super::kinds;
use crate::domain::participants::Standing;
use crate::domain::text;
use crate::error::{checked, MessagingError, Result};
use crate::sends::Sent;
use crate::store::conversations::{self as conversations_store, ConversationRow};
use crate::store::events::{self as store, EventRow, MessageRow, NewMessage, OtherEvent};
use crate::store::sealed;
use crate::AppState;

/// Events one ListEvents answer (or one live batch) carries at most.
pub const MAX_EVENTS: i64 = 500;

fn conversation_id(v: &mut FieldViolations, id: &str) -> Option<Uuid> {
    v.require_uuid("conversation_id", id)
}

async fn open_body(
    state: &AppState,
    row: &ConversationRow,
    id: Uuid,
    body: &[u8],
) -> Result<String> {
    sealed::open(
        &state.crypto,
        row.crypto_subject,
        ("messages", "body", id),
        body,
    )
    .await
}

pub fn message_to_pb(m: &MessageRow, body: String) -> Message {
    Message {
        id: m.id.to_string(),
        conversation_id: m.conversation_id.to_string(),
        seq: m.seq,
        sender_id: m.sender_id.to_string(),
        body,
        attachments: Vec::new(),
        send_time: Some(ts(m.sent_at)),
        retract_time: m.retracted_at.map(ts),
        client_message_id: m.client_message_id.clone(),
    }
}

/// The stored message `id` of conversation `row`, opened.
async fn stored_message(
    state: &AppState,
    conn: &mut sqlx::PgConnection,
    row: &ConversationRow,
    id: Uuid,
) -> Result<Message> {
    let m = store::message(conn, row.id, id)
        .await?
        .ok_or_else(|| MessagingError::Internal("a message just found is gone".into()))?;
    let body = match &m.body {
        Some(b) => open_body(state, row, m.id, b).await?,
        None => String::new(),
    };
    Ok(message_to_pb(&m, body))
}

pub async fn send(state: &AppState, call: &Call, r: SendMessageRequest) -> Result<Message> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let id = conversation_id(&mut v, &r.conversation_id);
    text::check_client_id(&mut v, "client_message_id", &r.client_message_id);
    text::check_text(&mut v, "body", &r.body, text::MAX_BODY);
    v.check(
        !r.body.trim().is_empty() || !r.attachment_ids.is_empty(),
        "body",
        "must not be empty unless attachments are named",
    );
    v.check(
        r.attachment_ids.len() <= text::MAX_ATTACHMENTS,
        "attachment_ids",
        "must name at most 10 attachments",
    );
    let attachments: Vec<Uuid> = r
        .attachment_ids
        .iter()
        .enumerate()
        .filter_map(|(i, a)| v.require_uuid(&format!("attachment_ids[{i}]"), a))
        .collect();
    v.finish()?;
    let (row, standing) = enter_to_send(state, user, checked(id)?).await?;
    let message_id = Uuid::now_v7();
    let sealed_body = sealed::seal(
        &state.crypto,
        row.crypto_subject,
        ("messages", "body", message_id),
        &r.body,
    )
    .await?;
    if attachments.is_empty() {
        let event = event(
            call,
            kinds::MESSAGE_SEND,
            standing,
            &row,
            ("message", message_id),
        );
        let outgoing = crate::sends::Outgoing {
            conversation: row.id,
            care: row.patient_id.is_some(),
            message_id,
            sender: user.user_id,
            client_message_id: r.client_message_id.clone(),
            body: sealed_body.clone(),
            event: event.clone(),
        };
        if let Sent::Appended { seq, sent_at } = state.sends.send(outgoing).await? {
            // Committed with its event by the batch, which announced it.
            call.committed_elsewhere(&event);
            return Ok(just_sent(
                message_id,
                row.id,
                seq,
                user.user_id,
                &r,
                sent_at,
            ));
        }
    }
    let answer = send_alone(
        state,
        call,
        &row,
        standing,
        Alone {
            message_id,
            sealed_body: &sealed_body,
            attachments: &attachments,
            request: &r,
        },
    )
    .await?;
    // Committed (or a retry of what committed: announcing again wakes nobody twice).
    state.hub.published(row.id, answer.seq);
    Ok(answer)
}

/// The answer to send `r`, just appended as message `id`, event `seq` of `conversation`.
fn just_sent(
    id: Uuid,
    conversation: Uuid,
    seq: i64,
    sender: Uuid,
    r: &SendMessageRequest,
    sent_at: chrono::DateTime<Utc>,
) -> Message {
    let m = MessageRow {
        id,
        conversation_id: conversation,
        seq,
        sender_id: sender,
        client_message_id: r.client_message_id.clone(),
        body: None,
        sent_at,
        retracted_at: None,
    };
    message_to_pb(&m, r.body.clone())
}

/// A send that no batch settled: with attachments, a retry of a stored message, or one whose
/// batch failed.
struct Alone<'a> {
    message_id: Uuid,
    sealed_body: &'a [u8],
    attachments: &'a [Uuid],
    request: &'a SendMessageRequest,
}

/// Sends one message in a transaction of its own.
async fn send_alone(
    state: &AppState,
    call: &Call,
    row: &ConversationRow,
    standing: Standing,
    send: Alone<'_>,
) -> Result<Message> {
    let user = call.user()?;
    let Alone {
        message_id,
        sealed_body,
        attachments,
        request: r,
    } = send;
    // The client message id is the idempotency key (unique per sender and conversation): a
    // retry finds the stored message under the lock and answers it.
    let answer = call
        .mutate_self_keyed(&state.pool, async |conn| {
            let locked = store::lock(conn, row.id, user.user_id, &r.client_message_id)
                .await?
                .ok_or_else(|| MessagingError::NotFound {
                    what: "conversation",
                    id: row.id.to_string(),
                })?;
            if let Some(existing) = locked.existing {
                // A retry of a send that committed: the stored message, read again.
                let answer = stored_message(state, conn, row, existing).await?;
                let read = event(
                    call,
                    kinds::EVENTS_READ,
                    standing,
                    row,
                    ("message", existing),
                );
                return Ok(Change::new(answer, read));
            }
            if locked.blocked || locked.inactive {
                return Err(MessagingError::SenderBlocked {
                    conversation: row.id.to_string(),
                    user: user.user_id.to_string(),
                });
            }
            let seq = locked.last_seq + 1;
            let sent_at = store::append_message(
                conn,
                &NewMessage {
                    id: message_id,
                    conversation: row.id,
                    seq,
                    sender: user.user_id,
                    client_message_id: &r.client_message_id,
                    body: sealed_body,
                    care: row.patient_id.is_some(),
                    alert_after_secs: state.settings.new_message_alert_secs,
                },
            )
            .await?;
            crate::store::attachments::attach(conn, row.id, user.user_id, message_id, attachments)
                .await?;
            let mut answer = just_sent(message_id, row.id, seq, user.user_id, r, sent_at);
            if !attachments.is_empty() {
                answer.attachments =
                    super::attachments::of_message(state, conn, row, message_id).await?;
            }
            let e = event(
                call,
                kinds::MESSAGE_SEND,
                standing,
                row,
                ("message", message_id),
            );
            Ok(Change::new(answer, e))
        })
        .await?;
    Ok(answer)
}

pub async fn retract(state: &AppState, call: &Call, r: RetractMessageRequest) -> Result<Message> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let id = conversation_id(&mut v, &r.conversation_id);
    let message = v.require_uuid("message_id", &r.message_id);
    v.finish()?;
    let (row, standing) = enter(state, user, checked(id)?).await?;
    let message = checked(message)?;
    let window = chrono::Duration::seconds(i64::from(state.settings.retract_window_secs));
    let mut appended = None;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            store::lock_plain(conn, row.id).await?;
            let m = store::message(conn, row.id, message)
                .await?
                .ok_or_else(|| MessagingError::NotFound {
                    what: "message",
                    id: message.to_string(),
                })?;
            if m.sender_id != user.user_id {
                return Err(MessagingError::PermissionDenied(
                    "only the sender retracts a message".to_owned(),
                ));
            }
            if let Some(at) = m.retracted_at {
                // Retracted already (a retry without the key, or a second client): as it is.
                let mut answer = message_to_pb(&m, String::new());
                answer.retract_time = Some(ts(at));
                let read = event(call, kinds::EVENTS_READ, standing, &row, ("message", m.id));
                return Ok(Change::new(answer, read));
            }
            if Utc::now() - m.sent_at > window {
                return Err(MessagingError::Conflict {
                    kind: "RETRACT_WINDOW",
                    subject: m.id.to_string(),
                    description: format!(
                        "message {} was sent more than {} s ago and can no longer be retracted",
                        m.id, state.settings.retract_window_secs
                    ),
                });
            }
            let at = store::retract(conn, m.id).await?;
            crate::store::attachments::destroy_of_message(conn, m.id).await?;
            appended = Some(
                store::append_other(conn, row.id, user.user_id, OtherEvent::Retraction(m.id))
                    .await?,
            );
            let mut answer = message_to_pb(&m, String::new());
            answer.retract_time = Some(ts(at));
            let e = event(
                call,
                kinds::MESSAGE_RETRACT,
                standing,
                &row,
                ("message", m.id),
            );
            Ok(Change::new(answer, e))
        })
        .await?;
    if let Some(seq) = appended {
        state.hub.published(row.id, seq);
    }
    Ok(ran.answer)
}

/// `rows` as the reader gets them: message bodies opened, retracted ones empty.
pub async fn events_to_pb(
    state: &AppState,
    conn: &mut sqlx::PgConnection,
    row: &ConversationRow,
    rows: Vec<EventRow>,
) -> Result<Vec<ConversationEvent>> {
    let live: Vec<Uuid> = rows
        .iter()
        .filter(|e| e.kind == "message" && e.retracted_at.is_none() && e.has_attachments)
        .filter_map(|e| e.message_id)
        .collect();
    let mut attachments = super::attachments::of_messages(state, conn, row, &live).await?;
    let mut out = Vec::with_capacity(rows.len());
    for e in rows {
        let kind = match (e.kind.as_str(), e.message_id) {
            ("message", Some(id)) => {
                let body = match &e.body {
                    Some(b) => open_body(state, row, id, b).await?,
                    None => String::new(),
                };
                let m = Message {
                    id: id.to_string(),
                    conversation_id: row.id.to_string(),
                    seq: e.seq,
                    sender_id: e.actor_id.to_string(),
                    body,
                    attachments: attachments.remove(&id).unwrap_or_default(),
                    send_time: e.sent_at.map(ts),
                    retract_time: e.retracted_at.map(ts),
                    client_message_id: e.client_message_id.clone().unwrap_or_default(),
                };
                conversation_event::Event::Message(m)
            }
            ("retraction", Some(id)) => conversation_event::Event::Retraction(Retraction {
                message_id: id.to_string(),
                message_seq: e.message_seq.unwrap_or_default(),
            }),
            ("read", _) => conversation_event::Event::Read(ReadReceipt {
                user_id: e.actor_id.to_string(),
                read_seq: e.read_seq.unwrap_or_default(),
            }),
            _ => {
                return Err(MessagingError::Internal(format!(
                    "event {} of conversation {} is malformed",
                    e.seq, row.id
                )))
            }
        };
        out.push(ConversationEvent {
            conversation_id: row.id.to_string(),
            seq: e.seq,
            event_time: Some(ts(e.occurred_at)),
            event: Some(kind),
        });
    }
    Ok(out)
}

pub async fn list_events(
    state: &AppState,
    call: &Call,
    r: ListEventsRequest,
) -> Result<ListEventsResponse> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let id = conversation_id(&mut v, &r.conversation_id);
    v.check(r.after_seq >= 0, "after_seq", "must not be negative");
    v.check(r.page_size >= 0, "page_size", "must not be negative");
    v.finish()?;
    let (row, standing) = enter(state, user, checked(id)?).await?;
    let size = match i64::from(r.page_size) {
        0 => 50,
        n => n.min(MAX_EVENTS),
    };
    let mut conn = state.pool.acquire().await?;
    let mut rows = store::after(&mut conn, row.id, r.after_seq, size + 1).await?;
    let more = rows.len() > usize::try_from(size).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(size).unwrap_or(usize::MAX));
    let last = rows.last().map_or(r.after_seq, |e| e.seq);
    let events = events_to_pb(state, &mut conn, &row, rows).await?;
    drop(conn);
    let e = event(
        call,
        kinds::EVENTS_READ,
        standing,
        &row,
        (
            "conversation",
            format!("{}:{}..{}", row.id, r.after_seq, last),
        ),
    );
    call.read(&state.pool, e, ListEventsResponse { events, more })
        .await
}

pub async fn mark_read(state: &AppState, call: &Call, r: MarkReadRequest) -> Result<ReadState> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let id = conversation_id(&mut v, &r.conversation_id);
    v.check(
        r.read_seq >= 1,
        "read_seq",
        "must be a sequence number (1 or more)",
    );
    v.finish()?;
    let (row, standing) = enter(state, user, checked(id)?).await?;
    let mut appended = None;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let last = store::lock_plain(conn, row.id).await?.unwrap_or(0);
            if r.read_seq > last {
                return Err(MessagingError::Status(
                    carehub_platform::errors::invalid_field(
                        "read_seq",
                        "is beyond the conversation's last event",
                    ),
                ));
            }
            let moved =
                conversations_store::advance_read(conn, row.id, user.user_id, r.read_seq).await?;
            if moved.is_some() {
                appended = Some(
                    store::append_other(conn, row.id, user.user_id, OtherEvent::Read(r.read_seq))
                        .await?,
                );
                if row.patient_id.is_some() {
                    conversations_store::note_participant(conn, row.id, user.user_id).await?;
                }
            }
            let (read_seq, unread) =
                conversations_store::read_states(conn, user.user_id, &[row.id])
                    .await?
                    .first()
                    .map_or((0, 0), |s| (s.1, s.2));
            let answer = ReadState {
                conversation_id: row.id.to_string(),
                user_id: user.user_id.to_string(),
                read_seq,
                unread_count: unread,
            };
            let e = event(
                call,
                kinds::READ_MARK,
                standing,
                &row,
                ("conversation", row.id),
            );
            Ok(Change::new(answer, e))
        })
        .await?;
    if let Some(seq) = appended {
        state.hub.published(row.id, seq);
    }
    Ok(ran.answer)
}
