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
