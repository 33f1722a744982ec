#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `carehub audit verify` as an operator runs it, against a real PostgreSQL and a development
//! key file: exit 0 on an intact trail; exit 3 naming the row when a row was deleted or edited,
//! rows were reordered, or the tail was cut off (head rewound; the signed checkpoint tells, or
//! when the stored checkpoints were deleted too, the copy the sink shipped: `--checkpoints`).
//! `carehub audit events` opens client addresses with the service's keys and shows them sealed
//! without.

use std::path::Path;
use std::process::Output;

use carehub_platform::audit::{self, checkpoint, Action, AuditEvent, Purpose};
use carehub_platform::config::KeysConfig;
use carehub_platform::db::TestDatabase;
use carehub_platform::keys::file::{write_dev_key_file, FileKeys};
use secrecy::ExposeSecret as _;
use sqlx::migrate::Migrator;
use uuid::Uuid;

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

fn carehub_verify(db: &TestDatabase, key_file: &Path, extra: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_carehub"))
        .args(["audit", "verify", "--service", "identity"])
        .arg("--set")
        .arg(format!("server.database.url={}", db.url.expose_secret()))
        .arg("--set")
        .arg(format!("server.keys.file={}", key_file.display()))
        .args(extra)
        .env_remove("CAREHUB_CONFIG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A database with 10 identity events and a checkpoint at 10, and the key file that signed it.
async fn trail(dir: &Path) -> (TestDatabase, std::path::PathBuf) {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let key_file = dir.join("dev-keys.json");
    write_dev_key_file(&key_file).unwrap();
    let keys = FileKeys::load(
        "identity",
        &KeysConfig {
            file: key_file.clone(),
            ..KeysConfig::default()
        },
    )
    .unwrap();
    for _ in 0..10 {
        let user = Uuid::now_v7();
        let event = AuditEvent::new(
            "identity.login",
            Action::Execute,
            Purpose::Security,
            "user",
            user,
        )
        .actor_user(user)
        .subject(user);
        audit::record_read(&db.pool, &event).await.unwrap();
    }
    audit::seal_all(&db.pool).await.unwrap();
    checkpoint::checkpoint_now(&db.pool, keys.as_ref(), "identity")
        .await
        .unwrap()
        .unwrap();
    (db, key_file)
}

/// Runs `sql` as an attacker with superuser rights would: the append-only trigger is off for
/// its transaction (`SET LOCAL session_replication_role = replica`, superuser only). The
/// application's role cannot (platform tests: `the_application_role_cannot_update_or_delete_audit_rows`).
async fn exec(db: &TestDatabase, sql: &str) {
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(sql).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn verify_exits_zero_on_an_intact_trail_and_three_naming_the_row_when_tampered() {
    let dir = tempfile::tempdir().unwrap();

    let (db, keys) = trail(dir.path()).await;
    let ok = carehub_verify(&db, &keys, &[]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}{}",
        stdout(&ok),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout(&ok).contains("intact: 10 row(s)"), "{}", stdout(&ok));
    assert!(
        stdout(&ok).contains("sealing lag: 0 event(s) queued"),
        "{}",
        stdout(&ok)
    );
    let json = carehub_verify(&db, &keys, &["--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["rows_checked"], 10);
    assert_eq!(report["last_checkpoint_seq"], 10);
    assert_eq!(report["sealing"]["queued"], 0);

    // Deleted.
    exec(
        &db,
        "DELETE FROM carehub_platform.audit_events WHERE seq = 4",
    )
    .await;
    let out = carehub_verify(&db, &keys, &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stdout(&out).contains("TAMPERED at row 4"),
        "{}",
        stdout(&out)
    );
    db.drop_database().await.unwrap();

    // Edited.
    let (db, keys) = trail(dir.path()).await;
    exec(
        &db,
        "UPDATE carehub_platform.audit_events SET outcome = 'minor_failure' WHERE seq = 6",
    )
    .await;
    let out = carehub_verify(&db, &keys, &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stdout(&out).contains("TAMPERED at row 6"),
        "{}",
        stdout(&out)
    );
    db.drop_database().await.unwrap();

    // Reordered.
    let (db, keys) = trail(dir.path()).await;
    for (from, to) in [(7, 1000), (8, 7), (1000, 8)] {
        exec(
            &db,
            &format!("UPDATE carehub_platform.audit_events SET seq = {to} WHERE seq = {from}"),
        )
        .await;
    }
    let out = carehub_verify(&db, &keys, &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stdout(&out).contains("TAMPERED at row 7"),
        "{}",
        stdout(&out)
    );
    db.drop_database().await.unwrap();

    // Tail cut off and the head rewound to match: the checkpoint at 10 names the gap.
    let (db, keys) = trail(dir.path()).await;
    exec(
        &db,
        "DELETE FROM carehub_platform.audit_events WHERE seq > 8",
    )
    .await;
    exec(
        &db,
        "UPDATE carehub_platform.audit_chain_head SET seq = 8,
            hash = (SELECT hash FROM carehub_platform.audit_events WHERE seq = 8)",
    )
    .await;
    let out = carehub_verify(&db, &keys, &[]);
    assert_eq!(out.status.code(), Some(3));
    let text = stdout(&out);
    assert!(
        text.contains("TAMPERED at row 9") && text.contains("9..=10"),
        "{text}"
    );

    // A time range that ends before the damage verifies what it covers.
    let out = carehub_verify(&db, &keys, &["--to", "2000-01-01T00:00:00Z"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // A bad instant is a usage error, not a verdict.
    let out = carehub_verify(&db, &keys, &["--from", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn verify_fails_without_a_verdict_when_the_database_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("dev-keys.json");
    write_dev_key_file(&key_file).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carehub"))
        .args(["audit", "verify", "--service", "identity"])
        .args([
            "--set",
            "server.database.url=postgres://postgres@127.0.0.1:1/none",
        ])
        .arg("--set")
        .arg(format!("server.keys.file={}", key_file.display()))
        .env("CAREHUB_SERVER__DATABASE__ACQUIRE_TIMEOUT_SECS", "2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("identity's database"), "{stderr}");
}

/// The trail's checkpoints as the sink ships them (JSON lines in a file outside the database).
async fn ship(db: &TestDatabase, path: &Path) {
    let sink = audit::Sink::File(path.to_owned());
    while audit::sink::ship_once(&db.pool, "identity", &sink)
        .await
        .unwrap()
        > 0
    {}
}

#[tokio::test]
async fn verify_given_the_shipped_checkpoints_catches_truncation_with_the_checkpoints_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (db, keys) = trail(dir.path()).await;
    let shipped = dir.path().join("audit.jsonl");
    ship(&db, &shipped).await;
    let shipped_arg = shipped.display().to_string();
    let ok = carehub_verify(&db, &keys, &["--checkpoints", &shipped_arg]);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("(1 shipped)"), "{}", stdout(&ok));

    // The attacker cuts rows 7..=10, rewinds the head to row 6 and deletes the stored
    // checkpoints: the database alone looks intact...
    exec(
        &db,
        "DELETE FROM carehub_platform.audit_events WHERE seq > 6",
    )
    .await;
    exec(&db, "DELETE FROM carehub_platform.audit_checkpoints").await;
    exec(
        &db,
        "UPDATE carehub_platform.audit_chain_head SET seq = 6,
            hash = (SELECT hash FROM carehub_platform.audit_events WHERE seq = 6)",
    )
    .await;
    let fooled = carehub_verify(&db, &keys, &[]);
    assert_eq!(fooled.status.code(), Some(0), "{}", stdout(&fooled));
    // ... but not against the copy shipped before the attack.
    let out = carehub_verify(&db, &keys, &["--checkpoints", &shipped_arg]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("TAMPERED at row 7 (Truncated)")
            && text.contains("7..=10")
            && text.contains("shipped checkpoint"),
        "{text}"
    );
    let json = carehub_verify(&db, &keys, &["--checkpoints", &shipped_arg, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["problem"]["kind"], "truncated");
    assert_eq!(report["problem"]["seq"], 7);

    // A damaged copy is no verdict (exit 1), not an empty anchor.
    let damaged = dir.path().join("damaged.jsonl");
    std::fs::write(
        &damaged,
        "{\"type\":\"audit_checkpoint\",\"service\":\"identity\"}\n",
    )
    .unwrap();
    let out = carehub_verify(
        &db,
        &keys,
        &["--checkpoints", &damaged.display().to_string()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn audit_events_opens_client_addresses_with_the_keys_and_shows_them_sealed_without() {
    let dir = tempfile::tempdir().unwrap();
    let (db, key_file) = trail(dir.path()).await;
    let keys = FileKeys::load(
        "identity",
        &KeysConfig {
            file: key_file.clone(),
            ..KeysConfig::default()
        },
    )
    .unwrap();
    let sealer = audit::ClientSealer::new("identity", keys);
    let user = Uuid::now_v7();
    let mut event = AuditEvent::new(
        "identity.login",
        Action::Execute,
        Purpose::Security,
        "user",
        user,
    )
    .subject(user);
    event.source_ip = Some("198.51.100.23".into());
    event.user_agent = Some("CliTest/2.0".into());
    audit::record_read_with(&db.pool, Some(&sealer), &event)
        .await
        .unwrap();
    audit::seal_all(&db.pool).await.unwrap();
    let raw: String = sqlx::query_scalar(
        "SELECT row_to_json(e)::text FROM carehub_platform.audit_events e WHERE subject_id = $1",
    )
    .bind(user)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        !raw.contains("198.51.100.23") && !raw.contains("CliTest"),
        "{raw}"
    );

    let events = |key_file: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_carehub"))
            .args(["audit", "events", "--service", "identity", "--subject"])
            .arg(user.to_string())
            .arg("--set")
            .arg(format!("server.database.url={}", db.url.expose_secret()))
            .arg("--set")
            .arg(format!("server.keys.file={}", key_file.display()))
            .env_remove("CAREHUB_CONFIG")
            .output()
            .unwrap()
    };
    let out = events(&key_file);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(
        text.contains("ip=198.51.100.23") && text.contains("ua=CliTest/2.0"),
        "{text}"
    );
    // Another installation's keys: listed, the client fields shown sealed.
    let other = dir.path().join("other-keys.json");
    write_dev_key_file(&other).unwrap();
    let out = events(&other);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(text.contains("ip=[sealed, kek v1"), "{text}");
    assert!(
        !text.contains("198.51.100.23") && !text.contains("CliTest"),
        "{text}"
    );
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn verify_exits_four_when_committed_events_wait_too_long_to_be_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let (db, keys) = trail(dir.path()).await;
    // Two events committed but never sealed (no sequencer runs): one fresh, one an hour old.
    for _ in 0..2 {
        let user = Uuid::now_v7();
        let event = AuditEvent::new(
            "identity.login",
            Action::Execute,
            Purpose::Security,
            "user",
            user,
        )
        .subject(user);
        audit::record_read(&db.pool, &event).await.unwrap();
    }
    let fresh = carehub_verify(&db, &keys, &[]);
    assert_eq!(fresh.status.code(), Some(0), "{}", stdout(&fresh));
    assert!(
        stdout(&fresh).contains("sealing lag: 2 event(s) queued"),
        "{}",
        stdout(&fresh)
    );
    sqlx::query(
        "UPDATE carehub_platform.audit_queue SET queued_at = now() - interval '1 hour'
          WHERE id = (SELECT min(id) FROM carehub_platform.audit_queue)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let late = carehub_verify(&db, &keys, &["--set", "server.audit.sealing_lag_secs=60"]);
    assert_eq!(late.status.code(), Some(4), "{}", stdout(&late));
    assert!(
        stdout(&late).contains("SEALING LAG: 1 of 2 queued event(s) waited longer than 60s"),
        "{}",
        stdout(&late)
    );
    // The chain itself is intact; once sealed, nothing lags.
    assert!(
        stdout(&late).contains("intact: 10 row(s)"),
        "{}",
        stdout(&late)
    );
    assert_eq!(audit::seal_all(&db.pool).await.unwrap(), 2);
    let sealed = carehub_verify(&db, &keys, &[]);
    assert_eq!(sealed.status.code(), Some(0), "{}", stdout(&sealed));
    assert!(
        stdout(&sealed).contains("intact: 12 row(s)"),
        "{}",
        stdout(&sealed)
    );
    db.drop_database().await.unwrap();
}
