//! Documents of the chart: uploaded as a stream of chunks, each checked, encrypted and stored
//! as it arrives (never the whole document in memory), and streamed back the same way.

use std::pin::Pin;
use std::sync::Arc;

use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::records::v1::*;
use futures::Stream;
use tonic::Status;
use uuid::Uuid;

use super::chart::{self, source_of, Sight};
use super::convert::ts;
use super::kinds;
use crate::domain::access::{self, Access};
use crate::domain::sensitivity::{self, Label};
use crate::error::{checked, RecordsError, Result};
use crate::store::documents::{self as store, DocumentRow, NewDocument};
use crate::store::entries::Source;
use crate::store::sealed;
use crate::AppState;
use carehub_platform::content::{self as document, Intake};

/// The stream DownloadDocument answers with.
pub type ChunkStream =
    Pin<Box<dyn Stream<Item = std::result::Result<DocumentChunk, Status>> + Send>>;

fn invalid(field: &str, why: &str) -> RecordsError {
    RecordsError::Status(carehub_platform::errors::invalid_field(field, why))
}

/// The checked description of an upload, its labels and its SHA-256.
fn check_info(info: &DocumentInfo) -> Result<(Uuid, Vec<Label>, Vec<u8>)> {
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("info.patient_id", &info.patient_id);
    v.require_len(info.title.trim(), "info.title", 1, 200);
    let sha = document::check_declared(&mut v, &info.content_type, info.size_bytes, &info.sha256);
    let labels = sensitivity::check_labels(&mut v, "info.labels", &info.labels);
    v.finish()?;
    Ok((checked(patient)?, labels, checked(sha)?))
}

fn document_to_pb(row: &DocumentRow, info: DocumentInfo) -> Document {
    Document {
        id: row.id.to_string(),
        info: Some(info),
        uploaded_by: row.uploaded_by.to_string(),
        source: match Source::parse(&row.source) {
            Some(Source::Patient) => pb_source::Patient,
            Some(Source::Provider) => pb_source::Provider,
            Some(Source::Staff) => pb_source::Staff,
            Some(Source::Integration) => pb_source::Integration,
            None => pb_source::Unspecified,
        } as i32,
        upload_time: Some(ts(row.created_at)),
    }
}

use carehub_proto::records::v1::Source as pb_source;

