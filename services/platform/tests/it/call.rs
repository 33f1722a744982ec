#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The one handler shape against a real PostgreSQL: `Call::mutate` commits a change with its
//! audit events and stored answer or nothing at all, replays a retry and refuses a reused key;
//! `Call::read` answers only once the read's event is durable.

use std::sync::{Arc, LazyLock};

use carehub_platform::audit::{Action, AuditError, Kind, Purpose};
use carehub_platform::auth::{Caller, Role, UserCaller};
use carehub_platform::call::{Audited, Call, Change};
use carehub_platform::db::TestDatabase;
use carehub_platform::errors;
use carehub_platform::idempotency::IdempotencyStore;
use carehub_platform::keys::StaticKeys;
use carehub_platform::request::RpcPath;
use sqlx::migrate::Migrator;
use tonic::{Code, Status};
use uuid::Uuid;

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;
static KEYS: LazyLock<Arc<StaticKeys>> = LazyLock::new(|| Arc::new(StaticKeys::generate()));

const HIT: Kind = Kind::new("test.hit", Action::Create, "a hit was counted", "the user");
const HITS_READ: Kind = Kind::new("test.hits.read", Action::Read, "hits were read", "the user");
const RPC: &str = "/test.v1.Hits/Hit";

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
impl From<AuditError> for TestError {
    fn from(e: AuditError) -> Self {
        TestError(e.into())
    }
}

async fn database() -> TestDatabase {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    sqlx::query("CREATE TABLE hits (value text)")
        .execute(&db.pool)
        .await
        .unwrap();
    db
}

fn caller(user: Uuid) -> Caller {
    Caller {
        workload: "gateway".into(),
        user: Some(UserCaller {
            user_id: user,
            session_id: Uuid::now_v7(),
            roles: vec![Role::Patient],
            amr: vec!["pwd".into()],
            issued_at: 0,
            expires_at: i64::MAX,
            password_change_required: false,
        }),
        client_ip: None,
        user_agent: None,
        request_id: Some("req-call-1".into()),
    }
}

/// The context of a call as the auth layer leaves it, with `key` as its idempotency key.
fn call(user: Uuid, key: Option<&str>) -> Call {
    let mut req = tonic::Request::new(());
    req.extensions_mut().insert(caller(user));
    req.extensions_mut().insert(RpcPath(RPC.into()));
    if let Some(key) = key {
        req.metadata_mut()
            .insert("idempotency-key", key.parse().unwrap());
    }
    Call::new(&req).unwrap()
}

async fn hit(
    db: &TestDatabase,
    call: &Call,
    value: &str,
    fail: bool,
) -> Result<(String, bool), TestError> {
    let store = IdempotencyStore::new(db.pool.clone(), KEYS.clone());
    let user = call.user()?.user_id;
    let event = call.event(HIT, Purpose::PatientRequest, "hit", value, user);
    let ran = call
        .mutate(&store, &value.to_owned(), async |tx| {
            sqlx::query("INSERT INTO hits VALUES ($1)")
                .bind(value)
                .execute(&mut *tx)
                .await?;
            if fail {
                return Err(TestError(Status::failed_precondition("nope")));
            }
            Ok(Change::new(format!("answer-{value}"), event))
        })
        .await?;
    Ok((ran.answer, ran.replayed))
}

