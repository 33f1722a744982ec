//! The relay: claims due rows, delivers them, records the outcome, exports the metrics.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use prost::bytes::Bytes;
use sqlx::PgPool;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

use super::codec::RawCodec;
use super::{payload_sealer, OutboxConfig, OutboxError};
use crate::admin::{code_name, Metrics};
use crate::client::ServiceChannel;
use crate::crypto::ServiceSealer;
use crate::keys::KeySource;
use crate::tls::TlsStore;

/// Metrics are read from the database at most this often, and at least this often when idle.
const METRICS_MIN_INTERVAL: Duration = Duration::from_secs(1);
const METRICS_MAX_INTERVAL: Duration = Duration::from_secs(5);
/// Delivered rows past their retention are deleted this often.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);
/// Longest `last_error` kept (a status message; ids only by convention).
const MAX_ERROR_LEN: usize = 300;
/// Deliveries in progress at once per relay: each may take a pool connection to record its
/// outcome, and the pool is the service's, shared with its RPCs.
const MAX_CONCURRENT_DELIVERIES: usize = 4;

/// The relay's metric families (label `target`; deliveries also `result`).
pub const METRICS: [(&str, crate::admin::MetricKind, &str); 4] = [
    (
        "carehub_outbox_pending",
        crate::admin::MetricKind::Gauge,
        "Outbox rows waiting for delivery, by target.",
    ),
    (
        "carehub_outbox_oldest_pending_age_seconds",
        crate::admin::MetricKind::Gauge,
        "Age of the oldest pending outbox row, by target (0 when none).",
    ),
    (
        "carehub_outbox_dead_letters",
        crate::admin::MetricKind::Gauge,
        "Outbox rows that exhausted their attempts, by target.",
    ),
    (
        "carehub_outbox_deliveries_total",
        crate::admin::MetricKind::Counter,
        "Outbox delivery attempts, by target and result (ok, failed).",
    ),
];

/// Delivers the outbox of one service database; run one in every replica ([`Relay::spawn`]).
pub struct Relay {
    pool: PgPool,
    sealer: ServiceSealer,
    cfg: OutboxConfig,
    /// A lazily connected mTLS channel per configured target.
    channels: HashMap<String, ServiceChannel>,
    targets: Vec<String>,
    metrics: Arc<Metrics>,
    /// Targets whose gauges were set, so that a target with no row left reads 0, not stale.
    seen: Mutex<BTreeSet<String>>,
}

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    pub claimed: usize,
    pub delivered: usize,
    pub failed: usize,
    pub dead_lettered: usize,
    /// Claimed but left alone: too little of the lease was left to start a delivery, or
    /// another relay took the row over after our lease ended.
    pub skipped: usize,
}

type ClaimedRow = (
    Uuid,
    String,
    String,
    Vec<u8>,
    Option<String>,
    Option<String>,
    i32,
);

struct Claimed {
    id: Uuid,
    target: String,
    method: String,
    payload: Vec<u8>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    attempts: i32,
}

enum Outcome {
    Delivered,
    Failed,
    Dead,
    /// Not ours any more, or too close to it: another relay took the row over after our lease
    /// ended (its outcome is not ours to record), or the lease had too little left to start.
    LeaseLost,
}

impl Relay {
    /// A relay over `pool` delivering to the targets of `cfg` with the workload certificate of
    /// `tls`; payloads open with `keys`; gauges and counters go to `metrics`.
    pub fn new(
        pool: PgPool,
        keys: Arc<dyn KeySource>,
        tls: &Arc<TlsStore>,
        cfg: &OutboxConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut channels = HashMap::new();
        for (name, target) in &cfg.targets {
            let channel = crate::client::connect_lazy(&target.endpoint, tls, &target.server_name)
                .map_err(|e| anyhow::anyhow!("server.outbox.targets.{name}: {e:#}"))?;
            channels.insert(name.clone(), channel);
        }
        // Declared now: a service whose release configures no target still names them.
        for (name, kind, help) in METRICS {
            metrics.describe(name, kind, help);
        }
        Ok(Relay {
            pool,
            sealer: payload_sealer(keys),
            targets: channels.keys().cloned().collect(),
            channels,
            cfg: cfg.clone(),
            metrics,
            seen: Mutex::new(BTreeSet::new()),
        })
    }

