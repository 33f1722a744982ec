//! Documents: streamed up in chunks and back, encrypted chunk by chunk; a content type that
//! the bytes contradict, a wrong size or hash, an oversized chunk or document are refused and
//! leave nothing behind; a retry with the same idempotency key stores nothing twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use carehub_platform::auth::Role;
use carehub_proto::records::v1::*;
use sha2::Digest as _;
use tonic::Code;

use crate::common::{self, as_user, assert_status, with_key, Suite, User};

const MIB: usize = 1024 * 1024;

/// A PDF-looking document of `len` bytes with a recognizable text inside.
fn pdf(len: usize) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n".to_vec();
    while out.len() < len {
        out.extend_from_slice(b"HbA1c result 7.2 percent, patient Jane Q. Example; ");
    }
    out.truncate(len);
    out
}

fn info(patient: &User, content_type: &str, bytes: &[u8]) -> DocumentInfo {
    DocumentInfo {
        patient_id: patient.id.clone(),
        title: "Lab report".into(),
        content_type: content_type.into(),
        size_bytes: bytes.len() as i64,
        sha256: data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(bytes)),
        labels: vec![],
    }
}

fn messages(info: DocumentInfo, bytes: &[u8], chunk: usize) -> Vec<UploadDocumentRequest> {
    let mut out = vec![UploadDocumentRequest {
        part: Some(upload_document_request::Part::Info(info)),
    }];
    out.extend(bytes.chunks(chunk).map(|c| UploadDocumentRequest {
        part: Some(upload_document_request::Part::Chunk(c.to_vec())),
    }));
    out
}

async fn upload(
    suite: &Suite,
    who: &User,
    msgs: Vec<UploadDocumentRequest>,
    key: Option<&str>,
) -> Result<Document, tonic::Status> {
    let mut req = as_user(who, tokio_stream::iter(msgs));
    if let Some(key) = key {
        req = with_key(req, key);
    }
    suite
        .public()
        .await
        .upload_document(req)
        .await
        .map(tonic::Response::into_inner)
}

async fn stored(suite: &Suite) -> (i64, i64) {
    (
        suite.records.count("documents").await,
        suite.records.count("document_chunks").await,
    )
}

#[tokio::test]
async fn a_document_goes_up_and_comes_back_in_encrypted_chunks() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let doctor = suite.user(Role::Provider, "doc").await;
    let outsider = suite.user(Role::Provider, "outsider").await;
    suite.join_team(&patient, &doctor).await;
    let bytes = pdf(2 * MIB + 12_345);
    let msgs = messages(info(&patient, "application/pdf", &bytes), &bytes, MIB);
    let doc = upload(&suite, &patient, msgs.clone(), Some("upload-lab-report-1"))
        .await
        .unwrap();
    assert_eq!(doc.source(), Source::Patient);
    // The same upload retried with its key: the first answer, nothing stored twice.
    let again = upload(&suite, &patient, msgs, Some("upload-lab-report-1"))
        .await
        .unwrap();
    assert_eq!(again, doc);
    assert_eq!(stored(&suite).await, (1, 3));

    let mut c = suite.public().await;
    let download = |who: &User| {
        as_user(
            who,
            DownloadDocumentRequest {
                patient_id: patient.id.clone(),
                document_id: doc.id.clone(),
            },
        )
    };
    let mut stream = c
        .download_document(download(&doctor))
        .await
        .unwrap()
        .into_inner();
    let mut back = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        if chunks == 0 {
            assert_eq!(chunk.document.as_ref(), Some(&doc));
        } else {
            assert!(chunk.document.is_none());
        }
        back.extend_from_slice(&chunk.data);
        chunks += 1;
    }
    assert_eq!((chunks, back.len()), (3, bytes.len()));
    assert!(back == bytes, "the bytes came back changed");
    let e = c.download_document(download(&outsider)).await.unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("NOT_ON_CARE_TEAM"));
    let listed = c
        .list_documents(as_user(
            &doctor,
            ListDocumentsRequest {
                patient_id: patient.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .documents;
    assert_eq!(listed, vec![doc]);

    // The tables hold neither the text nor the title nor the hash.
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT t::text FROM document_chunks t UNION ALL SELECT d::text FROM documents d",
    )
    .fetch_all(suite.pool())
    .await
    .unwrap();
    let sha = data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(&bytes));
    for row in rows {
        for needle in ["HbA1c", "Jane", "Lab report", "application/pdf", &sha] {
            assert!(!row.contains(needle), "{needle} in clear");
        }
        // bytea prints as hex: the text hex-encoded must not be there either.
        assert!(!row.contains(&data_encoding::HEXLOWER.encode(b"HbA1c result")));
    }
    suite.shutdown().await;
}

