//! `carehub health` against a real carehub gRPC server (the platform's server, which every
//! service runs, with its mTLS-only port): the binary exits 0 only on SERVING and names the
//! reason otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;

use std::sync::Arc;

use carehub_platform::auth::{AuthLayer, Authorizer, Policy, TokenVerifier, UserCaller};
use carehub_platform::config::{PlatformConfig, TlsConfig};
use carehub_platform::devcerts::DevPki;
use carehub_platform::server::{RunningServer, ServiceHost};
use tonic_health::ServingStatus;

const TRUST_DOMAIN: &str = "carehub.local";

/// Every service runs behind the auth layer; health must pass it with a workload certificate
/// and no user token.
struct NoUsers;

#[tonic::async_trait]
impl TokenVerifier for NoUsers {
    async fn verify(&self, _token: &str) -> Result<UserCaller, tonic::Status> {
        Err(tonic::Status::unauthenticated("no users in this test"))
    }
}

struct Fixture {
    server: RunningServer,
    dir: tempfile::TempDir,
}

/// A server named `identity` on 127.0.0.1:0 behind the auth layer, with a fresh dev PKI; the
/// client certificate is a `helm-test` workload's, as the chart's test pod has.
async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(TRUST_DOMAIN).unwrap();
    pki.write_to(dir.path(), &["identity", "helm-test"])
        .unwrap();
    let cfg = PlatformConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls: TlsConfig {
            cert_file: dir.path().join("identity.pem"),
            key_file: dir.path().join("identity-key.pem"),
            ca_file: dir.path().join("ca.pem"),
            trust_domain: TRUST_DOMAIN.to_owned(),
            ..TlsConfig::default()
        },
        ..PlatformConfig::default()
    };
    let authorizer = Arc::new(Authorizer {
        policy: Policy::new(),
        verifier: Arc::new(NoUsers),
        gateway_workloads: vec!["gateway".to_owned()],
    });
    let server = ServiceHost::new("identity", &cfg)
        .with_auth(AuthLayer::new(authorizer))
        .start(std::future::pending())
        .await
        .unwrap();
    Fixture { server, dir }
}

fn health(dir: &Path, addr: &str, extra: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_carehub"))
        .arg("health")
        .args(["--service", "identity", "--addr", addr])
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("helm-test.pem"))
        .arg("--key")
        .arg(dir.join("helm-test-key.pem"))
        .args(extra)
        // The flags must win over whatever a developer's shell exports.
        .env_remove("CAREHUB_SERVER__TLS__CA_FILE")
        .env_remove("CAREHUB_SERVER__TLS__CERT_FILE")
        .env_remove("CAREHUB_SERVER__TLS__KEY_FILE")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts the failure shape of `carehub health` — exit code 1, nothing on stdout (where
/// success prints), one `UNHEALTHY <service> at <addr>: ...` line on stderr — and returns that
/// line without the prefix, for the test to check the reason.
fn failure(out: &Output, addr: &str) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    assert!(
        out.stdout.is_empty(),
        "failure printed on stdout: {}",
        text(out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let prefix = format!("UNHEALTHY identity at {addr}: ");
    let reason = stderr
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("not a failure line: {stderr:?}"));
    assert_eq!(reason.lines().count(), 1, "{stderr:?}");
    reason.trim_end().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn serving_exits_zero_and_not_serving_names_the_status() {
    let f = start().await;
    let addr = f.server.grpc_addr.to_string();

    let out = health(f.dir.path(), &addr, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("identity at {addr}: SERVING\n")
    );
    assert!(out.stderr.is_empty(), "{}", text(&out));

    // What the server reports while draining, or when its keys went stale.
    f.server
        .health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let out = health(f.dir.path(), &addr, &[]);
    assert_eq!(failure(&out, &addr), "NOT_SERVING");

    // A gRPC service the server does not know.
    let out = health(f.dir.path(), &addr, &["--grpc-service", "no.such.Service"]);
    let reason = failure(&out, &addr);
    assert!(
        reason.starts_with("health check failed: NotFound: "),
        "{reason}"
    );

    f.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn another_ca_a_wrong_server_name_and_a_closed_port_fail_with_the_reason() {
    let f = start().await;
    let addr = f.server.grpc_addr.to_string();

    // Our client certificate from another CA: the server refuses the handshake. Under TLS 1.3
    // the client learns it only on its first read, so the call fails as a transport error
    // (naming the server's alert when the client read it before the connection closed).
    let other = tempfile::tempdir().unwrap();
    DevPki::new(TRUST_DOMAIN)
        .unwrap()
        .write_to(other.path(), &["helm-test"])
        .unwrap();
    std::fs::copy(f.dir.path().join("ca.pem"), other.path().join("ca.pem")).unwrap();
    let out = health(other.path(), &addr, &[]);
    let reason = failure(&out, &addr);
    assert!(
        reason.starts_with("health check failed: ") && reason.contains("transport error"),
        "{reason}"
    );

    // The server's certificate does not carry the name we expect.
    let out = health(f.dir.path(), &addr, &["--server-name", "billing"]);
    let reason = failure(&out, &addr);
    assert!(
        reason.starts_with("cannot connect over mTLS: ")
            && reason.contains("certificate not valid for name \"billing\""),
        "{reason}"
    );

    f.server.shutdown().await.unwrap();

    // Nothing listens any more.
    let out = health(f.dir.path(), &addr, &["--timeout-secs", "3"]);
    let reason = failure(&out, &addr);
    assert!(
        reason.starts_with("cannot connect over mTLS: ") && reason.contains("Connection refused"),
        "{reason}"
    );
}

#[test]
fn missing_certificate_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = health(dir.path(), "127.0.0.1:1", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("UNHEALTHY reading the client certificate "),
        "{stderr}"
    );
}
