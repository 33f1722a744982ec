//! A service added the way a new one is: a tiny module describing it to the platform's service
//! kit, one trivial migration, and one line in a list of services. The binary's commands over
//! that list — `serve`, `migrate`, `health`, `up`, `--help` — take it without another change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::Path;

use carehub_platform::client::ServiceChannel;
use carehub_platform::db;
use carehub_platform::devcerts::DevPki;
use carehub_platform::kit::ServiceDef;
use carehub_testkit::service::TestService;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The binary's list (src/services.rs) plus the one line a new service adds.
static SERVICES: &[&dyn ServiceDef] = &[
    &carehub_identity::SERVICE,
    &scratch::SERVICE, // the added line
];

/// The whole scratch service: configuration with defaults and validation, a migrator, and an
/// API built from the context the platform prepared.
mod scratch {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::task::{Context as TaskContext, Poll};

    use carehub_platform::auth::{Policy, UserRule};
    use carehub_platform::config::{PlatformConfig, Validate};
    use carehub_platform::kit::{Api, Context, Service, ServiceConfig};
    use carehub_platform::server::RunningServer;
    use serde::{Deserialize, Serialize};
    use sqlx::migrate::Migrator;
    use tonic::codegen::{http, BoxFuture};

    pub static MIGRATOR: Migrator = sqlx::migrate!("tests/scratch-migrations");

    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct ScratchConfig {
        pub server: PlatformConfig,
        pub scratch: ScratchSettings,
    }

    #[derive(Clone, Debug, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct ScratchSettings {
        /// Which greeting row the service reads at start.
        pub greeting_id: i32,
    }

    impl Default for ScratchSettings {
        fn default() -> Self {
            Self { greeting_id: 1 }
        }
    }

    impl Validate for ScratchConfig {
        fn validate(&self, problems: &mut Vec<String>) {
            self.server.validate(problems);
            if self.scratch.greeting_id <= 0 {
                problems.push("scratch.greeting_id must be > 0".to_owned());
            }
        }
    }

    impl ServiceConfig for ScratchConfig {
        fn server(&self) -> &PlatformConfig {
            &self.server
        }
        fn server_mut(&mut self) -> &mut PlatformConfig {
            &mut self.server
        }
    }

    pub struct Scratch;
    pub static SERVICE: Scratch = Scratch;

    pub struct Handle {
        pub greeting: String,
    }

    /// `carehub.scratch.v1.Scratch/Greet`, hand-written where a real service has tonic's
    /// generated server (no .proto for a test).
    pub const SERVICE_NAME: &str = "carehub.scratch.v1.Scratch";
    pub const GREET: &str = "/carehub.scratch.v1.Scratch/Greet";

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GreetRequest {
        #[prost(string, tag = "1")]
        pub name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GreetReply {
        #[prost(string, tag = "1")]
        pub text: String,
    }

    /// The handler: the state it was built with, nothing else.
    #[derive(Clone)]
    pub struct ScratchApi {
        greeting: Arc<String>,
    }

    impl tonic::server::UnaryService<GreetRequest> for ScratchApi {
        type Response = GreetReply;
        type Future = BoxFuture<tonic::Response<GreetReply>, tonic::Status>;

        fn call(&mut self, request: tonic::Request<GreetRequest>) -> Self::Future {
            let greeting = self.greeting.clone();
            Box::pin(async move {
                let name = request.into_inner().name;
                Ok(tonic::Response::new(GreetReply {
                    text: format!("{greeting}, {name}"),
                }))
            })
        }
    }

    impl tonic::server::NamedService for ScratchApi {
        const NAME: &'static str = SERVICE_NAME;
    }

    impl tonic::codegen::Service<http::Request<tonic::body::Body>> for ScratchApi {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            let api = self.clone();
            Box::pin(async move {
                if req.uri().path() != GREET {
                    return Ok(tonic::Status::unimplemented("only Greet").into_http());
                }
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(api, req).await)
            })
        }
    }

    impl Service for Scratch {
        type Config = ScratchConfig;
        type Handle = Handle;
        const NAME: &'static str = "scratch";
        const ABOUT: &'static str = "a service added by a test";

        fn migrator(&self) -> &'static Migrator {
            &MIGRATOR
        }

        async fn build(&self, ctx: Context, config: &ScratchConfig) -> anyhow::Result<Api<Handle>> {
            // Its own migration ran before its build: the row is there.
            let greeting: String =
                sqlx::query_scalar("SELECT text FROM scratch_greetings WHERE id = $1")
                    .bind(config.scratch.greeting_id)
                    .fetch_one(&ctx.pool)
                    .await?;
            // Its policy: Greet is for the gateway workload only.
            let policy =
                Policy::new().rule(SERVICE_NAME, "Greet", &["gateway"], UserRule::WorkloadOnly);
            let api = ScratchApi {
                greeting: Arc::new(greeting.clone()),
            };
            Ok(Api::new(policy, Handle { greeting })
                // A generated server is wrapped: with_message_limits!(FooServer::new(api), ..).
                .grpc(api))
        }

        async fn on_up(
            &self,
            _server: &RunningServer,
            handle: &Handle,
        ) -> anyhow::Result<Vec<String>> {
            Ok(vec![format!("greeting    {}", handle.greeting)])
        }
    }
}

