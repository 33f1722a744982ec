//! The plain-HTTP admin port every service opens beside its gRPC port:
//! `/healthz` (the process is alive), `/readyz` (serving and the service's readiness check
//! passes; 503 while starting or draining), `/metrics` (Prometheus text format), plus routes a
//! service adds (identity: `/.well-known/jwks.json`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::lifecycle::{Health, Phase};

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct MethodStats {
    /// Completed RPCs by gRPC code name.
    by_code: BTreeMap<&'static str, u64>,
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum_secs: f64,
}

type Labels = Vec<(String, String)>;

#[derive(Default)]
struct Inner {
    methods: HashMap<String, MethodStats>,
    gauges: BTreeMap<String, BTreeMap<Labels, f64>>,
    counters: BTreeMap<String, BTreeMap<Labels, f64>>,
    /// Families declared before their first sample: their `# HELP`/`# TYPE` lines are rendered
    /// from startup, so that a scrape of a fresh service already names every metric the alerts
    /// use (a labelled family such as the outbox's per-target gauges has no series until then).
    described: BTreeMap<String, (MetricKind, String)>,
}

/// The kind of a family declared with [`Metrics::describe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Gauge,
    Counter,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
        }
    }
}

/// Sets gauges from current state right before each render (pool occupancy, certificate
/// expiry): read at scrape time, never stale.
pub type Collector = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// A service's metrics: gRPC requests, errors and latency per method (recorded by the server),
/// and any gauges and counters the service sets.
pub struct Metrics {
    service: String,
    inner: Mutex<Inner>,
    collectors: Mutex<Vec<Collector>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// The canonical name of a gRPC status code (`OK`, `NOT_FOUND`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn escape_label(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_label(v, out);
        out.push('"');
    }
    out.push('}');
}

fn fmt_f64(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if v.is_nan() {
        "NaN".to_owned()
    } else {
        format!("{v}")
    }
}

impl Metrics {
    pub fn new(service: &str) -> Arc<Self> {
        Arc::new(Self {
            service: service.to_owned(),
            inner: Mutex::new(Inner::default()),
            collectors: Mutex::new(Vec::new()),
        })
    }

    /// Declares a gauge or counter family so that it is rendered (`# HELP`, `# TYPE`) before
    /// its first sample. Invalid metric names are ignored.
    pub fn describe(&self, name: &str, kind: MetricKind, help: &str) {
        if !is_metric_name(name) {
            return;
        }
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        self.lock().described.insert(name.to_owned(), (kind, help));
    }

    /// Runs `collector` before every render.
    pub fn add_collector(&self, collector: Collector) {
        self.collectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(collector);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one finished RPC (`method` is the full path, `/pkg.Service/Method`).
    pub fn record_rpc(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut inner = self.lock();
        let stats = inner.methods.entry(method.to_owned()).or_default();
        *stats.by_code.entry(code_name(code)).or_default() += 1;
        stats.count += 1;
        stats.sum_secs += secs;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *le {
                stats.buckets[i] += 1;
            }
        }
    }

    /// Sets a gauge (`carehub_outbox_lag_seconds`, labels `[("table", "reminders")]`).
    /// Invalid metric names are ignored.
    pub fn set_gauge(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        if !is_metric_name(name) || labels.iter().any(|(k, _)| !is_metric_name(k)) {
            return;
        }
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.lock()
            .gauges
            .entry(name.to_owned())
            .or_default()
            .insert(labels, value);
    }

    /// Adds to a counter (the name should end in `_total`). Invalid metric names are ignored.
    pub fn inc_counter(&self, name: &str, labels: &[(&str, &str)], by: f64) {
        if !is_metric_name(name) || labels.iter().any(|(k, _)| !is_metric_name(k)) {
            return;
        }
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        *self
            .lock()
            .counters
            .entry(name.to_owned())
            .or_default()
            .entry(labels)
            .or_default() += by;
    }

    /// The number of finished RPCs of `method` with `code` (for tests and dashboards).
    pub fn rpc_count(&self, method: &str, code: tonic::Code) -> u64 {
        self.lock()
            .methods
            .get(method)
            .and_then(|s| s.by_code.get(code_name(code)).copied())
            .unwrap_or(0)
    }

