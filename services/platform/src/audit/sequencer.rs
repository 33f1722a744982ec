//! The sequencer: moves committed events from `audit_queue` into the hash chain.
//!
//! Writers only append to the queue ([`super::chain::record`]); the shared chain head is
//! touched here alone, once per batch, as in Trillian's sequencer. One batch is one
//! transaction:
//!
//! 1. lock the head row (`audit_chain_head ... FOR UPDATE`): sequencers of one database take
//!    turns here, so two of them can never fork the chain; the background loop asks with
//!    `SKIP LOCKED` and stands by while another replica's sequencer holds it;
//! 2. take the oldest queued rows (at most `batch`) that are committed — a transaction still
//!    open is invisible and is simply taken by a later batch, so nothing is skipped;
//! 3. give them the next sequence numbers, chain their hashes (computed here, in Rust, by the
//!    same code the verifier uses), move them into `audit_events` and off the queue with one
//!    statement, and advance the head once.
//!
//! A sequencer that dies mid-batch leaves nothing behind (its transaction rolls back) and the
//! next batch takes the same rows. An event id already in the chain (queued twice by a retried
//! writer) is dropped from the queue instead of sealed again: each event is sealed exactly once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::chain::{self, AuditError};
use crate::admin::Metrics;

/// Most events one batch seals (Trillian's default batch).
pub const DEFAULT_BATCH: u32 = 1000;

/// What one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sealed {
    /// Events given a place in the chain.
    pub events: u64,
    /// Queued rows dropped because their event id was already sealed (or twice in the batch).
    pub duplicates: u64,
    /// The chain head after the batch.
    pub head_seq: i64,
}

/// How a batch waits for the chain head when another sequencer holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Wait for it (tests, shutdown, `carehub audit seal`).
    Wait,
    /// Give up at once: another sequencer is active (the background loop).
    SkipIfBusy,
}

/// Seals one batch in the caller's transaction. `None`: another sequencer holds the head
/// (only with [`Turn::SkipIfBusy`]). Nothing is final until the caller commits.
pub async fn seal_batch_in(
    conn: &mut PgConnection,
    batch: u32,
    turn: Turn,
) -> Result<Option<Sealed>, AuditError> {
    let lock = match turn {
        Turn::Wait => {
            "SELECT seq, hash FROM carehub_platform.audit_chain_head WHERE one FOR UPDATE"
        }
        Turn::SkipIfBusy => {
            "SELECT seq, hash FROM carehub_platform.audit_chain_head WHERE one \
             FOR UPDATE SKIP LOCKED"
        }
    };
    let Some((head_seq, head_hash)) = sqlx::query_as::<_, (i64, Vec<u8>)>(lock)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let sql = format!(
        "SELECT id, {} FROM carehub_platform.audit_queue ORDER BY id LIMIT $1",
        chain::EVENT_COLUMNS
    );
    let rows = sqlx::query(&sql)
        .bind(i64::from(batch.max(1)))
        .fetch_all(&mut *conn)
        .await?;
    if rows.is_empty() {
        return Ok(Some(Sealed {
            head_seq,
            ..Sealed::default()
        }));
    }
    let mut queued = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.try_get("id")?;
        let (event, client) = chain::event_from_row(row, id)?;
        queued.push((id, event, client));
    }
    let ids: Vec<Uuid> = queued.iter().map(|(_, e, _)| e.event_id).collect();
    let mut seen: HashSet<Uuid> = sqlx::query_scalar(
        "SELECT event_id FROM carehub_platform.audit_events WHERE event_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();

    let mut seq = head_seq;
    let mut prev = head_hash;
    let (mut move_ids, mut seqs, mut prevs, mut hashes) = (vec![], vec![], vec![], vec![]);
    let mut dropped = Vec::new();
    for (id, event, client) in &queued {
        if !seen.insert(event.event_id) {
            dropped.push(*id);
            continue;
        }
        seq += 1;
        let hash = chain::event_hash(seq, event, client, &prev);
        move_ids.push(*id);
        seqs.push(seq);
        prevs.push(std::mem::replace(&mut prev, hash.clone()));
        hashes.push(hash);
    }
    if !dropped.is_empty() {
        sqlx::query("DELETE FROM carehub_platform.audit_queue WHERE id = ANY($1)")
            .bind(&dropped)
            .execute(&mut *conn)
            .await?;
        tracing::warn!(
            rows = dropped.len(),
            "audit queue held events already sealed; dropped the repeats"
        );
    }
    if !move_ids.is_empty() {
        // Postgres copies the event columns from the queue rows it deletes: only the links
        // travel. Queue rows are never updated, so they are the bytes hashed above.
        let sql = format!(
            "WITH links AS (
                SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[])
                    AS l(id, seq, prev_hash, hash)
             ), moved AS (
                DELETE FROM carehub_platform.audit_queue q USING links l WHERE q.id = l.id
                RETURNING l.seq, l.prev_hash, l.hash, {cols}
             )
             INSERT INTO carehub_platform.audit_events (seq, prev_hash, hash, {cols})
             SELECT seq, prev_hash, hash, {cols} FROM moved",
            cols = chain::EVENT_COLUMNS
        );
        let moved = sqlx::query(&sql)
            .bind(&move_ids)
            .bind(&seqs)
            .bind(&prevs)
            .bind(&hashes)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if moved != move_ids.len() as u64 {
            return Err(AuditError::Corrupt {
                seq: head_seq + 1,
                reason: format!(
                    "{} queued events were taken but {moved} moved: the queue changed under the sequencer",
                    move_ids.len()
                ),
            });
        }
        sqlx::query("UPDATE carehub_platform.audit_chain_head SET seq = $1, hash = $2 WHERE one")
            .bind(seq)
            .bind(&prev)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Some(Sealed {
        events: move_ids.len() as u64,
        duplicates: dropped.len() as u64,
        head_seq: seq,
    }))
}

