//! Conversations: opening one, reading it, listing the caller's, and who is in them. Every
//! access goes through [`enter`]: the caller's standing in the conversation (the patient, an
//! active care-team member as records says right now, a staff conversation's member) or
//! NOT_A_PARTICIPANT.

use carehub_platform::auth::{Role, UserCaller};
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_platform::paging;
use carehub_proto::messaging::v1::*;
use uuid::Uuid;

use super::convert::conversation_to_pb;
use super::kinds;
use crate::domain::participants::{self, ConversationKind, Roster, Standing};
use crate::domain::text;
use crate::error::{checked, MessagingError, Result};
use crate::store::conversations::{self as store, ConversationRow, NewConversation};
use crate::store::sealed;
use crate::AppState;

/// Who is in conversation `row`, as of now.
pub async fn roster(state: &AppState, row: &ConversationRow) -> Result<Roster> {
    Ok(match (row.kind(), row.patient_id) {
        (ConversationKind::Care, Some(patient)) => Roster::Care {
            patient,
            team: state.teams.team(patient).await?.as_ref().clone(),
        },
        _ => Roster::Staff {
            members: row.members.clone(),
        },
    })
}

/// The caller's standing in `row`, or NOT_A_PARTICIPANT.
pub async fn standing(
    state: &AppState,
    user: &UserCaller,
    row: &ConversationRow,
) -> Result<Standing> {
    participants::standing(user, &roster(state, row).await?).ok_or_else(|| {
        MessagingError::NotAParticipant {
            conversation: row.id.to_string(),
        }
    })
}

/// Conversation `id` (NOT_FOUND) and the caller's standing in it (NOT_A_PARTICIPANT).
pub async fn enter(
    state: &AppState,
    user: &UserCaller,
    id: Uuid,
) -> Result<(ConversationRow, Standing)> {
    let row = {
        let mut conn = state.pool.acquire().await?;
        store::get(&mut conn, id).await?
    }
    .ok_or_else(|| MessagingError::NotFound {
        what: "conversation",
        id: id.to_string(),
    })?;
    let standing = standing(state, user, &row).await?;
    Ok((row, standing))
}

/// [`enter`] for a send: a care conversation already read is not read again (see
/// [`store::CareConversations`]: a send uses only what never changes).
pub async fn enter_to_send(
    state: &AppState,
    user: &UserCaller,
    id: Uuid,
) -> Result<(std::sync::Arc<ConversationRow>, Standing)> {
    if let Some(row) = state.care_conversations.get(id) {
        let standing = standing(state, user, &row).await?;
        return Ok((row, standing));
    }
    let (row, standing) = enter(state, user, id).await?;
    let row = std::sync::Arc::new(row);
    state.care_conversations.keep(&row);
    Ok((row, standing))
}

/// The subject events of a conversation are filed under: its patient, if any.
pub fn audit_subject(row: &ConversationRow) -> Option<Uuid> {
    row.patient_id
}

/// An event of `kind` about `entity` in conversation `row`, by the caller.
pub fn event(
    call: &Call,
    kind: carehub_platform::audit::Kind,
    standing: Standing,
    row: &ConversationRow,
    (entity_type, entity): (&str, impl ToString),
) -> carehub_platform::audit::AuditEvent {
    let e = carehub_platform::audit::AuditEvent::of(kind, standing.purpose(), entity_type, entity)
        .caller(&call.caller);
    match audit_subject(row) {
        Some(s) => e.subject(s),
        None => e,
    }
}

pub async fn open_subject(state: &AppState, row: &ConversationRow) -> Result<String> {
    sealed::open(
        &state.crypto,
        row.crypto_subject,
        ("conversations", "subject", row.id),
        &row.subject,
    )
    .await
}