fn admin_url() -> String {
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    db::url_with_database(&base, "postgres").unwrap()
}

async fn drop_database(name: &str) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(&format!("DROP ROLE IF EXISTS \"{}\"", db::app_role(name)))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// `n` consecutive free ports on 127.0.0.1 (`carehub up` numbers its services from a base).
fn free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if base > u16::MAX - n {
            continue;
        }
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}

/// `carehub <args>` over [`SERVICES`], in this process, until `shutdown` (for serve and up).
fn carehub(
    args: &[&str],
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl std::future::Future<Output = anyhow::Result<()>> {
    let argv: Vec<String> = std::iter::once("carehub")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    async move { carehub::run_args(argv, SERVICES, shutdown).await }
}

/// `carehub health --service <service> --addr <addr>` with the `gateway` workload's certificate.
async fn health(service: &str, addr: &str, certs: &Path) -> anyhow::Result<()> {
    let p = |f: &str| certs.join(f).to_str().unwrap().to_owned();
    carehub(
        &[
            "health",
            "--service",
            service,
            "--addr",
            addr,
            "--ca",
            &p("ca.pem"),
            "--cert",
            &p("gateway.pem"),
            "--key",
            &p("gateway-key.pem"),
        ],
        std::future::pending(),
    )
    .await
}

/// `Greet` as `workload` over mTLS.
async fn greet(addr: &str, certs: &Path, workload: &str) -> Result<String, tonic::Status> {
    let read = |f: String| std::fs::read_to_string(certs.join(f)).unwrap();
    let store = carehub_platform::tls::TlsStore::from_pem(
        &read(format!("{workload}.pem")),
        &read(format!("{workload}-key.pem")),
        &read("ca.pem".to_owned()),
        "carehub.local",
    )
    .unwrap();
    let channel = carehub_platform::client::connect(addr, &store, "scratch")
        .await
        .unwrap();
    greet_over(channel).await
}

/// `Greet` over an open channel.
async fn greet_over(channel: ServiceChannel) -> Result<String, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let reply: tonic::Response<scratch::GreetReply> = grpc
        .unary(
            tonic::Request::new(scratch::GreetRequest {
                name: "test".to_owned(),
            }),
            tonic::codegen::http::uri::PathAndQuery::from_static(scratch::GREET),
            tonic_prost::ProstCodec::default(),
        )
        .await?;
    Ok(reply.into_inner().text)
}

