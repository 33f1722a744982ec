//! The accounting of disclosures (HIPAA 164.528): care-team staff (or an admin) record what
//! left carehub for a third party; the patient reads every disclosure of the last six years.
//! A disclosure of entries carries their denied amendment requests (with any statement of
//! disagreement and rebuttal), as 164.526(d)(5) requires.

use carehub_platform::audit::Purpose;
use carehub_platform::auth::Role;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_platform::paging::{self, Page};
use carehub_proto::common::v1::PageResponse;
use carehub_proto::records::v1::*;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::chart;
use super::convert::ts;
use super::kinds;
use crate::domain::access::{self, Access, TeamRole};
use crate::error::{checked, RecordsError, Result};
use crate::store::disclosures::{self as store, DisclosureRow, NewDisclosure};
use crate::store::{amendments, sealed};
use crate::AppState;

const TABLE: &str = "disclosures";
/// How far back the accounting reaches (164.528(a)(1)).
const ACCOUNTING_MONTHS: u32 = 72;

fn six_years_ago(now: DateTime<Utc>) -> DateTime<Utc> {
    now.checked_sub_months(chrono::Months::new(ACCOUNTING_MONTHS))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

async fn to_pb(state: &AppState, r: &DisclosureRow) -> Result<Disclosure> {
    let (c, p, id) = (&state.crypto, r.patient_id, r.id);
    Ok(Disclosure {
        id: id.to_string(),
        patient_id: p.to_string(),
        recipient: sealed::open_text(c, p, (TABLE, "recipient", id), &r.recipient).await?,
        purpose: sealed::open_text(c, p, (TABLE, "purpose", id), &r.purpose).await?,
        description: sealed::open_text(c, p, (TABLE, "description", id), &r.description).await?,
        entry_ids: r.entry_ids.iter().map(Uuid::to_string).collect(),
        disclose_time: Some(ts(r.disclosed_at)),
        recorded_by: r.recorded_by.to_string(),
        record_time: Some(ts(r.recorded_at)),
        amendment_ids: r.amendment_ids.iter().map(Uuid::to_string).collect(),
    })
}

pub async fn record(
    state: &AppState,
    call: &Call,
    r: RecordDisclosureRequest,
) -> Result<Disclosure> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let now = Utc::now();
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    v.require_len(r.recipient.trim(), "recipient", 1, 200);
    v.require_len(r.purpose.trim(), "purpose", 1, 200);
    v.require_len(r.description.trim(), "description", 1, 2_000);
    let mut entries = Vec::with_capacity(r.entry_ids.len());
    for (i, id) in r.entry_ids.iter().enumerate() {
        if let Some(id) = v.require_uuid(&format!("entry_ids[{i}]"), id) {
            if !entries.contains(&id) {
                entries.push(id);
            }
        }
    }
    v.check(
        entries.len() <= 500,
        "entry_ids",
        "must name at most 500 entries",
    );
    let at = carehub_platform::timestamps::field(r.disclose_time.as_ref(), "disclose_time", &mut v);
    match at {
        None => v.add("disclose_time", "is required"),
        Some(t) if t > now + chrono::Duration::minutes(5) => {
            v.add("disclose_time", "must not be in the future")
        }
        Some(t) if t < six_years_ago(now) => {
            v.add("disclose_time", "must be within the last six years")
        }
        Some(_) => {}
    }
    v.finish()?;
    let (patient, at) = (checked(patient)?, checked(at)?);
    let id = Uuid::now_v7();
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            if !user.has_role(Role::Admin)
                && chart::reach(conn, &user, patient).await? != Access::Team(TeamRole::Staff)
            {
                return Err(RecordsError::PermissionDenied(
                    "disclosures are recorded by the care team's staff or an admin".to_owned(),
                ));
            }
            let known = store::entries_of(conn, patient, &entries).await?;
            if let Some(missing) = entries.iter().find(|e| !known.contains(e)) {
                return Err(crate::store::entries::not_found(*missing));
            }
            let carried = amendments::denied_of(conn, patient, &entries).await?;
            let c = &state.crypto;
            let recipient =
                sealed::seal_text(c, patient, (TABLE, "recipient", id), r.recipient.trim()).await?;
            let purpose =
                sealed::seal_text(c, patient, (TABLE, "purpose", id), r.purpose.trim()).await?;
            let description =
                sealed::seal_text(c, patient, (TABLE, "description", id), r.description.trim())
                    .await?;
            let row = store::insert(
                conn,
                &NewDisclosure {
                    id,
                    patient,
                    recipient: &recipient,
                    purpose: &purpose,
                    description: &description,
                    entries: &entries,
                    amendments: &carried,
                    disclosed_at: at,
                    recorded_by: user.user_id,
                },
            )
            .await?;
            let event = call.event(
                kinds::DISCLOSURE_RECORD,
                Purpose::Operations,
                "disclosure",
                id,
                patient,
            );
            Ok::<_, RecordsError>(Change::new(to_pb(state, &row).await?, event))
        })
        .await?;
    Ok(ran.answer)
}

fn page_filter(patient: Uuid) -> paging::Filter {
    paging::Filter::new("/carehub.records.v1.RecordsService/ListDisclosures")
        .field("patient_id", Some(patient.as_bytes()))
}

pub async fn list(
    state: &AppState,
    call: &Call,
    r: ListDisclosuresRequest,
) -> Result<ListDisclosuresResponse> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    let filter = patient.map(page_filter);
    let page = filter
        .as_ref()
        .map(|f| Page::<(DateTime<Utc>, Uuid)>::read(r.page.as_ref(), f, "page", &mut v));
    v.finish()?;
    let (patient, filter, page) = (checked(patient)?, checked(filter)?, checked(page)?);
    access::own_chart(user, patient)?;
    let mut rows = {
        let mut conn = state.pool.acquire().await?;
        store::list(
            &mut conn,
            patient,
            six_years_ago(Utc::now()),
            page.after,
            page.fetch(),
        )
        .await?
    };
    let next_page_token = page.finish(&mut rows, &filter, |last| (last.disclosed_at, last.id));
    let mut disclosures = Vec::with_capacity(rows.len());
    for row in &rows {
        disclosures.push(to_pb(state, row).await?);
    }
    let read = call.event(
        kinds::DISCLOSURES_READ,
        Purpose::PatientRequest,
        "disclosures",
        patient,
        patient,
    );
    call.read(
        &state.pool,
        read,
        ListDisclosuresResponse {
            disclosures,
            page: Some(PageResponse { next_page_token }),
        },
    )
    .await
}
