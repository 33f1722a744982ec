//! Attachments: uploaded as a stream of chunks into a conversation (each checked, sealed and
//! stored as it arrives, never the whole file in memory), sent by naming them in SendMessage,
//! streamed back to participants. The uploader sees an unsent attachment; once sent, every
//! participant does; a retracted message's attachments are gone.

use std::pin::Pin;

use carehub_platform::call::{Call, Change};
use carehub_platform::content::{self, Intake};
use carehub_platform::crypto::Field;
use carehub_platform::errors::FieldViolations;
use carehub_proto::messaging::v1::*;
use futures::Stream;
use prost::Message as _;
use tonic::Status;
use uuid::Uuid;

use super::conversations::{enter, event};
use super::convert::ts;
use super::kinds;
use crate::error::{checked, MessagingError, Result};
use crate::store::attachments::{self as store, AttachmentRow};
use crate::store::conversations::ConversationRow;
use crate::AppState;

/// The stream DownloadAttachment answers with.
pub type ChunkStream =
    Pin<Box<dyn Stream<Item = std::result::Result<AttachmentChunk, Status>> + Send>>;

fn invalid(field: &str, why: &str) -> MessagingError {
    MessagingError::Status(carehub_platform::errors::invalid_field(field, why))
}

fn info_field(row: &ConversationRow, id: &str) -> (String, String) {
    (id.to_owned(), row.crypto_subject.to_string())
}

async fn seal_info(
    state: &AppState,
    row: &ConversationRow,
    id: Uuid,
    info: &AttachmentInfo,
) -> Result<Vec<u8>> {
    let (id, subject) = info_field(row, &id.to_string());
    let field = Field::new("attachments", "info", &id, &subject);
    Ok(state.crypto.encrypt(&field, &info.encode_to_vec()).await?)
}

async fn open_info(
    state: &AppState,
    row: &ConversationRow,
    a: &AttachmentRow,
) -> Result<AttachmentInfo> {
    let (id, subject) = info_field(row, &a.id.to_string());
    let field = Field::new("attachments", "info", &id, &subject);
    let plain = state.crypto.decrypt(&field, &a.info).await?;
    AttachmentInfo::decode(plain.as_slice())
        .map_err(|_| MessagingError::Internal(format!("attachment {} holds no description", a.id)))
}

fn chunk_field(row: &ConversationRow, id: Uuid, seq: i32) -> (String, String) {
    (format!("{id}/{seq}"), row.crypto_subject.to_string())
}

fn to_pb(a: &AttachmentRow, info: AttachmentInfo) -> Attachment {
    Attachment {
        id: a.id.to_string(),
        info: Some(info),
        uploaded_by: a.uploaded_by.to_string(),
        upload_time: Some(ts(a.created_at)),
        message_id: a.message_id.map(|m| m.to_string()).unwrap_or_default(),
    }
}

/// The attachments sent with `message`, described.
pub async fn of_message(
    state: &AppState,
    conn: &mut sqlx::PgConnection,
    row: &ConversationRow,
    message: Uuid,
) -> Result<Vec<Attachment>> {
    let mut out = Vec::new();
    for a in store::of_message(conn, message).await? {
        let info = open_info(state, row, &a).await?;
        out.push(to_pb(&a, info));
    }
    Ok(out)
}

