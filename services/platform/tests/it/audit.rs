#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The audit trail against a real PostgreSQL: events commit and roll back with the change they
//! describe; deleting, editing, reordering or truncating rows is found by the verifier, which
//! names the row; 20 concurrent writers keep one gap-free chain; checkpoints and the JSON-lines
//! sink.

use std::sync::Arc;

use carehub_platform::audit::{
    self, checkpoint, Action, AuditEvent, Outcome, ProblemKind, Purpose, Sink, VerifyRange,
};
use carehub_platform::db::TestDatabase;
use carehub_platform::keys::{KeySource, StaticKeys};
use secrecy::ExposeSecret as _;
use sqlx::migrate::Migrator;
use sqlx::Connection as _;
use uuid::Uuid;

/// A service with no tables of its own: only the platform schema.
static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

const SERVICE: &str = "records";

async fn db() -> TestDatabase {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    sqlx::query("CREATE TABLE notes (id uuid PRIMARY KEY, patient uuid NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    db
}

fn event(patient: Uuid, note: Uuid) -> AuditEvent {
    AuditEvent::new(
        "records.note.create",
        Action::Create,
        Purpose::Treatment,
        "note",
        note,
    )
    .subject(patient)
    .actor_user(Uuid::now_v7())
    .actor_role("provider")
}

/// A change and its audit event, in one transaction.
async fn create_note(pool: &sqlx::PgPool, patient: Uuid, commit: bool) -> Uuid {
    let note = Uuid::now_v7();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO notes VALUES ($1, $2)")
        .bind(note)
        .bind(patient)
        .execute(&mut *tx)
        .await
        .unwrap();
    audit::record(&mut tx, &event(patient, note)).await.unwrap();
    if commit {
        tx.commit().await.unwrap();
        // Concurrent callers race to seal here, as sequencers of several replicas would.
        audit::seal_all(pool).await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
    note
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn verify_all(pool: &sqlx::PgPool, keys: &dyn KeySource) -> audit::VerifyReport {
    audit::verify(pool, keys, SERVICE, &VerifyRange::default())
        .await
        .unwrap()
}

/// A database with `n` committed notes and their events.
async fn filled(n: usize) -> (TestDatabase, StaticKeys) {
    let db = db().await;
    let patient = Uuid::now_v7();
    for _ in 0..n {
        create_note(&db.pool, patient, true).await;
    }
    (db, StaticKeys::generate())
}

#[tokio::test]
async fn a_rolled_back_change_leaves_no_event_and_a_committed_one_exactly_one() {
    let db = db().await;
    let keys = StaticKeys::generate();
    let patient = Uuid::now_v7();

    let rolled_back = create_note(&db.pool, patient, false).await;
    assert_eq!(
        audit::seal_all(&db.pool).await.unwrap(),
        0,
        "nothing queued"
    );
    assert_eq!(count(&db.pool, "SELECT count(*) FROM notes").await, 0);
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM carehub_platform.audit_events"
        )
        .await,
        0
    );
    // The head did not move either: the next event gets seq 1, no gap.
    assert_eq!(
        count(
            &db.pool,
            "SELECT seq FROM carehub_platform.audit_chain_head"
        )
        .await,
        0
    );

    let committed = create_note(&db.pool, patient, true).await;
    let rows: Vec<(i64, String, Option<Uuid>)> = sqlx::query_as(
        "SELECT seq, entity_id, subject_id FROM carehub_platform.audit_events ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows, vec![(1, committed.to_string(), Some(patient))]);
    assert!(!rows.iter().any(|r| r.1 == rolled_back.to_string()));

    // A failed statement after the event (the change itself fails) takes the event with it.
    let mut tx = db.pool.begin().await.unwrap();
    audit::record(&mut tx, &event(patient, committed))
        .await
        .unwrap();
    let dup = sqlx::query("INSERT INTO notes VALUES ($1, $2)")
        .bind(committed)
        .bind(patient)
        .execute(&mut *tx)
        .await;
    assert!(dup.is_err(), "duplicate key must fail");
    drop(tx); // rolled back
    assert_eq!(
        audit::seal_all(&db.pool).await.unwrap(),
        0,
        "nothing queued"
    );
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM carehub_platform.audit_events"
        )
        .await,
        1
    );

    let report = verify_all(&db.pool, &keys).await;
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.rows_checked, 1);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn events_without_ids_only_are_refused() {
    let db = db().await;
    let mut e = event(Uuid::now_v7(), Uuid::now_v7());
    e.entity_id = "Jane Doe, DOB 1970-01-01".into();
    let mut tx = db.pool.begin().await.unwrap();
    let err = audit::record(&mut tx, &e).await.unwrap_err();
    assert!(err.to_string().contains("entity_id"), "{err}");
    drop(tx);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn deleting_a_row_is_detected_and_named() {
    let (db, keys) = filled(6).await;
    assert!(verify_all(&db.pool, &keys).await.is_intact());
    sqlx::query("DELETE FROM carehub_platform.audit_events WHERE seq = 3")
        .execute(&mut attacker(&db).await)
        .await
        .unwrap();
    let problem = verify_all(&db.pool, &keys).await.problem.unwrap();
    assert_eq!(
        (problem.seq, problem.kind),
        (3, ProblemKind::Missing),
        "{problem}"
    );
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn editing_a_row_is_detected_and_named() {
    let (db, keys) = filled(6).await;
    // Someone hides who read the chart.
    sqlx::query("UPDATE carehub_platform.audit_events SET actor_user_id = $1 WHERE seq = 4")
        .bind(Uuid::now_v7())
        .execute(&mut attacker(&db).await)
        .await
        .unwrap();
    let problem = verify_all(&db.pool, &keys).await.problem.unwrap();
    assert_eq!(
        (problem.seq, problem.kind),
        (4, ProblemKind::Altered),
        "{problem}"
    );

    // Editing a row and recomputing its own hash breaks the next link instead.
    let (db2, keys2) = filled(6).await;
    let e = fetch(&db2.pool, 2).await;
    let mut edited = e.event.clone();
    edited.outcome = Outcome::MinorFailure;
    let new_hash = audit::chain::event_hash(2, &edited, &e.client, &e.prev_hash);
    sqlx::query("UPDATE carehub_platform.audit_events SET outcome = 'minor_failure', hash = $1 WHERE seq = 2")
        .bind(&new_hash)
        .execute(&mut attacker(&db2).await)
        .await
        .unwrap();
    let problem = verify_all(&db2.pool, &keys2).await.problem.unwrap();
    assert_eq!(
        (problem.seq, problem.kind),
        (3, ProblemKind::BrokenLink),
        "{problem}"
    );
    db.drop_database().await.unwrap();
    db2.drop_database().await.unwrap();
}

/// A connection that tampers as an attacker with superuser rights would: the append-only
/// trigger is off for it (`session_replication_role = replica`, which only a superuser may set).
/// The application's role cannot do this (`the_application_role_cannot_update_or_delete_audit_rows`).
async fn attacker(db: &TestDatabase) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(db.url.expose_secret())
        .await
        .unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

async fn fetch(pool: &sqlx::PgPool, seq: i64) -> audit::ChainedEvent {
    let mut conn = pool.acquire().await.unwrap();
    audit::chain::load(&mut conn, seq).await.unwrap().unwrap()
}

#[tokio::test]
async fn reordering_rows_is_detected_and_named() {
    let (db, keys) = filled(6).await;
    // Swap rows 2 and 5 (their positions), keeping every row's own content and hash.
    let mut conn = attacker(&db).await;
    let mut tx = conn.begin().await.unwrap();
    for (from, to) in [(2, 1000), (5, 2), (1000, 5)] {
        sqlx::query("UPDATE carehub_platform.audit_events SET seq = $2 WHERE seq = $1")
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|_| panic!("move {from} -> {to}"));
    }
    tx.commit().await.unwrap();
    let problem = verify_all(&db.pool, &keys).await.problem.unwrap();
    assert_eq!(problem.seq, 2, "{problem}");
    assert_eq!(problem.kind, ProblemKind::Altered, "{problem}");
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn truncating_the_tail_is_detected_by_the_head_and_by_checkpoints() {
    let (db, keys) = filled(8).await;
    // Only the rows are cut: the chain head still points at 8.
    sqlx::query("DELETE FROM carehub_platform.audit_events WHERE seq > 6")
        .execute(&mut attacker(&db).await)
        .await
        .unwrap();
    let problem = verify_all(&db.pool, &keys).await.problem.unwrap();
    assert_eq!(
        (problem.seq, problem.kind),
        (7, ProblemKind::Truncated),
        "{problem}"
    );

    // A careful attacker also rewinds the head; the signed checkpoint at 10 still tells.
    let (db2, keys2) = filled(10).await;
    let cp = checkpoint::checkpoint_now(&db2.pool, &keys2, SERVICE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.seq, 10);
    assert!(verify_all(&db2.pool, &keys2).await.is_intact());
    let h7: Vec<u8> =
        sqlx::query_scalar("SELECT hash FROM carehub_platform.audit_events WHERE seq = 7")
            .fetch_one(&db2.pool)
            .await
            .unwrap();
    sqlx::query("DELETE FROM carehub_platform.audit_events WHERE seq > 7")
        .execute(&mut attacker(&db2).await)
        .await
        .unwrap();
    sqlx::query("UPDATE carehub_platform.audit_chain_head SET seq = 7, hash = $1")
        .bind(&h7)
        .execute(&db2.pool)
        .await
        .unwrap();
    let problem = verify_all(&db2.pool, &keys2).await.problem.unwrap();
    assert_eq!(
        (problem.seq, problem.kind),
        (8, ProblemKind::Truncated),
        "{problem}"
    );
    assert!(problem.detail.contains("8..=10"), "{problem}");

    // A forged checkpoint (signed with another key) is refused.
    sqlx::query("DELETE FROM carehub_platform.audit_checkpoints")
        .execute(&mut attacker(&db2).await)
        .await
        .unwrap();
    let forger = StaticKeys::generate();
    checkpoint::checkpoint_now(&db2.pool, &forger, SERVICE)
        .await
        .unwrap();
    let problem = verify_all(&db2.pool, &keys2).await.problem.unwrap();
    assert_eq!(
        (problem.seq, problem.kind),
        (7, ProblemKind::BadCheckpoint),
        "{problem}"
    );
    db.drop_database().await.unwrap();
    db2.drop_database().await.unwrap();
}

#[tokio::test]
async fn ranges_verify_their_part_and_its_link_in() {
    let (db, keys) = filled(12).await;
    checkpoint::checkpoint_now(&db.pool, &keys, SERVICE)
        .await
        .unwrap();
    let range = VerifyRange {
        from_seq: Some(4),
        to_seq: Some(9),
        ..VerifyRange::default()
    };
    let report = audit::verify(&db.pool, &keys, SERVICE, &range)
        .await
        .unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.rows_checked, 6);
    // Tampering outside the range is not this range's business; inside it is.
    sqlx::query("UPDATE carehub_platform.audit_events SET kind = 'x.y' WHERE seq IN (11, 6)")
        .execute(&mut attacker(&db).await)
        .await
        .unwrap();
    let report = audit::verify(&db.pool, &keys, SERVICE, &range)
        .await
        .unwrap();
    // What the CLI's exit code and AuditLog's `intact` are read from.
    assert!(!report.is_intact(), "{report:?}");
    let problem = report.problem.unwrap();
    assert_eq!(problem.seq, 6);
    // What an operator reads: the row and why.
    let shown = problem.to_string();
    assert!(
        shown.starts_with("row 6: ") && shown.ends_with(&problem.detail),
        "{shown}"
    );
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_writers_make_one_gap_free_chain() {
    let db = db().await;
    let keys = StaticKeys::generate();
    let per_writer = 15;
    let mut writers = Vec::new();
    for _ in 0..20 {
        let pool = db.pool.clone();
        writers.push(tokio::spawn(async move {
            let patient = Uuid::now_v7();
            for i in 0..per_writer {
                // Every third transaction rolls back: its events must leave no gap.
                create_note(&pool, patient, i % 3 != 2).await;
            }
        }));
    }
    // A checkpointer runs alongside, as in production.
    let cp_pool = db.pool.clone();
    let cp_keys = keys.clone();
    let checkpointer = tokio::spawn(async move {
        for _ in 0..20 {
            checkpoint::checkpoint_now(&cp_pool, &cp_keys, SERVICE)
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
    });
    for w in writers {
        w.await.unwrap();
    }
    checkpointer.await.unwrap();
    let committed = 20 * (0..per_writer).filter(|i| i % 3 != 2).count() as i64;
    let (n, min, max, distinct): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), min(seq), max(seq), count(DISTINCT prev_hash) FROM carehub_platform.audit_events",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((n, min, max), (committed, 1, committed), "gap-free 1..=n");
    assert_eq!(
        distinct, committed,
        "no two rows share a predecessor: no fork"
    );
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM notes").await,
        committed
    );
    let report = verify_all(&db.pool, &keys).await;
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.rows_checked, committed as u64);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn the_sink_ships_committed_events_once_in_order_with_checkpoints() {
    let (db, keys) = filled(3).await;
    create_note(&db.pool, Uuid::now_v7(), false).await; // never shipped
    checkpoint::checkpoint_now(&db.pool, &keys, SERVICE)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let sink = Sink::File(path.clone());
    assert_eq!(
        audit::sink::ship_once(&db.pool, SERVICE, &sink)
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        audit::sink::ship_once(&db.pool, SERVICE, &sink)
            .await
            .unwrap(),
        0
    );
    create_note(&db.pool, Uuid::now_v7(), true).await;
    assert_eq!(
        audit::sink::ship_once(&db.pool, SERVICE, &sink)
            .await
            .unwrap(),
        1
    );

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<_> = lines
        .iter()
        .filter(|l| l["type"] == "audit_event")
        .collect();
    let seqs: Vec<i64> = events.iter().map(|l| l["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert_eq!(events[0]["service"], SERVICE);
    assert_eq!(events[0]["action"], "create");
    assert_eq!(events[0]["purpose"], "treatment");
    assert_eq!(events[0]["hash"].as_str().unwrap().len(), 64);
    let cps: Vec<_> = lines
        .iter()
        .filter(|l| l["type"] == "audit_checkpoint")
        .collect();
    assert_eq!(cps.len(), 1);
    assert_eq!(cps[0]["seq"], 3);
    assert_eq!(cps[0]["signature"].as_str().unwrap().len(), 128);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn the_background_task_checkpoints_after_checkpoint_every_rows() {
    let (db, keys) = filled(5).await;
    let host = audit::AuditHost::new(
        SERVICE,
        db.pool.clone(),
        Arc::new(keys.clone()),
        audit::AuditConfig {
            checkpoint_every: 5,
            checkpoint_interval_secs: 3600,
            ..audit::AuditConfig::default()
        },
    );
    host.tick().await.unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    assert_eq!(checkpoint::latest(&mut conn).await.unwrap().unwrap().seq, 5);
    create_note(&db.pool, Uuid::now_v7(), true).await;
    host.tick().await.unwrap();
    // One new row is neither `checkpoint_every` rows nor an hour old.
    assert_eq!(checkpoint::latest(&mut conn).await.unwrap().unwrap().seq, 5);
    drop(conn);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verifying_while_writers_and_the_checkpointer_run_finds_no_false_tampering() {
    let db = db().await;
    let keys = StaticKeys::generate();
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                let patient = Uuid::now_v7();
                for _ in 0..30 {
                    create_note(&pool, patient, true).await;
                }
            })
        })
        .collect();
    let cp_pool = db.pool.clone();
    let cp_keys = keys.clone();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cp_done = done.clone();
    let checkpointer = tokio::spawn(async move {
        while !cp_done.load(std::sync::atomic::Ordering::SeqCst) {
            checkpoint::checkpoint_now(&cp_pool, &cp_keys, SERVICE)
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
    });
    let mut verified = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        let report = verify_all(&db.pool, &keys).await;
        assert!(report.is_intact(), "{report:?}");
        verified += 1;
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    checkpointer.await.unwrap();
    let report = verify_all(&db.pool, &keys).await;
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.rows_checked, 240);
    assert!(verified > 0);
    db.drop_database().await.unwrap();
}

/// Rewrites rows `from..=head` as someone who can write the database (but holds no signing key)
/// would after editing row `from`: every hash recomputed, every link and the head re-pointed, so
/// that the chain is consistent again. Only a signed checkpoint can tell.
async fn rewrite_from(db: &TestDatabase, from: i64) {
    let mut conn = attacker(db).await;
    let (head, _): (i64, Vec<u8>) =
        sqlx::query_as("SELECT seq, hash FROM carehub_platform.audit_chain_head")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let mut prev = fetch(&db.pool, from - 1).await.hash;
    for seq in from..=head {
        let mut e = fetch(&db.pool, seq).await;
        if seq == from {
            // Hide who did it.
            e.event.actor_user_id = Some(Uuid::now_v7());
        }
        let hash = audit::chain::event_hash(seq, &e.event, &e.client, &prev);
        sqlx::query(
            "UPDATE carehub_platform.audit_events SET actor_user_id = $2, prev_hash = $3, hash = $4
             WHERE seq = $1",
        )
        .bind(seq)
        .bind(e.event.actor_user_id)
        .bind(&prev)
        .bind(&hash)
        .execute(&mut conn)
        .await
        .unwrap();
        prev = hash;
    }
    sqlx::query("UPDATE carehub_platform.audit_chain_head SET hash = $1")
        .bind(&prev)
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_chain_rewritten_under_a_signed_checkpoint_is_a_checkpoint_mismatch() {
    let (db, keys) = filled(10).await;
    let cp = checkpoint::checkpoint_now(&db.pool, &keys, SERVICE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.seq, 10);
    rewrite_from(&db, 4).await;
    // The walk finds every row consistent: only the stored checkpoint disagrees.
    let problem = verify_all(&db.pool, &keys).await.problem.unwrap();
    assert_eq!(
        (problem.seq, problem.kind),
        (10, ProblemKind::CheckpointMismatch),
        "{problem}"
    );
    assert!(problem.detail.contains("stored checkpoint"), "{problem}");

    // With the stored checkpoints deleted too, the database alone verifies; the shipped copy
    // of the checkpoint still disagrees.
    sqlx::query("DELETE FROM carehub_platform.audit_checkpoints")
        .execute(&mut attacker(&db).await)
        .await
        .unwrap();
    assert!(verify_all(&db.pool, &keys).await.is_intact());
    let report = audit::verify_with(
        &db.pool,
        &keys,
        SERVICE,
        &VerifyRange::default(),
        std::slice::from_ref(&cp),
    )
    .await
    .unwrap();
    let problem = report.problem.unwrap();
    assert_eq!(
        (problem.seq, problem.kind),
        (10, ProblemKind::CheckpointMismatch),
        "{problem}"
    );
    assert!(problem.detail.contains("shipped checkpoint"), "{problem}");
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn shipped_checkpoints_catch_a_truncated_tail_with_a_rewound_head_and_no_stored_checkpoints()
{
    let (db, keys) = filled(10).await;
    checkpoint::checkpoint_now(&db.pool, &keys, SERVICE)
        .await
        .unwrap()
        .unwrap();
    // What the sink shipped, read back as `carehub audit verify --checkpoints` reads it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    audit::sink::ship_once(&db.pool, SERVICE, &Sink::File(path.clone()))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let shipped = audit::sink::read_checkpoints(&text, SERVICE).unwrap();
    assert_eq!(shipped.len(), 1);
    assert!(audit::sink::read_checkpoints(&text, "identity")
        .unwrap()
        .is_empty());
    assert!(audit::sink::read_checkpoints("not json\n", SERVICE).is_err());
    // Intact: the shipped checkpoint agrees; a range after it does not judge it.
    let report = audit::verify_with(&db.pool, &keys, SERVICE, &VerifyRange::default(), &shipped)
        .await
        .unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.checkpoints_checked, 2);
    let after = VerifyRange {
        from_seq: Some(11),
        ..VerifyRange::default()
    };
    let report = audit::verify_with(&db.pool, &keys, SERVICE, &after, &shipped)
        .await
        .unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.shipped_checkpoints_checked, 0);

    let mut conn = attacker(&db).await;
    sqlx::query("DELETE FROM carehub_platform.audit_events WHERE seq > 5")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("DELETE FROM carehub_platform.audit_checkpoints")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE carehub_platform.audit_chain_head
            SET seq = 5, hash = (SELECT hash FROM carehub_platform.audit_events WHERE seq = 5)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    // The database alone is fooled ...
    assert!(verify_all(&db.pool, &keys).await.is_intact());
    // ... the shipped checkpoint is not.
    let report = audit::verify_with(&db.pool, &keys, SERVICE, &VerifyRange::default(), &shipped)
        .await
        .unwrap();
    assert_eq!(report.shipped_checkpoints_checked, 1);
    let problem = report.problem.unwrap();
    assert_eq!(
        (problem.seq, problem.kind),
        (6, ProblemKind::Truncated),
        "{problem}"
    );
    assert!(problem.detail.contains("6..=10"), "{problem}");
    // A shipped checkpoint signed by another key is refused, not trusted.
    let forged = {
        let forger = StaticKeys::generate();
        let (other, _) = filled(3).await;
        let cp = checkpoint::checkpoint_now(&other.pool, &forger, SERVICE)
            .await
            .unwrap()
            .unwrap();
        other.drop_database().await.unwrap();
        cp
    };
    let report = audit::verify_with(&db.pool, &keys, SERVICE, &VerifyRange::default(), &[forged])
        .await
        .unwrap();
    assert_eq!(report.problem.unwrap().kind, ProblemKind::BadCheckpoint);
    db.drop_database().await.unwrap();
}

/// The SQLSTATE and message of a refused statement.
fn refusal(err: sqlx::Error) -> (String, String) {
    let db = err.as_database_error().expect("a database error");
    (
        db.code().map(|c| c.into_owned()).unwrap_or_default(),
        db.message().to_owned(),
    )
}

#[tokio::test]
async fn the_application_role_cannot_update_or_delete_audit_rows() {
    let (db, keys) = filled(3).await;
    checkpoint::checkpoint_now(&db.pool, &keys, SERVICE)
        .await
        .unwrap()
        .unwrap();

    // Production: the service logs in as a role that is a member of "<database>_app" and owns
    // nothing. Privileges refuse it.
    let app = carehub_platform::db::app_role(db.name());
    let login = format!("{}_svc", db.name());
    sqlx::query(&format!("CREATE ROLE \"{login}\" LOGIN IN ROLE \"{app}\""))
        .execute(&db.pool)
        .await
        .unwrap();
    let url = carehub_platform::db::url_with_database(db.url.expose_secret(), db.name()).unwrap();
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let app_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.username(&login))
        .await
        .unwrap();
    for (table, sql) in [
        (
            "audit_events",
            "UPDATE carehub_platform.audit_events SET kind = 'x.y' WHERE seq = 2",
        ),
        (
            "audit_events",
            "DELETE FROM carehub_platform.audit_events WHERE seq = 3",
        ),
        ("audit_events", "TRUNCATE carehub_platform.audit_events"),
        (
            "audit_checkpoints",
            "DELETE FROM carehub_platform.audit_checkpoints",
        ),
        (
            "audit_checkpoints",
            "UPDATE carehub_platform.audit_checkpoints SET seq = 1",
        ),
    ] {
        let (code, message) = refusal(sqlx::query(sql).execute(&app_pool).await.unwrap_err());
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(
            message.contains(&format!("permission denied for table {table}")),
            "{sql}: {message}"
        );
    }
    // What the application legitimately does keeps working as that role: queueing, sealing
    // (queue delete, chain head update), signing a checkpoint, shipping (sink cursor), reading,
    // verifying.
    create_note_as(&app_pool, Uuid::now_v7()).await;
    let cp = checkpoint::checkpoint_now(&app_pool, &keys, SERVICE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.seq, 4);
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::File(dir.path().join("audit.jsonl"));
    assert_eq!(
        audit::sink::ship_once(&app_pool, SERVICE, &sink)
            .await
            .unwrap(),
        6
    );
    assert!(verify_all(&app_pool, &keys).await.is_intact());
    app_pool.close().await;

    // Development and tests connect as the owner (here a superuser): the trigger refuses.
    for sql in [
        "UPDATE carehub_platform.audit_events SET kind = 'x.y' WHERE seq = 2",
        "DELETE FROM carehub_platform.audit_events WHERE seq = 3",
        "TRUNCATE carehub_platform.audit_events",
        "DELETE FROM carehub_platform.audit_checkpoints",
    ] {
        let (code, message) = refusal(sqlx::query(sql).execute(&db.pool).await.unwrap_err());
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("is append-only"), "{sql}: {message}");
    }
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM carehub_platform.audit_events"
        )
        .await,
        4
    );
    assert!(verify_all(&db.pool, &keys).await.is_intact());
    sqlx::query(&format!("DROP ROLE \"{login}\""))
        .execute(&db.pool)
        .await
        .unwrap();
    db.drop_database().await.unwrap();
}

