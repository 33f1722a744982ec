#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
//! Shared helpers for the platform's integration tests: a dev PKI on disk, a config that binds
//! port 0, a tiny `test.Whoami/Get` service answering the caller's workload; mTLS clients and a
//! raw HTTP GET (and the OTLP receiver, `carehub_testkit::otlp`) come from the test kit.

pub mod audited;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use carehub_platform::config::PlatformConfig;
use carehub_platform::devcerts::DevPki;
use carehub_platform::tls::PeerInfo;
use futures::future::BoxFuture;
use tonic::body::Body;

pub use carehub_testkit::grpc::http_get;
pub use carehub_testkit::pki::{client_store, connect_as};

pub const TRUST_DOMAIN: &str = "carehub.test";

/// Writes the CA and a `server` certificate into `dir` and returns a config using them.
pub fn config_with_pki(dir: &Path, pki: &DevPki, server_name: &str) -> PlatformConfig {
    pki.write_ca_to(dir).unwrap();
    pki.issue(server_name)
        .unwrap()
        .write_to(dir, "server")
        .unwrap();
    let mut cfg = PlatformConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..PlatformConfig::default()
    };
    cfg.tls.cert_file = dir.join("server.pem");
    cfg.tls.key_file = dir.join("server-key.pem");
    cfg.tls.ca_file = dir.join("ca.pem");
    cfg.tls.trust_domain = TRUST_DOMAIN.to_owned();
    cfg.tls.reload_interval_secs = 1;
    cfg.limits.drain_timeout_secs = 1;
    cfg.limits.handshake_timeout_ms = 2_000;
    cfg
}

/// `test.Whoami/Get`: answers the caller's workload (from `PeerInfo`) as a StringValue.
#[derive(Clone)]
pub struct Whoami;

impl tonic::server::NamedService for Whoami {
    const NAME: &'static str = "test.Whoami";
}

struct WhoamiUnary;

impl tonic::server::UnaryService<()> for WhoamiUnary {
    type Response = String;
    type Future = std::future::Ready<Result<tonic::Response<String>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<()>) -> Self::Future {
        let workload = PeerInfo::of(&request)
            .and_then(|p| p.workload.clone())
            .unwrap_or_else(|| "<none>".to_owned());
        std::future::ready(Ok(tonic::Response::new(workload)))
    }
}

impl tower::Service<http::Request<Body>> for Whoami {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(tonic_prost::ProstCodec::<String, ()>::default());
            Ok(grpc.unary(WhoamiUnary, req).await)
        })
    }
}

/// Calls `test.Whoami/Get` over `channel`.
pub async fn whoami<T>(channel: T) -> Result<String, tonic::Status>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = prost::bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.into().to_string()))?;
    let response = grpc
        .unary(
            tonic::Request::new(()),
            http::uri::PathAndQuery::from_static("/test.Whoami/Get"),
            tonic_prost::ProstCodec::<(), String>::default(),
        )
        .await?;
    Ok(response.into_inner())
}

pub fn pending_forever() -> impl std::future::Future<Output = ()> + Send + 'static {
    std::future::pending::<()>()
}

pub type Shared<T> = Arc<std::sync::Mutex<T>>;
