//! The transactional outbox (DESIGN.md §1, §4): cross-service effects that commit with the
//! change that causes them and reach the other service even when it is down at the time.
//!
//! - [`Outbox::enqueue`] writes a row in the caller's transaction: the target's name (a key of
//!   `[server.outbox.targets]`), the gRPC method to call, the encoded request sealed under a key
//!   derived from the service's KEK (payloads may carry personal data), and the W3C trace
//!   context of the request being handled. A rolled-back change leaves no row.
//! - The [`Relay`] runs in every replica. It claims due rows with `FOR UPDATE SKIP LOCKED` and a
//!   lease (two relays never hold one row at once; a crashed relay's rows are taken up again
//!   when its lease ends), calls the method through the platform's mTLS client with the row id
//!   as `idempotency-key` and the stored trace context continued, and marks the row delivered
//!   when the target answers OK. A failure is retried with exponential backoff and jitter;
//!   after `max_attempts` failures the row is dead-lettered. It exports
//!   `carehub_outbox_pending`, `carehub_outbox_oldest_pending_age_seconds`,
//!   `carehub_outbox_dead_letters` (per target) and `carehub_outbox_deliveries_total`.
//! - Rows for a target with no configured endpoint stay pending, untouched and counted in the
//!   metrics, until one is configured: events are kept for subscribers that arrive later.
//! - Delivery is at least once: a relay that dies after the target applied a row but before it
//!   recorded the acknowledgement delivers it again. Receivers therefore apply each delivery
//!   through the platform idempotency store ([`crate::idempotency::run`], keyed by the
//!   `idempotency-key` the relay sends, scoped by the calling workload), which answers a repeat
//!   with the first answer.
//! - [`list`] and [`retry`] serve `carehub outbox list|retry`.

mod codec;
mod relay;

use std::collections::HashMap;
use std::sync::Arc;

use carehub_proto::common::v1::ErrorReason;
use chrono::{DateTime, Utc};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use sqlx::{PgConnection, PgPool};
use tonic::{Code, Status};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

pub use crate::config::{OutboxConfig, OutboxTarget};
use crate::crypto::service_seal::{SealError, ServiceSealer};
use crate::errors;
use crate::keys::KeySource;
pub use relay::{backoff, Relay, RoundReport};

/// Label of the key payloads are sealed with (derived from the KEK; see
/// [`crate::crypto::service_seal`]).
const PAYLOAD_LABEL: &[u8] = b"carehub outbox payloads v1";

/// Why a row could not be written or delivered.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox target {0:?} is not a valid name (lowercase letters, digits, '-', '_')")]
    InvalidTarget(String),
    #[error("outbox method {0:?} is not a gRPC path (/package.Service/Method)")]
    InvalidMethod(String),
    #[error("outbox payload: {0}")]
    Seal(#[from] SealError),
    #[error("outbox database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("outbox row {0} is not dead-lettered")]
    NotDead(Uuid),
}

impl From<OutboxError> for Status {
    fn from(e: OutboxError) -> Status {
        tracing::warn!(error = %e, "outbox write failed");
        match &e {
            OutboxError::Seal(s) if s.is_transient() => errors::status(
                Code::Unavailable,
                ErrorReason::Unavailable,
                "keys needed to store the event are unavailable",
            ),
            // Database and sealing details stay in the service's logs.
            _ => errors::internal("writing the outbox event failed"),
        }
    }
}

/// Writes outbox rows for one service; cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbox {
    sealer: ServiceSealer,
}

impl Outbox {
    /// The outbox of the service whose keys are `keys` (its KEK seals the payloads).
    pub fn new(keys: Arc<dyn KeySource>) -> Self {
        Outbox {
            sealer: payload_sealer(keys),
        }
    }

    /// Writes a row in the caller's transaction `tx`: `payload` is delivered to `method`
    /// (`/carehub.common.v1.AccountEvents/ApplyAccountEvent`) of the subscriber configured as
    /// `target` once `tx` commits. The current span's trace context goes with it. Returns the
    /// row's id (the `idempotency-key` of every delivery).
    pub async fn enqueue<M: prost::Message>(
        &self,
        tx: &mut PgConnection,
        target: &str,
        method: &str,
        payload: &M,
    ) -> Result<Uuid, OutboxError> {
        if target.is_empty()
            || target.len() > 63
            || !target
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(OutboxError::InvalidTarget(target.to_owned()));
        }
        if !is_grpc_path(method) {
            return Err(OutboxError::InvalidMethod(method.to_owned()));
        }
        let id = Uuid::now_v7();
        let sealed = self.sealer.seal(id.as_bytes(), &payload.encode_to_vec())?;
        let (traceparent, tracestate) = current_trace_context();
        sqlx::query(
            "INSERT INTO carehub_platform.outbox
                 (id, target, method, payload, traceparent, tracestate)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(target)
        .bind(method)
        .bind(sealed)
        .bind(traceparent)
        .bind(tracestate)
        .execute(&mut *tx)
        .await?;
        Ok(id)
    }
}

fn payload_sealer(keys: Arc<dyn KeySource>) -> ServiceSealer {
    ServiceSealer::new(PAYLOAD_LABEL, keys)
}

/// `/package.Service/Method` with visible ASCII only.
fn is_grpc_path(method: &str) -> bool {
    let Some(rest) = method.strip_prefix('/') else {
        return false;
    };
    let mut parts = rest.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(service), Some(name), None)
            if service.contains('.') && !name.is_empty()
                && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/".contains(&b))
    )
}

/// The current span's W3C `traceparent` and `tracestate` (none outside a traced request).
fn current_trace_context() -> (Option<String>, Option<String>) {
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    let state = carrier.remove("tracestate").filter(|s| !s.is_empty());
    (carrier.remove("traceparent"), state)
}

