#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Service certificates from Vault PKI: a server started with `tls.source = "vault_pki"` gets
//! its certificate (SPIFFE id included) from `<pki>/issue/carehub-<service>`, serves mTLS with
//! it, renews it at two thirds of its lifetime and keeps serving with the new one after the
//! first has expired. Runs against the double and, when configured, a real Vault.

use std::time::Duration;

use carehub_platform::client;
use carehub_platform::config::{PlatformConfig, TlsSource};
use carehub_platform::keys::vault::{VaultConn, VaultError};
use carehub_platform::server::ServiceHost;
use carehub_platform::tls::{self, TlsStore};
use carehub_testkit::vault::TestVault;
use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const TRUST_DOMAIN: &str = "carehub.test";

/// A PKI mount with a root CA and roles `carehub-identity` and `carehub-gateway` as
/// k8s/vault/setup.sh writes them; returns the mount.
async fn setup_pki(vault: &TestVault) -> String {
    let mount = format!("{}-pki", vault.prefix);
    vault
        .admin(
            "POST",
            &format!("sys/mounts/{mount}"),
            json!({"type": "pki", "config": {"max_lease_ttl": "87600h"}}),
        )
        .await;
    vault
        .admin(
            "POST",
            &format!("{mount}/root/generate/internal"),
            json!({"common_name": "carehub test CA", "ttl": "87600h"}),
        )
        .await;
    for s in ["identity", "gateway"] {
        vault
            .admin(
                "POST",
                &format!("{mount}/roles/carehub-{s}"),
                json!({
                    "allowed_domains": format!("{s},carehub-{s}"),
                    "allow_bare_domains": true,
                    "allow_subdomains": false,
                    "allow_localhost": false,
                    "allowed_uri_sans": format!("spiffe://{TRUST_DOMAIN}/service/{s}"),
                    "key_type": "ec",
                    "key_bits": 256,
                    "max_ttl": "72h",
                    "no_store": true,
                }),
            )
            .await;
    }
    mount
}

async fn pki_token(vault: &TestVault, mount: &str, service: &str) -> String {
    let name = format!("{}-{service}-pki", vault.prefix);
    let hcl =
        format!("path \"{mount}/issue/carehub-{service}\" {{\n  capabilities = [\"update\"]\n}}\n");
    vault
        .admin(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            json!({ "policy": hcl }),
        )
        .await;
    vault.token(&[&name], "1h").await
}

async fn health(
    addr: std::net::SocketAddr,
    client_store: &std::sync::Arc<TlsStore>,
) -> Result<i32, String> {
    let channel = client::connect(&format!("https://{addr}"), client_store, "identity")
        .await
        .map_err(|e| format!("{e:#}"))?;
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        HealthClient::new(channel).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|s| s.to_string())?;
    Ok(answer.into_inner().status)
}

fn serial_of(store: &TlsStore) -> String {
    let key = store.certified_key();
    tls::cert_serial_hex(key.cert[0].as_ref()).unwrap()
}

async fn pki_body(vault: &TestVault) {
    let mount = setup_pki(vault).await;

    // The gateway's client certificate, from the same Vault CA.
    let gateway_token = pki_token(vault, &mount, "gateway").await;
    let mut gateway_cfg = vault.config("unused", 2, &gateway_token);
    gateway_cfg.pki_mount = mount.clone();
    let gateway = VaultConn::connect("gateway", &gateway_cfg).await.unwrap();
    let issued = gateway
        .pki_issue(
            "carehub-gateway",
            "gateway",
            &format!("spiffe://{TRUST_DOMAIN}/service/gateway"),
            "",
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let client_store = TlsStore::from_pem(
        &issued.certificate,
        &issued.private_key,
        &issued.issuing_ca,
        TRUST_DOMAIN,
    )
    .unwrap();

    // identity's server: certificate from Vault PKI with a 4-second lifetime.
    let identity_token = pki_token(vault, &mount, "identity").await;
    let mut cfg = PlatformConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..PlatformConfig::default()
    };
    cfg.vault = vault.config("unused", 2, &identity_token);
    cfg.vault.pki_mount = mount.clone();
    cfg.tls.source = TlsSource::VaultPki;
    cfg.tls.trust_domain = TRUST_DOMAIN.to_owned();
    cfg.tls.pki_ttl_secs = 4;
    cfg.limits.drain_timeout_secs = 1;
    let running = ServiceHost::new("identity", &cfg)
        .start(std::future::pending())
        .await
        .unwrap();
    let leaf = running.tls.certified_key().cert[0].clone();
    assert_eq!(
        tls::workload_from_cert(leaf.as_ref(), TRUST_DOMAIN).as_deref(),
        Some("identity")
    );
    let first = serial_of(&running.tls);
    assert_eq!(
        health(running.grpc_addr, &client_store).await.unwrap(),
        ServingStatus::Serving as i32
    );

    // Renewed at two thirds of 4 s; wait (bounded) for two renewals, so the first certificate
    // has expired, and make a fresh mTLS connection: it can only succeed with a renewed one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen = vec![first.clone()];
    while seen.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "certificate never renewed: {seen:?}"
        );
        let now = serial_of(&running.tls);
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        health(running.grpc_addr, &client_store).await.unwrap(),
        ServingStatus::Serving as i32,
        "the server did not serve the renewed certificate"
    );
    running.shutdown().await.unwrap();

    // identity may not obtain the gateway's certificate.
    let conn = VaultConn::connect("identity", &cfg.vault).await.unwrap();
    let err = conn
        .pki_issue(
            "carehub-gateway",
            "gateway",
            &format!("spiffe://{TRUST_DOMAIN}/service/gateway"),
            "",
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Denied { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("{mount}/issue/carehub-gateway")),
        "{err}"
    );
}
both_backends!(
    pki_certificate_is_issued_served_and_renewed_double,
    pki_certificate_is_issued_served_and_renewed_live,
    pki_body
);

#[tokio::test]
async fn pki_role_refuses_another_services_spiffe_id() {
    let vault = TestVault::double().await;
    let mount = setup_pki(&vault).await;
    let token = pki_token(&vault, &mount, "identity").await;
    let mut cfg = vault.config("unused", 2, &token);
    cfg.pki_mount = mount.clone();
    let conn = VaultConn::connect("identity", &cfg).await.unwrap();
    let err = conn
        .pki_issue(
            "carehub-identity",
            "identity",
            &format!("spiffe://{TRUST_DOMAIN}/service/billing"),
            "",
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
    match err {
        VaultError::Api {
            code: 400, errors, ..
        } => {
            assert!(
                errors.join(" ").contains("URI Subject Alternative Names"),
                "{errors:?}"
            )
        }
        other => panic!("{other:?}"),
    }
}
