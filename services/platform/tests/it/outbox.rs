#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The transactional outbox against real PostgreSQL, real mTLS and a real tonic receiver
//! (`carehub.common.v1.AccountEvents`) that applies deliveries through the platform
//! idempotency store:
//! - a relay killed between delivery and acknowledgement delivers again, and the receiver
//!   applies the event once;
//! - a poison row ends dead-lettered with the metric raised, and `outbox::retry` (what
//!   `carehub outbox retry` runs) revives it;
//! - two relays on one database never deliver the same row at the same time (a storm).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use carehub_platform::admin::Metrics;
use carehub_platform::db::TestDatabase;
use carehub_platform::devcerts::DevPki;
use carehub_platform::idempotency::{self, IdempotencyStore};
use carehub_platform::keys::{KeySource, StaticKeys};
use carehub_platform::outbox::{
    self, Outbox, OutboxConfig, OutboxError, OutboxTarget, Relay, State,
};
use carehub_platform::server::{RunningServer, ServiceHost};
use carehub_platform::tls::{PeerInfo, TlsStore};
use carehub_proto::common::v1::account_events_server::{AccountEvents, AccountEventsServer};
use carehub_proto::identity::v1::{AccountStatus, AccountStatusChanged};
use sqlx::migrate::Migrator;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};
use uuid::Uuid;

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;
const METHOD: &str = "/carehub.common.v1.AccountEvents/ApplyAccountEvent";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Apply and answer OK.
    Apply,
    /// Apply, say so, then never answer (the relay is killed meanwhile).
    ApplyThenHang,
    /// Refuse every delivery (a poison row).
    Refuse,
    /// Refuse the first delivery of every fourth row, apply the rest.
    Flaky,
}

/// What the receiver saw, per idempotency key (the outbox id).
#[derive(Default)]
struct Seen {
    deliveries: HashMap<String, u32>,
    in_flight: HashMap<String, u32>,
    traceparents: Vec<String>,
}

#[derive(Clone)]
struct Receiver {
    store: IdempotencyStore,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Seen>>,
    /// Deliveries that found another delivery of the same row in progress.
    overlaps: Arc<AtomicUsize>,
    applied: Arc<Notify>,
    delay: Duration,
}

/// Ends one in-flight delivery even when its handler is cancelled (the client went away).
struct InFlight(Arc<Mutex<Seen>>, String);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut seen = self.0.lock().unwrap();
        if let Some(n) = seen.in_flight.get_mut(&self.1) {
            *n -= 1;
        }
    }
}

#[derive(Debug)]
struct ApplyError(Status);
impl From<Status> for ApplyError {
    fn from(s: Status) -> Self {
        ApplyError(s)
    }
}
impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        ApplyError(Status::internal(e.to_string()))
    }
}

#[tonic::async_trait]
impl AccountEvents for Receiver {
    async fn apply_account_event(
        &self,
        request: Request<AccountStatusChanged>,
    ) -> Result<Response<()>, Status> {
        let key = idempotency::key_of(&request)?
            .ok_or_else(|| Status::invalid_argument("idempotency-key missing"))?;
        let actor = PeerInfo::of(&request)
            .and_then(|p| p.workload.clone())
            .ok_or_else(|| Status::unauthenticated("no workload"))?;
        let (nth, _guard) = {
            let mut seen = self.seen.lock().unwrap();
            if let Some(tp) = request.metadata().get("traceparent") {
                seen.traceparents.push(tp.to_str().unwrap().to_owned());
            }
            let in_flight = seen.in_flight.entry(key.clone()).or_default();
            *in_flight += 1;
            if *in_flight > 1 {
                self.overlaps.fetch_add(1, Ordering::SeqCst);
            }
            let n = seen.deliveries.entry(key.clone()).or_default();
            *n += 1;
            (*n, InFlight(self.seen.clone(), key.clone()))
        };
        let mode = *self.mode.lock().unwrap();
        tokio::time::sleep(self.delay).await;
        let flaky_refusal = mode == Mode::Flaky && nth == 1 && key.as_bytes()[35] % 4 == 0;
        if mode == Mode::Refuse || flaky_refusal {
            return Err(Status::failed_precondition(
                "the receiver refuses this event",
            ));
        }
        let event = request.into_inner();
        let user = event.user_id.clone();
        idempotency::run(&self.store, METHOD, &actor, Some(&key), &event, move |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO applied (user_id) VALUES ($1)")
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
                Ok::<(), ApplyError>(())
            })
        })
        .await
        .map_err(|e| e.0)?;
        if mode == Mode::ApplyThenHang {
            self.applied.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(Response::new(()))
    }
}

/// A publisher database with its keys, a receiver service (own database, mTLS) and the
/// publisher's client certificate.
struct World {
    publisher: TestDatabase,
    keys: Arc<dyn KeySource>,
    receiver_db: TestDatabase,
    receiver: Receiver,
    server: RunningServer,
    client_tls: Arc<TlsStore>,
    _dir: tempfile::TempDir,
}

