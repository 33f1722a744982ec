//! The configuration the Helm chart renders for each service (kept in tests/chart-config/ by
//! scripts/check-chart.sh, which fails when the chart's output drifts from these files) must
//! load with the binary's own loader: unknown keys, wrong types and invalid values fail here,
//! so the chart and the code cannot disagree on a key name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use carehub_billing::config::{BillingConfig, ProcessorKind};
use carehub_identity::config::IdentityConfig;
use carehub_messaging::config::MessagingConfig;
use carehub_platform::config::{self, KeyProvider, TlsSource};
use carehub_records::config::RecordsConfig;
use carehub_scheduling::config::SchedulingConfig;

fn rendered() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart-config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// The database URL comes from a Secret as CAREHUB_SERVER__DATABASE__URL in the pod.
fn overrides() -> Vec<(String, String)> {
    vec![(
        "server.database.url".to_owned(),
        "postgres://identity@db/identity".to_owned(),
    )]
}

#[test]
fn every_rendered_config_loads_with_the_binarys_loader() {
    let files = rendered();
    // Defaults plus ci/minimal, ci/production and ci/vault-pki, for each service at the least.
    assert!(files.len() >= 8, "{files:?}");
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let service = name.trim_end_matches(".toml").rsplit('-').next().unwrap();
        match service {
            "identity" => {
                let cfg = config::load::<IdentityConfig>(Some(file), &overrides())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(cfg.server.listen.port(), 50051, "{name}");
                assert_eq!(cfg.server.admin_listen.port(), 9051, "{name}");
                assert!(!cfg.server.database.migrate_on_start, "{name}");
            }
            "records" => {
                // Loading validates too: records refuses a config without identity_endpoint.
                let cfg = config::load::<RecordsConfig>(Some(file), &overrides())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(cfg.server.listen.port(), 50051, "{name}");
                assert_eq!(cfg.server.admin_listen.port(), 9051, "{name}");
                assert!(!cfg.server.database.migrate_on_start, "{name}");
                // identity's Service, on the port the chart gives every service's gRPC.
                assert_eq!(
                    cfg.server.auth.identity_endpoint.as_deref(),
                    Some("https://carehub-identity:50051"),
                    "{name}"
                );
            }
            "messaging" => {
                // Loading validates too: messaging refuses a config without identity_endpoint
                // or records_endpoint.
                let cfg = config::load::<MessagingConfig>(Some(file), &overrides())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(cfg.server.listen.port(), 50051, "{name}");
                assert!(!cfg.server.database.migrate_on_start, "{name}");
                assert_eq!(
                    cfg.server.auth.identity_endpoint.as_deref(),
                    Some("https://carehub-identity:50051"),
                    "{name}"
                );
                assert_eq!(
                    cfg.messaging.records_endpoint.as_deref(),
                    Some("https://carehub-records:50051"),
                    "{name}"
                );
                // Its outbox asks identity to act (abuse reports, SMS consent).
                let identity = &cfg.server.outbox.targets["identity"];
                assert_eq!(
                    identity.endpoint, "https://carehub-identity:50051",
                    "{name}"
                );
                assert_eq!(identity.server_name, "identity", "{name}");
            }
            "scheduling" => {
                // Loading validates too: scheduling refuses a config without identity_endpoint
                // or with a feed_base_url that is not an http(s) URL without a trailing slash.
                let cfg = config::load::<SchedulingConfig>(Some(file), &overrides())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(cfg.server.listen.port(), 50051, "{name}");
                assert_eq!(cfg.server.admin_listen.port(), 9051, "{name}");
                assert!(!cfg.server.database.migrate_on_start, "{name}");
                assert_eq!(
                    cfg.server.auth.identity_endpoint.as_deref(),
                    Some("https://carehub-identity:50051"),
                    "{name}"
                );
                // Its outbox tells records, messaging and billing (appointment events), each
                // at its Service.
                for target in ["records", "messaging", "billing"] {
                    let t = &cfg.server.outbox.targets[target];
                    assert_eq!(
                        t.endpoint,
                        format!("https://carehub-{target}:50051"),
                        "{name}"
                    );
                    assert_eq!(t.server_name, target, "{name}");
                }
                // Feed links lead to the gateway's public address, never the pod's loopback.
                assert!(
                    cfg.scheduling.feed_base_url.starts_with("https://")
                        && !cfg.scheduling.feed_base_url.contains("127.0.0.1"),
                    "{name}: {}",
                    cfg.scheduling.feed_base_url
                );
            }
            "billing" => {
                // Loading validates too: billing refuses a config without identity_endpoint, and
                // Stripe without a secret key or the Vault path it is read from.
                let cfg = config::load::<BillingConfig>(Some(file), &overrides())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(cfg.server.listen.port(), 50051, "{name}");
                assert_eq!(cfg.server.admin_listen.port(), 9051, "{name}");
                assert!(!cfg.server.database.migrate_on_start, "{name}");
                assert_eq!(
                    cfg.server.auth.identity_endpoint.as_deref(),
                    Some("https://carehub-identity:50051"),
                    "{name}"
                );
                // No outbox of its own; secrets never in the file (they come from Vault).
                assert!(cfg.server.outbox.targets.is_empty(), "{name}");
                assert!(cfg.billing.processor.secret_key.is_none(), "{name}");
                assert!(cfg.billing.processor.webhook_secrets.is_empty(), "{name}");
                // Stripe reads its secrets from Vault, so the release must configure Vault.
                if cfg.billing.processor.kind == ProcessorKind::Stripe {
                    assert!(cfg.billing.processor.vault_path.is_some(), "{name}");
                    assert_eq!(cfg.server.keys.provider, KeyProvider::Vault, "{name}");
                }
            }
            other => panic!("{name}: no loader for service {other:?}; add it to this test"),
        }
    }
}

