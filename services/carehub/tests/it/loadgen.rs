//! Smoke run of `carehub loadgen` against real identity, records, messaging and scheduling
//! servers (real Postgres, real mTLS, one test CA): a second or so per scenario, every scenario
//! free of errors (every message delivered, none twice; no double booking, checked with SQL and
//! through the API);
//! and the load generator exits non-zero when a scenario reports errors (the server stops
//! in the middle of a steady state). Speed is not asserted: scripts/bench.sh measures it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use carehub_identity::config::NotifierKind;
use carehub_identity::IdentityDef;
use carehub_messaging::config::MessagingConfig;
use carehub_messaging::MessagingDef;
use carehub_platform::auth::Role;
use carehub_records::config::RecordsConfig;
use carehub_records::RecordsDef;
use carehub_scheduling::config::SchedulingConfig;
use carehub_scheduling::SchedulingDef;
use carehub_testkit::service::TestService;
use secrecy::ExposeSecret as _;
use tokio::io::AsyncBufReadExt as _;

/// Identity as its own tests run it (the test kit's start, the in-memory notification sandbox),
/// plus a gateway certificate in its directory for loadgen.
async fn identity() -> TestService<IdentityDef> {
    let id = TestService::start(&carehub_identity::SERVICE, |c| {
        c.identity.notifier = NotifierKind::MemorySandbox;
    })
    .await;
    id.pki()
        .ca()
        .issue("gateway")
        .unwrap()
        .write_to(id.dir(), "gateway")
        .unwrap();
    id
}

