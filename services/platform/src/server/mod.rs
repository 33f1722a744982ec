//! The one gRPC server builder every service uses.
//!
//! ```text
//! TCP accept ─► TLS handshake (own task, timeout; client cert required) ─► tonic/hyper h2
//!   request-id ─► trace span + metrics ─► auth (optional) ─► timeout + load shed ─► routes
//! ```
//!
//! We accept TCP ourselves (tonic's TLS cannot hot-reload certificates): every connection is
//! handshaken in its own task with `limits.handshake_timeout_ms`, so a slow or silent client
//! never blocks the accept loop; failed handshakes (no client certificate, another CA,
//! plaintext) are logged at debug and dropped. Tonic puts the peer's [`PeerInfo`] into every
//! request's extensions.
//!
//! Always mounted: `grpc.health.v1.Health` (SERVING for every added service and `""` once
//! started; NOT_SERVING as soon as shutdown begins, before the listener closes) and gRPC
//! reflection v1 from `carehub_proto::FILE_DESCRIPTOR_SET`.
//!
//! Message size: tonic's limits live on each generated server, so services wrap theirs with
//! [`crate::with_message_limits!`] (`with_message_limits!(FooServer::new(api), cfg.limits)`);
//! health and reflection get the limit here.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::{BoxFuture, FutureExt as _, Shared};
use http::{HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prost::bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::server::Connected;
use tonic::Code;
use tonic_health::ServingStatus;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::admin::{self, AdminState, Metrics, ReadinessCheck};
use crate::config::{PlatformConfig, ServerLimits};
use crate::telemetry::{self, TelemetryGuard};
use crate::tls::{PeerInfo, TlsStore};

/// A type-erased request handler (what is below the auth layer).
pub type BoxSvc = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;
type WrapFn = Box<dyn FnOnce(BoxSvc) -> BoxSvc + Send>;

/// The request id of a call (`x-request-id`, generated when absent), in request extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub String);

tokio::task_local! {
    static CURRENT_REQUEST_ID: String;
}

/// The request id of the RPC being handled by this task, if any. Outgoing calls through
/// [`crate::client::ServiceChannel`] carry it as `x-request-id`; audit records can use it.
pub fn current_request_id() -> Option<String> {
    CURRENT_REQUEST_ID.try_with(Clone::clone).ok()
}

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
            crate::audit::AuditHost::new(self.service_name, pool, keys, self.cfg.audit.clone());
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
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
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
            serving: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            readiness,
        };
        let (admin_stop_tx, admin_stop_rx) = oneshot::channel::<()>();
        let admin_task = tokio::spawn(admin::serve(
            admin_listener,
            admin::router(admin_state.clone(), admin_routes)
                .merge(admin::grpc_health_check_route(probe_health)),
            async move {
                let _ = admin_stop_rx.await;
            },
        ));

        for name in &service_names {
            health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        health.set_service_status("", ServingStatus::Serving).await;
        admin_state.serving.store(true, Ordering::SeqCst);
        tracing::info!(service = service_name, %grpc_addr, %admin_addr, "serving gRPC (mTLS) and admin");

        // gRPC health follows the readiness check too (keys past their maximum staleness, ...),
        // so Kubernetes' native gRPC probes see what /readyz sees.
        let readiness_watch = admin_state.readiness.clone().map(|check| {
            let health = health.clone();
            let names = service_names.clone();
            tokio::spawn(async move {
                let mut ready = true;
                let mut ticker = tokio::time::interval(Duration::from_secs(1));
                loop {
                    ticker.tick().await;
                    let now = check();
                    if now == ready {
                        continue;
                    }
                    ready = now;
                    let status = if now {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    for name in &names {
                        health.set_service_status(*name, status).await;
                    }
                    health.set_service_status("", status).await;
                }
            })
        });

        let (trigger_tx, trigger_rx) = oneshot::channel::<()>();
        let drain = Duration::from_secs(limits.drain_timeout_secs);
        let health_handle = health.clone();
        let supervisor = tokio::spawn(async move {
            let early = tokio::select! {
                _ = shutdown => None,
                _ = trigger_rx => None,
                res = &mut server_task => Some(res),
            };
            if let Some(watch) = readiness_watch {
                watch.abort();
            }
            admin_state.serving.store(false, Ordering::SeqCst);
            for name in &service_names {
                health_handle
                    .set_service_status(*name, ServingStatus::NotServing)
                    .await;
            }
            health_handle
                .set_service_status("", ServingStatus::NotServing)
                .await;
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

// ---------------------------------------------------------------------------------------------
// Connections

type Kill = Shared<oneshot::Receiver<()>>;

/// How TLS handshakes are bounded: each in time, all together in number.
struct Handshakes {
    timeout: Duration,
    permits: Arc<tokio::sync::Semaphore>,
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    store: Arc<TlsStore>,
    handshakes: Handshakes,
    tx: mpsc::Sender<TlsConn>,
    kill: Kill,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            _ = tx.closed() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::debug!(error = %err, "accept failed");
                    // Out of file descriptors and the like: don't spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Shed rather than queue: a queued handshake would mostly time out anyway, and the
        // accept loop must stay free for the connections that can be served.
        let Ok(permit) = Arc::clone(&handshakes.permits).try_acquire_owned() else {
            tracing::debug!(peer = %remote, "too many TLS handshakes in progress; connection closed");
            drop(tcp);
            continue;
        };
        let handshake_timeout = handshakes.timeout;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let store = store.clone();
        let tx = tx.clone();
        let kill = kill.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
            drop(permit);
            crate::stats::tls_server_handshake(matches!(handshake, Ok(Ok(_))));
            match handshake {
                Ok(Ok(tls)) => {
                    let workload = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|leaf| store.workload_of(leaf));
                    let conn = TlsConn {
                        inner: tls,
                        info: PeerInfo {
                            remote_addr: Some(remote),
                            workload,
                        },
                        kill,
                    };
                    let _ = tx.send(conn).await;
                }
                Ok(Err(err)) => {
                    tracing::debug!(peer = %remote, error = %err, "TLS handshake failed");
                }
                Err(_) => {
                    tracing::debug!(peer = %remote, "TLS handshake timed out");
                }
            }
        });
    }
}