impl World {
    async fn new(mode: Mode, delay: Duration) -> World {
        let publisher = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
        let receiver_db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
        sqlx::query("CREATE TABLE applied (user_id text NOT NULL)")
            .execute(&receiver_db.pool)
            .await
            .unwrap();
        let receiver = Receiver {
            store: IdempotencyStore::new(
                receiver_db.pool.clone(),
                Arc::new(StaticKeys::generate()),
            ),
            mode: Arc::new(Mutex::new(mode)),
            seen: Arc::default(),
            overlaps: Arc::default(),
            applied: Arc::default(),
            delay,
        };
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new(TRUST_DOMAIN).unwrap();
        let cfg = config_with_pki(dir.path(), &pki, "records");
        let server = ServiceHost::new("records", &cfg)
            .add_service(AccountEventsServer::new(receiver.clone()))
            .start(pending_forever())
            .await
            .unwrap();
        let cert = pki.issue("identity").unwrap();
        let client_tls =
            TlsStore::from_pem(&cert.cert_pem, &cert.key_pem, &pki.ca_pem, TRUST_DOMAIN).unwrap();
        World {
            publisher,
            keys: Arc::new(StaticKeys::generate()),
            receiver_db,
            receiver,
            server,
            client_tls,
            _dir: dir,
        }
    }

    fn config(&self) -> OutboxConfig {
        let mut cfg = OutboxConfig {
            poll_interval_ms: 20,
            batch_size: 16,
            lease_secs: 5,
            delivery_timeout_ms: 2_000,
            max_attempts: 3,
            backoff_base_ms: 10,
            backoff_max_secs: 1,
            ..OutboxConfig::default()
        };
        cfg.targets.insert(
            "records".to_owned(),
            OutboxTarget {
                endpoint: format!("https://{}", self.server.grpc_addr),
                server_name: "localhost".to_owned(),
            },
        );
        cfg
    }

    fn relay(&self, cfg: &OutboxConfig, metrics: &Arc<Metrics>) -> Relay {
        Relay::new(
            self.publisher.pool.clone(),
            self.keys.clone(),
            &self.client_tls,
            cfg,
            metrics.clone(),
        )
        .unwrap()
    }

    /// Writes `n` events in one transaction; returns their outbox ids.
    async fn enqueue(&self, n: usize) -> Vec<Uuid> {
        let outbox = Outbox::new(self.keys.clone());
        let mut tx = self.publisher.pool.begin().await.unwrap();
        let mut ids = Vec::new();
        for _ in 0..n {
            let event = AccountStatusChanged {
                user_id: Uuid::new_v4().to_string(),
                status: AccountStatus::Suspended as i32,
                change_time: None,
            };
            ids.push(
                outbox
                    .enqueue(&mut tx, "records", METHOD, &event)
                    .await
                    .unwrap(),
            );
        }
        tx.commit().await.unwrap();
        ids
    }

