//! `carehub loadgen`: drives a running carehub (identity, records, messaging, scheduling, billing) over mTLS and reports throughput, latency
//! percentiles (HDR histograms), errors by gRPC code, CPU per request, and what the steady
//! state cost that it should not have (Vault requests, TLS handshakes, new database
//! connections, read from the services' `/metrics`), beside baselines measured in the same
//! run: a bare tonic echo service with the same mTLS, and pgbench against the same PostgreSQL.
//!
//! It exits non-zero when any scenario saw an error, so that a smoke run can gate a build.

mod audit;
mod billing;
mod echo;
mod engine;
mod identity;
mod messaging;
mod pgbench;
mod probe;
mod records;
mod scheduling;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::Serialize;
use tonic::transport::Channel;

use carehub_platform::tls::TlsStore;
use engine::{LoadShape, Measured, Window};
use identity::Kind;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Everything below, echo measured first and last.
    All,
    /// echo + pgbench.
    Baseline,
    /// Bare tonic echo service, same mTLS, in this process.
    Echo,
    /// pgbench single-row insert and select-only against --database-url.
    Pgbench,
    /// Every identity scenario.
    Identity,
    /// ListSigningKeys: unauthenticated, no database.
    SigningKeys,
    /// GetProfile: token check, select, decrypt (and audit, once reads are audited).
    ProfileRead,
    /// GetProfile open loop at half the closed-loop profile-read throughput of this run.
    ProfileReadHalf,
    /// UpdateProfile with an idempotency key: audited, idempotent write.
    ProfileUpdate,
    /// RefreshSession: the refresh token rotates.
    Refresh,
    /// Login with a password (argon2-bound), at --login-in-flight.
    Login,
    /// 7 profile reads : 2 profile updates : 1 refresh.
    Mixed,
    /// Every records scenario.
    Records,
    /// GetChart by the patient (a chart of about 10 entries): audited read.
    ChartRead,
    /// GetChart open loop at half the closed-loop chart-read throughput of this run.
    ChartReadHalf,
    /// UpdateEntry with an idempotency key and the slot's own entry's etag: audited write.
    ChartUpdate,
    /// 6 chart reads : 2 entry reads : 1 entry update : 1 entry create.
    ClinicMixed,
    /// Every messaging scenario.
    Messaging,
    /// SendMessage by the patient of a care conversation: audited, encrypted send.
    MessageSend,
    /// Open loop (--rate, default 500/s): send-to-arrival latency on the provider's stream.
    MessageDelivery,
    /// --fanout-streams streams over --fanout-conversations conversations, one sender at
    /// --fanout-rate: latency per stream event and events delivered per second.
    StreamFanout,
    /// Every scheduling scenario.
    Scheduling,
    /// SearchSlots by the patient over one week across --search-providers providers (50),
    /// filtered by state and visit type, in the patient's zone.
    SlotSearch,
    /// BookAppointment by many patients of one provider's slots, most of them colliding
    /// (SLOT_TAKEN refusals counted apart); then checks that nothing was double-booked.
    BookingStorm,
    /// Every billing scenario.
    Billing,
    /// PayInvoice by the invoice's patient (sandbox card, fresh idempotency key) of invoices
    /// seeded by a billing clerk, 1 in 10 replayed with the same key; then checks that no
    /// invoice was charged twice.
    PayInvoice,
    /// The four scratch-database scenarios below.
    Audit,
    /// Echo whose every answer first reads one row by primary key (one round trip on a
    /// pooled connection), no audit event: the ceiling of a read served from PostgreSQL.
    DbRead,
    /// Echo whose every answer waits for its read event (group commit), sealed meanwhile.
    AuditRead,
    /// Single-row insert + its audit event (queued) per transaction, sealed meanwhile.
    AuditWrite,
    /// The same with the append before the queue (chain head locked until commit).
    AuditWriteLocked,
}

impl Scenario {
    /// Whether the scenario runs on the scratch database (db-read and the audit scenarios),
    /// against a server of this process rather than the services.
    fn uses_scratch(self) -> bool {
        matches!(
            self,
            Scenario::DbRead
                | Scenario::AuditRead
                | Scenario::AuditWrite
                | Scenario::AuditWriteLocked
        )
    }
}

/// Gathers the planner's statistics on the services' databases of the cluster at `admin_url`
/// right after seeding. Autovacuum would within its next minute; until then a plan cached on
/// tables that were nearly empty at its first use (a sequential scan and a hash join where an
/// index does it) is measured instead of the one a database in service runs. Best effort: a
/// carehub whose database loadgen cannot reach is measured as it is.
async fn analyze_seeded(admin_url: &str, quiet: bool) {
    use sqlx::Connection as _;
    let databases = async {
        let mut admin = sqlx::PgConnection::connect(admin_url).await?;
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname LIKE 'carehub\\_%' AND datallowconn",
        )
        .fetch_all(&mut admin)
        .await?;
        admin.close().await?;
        Ok::<_, anyhow::Error>(names)
    };
    let names = match databases.await {
        Ok(names) => names,
        Err(e) => {
            if !quiet {
                eprintln!("statistics: not gathered ({e:#})");
            }
            return;
        }
    };
    let mut analyzed = 0;
    for name in &names {
        let done = async {
            let url = carehub_platform::db::url_with_database(admin_url, name)?;
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            sqlx::query("ANALYZE").execute(&mut conn).await?;
            conn.close().await?;
            Ok::<_, anyhow::Error>(())
        };
        match done.await {
            Ok(()) => analyzed += 1,
            Err(e) if !quiet => eprintln!("statistics: {name} not analyzed ({e:#})"),
            Err(_) => {}
        }
    }
    if !quiet {
        eprintln!(
            "statistics: ANALYZE on {analyzed} of {} carehub databases",
            names.len()
        );
    }
}

fn expand(list: &[Scenario]) -> Vec<Scenario> {
    use Scenario::*;
    let identity = [
        SigningKeys,
        ProfileRead,
        ProfileReadHalf,
        ProfileUpdate,
        Refresh,
        Login,
        Mixed,
    ];
    let records = [ChartRead, ChartReadHalf, ChartUpdate, ClinicMixed];
    let messaging = [MessageSend, MessageDelivery, StreamFanout];
    let scheduling = [SlotSearch, BookingStorm];
    let billing = [PayInvoice];
    let audit = [DbRead, AuditRead, AuditWrite, AuditWriteLocked];
    let list = if list.is_empty() { &[All][..] } else { list };
    let mut out = Vec::new();
    for s in list {
        match s {
            All => {
                out.extend([Echo, Pgbench]);
                out.extend(identity);
                out.extend(records);
                out.extend(messaging);
                out.extend(scheduling);
                out.extend(billing);
                out.extend(audit);
                out.push(Echo);
            }
            Audit => out.extend(audit),
            Baseline => out.extend([Echo, Pgbench]),
            Identity => out.extend(identity),
            Records => out.extend(records),
            Messaging => out.extend(messaging),
            Scheduling => out.extend(scheduling),
            Billing => out.extend(billing),
            other => out.push(*other),
        }
    }
    out
}

