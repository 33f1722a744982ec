#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What auditing costs a mutating operation: one transaction inserting a row, without and with
//! `audit::record` in the same transaction (one queue row; no shared lock), against a real
//! PostgreSQL. Also 8 writers at once, which no longer take turns on the chain head, and the
//! sequencer's cost per batch of 1 000 events (read, hash, move, one head update, commit).
//!
//! Needs PostgreSQL (DATABASE_URL, default the local one); skips with a message without one.
//! Run: `cargo bench -p carehub-platform --bench audit`.

use std::time::{Duration, Instant};

use carehub_platform::audit::{self, Action, AuditEvent, Purpose};
use carehub_platform::db::TestDatabase;
use criterion::{criterion_group, criterion_main, Criterion};
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use uuid::Uuid;

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

const WRITERS: usize = 8;

async fn mutate(pool: &PgPool, audited: bool) {
    let id = Uuid::now_v7();
    let subject = Uuid::now_v7();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO items (id, subject) VALUES ($1, $2)")
        .bind(id)
        .bind(subject)
        .execute(&mut *tx)
        .await
        .unwrap();
    if audited {
        let event = AuditEvent::new(
            "bench.item.create",
            Action::Create,
            Purpose::Operations,
            "item",
            id,
        )
        .subject(subject)
        .actor_user(subject)
        .actor_role("provider");
        audit::record(&mut tx, &event).await.unwrap();
    }
    tx.commit().await.unwrap();
}

/// Events per sequencer batch measured.
const BATCH: u64 = 1000;

/// [`BATCH`] read events queued (what the sequencer then seals), 100 per insert.
async fn queue_batch(pool: &PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    for _ in 0..BATCH / 100 {
        let events: Vec<AuditEvent> = (0..100)
            .map(|_| {
                let id = Uuid::now_v7();
                AuditEvent::new(
                    "bench.item.read",
                    Action::Read,
                    Purpose::Operations,
                    "item",
                    id,
                )
                .actor_user(id)
            })
            .collect();
        let refs: Vec<&AuditEvent> = events.iter().collect();
        audit::record_all(&mut conn, &refs).await.unwrap();
    }
}

/// `n` transactions spread over [`WRITERS`] concurrent writers.
async fn concurrent(pool: &PgPool, audited: bool, n: u64) -> Duration {
    let start = Instant::now();
    let per = n.div_ceil(WRITERS as u64);
    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for _ in 0..per {
                    mutate(&pool, audited).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Per transaction, so the two variants compare directly.
    start
        .elapsed()
        .mul_f64(n as f64 / (per * WRITERS as u64) as f64)
}

fn audit_overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = match rt.block_on(TestDatabase::new(&NO_MIGRATIONS)) {
        Ok(db) => db,
        Err(err) => {
            eprintln!("audit bench skipped: no PostgreSQL ({err})");
            return;
        }
    };
    rt.block_on(
        sqlx::query("CREATE TABLE items (id uuid PRIMARY KEY, subject uuid NOT NULL)")
            .execute(&db.pool),
    )
    .unwrap();

    let mut group = c.benchmark_group("mutating_transaction");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("insert", |b| {
        b.iter(|| rt.block_on(mutate(&db.pool, false)))
    });
    group.bench_function("insert+audit", |b| {
        b.iter(|| rt.block_on(mutate(&db.pool, true)))
    });
    group.bench_function("insert_8_writers", |b| {
        b.iter_custom(|n| rt.block_on(concurrent(&db.pool, false, n)))
    });
    group.bench_function("insert+audit_8_writers", |b| {
        b.iter_custom(|n| rt.block_on(concurrent(&db.pool, true, n)))
    });
    group.finish();

    // The sequencer: one iteration seals a batch of 1 000 queued events (queueing them is not
    // timed); criterion reports the time per batch and the events per second.
    let mut group = c.benchmark_group("sequencer");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8))
        .throughput(criterion::Throughput::Elements(BATCH));
    group.bench_function("seal_batch_of_1000", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let mut timed = Duration::ZERO;
                for _ in 0..n {
                    audit::seal_all(&db.pool).await.unwrap();
                    queue_batch(&db.pool).await;
                    let start = Instant::now();
                    audit::seal_all(&db.pool).await.unwrap();
                    timed += start.elapsed();
                }
                timed
            })
        })
    });
    group.finish();

    rt.block_on(audit::seal_all(&db.pool)).unwrap();
    let report = rt
        .block_on(audit::verify(
            &db.pool,
            &carehub_platform::keys::StaticKeys::generate(),
            "bench",
            &audit::VerifyRange::default(),
        ))
        .unwrap();
    assert!(report.is_intact(), "{report:?}");
    eprintln!(
        "audit bench: {} events recorded, chain intact",
        report.rows_checked
    );
    rt.block_on(db.drop_database()).unwrap();
}

criterion_group!(benches, audit_overhead);
criterion_main!(benches);
