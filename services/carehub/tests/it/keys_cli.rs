//! `carehub keys init/rotate/status/rewrap` as an operator runs them, against the Vault API
//! double and a real per-test PostgreSQL database: keys are created once (a second init touches
//! nothing), a KEK rotation is picked up, rewrap moves every data key to the new KEK, and data
//! encrypted before the rotation still decrypts after it; `keys video-secret` prints the SFU
//! secret messaging signs with.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

use carehub_platform::config::{KeyProvider, KeysConfig, VaultConfig};
use carehub_platform::crypto::{CryptoConfig, Envelope, Field};
use carehub_platform::db::TestDatabase;
use carehub_platform::keys;
use carehub_platform::keys::vault::VaultConn;
use carehub_platform::vault_double::VaultDouble;
use secrecy::{ExposeSecret as _, SecretString};

async fn carehub(double: &VaultDouble, db_url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_carehub"));
    cmd.args(args)
        .env("VAULT_ADDR", double.addr())
        .env("VAULT_TOKEN", double.root_token())
        .env("CAREHUB_SERVER__KEYS__PROVIDER", "vault")
        .env("CAREHUB_SERVER__TELEMETRY__LOG_FILTER", "warn");
    if let Some(url) = db_url {
        cmd.env("CAREHUB_SERVER__DATABASE__URL", url);
    }
    cmd.output().await.unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "carehub failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn envelope(double: &VaultDouble, pool: sqlx::PgPool) -> Envelope {
    let mut vault = VaultConfig {
        addr: Some(double.addr()),
        ..VaultConfig::default()
    };
    vault.auth.token = Some(SecretString::from(double.root_token()));
    let keys_cfg = KeysConfig {
        provider: KeyProvider::Vault,
        ..KeysConfig::default()
    };
    let source = keys::from_parts("identity", &keys_cfg, &vault)
        .await
        .unwrap();
    Envelope::new("identity", pool, source, CryptoConfig::default()).unwrap()
}

#[tokio::test]
async fn init_rotate_status_rewrap_against_the_vault_double() {
    let double = VaultDouble::start().await.unwrap();

    let first = stdout(&carehub(&double, None, &["keys", "init"]).await);
    assert!(first.contains("16 created, 0 already present"), "{first}");
    assert!(
        first.contains("carehub/identity/signing: created"),
        "{first}"
    );
    let again = stdout(&carehub(&double, None, &["keys", "init"]).await);
    assert!(again.contains("0 created, 16 already present"), "{again}");

    // Data encrypted under KEK v1.
    let db = TestDatabase::new(&carehub_identity::MIGRATOR)
        .await
        .unwrap();
    let url = db.url.expose_secret().to_owned();
    let before = envelope(&double, db.pool.clone()).await;
    let field = Field::new("accounts", "email", "row-1", "subject-1");
    let ciphertext = before
        .encrypt(&field, b"patient@example.org")
        .await
        .unwrap();

    let rotated =
        stdout(&carehub(&double, None, &["keys", "rotate", "--service", "identity"]).await);
    assert!(
        rotated.contains("carehub/identity/kek: version 2 is now current (was 1)"),
        "{rotated}"
    );
    let status = stdout(
        &carehub(
            &double,
            Some(&url),
            &["keys", "status", "--service", "identity"],
        )
        .await,
    );
    assert!(status.contains("current v2 (versions 1, 2)"), "{status}");
    assert!(status.contains("under KEK v1: 1"), "{status}");

    let rewrap = stdout(
        &carehub(
            &double,
            Some(&url),
            &["keys", "rewrap", "--service", "identity"],
        )
        .await,
    );
    assert!(
        rewrap.contains("rewrap complete: 1 data key(s) now under KEK v2"),
        "{rewrap}"
    );
    let status = stdout(
        &carehub(
            &double,
            Some(&url),
            &["keys", "status", "--service", "identity"],
        )
        .await,
    );
    assert!(status.contains("under KEK v2: 1"), "{status}");
    assert!(!status.contains("under KEK v1"), "{status}");

    // A fresh process (new key cache) reads the data written before rotation and rewrap.
    let after = envelope(&double, db.pool.clone()).await;
    let plain = after.decrypt(&field, &ciphertext).await.unwrap();
    assert_eq!(&plain[..], b"patient@example.org");
    // Rewrapping again finds nothing to do.
    let rewrap = stdout(
        &carehub(
            &double,
            Some(&url),
            &["keys", "rewrap", "--service", "identity"],
        )
        .await,
    );
    assert!(
        rewrap.contains("rewrap complete: 0 data key(s)"),
        "{rewrap}"
    );

    // Rotation keeps fields it does not own (identity's signing-key bookkeeping).
    let mut vault_cfg = VaultConfig {
        addr: Some(double.addr()),
        ..VaultConfig::default()
    };
    vault_cfg.auth.token = Some(SecretString::from(double.root_token()));
    let conn = VaultConn::connect("operator", &vault_cfg).await.unwrap();
    let signing = conn.read_kv("carehub/identity/signing").await.unwrap();
    let mut data = signing.data.clone();
    data.insert("published_until_1".into(), "1700000000".into());
    conn.write_kv("carehub/identity/signing", &data, signing.version)
        .await
        .unwrap();
    let rotated = stdout(
        &carehub(
            &double,
            None,
            &[
                "keys",
                "rotate",
                "--service",
                "identity",
                "--key",
                "signing",
            ],
        )
        .await,
    );
    assert!(
        rotated.contains("signing: version 2 is now current"),
        "{rotated}"
    );
    let after = conn.read_kv("carehub/identity/signing").await.unwrap();
    assert_eq!(after.data["published_until_1"], "1700000000");
    assert_eq!(after.data["current"], "2");
    assert!(after.data.contains_key("v1") && after.data.contains_key("v2"));

    // Signing keys belong to identity only.
    let out = carehub(
        &double,
        None,
        &["keys", "rotate", "--service", "billing", "--key", "signing"],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only identity has a signing key"));
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn init_dev_writes_a_key_file_without_vault() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dev-keys.json");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_carehub"))
        .args(["keys", "init", "--dev"])
        .arg(&file)
        .env_remove("VAULT_ADDR")
        .output()
        .await
        .unwrap();
    let text = stdout(&out);
    assert!(text.contains("16 development key(s) created"), "{text}");
    assert!(text.contains("DEVELOPMENT ONLY"), "{text}");
    assert!(file.exists());
}

