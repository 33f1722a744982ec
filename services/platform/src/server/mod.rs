//! The one gRPC server builder every service uses.
//!
//! ```text
//! TCP accept ─► TLS handshake (own task, timeout; client cert required) ─► tonic/hyper h2
//!   request-id ─► trace span + metrics ─► auth (optional) ─► timeout + load shed ─► routes
//! ```
//!
//! - this module: the builder [`ServiceHost`], [`RunningServer`] and the start-up and shutdown
//!   sequence;
//! - `accept`: the TCP accept loop and the TLS handshake of each connection;
//! - `layers`: the request id, errors turned into statuses, the deadline and concurrency limit;
//! - `observe`: the server span and metrics of every call, labelled with known RPCs only.
//!
//! Always mounted: `grpc.health.v1.Health` and gRPC reflection v1 from
//! `carehub_proto::FILE_DESCRIPTOR_SET`. Health follows the server's [`Lifecycle`]
//! (`crate::lifecycle`): NOT_SERVING while starting, SERVING for every added service and `""`
//! once started and while the readiness check passes, NOT_SERVING as soon as shutdown begins,
//! before the listener closes.
//!
//! Message size: tonic's limits live on each generated server, so services wrap theirs with
//! [`crate::with_message_limits!`] (`with_message_limits!(FooServer::new(api), cfg.limits)`);
//! health and reflection get the limit here.

mod accept;
mod layers;
mod observe;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::FutureExt as _;
use http::{Request, Response};
use http_body::Body as HttpBody;
use prost::bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};

use crate::admin::{self, AdminState, Metrics, ReadinessCheck};
use crate::config::{PlatformConfig, ServerLimits};
use crate::lifecycle::{self, Lifecycle};
use crate::telemetry::{self, TelemetryGuard};
use crate::tls::TlsStore;

pub use crate::lifecycle::{Health, Phase};
pub use crate::request::{current_request_id, BoxSvc, RequestId};
pub use accept::TlsConn;
pub use layers::{LimitsService, RequestIdService};
pub use observe::ObserveService;

use accept::{accept_loop, Handshakes};
use layers::ErrorToStatus;
use observe::{described_sets, KnownRpcs};

type WrapFn = Box<dyn FnOnce(BoxSvc) -> BoxSvc + Send>;

/// Wraps a generated tonic server with the platform's message size limits:
/// `with_message_limits!(IdentityServiceServer::new(api), cfg.server.limits)`.
#[macro_export]
macro_rules! with_message_limits {
    ($server:expr, $limits:expr) => {
        $server
            .max_decoding_message_size($limits.max_message_bytes)
            .max_encoding_message_size($limits.max_message_bytes)
    };
}

/// Builds and starts a service's gRPC server and admin port.
pub struct ServiceHost {
    service_name: &'static str,
    cfg: PlatformConfig,
    routes: tonic::service::RoutesBuilder,
    service_names: Vec<&'static str>,
    auth: Option<WrapFn>,
    admin_routes: Option<axum::Router>,
    readiness: Option<ReadinessCheck>,
    metrics: Arc<Metrics>,
    tls: Option<Arc<TlsStore>>,
    telemetry: Option<TelemetryGuard>,
    audit: Option<crate::audit::AuditHost>,
}

impl std::fmt::Debug for ServiceHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHost")
            .field("service_name", &self.service_name)
            .field("services", &self.service_names)
            .finish_non_exhaustive()
    }
}

impl ServiceHost {
    pub fn new(service_name: &'static str, cfg: &PlatformConfig) -> Self {
        Self {
            service_name,
            cfg: cfg.clone(),
            routes: tonic::service::RoutesBuilder::default(),
            service_names: Vec::new(),
            auth: None,
            admin_routes: None,
            readiness: None,
            metrics: Metrics::new(service_name),
            tls: None,
            telemetry: None,
            audit: None,
        }
    }

