#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `carehub outbox list|retry` as an operator runs it, against a real PostgreSQL: `list` shows
//! id, target, method, state, attempts, age and last error but never the payload; `retry --id`
//! revives one dead-lettered row, refuses a row that is not dead, and `retry --all` revives the
//! rest.

use std::process::Output;
use std::sync::Arc;

use carehub_platform::db::TestDatabase;
use carehub_platform::keys::{KeySource, StaticKeys};
use carehub_platform::outbox::Outbox;
use carehub_proto::identity::v1::{AccountStatus, AccountStatusChanged};
use secrecy::ExposeSecret as _;
use sqlx::migrate::Migrator;
use uuid::Uuid;

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;
const METHOD: &str = "/carehub.common.v1.AccountEvents/ApplyAccountEvent";

fn carehub_outbox(db: &TestDatabase, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_carehub"))
        .arg("outbox")
        .args(args)
        .args(["--service", "identity", "--set"])
        .arg(format!("server.database.url={}", db.url.expose_secret()))
        .env_remove("CAREHUB_CONFIG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn state_of(db: &TestDatabase, id: Uuid) -> (String, i32) {
    sqlx::query_as("SELECT state, attempts FROM carehub_platform.outbox WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn list_shows_rows_without_payloads_and_retry_revives_dead_letters() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let keys: Arc<dyn KeySource> = Arc::new(StaticKeys::generate());
    let outbox = Outbox::new(keys);
    let user = Uuid::now_v7().to_string();
    let mut tx = db.pool.begin().await.unwrap();
    let mut ids = Vec::new();
    for target in ["records", "messaging", "records"] {
        let event = AccountStatusChanged {
            user_id: user.clone(),
            status: AccountStatus::Suspended as i32,
            change_time: None,
        };
        ids.push(
            outbox
                .enqueue(&mut tx, target, METHOD, &event)
                .await
                .unwrap(),
        );
    }
    tx.commit().await.unwrap();
    // Two rows failed for good, as the relay leaves them.
    sqlx::query(
        "UPDATE carehub_platform.outbox
         SET state = 'dead', attempts = 10, last_error = 'UNAVAILABLE: connection refused'
         WHERE id = ANY($1)",
    )
    .bind(&ids[..2])
    .execute(&db.pool)
    .await
    .unwrap();

    let out = carehub_outbox(&db, &["list"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 3, "{text}");
    let first = text.lines().next().unwrap();
    for part in [
        ids[0].to_string().as_str(),
        "records",
        METHOD,
        "dead",
        "attempts=10",
        "age=",
        "last_error=UNAVAILABLE: connection refused",
    ] {
        assert!(first.contains(part), "{part:?} missing from {first:?}");
    }
    assert!(!text.contains(&user), "a payload leaked: {text}");
    let out = carehub_outbox(&db, &["list", "--state", "dead", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let rows: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert!(rows
        .iter()
        .all(|r| r["state"] == "dead" && r.get("payload").is_none()));

    // One row; a row that is not dead is refused (exit status 1, the id named).
    let id = ids[0].to_string();
    let out = carehub_outbox(&db, &["retry", "--id", &id]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains(&id), "{}", stdout(&out));
    assert_eq!(state_of(&db, ids[0]).await, ("pending".to_owned(), 0));
    let pending = ids[2].to_string();
    let out = carehub_outbox(&db, &["retry", "--id", &pending]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("{pending} is not dead-lettered")),
        "{out:?}"
    );
    // The rest.
    let out = carehub_outbox(&db, &["retry", "--all"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).starts_with("identity: 1 dead-lettered row(s) made pending again"),
        "{}",
        stdout(&out)
    );
    assert_eq!(state_of(&db, ids[1]).await, ("pending".to_owned(), 0));
    let out = carehub_outbox(&db, &["retry"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--id or --all is required: {out:?}"
    );

    db.drop_database().await.unwrap();
}