/// An accepted mTLS connection: tonic reads its [`PeerInfo`] through [`Connected`].
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    kill: Kill,
}

impl TlsConn {
    fn killed(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.kill).poll(cx).is_ready()
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.killed(cx) {
            return Poll::Ready(Ok(())); // EOF
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.killed(cx) {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.killed(cx) {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// ---------------------------------------------------------------------------------------------
// Layers

const REQUEST_ID: &str = "x-request-id";

fn valid_request_id(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    (!s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')))
    .then_some(s)
}

/// Takes `x-request-id` (when well-formed) or generates one; puts it into the headers and
/// extensions ([`RequestId`]) and echoes it on the response.
#[derive(Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for RequestIdService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let id = match req.headers().get(REQUEST_ID).and_then(valid_request_id) {
            Some(id) => id.to_owned(),
            None => uuid::Uuid::now_v7().to_string(),
        };
        let value = HeaderValue::from_str(&id).ok();
        if let Some(value) = &value {
            req.headers_mut().insert(REQUEST_ID, value.clone());
        }
        req.extensions_mut().insert(RequestId(id.clone()));
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = CURRENT_REQUEST_ID.scope(id, inner.call(req));
        Box::pin(async move {
            let mut response = fut.await?;
            if let Some(value) = value {
                response.headers_mut().insert(REQUEST_ID, value);
            }
            Ok(response)
        })
    }
}

/// Every descriptor set whose services a server may mount: carehub's, health's, reflection's.
fn described_sets() -> Vec<&'static [u8]> {
    vec![
        carehub_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
}

/// The RPCs a server answers, to label metrics and spans with: a path counts as known only
/// when its service is mounted and — for services with a descriptor — its method exists, so
/// attacker-chosen paths cannot create unbounded metric series. A mounted service without a
/// descriptor (a hand-written test service) has its methods labelled by name.
#[derive(Debug, Default)]
pub(crate) struct KnownRpcs {
    mounted: HashSet<String>,
    /// Methods of every service described by the descriptor sets.
    methods: std::collections::HashMap<String, HashSet<String>>,
}

impl KnownRpcs {
    pub(crate) fn new(mounted: &[&str], descriptor_sets: &[&[u8]]) -> Self {
        use prost::Message as _;
        let mut methods: std::collections::HashMap<String, HashSet<String>> =
            std::collections::HashMap::new();
        for set in descriptor_sets {
            // The sets are compiled in; one that does not decode describes nothing.
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let name = match (package.as_str(), service.name.as_deref()) {
                        (_, None) => continue,
                        ("", Some(n)) => n.to_owned(),
                        (p, Some(n)) => format!("{p}.{n}"),
                    };
                    methods
                        .entry(name)
                        .or_default()
                        .extend(service.method.into_iter().filter_map(|m| m.name));
                }
            }
        }
        Self {
            mounted: mounted.iter().map(|s| (*s).to_owned()).collect(),
            methods,
        }
    }

