//! Erasure: an admin terminates a patient in identity; identity's outbox tells records, which
//! schedules the chart's erasure after the legal hold; when the hold ends the patient's data
//! keys are destroyed — their chart is unreadable for good while every other chart is intact.
//! Each step is on the trail, ids only. Only identity may deliver account events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use carehub_platform::auth::Role;
use carehub_proto::common::v1::account_events_client::AccountEventsClient;
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::{AccountStatus, AccountStatusChanged, TerminateUserRequest};
use carehub_proto::records::v1::*;
use carehub_records::api::erasure;
use tonic::Code;

use crate::common::{self, as_user, assert_status, diabetes, with_key, Suite, User};

async fn chart(suite: &Suite, who: &User, of: &User) -> Result<Chart, tonic::Status> {
    suite
        .public()
        .await
        .get_chart(as_user(
            who,
            GetChartRequest {
                patient_id: of.id.clone(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn erasures(suite: &Suite) -> Vec<(String, String, bool)> {
    sqlx::query_as(
        "SELECT patient_id::text, reason, erased_at IS NOT NULL FROM erasures ORDER BY requested_at",
    )
    .fetch_all(suite.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_terminated_patients_chart_is_erased_after_the_hold_and_every_other_chart_stays() {
    let suite = common::spawn_with(|c| {
        c.records.erasure_hold_days = 30;
        // The test runs the eraser itself.
        c.records.erasure_check_secs = 86_400;
    })
    .await;
    let leaving = suite.user(Role::Patient, "leaving").await;
    let staying = suite.user(Role::Patient, "staying").await;
    let doctor = suite.user(Role::Provider, "doc").await;
    let admin = suite.user(Role::Admin, "root").await;
    for p in [&leaving, &staying] {
        suite.join_team(p, &doctor).await;
        suite
            .public()
            .await
            .create_entry(as_user(
                p,
                CreateEntryRequest {
                    patient_id: p.id.clone(),
                    content: Some(diabetes()),
                    labels: vec![],
                },
            ))
            .await
            .unwrap();
    }

    IdentityServiceClient::new(suite.identity.channel("gateway").await)
        .terminate_user(with_key(
            as_user(
                &admin,
                TerminateUserRequest {
                    user_id: leaving.id.clone(),
                    reason: "closed at the patient's request".into(),
                },
            ),
            "terminate-leaving-01",
        ))
        .await
        .unwrap();
    // Identity's outbox delivers the event; records schedules the erasure.
    let deadline = Instant::now() + Duration::from_secs(30);
    while erasures(&suite).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no erasure scheduled within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        erasures(&suite).await,
        vec![(leaving.id.clone(), "account_terminated".to_owned(), false)]
    );
    // A redelivery of the same event (same outbox id) changes nothing; another workload may
    // not deliver at all.
    let event = AccountStatusChanged {
        user_id: leaving.id.clone(),
        status: AccountStatus::Terminated as i32,
        change_time: None,
    };
    let e = AccountEventsClient::new(suite.channel("gateway").await)
        .apply_account_event(event.clone())
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("WORKLOAD_NOT_ALLOWED"));
    AccountEventsClient::new(suite.channel("identity").await)
        .apply_account_event(with_key(tonic::Request::new(event), "outbox-replayed-0001"))
        .await
        .unwrap();
    assert_eq!(erasures(&suite).await.len(), 1);

    // During the hold nothing is erased: the doctor still reads the chart.
    let state = &suite.records.handle().state;
    assert_eq!(erasure::erase_due(state).await.unwrap(), 0);
    assert_eq!(
        chart(&suite, &doctor, &leaving)
            .await
            .unwrap()
            .entries
            .len(),
        1
    );

    // The hold ends.
    sqlx::query("UPDATE erasures SET requested_at = now() - interval '31 days', due_at = now() - interval '1 day'")
        .execute(suite.pool())
        .await
        .unwrap();
    assert_eq!(erasure::erase_due(state).await.unwrap(), 1);
    assert_eq!(erasure::erase_due(state).await.unwrap(), 0, "erased once");
    let e = chart(&suite, &doctor, &leaving).await.unwrap_err();
    assert_status(&e, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    assert_eq!(
        chart(&suite, &doctor, &staying)
            .await
            .unwrap()
            .entries
            .len(),
        1
    );
    assert_eq!(
        chart(&suite, &staying, &staying)
            .await
            .unwrap()
            .entries
            .len(),
        1
    );
    // No key of the erased patient is left; the other's are.
    let pool = suite.pool().clone();
    let keys = |subject: String| {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM carehub_platform.data_keys
              WHERE service = 'records' AND subject = $1",
            )
            .bind(subject)
            .fetch_one(&pool)
            .await
            .unwrap();
            n
        }
    };
    assert_eq!(keys(leaving.id.clone()).await, 0);
    assert!(keys(staying.id.clone()).await > 0);

    let events = suite.audit().await;
    let erasure_events: Vec<(&str, Option<&str>)> = events
        .iter()
        .filter(|e| e.0.starts_with("records.erasure"))
        .map(|e| (e.0.as_str(), e.2.as_deref()))
        .collect();
    assert_eq!(
        erasure_events,
        vec![
            ("records.erasure.schedule", Some(leaving.id.as_str())),
            ("records.erasure.done", Some(leaving.id.as_str())),
        ]
    );
    suite.shutdown().await;
}
