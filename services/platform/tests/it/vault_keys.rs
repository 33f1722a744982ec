#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Keys from Vault through vaultrs: KV v1 and v2, token / AppRole / Kubernetes login, token
//! renewal, denied paths, caching with zero Vault requests per lookup, rotation picked up by the
//! background refresh. Each `both_backends!` test runs against the Vault API double and — when
//! `VAULT_ADDR`/`VAULT_TOKEN` are set — against a real Vault.

use std::sync::Arc;
use std::time::Duration;

use carehub_platform::config::VaultAuthMethod;
use carehub_platform::keys::vault::{VaultConn, VaultError};
use carehub_platform::keys::vault_keys::VaultKeys;
use carehub_platform::keys::{KeyName, KeySource};
use carehub_testkit::vault::{keys_config, TestVault};

async fn fetch_and_cache(vault: &TestVault, version: u8) {
    let mount = vault.enable_kv(version).await;
    let seeded = vault.seed_service(&mount, version, "identity").await;
    let policy = vault.service_policy(&mount, version, "identity").await;
    let token = vault.token(&[&policy], "1h").await;
    let conn = VaultConn::connect("identity", &vault.config(&mount, version, &token))
        .await
        .unwrap();
    let keys = VaultKeys::start("identity", &keys_config(300, 3600), conn.clone())
        .await
        .unwrap();
    for name in KeyName::ALL {
        let (v, key) = keys.current(name).unwrap();
        let expected = seeded[name.path_segment()].current();
        assert_eq!(v, 1);
        assert_eq!(key.as_bytes(), expected.1.as_bytes(), "{name}");
    }

    // Once cached, lookups never reach Vault.
    let before_conn = conn.requests();
    let before_server = vault.double.as_ref().map(|d| d.requests());
    for _ in 0..1000 {
        keys.current(KeyName::Kek).unwrap();
        keys.version(KeyName::BlindIndex, 1).unwrap();
    }
    assert_eq!(
        conn.requests(),
        before_conn,
        "key lookups made Vault requests"
    );
    assert_eq!(
        vault.double.as_ref().map(|d| d.requests()),
        before_server,
        "the Vault double saw requests during key lookups"
    );
    assert!(keys.status().serving);
}

async fn kv2_body(vault: &TestVault) {
    fetch_and_cache(vault, 2).await;
}
async fn kv1_body(vault: &TestVault) {
    fetch_and_cache(vault, 1).await;
}
both_backends!(
    kv2_keys_are_fetched_and_cached_double,
    kv2_keys_are_fetched_and_cached_live,
    kv2_body
);
both_backends!(
    kv1_keys_are_fetched_and_cached_double,
    kv1_keys_are_fetched_and_cached_live,
    kv1_body
);

async fn denied_body(vault: &TestVault) {
    let mount = vault.enable_kv(2).await;
    vault.seed_service(&mount, 2, "identity").await;
    vault.seed_service(&mount, 2, "billing").await;
    let policy = vault.service_policy(&mount, 2, "identity").await;
    let token = vault.token(&[&policy], "1h").await;
    // identity's token used for billing's keys: billing's path is outside the policy.
    let conn = VaultConn::connect("billing", &vault.config(&mount, 2, &token))
        .await
        .unwrap();
    let err = VaultKeys::start("billing", &keys_config(300, 3600), conn)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Denied { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("permission denied"), "{msg}");
    assert!(
        msg.contains(&format!("{mount}/data/carehub/billing/kek")),
        "{msg}"
    );
}
both_backends!(
    denied_path_is_named_double,
    denied_path_is_named_live,
    denied_body
);

async fn missing_body(vault: &TestVault) {
    let mount = vault.enable_kv(2).await;
    let policy = vault.service_policy(&mount, 2, "records").await;
    let token = vault.token(&[&policy], "1h").await;
    let conn = VaultConn::connect("records", &vault.config(&mount, 2, &token))
        .await
        .unwrap();
    let err = VaultKeys::start("records", &keys_config(300, 3600), conn)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("carehub keys init"), "{err}");
}
both_backends!(
    missing_keys_point_to_keys_init_double,
    missing_keys_point_to_keys_init_live,
    missing_body
);