    /// Whether `/service/method` is an RPC this server has.
    pub(crate) fn contains(&self, service: &str, method: &str) -> bool {
        self.mounted.contains(service)
            && self
                .methods
                .get(service)
                .is_none_or(|methods| methods.contains(method))
    }
}

/// The server span (named after the RPC, parent from `traceparent`) and the RPC metrics.
#[derive(Clone)]
pub struct ObserveService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    known: Arc<KnownRpcs>,
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
pub(crate) fn split_path(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    match trimmed.rsplit_once('/') {
        Some((service, method)) => (service, method),
        None => (trimmed, ""),
    }
}

/// The gRPC status of a response whose `grpc-status` is in the headers (trailers-only).
pub(crate) fn header_status(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

impl<S> Service<Request<Body>> for ObserveService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let path = req.uri().path();
        let (service, method) = split_path(path);
        let known = self.known.contains(service, method);
        // Unknown paths (an unknown service, or an unknown method of a known one) share one
        // label and one span name: attacker-chosen paths must not create unbounded metric series.
        let (label, name) = if known {
            (path.to_owned(), format!("{service}/{method}"))
        } else {
            ("unknown".to_owned(), "unknown".to_owned())
        };
        let (service, method) = if known {
            (service.to_owned(), method.to_owned())
        } else {
            ("unknown".to_owned(), "unknown".to_owned())
        };
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let workload = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.workload.clone())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %name,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            request.id = %request_id,
            peer.workload = %workload,
        );
        let parent = telemetry::extract_context(req.headers());
        let _ = span.set_parent(parent);
        let completion = Completion {
            span: span.clone(),
            metrics: Some((self.metrics.clone(), label)),
            start: Instant::now(),
            kind: SpanKind::Server,
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = inner.call(req).instrument(span);
        Box::pin(async move {
            let response = undecodable_as_invalid_argument(fut.await?);
            Ok(observe_response(response, completion))
        })
    }
}

/// How prost describes a message that does not decode (tonic answers it with INTERNAL).
const PROTOBUF_DECODE_ERROR: &str = "failed to decode Protobuf message";

/// tonic answers a request body that is not a valid protobuf encoding of the request message
/// with INTERNAL ("failed to decode Protobuf message: ..."), as if the server had failed. It is
/// the client's error: INVALID_ARGUMENT with reason INVALID_FIELD. The decode error is answered
/// before any handler runs, trailers-only, so the status is in the response headers.
pub(crate) fn undecodable_as_invalid_argument(response: Response<Body>) -> Response<Body> {
    if header_status(response.headers()) != Some(Code::Internal) {
        return response;
    }
    match tonic::Status::from_header_map(response.headers()) {
        Some(status) if status.message().starts_with(PROTOBUF_DECODE_ERROR) => {
            crate::errors::status(
                Code::InvalidArgument,
                carehub_proto::common::v1::ErrorReason::InvalidField,
                format!("the request body does not decode: {}", status.message()),
            )
            .into_http()
        }
        _ => response,
    }
}

