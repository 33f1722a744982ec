//! Amendment requests (HIPAA 164.526): the patient asks, a care-team provider extends the
//! deadline once, accepts (the entry gets a new version linked to the request) or denies in
//! writing; the patient may disagree and the provider rebut. Every step checks the state it
//! starts from on the locked request, so concurrent deciders cannot both win.

use carehub_platform::audit::Purpose;
use carehub_platform::auth::UserCaller;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::records::v1::*;
use sqlx::PgConnection;
use uuid::Uuid;

use super::chart::{self, NewVersion};
use super::convert::{check_etag, ts};
use super::kinds;
use crate::domain::access::{self, Access, TeamRole};
use crate::domain::amendment::{self, Filed, Status, Step};
use crate::domain::{content, sensitivity};
use crate::error::{checked, RecordsError, Result};
use crate::store::amendments::{self as store, AmendmentRow};
use crate::store::{entries, sealed};
use crate::AppState;

const TEXT_MIN: usize = 10;
const TEXT_MAX: usize = 2_000;
const TABLE: &str = "amendments";

/// The patient and amendment ids and the text of a request, checked.
fn step_request(
    patient_id: &str,
    amendment_id: &str,
    (field, text): (&str, &str),
) -> Result<(Uuid, Uuid, String)> {
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", patient_id);
    let id = v.require_uuid("amendment_id", amendment_id);
    v.require_len(text.trim(), field, TEXT_MIN, TEXT_MAX);
    v.finish()?;
    Ok((checked(patient)?, checked(id)?, text.trim().to_owned()))
}

async fn to_pb(state: &AppState, r: &AmendmentRow) -> Result<Amendment> {
    let (c, p, id) = (&state.crypto, r.patient_id, r.id);
    let status = match Status::parse(&r.status) {
        Some(Status::Requested) => AmendmentStatus::Requested,
        Some(Status::Accepted) => AmendmentStatus::Accepted,
        Some(Status::Denied) => AmendmentStatus::Denied,
        None => {
            return Err(RecordsError::Internal(format!(
                "amendment {id} has an unknown status"
            )))
        }
    };
    Ok(Amendment {
        id: id.to_string(),
        patient_id: p.to_string(),
        entry_id: r.entry_id.to_string(),
        status: status as i32,
        reason: sealed::open_text(c, p, (TABLE, "reason", id), &r.reason).await?,
        request_time: Some(ts(r.requested_at)),
        due_time: Some(ts(r.due_at)),
        extension_reason: sealed::open_text_opt(
            c,
            p,
            (TABLE, "extension_reason", id),
            r.extension_reason.as_deref(),
        )
        .await?,
        decided_by: r.decided_by.map(|u| u.to_string()).unwrap_or_default(),
        decide_time: r.decided_at.map(ts),
        denial_reason: sealed::open_text_opt(
            c,
            p,
            (TABLE, "denial_reason", id),
            r.denial_reason.as_deref(),
        )
        .await?,
        amended_version: r.amended_version.unwrap_or(0),
        disagreement: sealed::open_text_opt(
            c,
            p,
            (TABLE, "disagreement", id),
            r.disagreement.as_deref(),
        )
        .await?,
        disagreement_time: r.disagreement_at.map(ts),
        rebuttal: sealed::open_text_opt(c, p, (TABLE, "rebuttal", id), r.rebuttal.as_deref())
            .await?,
        rebuttal_by: r.rebuttal_by.map(|u| u.to_string()).unwrap_or_default(),
        rebuttal_time: r.rebuttal_at.map(ts),
    })
}

/// The locked request, once `step` may follow from where it stands.
async fn lock_for(
    conn: &mut PgConnection,
    patient: Uuid,
    id: Uuid,
    step: Step,
) -> Result<AmendmentRow> {
    let row = store::lock(conn, patient, id).await?;
    let status = Status::parse(&row.status)
        .ok_or_else(|| RecordsError::Internal(format!("amendment {id} has an unknown status")))?;
    let filed = Filed {
        extended: row.extension_reason.is_some(),
        disagreement: row.disagreement.is_some(),
        rebuttal: row.rebuttal.is_some(),
    };
    amendment::allowed(status, filed, step).map_err(|why| RecordsError::Conflict {
        kind: "AMENDMENT_STATE",
        subject: id.to_string(),
        description: format!("amendment {id}: {why}"),
    })?;
    Ok(row)
}

