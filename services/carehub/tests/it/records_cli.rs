//! `carehub records erase`: schedules a chart's erasure in records' database, audited as the
//! operator CLI; `--now` makes it due at once; a second call leaves the first schedule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

use carehub_platform::db::TestDatabase;
use secrecy::ExposeSecret as _;
use uuid::Uuid;

fn erase(db: &TestDatabase, patient: Uuid, extra: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_carehub"))
        .args(["records", "erase", "--patient", &patient.to_string()])
        .args(extra)
        .arg("--set")
        .arg(format!("server.database.url={}", db.url.expose_secret()))
        .args([
            "--set",
            "server.auth.identity_endpoint=https://identity:50051",
        ])
        .env_remove("CAREHUB_CONFIG")
        .output()
        .unwrap()
}

#[tokio::test]
async fn erase_schedules_after_the_hold_or_now_and_is_audited_as_the_operator() {
    let db = TestDatabase::new(&carehub_records::MIGRATOR).await.unwrap();
    let (held, minor) = (Uuid::now_v7(), Uuid::now_v7());

    let out = erase(&db, held, &["--reason", "operator"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = erase(&db, minor, &["--reason", "minor", "--now"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("scheduled (minor)"));
    let bad = erase(&db, minor, &["--reason", "whim"]);
    assert!(!bad.status.success());

    let rows: Vec<(Uuid, String, bool)> = sqlx::query_as(
        "SELECT patient_id, reason, due_at <= now() FROM erasures ORDER BY requested_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (held, "operator".to_owned(), false),
            (minor, "minor".to_owned(), true)
        ]
    );
    // Asked again with --now, the held one is brought forward; its reason stays.
    let out = erase(&db, held, &["--reason", "minor", "--now"]);
    assert!(out.status.success());
    let (reason, due): (String, bool) =
        sqlx::query_as("SELECT reason, due_at <= now() FROM erasures WHERE patient_id = $1")
            .bind(held)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((reason.as_str(), due), ("operator", true));

    carehub_platform::audit::seal_all(&db.pool).await.unwrap();
    let events: Vec<(String, Option<Uuid>, Option<String>)> = sqlx::query_as(
        "SELECT kind, subject_id, actor_workload FROM carehub_platform.audit_events ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        vec![
            (
                "records.erasure.schedule".into(),
                Some(held),
                Some("admin-cli".into())
            ),
            (
                "records.erasure.schedule".into(),
                Some(minor),
                Some("admin-cli".into())
            ),
        ]
    );
    db.drop_database().await.unwrap();
}

/// `carehub records export`: the whole chart, read with records' keys from its configuration,
/// as a FHIR R4 Bundle, audited as the operator CLI.
#[tokio::test]
async fn export_writes_the_whole_chart_as_a_fhir_bundle_and_is_audited() {
    use carehub_proto::records::v1::{
        entry_content::Content, Coding, Condition, ConditionStatus, EntryContent,
    };
    use carehub_records::domain::content::Kind;
    use carehub_records::store::entries::{self, Entered, Source};

    let db = TestDatabase::new(&carehub_records::MIGRATOR).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = carehub_testkit::keys::dev_key_file_for(dir.path(), "records");
    let keys = carehub_platform::keys::from_parts(
        "records",
        &carehub_platform::config::KeysConfig {
            file: key_file.clone(),
            ..Default::default()
        },
        &Default::default(),
    )
    .await
    .unwrap();
    let crypto = carehub_platform::crypto::Envelope::new(
        "records",
        db.pool.clone(),
        keys,
        Default::default(),
    )
    .unwrap();
    let (patient, entry) = (Uuid::now_v7(), Uuid::now_v7());
    let content = EntryContent {
        content: Some(Content::Condition(Condition {
            code: Some(Coding {
                system: "http://hl7.org/fhir/sid/icd-10-cm".into(),
                code: "E11.9".into(),
                display: "Type 2 diabetes mellitus".into(),
            }),
            clinical_status: ConditionStatus::Active as i32,
            onset_date: None,
            note: String::new(),
        })),
    };
    let sealed =
        carehub_records::store::sealed::seal_version(&crypto, patient, (entry, 1), &content, &[])
            .await
            .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    entries::insert(
        &mut conn,
        entry,
        patient,
        Kind::Condition,
        &sealed,
        Entered {
            source: Source::Patient,
            by: Some(patient),
            verified_by: None,
        },
    )
    .await
    .unwrap();
    drop(conn);

    let out_file = dir.path().join("chart.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carehub"))
        .args([
            "records",
            "export",
            "--patient",
            &patient.to_string(),
            "--out",
        ])
        .arg(&out_file)
        .arg("--set")
        .arg(format!("server.database.url={}", db.url.expose_secret()))
        .arg("--set")
        .arg(format!("server.keys.file={}", key_file.display()))
        .args([
            "--set",
            "server.auth.identity_endpoint=https://identity:50051",
        ])
        .env_remove("CAREHUB_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    let resources: Vec<(String, String)> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["resource"]["resourceType"].as_str().unwrap().to_owned(),
                e["resource"]["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(resources[0], ("Patient".to_owned(), patient.to_string()));
    assert_eq!(resources[1], ("Condition".to_owned(), entry.to_string()));
    assert_eq!(resources[2].0, "Provenance");
    assert_eq!(
        bundle["entry"][1]["resource"]["code"]["coding"][0]["code"],
        "E11.9"
    );

    carehub_platform::audit::seal_all(&db.pool).await.unwrap();
    let events: Vec<(String, Option<Uuid>, Option<String>)> = sqlx::query_as(
        "SELECT kind, subject_id, actor_workload FROM carehub_platform.audit_events ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        vec![(
            "records.chart.export".into(),
            Some(patient),
            Some("admin-cli".into())
        )]
    );
    db.drop_database().await.unwrap();
}