pub(crate) fn observe_response<B>(response: Response<B>, completion: Completion) -> Response<Body>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    if let Some(code) = header_status(response.headers()) {
        completion.finish(code);
        return response.map(Body::new);
    }
    if !response.status().is_success() {
        completion.finish(Code::Unknown);
        return response.map(Body::new);
    }
    response.map(|body| {
        Body::new(ObservedBody {
            inner: Body::new(body),
            completion: Some(completion),
        })
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanKind {
    Server,
    Client,
}

/// Ends an RPC: records the status on the span (closing it) and in the metrics.
pub(crate) struct Completion {
    pub(crate) span: tracing::Span,
    pub(crate) metrics: Option<(Arc<Metrics>, String)>,
    pub(crate) start: Instant,
    pub(crate) kind: SpanKind,
}

impl Completion {
    pub(crate) fn finish(self, code: Code) {
        self.span.record("rpc.grpc.status_code", code as i64);
        // OpenTelemetry semantic conventions: which codes make a span an error.
        let error = match self.kind {
            SpanKind::Client => code != Code::Ok,
            SpanKind::Server => matches!(
                code,
                Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::Unimplemented
                    | Code::Internal
                    | Code::Unavailable
                    | Code::DataLoss
            ),
        };
        if error {
            self.span.record("otel.status_code", "ERROR");
        }
        let elapsed = self.start.elapsed();
        if let Some((metrics, label)) = &self.metrics {
            metrics.record_rpc(label, code, elapsed);
        }
        tracing::debug!(
            parent: &self.span,
            code = admin::code_name(code),
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "rpc finished"
        );
    }
}

/// A response body that finishes its [`Completion`] with the status from the trailers, or
/// CANCELLED when dropped early.
pub(crate) struct ObservedBody {
    pub(crate) inner: Body,
    pub(crate) completion: Option<Completion>,
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let span = this.completion.as_ref().map(|c| c.span.clone());
        let _entered = span.as_ref().map(|s| s.enter());
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(done) = this.completion.take() {
                        done.finish(header_status(trailers).unwrap_or(Code::Unknown));
                    }
                }
            }
            Some(Err(status)) => {
                if let Some(done) = this.completion.take() {
                    done.finish(status.code());
                }
            }
            None => {
                if let Some(done) = this.completion.take() {
                    done.finish(Code::Unknown);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(done) = self.completion.take() {
            done.finish(Code::Cancelled);
        }
    }
}

/// Turns a service's errors (and any response body) into gRPC responses.
#[derive(Clone)]
struct ErrorToStatus<S> {
    inner: S,
    /// The error of a failed `poll_ready`, answered by the next `call`.
    not_ready: Option<tonic::Status>,
}

impl<S, B> Service<Request<Body>> for ErrorToStatus<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match ready!(self.inner.poll_ready(cx)) {
            Ok(()) => self.not_ready = None,
            Err(err) => self.not_ready = Some(tonic::Status::from_error(err.into())),
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if let Some(status) = self.not_ready.take() {
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = inner.call(req);
        Box::pin(async move {
            Ok(match fut.await {
                Ok(response) => response.map(Body::new),
                Err(err) => tonic::Status::from_error(err.into()).into_http(),
            })
        })
    }
}

/// Deadline (`limits.request_timeout_ms` → DEADLINE_EXCEEDED) and concurrency limit with load
/// shedding (`limits.concurrency_limit` → RESOURCE_EXHAUSTED with RetryInfo), as gRPC statuses.
#[derive(Clone)]
pub struct LimitsService<S> {
    inner: S,
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl<S> Service<Request<Body>> for LimitsService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            use tonic_types::{ErrorDetails, StatusExt as _};
            let status = tonic::Status::with_error_details(
                Code::ResourceExhausted,
                "the server is at its concurrency limit; retry with backoff",
                ErrorDetails::with_retry_info(Some(Duration::from_millis(200))),
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let timeout = self.timeout;
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, inner.call(req)).await {
                Ok(response) => response,
                Err(_) => Ok(tonic::Status::deadline_exceeded(
                    "the request did not finish within the server's deadline",
                )
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/carehub.identity.v1.IdentityService/Login"),
            ("carehub.identity.v1.IdentityService", "Login")
        );
        assert_eq!(split_path("/x"), ("x", ""));
    }

    #[test]
    fn request_ids_are_validated() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123_x.y:z")).is_some());
        assert!(valid_request_id(&HeaderValue::from_static("a b")).is_none());
        assert!(valid_request_id(&HeaderValue::from_static("")).is_none());
        let long = "a".repeat(129);
        assert!(valid_request_id(&HeaderValue::from_str(&long).unwrap()).is_none());
    }

    #[derive(Clone)]
    struct Slow(Duration);
    impl Service<Request<Body>> for Slow {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<Body>) -> Self::Future {
            let d = self.0;
            Box::pin(async move {
                tokio::time::sleep(d).await;
                Ok(tonic::Status::ok("").into_http())
            })
        }
    }

    #[tokio::test]
    async fn limits_answer_deadline_exceeded_and_resource_exhausted() {
        let mut svc = LimitsService {
            inner: Slow(Duration::from_millis(300)),
            permits: Arc::new(Semaphore::new(1)),
            timeout: Duration::from_millis(100),
        };
        let first = svc.call(Request::new(Body::empty()));
        let second = svc.call(Request::new(Body::empty())).await.unwrap();
        assert_eq!(
            header_status(second.headers()),
            Some(Code::ResourceExhausted)
        );
        let first = first.await.unwrap();
        assert_eq!(header_status(first.headers()), Some(Code::DeadlineExceeded));
        // The permit is back.
        let mut fast = LimitsService {
            inner: Slow(Duration::from_millis(1)),
            permits: svc.permits.clone(),
            timeout: Duration::from_millis(100),
        };
        let ok = fast.call(Request::new(Body::empty())).await.unwrap();
        assert_eq!(header_status(ok.headers()), Some(Code::Ok));
    }
}
