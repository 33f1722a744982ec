#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Consultation requests into the staff triage queue, intake answers into the chart, the
//! appointment state machine through its RPCs, late cancellation, idempotent retries, and
//! what is stored encrypted.

use carehub_platform::auth::Role;
use carehub_platform::timestamps::to_proto;
use carehub_proto::scheduling::v1::*;
use chrono::{Duration, Utc};
use tonic::Code;
use uuid::Uuid;

use crate::common::*;

const REASON: &str = "Recurring migraines with aura since March";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consultation_request_is_triaged_accepted_into_an_appointment_or_declined_with_a_reason()
{
    let suite = spawn().await;
    let (staff, visit, provider) = suite.clinic().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let mut api = suite.public().await;
    let now = Utc::now();
    let ask = |state: &str| RequestConsultationRequest {
        patient_id: String::new(),
        reason: REASON.into(),
        preferred_times: vec![TimeRange {
            start_time: Some(to_proto(now + Duration::days(2))),
            end_time: Some(to_proto(now + Duration::days(3))),
        }],
        state: state.into(),
        specialty: "family-medicine".into(),
    };
    let first = api
        .request_consultation(keyed(&patient, ask("NY"), "consult-key-1"))
        .await
        .unwrap()
        .into_inner();
    // A retry with the same key answers the same request.
    let retry = api
        .request_consultation(keyed(&patient, ask("NY"), "consult-key-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.id, retry.id);
    let second = api
        .request_consultation(keyed(&patient, ask("TX"), "consult-key-2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.status, ConsultationStatus::Open as i32);

    // Staff see both in the queue, oldest first; another patient sees none of them.
    let queue = api
        .list_consultation_requests(as_user(&staff, ListConsultationRequestsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = queue.requests.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [first.id.as_str(), second.id.as_str()]);
    assert_eq!(queue.requests[0].reason, REASON);
    let stranger = suite.user(Role::Patient, "other").await;
    let theirs = api
        .list_consultation_requests(as_user(
            &stranger,
            ListConsultationRequestsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.requests.is_empty());
    let denied = api
        .get_consultation_request(as_user(
            &stranger,
            GetConsultationRequestRequest {
                id: first.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // The provider is licensed in NY and CA: accepting the TX request with them is refused.
    let start = local(NEW_YORK, 2, 9, 0);
    let accept = |id: &str| AcceptConsultationRequestRequest {
        id: id.into(),
        provider_id: provider.id.clone(),
        visit_type_id: visit.id.clone(),
        start_time: Some(to_proto(start)),
    };
    let unlicensed = api
        .accept_consultation_request(as_user(&staff, accept(&second.id)))
        .await
        .unwrap_err();
    assert_eq!(unlicensed.code(), Code::FailedPrecondition);
    assert!(
        unlicensed.message().contains("not licensed"),
        "{unlicensed:?}"
    );

    let accepted = api
        .accept_consultation_request(as_user(&staff, accept(&first.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.status, ConsultationStatus::Accepted as i32);
    let appointment = api
        .get_appointment(as_user(
            &patient,
            GetAppointmentRequest {
                appointment_id: accepted.appointment_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            appointment.status,
            appointment.consultation_request_id.as_str(),
            appointment.reason.as_str()
        ),
        (AppointmentStatus::Booked as i32, first.id.as_str(), REASON)
    );
    // Accepting twice, or declining an accepted request, is a state conflict.
    for err in [
        api.accept_consultation_request(as_user(&staff, accept(&first.id)))
            .await
            .unwrap_err(),
        api.decline_consultation_request(as_user(
            &staff,
            DeclineConsultationRequestRequest {
                id: first.id.clone(),
                reason: "no".into(),
            },
        ))
        .await
        .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(reason(&err).as_deref(), Some("STATE_CONFLICT"));
    }

    let declined = api
        .decline_consultation_request(as_user(
            &staff,
            DeclineConsultationRequestRequest {
                id: second.id.clone(),
                reason: "We have no provider licensed in Texas yet".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(declined.status, ConsultationStatus::Declined as i32);
    let seen = api
        .get_consultation_request(as_user(
            &patient,
            GetConsultationRequestRequest {
                id: second.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        seen.decline_reason,
        "We have no provider licensed in Texas yet"
    );

    // Reasons are stored sealed: no table of scheduling holds them in clear.
    let clear: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM consultation_requests
          WHERE position(convert_to($1, 'UTF8') in reason) > 0
             OR position(convert_to('Texas', 'UTF8') in coalesce(decline_reason, ''::bytea)) > 0",
    )
    .bind("migraines")
    .fetch_one(suite.pool())
    .await
    .unwrap();
    assert_eq!(clear, 0);
    let clear: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM appointments WHERE position(convert_to('migraines', 'UTF8') in reason) > 0",
    )
    .fetch_one(suite.pool())
    .await
    .unwrap();
    assert_eq!(clear, 0);
    let audit = suite.audit().await;
    assert!(audit
        .iter()
        .any(|(k, _, s)| k == "scheduling.consultation.decide"
            && s.as_deref() == Some(patient.id.as_str())));
    assert!(audit
        .iter()
        .any(|(k, p, _)| k == "scheduling.consultation.read" && p == "operations"));
    suite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_answers_reach_the_chart_and_the_state_machine_refuses_illegal_steps() {
    let suite = spawn().await;
    let staff = suite.user(Role::Staff, "desk").await;
    let visit = suite
        .visit_type(&staff, 30, 10, Modality::InPerson, "new-patient")
        .await;
    let provider = suite
        .provider(&staff, "America/New_York", &[&visit], 8, 18)
        .await;
    let patient = suite.user(Role::Patient, "pat").await;
    let mut api = suite.public().await;
    // Slots are 40 minutes apart (30 and a 10-minute buffer) from 08:00.
    let start = local(NEW_YORK, 2, 8, 0);
    // A request holds the slot until confirmed.
    let requested = api
        .book_appointment(keyed(
            &patient,
            BookAppointmentRequest {
                provider_id: provider.id.clone(),
                visit_type_id: visit.id.clone(),
                start_time: Some(to_proto(start)),
                reason: "knee pain".into(),
                request_only: true,
                ..Default::default()
            },
            "book-key-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(requested.status, AppointmentStatus::Requested as i32);
    assert_eq!(requested.intake_status, IntakeStatus::Pending as i32);
    // The same key answers the same appointment; one row exists.
    let again = api
        .book_appointment(keyed(
            &patient,
            BookAppointmentRequest {
                provider_id: provider.id.clone(),
                visit_type_id: visit.id.clone(),
                start_time: Some(to_proto(start)),
                reason: "knee pain".into(),
                request_only: true,
                ..Default::default()
            },
            "book-key-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.id, requested.id);
    assert_eq!(suite.scheduling.count("appointments").await, 1);
    // The buffer keeps 8:30-8:40 free: 8:40 is the next slot, 8:30 is none.
    let other = suite.user(Role::Patient, "other").await;
    let taken = suite
        .book(&other, &provider, &visit, start)
        .await
        .unwrap_err();
    assert_eq!(reason(&taken).as_deref(), Some("SLOT_TAKEN"));
    let misaligned = suite
        .book(&other, &provider, &visit, start + Duration::minutes(30))
        .await
        .unwrap_err();
    assert_eq!(reason(&misaligned).as_deref(), Some("SLOT_UNAVAILABLE"));
    suite
        .book(&other, &provider, &visit, start + Duration::minutes(40))
        .await
        .unwrap();

    let act = |id: &str| AppointmentActionRequest {
        appointment_id: id.into(),
    };
    // Illegal steps from requested.
    for err in [
        api.check_in_appointment(as_user(&patient, act(&requested.id)))
            .await
            .unwrap_err(),
        api.complete_appointment(as_user(&provider, act(&requested.id)))
            .await
            .unwrap_err(),
        api.start_appointment(as_user(&provider, act(&requested.id)))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert_eq!(reason(&err).as_deref(), Some("STATE_CONFLICT"));
    }
    let booked = api
        .confirm_appointment(as_user(&provider, act(&requested.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(booked.status, AppointmentStatus::Booked as i32);
    let twice = api
        .confirm_appointment(as_user(&provider, act(&requested.id)))
        .await
        .unwrap_err();
    assert_eq!(reason(&twice).as_deref(), Some("STATE_CONFLICT"));
    let early = api
        .mark_no_show(as_user(&provider, act(&requested.id)))
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);

    // Intake: only the patient; answers go to records; the status follows.
    let answers: std::collections::BTreeMap<String, String> = [
        ("allergies".to_owned(), "penicillin".to_owned()),
        ("pain_scale".to_owned(), "7".to_owned()),
    ]
    .into_iter()
    .collect();
    let by_provider = api
        .submit_intake(as_user(
            &provider,
            SubmitIntakeRequest {
                appointment_id: requested.id.clone(),
                answers: answers.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(by_provider.code(), Code::PermissionDenied);
    let submitted = api
        .submit_intake(as_user(
            &patient,
            SubmitIntakeRequest {
                appointment_id: requested.id.clone(),
                answers,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(submitted.intake_status, IntakeStatus::Submitted as i32);
    let patient_id = Uuid::parse_str(&patient.id).unwrap();
    eventually(20, "records keeps the intake answers", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM intake_responses WHERE patient_id = $1 AND form = 'new-patient'",
        )
        .bind(patient_id)
        .fetch_one(suite.records.pool())
        .await
        .unwrap();
        n == 1
    })
    .await;

    // Through the visit: check in, start, complete; billing hears booked and completed.
    for step in ["check_in", "start", "complete"] {
        let a = match step {
            "check_in" => {
                api.check_in_appointment(as_user(&patient, act(&requested.id)))
                    .await
            }
            "start" => {
                api.start_appointment(as_user(&provider, act(&requested.id)))
                    .await
            }
            _ => {
                api.complete_appointment(as_user(&provider, act(&requested.id)))
                    .await
            }
        }
        .unwrap()
        .into_inner();
        let expected = match step {
            "check_in" => AppointmentStatus::CheckedIn,
            "start" => AppointmentStatus::InProgress,
            _ => AppointmentStatus::Completed,
        };
        assert_eq!(a.status, expected as i32);
    }
    let cancel_done = api
        .cancel_appointment(as_user(
            &patient,
            CancelAppointmentRequest {
                appointment_id: requested.id.clone(),
                reason: CancelReason::PatientRequest as i32,
                note: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&cancel_done).as_deref(), Some("STATE_CONFLICT"));
    eventually(20, "billing hears booked and completed", || async {
        let kinds: Vec<i32> = suite
            .billing
            .applied()
            .into_iter()
            .filter(|e| e.appointment_id == requested.id)
            .map(|e| e.kind)
            .collect();
        kinds.contains(&(AppointmentEventKind::Booked as i32))
            && kinds.contains(&(AppointmentEventKind::Completed as i32))
    })
    .await;

    // A late cancellation (within 24 hours) is flagged, and billing hears it so.
    let soon = local(NEW_YORK, 0, 8, 0) + Duration::days(1);
    let late = suite.book(&other, &provider, &visit, soon).await;
    if let Ok(late) = late {
        let cancelled = api
            .cancel_appointment(as_user(
                &other,
                CancelAppointmentRequest {
                    appointment_id: late.id.clone(),
                    reason: CancelReason::Other as i32,
                    note: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let expect_late = soon - Utc::now() < Duration::hours(24);
        assert_eq!(cancelled.late_cancellation, expect_late);
    }
    suite.shutdown().await;
}

/// Open requests wait in the staff's triage queue: one patient may keep only
/// `max_open_consultations` of them open, counted under the patient's lock so that a storm of
/// requests cannot all see room. A retry of an accepted request still answers it; a decided
/// request frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patient_cannot_flood_the_triage_queue_even_in_a_storm() {
    let suite = spawn_with(|c| c.scheduling.max_open_consultations = 2).await;
    let (staff, _visit, _provider) = suite.clinic().await;
    let flooder = suite.user(Role::Patient, "flooder").await;
    let now = Utc::now();
    let ask = || RequestConsultationRequest {
        patient_id: String::new(),
        reason: REASON.into(),
        preferred_times: vec![TimeRange {
            start_time: Some(to_proto(now + Duration::days(2))),
            end_time: Some(to_proto(now + Duration::days(3))),
        }],
        state: "NY".into(),
        specialty: String::new(),
    };
    let request = |key: String| {
        let (suite, flooder) = (&suite, &flooder);
        async move {
            suite
                .public()
                .await
                .request_consultation(keyed(flooder, ask(), &key))
                .await
                .map(|r| r.into_inner())
        }
    };
    let storm =
        futures::future::join_all((0..10).map(|i| request(format!("flood-request-{i}")))).await;
    let accepted: Vec<(usize, &ConsultationRequest)> = storm
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().ok().map(|c| (i, c)))
        .collect();
    assert_eq!(accepted.len(), 2, "{storm:?}");
    for s in storm.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert_eq!(reason(s).as_deref(), Some("RATE_LIMITED"));
        assert!(
            s.message().contains("2 open consultation requests"),
            "{}",
            s.message()
        );
    }
    let rows = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM consultation_requests WHERE patient_id = $1",
        )
        .bind(Uuid::parse_str(&flooder.id).unwrap())
        .fetch_one(suite.pool())
        .await
        .unwrap()
    };
    assert_eq!(rows().await, 2, "a refused request left a row behind");
    // A retry of a request that was made answers it, full queue or not.
    let (i, first) = accepted[0];
    let retry = request(format!("flood-request-{i}")).await.unwrap();
    assert_eq!(retry.id, first.id);

    let mut api = suite.public().await;
    api.decline_consultation_request(as_user(
        &staff,
        DeclineConsultationRequestRequest {
            id: first.id.clone(),
            reason: "Please book a visit directly".into(),
        },
    ))
    .await
    .unwrap();
    request("after-decline-key".into()).await.unwrap();
    let full = request("one-too-many-key".into()).await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert_eq!(rows().await, 3);
    suite.shutdown().await;
}