async fn count(db: &TestDatabase, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

async fn hits(db: &TestDatabase) -> i64 {
    count(db, "SELECT count(*) FROM hits").await
}

/// The events in the chain, once everything queued is sealed.
async fn events(db: &TestDatabase) -> Vec<(String, String, Option<Uuid>, Option<String>)> {
    carehub_platform::audit::seal_all(&db.pool).await.unwrap();
    sqlx::query_as(
        "SELECT kind, purpose, subject_id, request_id FROM carehub_platform.audit_events
         ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_change_commits_with_its_event_and_a_retry_replays_it() {
    let db = database().await;
    let user = Uuid::now_v7();
    let keyed = call(user, Some("key-00000001"));
    assert_eq!(
        hit(&db, &keyed, "a", false).await.unwrap(),
        ("answer-a".to_owned(), false)
    );
    let expected = vec![(
        "test.hit".to_owned(),
        "patient_request".to_owned(),
        Some(user),
        Some("req-call-1".to_owned()),
    )];
    assert_eq!(events(&db).await, expected);

    // The retry gets the stored answer; nothing runs or is recorded again.
    assert_eq!(
        hit(&db, &keyed, "a", false).await.unwrap(),
        ("answer-a".to_owned(), true)
    );
    assert_eq!((hits(&db).await, events(&db).await), (1, expected.clone()));

    // The same key with another request is refused.
    let err = hit(&db, &keyed, "b", false).await.unwrap_err().0;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        errors::details_of(&err).reason.as_deref(),
        Some("IDEMPOTENCY_KEY_REUSED")
    );
    assert_eq!((hits(&db).await, events(&db).await.len()), (1, 1));

    // Without a key every call runs, each with its event.
    let unkeyed = call(user, None);
    hit(&db, &unkeyed, "c", false).await.unwrap();
    hit(&db, &unkeyed, "c", false).await.unwrap();
    assert_eq!((hits(&db).await, events(&db).await.len()), (3, 3));
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_failed_change_leaves_neither_change_nor_event_nor_answer() {
    let db = database().await;
    let keyed = call(Uuid::now_v7(), Some("key-00000002"));
    let err = hit(&db, &keyed, "a", true).await.unwrap_err().0;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!((hits(&db).await, events(&db).await.len()), (0, 0));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM carehub_platform.idempotency_keys"
        )
        .await,
        0
    );
    // Its retry runs afresh.
    assert_eq!(
        hit(&db, &keyed, "a", false).await.unwrap(),
        ("answer-a".to_owned(), false)
    );
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_read_is_answered_only_once_its_event_is_durable() {
    let db = database().await;
    let user = Uuid::now_v7();
    let reader = call(user, None);
    let read = |c: &Call| c.event(HITS_READ, Purpose::PatientRequest, "hits", user, user);
    let answer: Result<&str, TestError> = reader.read(&db.pool, read(&reader), "hits").await;
    assert_eq!(answer.unwrap(), "hits");
    assert_eq!(events(&db).await.len(), 1);

    // A trail that takes no event: the read is refused, and so is a change (rolled back).
    for sql in [
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'audit trail refused (test)'; END $$",
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON carehub_platform.audit_queue
         FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
    ] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
    let refused: Result<&str, TestError> = reader.read(&db.pool, read(&reader), "hits").await;
    let err = refused.unwrap_err().0;
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        errors::details_of(&err).reason.as_deref(),
        Some("UNAVAILABLE")
    );
    let err = hit(&db, &call(user, Some("key-00000003")), "a", false)
        .await
        .unwrap_err()
        .0;
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!((hits(&db).await, events(&db).await.len()), (0, 1));
    db.drop_database().await.unwrap();
}

#[test]
fn the_context_is_built_once_from_the_request() {
    let user = Uuid::now_v7();
    let c = call(user, Some("key-00000004"));
    assert_eq!(&*c.rpc, RPC);
    assert_eq!(c.request_id.as_deref(), Some("req-call-1"));
    assert_eq!(c.user().unwrap().user_id, user);
    assert_eq!(c.idempotency_key().unwrap(), Some("key-00000004"));

    // A malformed key fails the mutation that reads it, not the building of the context.
    let bad = call(user, Some("short"));
    let err = bad.idempotency_key().unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Without the auth layer's caller: a wiring bug, INTERNAL.
    let err = Call::new(&tonic::Request::new(())).unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    // Without the request-id layer's RPC path: the same.
    let mut req = tonic::Request::new(());
    req.extensions_mut().insert(caller(user));
    let err = Call::new(&req).unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert!(err.message().contains("the call's RPC path is unknown"));
}

#[tokio::test]
async fn an_answer_of_an_always_audited_rpc_without_an_event_is_refused() {
    let db = database().await;
    let user = Uuid::now_v7();
    let ok = || Ok::<_, TestError>("answer");

    // Nothing recorded: refused when the RPC must audit, answered when it is exempt.
    let silent = call(user, None);
    let err = silent.check_audited(Audited::Always, ok()).unwrap_err().0;
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(
        silent
            .check_audited(Audited::Exempt("public keys"), ok())
            .unwrap(),
        "answer"
    );
    // An error passes through as it is.
    let failed = Err::<&str, _>(TestError(Status::not_found("x")));
    assert_eq!(
        silent
            .check_audited(Audited::Always, failed)
            .unwrap_err()
            .0
            .code(),
        Code::NotFound
    );

    // A change with its event, and the replay of its stored answer, count as audited.
    let first = call(user, Some("key-00000005"));
    hit(&db, &first, "a", false).await.unwrap();
    assert!(first.check_audited(Audited::Always, ok()).is_ok());
    let retry = call(user, Some("key-00000005"));
    assert!(hit(&db, &retry, "a", false).await.unwrap().1, "replayed");
    assert!(retry.check_audited(Audited::Always, ok()).is_ok());

    // A read, once its event is recorded.
    let reader = call(user, None);
    let event = reader.event(HITS_READ, Purpose::PatientRequest, "hits", user, user);
    let read: Result<&str, TestError> = reader.read(&db.pool, event, "hits").await;
    assert!(reader.check_audited(Audited::Always, read).is_ok());
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn concurrent_reads_are_committed_together_and_the_chain_holds() {
    let db = database().await;
    let user = Uuid::now_v7();
    const READS: usize = 64;
    let reads = (0..READS).map(|i| {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let reader = call(user, None);
            let event = reader.event(HITS_READ, Purpose::PatientRequest, "hits", i, user);
            let answer: Result<usize, TestError> = reader.read(&pool, event, i).await;
            answer.map_err(|e| e.0)
        })
    });
    let answers: Vec<usize> = futures::future::join_all(reads)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(answers, (0..READS).collect::<Vec<_>>());
    // Every read has its event, each once, queued in fewer transactions than reads ...
    let transactions = count(
        &db,
        "SELECT count(DISTINCT xmin::text) FROM carehub_platform.audit_queue",
    )
    .await;
    assert!(
        transactions < READS as i64 / 2,
        "{transactions} transactions for {READS} reads"
    );
    // ... and once sealed, in the chain.
    carehub_platform::audit::seal_all(&db.pool).await.unwrap();
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT entity_id FROM carehub_platform.audit_events ORDER BY entity_id::int",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(ids, (0..READS).map(|i| i.to_string()).collect::<Vec<_>>());
    let report = carehub_platform::audit::verify(
        &db.pool,
        KEYS.as_ref(),
        "test",
        &carehub_platform::audit::VerifyRange::default(),
    )
    .await
    .unwrap();
    assert_eq!((report.problem, report.rows_checked), (None, READS as u64));
    db.drop_database().await.unwrap();
}

