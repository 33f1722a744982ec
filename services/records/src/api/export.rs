//! ExportChart: what the caller sees of a chart as a FHIR R4 JSON Bundle, streamed one
//! resource at a time (the pieces concatenate to the JSON document).

use std::pin::Pin;
use std::sync::Arc;

use carehub_platform::call::Call;
use carehub_platform::errors::FieldViolations;
use carehub_proto::records::v1::*;
use futures::Stream;
use tonic::Status;
use uuid::Uuid;

use super::chart;
use super::kinds;
use carehub_platform::audit;

use crate::domain::access::{self, Access, TeamRole};
use crate::domain::sensitivity::Label;
use crate::error::{RecordsError, Result};
use crate::fhir;
use crate::store::disclosures::{self, NewDisclosure};
use crate::store::{amendments, documents, sealed};
use crate::AppState;

/// The stream ExportChart answers with.
pub type FhirStream = Pin<Box<dyn Stream<Item = std::result::Result<FhirChunk, Status>> + Send>>;

/// How many times GetChart's limit an export carries.
const EXPORT_FACTOR: i64 = 20;

pub async fn export(
    state: &Arc<AppState>,
    call: &Call,
    r: ExportChartRequest,
) -> Result<FhirStream> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    let third_party = !r.recipient.trim().is_empty() || !r.purpose.trim().is_empty();
    if third_party {
        v.require_len(r.recipient.trim(), "recipient", 1, 200);
        v.require_len(r.purpose.trim(), "purpose", 1, 200);
    }
    v.finish()?;
    let patient = crate::error::checked(patient)?;
    let max = i64::from(state.settings.max_chart_entries) * EXPORT_FACTOR;
    let (sight, mut entries) = chart::visible_entries(state, user, patient, max).await?;
    let access = sight.access;
    if third_party && access != Access::Team(TeamRole::Staff) {
        return Err(RecordsError::PermissionDenied(
            "exports to a third party are made by the care team's staff".to_owned(),
        ));
    }
    let rows = {
        let mut conn = state.pool.acquire().await?;
        documents::list(&mut conn, patient).await?
    };
    let mut docs = Vec::with_capacity(rows.len());
    for row in &rows {
        let info = sealed::open_document_info(&state.crypto, patient, row.id, &row.info).await?;
        let labels: Vec<Label> = info
            .labels
            .iter()
            .filter_map(|l| Label::from_pb(*l))
            .collect();
        let shown = if third_party {
            labels.is_empty()
        } else {
            sight.sees_labels(&labels, row.uploaded_by == user.user_id)
        };
        if shown {
            docs.push(Document {
                id: row.id.to_string(),
                info: Some(info),
                uploaded_by: row.uploaded_by.to_string(),
                source: 0,
                upload_time: Some(super::convert::ts(row.created_at)),
            });
        }
    }
    let export_event = call.event(
        kinds::CHART_EXPORT,
        access::purpose(access),
        "chart",
        patient,
        patient,
    );
    if third_party {
        // Labelled information never leaves for a third party through an export.
        entries.retain(|e| e.labels.is_empty());
        let ids: Vec<Uuid> = entries
            .iter()
            .filter_map(|e| Uuid::parse_str(&e.id).ok())
            .collect();
        let id = Uuid::now_v7();
        let c = &state.crypto;
        let description = format!(
            "FHIR R4 export: {} entries, {} documents",
            entries.len(),
            docs.len()
        );
        let mut tx = state.pool.begin().await?;
        let carried = amendments::denied_of(&mut tx, patient, &ids).await?;
        let place = |column| ("disclosures", column, id);
        let recipient =
            sealed::seal_text(c, patient, place("recipient"), r.recipient.trim()).await?;
        let purpose = sealed::seal_text(c, patient, place("purpose"), r.purpose.trim()).await?;
        let description = sealed::seal_text(c, patient, place("description"), &description).await?;
        disclosures::insert(
            &mut tx,
            &NewDisclosure {
                id,
                patient,
                recipient: &recipient,
                purpose: &purpose,
                description: &description,
                entries: &ids,
                amendments: &carried,
                disclosed_at: chrono::Utc::now(),
                recorded_by: user.user_id,
            },
        )
        .await?;
        let disclosed = call.event(
            kinds::DISCLOSURE_RECORD,
            carehub_platform::audit::Purpose::Operations,
            "disclosure",
            id,
            patient,
        );
        audit::record(&mut tx, &disclosed).await?;
        audit::record(&mut tx, &export_event).await?;
        tx.commit().await?;
        call.mark_audited();
    } else {
        call.read::<_, RecordsError>(&state.pool, export_event, ())
            .await?;
    }

    let patient_id = patient.to_string();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let resources = fhir::bundle_entries(&patient_id, &entries, &docs);
        let mut pieces = vec![fhir::bundle_opening()];
        for (i, r) in resources.iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            pieces.push(format!("{comma}{r}"));
            // One resource per message: the answer is never built whole.
            for piece in pieces.drain(..) {
                if tx
                    .send(Ok(FhirChunk {
                        json: piece.into_bytes(),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let _ = tx
            .send(Ok(FhirChunk {
                json: b"]}".to_vec(),
            }))
            .await;
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// The whole chart of `patient` as a FHIR R4 Bundle, for `carehub records export` (an
/// operator answering the patient's request for a copy, HIPAA 164.524): every entry and
/// document, labels included, audited as the operator CLI.
pub async fn whole_chart_bundle(
    pool: &sqlx::PgPool,
    crypto: &carehub_platform::crypto::Envelope,
    patient: Uuid,
) -> Result<serde_json::Value> {
    let (rows, doc_rows) = {
        let mut conn = pool.acquire().await?;
        (
            crate::store::entries::chart(&mut conn, patient, i64::MAX).await?,
            documents::list(&mut conn, patient).await?,
        )
    };
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        let (content, labels) =
            sealed::open_version(crypto, patient, (row.entry_id, row.version), &row.content)
                .await?;
        entries.push(super::convert::entry_to_pb(row, content, &labels)?);
    }
    let mut docs = Vec::with_capacity(doc_rows.len());
    for row in &doc_rows {
        docs.push(Document {
            id: row.id.to_string(),
            info: Some(sealed::open_document_info(crypto, patient, row.id, &row.info).await?),
            uploaded_by: row.uploaded_by.to_string(),
            source: 0,
            upload_time: Some(super::convert::ts(row.created_at)),
        });
    }
    let mut event = carehub_platform::audit::AuditEvent::of(
        kinds::CHART_EXPORT,
        carehub_platform::audit::Purpose::PatientRequest,
        "chart",
        patient,
    )
    .subject(patient);
    event.actor_workload = Some("admin-cli".to_owned());
    let mut tx = pool.begin().await?;
    audit::record(&mut tx, &event).await?;
    tx.commit().await?;
    let patient_id = patient.to_string();
    Ok(serde_json::json!({
        "resourceType": "Bundle",
        "id": Uuid::now_v7().to_string(),
        "type": "collection",
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "entry": fhir::bundle_entries(&patient_id, &entries, &docs),
    }))
}
