#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The audit queue and its sequencer against a real PostgreSQL: writers hold no lock that
//! other writers or the sequencer wait for; a sequencer killed mid-batch, sequencers racing
//! each other and transactions committing out of order still give every committed event
//! exactly one place in one verifiable chain; the queue gauges and the sealing lag.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use carehub_platform::admin::Metrics;
use carehub_platform::audit::sequencer::{self, Sequencer, Turn};
use carehub_platform::audit::{self, Action, AuditEvent, Purpose, VerifyRange};
use carehub_platform::db::TestDatabase;
use carehub_platform::keys::StaticKeys;
use secrecy::ExposeSecret as _;
use sqlx::migrate::Migrator;
use sqlx::{Connection as _, PgPool};
use uuid::Uuid;

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;
const SERVICE: &str = "records";

fn event() -> AuditEvent {
    AuditEvent::new(
        "records.note.read",
        Action::Read,
        Purpose::Treatment,
        "note",
        Uuid::now_v7(),
    )
    .subject(Uuid::now_v7())
    .actor_user(Uuid::now_v7())
    .actor_role("provider")
}

/// Queues one event in a committed transaction of its own; returns its id.
async fn queue_one(pool: &PgPool) -> Uuid {
    let e = event();
    let mut tx = pool.begin().await.unwrap();
    audit::record(&mut tx, &e).await.unwrap();
    tx.commit().await.unwrap();
    e.event_id
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn sealed_ids(pool: &PgPool) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT event_id FROM carehub_platform.audit_events ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The chain holds exactly `expected`, once each, as seq 1..=n, verified, and nothing is queued.
async fn assert_sealed_exactly_once(pool: &PgPool, expected: &HashSet<Uuid>) {
    let ids = sealed_ids(pool).await;
    let distinct: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(ids.len(), distinct.len(), "an event was sealed twice");
    assert_eq!(&distinct, expected, "sealed events differ from committed");
    let (n, min, max): (i64, Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT count(*), min(seq), max(seq) FROM carehub_platform.audit_events")
            .fetch_one(pool)
            .await
            .unwrap();
    let n_expected = expected.len() as i64;
    assert_eq!(n, n_expected);
    if n > 0 {
        assert_eq!((min, max), (Some(1), Some(n_expected)), "gap-free 1..=n");
    }
    assert_eq!(
        scalar(pool, "SELECT count(*) FROM carehub_platform.audit_queue").await,
        0,
        "queue drained"
    );
    let report = audit::verify(
        pool,
        &StaticKeys::generate(),
        SERVICE,
        &VerifyRange::default(),
    )
    .await
    .unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.rows_checked, expected.len() as u64);
}

#[tokio::test]
async fn a_sequencer_killed_mid_batch_leaves_its_events_to_the_next_exactly_once() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let mut expected = HashSet::new();
    for _ in 0..50 {
        expected.insert(queue_one(&db.pool).await);
    }
    // A sequencer takes a batch of 20 and dies before committing: its backend is killed.
    let mut doomed = sqlx::PgConnection::connect(db.url.expose_secret())
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut doomed)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut doomed).await.unwrap();
    let sealed = sequencer::seal_batch_in(&mut doomed, 20, Turn::Wait)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((sealed.events, sealed.head_seq), (20, 20));
    // Meanwhile another replica's background sequencer finds the head busy and stands by.
    assert_eq!(
        sequencer::seal_batch(&db.pool, 20, Turn::SkipIfBusy)
            .await
            .unwrap(),
        None
    );
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(killed);
    drop(doomed);
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM carehub_platform.audit_events"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT seq FROM carehub_platform.audit_chain_head"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM carehub_platform.audit_queue"
        )
        .await,
        50
    );
    // The next sequencer seals all fifty, starting where the chain really ends.
    assert_eq!(audit::seal_all(&db.pool).await.unwrap(), 50);
    assert_sealed_exactly_once(&db.pool, &expected).await;
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_sequencers_and_crashing_ones_never_fork_skip_or_seal_twice() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Background sequencers of three replicas (small batches, so that turns interleave) ...
    let mut sequencers = Vec::new();
    for _ in 0..3 {
        let (pool, stop) = (db.pool.clone(), stop.clone());
        sequencers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                sequencer::seal_batch(&pool, 7, Turn::SkipIfBusy)
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    // ... one that waits for its turn, and one that keeps dying mid-batch.
    {
        let (pool, waiting_stop) = (db.pool.clone(), stop.clone());
        sequencers.push(tokio::spawn(async move {
            while !waiting_stop.load(Ordering::SeqCst) {
                sequencer::seal_batch(&pool, 13, Turn::Wait).await.unwrap();
            }
        }));
        let (pool, crashing_stop) = (db.pool.clone(), stop.clone());
        sequencers.push(tokio::spawn(async move {
            while !crashing_stop.load(Ordering::SeqCst) {
                let mut tx = pool.begin().await.unwrap();
                sequencer::seal_batch_in(&mut tx, 11, Turn::Wait)
                    .await
                    .unwrap();
                tx.rollback().await.unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    let writers: Vec<_> = (0..20)
        .map(|w| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                let mut committed = Vec::new();
                for i in 0..30 {
                    let e = event();
                    let mut tx = pool.begin().await.unwrap();
                    audit::record(&mut tx, &e).await.unwrap();
                    // A second event in one transaction, now and then.
                    let e2 = event();
                    if i % 5 == 0 {
                        audit::record(&mut tx, &e2).await.unwrap();
                    }
                    // Every seventh transaction rolls back: its events never reach the chain.
                    if (w + i) % 7 == 3 {
                        tx.rollback().await.unwrap();
                    } else {
                        tx.commit().await.unwrap();
                        committed.push(e.event_id);
                        if i % 5 == 0 {
                            committed.push(e2.event_id);
                        }
                    }
                }
                committed
            })
        })
        .collect();
    let mut expected = HashSet::new();
    for w in writers {
        expected.extend(w.await.unwrap());
    }
    stop.store(true, Ordering::SeqCst);
    for s in sequencers {
        s.await.unwrap();
    }
    audit::seal_all(&db.pool).await.unwrap();
    assert!(expected.len() > 500, "{}", expected.len());
    assert_sealed_exactly_once(&db.pool, &expected).await;
    let forks = scalar(
        &db.pool,
        "SELECT count(*) - count(DISTINCT prev_hash) FROM carehub_platform.audit_events",
    )
    .await;
    assert_eq!(forks, 0, "two rows share a predecessor");
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn an_open_writer_blocks_neither_other_writers_nor_the_sequencer_and_is_sealed_after_it_commits(
) {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    // The first writer queues (the lower queue id) and stays open.
    let slow = event();
    let mut open = db.pool.begin().await.unwrap();
    audit::record(&mut open, &slow).await.unwrap();
    // Another writer queues and commits without waiting for it (a lock would hang here).
    let quick = tokio::time::timeout(Duration::from_secs(10), queue_one(&db.pool))
        .await
        .expect("a second writer waited for the first one's transaction");
    // The sequencer seals what is committed, passing over the open transaction's event.
    let sealed = tokio::time::timeout(Duration::from_secs(10), audit::seal_all(&db.pool))
        .await
        .expect("the sequencer waited for an open writer")
        .unwrap();
    assert_eq!(sealed, 1);
    assert_eq!(sealed_ids(&db.pool).await, vec![quick]);
    // Committed later, the older event is not skipped: it is sealed next.
    open.commit().await.unwrap();
    assert_eq!(audit::seal_all(&db.pool).await.unwrap(), 1);
    assert_eq!(sealed_ids(&db.pool).await, vec![quick, slow.event_id]);
    assert_sealed_exactly_once(&db.pool, &[quick, slow.event_id].into()).await;
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn an_event_queued_twice_is_sealed_once() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let e = event();
    // A writer retried after a lost commit acknowledgement: the same event, twice in the queue,
    // once in one batch and once more after it was sealed.
    for _ in 0..2 {
        let mut tx = db.pool.begin().await.unwrap();
        audit::record(&mut tx, &e).await.unwrap();
        tx.commit().await.unwrap();
    }
    let first = sequencer::seal_batch(&db.pool, 100, Turn::Wait)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.events, first.duplicates), (1, 1));
    let mut tx = db.pool.begin().await.unwrap();
    audit::record(&mut tx, &e).await.unwrap();
    tx.commit().await.unwrap();
    let again = sequencer::seal_batch(&db.pool, 100, Turn::Wait)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.events, again.duplicates, again.head_seq), (0, 1, 1));
    // An empty queue: nothing sealed, and the head as it stands.
    let idle = sequencer::seal_batch(&db.pool, 100, Turn::Wait)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((idle.events, idle.duplicates, idle.head_seq), (0, 0, 1));
    assert_sealed_exactly_once(&db.pool, &[e.event_id].into()).await;
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn the_background_sequencer_seals_and_exports_queue_depth_age_and_sealed_count() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let metrics = Metrics::new(SERVICE);
    let mut expected = HashSet::new();
    for _ in 0..25 {
        expected.insert(queue_one(&db.pool).await);
    }
    // An event queued an hour ago that nobody sealed: sealing lag.
    sqlx::query("UPDATE carehub_platform.audit_queue SET queued_at = now() - interval '1 hour' WHERE id = (SELECT min(id) FROM carehub_platform.audit_queue)")
        .execute(&db.pool)
        .await
        .unwrap();
    let lag = sequencer::sealing_lag(&db.pool, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((lag.queued, lag.older_than_bound), (25, 1));
    assert!(lag.oldest_age_secs >= 3600.0, "{lag:?}");
    let state = sequencer::queue_state(&db.pool).await.unwrap();
    assert_eq!(state.depth, 25);
    assert!(state.oldest_age_secs >= 3600.0, "{state:?}");

    let running = tokio::spawn(
        Sequencer {
            service: SERVICE,
            pool: db.pool.clone(),
            batch: 10,
            interval: Duration::from_millis(10),
            metrics: Some(metrics.clone()),
        }
        .run(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics.render();
        if text.contains(r#"carehub_audit_sealed_total{service="records"} 25"#)
            && text.contains(r#"carehub_audit_queue_depth{service="records"} 0"#)
        {
            assert!(
                text.contains(r#"carehub_audit_queue_oldest_age_seconds{service="records"} 0"#),
                "{text}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sequencer did not seal the queue: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.abort();
    assert_sealed_exactly_once(&db.pool, &expected).await;
    let lag = sequencer::sealing_lag(&db.pool, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((lag.queued, lag.older_than_bound), (0, 0));
    db.drop_database().await.unwrap();
}

/// `n` events queued with one insert each 100 (as group-committed reads are); their ids.
async fn queue_many(pool: &PgPool, events: &[AuditEvent]) {
    let mut conn = pool.acquire().await.unwrap();
    for chunk in events.chunks(100) {
        let refs: Vec<&AuditEvent> = chunk.iter().collect();
        audit::record_all(&mut conn, &refs).await.unwrap();
    }
}

#[tokio::test]
async fn seal_all_goes_on_past_full_batches_even_of_duplicates_only() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    // More than one batch: seal_all must not stop after the first full one.
    let first: Vec<AuditEvent> = (0..1500).map(|_| event()).collect();
    queue_many(&db.pool, &first).await;
    assert_eq!(audit::seal_all(&db.pool).await.unwrap(), 1500);
    // A whole batch of repeats of sealed events, then new ones behind it: the batch of
    // duplicates is full, so seal_all goes on to the new events.
    queue_many(&db.pool, &first[..1000]).await;
    let second: Vec<AuditEvent> = (0..10).map(|_| event()).collect();
    queue_many(&db.pool, &second).await;
    assert_eq!(audit::seal_all(&db.pool).await.unwrap(), 10);
    let expected: HashSet<Uuid> = first.iter().chain(&second).map(|e| e.event_id).collect();
    assert_sealed_exactly_once(&db.pool, &expected).await;
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_queue_that_changes_under_the_sequencer_is_refused_and_nothing_is_sealed() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let mut expected = HashSet::new();
    for _ in 0..3 {
        expected.insert(queue_one(&db.pool).await);
    }
    audit::seal_all(&db.pool).await.unwrap();
    for _ in 0..5 {
        expected.insert(queue_one(&db.pool).await);
    }
    // Something (here a trigger) keeps one taken row from being moved off the queue.
    for sql in [
        "CREATE FUNCTION keep_one() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN IF OLD.id = (SELECT max(id) FROM carehub_platform.audit_queue) THEN RETURN NULL; END IF; RETURN OLD; END $$",
        "CREATE TRIGGER keep_one BEFORE DELETE ON carehub_platform.audit_queue
         FOR EACH ROW EXECUTE FUNCTION keep_one()",
    ] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
    let err = audit::seal_all(&db.pool).await.unwrap_err();
    match err {
        audit::AuditError::Corrupt { seq, reason } => {
            assert_eq!(seq, 4, "names the first position it would have sealed");
            assert!(
                reason.contains("5 queued events were taken but 4 moved"),
                "{reason}"
            );
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    // The batch rolled back whole: the chain still ends at 3, all five still queued.
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT seq FROM carehub_platform.audit_chain_head"
        )
        .await,
        3
    );
    assert_eq!(
        scalar(
            &db.pool,
            "SELECT count(*) FROM carehub_platform.audit_queue"
        )
        .await,
        5
    );
    sqlx::query("DROP TRIGGER keep_one ON carehub_platform.audit_queue")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(audit::seal_all(&db.pool).await.unwrap(), 5);
    assert_sealed_exactly_once(&db.pool, &expected).await;
    db.drop_database().await.unwrap();
}
