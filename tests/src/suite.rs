//! Five services, each started on its own through the platform's service kit.

use std::net::SocketAddr;
use std::time::Duration;

use carehub_billing::BillingDef;
use carehub_identity::IdentityDef;
use carehub_messaging::MessagingDef;
use carehub_platform::client::ServiceChannel;
use carehub_platform::config::{LogFormat, OutboxTarget, PlatformConfig, TelemetryConfig};
use carehub_platform::kit::{self, Service, ServiceConfig, Started};
use carehub_platform::telemetry::{self, TelemetryGuard};
use carehub_records::RecordsDef;
use carehub_scheduling::SchedulingDef;
use carehub_testkit::grpc::{free_port, http_get};
use carehub_testkit::otlp::Receiver;
use carehub_testkit::vault::TestVault;
use carehub_testkit::{TestEnv, TestPki, TRUST_DOMAIN};
use secrecy::SecretString;
use sqlx::PgPool;

/// The services in `carehub up` order (identity first: the others verify its tokens).
pub const SERVICES: [&str; 5] = ["identity", "records", "messaging", "scheduling", "billing"];

/// One service of the suite: its configuration (kept, to start it again), its database and
/// certificate, and what is running.
pub struct Node<S: Service> {
    service: &'static S,
    /// What the service starts with (again after [`Node::stop`]).
    pub config: S::Config,
    pub env: TestEnv,
    started: Option<Started<S::Handle>>,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

impl<S: Service> Node<S> {
    async fn new(service: &'static S, pki: &TestPki, grpc: u16, admin: u16) -> Node<S> {
        let env = TestEnv::with_pki(S::NAME, Service::migrator(service), pki.clone()).await;
        let mut config = env.config(service);
        let server = ServiceConfig::server_mut(&mut config);
        server.listen = SocketAddr::from(([127, 0, 0, 1], grpc));
        server.admin_listen = SocketAddr::from(([127, 0, 0, 1], admin));
        Node {
            service,
            grpc_addr: server.listen,
            admin_addr: server.admin_listen,
            config,
            env,
            started: None,
        }
    }

    pub fn server_config(&self) -> &PlatformConfig {
        ServiceConfig::server(&self.config)
    }

    /// Starts the service with [`Node::config`] on its ports. A port the service has just
    /// released may be taken a moment longer by the kernel: binding is retried (bounded).
    pub async fn start(&mut self) {
        assert!(self.started.is_none(), "{} is running already", S::NAME);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            // Not spawned: a service's start future is not `Send` (sqlx's migrator); the
            // server it starts runs on tasks of its own.
            match kit::start(
                self.service,
                self.config.clone(),
                None,
                std::future::pending(),
            )
            .await
            {
                Ok(started) => {
                    self.started = Some(started);
                    return;
                }
                Err(e)
                    if format!("{e:#}").contains("binding")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{} starts: {e:#}", S::NAME),
            }
        }
    }

    /// Stops the service (graceful drain) and drops its state; its database stays.
    pub async fn stop(&mut self) {
        if let Some(started) = self.started.take() {
            started
                .server
                .shutdown()
                .await
                .unwrap_or_else(|e| panic!("{} stops: {e:#}", S::NAME));
            drop(started.handle);
        }
    }

    pub fn is_running(&self) -> bool {
        self.started.is_some()
    }

    /// What the running service handed back ([`Service::Handle`]).
    pub fn handle(&self) -> &S::Handle {
        &self
            .started
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", S::NAME))
            .handle
    }

    /// `https://127.0.0.1:<grpc port>`: what the other services are pointed at.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.grpc_addr)
    }

    /// An mTLS channel to the service presenting a certificate of `workload`.
    pub async fn channel(&self, workload: &str) -> ServiceChannel {
        self.env
            .pki
            .channel(self.grpc_addr, workload, S::NAME)
            .await
    }

    /// The Prometheus text of the service's admin port.
    pub async fn metrics(&self) -> String {
        let (status, body) = http_get(self.admin_addr, "/metrics").await;
        assert_eq!(status, 200, "{} /metrics: {body}", S::NAME);
        body
    }

    /// The test's own pool on the service's database (not the service's pool).
    pub fn pool(&self) -> &PgPool {
        self.env.db.pool()
    }

    async fn shutdown(mut self) {
        self.stop().await;
        self.env.db.drop().await;
    }
}

/// The five services, the Vault they take their keys from and the OTLP receiver their spans
/// reach.
pub struct Suite {
    pub otlp: Receiver,
    otlp_task: tokio::task::JoinHandle<()>,
    telemetry: Option<TelemetryGuard>,
    pub vault: TestVault,
    pub pki: TestPki,
    pub identity: Node<IdentityDef>,
    pub records: Node<RecordsDef>,
    pub messaging: Node<MessagingDef>,
    pub scheduling: Node<SchedulingDef>,
    pub billing: Node<BillingDef>,
}