    async fn row(&self, id: Uuid) -> (String, i32, Option<String>) {
        sqlx::query_as(
            "SELECT state, attempts, last_error FROM carehub_platform.outbox WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&self.publisher.pool)
        .await
        .unwrap()
    }

    async fn applied(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM applied")
            .fetch_one(&self.receiver_db.pool)
            .await
            .unwrap()
    }

    fn deliveries(&self, id: Uuid) -> u32 {
        let seen = self.receiver.seen.lock().unwrap();
        seen.deliveries.get(&id.to_string()).copied().unwrap_or(0)
    }

    async fn finish(self) {
        self.server.shutdown().await.unwrap();
        self.publisher.drop_database().await.unwrap();
        self.receiver_db.drop_database().await.unwrap();
    }
}

/// Runs relay rounds until `done` says so (at most 20 s).
async fn rounds_until(relay: &Relay, mut done: impl FnMut(&outbox::RoundReport) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let report = relay.run_round().await.unwrap();
        if done(&report) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay did not get there in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_before_its_acknowledgement_delivers_again_and_the_receiver_applies_once() {
    let world = World::new(Mode::ApplyThenHang, Duration::ZERO).await;
    let id = world.enqueue(1).await[0];
    let cfg = OutboxConfig {
        lease_secs: 2,
        delivery_timeout_ms: 1_000,
        ..world.config()
    };
    let metrics = Metrics::new("identity");

    // The first relay delivers; the receiver applies and commits, and the relay is killed
    // before the answer reaches it.
    let first = world.relay(&cfg, &metrics).spawn();
    tokio::time::timeout(Duration::from_secs(20), world.receiver.applied.notified())
        .await
        .expect("the first delivery reached the receiver");
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    assert_eq!(world.applied().await, 1);
    let (state, attempts, _) = world.row(id).await;
    assert_eq!(
        (state.as_str(), attempts),
        ("pending", 0),
        "no acknowledgement was recorded"
    );

    // Another relay takes the row up once the dead relay's lease has ended and delivers again;
    // the receiver answers from its idempotency store without applying twice.
    *world.receiver.mode.lock().unwrap() = Mode::Apply;
    let second = world.relay(&cfg, &metrics);
    rounds_until(&second, |r| r.delivered == 1).await;
    assert_eq!(world.deliveries(id), 2, "delivered twice");
    assert_eq!(world.applied().await, 1, "applied once");
    let (state, attempts, last_error) = world.row(id).await;
    assert_eq!(
        (state.as_str(), attempts, last_error),
        ("delivered", 1, None)
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_row_is_dead_lettered_with_the_metric_raised_and_retry_revives_it() {
    let world = World::new(Mode::Refuse, Duration::ZERO).await;
    let id = world.enqueue(1).await[0];
    let cfg = world.config();
    let metrics = Metrics::new("identity");
    let relay = world.relay(&cfg, &metrics);

    rounds_until(&relay, |r| r.dead_lettered == 1).await;
    assert_eq!(world.deliveries(id), cfg.max_attempts);
    let dead = outbox::list(&world.publisher.pool, Some(State::Dead), 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].target, "records");
    assert_eq!(dead[0].method, METHOD);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some("FAILED_PRECONDITION: the receiver refuses this event")
    );
    // A dead row is not delivered again by itself.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(relay.run_round().await.unwrap().claimed, 0);

    relay.refresh_metrics().await.unwrap();
    let text = metrics.render();
    assert!(
        text.contains("carehub_outbox_dead_letters{service=\"identity\",target=\"records\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("carehub_outbox_pending{service=\"identity\",target=\"records\"} 0"),
        "{text}"
    );
    assert!(
        text.contains(
            "carehub_outbox_deliveries_total{service=\"identity\",target=\"records\",result=\"failed\"} 3"
        ),
        "{text}"
    );

    // Retrying a row that is not dead-lettered is refused; the dead one is revived.
    let other = Uuid::new_v4();
    match outbox::retry(&world.publisher.pool, Some(other)).await {
        Err(OutboxError::NotDead(id)) => assert_eq!(id, other),
        other => panic!("expected NotDead, got {other:?}"),
    }
    *world.receiver.mode.lock().unwrap() = Mode::Apply;
    assert_eq!(
        outbox::retry(&world.publisher.pool, Some(id))
            .await
            .unwrap(),
        vec![id]
    );
    let (state, attempts, _) = world.row(id).await;
    assert_eq!((state.as_str(), attempts), ("pending", 0));
    relay.refresh_metrics().await.unwrap();
    let text = metrics.render();
    assert!(
        text.contains("carehub_outbox_dead_letters{service=\"identity\",target=\"records\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("carehub_outbox_pending{service=\"identity\",target=\"records\"} 1"),
        "{text}"
    );
    let oldest: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "carehub_outbox_oldest_pending_age_seconds{service=\"identity\",target=\"records\"} ",
            )
        })
        .unwrap()
        .parse()
        .unwrap();
    assert!(oldest > 0.0 && oldest < 60.0, "oldest pending age {oldest}");

    rounds_until(&relay, |r| r.delivered == 1).await;
    assert_eq!(world.row(id).await.0, "delivered");
    assert_eq!(world.applied().await, 1);
    // Nothing left to revive.
    assert!(outbox::retry(&world.publisher.pool, None)
        .await
        .unwrap()
        .is_empty());
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_never_deliver_the_same_row_at_the_same_time() {
    const ROWS: usize = 200;
    let world = World::new(Mode::Flaky, Duration::from_millis(3)).await;
    let cfg = world.config();
    let (metrics_a, metrics_b) = (Metrics::new("identity"), Metrics::new("identity"));
    let a = world.relay(&cfg, &metrics_a).spawn();
    let b = world.relay(&cfg, &metrics_b).spawn();
    let ids = world.enqueue(ROWS).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let delivered: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM carehub_platform.outbox WHERE state = 'delivered'",
        )
        .fetch_one(&world.publisher.pool)
        .await
        .unwrap();
        if delivered == ROWS as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {delivered} of {ROWS} rows delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.abort();
    b.abort();

    assert_eq!(
        world.receiver.overlaps.load(Ordering::SeqCst),
        0,
        "a row was delivered by two relays at once"
    );
    let refused = ids
        .iter()
        .filter(|id| id.to_string().as_bytes()[35] % 4 == 0)
        .count();
    assert!(refused > 0, "the storm had no failed delivery to retry");
    for id in &ids {
        let expected = if id.to_string().as_bytes()[35] % 4 == 0 {
            2
        } else {
            1
        };
        assert_eq!(world.deliveries(*id), expected, "deliveries of {id}");
    }
    assert_eq!(world.applied().await, ROWS as i64);
    // Both relays took part.
    for (name, m) in [("a", &metrics_a), ("b", &metrics_b)] {
        let text = m.render();
        assert!(
            text.contains("carehub_outbox_deliveries_total{service=\"identity\",target=\"records\",result=\"ok\"}"),
            "relay {name} delivered nothing:\n{text}"
        );
    }
    world.finish().await;
}
