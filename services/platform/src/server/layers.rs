//! The layers around every call: the request id (outermost), errors of the auth layer turned
//! into gRPC statuses, and the deadline and concurrency limit (innermost, around the routes).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use http_body::Body as HttpBody;
use prost::bytes::Bytes;
use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::Code;
use tower::Service;

use crate::request::{scope_request_id, RequestId, RpcPath};

const REQUEST_ID: &str = "x-request-id";

fn valid_request_id(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    (!s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')))
    .then_some(s)
}

/// Takes `x-request-id` (when well-formed) or generates one; puts it into the headers and
/// extensions ([`RequestId`]) and echoes it on the response.
#[derive(Clone)]
pub struct RequestIdService<S> {
    pub(super) inner: S,
}

impl<S> Service<Request<Body>> for RequestIdService<S>
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

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let id = match req.headers().get(REQUEST_ID).and_then(valid_request_id) {
            Some(id) => id.to_owned(),
            None => uuid::Uuid::now_v7().to_string(),
        };
        let value = HeaderValue::from_str(&id).ok();
        if let Some(value) = &value {
            req.headers_mut().insert(REQUEST_ID, value.clone());
        }
        req.extensions_mut().insert(RequestId(id.clone()));
        let path = RpcPath(req.uri().path().into());
        req.extensions_mut().insert(path);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = scope_request_id(id, inner.call(req));
        Box::pin(async move {
            let mut response = fut.await?;
            if let Some(value) = value {
                response.headers_mut().insert(REQUEST_ID, value);
            }
            Ok(response)
        })
    }
}

/// Turns a service's errors (and any response body) into gRPC responses.
#[derive(Clone)]
pub(super) struct ErrorToStatus<S> {
    pub(super) inner: S,
    /// The error of a failed `poll_ready`, answered by the next `call`.
    pub(super) not_ready: Option<tonic::Status>,
}

impl<S, B> Service<Request<Body>> for ErrorToStatus<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match ready!(self.inner.poll_ready(cx)) {
            Ok(()) => self.not_ready = None,
            Err(err) => self.not_ready = Some(tonic::Status::from_error(err.into())),
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if let Some(status) = self.not_ready.take() {
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = inner.call(req);
        Box::pin(async move {
            Ok(match fut.await {
                Ok(response) => response.map(Body::new),
                Err(err) => tonic::Status::from_error(err.into()).into_http(),
            })
        })
    }
}

/// Deadline (`limits.request_timeout_ms` → DEADLINE_EXCEEDED) and concurrency limit with load
/// shedding (`limits.concurrency_limit` → RESOURCE_EXHAUSTED with RetryInfo), as gRPC statuses.
#[derive(Clone)]
pub struct LimitsService<S> {
    pub(super) inner: S,
    pub(super) permits: Arc<Semaphore>,
    pub(super) timeout: Duration,
}

impl<S> Service<Request<Body>> for LimitsService<S>
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
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            use tonic_types::{ErrorDetails, StatusExt as _};
            let status = tonic::Status::with_error_details(
                Code::ResourceExhausted,
                "the server is at its concurrency limit; retry with backoff",
                ErrorDetails::with_retry_info(Some(Duration::from_millis(200))),
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let timeout = self.timeout;
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, inner.call(req)).await {
                Ok(response) => response,
                Err(_) => Ok(tonic::Status::deadline_exceeded(
                    "the request did not finish within the server's deadline",
                )
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::request::header_status;

    #[test]
    fn request_ids_are_validated() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123_x.y:z")).is_some());
        assert!(valid_request_id(&HeaderValue::from_static("a b")).is_none());
        assert!(valid_request_id(&HeaderValue::from_static("")).is_none());
        let long = "a".repeat(129);
        assert!(valid_request_id(&HeaderValue::from_str(&long).unwrap()).is_none());
    }

    #[derive(Clone)]
    struct Slow(Duration);
    impl Service<Request<Body>> for Slow {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<Body>) -> Self::Future {
            let d = self.0;
            Box::pin(async move {
                tokio::time::sleep(d).await;
                Ok(tonic::Status::ok("").into_http())
            })
        }
    }

    #[tokio::test]
    async fn limits_answer_deadline_exceeded_and_resource_exhausted() {
        let mut svc = LimitsService {
            inner: Slow(Duration::from_millis(300)),
            permits: Arc::new(Semaphore::new(1)),
            timeout: Duration::from_millis(100),
        };
        let first = svc.call(Request::new(Body::empty()));
        let second = svc.call(Request::new(Body::empty())).await.unwrap();
        assert_eq!(
            header_status(second.headers()),
            Some(Code::ResourceExhausted)
        );
        let first = first.await.unwrap();
        assert_eq!(header_status(first.headers()), Some(Code::DeadlineExceeded));
        // The permit is back.
        let mut fast = LimitsService {
            inner: Slow(Duration::from_millis(1)),
            permits: svc.permits.clone(),
            timeout: Duration::from_millis(100),
        };
        let ok = fast.call(Request::new(Body::empty())).await.unwrap();
        assert_eq!(header_status(ok.headers()), Some(Code::Ok));
    }
}
