//! Abuse: a participant reports a message; staff review the open reports (with the reported
//! message, audited as an operations read) and dismiss them, block the sender in the
//! conversation, or ask identity to suspend or terminate the sender's account — through the
//! outbox, in the resolution's transaction, with the block taking effect here at once. Blocks
//! and identity's account events close the sender's streams on every replica.

use carehub_platform::audit::{AuditEvent, Kind, Purpose};
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_platform::paging;
use carehub_proto::identity::v1::{AccountAction, RequestAccountActionRequest};
use carehub_proto::messaging::v1::*;
use uuid::Uuid;

use super::conversations::{audit_subject, enter, event};
use super::convert::ts;
use super::kinds;
use super::messages::message_to_pb;
use crate::domain::text;
use crate::error::{checked, MessagingError, Result};
use crate::store::conversations::{self as conversations_store, ConversationRow};
use crate::store::events as events_store;
use crate::store::moderation::{self as store, BlockRow, NewReport, ReportRow};
use crate::store::sealed;
use crate::AppState;

const REQUEST_ACCOUNT_ACTION: &str = "/carehub.identity.v1.IdentityInternal/RequestAccountAction";

fn reason_str(r: ReportReason) -> Option<&'static str> {
    Some(match r {
        ReportReason::Harassment => "harassment",
        ReportReason::Threat => "threat",
        ReportReason::Spam => "spam",
        ReportReason::Inappropriate => "inappropriate",
        ReportReason::Other => "other",
        ReportReason::Unspecified => return None,
    })
}

fn reason_pb(s: &str) -> ReportReason {
    match s {
        "harassment" => ReportReason::Harassment,
        "threat" => ReportReason::Threat,
        "spam" => ReportReason::Spam,
        "inappropriate" => ReportReason::Inappropriate,
        "other" => ReportReason::Other,
        _ => ReportReason::Unspecified,
    }
}

fn action_str(a: ReportAction) -> Option<&'static str> {
    Some(match a {
        ReportAction::Dismiss => "dismiss",
        ReportAction::BlockSender => "block_sender",
        ReportAction::SuspendAccount => "suspend_account",
        ReportAction::TerminateAccount => "terminate_account",
        ReportAction::Unspecified => return None,
    })
}

fn action_pb(s: Option<&str>) -> ReportAction {
    match s {
        Some("dismiss") => ReportAction::Dismiss,
        Some("block_sender") => ReportAction::BlockSender,
        Some("suspend_account") => ReportAction::SuspendAccount,
        Some("terminate_account") => ReportAction::TerminateAccount,
        _ => ReportAction::Unspecified,
    }
}

fn status_pb(s: &str) -> ReportStatus {
    match s {
        "open" => ReportStatus::Open,
        "dismissed" => ReportStatus::Dismissed,
        "actioned" => ReportStatus::Actioned,
        _ => ReportStatus::Unspecified,
    }
}

async fn conversation(state: &AppState, id: Uuid) -> Result<ConversationRow> {
    let mut conn = state.pool.acquire().await?;
    conversations_store::get(&mut conn, id)
        .await?
        .ok_or_else(|| MessagingError::NotFound {
            what: "conversation",
            id: id.to_string(),
        })
}

/// An event of staff's review about `entity` in `row` (purpose operations).
fn review_event(
    call: &Call,
    kind: Kind,
    row: &ConversationRow,
    (t, id): (&str, impl ToString),
) -> AuditEvent {
    let e = AuditEvent::of(kind, Purpose::Operations, t, id).caller(&call.caller);
    match audit_subject(row) {
        Some(s) => e.subject(s),
        None => e,
    }
}

async fn report_to_pb(
    state: &AppState,
    row: &ConversationRow,
    r: &ReportRow,
    message: Option<Message>,
) -> Result<Report> {
    let details = sealed::open(
        &state.crypto,
        row.crypto_subject,
        ("reports", "details", r.id),
        &r.details,
    )
    .await?;
    Ok(Report {
        id: r.id.to_string(),
        conversation_id: r.conversation_id.to_string(),
        message_id: r.message_id.to_string(),
        reported_by: r.reported_by.to_string(),
        sender_id: r.sender_id.to_string(),
        reason: reason_pb(&r.reason) as i32,
        details,
        status: status_pb(&r.status) as i32,
        action: action_pb(r.action.as_deref()) as i32,
        resolved_by: r.resolved_by.map(|u| u.to_string()).unwrap_or_default(),
        create_time: Some(ts(r.created_at)),
        resolve_time: r.resolved_at.map(ts),
        message,
    })
}

