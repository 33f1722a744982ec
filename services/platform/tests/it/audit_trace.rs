#![allow(clippy::unwrap_used, clippy::expect_used)]
//! An audit event shows up in the trace: on the server span of the RPC that caused it, as an
//! `audit.event` span event, and the stored row carries that span's trace id and span id.
//! The spans are collected by an in-process OTLP/gRPC receiver.
//!
//! One test per binary: telemetry installs the process-wide subscriber once.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use carehub_platform::auth::{AuthLayer, Authorizer, Policy, TokenVerifier, UserCaller, UserRule};
use carehub_platform::config::{LogFormat, TelemetryConfig};
use carehub_platform::db::TestDatabase;
use carehub_platform::devcerts::DevPki;
use carehub_platform::keys::StaticKeys;
use carehub_platform::server::ServiceHost;
use carehub_platform::telemetry;
use carehub_testkit::otlp::{attr, hex, Receiver};
use common::audited::{self, Audited};
use common::*;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use sqlx::migrate::Migrator;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

struct NoTokens;

#[async_trait::async_trait]
impl TokenVerifier for NoTokens {
    async fn verify(&self, _token: &str) -> Result<UserCaller, tonic::Status> {
        Err(tonic::Status::unauthenticated("no tokens in this test"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_event_is_on_the_span_of_the_rpc_and_the_row_has_its_trace_id() {
    // Installs the process's tracer provider: needs a process of its own.
    if !carehub_testkit::process::in_own_process(
        "audit_trace::the_audit_event_is_on_the_span_of_the_rpc_and_the_row_has_its_trace_id",
    ) {
        return;
    }
    let receiver = Receiver::default();
    let (otlp_addr, collector) = receiver.start().await;
    let guard = telemetry::init(
        "scheduling",
        &TelemetryConfig {
            otlp_endpoint: Some(format!("http://{otlp_addr}")),
            sample_ratio: 1.0,
            log_format: LogFormat::Json,
            log_filter: "info".to_owned(),
        },
    )
    .unwrap();

    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    audited::create_table(&db.pool).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(TRUST_DOMAIN).unwrap();
    let cfg = config_with_pki(dir.path(), &pki, "scheduling");
    let authorizer = Arc::new(Authorizer {
        policy: Policy::new().rule(
            "test.Audited",
            "Touch",
            &["gateway"],
            UserRule::WorkloadOnly,
        ),
        verifier: Arc::new(NoTokens),
        gateway_workloads: vec!["gateway".into()],
    });
    let running = ServiceHost::new("scheduling", &cfg)
        .add_service(Audited {
            pool: db.pool.clone(),
        })
        .with_auth(AuthLayer::new(authorizer))
        .with_audit(db.pool.clone(), Arc::new(StaticKeys::generate()))
        .start(pending_forever())
        .await
        .unwrap();
    let channel = connect_as(&pki, running.grpc_addr, "gateway", "localhost").await;

    let root = tracing::info_span!("test.root");
    let root_trace = root.context().span().span_context().trace_id().to_string();
    assert_ne!(
        root_trace, "00000000000000000000000000000000",
        "tracing is not installed"
    );
    let seq = audited::touch(channel.clone(), Uuid::now_v7())
        .instrument(root.clone())
        .await
        .unwrap();
    drop(root);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let server = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        telemetry::flush().await;
        let spans = receiver.snapshot();
        let found = spans.iter().find(|(_, s)| {
            s.name == "test.Audited/Touch"
                && s.kind == SpanKind::Server as i32
                && hex(&s.trace_id) == root_trace
        });
        if let Some((_, span)) = found {
            break span.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server span not received; got {:?}",
            spans
                .iter()
                .map(|(_, s)| s.name.clone())
                .collect::<Vec<_>>()
        );
    };

    let events: Vec<_> = server
        .events
        .iter()
        .filter(|e| e.name == "audit.event")
        .collect();
    assert_eq!(
        events.len(),
        1,
        "one audit event on the RPC's span: {:?}",
        server.events
    );
    let event = events[0];
    // The span names the event by id (its place in the chain is given after the commit).
    let event_id: uuid::Uuid =
        sqlx::query_scalar("SELECT event_id FROM carehub_platform.audit_events WHERE seq = $1")
            .bind(seq)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        attr(&event.attributes, "audit.event_id"),
        Some(event_id.to_string())
    );
    assert_eq!(
        attr(&event.attributes, "audit.kind").as_deref(),
        Some("test.touch")
    );
    assert_eq!(
        attr(&event.attributes, "audit.action").as_deref(),
        Some("create")
    );

    let (trace_id, span_id): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT trace_id, span_id FROM carehub_platform.audit_events WHERE seq = $1",
    )
    .bind(seq)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(trace_id.as_deref(), Some(root_trace.as_str()));
    assert_eq!(trace_id, Some(hex(&server.trace_id)));
    assert_eq!(span_id, Some(hex(&server.span_id)));

    running.shutdown().await.unwrap();
    guard.shutdown().await;
    collector.abort();
    db.drop_database().await.unwrap();
}