#[derive(Args, Debug)]
pub struct LoadgenArgs {
    /// Scenarios, in order (default: all).
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// `carehub up`'s data directory: client certificate, key and CA are read from its certs/.
    #[arg(long, default_value = ".carehub")]
    data_dir: PathBuf,
    /// Client certificate (default: <data-dir>/certs/gateway.pem: the gateway workload).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key (default: <data-dir>/certs/gateway-key.pem).
    #[arg(long)]
    key: Option<PathBuf>,
    /// CA bundle (default: <data-dir>/certs/ca.pem).
    #[arg(long)]
    ca: Option<PathBuf>,
    #[arg(long, default_value = "carehub.local")]
    trust_domain: String,
    /// identity's gRPC endpoint.
    #[arg(long, default_value = "https://127.0.0.1:50051")]
    identity: String,
    /// The name identity's certificate must carry.
    #[arg(long, default_value = "identity")]
    server_name: String,
    /// records' gRPC endpoint.
    #[arg(long, default_value = "https://127.0.0.1:50052")]
    records: String,
    /// The name records' certificate must carry.
    #[arg(long, default_value = "records")]
    records_server_name: String,
    /// messaging's gRPC endpoint.
    #[arg(long, default_value = "https://127.0.0.1:50053")]
    messaging: String,
    /// The name messaging's certificate must carry.
    #[arg(long, default_value = "messaging")]
    messaging_server_name: String,
    /// scheduling's gRPC endpoint.
    #[arg(long, default_value = "https://127.0.0.1:50054")]
    scheduling: String,
    /// The name scheduling's certificate must carry.
    #[arg(long, default_value = "scheduling")]
    scheduling_server_name: String,
    /// billing's gRPC endpoint.
    #[arg(long, default_value = "https://127.0.0.1:50055")]
    billing: String,
    /// The name billing's certificate must carry.
    #[arg(long, default_value = "billing")]
    billing_server_name: String,
    /// Admin (`/metrics`) addresses of the services, host:port (repeatable; default identity's,
    /// records', messaging's, scheduling's and billing's under `carehub up`).
    #[arg(long = "admin", default_values = ["127.0.0.1:9051", "127.0.0.1:9052", "127.0.0.1:9053", "127.0.0.1:9054", "127.0.0.1:9055"])]
    admins: Vec<String>,
    /// The identity admin who creates the providers of the messaging and scheduling scenarios
    /// (and the scheduling scenarios' staff member, and the billing scenario's billing clerk).
    #[arg(long, default_value = "admin@carehub.local")]
    admin_email: String,
    /// That admin's password (the messaging, scheduling and billing scenarios need it; `all`
    /// skips them without it).
    #[arg(long, env = "LOADGEN_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// When the admin still has a one-time password (a fresh `carehub up` prints it): the
    /// password it is changed to first.
    #[arg(long, env = "LOADGEN_ADMIN_NEW_PASSWORD", hide_env_values = true)]
    admin_new_password: Option<String>,
    /// Providers created for the messaging scenarios; patient n's care team gets provider
    /// n modulo this, and each patient one care conversation with it.
    #[arg(long, default_value_t = 4)]
    providers: usize,
    /// stream-fanout: live streams held (StreamEvents), by the conversations' providers and
    /// patients in turn.
    #[arg(long, default_value_t = 200)]
    fanout_streams: usize,
    /// stream-fanout: conversations the streams are spread over.
    #[arg(long, default_value_t = 4)]
    fanout_conversations: usize,
    /// stream-fanout: messages per second sent (open loop), over those conversations in turn.
    #[arg(long, default_value_t = 20.0)]
    fanout_rate: f64,
    /// slot-search: providers in the directory (08:00-18:00 Monday to Friday in five US zones,
    /// all licensed in NY), each with 4 appointments already booked by the patients.
    #[arg(long, default_value_t = 50)]
    search_providers: usize,
    /// booking-storm: booking attempts per slot, on average (the calls advance through the
    /// provider's slots by one slot per this many calls).
    #[arg(long, default_value_t = 4.0)]
    storm_attempts_per_slot: f64,
    /// booking-storm: each call picks at random among this many slots from where the storm
    /// stands.
    #[arg(long, default_value_t = 8)]
    storm_spread: u64,
    /// booking-storm: scheduling's database, for the final SQL check of double bookings
    /// (default: `carehub_scheduling` on --database-url's server, as `carehub up` names it;
    /// empty: no SQL). When it cannot be read, or holds fewer of the storm provider's
    /// appointments than were booked, the check lists them through the API (ListAppointments
    /// as the staff member).
    #[arg(long)]
    scheduling_database_url: Option<String>,
    /// pay-invoice: the payments per second the invoice pool is sized for (warm-up and steady
    /// state at this rate, a fifth more; --rate when given).
    #[arg(long, default_value_t = billing::DEFAULT_EXPECTED_RATE)]
    pay_expected_rate: f64,
    /// pay-invoice: invoices to seed (default: from --pay-expected-rate, --warmup and
    /// --duration).
    #[arg(long)]
    invoices: Option<usize>,
    /// Requests in flight (closed loop).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// HTTP/2 connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Open loop at this many requests per second (identity, records and messaging scenarios)
    /// instead of a closed loop; message-delivery's rate (default 500).
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: most requests outstanding before further ones count as CLIENT_OVERLOADED.
    #[arg(long, default_value_t = 10_000)]
    max_outstanding: usize,
    /// Warm-up seconds before each steady state.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// The shortest warm-up of the open loops whose p99 is held to a budget (the half loads,
    /// message-delivery, stream-fanout): each follows a closed loop that saturated the
    /// machine, whose writes keep autovacuum and the audit sequencer busy for seconds after it
    /// (a 2 s warm-up put those seconds into message-delivery's window: p99 26.6 and 33.1 ms,
    /// against 13.7-17.0 ms after 3 s).
    #[arg(long, default_value_t = 5.0)]
    latency_warmup: f64,
    /// Seconds of each steady state.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Patients to register and sign in (default: one per request in flight); the records
    /// scenarios give each a chart.
    #[arg(long)]
    users: Option<usize>,
    /// Requests in flight for the login scenario (argon2-bound).
    #[arg(long, default_value_t = 8)]
    login_in_flight: usize,
    /// Payload of each echo request and answer, bytes (about a GetProfile answer).
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Worker threads of the in-process echo server.
    #[arg(long, default_value_t = 2)]
    echo_threads: usize,
    /// PostgreSQL for pgbench (any database; a scratch database is created and dropped): the
    /// server identity uses, as `carehub up --database-url` / its private cluster.
    #[arg(
        long,
        env = "CAREHUB_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:55432/postgres"
    )]
    database_url: String,
    /// Connections pgbench uses.
    #[arg(long, default_value_t = 16)]
    pgbench_clients: usize,
    /// The server process, to report its CPU per request.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The postmaster, to report PostgreSQL's CPU per request (it and its backends).
    #[arg(long)]
    postgres_pid: Option<u32>,
    /// Print JSON on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Also write the table as Markdown to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
}

/// One scenario's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    /// "closed 64 in flight / 4 conns" or "open 2500/s".
    pub load: String,
    pub requests: u64,
    pub throughput: f64,
    pub ratio_to_echo: Option<f64>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub error_count: u64,
    pub loadgen_cpu_us_per_request: f64,
    pub server_cpu_us_per_request: Option<f64>,
    pub postgres_cpu_us_per_request: Option<f64>,
    /// Logins: per second per core of server CPU (or per machine core when the server's
    /// CPU is unknown).
    pub per_core: Option<f64>,
    /// Resident memory of the server process right after the steady state (MiB).
    pub server_rss_mib: Option<f64>,
    pub steady_state: probe::SteadyDelta,
    /// Audit scenarios: age of the oldest event still queued right after the steady state.
    pub sealing_lag_secs: Option<f64>,
    /// Delivery scenarios: streams, arrivals, undelivered and duplicated messages (the
    /// latency figures above are then per arrival on a stream).
    pub delivery: Option<messaging::DeliveryStats>,
    /// booking-storm: bookings and refusals, and the double-booking check.
    pub booking: Option<scheduling::BookingStats>,
    /// pay-invoice: payments, replays, and the duplicate-charge check.
    pub payments: Option<billing::PaymentStats>,
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
struct Budget {
    name: String,
    target: String,
    measured: String,
    /// None when it could not be evaluated in this run.
    met: Option<bool>,
}

#[derive(Debug, Serialize)]
struct Report {
    cores: usize,
    echo_throughput: Option<f64>,
    scenarios: Vec<ScenarioReport>,
    pgbench: Vec<pgbench::PgbenchResult>,
    pgbench_note: Option<String>,
    budgets: Vec<Budget>,
    ok: bool,
}

/// Reads the steady-state counters and CPU times before and after the window.
struct Probe {
    admins: Vec<String>,
    server_pid: Option<u32>,
    postgres_pid: Option<u32>,
    /// The echo server runs in this process: its threads' CPU is the "server" CPU then.
    in_process_server: bool,
    before: Option<Reading>,
    after: Option<Reading>,
}

#[derive(Clone, Debug, Default)]
struct Reading {
    counters: probe::Counters,
    self_cpu: f64,
    echo_cpu: f64,
    server_cpu: Option<f64>,
    postgres_cpu: Option<f64>,
}

impl Probe {
    async fn read(&self) -> Reading {
        let (self_cpu, echo_cpu) = probe::self_cpu(echo::THREAD_NAME);
        Reading {
            counters: if self.in_process_server {
                probe::Counters::default()
            } else {
                probe::counters(&self.admins).await
            },
            self_cpu,
            echo_cpu,
            server_cpu: self.server_pid.and_then(probe::process_cpu),
            postgres_cpu: self.postgres_pid.and_then(probe::tree_cpu),
        }
    }
}

impl Window for Probe {
    async fn opening(&mut self) {
        self.before = Some(self.read().await);
    }
    async fn closed(&mut self) {
        self.after = Some(self.read().await);
    }
}