/// The attachments sent with each of `messages` (one query for a whole batch of events).
pub async fn of_messages(
    state: &AppState,
    conn: &mut sqlx::PgConnection,
    row: &ConversationRow,
    messages: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Vec<Attachment>>> {
    let mut out: std::collections::HashMap<Uuid, Vec<Attachment>> =
        std::collections::HashMap::new();
    if messages.is_empty() {
        return Ok(out);
    }
    for a in store::of_messages(conn, messages).await? {
        let info = open_info(state, row, &a).await?;
        if let Some(m) = a.message_id {
            out.entry(m).or_default().push(to_pb(&a, info));
        }
    }
    Ok(out)
}

/// The checked description of an upload: its conversation and SHA-256.
fn check_info(info: &AttachmentInfo) -> Result<(Uuid, Vec<u8>)> {
    let mut v = FieldViolations::new();
    let conversation = v.require_uuid("info.conversation_id", &info.conversation_id);
    v.require_len(info.file_name.trim(), "info.file_name", 1, 255);
    crate::domain::text::check_text(&mut v, "info.file_name", &info.file_name, 255);
    let sha = content::check_declared(&mut v, &info.content_type, info.size_bytes, &info.sha256);
    v.finish()?;
    Ok((checked(conversation)?, checked(sha)?))
}

pub async fn upload(
    state: &AppState,
    call: &Call,
    mut stream: tonic::Streaming<UploadAttachmentRequest>,
) -> Result<Attachment> {
    let user = call.user()?;
    call.idempotency_key()?;
    let first = stream.message().await?.and_then(|m| m.part);
    let Some(upload_attachment_request::Part::Info(mut info)) = first else {
        return Err(invalid(
            "info",
            "the first message must say what the attachment is",
        ));
    };
    info.file_name = info.file_name.trim().to_owned();
    let (conversation, sha) = check_info(&info)?;
    info.sha256 = data_encoding::HEXLOWER.encode(&sha);
    // Counted before any work: a burst of slow uploads cannot take every pooled connection.
    let _slot = state.uploads.clone().try_acquire_owned().map_err(|_| {
        MessagingError::Status(carehub_platform::errors::retry_after(
            tonic::Code::Unavailable,
            carehub_proto::common::v1::ErrorReason::Unavailable,
            "too many uploads at once; retry shortly",
            std::time::Duration::from_secs(1),
        ))
    })?;
    let (row, standing) = enter(state, user, conversation).await?;
    // What a retry is compared with: the description, which names the bytes by their hash.
    let request = UploadAttachmentRequest {
        part: Some(upload_attachment_request::Part::Info(info.clone())),
    };
    let id = Uuid::now_v7();
    let sealed_info = seal_info(state, &row, id, &info).await?;
    let ran = call
        .mutate(&state.idempotency, &request, async |conn| {
            store::insert(conn, id, row.id, user.user_id, &sealed_info).await?;
            let mut intake = Intake::new(&info.content_type, info.size_bytes, sha.clone());
            while let Some(message) = stream.message().await? {
                let Some(upload_attachment_request::Part::Chunk(bytes)) = message.part else {
                    return Err(invalid(
                        "info",
                        "only the first message says what the attachment is",
                    ));
                };
                let seq = intake.take(&bytes).map_err(|(f, why)| invalid(f, why))?;
                let (r, subject) = chunk_field(&row, id, seq);
                let sealed = state
                    .crypto
                    .encrypt(
                        &Field::new("attachment_chunks", "data", &r, &subject),
                        &bytes,
                    )
                    .await?;
                store::insert_chunk(conn, id, seq, &sealed).await?;
            }
            let chunks = intake.finish().map_err(|(f, why)| invalid(f, why))?;
            let a = store::complete(conn, id, chunks).await?;
            let e = event(
                call,
                kinds::ATTACHMENT_UPLOAD,
                standing,
                &row,
                ("attachment", id),
            );
            Ok::<_, MessagingError>(Change::new(to_pb(&a, info.clone()), e))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn download(
    state: &std::sync::Arc<AppState>,
    call: &Call,
    r: DownloadAttachmentRequest,
) -> Result<ChunkStream> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let conversation = v.require_uuid("conversation_id", &r.conversation_id);
    let id = v.require_uuid("attachment_id", &r.attachment_id);
    v.finish()?;
    let (conversation, id) = (checked(conversation)?, checked(id)?);
    let (row, standing) = enter(state, user, conversation).await?;
    let not_found = || MessagingError::NotFound {
        what: "attachment",
        id: id.to_string(),
    };
    let a = {
        let mut conn = state.pool.acquire().await?;
        store::get(&mut conn, row.id, id)
            .await?
            .ok_or_else(not_found)?
    };
    // An unsent upload is its uploader's alone.
    if a.message_id.is_none() && a.uploaded_by != user.user_id {
        return Err(not_found());
    }
    let info = open_info(state, &row, &a).await?;
    let e = event(
        call,
        kinds::ATTACHMENT_READ,
        standing,
        &row,
        ("attachment", id),
    );
    let first: Attachment = call
        .read::<_, MessagingError>(&state.pool, e, to_pb(&a, info))
        .await?;
    // Two chunks in flight at most: a slow reader holds back the reading, not the memory.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let (state, chunks) = (state.clone(), a.chunks);
    tokio::spawn(async move {
        let mut first = Some(first);
        for seq in 0..chunks {
            let data = match store::chunk(&state.pool, id, seq).await {
                Ok(Some(sealed)) => {
                    let (r, subject) = chunk_field(&row, id, seq);
                    state
                        .crypto
                        .decrypt(
                            &Field::new("attachment_chunks", "data", &r, &subject),
                            &sealed,
                        )
                        .await
                        .map(|plain| plain.to_vec())
                        .map_err(MessagingError::from)
                }
                // Destroyed by a retraction since the description was read.
                Ok(None) => Err(not_found_status(id)),
                Err(e) => Err(e),
            };
            let item = data
                .map(|data| AttachmentChunk {
                    attachment: first.take(),
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

fn not_found_status(id: Uuid) -> MessagingError {
    MessagingError::NotFound {
        what: "attachment",
        id: id.to_string(),
    }
}
