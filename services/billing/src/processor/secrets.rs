//! The processor's secrets (API key, webhook signing secrets), from the config or from Vault.
//!
//! In production they live in Vault's KV mount at `billing.processor.vault_path` (the chart's
//! default `carehub/billing/processor`, readable by billing's Vault role only) with the fields
//! `secret_key`, `webhook_secret` and, during a rotation of the signing secret,
//! `webhook_secret_previous`. They are read once at start; a rotated API key takes a rolling
//! restart. Values from the config (development) are used when no Vault path is set.

use carehub_platform::config::PlatformConfig;
use carehub_platform::keys::vault::VaultConn;
use secrecy::SecretString;

use crate::config::ProcessorSettings;

/// What billing signs processor requests and verifies webhooks with.
#[derive(Clone, Default)]
pub struct ProcessorSecrets {
    pub secret_key: Option<SecretString>,
    pub webhook_secrets: Vec<SecretString>,
}

impl std::fmt::Debug for ProcessorSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorSecrets")
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "[redacted]"),
            )
            .field("webhook_secrets", &self.webhook_secrets.len())
            .finish()
    }
}

/// The KV fields at `vault_path`.
pub const SECRET_KEY_FIELD: &str = "secret_key";
pub const WEBHOOK_SECRET_FIELD: &str = "webhook_secret";
pub const WEBHOOK_SECRET_PREVIOUS_FIELD: &str = "webhook_secret_previous";

/// The secrets: from Vault when `settings.vault_path` is set (an unreadable path fails the
/// start: billing cannot charge or verify without them), else from the config.
pub async fn load(
    settings: &ProcessorSettings,
    server: &PlatformConfig,
) -> anyhow::Result<ProcessorSecrets> {
    let Some(path) = settings.vault_path.as_deref() else {
        return Ok(ProcessorSecrets {
            secret_key: settings.secret_key.clone(),
            webhook_secrets: settings.webhook_secrets.clone(),
        });
    };
    let vault = VaultConn::connect("billing", &server.vault)
        .await
        .map_err(|e| anyhow::anyhow!("billing.processor.vault_path: connecting to Vault: {e}"))?;
    let secret = vault
        .read_kv(path)
        .await
        .map_err(|e| anyhow::anyhow!("billing.processor.vault_path: reading {path}: {e}"))?;
    let field = |name: &str| {
        secret
            .data
            .get(name)
            .filter(|v| !v.is_empty())
            .map(|v| SecretString::from(v.clone()))
    };
    let secret_key = field(SECRET_KEY_FIELD);
    if secret_key.is_none() {
        anyhow::bail!("billing.processor.vault_path: {path} has no `{SECRET_KEY_FIELD}`");
    }
    let webhook_secrets = [WEBHOOK_SECRET_FIELD, WEBHOOK_SECRET_PREVIOUS_FIELD]
        .iter()
        .filter_map(|name| field(name))
        .collect();
    Ok(ProcessorSecrets {
        secret_key,
        webhook_secrets,
    })
}