#[test]
fn the_ci_variants_mean_what_they_say() {
    let load = |name: &str| {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/chart-config")
            .join(name);
        config::load::<IdentityConfig>(Some(&file), &overrides()).unwrap()
    };
    let prod = load("production-identity.toml");
    assert_eq!(prod.server.keys.provider, KeyProvider::Vault);
    assert!(prod.server.keys.production);
    assert_eq!(prod.server.tls.source, TlsSource::Files);
    assert_eq!(
        prod.server.vault.auth.jwt_file,
        Path::new("/var/run/secrets/carehub/vault/token")
    );
    assert_eq!(
        prod.server.vault.auth.role.as_deref(),
        Some("carehub-identity")
    );
    assert!(prod.server.telemetry.otlp_endpoint.is_some());

    let pki = load("vault-pki-identity.toml");
    assert_eq!(pki.server.tls.source, TlsSource::VaultPki);
    assert_eq!(pki.server.tls.pki_role.as_deref(), Some("carehub-identity"));
    assert_eq!(pki.server.vault.kv_version, 1);

    let minimal = load("minimal-identity.toml");
    assert_eq!(minimal.server.keys.provider, KeyProvider::File);
    assert!(!minimal.server.keys.production);

    // records: the same variants, with its own Vault role, PKI role and identity to call.
    let load = |name: &str| {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/chart-config")
            .join(name);
        config::load::<RecordsConfig>(Some(&file), &overrides()).unwrap()
    };
    let prod = load("production-records.toml");
    assert_eq!(prod.server.keys.provider, KeyProvider::Vault);
    assert!(prod.server.keys.production);
    assert_eq!(
        prod.server.vault.auth.role.as_deref(),
        Some("carehub-records")
    );
    assert!(prod.server.auth.identity_endpoint.is_some());
    let pki = load("vault-pki-records.toml");
    assert_eq!(pki.server.tls.source, TlsSource::VaultPki);
    assert_eq!(pki.server.tls.pki_role.as_deref(), Some("carehub-records"));
    let minimal = load("minimal-records.toml");
    assert_eq!(minimal.server.keys.provider, KeyProvider::File);
    // The patient's access log merges messaging's, scheduling's and billing's trails.
    for source in ["messaging", "scheduling", "billing"] {
        assert_eq!(
            prod.records.audit_sources.get(source).map(String::as_str),
            Some(format!("https://carehub-{source}:50051").as_str())
        );
    }

    // identity's outbox reaches the services that consume its events and notifications.
    let identity = config::load::<IdentityConfig>(
        Some(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/chart-config/production-identity.toml"),
        ),
        &overrides(),
    )
    .unwrap();
    for target in ["records", "messaging", "scheduling"] {
        assert_eq!(
            identity.server.outbox.targets[target].endpoint,
            format!("https://carehub-{target}:50051")
        );
    }

    // messaging: its own Vault role, and the SFU the production variant names.
    let load = |name: &str| {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/chart-config")
            .join(name);
        config::load::<MessagingConfig>(Some(&file), &overrides()).unwrap()
    };
    let prod = load("production-messaging.toml");
    assert_eq!(
        prod.server.vault.auth.role.as_deref(),
        Some("carehub-messaging")
    );
    assert_eq!(prod.messaging.video.url, "wss://video.carehub.prod.example");
    assert_eq!(prod.messaging.video.api_key, "carehub-prod");
    let pki = load("vault-pki-messaging.toml");
    assert_eq!(
        pki.server.tls.pki_role.as_deref(),
        Some("carehub-messaging")
    );
    let minimal = load("minimal-messaging.toml");
    assert_eq!(minimal.server.keys.provider, KeyProvider::File);

    // scheduling: its own Vault role, PKI role, and the production gateway's address.
    let load = |name: &str| {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/chart-config")
            .join(name);
        config::load::<SchedulingConfig>(Some(&file), &overrides()).unwrap()
    };
    let prod = load("production-scheduling.toml");
    assert_eq!(
        prod.server.vault.auth.role.as_deref(),
        Some("carehub-scheduling")
    );
    assert_eq!(
        prod.scheduling.feed_base_url,
        "https://api.carehub.prod.example"
    );
    let pki = load("vault-pki-scheduling.toml");
    assert_eq!(
        pki.server.tls.pki_role.as_deref(),
        Some("carehub-scheduling")
    );
    let minimal = load("minimal-scheduling.toml");
    assert_eq!(minimal.server.keys.provider, KeyProvider::File);
    // The chart's placeholder (never resolves) until values set the gateway's address.
    assert_eq!(minimal.scheduling.feed_base_url, "https://carehub.example");
    // Appointment events reach billing's Service under every variant.
    for variant in ["defaults", "minimal", "production", "vault-pki"] {
        let cfg = load(&format!("{variant}-scheduling.toml"));
        let billing = &cfg.server.outbox.targets["billing"];
        assert_eq!(
            billing.endpoint, "https://carehub-billing:50051",
            "{variant}"
        );
        assert_eq!(billing.server_name, "billing", "{variant}");
    }

    // billing: its own Vault role and PKI role; Stripe with its secrets' Vault path in
    // production, the sandbox (no secrets, no egress) elsewhere.
    let load = |name: &str| {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/chart-config")
            .join(name);
        config::load::<BillingConfig>(Some(&file), &overrides()).unwrap()
    };
    let prod = load("production-billing.toml");
    assert_eq!(
        prod.server.vault.auth.role.as_deref(),
        Some("carehub-billing")
    );
    assert_eq!(prod.billing.processor.kind, ProcessorKind::Stripe);
    assert_eq!(
        prod.billing.processor.vault_path.as_deref(),
        Some("carehub/billing/processor")
    );
    let pki = load("vault-pki-billing.toml");
    assert_eq!(pki.server.tls.pki_role.as_deref(), Some("carehub-billing"));
    for variant in ["defaults", "minimal", "vault-pki"] {
        let cfg = load(&format!("{variant}-billing.toml"));
        assert_eq!(
            cfg.billing.processor.kind,
            ProcessorKind::Sandbox,
            "{variant}"
        );
        // A Vault path with the sandbox would make billing read (and need) Vault secrets.
        assert!(cfg.billing.processor.vault_path.is_none(), "{variant}");
    }
    let minimal = load("minimal-billing.toml");
    assert_eq!(minimal.server.keys.provider, KeyProvider::File);
}

