#![allow(clippy::unwrap_used, clippy::expect_used)]
//! mTLS end to end: a real `ServiceHost` on 127.0.0.1:0 with certificates from an in-memory
//! dev CA; clients with and without valid certificates; hot reload; graceful shutdown.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use carehub_platform::client;
use carehub_platform::devcerts::DevPki;
use carehub_platform::server::ServiceHost;
use carehub_platform::tls::{self, TlsStore};
use common::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn target(addr: std::net::SocketAddr) -> String {
    format!("https://{addr}")
}

async fn check(channel: client::ServiceChannel, service: &str) -> Result<i32, tonic::Status> {
    let mut health = HealthClient::new(channel);
    let response = health
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status)
}

/// Calls health over a client built from `config`; any failure (connect or call) is `Err`.
async fn check_with(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<i32, String> {
    check_with_error(addr, config)
        .await
        .map_err(|e| format!("{e:#}"))
}

/// Like [`check_with`], keeping the error (and its chain of sources).
async fn check_with_error(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<i32, anyhow::Error> {
    let channel = client::connect_with_client_config(&target(addr), config, "localhost").await?;
    Ok(
        tokio::time::timeout(Duration::from_secs(5), check(channel, ""))
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))??,
    )
}

/// The TLS alert named by the `io::Error` somewhere in `err`'s chain of sources. The TLS stack
/// hands the client an `InvalidData` error carrying rustls's rendering of
/// `rustls::Error::AlertReceived(alert)` (as text, not as the typed error), so it is matched
/// against exactly that rendering.
fn alert_in(err: &(dyn std::error::Error + 'static)) -> Option<rustls::AlertDescription> {
    use rustls::AlertDescription as A;
    let alerts = [
        A::CertificateRequired,
        A::UnknownCA,
        A::DecryptError,
        A::BadCertificate,
        A::CertificateUnknown,
        A::AccessDenied,
        A::HandshakeFailure,
        A::UnsupportedCertificate,
        A::CertificateExpired,
        A::CertificateRevoked,
    ];
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let text = io.get_ref().map(ToString::to_string).unwrap_or_default();
            if let Some(alert) = alerts
                .into_iter()
                .find(|a| text == rustls::Error::AlertReceived(*a).to_string())
            {
                return Some(alert);
            }
        }
        next = e.source();
    }
    None
}

/// The TLS alert the server sent, read out of a failed connect or call.
fn alert_of(err: &anyhow::Error) -> Option<rustls::AlertDescription> {
    err.chain().find_map(alert_in)
}