pub async fn create(
    state: &AppState,
    call: &Call,
    r: CreateConversationRequest,
) -> Result<Conversation> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let kind = match carehub_proto::messaging::v1::ConversationKind::try_from(r.kind) {
        Ok(carehub_proto::messaging::v1::ConversationKind::Care) => Some(ConversationKind::Care),
        Ok(carehub_proto::messaging::v1::ConversationKind::Staff) => Some(ConversationKind::Staff),
        _ => {
            v.add(
                "kind",
                "must be CONVERSATION_KIND_CARE or CONVERSATION_KIND_STAFF",
            );
            None
        }
    };
    let subject = r.subject.trim();
    v.require_len(subject, "subject", 1, text::MAX_SUBJECT);
    text::check_text(&mut v, "subject", subject, text::MAX_SUBJECT);
    let mut members = Vec::new();
    let mut patient = None;
    match kind {
        Some(participants::ConversationKind::Care) => {
            patient = v.require_uuid("patient_id", &r.patient_id);
            v.check(
                r.member_ids.is_empty(),
                "member_ids",
                "must be empty for a care conversation",
            );
        }
        Some(participants::ConversationKind::Staff) => {
            v.check(
                r.patient_id.is_empty(),
                "patient_id",
                "must be empty for a staff conversation",
            );
            v.check(
                (1..=text::MAX_STAFF_MEMBERS).contains(&r.member_ids.len()),
                "member_ids",
                "must name 1 to 50 providers or staff",
            );
            for (i, m) in r.member_ids.iter().enumerate() {
                if let Some(id) = v.require_uuid(&format!("member_ids[{i}]"), m) {
                    if !members.contains(&id) && id != user.user_id {
                        members.push(id);
                    }
                }
            }
        }
        None => {}
    }
    v.finish()?;
    let kind = checked(kind)?;
    let id = Uuid::now_v7();
    let (crypto_subject, roster) = match kind {
        participants::ConversationKind::Care => {
            let patient = checked(patient)?;
            let roster = Roster::Care {
                patient,
                team: state.teams.team(patient).await?.as_ref().clone(),
            };
            (patient, roster)
        }
        participants::ConversationKind::Staff => {
            if !(user.has_role(Role::Provider) || user.has_role(Role::Staff)) {
                return Err(MessagingError::PermissionDenied(
                    "only providers and staff open staff conversations".to_owned(),
                ));
            }
            let people = futures::future::try_join_all(
                members.iter().map(|m| state.directory.person(*m, "member")),
            )
            .await?;
            for (m, p) in members.iter().zip(&people) {
                if !(matches!(p.role, Role::Provider | Role::Staff) && p.active) {
                    return Err(MessagingError::Conflict {
                        kind: "MEMBER_ROLE",
                        subject: m.to_string(),
                        description: format!("user {m} is not an active provider or staff member"),
                    });
                }
            }
            members.insert(0, user.user_id);
            (
                id,
                Roster::Staff {
                    members: members.clone(),
                },
            )
        }
    };
    let standing =
        participants::standing(user, &roster).ok_or_else(|| MessagingError::NotAParticipant {
            conversation: id.to_string(),
        })?;
    let sealed_subject = sealed::seal(
        &state.crypto,
        crypto_subject,
        ("conversations", "subject", id),
        subject,
    )
    .await?;
    let subject = subject.to_owned();
    let everyone = match kind {
        ConversationKind::Care => participants::everyone(&roster),
        ConversationKind::Staff => Vec::new(),
    };
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let new = NewConversation {
                id,
                kind,
                patient,
                crypto_subject,
                subject: &sealed_subject,
                created_by: user.user_id,
                members: &members,
                participants: &everyone,
            };
            store::insert(conn, &new).await?;
            let row = store::get(conn, id).await?.ok_or_else(|| {
                MessagingError::Internal("a conversation just written is gone".into())
            })?;
            let e = event(
                call,
                kinds::CONVERSATION_CREATE,
                standing,
                &row,
                ("conversation", id),
            );
            Ok::<_, MessagingError>(Change::new(
                conversation_to_pb(&row, subject.clone(), (0, 0)),
                e,
            ))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn get(state: &AppState, call: &Call, r: GetConversationRequest) -> Result<Conversation> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let id = v.require_uuid("conversation_id", &r.conversation_id);
    v.finish()?;
    let (row, standing) = enter(state, user, checked(id)?).await?;
    let subject = open_subject(state, &row).await?;
    let read = {
        let mut conn = state.pool.acquire().await?;
        store::read_states(&mut conn, user.user_id, &[row.id]).await?
    };
    let (read_seq, unread) = read.first().map_or((0, 0), |r| (r.1, r.2));
    let e = event(
        call,
        kinds::CONVERSATION_READ,
        standing,
        &row,
        ("conversation", row.id),
    );
    call.read(
        &state.pool,
        e,
        conversation_to_pb(&row, subject, (read_seq, unread)),
    )
    .await
}

/// The cursor of a conversation listing: the last one's activity time and id.
type Cursor = (chrono::DateTime<chrono::Utc>, Uuid);

pub async fn list(
    state: &AppState,
    call: &Call,
    r: ListConversationsRequest,
) -> Result<ListConversationsResponse> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let patient = if r.patient_id.is_empty() {
        None
    } else {
        v.require_uuid("patient_id", &r.patient_id)
    };
    let filter = paging::Filter::new("messaging.ListConversations")
        .field("user", Some(user.user_id.as_bytes()))
        .field(
            "patient_id",
            patient.as_ref().map(|p| p.as_bytes().as_slice()),
        );
    let page = paging::Page::<Cursor>::read(r.page.as_ref(), &filter, "page", &mut v);
    v.finish()?;
    let mut rows = {
        let mut conn = state.pool.acquire().await?;
        store::list_for(&mut conn, user.user_id, patient, page.after, page.fetch()).await?
    };
    let next = page.finish(&mut rows, &filter, |row| (row.last_activity_at, row.id));
    // Only those the caller stands in now: a former team member's old conversations drop out.
    let mut visible = Vec::new();
    for row in rows {
        match standing(state, user, &row).await {
            Ok(s) => visible.push((row, s)),
            Err(MessagingError::NotAParticipant { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let ids: Vec<Uuid> = visible.iter().map(|(row, _)| row.id).collect();
    let reads = {
        let mut conn = state.pool.acquire().await?;
        store::read_states(&mut conn, user.user_id, &ids).await?
    };
    let mut conversations = Vec::with_capacity(visible.len());
    let mut events = Vec::with_capacity(visible.len());
    for (row, s) in &visible {
        let subject = open_subject(state, row).await?;
        let (read_seq, unread) = reads
            .iter()
            .find(|r| r.0 == row.id)
            .map_or((0, 0), |r| (r.1, r.2));
        conversations.push(conversation_to_pb(row, subject, (read_seq, unread)));
        events.push(event(
            call,
            kinds::CONVERSATION_READ,
            *s,
            row,
            ("conversation", row.id),
        ));
    }
    let answer = ListConversationsResponse {
        conversations,
        page: Some(carehub_proto::common::v1::PageResponse {
            next_page_token: next,
        }),
    };
    for e in events {
        carehub_platform::call::reads::record(&state.pool, e).await?;
        call.mark_audited();
    }
    Ok(answer)
}