pub async fn report(state: &AppState, call: &Call, r: ReportMessageRequest) -> Result<Report> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let id = v.require_uuid("conversation_id", &r.conversation_id);
    let message = v.require_uuid("message_id", &r.message_id);
    let reason = ReportReason::try_from(r.reason).ok().and_then(reason_str);
    v.check(
        reason.is_some(),
        "reason",
        "must be a REPORT_REASON other than UNSPECIFIED",
    );
    text::check_text(&mut v, "details", &r.details, text::MAX_DETAILS);
    v.finish()?;
    let (row, standing) = enter(state, user, checked(id)?).await?;
    let (message, reason) = (checked(message)?, checked(reason)?);
    let report_id = Uuid::now_v7();
    let details = sealed::seal(
        &state.crypto,
        row.crypto_subject,
        ("reports", "details", report_id),
        r.details.trim(),
    )
    .await?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let m = events_store::message(conn, row.id, message)
                .await?
                .ok_or_else(|| MessagingError::NotFound {
                    what: "message",
                    id: message.to_string(),
                })?;
            if m.sender_id == user.user_id {
                return Err(MessagingError::Conflict {
                    kind: "OWN_MESSAGE",
                    subject: m.id.to_string(),
                    description: "a participant cannot report their own message".to_owned(),
                });
            }
            let (_, filed) = store::file_report(
                conn,
                &NewReport {
                    id: report_id,
                    conversation: row.id,
                    message: m.id,
                    reported_by: user.user_id,
                    sender: m.sender_id,
                    reason,
                    details: &details,
                },
            )
            .await?;
            let answer = report_to_pb(state, &row, &filed, None).await?;
            let e = event(
                call,
                kinds::REPORT_CREATE,
                standing,
                &row,
                ("report", filed.id),
            );
            Ok(Change::new(answer, e))
        })
        .await?;
    Ok(ran.answer)
}

type Cursor = (chrono::DateTime<chrono::Utc>, Uuid);

pub async fn list_reports(
    state: &AppState,
    call: &Call,
    r: ListReportsRequest,
) -> Result<ListReportsResponse> {
    call.user()?;
    let mut v = FieldViolations::new();
    let status = match ReportStatus::try_from(r.status) {
        Ok(ReportStatus::Unspecified | ReportStatus::Open) => Some("open"),
        Ok(ReportStatus::Dismissed) => Some("dismissed"),
        Ok(ReportStatus::Actioned) => Some("actioned"),
        Err(_) => {
            v.add("status", "must be a REPORT_STATUS");
            None
        }
    };
    let filter =
        paging::Filter::new("messaging.ListReports").field("status", status.map(str::as_bytes));
    let page = paging::Page::<Cursor>::read(r.page.as_ref(), &filter, "page", &mut v);
    v.finish()?;
    let status = checked(status)?;
    let mut rows = {
        let mut conn = state.pool.acquire().await?;
        store::list_reports(&mut conn, status, page.after, page.fetch()).await?
    };
    let next = page.finish(&mut rows, &filter, |r| (r.created_at, r.id));
    let mut reports = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    for report in &rows {
        let row = conversation(state, report.conversation_id).await?;
        let message = {
            let mut conn = state.pool.acquire().await?;
            events_store::message(&mut conn, row.id, report.message_id).await?
        };
        let message = match message {
            Some(m) => {
                let body = match &m.body {
                    Some(b) => {
                        sealed::open(
                            &state.crypto,
                            row.crypto_subject,
                            ("messages", "body", m.id),
                            b,
                        )
                        .await?
                    }
                    None => String::new(),
                };
                Some(message_to_pb(&m, body))
            }
            None => None,
        };
        reports.push(report_to_pb(state, &row, report, message).await?);
        events.push(review_event(
            call,
            kinds::REPORTS_READ,
            &row,
            ("report", report.id),
        ));
    }
    for e in events {
        carehub_platform::call::reads::record(&state.pool, e).await?;
        call.mark_audited();
    }
    Ok(ListReportsResponse {
        reports,
        page: Some(carehub_proto::common::v1::PageResponse {
            next_page_token: next,
        }),
    })
}

