//! The processor's secrets from Vault (`billing.processor.vault_path`), read with billing's own
//! policy: against the Vault API double, and against a real Vault when `VAULT_ADDR` and
//! `VAULT_TOKEN` are set.

use carehub_billing::config::ProcessorSettings;
use carehub_billing::processor::secrets;
use carehub_platform::config::PlatformConfig;
use carehub_testkit::vault::TestVault;
use secrecy::ExposeSecret;
use serde_json::json;

const PATH: &str = "carehub/billing/processor";

async fn settings_and_server(
    vault: &TestVault,
    mount: &str,
    service: &str,
) -> (ProcessorSettings, PlatformConfig) {
    let policy = vault.service_policy(mount, 2, service).await;
    let token = vault.token(&[&policy], "1h").await;
    let server = PlatformConfig {
        vault: vault.config(mount, 2, &token),
        ..PlatformConfig::default()
    };
    let settings = ProcessorSettings {
        vault_path: Some(PATH.to_owned()),
        ..ProcessorSettings::default()
    };
    (settings, server)
}

async fn secrets_come_from_vault(vault: &TestVault) {
    let mount = vault.enable_kv(2).await;
    vault
        .admin(
            "POST",
            &format!("{mount}/data/{PATH}"),
            json!({"data": {
                "secret_key": "sk_test_from_vault",
                "webhook_secret": "whsec_current",
                "webhook_secret_previous": "whsec_previous",
            }}),
        )
        .await;
    let (settings, server) = settings_and_server(vault, &mount, "billing").await;
    let loaded = secrets::load(&settings, &server).await.unwrap();
    assert_eq!(
        loaded
            .secret_key
            .as_ref()
            .map(|k| k.expose_secret().to_owned())
            .as_deref(),
        Some("sk_test_from_vault")
    );
    let webhook: Vec<String> = loaded
        .webhook_secrets
        .iter()
        .map(|s| s.expose_secret().to_owned())
        .collect();
    assert_eq!(webhook, ["whsec_current", "whsec_previous"]);
    assert!(!format!("{loaded:?}").contains("sk_test_from_vault"));
    // Another service's policy cannot read billing's secrets: the start fails.
    let (settings, server) = settings_and_server(vault, &mount, "records").await;
    let denied = secrets::load(&settings, &server)
        .await
        .unwrap_err()
        .to_string();
    assert!(denied.contains(PATH), "{denied}");
    assert!(!denied.contains("sk_test_from_vault"), "{denied}");
    // A path without the API key fails the start too.
    vault
        .admin(
            "POST",
            &format!("{mount}/data/{PATH}"),
            json!({"data": {"webhook_secret": "whsec_only"}}),
        )
        .await;
    let (settings, server) = settings_and_server(vault, &mount, "billing").await;
    let missing = secrets::load(&settings, &server)
        .await
        .unwrap_err()
        .to_string();
    assert!(missing.contains("secret_key"), "{missing}");
}

#[tokio::test]
async fn processor_secrets_come_from_the_vault_double() {
    secrets_come_from_vault(&TestVault::double().await).await;
}

#[tokio::test]
async fn processor_secrets_come_from_a_live_vault() {
    if let Some(vault) = TestVault::live("processor_secrets_come_from_a_live_vault").await {
        secrets_come_from_vault(&vault).await;
    }
}
