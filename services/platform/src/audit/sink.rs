//! Where audit events go besides the table: an event on the current trace span (so SREs see it
//! in the trace of the RPC that caused it), and an optional JSON-lines sink (stdout or a file)
//! for shipping to a SIEM.
//!
//! The sink tails the table instead of writing from the request path: only committed events
//! reach it (a rolled-back change must not show up in the SIEM), in sequence order, at least
//! once (a line may repeat after a crash; `event_id` and `seq` dedupe). Replicas of one service
//! share the cursor row, locked `FOR UPDATE SKIP LOCKED`, so one of them ships at a time.

use std::io::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use sqlx::PgPool;

pub use crate::config::SinkKind;

use super::chain::{self, AuditError};
use super::checkpoint::Checkpoint;
use super::event::{to_hex, AuditEvent, ChainedEvent};

/// Lines shipped per pass.
const BATCH: i64 = 500;

/// A JSON-lines destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    File(PathBuf),
}

impl Sink {
    /// The cursor name, distinct per destination.
    fn cursor(&self) -> String {
        match self {
            Sink::Stdout => "stdout".to_owned(),
            Sink::File(path) => format!("file:{}", path.display()),
        }
    }

    async fn write(&self, bytes: Vec<u8>) -> std::io::Result<()> {
        let sink = self.clone();
        tokio::task::spawn_blocking(move || match sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&bytes)?;
                out.flush()
            }
            Sink::File(path) => {
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                file.write_all(&bytes)?;
                file.sync_data()
            }
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// One sink line.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line<'a> {
    AuditEvent {
        service: &'a str,
        #[serde(flatten)]
        event: &'a ChainedEvent,
    },
    AuditCheckpoint {
        service: &'a str,
        #[serde(flatten)]
        checkpoint: &'a Checkpoint,
    },
}

/// The checkpoints of `service` among JSON lines shipped by a sink (or any copy of them): lines
/// of other types or services are skipped; a line that is not JSON, or an `audit_checkpoint`
/// line that does not parse, is an error naming its line number (a damaged copy must not pass
/// for an empty one).
pub fn read_checkpoints(text: &str, service: &str) -> Result<Vec<Checkpoint>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", n + 1))?;
        if value.get("type").and_then(|t| t.as_str()) != Some("audit_checkpoint")
            || value.get("service").and_then(|s| s.as_str()) != Some(service)
        {
            continue;
        }
        let cp: Checkpoint = serde_json::from_value(value)
            .map_err(|e| format!("line {}: not a checkpoint: {e}", n + 1))?;
        out.push(cp);
    }
    Ok(out)
}

/// Puts the event on the current span (an OpenTelemetry span event named `audit.event`).
/// The event's place in the chain is not known yet (the sequencer gives it after the commit):
/// the trace and the chain meet at `audit.event_id`.
pub(crate) fn emit_on_span(ev: &AuditEvent) {
    tracing::event!(
        target: "carehub::audit",
        tracing::Level::INFO,
        audit.event_id = %ev.event_id,
        audit.kind = %ev.kind,
        audit.action = ev.action.as_str(),
        audit.outcome = ev.outcome.as_str(),
        audit.purpose = ev.purpose.as_str(),
        audit.entity_type = %ev.entity_type,
        audit.entity_id = %ev.entity_id,
        audit.subject_id = ev.subject_id.map(|s| s.to_string()),
        audit.actor_user_id = ev.actor_user_id.map(|s| s.to_string()),
        audit.actor_workload = ev.actor_workload.as_deref(),
        "audit.event"
    );
}

/// Logs a new checkpoint (the log is one more copy outside the database).
pub(crate) fn emit_checkpoint(service: &str, cp: &Checkpoint) {
    tracing::event!(
        target: "carehub::audit",
        tracing::Level::INFO,
        audit.service = service,
        audit.checkpoint_seq = cp.seq,
        audit.checkpoint_hash = %to_hex(&cp.hash),
        audit.key_version = cp.key_version,
        audit.signature = %to_hex(&cp.signature),
        "audit.checkpoint"
    );
}

async fn claim(tx: &mut sqlx::PgConnection, cursor: &str) -> Result<Option<i64>, AuditError> {
    sqlx::query(
        "INSERT INTO carehub_platform.audit_sink_cursor (sink, seq) VALUES ($1, 0) ON CONFLICT DO NOTHING",
    )
    .bind(cursor)
    .execute(&mut *tx)
    .await?;
    Ok(sqlx::query_scalar(
        "SELECT seq FROM carehub_platform.audit_sink_cursor WHERE sink = $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(cursor)
    .fetch_optional(&mut *tx)
    .await?)
}

async fn advance(tx: &mut sqlx::PgConnection, cursor: &str, seq: i64) -> Result<(), AuditError> {
    sqlx::query("UPDATE carehub_platform.audit_sink_cursor SET seq = $2 WHERE sink = $1")
        .bind(cursor)
        .bind(seq)
        .execute(tx)
        .await?;
    Ok(())
}

/// Ships committed events (and checkpoints) not yet shipped to `sink`; returns how many lines
/// were written. Returns 0 while another replica holds the cursor.
pub async fn ship_once(pool: &PgPool, service: &str, sink: &Sink) -> Result<u64, AuditError> {
    let mut written = 0;
    let cursor = sink.cursor();
    let mut tx = pool.begin().await?;
    if let Some(from) = claim(&mut tx, &cursor).await? {
        let sql = format!(
            "SELECT {} FROM carehub_platform.audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
            chain::COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(from)
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await?;
        let mut buf = Vec::new();
        let mut last = from;
        for row in &rows {
            let event = chain::from_row(row)?;
            serde_json::to_writer(
                &mut buf,
                &Line::AuditEvent {
                    service,
                    event: &event,
                },
            )
            .map_err(std::io::Error::other)?;
            buf.push(b'\n');
            last = event.seq;
        }
        if !rows.is_empty() {
            sink.write(buf).await?;
            advance(&mut tx, &cursor, last).await?;
            written += rows.len() as u64;
        }
    }
    tx.commit().await?;

    let cursor = format!("{}#checkpoints", sink.cursor());
    let mut tx = pool.begin().await?;
    if let Some(from) = claim(&mut tx, &cursor).await? {
        let cps = super::checkpoint::since(&mut tx, from + 1).await?;
        let mut buf = Vec::new();
        for cp in &cps {
            serde_json::to_writer(
                &mut buf,
                &Line::AuditCheckpoint {
                    service,
                    checkpoint: cp,
                },
            )
            .map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        if let Some(last) = cps.last() {
            sink.write(buf).await?;
            advance(&mut tx, &cursor, last.seq).await?;
            written += cps.len() as u64;
        }
    }
    tx.commit().await?;
    Ok(written)
}
