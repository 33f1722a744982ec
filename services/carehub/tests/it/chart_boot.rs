//! The chart's minimal configuration boots the real binary: `carehub serve identity` with the
//! TOML the chart renders (tests/chart-config/minimal-identity.toml; only the in-pod paths and
//! ports are redirected), a real database, dev certificates and a dev key file. As in the chart,
//! the migrations run as the tables' owner (`carehub migrate identity`, the migration Job) and
//! the server connects as a login role that is only a member of "<database>_app" and owns
//! nothing (services.identity.database.app). Readiness turns 200, `carehub health` (what
//! `helm test` runs) answers SERVING, and SIGTERM drains and exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use carehub_platform::db::TestDatabase;
use common::{free_port, http_get};
use secrecy::ExposeSecret;
use sqlx::ConnectOptions;

fn carehub() -> Command {
    Command::new(env!("CARGO_BIN_EXE_carehub"))
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_minimal_chart_config_serves_and_drains() {
    let db = TestDatabase::new(&carehub_identity::MIGRATOR)
        .await
        .unwrap();
    // The migration Job: `carehub migrate identity`, the owner's URL from the environment and
    // nothing else (the test database's creator stands in for the owner).
    run_ok(
        carehub()
            .args(["migrate", "identity"])
            .env("CAREHUB_SERVER__DATABASE__URL", db.url.expose_secret()),
    );
    // The pods' role: a member of "<database>_app", owning nothing.
    let login = format!("{}_svc", db.name());
    sqlx::query(&format!(
        "CREATE ROLE \"{login}\" LOGIN IN ROLE \"{}\"",
        carehub_platform::db::app_role(db.name())
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let options: sqlx::postgres::PgConnectOptions = db.url.expose_secret().parse().unwrap();
    let serving_url = options.username(&login).to_url_lossy().to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(carehub().args(["dev", "certs", "--out"]).arg(d.join("tls")));
    run_ok(
        carehub()
            .args(["keys", "init", "--dev"])
            .arg(d.join("keys.json")),
    );
    let (grpc, admin) = (free_port(), free_port());
    let config =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart-config/minimal-identity.toml");
    let tls = d.join("tls");
    let mut server = carehub()
        .args(["serve", "identity", "--config"])
        .arg(&config)
        .arg("--set")
        .arg(format!("server.listen=127.0.0.1:{grpc}"))
        .arg("--set")
        .arg(format!("server.admin_listen=127.0.0.1:{admin}"))
        .arg("--set")
        .arg(format!(
            "server.tls.cert_file={}",
            tls.join("identity.pem").display()
        ))
        .arg("--set")
        .arg(format!(
            "server.tls.key_file={}",
            tls.join("identity-key.pem").display()
        ))
        .arg("--set")
        .arg(format!(
            "server.tls.ca_file={}",
            tls.join("ca.pem").display()
        ))
        .arg("--set")
        .arg(format!(
            "server.keys.file={}",
            d.join("keys.json").display()
        ))
        // In the pod this comes from the app role's Secret, as an environment variable.
        .env("CAREHUB_SERVER__DATABASE__URL", &serving_url)
        // Logs are JSON lines on stdout.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // What the kubelet's readiness probe asks, until the server is up (bounded).
    let admin_addr = format!("127.0.0.1:{admin}");
    let mut ready = false;
    for _ in 0..150 {
        if let Some(status) = server.try_wait().unwrap() {
            let out = server.wait_with_output().unwrap();
            panic!(
                "identity exited with {status} before it was ready: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if http_get(&admin_addr, "/readyz").await.map(|r| r.0) == Some(200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "/readyz never answered 200");

    // What `helm test` runs.
    let out = carehub()
        .args(["health", "--service", "identity"])
        .arg(format!("--addr=127.0.0.1:{grpc}"))
        .arg("--ca")
        .arg(tls.join("ca.pem"))
        .arg("--cert")
        .arg(tls.join("admin-cli.pem"))
        .arg("--key")
        .arg(tls.join("admin-cli-key.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("SERVING"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The kubelet's SIGTERM after the preStop sleep: drain and exit 0.
    run_ok(Command::new("kill").args(["-TERM", &server.id().to_string()]));
    let out = server.wait_with_output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    assert!(log.contains("NOT_SERVING"), "{log}");
    // The role it served as may not rewrite the audit trail.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&serving_url)
        .await
        .unwrap();
    let err = sqlx::query("DELETE FROM carehub_platform.audit_events")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("permission denied for table audit_events"),
        "{err}"
    );
    pool.close().await;
    sqlx::query(&format!("DROP ROLE \"{login}\""))
        .execute(&db.pool)
        .await
        .unwrap();
    db.drop_database().await.unwrap();
}