#[tokio::test]
async fn mtls_accepts_our_workloads_only_and_reports_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(TRUST_DOMAIN).unwrap();
    let cfg = config_with_pki(dir.path(), &pki, "identity");
    let running = ServiceHost::new("identity", &cfg)
        .add_service(Whoami)
        .start(pending_forever())
        .await
        .unwrap();
    let addr = running.grpc_addr;

    // A workload of our CA: health SERVING, and the server sees which workload called.
    let store = client_store(&pki, "gateway");
    let channel = connect_as(&pki, addr, "gateway", "localhost").await;
    assert_eq!(
        check(channel.clone(), "").await.unwrap(),
        ServingStatus::Serving as i32
    );
    assert_eq!(
        check(channel.clone(), "test.Whoami").await.unwrap(),
        ServingStatus::Serving as i32
    );
    assert_eq!(whoami(channel.clone()).await.unwrap(), "gateway");
    // x-request-id: echoed when given, generated when absent.
    let mut health = HealthClient::new(channel.clone());
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    request
        .metadata_mut()
        .insert("x-request-id", "req-42".parse().unwrap());
    let response = health.check(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "req-42");
    let response = health.check(HealthCheckRequest::default()).await.unwrap();
    let generated = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(generated.len(), 36, "{generated}");
    // The server name is verified too: the server certificate is not "billing".
    assert!(client::connect(&target(addr), &store, "billing")
        .await
        .is_err());

    // No client certificate: rejected.
    let mut roots = rustls::RootCertStore::empty();
    for ca in tls::parse_certs(pki.ca_pem.as_bytes()).unwrap() {
        roots.add(ca).unwrap();
    }
    let mut no_cert = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    no_cert.alpn_protocols = vec![b"h2".to_vec()];
    // TLS 1.3: the server reads the client's (empty) certificate after the client considers
    // the handshake done, and answers with the certificate_required alert (RFC 8446 §4.4.2.4).
    let err = check_with_error(addr, Arc::new(no_cert))
        .await
        .expect_err("a client without certificate was served");
    assert_eq!(
        alert_of(&err),
        Some(rustls::AlertDescription::CertificateRequired),
        "{err:?}"
    );

    // A certificate from another CA (same names, same trust domain): rejected.
    let rogue_ca = DevPki::new(TRUST_DOMAIN).unwrap();
    let rogue = rogue_ca.issue("gateway").unwrap();
    let rogue_store =
        TlsStore::from_pem(&rogue.cert_pem, &rogue.key_pem, &pki.ca_pem, TRUST_DOMAIN).unwrap();
    // The rogue CA has our CA's name, so the server finds our CA as the issuer and the chain's
    // signature does not verify: rustls answers decrypt_error (a bad signature), not a
    // certificate it merely does not know.
    let err = check_with_error(addr, rogue_store.client_config().unwrap())
        .await
        .expect_err("a certificate of another CA was served");
    assert_eq!(
        alert_of(&err),
        Some(rustls::AlertDescription::DecryptError),
        "{err:?}"
    );
    // A CA of another name: unknown_ca.
    let stranger = DevPki::new("elsewhere.example").unwrap();
    let stranger_cert = stranger.issue("gateway").unwrap();
    let stranger_store = TlsStore::from_pem(
        &stranger_cert.cert_pem,
        &stranger_cert.key_pem,
        &pki.ca_pem,
        TRUST_DOMAIN,
    )
    .unwrap();
    let err = check_with_error(addr, stranger_store.client_config().unwrap())
        .await
        .expect_err("a certificate of an unknown CA was served");
    assert_eq!(
        alert_of(&err),
        Some(rustls::AlertDescription::UnknownCA),
        "{err:?}"
    );

    // Plaintext h2c: rejected.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5));
    let plain_result = match plain.connect().await {
        Err(e) => Err(e.to_string()),
        Ok(channel) => {
            let mut health = HealthClient::new(channel);
            health
                .check(HealthCheckRequest::default())
                .await
                .map(|r| r.into_inner().status)
                .map_err(|s| s.to_string())
        }
    };
    assert!(
        plain_result.is_err(),
        "plaintext must be refused: {plain_result:?}"
    );

    // The good client still works after all that (the accept loop was not disturbed).
    assert_eq!(whoami(channel.clone()).await.unwrap(), "gateway");

    // Metrics counted the calls by method and code.
    let (status, metrics) = http_get(running.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("carehub_grpc_server_requests_total{service=\"identity\",method=\"/test.Whoami/Get\",code=\"OK\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("carehub_grpc_server_handling_seconds_bucket{service=\"identity\",method=\"/grpc.health.v1.Health/Check\""), "{metrics}");

    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_without_certificate_fails_at_the_handshake() {
    // The same refusal seen from a raw TLS client: the server aborts the handshake, so the
    // first read after it fails.
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(TRUST_DOMAIN).unwrap();
    let cfg = config_with_pki(dir.path(), &pki, "identity");
    let running = ServiceHost::new("identity", &cfg)
        .start(pending_forever())
        .await
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in tls::parse_certs(pki.ca_pem.as_bytes()).unwrap() {
        roots.add(ca).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(running.grpc_addr)
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let outcome = match connector.connect(name, tcp).await {
        Err(e) => Err(e),
        Ok(mut stream) => {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(0)) => Err(std::io::Error::other("closed")),
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(std::io::Error::other("timed out")),
            }
        }
    };
    let err = outcome.expect_err("a client without certificate must be refused");
    assert_eq!(
        alert_in(&err),
        Some(rustls::AlertDescription::CertificateRequired),
        "unexpected error: {err:?}"
    );
    running.shutdown().await.unwrap();
}

