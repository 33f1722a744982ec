//! Video visits: UpsertVideoVisit (scheduling) and GetVideoJoinToken (participants).
//!
//! Scheduling tells messaging about each appointment's visit (created, moved, cancelled) through
//! its outbox, one delivery per change, with the outbox id as idempotency key. A participant
//! (the visit's patient or provider) asks for a join token within the visit's window; the
//! token (see `crate::video`) is a secret: it is signed in the transaction that records its
//! audit event, and neither stored nor logged.

use carehub_platform::audit::Purpose;
use carehub_platform::call::{Call, Change};
use carehub_platform::crypto::service_seal::SealError;
use carehub_platform::crypto::CryptoError;
use carehub_platform::errors::{self, FieldViolations};
use carehub_platform::timestamps;
use carehub_proto::common::v1::ErrorReason;
use carehub_proto::messaging::v1::*;
use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::convert::ts;
use super::kinds;
use crate::error::{checked, MessagingError, Result};
use crate::store::video::{self as store, NewVisit, VisitRow};
use crate::video::{self, Refusal, SignError};
use crate::AppState;

/// The longest visit: the window check is what keeps tokens from being issued for days.
const MAX_VISIT: Duration = Duration::hours(24);

fn visit_to_pb(row: &VisitRow) -> VideoVisit {
    VideoVisit {
        appointment_id: row.appointment_id.to_string(),
        patient_id: row.patient_id.to_string(),
        provider_id: row.provider_id.to_string(),
        start_time: Some(ts(row.starts_at)),
        end_time: Some(ts(row.ends_at)),
        cancelled: row.cancelled,
        room: row.room.clone(),
        revision: row.revision,
    }
}

/// A key that cannot be had now (Vault outage past the staleness limit) is UNAVAILABLE, like
/// any encrypted field; anything else is a bug.
fn key_error(e: SealError) -> MessagingError {
    match e {
        SealError::Key(k) => MessagingError::Crypto(CryptoError::Keys(k)),
        other => MessagingError::Internal(format!("video key derivation: {other}")),
    }
}

fn sign_error(e: SignError) -> MessagingError {
    match e {
        SignError::Key(k) => key_error(k),
        other => MessagingError::Internal(format!("video join token: {other}")),
    }
}

/// A required timestamp field of the visit.
fn required_time(
    v: &mut FieldViolations,
    field: &str,
    value: Option<&prost_types::Timestamp>,
) -> Option<DateTime<Utc>> {
    if value.is_none() {
        v.add(field, "is required");
    }
    timestamps::field(value, field, v)
}

/// The visit of an UpsertVideoVisit, checked; `room` is left out (messaging derives it, a value
/// sent is ignored).
struct Upsert {
    appointment: Uuid,
    patient: Uuid,
    provider: Uuid,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    cancelled: bool,
    revision: i64,
}

fn parse_upsert(r: &UpsertVideoVisitRequest) -> Result<Upsert> {
    let Some(visit) = r.visit.as_ref() else {
        return Err(errors::invalid_field("visit", "is required").into());
    };
    let mut v = FieldViolations::new();
    let appointment = v.require_uuid("visit.appointment_id", &visit.appointment_id);
    let patient = v.require_uuid("visit.patient_id", &visit.patient_id);
    let provider = v.require_uuid("visit.provider_id", &visit.provider_id);
    let start = required_time(&mut v, "visit.start_time", visit.start_time.as_ref());
    let end = required_time(&mut v, "visit.end_time", visit.end_time.as_ref());
    if let (Some(p), Some(q)) = (patient, provider) {
        v.check(p != q, "visit.provider_id", "must differ from patient_id");
    }
    if let (Some(s), Some(e)) = (start, end) {
        if e <= s {
            v.add("visit.end_time", "must be after start_time");
        } else if e - s > MAX_VISIT {
            v.add(
                "visit.end_time",
                "must be at most 24 hours after start_time",
            );
        }
    }
    v.check(
        visit.revision >= 0,
        "visit.revision",
        "must not be negative",
    );
    v.finish()?;
    Ok(Upsert {
        appointment: checked(appointment)?,
        patient: checked(patient)?,
        provider: checked(provider)?,
        start: checked(start)?,
        end: checked(end)?,
        cancelled: visit.cancelled,
        revision: visit.revision,
    })
}