/// The state of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Delivered,
    Dead,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Delivered => "delivered",
            State::Dead => "dead",
        }
    }

    fn parse(s: &str) -> Option<State> {
        match s {
            "pending" => Some(State::Pending),
            "delivered" => Some(State::Delivered),
            "dead" => Some(State::Dead),
            _ => None,
        }
    }
}

impl std::str::FromStr for State {
    type Err = String;

    fn from_str(s: &str) -> Result<State, String> {
        State::parse(s).ok_or_else(|| format!("expected pending, delivered or dead, not {s:?}"))
    }
}

/// A row as operators see it: never its payload.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Entry {
    pub id: Uuid,
    pub target: String,
    pub method: String,
    pub state: State,
    /// True while a relay holds the row (delivering it now).
    pub in_flight: bool,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

type EntryRow = (
    Uuid,
    String,
    String,
    String,
    bool,
    i32,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// Rows in `state` (all states when `None`), oldest first, at most `limit`.
pub async fn list(
    pool: &PgPool,
    state: Option<State>,
    limit: i64,
) -> Result<Vec<Entry>, OutboxError> {
    let rows: Vec<EntryRow> = sqlx::query_as(
        "SELECT id, target, method, state,
                (lease_token IS NOT NULL AND next_attempt_at > now()),
                attempts, last_error, created_at, next_attempt_at, delivered_at
         FROM carehub_platform.outbox
         WHERE $1::text IS NULL OR state = $1
         ORDER BY created_at, id LIMIT $2",
    )
    .bind(state.map(State::as_str))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(Entry {
                id: r.0,
                target: r.1,
                method: r.2,
                state: State::parse(&r.3)?,
                in_flight: r.4,
                attempts: r.5,
                last_error: r.6,
                created_at: r.7,
                next_attempt_at: r.8,
                delivered_at: r.9,
            })
        })
        .collect())
}

/// Makes dead-lettered rows pending again with a fresh attempt count: row `id`, or every dead
/// row when `None`. Returns the ids revived; a given id that is not dead is an error.
pub async fn retry(pool: &PgPool, id: Option<Uuid>) -> Result<Vec<Uuid>, OutboxError> {
    let revived: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE carehub_platform.outbox
         SET state = 'pending', attempts = 0, next_attempt_at = now(), lease_token = NULL
         WHERE state = 'dead' AND ($1::uuid IS NULL OR id = $1)
         RETURNING id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    match id {
        Some(id) if revived.is_empty() => Err(OutboxError::NotDead(id)),
        _ => Ok(revived),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]
    use super::*;
    use crate::config::{self, PlatformConfig, Validate};

    #[derive(Default, serde::Serialize, serde::Deserialize)]
    #[serde(default)]
    struct TestConfig {
        server: PlatformConfig,
    }

    impl Validate for TestConfig {
        fn validate(&self, problems: &mut Vec<String>) {
            self.server.validate(problems);
        }
    }

    #[test]
    fn no_subscriber_by_default_and_targets_come_from_toml_or_env() {
        assert!(OutboxConfig::default().targets.is_empty());
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[server.database]\nurl = \"postgres://db/x\"\n\
                 [server.outbox.targets.records]\nendpoint = \"https://records:50051\"\n\
                 server_name = \"records\"\n",
            )?;
            jail.set_env(
                "CAREHUB_SERVER__OUTBOX__TARGETS__MESSAGING__ENDPOINT",
                "https://messaging:50051",
            );
            jail.set_env(
                "CAREHUB_SERVER__OUTBOX__TARGETS__MESSAGING__SERVER_NAME",
                "messaging",
            );
            jail.set_env("CAREHUB_SERVER__OUTBOX__MAX_ATTEMPTS", "4");
            let cfg: TestConfig = config::load(Some(std::path::Path::new("c.toml")), &[])
                .map_err(|e| e.to_string())?;
            let outbox = &cfg.server.outbox;
            assert_eq!(outbox.max_attempts, 4);
            assert_eq!(outbox.targets.len(), 2);
            assert_eq!(outbox.targets["records"].endpoint, "https://records:50051");
            assert_eq!(outbox.targets["messaging"].server_name, "messaging");
            Ok(())
        });
    }

    #[test]
    fn a_lease_shorter_than_two_delivery_timeouts_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CAREHUB_SERVER__DATABASE__URL", "postgres://db/x");
            jail.set_env("CAREHUB_SERVER__OUTBOX__LEASE_SECS", "15");
            jail.set_env("CAREHUB_SERVER__OUTBOX__DELIVERY_TIMEOUT_MS", "10000");
            let err = config::load::<TestConfig>(None, &[])
                .err()
                .expect("must fail");
            assert!(
                err.to_string()
                    .contains("server.outbox.lease_secs must be at least twice"),
                "{err}"
            );
            jail.set_env("CAREHUB_SERVER__OUTBOX__LEASE_SECS", "20");
            config::load::<TestConfig>(None, &[]).map_err(|e| e.to_string())?;
            Ok(())
        });
    }

    #[test]
    fn grpc_paths_are_checked() {
        assert!(is_grpc_path(
            "/carehub.common.v1.AccountEvents/ApplyAccountEvent"
        ));
        assert!(!is_grpc_path("carehub.common.v1.AccountEvents/Apply"));
        assert!(!is_grpc_path("/AccountEvents/Apply"));
        assert!(!is_grpc_path("/a.B/"));
        assert!(!is_grpc_path("/a.B/C/D"));
        assert!(!is_grpc_path("/a.B/C D"));
    }
}