pub async fn resolve(state: &AppState, call: &Call, r: ResolveReportRequest) -> Result<Report> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let id = v.require_uuid("report_id", &r.report_id);
    let action = ReportAction::try_from(r.action)
        .ok()
        .filter(|a| action_str(*a).is_some());
    v.check(
        action.is_some(),
        "action",
        "must be a REPORT_ACTION other than UNSPECIFIED",
    );
    v.finish()?;
    let (id, action) = (checked(id)?, checked(action)?);
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let report =
                store::lock_report(conn, id)
                    .await?
                    .ok_or_else(|| MessagingError::NotFound {
                        what: "report",
                        id: id.to_string(),
                    })?;
            let row = conversations_store::get(conn, report.conversation_id)
                .await?
                .ok_or_else(|| {
                    MessagingError::Internal("a report's conversation is gone".into())
                })?;
            if report.status != "open" {
                return Err(MessagingError::Conflict {
                    kind: "REPORT_STATUS",
                    subject: id.to_string(),
                    description: format!("report {id} is already resolved"),
                });
            }
            let mut change_events = Vec::new();
            let status = if action == ReportAction::Dismiss {
                "dismissed"
            } else {
                "actioned"
            };
            if action != ReportAction::Dismiss {
                let (new, _) = store::block(conn, row.id, report.sender_id, user.user_id).await?;
                if new {
                    change_events.push(review_event(
                        call,
                        kinds::BLOCK_CREATE,
                        &row,
                        ("block", format!("{}:{}", row.id, report.sender_id)),
                    ));
                }
            }
            let account_action = match action {
                ReportAction::SuspendAccount => Some(AccountAction::Suspend),
                ReportAction::TerminateAccount => Some(AccountAction::Terminate),
                _ => None,
            };
            if let Some(a) = account_action {
                state
                    .outbox
                    .enqueue(
                        conn,
                        "identity",
                        REQUEST_ACCOUNT_ACTION,
                        &RequestAccountActionRequest {
                            user_id: report.sender_id.to_string(),
                            action: a as i32,
                            requested_by: user.user_id.to_string(),
                            report_id: id.to_string(),
                        },
                    )
                    .await
                    .map_err(tonic::Status::from)?;
            }
            let resolved = store::resolve_report(
                conn,
                id,
                status,
                action_str(action).unwrap_or("dismiss"),
                user.user_id,
            )
            .await?;
            let answer = report_to_pb(state, &row, &resolved, None).await?;
            let mut change = Change::new(
                answer,
                review_event(call, kinds::REPORT_RESOLVE, &row, ("report", id)),
            );
            for e in change_events {
                change = change.with(e);
            }
            Ok(change)
        })
        .await?;
    Ok(ran.answer)
}

fn block_to_pb(b: &BlockRow) -> Block {
    Block {
        conversation_id: b.conversation_id.to_string(),
        user_id: b.user_id.to_string(),
        active: b.lifted_at.is_none(),
        blocked_by: b.blocked_by.to_string(),
        create_time: Some(ts(b.created_at)),
    }
}

fn block_ids(conversation: &str, user: &str) -> Result<(Uuid, Uuid)> {
    let mut v = FieldViolations::new();
    let c = v.require_uuid("conversation_id", conversation);
    let u = v.require_uuid("user_id", user);
    v.finish()?;
    Ok((checked(c)?, checked(u)?))
}

pub async fn block(state: &AppState, call: &Call, r: BlockSenderRequest) -> Result<Block> {
    let staff = call.user()?;
    call.idempotency_key()?;
    let (c, u) = block_ids(&r.conversation_id, &r.user_id)?;
    let row = conversation(state, c).await?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let (_, b) = store::block(conn, row.id, u, staff.user_id).await?;
            let e = review_event(
                call,
                kinds::BLOCK_CREATE,
                &row,
                ("block", format!("{}:{}", row.id, u)),
            );
            Ok::<_, MessagingError>(Change::new(block_to_pb(&b), e))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn unblock(state: &AppState, call: &Call, r: UnblockSenderRequest) -> Result<Block> {
    let staff = call.user()?;
    call.idempotency_key()?;
    let (c, u) = block_ids(&r.conversation_id, &r.user_id)?;
    let row = conversation(state, c).await?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let (_, b) = store::unblock(conn, row.id, u, staff.user_id)
                .await?
                .ok_or_else(|| MessagingError::NotFound {
                    what: "block",
                    id: format!("{}:{}", row.id, u),
                })?;
            let e = review_event(
                call,
                kinds::BLOCK_LIFT,
                &row,
                ("block", format!("{}:{}", row.id, u)),
            );
            Ok::<_, MessagingError>(Change::new(block_to_pb(&b), e))
        })
        .await?;
    Ok(ran.answer)
}