/// Records or changes an appointment's visit. A delivery older than the stored visit (its
/// revision not above the stored one; revision 0 is never older) is an earlier change that the
/// outbox retried late, overtaken by a later one: it answers the stored visit and changes
/// nothing. A cancelled visit is final, whatever the revision of a later delivery. The patient
/// of an appointment never changes: a delivery naming another one is refused (VISIT_PATIENT),
/// since the room and the audit trail are the first patient's.
pub async fn upsert_visit(
    state: &AppState,
    call: &Call,
    r: UpsertVideoVisitRequest,
) -> Result<VideoVisit> {
    call.idempotency_key()?;
    let u = parse_upsert(&r)?;
    let room = state.video.room_for(u.appointment).map_err(key_error)?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let (written, row) = store::upsert(
                conn,
                &NewVisit {
                    appointment_id: u.appointment,
                    patient_id: u.patient,
                    provider_id: u.provider,
                    starts_at: u.start,
                    ends_at: u.end,
                    cancelled: u.cancelled,
                    room: &room,
                    revision: u.revision,
                },
            )
            .await?;
            if !written && row.patient_id != u.patient {
                return Err(MessagingError::Conflict {
                    kind: "VISIT_PATIENT",
                    subject: u.appointment.to_string(),
                    description: "the appointment's video visit is another patient's".to_owned(),
                });
            }
            if !written && row.cancelled {
                tracing::info!(
                    appointment = %u.appointment,
                    "video visit is cancelled; the change was not applied"
                );
            } else if !written {
                tracing::info!(
                    appointment = %u.appointment,
                    revision = u.revision,
                    stored = row.revision,
                    "video visit is at a later revision; the older change was not applied"
                );
            }
            let event = call.event(
                kinds::VIDEO_VISIT_UPSERT,
                Purpose::Treatment,
                "video_visit",
                u.appointment,
                row.patient_id,
            );
            Ok(Change::new(visit_to_pb(&row), event))
        })
        .await?;
    Ok(ran.answer)
}

fn refused(why: Refusal, appointment: Uuid) -> MessagingError {
    // No instants in the message: statuses end up in logs, and a visit's time is the patient's.
    let (kind, description) = match why {
        Refusal::Cancelled => ("VISIT_CANCELLED", "the appointment was cancelled"),
        Refusal::TooEarly { .. } => (
            "VISIT_WINDOW",
            "the visit is not open yet: tokens are issued from shortly before its start",
        ),
        Refusal::Over => (
            "VISIT_WINDOW",
            "the visit is over: tokens are issued until shortly after its end",
        ),
    };
    MessagingError::Conflict {
        kind,
        subject: appointment.to_string(),
        description: description.to_owned(),
    }
}

/// A join token for the caller, the visit's patient or provider, within its window. The visit
/// is read under a share lock in the transaction that records the issue: a cancellation
/// committed before is seen, one committed after waits for it.
pub async fn join_token(
    state: &AppState,
    call: &Call,
    r: GetVideoJoinTokenRequest,
) -> Result<VideoJoinToken> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let appointment = v.require_uuid("appointment_id", &r.appointment_id);
    v.finish()?;
    let appointment = checked(appointment)?;
    call.mutate_secret(&state.pool, async |conn| {
        let row = store::get_for_share(conn, appointment)
            .await?
            .ok_or_else(|| MessagingError::NotFound {
                what: "video visit",
                id: appointment.to_string(),
            })?;
        // Before the visit's state: someone else's visit tells them nothing about it.
        if user.user_id != row.patient_id && user.user_id != row.provider_id {
            // The conversations' reason: the caller is not in this visit (their role allowed
            // the call; NotAParticipant's message names a conversation, hence the status here).
            return Err(MessagingError::Status(errors::status(
                tonic::Code::PermissionDenied,
                ErrorReason::NotAParticipant,
                "only the visit's patient and provider may join it",
            )));
        }
        let validity = video::validity(
            (row.starts_at, row.ends_at, row.cancelled),
            Utc::now(),
            state.video.window(),
            state.video.ttl(),
        )
        .map_err(|why| refused(why, appointment))?;
        let token = state
            .video
            .sign(user.user_id, &row.room, validity)
            .map_err(sign_error)?;
        let event = call.event(
            kinds::VIDEO_TOKEN_ISSUE,
            Purpose::Treatment,
            "video_visit",
            appointment,
            row.patient_id,
        );
        Ok(Change::new(
            VideoJoinToken {
                token: token.token,
                room: row.room,
                url: state.video.url().to_owned(),
                expire_time: Some(ts(validity.expires)),
            },
            event,
        ))
    })
    .await
}