/// A provider's steps need a care-team provider who sees the entry.
async fn as_provider(
    state: &AppState,
    conn: &mut PgConnection,
    user: &UserCaller,
    patient: Uuid,
    id: Uuid,
    step: Step,
) -> Result<AmendmentRow> {
    if chart::reach(conn, user, patient).await? != Access::Team(TeamRole::Provider) {
        return Err(RecordsError::PermissionDenied(
            "only a provider on the care team acts on amendment requests".to_owned(),
        ));
    }
    let row = lock_for(conn, patient, id, step).await?;
    if !chart::entry_visible(state, conn, user, (patient, row.entry_id)).await? {
        return Err(RecordsError::NotFound {
            what: "amendment",
            id: id.to_string(),
        });
    }
    Ok(row)
}

pub async fn request(
    state: &AppState,
    call: &Call,
    r: RequestAmendmentRequest,
) -> Result<Amendment> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    let entry = v.require_uuid("entry_id", &r.entry_id);
    v.require_len(r.reason.trim(), "reason", TEXT_MIN, TEXT_MAX);
    v.finish()?;
    let (patient, entry) = (checked(patient)?, checked(entry)?);
    access::own_chart(&user, patient)?;
    let id = Uuid::now_v7();
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            entries::current(conn, patient, entry)
                .await?
                .ok_or_else(|| entries::not_found(entry))?;
            let reason = sealed::seal_text(
                &state.crypto,
                patient,
                (TABLE, "reason", id),
                r.reason.trim(),
            )
            .await?;
            let row = store::insert(conn, id, patient, entry, &reason).await?;
            let event = call.event(
                kinds::AMENDMENT_REQUEST,
                Purpose::PatientRequest,
                "amendment",
                id,
                patient,
            );
            Ok::<_, RecordsError>(Change::new(to_pb(state, &row).await?, event))
        })
        .await?;
    Ok(ran.answer)
}

/// Who takes a written step: a care-team provider, or the patient.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Actor {
    Provider,
    Patient,
}

/// A step that adds a text to a request (an extension's or a denial's reason, a statement of
/// disagreement, a rebuttal): who may take it, from which state, into which sealed column,
/// with which audit kind.
struct TextStep {
    actor: Actor,
    step: Step,
    column: &'static str,
    kind: carehub_platform::audit::Kind,
    change: for<'a> fn(Uuid, &'a [u8]) -> store::Change<'a>,
}