/// Records on identity's CA, verifying its tokens, as records' own tests run it; returns once
/// it is ready (keys held, identity's revocation feed read).
async fn records(id: &TestService<IdentityDef>) -> TestService<RecordsDef> {
    let endpoint = format!("https://{}", id.grpc_addr);
    let records = TestService::start_with_pki(
        &carehub_records::SERVICE,
        id.pki().clone(),
        |c: &mut RecordsConfig| {
            c.server.auth.identity_endpoint = Some(endpoint);
            c.server.auth.revocation_poll_secs = 1;
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::http_get(&records.admin_addr.to_string(), "/readyz")
        .await
        .is_none_or(|(code, _)| code != 200)
    {
        assert!(Instant::now() < deadline, "records not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    records
}

/// Messaging on identity's CA, asking records about care teams, as messaging's own tests run
/// it; returns once it is ready.
async fn messaging(
    id: &TestService<IdentityDef>,
    records: &TestService<RecordsDef>,
) -> TestService<MessagingDef> {
    let identity_endpoint = format!("https://{}", id.grpc_addr);
    let records_endpoint = format!("https://{}", records.grpc_addr);
    let messaging = TestService::start_with_pki(
        &carehub_messaging::SERVICE,
        id.pki().clone(),
        |c: &mut MessagingConfig| {
            c.server.auth.identity_endpoint = Some(identity_endpoint);
            c.server.auth.revocation_poll_secs = 1;
            c.messaging.records_endpoint = Some(records_endpoint);
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::http_get(&messaging.admin_addr.to_string(), "/readyz")
        .await
        .is_none_or(|(code, _)| code != 200)
    {
        assert!(Instant::now() < deadline, "messaging not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    messaging
}

/// Scheduling on identity's CA, verifying its tokens and asking identity who users are (its
/// effects on other services stay queued in its outbox); returns once it is ready.
async fn scheduling(id: &TestService<IdentityDef>) -> TestService<SchedulingDef> {
    let endpoint = format!("https://{}", id.grpc_addr);
    let scheduling = TestService::start_with_pki(
        &carehub_scheduling::SERVICE,
        id.pki().clone(),
        |c: &mut SchedulingConfig| {
            c.server.auth.identity_endpoint = Some(endpoint);
            c.server.auth.revocation_poll_secs = 1;
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::http_get(&scheduling.admin_addr.to_string(), "/readyz")
        .await
        .is_none_or(|(code, _)| code != 200)
    {
        assert!(
            Instant::now() < deadline,
            "scheduling not ready within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    scheduling
}

/// An identity admin with a known password: loadgen creates the messaging and scheduling
/// providers (and scheduling's staff member) as it.
async fn admin(id: &TestService<IdentityDef>) -> String {
    let state = &id.handle().state;
    let email = format!(
        "loadgen-admin-{}@example.org",
        uuid::Uuid::now_v7().simple()
    );
    carehub_identity::store::accounts::create_user_direct(
        &state.pool,
        &state.crypto,
        &state.hasher,
        &email,
        Role::Admin,
        "Load",
        "Admin",
        Some(carehub_testkit::PASSWORD),
    )
    .await
    .expect("create the admin");
    email
}

struct Servers<'a> {
    identity: &'a TestService<IdentityDef>,
    records: &'a TestService<RecordsDef>,
    messaging: &'a TestService<MessagingDef>,
    scheduling: &'a TestService<SchedulingDef>,
    admin_email: &'a str,
}

fn loadgen(dir: &Path, servers: &Servers<'_>, scenarios: &[&str]) -> tokio::process::Command {
    let Servers {
        identity: id,
        records,
        messaging,
        scheduling,
        admin_email,
    } = servers;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_carehub"));
    cmd.arg("loadgen")
        .args(scenarios)
        .arg("--cert")
        .arg(dir.join("gateway.pem"))
        .arg("--key")
        .arg(dir.join("gateway-key.pem"))
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .args(["--identity", &format!("https://{}", id.grpc_addr)])
        .args(["--records", &format!("https://{}", records.grpc_addr)])
        .args(["--messaging", &format!("https://{}", messaging.grpc_addr)])
        .args(["--scheduling", &format!("https://{}", scheduling.grpc_addr)])
        .args(["--admin", &id.admin_addr.to_string()])
        .args(["--admin", &records.admin_addr.to_string()])
        .args(["--admin", &messaging.admin_addr.to_string()])
        .args(["--admin", &scheduling.admin_addr.to_string()])
        .args(["--in-flight", "4", "--connections", "2", "--users", "4"])
        .args(["--login-in-flight", "2", "--payload-bytes", "64"])
        .args(["--admin-email", admin_email, "--providers", "2"])
        .args(["--fanout-streams", "8", "--fanout-conversations", "2"])
        .args(["--fanout-rate", "20"])
        .args(["--search-providers", "3"])
        .env("LOADGEN_ADMIN_PASSWORD", carehub_testkit::PASSWORD)
        .env_remove("LOADGEN_ADMIN_NEW_PASSWORD")
        .env_remove("CAREHUB_DATABASE_URL")
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn every_scenario_runs_without_errors_and_errors_fail_the_run() {
    let mut id = identity().await;
    let records = records(&id).await;
    let messaging = messaging(&id, &records).await;
    let scheduling = scheduling(&id).await;
    let admin_email = admin(&id).await;
    let dir = id.dir().to_owned();

    // Every scenario, briefly; pgbench is left out (scripts/bench.sh runs it). The audit
    // scenarios use a scratch database on the tests' PostgreSQL.
    let postgres = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let groups = [
        "echo",
        "identity",
        "records",
        "messaging",
        "scheduling",
        "audit",
    ];
    let servers = Servers {
        identity: &id,
        records: &records,
        messaging: &messaging,
        scheduling: &scheduling,
        admin_email: &admin_email,
    };
    // The booking storm's check reads scheduling's own database with SQL.
    let scheduling_db = scheduling.env.db.url().expose_secret().to_owned();
    let out = loadgen(&dir, &servers, &groups)
        .args([
            "--warmup",
            "0.3",
            "--latency-warmup",
            "0",
            "--duration",
            "1",
        ])
        .args(["--json", "-q"])
        .args(["--database-url", &postgres, "--pgbench-clients", "4"])
        .args(["--scheduling-database-url", &scheduling_db])
        .output()
        .await
        .unwrap();
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["ok"], true, "{text}");
    let scenarios = report["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for want in [
        "echo",
        "signing-keys",
        "profile-read",
        "profile-read-half",
        "profile-update",
        "refresh",
        "login",
        "mixed",
        "chart-read",
        "chart-read-half",
        "chart-update",
        "clinic-mixed",
        "message-send",
        "message-delivery",
        "stream-fanout",
        "slot-search",
        "booking-storm",
        "db-read",
        "audit-read",
        "audit-write",
        "audit-write-locked",
    ] {
        assert!(names.contains(&want), "{want} missing: {text}");
    }
    // The audit scenarios' budgets were evaluated (met or not: a benchmark, not a test).
    let budgets = report["budgets"].as_array().unwrap();
    for want in [
        "chart read (closed loop)",
        "chart read p99",
        "ceiling of a read served from PostgreSQL",
        "audited read",
        "audited single-row write",
        "locked-head",
        "sealing lag",
        "message send",
        "send-to-delivery",
        "stream fan-out",
        "slot search",
        "booking storm",
    ] {
        let b = budgets
            .iter()
            .find(|b| b["name"].as_str().unwrap().contains(want))
            .unwrap_or_else(|| panic!("budget {want} missing: {text}"));
        assert!(
            !b["met"].is_null()
                || [
                    "audited single-row write",
                    "stream fan-out",
                    "slot search",
                    "ceiling of a read served from PostgreSQL",
                ]
                .contains(&want),
            "{want} not evaluated: {text}"
        );
    }
    for s in scenarios {
        assert_eq!(s["error_count"], 0, "{text}");
        assert!(s["requests"].as_u64().unwrap() > 0, "{text}");
        assert!(s["p99_ms"].as_f64().unwrap() > 0.0, "{text}");
        assert!(s["ratio_to_echo"].as_f64().is_some(), "{text}");
    }
    // Every message reached every stream waiting for it, once: 4 conversations (one per
    // patient) each streamed by its provider; 8 fan-out streams over 2 conversations.
    for (name, streams) in [("message-delivery", 4), ("stream-fanout", 8)] {
        let d = &scenarios.iter().find(|s| s["name"] == name).unwrap()["delivery"];
        assert_eq!(d["streams"], streams, "{name}: {text}");
        assert_eq!(d["undelivered"], 0, "{name}: {text}");
        assert_eq!(d["duplicates"], 0, "{name}: {text}");
        assert!(
            d["subscriber_events"].as_u64().unwrap() > 0,
            "{name}: {text}"
        );
    }
    // The booking storm booked, and its check (SQL on scheduling's database) found every
    // booking and no two overlapping.
    let storm = &scenarios
        .iter()
        .find(|s| s["name"] == "booking-storm")
        .unwrap()["booking"];
    assert_storm_checked(storm, "sql", &text);
    assert!(text.contains("double bookings: 0"), "{text}");
    // The steady-state counters are read from the services' /metrics.
    for name in [
        "profile-read",
        "chart-read",
        "chart-update",
        "message-send",
        "slot-search",
        "booking-storm",
    ] {
        let read = scenarios.iter().find(|s| s["name"] == name).unwrap();
        for counter in ["vault_requests", "tls_handshakes", "db_connections_opened"] {
            assert!(
                read["steady_state"][counter].as_f64().is_some(),
                "{name}: {counter} not read from /metrics: {text}"
            );
        }
    }

    // Without scheduling's database, the storm is checked through the API (ListAppointments as
    // the staff member).
    let out = loadgen(&dir, &servers, &["booking-storm"])
        .args(["--warmup", "0.2", "--duration", "0.5", "--json", "-q"])
        .args(["--scheduling-database-url", ""])
        .output()
        .await
        .unwrap();
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_storm_checked(&report["scenarios"][0]["booking"], "api", &text);
    assert!(text.contains("double bookings: 0"), "{text}");

    // Errors in a steady state fail the run: identity stops while profile-read measures.
    let mut child = loadgen(&dir, &servers, &["profile-read"])
        .args(["--warmup", "0.2", "--duration", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .expect("loadgen progress in time")
            .unwrap()
            .unwrap_or_else(|| panic!("loadgen ended before measuring: {seen}"));
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("measure") {
            break;
        }
    }
    let running = id.take_started().unwrap();
    running.server.shutdown().await.unwrap();
    let mut rest = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        rest.push_str(&line);
        rest.push('\n');
    }
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "{seen}{rest}");
    assert!(rest.contains("scenarios reported errors"), "{seen}{rest}");
    assert!(rest.contains("profile-read"), "{seen}{rest}");

    running.handle.state.pool.close().await;
    scheduling.shutdown().await;
    messaging.shutdown().await;
    records.shutdown().await;
    id.shutdown().await;
}

/// The booking storm booked something and `method` found every booking, none overlapping.
fn assert_storm_checked(storm: &serde_json::Value, method: &str, text: &str) {
    assert_eq!(storm["verified_by"], method, "{text}");
    assert_eq!(storm["double_bookings"], 0, "{text}");
    let booked = storm["booked_total"].as_u64().unwrap();
    assert!(booked > 0, "{text}");
    assert!(
        storm["active_appointments"].as_u64().unwrap() >= booked,
        "{text}"
    );
    assert!(storm["bookings_per_sec"].as_f64().unwrap() > 0.0, "{text}");
}
