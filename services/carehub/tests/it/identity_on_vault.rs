//! Identity on Vault, as an operator runs it: `carehub keys init` fills the Vault API double,
//! `carehub serve identity` with `server.keys.provider = "vault"` takes every key from it (KEK,
//! blind index, audit checkpoint, token signing), registers and logs in a patient, publishes a
//! rotated signing key without a restart, and keeps serving while Vault is sealed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use carehub_platform::config::TlsConfig;
use carehub_platform::db::TestDatabase;
use carehub_platform::vault_double::VaultDouble;
use carehub_proto::common::v1::Date;
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::{login_response, LoginRequest, RegisterPatientRequest};
use common::{free_port, http_get, text};
use secrecy::ExposeSecret;

fn carehub(double: &VaultDouble) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_carehub"));
    cmd.env("VAULT_ADDR", double.addr())
        .env("VAULT_TOKEN", double.root_token())
        .env("CAREHUB_SERVER__TELEMETRY__LOG_FILTER", "warn");
    cmd
}

fn ok(out: Output) -> String {
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    text
}

/// Published signing keys, counted in the JWKS document.
async fn published_keys(admin: &str) -> usize {
    let (status, body) = http_get(admin, "/.well-known/jwks.json").await.unwrap();
    assert_eq!(status, 200);
    body.matches("\"kid\"").count()
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < Duration::from_secs(60), "{what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_takes_its_keys_from_vault_and_follows_a_rotation() {
    let double = VaultDouble::start().await.unwrap();
    let init = ok(carehub(&double).args(["keys", "init"]).output().unwrap());
    assert!(init.contains("carehub/identity/signing: created"), "{init}");

    let db = TestDatabase::new(&carehub_identity::MIGRATOR)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    ok(carehub(&double)
        .args(["dev", "certs", "--out"])
        .arg(&tls)
        .output()
        .unwrap());
    let (grpc, admin) = (free_port(), free_port());
    let admin_addr = format!("127.0.0.1:{admin}");
    let config = dir.path().join("identity.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:{grpc}"
admin_listen = "{admin_addr}"
[server.tls]
cert_file = "{tls}/identity.pem"
key_file = "{tls}/identity-key.pem"
ca_file = "{tls}/ca.pem"
[server.keys]
provider = "vault"
production = true
refresh_interval_secs = 1
[server.vault]
addr = "{vault}"
[server.vault.auth]
method = "token"
[identity]
signing_key_sync_secs = 1
"#,
            tls = tls.display(),
            vault = double.addr(),
        ),
    )
    .unwrap();
    let mut server = carehub(&double)
        .args(["serve", "identity", "--config"])
        .arg(&config)
        .env("CAREHUB_SERVER__DATABASE__URL", db.url.expose_secret())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let start = Instant::now();
    loop {
        if let Some(status) = server.try_wait().unwrap() {
            let out = server.wait_with_output().unwrap();
            panic!("identity exited with {status}: {}", text(&out));
        }
        if http_get(&admin_addr, "/readyz").await.map(|r| r.0) == Some(200) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(published_keys(&admin_addr).await, 1);

    // PHI encrypted under the Vault KEK, email found through the Vault blind-index key, a token
    // signed with the Vault signing key.
    let tls_cfg = TlsConfig {
        cert_file: tls.join("gateway.pem"),
        key_file: tls.join("gateway-key.pem"),
        ca_file: tls.join("ca.pem"),
        ..TlsConfig::default()
    };
    let channel = carehub_platform::client::connect_with_files(
        &format!("https://127.0.0.1:{grpc}"),
        &tls_cfg,
        "identity",
    )
    .await
    .unwrap();
    let mut client = IdentityServiceClient::new(channel);
    let password = "correct horse battery staple";
    client
        .register_patient(RegisterPatientRequest {
            email: "vera@example.org".into(),
            password: password.into(),
            given_name: "Vera".into(),
            family_name: "Example".into(),
            date_of_birth: Some(Date {
                year: 1980,
                month: 2,
                day: 29,
            }),
            time_zone: "Europe/Berlin".into(),
            accepted_terms_version: "2025-01".into(),
            accepted_privacy_version: "2025-01".into(),
            ..RegisterPatientRequest::default()
        })
        .await
        .unwrap();
    let login = client
        .login(LoginRequest {
            email: "VERA@example.org".into(),
            password: password.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        login.result,
        Some(login_response::Result::Tokens(_))
    ));
    let stored: Vec<u8> = sqlx::query_scalar("SELECT given_name FROM users")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&stored).contains("Vera"));

    // A signing-key rotation in Vault is published without a restart.
    ok(carehub(&double)
        .args([
            "keys",
            "rotate",
            "--service",
            "identity",
            "--key",
            "signing",
        ])
        .output()
        .unwrap());
    eventually("the rotated signing key is published", || {
        let a = admin_addr.clone();
        async move { published_keys(&a).await == 2 }
    })
    .await;

    // Vault sealed: identity keeps serving from its cached keys (within max staleness).
    double.seal();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        http_get(&admin_addr, "/readyz").await.map(|r| r.0),
        Some(200)
    );
    client
        .login(LoginRequest {
            email: "vera@example.org".into(),
            password: password.into(),
        })
        .await
        .unwrap();

    ok(Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .output()
        .unwrap());
    let out = server.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    db.drop_database().await.unwrap();
}
