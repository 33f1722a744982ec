//! The audit trail (DESIGN.md §4): complete, durable, tamper-evident, linked to traces.
//!
//! - [`AuditEvent`] — FHIR AuditEvent-shaped: when, who (user, role, session, workload), what
//!   ([`Action`] on an entity type and id), whose data (subject), why ([`Purpose`]), how it ended
//!   ([`Outcome`]), from where (gateway-forwarded IP and user agent), trace and span id. Ids and
//!   codes only, never PHI values.
//! - [`record`] queues it in the service's `carehub_platform.audit_queue` **in the caller's
//!   transaction**: rolled back with the change, committed with it, and no lock shared with
//!   other writers. Reads use [`crate::call::Call::read`] (group commit) or [`record_read`]
//!   right after they succeed.
//! - [`sequencer`] — one active per database: moves committed queued events, in batches, into
//!   `carehub_platform.audit_events`, where each row has a gap-free sequence number and
//!   `hash = SHA-256(canonical event || previous hash)` (see [`chain`]), advancing the head once
//!   per batch. Queue depth and the age of its oldest event are on `/metrics`; `carehub audit
//!   verify` reports events queued longer than `sealing_lag_secs`.
//! - [`seal`] — the client address and user agent are stored sealed under a key of the
//!   service's audit trail (derived from its KEK, version stored with the ciphertext); the chain
//!   hashes the sealed bytes, so it verifies without the key; AuditLog opens them.
//! - [`checkpoint`] — Ed25519-signed checkpoints of the head (key `audit-checkpoint` from
//!   [`crate::keys::KeySource`]), written in the background every `checkpoint_every` rows or
//!   `checkpoint_interval_secs`, so that a truncated tail is detected.
//! - [`verify::verify`] walks the chain and checkpoints and names the first broken row; used by
//!   `carehub audit verify` and the AuditLog RPC.
//! - [`service`] — `carehub.audit.v1.AuditLog`, mounted by [`crate::server::ServiceHost::with_audit`].
//! - [`sink`] — each event is also an `audit.event` on the current span; committed events are
//!   shipped as JSON lines to stdout or a file when `[server.audit] sink` says so.

pub mod chain;
pub mod checkpoint;
pub mod event;
pub mod kind;
pub mod seal;
pub mod sequencer;
pub mod service;
pub mod sink;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

pub use chain::{record, record_all, record_read, record_read_with, record_with, AuditError};
pub use event::{Action, AuditEvent, ChainedEvent, Outcome, Purpose};
pub use kind::{Kind, Vocabulary};
pub use seal::{ClientSealer, SealedClient};
pub use sequencer::{seal_all, QueueState};
pub use sink::{Sink, SinkKind};
pub use verify::{verify, verify_with, Problem, ProblemKind, VerifyRange, VerifyReport};

pub use crate::config::AuditConfig;
use crate::keys::KeySource;

/// The configured sink's destination lives here, beside the sink: configuration is a leaf.
impl AuditConfig {
    /// The configured sink, if any.
    pub fn sink(&self) -> Option<Sink> {
        match (self.sink, &self.sink_file) {
            (SinkKind::Stdout, _) => Some(Sink::Stdout),
            (SinkKind::File, Some(path)) => Some(Sink::File(path.clone())),
            _ => None,
        }
    }
}

/// The audit trail of one running service: the AuditLog API, the sequencer and the background
/// checkpointer and sink shipper.
#[derive(Clone)]
pub struct AuditHost {
    pub service: &'static str,
    pub pool: PgPool,
    pub keys: Arc<dyn KeySource>,
    pub config: AuditConfig,
    /// One sealer for the whole service (calls and AuditLog pages), so that its cache of
    /// derived keys is shared.
    sealer: Arc<seal::ClientSealer>,
    /// Where the sequencer's gauges and counters go.
    metrics: Option<Arc<crate::admin::Metrics>>,
}