#[test]
fn records_without_identity_endpoint_is_refused() {
    // What the chart's identity_endpoint guards against: records must not start without it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart-config/minimal-records.toml"),
    )
    .unwrap()
    .lines()
    .filter(|l| !l.starts_with("identity_endpoint"))
    .collect::<Vec<_>>()
    .join("\n");
    std::fs::write(&file, text).unwrap();
    let err = config::load::<RecordsConfig>(Some(&file), &overrides())
        .expect_err("records without identity_endpoint must fail");
    assert!(err.to_string().contains("identity_endpoint"), "{err}");
}

#[test]
fn messaging_without_records_endpoint_is_refused() {
    // What the chart's records_endpoint (and the migration Job's env) guards against.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart-config/minimal-messaging.toml"),
    )
    .unwrap()
    .lines()
    .filter(|l| !l.starts_with("records_endpoint"))
    .collect::<Vec<_>>()
    .join("\n");
    std::fs::write(&file, text).unwrap();
    let err = config::load::<MessagingConfig>(Some(&file), &overrides())
        .expect_err("messaging without records_endpoint must fail");
    assert!(err.to_string().contains("records_endpoint"), "{err}");
}

#[test]
fn scheduling_without_identity_endpoint_is_refused() {
    // What the chart's identity_endpoint (and the migration Job's env) guards against.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart-config/minimal-scheduling.toml"),
    )
    .unwrap()
    .lines()
    .filter(|l| !l.starts_with("identity_endpoint"))
    .collect::<Vec<_>>()
    .join("\n");
    std::fs::write(&file, text).unwrap();
    let err = config::load::<SchedulingConfig>(Some(&file), &overrides())
        .expect_err("scheduling without identity_endpoint must fail");
    assert!(err.to_string().contains("identity_endpoint"), "{err}");
}