/// Asks until SERVING (the server binds while the caller polls); the last error otherwise.
async fn wait_serving(service: &str, addr: &str, certs: &Path) {
    let mut last = None;
    for _ in 0..150 {
        match health(service, addr, certs).await {
            Ok(()) => return,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("{service} at {addr} never SERVING: {last:?}");
}

/// Asks (gRPC health over mTLS, as the gateway) until `service` answers `want`; the server binds
/// while the caller polls.
async fn wait_answering(service: &str, addr: &str, certs: &Path, want: ServingStatus) {
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
    let store = carehub_platform::tls::TlsStore::from_pem(
        &read("gateway.pem"),
        &read("gateway-key.pem"),
        &read("ca.pem"),
        "carehub.local",
    )
    .unwrap();
    let mut last = None;
    for _ in 0..150 {
        let url = format!("https://{addr}");
        if let Ok(channel) = carehub_platform::client::connect(&url, &store, service).await {
            let answer = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status);
            if answer.as_ref().is_ok_and(|s| *s == want as i32) {
                return;
            }
            last = Some(answer);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("{service} at {addr} never answered {want:?}: {last:?}");
}

fn help_of(args: &[&str]) -> String {
    let err = carehub::command(SERVICES)
        .try_get_matches_from(std::iter::once("carehub").chain(args.iter().copied()))
        .unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
    err.to_string()
}

#[test]
fn help_lists_every_service_of_the_list() {
    for cmd in ["serve", "migrate"] {
        let help = help_of(&[cmd, "--help"]);
        assert!(help.contains("- identity: users, roles"), "{cmd}: {help}");
        assert!(help.contains("- scratch:"), "{cmd}: {help}");
        assert!(help.contains("a service added by a test"), "{cmd}: {help}");
    }
    let help = help_of(&["health", "--help"]);
    assert!(help.contains("scratch"), "{help}");
    // A name outside the list is refused, with the list.
    let err = carehub::command(SERVICES)
        .try_get_matches_from(["carehub", "serve", "scheduling"])
        .unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    assert!(
        err.to_string()
            .contains("[possible values: identity, scratch]"),
        "{err}"
    );
}

#[tokio::test]
async fn a_service_refuses_another_services_configuration() {
    let identity = carehub_platform::kit::find(SERVICES, "identity").unwrap();
    let scratch = carehub_platform::kit::find(SERVICES, "scratch").unwrap();
    let err = scratch
        .start(
            identity.dev_config(),
            None,
            Box::pin(std::future::pending()),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("scratch: started with another service's configuration"),
        "{err:#}"
    );
}

#[test]
fn the_binary_serves_its_own_list_only() {
    let bin = env!("CARGO_BIN_EXE_carehub");
    let out = std::process::Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(help.contains("- identity:"), "{help}");
    assert!(!help.contains("scratch"), "{help}");
    let out = std::process::Command::new(bin)
        .args(["migrate", "scratch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    let names: Vec<&str> = carehub::services::SERVICES
        .iter()
        .map(|s| s.name())
        .collect();
    let possible = format!("[possible values: {}]", names.join(", "));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&possible),
        "{possible}"
    );
    let out = std::process::Command::new(bin)
        .arg("services")
        .output()
        .unwrap();
    assert!(out.status.success());
    let listed: String = names.iter().map(|n| format!("{n}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), listed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_is_migrated_served_and_health_checked() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    DevPki::new("carehub.local")
        .unwrap()
        .write_to(&certs, &["scratch", "gateway", "helm-test"])
        .unwrap();
    let keys = dir.path().join("keys.json");
    carehub_platform::keys::file::write_dev_key_file_for(&keys, &["scratch"]).unwrap();
    let database = format!("carehub_test_{}", uuid::Uuid::new_v4().simple());
    db::create_database_if_missing(&admin_url(), &database)
        .await
        .unwrap();
    let port = free_ports(1);
    let config = dir.path().join("scratch.toml");
    let c = |f: &str| certs.join(f).display().to_string();
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:0"
[server.database]
url = "{url}"
[server.keys]
provider = "file"
production = false
file = "{keys}"
[server.tls]
cert_file = "{cert}"
key_file = "{key}"
ca_file = "{ca}"
[scratch]
greeting_id = 1
"#,
            url = db::url_with_database(&admin_url(), &database).unwrap(),
            keys = keys.display(),
            cert = c("scratch.pem"),
            key = c("scratch-key.pem"),
            ca = c("ca.pem"),
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    // Its configuration is validated by its own rules before anything starts.
    let err = carehub(
        &[
            "migrate",
            "scratch",
            "-c",
            config,
            "--set",
            "scratch.greeting_id=0",
        ],
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("scratch.greeting_id must be > 0"),
        "{err:#}"
    );

    // migrate: the platform's migrations, then its own.
    carehub(
        &["migrate", "scratch", "-c", config],
        std::future::pending(),
    )
    .await
    .unwrap();
    let pool = db::connect(&carehub_platform::config::DatabaseConfig {
        url: Some(
            db::url_with_database(&admin_url(), &database)
                .unwrap()
                .into(),
        ),
        ..Default::default()
    })
    .await
    .unwrap();
    let greeting: String = sqlx::query_scalar("SELECT text FROM scratch_greetings WHERE id = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(greeting, "hello from scratch");
    pool.close().await;

    // serve, health-checked over mTLS while it runs; then a clean shutdown.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = carehub(&["serve", "scratch", "-c", config], async move {
        let _ = stop_rx.await;
    });
    let addr = format!("127.0.0.1:{port}");
    let probe = async {
        wait_serving("scratch", &addr, &certs).await;
        // Its handler answers with the state it was built with, under its own policy.
        assert_eq!(
            greet(&addr, &certs, "gateway").await.unwrap(),
            "hello from scratch, test"
        );
        let refused = greet(&addr, &certs, "helm-test").await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        // identity is in the list but does not listen there.
        let err = health("identity", &addr, &certs).await.unwrap_err();
        assert!(err.downcast_ref::<carehub::Exit>().is_some(), "{err:#}");
        stop_tx.send(()).unwrap();
    };
    let (served, ()) = tokio::join!(serve, probe);
    served.unwrap();
    drop_database(&database).await;
}

/// The test kit starts any service of the kit the way it starts identity: scratch on port 0
/// with its own migrated database, certificate and keys, answering under its own policy.
#[tokio::test]
async fn the_test_kit_starts_scratch_as_it_starts_identity() {
    let svc = TestService::start(&scratch::SERVICE, |_| {}).await;
    assert_eq!(svc.handle().greeting, "hello from scratch");
    assert_eq!(
        greet_over(svc.channel("gateway").await).await.unwrap(),
        "hello from scratch, test"
    );
    let refused = greet_over(svc.channel("helm-test").await)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    svc.shutdown().await;
}

/// A service that verifies identity's tokens is not ready before it has loaded identity's keys
/// and revocation feed: until then every user call would fail with UNAVAILABLE, so a restarted
/// replica must not be handed traffic (or outbox deliveries) yet.
#[tokio::test]
async fn a_service_is_not_ready_before_it_has_read_identitys_keys_and_revocations() {
    let unreachable = carehub_testkit::grpc::free_port();
    let svc = TestService::start(&scratch::SERVICE, |c| {
        c.server.auth.identity_endpoint = Some(format!("https://127.0.0.1:{unreachable}"));
        c.server.auth.revocation_poll_secs = 1;
    })
    .await;
    let admin = svc.admin_addr.to_string();
    // Several polls of the (absent) identity later, still not ready; alive all the same.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let readyz = carehub_testkit::grpc::http_get_raw(&admin, "/readyz").await;
    assert_eq!(readyz.map(|(code, _)| code), Some(503));
    let healthz = carehub_testkit::grpc::http_get_raw(&admin, "/healthz").await;
    assert_eq!(healthz.map(|(code, _)| code), Some(200));
    svc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_every_service_of_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let prefix = format!("carehub_test_{}", uuid::Uuid::new_v4().simple());
    let grpc = free_ports(2);
    let admin = free_ports(2);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (grpc_s, admin_s) = (grpc.to_string(), admin.to_string());
    let admin_url = admin_url();
    let up = carehub(
        &[
            "up",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--database-url",
            &admin_url,
            "--database-prefix",
            &prefix,
            "--grpc-port",
            &grpc_s,
            "--admin-port",
            &admin_s,
        ],
        async move {
            let _ = stop_rx.await;
        },
    );
    let certs = data_dir.join("certs");
    let probe = async {
        // Consecutive ports in the list's order, a certificate per service.
        wait_serving("identity", &format!("127.0.0.1:{grpc}"), &certs).await;
        // Served, but not ready: identity lists the services that may read its signing keys
        // and revocations (identity's `api::policy`), and scratch is not one of them, so it
        // cannot verify a user's token yet. Adding it there is the second line a new service
        // that serves users needs.
        wait_answering(
            "scratch",
            &format!("127.0.0.1:{}", grpc + 1),
            &certs,
            ServingStatus::NotServing,
        )
        .await;
        for name in ["identity", "scratch"] {
            assert!(certs.join(format!("{name}.pem")).exists(), "{name}");
        }
        stop_tx.send(()).unwrap();
    };
    let (result, ()) = tokio::join!(up, probe);
    result.unwrap();

    // A database per service, each migrated with its own migrations.
    for (name, table) in [("identity", "users"), ("scratch", "scratch_greetings")] {
        let database = format!("{prefix}_{name}");
        let pool = db::connect(&carehub_platform::config::DatabaseConfig {
            url: Some(db::url_with_database(&admin_url, &database).unwrap().into()),
            ..Default::default()
        })
        .await
        .unwrap();
        let found: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(found, "{database} has no table {table}");
        pool.close().await;
        drop_database(&database).await;
    }
    // The development key file holds the new service's keys too.
    let keys = std::fs::read_to_string(data_dir.join("keys/dev-keys.json")).unwrap();
    assert!(keys.contains("\"scratch\""));
}
