//! Attachments: uploaded in chunks (checked against the allowlist and the bytes, sealed chunk
//! by chunk), sent with a message, downloaded by participants only, gone with a retraction.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use carehub_platform::auth::Role;
use carehub_proto::messaging::v1::*;
use sha2::Digest as _;
use tonic::Code;

use crate::common::{self, as_user, assert_status, User};

fn upload_request(
    conversation: &Conversation,
    name: &str,
    content_type: &str,
    bytes: &[u8],
) -> Vec<UploadAttachmentRequest> {
    let mut parts = vec![UploadAttachmentRequest {
        part: Some(upload_attachment_request::Part::Info(AttachmentInfo {
            conversation_id: conversation.id.clone(),
            file_name: name.into(),
            content_type: content_type.into(),
            size_bytes: bytes.len() as i64,
            sha256: data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(bytes)),
        })),
    }];
    for chunk in bytes.chunks(64 * 1024) {
        parts.push(UploadAttachmentRequest {
            part: Some(upload_attachment_request::Part::Chunk(chunk.to_vec())),
        });
    }
    parts
}

async fn upload(
    suite: &common::Suite,
    user: &User,
    parts: Vec<UploadAttachmentRequest>,
) -> Result<Attachment, tonic::Status> {
    suite
        .public()
        .await
        .upload_attachment(as_user(user, futures::stream::iter(parts)))
        .await
        .map(tonic::Response::into_inner)
}

async fn download(
    suite: &common::Suite,
    user: &User,
    conversation: &Conversation,
    id: &str,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = suite
        .public()
        .await
        .download_attachment(as_user(
            user,
            DownloadAttachmentRequest {
                conversation_id: conversation.id.clone(),
                attachment_id: id.into(),
            },
        ))
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        bytes.extend(chunk.data);
    }
    Ok(bytes)
}

#[tokio::test]
async fn an_attachment_travels_with_its_message_to_participants_only_and_leaves_with_a_retraction()
{
    let suite = common::spawn().await;
    let (patient, provider, _staff, conversation) = suite.care().await;
    let outsider = suite.user(Role::Provider, "outsider").await;
    let mut pdf = b"%PDF-1.7\nGlucose log: fasting 131 mg/dL\n".to_vec();
    pdf.extend(std::iter::repeat_n(b'.', 200_000));
    let a = upload(
        &suite,
        &patient,
        upload_request(&conversation, "glucose.pdf", "application/pdf", &pdf),
    )
    .await
    .unwrap();
    // Unsent, it is the uploader's alone.
    let err = download(&suite, &provider, &conversation, &a.id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let sent = suite
        .public()
        .await
        .send_message(as_user(
            &patient,
            SendMessageRequest {
                conversation_id: conversation.id.clone(),
                client_message_id: "with-pdf".into(),
                body: String::new(),
                attachment_ids: vec![a.id.clone()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.attachments.len(), 1);
    assert_eq!(
        sent.attachments[0].info.as_ref().unwrap().file_name,
        "glucose.pdf"
    );
    assert_eq!(
        download(&suite, &provider, &conversation, &a.id)
            .await
            .unwrap(),
        pdf
    );
    // The other participants read it with its attachment; a message without one has none.
    suite
        .send(&provider, &conversation, "Thanks, looks fine.")
        .await;
    let events = suite
        .public()
        .await
        .list_events(as_user(
            &provider,
            ListEventsRequest {
                conversation_id: conversation.id.clone(),
                after_seq: 0,
                page_size: 10,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let attached: Vec<Vec<String>> = events
        .iter()
        .map(|e| match &e.event {
            Some(conversation_event::Event::Message(m)) => m
                .attachments
                .iter()
                .map(|a| a.info.as_ref().unwrap().file_name.clone())
                .collect(),
            other => panic!("not a message: {other:?}"),
        })
        .collect();
    assert_eq!(attached, vec![vec!["glucose.pdf".to_owned()], vec![]]);
    let err = download(&suite, &outsider, &conversation, &a.id)
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, Some("NOT_A_PARTICIPANT"));
    // Sent once only.
    let err = suite
        .public()
        .await
        .send_message(as_user(
            &patient,
            SendMessageRequest {
                conversation_id: conversation.id.clone(),
                client_message_id: "twice".into(),
                body: "again".into(),
                attachment_ids: vec![a.id.clone()],
            },
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, None);
    // Nothing readable at rest.
    let raw: Vec<(Vec<u8>,)> =
        sqlx::query_as("SELECT data FROM attachment_chunks UNION ALL SELECT info FROM attachments")
            .fetch_all(suite.pool())
            .await
            .unwrap();
    for (bytes,) in &raw {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains("Glucose") && !text.contains("glucose.pdf"));
    }
    suite
        .public()
        .await
        .retract_message(as_user(
            &patient,
            RetractMessageRequest {
                conversation_id: conversation.id.clone(),
                message_id: sent.id.clone(),
            },
        ))
        .await
        .unwrap();
    let err = download(&suite, &provider, &conversation, &a.id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(suite.messaging.count("attachment_chunks").await, 0);
    suite.shutdown().await;
}

#[tokio::test]
async fn an_upload_that_is_not_what_it_says_leaves_nothing() {
    let suite = common::spawn().await;
    let (patient, _provider, _staff, conversation) = suite.care().await;
    let exe = b"MZ\x90\x00\x03\x00\x00\x00 not a picture".to_vec();
    let err = upload(
        &suite,
        &patient,
        upload_request(&conversation, "cat.png", "image/png", &exe),
    )
    .await
    .unwrap_err();
    assert_status(&err, Code::InvalidArgument, None);
    let err = upload(
        &suite,
        &patient,
        upload_request(&conversation, "x.exe", "application/x-msdownload", &exe),
    )
    .await
    .unwrap_err();
    assert_status(&err, Code::InvalidArgument, None);
    let mut wrong_hash = upload_request(
        &conversation,
        "notes.txt",
        "text/plain",
        b"plain words here",
    );
    if let Some(upload_attachment_request::Part::Info(info)) = &mut wrong_hash[0].part {
        info.sha256 = "00".repeat(32);
    }
    let err = upload(&suite, &patient, wrong_hash).await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, None);
    assert_eq!(suite.messaging.count("attachments").await, 0);
    assert_eq!(suite.messaging.count("attachment_chunks").await, 0);
    suite.shutdown().await;
}