    /// Mounts a tonic service (wrap generated servers with [`crate::with_message_limits!`]).
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(svc);
        self.service_names.push(S::NAME);
        self
    }

    /// Puts the auth layer between the tracing/metrics layer and the timeout/limit layers.
    /// Its service may fail with any error: errors become gRPC statuses.
    pub fn with_auth<L, S, B>(mut self, layer: L) -> Self
    where
        L: Layer<BoxSvc, Service = S> + Send + 'static,
        S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<tower::BoxError>,
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<tower::BoxError>,
    {
        self.auth = Some(Box::new(move |inner: BoxSvc| {
            BoxCloneSyncService::new(ErrorToStatus {
                inner: layer.layer(inner),
                not_ready: None,
            })
        }));
        self
    }

    /// Extra routes on the admin port (identity: `/.well-known/jwks.json`).
    pub fn admin_routes(mut self, router: axum::Router) -> Self {
        self.admin_routes = Some(match self.admin_routes.take() {
            Some(existing) => existing.merge(router),
            None => router,
        });
        self
    }

    /// `/readyz` answers 200 only while this returns true (and the server is serving).
    pub fn readiness(mut self, check: ReadinessCheck) -> Self {
        self.readiness = Some(check);
        self
    }

    /// Uses this TLS material instead of loading `cfg.tls` (it is still reloaded if file-based).
    pub fn with_tls(mut self, store: Arc<TlsStore>) -> Self {
        self.tls = Some(store);
        self
    }

    /// Shut telemetry down (flush spans) after the server drained.
    pub fn with_telemetry(mut self, guard: TelemetryGuard) -> Self {
        self.telemetry = Some(guard);
        self
    }

    /// Mounts `carehub.audit.v1.AuditLog` over this service's audit trail (callable by the
    /// `records` and `admin-cli` workloads only, whatever the service's own policy says) and
    /// runs the checkpointer and the `[server.audit]` sink in the background.
    pub fn with_audit(mut self, pool: sqlx::PgPool, keys: Arc<dyn crate::keys::KeySource>) -> Self {
        let host =
            crate::audit::AuditHost::new(self.service_name, pool, keys, self.cfg.audit.clone())
                .with_metrics(self.metrics.clone());
        let server = with_message_limits!(host.api().into_server(), self.cfg.limits);
        self.audit = Some(host);
        self.add_service(server)
    }

    /// This service's metrics, for gauges and counters of its own.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn limits(&self) -> &ServerLimits {
        &self.cfg.limits
    }

    /// Binds both ports, starts serving and returns at once. The server stops when `shutdown`
    /// resolves (or [`RunningServer::shutdown`] is called): health turns NOT_SERVING,
    /// `/readyz` 503, the listener closes, in-flight calls get `limits.drain_timeout_secs`,
    /// then connections are closed and spans flushed.
    pub async fn start(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<RunningServer> {
        let Self {
            service_name,
            cfg,
            mut routes,
            service_names,
            auth,
            admin_routes,
            readiness,
            metrics,
            tls,
            telemetry,
            audit,
        } = self;
        let limits = cfg.limits.clone();

        let store = match tls {
            Some(store) => store,
            // PEM files, or a certificate from Vault PKI kept renewed while the server runs.
            None => crate::keys::pki::tls_store(service_name, &cfg).await?,
        };
        let reloader =
            store.spawn_reloader(Duration::from_secs(cfg.tls.reload_interval_secs.max(1)));
        let tls_config = store.server_config()?;

        let listener = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding the gRPC port {}", cfg.listen))?;
        let grpc_addr = listener.local_addr()?;
        let (admin_listener, admin_addr) = admin::bind(cfg.admin_listen).await?;

        // Health and reflection.
        let (health, health_server) = tonic_health::server::health_reporter();
        // tonic's reporter starts with `""` SERVING: not while starting.
        let lifecycle = Lifecycle::new();
        lifecycle::publish(&health, &service_names, lifecycle.current()).await;
        // "liveness" answers SERVING for as long as the process answers at all: a kubelet gRPC
        // liveness probe must not restart a pod that is merely unready (draining, keys stale).
        health
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
        let probe_health = health_server.clone();
        let health_server = with_message_limits!(health_server, limits);
        // Reflection serves carehub's contracts, the google.rpc error details its failures carry
        // (so that `grpcurl -v` decodes them) and health.
        let reflection_builder = || {
            carehub_proto::REFLECTION_DESCRIPTOR_SETS
                .into_iter()
                .chain([tonic_health::pb::FILE_DESCRIPTOR_SET])
                .fold(tonic_reflection::server::Builder::configure(), |b, set| {
                    b.register_encoded_file_descriptor_set(set)
                })
        };
        let reflection = reflection_builder()
            .build_v1()
            .context("building gRPC reflection")?;
        let reflection = with_message_limits!(reflection, limits);
        // v1alpha too: grpcurl and many other tools still ask only for it.
        let reflection_v1alpha = reflection_builder()
            .build_v1alpha()
            .context("building gRPC reflection (v1alpha)")?;
        let reflection_v1alpha = with_message_limits!(reflection_v1alpha, limits);
        let mut mounted: Vec<&str> = service_names.clone();
        mounted.push(health_service_name(&health_server));
        mounted.push(reflection_service_name(&reflection));
        mounted.push(reflection_service_name(&reflection_v1alpha));
        let known = KnownRpcs::new(&mounted, &described_sets());
        routes.add_service(health_server);
        routes.add_service(reflection);
        routes.add_service(reflection_v1alpha);
        let routes = routes.routes().prepare();

        // Layers, inner to outer.
        let limited = LimitsService {
            inner: routes,
            permits: Arc::new(Semaphore::new(limits.concurrency_limit.max(1))),
            timeout: Duration::from_millis(limits.request_timeout_ms.max(1)),
        };
        let mut svc: BoxSvc = BoxCloneSyncService::new(limited);
        let below_auth = svc.clone();
        if let Some(auth) = auth {
            svc = auth(svc);
        }
        if let Some(audit) = &audit {
            svc = crate::audit::service::route(svc, below_auth);
            // Audit events recorded while handling a call seal the client fields with this
            // service's audit-trail key.
            svc = BoxCloneSyncService::new(crate::audit::seal::SealerScope {
                inner: svc,
                sealer: audit.sealer(),
            });
        }
        let audit_task = audit.map(|a| (a.spawn_background(), a));
        let svc = RequestIdService {
            inner: ObserveService {
                inner: svc,
                metrics: metrics.clone(),
                known: Arc::new(known),
            },
        };

        // Accept loop.
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let kill = kill_rx.shared();
        let (conn_tx, conn_rx) = mpsc::channel::<TlsConn>(256);
        let accept_task = tokio::spawn(accept_loop(
            listener,
            tokio_rustls::TlsAcceptor::from(tls_config),
            store.clone(),
            Handshakes {
                timeout: Duration::from_millis(limits.handshake_timeout_ms.max(1)),
                permits: Arc::new(tokio::sync::Semaphore::new(
                    limits.max_concurrent_handshakes.max(1),
                )),
            },
            conn_tx,
            kill,
        ));
        let incoming = futures::stream::unfold(conn_rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|conn| (Ok::<_, std::io::Error>(conn), rx))
        });

        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .serve_with_incoming_shutdown(svc, incoming, async move {
                let _ = stop_rx.await;
            });
        let mut server_task = tokio::spawn(server);

        // Admin port.
        let admin_state = AdminState {
            metrics: metrics.clone(),
            health: lifecycle.subscribe(),
            readiness: readiness.clone(),
        };
        let (admin_stop_tx, admin_stop_rx) = oneshot::channel::<()>();
        let admin_task = tokio::spawn(admin::serve(
            admin_listener,
            admin::router(admin_state, admin_routes)
                .merge(admin::grpc_health_check_route(probe_health)),
            async move {
                let _ = admin_stop_rx.await;
            },
        ));

        // gRPC health (both ports) follows the lifecycle, and through it the readiness check
        // (keys past their maximum staleness, ...), so Kubernetes' native gRPC probes see what
        // /readyz sees. Serving is published before `start` returns: callers see it at once.
        if let Some(check) = &readiness {
            lifecycle.set_ready(check());
        }
        lifecycle.serving();
        lifecycle::publish(&health, &service_names, lifecycle.current()).await;
        let health_follower = tokio::spawn(lifecycle::follow_health(
            lifecycle.subscribe(),
            health.clone(),
            service_names.clone(),
        ));
        let readiness_follower = readiness.map(|check| {
            tokio::spawn(lifecycle::follow_readiness(
                lifecycle.clone(),
                check,
                Duration::from_secs(1),
            ))
        });
        tracing::info!(service = service_name, %grpc_addr, %admin_addr, "serving gRPC (mTLS) and admin");

        let (trigger_tx, trigger_rx) = oneshot::channel::<()>();
        let drain = Duration::from_secs(limits.drain_timeout_secs);
        let drain_lifecycle = lifecycle.clone();
        let supervisor = tokio::spawn(async move {
            let early = tokio::select! {
                _ = shutdown => None,
                _ = trigger_rx => None,
                res = &mut server_task => Some(res),
            };
            if let Some(task) = readiness_follower {
                task.abort();
            }
            // NOT_SERVING is published before the listener closes: the follower ends once it
            // has set it.
            drain_lifecycle.draining();
            if tokio::time::timeout(Duration::from_secs(2), health_follower)
                .await
                .is_err()
            {
                tracing::warn!(
                    service = service_name,
                    "health did not turn NOT_SERVING in time"
                );
            }
            tracing::info!(
                service = service_name,
                "shutting down: NOT_SERVING, draining"
            );
            let result = match early {
                Some(res) => flatten(res),
                None => {
                    let _ = stop_tx.send(());
                    match tokio::time::timeout(drain, &mut server_task).await {
                        Ok(res) => flatten(res),
                        Err(_) => {
                            tracing::warn!(
                                service = service_name,
                                ?drain,
                                "drain timeout: closing remaining connections"
                            );
                            let _ = kill_tx.send(());
                            match tokio::time::timeout(Duration::from_secs(2), &mut server_task)
                                .await
                            {
                                Ok(res) => flatten(res),
                                Err(_) => {
                                    server_task.abort();
                                    Ok(())
                                }
                            }
                        }
                    }
                }
            };
            accept_task.abort();
            if let Some((task, audit)) = audit_task {
                task.abort();
                match tokio::time::timeout(Duration::from_secs(5), audit.finish()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::warn!(error = %err, "final audit checkpoint failed"),
                    Err(_) => tracing::warn!("final audit checkpoint timed out"),
                }
            }
            reloader.abort();
            let _ = admin_stop_tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
            match telemetry {
                Some(guard) => guard.shutdown().await,
                None => telemetry::flush().await,
            }
            tracing::info!(service = service_name, "stopped");
            result
        });

        Ok(RunningServer {
            grpc_addr,
            admin_addr,
            metrics,
            health,
            lifecycle,
            tls: store,
            trigger: Some(trigger_tx),
            task: supervisor,
        })
    }
}

