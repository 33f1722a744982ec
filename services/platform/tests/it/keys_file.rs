#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]
//! The development key file provider and the keys/Vault configuration checks.

use carehub_platform::config::{
    KeyProvider, KeysConfig, PlatformConfig, TlsSource, Validate, VaultAuthMethod,
};
use carehub_platform::keys::file::write_dev_key_file;
use carehub_platform::keys::{self, KeyName};

fn file_config(path: &std::path::Path) -> PlatformConfig {
    PlatformConfig {
        keys: KeysConfig {
            provider: KeyProvider::File,
            file: path.to_owned(),
            ..KeysConfig::default()
        },
        ..PlatformConfig::default()
    }
}

#[tokio::test]
async fn dev_key_file_is_created_once_and_loaded_per_service() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/dev-keys.json");
    // identity: 4 keys; the four other services: 3 each.
    assert_eq!(write_dev_key_file(&path).unwrap(), 16);
    let first = std::fs::read_to_string(&path).unwrap();
    // Idempotent: keys already there are kept as they are.
    assert_eq!(write_dev_key_file(&path).unwrap(), 0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the key file is readable by others: {mode:o}"
        );
    }

    let cfg = file_config(&path);
    let identity = keys::from_config("identity", &cfg).await.unwrap();
    assert!(identity.current(KeyName::Signing).is_ok());
    assert_eq!(identity.status().provider, "file");
    assert!(identity.status().serving);
    let billing = keys::from_config("billing", &cfg).await.unwrap();
    assert!(billing.current(KeyName::Kek).is_ok());
    assert!(billing.current(KeyName::Signing).is_err());
    // Services have their own keys.
    assert_ne!(
        identity.current(KeyName::Kek).unwrap().1.as_bytes(),
        billing.current(KeyName::Kek).unwrap().1.as_bytes()
    );

    let err = keys::from_config("unknown", &cfg).await.err().unwrap();
    assert!(
        format!("{err:#}").contains("carehub keys init --dev"),
        "{err:#}"
    );
}

#[tokio::test]
async fn file_provider_refuses_the_production_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev-keys.json");
    write_dev_key_file(&path).unwrap();
    let mut cfg = file_config(&path);
    cfg.keys.production = true;
    let err = keys::from_config("identity", &cfg).await.err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("development only"), "{msg}");
    assert!(msg.contains("server.keys.production"), "{msg}");

    // Validation says the same before anything starts.
    let mut problems = Vec::new();
    cfg.validate(&mut problems);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("server.keys.production")),
        "{problems:?}"
    );
}

#[tokio::test]
async fn a_corrupt_key_file_is_refused_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev-keys.json");
    std::fs::write(
        &path,
        "{\"identity\": {\"kek\": \"c2VjcmV0LWtleS1tYXRlcmlhbA==\"",
    )
    .unwrap();
    let err = keys::from_config("identity", &file_config(&path))
        .await
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("dev-keys.json"), "{msg}");
    assert!(!msg.contains("c2VjcmV0"), "key material in an error: {msg}");
}

#[test]
fn vault_settings_are_checked_only_when_vault_is_used() {
    let mut cfg = PlatformConfig::default();
    let mut problems = Vec::new();
    cfg.validate(&mut problems);
    assert!(
        !problems.iter().any(|p| p.contains("server.vault")),
        "{problems:?}"
    );

    cfg.keys.provider = KeyProvider::Vault;
    cfg.vault.kv_version = 3;
    cfg.vault.auth.method = VaultAuthMethod::Approle;
    cfg.keys.max_staleness_secs = 10;
    cfg.keys.refresh_interval_secs = 60;
    let mut problems = Vec::new();
    cfg.validate(&mut problems);
    let all = problems.join("\n");
    for needle in [
        "server.vault.addr is required",
        "server.vault.kv_version must be 1 or 2",
        "server.vault.auth.role_id is required",
        "server.vault.auth.secret_id_file is required",
        "server.keys.max_staleness_secs must be greater than refresh_interval_secs",
    ] {
        assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
    }

    let mut cfg = PlatformConfig::default();
    cfg.tls.source = TlsSource::VaultPki;
    cfg.vault.addr = Some("vault:8200".into());
    let mut problems = Vec::new();
    cfg.validate(&mut problems);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("server.vault.addr must start with https://")),
        "{problems:?}"
    );
}

#[test]
fn keys_and_vault_tables_load_from_toml_and_env() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "c.toml",
            "[server.keys]\nprovider = \"vault\"\nproduction = true\n[server.vault]\naddr = \"https://vault:8200\"\nkv_version = 1\n[server.vault.auth]\nmethod = \"kubernetes\"\n[server.tls]\nsource = \"vault_pki\"\n[server.database]\nurl = \"postgres://x@db/x\"\n",
        )?;
        jail.set_env("CAREHUB_SERVER__VAULT__KV_MOUNT", "kv-carehub");
        jail.set_env("CAREHUB_SERVER__VAULT__AUTH__TOKEN", "hvs.secret-token");
        #[derive(Default, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        struct Wrapper {
            server: PlatformConfig,
        }
        impl Validate for Wrapper {
            fn validate(&self, problems: &mut Vec<String>) {
                self.server.validate(problems);
            }
        }
        let cfg: Wrapper =
            carehub_platform::config::load(Some(std::path::Path::new("c.toml")), &[])
                .map_err(|e| e.to_string())?;
        let s = cfg.server;
        assert_eq!(s.keys.provider, KeyProvider::Vault);
        assert_eq!(s.vault.kv_version, 1);
        assert_eq!(s.vault.kv_mount, "kv-carehub");
        assert_eq!(s.vault.auth.method, VaultAuthMethod::Kubernetes);
        assert_eq!(s.vault.auth.mount(), "kubernetes");
        assert_eq!(s.tls.source, TlsSource::VaultPki);
        assert!(!format!("{:?}", s.vault).contains("hvs.secret-token"));
        Ok(())
    });
}
