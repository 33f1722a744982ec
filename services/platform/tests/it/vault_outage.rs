#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Vault going away under a running service (the double only: a real Vault is not ours to
//! stop): within the maximum staleness the service keeps serving from cached keys; past it,
//! key lookups fail closed and /readyz and gRPC health report not serving; when Vault returns,
//! the next refresh recovers. Sealed and slow Vaults behave like unreachable ones.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use carehub_platform::keys::vault::{VaultConn, VaultError};
use carehub_platform::keys::vault_keys::VaultKeys;
use carehub_platform::keys::{self, KeyError, KeyName, KeySource};
use carehub_platform::server::ServiceHost;
use carehub_testkit::vault::{keys_config, TestVault};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// gRPC health of the whole server, as a Kubernetes gRPC probe asks it.
async fn grpc_health(addr: std::net::SocketAddr, pki: &carehub_platform::devcerts::DevPki) -> i32 {
    let probe = pki.issue("kubelet").unwrap();
    let store = carehub_platform::tls::TlsStore::from_pem(
        &probe.cert_pem,
        &probe.key_pem,
        &pki.ca_pem,
        common::TRUST_DOMAIN,
    )
    .unwrap();
    let channel =
        carehub_platform::client::connect(&format!("https://{addr}"), &store, "localhost")
            .await
            .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// Polls gRPC health until it reports `want` (the server re-reads readiness every second).
async fn wait_for_health(
    addr: std::net::SocketAddr,
    pki: &carehub_platform::devcerts::DevPki,
    want: ServingStatus,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while grpc_health(addr, pki).await != want as i32 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gRPC health never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn start_keys(
    vault: &TestVault,
    service: &str,
    refresh_secs: u64,
    max_staleness_secs: u64,
    timeout_secs: u64,
) -> Arc<VaultKeys> {
    let mount = vault.enable_kv(2).await;
    vault.seed_service(&mount, 2, service).await;
    let policy = vault.service_policy(&mount, 2, service).await;
    let token = vault.token(&[&policy], "1h").await;
    let mut cfg = vault.config(&mount, 2, &token);
    cfg.request_timeout_secs = timeout_secs;
    let conn = VaultConn::connect(service, &cfg).await.unwrap();
    VaultKeys::start(
        service,
        &keys_config(refresh_secs, max_staleness_secs),
        conn,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn stopped_vault_within_staleness_keeps_serving_and_recovers() {
    let vault = TestVault::double().await;
    let double = vault.double.as_ref().unwrap();
    let keys = start_keys(&vault, "identity", 300, 3600, 5).await;
    let before = keys.current(KeyName::Kek).unwrap().1.as_bytes().to_owned();

    double.stop();
    let err = keys.refresh_now().await.unwrap_err();
    assert!(matches!(err, VaultError::Unreachable { .. }), "{err:?}");
    assert!(err.is_transient());
    // Still serving from the cache, and saying why the refresh failed.
    assert_eq!(
        keys.current(KeyName::Kek).unwrap().1.as_bytes(),
        &before[..]
    );
    let status = keys.status();
    assert!(status.serving);
    assert!(status.last_error.unwrap().contains("unreachable"));

    double.restart().await.unwrap();
    keys.refresh_now().await.unwrap();
    assert!(keys.status().last_error.is_none());
}

#[tokio::test]
async fn sealed_vault_is_survived_from_cache() {
    let vault = TestVault::double().await;
    let double = vault.double.as_ref().unwrap();
    let keys = start_keys(&vault, "billing", 300, 3600, 5).await;

    double.seal();
    let err = keys.refresh_now().await.unwrap_err();
    assert!(matches!(err, VaultError::Sealed), "{err:?}");
    assert!(keys.current(KeyName::BlindIndex).is_ok());
    assert!(keys.status().serving);

    double.unseal();
    keys.refresh_now().await.unwrap();
}

#[tokio::test]
async fn slow_vault_times_out_and_is_survived_from_cache() {
    let vault = TestVault::double().await;
    let double = vault.double.as_ref().unwrap();
    let keys = start_keys(&vault, "messaging", 300, 3600, 1).await;

    double.set_delay(Duration::from_secs(3));
    let err = keys.refresh_now().await.unwrap_err();
    assert!(matches!(err, VaultError::Unreachable { .. }), "{err:?}");
    assert!(keys.current(KeyName::Kek).is_ok());

    double.set_delay(Duration::ZERO);
    keys.refresh_now().await.unwrap();
}

#[tokio::test]
async fn beyond_max_staleness_fails_closed_and_reports_not_ready_until_vault_returns() {
    let vault = TestVault::double().await;
    let double = vault.double.as_ref().unwrap();
    // Background refresh every second; keys count as stale two seconds after the last success.
    let vault_keys = start_keys(&vault, "records", 1, 2, 1).await;
    let source: Arc<dyn KeySource> = vault_keys.clone();

    let dir = tempfile::tempdir().unwrap();
    let pki = carehub_platform::devcerts::DevPki::new(common::TRUST_DOMAIN).unwrap();
    let cfg = common::config_with_pki(dir.path(), &pki, "records");
    let host = ServiceHost::new("records", &cfg).readiness(keys::readiness(source.clone()));
    let metrics = host.metrics();
    let running = host.start(common::pending_forever()).await.unwrap();
    assert_eq!(common::http_get(running.admin_addr, "/readyz").await.0, 200);
    assert_eq!(
        grpc_health(running.grpc_addr, &pki).await,
        ServingStatus::Serving as i32
    );
    keys::publish_metrics(source.as_ref(), &metrics);
    let (_, text) = common::http_get(running.admin_addr, "/metrics").await;
    assert!(
        text.contains("carehub_key_cache_age_seconds{service=\"records\",provider=\"vault\"}"),
        "{text}"
    );
    assert!(
        text.contains("carehub_key_cache_serving{service=\"records\",provider=\"vault\"} 1"),
        "{text}"
    );

    double.stop();
    // Wait (bounded) until the cache is past its maximum staleness.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while source.status().serving {
        assert!(
            tokio::time::Instant::now() < deadline,
            "keys never became stale"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = source.current(KeyName::Kek).unwrap_err();
    assert!(
        matches!(err, KeyError::Stale { max_secs: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("stale"), "{err}");
    assert_eq!(common::http_get(running.admin_addr, "/readyz").await.0, 503);
    wait_for_health(running.grpc_addr, &pki, ServingStatus::NotServing).await;
    keys::publish_metrics(source.as_ref(), &metrics);
    let (_, text) = common::http_get(running.admin_addr, "/metrics").await;
    assert!(
        text.contains("carehub_key_cache_serving{service=\"records\",provider=\"vault\"} 0"),
        "{text}"
    );

    // Vault is back: the next background refresh makes the service ready again.
    double.restart().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !source.status().serving {
        assert!(
            tokio::time::Instant::now() < deadline,
            "keys never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(source.current(KeyName::Kek).is_ok());
    assert_eq!(common::http_get(running.admin_addr, "/readyz").await.0, 200);
    wait_for_health(running.grpc_addr, &pki, ServingStatus::Serving).await;
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn sys_health_answers_active_standby_and_sealed_like_vault() {
    let vault = TestVault::double().await;
    let double = vault.double.as_ref().unwrap();
    let (status, body) = vault.call("GET", "sys/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["sealed"], false);
    // vaultrs parses the double's answer as it parses Vault's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = vaultrs::client::VaultClient::new(
        vaultrs::client::VaultClientSettingsBuilder::default()
            .address(vault.addr.clone())
            .token(vault.root_token.clone())
            .build()
            .unwrap(),
    )
    .unwrap();
    let health = vaultrs::sys::health(&client).await.unwrap();
    assert!(health.initialized && !health.sealed && !health.standby);

    double.set_standby(true);
    assert_eq!(vault.call("GET", "sys/health", None).await.0, 429);
    assert_eq!(
        vault.call("GET", "sys/health?standbyok=true", None).await.0,
        200
    );
    double.set_standby(false);

    double.seal();
    let (status, body) = vault.call("GET", "sys/health", None).await;
    assert_eq!(status, 503);
    assert_eq!(body["sealed"], true);
    let (status, body) = vault.call("GET", "secret/data/anything", None).await;
    assert_eq!(status, 503);
    assert_eq!(body["errors"][0], "Vault is sealed");
}
