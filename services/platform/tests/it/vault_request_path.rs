#![allow(clippy::unwrap_used, clippy::expect_used)]
//! No Vault on the request path: a real mTLS server whose RPC encrypts and decrypts a PHI field
//! with envelope encryption (keys from Vault through the key cache, data keys in PostgreSQL)
//! makes zero Vault requests per call once warmed up — counted both by the client
//! (`vault_requests_total`) and by the Vault API double itself.

use crate::common;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use carehub_platform::crypto::{CryptoConfig, Envelope, Field};
use carehub_platform::db::TestDatabase;
use carehub_platform::keys::vault::{vault_requests_total, VaultConn};
use carehub_platform::keys::vault_keys::VaultKeys;
use carehub_platform::keys::KeySource;
use carehub_platform::server::ServiceHost;
use carehub_testkit::vault::{keys_config, TestVault};
use futures::future::BoxFuture;
use sqlx::migrate::Migrator;
use tonic::body::Body;

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

/// `test.Vaulted/Roundtrip`: encrypts the request string as a PHI field (a write) and decrypts it
/// again (a read); answers the plaintext.
#[derive(Clone)]
struct Vaulted(Envelope);

impl tonic::server::NamedService for Vaulted {
    const NAME: &'static str = "test.Vaulted";
}

struct Roundtrip(Envelope);

impl tonic::server::UnaryService<String> for Roundtrip {
    type Response = String;
    type Future = BoxFuture<'static, Result<tonic::Response<String>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<String>) -> Self::Future {
        let envelope = self.0.clone();
        Box::pin(async move {
            let field = Field::new("notes", "body", "row-1", "patient-1");
            let text = request.into_inner();
            let sealed = envelope
                .encrypt(&field, text.as_bytes())
                .await
                .map_err(|e| e.to_status())?;
            let opened = envelope
                .decrypt_string(&field, &sealed)
                .await
                .map_err(|e| e.to_status())?;
            Ok(tonic::Response::new(opened))
        })
    }
}

impl tower::Service<http::Request<Body>> for Vaulted {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let envelope = self.0.clone();
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(tonic_prost::ProstCodec::<String, String>::default());
            Ok(grpc.unary(Roundtrip(envelope), req).await)
        })
    }
}

async fn roundtrip(channel: carehub_platform::client::ServiceChannel, text: &str) -> String {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(text.to_owned()),
        http::uri::PathAndQuery::from_static("/test.Vaulted/Roundtrip"),
        tonic_prost::ProstCodec::<String, String>::default(),
    )
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn rpcs_make_no_vault_requests_once_keys_are_cached() {
    // Reads the process-wide Vault request counter: other tests must not add to it meanwhile.
    if !carehub_testkit::process::in_own_process(
        "vault_request_path::rpcs_make_no_vault_requests_once_keys_are_cached",
    ) {
        return;
    }
    let vault = TestVault::double().await;
    let double = vault.double.as_ref().unwrap();
    let mount = vault.enable_kv(2).await;
    vault.seed_service(&mount, 2, "records").await;
    let policy = vault.service_policy(&mount, 2, "records").await;
    let token = vault.token(&[&policy], "1h").await;
    let conn = VaultConn::connect("records", &vault.config(&mount, 2, &token))
        .await
        .unwrap();
    // Refresh far in the future: this test is about the request path only.
    let keys: Arc<dyn KeySource> = VaultKeys::start("records", &keys_config(3600, 7200), conn)
        .await
        .unwrap();
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    let envelope =
        Envelope::new("records", db.pool.clone(), keys, CryptoConfig::default()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let pki = carehub_platform::devcerts::DevPki::new(common::TRUST_DOMAIN).unwrap();
    let cfg = common::config_with_pki(dir.path(), &pki, "records");
    let running = ServiceHost::new("records", &cfg)
        .add_service(Vaulted(envelope))
        .start(common::pending_forever())
        .await
        .unwrap();
    let channel = common::connect_as(&pki, running.grpc_addr, "gateway", "localhost").await;

    // Warm-up: the first call creates the subject's data key.
    assert_eq!(roundtrip(channel.clone(), "warm-up").await, "warm-up");
    let server_before = double.requests();
    let client_before = vault_requests_total();
    for i in 0..50 {
        let text = format!("note {i}");
        assert_eq!(roundtrip(channel.clone(), &text).await, text);
    }
    assert_eq!(
        double.requests(),
        server_before,
        "the Vault double saw requests"
    );
    assert_eq!(
        vault_requests_total(),
        client_before,
        "requests were made to Vault"
    );

    running.shutdown().await.unwrap();
    db.drop_database().await.unwrap();
}