    /// Everything in the Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        // Cloned out so that a collector may set gauges (which takes the inner lock) and no
        // lock is held while it runs.
        let collectors: Vec<Collector> = self
            .collectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for collect in &collectors {
            collect(self);
        }
        let inner = self.lock();
        let svc = self.service.as_str();
        let mut out = String::new();
        let mut methods: Vec<_> = inner.methods.iter().collect();
        methods.sort_by(|a, b| a.0.cmp(b.0));

        out.push_str("# HELP carehub_grpc_server_requests_total gRPC requests handled, by method and status code.\n");
        out.push_str("# TYPE carehub_grpc_server_requests_total counter\n");
        for (method, stats) in &methods {
            for (code, n) in &stats.by_code {
                out.push_str("carehub_grpc_server_requests_total");
                write_labels(
                    &mut out,
                    &[("service", svc), ("method", method), ("code", code)],
                );
                let _ = writeln!(out, " {n}");
            }
        }
        out.push_str("# HELP carehub_grpc_server_errors_total gRPC requests that ended with a status other than OK.\n");
        out.push_str("# TYPE carehub_grpc_server_errors_total counter\n");
        for (method, stats) in &methods {
            for (code, n) in stats.by_code.iter().filter(|(c, _)| **c != "OK") {
                out.push_str("carehub_grpc_server_errors_total");
                write_labels(
                    &mut out,
                    &[("service", svc), ("method", method), ("code", code)],
                );
                let _ = writeln!(out, " {n}");
            }
        }
        out.push_str("# HELP carehub_grpc_server_handling_seconds Time from request to the end of the response, by method.\n");
        out.push_str("# TYPE carehub_grpc_server_handling_seconds histogram\n");
        for (method, stats) in &methods {
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                out.push_str("carehub_grpc_server_handling_seconds_bucket");
                let le = fmt_f64(*le);
                write_labels(
                    &mut out,
                    &[("service", svc), ("method", method), ("le", &le)],
                );
                let _ = writeln!(out, " {}", stats.buckets[i]);
            }
            out.push_str("carehub_grpc_server_handling_seconds_bucket");
            write_labels(
                &mut out,
                &[("service", svc), ("method", method), ("le", "+Inf")],
            );
            let _ = writeln!(out, " {}", stats.count);
            out.push_str("carehub_grpc_server_handling_seconds_sum");
            write_labels(&mut out, &[("service", svc), ("method", method)]);
            let _ = writeln!(out, " {}", fmt_f64(stats.sum_secs));
            out.push_str("carehub_grpc_server_handling_seconds_count");
            write_labels(&mut out, &[("service", svc), ("method", method)]);
            let _ = writeln!(out, " {}", stats.count);
        }
        let no_series = BTreeMap::new();
        for (kind, family) in [
            (MetricKind::Gauge, &inner.gauges),
            (MetricKind::Counter, &inner.counters),
        ] {
            let mut names: Vec<&String> = family.keys().collect();
            names.extend(
                inner
                    .described
                    .iter()
                    .filter(|(name, (k, _))| *k == kind && !family.contains_key(*name))
                    .map(|(name, _)| name),
            );
            names.sort();
            for name in names {
                if let Some((_, help)) = inner.described.get(name) {
                    let _ = writeln!(out, "# HELP {name} {help}");
                }
                let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
                let series = family.get(name).unwrap_or(&no_series);
                for (labels, value) in series {
                    out.push_str(name);
                    let mut all: Vec<(&str, &str)> = vec![("service", svc)];
                    all.extend(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                    write_labels(&mut out, &all);
                    let _ = writeln!(out, " {}", fmt_f64(*value));
                }
            }
        }
        crate::stats::render(&mut out);
        out
    }
}

/// A readiness check supplied by the service (database reachable, keys loaded, ...).
pub type ReadinessCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// The server's lifecycle: ready only in its serving phase.
    pub health: tokio::sync::watch::Receiver<Health>,
    pub readiness: Option<ReadinessCheck>,
}