fn per_request(before: Option<f64>, after: Option<f64>, requests: u64) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if requests > 0 => Some((a - b) * 1e6 / requests as f64),
        _ => None,
    }
}

fn report(name: &str, load: String, m: &Measured, p: &Probe) -> ScenarioReport {
    let before = p.before.clone().unwrap_or_default();
    let after = p.after.clone().unwrap_or_default();
    let requests = m.ok + m.error_count();
    let echo_cpu = after.echo_cpu - before.echo_cpu;
    let own = (after.self_cpu - before.self_cpu) - echo_cpu;
    let server = if p.in_process_server {
        per_request(Some(0.0), Some(echo_cpu), requests)
    } else {
        per_request(before.server_cpu, after.server_cpu, requests)
    };
    ScenarioReport {
        name: name.to_owned(),
        load,
        requests,
        throughput: m.throughput(),
        ratio_to_echo: None,
        p50_ms: m.quantile_ms(0.50),
        p90_ms: m.quantile_ms(0.90),
        p99_ms: m.quantile_ms(0.99),
        p999_ms: m.quantile_ms(0.999),
        max_ms: m.max_ms(),
        errors: m.errors.clone(),
        error_count: m.error_count(),
        loadgen_cpu_us_per_request: per_request(Some(0.0), Some(own), requests).unwrap_or(0.0),
        server_cpu_us_per_request: server,
        postgres_cpu_us_per_request: per_request(before.postgres_cpu, after.postgres_cpu, requests),
        per_core: None,
        server_rss_mib: p
            .server_pid
            .filter(|_| !p.in_process_server)
            .and_then(probe::rss_kib)
            .map(|k| k as f64 / 1024.0),
        steady_state: if p.in_process_server {
            probe::SteadyDelta::default()
        } else {
            probe::SteadyDelta::between(&before.counters, &after.counters)
        },
        sealing_lag_secs: None,
        delivery: None,
        booking: None,
        payments: None,
        note: None,
    }
}

fn client_tls(args: &LoadgenArgs) -> anyhow::Result<Arc<TlsStore>> {
    gateway_tls(
        &args.data_dir,
        args.cert.as_deref(),
        args.key.as_deref(),
        args.ca.as_deref(),
        &args.trust_domain,
    )
}

/// The client TLS of a tool that talks to `carehub up`'s services as the gateway: certificate,
/// key and CA from `<data_dir>/certs` unless given.
pub(crate) fn gateway_tls(
    data_dir: &std::path::Path,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
    ca: Option<&std::path::Path>,
    trust_domain: &str,
) -> anyhow::Result<Arc<TlsStore>> {
    let certs = data_dir.join("certs");
    let cert = cert.map_or_else(|| certs.join("gateway.pem"), PathBuf::from);
    let key = key.map_or_else(|| certs.join("gateway-key.pem"), PathBuf::from);
    let ca = ca.map_or_else(|| certs.join("ca.pem"), PathBuf::from);
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| {
            format!(
                "reading {} (start `carehub up`, or pass --cert/--key/--ca)",
                p.display()
            )
        })
    };
    TlsStore::from_pem(&read(&cert)?, &read(&key)?, &read(&ca)?, trust_domain)
}

async fn connect(
    target: &str,
    tls: &Arc<TlsStore>,
    server_name: &str,
    n: usize,
) -> anyhow::Result<Vec<Channel>> {
    let config = tls.client_config()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        out.push(
            carehub_platform::client::connect_with_client_config(
                target,
                config.clone(),
                server_name,
            )
            .await?
            .into_inner(),
        );
    }
    Ok(out)
}

/// The echo server (backed by the scratch database for `db-read` and `audit-read`) and
/// channels to it.
async fn echo_server(
    args: &LoadgenArgs,
    tls: &Arc<TlsStore>,
    backing: echo::Backing,
) -> anyhow::Result<(echo::EchoServer, Vec<Channel>)> {
    let server = echo::start(tls, args.echo_threads, backing).await?;
    let channels = connect(
        &format!("https://{}", server.addr),
        tls,
        "localhost",
        args.connections,
    )
    .await?;
    Ok((server, channels))
}

/// The audit queue as read right after a steady state, for a scenario's note.
fn queue_after(queue: Option<carehub_platform::audit::QueueState>) -> String {
    queue.map_or("?".to_owned(), |q| {
        format!("{} events, oldest {:.2} s", q.depth, q.oldest_age_secs)
    })
}

fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.clamp(0.0, 86_400.0))
}

