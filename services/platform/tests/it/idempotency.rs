#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Idempotency keys against a real PostgreSQL: replay, rejection of a reused key, rollback of a
//! failed call, and concurrent calls with one key running the operation once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use carehub_platform::db::TestDatabase;
use carehub_platform::idempotency::IdempotencyStore;
use carehub_platform::keys::{KeyName, KeySource, KeyVersions, StaticKeys};
use carehub_platform::{errors, idempotency};
use sqlx::migrate::Migrator;
use tonic::{Code, Status};

/// A service with no tables of its own: only the platform schema.
static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

#[derive(Debug)]
struct TestError(Status);
impl From<Status> for TestError {
    fn from(s: Status) -> Self {
        TestError(s)
    }
}
impl From<sqlx::Error> for TestError {
    fn from(e: sqlx::Error) -> Self {
        TestError(Status::internal(e.to_string()))
    }
}

async fn counter_db() -> TestDatabase {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    sqlx::query("CREATE TABLE hits (n int)")
        .execute(&db.pool)
        .await
        .unwrap();
    db
}

/// The keys of the service under test (the KEK seals stored answers).
static KEYS: LazyLock<Arc<StaticKeys>> = LazyLock::new(|| Arc::new(StaticKeys::generate()));

async fn hit(
    db: &TestDatabase,
    key: Option<&str>,
    value: &str,
    fail: bool,
) -> Result<String, TestError> {
    let store = IdempotencyStore::new(db.pool.clone(), KEYS.clone());
    hit_with(&store, key, value, fail).await
}

async fn hit_with(
    store: &IdempotencyStore,
    key: Option<&str>,
    value: &str,
    fail: bool,
) -> Result<String, TestError> {
    let value = value.to_owned();
    idempotency::run(
        store,
        "/t.T/Hit",
        "user:1",
        key,
        &value.clone(),
        move |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO hits VALUES (1)")
                    .execute(&mut *tx)
                    .await?;
                if fail {
                    return Err(TestError(Status::failed_precondition("nope")));
                }
                Ok(format!("answer-{value}"))
            })
        },
    )
    .await
}

async fn hits(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM hits")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn retry_replays_and_reuse_is_rejected() {
    let db = counter_db().await;
    assert_eq!(
        hit(&db, Some("key-00000001"), "a", false).await.unwrap(),
        "answer-a"
    );
    assert_eq!(
        hit(&db, Some("key-00000001"), "a", false).await.unwrap(),
        "answer-a"
    );
    assert_eq!(hits(&db).await, 1, "the retry must not run again");

    let err = hit(&db, Some("key-00000001"), "b", false)
        .await
        .unwrap_err()
        .0;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        errors::details_of(&err).reason.as_deref(),
        Some("IDEMPOTENCY_KEY_REUSED")
    );
    assert_eq!(hits(&db).await, 1);

    // Without a key every call runs.
    hit(&db, None, "c", false).await.unwrap();
    hit(&db, None, "c", false).await.unwrap();
    assert_eq!(hits(&db).await, 3);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn failed_call_stores_nothing_and_its_retry_runs() {
    let db = counter_db().await;
    let err = hit(&db, Some("key-00000002"), "a", true)
        .await
        .unwrap_err()
        .0;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        hits(&db).await,
        0,
        "the failed call's write must be rolled back"
    );
    assert_eq!(
        hit(&db, Some("key-00000002"), "a", false).await.unwrap(),
        "answer-a"
    );
    assert_eq!(hits(&db).await, 1);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn concurrent_calls_with_one_key_run_once() {
    let db = Arc::new(counter_db().await);
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let db = db.clone();
        let ok = ok.clone();
        tasks.push(tokio::spawn(async move {
            if hit(&db, Some("key-00000003"), "a", false).await.unwrap() == "answer-a" {
                ok.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        ok.load(Ordering::SeqCst),
        16,
        "every caller gets the first answer"
    );
    assert_eq!(hits(&db).await, 1, "the operation ran exactly once");
    Arc::try_unwrap(db)
        .ok()
        .unwrap()
        .drop_database()
        .await
        .unwrap();
}

#[tokio::test]
async fn malformed_keys_are_refused() {
    let mut req = tonic::Request::new(());
    assert_eq!(idempotency::key_of(&req).unwrap(), None);
    req.metadata_mut()
        .insert(idempotency::HEADER, "short".parse().unwrap());
    let err = idempotency::key_of(&req).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        errors::details_of(&err).field_violations[0].0,
        "idempotency-key"
    );
}

#[tokio::test]
async fn stored_answers_are_sealed_and_bound_to_their_row() {
    let db = counter_db().await;
    let marker = "MARKER-ann-smith@example.org";
    hit(&db, Some("key-00000004"), marker, false).await.unwrap();
    hit(&db, Some("key-00000005"), "other", false)
        .await
        .unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT request_hash, response FROM carehub_platform.idempotency_keys ORDER BY key",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for (fingerprint, response) in &rows {
        for stored in [fingerprint, response] {
            assert!(
                !stored.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "plaintext stored"
            );
        }
    }
    // An answer copied onto another key's row does not open there.
    sqlx::query(
        "UPDATE carehub_platform.idempotency_keys SET response = $1, request_hash = $2
         WHERE key = 'key-00000005'",
    )
    .bind(&rows[0].1)
    .bind(&rows[0].0)
    .execute(&db.pool)
    .await
    .unwrap();
    let err = hit(&db, Some("key-00000005"), marker, false)
        .await
        .unwrap_err()
        .0;
    assert_eq!(err.code(), Code::Internal);
    assert!(!err.message().contains("MARKER"), "{}", err.message());
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn answers_stored_before_a_kek_rotation_still_replay() {
    let db = counter_db().await;
    let mut kek = KeyVersions::generate();
    let before = Arc::new(StaticKeys::default().with(KeyName::Kek, kek.clone()));
    let store = IdempotencyStore::new(db.pool.clone(), before);
    hit_with(&store, Some("key-00000006"), "a", false)
        .await
        .unwrap();

    assert_eq!(kek.rotate(), 2);
    let after = Arc::new(StaticKeys::default().with(KeyName::Kek, kek));
    assert_eq!(after.current(KeyName::Kek).unwrap().0, 2);
    let store = IdempotencyStore::new(db.pool.clone(), after);
    assert_eq!(
        hit_with(&store, Some("key-00000006"), "a", false)
            .await
            .unwrap(),
        "answer-a"
    );
    let err = hit_with(&store, Some("key-00000006"), "b", false)
        .await
        .unwrap_err()
        .0;
    assert_eq!(
        errors::details_of(&err).reason.as_deref(),
        Some("IDEMPOTENCY_KEY_REUSED")
    );
    assert_eq!(hits(&db).await, 1);

    // Without its KEK the service answers UNAVAILABLE rather than run the call unguarded.
    let keyless = IdempotencyStore::new(db.pool.clone(), Arc::new(StaticKeys::default()));
    let err = hit_with(&keyless, Some("key-00000007"), "c", false)
        .await
        .unwrap_err()
        .0;
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(hits(&db).await, 1);
    db.drop_database().await.unwrap();
}
