//! Demographics (birth date, state, ZIP) and the de-identified aggregates built from them.

use std::collections::{BTreeMap, BTreeSet};

use carehub_platform::audit::{AuditEvent, Purpose};
use carehub_platform::call::{Call, Change};
use carehub_platform::crypto::{CryptoError, Field};
use carehub_platform::errors::FieldViolations;
use carehub_proto::records::v1::{self as pb, entry_content::Content, *};
use chrono::Datelike as _;
use prost::Message;
use uuid::Uuid;

use super::chart;
use super::kinds;
use crate::domain::access::{self, Access, TeamRole};
use crate::domain::aggregate::{self, Table, AGE_BANDS};
use crate::domain::content;
use crate::error::{RecordsError, Result};
use crate::store::sealed;
use crate::AppState;

/// The most patients one aggregate reads (bounded work).
const MAX_PATIENTS: i64 = 100_000;

const STATES: [&str; 56] = [
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN", "IA",
    "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM",
    "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA",
    "WV", "WI", "WY", "PR", "GU", "VI", "AS", "MP",
];

fn field<'a>(row: &'a str, subject: &'a str) -> Field<'a> {
    Field::new("demographics", "body", row, subject)
}

async fn open(
    state: &AppState,
    patient: Uuid,
    body: &[u8],
) -> std::result::Result<Demographics, CryptoError> {
    let id = patient.to_string();
    let plain = state.crypto.decrypt(&field(&id, &id), body).await?;
    Demographics::decode(plain.as_slice()).map_err(|_| CryptoError::Invalid("demographics".into()))
}

pub async fn get(state: &AppState, call: &Call, r: GetDemographicsRequest) -> Result<Demographics> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    v.finish()?;
    let patient = crate::error::checked(patient)?;
    let (access, body) = {
        let mut conn = state.pool.acquire().await?;
        let access = chart::reach(&mut conn, user, patient).await?;
        let body: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT body FROM demographics WHERE patient_id = $1")
                .bind(patient)
                .fetch_optional(&mut *conn)
                .await?;
        (access, body)
    };
    let body = body.ok_or_else(|| RecordsError::NotFound {
        what: "demographics",
        id: patient.to_string(),
    })?;
    let answer = open(state, patient, &body).await?;
    let read = call.event(
        kinds::DEMOGRAPHICS_READ,
        access::purpose(access),
        "demographics",
        patient,
        patient,
    );
    call.read(&state.pool, read, answer).await
}

pub async fn update(
    state: &AppState,
    call: &Call,
    r: UpdateDemographicsRequest,
) -> Result<Demographics> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let d = r.demographics.clone().unwrap_or_default();
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("demographics.patient_id", &d.patient_id);
    match &d.birth_date {
        None => v.add("demographics.birth_date", "is required"),
        Some(b) => {
            let valid = u32::try_from(b.month)
                .ok()
                .zip(u32::try_from(b.day).ok())
                .and_then(|(m, day)| chrono::NaiveDate::from_ymd_opt(b.year, m, day))
                .filter(|date| b.year >= 1900 && *date <= chrono::Utc::now().date_naive());
            v.check(
                valid.is_some(),
                "demographics.birth_date",
                "must be a past date from 1900 on",
            );
        }
    }
    v.check(
        STATES.contains(&d.state.as_str()),
        "demographics.state",
        "must be a two-letter US state code",
    );
    v.check(
        d.zip.is_empty() || (d.zip.len() == 5 && d.zip.bytes().all(|b| b.is_ascii_digit())),
        "demographics.zip",
        "must be five digits",
    );
    v.finish()?;
    let patient = crate::error::checked(patient)?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let access = chart::reach(conn, &user, patient).await?;
            if !matches!(access, Access::Patient | Access::Team(TeamRole::Staff)) {
                return Err(RecordsError::PermissionDenied(
                    "demographics are kept by the patient and the care team's staff".to_owned(),
                ));
            }
            let id = patient.to_string();
            let body = state
                .crypto
                .encrypt(&field(&id, &id), &d.encode_to_vec())
                .await?;
            sqlx::query(
                "INSERT INTO demographics (patient_id, body) VALUES ($1, $2)
                 ON CONFLICT (patient_id) DO UPDATE SET body = $2, updated_at = now()",
            )
            .bind(patient)
            .bind(&body)
            .execute(&mut *conn)
            .await?;
            let event = call.event(
                kinds::DEMOGRAPHICS_UPDATE,
                access::purpose(access),
                "demographics",
                patient,
                patient,
            );
            Ok::<_, RecordsError>(Change::new(d.clone(), event))
        })
        .await?;
    Ok(ran.answer)
}