async fn text_step<Req: prost::Message>(
    state: &AppState,
    call: &Call,
    r: &Req,
    (patient_id, amendment_id, text): (&str, &str, (&str, &str)),
    how: TextStep,
) -> Result<Amendment> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let (patient, id, text) = step_request(patient_id, amendment_id, text)?;
    if how.actor == Actor::Patient {
        access::own_chart(&user, patient)?;
    }
    let purpose = match how.actor {
        Actor::Provider => Purpose::Treatment,
        Actor::Patient => Purpose::PatientRequest,
    };
    let ran = call
        .mutate(&state.idempotency, r, async |conn| {
            match how.actor {
                Actor::Provider => as_provider(state, conn, &user, patient, id, how.step).await?,
                Actor::Patient => lock_for(conn, patient, id, how.step).await?,
            };
            let sealed =
                sealed::seal_text(&state.crypto, patient, (TABLE, how.column, id), &text).await?;
            let row = store::apply(conn, id, (how.change)(user.user_id, &sealed)).await?;
            let event = call.event(how.kind, purpose, "amendment", id, patient);
            Ok::<_, RecordsError>(Change::new(to_pb(state, &row).await?, event))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn extend(state: &AppState, call: &Call, r: ExtendAmendmentRequest) -> Result<Amendment> {
    let ids = (
        r.patient_id.as_str(),
        r.amendment_id.as_str(),
        ("reason", r.reason.as_str()),
    );
    let how = TextStep {
        actor: Actor::Provider,
        step: Step::Extend,
        column: "extension_reason",
        kind: kinds::AMENDMENT_EXTEND,
        change: |_, reason| store::Change::Extend { reason },
    };
    text_step(state, call, &r, ids, how).await
}

pub async fn deny(state: &AppState, call: &Call, r: DenyAmendmentRequest) -> Result<Amendment> {
    let ids = (
        r.patient_id.as_str(),
        r.amendment_id.as_str(),
        ("reason", r.reason.as_str()),
    );
    let how = TextStep {
        actor: Actor::Provider,
        step: Step::Decide,
        column: "denial_reason",
        kind: kinds::AMENDMENT_DENY,
        change: |by, reason| store::Change::Deny { by, reason },
    };
    text_step(state, call, &r, ids, how).await
}

pub async fn accept(state: &AppState, call: &Call, r: AcceptAmendmentRequest) -> Result<Amendment> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    let id = v.require_uuid("amendment_id", &r.amendment_id);
    let kind = content::check(&mut v, "content", r.content.as_ref(), chrono::Utc::now());
    let expected = check_etag(&mut v, "etag", &r.etag);
    let labels = sensitivity::check_labels(&mut v, "labels", &r.labels);
    v.finish()?;
    let (patient, id, kind, expected) = (
        checked(patient)?,
        checked(id)?,
        checked(kind)?,
        checked(expected)?,
    );
    let content = checked(r.content.clone())?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let before = as_provider(state, conn, &user, patient, id, Step::Decide).await?;
            let change = NewVersion {
                content: &content,
                labels: &labels,
                kind,
                expected,
            };
            let (version, _) =
                chart::write_version(state, conn, &user, (patient, before.entry_id), change)
                    .await?;
            let decided = store::Change::Accept {
                by: user.user_id,
                version: version.version,
            };
            let row = store::apply(conn, id, decided).await?;
            let accepted = call.event(
                kinds::AMENDMENT_ACCEPT,
                Purpose::Treatment,
                "amendment",
                id,
                patient,
            );
            let updated = call.event(
                kinds::ENTRY_UPDATE,
                Purpose::Treatment,
                "entry",
                before.entry_id,
                patient,
            );
            Ok::<_, RecordsError>(Change::new(to_pb(state, &row).await?, accepted).with(updated))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn disagree(
    state: &AppState,
    call: &Call,
    r: FileDisagreementRequest,
) -> Result<Amendment> {
    let ids = (
        r.patient_id.as_str(),
        r.amendment_id.as_str(),
        ("statement", r.statement.as_str()),
    );
    let how = TextStep {
        actor: Actor::Patient,
        step: Step::Disagree,
        column: "disagreement",
        kind: kinds::AMENDMENT_DISAGREE,
        change: |_, statement| store::Change::Disagree { statement },
    };
    text_step(state, call, &r, ids, how).await
}

pub async fn rebut(state: &AppState, call: &Call, r: FileRebuttalRequest) -> Result<Amendment> {
    let ids = (
        r.patient_id.as_str(),
        r.amendment_id.as_str(),
        ("statement", r.statement.as_str()),
    );
    let how = TextStep {
        actor: Actor::Provider,
        step: Step::Rebut,
        column: "rebuttal",
        kind: kinds::AMENDMENT_REBUT,
        change: |by, statement| store::Change::Rebut { by, statement },
    };
    text_step(state, call, &r, ids, how).await
}

pub async fn list(
    state: &AppState,
    call: &Call,
    r: ListAmendmentsRequest,
) -> Result<ListAmendmentsResponse> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    v.finish()?;
    let patient = checked(patient)?;
    let (access, rows) = {
        let mut conn = state.pool.acquire().await?;
        let access = chart::reach(&mut conn, user, patient).await?;
        let mut rows = store::list(&mut conn, patient).await?;
        // Requests about entries hidden from a team member are hidden with them.
        if access != Access::Patient {
            let mut kept = Vec::with_capacity(rows.len());
            for row in rows {
                if chart::entry_visible(state, &mut conn, user, (patient, row.entry_id)).await? {
                    kept.push(row);
                }
            }
            rows = kept;
        }
        (access, rows)
    };
    let mut amendments = Vec::with_capacity(rows.len());
    for row in &rows {
        amendments.push(to_pb(state, row).await?);
    }
    let read = call.event(
        kinds::AMENDMENTS_READ,
        access::purpose(access),
        "amendments",
        patient,
        patient,
    );
    call.read(&state.pool, read, ListAmendmentsResponse { amendments })
        .await
}
