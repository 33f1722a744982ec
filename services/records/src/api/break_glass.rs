//! Break-glass: a provider outside a patient's care team opens the chart in an emergency, with
//! a reason, for a limited time; admins review every such access.

use carehub_platform::audit::{AuditEvent, Purpose};
use carehub_platform::auth::Role;
use carehub_platform::call::{self, Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_platform::paging::{self, Page};
use carehub_proto::common::v1::PageResponse;
use carehub_proto::records::v1::*;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::convert::ts;
use super::kinds;
use crate::error::{RecordsError, Result};
use crate::store::{self, break_glass, sealed};
use crate::AppState;

const REASON_MIN: usize = 10;
const REASON_MAX: usize = 1_000;

pub async fn break_glass(
    state: &AppState,
    call: &Call,
    r: BreakGlassRequest,
) -> Result<BreakGlassAccess> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    let reason = r.reason.trim();
    v.require_len(reason, "reason", REASON_MIN, REASON_MAX);
    v.finish()?;
    let patient = crate::error::checked(patient)?;
    let person = state.directory.person(patient, "patient").await?;
    if person.role != Role::Patient {
        return Err(RecordsError::NotFound {
            what: "patient",
            id: patient.to_string(),
        });
    }
    let id = Uuid::now_v7();
    let minutes = state.settings.break_glass_minutes;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            if store::relation(conn, user.user_id, patient)
                .await?
                .team_role
                .is_some()
            {
                return Err(RecordsError::Conflict {
                    kind: "CARE_TEAM",
                    subject: patient.to_string(),
                    description: "the caller is on the patient's care team: no break-glass needed"
                        .to_owned(),
                });
            }
            let sealed = sealed::seal_reason(&state.crypto, patient, id, reason).await?;
            let row = break_glass::open(conn, id, patient, user.user_id, &sealed, minutes).await?;
            let event = call.event(
                kinds::BREAK_GLASS_OPEN,
                Purpose::BreakGlass,
                "break_glass_access",
                id,
                patient,
            );
            Ok::<_, RecordsError>(Change::new(access_to_pb(&row, reason.to_owned()), event))
        })
        .await?;
    Ok(ran.answer)
}

fn access_to_pb(row: &break_glass::AccessRow, reason: String) -> BreakGlassAccess {
    BreakGlassAccess {
        id: row.id.to_string(),
        patient_id: row.patient_id.to_string(),
        provider_id: row.provider_id.to_string(),
        open_time: Some(ts(row.opened_at)),
        expire_time: Some(ts(row.expires_at)),
        reason,
    }
}

fn page_filter() -> paging::Filter {
    paging::Filter::new("/carehub.records.v1.RecordsService/ListBreakGlassAccesses")
}

/// Every access, newest first, reasons opened: one review event per access listed (filed
/// under its patient), or one without a subject for an empty page.
pub async fn list_break_glass_accesses(
    state: &AppState,
    call: &Call,
    r: ListBreakGlassAccessesRequest,
) -> Result<ListBreakGlassAccessesResponse> {
    let mut v = FieldViolations::new();
    let filter = page_filter();
    let page = Page::<(DateTime<Utc>, Uuid)>::read(r.page.as_ref(), &filter, "page", &mut v);
    v.finish()?;
    let mut rows = {
        let mut conn = state.pool.acquire().await?;
        break_glass::list(&mut conn, page.after, page.fetch()).await?
    };
    let next_page_token = page.finish(&mut rows, &filter, |last| (last.opened_at, last.id));
    let mut accesses = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len().max(1));
    for row in &rows {
        let reason =
            sealed::open_reason(&state.crypto, row.patient_id, row.id, &row.reason).await?;
        accesses.push(access_to_pb(row, reason));
        events.push(call.event(
            kinds::BREAK_GLASS_REVIEW,
            Purpose::Operations,
            "break_glass_access",
            row.id,
            row.patient_id,
        ));
    }
    if events.is_empty() {
        events.push(
            AuditEvent::of(
                kinds::BREAK_GLASS_REVIEW,
                Purpose::Operations,
                "break_glass_accesses",
                "none",
            )
            .caller(&call.caller),
        );
    }
    // Recorded together (one group commit) before anything is answered.
    futures::future::try_join_all(
        events
            .into_iter()
            .map(|e| call::reads::record(&state.pool, e)),
    )
    .await?;
    call.mark_audited();
    Ok(ListBreakGlassAccessesResponse {
        accesses,
        page: Some(PageResponse { next_page_token }),
    })
}