/// One batch in a transaction of its own.
pub async fn seal_batch(
    pool: &PgPool,
    batch: u32,
    turn: Turn,
) -> Result<Option<Sealed>, AuditError> {
    let mut tx = pool.begin().await?;
    let sealed = seal_batch_in(&mut tx, batch, turn).await?;
    tx.commit().await?;
    Ok(sealed)
}

/// Seals everything committed to the queue so far, waiting for other sequencers' turns.
/// Returns how many events it sealed itself.
pub async fn seal_all(pool: &PgPool) -> Result<u64, AuditError> {
    let mut total = 0;
    loop {
        let sealed = seal_batch(pool, DEFAULT_BATCH, Turn::Wait)
            .await?
            .unwrap_or_default();
        total += sealed.events;
        if sealed.events + sealed.duplicates < u64::from(DEFAULT_BATCH) {
            return Ok(total);
        }
    }
}

/// The queue as the sequencer sees it: committed events waiting, and how long the oldest has.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct QueueState {
    pub depth: i64,
    /// Seconds since the oldest queued event was queued (0 when the queue is empty).
    pub oldest_age_secs: f64,
}

pub async fn queue_state(pool: &PgPool) -> Result<QueueState, AuditError> {
    let (depth, age): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM clock_timestamp() - min(queued_at))::float8
           FROM carehub_platform.audit_queue",
    )
    .fetch_one(pool)
    .await?;
    Ok(QueueState {
        depth,
        oldest_age_secs: age.unwrap_or(0.0).max(0.0),
    })
}

/// The sealing lag `carehub audit verify` reports: the queue, and how many of its events have
/// waited longer than the bound (`[server.audit] sealing_lag_secs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct SealingLag {
    pub queued: i64,
    pub oldest_age_secs: f64,
    pub bound_secs: f64,
    /// Queued events older than the bound: the sequencer is behind, or not running.
    pub older_than_bound: i64,
}

pub async fn sealing_lag(pool: &PgPool, bound: Duration) -> Result<SealingLag, AuditError> {
    let (queued, age, older_than_bound): (i64, Option<f64>, i64) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM clock_timestamp() - min(queued_at))::float8,
                count(*) FILTER (WHERE queued_at < clock_timestamp() - make_interval(secs => $1))
           FROM carehub_platform.audit_queue",
    )
    .bind(bound.as_secs_f64())
    .fetch_one(pool)
    .await?;
    Ok(SealingLag {
        queued,
        oldest_age_secs: age.unwrap_or(0.0).max(0.0),
        bound_secs: bound.as_secs_f64(),
        older_than_bound,
    })
}

/// The background sequencer of one service replica.
pub struct Sequencer {
    pub service: &'static str,
    pub pool: PgPool,
    pub batch: u32,
    /// Pause after a batch that emptied the queue (or found the head busy).
    pub interval: Duration,
    pub metrics: Option<Arc<Metrics>>,
}

/// How long the background sequencer waits before its next round, after `outcome`: a batch
/// (`Some`), the head busy with another replica's sequencer (`None`), or the `n`th failure in
/// a row (`Err(n)`). None after a full batch (more is waiting), the interval after a partial
/// one, four intervals while another sequencer is active, and a doubling back-off up to 5 s
/// while the database fails.
fn pause_after(outcome: Result<Option<Sealed>, u32>, batch: u32, interval: Duration) -> Duration {
    match outcome {
        Ok(Some(s)) if s.events + s.duplicates >= u64::from(batch) => Duration::ZERO,
        Ok(Some(_)) => interval,
        Ok(None) => interval.saturating_mul(4),
        Err(failures) => interval
            .saturating_mul(1u32 << failures.min(8))
            .min(Duration::from_secs(5)),
    }
}

