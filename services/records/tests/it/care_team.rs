//! Care teams and break-glass: membership opens a chart and its end closes it; only active
//! providers and staff join; scheduling adds the booked provider; a provider outside the
//! team opens a chart for a limited time with a reason, read-only, audited as break-glass and
//! listed for admins.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use carehub_platform::auth::Role;
use carehub_proto::records::v1::*;
use tonic::Code;

use crate::common::{self, as_user, assert_status, diabetes};

fn chart_of(patient: &common::User) -> GetChartRequest {
    GetChartRequest {
        patient_id: patient.id.clone(),
    }
}

#[tokio::test]
async fn membership_opens_the_chart_and_its_end_closes_it() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let nurse = suite.user(Role::Staff, "nurse").await;
    let mut c = suite.public().await;

    let e = c
        .get_chart(as_user(&nurse, chart_of(&patient)))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("NOT_ON_CARE_TEAM"));
    let team = suite.join_team(&patient, &nurse).await;
    assert_eq!(team.members.len(), 1);
    assert_eq!(team.members[0].role(), TeamRole::Staff);
    assert_eq!(team.members[0].added_by, patient.id);
    // Joining again changes nothing.
    assert_eq!(suite.join_team(&patient, &nurse).await.members.len(), 1);
    c.get_chart(as_user(&nurse, chart_of(&patient)))
        .await
        .unwrap();
    // Staff enter data but do not verify it.
    let entry = c
        .create_entry(as_user(
            &nurse,
            CreateEntryRequest {
                patient_id: patient.id.clone(),
                content: Some(diabetes()),
                labels: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(entry.provenance.unwrap().source(), Source::Staff);

    // The member leaves (their own choice): the chart closes; the period stays on record.
    let team = c
        .remove_care_team_member(as_user(
            &nurse,
            RemoveCareTeamMemberRequest {
                patient_id: patient.id.clone(),
                user_id: nurse.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(team.members[0].end_time.is_some());
    let e = c
        .get_chart(as_user(&nurse, chart_of(&patient)))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("NOT_ON_CARE_TEAM"));
    let e = c
        .remove_care_team_member(as_user(
            &patient,
            RemoveCareTeamMemberRequest {
                patient_id: patient.id.clone(),
                user_id: nurse.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::NotFound, Some("RESOURCE_NOT_FOUND"));
    // A new period starts; the patient sees both.
    suite.join_team(&patient, &nurse).await;
    let team = c
        .list_care_team(as_user(
            &patient,
            ListCareTeamRequest {
                patient_id: patient.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        team.members
            .iter()
            .map(|m| m.end_time.is_some())
            .collect::<Vec<_>>(),
        vec![false, true]
    );
    suite.shutdown().await;
}

#[tokio::test]
async fn only_active_providers_and_staff_join_a_patients_team() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let other = suite.user(Role::Patient, "other").await;
    let billing = suite.user(Role::Billing, "bill").await;
    let admin = suite.user(Role::Admin, "root").await;
    let doctor = suite.user(Role::Provider, "doc").await;
    let mut c = suite.public().await;
    let add = |by: &common::User, patient: &str, user: &str| {
        as_user(
            by,
            AddCareTeamMemberRequest {
                patient_id: patient.into(),
                user_id: user.into(),
            },
        )
    };
    for member in [&other, &billing, &admin] {
        let e = c
            .add_care_team_member(add(&patient, &patient.id, &member.id))
            .await
            .unwrap_err();
        assert_status(&e, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    let e = c
        .add_care_team_member(add(&patient, &patient.id, &unknown))
        .await
        .unwrap_err();
    assert_status(&e, Code::NotFound, Some("RESOURCE_NOT_FOUND"));
    // A team belongs to a patient: an admin cannot give one to a provider.
    let e = c
        .add_care_team_member(add(&admin, &doctor.id, &doctor.id))
        .await
        .unwrap_err();
    assert_status(&e, Code::NotFound, Some("RESOURCE_NOT_FOUND"));
    // Another patient cannot touch this patient's team.
    let e = c
        .add_care_team_member(add(&other, &patient.id, &doctor.id))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("NOT_ON_CARE_TEAM"));
    // An admin can, without opening the chart.
    let team = c
        .add_care_team_member(add(&admin, &patient.id, &doctor.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(team.members[0].role(), TeamRole::Provider);
    let e = c
        .get_chart(as_user(&admin, chart_of(&patient)))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("ROLE_NOT_ALLOWED"));
    assert_eq!(suite.records.count("care_team_members").await, 1);
    suite.shutdown().await;
}

#[tokio::test]
async fn scheduling_adds_the_booked_provider_and_nobody_else_may() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let doctor = suite.user(Role::Provider, "doc").await;
    let nurse = suite.user(Role::Staff, "nurse").await;
    let booked = |provider: &common::User| AddBookedProviderRequest {
        patient_id: patient.id.clone(),
        provider_id: provider.id.clone(),
        appointment_id: uuid::Uuid::now_v7().to_string(),
    };
    let e = suite
        .internal("gateway")
        .await
        .add_booked_provider(booked(&doctor))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("WORKLOAD_NOT_ALLOWED"));
    let mut scheduling = suite.internal("scheduling").await;
    let e = scheduling
        .add_booked_provider(booked(&nurse))
        .await
        .unwrap_err();
    assert_status(&e, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    let team = scheduling
        .add_booked_provider(booked(&doctor))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(team.members.len(), 1);
    assert_eq!(team.members[0].user_id, doctor.id);
    // A second booking keeps the one active period.
    let team = scheduling
        .add_booked_provider(booked(&doctor))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(team.members.len(), 1);
    suite
        .public()
        .await
        .get_chart(as_user(&doctor, chart_of(&patient)))
        .await
        .unwrap();
    suite.shutdown().await;
}

#[tokio::test]
async fn break_glass_opens_a_chart_read_only_for_a_while_with_a_reason_and_is_reviewed() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let er = suite.user(Role::Provider, "er-doc").await;
    let nurse = suite.user(Role::Staff, "nurse").await;
    let admin = suite.user(Role::Admin, "root").await;
    let mut c = suite.public().await;
    let glass = |who: &common::User, reason: &str| {
        as_user(
            who,
            BreakGlassRequest {
                patient_id: patient.id.clone(),
                reason: reason.into(),
            },
        )
    };
    for reason in ["", "   ", "urgent"] {
        let e = c.break_glass(glass(&er, reason)).await.unwrap_err();
        assert_status(&e, Code::InvalidArgument, Some("INVALID_FIELD"));
    }
    let e = c
        .break_glass(glass(&nurse, "patient collapsed in the waiting room"))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("ROLE_NOT_ALLOWED"));
    let e = c
        .get_chart(as_user(&er, chart_of(&patient)))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("NOT_ON_CARE_TEAM"));

    let access = c
        .break_glass(glass(&er, "unconscious on arrival, allergies unknown"))
        .await
        .unwrap()
        .into_inner();
    let (open, expire) = (access.open_time.unwrap(), access.expire_time.unwrap());
    assert_eq!(expire.seconds - open.seconds, 60 * 60);
    c.get_chart(as_user(&er, chart_of(&patient))).await.unwrap();
    let e = c
        .create_entry(as_user(
            &er,
            CreateEntryRequest {
                patient_id: patient.id.clone(),
                content: Some(diabetes()),
                labels: vec![],
            },
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("ROLE_NOT_ALLOWED"));

    // Reviewed by admins, reason included; nobody else lists them.
    let e = c
        .list_break_glass_accesses(as_user(&er, ListBreakGlassAccessesRequest { page: None }))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("ROLE_NOT_ALLOWED"));
    let listed = c
        .list_break_glass_accesses(as_user(
            &admin,
            ListBreakGlassAccessesRequest { page: None },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.accesses, vec![access.clone()]);

    // The access and the read through it are audited as break-glass, under the patient.
    let events = suite.audit().await;
    let glass_events: Vec<(&str, Option<&str>)> = events
        .iter()
        .filter(|e| e.1 == "break_glass")
        .map(|e| (e.0.as_str(), e.2.as_deref()))
        .collect();
    assert_eq!(
        glass_events,
        vec![
            ("records.break_glass.open", Some(patient.id.as_str())),
            ("records.chart.read", Some(patient.id.as_str())),
        ]
    );
    assert!(events
        .iter()
        .any(|e| e.0 == "records.break_glass.review" && e.3.as_deref() == Some(admin.id.as_str())));

    // Once expired, the chart is closed again.
    sqlx::query("UPDATE break_glass_accesses SET opened_at = now() - interval '2 hours', expires_at = now() - interval '1 hour'")
        .execute(suite.pool())
        .await
        .unwrap();
    let e = c
        .get_chart(as_user(&er, chart_of(&patient)))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("NOT_ON_CARE_TEAM"));
    suite.shutdown().await;
}
