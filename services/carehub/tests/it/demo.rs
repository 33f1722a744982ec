//! `carehub demo` against the real binary's `carehub up` (its own databases on the test
//! PostgreSQL, small pools): every step of the journey passes; with billing unreachable, the
//! demo exits 1 naming the step, the RPC and the gRPC status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use carehub::demo::STEPS;

use crate::common::{free_port, http_get, text};

/// How long `carehub up` may take to answer ready on every admin port (migrations included).
const READY_BOUND: Duration = Duration::from_secs(120);
/// Connections each service of the test's `up` keeps: five services share the test server
/// with every other test running at the same time.
const POOL: &str = "3";

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `n` consecutive free ports (below the ephemeral range, as `free_port` draws them).
fn free_run(n: u16) -> u16 {
    for _ in 0..200 {
        let base = free_port();
        if base > 32_000 {
            continue;
        }
        if (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}

/// A `carehub up` child process with its own data directory and databases.
struct Up {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
    prefix: String,
    grpc: u16,
}

impl Up {
    async fn start() -> Up {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!(
            "carehub_test_demo_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let (grpc, admin) = (free_run(5), free_run(5));
        let log = std::fs::File::create(dir.path().join("up.log")).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_carehub"))
            .args([
                "up",
                "--database-url",
                &database_url(),
                "--database-prefix",
                &prefix,
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .args([
                "--grpc-port",
                &grpc.to_string(),
                "--admin-port",
                &admin.to_string(),
            ])
            .args(["--db-pool-size", POOL])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut up = Up {
            child,
            dir,
            prefix,
            grpc,
        };
        let deadline = Instant::now() + READY_BOUND;
        for port in admin..admin + 5 {
            loop {
                let addr = format!("127.0.0.1:{port}");
                if http_get(&addr, "/readyz").await.map(|r| r.0) == Some(200) {
                    break;
                }
                if let Ok(Some(status)) = up.child.try_wait() {
                    let log = up.log();
                    up.drop_databases().await;
                    panic!("carehub up exited ({status}) before it was ready:\n{log}");
                }
                if Instant::now() > deadline {
                    let log = up.log();
                    up.stop().await;
                    panic!("/readyz on {addr} did not answer 200 within {READY_BOUND:?}:\n{log}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        up
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    /// `carehub demo` against this suite, with `extra` arguments.
    async fn demo(&self, extra: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_carehub"))
            .args(["demo", "--database-url", &database_url()])
            .args(["--database-prefix", &self.prefix])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--grpc-port", &self.grpc.to_string()])
            .args(extra)
            .env_remove("CAREHUB_DATABASE_URL")
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap()
    }

    /// SIGTERM, a bounded wait, then the databases are dropped.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        self.drop_databases().await;
    }

    async fn drop_databases(&self) {
        let pool = sqlx::PgPool::connect(&database_url()).await.unwrap();
        let names: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
                .bind(format!("{}\\_%", self.prefix))
                .fetch_all(&pool)
                .await
                .unwrap();
        for name in names {
            sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_completes_every_step_against_carehub_up() {
    let up = Up::start().await;
    let out = up.demo(&[]).await;
    let all = text(&out);
    if !out.status.success() {
        let log = up.log();
        up.stop().await;
        panic!(
            "the demo failed ({}):\n{all}\n---- carehub up ----\n{log}",
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let total = STEPS.len();
    for (i, step) in STEPS.iter().enumerate() {
        let line = format!("[{:>2}/{total}] {} ... ok", i + 1, step.rpc);
        assert!(stdout.contains(&line), "no {line:?} in:\n{all}");
    }
    assert!(
        stdout.contains(&format!("all {total} steps passed")),
        "{all}"
    );
    // The booking's trace id is printed: 32 lower-case hex digits.
    let trace = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("booking trace "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no booking trace line in:\n{all}"));
    assert_eq!(trace.len(), 32, "{trace}");
    assert!(trace.bytes().all(|b| b.is_ascii_hexdigit()), "{trace}");
    // The patient's code went through messaging's sandbox file, created owner-only.
    let sandbox = up.data_dir().join("messaging/sandbox-outbox.jsonl");
    let lines = std::fs::read_to_string(&sandbox).unwrap();
    assert!(lines.contains("-patient@example.org"), "{lines}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&sandbox).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_fails_with_the_step_named_when_a_service_is_down() {
    let up = Up::start().await;
    let closed = free_port();
    let billing = format!("billing=https://127.0.0.1:{closed}");
    let out = up.demo(&["--endpoint", &billing]).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let total = STEPS.len();
    // The steps before billing's first call passed; billing's is the one named, with its code.
    let first_billing = STEPS
        .iter()
        .position(|s| s.rpc.starts_with("billing."))
        .unwrap();
    for (i, step) in STEPS.iter().enumerate().take(first_billing) {
        let line = format!("[{:>2}/{total}] {} ... ok", i + 1, step.rpc);
        assert!(stdout.contains(&line), "no {line:?} in:\n{all}");
    }
    let failed = format!(
        "[{:>2}/{total}] {} ... FAILED  UNAVAILABLE",
        first_billing + 1,
        STEPS[first_billing].rpc
    );
    assert!(stdout.contains(&failed), "no {failed:?} in:\n{all}");
    let named = format!(
        "demo failed at step {}/{total} ({})",
        first_billing + 1,
        STEPS[first_billing].what
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&named),
        "{all}"
    );
    assert!(!stdout.contains("steps passed"), "{all}");
    up.stop().await;
}
