#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Identity's gRPC port speaks mTLS only: a client without a certificate, with a certificate
//! from another CA, or in plaintext never reaches a handler (and writes nothing).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use carehub_platform::client;
use carehub_platform::devcerts::DevPki;
use carehub_platform::tls::{self, TlsStore};
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use common::*;

async fn register_over(channel: tonic::transport::Channel, email: &str) -> Result<(), String> {
    IdentityServiceClient::new(channel)
        .register_patient(patient_request(email, "correct horse battery staple"))
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

async fn try_with_config(
    app: &TestApp,
    config: Arc<rustls::ClientConfig>,
    email: &str,
) -> Result<(), String> {
    let channel = client::connect_with_client_config(
        &format!("https://{}", app.grpc_addr),
        config,
        "identity",
    )
    .await
    .map_err(|e| format!("{e:#}"))?;
    register_over(channel.into_inner(), email).await
}

#[tokio::test]
async fn only_clients_with_a_certificate_from_our_ca_get_through() {
    let app = spawn().await;

    // Positive control: the gateway's certificate from our CA works.
    register_over(app.channel("gateway").await, "ok@example.com")
        .await
        .unwrap();

    // No client certificate.
    let mut roots = rustls::RootCertStore::empty();
    for ca in tls::parse_certs(app.pki().ca_pem.as_bytes()).unwrap() {
        roots.add(ca).unwrap();
    }
    let mut no_cert = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    no_cert.alpn_protocols = vec![b"h2".to_vec()];
    assert!(
        try_with_config(&app, Arc::new(no_cert), "nocert@example.com")
            .await
            .is_err()
    );

    // A "gateway" certificate issued by another CA.
    let rogue = DevPki::new(TRUST_DOMAIN).unwrap().issue("gateway").unwrap();
    let rogue_store = TlsStore::from_pem(
        &rogue.cert_pem,
        &rogue.key_pem,
        &app.pki().ca_pem,
        TRUST_DOMAIN,
    )
    .unwrap();
    assert!(try_with_config(
        &app,
        rogue_store.client_config().unwrap(),
        "rogue@example.com"
    )
    .await
    .is_err());

    // Plaintext HTTP/2.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5));
    let plain_result = match plain.connect().await {
        Err(e) => Err(e.to_string()),
        Ok(channel) => register_over(channel, "plain@example.com").await,
    };
    assert!(plain_result.is_err());

    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(users, 1, "only the positive control registered");
    app.shutdown().await;
}
