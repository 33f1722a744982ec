//! Clinical notes: a draft only its author sees and changes (etag-checked), signed once and
//! immutable from then on — in the RPCs and in the database, whatever the role — with
//! corrections as signed addenda; only care-team providers write them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use carehub_platform::auth::Role;
use carehub_proto::records::v1::*;
use tonic::Code;

use crate::common::{self, as_user, assert_status, Suite, User};

async fn notes(suite: &Suite, who: &User, patient: &User) -> Vec<Note> {
    suite
        .public()
        .await
        .list_notes(as_user(
            who,
            ListNotesRequest {
                patient_id: patient.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .notes
}

#[tokio::test]
async fn a_note_is_drafted_by_its_author_signed_once_and_corrected_by_addenda() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let doctor = suite.user(Role::Provider, "doc").await;
    let colleague = suite.user(Role::Provider, "colleague").await;
    let nurse = suite.user(Role::Staff, "nurse").await;
    for m in [&doctor, &colleague, &nurse] {
        suite.join_team(&patient, m).await;
    }
    let mut c = suite.public().await;
    let create = |who: &User| {
        as_user(
            who,
            CreateNoteRequest {
                patient_id: patient.id.clone(),
                title: "Follow-up visit".into(),
                text: "Glucose better controlled; continue metformin.".into(),
                labels: vec![],
            },
        )
    };
    for who in [&nurse, &patient] {
        let e = c.create_note(create(who)).await.unwrap_err();
        assert_status(&e, Code::PermissionDenied, Some("ROLE_NOT_ALLOWED"));
    }
    let draft = c.create_note(create(&doctor)).await.unwrap().into_inner();
    assert_eq!(draft.status(), NoteStatus::Draft);
    // The draft is its author's alone.
    assert_eq!(notes(&suite, &doctor, &patient).await.len(), 1);
    assert!(notes(&suite, &colleague, &patient).await.is_empty());
    assert!(notes(&suite, &patient, &patient).await.is_empty());
    let update = |who: &User, etag: &str, text: &str| {
        as_user(
            who,
            UpdateNoteRequest {
                patient_id: patient.id.clone(),
                note_id: draft.id.clone(),
                title: "Follow-up visit".into(),
                text: text.into(),
                labels: vec![],
                etag: etag.into(),
            },
        )
    };
    let e = c
        .update_note(update(&colleague, &draft.etag, "x"))
        .await
        .unwrap_err();
    assert_status(&e, Code::NotFound, Some("RESOURCE_NOT_FOUND"));
    let edited = c
        .update_note(update(
            &doctor,
            &draft.etag,
            "Glucose controlled; continue metformin 500 mg.",
        ))
        .await
        .unwrap()
        .into_inner();
    let stale = c
        .update_note(update(&doctor, &draft.etag, "lost update"))
        .await
        .unwrap_err();
    assert_status(&stale, Code::Aborted, Some("ETAG_MISMATCH"));

    let sign = |etag: &str| {
        as_user(
            &doctor,
            SignNoteRequest {
                patient_id: patient.id.clone(),
                note_id: draft.id.clone(),
                etag: etag.into(),
            },
        )
    };
    let signed = c.sign_note(sign(&edited.etag)).await.unwrap().into_inner();
    assert_eq!(signed.status(), NoteStatus::Signed);
    assert_eq!(signed.content_sha256.len(), 64);
    assert!(signed.text.contains("500 mg"));
    // Never again changed: not through the RPCs ...
    let e = c
        .update_note(update(&doctor, &signed.etag, "rewritten"))
        .await
        .unwrap_err();
    assert_status(&e, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    let e = c.sign_note(sign(&signed.etag)).await.unwrap_err();
    assert_status(&e, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    // ... nor in the database, as the table's owner even.
    for sql in [
        "UPDATE notes SET body = '\\x00'::bytea",
        "DELETE FROM notes",
    ] {
        let e = sqlx::query(sql).execute(suite.pool()).await.unwrap_err();
        assert_eq!(
            e.as_database_error().and_then(|d| d.code()).as_deref(),
            Some("42501"),
            "{sql}: {e}"
        );
    }

    // A colleague corrects it with an addendum; everyone on the chart reads both.
    let with = c
        .add_note_addendum(as_user(
            &colleague,
            AddNoteAddendumRequest {
                patient_id: patient.id.clone(),
                note_id: draft.id.clone(),
                text: "Correction: metformin 850 mg, per pharmacy record.".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(with.addenda.len(), 1);
    assert_eq!(with.addenda[0].author_id, colleague.id);
    let e = sqlx::query("UPDATE note_addenda SET body = '\\x00'::bytea")
        .execute(suite.pool())
        .await
        .unwrap_err();
    assert_eq!(
        e.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("42501")
    );
    for who in [&patient, &nurse, &colleague] {
        let seen = notes(&suite, who, &patient).await;
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].content_sha256, signed.content_sha256);
        assert_eq!(seen[0].addenda.len(), 1);
    }
    // No note text in clear.
    for table in ["notes", "note_addenda"] {
        let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
            .fetch_all(suite.pool())
            .await
            .unwrap();
        assert!(!rows.is_empty());
        assert!(rows
            .iter()
            .all(|r| !r.contains("metformin") && !r.contains("Follow-up")));
    }
    suite.shutdown().await;
}
