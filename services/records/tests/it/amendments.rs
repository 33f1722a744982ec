//! HIPAA rights end to end: an amendment request denied in writing, disagreed with and
//! rebutted — then carried by a later disclosure of that entry, which the patient finds in the
//! accounting of disclosures; another request accepted, amending the entry (a new version
//! linked to the request); illegal steps refused with FAILED_PRECONDITION; two providers
//! deciding one request at once: exactly one wins.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use carehub_platform::auth::Role;
use carehub_proto::records::v1::*;
use tonic::Code;

use crate::common::{self, as_user, assert_status, diabetes, metformin, Suite, User};

async fn entry(suite: &Suite, who: &User, patient: &User, content: EntryContent) -> Entry {
    suite
        .public()
        .await
        .create_entry(as_user(
            who,
            CreateEntryRequest {
                patient_id: patient.id.clone(),
                content: Some(content),
                labels: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn request(suite: &Suite, patient: &User, e: &Entry) -> Amendment {
    suite
        .public()
        .await
        .request_amendment(as_user(
            patient,
            RequestAmendmentRequest {
                patient_id: patient.id.clone(),
                entry_id: e.id.clone(),
                reason: "I was never diagnosed with this".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_denied_amendment_is_disagreed_rebutted_and_carried_by_a_later_disclosure() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let doctor = suite.user(Role::Provider, "doc").await;
    let clerk = suite.user(Role::Staff, "him-clerk").await;
    let outsider = suite.user(Role::Provider, "outsider").await;
    suite.join_team(&patient, &doctor).await;
    suite.join_team(&patient, &clerk).await;
    let e = entry(&suite, &doctor, &patient, diabetes()).await;
    let mut c = suite.public().await;

    let a = request(&suite, &patient, &e).await;
    assert_eq!(a.status(), AmendmentStatus::Requested);
    let (requested, due) = (a.request_time.unwrap(), a.due_time.unwrap());
    assert_eq!(due.seconds - requested.seconds, 60 * 86_400);
    let id = a.id.clone();
    let pid = patient.id.clone();

    // Extended once, by 30 days, by a provider of the team only.
    let extend = |who: &User| {
        as_user(
            who,
            ExtendAmendmentRequest {
                patient_id: pid.clone(),
                amendment_id: id.clone(),
                reason: "records requested from the previous clinic".into(),
            },
        )
    };
    let e_out = c.extend_amendment(extend(&outsider)).await.unwrap_err();
    assert_status(&e_out, Code::PermissionDenied, Some("NOT_ON_CARE_TEAM"));
    let e_staff = c.extend_amendment(extend(&clerk)).await.unwrap_err();
    assert_status(&e_staff, Code::PermissionDenied, Some("ROLE_NOT_ALLOWED"));
    let extended = c
        .extend_amendment(extend(&doctor))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        extended.due_time.unwrap().seconds - due.seconds,
        30 * 86_400
    );
    let again = c.extend_amendment(extend(&doctor)).await.unwrap_err();
    assert_status(&again, Code::FailedPrecondition, Some("STATE_CONFLICT"));

    // Denied in writing; then neither decided again nor rebutted before a disagreement.
    let denied = c
        .deny_amendment(as_user(
            &doctor,
            DenyAmendmentRequest {
                patient_id: pid.clone(),
                amendment_id: id.clone(),
                reason: "the diagnosis is confirmed by two HbA1c results".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.status(), AmendmentStatus::Denied);
    assert_eq!(denied.decided_by, doctor.id);
    let rebut = |statement: &str| {
        as_user(
            &doctor,
            FileRebuttalRequest {
                patient_id: pid.clone(),
                amendment_id: id.clone(),
                statement: statement.into(),
            },
        )
    };
    let early = c
        .file_rebuttal(rebut("the lab results stand as recorded"))
        .await
        .unwrap_err();
    assert_status(&early, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    let disagree = || {
        as_user(
            &patient,
            FileDisagreementRequest {
                patient_id: pid.clone(),
                amendment_id: id.clone(),
                statement: "the lab mixed my sample with another patient's".into(),
            },
        )
    };
    let disagreed = c.file_disagreement(disagree()).await.unwrap().into_inner();
    assert!(disagreed.disagreement.contains("mixed my sample"));
    let twice = c.file_disagreement(disagree()).await.unwrap_err();
    assert_status(&twice, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    let rebutted = c
        .file_rebuttal(rebut("the lab results stand as recorded"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rebutted.rebuttal_by, doctor.id);

    // A later disclosure of that entry carries the denied request.
    let disclose = |who: &User, entries: Vec<String>, at: i64| {
        as_user(
            who,
            RecordDisclosureRequest {
                patient_id: pid.clone(),
                recipient: "Acme Life Insurance".into(),
                purpose: "underwriting, with the patient's authorization".into(),
                description: "problem list".into(),
                entry_ids: entries,
                disclose_time: Some(prost_types::Timestamp {
                    seconds: at,
                    nanos: 0,
                }),
            },
        )
    };
    let now = chrono::Utc::now().timestamp();
    let e_doc = c
        .record_disclosure(disclose(&doctor, vec![e.id.clone()], now))
        .await
        .unwrap_err();
    assert_status(&e_doc, Code::PermissionDenied, Some("ROLE_NOT_ALLOWED"));
    for (at, what) in [
        (now + 86_400, "future"),
        (now - 7 * 366 * 86_400, "older than six years"),
    ] {
        let bad = c
            .record_disclosure(disclose(&clerk, vec![], at))
            .await
            .unwrap_err();
        assert_status(&bad, Code::InvalidArgument, Some("INVALID_FIELD"));
        assert!(
            bad.message().contains("disclose_time"),
            "{what}: {}",
            bad.message()
        );
    }
    let disclosure = c
        .record_disclosure(disclose(&clerk, vec![e.id.clone()], now - 60))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(disclosure.amendment_ids, vec![id.clone()]);

    let accounting = c
        .list_disclosures(as_user(
            &patient,
            ListDisclosuresRequest {
                patient_id: pid.clone(),
                page: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accounting.disclosures, vec![disclosure]);
    let e_doc = c
        .list_disclosures(as_user(
            &doctor,
            ListDisclosuresRequest {
                patient_id: pid.clone(),
                page: None,
            },
        ))
        .await
        .unwrap_err();
    assert_status(&e_doc, Code::PermissionDenied, Some("ROLE_NOT_ALLOWED"));

    // No text of any of it is stored in clear.
    carehub_platform::audit::seal_all(suite.pool())
        .await
        .unwrap();
    for table in ["amendments", "disclosures"] {
        let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
            .fetch_all(suite.pool())
            .await
            .unwrap();
        for row in rows {
            for needle in [
                "never diagnosed",
                "mixed my sample",
                "Acme",
                "underwriting",
                "HbA1c",
            ] {
                assert!(!row.contains(needle), "{table} holds {needle:?} in clear");
            }
        }
    }
    suite.shutdown().await;
}

#[tokio::test]
async fn an_accepted_amendment_amends_the_entry_and_one_of_two_deciders_wins() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let a = suite.user(Role::Provider, "doc-a").await;
    let b = suite.user(Role::Provider, "doc-b").await;
    suite.join_team(&patient, &a).await;
    suite.join_team(&patient, &b).await;
    let e = entry(&suite, &a, &patient, metformin("500 mg")).await;
    let amendment = request(&suite, &patient, &e).await;
    let mut c = suite.public().await;

    // A stale etag leaves both the entry and the request as they were.
    let accept = |who: &User, etag: &str, dose: &str| {
        as_user(
            who,
            AcceptAmendmentRequest {
                patient_id: patient.id.clone(),
                amendment_id: amendment.id.clone(),
                content: Some(metformin(dose)),
                etag: etag.into(),
                labels: vec![],
            },
        )
    };
    let stale = c
        .accept_amendment(accept(&a, "v7", "850 mg"))
        .await
        .unwrap_err();
    assert_status(&stale, Code::Aborted, Some("ETAG_MISMATCH"));

    // Two providers decide at once: one accepts, one denies; exactly one wins.
    let deny = as_user(
        &b,
        DenyAmendmentRequest {
            patient_id: patient.id.clone(),
            amendment_id: amendment.id.clone(),
            reason: "the dose on record is what was prescribed".into(),
        },
    );
    let (mut ca, mut cb) = (c.clone(), c.clone());
    let (accepted, denied) = tokio::join!(
        ca.accept_amendment(accept(&a, &e.etag, "850 mg")),
        cb.deny_amendment(deny)
    );
    let outcomes = [accepted.is_ok(), denied.is_ok()];
    assert_eq!(
        outcomes.iter().filter(|ok| **ok).count(),
        1,
        "{accepted:?} {denied:?}"
    );
    let loser = accepted.as_ref().err().or(denied.as_ref().err()).unwrap();
    assert_status(loser, Code::FailedPrecondition, Some("STATE_CONFLICT"));

    let current = c
        .get_entry(as_user(
            &patient,
            GetEntryRequest {
                patient_id: patient.id.clone(),
                entry_id: e.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let listed = c
        .list_amendments(as_user(
            &b,
            ListAmendmentsRequest {
                patient_id: patient.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .amendments;
    assert_eq!(listed.len(), 1);
    if let Ok(won) = accepted {
        let won = won.into_inner();
        assert_eq!(won.status(), AmendmentStatus::Accepted);
        assert_eq!((won.amended_version, current.version), (2, 2));
        assert_eq!(current.content, Some(metformin("850 mg")));
        assert_eq!(current.provenance.unwrap().entered_by, a.id);
    } else {
        assert_eq!(listed[0].status(), AmendmentStatus::Denied);
        assert_eq!(
            current.version, 1,
            "a denied request leaves the entry alone"
        );
    }
    suite.shutdown().await;
}