/// [`create_note`] through another pool (another database role).
async fn create_note_as(pool: &sqlx::PgPool, patient: Uuid) {
    let note = Uuid::now_v7();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO notes VALUES ($1, $2)")
        .bind(note)
        .bind(patient)
        .execute(&mut *tx)
        .await
        .unwrap();
    audit::record(&mut tx, &event(patient, note)).await.unwrap();
    tx.commit().await.unwrap();
    audit::seal_all(pool).await.unwrap();
}

#[tokio::test]
async fn client_addresses_are_stored_sealed_and_the_chain_verifies_without_their_key() {
    let db = db().await;
    let keys = Arc::new(StaticKeys::generate());
    let sealer = audit::ClientSealer::new(SERVICE, keys.clone());
    let mut e = event(Uuid::now_v7(), Uuid::now_v7());
    e.source_ip = Some("192.0.2.77".into());
    e.user_agent = Some("SealedAgent/3.1 (patient phone)".into());
    // Outside an RPC, without a sealer: refused rather than stored in clear.
    let err = audit::record_read(&db.pool, &e).await.unwrap_err();
    assert!(matches!(err, audit::AuditError::NoSealer), "{err}");
    audit::record_read_with(&db.pool, Some(&sealer), &e)
        .await
        .unwrap();
    // Inside a sealer's scope (what ServiceHost::with_audit sets per call) `record` seals too.
    let mut e2 = event(Uuid::now_v7(), Uuid::now_v7());
    e2.source_ip = Some("192.0.2.78".into());
    audit::seal::scope(Arc::new(sealer.clone()), audit::record_read(&db.pool, &e2))
        .await
        .unwrap();
    // Built during a call, recorded from another task (a batch writer): sealed with the key of
    // the service whose call built it.
    let e3 = audit::seal::scope(Arc::new(sealer.clone()), async {
        let mut e = event(Uuid::now_v7(), Uuid::now_v7());
        e.source_ip = Some("192.0.2.79".into());
        e
    })
    .await;
    let pool = db.pool.clone();
    tokio::spawn(async move { audit::record_read(&pool, &e3).await })
        .await
        .unwrap()
        .unwrap();
    // Queued sealed, then moved into the chain as they are.
    let queued: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(q)::text FROM carehub_platform.audit_queue q")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(queued.len(), 3);
    for row in &queued {
        assert!(
            !row.contains("192.0.2.7") && !row.contains("SealedAgent"),
            "{row}"
        );
    }
    assert_eq!(audit::seal_all(&db.pool).await.unwrap(), 3);

    let raw: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(e)::text FROM carehub_platform.audit_events e")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    for row in &raw {
        assert!(
            !row.contains("192.0.2.7") && !row.contains("SealedAgent"),
            "{row}"
        );
    }
    // Verified with keys that cannot open the fields: intact (the chain hashes ciphertext).
    let report = verify_all(&db.pool, &StaticKeys::generate()).await;
    assert!(report.is_intact(), "{report:?}");
    // Opened with the service's keys.
    let mut stored = fetch(&db.pool, 1).await;
    assert_eq!(stored.event.source_ip, None);
    sealer.open_event(&mut stored).unwrap();
    assert_eq!(stored.event.source_ip.as_deref(), Some("192.0.2.77"));
    assert_eq!(
        stored.event.user_agent.as_deref(),
        Some("SealedAgent/3.1 (patient phone)")
    );
    let mut second = fetch(&db.pool, 2).await;
    assert!(second.client.user_agent.is_none());
    sealer.open_event(&mut second).unwrap();
    assert_eq!(second.event.source_ip.as_deref(), Some("192.0.2.78"));
    let mut third = fetch(&db.pool, 3).await;
    sealer.open_event(&mut third).unwrap();
    assert_eq!(third.event.source_ip.as_deref(), Some("192.0.2.79"));
    // The JSON-lines sink ships the sealed bytes only.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    audit::sink::ship_once(&db.pool, SERVICE, &Sink::File(path.clone()))
        .await
        .unwrap();
    let shipped = std::fs::read_to_string(&path).unwrap();
    assert!(shipped.contains("source_ip_sealed"), "{shipped}");
    assert!(
        !shipped.contains("192.0.2.7") && !shipped.contains("SealedAgent"),
        "{shipped}"
    );

    // The hash covers the sealed bytes: blanking or swapping them is an altered row.
    sqlx::query("UPDATE carehub_platform.audit_events SET user_agent = NULL WHERE seq = 1")
        .execute(&mut attacker(&db).await)
        .await
        .unwrap();
    let problem = verify_all(&db.pool, keys.as_ref()).await.problem.unwrap();
    assert_eq!(
        (problem.seq, problem.kind),
        (1, ProblemKind::Altered),
        "{problem}"
    );
    sqlx::query(
        "UPDATE carehub_platform.audit_events SET user_agent = $1,
            source_ip = (SELECT source_ip FROM carehub_platform.audit_events WHERE seq = 1)
         WHERE seq = 2",
    )
    .bind(&stored.client.user_agent)
    .execute(&mut attacker(&db).await)
    .await
    .unwrap();
    sqlx::query("UPDATE carehub_platform.audit_events SET user_agent = $1 WHERE seq = 1")
        .bind(&stored.client.user_agent)
        .execute(&mut attacker(&db).await)
        .await
        .unwrap();
    let problem = verify_all(&db.pool, keys.as_ref()).await.problem.unwrap();
    assert_eq!(
        (problem.seq, problem.kind),
        (2, ProblemKind::Altered),
        "{problem}"
    );
    // And a value moved to another event does not open there either.
    let mut moved = fetch(&db.pool, 2).await;
    assert!(sealer.open_event(&mut moved).is_err());
    db.drop_database().await.unwrap();
}

