//! Sensitivity labels: a Part 2 (substance-use disorder) entry is invisible to a care-team
//! provider until the patient grants that label, and again after the grant is revoked; an
//! entry with two labels needs both; its author and the patient always see it; break-glass sees
//! it as an emergency. Only the patient grants, only to their team, once per label however
//! many grants race.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use carehub_platform::auth::Role;
use carehub_proto::records::v1::*;
use tonic::Code;

use crate::common::{self, as_user, assert_status, diabetes, metformin, Suite, User};

async fn create(
    suite: &Suite,
    who: &User,
    patient: &User,
    content: EntryContent,
    labels: &[SensitivityLabel],
) -> Entry {
    suite
        .public()
        .await
        .create_entry(as_user(
            who,
            CreateEntryRequest {
                patient_id: patient.id.clone(),
                content: Some(content),
                labels: labels.iter().map(|l| *l as i32).collect(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

/// The ids of the entries `who` sees in `patient`'s chart.
async fn seen(suite: &Suite, who: &User, patient: &User) -> Vec<String> {
    suite
        .public()
        .await
        .get_chart(as_user(
            who,
            GetChartRequest {
                patient_id: patient.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.id)
        .collect()
}

async fn grant(
    suite: &Suite,
    patient: &User,
    to: &User,
    label: SensitivityLabel,
) -> Result<SensitiveAccessGrants, tonic::Status> {
    suite
        .public()
        .await
        .grant_sensitive_access(as_user(
            patient,
            GrantSensitiveAccessRequest {
                patient_id: patient.id.clone(),
                user_id: to.id.clone(),
                label: label as i32,
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_part_2_entry_is_hidden_from_the_team_until_the_patient_grants_it() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let doctor = suite.user(Role::Provider, "doc").await;
    let psych = suite.user(Role::Provider, "psych").await;
    let er = suite.user(Role::Provider, "er").await;
    suite.join_team(&patient, &doctor).await;
    suite.join_team(&patient, &psych).await;
    let plain = create(&suite, &patient, &patient, diabetes(), &[]).await;
    let part2 = create(
        &suite,
        &patient,
        &patient,
        metformin("buprenorphine 8 mg"),
        &[SensitivityLabel::SubstanceUseDisorder],
    )
    .await;
    assert_eq!(
        part2.labels,
        vec![SensitivityLabel::SubstanceUseDisorder as i32]
    );
    // Written by the psychiatrist: theirs to see, nobody else's on the team.
    let both = create(
        &suite,
        &psych,
        &patient,
        diabetes(),
        &[SensitivityLabel::Hiv, SensitivityLabel::MentalHealth],
    )
    .await;

    assert_eq!(
        seen(&suite, &patient, &patient).await,
        vec![plain.id.clone(), part2.id.clone(), both.id.clone()]
    );
    assert_eq!(
        seen(&suite, &doctor, &patient).await,
        vec![plain.id.clone()]
    );
    assert_eq!(
        seen(&suite, &psych, &patient).await,
        vec![plain.id.clone(), both.id.clone()]
    );
    let mut c = suite.public().await;
    for hidden in [&part2, &both] {
        let e = c
            .get_entry(as_user(
                &doctor,
                GetEntryRequest {
                    patient_id: patient.id.clone(),
                    entry_id: hidden.id.clone(),
                },
            ))
            .await
            .unwrap_err();
        assert_status(&e, Code::NotFound, Some("RESOURCE_NOT_FOUND"));
        let e = c
            .update_entry(as_user(
                &doctor,
                UpdateEntryRequest {
                    patient_id: patient.id.clone(),
                    entry_id: hidden.id.clone(),
                    content: Some(diabetes()),
                    etag: hidden.etag.clone(),
                    labels: vec![],
                },
            ))
            .await
            .unwrap_err();
        assert_status(&e, Code::NotFound, Some("RESOURCE_NOT_FOUND"));
        let e = c
            .list_entry_versions(as_user(
                &doctor,
                ListEntryVersionsRequest {
                    patient_id: patient.id.clone(),
                    entry_id: hidden.id.clone(),
                },
            ))
            .await
            .unwrap_err();
        assert_status(&e, Code::NotFound, Some("RESOURCE_NOT_FOUND"));
    }

    // The patient grants Part 2 to the doctor: that entry appears, the two-label one does not
    // until both labels are granted.
    grant(
        &suite,
        &patient,
        &doctor,
        SensitivityLabel::SubstanceUseDisorder,
    )
    .await
    .unwrap();
    assert_eq!(
        seen(&suite, &doctor, &patient).await,
        vec![plain.id.clone(), part2.id.clone()]
    );
    grant(&suite, &patient, &doctor, SensitivityLabel::Hiv)
        .await
        .unwrap();
    assert_eq!(seen(&suite, &doctor, &patient).await.len(), 2);
    let grants = grant(&suite, &patient, &doctor, SensitivityLabel::MentalHealth)
        .await
        .unwrap();
    assert_eq!(grants.grants.len(), 3);
    assert_eq!(seen(&suite, &doctor, &patient).await.len(), 3);

    // Revoked: hidden again.
    c.revoke_sensitive_access(as_user(
        &patient,
        RevokeSensitiveAccessRequest {
            patient_id: patient.id.clone(),
            user_id: doctor.id.clone(),
            label: SensitivityLabel::SubstanceUseDisorder as i32,
        },
    ))
    .await
    .unwrap();
    assert_eq!(
        seen(&suite, &doctor, &patient).await,
        vec![plain.id.clone(), both.id.clone()]
    );
    let e = c
        .revoke_sensitive_access(as_user(
            &patient,
            RevokeSensitiveAccessRequest {
                patient_id: patient.id.clone(),
                user_id: doctor.id.clone(),
                label: SensitivityLabel::SubstanceUseDisorder as i32,
            },
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::NotFound, Some("RESOURCE_NOT_FOUND"));

    // An emergency opens everything, as break-glass.
    c.break_glass(as_user(
        &er,
        BreakGlassRequest {
            patient_id: patient.id.clone(),
            reason: "overdose suspected, unresponsive".into(),
        },
    ))
    .await
    .unwrap();
    assert_eq!(seen(&suite, &er, &patient).await.len(), 3);
    suite.shutdown().await;
}

#[tokio::test]
async fn only_the_patient_grants_only_to_their_team_and_once_however_many_race() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let other = suite.user(Role::Patient, "other").await;
    let doctor = suite.user(Role::Provider, "doc").await;
    let stranger = suite.user(Role::Provider, "stranger").await;
    suite.join_team(&patient, &doctor).await;

    let e = grant(&suite, &patient, &stranger, SensitivityLabel::Hiv)
        .await
        .unwrap_err();
    assert_status(&e, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    let mut c = suite.public().await;
    let e = c
        .grant_sensitive_access(as_user(
            &other,
            GrantSensitiveAccessRequest {
                patient_id: patient.id.clone(),
                user_id: doctor.id.clone(),
                label: SensitivityLabel::Hiv as i32,
            },
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("NOT_ON_CARE_TEAM"));
    let e = c
        .grant_sensitive_access(as_user(
            &doctor,
            GrantSensitiveAccessRequest {
                patient_id: patient.id.clone(),
                user_id: doctor.id.clone(),
                label: SensitivityLabel::Hiv as i32,
            },
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("ROLE_NOT_ALLOWED"));
    let e = grant(&suite, &patient, &doctor, SensitivityLabel::Unspecified)
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, Some("INVALID_FIELD"));

    let racing = (0..12).map(|_| grant(&suite, &patient, &doctor, SensitivityLabel::Hiv));
    for r in futures::future::join_all(racing).await {
        r.unwrap();
    }
    let active: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sensitivity_grants WHERE revoked_at IS NULL")
            .fetch_one(suite.pool())
            .await
            .unwrap();
    assert_eq!(active, 1);
    let listed = c
        .list_sensitive_access_grants(as_user(
            &patient,
            ListSensitiveAccessGrantsRequest {
                patient_id: patient.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.grants.len(), 1);
    assert_eq!(listed.grants[0].user_id, doctor.id);
    assert_eq!(listed.grants[0].label(), SensitivityLabel::Hiv);
    suite.shutdown().await;
}
