//! The chart's minimal configuration boots the real binary: `carehub serve <service>` with the
//! TOML the chart renders (tests/chart-config/minimal-<service>.toml; only the in-pod paths and
//! ports are redirected, and records', scheduling's and billing's identity_endpoint to the
//! identity started here), a real database, dev certificates and a dev key file. As in the chart, the migrations
//! run as the tables' owner (`carehub migrate <service>`, the migration Job) and the server
//! connects as a login role that is only a member of "<database>_app" and owns nothing
//! (services.<service>.database.app). Readiness turns 200, `carehub health` (what `helm test`
//! runs) answers SERVING, and SIGTERM drains and exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use carehub_platform::db::TestDatabase;
use common::{free_port, http_get};
use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
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

/// A service's database as the chart sets it up: migrated by `carehub migrate <service>` as the
/// owner (the Job), served by a login role that is only a member of "<database>_app".
struct ServiceDb {
    db: TestDatabase,
    login: String,
    serving_url: String,
}

impl ServiceDb {
    async fn new(service: &str, migrator: &Migrator) -> Self {
        let db = TestDatabase::new(migrator).await.unwrap();
        // The migration Job: `carehub migrate <service>`, the owner's URL from the environment
        // (the test database's creator stands in for the owner) and, for every service but
        // identity, identity's endpoint (records' configuration is invalid without it; the Job
        // never calls it). Nothing else.
        let mut migrate = carehub();
        migrate
            .args(["migrate", service])
            .env("CAREHUB_SERVER__DATABASE__URL", db.url.expose_secret());
        if service != "identity" {
            migrate.env(
                "CAREHUB_SERVER__AUTH__IDENTITY_ENDPOINT",
                "https://carehub-identity:50051",
            );
        }
        run_ok(&mut migrate);
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
        ServiceDb {
            db,
            login,
            serving_url,
        }
    }

    /// The role the service served as may not rewrite the audit trail; then drop everything.
    async fn check_audit_and_drop(self) {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.serving_url)
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
        sqlx::query(&format!("DROP ROLE \"{}\"", self.login))
            .execute(&self.db.pool)
            .await
            .unwrap();
        self.db.drop_database().await.unwrap();
    }
}

/// Dev certificates and a dev key file, as the minimal values' Secrets would hold them.
struct Secrets {
    _dir: tempfile::TempDir,
    tls: PathBuf,
    keys: PathBuf,
}

fn secrets() -> Secrets {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let keys = dir.path().join("keys.json");
    run_ok(carehub().args(["dev", "certs", "--out"]).arg(&tls));
    run_ok(carehub().args(["keys", "init", "--dev"]).arg(&keys));
    Secrets {
        _dir: dir,
        tls,
        keys,
    }
}

struct Running {
    service: &'static str,
    /// Taken by [`Running::terminate`]; killed on drop otherwise.
    child: Option<Child>,
    grpc: u16,
    admin: u16,
}

/// A failed assertion must not leave the server running: it would hold its database connections
/// (a warm pool) for the rest of the test run.
impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// `carehub serve <service>` with the chart's minimal TOML; `extra` are more `--set`s.
fn serve(service: &'static str, s: &Secrets, db: &ServiceDb, extra: &[String]) -> Running {
    let (grpc, admin) = (free_port(), free_port());
    let config = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/chart-config/minimal-{service}.toml"));
    let mut sets = vec![
        format!("server.listen=127.0.0.1:{grpc}"),
        format!("server.admin_listen=127.0.0.1:{admin}"),
        format!(
            "server.tls.cert_file={}",
            s.tls.join(format!("{service}.pem")).display()
        ),
        format!(
            "server.tls.key_file={}",
            s.tls.join(format!("{service}-key.pem")).display()
        ),
        format!("server.tls.ca_file={}", s.tls.join("ca.pem").display()),
        format!("server.keys.file={}", s.keys.display()),
    ];
    sets.extend_from_slice(extra);
    let mut cmd = carehub();
    cmd.args(["serve", service, "--config"]).arg(&config);
    for set in &sets {
        cmd.arg("--set").arg(set);
    }
    let child = cmd
        // In the pod this comes from the app role's Secret, as an environment variable.
        .env("CAREHUB_SERVER__DATABASE__URL", &db.serving_url)
        // Logs are JSON lines on stdout.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Running {
        service,
        child: Some(child),
        grpc,
        admin,
    }
}