/// What `carehub audit events` reads: the newest events about one subject or by one actor,
/// newest first, at most the limit, nobody else's.
#[tokio::test]
async fn events_of_a_subject_or_an_actor_newest_first() {
    let db = db().await;
    let (patient, other) = (Uuid::now_v7(), Uuid::now_v7());
    let mut notes = Vec::new();
    for _ in 0..3 {
        notes.push(create_note(&db.pool, patient, true).await);
    }
    create_note(&db.pool, other, true).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let of = |found: &[audit::ChainedEvent]| {
        found
            .iter()
            .map(|e| e.event.entity_id.clone())
            .collect::<Vec<_>>()
    };
    let found = audit::chain::events_of(&mut conn, audit::chain::Whose::Subject(patient), 10)
        .await
        .unwrap();
    let newest_first: Vec<String> = notes.iter().rev().map(Uuid::to_string).collect();
    assert_eq!(of(&found), newest_first);
    let two = audit::chain::events_of(&mut conn, audit::chain::Whose::Subject(patient), 2)
        .await
        .unwrap();
    assert_eq!(of(&two), newest_first[..2].to_vec());
    let actor = found[0].event.actor_user_id.unwrap();
    let by = audit::chain::events_of(&mut conn, audit::chain::Whose::Actor(actor), 10)
        .await
        .unwrap();
    assert_eq!(of(&by), vec![notes[2].to_string()]);
    drop(conn);
    db.drop_database().await.unwrap();
}