/// The sequencer's metric families: events sealed, and the sealing lag (queue depth and the
/// age of its oldest event).
pub const METRICS: [(&str, crate::admin::MetricKind, &str); 3] = [
    (
        "carehub_audit_sealed_total",
        crate::admin::MetricKind::Counter,
        "Audit events this replica sealed into the hash chain.",
    ),
    (
        "carehub_audit_queue_depth",
        crate::admin::MetricKind::Gauge,
        "Audit events queued and not yet sealed.",
    ),
    (
        "carehub_audit_queue_oldest_age_seconds",
        crate::admin::MetricKind::Gauge,
        "Age of the oldest queued audit event (0 when the queue is empty).",
    ),
];

/// How often the queue gauges are read.
const METRICS_EVERY: Duration = Duration::from_secs(1);

impl Sequencer {
    /// Seals until aborted. A full batch is followed by the next at once; database errors
    /// back off (up to 5 s) and are logged on the 1st, 2nd, 4th, 8th... failure in a row.
    pub async fn run(self) {
        let mut failures: u32 = 0;
        let mut metrics_at: Option<Instant> = None;
        if let Some(m) = &self.metrics {
            // A series from the start: `increase()` over the counter sees its first events.
            m.inc_counter(METRICS[0].0, &[], 0.0);
        }
        loop {
            let pause = match self.round().await {
                Ok(sealed) => {
                    if failures > 0 {
                        tracing::info!(service = self.service, "audit sequencer recovered");
                    }
                    failures = 0;
                    if let Some(s) = sealed {
                        self.count(s.events);
                    }
                    pause_after(Ok(sealed), self.batch, self.interval)
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    if failures.is_power_of_two() {
                        tracing::warn!(service = self.service, error = %err, failures, "audit sequencer failed; retrying");
                    }
                    pause_after(Err(failures), self.batch, self.interval)
                }
            };
            if metrics_at.is_none_or(|t| t.elapsed() >= METRICS_EVERY) {
                metrics_at = Some(Instant::now());
                self.refresh_metrics().await;
            }
            if pause.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// One batch, unless the queue is empty: an idle replica then costs one index probe per
    /// interval, not a head-row lock (which writes the row's lock to the WAL).
    async fn round(&self) -> Result<Option<Sealed>, AuditError> {
        let queued: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM carehub_platform.audit_queue)")
                .fetch_one(&self.pool)
                .await?;
        if !queued {
            return Ok(Some(Sealed::default()));
        }
        seal_batch(&self.pool, self.batch, Turn::SkipIfBusy).await
    }

    fn count(&self, events: u64) {
        if let (Some(m), true) = (&self.metrics, events > 0) {
            m.inc_counter("carehub_audit_sealed_total", &[], events as f64);
        }
    }

    async fn refresh_metrics(&self) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        match queue_state(&self.pool).await {
            Ok(q) => {
                metrics.set_gauge("carehub_audit_queue_depth", &[], q.depth as f64);
                metrics.set_gauge(
                    "carehub_audit_queue_oldest_age_seconds",
                    &[],
                    q.oldest_age_secs,
                );
            }
            Err(e) => tracing::debug!(error = %e, "audit queue gauges not refreshed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_round_comes_at_once_only_after_a_full_batch() {
        let ms = Duration::from_millis;
        let sealed = |events, duplicates| {
            Ok(Some(Sealed {
                events,
                duplicates,
                head_seq: 0,
            }))
        };
        assert_eq!(pause_after(sealed(10, 0), 10, ms(50)), Duration::ZERO);
        assert_eq!(pause_after(sealed(4, 6), 10, ms(50)), Duration::ZERO);
        assert_eq!(pause_after(sealed(9, 0), 10, ms(50)), ms(50));
        assert_eq!(pause_after(sealed(0, 0), 10, ms(50)), ms(50));
        // Another replica's sequencer holds the head: stand by longer.
        assert_eq!(pause_after(Ok(None), 10, ms(50)), ms(200));
        // Failures back off, doubling, up to 5 s.
        assert_eq!(pause_after(Err(1), 10, ms(50)), ms(100));
        assert_eq!(pause_after(Err(3), 10, ms(50)), ms(400));
        assert_eq!(pause_after(Err(30), 10, ms(50)), Duration::from_secs(5));
    }
}