#[test]
fn billing_without_identity_endpoint_is_refused() {
    // What the chart's identity_endpoint (and the migration Job's env) guards against.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart-config/minimal-billing.toml"),
    )
    .unwrap()
    .lines()
    .filter(|l| !l.starts_with("identity_endpoint"))
    .collect::<Vec<_>>()
    .join("\n");
    std::fs::write(&file, text).unwrap();
    let err = config::load::<BillingConfig>(Some(&file), &overrides())
        .expect_err("billing without identity_endpoint must fail");
    assert!(err.to_string().contains("identity_endpoint"), "{err}");
}

#[test]
fn stripe_without_its_secrets_vault_path_is_refused() {
    // What the chart's "vaultPath is required with processor.kind=stripe" guards against:
    // billing would have no key to charge with.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart-config/production-billing.toml"),
    )
    .unwrap()
    .lines()
    .filter(|l| !l.starts_with("vault_path"))
    .collect::<Vec<_>>()
    .join("\n");
    std::fs::write(&file, text).unwrap();
    let err = config::load::<BillingConfig>(Some(&file), &overrides())
        .expect_err("Stripe without a key or a Vault path must fail");
    assert!(err.to_string().contains("processor.vault_path"), "{err}");
}

#[test]
fn a_key_the_code_does_not_know_is_refused() {
    // The guard the test above relies on: deny_unknown_fields is in force.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart-config/production-identity.toml"),
    )
    .unwrap()
    .replace("[server.keys]\n", "[server.keys]\nrefresh_every = 5\n");
    std::fs::write(&file, text).unwrap();
    let err = config::load::<IdentityConfig>(Some(&file), &overrides())
        .expect_err("an unknown key must fail");
    assert!(err.to_string().contains("refresh_every"), "{err}");
}
