//! Request metadata, status assertions and a plain HTTP GET for the admin port.

use std::net::SocketAddr;

/// `req` with `authorization: Bearer <token>`.
pub fn with_token<T>(mut req: tonic::Request<T>, access_token: &str) -> tonic::Request<T> {
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {access_token}")
            .parse()
            .expect("header value"),
    );
    req
}

/// `req` with `idempotency-key: <key>`.
pub fn with_key<T>(mut req: tonic::Request<T>, key: &str) -> tonic::Request<T> {
    req.metadata_mut()
        .insert("idempotency-key", key.parse().expect("header value"));
    req
}

/// Asserts `status` is `code` and, when given, carries `reason`; returns the violated fields.
pub fn assert_status(
    status: &tonic::Status,
    code: tonic::Code,
    reason: Option<&str>,
) -> Vec<String> {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let d = carehub_platform::errors::details_of(status);
    if let Some(r) = reason {
        assert_eq!(
            d.reason.as_deref(),
            Some(r),
            "unexpected reason: {status:?}"
        );
    }
    d.field_violations.into_iter().map(|(f, _)| f).collect()
}

/// The `google.rpc.ErrorInfo` reason of `status`, if any.
pub fn reason(status: &tonic::Status) -> Option<String> {
    carehub_platform::errors::details_of(status).reason
}

/// `GET path` over HTTP/1.1 on `addr` (`host:port`): the status and the whole response text
/// (headers included), or `None` while nothing answers.
pub async fn http_get_raw(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

/// `GET path` on `addr`: the status and the body; panics when nothing answers.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, text) = http_get_raw(&addr.to_string(), path)
        .await
        .unwrap_or_else(|| panic!("nothing answers GET {path} on {addr}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A port nothing listens on right now, for a server whose address must be known before it
/// starts (another service's outbox target, a separate process).
///
/// Chosen below Linux's ephemeral range (32768-60999 by default), where every other test's
/// port-0 listener and outgoing connection gets its port: a port the kernel handed out here
/// and released could be handed to a parallel test process before our server binds it (seen:
/// "Address already in use" in a suite that reserves three ports). Random within 20000-32767
/// and checked free; parallel callers of this function could still draw the same port, once
/// in thousands of suites.
pub fn free_port() -> u16 {
    use rand::Rng as _;
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let port = rng.gen_range(20_000..32_768);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding port 0")
        .port()
}