async fn approle_body(vault: &TestVault) {
    let mount = vault.enable_kv(2).await;
    let seeded = vault.seed_service(&mount, 2, "scheduling").await;
    let policy = vault.service_policy(&mount, 2, "scheduling").await;
    let (auth_mount, role_id, secret_file) = vault.approle("scheduling", &policy).await;
    let mut cfg = vault.config(&mount, 2, "unused");
    cfg.auth.token = None;
    cfg.auth.method = VaultAuthMethod::Approle;
    cfg.auth.mount = Some(auth_mount.clone());
    cfg.auth.role_id = Some(role_id.clone());
    cfg.auth.secret_id_file = Some(secret_file.clone());
    let conn = VaultConn::connect("scheduling", &cfg).await.unwrap();
    let keys = VaultKeys::start("scheduling", &keys_config(300, 3600), conn.clone())
        .await
        .unwrap();
    assert_eq!(
        keys.current(KeyName::Kek).unwrap().1.as_bytes(),
        seeded["kek"].current().1.as_bytes()
    );
    // AppRole tokens are renewable: renew-self answers with a fresh TTL.
    let (renewable, _) = conn.token_ttl();
    assert!(renewable);
    let ttl = conn.renew_token().await.unwrap();
    assert!(ttl > Duration::ZERO);

    // A wrong secret id is refused with a clear login error.
    std::fs::write(&secret_file, "not-the-secret-id").unwrap();
    let err = VaultConn::connect("scheduling", &cfg).await.unwrap_err();
    assert!(matches!(err, VaultError::Login { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("auth/{auth_mount}")),
        "{err}"
    );
}
both_backends!(
    approle_login_and_renewal_double,
    approle_login_and_renewal_live,
    approle_body
);

async fn token_renewal_body(vault: &TestVault) {
    let mount = vault.enable_kv(2).await;
    vault.seed_service(&mount, 2, "messaging").await;
    let policy = vault.service_policy(&mount, 2, "messaging").await;
    let token = vault.token(&[&policy], "1h").await;
    let conn = VaultConn::connect("messaging", &vault.config(&mount, 2, &token))
        .await
        .unwrap();
    let (renewable, ttl) = conn.token_ttl();
    assert!(renewable);
    assert!(ttl > Duration::ZERO && ttl <= Duration::from_secs(3600));
    let renewed = conn.renew_token().await.unwrap();
    assert!(renewed > Duration::from_secs(3000), "{renewed:?}");

    // A token that does not exist is refused at start.
    let err = VaultConn::connect("messaging", &vault.config(&mount, 2, "hvs.not-a-token"))
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Denied { .. }), "{err:?}");
}
both_backends!(
    token_lookup_and_renewal_double,
    token_lookup_and_renewal_live,
    token_renewal_body
);

async fn rotation_body(vault: &TestVault) {
    let mount = vault.enable_kv(2).await;
    let mut seeded = vault.seed_service(&mount, 2, "records").await;
    let policy = vault.service_policy(&mount, 2, "records").await;
    let token = vault.token(&[&policy], "1h").await;
    let conn = VaultConn::connect("records", &vault.config(&mount, 2, &token))
        .await
        .unwrap();
    let keys = VaultKeys::start("records", &keys_config(1, 3600), conn)
        .await
        .unwrap();
    let old = keys.current(KeyName::Kek).unwrap().1.as_bytes().to_owned();

    let kek = seeded.get_mut("kek").unwrap();
    assert_eq!(kek.rotate(), 2);
    vault.write_key(&mount, 2, "records", "kek", kek).await;

    // The background refresh (every second) picks the new version up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while keys.current(KeyName::Kek).unwrap().0 != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rotation never picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(keys.version(KeyName::Kek, 1).unwrap().as_bytes(), &old[..]);
    assert_ne!(keys.current(KeyName::Kek).unwrap().1.as_bytes(), &old[..]);
}
both_backends!(
    rotation_is_picked_up_double,
    rotation_is_picked_up_live,
    rotation_body
);