pub async fn upload(
    state: &Arc<AppState>,
    call: &Call,
    mut stream: tonic::Streaming<UploadDocumentRequest>,
) -> Result<Document> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let first = stream.message().await?.and_then(|m| m.part);
    let Some(upload_document_request::Part::Info(mut info)) = first else {
        return Err(invalid(
            "info",
            "the first message must say what the document is",
        ));
    };
    info.title = info.title.trim().to_owned();
    let (patient, labels, sha) = check_info(&info)?;
    info.labels = labels.iter().map(|l| l.to_pb() as i32).collect();
    info.sha256 = data_encoding::HEXLOWER.encode(&sha);
    // Counted before any work: a burst of slow uploads cannot take every pooled connection.
    let _slot = state.uploads.clone().try_acquire_owned().map_err(|_| {
        RecordsError::Status(carehub_platform::errors::retry_after(
            tonic::Code::Unavailable,
            carehub_proto::common::v1::ErrorReason::Unavailable,
            "too many uploads at once; retry shortly",
            std::time::Duration::from_secs(1),
        ))
    })?;
    // What a retry is compared with: the description, which names the bytes by their hash.
    let request = UploadDocumentRequest {
        part: Some(upload_document_request::Part::Info(info.clone())),
    };
    let id = Uuid::now_v7();
    let ran = call
        .mutate(&state.idempotency, &request, async |conn| {
            let access = chart::reach(conn, &user, patient).await?;
            if access == Access::BreakGlass {
                return Err(RecordsError::PermissionDenied(
                    "a break-glass access reads the chart only".to_owned(),
                ));
            }
            let mut intake = Intake::new(&info.content_type, info.size_bytes, sha.clone());
            while let Some(message) = stream.message().await? {
                let Some(upload_document_request::Part::Chunk(bytes)) = message.part else {
                    return Err(invalid(
                        "info",
                        "only the first message says what the document is",
                    ));
                };
                let seq = intake.take(&bytes).map_err(|(f, why)| invalid(f, why))?;
                let sealed = sealed::seal_chunk(&state.crypto, patient, (id, seq), &bytes).await?;
                store::insert_chunk(conn, id, seq, &sealed).await?;
            }
            let seq = intake.finish().map_err(|(f, why)| invalid(f, why))?;
            let sealed_info = sealed::seal_document_info(&state.crypto, patient, id, &info).await?;
            let row = store::insert(
                conn,
                &NewDocument {
                    id,
                    patient,
                    info: &sealed_info,
                    chunks: seq,
                    uploaded_by: user.user_id,
                    source: source_of(access).as_str(),
                },
            )
            .await?;
            let event = call.event(
                kinds::DOCUMENT_UPLOAD,
                access::purpose(access),
                "document",
                id,
                patient,
            );
            Ok::<_, RecordsError>(Change::new(document_to_pb(&row, info.clone()), event))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn download(
    state: &Arc<AppState>,
    call: &Call,
    r: DownloadDocumentRequest,
) -> Result<ChunkStream> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    let id = v.require_uuid("document_id", &r.document_id);
    v.finish()?;
    let (patient, id) = (checked(patient)?, checked(id)?);
    let not_found = || RecordsError::NotFound {
        what: "document",
        id: id.to_string(),
    };
    let (sight, row) = {
        let mut conn = state.pool.acquire().await?;
        let sight = Sight::of(state, &mut conn, user, patient).await?;
        (
            sight,
            store::get(&mut conn, patient, id)
                .await?
                .ok_or_else(not_found)?,
        )
    };
    let info = sealed::open_document_info(&state.crypto, patient, id, &row.info).await?;
    let labels: Vec<Label> = info
        .labels
        .iter()
        .filter_map(|l| Label::from_pb(*l))
        .collect();
    if !sight.sees_labels(&labels, row.uploaded_by == user.user_id) {
        return Err(not_found());
    }
    let event = call.event(
        kinds::DOCUMENT_READ,
        access::purpose(sight.access),
        "document",
        id,
        patient,
    );
    let first: Document = call
        .read::<_, RecordsError>(&state.pool, event, document_to_pb(&row, info))
        .await?;
    // Two chunks in flight at most: a slow reader holds back the reading, not the memory.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let (state, chunks) = (state.clone(), row.chunks);
    tokio::spawn(async move {
        let mut first = Some(first);
        for seq in 0..chunks {
            let data = match store::chunk(&state.pool, id, seq).await {
                Ok(sealed) => sealed::open_chunk(&state.crypto, patient, (id, seq), &sealed).await,
                Err(e) => Err(e),
            };
            let item = data
                .map(|data| DocumentChunk {
                    document: first.take(),
                    data,
                })
                .map_err(Status::from);
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

pub async fn list(
    state: &Arc<AppState>,
    call: &Call,
    r: ListDocumentsRequest,
) -> Result<ListDocumentsResponse> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    v.finish()?;
    let patient = checked(patient)?;
    let (sight, rows) = {
        let mut conn = state.pool.acquire().await?;
        let sight = Sight::of(state, &mut conn, user, patient).await?;
        (sight, store::list(&mut conn, patient).await?)
    };
    let mut documents = Vec::with_capacity(rows.len());
    for row in &rows {
        let info = sealed::open_document_info(&state.crypto, patient, row.id, &row.info).await?;
        let labels: Vec<Label> = info
            .labels
            .iter()
            .filter_map(|l| Label::from_pb(*l))
            .collect();
        if sight.sees_labels(&labels, row.uploaded_by == user.user_id) {
            documents.push(document_to_pb(row, info));
        }
    }
    let event = call.event(
        kinds::DOCUMENTS_READ,
        access::purpose(sight.access),
        "documents",
        patient,
        patient,
    );
    call.read(&state.pool, event, ListDocumentsResponse { documents })
        .await
}
