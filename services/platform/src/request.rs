//! What a call carries through the platform, shared by the server, the client and the audit
//! trail: the request id (and the task-local that makes it the current one), the type-erased
//! service, and the completion of an RPC's span and metrics.
//!
//! A leaf (of the platform it imports only the metrics of `admin`), so that `audit` and `client`
//! use it without reaching up into `server`, which is built on both of them.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prost::bytes::Bytes;
use tonic::body::Body;
use tonic::Code;
use tower::util::BoxCloneSyncService;

use crate::admin::{self, Metrics};

/// A type-erased request handler (what is below the auth layer).
pub type BoxSvc = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// The request id of a call (`x-request-id`, generated when absent), in request extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The gRPC path of a call (`/carehub.identity.v1.IdentityService/GetProfile`), in request
/// extensions: handlers learn which RPC they serve from the request, so a name is written only
/// in the proto and in the policy table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcPath(pub std::sync::Arc<str>);

tokio::task_local! {
    static CURRENT_REQUEST_ID: String;
}

/// The request id of the RPC being handled by this task, if any. Outgoing calls through
/// `client::ServiceChannel` carry it as `x-request-id`; audit records can use it.
pub fn current_request_id() -> Option<String> {
    CURRENT_REQUEST_ID.try_with(Clone::clone).ok()
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
pub(crate) fn split_path(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    match trimmed.rsplit_once('/') {
        Some((service, method)) => (service, method),
        None => (trimmed, ""),
    }
}

/// The gRPC status of a response whose `grpc-status` is in the headers (trailers-only).
pub(crate) fn header_status(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

pub(crate) fn observe_response<B>(response: Response<B>, completion: Completion) -> Response<Body>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    if let Some(code) = header_status(response.headers()) {
        completion.finish(code);
        return response.map(Body::new);
    }
    if !response.status().is_success() {
        completion.finish(Code::Unknown);
        return response.map(Body::new);
    }
    response.map(|body| {
        Body::new(ObservedBody {
            inner: Body::new(body),
            completion: Some(completion),
        })
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanKind {
    Server,
    Client,
}

/// Ends an RPC: records the status on the span (closing it) and in the metrics.
pub(crate) struct Completion {
    pub(crate) span: tracing::Span,
    pub(crate) metrics: Option<(Arc<Metrics>, String)>,
    pub(crate) start: Instant,
    pub(crate) kind: SpanKind,
}

impl Completion {
    pub(crate) fn finish(self, code: Code) {
        self.span.record("rpc.grpc.status_code", code as i64);
        // OpenTelemetry semantic conventions: which codes make a span an error.
        let error = match self.kind {
            SpanKind::Client => code != Code::Ok,
            SpanKind::Server => matches!(
                code,
                Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::Unimplemented
                    | Code::Internal
                    | Code::Unavailable
                    | Code::DataLoss
            ),
        };
        if error {
            self.span.record("otel.status_code", "ERROR");
        }
        let elapsed = self.start.elapsed();
        if let Some((metrics, label)) = &self.metrics {
            metrics.record_rpc(label, code, elapsed);
        }
        tracing::debug!(
            parent: &self.span,
            code = admin::code_name(code),
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "rpc finished"
        );
    }
}

/// A response body that finishes its [`Completion`] with the status from the trailers, or
/// CANCELLED when dropped early.
pub(crate) struct ObservedBody {
    pub(crate) inner: Body,
    pub(crate) completion: Option<Completion>,
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let span = this.completion.as_ref().map(|c| c.span.clone());
        let _entered = span.as_ref().map(|s| s.enter());
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(done) = this.completion.take() {
                        done.finish(header_status(trailers).unwrap_or(Code::Unknown));
                    }
                }
            }
            Some(Err(status)) => {
                if let Some(done) = this.completion.take() {
                    done.finish(status.code());
                }
            }
            None => {
                if let Some(done) = this.completion.take() {
                    done.finish(Code::Unknown);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(done) = self.completion.take() {
            done.finish(Code::Cancelled);
        }
    }
}

/// Runs `fut` with `id` as the [`current_request_id`] of its task.
pub(crate) fn scope_request_id<F: Future>(id: String, fut: F) -> impl Future<Output = F::Output> {
    CURRENT_REQUEST_ID.scope(id, fut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/carehub.identity.v1.IdentityService/Login"),
            ("carehub.identity.v1.IdentityService", "Login")
        );
        assert_eq!(split_path("/x"), ("x", ""));
    }

    #[tokio::test]
    async fn the_request_id_is_current_only_inside_its_scope() {
        assert_eq!(current_request_id(), None);
        let inside = scope_request_id("r-1".to_owned(), async { current_request_id() }).await;
        assert_eq!(inside.as_deref(), Some("r-1"));
        assert_eq!(current_request_id(), None);
    }
}