/// Kubernetes login cannot run against a dev Vault (it needs a Kubernetes API): double only.
#[tokio::test]
async fn kubernetes_login_with_service_account_jwt() {
    let vault = TestVault::double().await;
    let double = vault.double.as_ref().unwrap();
    let mount = vault.enable_kv(2).await;
    vault.seed_service(&mount, 2, "billing").await;
    let policy = vault.service_policy(&mount, 2, "billing").await;
    vault
        .admin(
            "POST",
            "sys/auth/kubernetes",
            serde_json::json!({"type": "kubernetes"}),
        )
        .await;
    vault
        .admin(
            "POST",
            "auth/kubernetes/role/carehub-billing",
            serde_json::json!({
                "bound_service_account_names": ["carehub-billing"],
                "bound_service_account_namespaces": ["carehub"],
                "token_policies": [policy],
                "token_ttl": "1h",
            }),
        )
        .await;
    double.register_service_account_jwt("jwt-of-billing", "carehub-billing", "carehub");
    double.register_service_account_jwt("jwt-of-identity", "carehub-identity", "carehub");
    let jwt_file = vault.dir().join("token");
    std::fs::write(&jwt_file, "jwt-of-billing").unwrap();

    let mut cfg = vault.config(&mount, 2, "unused");
    cfg.auth.token = None;
    cfg.auth.method = VaultAuthMethod::Kubernetes;
    cfg.auth.jwt_file = jwt_file.clone();
    let conn = VaultConn::connect("billing", &cfg).await.unwrap();
    let keys = VaultKeys::start("billing", &keys_config(300, 3600), conn.clone())
        .await
        .unwrap();
    assert!(keys.current(KeyName::Kek).is_ok());
    assert!(conn.renew_token().await.is_ok());

    // Another service account's JWT is not bound to carehub-billing.
    std::fs::write(&jwt_file, "jwt-of-identity").unwrap();
    let err = VaultConn::connect("billing", &cfg).await.unwrap_err();
    assert!(matches!(err, VaultError::Login { .. }), "{err:?}");
    assert!(err.to_string().contains("auth/kubernetes"), "{err}");
}

#[tokio::test]
async fn keys_of_one_service_are_shared_by_reference_not_refetched() {
    let vault = TestVault::double().await;
    let mount = vault.enable_kv(2).await;
    vault.seed_service(&mount, 2, "identity").await;
    let policy = vault.service_policy(&mount, 2, "identity").await;
    let token = vault.token(&[&policy], "1h").await;
    let conn = VaultConn::connect("identity", &vault.config(&mount, 2, &token))
        .await
        .unwrap();
    let keys: Arc<dyn KeySource> = VaultKeys::start("identity", &keys_config(300, 3600), conn)
        .await
        .unwrap();
    let a = keys.versions(KeyName::Signing).unwrap();
    let b = keys.versions(KeyName::Signing).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
}

async fn background_renewal_body(vault: &TestVault) {
    let mount = vault.enable_kv(2).await;
    vault.seed_service(&mount, 2, "scheduling").await;
    let policy = vault.service_policy(&mount, 2, "scheduling").await;
    // A 4-second token: without renewal it expires long before the end of this test.
    let token = vault.token(&[&policy], "4s").await;
    let conn = VaultConn::connect("scheduling", &vault.config(&mount, 2, &token))
        .await
        .unwrap();
    let keys = VaultKeys::start("scheduling", &keys_config(1, 3600), conn.clone())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    // The background refresh renewed the token past half its TTL, so Vault still answers it.
    keys.refresh_now().await.unwrap();
    assert!(keys.status().last_error.is_none());
    let (renewable, left) = conn.token_ttl();
    assert!(renewable && left > Duration::ZERO);
}
both_backends!(
    token_is_renewed_in_the_background_double,
    token_is_renewed_in_the_background_live,
    background_renewal_body
);