impl AdminState {
    /// The check is asked here directly rather than through the watch's `ready` (published at
    /// most once a second): `/readyz` turns 503 the moment keys go stale, and 200 as soon as
    /// they are fresh again.
    pub fn is_ready(&self) -> bool {
        self.health.borrow().phase == Phase::Serving
            && self.readiness.as_ref().is_none_or(|check| check())
    }
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// The admin router: `/healthz`, `/readyz`, `/metrics`, merged with `extra`.
pub fn router(state: AdminState, extra: Option<Router>) -> Router {
    let base = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    match extra {
        Some(extra) => base.merge(extra),
        None => base,
    }
}

/// `grpc.health.v1.Health/Check` in plaintext (h2c) on the admin port, for kubelet's native
/// gRPC probes: they cannot present the client certificate the mTLS port demands. It shares
/// the gRPC port's health state (`""` = ready, `"liveness"` = process alive) and reveals
/// nothing `/readyz` does not; `Watch` and every other RPC stay on the mTLS port.
pub fn grpc_health_check_route<S>(health: S) -> Router
where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    Router::new().route_service("/grpc.health.v1.Health/Check", health)
}

/// A bound admin listener, serving until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr` (port 0 allowed) and returns the listener and its actual address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin port {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn renders_counters_errors_histogram_and_gauges() {
        let m = Metrics::new("identity");
        m.record_rpc("/a.B/C", tonic::Code::Ok, Duration::from_millis(3));
        m.record_rpc("/a.B/C", tonic::Code::NotFound, Duration::from_millis(30));
        m.set_gauge("carehub_db_pool_idle", &[("pool", "main")], 4.0);
        m.set_gauge("bad name", &[], 1.0);
        let text = m.render();
        assert!(text.contains("carehub_grpc_server_requests_total{service=\"identity\",method=\"/a.B/C\",code=\"OK\"} 1"), "{text}");
        assert!(text.contains("carehub_grpc_server_errors_total{service=\"identity\",method=\"/a.B/C\",code=\"NOT_FOUND\"} 1"), "{text}");
        assert!(
            !text.contains("errors_total{service=\"identity\",method=\"/a.B/C\",code=\"OK\"}"),
            "{text}"
        );
        assert!(text.contains("carehub_grpc_server_handling_seconds_bucket{service=\"identity\",method=\"/a.B/C\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("carehub_grpc_server_handling_seconds_count{service=\"identity\",method=\"/a.B/C\"} 2"), "{text}");
        assert!(
            text.contains("carehub_db_pool_idle{service=\"identity\",pool=\"main\"} 4"),
            "{text}"
        );
        assert!(!text.contains("bad name"));
    }

    #[test]
    fn described_families_render_before_their_first_sample() {
        let m = Metrics::new("records");
        m.describe("carehub_outbox_pending", MetricKind::Gauge, "Rows waiting.");
        m.describe("carehub_x_total", MetricKind::Counter, "Things.");
        let text = m.render();
        assert!(
            text.contains("# HELP carehub_outbox_pending Rows waiting.\n# TYPE carehub_outbox_pending gauge\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE carehub_x_total counter"), "{text}");
        assert!(!text.contains("carehub_outbox_pending{"), "{text}");
        m.set_gauge("carehub_outbox_pending", &[("target", "billing")], 3.0);
        let text = m.render();
        assert_eq!(
            text.matches("# TYPE carehub_outbox_pending gauge").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("carehub_outbox_pending{service=\"records\",target=\"billing\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn collectors_set_gauges_at_render_time() {
        let m = Metrics::new("billing");
        let n = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let seen = n.clone();
        m.add_collector(Arc::new(move |m: &Metrics| {
            let v = seen.load(std::sync::atomic::Ordering::Relaxed) as f64;
            m.set_gauge("carehub_db_pool_connections", &[], v);
        }));
        assert!(m
            .render()
            .contains("carehub_db_pool_connections{service=\"billing\"} 1"));
        n.store(7, std::sync::atomic::Ordering::Relaxed);
        let text = m.render();
        assert!(
            text.contains("carehub_db_pool_connections{service=\"billing\"} 7"),
            "{text}"
        );
    }
}