async fn peer_serial(addr: std::net::SocketAddr, store: &Arc<TlsStore>) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(store.client_config().unwrap());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    tls::cert_serial_hex(leaf.as_ref()).unwrap()
}

fn serial_of(pem: &str) -> String {
    let der = tls::parse_certs(pem.as_bytes()).unwrap().remove(0);
    tls::cert_serial_hex(der.as_ref()).unwrap()
}

#[tokio::test]
async fn rotated_certificates_are_served_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(TRUST_DOMAIN).unwrap();
    let cfg = config_with_pki(dir.path(), &pki, "identity");
    let original = serial_of(&std::fs::read_to_string(&cfg.tls.cert_file).unwrap());
    let running = ServiceHost::new("identity", &cfg)
        .add_service(Whoami)
        .start(pending_forever())
        .await
        .unwrap();
    let store = client_store(&pki, "gateway");
    assert_eq!(peer_serial(running.grpc_addr, &store).await, original);

    // Rotate the server certificate on disk.
    let next = pki.issue("identity").unwrap();
    next.write_to(dir.path(), "server").unwrap();
    let rotated = serial_of(&next.cert_pem);
    assert_ne!(rotated, original);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = peer_serial(running.grpc_addr, &store).await;
        if seen == rotated {
            break;
        }
        assert_eq!(seen, original, "neither the old nor the new certificate");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let channel = client::connect(&target(running.grpc_addr), &store, "localhost")
        .await
        .unwrap();
    assert_eq!(whoami(channel).await.unwrap(), "gateway");

    // Rotate the CA: clients of the old CA are refused, clients of the new one accepted.
    let new_pki = DevPki::new(TRUST_DOMAIN).unwrap();
    new_pki
        .issue("identity")
        .unwrap()
        .write_to(dir.path(), "server")
        .unwrap();
    new_pki.write_ca_to(dir.path()).unwrap();
    let new_gateway = new_pki.issue("gateway").unwrap();
    let new_store = TlsStore::from_pem(
        &new_gateway.cert_pem,
        &new_gateway.key_pem,
        &new_pki.ca_pem,
        TRUST_DOMAIN,
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let channel = client::connect(&target(running.grpc_addr), &new_store, "localhost")
                .await
                .map_err(|e| e.to_string())?;
            whoami(channel).await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(name)) => {
                assert_eq!(name, "gateway");
                break;
            }
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!("the rotated CA was never used: {other:?}"),
        }
    }
    let old = client::connect(&target(running.grpc_addr), &store, "localhost").await;
    let old_result = match old {
        Err(e) => Err(e.to_string()),
        Ok(channel) => whoami(channel).await.map_err(|e| e.to_string()),
    };
    assert!(
        old_result.is_err(),
        "a certificate of the retired CA was accepted"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_before_the_listener_closes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(TRUST_DOMAIN).unwrap();
    let cfg = config_with_pki(dir.path(), &pki, "identity");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = ServiceHost::new("identity", &cfg)
        .add_service(Whoami)
        .start(async move {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
    let addr = running.grpc_addr;
    let admin = running.admin_addr;
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert_eq!(http_get(admin, "/readyz").await.0, 200);

    let store = client_store(&pki, "gateway");
    let channel = connect_as(&pki, addr, "gateway", "localhost").await;
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let waiter = tokio::spawn(running.wait());
    stop_tx.send(()).unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("no health update after shutdown began")
        .unwrap()
        .expect("health stream ended before NOT_SERVING");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // Still draining (the watch stream is open): not ready, but alive.
    assert_eq!(http_get(admin, "/readyz").await.0, 503);
    assert_eq!(http_get(admin, "/healthz").await.0, 200);

    // Drain timeout (1 s) ends the open watch stream; the server stops.
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("server did not stop after the drain timeout")
        .unwrap()
        .unwrap();
    // The listener is closed now.
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        client::connect(&target(addr), &store, "localhost"),
    )
    .await;
    assert!(matches!(refused, Ok(Err(_))), "listener still accepting");
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "admin port still open"
    );
}

