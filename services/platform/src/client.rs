//! gRPC clients to other carehub services: mTLS channels that carry the trace context.
//!
//! ```ignore
//! let channel = carehub_platform::client::connect("https://identity:50051", &tls, "identity").await?;
//! let mut identity = IdentityInternalClient::new(channel);
//! ```
//!
//! Every call through a [`ServiceChannel`] gets a client span named after the RPC
//! (`otel.kind=client`, `rpc.*` attributes, child of the current span) whose context is sent
//! as `traceparent`/`tracestate`, so the server's span continues the same trace.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::Service;
use tracing::Instrument as _;

use crate::config::TlsConfig;
use crate::request::{current_request_id, observe_response, split_path, Completion, SpanKind};
use crate::telemetry;
use crate::tls::TlsStore;

/// A channel that creates a client span per call and propagates the trace context.
pub type ServiceChannel = TracedChannel;

/// A tonic [`Channel`] wrapped with client tracing; use it with any generated client.
#[derive(Clone, Debug)]
pub struct TracedChannel {
    inner: Channel,
}

impl TracedChannel {
    pub fn new(inner: Channel) -> Self {
        Self { inner }
    }

    pub fn into_inner(self) -> Channel {
        self.inner
    }
}

impl Service<http::Request<Body>> for TracedChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, tonic::transport::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let (service, method) = split_path(req.uri().path());
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        telemetry::inject_context(&span, req.headers_mut());
        if !req.headers().contains_key("x-request-id") {
            if let Some(id) =
                current_request_id().and_then(|id| http::HeaderValue::from_str(&id).ok())
            {
                req.headers_mut().insert("x-request-id", id);
            }
        }
        let completion = Completion {
            span: span.clone(),
            metrics: None,
            start: Instant::now(),
            kind: SpanKind::Client,
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = inner.call(req).instrument(span);
        Box::pin(async move {
            match fut.await {
                Ok(response) => Ok(observe_response(response, completion)),
                Err(err) => {
                    completion.finish(tonic::Code::Unavailable);
                    Err(err)
                }
            }
        })
    }
}

/// An interceptor for clients built on a plain [`Channel`]:
/// `FooClient::with_interceptor(channel, carehub_platform::client::propagate)`.
/// Injects the current span's context; prefer [`ServiceChannel`], which also makes a client span.
pub fn propagate(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let mut headers = http::HeaderMap::new();
    telemetry::inject_context(&tracing::Span::current(), &mut headers);
    for (name, value) in headers.iter() {
        if let Ok(key) = tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()) {
            if let Ok(value) = tonic::metadata::MetadataValue::try_from(value.as_bytes()) {
                req.metadata_mut().insert(key, value);
            }
        }
    }
    Ok(req)
}

/// `https://host:port`, `http://host:port` or `host:port` → the endpoint tonic dials
/// (always `http://`: TLS is done by our connector).
fn endpoint(target: &str) -> anyhow::Result<Endpoint> {
    let authority = target
        .strip_prefix("https://")
        .or_else(|| target.strip_prefix("http://"))
        .unwrap_or(target)
        .trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        anyhow::bail!("invalid gRPC endpoint {target:?}: expected https://host:port or host:port");
    }
    Ok(Endpoint::from_shared(format!("http://{authority}"))
        .with_context(|| format!("invalid gRPC endpoint {target:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

type Connector = tower::util::BoxCloneSyncService<
    http::Uri,
    TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    std::io::Error,
>;

fn connector(config: Arc<ClientConfig>, server_name: &str) -> anyhow::Result<Connector> {
    let server_name = ServerName::try_from(server_name.to_owned())
        .with_context(|| format!("invalid TLS server name {server_name:?}"))?;
    let tls = tokio_rustls::TlsConnector::from(config);
    Ok(tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |uri: http::Uri| {
            let tls = tls.clone();
            let server_name = server_name.clone();
            async move {
                let authority = uri
                    .authority()
                    .ok_or_else(|| std::io::Error::other("endpoint has no host:port"))?
                    .as_str()
                    .to_owned();
                let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
                tcp.set_nodelay(true)?;
                crate::stats::tls_client_handshake();
                let stream = tls.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        },
    )))
}

/// Connects over mTLS with our [`TlsStore`]; `server_name` is the name the server's
/// certificate must carry (the service name, e.g. `identity`, or `localhost`/an IP).
pub async fn connect(
    target: &str,
    tls: &Arc<TlsStore>,
    server_name: &str,
) -> anyhow::Result<ServiceChannel> {
    connect_with_client_config(target, tls.client_config()?, server_name).await
}

/// Like [`connect`], but connects on first use (services that start together).
pub fn connect_lazy(
    target: &str,
    tls: &Arc<TlsStore>,
    server_name: &str,
) -> anyhow::Result<ServiceChannel> {
    let channel = endpoint(target)?
        .connect_with_connector_lazy(connector(tls.client_config()?, server_name)?);
    Ok(TracedChannel::new(channel))
}

/// Loads our certificate, key and CA from the files of `cfg` (reloaded every
/// `reload_interval_secs` while the channel lives) and connects.
pub async fn connect_with_files(
    target: &str,
    cfg: &TlsConfig,
    server_name: &str,
) -> anyhow::Result<ServiceChannel> {
    let store = TlsStore::from_config(cfg)?;
    store.spawn_reloader(Duration::from_secs(cfg.reload_interval_secs.max(1)));
    connect(target, &store, server_name).await
}

/// Connects with an explicit rustls client configuration (tools and tests).
pub async fn connect_with_client_config(
    target: &str,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> anyhow::Result<ServiceChannel> {
    let channel = endpoint(target)?
        .connect_with_connector(connector(config, server_name)?)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    Ok(TracedChannel::new(channel))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn endpoints_are_normalized() {
        assert_eq!(
            endpoint("https://127.0.0.1:5").unwrap().uri().to_string(),
            "http://127.0.0.1:5/"
        );
        assert_eq!(
            endpoint("identity:50051").unwrap().uri().to_string(),
            "http://identity:50051/"
        );
        assert!(endpoint("https://x/y").is_err());
    }
}