/// Distinct ports below the ephemeral range, for servers whose addresses must be known before
/// any of them starts.
fn reserve_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    while ports.len() < n {
        let port = free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

/// The Vault the suite's keys come from: a real one when `VAULT_ADDR` and `VAULT_TOKEN` are set,
/// else the in-process double.
async fn vault() -> TestVault {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty());
    if set("VAULT_ADDR") && set("VAULT_TOKEN") {
        TestVault::live("e2e")
            .await
            .expect("VAULT_ADDR and VAULT_TOKEN are set")
    } else {
        TestVault::double().await
    }
}

impl Suite {
    /// Starts the five services, wired to each other; returns once every one is serving and
    /// takes user tokens.
    ///
    /// Telemetry is process-wide: call this once per process (nextest runs every test in a
    /// process of its own; see [`carehub_testkit::process::in_own_process`] for `cargo test`).
    pub async fn start() -> Suite {
        let otlp = Receiver::default();
        let (otlp_addr, otlp_task) = otlp.start().await;
        // One tracer for the five services: spans are told apart by `rpc.service`.
        let telemetry = telemetry::init(
            "e2e",
            &TelemetryConfig {
                otlp_endpoint: Some(format!("http://{otlp_addr}")),
                sample_ratio: 1.0,
                log_format: LogFormat::Json,
                log_filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            },
        )
        .expect("telemetry");

        let vault = vault().await;
        let mount = vault.enable_kv(2).await;
        let pki = TestPki::new(TRUST_DOMAIN);
        let ports = reserve_ports(2 * SERVICES.len());
        let port = |name: &str, admin: bool| {
            let i = SERVICES.iter().position(|s| *s == name).expect("a service");
            ports[2 * i + usize::from(admin)]
        };
        let mut identity = Node::new(
            &carehub_identity::SERVICE,
            &pki,
            port("identity", false),
            port("identity", true),
        )
        .await;
        let mut records = Node::new(
            &carehub_records::SERVICE,
            &pki,
            port("records", false),
            port("records", true),
        )
        .await;
        let mut messaging = Node::new(
            &carehub_messaging::SERVICE,
            &pki,
            port("messaging", false),
            port("messaging", true),
        )
        .await;
        let mut scheduling = Node::new(
            &carehub_scheduling::SERVICE,
            &pki,
            port("scheduling", false),
            port("scheduling", true),
        )
        .await;
        let mut billing = Node::new(
            &carehub_billing::SERVICE,
            &pki,
            port("billing", false),
            port("billing", true),
        )
        .await;

        let endpoint = |name: &str| format!("https://127.0.0.1:{}", port(name, false));
        for name in SERVICES {
            let server = match name {
                "identity" => &mut identity.config.server,
                "records" => &mut records.config.server,
                "messaging" => &mut messaging.config.server,
                "scheduling" => &mut scheduling.config.server,
                _ => &mut billing.config.server,
            };
            wire_server(server, name, &endpoint, &vault, &mount).await;
        }
        // Codes travel as in a deployment: identity's outbox, messaging's (sandbox) channels.
        identity.config.identity.notifier = carehub_identity::config::NotifierKind::Messaging;
        messaging.config.messaging.records_endpoint = Some(endpoint("records"));
        messaging.config.messaging.notifications.poll_interval_ms = 100;
        messaging.config.messaging.notifications.backoff_base_ms = 100;
        for source in ["messaging", "scheduling", "billing"] {
            records
                .config
                .records
                .audit_sources
                .insert(source.to_owned(), endpoint(source));
        }
        scheduling.config.scheduling.feed_base_url = format!("http://{}", scheduling.admin_addr);
        let processor = &mut billing.config.billing.processor;
        processor.kind = carehub_billing::config::ProcessorKind::Sandbox;
        processor.vault_path = None;
        processor.webhook_secrets = vec![SecretString::from(format!(
            "whsec_e2e_{}",
            uuid::Uuid::new_v4().simple()
        ))];

        identity.start().await;
        records.start().await;
        messaging.start().await;
        scheduling.start().await;
        billing.start().await;
        let suite = Suite {
            otlp,
            otlp_task,
            telemetry: Some(telemetry),
            vault,
            pki,
            identity,
            records,
            messaging,
            scheduling,
            billing,
        };
        suite.until_ready(&SERVICES).await;
        suite
    }