/// Batches of read events are written several at once — one batch's commit does not wait for
/// the previous one's — but never more than `MAX_CONCURRENT_BATCHES`, each holding a pooled
/// connection: with the queue table locked, exactly that many inserts wait on it.
#[tokio::test]
async fn read_batches_are_written_several_at_once_and_no_more() {
    use carehub_platform::call::reads::MAX_CONCURRENT_BATCHES;
    let db = database().await;
    let user = Uuid::now_v7();
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE carehub_platform.audit_queue IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    const READS: usize = 40;
    let reads: Vec<_> = (0..READS)
        .map(|i| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                let reader = call(user, None);
                let event = reader.event(HITS_READ, Purpose::PatientRequest, "hits", i, user);
                let answer: Result<usize, TestError> = reader.read(&pool, event, i).await;
                answer.map_err(|e| e.0)
            })
        })
        .collect();
    let waiting_inserts = || async {
        count(
            &db,
            "SELECT count(*) FROM pg_locks
             WHERE relation = 'carehub_platform.audit_queue'::regclass AND NOT granted",
        )
        .await
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while waiting_inserts().await < MAX_CONCURRENT_BATCHES as i64 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} batch inserts waiting, expected {MAX_CONCURRENT_BATCHES}",
            waiting_inserts().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The other reads wait in process, not on a connection of their own.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(waiting_inserts().await, MAX_CONCURRENT_BATCHES as i64);
    assert!(
        reads.iter().all(|r| !r.is_finished()),
        "a read answered before its event was written"
    );

    lock.commit().await.unwrap();
    let mut answers = Vec::new();
    for r in reads {
        answers.push(r.await.unwrap().unwrap());
    }
    assert_eq!(answers, (0..READS).collect::<Vec<_>>());
    assert_eq!(
        count(&db, "SELECT count(*) FROM carehub_platform.audit_queue").await,
        READS as i64
    );
    db.drop_database().await.unwrap();
}