/// The category a coded condition is counted under.
fn category(c: &pb::Coding) -> String {
    if c.system == content::ICD10CM {
        format!("ICD-10-CM {}", c.code.chars().take(3).collect::<String>())
    } else {
        format!("SNOMED CT {}", c.code)
    }
}

pub async fn aggregates(
    state: &AppState,
    call: &Call,
    _r: GetConditionAggregatesRequest,
) -> Result<ConditionAggregates> {
    let year = chrono::Utc::now().year();
    let people: Vec<(Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT patient_id, body FROM demographics ORDER BY patient_id LIMIT $1")
            .bind(MAX_PATIENTS)
            .fetch_all(&state.pool)
            .await?;
    // state -> condition -> distinct patients per age band.
    let mut counts: BTreeMap<String, BTreeMap<String, [BTreeSet<Uuid>; 6]>> = BTreeMap::new();
    for (patient, body) in people {
        let d = match open(state, patient, &body).await {
            Ok(d) => d,
            // An erased patient counts no more.
            Err(CryptoError::Shredded { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let Some(born) = d.birth_date else { continue };
        let band = aggregate::age_band(year - born.year);
        let rows: Vec<(Uuid, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT e.id, e.version, v.content FROM entries e
               JOIN entry_versions v ON v.entry_id = e.id AND v.version = e.version
              WHERE e.patient_id = $1 AND e.kind = 'condition'",
        )
        .bind(patient)
        .fetch_all(&state.pool)
        .await?;
        for (entry, version, sealed_content) in rows {
            let (c, labels) =
                sealed::open_version(&state.crypto, patient, (entry, version), &sealed_content)
                    .await?;
            let Some(Content::Condition(condition)) = c.content else {
                continue;
            };
            let current = matches!(
                pb::ConditionStatus::try_from(condition.clinical_status),
                Ok(pb::ConditionStatus::Active
                    | pb::ConditionStatus::Recurrence
                    | pb::ConditionStatus::Relapse)
            );
            if !labels.is_empty() || !current {
                continue;
            }
            let Some(code) = condition.code else { continue };
            counts
                .entry(d.state.clone())
                .or_default()
                .entry(category(&code))
                .or_default()[band]
                .insert(patient);
        }
    }
    let tables = counts
        .into_iter()
        .map(|(state_code, by_condition)| {
            let names: Vec<String> = by_condition.keys().cloned().collect();
            let cells: Vec<Vec<u64>> = by_condition
                .values()
                .map(|bands| bands.iter().map(|s| s.len() as u64).collect())
                .collect();
            let t = Table::suppressed_from(&cells);
            let row = |r: usize, name: String| AggregateRow {
                condition: name,
                cells: (0..=AGE_BANDS.len())
                    .map(|c| AggregateCell {
                        count: t.published(r, c),
                    })
                    .collect(),
            };
            StateTable {
                state: state_code,
                rows: names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| row(i, n.clone()))
                    .collect(),
                totals: Some(row(names.len(), "total".to_owned())),
            }
        })
        .collect();
    // Filed under no one: the answer is about nobody in particular.
    let read = AuditEvent::of(
        kinds::AGGREGATES_READ,
        Purpose::Operations,
        "aggregates",
        year,
    )
    .caller(&call.caller);
    call.read(
        &state.pool,
        read,
        ConditionAggregates {
            age_bands: AGE_BANDS.iter().map(|s| (*s).to_owned()).collect(),
            tables,
            year,
        },
    )
    .await
}