/// A range whose link into it (the row before its start) was deleted names that row, and the
/// walk stops there.
#[tokio::test]
async fn a_range_whose_link_in_is_missing_names_that_row() {
    let (db, keys) = filled(8).await;
    sqlx::query("DELETE FROM carehub_platform.audit_events WHERE seq = 5")
        .execute(&mut attacker(&db).await)
        .await
        .unwrap();
    let range = VerifyRange {
        from_seq: Some(6),
        ..VerifyRange::default()
    };
    let report = audit::verify(&db.pool, &keys, SERVICE, &range)
        .await
        .unwrap();
    let problem = report.problem.clone().unwrap();
    assert_eq!(
        (problem.seq, problem.kind, report.rows_checked),
        (5, ProblemKind::Missing, 0),
        "{report:?}"
    );
    db.drop_database().await.unwrap();
}

/// The chain head is checked against the log: a head hash that is not the last row's, and
/// rows beyond a head moved back.
#[tokio::test]
async fn a_rewritten_head_hash_and_rows_beyond_the_head_are_found() {
    let (db, keys) = filled(5).await;
    let hash = |seq: i64| {
        let pool = db.pool.clone();
        async move {
            let h: Vec<u8> =
                sqlx::query_scalar("SELECT hash FROM carehub_platform.audit_events WHERE seq = $1")
                    .bind(seq)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            h
        }
    };
    let set_head = |seq: i64, h: Vec<u8>| {
        let pool = db.pool.clone();
        async move {
            sqlx::query("UPDATE carehub_platform.audit_chain_head SET seq = $1, hash = $2")
                .bind(seq)
                .bind(h)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    set_head(5, vec![0xAB; 32]).await;
    let problem = verify_all(&db.pool, &keys).await.problem.unwrap();
    assert_eq!(
        (problem.seq, problem.kind),
        (5, ProblemKind::BrokenLink),
        "{problem}"
    );

    set_head(4, hash(4).await).await;
    let problem = verify_all(&db.pool, &keys).await.problem.unwrap();
    assert_eq!(
        (problem.seq, problem.kind),
        (5, ProblemKind::BeyondHead),
        "{problem}"
    );
    assert!(problem.detail.starts_with("rows 5..=5 "), "{problem}");

    set_head(5, hash(5).await).await;
    assert!(verify_all(&db.pool, &keys).await.is_intact());
    db.drop_database().await.unwrap();
}

/// Every row and every stored checkpoint deleted and the head rewound to the start: the
/// shipped checkpoint says rows from 1 on are missing.
#[tokio::test]
async fn an_emptied_chain_is_found_truncated_from_row_one_by_a_shipped_checkpoint() {
    let (db, keys) = filled(4).await;
    checkpoint::checkpoint_now(&db.pool, &keys, SERVICE)
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    audit::sink::ship_once(&db.pool, SERVICE, &Sink::File(path.clone()))
        .await
        .unwrap();
    let shipped =
        audit::sink::read_checkpoints(&std::fs::read_to_string(&path).unwrap(), SERVICE).unwrap();
    let mut conn = attacker(&db).await;
    for sql in [
        "DELETE FROM carehub_platform.audit_events",
        "DELETE FROM carehub_platform.audit_checkpoints",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    sqlx::query("UPDATE carehub_platform.audit_chain_head SET seq = 0, hash = $1")
        .bind(audit::chain::GENESIS_HASH.to_vec())
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(
        verify_all(&db.pool, &keys).await.is_intact(),
        "alone, the database cannot tell"
    );
    let report = audit::verify_with(&db.pool, &keys, SERVICE, &VerifyRange::default(), &shipped)
        .await
        .unwrap();
    let problem = report.problem.unwrap();
    assert_eq!(
        (problem.seq, problem.kind),
        (1, ProblemKind::Truncated),
        "{problem}"
    );
    drop(conn);
    db.drop_database().await.unwrap();
}