    /// Waits until each of `services` answers `/readyz` with 200, as a Kubernetes Service waits
    /// before routing to a pod (a service is ready once it holds its keys and has read
    /// identity's signing keys and revocations).
    pub async fn until_ready(&self, services: &[&str]) {
        for service in services {
            let admin = match *service {
                "identity" => self.identity.admin_addr,
                "records" => self.records.admin_addr,
                "messaging" => self.messaging.admin_addr,
                "scheduling" => self.scheduling.admin_addr,
                "billing" => self.billing.admin_addr,
                other => panic!("no service {other} in the suite"),
            };
            crate::eventually(
                &format!("{service} ready"),
                Duration::from_secs(30),
                Duration::from_millis(50),
                || async move {
                    match carehub_testkit::grpc::http_get_raw(&admin.to_string(), "/readyz").await {
                        Some((200, _)) => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                },
            )
            .await;
        }
    }

    /// The `/metrics` text of every service, in [`SERVICES`] order.
    pub async fn metrics(&self) -> Vec<String> {
        vec![
            self.identity.metrics().await,
            self.records.metrics().await,
            self.messaging.metrics().await,
            self.scheduling.metrics().await,
            self.billing.metrics().await,
        ]
    }

    /// Outbox rows not delivered (yet), of every service: (service, target, method, state,
    /// attempts, last error).
    pub async fn undelivered_outbox(&self) -> Vec<(String, String, String, String, i32, String)> {
        let mut out = Vec::new();
        let pools = [
            ("identity", self.identity.pool()),
            ("records", self.records.pool()),
            ("messaging", self.messaging.pool()),
            ("scheduling", self.scheduling.pool()),
            ("billing", self.billing.pool()),
        ];
        for (service, pool) in pools {
            let rows: Vec<(String, String, String, i32, Option<String>)> = sqlx::query_as(
                "SELECT target, method, state, attempts, last_error FROM carehub_platform.outbox
                  WHERE state <> 'delivered' ORDER BY created_at",
            )
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("{service}'s outbox: {e}"));
            out.extend(
                rows.into_iter()
                    .map(|(t, m, s, a, e)| (service.to_owned(), t, m, s, a, e.unwrap_or_default())),
            );
        }
        out
    }

    /// Waits (up to 30 s) until every outbox row of every service is delivered: nothing
    /// pending, nothing dead-lettered.
    pub async fn eventually_all_delivered(&self) {
        crate::eventually(
            "every outbox row of every service delivered",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                let left = self.undelivered_outbox().await;
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{left:#?}"))
                }
            },
        )
        .await;
    }

    /// Stops every service, drops their databases, flushes and stops telemetry.
    pub async fn shutdown(mut self) {
        // Reverse order: nothing calls a service that has already stopped.
        self.billing.shutdown().await;
        self.scheduling.shutdown().await;
        self.messaging.shutdown().await;
        self.records.shutdown().await;
        self.identity.shutdown().await;
        if let Some(t) = self.telemetry.take() {
            t.shutdown_with_timeout(Duration::from_secs(2)).await;
        }
        self.otlp_task.abort();
    }
}

/// The `[server]` settings `carehub up` gives `name` (identity's address, outbox targets), its
/// keys from Vault, and short intervals so that asynchronous effects show within a test.
async fn wire_server(
    server: &mut PlatformConfig,
    name: &'static str,
    endpoint: &dyn Fn(&str) -> String,
    vault: &TestVault,
    mount: &str,
) {
    vault.seed_service(mount, 2, name).await;
    let policy = vault.service_policy(mount, 2, name).await;
    let token = vault.token(&[&policy], "2h").await;
    server.vault = vault.config(mount, 2, &token);
    server.keys = carehub_testkit::vault::keys_config(30, 3600);
    server.keys.production = true;

    // The Postgres is shared with parallel tests (100 connections): a suite holds about 35
    // (five small pools, each service's listeners and sequencer, the test's own pools).
    server.database.max_connections = 4;
    server.database.min_connections = 0;
    server.limits.drain_timeout_secs = 1;
    if name != "identity" {
        server.auth.identity_endpoint = Some(endpoint("identity"));
        server.auth.revocation_poll_secs = 1;
        server.auth.revocation_max_staleness_secs = 30;
    }
    for target in carehub::outbox_targets(name) {
        server.outbox.targets.insert(
            target.to_owned(),
            OutboxTarget {
                endpoint: endpoint(target),
                server_name: target.to_owned(),
            },
        );
    }
    server.outbox.poll_interval_ms = 100;
    server.outbox.backoff_base_ms = 100;
    server.outbox.backoff_max_secs = 1;
    // A target stopped for a while must not dead-letter its rows: they wait for it.
    server.outbox.max_attempts = 10_000;
    server.audit.seal_interval_ms = 20;
    server.audit.poll_interval_ms = 100;
    server.audit.checkpoint_interval_secs = 1;
}