impl Running {
    /// What the kubelet's readiness probe asks, until the server is up (bounded).
    async fn wait_ready(&mut self) {
        let admin_addr = format!("127.0.0.1:{}", self.admin);
        for _ in 0..300 {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.stdout.take().map(std::io::read_to_string);
                let err = child.stderr.take().map(std::io::read_to_string);
                panic!(
                    "{} exited with {status} before it was ready: {out:?}{err:?}",
                    self.service
                );
            }
            if http_get(&admin_addr, "/readyz").await.map(|r| r.0) == Some(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let child = self.child.as_mut().unwrap();
        let _ = child.kill();
        let out = child.stdout.take().map(std::io::read_to_string);
        panic!("{}: /readyz never answered 200: {out:?}", self.service);
    }

    /// What `helm test` runs.
    fn health(&self, s: &Secrets) {
        let out = carehub()
            .args(["health", "--service", self.service])
            .arg(format!("--addr=127.0.0.1:{}", self.grpc))
            .arg("--ca")
            .arg(s.tls.join("ca.pem"))
            .arg("--cert")
            .arg(s.tls.join("admin-cli.pem"))
            .arg("--key")
            .arg(s.tls.join("admin-cli-key.pem"))
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("SERVING"),
            "{}: {}{}",
            self.service,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The kubelet's SIGTERM after the preStop sleep: drain and exit 0.
    fn terminate(mut self) {
        let child = self.child.take().unwrap();
        run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        let out = child.wait_with_output().unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{}: {log}", self.service);
        assert!(log.contains("NOT_SERVING"), "{}: {log}", self.service);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_minimal_chart_config_serves_and_drains() {
    let db = ServiceDb::new("identity", &carehub_identity::MIGRATOR).await;
    let s = secrets();
    let mut identity = serve("identity", &s, &db, &[]);
    identity.wait_ready().await;
    identity.health(&s);
    identity.terminate();
    db.check_audit_and_drop().await;
}

/// records with the chart's minimal TOML: it reaches identity at server.auth.identity_endpoint
/// (in the pod carehub-identity's Service; here the identity started beside it), gets ready
/// once it holds identity's signing keys and revocations, and drains like identity.
#[tokio::test(flavor = "multi_thread")]
async fn the_minimal_records_config_serves_beside_identity() {
    let identity_db = ServiceDb::new("identity", &carehub_identity::MIGRATOR).await;
    let records_db = ServiceDb::new("records", &carehub_records::MIGRATOR).await;
    let s = secrets();
    let mut identity = serve("identity", &s, &identity_db, &[]);
    identity.wait_ready().await;
    let endpoint = format!(
        "server.auth.identity_endpoint=https://127.0.0.1:{}",
        identity.grpc
    );
    let mut records = serve("records", &s, &records_db, &[endpoint]);
    records.wait_ready().await;
    records.health(&s);
    records.terminate();
    identity.terminate();
    records_db.check_audit_and_drop().await;
    identity_db.check_audit_and_drop().await;
}

/// scheduling with the chart's minimal TOML, beside identity as records is: migrated as the owner
/// (the Job, with identity's endpoint and the feed address the chart sets), served as a member of
/// `<database>_app` (its reminder and hold sweeps included), ready, SERVING, drained. Its outbox
/// targets (records, messaging) are not started: their rows would only stay pending.
#[tokio::test(flavor = "multi_thread")]
async fn the_minimal_scheduling_config_serves_beside_identity() {
    let identity_db = ServiceDb::new("identity", &carehub_identity::MIGRATOR).await;
    let scheduling_db = ServiceDb::new("scheduling", &carehub_scheduling::MIGRATOR).await;
    let s = secrets();
    let mut identity = serve("identity", &s, &identity_db, &[]);
    identity.wait_ready().await;
    let endpoint = format!(
        "server.auth.identity_endpoint=https://127.0.0.1:{}",
        identity.grpc
    );
    let mut scheduling = serve("scheduling", &s, &scheduling_db, &[endpoint]);
    scheduling.wait_ready().await;
    scheduling.health(&s);
    // The calendar route is on the admin port (the gateway's /calendar/); an unknown token is
    // not found.
    let admin = format!("127.0.0.1:{}", scheduling.admin);
    assert_eq!(
        http_get(&admin, "/calendar/not-a-token.ics")
            .await
            .map(|r| r.0),
        Some(404)
    );
    scheduling.terminate();
    identity.terminate();
    scheduling_db.check_audit_and_drop().await;
    identity_db.check_audit_and_drop().await;
}

/// billing with the chart's minimal TOML (the sandbox processor), beside identity: migrated as
/// the owner (the Job, with identity's endpoint), served as a member of `<database>_app`, ready,
/// SERVING, drained. The sandbox has no webhook signing secret, so the processor's webhook route
/// is not mounted on the admin port (the chart exposes it only for Stripe).
#[tokio::test(flavor = "multi_thread")]
async fn the_minimal_billing_config_serves_beside_identity() {
    let identity_db = ServiceDb::new("identity", &carehub_identity::MIGRATOR).await;
    let billing_db = ServiceDb::new("billing", &carehub_billing::MIGRATOR).await;
    let s = secrets();
    let mut identity = serve("identity", &s, &identity_db, &[]);
    identity.wait_ready().await;
    let endpoint = format!(
        "server.auth.identity_endpoint=https://127.0.0.1:{}",
        identity.grpc
    );
    let mut billing = serve("billing", &s, &billing_db, &[endpoint]);
    billing.wait_ready().await;
    billing.health(&s);
    let admin = format!("127.0.0.1:{}", billing.admin);
    assert_eq!(
        http_get(&admin, "/webhooks/stripe").await.map(|r| r.0),
        Some(404)
    );
    billing.terminate();
    identity.terminate();
    billing_db.check_audit_and_drop().await;
    identity_db.check_audit_and_drop().await;
}