#[tokio::test]
async fn a_bad_upload_is_refused_whole_and_leaves_nothing() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let bytes = pdf(300_000);
    let good = info(&patient, "application/pdf", &bytes);
    let exe: Vec<u8> = b"MZ\x90\0\x03\0\0\0"
        .iter()
        .copied()
        .cycle()
        .take(4096)
        .collect();
    let cases: Vec<(&str, Vec<UploadDocumentRequest>)> = vec![
        (
            "info.content_type",
            messages(
                DocumentInfo {
                    content_type: "image/png".into(),
                    ..good.clone()
                },
                &bytes,
                65_536,
            ),
        ),
        (
            "info.content_type",
            messages(info(&patient, "text/plain", &exe), &exe, 1024),
        ),
        (
            "info.content_type",
            messages(
                DocumentInfo {
                    content_type: "application/x-msdownload".into(),
                    ..good.clone()
                },
                &bytes,
                65_536,
            ),
        ),
        (
            "info.sha256",
            messages(
                DocumentInfo {
                    sha256: "00".repeat(32),
                    ..good.clone()
                },
                &bytes,
                65_536,
            ),
        ),
        (
            "info.size_bytes",
            messages(
                DocumentInfo {
                    size_bytes: 299_999,
                    ..good.clone()
                },
                &bytes,
                65_536,
            ),
        ),
        (
            "info.size_bytes",
            messages(
                DocumentInfo {
                    size_bytes: 300_001,
                    ..good.clone()
                },
                &bytes,
                65_536,
            ),
        ),
        (
            "info.size_bytes",
            messages(
                DocumentInfo {
                    size_bytes: 10 * MIB as i64 + 1,
                    ..good.clone()
                },
                &bytes,
                65_536,
            ),
        ),
        ("chunk", {
            let big = pdf(MIB + 1);
            messages(info(&patient, "application/pdf", &big), &big, MIB + 1)
        }),
        (
            "info",
            messages(good.clone(), &bytes, 65_536)
                .into_iter()
                .skip(1)
                .collect(),
        ),
    ];
    for (field, msgs) in cases {
        let e = upload(&suite, &patient, msgs, None).await.unwrap_err();
        assert_status(&e, Code::InvalidArgument, Some("INVALID_FIELD"));
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    assert_eq!(stored(&suite).await, (0, 0));
    suite.shutdown().await;
}

/// A small text document of `patient`'s chart, as an upload's messages (for other modules).
pub fn text_upload(patient: &User) -> Vec<UploadDocumentRequest> {
    let bytes = b"Referral letter: please assess.".to_vec();
    messages(info(patient, "text/plain", &bytes), &bytes, 1024)
}

/// A burst of slow uploads: no more than `records.max_concurrent_uploads` are served at once
/// (each holds a connection while its chunks arrive); the rest are refused at once with
/// UNAVAILABLE and RetryInfo, and reads of the chart go on meanwhile.
#[tokio::test]
async fn a_burst_of_slow_uploads_is_bounded_and_reads_go_on() {
    const SLOTS: usize = 2;
    const BURST: usize = 8;
    let suite = common::spawn_with(|c| c.records.max_concurrent_uploads = SLOTS as u32).await;
    let patient = suite.user(Role::Patient, "pat").await;
    let bytes = pdf(4096);
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut uploads = Vec::new();
    for _ in 0..BURST {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut msgs =
            messages(info(&patient, "application/pdf", &bytes), &bytes, 4096).into_iter();
        tx.send(msgs.next().unwrap()).await.unwrap();
        let release = release.clone();
        // The bytes come only once released: a slow client.
        tokio::spawn(async move {
            release.notified().await;
            for m in msgs {
                let _ = tx.send(m).await;
            }
        });
        let mut c = suite.public().await;
        let req = as_user(&patient, tokio_stream::wrappers::ReceiverStream::new(rx));
        uploads.push(tokio::spawn(async move { c.upload_document(req).await }));
    }
    // The refused ones answer while the others still wait for their bytes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while uploads.iter().filter(|u| u.is_finished()).count() < BURST - SLOTS {
        assert!(
            std::time::Instant::now() < deadline,
            "the excess uploads were not refused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    suite
        .public()
        .await
        .get_chart(as_user(
            &patient,
            GetChartRequest {
                patient_id: patient.id.clone(),
            },
        ))
        .await
        .unwrap();
    release.notify_waiters();
    let (mut ok, mut refused) = (0, 0);
    for u in uploads {
        match u.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_status(&e, Code::Unavailable, Some("UNAVAILABLE"));
                assert!(carehub_platform::errors::details_of(&e)
                    .retry_after
                    .is_some());
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (SLOTS, BURST - SLOTS));
    assert_eq!(stored(&suite).await, (SLOTS as i64, SLOTS as i64));
    suite.shutdown().await;
}
