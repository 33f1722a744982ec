//! The chart end to end: entries with provenance and versions, verification, the etag that
//! prevents lost updates under a storm of concurrent writers, bad input named field by field,
//! idempotent retries, and no clinical text in clear in any table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use carehub_platform::auth::Role;
use carehub_proto::records::v1::*;
use tonic::Code;

use crate::common::{self, as_user, assert_status, diabetes, hba1c, metformin, with_key};

#[tokio::test]
async fn patient_and_care_team_keep_a_chart_with_provenance_versions_and_verification() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let doctor = suite.user(Role::Provider, "doc").await;
    let mut c = suite.public().await;

    // The patient enters a condition; the lab result is the doctor's to enter once on the team.
    let condition = c
        .create_entry(as_user(
            &patient,
            CreateEntryRequest {
                patient_id: patient.id.clone(),
                content: Some(diabetes()),
                labels: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(condition.version, 1);
    let p = condition.provenance.clone().unwrap();
    assert_eq!(p.source(), Source::Patient);
    assert_eq!(p.entered_by, patient.id);
    assert!(p.verified_by.is_empty() && p.verify_time.is_none());
    let e = c
        .create_entry(as_user(
            &patient,
            CreateEntryRequest {
                patient_id: patient.id.clone(),
                content: Some(hba1c()),
                labels: vec![],
            },
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("ROLE_NOT_ALLOWED"));

    let e = c
        .get_chart(as_user(
            &doctor,
            GetChartRequest {
                patient_id: patient.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("NOT_ON_CARE_TEAM"));
    suite.join_team(&patient, &doctor).await;
    let lab = c
        .create_entry(as_user(
            &doctor,
            CreateEntryRequest {
                patient_id: patient.id.clone(),
                content: Some(hba1c()),
                labels: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lab.provenance.unwrap().source(), Source::Provider);

    // The doctor checks and confirms the patient's entry: a new version, same content.
    let verified = c
        .verify_entry(as_user(
            &doctor,
            VerifyEntryRequest {
                patient_id: patient.id.clone(),
                entry_id: condition.id.clone(),
                etag: condition.etag.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified.version, 2);
    assert_eq!(verified.content, condition.content);
    let vp = verified.provenance.clone().unwrap();
    assert_eq!(
        (vp.source(), vp.entered_by.as_str()),
        (Source::Patient, patient.id.as_str())
    );
    assert_eq!(vp.verified_by, doctor.id);
    assert!(vp.verify_time.is_some());

    // The patient changes it: a new version, no longer verified.
    let mut changed = diabetes();
    if let Some(entry_content::Content::Condition(c)) = changed.content.as_mut() {
        c.clinical_status = ConditionStatus::Remission as i32;
    }
    let updated = c
        .update_entry(as_user(
            &patient,
            UpdateEntryRequest {
                patient_id: patient.id.clone(),
                entry_id: condition.id.clone(),
                content: Some(changed.clone()),
                etag: verified.etag.clone(),
                labels: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.version, 3);
    assert!(updated.provenance.unwrap().verified_by.is_empty());

    let chart = c
        .get_chart(as_user(
            &patient,
            GetChartRequest {
                patient_id: patient.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = chart
        .entries
        .iter()
        .map(|e| (e.id.as_str(), e.version))
        .collect();
    assert_eq!(ids, vec![(condition.id.as_str(), 3), (lab.id.as_str(), 1)]);
    assert_eq!(chart.entries[0].content, Some(changed));

    let history = c
        .list_entry_versions(as_user(
            &doctor,
            ListEntryVersionsRequest {
                patient_id: patient.id.clone(),
                entry_id: condition.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(
        history.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    assert_eq!(history[2].content, condition.content);

    // Every access is on the trail, under the patient, with its purpose.
    let events = suite.audit().await;
    let records_events: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.0.starts_with("records.entry") || e.0.starts_with("records.chart"))
        .map(|e| (e.0.as_str(), e.1.as_str()))
        .collect();
    assert_eq!(
        records_events,
        vec![
            ("records.entry.create", "patient_request"),
            ("records.entry.create", "treatment"),
            ("records.entry.verify", "treatment"),
            ("records.entry.update", "patient_request"),
            ("records.chart.read", "patient_request"),
            ("records.entry.history.read", "treatment"),
        ]
    );
    assert!(events
        .iter()
        .filter(|e| e.0.starts_with("records.entry") || e.0.starts_with("records.chart"))
        .all(|e| e.2.as_deref() == Some(patient.id.as_str())));
    suite.shutdown().await;
}

/// Two providers (and more) editing one entry from the same version: exactly one wins, every
/// other gets ABORTED / ETAG_MISMATCH, and no write is lost or merged.
#[tokio::test]
async fn concurrent_writers_with_one_etag_one_wins_the_others_are_aborted() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let a = suite.user(Role::Provider, "doc-a").await;
    let b = suite.user(Role::Provider, "doc-b").await;
    suite.join_team(&patient, &a).await;
    suite.join_team(&patient, &b).await;
    let mut c = suite.public().await;
    let entry = c
        .create_entry(as_user(
            &a,
            CreateEntryRequest {
                patient_id: patient.id.clone(),
                content: Some(metformin("500 mg")),
                labels: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();

    const WRITERS: usize = 16;
    let writes = (0..WRITERS).map(|i| {
        let who = if i % 2 == 0 { &a } else { &b };
        let req = as_user(
            who,
            UpdateEntryRequest {
                patient_id: patient.id.clone(),
                entry_id: entry.id.clone(),
                content: Some(metformin(&format!("{} mg", 600 + i))),
                etag: entry.etag.clone(),
                labels: vec![],
            },
        );
        let mut c = c.clone();
        async move { c.update_entry(req).await }
    });
    let results = futures::future::join_all(writes).await;
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_status(r, Code::Aborted, Some("ETAG_MISMATCH"));
    }
    let current = c
        .get_entry(as_user(
            &a,
            GetEntryRequest {
                patient_id: patient.id.clone(),
                entry_id: entry.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.version, 2);
    assert_eq!(current.content, winners[0].get_ref().content);
    assert_eq!(
        suite.records.count("entry_versions").await,
        2,
        "only the winner's version was written"
    );

    // The loser reads again and retries with the new etag: it goes through.
    let retried = c
        .update_entry(as_user(
            &b,
            UpdateEntryRequest {
                patient_id: patient.id.clone(),
                entry_id: entry.id.clone(),
                content: Some(metformin("1000 mg")),
                etag: current.etag,
                labels: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.version, 3);
    suite.shutdown().await;
}

#[tokio::test]
async fn bad_entries_are_refused_field_by_field_and_nothing_is_written() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let mut c = suite.public().await;
    let bad = EntryContent {
        content: Some(entry_content::Content::Medication(Medication {
            code: common::coding("http://loinc.org", "860975", ""),
            dose: String::new(),
            route: "oral".into(),
            frequency: "x".repeat(101),
            status: 0,
        })),
    };
    let e = c
        .create_entry(as_user(
            &patient,
            CreateEntryRequest {
                patient_id: patient.id.clone(),
                content: Some(bad),
                labels: vec![],
            },
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, Some("INVALID_FIELD"));
    let fields: Vec<String> = carehub_platform::errors::details_of(&e)
        .field_violations
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(
        fields,
        vec![
            "content.medication.code.system",
            "content.medication.code.display",
            "content.medication.dose",
            "content.medication.frequency",
            "content.medication.status",
        ]
    );
    for (patient_id, entry_id, etag, field) in [
        ("nope", "", "v1", "patient_id"),
        (patient.id.as_str(), "123", "v1", "entry_id"),
        (
            patient.id.as_str(),
            "018f0000-0000-7000-8000-000000000000",
            "1",
            "etag",
        ),
    ] {
        let e = c
            .update_entry(as_user(
                &patient,
                UpdateEntryRequest {
                    patient_id: patient_id.into(),
                    entry_id: entry_id.into(),
                    content: Some(diabetes()),
                    etag: etag.into(),
                    labels: vec![],
                },
            ))
            .await
            .unwrap_err();
        assert_status(&e, Code::InvalidArgument, Some("INVALID_FIELD"));
        let details = carehub_platform::errors::details_of(&e);
        assert!(
            details.field_violations.iter().any(|(f, _)| f == field),
            "{field}: {details:?}"
        );
    }
    // An unknown entry of one's own chart is NOT_FOUND; changing an entry's kind is refused.
    let e = c
        .update_entry(as_user(
            &patient,
            UpdateEntryRequest {
                patient_id: patient.id.clone(),
                entry_id: uuid::Uuid::now_v7().to_string(),
                content: Some(diabetes()),
                etag: "v1".into(),
                labels: vec![],
            },
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::NotFound, Some("RESOURCE_NOT_FOUND"));
    let entry = c
        .create_entry(as_user(
            &patient,
            CreateEntryRequest {
                patient_id: patient.id.clone(),
                content: Some(diabetes()),
                labels: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let e = c
        .update_entry(as_user(
            &patient,
            UpdateEntryRequest {
                patient_id: patient.id.clone(),
                entry_id: entry.id.clone(),
                content: Some(metformin("5 mg")),
                etag: entry.etag.clone(),
                labels: vec![],
            },
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, Some("INVALID_FIELD"));
    assert_eq!(suite.records.count("entries").await, 1);
    assert_eq!(suite.records.count("entry_versions").await, 1);
    suite.shutdown().await;
}

#[tokio::test]
async fn a_retried_create_with_its_idempotency_key_makes_one_entry() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let mut c = suite.public().await;
    let create = || {
        with_key(
            as_user(
                &patient,
                CreateEntryRequest {
                    patient_id: patient.id.clone(),
                    content: Some(diabetes()),
                    labels: vec![],
                },
            ),
            "create-diabetes-0001",
        )
    };
    let first = c.create_entry(create()).await.unwrap().into_inner();
    let again = c.create_entry(create()).await.unwrap().into_inner();
    assert_eq!(first, again);
    assert_eq!(suite.records.count("entries").await, 1);
    suite.shutdown().await;
}

/// No table of records (its own or the platform's) holds clinical text, codes or a
/// break-glass reason in clear.
#[tokio::test]
async fn no_clinical_text_is_stored_in_clear() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let doctor = suite.user(Role::Provider, "doc").await;
    let outsider = suite.user(Role::Provider, "er-doc").await;
    suite.join_team(&patient, &doctor).await;
    let mut c = suite.public().await;
    for (who, content) in [
        (&patient, diabetes()),
        (&doctor, hba1c()),
        (&doctor, metformin("500 mg")),
    ] {
        c.create_entry(as_user(
            who,
            CreateEntryRequest {
                patient_id: patient.id.clone(),
                content: Some(content),
                labels: vec![],
            },
        ))
        .await
        .unwrap();
    }
    c.break_glass(as_user(
        &outsider,
        BreakGlassRequest {
            patient_id: patient.id.clone(),
            reason: "unconscious in the emergency department".into(),
        },
    ))
    .await
    .unwrap();
    carehub_platform::audit::seal_all(suite.pool())
        .await
        .unwrap();
    let needles = [
        "Type 2 diabetes",
        "E11.9",
        "county clinic",
        "860975",
        "metformin",
        "twice daily",
        "4548-4",
        "Hemoglobin",
        "4.0-5.6",
        "emergency department",
    ];
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema, table_name FROM information_schema.tables
          WHERE table_schema IN ('public', 'carehub_platform') AND table_type = 'BASE TABLE'",
    )
    .fetch_all(suite.pool())
    .await
    .unwrap();
    assert!(tables.len() > 5, "{tables:?}");
    for (schema, table) in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT t::text FROM \"{schema}\".\"{table}\" t"))
                .fetch_all(suite.pool())
                .await
                .unwrap();
        for row in rows {
            // bytea columns are rendered as hex: look in the decoded bytes too.
            let decoded = decode_hex_runs(&row);
            for needle in needles {
                assert!(
                    !row.contains(needle) && !decoded.contains(needle),
                    "{schema}.{table} holds {needle:?} in clear"
                );
            }
        }
    }
    suite.shutdown().await;
}

/// The text of every `\x...` hex run in `row` (how a bytea column prints inside a row).
pub fn decode_hex_runs(row: &str) -> String {
    let mut out = String::new();
    for run in row.split("\\\\x").skip(1).chain(row.split("\\x").skip(1)) {
        let hex: String = run.chars().take_while(char::is_ascii_hexdigit).collect();
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
            .collect();
        out.push_str(&String::from_utf8_lossy(&bytes));
        out.push('\n');
    }
    out
}