pub async fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    let scenarios = expand(&args.scenarios);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tls = client_tls(&args)?;
    let shape = LoadShape {
        in_flight: args.in_flight.max(1),
        rate: None,
        warmup: secs(args.warmup),
        duration: secs(args.duration),
        max_outstanding: args.max_outstanding.max(1),
        progress: !args.quiet,
    };
    let closed = |n: usize| format!("closed {n} in flight / {} conns", args.connections.max(1));
    let mut results: Vec<ScenarioReport> = Vec::new();
    let mut echo_runs: Vec<f64> = Vec::new();
    let mut pg: Vec<pgbench::PgbenchResult> = Vec::new();
    let mut pgbench_note = None;

    // identity: connections and seed, once, when an identity scenario is asked for.
    let needs_identity = scenarios
        .iter()
        .any(|s| !matches!(s, Scenario::Echo | Scenario::Pgbench) && !s.uses_scratch());
    let needs_messaging = scenarios.iter().any(|s| {
        matches!(
            s,
            Scenario::MessageSend | Scenario::MessageDelivery | Scenario::StreamFanout
        )
    });
    let needs_scheduling = scenarios
        .iter()
        .any(|s| matches!(s, Scenario::SlotSearch | Scenario::BookingStorm));
    // Without an admin to create providers, `all` leaves the messaging and scheduling
    // scenarios out; asked for by name, they fail the run.
    let admin_password = args.admin_password.clone().filter(|p| !p.is_empty());
    let needs_messaging = admin_gate(
        needs_messaging,
        admin_password.is_some(),
        args.scenarios.iter().any(|s| {
            matches!(
                s,
                Scenario::Messaging
                    | Scenario::MessageSend
                    | Scenario::MessageDelivery
                    | Scenario::StreamFanout
            )
        }),
        "messaging",
        &args.admin_email,
    )?;
    let needs_scheduling = admin_gate(
        needs_scheduling,
        admin_password.is_some(),
        args.scenarios.iter().any(|s| {
            matches!(
                s,
                Scenario::Scheduling | Scenario::SlotSearch | Scenario::BookingStorm
            )
        }),
        "scheduling",
        &args.admin_email,
    )?;
    let needs_billing = admin_gate(
        scenarios.contains(&Scenario::PayInvoice),
        admin_password.is_some(),
        args.scenarios
            .iter()
            .any(|s| matches!(s, Scenario::Billing | Scenario::PayInvoice)),
        "billing",
        &args.admin_email,
    )?;
    // The scratch database of db-read and the audit scenarios, once, when one is asked for.
    let scratch = if scenarios.iter().any(|s| s.uses_scratch()) {
        let scratch = audit::Scratch::create(&args.database_url, args.pgbench_clients)
            .await
            .context("creating the audit scenarios' scratch database (--database-url)")?;
        if scenarios.contains(&Scenario::DbRead) {
            echo::create_read_table(&scratch.pool, args.payload_bytes)
                .await
                .context("filling db-read's table in the scratch database")?;
        }
        Some(scratch)
    } else {
        None
    };
    let needs_records = scenarios.iter().any(|s| {
        matches!(
            s,
            Scenario::ChartRead
                | Scenario::ChartReadHalf
                | Scenario::ChartUpdate
                | Scenario::ClinicMixed
        )
    });
    let identity = if needs_identity {
        let channels = connect(&args.identity, &tls, &args.server_name, args.connections)
            .await
            .with_context(|| format!("connecting to identity at {}", args.identity))?;
        let users = args.users.unwrap_or(args.in_flight).max(1);
        let chains = args.in_flight.max(1);
        if !args.quiet {
            eprintln!(
                "seeding: {users} patients registered and signed in, {chains} refresh chains"
            );
        }
        let seed = identity::seed(&channels, users, chains, 4)
            .await
            .context("seeding users through identity's public RPCs")?;
        Some((channels, Arc::new(seed)))
    } else {
        None
    };
    let records_channels = if identity.is_some() && (needs_records || needs_messaging) {
        Some(
            connect(
                &args.records,
                &tls,
                &args.records_server_name,
                args.connections,
            )
            .await
            .with_context(|| format!("connecting to records at {}", args.records))?,
        )
    } else {
        None
    };
    // records: charts for the identity seed's patients, once.
    let records = match (&identity, &records_channels) {
        (Some((_, users)), Some(channels)) if needs_records => {
            let channels = channels.clone();
            let slots = args.in_flight.max(1);
            let seed = records::seed(&channels, &users.users, slots, 8)
                .await
                .context("seeding charts through records' public RPCs")?;
            if !args.quiet {
                eprintln!(
                    "seeding: {} charts of {} entries, {slots} entries updated (one per request in flight)",
                    seed.patients.len(),
                    seed.entries_per_chart
                );
            }
            Some((channels, Arc::new(seed)))
        }
        _ => None,
    };
    // The admin who creates providers (and scheduling's staff member), signed in once: a fresh
    // install's one-time password can be changed only once.
    let admin_party = match &identity {
        Some((identity_channels, _)) if needs_messaging || needs_scheduling || needs_billing => {
            let admin = messaging::Admin {
                email: args.admin_email.clone(),
                password: admin_password.clone(),
                new_password: args.admin_new_password.clone().filter(|p| !p.is_empty()),
            };
            Some(messaging::admin_session(identity_channels, &admin).await?)
        }
        _ => None,
    };
    // messaging: providers, care teams and one conversation per patient, once.
    let messaging = match (&identity, &records_channels, &admin_party) {
        (Some((identity_channels, users)), Some(records_channels), Some(admin))
            if needs_messaging =>
        {
            let channels = connect(
                &args.messaging,
                &tls,
                &args.messaging_server_name,
                args.connections,
            )
            .await
            .with_context(|| format!("connecting to messaging at {}", args.messaging))?;
            let seed = messaging::seed(
                messaging::Channels {
                    identity: identity_channels,
                    records: records_channels,
                    messaging: &channels,
                },
                &users.users,
                admin,
                args.providers,
                4,
            )
            .await
            .context("seeding care conversations through identity's, records' and messaging's public RPCs")?;
            if !args.quiet {
                eprintln!(
                    "seeding: {} providers, {} care conversations (a provider on each patient's care team)",
                    seed.providers.len(),
                    seed.conversations.len()
                );
            }
            Some((channels, Arc::new(seed)))
        }
        _ => None,
    };
    // scheduling: a staff member, the run's visit type and the providers the scenarios need,
    // once.
    let scheduling = match (&identity, &admin_party) {
        (Some((identity_channels, users)), Some(admin)) if needs_scheduling => {
            let channels = connect(
                &args.scheduling,
                &tls,
                &args.scheduling_server_name,
                args.connections,
            )
            .await
            .with_context(|| format!("connecting to scheduling at {}", args.scheduling))?;
            let search = scenarios
                .contains(&Scenario::SlotSearch)
                .then_some(args.search_providers.max(1));
            let storm = scenarios.contains(&Scenario::BookingStorm);
            let seed = scheduling::seed(
                scheduling::Channels {
                    identity: identity_channels,
                    scheduling: &channels,
                },
                &users.users,
                admin,
                search,
                storm,
                4,
            )
            .await
            .context(
                "seeding the provider directory through identity's and scheduling's public RPCs",
            )?;
            if !args.quiet {
                let search = seed.search.as_ref().map_or(String::new(), |s| {
                    format!(
                        ", {} search providers with {} appointments booked",
                        s.providers.len(),
                        s.booked
                    )
                });
                let storm = if seed.storm.is_some() {
                    ", the storm's provider"
                } else {
                    ""
                };
                eprintln!("seeding: a staff member, a visit type{search}{storm}");
            }
            Some((channels, Arc::new(seed)))
        }
        _ => None,
    };
    // billing: a billing clerk, the price, the patients' cards and the invoice pool, once. A
    // seed that fails (billing not running, or not built yet) fails the scenario, not the run.
    let billing = match (&identity, &admin_party) {
        (Some((identity_channels, users)), Some(admin)) if needs_billing => {
            let seeded = async {
                let channels = connect(
                    &args.billing,
                    &tls,
                    &args.billing_server_name,
                    args.connections,
                )
                .await
                .with_context(|| format!("connecting to billing at {}", args.billing))?;
                let invoices = args.invoices.unwrap_or_else(|| {
                    billing::pool_size(
                        args.rate.unwrap_or(args.pay_expected_rate),
                        args.warmup + args.duration,
                        args.in_flight,
                    )
                });
                if !args.quiet {
                    eprintln!(
                        "seeding: a billing clerk, price {}, {} payment methods, {invoices} invoices",
                        billing::PRICE_CODE,
                        users.users.len()
                    );
                }
                let seed = billing::seed(
                    billing::Channels {
                        identity: identity_channels,
                        billing: &channels,
                    },
                    &users.users,
                    admin,
                    invoices,
                    billing::SEED_PARALLEL,
                    !args.quiet,
                )
                .await
                .context("seeding invoices through identity's and billing's public RPCs")?;
                Ok::<_, anyhow::Error>((channels, Arc::new(seed)))
            };
            Some(seeded.await.map_err(|e| format!("{e:#}")))
        }
        _ => None,
    };
    if identity.is_some() {
        analyze_seeded(&args.database_url, args.quiet).await;
    }
    // booking-storm's SQL check: scheduling's database (empty: none).
    let scheduling_database = match &args.scheduling_database_url {
        Some(url) if url.is_empty() => None,
        Some(url) => Some(url.clone()),
        None => {
            carehub_platform::db::url_with_database(&args.database_url, "carehub_scheduling").ok()
        }
    };

    let mut profile_read_tps = None;
    let mut chart_read_tps = None;
    for s in &scenarios {
        let mut probe = Probe {
            admins: args.admins.clone(),
            server_pid: args.server_pid,
            postgres_pid: args.postgres_pid,
            in_process_server: false,
            before: None,
            after: None,
        };
        match s {
            Scenario::DbRead => {
                let Some(scratch) = &scratch else { continue };
                let (server, channels) =
                    echo_server(&args, &tls, echo::Backing::Read(scratch.pool.clone())).await?;
                probe.in_process_server = true;
                let op = echo::op(channels, args.payload_bytes);
                let m = engine::run("db-read", op, &shape, &mut probe).await;
                let mut r = report("db-read", closed(shape.in_flight), &m, &probe);
                r.note = Some(format!(
                    "echo + one primary-key select of {} rows over {} DB conns, no audit event",
                    echo::READ_ROWS,
                    args.pgbench_clients
                ));
                results.push(r);
                drop(server);
            }
            Scenario::AuditRead => {
                let Some(scratch) = &scratch else { continue };
                let (server, channels) =
                    echo_server(&args, &tls, echo::Backing::Audit(scratch.pool.clone())).await?;
                probe.in_process_server = true;
                let op = echo::op(channels, args.payload_bytes);
                let m = engine::run("audit-read", op, &shape, &mut probe).await;
                let mut r = report("audit-read", closed(shape.in_flight), &m, &probe);
                let queue = scratch.queue().await;
                r.note = Some(format!(
                    "echo + read event (group commit) + sequencer in the server's threads; queue after the steady state: {}",
                    queue_after(queue)
                ));
                r.sealing_lag_secs = queue.map(|q| q.oldest_age_secs);
                results.push(r);
                drop(server);
            }
            Scenario::AuditWrite | Scenario::AuditWriteLocked => {
                let Some(scratch) = &scratch else { continue };
                let (name, append) = if *s == Scenario::AuditWrite {
                    ("audit-write", audit::Append::Queued)
                } else {
                    ("audit-write-locked", audit::Append::LockedHead)
                };
                // The sequencer runs in both: the locked-head writers share the head with it,
                // as they would have shared it with each other.
                probe.in_process_server = true;
                let sealing = audit::Sealing::start(&scratch.pool);
                let op = audit::write_op(scratch.pool.clone(), append);
                let m = engine::run(name, op, &shape, &mut probe).await;
                let mut r = report(
                    name,
                    format!(
                        "closed {} in flight / {} DB conns",
                        shape.in_flight, args.pgbench_clients
                    ),
                    &m,
                    &probe,
                );
                let queue = scratch.queue().await;
                drop(sealing);
                r.note = Some(format!(
                    "insert + event per transaction, straight to PostgreSQL; sequencer in this process; queue after the steady state: {}",
                    queue_after(queue)
                ));
                r.sealing_lag_secs = queue.map(|q| q.oldest_age_secs);
                // No server: the writers and the sequencer are this process's own CPU.
                r.server_cpu_us_per_request = None;
                results.push(r);
            }
            Scenario::Echo => {
                let (server, channels) = echo_server(&args, &tls, echo::Backing::None).await?;
                probe.in_process_server = true;
                let op = echo::op(channels, args.payload_bytes);
                let m = engine::run("echo", op, &shape, &mut probe).await;
                let mut r = report("echo", closed(shape.in_flight), &m, &probe);
                r.note = Some(format!(
                    "{} B payload; server CPU = its {} threads in this process",
                    args.payload_bytes, args.echo_threads
                ));
                echo_runs.push(r.throughput);
                results.push(r);
                drop(server);
            }
            Scenario::Pgbench => match pgbench::find() {
                None => pgbench_note = Some("pgbench not found: skipped".to_owned()),
                Some(bin) => {
                    if !args.quiet {
                        eprintln!(
                            "  pgbench ({}) insert and select, {} clients",
                            bin.display(),
                            args.pgbench_clients
                        );
                    }
                    match pgbench::run(
                        &bin,
                        &args.database_url,
                        args.pgbench_clients,
                        shape.duration,
                    )
                    .await
                    {
                        Ok(r) => pg.extend(r),
                        Err(e) => pgbench_note = Some(format!("pgbench skipped: {e:#}")),
                    }
                }
            },
            Scenario::All
            | Scenario::Baseline
            | Scenario::Identity
            | Scenario::Records
            | Scenario::Messaging
            | Scenario::Scheduling
            | Scenario::Billing
            | Scenario::Audit => {}
            Scenario::PayInvoice => {
                let Some(seeded) = &billing else {
                    continue;
                };
                let mut shape = shape.clone();
                shape.rate = args.rate;
                let load = match shape.rate {
                    Some(r) => format!("open {r:.0}/s"),
                    None => closed(shape.in_flight),
                };
                let (channels, seed) = match seeded {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("  pay-invoice: FAILED: seeding: {e}");
                        let m = engine::Measured {
                            ok: 0,
                            errors: [("SEED_FAILED".to_owned(), 1)].into(),
                            elapsed: Duration::ZERO,
                            histogram: engine::new_histogram(),
                        };
                        let mut r = report("pay-invoice", load, &m, &probe);
                        r.note = Some(format!("seeding failed: {e}"));
                        results.push(r);
                        continue;
                    }
                };
                let payments = billing::Payments::new(channels, seed.clone());
                let mut window = engine::Marked {
                    inner: &mut probe,
                    scenario: payments.clone(),
                };
                let m = engine::run_timed("pay-invoice", payments.op(), &shape, &mut window).await;
                let mut r = report("pay-invoice", load, &m, &probe);
                payments.reclassify(&mut r.errors);
                payments.drain(Duration::from_secs(30)).await;
                let verdict = match &identity {
                    Some((identity_channels, _)) => {
                        payments.verify(identity_channels, channels).await
                    }
                    None => billing::Verdict {
                        method: "none".to_owned(),
                        invoices_checked: None,
                        duplicate_charges: None,
                        lost_payments: None,
                        unrequested_charges: None,
                        note: Some("no identity connection to sign the clerk in".to_owned()),
                    },
                };
                let p = payments.stats(m.elapsed, verdict);
                // Printed whatever --quiet says: it is the scenario's verdict.
                if p.problems().is_empty() {
                    eprintln!("  pay-invoice: {}", p.line());
                } else {
                    eprintln!(
                        "  pay-invoice: FAILED: {}: {}",
                        p.problems()
                            .iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        p.line()
                    );
                }
                for (k, v) in p.problems() {
                    *r.errors.entry(k).or_default() += v;
                    r.error_count += v;
                }
                r.note = Some(format!(
                    "PayInvoice (default card {}, amount due {} {}) by {} patients{} of {} invoices seeded by a billing clerk, a fresh idempotency key per call, 1 in {} replayed with its key (not measured); {} paid in the steady state, {} invoices used; {}",
                    billing::TEST_TOKEN,
                    billing::PRICE_MINOR,
                    billing::CURRENCY,
                    seed.patients.len() - seed.refused_patients,
                    if seed.refused_patients == 0 {
                        String::new()
                    } else {
                        format!(
                            " ({} left out: billing took their id for card data)",
                            seed.refused_patients
                        )
                    },
                    p.invoices_seeded,
                    billing::REPLAY_EVERY,
                    p.payments,
                    p.invoices_used,
                    p.line()
                ));
                r.payments = Some(p);
                results.push(r);
            }
            Scenario::SlotSearch => {
                let Some((channels, seed)) = &scheduling else {
                    continue;
                };
                let mut shape = shape.clone();
                shape.rate = args.rate;
                let load = match shape.rate {
                    Some(r) => format!("open {r:.0}/s"),
                    None => closed(shape.in_flight),
                };
                let op = scheduling::search_op(channels, seed.clone());
                let m = engine::run("slot-search", op, &shape, &mut probe).await;
                let mut r = report("slot-search", load, &m, &probe);
                let (providers, booked) = seed
                    .search
                    .as_ref()
                    .map_or((0, 0), |s| (s.providers.len(), s.booked));
                r.note = Some(format!(
                    "SearchSlots by the patient over the coming {} days, visit type {} min, state {}, zone {}, first page of {}: {providers} providers (08:00-18:00 Mon-Fri in 5 zones), {booked} of their slots booked",
                    scheduling::SEARCH_DAYS,
                    scheduling::VISIT_MINUTES,
                    scheduling::SEARCH_STATE,
                    scheduling::PATIENT_ZONE,
                    scheduling::SEARCH_PAGE
                ));
                results.push(r);
            }
            Scenario::BookingStorm => {
                let Some((channels, seed)) = &scheduling else {
                    continue;
                };
                let mut shape = shape.clone();
                shape.rate = args.rate;
                let load = match shape.rate {
                    Some(r) => format!("open {r:.0}/s"),
                    None => closed(shape.in_flight),
                };
                let storm = scheduling::Storm::new(
                    channels,
                    seed.clone(),
                    args.storm_attempts_per_slot,
                    args.storm_spread,
                );
                let mut window = engine::Marked {
                    inner: &mut probe,
                    scenario: storm.clone(),
                };
                let m = engine::run_timed("booking-storm", storm.op(), &shape, &mut window).await;
                let mut r = report("booking-storm", load, &m, &probe);
                let verdict = storm
                    .verify(
                        scheduling_database.as_deref(),
                        identity.as_ref().map(|(c, _)| c.as_slice()),
                        channels,
                    )
                    .await;
                let b = storm.stats(m.elapsed, verdict);
                // Printed whatever --quiet says: it is the scenario's verdict.
                if b.problems().is_empty() {
                    eprintln!("  booking-storm: {}", b.line());
                } else {
                    eprintln!(
                        "  booking-storm: FAILED: {}: {}",
                        b.problems()
                            .iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        b.line()
                    );
                }
                for (k, v) in b.problems() {
                    *r.errors.entry(k).or_default() += v;
                    r.error_count += v;
                }
                r.note = Some(format!(
                    "BookAppointment (direct) by {} patients of one provider's 30-min slots, {} attempts per slot on average among {} slots at a time; {} booked, {} refused (SLOT_TAKEN) in the steady state, {} slots spanned; {}",
                    seed.patients.len(),
                    b.attempts_per_slot,
                    b.spread,
                    b.bookings,
                    b.refusals,
                    b.slots_spanned,
                    b.line()
                ));
                r.booking = Some(b);
                results.push(r);
            }
            Scenario::MessageSend => {
                let Some((channels, seed)) = &messaging else {
                    continue;
                };
                let mut shape = shape.clone();
                shape.rate = args.rate;
                let load = match shape.rate {
                    Some(r) => format!("open {r:.0}/s"),
                    None => closed(shape.in_flight),
                };
                let op = messaging::send_op(channels, seed.clone());
                let m = engine::run("message-send", op, &shape, &mut probe).await;
                let mut r = report("message-send", load, &m, &probe);
                r.note = Some(format!(
                    "SendMessage by the patient, {} care conversations, {} providers, no stream open",
                    seed.conversations.len(),
                    seed.providers.len()
                ));
                results.push(r);
            }
            Scenario::MessageDelivery | Scenario::StreamFanout => {
                let Some((channels, seed)) = &messaging else {
                    continue;
                };
                let fanout = *s == Scenario::StreamFanout;
                let (name, rate, plan, targets) = if fanout {
                    let conversations =
                        args.fanout_conversations.clamp(1, seed.conversations.len());
                    let (plan, targets) =
                        messaging::fanout_plan(args.fanout_streams, conversations);
                    ("stream-fanout", args.fanout_rate, plan, targets)
                } else {
                    // The recipient, the provider, holds one stream per conversation.
                    let n = seed.conversations.len();
                    let plan = (0..n).map(|c| (c, messaging::Holder::Provider)).collect();
                    let targets = (0..n).map(|c| (c, 1)).collect();
                    (
                        "message-delivery",
                        args.rate.unwrap_or(500.0),
                        plan,
                        targets,
                    )
                };
                let rate = rate.max(0.001);
                let conversations = targets.len();
                let load = format!("open {rate:.0}/s");
                let live = messaging::Live::new(if fanout { "f" } else { "d" });
                let streams = plan.len().div_ceil(messaging::STREAMS_PER_CONNECTION);
                let subscribed = match connect(
                    &args.messaging,
                    &tls,
                    &args.messaging_server_name,
                    streams,
                )
                .await
                {
                    Ok(stream_channels) => {
                        messaging::subscribe(&stream_channels, seed, &plan, &live, 8).await
                    }
                    Err(e) => Err(e),
                };
                let subscribers = match subscribed {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("  {name}: opening the streams failed: {e:#}");
                        let m = engine::Measured {
                            ok: 0,
                            errors: [("STREAMS_NOT_OPENED".to_owned(), 1)].into(),
                            elapsed: Duration::ZERO,
                            histogram: engine::new_histogram(),
                        };
                        let mut r = report(name, load, &m, &probe);
                        r.note = Some(format!("opening the streams failed: {e:#}"));
                        results.push(r);
                        continue;
                    }
                };
                let mut shape = shape.clone();
                shape.rate = Some(rate);
                shape.warmup = shape.warmup.max(secs(args.latency_warmup));
                let op = messaging::delivery_op(channels, seed.clone(), live.clone(), targets);
                let mut window = engine::Marked {
                    inner: &mut probe,
                    scenario: live.clone(),
                };
                let m = engine::run_timed(name, op, &shape, &mut window).await;
                let d = live.stats(rate, subscribers.streams(), conversations, m.elapsed);
                drop(subscribers);
                let mut r = report(name, load, &m, &probe);
                // Latencies per arrival on a stream (the engine's are per message, to its
                // last arrival).
                (r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms) =
                    (d.p50_ms, d.p90_ms, d.p99_ms, d.p999_ms, d.max_ms);
                let mut extra: Vec<(String, u64)> = d
                    .stream_errors
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                if d.duplicates > 0 {
                    extra.push(("DUPLICATE".to_owned(), d.duplicates));
                }
                for (k, v) in extra {
                    *r.errors.entry(k).or_default() += v;
                    r.error_count += v;
                }
                r.note = Some(format!(
                    "{} streams over {} conversations; {} arrivals counted ({:.0}/s), {} never delivered, {} duplicated, {} late, {} streams resumed",
                    d.streams,
                    d.conversations,
                    d.subscriber_events,
                    d.events_per_sec,
                    d.undelivered,
                    d.duplicates,
                    d.late,
                    d.stream_restarts
                ));
                r.delivery = Some(d);
                results.push(r);
            }
            Scenario::ChartRead
            | Scenario::ChartReadHalf
            | Scenario::ChartUpdate
            | Scenario::ClinicMixed => {
                let Some((channels, seed)) = &records else {
                    continue;
                };
                let (kind, name) = match s {
                    Scenario::ChartRead => (records::Kind::ChartRead, "chart-read"),
                    Scenario::ChartReadHalf => (records::Kind::ChartRead, "chart-read-half"),
                    Scenario::ChartUpdate => (records::Kind::ChartUpdate, "chart-update"),
                    _ => (records::Kind::ClinicMixed, "clinic-mixed"),
                };
                let mut shape = shape.clone();
                shape.rate = args.rate;
                if *s == Scenario::ChartReadHalf {
                    match chart_read_tps {
                        Some(tps) => {
                            shape.rate = Some(f64::max(tps / 2.0, 1.0));
                            shape.warmup = shape.warmup.max(secs(args.latency_warmup));
                        }
                        None if args.rate.is_some() => {}
                        None => {
                            eprintln!("  chart-read-half: needs chart-read earlier in the run (or --rate): skipped");
                            continue;
                        }
                    }
                }
                let load = match shape.rate {
                    Some(r) => format!("open {r:.0}/s"),
                    None => closed(shape.in_flight),
                };
                let op = records::op(kind, channels, seed.clone());
                let m = engine::run(name, op, &shape, &mut probe).await;
                let mut r = report(name, load, &m, &probe);
                if *s == Scenario::ChartRead && shape.rate.is_none() {
                    chart_read_tps = Some(r.throughput);
                }
                r.note = Some(format!(
                    "{} patients, charts of {} seeded entries (clinic-mixed adds entries)",
                    seed.patients.len(),
                    seed.entries_per_chart
                ));
                results.push(r);
            }
            other => {
                let Some((channels, seed)) = &identity else {
                    continue;
                };
                let (kind, name) = match other {
                    Scenario::SigningKeys => (Kind::SigningKeys, "signing-keys"),
                    Scenario::ProfileRead => (Kind::ProfileRead, "profile-read"),
                    Scenario::ProfileReadHalf => (Kind::ProfileRead, "profile-read-half"),
                    Scenario::ProfileUpdate => (Kind::ProfileUpdate, "profile-update"),
                    Scenario::Refresh => (Kind::Refresh, "refresh"),
                    Scenario::Login => (Kind::Login, "login"),
                    _ => (Kind::Mixed, "mixed"),
                };
                let mut shape = shape.clone();
                shape.rate = args.rate;
                if *other == Scenario::Login {
                    shape.in_flight = args.login_in_flight.max(1);
                }
                if *other == Scenario::ProfileReadHalf {
                    match profile_read_tps {
                        Some(tps) => {
                            shape.rate = Some(f64::max(tps / 2.0, 1.0));
                            shape.warmup = shape.warmup.max(secs(args.latency_warmup));
                        }
                        None if args.rate.is_some() => {}
                        None => {
                            eprintln!("  profile-read-half: needs profile-read earlier in the run (or --rate): skipped");
                            continue;
                        }
                    }
                }
                let load = match shape.rate {
                    Some(r) => format!("open {r:.0}/s"),
                    None => closed(shape.in_flight),
                };
                let op = identity::op(kind, channels, seed.clone());
                let m = engine::run(name, op, &shape, &mut probe).await;
                let mut r = report(name, load, &m, &probe);
                if *other == Scenario::ProfileRead && shape.rate.is_none() {
                    profile_read_tps = Some(r.throughput);
                }
                if kind == Kind::Login {
                    r.per_core = Some(match r.server_cpu_us_per_request {
                        Some(us) if us > 0.0 => 1e6 / us,
                        _ => r.throughput / cores as f64,
                    });
                }
                results.push(r);
            }
        }
    }

    if let Some(scratch) = scratch {
        let sealed = scratch
            .finish()
            .await
            .context("the audit scenarios' chain")?;
        if !args.quiet {
            eprintln!("  audit scenarios: {sealed} events sealed, chain intact");
        }
    }
    let echo_tps =
        (!echo_runs.is_empty()).then(|| echo_runs.iter().sum::<f64>() / echo_runs.len() as f64);
    if let Some(e) = echo_tps.filter(|e| *e > 0.0) {
        for r in &mut results {
            r.ratio_to_echo = Some(r.throughput / e);
        }
    }
    let budgets = budgets(&results, &pg, echo_tps);
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.error_count > 0)
        .map(|r| format!("{} ({} errors: {:?})", r.name, r.error_count, r.errors))
        .chain(
            pg.iter()
                .filter(|p| p.failed > 0)
                .map(|p| format!("{} ({} failed)", p.name, p.failed)),
        )
        .collect();
    let report = Report {
        cores,
        echo_throughput: echo_tps,
        scenarios: results,
        pgbench: pg,
        pgbench_note,
        budgets,
        ok: failed.is_empty(),
    };
    let table = render_table(&report, false);
    if args.json {
        eprint!("{table}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{table}");
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, render_table(&report, true))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !failed.is_empty() {
        anyhow::bail!("scenarios reported errors: {}", failed.join("; "));
    }
    Ok(())
}

