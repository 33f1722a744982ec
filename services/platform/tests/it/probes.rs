#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Kubernetes' native gRPC probes: `grpc.health.v1.Health/Check` in plaintext on the admin port
//! (kubelet cannot present a client certificate), sharing the mTLS port's health state —
//! `""` follows readiness, `"liveness"` stays SERVING while the process answers — and nothing
//! else of the gRPC API reachable there.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carehub_platform::devcerts::DevPki;
use carehub_platform::server::{ServiceHost, LIVENESS_SERVICE};
use common::*;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn probe(admin: std::net::SocketAddr, service: &str) -> Result<i32, tonic::Status> {
    // What kubelet does: HTTP/2 with prior knowledge, no TLS.
    let channel = Channel::from_shared(format!("http://{admin}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map(|r| r.into_inner().status)
}

async fn until_status(admin: std::net::SocketAddr, service: &str, want: ServingStatus) {
    let start = Instant::now();
    loop {
        if probe(admin, service).await.ok() == Some(want as i32) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{service:?} never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn kubelet_grpc_probes_read_health_in_plaintext_on_the_admin_port() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(TRUST_DOMAIN).unwrap();
    let cfg = config_with_pki(dir.path(), &pki, "identity");
    let ready = Arc::new(AtomicBool::new(true));
    let flag = ready.clone();
    let running = ServiceHost::new("identity", &cfg)
        .add_service(Whoami)
        .readiness(Arc::new(move || flag.load(Ordering::SeqCst)))
        .start(pending_forever())
        .await
        .unwrap();
    let admin = running.admin_addr;

    until_status(admin, "", ServingStatus::Serving).await;
    assert_eq!(
        probe(admin, LIVENESS_SERVICE).await.unwrap(),
        ServingStatus::Serving as i32
    );

    // Unready (e.g. keys stale): readiness fails, liveness does not.
    ready.store(false, Ordering::SeqCst);
    until_status(admin, "", ServingStatus::NotServing).await;
    assert_eq!(
        probe(admin, LIVENESS_SERVICE).await.unwrap(),
        ServingStatus::Serving as i32
    );
    ready.store(true, Ordering::SeqCst);
    until_status(admin, "", ServingStatus::Serving).await;

    // Only Check is there: not Watch, not reflection, not the service's own RPCs.
    let channel = Channel::from_shared(format!("http://{admin}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await;
    let refused = match watch {
        Err(status) => status,
        Ok(stream) => stream.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    let unknown = probe(admin, "no.such.Service").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // The mTLS port still refuses plaintext.
    let plaintext = Channel::from_shared(format!("http://{}", running.grpc_addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        assert!(HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .is_err());
    }
    running.shutdown().await.unwrap();
}