impl std::fmt::Debug for AuditHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditHost")
            .field("service", &self.service)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AuditHost {
    pub fn new(
        service: &'static str,
        pool: PgPool,
        keys: Arc<dyn KeySource>,
        config: AuditConfig,
    ) -> Self {
        Self {
            service,
            pool,
            sealer: Arc::new(seal::ClientSealer::new(service, keys.clone())),
            keys,
            config,
            metrics: None,
        }
    }

    /// Exports the queue gauges and the sealed counter to `metrics`, declared now so that a
    /// scrape names them before the sequencer's first round.
    pub fn with_metrics(mut self, metrics: Arc<crate::admin::Metrics>) -> Self {
        for (name, kind, help) in sequencer::METRICS {
            metrics.describe(name, kind, help);
        }
        self.metrics = Some(metrics);
        self
    }

    /// The sequencer of this replica (one of them is active per database at a time).
    pub fn sequencer(&self) -> sequencer::Sequencer {
        sequencer::Sequencer {
            service: self.service,
            pool: self.pool.clone(),
            batch: self.config.seal_batch,
            interval: Duration::from_millis(self.config.seal_interval_ms.max(1)),
            metrics: self.metrics.clone(),
        }
    }

    /// Seals the client fields of this service's events.
    pub fn sealer(&self) -> Arc<seal::ClientSealer> {
        self.sealer.clone()
    }

    pub fn api(&self) -> service::AuditLogApi {
        service::AuditLogApi {
            pool: self.pool.clone(),
            keys: self.keys.clone(),
            service: self.service,
            sealer: self.sealer.clone(),
        }
    }

    /// One round of background work: a checkpoint when due, then the sink until caught up.
    pub async fn tick(&self) -> Result<(), AuditError> {
        checkpoint::maybe_checkpoint(
            &self.pool,
            self.keys.as_ref(),
            self.service,
            self.config.checkpoint_every,
            chrono::Duration::seconds(
                i64::try_from(self.config.checkpoint_interval_secs).unwrap_or(i64::MAX / 2),
            ),
        )
        .await?;
        if let Some(sink) = self.config.sink() {
            while sink::ship_once(&self.pool, self.service, &sink).await? > 0 {}
        }
        Ok(())
    }

    /// Runs the sequencer, and [`AuditHost::tick`] every `poll_interval_ms`, until aborted.
    /// While the database is unreachable both back off and warn on the 1st, 2nd, 4th, 8th...
    /// failure.
    pub fn spawn_background(&self) -> tokio::task::JoinHandle<()> {
        let host = self.clone();
        let sequencer = self.sequencer();
        let background = async move {
            let poll = Duration::from_millis(host.config.poll_interval_ms.max(10));
            let mut failures: u32 = 0;
            loop {
                let pause = poll
                    .saturating_mul(1u32 << failures.min(16))
                    .min(Duration::from_secs(60).max(poll));
                tokio::time::sleep(pause).await;
                match host.tick().await {
                    Ok(()) => {
                        if failures > 0 {
                            tracing::info!(
                                service = host.service,
                                "audit background work recovered"
                            );
                        }
                        failures = 0;
                    }
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        if failures.is_power_of_two() {
                            tracing::warn!(service = host.service, error = %err, failures, "audit background work failed; retrying");
                        }
                    }
                }
            }
        };
        tokio::spawn(async move {
            tokio::join!(sequencer.run(), background);
        })
    }

    /// At shutdown: seals what is queued, signs the head if anything is unsigned and drains the
    /// sink, so that a cleanly stopped service leaves no unsealed or unsigned tail.
    pub async fn finish(&self) -> Result<(), AuditError> {
        sequencer::seal_all(&self.pool).await?;
        checkpoint::checkpoint_now(&self.pool, self.keys.as_ref(), self.service).await?;
        if let Some(sink) = self.config.sink() {
            while sink::ship_once(&self.pool, self.service, &sink).await? > 0 {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sealing_lag_metrics_are_named_before_the_first_round() {
        #![allow(clippy::unwrap_used)]
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let metrics = crate::admin::Metrics::new("messaging");
        let keys: Arc<dyn KeySource> = Arc::new(crate::keys::StaticKeys::generate());
        let _host = AuditHost::new("messaging", pool, keys, AuditConfig::default())
            .with_metrics(metrics.clone());
        let text = metrics.render();
        for line in [
            "# TYPE carehub_audit_sealed_total counter\n",
            "# TYPE carehub_audit_queue_depth gauge\n",
            "# TYPE carehub_audit_queue_oldest_age_seconds gauge\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in {text}");
        }
    }

    #[test]
    fn config_problems_are_named() {
        let mut problems = Vec::new();
        AuditConfig::default().validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let cfg = AuditConfig {
            sink: SinkKind::File,
            checkpoint_every: 0,
            ..AuditConfig::default()
        };
        cfg.validate(&mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("server.audit.sink_file"));
        assert!(problems[1].contains("server.audit.checkpoint_every"));
        assert_eq!(cfg.sink(), None);
        let stdout = AuditConfig {
            sink: SinkKind::Stdout,
            ..AuditConfig::default()
        };
        assert_eq!(stdout.sink(), Some(Sink::Stdout));
    }
}