fn flatten(
    res: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(anyhow::Error::new(err).context("gRPC server failed")),
        Err(err) => Err(anyhow::Error::new(err).context("gRPC server task failed")),
    }
}

/// The grpc.health.v1 service name that reports liveness rather than readiness.
pub const LIVENESS_SERVICE: &str = "liveness";

fn health_service_name<S: NamedService>(_: &S) -> &'static str {
    S::NAME
}

fn reflection_service_name<S: NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// A started server.
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    /// The health reporter (services may flip their own status).
    pub health: tonic_health::server::HealthReporter,
    lifecycle: Lifecycle,
    pub tls: Arc<TlsStore>,
    trigger: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl RunningServer {
    /// The server's lifecycle (starting → serving → draining) and readiness, as a watch.
    pub fn health_watch(&self) -> tokio::sync::watch::Receiver<Health> {
        self.lifecycle.subscribe()
    }

    /// Waits until the server stopped (shutdown future resolved and drained).
    ///
    /// Dropping a `RunningServer` without waiting begins shutdown.
    pub async fn wait(self) -> anyhow::Result<()> {
        let _keep_trigger = self.trigger;
        self.task.await.context("server supervisor panicked")?
    }

    /// Begins shutdown now and waits until it finished.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(trigger) = self.trigger.take() {
            let _ = trigger.send(());
        }
        self.task.await.context("server supervisor panicked")?
    }

    /// Begins shutdown without waiting; [`RunningServer::wait`] still waits for the end.
    pub fn begin_shutdown(&mut self) {
        if let Some(trigger) = self.trigger.take() {
            let _ = trigger.send(());
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