/// Whether `group`'s scenarios run: without an admin to create their providers, `all` leaves
/// them out (saying so) and naming them fails the run.
fn admin_gate(
    wanted: bool,
    has_admin: bool,
    named: bool,
    group: &str,
    admin_email: &str,
) -> anyhow::Result<bool> {
    if !wanted || has_admin {
        return Ok(wanted);
    }
    anyhow::ensure!(
        !named,
        "the {group} scenarios need an identity admin to create providers: set \
         LOADGEN_ADMIN_PASSWORD to the password of {admin_email} (--admin-email)"
    );
    eprintln!(
        "{group} scenarios skipped: LOADGEN_ADMIN_PASSWORD is not set (an identity admin creates their providers)"
    );
    Ok(false)
}

fn budgets(
    results: &[ScenarioReport],
    pg: &[pgbench::PgbenchResult],
    echo: Option<f64>,
) -> Vec<Budget> {
    let find = |n: &str| results.iter().find(|r| r.name == n);
    let mut out = Vec::new();
    let read = find("profile-read");
    out.push(Budget {
        name: "profile read (closed loop) vs echo".into(),
        target: ">= 0.40 x echo".into(),
        measured: read
            .and_then(|r| r.ratio_to_echo)
            .map_or("n/a".into(), |x| format!("{x:.3} x echo")),
        met: read.and_then(|r| r.ratio_to_echo).map(|x| x >= 0.40),
    });
    let half = find("profile-read-half");
    out.push(Budget {
        name: "profile read p99 at half that load".into(),
        target: "< 10 ms".into(),
        measured: half.map_or("n/a".into(), |r| {
            format!("{:.2} ms at {}", r.p99_ms, r.load)
        }),
        met: half.map(|r| r.p99_ms < 10.0 && r.error_count == 0),
    });
    let chart = find("chart-read");
    out.push(Budget {
        name: "chart read (closed loop) vs echo".into(),
        target: ">= 0.40 x echo".into(),
        measured: chart
            .and_then(|r| r.ratio_to_echo)
            .map_or("n/a".into(), |x| format!("{x:.3} x echo")),
        met: chart.and_then(|r| r.ratio_to_echo).map(|x| x >= 0.40),
    });
    let chart_half = find("chart-read-half");
    out.push(Budget {
        name: "chart read p99 at half that load".into(),
        target: "< 10 ms".into(),
        measured: chart_half.map_or("n/a".into(), |r| {
            format!("{:.2} ms at {}", r.p99_ms, r.load)
        }),
        met: chart_half.map(|r| r.p99_ms < 10.0 && r.error_count == 0),
    });
    let db_read = find("db-read");
    out.push(Budget {
        name: "ceiling of a read served from PostgreSQL (db-read: echo + one primary-key select, no audit event)".into(),
        target: "reported (no budget)".into(),
        measured: db_read.map_or("n/a".into(), |r| {
            format!(
                "{:.0}/s = {} x echo, p99 {:.2} ms",
                r.throughput,
                opt(r.ratio_to_echo, 3),
                r.p99_ms
            )
        }),
        met: None,
    });
    let send = find("message-send");
    out.push(Budget {
        name: "audited, encrypted message send (closed loop)".into(),
        target: ">= 4300/s at 64 in flight".into(),
        measured: send.map_or("n/a".into(), |r| {
            format!(
                "{:.0}/s = {} x echo ({})",
                r.throughput,
                opt(r.ratio_to_echo, 3),
                r.load
            )
        }),
        met: send
            .filter(|r| r.load.starts_with("closed"))
            .map(|r| r.throughput >= 4300.0 && r.error_count == 0),
    });
    let delivery = find("message-delivery");
    out.push(Budget {
        name: "send-to-delivery p99 at 500 messages/s (open loop, recipient's stream)".into(),
        target: "<= 25 ms, 0 undelivered, 0 duplicated".into(),
        measured: delivery.map_or("n/a".into(), |r| {
            let (u, d) = r
                .delivery
                .as_ref()
                .map_or((0, 0), |d| (d.undelivered, d.duplicates));
            format!(
                "{:.2} ms at {}, {u} undelivered, {d} duplicated",
                r.p99_ms, r.load
            )
        }),
        // Evaluated at 500/s or more only.
        met: delivery.and_then(|r| {
            let d = r.delivery.as_ref()?;
            (d.rate >= 500.0).then_some(
                r.p99_ms <= 25.0 && d.undelivered == 0 && d.duplicates == 0 && r.error_count == 0,
            )
        }),
    });
    let fanout = find("stream-fanout");
    out.push(Budget {
        name: "stream fan-out (delivery per stream event)".into(),
        target: "reported (no budget)".into(),
        measured: fanout
            .and_then(|r| Some((r, r.delivery.as_ref()?)))
            .map_or("n/a".into(), |(r, d)| {
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms, {:.0} events/s to {} streams over {} conversations at {}",
                    r.p50_ms, r.p99_ms, d.events_per_sec, d.streams, d.conversations, r.load
                )
            }),
        met: None,
    });
    let search = find("slot-search");
    out.push(Budget {
        name: "slot search over one week (SearchSlots, closed loop)".into(),
        target: "reported (no budget)".into(),
        measured: search.map_or("n/a".into(), |r| {
            format!(
                "{:.0}/s = {} x echo, p50 {:.2} ms, p99 {:.2} ms ({})",
                r.throughput,
                opt(r.ratio_to_echo, 3),
                r.p50_ms,
                r.p99_ms,
                r.load
            )
        }),
        met: None,
    });
    let storm = find("booking-storm");
    out.push(Budget {
        name: "booking storm on one provider".into(),
        target: "0 double bookings (no speed budget)".into(),
        measured: storm
            .and_then(|r| Some((r, r.booking.as_ref()?)))
            .map_or("n/a".into(), |(r, b)| {
                let errors = if r.error_count == 0 {
                    String::new()
                } else {
                    format!(
                        "; errors: {}",
                        r.errors
                            .iter()
                            .map(|(k, v)| format!("{k}:{v}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    )
                };
                format!(
                    "{:.0} bookings/s + {:.0} refusals/s (SLOT_TAKEN), p50 {:.2} ms, p99 {:.2} ms; {}{errors}",
                    b.bookings_per_sec,
                    b.refusals_per_sec,
                    r.p50_ms,
                    r.p99_ms,
                    match b.double_bookings {
                        Some(n) => format!("double bookings: {n} (by {})", b.verified_by),
                        None => "double bookings: NOT CHECKED".to_owned(),
                    }
                )
            }),
        met: storm
            .and_then(|r| r.booking.as_ref())
            .map(|b| b.problems().is_empty()),
    });
    let pay = find("pay-invoice");
    out.push(Budget {
        name: "pay an invoice (PayInvoice, sandbox processor)".into(),
        target: "0 duplicate charges, replays name the same payment (no speed budget)".into(),
        measured: pay.and_then(|r| Some((r, r.payments.as_ref()?))).map_or(
            "n/a".into(),
            |(r, p)| {
                format!(
                    "{:.0} payments/s, p50 {:.2} ms, p99 {:.2} ms; {}",
                    p.payments_per_sec,
                    r.p50_ms,
                    r.p99_ms,
                    p.line()
                )
            },
        ),
        met: pay
            .and_then(|r| r.payments.as_ref())
            .map(|p| p.problems().is_empty()),
    });
    let update = find("profile-update");
    let insert = pg.iter().find(|p| p.name == "pgbench insert");
    let ratio = match (update, insert) {
        (Some(u), Some(i)) if i.tps > 0.0 => Some(u.throughput / i.tps),
        _ => None,
    };
    out.push(Budget {
        name: "audited single-row write (profile update) vs pgbench insert".into(),
        target: ">= 0.60 x pgbench insert".into(),
        measured: ratio.map_or("n/a".into(), |x| format!("{x:.3} x pgbench insert")),
        met: ratio.map(|x| x >= 0.60),
    });
    // Reported beside the budgets, with none of its own.
    let chart_update = find("chart-update");
    out.push(Budget {
        name: "audited chart write (chart update, new entry version)".into(),
        target: "reported (no budget)".into(),
        measured: chart_update.map_or("n/a".into(), |u| {
            let vs = insert.filter(|i| i.tps > 0.0).map_or(String::new(), |i| {
                format!(" = {:.3} x pgbench insert", u.throughput / i.tps)
            });
            format!("{:.0}/s{vs}, p99 {:.2} ms", u.throughput, u.p99_ms)
        }),
        met: None,
    });
    let audited_read = find("audit-read");
    out.push(Budget {
        name: "audited read (echo + read event) vs the same read unaudited (echo)".into(),
        target: ">= 20 000/s and >= 0.85 x echo".into(),
        measured: audited_read.map_or("n/a".into(), |r| {
            format!("{:.0}/s = {} x echo", r.throughput, opt(r.ratio_to_echo, 3))
        }),
        met: audited_read.and_then(|r| {
            r.ratio_to_echo
                .map(|x| x >= 0.85 && r.throughput >= 20_000.0)
        }),
    });
    let write = find("audit-write");
    let locked = find("audit-write-locked");
    let vs_insert = match (write, insert) {
        (Some(w), Some(i)) if i.tps > 0.0 => Some(w.throughput / i.tps),
        _ => None,
    };
    out.push(Budget {
        name: "audited single-row write (64 in flight) vs pgbench insert".into(),
        target: ">= 0.60 x pgbench insert".into(),
        measured: vs_insert.map_or("n/a".into(), |x| format!("{x:.3} x pgbench insert")),
        met: vs_insert.map(|x| x >= 0.60),
    });
    let vs_locked = match (write, locked) {
        (Some(w), Some(l)) if l.throughput > 0.0 => Some(w.throughput / l.throughput),
        _ => None,
    };
    out.push(Budget {
        name: "audited write vs the locked-head append (before the queue), same run".into(),
        target: ">= 3 x".into(),
        measured: vs_locked.map_or("n/a".into(), |x| format!("{x:.2} x")),
        met: vs_locked.map(|x| x >= 3.0),
    });
    let lags: Vec<f64> = results.iter().filter_map(|r| r.sealing_lag_secs).collect();
    out.push(Budget {
        name: "sealing lag right after each audit steady state".into(),
        target: "< 1 s".into(),
        measured: if lags.is_empty() {
            "n/a".into()
        } else {
            lags.iter()
                .map(|l| format!("{l:.2} s"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        met: (!lags.is_empty()).then(|| lags.iter().all(|l| *l < 1.0)),
    });
    let counted: Vec<&ScenarioReport> = results
        .iter()
        .filter(|r| !measured_in_process(&r.name))
        .collect();
    let unknown = counted.iter().any(|r| {
        let s = &r.steady_state;
        s.vault_requests.is_none()
            || s.tls_handshakes.is_none()
            || s.db_connections_opened.is_none()
    });
    let dirty: Vec<String> = counted
        .iter()
        .filter(|r| !r.steady_state.all_zero())
        .map(|r| {
            let s = &r.steady_state;
            format!(
                "{}: vault {} tls {} db {}",
                r.name,
                opt(s.vault_requests, 0),
                opt(s.tls_handshakes, 0),
                opt(s.db_connections_opened, 0)
            )
        })
        .collect();
    out.push(Budget {
        name: "Vault requests, TLS handshakes, new DB connections in steady state".into(),
        target: "0 each".into(),
        measured: if dirty.is_empty() {
            if unknown {
                "0 where readable (some counters unreadable)".into()
            } else {
                "0".into()
            }
        } else {
            dirty.join("; ")
        },
        met: (!counted.is_empty()).then_some(dirty.is_empty()),
    });
    let _ = echo;
    out
}

/// Whether scenario `name` measures a server of this process (the baselines and the
/// scratch-database scenarios): no service's /metrics counts its steady state.
fn measured_in_process(name: &str) -> bool {
    name == "echo" || name == "db-read" || name.starts_with("audit-")
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn render_table(r: &Report, markdown: bool) -> String {
    let headers = [
        "scenario",
        "load",
        "req/s",
        "x echo",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "loadgen CPU us/req",
        "server CPU us/req",
        "postgres CPU us/req",
        "vault/tls/db in steady state",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for s in &r.scenarios {
        let mut name = s.name.clone();
        if let Some(pc) = s.per_core {
            let _ = write!(name, " ({pc:.1}/s per core)");
        }
        if let Some(d) = &s.delivery {
            let _ = write!(
                name,
                " ({} streams, {:.0} events/s)",
                d.streams, d.events_per_sec
            );
        }
        if let Some(b) = &s.booking {
            let _ = write!(
                name,
                " ({:.0} bookings/s, {:.0} refusals/s)",
                b.bookings_per_sec, b.refusals_per_sec
            );
        }
        if let Some(p) = &s.payments {
            let _ = write!(
                name,
                " ({} duplicate charges, {}/{} replays same)",
                p.duplicate_charges
                    .map_or("unchecked".to_owned(), |n| n.to_string()),
                p.replays_same,
                p.replays
            );
        }
        rows.push(vec![
            name,
            s.load.clone(),
            format!("{:.0}", s.throughput),
            opt(s.ratio_to_echo, 3),
            format!("{:.2}", s.p50_ms),
            format!("{:.2}", s.p90_ms),
            format!("{:.2}", s.p99_ms),
            format!("{:.2}", s.p999_ms),
            if s.error_count == 0 {
                "0".into()
            } else {
                s.errors
                    .iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
            format!("{:.1}", s.loadgen_cpu_us_per_request),
            opt(s.server_cpu_us_per_request, 1),
            opt(s.postgres_cpu_us_per_request, 1),
            if measured_in_process(&s.name) {
                "n/a".into()
            } else {
                format!(
                    "{}/{}/{}",
                    opt(s.steady_state.vault_requests, 0),
                    opt(s.steady_state.tls_handshakes, 0),
                    opt(s.steady_state.db_connections_opened, 0)
                )
            },
        ]);
    }
    for p in &r.pgbench {
        rows.push(vec![
            p.name.clone(),
            format!("{} connections", p.clients),
            format!("{:.0}", p.tps),
            r.echo_throughput
                .filter(|e| *e > 0.0)
                .map_or("-".into(), |e| format!("{:.3}", p.tps / e)),
            format!("avg {:.2}", p.latency_avg_ms),
            "-".into(),
            "-".into(),
            "-".into(),
            p.failed.to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            "n/a".into(),
        ]);
    }
    let mut out = String::new();
    if markdown {
        let _ = writeln!(out, "| {} |", headers.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(headers.len()));
        for row in &rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
    } else {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (i, c) in row.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let line = |cells: Vec<String>, out: &mut String| {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                .collect();
            let _ = writeln!(out, "{}", parts.join("  ").trim_end());
        };
        out.push('\n');
        line(headers.iter().map(|h| (*h).to_owned()).collect(), &mut out);
        for row in rows {
            line(row, &mut out);
        }
    }
    if let Some(note) = &r.pgbench_note {
        let _ = writeln!(out, "\n{note}");
    }
    out.push('\n');
    if markdown {
        let _ = writeln!(out, "| budget (DESIGN.md §9) | target | measured | met |");
        let _ = writeln!(out, "|---|---|---|---|");
    } else {
        let _ = writeln!(out, "budgets (DESIGN.md §9):");
    }
    for b in &r.budgets {
        let met = match b.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "n/a",
        };
        if markdown {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                b.name, b.target, b.measured, met
            );
        } else {
            let _ = writeln!(
                out,
                "  [{met:>3}] {}: {} (target {})",
                b.name, b.measured, b.target
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn all_measures_echo_first_and_last() {
        let s = expand(&[]);
        assert_eq!(s.first(), Some(&Scenario::Echo));
        assert_eq!(s.last(), Some(&Scenario::Echo));
        assert!(s.contains(&Scenario::Pgbench));
        assert!(s.contains(&Scenario::ProfileReadHalf));
        for r in expand(&[
            Scenario::Records,
            Scenario::Messaging,
            Scenario::Scheduling,
            Scenario::Billing,
        ]) {
            assert!(s.contains(&r), "{r:?} not in all");
        }
        assert_eq!(
            expand(&[Scenario::Messaging]),
            vec![
                Scenario::MessageSend,
                Scenario::MessageDelivery,
                Scenario::StreamFanout
            ]
        );
        assert_eq!(
            expand(&[Scenario::Scheduling]),
            vec![Scenario::SlotSearch, Scenario::BookingStorm]
        );
        assert_eq!(expand(&[Scenario::Billing]), vec![Scenario::PayInvoice]);
        assert_eq!(
            expand(&[Scenario::Records]),
            vec![
                Scenario::ChartRead,
                Scenario::ChartReadHalf,
                Scenario::ChartUpdate,
                Scenario::ClinicMixed
            ]
        );
        assert_eq!(
            expand(&[Scenario::Baseline]),
            vec![Scenario::Echo, Scenario::Pgbench]
        );
    }
}
