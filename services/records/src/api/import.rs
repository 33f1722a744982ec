//! ImportFhirBundle: an integration workload's FHIR R4 Bundle, checked whole, then applied in
//! one transaction — each resource creates an entry or a new version of the entry an earlier
//! import made from it, with provenance "integration" — once per bundle identifier.

use carehub_platform::audit::{self, Purpose};
use carehub_platform::auth::Role;
use carehub_platform::call::Call;
use carehub_platform::crypto::Normalization;
use carehub_platform::errors::FieldViolations;
use carehub_proto::records::v1::*;
use sqlx::PgConnection;
use uuid::Uuid;

use super::convert::entry_to_pb;
use super::kinds;
use crate::domain::content;
use crate::error::{RecordsError, Result};
use crate::fhir::import;
use crate::store::entries::{self, Entered, Source};
use crate::store::sealed;
use crate::AppState;

const BUNDLE_SCOPE: &str = "fhir_imports.bundle";
const RESOURCE_SCOPE: &str = "fhir_resource_links.resource";

fn key(state: &AppState, scope: &str, workload: &str, id: &str) -> Result<Vec<u8>> {
    Ok(state.crypto.blind_index().compute(
        scope,
        Normalization::Exact,
        &format!("{workload}\u{1f}{id}"),
    )?)
}

async fn answer_of(
    state: &AppState,
    conn: &mut PgConnection,
    patient: Uuid,
    ids: &[Uuid],
) -> Result<ImportFhirBundleResponse> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let row = entries::current(conn, patient, *id)
            .await?
            .ok_or_else(|| entries::not_found(*id))?;
        let (content, labels) =
            sealed::open_version(&state.crypto, patient, (*id, row.version), &row.content).await?;
        out.push(entry_to_pb(&row, content, &labels)?);
    }
    Ok(ImportFhirBundleResponse { entries: out })
}

pub async fn import(
    state: &AppState,
    call: &Call,
    r: ImportFhirBundleRequest,
) -> Result<ImportFhirBundleResponse> {
    let workload = call.caller.workload.clone();
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    v.finish()?;
    let patient = crate::error::checked(patient)?;
    let bundle = import::read(&r.bundle_json, chrono::Utc::now())?;
    if state.directory.person(patient, "patient").await?.role != Role::Patient {
        return Err(RecordsError::NotFound {
            what: "patient",
            id: patient.to_string(),
        });
    }
    let bundle_key = key(state, BUNDLE_SCOPE, &workload, &bundle.identifier)?;
    let mut tx = state.pool.begin().await?;
    // One import of a bundle at a time: the second waits and then answers what the first did.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended(encode($1, 'hex'), 0))")
        .bind(&bundle_key)
        .execute(&mut *tx)
        .await?;
    let done: Option<(Uuid, Vec<Uuid>)> =
        sqlx::query_as("SELECT patient_id, entry_ids FROM fhir_imports WHERE bundle_key = $1")
            .bind(&bundle_key)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((imported_for, ids)) = done {
        if imported_for != patient {
            return Err(RecordsError::Conflict {
                kind: "BUNDLE_IDENTIFIER",
                subject: patient.to_string(),
                description: "this bundle identifier was imported for another patient".to_owned(),
            });
        }
        let answer = answer_of(state, &mut tx, patient, &ids).await?;
        let event = call.event(
            kinds::CHART_IMPORT,
            Purpose::Treatment,
            "fhir_bundle",
            patient,
            patient,
        );
        audit::record(&mut tx, &event).await?;
        tx.commit().await?;
        call.mark_audited();
        return Ok(answer);
    }
    let entered = Entered {
        source: Source::Integration,
        by: None,
        verified_by: None,
    };
    let mut ids = Vec::with_capacity(bundle.resources.len());
    let mut out = Vec::with_capacity(bundle.resources.len());
    for (i, res) in bundle.resources.iter().enumerate() {
        let kind = content::kind_of(&res.content)
            .ok_or_else(|| RecordsError::Internal("an imported resource has no content".into()))?;
        let resource_key = key(state, RESOURCE_SCOPE, &workload, &res.resource_id)?;
        let linked: Option<Uuid> = sqlx::query_scalar(
            "SELECT entry_id FROM fhir_resource_links WHERE patient_id = $1 AND resource_key = $2 FOR UPDATE",
        )
        .bind(patient)
        .bind(&resource_key)
        .fetch_optional(&mut *tx)
        .await?;
        let (row, labels, event_kind) = match linked {
            Some(id) => {
                let current = entries::current(&mut tx, patient, id)
                    .await?
                    .ok_or_else(|| entries::not_found(id))?;
                if content::Kind::parse(&current.kind) != Some(kind) {
                    return Err(RecordsError::Status(
                        carehub_platform::errors::invalid_field(
                            &format!("entry[{i}].resource.resourceType"),
                            "changed since this resource was first imported",
                        ),
                    ));
                }
                let (_, labels) = sealed::open_version(
                    &state.crypto,
                    patient,
                    (id, current.version),
                    &current.content,
                )
                .await?;
                let sealed = sealed::seal_version(
                    &state.crypto,
                    patient,
                    (id, current.version + 1),
                    &res.content,
                    &labels,
                )
                .await?;
                let row = entries::advance(&mut tx, patient, id, current.version, &sealed, entered)
                    .await?;
                (row, labels, kinds::ENTRY_UPDATE)
            }
            None => {
                let id = Uuid::now_v7();
                let sealed =
                    sealed::seal_version(&state.crypto, patient, (id, 1), &res.content, &[])
                        .await?;
                let row = entries::insert(&mut tx, id, patient, kind, &sealed, entered).await?;
                sqlx::query("INSERT INTO fhir_resource_links (patient_id, resource_key, entry_id) VALUES ($1, $2, $3)")
                    .bind(patient)
                    .bind(&resource_key)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                (row, Vec::new(), kinds::ENTRY_CREATE)
            }
        };
        let event = call.event(
            event_kind,
            Purpose::Treatment,
            "entry",
            row.entry_id,
            patient,
        );
        audit::record(&mut tx, &event).await?;
        ids.push(row.entry_id);
        out.push(entry_to_pb(&row, res.content.clone(), &labels)?);
    }
    sqlx::query("INSERT INTO fhir_imports (bundle_key, patient_id, workload, entry_ids) VALUES ($1, $2, $3, $4)")
        .bind(&bundle_key)
        .bind(patient)
        .bind(&workload)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    let event = call.event(
        kinds::CHART_IMPORT,
        Purpose::Treatment,
        "fhir_bundle",
        patient,
        patient,
    );
    audit::record(&mut tx, &event).await?;
    tx.commit().await?;
    call.mark_audited();
    Ok(ImportFhirBundleResponse { entries: out })
}