#[tokio::test]
async fn denied_operator_token_is_reported_with_the_path() {
    let double = VaultDouble::start().await.unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_carehub"))
        .args(["keys", "init", "--service", "billing"])
        .env("VAULT_ADDR", double.addr())
        .env("VAULT_TOKEN", "hvs.unknown")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
}

/// messaging's source of keys as the service builds it from Vault.
async fn messaging_keys(double: &VaultDouble) -> std::sync::Arc<dyn keys::KeySource> {
    let mut vault = VaultConfig {
        addr: Some(double.addr()),
        ..VaultConfig::default()
    };
    vault.auth.token = Some(SecretString::from(double.root_token()));
    let keys_cfg = KeysConfig {
        provider: KeyProvider::Vault,
        ..KeysConfig::default()
    };
    keys::from_parts("messaging", &keys_cfg, &vault)
        .await
        .unwrap()
}

/// `carehub keys video-secret` prints, for the SFU's `keys:`, the very secret messaging signs
/// video join tokens with (derived from its KEK), and a KEK rotation changes it.
#[tokio::test]
async fn video_secret_is_the_one_messaging_signs_with_and_follows_a_kek_rotation() {
    let double = VaultDouble::start().await.unwrap();
    stdout(&carehub(&double, None, &["keys", "init", "--service", "messaging"]).await);
    let args = [
        "keys",
        "video-secret",
        "--set",
        "messaging.video.api_key=sfu-key",
    ];
    let printed = stdout(&carehub(&double, None, &args).await);
    let expected =
        carehub_messaging::video::api_secret(&messaging_keys(&double).await, "sfu-key").unwrap();
    assert_eq!(
        printed,
        format!("keys:\n  sfu-key: {}\n", expected.as_str())
    );

    stdout(&carehub(&double, None, &["keys", "rotate", "--service", "messaging"]).await);
    let rotated = stdout(&carehub(&double, None, &args).await);
    assert_ne!(rotated, printed);
    let expected =
        carehub_messaging::video::api_secret(&messaging_keys(&double).await, "sfu-key").unwrap();
    assert!(
        rotated.ends_with(&format!("{}\n", expected.as_str())),
        "{rotated}"
    );

    // An API key the SFU would not take is refused with the setting named.
    let out = carehub(
        &double,
        None,
        &[
            "keys",
            "video-secret",
            "--set",
            "messaging.video.api_key=has space",
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("messaging.video.api_key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
