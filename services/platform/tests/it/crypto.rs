#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Envelope encryption against a real PostgreSQL: round trips with zero database calls once
//! keys are cached, tamper tests (ciphertext moved between rows, columns, subjects and
//! services; altered bytes; wrong key versions), crypto-shredding, and blind-index lookups.

use std::sync::Arc;

use carehub_platform::crypto::{CryptoConfig, CryptoError, Envelope, Field, Normalization};
use carehub_platform::db::TestDatabase;
use carehub_platform::keys::{KeyName, KeySource, KeyVersions, StaticKeys};
use sqlx::migrate::Migrator;

/// A service with no tables of its own: only the platform schema.
static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

fn envelope(db: &TestDatabase, service: &str, keys: &Arc<StaticKeys>) -> Envelope {
    let keys: Arc<dyn KeySource> = keys.clone();
    Envelope::new(service, db.pool.clone(), keys, CryptoConfig::default()).unwrap()
}

#[tokio::test]
async fn round_trip_and_cached_reads_touch_no_database() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let keys = Arc::new(StaticKeys::generate());
    let env = envelope(&db, "identity", &keys);
    let field = Field::new("users", "email", "row-1", "patient-1");

    let ct = env.encrypt_str(&field, "ann@example.com").await.unwrap();
    assert!(
        !ct.windows(3).any(|w| w == b"ann"),
        "plaintext visible in ciphertext"
    );
    let again = env.encrypt_str(&field, "ann@example.com").await.unwrap();
    assert_ne!(ct, again, "nonces must differ");

    let before = env.counters();
    for _ in 0..50 {
        assert_eq!(
            env.decrypt_string(&field, &ct).await.unwrap(),
            "ann@example.com"
        );
        env.encrypt_str(&field, "x").await.unwrap();
    }
    assert_eq!(
        env.counters().db_calls,
        before.db_calls,
        "cached keys must not hit the database"
    );

    // Another replica loads the key once, then reads from memory.
    let replica = envelope(&db, "identity", &keys);
    assert_eq!(
        replica.decrypt_string(&field, &again).await.unwrap(),
        "ann@example.com"
    );
    let loaded = replica.counters();
    assert_eq!(loaded.unwraps, 1);
    replica.decrypt(&field, &ct).await.unwrap();
    assert_eq!(replica.counters(), loaded);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn ciphertext_moved_elsewhere_fails_to_decrypt() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let keys = Arc::new(StaticKeys::generate());
    let env = envelope(&db, "identity", &keys);
    let home = Field::new("users", "email", "row-1", "patient-1");
    let ct = env.encrypt_str(&home, "ann@example.com").await.unwrap();
    // The other subject has a data key of the same version: the ciphertext names a key that
    // exists, and fails because that key (and the bound subject) is not its own.
    env.encrypt_str(
        &Field::new("users", "email", "row-2", "patient-2"),
        "bob@example.com",
    )
    .await
    .unwrap();

    for elsewhere in [
        Field::new("users", "email", "row-2", "patient-1"),
        Field::new("users", "phone", "row-1", "patient-1"),
        Field::new("accounts", "email", "row-1", "patient-1"),
        Field::new("users", "email", "row-1", "patient-2"),
    ] {
        let err = env.decrypt(&elsewhere, &ct).await.unwrap_err();
        assert!(
            matches!(err, CryptoError::Authentication { .. }),
            "{elsewhere:?}: {err}"
        );
        let message = err.to_string();
        assert!(message.contains("failed authentication"), "{message}");
        assert!(
            !message.contains("ann@"),
            "no plaintext in errors: {message}"
        );
    }

    // Another service holding a key for the same subject (same database, here) cannot read it.
    let billing = envelope(&db, "billing", &keys);
    billing.encrypt_str(&home, "other").await.unwrap();
    let err = billing.decrypt(&home, &ct).await.unwrap_err();
    assert!(matches!(err, CryptoError::Authentication { .. }), "{err}");

    assert_eq!(
        env.decrypt_string(&home, &ct).await.unwrap(),
        "ann@example.com"
    );
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn altered_bytes_and_wrong_key_versions_fail_clearly() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let keys = Arc::new(StaticKeys::generate());
    let env = envelope(&db, "identity", &keys);
    let field = Field::new("users", "name", "row-1", "patient-1");
    let ct = env.encrypt_str(&field, "Ann Example").await.unwrap();
    assert_eq!(
        carehub_platform::crypto::format::header(&ct)
            .unwrap()
            .key_version,
        1
    );

    let mut flipped = ct.clone();
    *flipped.last_mut().unwrap() ^= 0x01;
    let err = env.decrypt(&field, &flipped).await.unwrap_err();
    assert!(matches!(err, CryptoError::Authentication { .. }), "{err}");

    let mut other_version = ct.clone();
    other_version[4] = 2;
    let err = env.decrypt(&field, &other_version).await.unwrap_err();
    assert!(
        matches!(err, CryptoError::UnknownDataKey { version: 2, .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "subject patient-1 has no data key version 2"
    );

    let mut other_format = ct.clone();
    other_format[0] = 9;
    let err = env.decrypt(&field, &other_format).await.unwrap_err();
    assert!(err.to_string().contains("unknown format version"), "{err}");
    let err = env.decrypt(&field, &ct[..20]).await.unwrap_err();
    assert!(err.to_string().contains("too short"), "{err}");

    // The key row claims another KEK version than the one it was wrapped with.
    let mut kek = keys.versions(KeyName::Kek).unwrap().as_ref().clone();
    kek.rotate();
    let rotated = Arc::new(StaticKeys::generate().with(KeyName::Kek, kek));
    sqlx::query("UPDATE carehub_platform.data_keys SET kek_version = 2")
        .execute(&db.pool)
        .await
        .unwrap();
    let err = envelope(&db, "identity", &rotated)
        .decrypt(&field, &ct)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CryptoError::Unwrap {
                version: 1,
                kek_version: 2,
                ..
            }
        ),
        "{err}"
    );

    // The key row names a KEK version this service does not hold.
    sqlx::query("UPDATE carehub_platform.data_keys SET kek_version = 7")
        .execute(&db.pool)
        .await
        .unwrap();
    let err = envelope(&db, "identity", &rotated)
        .decrypt(&field, &ct)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "key source: key `kek` has no version 7");
    assert_eq!(err.to_status().code(), tonic::Code::Unavailable);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn shredding_makes_one_subject_unreadable_and_leaves_others() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let keys = Arc::new(StaticKeys::generate());
    let env = envelope(&db, "records", &keys);
    // A replica that caches nothing for long, to see another replica's shred at once.
    let replica = Envelope::new(
        "records",
        db.pool.clone(),
        keys.clone(),
        CryptoConfig {
            cache_ttl_secs: 0,
            ..CryptoConfig::default()
        },
    )
    .unwrap();
    let a = Field::new("notes", "body", "note-1", "patient-a");
    let b = Field::new("notes", "body", "note-2", "patient-b");
    let ct_a = env.encrypt_str(&a, "a's note").await.unwrap();
    let ct_b = env.encrypt_str(&b, "b's note").await.unwrap();
    assert_eq!(replica.decrypt_string(&a, &ct_a).await.unwrap(), "a's note");

    assert_eq!(env.shred("patient-a").await.unwrap(), 1);

    for reader in [&env, &replica, &envelope(&db, "records", &keys)] {
        let err = reader.decrypt(&a, &ct_a).await.unwrap_err();
        assert!(matches!(err, CryptoError::Shredded { .. }), "{err}");
        assert!(err.to_string().contains("crypto-shredded"), "{err}");
        assert_eq!(reader.decrypt_string(&b, &ct_b).await.unwrap(), "b's note");
    }
    let err = env.encrypt_str(&a, "new note").await.unwrap_err();
    assert!(matches!(err, CryptoError::Shredded { .. }), "{err}");
    assert_eq!(err.to_status().code(), tonic::Code::FailedPrecondition);

    assert_eq!(env.shred("patient-a").await.unwrap(), 0, "idempotent");
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM carehub_platform.data_keys WHERE subject = 'patient-a'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "the key material itself is gone");
    let stats = carehub_platform::crypto::data_key_stats(&db.pool, "records")
        .await
        .unwrap();
    assert_eq!((stats.subjects, stats.shredded_subjects), (1, 1));
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn blind_index_finds_rows_by_normalized_value_across_key_rotation() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    sqlx::query(
        "CREATE TABLE people (id text PRIMARY KEY, email bytea NOT NULL, email_bidx bytea NOT NULL UNIQUE)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut bi = KeyVersions::generate();
    let keys = Arc::new(StaticKeys::generate().with(KeyName::BlindIndex, bi.clone()));
    let env = envelope(&db, "identity", &keys);

    async fn insert(env: &Envelope, pool: &sqlx::PgPool, id: &str, email: &str) {
        let ct = env
            .encrypt_str(&Field::new("people", "email", id, id), email)
            .await
            .unwrap();
        let bidx = env
            .blind_index()
            .compute("people.email", Normalization::CaseInsensitive, email)
            .unwrap();
        sqlx::query("INSERT INTO people VALUES ($1, $2, $3)")
            .bind(id)
            .bind(ct)
            .bind(bidx)
            .execute(pool)
            .await
            .unwrap();
    }
    async fn find(env: &Envelope, pool: &sqlx::PgPool, email: &str) -> Option<(String, String)> {
        let candidates = env
            .blind_index()
            .candidates("people.email", Normalization::CaseInsensitive, email)
            .unwrap();
        let row: Option<(String, Vec<u8>)> =
            sqlx::query_as("SELECT id, email FROM people WHERE email_bidx = ANY($1)")
                .bind(candidates)
                .fetch_optional(pool)
                .await
                .unwrap();
        let (id, ct) = row?;
        let email = env
            .decrypt_string(&Field::new("people", "email", &id, &id), &ct)
            .await
            .unwrap();
        Some((id, email))
    }

    insert(&env, &db.pool, "u1", "Ann@Example.com").await;
    insert(&env, &db.pool, "u2", "bob@example.com").await;
    assert_eq!(
        find(&env, &db.pool, "  ann@EXAMPLE.com ").await,
        Some(("u1".into(), "Ann@Example.com".into()))
    );
    assert_eq!(find(&env, &db.pool, "carol@example.com").await, None);
    // The unique constraint on the index enforces uniqueness of the normalized value.
    let dup = env
        .blind_index()
        .compute(
            "people.email",
            Normalization::CaseInsensitive,
            "ANN@example.com",
        )
        .unwrap();
    let clash = sqlx::query("INSERT INTO people VALUES ('u3', '\\x00', $1)")
        .bind(dup)
        .execute(&db.pool)
        .await;
    assert!(clash.is_err());

    // After the blind-index key rotates, old rows are still found and new rows use version 2.
    bi.rotate();
    let rotated = Arc::new(
        StaticKeys::generate()
            .with(
                KeyName::Kek,
                keys.versions(KeyName::Kek).unwrap().as_ref().clone(),
            )
            .with(KeyName::BlindIndex, bi),
    );
    let env2 = envelope(&db, "identity", &rotated);
    insert(&env2, &db.pool, "u4", "dan@example.com").await;
    assert_eq!(
        find(&env2, &db.pool, "ANN@example.com").await.unwrap().0,
        "u1"
    );
    assert_eq!(
        find(&env2, &db.pool, "Dan@Example.com").await.unwrap().0,
        "u4"
    );
    let stored: Vec<u8> = sqlx::query_scalar("SELECT email_bidx FROM people WHERE id = 'u4'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        carehub_platform::crypto::BlindIndexer::version_of(&stored),
        Some(2)
    );
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_data_key_survives_a_shred_racing_with_its_creation() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let keys = Arc::new(StaticKeys::generate());
    for round in 0..10 {
        let subject = format!("racer-{round}");
        // Separate replicas: each creates or reserves the key on its own.
        let writers: Vec<Envelope> = (0..3).map(|_| envelope(&db, "records", &keys)).collect();
        let shredder = envelope(&db, "records", &keys);
        let mut tasks = Vec::new();
        for env in writers {
            let subject = subject.clone();
            tasks.push(tokio::spawn(async move {
                env.encrypt_str(&Field::new("notes", "body", "n", &subject), "x")
                    .await
                    .err()
            }));
        }
        let shred = {
            let subject = subject.clone();
            tokio::spawn(async move { shredder.shred(&subject).await.unwrap() })
        };
        for task in tasks {
            if let Some(err) = task.await.unwrap() {
                assert!(matches!(err, CryptoError::Shredded { .. }), "{err}");
            }
        }
        shred.await.unwrap();
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM carehub_platform.data_keys WHERE subject = $1",
        )
        .bind(&subject)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(left, 0, "round {round}: a key outlived the shred");
    }
    db.drop_database().await.unwrap();
}
