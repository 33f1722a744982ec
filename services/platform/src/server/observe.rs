//! Observation of every call on the server: its span (named after the RPC, parent from
//! `traceparent`) and its metrics, labelled only with RPCs the server has ([`KnownRpcs`]).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http::{Request, Response};
use tonic::body::Body;
use tonic::Code;
use tower::Service;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::admin::Metrics;
use crate::request::{
    header_status, observe_response, split_path, Completion, RequestId, SpanKind,
};
use crate::telemetry;
use crate::tls::PeerInfo;

/// Every descriptor set whose services a server may mount: carehub's, health's, reflection's.
pub(super) fn described_sets() -> Vec<&'static [u8]> {
    vec![
        carehub_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
}

/// The RPCs a server answers, to label metrics and spans with: a path counts as known only
/// when its service is mounted and — for services with a descriptor — its method exists, so
/// attacker-chosen paths cannot create unbounded metric series. A mounted service without a
/// descriptor (a hand-written test service) has its methods labelled by name.
#[derive(Debug, Default)]
pub(crate) struct KnownRpcs {
    mounted: HashSet<String>,
    /// Methods of every service described by the descriptor sets.
    methods: HashMap<String, HashSet<String>>,
}

impl KnownRpcs {
    pub(crate) fn new(mounted: &[&str], descriptor_sets: &[&[u8]]) -> Self {
        use prost::Message as _;
        let mut methods: HashMap<String, HashSet<String>> = HashMap::new();
        for set in descriptor_sets {
            // The sets are compiled in; one that does not decode describes nothing.
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let name = match (package.as_str(), service.name.as_deref()) {
                        (_, None) => continue,
                        ("", Some(n)) => n.to_owned(),
                        (p, Some(n)) => format!("{p}.{n}"),
                    };
                    methods
                        .entry(name)
                        .or_default()
                        .extend(service.method.into_iter().filter_map(|m| m.name));
                }
            }
        }
        Self {
            mounted: mounted.iter().map(|s| (*s).to_owned()).collect(),
            methods,
        }
    }

    /// Whether `/service/method` is an RPC this server has.
    pub(crate) fn contains(&self, service: &str, method: &str) -> bool {
        self.mounted.contains(service)
            && self
                .methods
                .get(service)
                .is_none_or(|methods| methods.contains(method))
    }
}

/// The server span (named after the RPC, parent from `traceparent`) and the RPC metrics.
#[derive(Clone)]
pub struct ObserveService<S> {
    pub(super) inner: S,
    pub(super) metrics: Arc<Metrics>,
    pub(super) known: Arc<KnownRpcs>,
}

impl<S> Service<Request<Body>> for ObserveService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let path = req.uri().path();
        let (service, method) = split_path(path);
        let known = self.known.contains(service, method);
        // Unknown paths (an unknown service, or an unknown method of a known one) share one
        // label and one span name: attacker-chosen paths must not create unbounded metric series.
        let (label, name) = if known {
            (path.to_owned(), format!("{service}/{method}"))
        } else {
            ("unknown".to_owned(), "unknown".to_owned())
        };
        let (service, method) = if known {
            (service.to_owned(), method.to_owned())
        } else {
            ("unknown".to_owned(), "unknown".to_owned())
        };
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let workload = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.workload.clone())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %name,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            request.id = %request_id,
            peer.workload = %workload,
        );
        let parent = telemetry::extract_context(req.headers());
        let _ = span.set_parent(parent);
        let completion = Completion {
            span: span.clone(),
            metrics: Some((self.metrics.clone(), label)),
            start: Instant::now(),
            kind: SpanKind::Server,
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = inner.call(req).instrument(span);
        Box::pin(async move {
            let response = undecodable_as_invalid_argument(fut.await?);
            Ok(observe_response(response, completion))
        })
    }
}

/// How prost describes a message that does not decode (tonic answers it with INTERNAL).
const PROTOBUF_DECODE_ERROR: &str = "failed to decode Protobuf message";

/// tonic answers a request body that is not a valid protobuf encoding of the request message
/// with INTERNAL ("failed to decode Protobuf message: ..."), as if the server had failed. It is
/// the client's error: INVALID_ARGUMENT with reason INVALID_FIELD. The decode error is answered
/// before any handler runs, trailers-only, so the status is in the response headers.
pub(crate) fn undecodable_as_invalid_argument(response: Response<Body>) -> Response<Body> {
    if header_status(response.headers()) != Some(Code::Internal) {
        return response;
    }
    match tonic::Status::from_header_map(response.headers()) {
        Some(status) if status.message().starts_with(PROTOBUF_DECODE_ERROR) => {
            crate::errors::status(
                Code::InvalidArgument,
                carehub_proto::common::v1::ErrorReason::InvalidField,
                format!("the request body does not decode: {}", status.message()),
            )
            .into_http()
        }
        _ => response,
    }
}
