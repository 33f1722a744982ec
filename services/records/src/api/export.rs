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

use super::chart::{self, Sight};
use super::kinds;
use crate::domain::access;
use crate::domain::sensitivity::Label;
use crate::error::{RecordsError, Result};
use crate::fhir;
use crate::store::{documents, sealed};
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
    v.finish()?;
    let patient =
        patient.ok_or_else(|| RecordsError::Internal("a validated field is missing".into()))?;
    let max = i64::from(state.settings.max_chart_entries) * EXPORT_FACTOR;
    let (access, entries) = chart::visible_entries(state, user, patient, max).await?;
    let (sight, rows) = {
        let mut conn = state.pool.acquire().await?;
        let sight = Sight::of(state, &mut conn, user, patient).await?;
        (sight, documents::list(&mut conn, patient).await?)
    };
    let mut docs = Vec::with_capacity(rows.len());
    for row in &rows {
        let info = sealed::open_document_info(&state.crypto, patient, row.id, &row.info).await?;
        let labels: Vec<Label> = info
            .labels
            .iter()
            .filter_map(|l| Label::from_pb(*l))
            .collect();
        if sight.sees_labels(&labels, row.uploaded_by == user.user_id) {
            docs.push(Document {
                id: row.id.to_string(),
                info: Some(info),
                uploaded_by: row.uploaded_by.to_string(),
                source: 0,
                upload_time: Some(super::convert::ts(row.created_at)),
            });
        }
    }
    let event = call.event(
        kinds::CHART_EXPORT,
        access::purpose(access),
        "chart",
        patient,
        patient,
    );
    call.read::<_, RecordsError>(&state.pool, event, ()).await?;

    let patient_id = patient.to_string();
    let bundle_id = Uuid::now_v7().to_string();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut pieces = vec![format!(
            r#"{{"resourceType":"Bundle","id":"{bundle_id}","type":"collection","timestamp":"{now}","entry":["#
        )];
        let mut resources = vec![fhir::entry(&patient_id, fhir::patient(&patient_id))];
        for e in &entries {
            resources.push(fhir::entry(&e.id, fhir::resource(e)));
            let id = Uuid::now_v7().to_string();
            resources.push(fhir::entry(&id, fhir::provenance(&id, e)));
        }
        for d in &docs {
            resources.push(fhir::entry(&d.id, fhir::document(d)));
        }
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
