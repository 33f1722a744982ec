#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Identity's account events leave through the transactional outbox: a suspension (and a
//! reactivation and a termination) reaches a subscriber configured under
//! `[server.outbox.targets.records]` (a real tonic `AccountEvents` server behind mTLS) with the
//! trace id of the SuspendUser call, the outbox row id as idempotency-key and ids only; a
//! subscriber without an endpoint (messaging) keeps its rows pending, shown on `/metrics`; a
//! refused status change writes no event.
//!
//! One test per binary: telemetry installs the process-wide subscriber once.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{assert_status, PASSWORD};
use carehub_platform::config::{LogFormat, OutboxTarget, PlatformConfig, TelemetryConfig};
use carehub_platform::server::ServiceHost;
use carehub_platform::telemetry;
use carehub_platform::tls::PeerInfo;
use carehub_proto::common::v1::account_events_server::{AccountEvents, AccountEventsServer};
use carehub_proto::identity::v1::*;
use tonic::{Code, Request, Response, Status};

/// One delivery as the subscriber saw it.
#[derive(Clone, Debug)]
struct Delivery {
    key: String,
    traceparent: String,
    workload: String,
    event: AccountStatusChanged,
}

#[derive(Clone, Default)]
struct Subscriber(Arc<Mutex<Vec<Delivery>>>);

#[tonic::async_trait]
impl AccountEvents for Subscriber {
    async fn apply_account_event(
        &self,
        request: Request<AccountStatusChanged>,
    ) -> Result<Response<()>, Status> {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let delivery = Delivery {
            key: header("idempotency-key"),
            traceparent: header("traceparent"),
            workload: PeerInfo::of(&request)
                .and_then(|p| p.workload.clone())
                .unwrap_or_default(),
            event: request.into_inner(),
        };
        self.0.lock().unwrap().push(delivery);
        Ok(Response::new(()))
    }
}

/// The body of an admin-port page.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    carehub_testkit::grpc::http_get(addr, path).await.1
}

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_reaches_the_subscriber_with_the_trace_id_of_the_call() {
    // telemetry::init installs the process-wide tracer: under `cargo test` this binary's other
    // tests share the process, so the test runs again in a process of its own.
    if !carehub_testkit::process::in_own_process(
        "outbox_events::a_suspension_reaches_the_subscriber_with_the_trace_id_of_the_call",
    ) {
        return;
    }
    let _telemetry = telemetry::init(
        "identity",
        &TelemetryConfig {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            log_format: LogFormat::Json,
            log_filter: "warn".to_owned(),
        },
    )
    .unwrap();
    // The subscriber's port, known before identity starts (its certificate comes from
    // identity's development CA, made at start).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = common::spawn_with(|c| {
        c.server.outbox.poll_interval_ms = 50;
        c.server.outbox.targets.insert(
            "records".to_owned(),
            OutboxTarget {
                endpoint: format!("https://127.0.0.1:{port}"),
                server_name: "records".to_owned(),
            },
        );
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    app.pki().write_to(dir.path(), &["records"]).unwrap();
    let mut cfg = PlatformConfig {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..PlatformConfig::default()
    };
    cfg.tls.cert_file = dir.path().join("records.pem");
    cfg.tls.key_file = dir.path().join("records-key.pem");
    cfg.tls.ca_file = dir.path().join("ca.pem");
    cfg.tls.trust_domain = common::TRUST_DOMAIN.to_owned();
    cfg.limits.drain_timeout_secs = 1;
    let subscriber = Subscriber::default();
    let records = ServiceHost::new("records", &cfg)
        .add_service(AccountEventsServer::new(subscriber.clone()))
        .start(std::future::pending())
        .await
        .unwrap();

    let (_admin, admin_token) = app.admin_token().await;
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let mut c = app.public("gateway").await;
    let trace_id = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    let mut suspend = app.with_token(
        SuspendUserRequest {
            user_id: ann.user_id.clone(),
            reason: "chargeback dispute for Ann's clinic visit".to_owned(),
        },
        &admin_token,
    );
    suspend.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    c.suspend_user(suspend).await.unwrap();

    let delivery = wait_for("the suspension's delivery", async || {
        subscriber.0.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(
        delivery.traceparent.split('-').nth(1),
        Some(trace_id.as_str()),
        "the delivery continues the SuspendUser call's trace: {}",
        delivery.traceparent
    );
    assert_eq!(delivery.workload, "identity");
    assert_eq!(delivery.event.user_id, ann.user_id);
    assert_eq!(delivery.event.status, AccountStatus::Suspended as i32);
    assert!(delivery.event.change_time.is_some());
    // The idempotency-key is the outbox row's id; the row is delivered.
    let (state, target): (String, String) =
        sqlx::query_as("SELECT state, target FROM carehub_platform.outbox WHERE id = $1::uuid")
            .bind(&delivery.key)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), target.as_str()), ("delivered", "records"));
    // Payloads are sealed: not even the user id shows in clear.
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM carehub_platform.outbox")
        .fetch_all(app.pool())
        .await
        .unwrap();
    assert!(payloads
        .iter()
        .all(|p| !String::from_utf8_lossy(p).contains(&ann.user_id)));

    // Reactivation and termination follow; a refused change (reactivating an active account)
    // writes no event.
    c.reactivate_user(app.with_token(
        ReactivateUserRequest {
            user_id: ann.user_id.clone(),
            reason: "resolved".to_owned(),
        },
        &admin_token,
    ))
    .await
    .unwrap();
    let before = app.count("carehub_platform.outbox").await;
    let e = c
        .reactivate_user(app.with_token(
            ReactivateUserRequest {
                user_id: ann.user_id.clone(),
                reason: "again".to_owned(),
            },
            &admin_token,
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    assert_eq!(app.count("carehub_platform.outbox").await, before);
    c.terminate_user(app.with_token(
        TerminateUserRequest {
            user_id: ann.user_id.clone(),
            reason: "closed".to_owned(),
        },
        &admin_token,
    ))
    .await
    .unwrap();
    let statuses = wait_for("three deliveries", async || {
        let seen = subscriber.0.lock().unwrap();
        (seen.len() >= 3).then(|| {
            let mut s: Vec<i32> = seen.iter().map(|d| d.event.status).collect();
            s.sort();
            s
        })
    })
    .await;
    assert_eq!(
        statuses,
        [
            AccountStatus::Active as i32,
            AccountStatus::Suspended as i32,
            AccountStatus::Terminated as i32
        ]
    );

    // Messaging has no endpoint: its three rows wait, visible on /metrics.
    let metrics = wait_for("the pending gauge on /metrics", async || {
        let text = http_get(app.admin_http_addr(), "/metrics").await;
        text.contains("carehub_outbox_pending{service=\"identity\",target=\"messaging\"} 3")
            .then_some(text)
    })
    .await;
    assert!(
        metrics.contains("carehub_outbox_pending{service=\"identity\",target=\"records\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("carehub_outbox_dead_letters{service=\"identity\",target=\"messaging\"} 0"),
        "{metrics}"
    );
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM carehub_platform.outbox WHERE target = 'messaging' AND state = 'pending' AND attempts = 0",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(pending, 3);

    records.shutdown().await.unwrap();
    app.shutdown().await;
}