#[tokio::test]
async fn handshakes_beyond_the_limit_are_shed_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(TRUST_DOMAIN).unwrap();
    let mut cfg = config_with_pki(dir.path(), &pki, "identity");
    cfg.limits.max_concurrent_handshakes = 1;
    cfg.limits.handshake_timeout_ms = 30_000;
    let running = ServiceHost::new("identity", &cfg)
        .add_service(Whoami)
        .start(pending_forever())
        .await
        .unwrap();
    let addr = running.grpc_addr;
    let gateway = pki.issue("gateway").unwrap();
    let config = TlsStore::from_pem(
        &gateway.cert_pem,
        &gateway.key_pem,
        &pki.ca_pem,
        TRUST_DOMAIN,
    )
    .unwrap()
    .client_config()
    .unwrap();

    // A client that connects and never says hello holds the only handshake slot.
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = check_with(addr, config.clone()).await;
    assert!(
        refused.is_err(),
        "a second handshake was queued: {refused:?}"
    );

    // Once it leaves, the slot is free again.
    drop(silent);
    let mut served = Err(String::new());
    for _ in 0..50 {
        served = check_with(addr, config.clone()).await;
        if served.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served.unwrap(), ServingStatus::Serving as i32);
    running.shutdown().await.unwrap();
}

/// A server with `test.Whoami` and a gateway client channel to it.
async fn whoami_server() -> (
    tempfile::TempDir,
    carehub_platform::server::RunningServer,
    client::ServiceChannel,
) {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(TRUST_DOMAIN).unwrap();
    let cfg = config_with_pki(dir.path(), &pki, "identity");
    let running = ServiceHost::new("identity", &cfg)
        .add_service(Whoami)
        .start(pending_forever())
        .await
        .unwrap();
    let channel = connect_as(&pki, running.grpc_addr, "gateway", "localhost").await;
    (dir, running, channel)
}

#[tokio::test]
async fn reflection_describes_the_error_details() {
    use prost::Message as _;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let (_dir, running, channel) = whoami_server().await;
    let mut reflection = ServerReflectionClient::new(channel);
    let mut ask = async |request: MessageRequest| -> Vec<prost_types::FileDescriptorProto> {
        let mut answers = reflection
            .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            }]))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        match answer.message_response.unwrap() {
            MessageResponse::FileDescriptorResponse(files) => files
                .file_descriptor_proto
                .iter()
                .map(|f| prost_types::FileDescriptorProto::decode(f.as_slice()).unwrap())
                .collect(),
            other => panic!("{other:?}"),
        }
    };
    // What `grpcurl -v` asks for to print a failing call's details, and `describe` shows.
    for symbol in [
        "google.rpc.BadRequest",
        "google.rpc.ErrorInfo",
        "google.rpc.RetryInfo",
        "google.rpc.PreconditionFailure",
        "google.rpc.Status",
    ] {
        let files = ask(MessageRequest::FileContainingSymbol(symbol.to_owned())).await;
        let (package, name) = symbol.rsplit_once('.').unwrap();
        assert!(
            files
                .iter()
                .any(|f| f.package() == package && f.message_type.iter().any(|m| m.name() == name)),
            "{symbol} not described: {:?}",
            files.iter().map(|f| f.name()).collect::<Vec<_>>()
        );
    }
    // The imports those files name are served too.
    for file in [
        "google/protobuf/duration.proto",
        "google/protobuf/any.proto",
    ] {
        let files = ask(MessageRequest::FileByFilename(file.to_owned())).await;
        assert!(files.iter().any(|f| f.name() == file), "{file}");
    }
    // And the carehub contracts are still there.
    let files = ask(MessageRequest::FileContainingSymbol(
        "carehub.common.v1.ErrorReason".to_owned(),
    ))
    .await;
    assert!(!files.is_empty());
    running.shutdown().await.unwrap();
}