    /// Runs the relay on its own task until the task is aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        let relay = Arc::new(self);
        tokio::spawn(async move { relay.run(None).await })
    }

    /// Runs the relay on its own task for as long as `owner` (the service's state) lives, so
    /// that a stopped service leaves no relay behind.
    pub fn spawn_while<T: Send + Sync + 'static>(
        self,
        owner: &Arc<T>,
    ) -> tokio::task::JoinHandle<()> {
        let relay = Arc::new(self);
        let owner = Arc::downgrade(owner);
        tokio::spawn(async move {
            let alive = move || owner.strong_count() > 0;
            relay.run(Some(Box::new(alive))).await
        })
    }

    /// Runs the relay on its own task until its server begins to drain (the kit starts one
    /// per service this way): rows it had claimed are taken over by another replica when their
    /// lease ends.
    pub fn spawn_while_serving(
        self,
        health: tokio::sync::watch::Receiver<crate::lifecycle::Health>,
    ) -> tokio::task::JoinHandle<()> {
        let relay = Arc::new(self);
        tokio::spawn(async move {
            let alive = move || health.borrow().phase != crate::lifecycle::Phase::Draining;
            relay.run(Some(Box::new(alive))).await
        })
    }

    async fn run(&self, alive: Option<Box<dyn Fn() -> bool + Send + Sync>>) {
        let poll = Duration::from_millis(self.cfg.poll_interval_ms.max(1));
        let mut metrics_at: Option<Instant> = None;
        let mut purge_at: Option<Instant> = None;
        loop {
            if alive.as_ref().is_some_and(|alive| !alive()) {
                return;
            }
            let round = self.run_round().await;
            let busy = match &round {
                Ok(report) => report.claimed > 0,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay round failed");
                    false
                }
            };
            let since = metrics_at.map(|t| t.elapsed());
            if since
                .is_none_or(|s| s >= METRICS_MAX_INTERVAL || (busy && s >= METRICS_MIN_INTERVAL))
            {
                if let Err(e) = self.refresh_metrics().await {
                    tracing::warn!(error = %e, "outbox metrics not refreshed");
                }
                metrics_at = Some(Instant::now());
            }
            if purge_at.is_none_or(|t| t.elapsed() >= PURGE_INTERVAL) {
                match self.purge_delivered().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(purged = n, "delivered outbox rows purged"),
                    Err(e) => tracing::warn!(error = %e, "purging delivered outbox rows failed"),
                }
                purge_at = Some(Instant::now());
            }
            // A full batch means more may be due: go on at once.
            let full = matches!(&round, Ok(r) if r.claimed >= self.cfg.batch_size as usize);
            if !full {
                tokio::time::sleep(poll).await;
            }
        }
    }

    /// Claims up to `batch_size` due rows of configured targets, delivers them concurrently and
    /// records each outcome.
    pub async fn run_round(&self) -> Result<RoundReport, OutboxError> {
        // A delivery starts only while it can finish (delivery_timeout) inside the lease: a
        // row still queued behind slow ones when that time has passed is left for the next
        // claim, so no other relay can take it up while it is being delivered here. The lease
        // is counted from before the claim was sent, never later than the database began it.
        let timeout = Duration::from_millis(self.cfg.delivery_timeout_ms.max(1));
        let start_by =
            Instant::now() + Duration::from_secs(self.cfg.lease_secs).saturating_sub(timeout);
        let claimed = self.claim().await?;
        let mut report = RoundReport {
            claimed: claimed.len(),
            ..RoundReport::default()
        };
        let outcomes: Vec<Result<Outcome, OutboxError>> = futures::stream::iter(claimed)
            .map(|(token, row)| async move {
                if Instant::now() >= start_by {
                    return Ok(Outcome::LeaseLost);
                }
                let result = self.deliver(&row).await;
                self.record(token, &row, result).await
            })
            .buffer_unordered(MAX_CONCURRENT_DELIVERIES)
            .collect()
            .await;
        for outcome in outcomes {
            match outcome? {
                Outcome::Delivered => report.delivered += 1,
                Outcome::Failed => report.failed += 1,
                Outcome::Dead => {
                    report.failed += 1;
                    report.dead_lettered += 1;
                }
                Outcome::LeaseLost => report.skipped += 1,
            }
        }
        Ok(report)
    }

    async fn claim(&self) -> Result<Vec<(Uuid, Claimed)>, OutboxError> {
        if self.targets.is_empty() {
            return Ok(Vec::new());
        }
        let token = Uuid::new_v4();
        // The lease pushes next_attempt_at past the end of the delivery: until then no other
        // relay sees the row as due. SKIP LOCKED lets concurrent relays claim disjoint rows;
        // a row a concurrent claim just took is re-checked against its new next_attempt_at.
        let rows: Vec<ClaimedRow> = sqlx::query_as(
            "UPDATE carehub_platform.outbox o
             SET lease_token = $1, next_attempt_at = now() + make_interval(secs => $2)
             FROM (SELECT id FROM carehub_platform.outbox
                   WHERE state = 'pending' AND next_attempt_at <= now() AND target = ANY($3)
                   ORDER BY next_attempt_at
                   LIMIT $4
                   FOR UPDATE SKIP LOCKED) due
             WHERE o.id = due.id
             RETURNING o.id, o.target, o.method, o.payload, o.traceparent, o.tracestate,
                       o.attempts",
        )
        .bind(token)
        .bind(self.cfg.lease_secs as f64)
        .bind(&self.targets)
        .bind(i64::from(self.cfg.batch_size))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    token,
                    Claimed {
                        id: r.0,
                        target: r.1,
                        method: r.2,
                        payload: r.3,
                        traceparent: r.4,
                        tracestate: r.5,
                        attempts: r.6,
                    },
                )
            })
            .collect())
    }

    /// Calls the row's method; `Err` carries what `last_error` records.
    async fn deliver(&self, row: &Claimed) -> Result<(), String> {
        let channel = self
            .channels
            .get(&row.target)
            .ok_or_else(|| "no endpoint configured for the target".to_owned())?
            .clone();
        let plain = self
            .sealer
            .open(row.id.as_bytes(), &row.payload)
            .map_err(|e| format!("payload: {e}"))?;
        let span = tracing::info_span!(
            "outbox.deliver",
            otel.kind = "producer",
            outbox.id = %row.id,
            outbox.target = %row.target,
            outbox.attempt = row.attempts + 1,
        );
        let mut carrier = HashMap::new();
        if let Some(tp) = &row.traceparent {
            carrier.insert("traceparent".to_owned(), tp.clone());
        }
        if let Some(ts) = &row.tracestate {
            carrier.insert("tracestate".to_owned(), ts.clone());
        }
        let parent = TraceContextPropagator::new().extract(&carrier);
        // Without the OpenTelemetry layer (telemetry not installed) there is nothing to attach.
        let _ = span.set_parent(parent);
        let timeout = Duration::from_millis(self.cfg.delivery_timeout_ms.max(1));
        let path = http::uri::PathAndQuery::try_from(row.method.as_str())
            .map_err(|_| "the method is not a valid gRPC path".to_owned())?;
        let mut request = tonic::Request::new(Bytes::from(plain));
        let metadata = request.metadata_mut();
        if let Ok(key) = row.id.to_string().parse() {
            metadata.insert(crate::idempotency::HEADER, key);
        }
        // The stored context as sent; when tracing is installed the client span's context
        // (a child of it) replaces it.
        for (name, value) in &carrier {
            if let (Ok(name), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_bytes()),
                value.parse(),
            ) {
                metadata.insert(name, value);
            }
        }
        request.set_timeout(timeout);
        let call = async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready()
                .await
                .map_err(|e| format!("UNAVAILABLE: channel not ready: {e}"))?;
            grpc.unary(request, path, RawCodec)
                .await
                .map(drop)
                .map_err(|s| format!("{}: {}", code_name(s.code()), s.message()))
        };
        match tokio::time::timeout(timeout, call.instrument(span)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "DEADLINE_EXCEEDED: no answer within {} ms",
                timeout.as_millis()
            )),
        }
    }

    /// Marks the row delivered, or schedules its retry (dead-letters it at `max_attempts`), if
    /// our claim still holds it.
    async fn record(
        &self,
        token: Uuid,
        row: &Claimed,
        result: Result<(), String>,
    ) -> Result<Outcome, OutboxError> {
        let target = row.target.as_str();
        match result {
            Ok(()) => {
                let done = sqlx::query(
                    "UPDATE carehub_platform.outbox
                     SET state = 'delivered', delivered_at = now(), attempts = attempts + 1,
                         lease_token = NULL, last_error = NULL
                     WHERE id = $1 AND lease_token = $2",
                )
                .bind(row.id)
                .bind(token)
                .execute(&self.pool)
                .await?
                .rows_affected()
                    == 1;
                self.metrics.inc_counter(
                    "carehub_outbox_deliveries_total",
                    &[("target", target), ("result", "ok")],
                    1.0,
                );
                Ok(if done {
                    Outcome::Delivered
                } else {
                    Outcome::LeaseLost
                })
            }
            Err(error) => {
                let failures = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
                let delay = backoff(&self.cfg, failures);
                let error = truncate(error);
                let state: Option<String> = sqlx::query_scalar(
                    "UPDATE carehub_platform.outbox
                     SET attempts = attempts + 1, last_error = $3, lease_token = NULL,
                         state = CASE WHEN attempts + 1 >= $4 THEN 'dead' ELSE 'pending' END,
                         next_attempt_at = now() + make_interval(secs => $5)
                     WHERE id = $1 AND lease_token = $2
                     RETURNING state",
                )
                .bind(row.id)
                .bind(token)
                .bind(&error)
                .bind(i64::from(self.cfg.max_attempts))
                .bind(delay.as_secs_f64())
                .fetch_optional(&self.pool)
                .await?;
                let dead = state.as_deref() == Some("dead");
                self.metrics.inc_counter(
                    "carehub_outbox_deliveries_total",
                    &[("target", target), ("result", "failed")],
                    1.0,
                );
                if dead {
                    tracing::warn!(
                        outbox.id = %row.id,
                        outbox.target = %target,
                        attempts = failures,
                        error = %error,
                        "outbox row dead-lettered"
                    );
                } else {
                    tracing::info!(
                        outbox.id = %row.id,
                        outbox.target = %target,
                        attempts = failures,
                        retry_in_ms = delay.as_millis() as u64,
                        error = %error,
                        "outbox delivery failed; retrying later"
                    );
                }
                Ok(match state {
                    None => Outcome::LeaseLost,
                    Some(_) if dead => Outcome::Dead,
                    Some(_) => Outcome::Failed,
                })
            }
        }
    }

    /// Reads pending, oldest pending age and dead letters per target into the gauges
    /// `carehub_outbox_pending`, `carehub_outbox_oldest_pending_age_seconds` and
    /// `carehub_outbox_dead_letters`.
    pub async fn refresh_metrics(&self) -> Result<(), OutboxError> {
        let rows: Vec<(String, i64, f64, i64)> = sqlx::query_as(
            "SELECT target,
                    count(*) FILTER (WHERE state = 'pending'),
                    COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)
                                     FILTER (WHERE state = 'pending')), 0)::float8,
                    count(*) FILTER (WHERE state = 'dead')
             FROM carehub_platform.outbox
             WHERE state <> 'delivered'
             GROUP BY target",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut zero: BTreeSet<String> = seen.clone();
        zero.extend(self.targets.iter().cloned());
        for (target, pending, oldest, dead) in &rows {
            zero.remove(target);
            seen.insert(target.clone());
            self.set_gauges(target, *pending as f64, *oldest, *dead as f64);
        }
        for target in zero {
            self.set_gauges(&target, 0.0, 0.0, 0.0);
        }
        Ok(())
    }

    fn set_gauges(&self, target: &str, pending: f64, oldest: f64, dead: f64) {
        let labels = [("target", target)];
        self.metrics
            .set_gauge("carehub_outbox_pending", &labels, pending);
        self.metrics
            .set_gauge("carehub_outbox_oldest_pending_age_seconds", &labels, oldest);
        self.metrics
            .set_gauge("carehub_outbox_dead_letters", &labels, dead);
    }

    /// Deletes delivered rows older than `delivered_retention_secs`.
    pub async fn purge_delivered(&self) -> Result<u64, OutboxError> {
        Ok(sqlx::query(
            "DELETE FROM carehub_platform.outbox
             WHERE state = 'delivered' AND delivered_at < now() - make_interval(secs => $1)",
        )
        .bind(self.cfg.delivered_retention_secs as f64)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

/// The delay before retry number `failures` (1 after the first failure): the exponential
/// `backoff_base_ms · 2^(failures-1)`, capped at `backoff_max_secs`, of which a random half is
/// kept ("equal jitter"): relays that failed together do not retry together, and the delay
/// still grows with every failure.
pub fn backoff(cfg: &OutboxConfig, failures: u32) -> Duration {
    let cap_ms = cfg.backoff_max_secs.saturating_mul(1000).max(1);
    let exp = cfg
        .backoff_base_ms
        .max(1)
        .saturating_mul(1u64 << failures.saturating_sub(1).min(40))
        .min(cap_ms);
    let half = exp / 2;
    let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0..=exp - half);
    Duration::from_millis(half + jitter)
}

fn truncate(mut error: String) -> String {
    if error.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_relay_names_its_metrics_before_any_row_or_target() {
        #![allow(clippy::unwrap_used)]
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let pki = crate::devcerts::DevPki::new("carehub.test").unwrap();
        let issued = pki.issue("identity").unwrap();
        let tls = TlsStore::from_pem(
            &issued.cert_pem,
            &issued.key_pem,
            &pki.ca_pem,
            "carehub.test",
        )
        .unwrap();
        let metrics = Metrics::new("identity");
        let keys: Arc<dyn KeySource> = Arc::new(crate::keys::StaticKeys::generate());
        let _relay =
            Relay::new(pool, keys, &tls, &OutboxConfig::default(), metrics.clone()).unwrap();
        let text = metrics.render();
        for (name, kind, _) in METRICS {
            let kind = match kind {
                crate::admin::MetricKind::Gauge => "gauge",
                crate::admin::MetricKind::Counter => "counter",
            };
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} in {text}"
            );
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_stays_under_the_cap() {
        let cfg = OutboxConfig {
            backoff_base_ms: 1000,
            backoff_max_secs: 60,
            ..OutboxConfig::default()
        };
        for failures in 1..=50 {
            let d = backoff(&cfg, failures).as_millis() as u64;
            let exp = (1000u64 << (failures - 1).min(40)).min(60_000);
            assert!(
                d >= exp / 2 && d <= exp,
                "{failures}: {d} not in {}..={exp}",
                exp / 2
            );
        }
        let spread: BTreeSet<u128> = (0..20).map(|_| backoff(&cfg, 5).as_millis()).collect();
        assert!(spread.len() > 1, "no jitter: {spread:?}");
    }

    #[test]
    fn errors_are_truncated_on_a_char_boundary() {
        let long = "é".repeat(400);
        let t = truncate(long);
        assert!(t.len() <= MAX_ERROR_LEN);
        assert!(t.chars().all(|c| c == 'é'));
    }
}
