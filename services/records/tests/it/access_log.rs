//! The patient's access log: merged from records' and identity's audit trails (through their
//! AuditLog RPCs), newest first, names resolved, the patient's own actions left out, and paged
//! without losing or repeating an event across the services.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use carehub_platform::auth::Role;
use carehub_proto::common::v1::PageRequest;
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::GetUserRequest;
use carehub_proto::records::v1::*;
use tonic::Code;

use crate::common::{self, as_user, assert_status, diabetes, Suite, User};

async fn log_page(
    suite: &Suite,
    who: &User,
    of: &User,
    size: i32,
    token: String,
) -> Result<AccessLog, tonic::Status> {
    suite
        .public()
        .await
        .get_access_log(as_user(
            who,
            GetAccessLogRequest {
                patient_id: of.id.clone(),
                page: Some(PageRequest {
                    page_size: size,
                    page_token: token,
                }),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn the_patient_sees_who_accessed_their_data_in_every_service_newest_first() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let doctor = suite.user(Role::Provider, "doc").await;
    let er = suite.user(Role::Provider, "er").await;
    let admin = suite.user(Role::Admin, "root").await;
    suite.join_team(&patient, &doctor).await;
    let mut c = suite.public().await;
    c.create_entry(as_user(
        &patient,
        CreateEntryRequest {
            patient_id: patient.id.clone(),
            content: Some(diabetes()),
            labels: vec![],
        },
    ))
    .await
    .unwrap();
    for _ in 0..3 {
        c.get_chart(as_user(
            &doctor,
            GetChartRequest {
                patient_id: patient.id.clone(),
            },
        ))
        .await
        .unwrap();
    }
    c.break_glass(as_user(
        &er,
        BreakGlassRequest {
            patient_id: patient.id.clone(),
            reason: "unresponsive, brought in by ambulance".into(),
        },
    ))
    .await
    .unwrap();
    c.get_chart(as_user(
        &er,
        GetChartRequest {
            patient_id: patient.id.clone(),
        },
    ))
    .await
    .unwrap();
    // An admin reads the account in identity: identity's trail, filed under the patient.
    IdentityServiceClient::new(suite.identity.channel("gateway").await)
        .get_user(as_user(
            &admin,
            GetUserRequest {
                user_id: patient.id.clone(),
            },
        ))
        .await
        .unwrap();

    // Events reach the trails as their sequencers seal them (well under a second): read until
    // the admin's look is there and two reads agree.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut previous = None;
    let all = loop {
        let all = log_page(&suite, &patient, &patient, 500, String::new())
            .await
            .unwrap();
        let complete = all.entries.iter().any(|e| {
            e.service == "identity" && e.actor_user_id == admin.id && e.kind == "identity.user.read"
        });
        if complete && previous.as_ref() == Some(&all.entries) {
            break all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log did not settle: {all:?}"
        );
        previous = Some(all.entries);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    assert!(all.page.unwrap().next_page_token.is_empty());
    let entries = all.entries;
    assert!(
        entries.iter().all(|e| e.actor_user_id != patient.id),
        "own actions are left out"
    );
    let times: Vec<_> = entries.iter().map(|e| e.time.unwrap()).collect();
    assert!(
        times
            .windows(2)
            .all(|w| (w[0].seconds, w[0].nanos) >= (w[1].seconds, w[1].nanos)),
        "newest first"
    );
    let doctor_reads: Vec<_> = entries
        .iter()
        .filter(|e| e.actor_user_id == doctor.id && e.kind == "records.chart.read")
        .collect();
    assert_eq!(doctor_reads.len(), 3);
    assert_eq!(
        (
            doctor_reads[0].service.as_str(),
            doctor_reads[0].purpose.as_str(),
            doctor_reads[0].actor_name.as_str(),
            doctor_reads[0].actor_role.as_str()
        ),
        ("records", "treatment", "Test User", "provider")
    );
    let er_events: Vec<(&str, &str)> = entries
        .iter()
        .filter(|e| e.actor_user_id == er.id)
        .map(|e| (e.kind.as_str(), e.purpose.as_str()))
        .collect();
    assert_eq!(
        er_events,
        vec![
            ("records.chart.read", "break_glass"),
            ("records.break_glass.open", "break_glass")
        ]
    );
    assert!(entries.iter().any(|e| e.service == "identity"
        && e.actor_user_id == admin.id
        && e.kind == "identity.user.read"));

    // Two at a time: the same events, in the same order, none lost or repeated.
    let mut paged = Vec::new();
    let mut token = String::new();
    for _ in 0..100 {
        let page = log_page(&suite, &patient, &patient, 2, token)
            .await
            .unwrap();
        paged.extend(page.entries);
        token = page.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert!(token.is_empty(), "paging did not end");
    let ids = |v: &[AccessLogEntry]| {
        v.iter()
            .map(|e| (e.service.clone(), e.kind.clone(), e.time))
            .collect::<Vec<_>>()
    };
    // Reading the log is itself audited (by the patient: left out), so both listings agree.
    assert_eq!(ids(&paged), ids(&entries));

    // Only the patient reads it.
    let e = log_page(&suite, &doctor, &patient, 10, String::new())
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("ROLE_NOT_ALLOWED"));
    let other = suite.user(Role::Patient, "other").await;
    let e = log_page(&suite, &other, &patient, 10, String::new())
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("NOT_ON_CARE_TEAM"));
    suite.shutdown().await;
}