/// Sends and receives message bodies as they are, without protobuf in between.
#[derive(Clone, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn raw_call(
    channel: client::ServiceChannel,
    path: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        path.parse::<http::uri::PathAndQuery>().unwrap(),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_body_that_does_not_decode_is_invalid_argument() {
    let (_dir, running, channel) = whoami_server().await;
    let check = "/grpc.health.v1.Health/Check";
    // Positive control: a valid HealthCheckRequest (field 1, service = "") by hand.
    let ok = raw_call(channel.clone(), check, vec![0x0a, 0x00])
        .await
        .unwrap();
    assert_eq!(ok, [0x08, 0x01], "SERVING");
    for garbage in [
        vec![0xff, 0xff, 0xff, 0xff], // a varint that never ends
        vec![0x0a, 0x05, b'a'],       // a string longer than the body
        vec![0x0a, 0x02, 0xc3, 0x28], // a string that is not UTF-8
        vec![0x0f],                   // wire type 7 does not exist
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), // not protobuf at all
    ] {
        let e = raw_call(channel.clone(), check, garbage.clone())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{garbage:?}: {e:?}");
        assert_eq!(
            carehub_platform::errors::details_of(&e).reason.as_deref(),
            Some("INVALID_FIELD"),
            "{e:?}"
        );
    }
    // The service still answers.
    assert_eq!(whoami(channel.clone()).await.unwrap(), "gateway");
    let (_, metrics) = http_get(running.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("carehub_grpc_server_requests_total{service=\"identity\",method=\"/grpc.health.v1.Health/Check\",code=\"INVALID_ARGUMENT\"} 5"),
        "{metrics}"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_method_names_add_no_metric_series() {
    let (_dir, running, channel) = whoami_server().await;
    let series = |metrics: &str| -> std::collections::BTreeSet<String> {
        metrics
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_owned()))
            .collect()
    };
    // One unknown call first, so the `unknown` series exist before the count.
    let probe = raw_call(channel.clone(), "/grpc.health.v1.Health/Bogus0", vec![])
        .await
        .unwrap_err();
    assert_eq!(probe.code(), tonic::Code::Unimplemented);
    let (_, before) = http_get(running.admin_addr, "/metrics").await;
    let before_series = series(&before);

    const N: usize = 25;
    for i in 1..=N {
        // Unknown methods of mounted services (one with a descriptor, reflection's) and of an
        // unknown service.
        for path in [
            format!("/grpc.health.v1.Health/Bogus{i}"),
            format!("/grpc.reflection.v1.ServerReflection/Bogus{i}"),
            format!("/no.such.Service{i}/Get"),
        ] {
            let e = raw_call(channel.clone(), &path, vec![]).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unimplemented, "{path}");
        }
    }
    let (_, after) = http_get(running.admin_addr, "/metrics").await;
    let added: Vec<_> = series(&after).difference(&before_series).cloned().collect();
    assert!(
        added.is_empty(),
        "{N} bogus method names added series: {added:?}"
    );
    assert!(!after.contains("Bogus"), "{after}");
    assert!(
        after.contains(&format!(
            "carehub_grpc_server_requests_total{{service=\"identity\",method=\"unknown\",code=\"UNIMPLEMENTED\"}} {}",
            3 * N + 1
        )),
        "{after}"
    );
    // Methods that exist keep their own label.
    check(channel.clone(), "").await.unwrap();
    let (_, metrics) = http_get(running.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("carehub_grpc_server_requests_total{service=\"identity\",method=\"/grpc.health.v1.Health/Check\",code=\"OK\"} 1"),
        "{metrics}"
    );
    running.shutdown().await.unwrap();
}
