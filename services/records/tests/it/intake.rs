//! RecordIntakeResponse: scheduling's outbox records a patient's intake answers in records.
//! The answers are sealed under the patient's data key (no table holds them in clear), each
//! delivery (idempotency key) is applied once and answered the same when repeated, a
//! resubmission is the next version, bad input is refused field by field, and only the
//! scheduling workload may call it. Each version recorded is one audit event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use carehub_platform::auth::Role;
use carehub_proto::records::v1::*;
use tonic::Code;
use uuid::Uuid;

use crate::common::{self, assert_status, with_key, Suite, User};

const SUBMITTED: i64 = 1_800_000_000;

fn submission(
    patient: &User,
    appointment: Uuid,
    answers: &[(&str, &str)],
) -> RecordIntakeResponseRequest {
    RecordIntakeResponseRequest {
        patient_id: patient.id.clone(),
        appointment_id: appointment.to_string(),
        form: "new-patient".into(),
        answers: answers
            .iter()
            .map(|(q, a)| ((*q).to_owned(), (*a).to_owned()))
            .collect(),
        submit_time: Some(prost_types::Timestamp {
            seconds: SUBMITTED,
            nanos: 0,
        }),
    }
}

/// The delivery of `r` by `workload`, with the outbox id `key` as idempotency key.
async fn record(
    suite: &Suite,
    workload: &str,
    r: RecordIntakeResponseRequest,
    key: &str,
) -> Result<IntakeResponse, tonic::Status> {
    suite
        .internal(workload)
        .await
        .record_intake_response(with_key(tonic::Request::new(r), key))
        .await
        .map(tonic::Response::into_inner)
}

const ANSWERS: &[(&str, &str)] = &[
    ("allergies", "penicillin gives me hives"),
    ("medications", "lisinopril 10 mg every morning"),
    ("reason", "persistent dry cough for three weeks"),
    ("smoker", "quit in 2019"),
];

#[tokio::test]
async fn intake_answers_are_sealed_applied_once_per_delivery_and_versioned() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let appointment = Uuid::now_v7();
    let first_request = submission(&patient, appointment, ANSWERS);

    let first = record(&suite, "scheduling", first_request.clone(), "outbox-0001")
        .await
        .unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(first.patient_id, patient.id);
    assert_eq!(first.appointment_id, appointment.to_string());
    assert_eq!(first.form, "new-patient");
    assert_eq!(first.answers, first_request.answers);
    assert_eq!(first.submit_time.map(|t| t.seconds), Some(SUBMITTED));

    // The same delivery again (the outbox did not see the first answer): stored once, answered
    // the same — its answers decoded into a fresh map, in another order, changes nothing.
    let again = record(&suite, "scheduling", first_request.clone(), "outbox-0001")
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(suite.records.count("intake_responses").await, 1);

    // A resubmission is another delivery: the next version, the first one kept.
    let mut changed = first_request.clone();
    changed
        .answers
        .insert("smoker".into(), "never smoked, corrected".into());
    let second = record(&suite, "scheduling", changed.clone(), "outbox-0002")
        .await
        .unwrap();
    assert_eq!(second.version, 2);
    assert_ne!(second.id, first.id);
    assert_eq!(second.answers, changed.answers);
    // The first delivery, retried late, still answers version 1 and stores nothing.
    let late = record(&suite, "scheduling", first_request.clone(), "outbox-0001")
        .await
        .unwrap();
    assert_eq!(late, first);
    // The same key with other answers is refused, not applied.
    let e = record(&suite, "scheduling", changed, "outbox-0001")
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, Some("IDEMPOTENCY_KEY_REUSED"));
    // Versions count per form: another form of the appointment starts at 1.
    let other_form = record(
        &suite,
        "scheduling",
        RecordIntakeResponseRequest {
            form: "phq-9".into(),
            ..first_request.clone()
        },
        "outbox-0003",
    )
    .await
    .unwrap();
    assert_eq!(other_form.version, 1);
    assert_eq!(suite.records.count("intake_responses").await, 3);

    // Stored sealed under the patient's key, bound to its row: each opens to its answers, and
    // not as another row's.
    let rows: Vec<(Uuid, Vec<u8>, i32)> = sqlx::query_as(
        "SELECT id, answers, version FROM intake_responses WHERE form = 'new-patient'
          ORDER BY version",
    )
    .fetch_all(suite.pool())
    .await
    .unwrap();
    let crypto = &suite.records.handle().state.crypto;
    let patient_id: Uuid = patient.id.parse().unwrap();
    for ((id, sealed, version), expected) in rows.iter().zip([&first, &second]) {
        assert_eq!(id.to_string(), expected.id);
        assert_eq!(*version, expected.version);
        let opened = carehub_records::store::sealed::open_answers(crypto, patient_id, *id, sealed)
            .await
            .unwrap();
        assert_eq!(opened, expected.answers.clone().into_iter().collect());
    }
    assert!(carehub_records::store::sealed::open_answers(
        crypto, patient_id, rows[1].0, &rows[0].1
    )
    .await
    .is_err());

    // No table, records' or the platform's (stored answers, audit trail), holds an answer or
    // a question id in clear.
    carehub_platform::audit::seal_all(suite.pool())
        .await
        .unwrap();
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema, table_name FROM information_schema.tables
          WHERE table_schema IN ('public', 'carehub_platform') AND table_type = 'BASE TABLE'",
    )
    .fetch_all(suite.pool())
    .await
    .unwrap();
    assert!(tables.iter().any(|(_, t)| t == "intake_responses"));
    let needles = [
        "penicillin",
        "lisinopril",
        "dry cough",
        "quit in 2019",
        "never smoked",
        "allergies",
        "medications",
    ];
    for (schema, table) in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT t::text FROM \"{schema}\".\"{table}\" t"))
                .fetch_all(suite.pool())
                .await
                .unwrap();
        for row in rows {
            let decoded = crate::chart::decode_hex_runs(&row);
            for needle in needles {
                assert!(
                    !row.contains(needle) && !decoded.contains(needle),
                    "{schema}.{table} holds {needle:?} in clear"
                );
            }
        }
    }

    // One event per version stored, by the workload (no user), under the patient, for
    // treatment; replays add none.
    let audit = suite.audit().await;
    let events: Vec<_> = audit
        .iter()
        .filter(|(kind, ..)| kind == "records.intake.record")
        .map(|(_, purpose, subject, actor)| (purpose.as_str(), subject.clone(), actor.clone()))
        .collect();
    assert_eq!(
        events,
        vec![("treatment", Some(patient.id.clone()), None); 3]
    );
    suite.shutdown().await;
}

