#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Trace context crosses a real mTLS gRPC call: an in-process OTLP/gRPC receiver collects what
//! the batch exporter sends, and the server span must continue the client's trace.
//!
//! One test per binary: telemetry installs the process-wide subscriber once.

use crate::common;

use std::time::Duration;

use carehub_platform::config::{LogFormat, TelemetryConfig};
use carehub_platform::devcerts::DevPki;
use carehub_platform::server::ServiceHost;
use carehub_platform::telemetry;
use carehub_testkit::otlp::{attr, hex, Receiver};
use common::*;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_span_continues_the_client_trace() {
    // Installs the process's tracer provider: needs a process of its own.
    if !carehub_testkit::process::in_own_process(
        "trace_propagation::server_span_continues_the_client_trace",
    ) {
        return;
    }
    // The OTLP receiver (plaintext, like a local collector).
    let receiver = Receiver::default();
    let (otlp_addr, collector) = receiver.start().await;

    let guard = telemetry::init(
        "identity",
        &TelemetryConfig {
            otlp_endpoint: Some(format!("http://{otlp_addr}")),
            sample_ratio: 1.0,
            log_format: LogFormat::Json,
            log_filter: "info".to_owned(),
        },
    )
    .unwrap();
    // A second init in the same process is a no-op.
    let second = telemetry::init("scheduling", &TelemetryConfig::default()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(TRUST_DOMAIN).unwrap();
    let cfg = config_with_pki(dir.path(), &pki, "identity");
    let running = ServiceHost::new("identity", &cfg)
        .add_service(Whoami)
        .start(pending_forever())
        .await
        .unwrap();

    let channel = connect_as(&pki, running.grpc_addr, "gateway", "localhost").await;

    let root = tracing::info_span!("test.root");
    let root_cx = root.context();
    let root_trace = root_cx.span().span_context().trace_id().to_string();
    let root_span = root_cx.span().span_context().span_id().to_string();
    assert_ne!(
        root_trace, "00000000000000000000000000000000",
        "tracing is not installed"
    );
    async {
        let mut health = HealthClient::new(channel.clone());
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        // A failing call too: its status code must be recorded.
        let mut health = HealthClient::new(channel.clone());
        let err = health
            .check(HealthCheckRequest {
                service: "no.such.Service".to_owned(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }
    .instrument(root.clone())
    .await;
    drop(root);

    // Give the server a moment to close its span (the response body end), then flush.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (server, client_span) = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        telemetry::flush().await;
        let spans = receiver.spans.lock().unwrap().clone();
        let find = |kind: SpanKind, status: &str| {
            spans
                .iter()
                .find(|(_, s)| {
                    s.name == "grpc.health.v1.Health/Check"
                        && s.kind == kind as i32
                        && hex(&s.trace_id) == root_trace
                        && attr(&s.attributes, "rpc.grpc.status_code").as_deref() == Some(status)
                })
                .cloned()
        };
        if let (Some(server), Some(client), Some(_), Some(_)) = (
            find(SpanKind::Server, "0"),
            find(SpanKind::Client, "0"),
            find(SpanKind::Server, "5"),
            spans.iter().find(|(_, s)| s.name == "test.root"),
        ) {
            break (server, client);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans not received; got {:?}",
            spans
                .iter()
                .map(|(svc, s)| (svc.clone(), s.name.clone(), s.kind, hex(&s.trace_id)))
                .collect::<Vec<_>>()
        );
    };
    let (service_name, server) = server;
    let (_, client_span) = client_span;

    assert_eq!(service_name, "carehub-identity");
    // Same trace; the server span's parent is the client span, whose parent is the root.
    assert_eq!(hex(&server.trace_id), root_trace);
    assert_eq!(hex(&server.parent_span_id), hex(&client_span.span_id));
    assert_eq!(hex(&client_span.parent_span_id), root_span);
    // Semantic attributes.
    assert_eq!(
        attr(&server.attributes, "rpc.system").as_deref(),
        Some("grpc")
    );
    assert_eq!(
        attr(&server.attributes, "rpc.service").as_deref(),
        Some("grpc.health.v1.Health")
    );
    assert_eq!(
        attr(&server.attributes, "rpc.method").as_deref(),
        Some("Check")
    );
    assert_eq!(
        attr(&server.attributes, "peer.workload").as_deref(),
        Some("gateway")
    );
    let request_id = attr(&server.attributes, "request.id").unwrap_or_default();
    assert!(!request_id.is_empty(), "request.id missing");

    running.shutdown().await.unwrap();
    second.shutdown().await;
    guard.shutdown().await;
    collector.abort();
}
