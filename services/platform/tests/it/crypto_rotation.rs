#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Key lifecycle against a real PostgreSQL: KEK rotation and resumable rewrap, data-key
//! rollover at the use limit, and concurrent encryption by several replicas for one subject.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use carehub_platform::crypto::{
    data_key_stats, rewrap, rewrap_in_batches, CryptoConfig, Envelope, Field,
};
use carehub_platform::db::TestDatabase;
use carehub_platform::keys::{KeyName, KeySource, KeyVersions, StaticKeys};
use sqlx::migrate::Migrator;

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

fn envelope(db: &TestDatabase, keys: Arc<dyn KeySource>, config: CryptoConfig) -> Envelope {
    Envelope::new("records", db.pool.clone(), keys, config).unwrap()
}

async fn key_rows(db: &TestDatabase, subject: &str) -> Vec<(i32, i32, i64)> {
    sqlx::query_as(
        "SELECT version, kek_version, uses FROM carehub_platform.data_keys
         WHERE service = 'records' AND subject = $1 ORDER BY version",
    )
    .bind(subject)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn kek_rotation_keeps_old_data_readable_and_rewrap_resumes() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let mut kek = KeyVersions::generate();
    let v1_keys: Arc<dyn KeySource> =
        Arc::new(StaticKeys::generate().with(KeyName::Kek, kek.clone()));
    let before = envelope(&db, v1_keys, CryptoConfig::default());
    let mut written = Vec::new();
    for i in 0..5 {
        let subject = format!("patient-{i}");
        let ct = before
            .encrypt_str(
                &Field::new("notes", "body", &subject, &subject),
                &format!("note {i}"),
            )
            .await
            .unwrap();
        written.push((subject, ct));
    }

    // Rotate: old data still reads (its keys are under KEK v1), new subjects get KEK v2.
    assert_eq!(kek.rotate(), 2);
    let v2_keys: Arc<dyn KeySource> =
        Arc::new(StaticKeys::generate().with(KeyName::Kek, kek.clone()));
    let after = envelope(&db, v2_keys.clone(), CryptoConfig::default());
    for (i, (subject, ct)) in written.iter().enumerate() {
        let field = Field::new("notes", "body", subject, subject);
        assert_eq!(
            after.decrypt_string(&field, ct).await.unwrap(),
            format!("note {i}")
        );
    }
    let field = Field::new("notes", "body", "patient-new", "patient-new");
    let newest = after.encrypt_str(&field, "new note").await.unwrap();
    written.push(("patient-new".into(), newest));
    let stats = data_key_stats(&db.pool, "records").await.unwrap();
    assert_eq!(stats.by_kek_version, vec![(1, 5), (2, 1)]);

    let wrapped_before: BTreeMap<String, Vec<u8>> =
        sqlx::query_as("SELECT subject, wrapped_key FROM carehub_platform.data_keys")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();

    // Interrupted after the first batch of two ...
    let mut seen = Vec::new();
    let partial = rewrap_in_batches(&db.pool, "records", v2_keys.as_ref(), 2, |p| {
        seen.push(*p);
        ControlFlow::Break(())
    })
    .await
    .unwrap();
    assert_eq!(
        (partial.total, partial.rewrapped, partial.done),
        (5, 2, false)
    );
    assert_eq!(seen.len(), 1);
    let stats = data_key_stats(&db.pool, "records").await.unwrap();
    assert_eq!(stats.by_kek_version, vec![(1, 3), (2, 3)]);

    // ... resumed to the end, with progress after every batch ...
    let mut reports = Vec::new();
    let rest = rewrap_in_batches(&db.pool, "records", v2_keys.as_ref(), 2, |p| {
        reports.push((p.rewrapped, p.total, p.done));
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    assert_eq!((rest.total, rest.rewrapped, rest.done), (3, 3, true));
    assert_eq!(reports, vec![(2, 3, false), (3, 3, false), (3, 3, true)]);
    let stats = data_key_stats(&db.pool, "records").await.unwrap();
    assert_eq!(stats.by_kek_version, vec![(2, 6)]);

    // ... and idempotent.
    let again = rewrap(&db.pool, "records", v2_keys.as_ref(), |_| {
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    assert_eq!((again.total, again.rewrapped, again.done), (0, 0, true));

    let wrapped_after: BTreeMap<String, Vec<u8>> =
        sqlx::query_as("SELECT subject, wrapped_key FROM carehub_platform.data_keys")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    for (subject, wrapped) in &wrapped_before {
        let changed = wrapped_after[subject] != *wrapped;
        assert_eq!(changed, subject != "patient-new", "{subject}");
    }

    // Only KEK v2 is needed now: a key source that lost v1 reads everything.
    let mut only_v2 = BTreeMap::new();
    only_v2.insert(2, kek.get(2).unwrap());
    let only_v2: Arc<dyn KeySource> = Arc::new(StaticKeys::generate().with(
        KeyName::Kek,
        KeyVersions::from_versions(2, only_v2).unwrap(),
    ));
    let reader = envelope(&db, only_v2, CryptoConfig::default());
    for (subject, ct) in &written {
        let field = Field::new("notes", "body", subject, subject);
        reader.decrypt(&field, ct).await.unwrap();
    }
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn data_keys_roll_over_at_the_use_limit() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let keys: Arc<dyn KeySource> = Arc::new(StaticKeys::generate());
    let config = CryptoConfig {
        max_uses_per_key: 3,
        reservation_batch: 1,
        ..CryptoConfig::default()
    };
    let env = envelope(&db, keys.clone(), config);
    let field = Field::new("notes", "body", "n1", "patient-1");
    let mut written = Vec::new();
    for i in 0..7 {
        written.push(env.encrypt_str(&field, &format!("v{i}")).await.unwrap());
    }
    let versions: Vec<u32> = written
        .iter()
        .map(|ct| {
            carehub_platform::crypto::format::header(ct)
                .unwrap()
                .key_version
        })
        .collect();
    assert_eq!(versions, vec![1, 1, 1, 2, 2, 2, 3]);
    assert_eq!(
        key_rows(&db, "patient-1").await,
        vec![(1, 1, 3), (2, 1, 3), (3, 1, 1)]
    );

    // Batched reservations never pass the limit either.
    let batched = envelope(
        &db,
        keys.clone(),
        CryptoConfig {
            max_uses_per_key: 5,
            reservation_batch: 2,
            ..CryptoConfig::default()
        },
    );
    let other = Field::new("notes", "body", "n2", "patient-2");
    for i in 0..11 {
        written.push(batched.encrypt_str(&other, &format!("w{i}")).await.unwrap());
    }
    let rows = key_rows(&db, "patient-2").await;
    assert!(rows.iter().all(|(_, _, uses)| *uses <= 5), "{rows:?}");
    assert_eq!(rows.iter().map(|r| r.2).sum::<i64>(), 12, "{rows:?}");

    let reader = envelope(&db, keys, CryptoConfig::default());
    for (i, ct) in written.iter().enumerate() {
        let f = if i < 7 { &field } else { &other };
        reader.decrypt(f, ct).await.unwrap();
    }
    db.drop_database().await.unwrap();
}

/// Several replicas (separate caches, one database) encrypting for one subject at once.
async fn encrypt_in_parallel(
    db: &TestDatabase,
    keys: &Arc<dyn KeySource>,
    config: CryptoConfig,
    replicas: usize,
    per_replica: usize,
) -> (Vec<Envelope>, Vec<Vec<u8>>) {
    let envs: Vec<Envelope> = (0..replicas)
        .map(|_| envelope(db, keys.clone(), config.clone()))
        .collect();
    let mut tasks = Vec::new();
    for env in &envs {
        for i in 0..per_replica {
            let env = env.clone();
            tasks.push(tokio::spawn(async move {
                let field = Field::new("notes", "body", "n1", "patient-1");
                env.encrypt_str(&field, &format!("note {i}")).await.unwrap()
            }));
        }
    }
    let mut written = Vec::new();
    for task in tasks {
        written.push(task.await.unwrap());
    }
    (envs, written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_encryptions_share_one_key_and_count_every_use() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let keys: Arc<dyn KeySource> = Arc::new(StaticKeys::generate());
    let exact = CryptoConfig {
        reservation_batch: 1,
        ..CryptoConfig::default()
    };
    let (envs, written) = encrypt_in_parallel(&db, &keys, exact, 4, 50).await;
    assert_eq!(key_rows(&db, "patient-1").await, vec![(1, 1, 200)]);
    let created: u64 = envs.iter().map(|e| e.counters().keys_created).sum();
    assert_eq!(created, 1, "exactly one replica created the key");
    let field = Field::new("notes", "body", "n1", "patient-1");
    for ct in &written {
        envs[3].decrypt(&field, ct).await.unwrap();
    }
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_encryptions_across_rollovers_never_exceed_the_limit() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let keys: Arc<dyn KeySource> = Arc::new(StaticKeys::generate());
    // Small enough for several rollovers in 200 encryptions, large enough (ten batches a key)
    // that four replicas on a loaded machine do not starve each other into `Contended`.
    let config = CryptoConfig {
        max_uses_per_key: 30,
        reservation_batch: 3,
        ..CryptoConfig::default()
    };
    let (envs, written) = encrypt_in_parallel(&db, &keys, config, 4, 50).await;
    let rows = key_rows(&db, "patient-1").await;
    let versions: Vec<i32> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        versions,
        (1..=rows.len() as i32).collect::<Vec<_>>(),
        "no gaps: {rows:?}"
    );
    assert!(rows.len() >= 7, "200 encryptions roll over: {rows:?}");
    assert!(rows.iter().all(|r| r.2 <= 30), "{rows:?}");
    let reserved: i64 = rows.iter().map(|r| r.2).sum();
    // Every encryption was reserved; at most one unused batch remains per replica.
    assert!(
        (200..=200 + 4 * 3).contains(&reserved),
        "reserved {reserved}"
    );
    let created: u64 = envs.iter().map(|e| e.counters().keys_created).sum();
    assert_eq!(
        created as usize,
        rows.len(),
        "each version was created once"
    );
    // Each key version encrypted at most as often as its row says.
    let mut used: BTreeMap<u32, i64> = BTreeMap::new();
    for ct in &written {
        *used
            .entry(
                carehub_platform::crypto::format::header(ct)
                    .unwrap()
                    .key_version,
            )
            .or_default() += 1;
    }
    for (version, _, uses) in &rows {
        assert!(
            used.get(&(*version as u32)).copied().unwrap_or(0) <= *uses,
            "{used:?} {rows:?}"
        );
    }
    let reader = envelope(&db, keys, CryptoConfig::default());
    let field = Field::new("notes", "body", "n1", "patient-1");
    for ct in &written {
        reader.decrypt(&field, ct).await.unwrap();
    }
    db.drop_database().await.unwrap();
}