#[tokio::test]
async fn intake_refuses_bad_input_by_field_and_every_caller_but_scheduling() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let provider = suite.user(Role::Provider, "doc").await;
    let appointment = Uuid::now_v7();
    let good = submission(&patient, appointment, ANSWERS);

    let mut bad = good.clone();
    bad.appointment_id = "not-a-uuid".into();
    bad.form = "New Patient".into();
    bad.answers.insert("history".into(), "x".repeat(2001));
    let e = record(&suite, "scheduling", bad, "outbox-bad-1")
        .await
        .unwrap_err();
    let mut fields = assert_status(&e, Code::InvalidArgument, Some("INVALID_FIELD"));
    fields.sort();
    assert_eq!(fields, ["answers[history]", "appointment_id", "form"]);
    // The message names fields, never an answer.
    assert!(!e.message().contains("xxxx") && !e.message().contains("penicillin"));

    let mut bad = good.clone();
    bad.patient_id = String::new();
    bad.answers.clear();
    bad.submit_time = None;
    bad.form = "f".repeat(65);
    let e = record(&suite, "scheduling", bad, "outbox-bad-2")
        .await
        .unwrap_err();
    let mut fields = assert_status(&e, Code::InvalidArgument, None);
    fields.sort();
    assert_eq!(fields, ["answers", "form", "patient_id", "submit_time"]);

    let mut bad = good.clone();
    bad.answers = (0..101).map(|i| (format!("q{i}"), "a".into())).collect();
    let e = record(&suite, "scheduling", bad, "outbox-bad-3")
        .await
        .unwrap_err();
    assert_eq!(assert_status(&e, Code::InvalidArgument, None), ["answers"]);
    let mut bad = good.clone();
    bad.answers.insert("q".repeat(65), "a".into());
    let e = record(&suite, "scheduling", bad, "outbox-bad-4")
        .await
        .unwrap_err();
    assert_eq!(assert_status(&e, Code::InvalidArgument, None), ["answers"]);

    // Only a patient's chart keeps intake answers.
    let e = record(
        &suite,
        "scheduling",
        submission(&provider, appointment, ANSWERS),
        "outbox-provider",
    )
    .await
    .unwrap_err();
    assert_status(&e, Code::NotFound, None);

    // No workload but scheduling, with or without a user.
    for workload in ["gateway", "messaging", "integration"] {
        let e = record(&suite, workload, good.clone(), "outbox-other")
            .await
            .unwrap_err();
        assert_status(&e, Code::PermissionDenied, Some("WORKLOAD_NOT_ALLOWED"));
    }
    let e = suite
        .internal("gateway")
        .await
        .record_intake_response(common::as_user(&patient, good.clone()))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, None);
    assert_eq!(suite.records.count("intake_responses").await, 0);

    // Nothing refused was audited as recorded.
    let audit = suite.audit().await;
    assert!(!audit
        .iter()
        .any(|(kind, ..)| kind == "records.intake.record"));
    record(&suite, "scheduling", good, "outbox-good")
        .await
        .unwrap();
    assert_eq!(suite.records.count("intake_responses").await, 1);
    suite.shutdown().await;
}
