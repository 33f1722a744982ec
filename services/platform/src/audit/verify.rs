//! Walking the chain: recompute every row's hash, check every link and every sequence number,
//! the chain head and the signed checkpoints, and name the first row where it breaks.
//!
//! What is detected: an edited row (its hash no longer matches its content), a deleted row (a
//! gap in the sequence), a moved or reordered row (its hash covers its sequence number and its
//! predecessor's hash), rows cut off the tail (the head or a signed checkpoint points past the
//! end), a chain rewritten under a signed checkpoint (its row has another hash), a forged
//! checkpoint (bad signature). Someone who can write the database could also delete the
//! checkpoints of a truncated tail; the copies shipped to the sink then tell, given to
//! [`verify_with`] (`carehub audit verify --checkpoints FILE`).

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::chain::{self, AuditError, GENESIS_HASH};
use super::checkpoint::{self, Checkpoint};
use super::event::to_hex;
use crate::keys::KeySource;

const BATCH: i64 = 1000;

/// Where a checkpoint came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    /// `carehub_platform.audit_checkpoints`.
    Stored,
    /// Given by the caller: a copy kept outside the database.
    Shipped,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Stored => "stored",
            Source::Shipped => "shipped",
        }
    }
}

/// Which part of the log to verify.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyRange {
    /// First sequence number (default 1).
    pub from_seq: Option<i64>,
    /// Last sequence number (default: the chain head, which also checks the head and the tail).
    pub to_seq: Option<i64>,
    /// Only rows that occurred at or after this instant (turned into a sequence range).
    pub from_time: Option<DateTime<Utc>>,
    /// Only rows that occurred before this instant.
    pub to_time: Option<DateTime<Utc>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A sequence number is missing: the row was deleted.
    Missing,
    /// The row's content does not hash to its stored hash: edited, or moved to another position.
    Altered,
    /// The row does not link to its predecessor: rows were reordered, replaced or inserted.
    BrokenLink,
    /// Rows at the end were removed (the head or a checkpoint points past the end).
    Truncated,
    /// A row exists beyond the chain head.
    BeyondHead,
    /// A checkpoint's signature is invalid, or made with a key this service does not hold.
    BadCheckpoint,
    /// A checkpoint and the row at its position disagree.
    CheckpointMismatch,
    /// The row cannot be decoded at all.
    Corrupt,
}

/// The first broken link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The audit row (sequence number) where the chain breaks.
    pub seq: i64,
    pub kind: ProblemKind,
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "row {}: {}", self.seq, self.detail)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerifyReport {
    pub service: String,
    /// The sequence range walked (empty when `from_seq > to_seq`).
    pub from_seq: i64,
    pub to_seq: i64,
    pub rows_checked: u64,
    pub checkpoints_checked: u64,
    pub head_seq: i64,
    /// Of `checkpoints_checked`, those given from outside the database.
    pub shipped_checkpoints_checked: u64,
    /// The newest valid checkpoint seen.
    pub last_checkpoint_seq: Option<i64>,
    pub problem: Option<Problem>,
    /// Events still queued for the chain (filled in by `carehub audit verify`): not part of the
    /// chain yet, so not verified, but reported so that a stalled sequencer is seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sealing: Option<super::sequencer::SealingLag>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }
}

async fn resolve_range(
    conn: &mut PgConnection,
    range: &VerifyRange,
    head_seq: i64,
) -> Result<(i64, i64), AuditError> {
    let mut from = range.from_seq.unwrap_or(1).max(1);
    let mut to = range.to_seq.unwrap_or(head_seq);
    if let Some(t) = range.from_time {
        let s: Option<i64> = sqlx::query_scalar(
            "SELECT min(seq) FROM carehub_platform.audit_events WHERE occurred_at >= $1",
        )
        .bind(t)
        .fetch_one(&mut *conn)
        .await?;
        from = from.max(s.unwrap_or(i64::MAX));
    }
    if let Some(t) = range.to_time {
        let s: Option<i64> = sqlx::query_scalar(
            "SELECT max(seq) FROM carehub_platform.audit_events WHERE occurred_at < $1",
        )
        .bind(t)
        .fetch_one(&mut *conn)
        .await?;
        to = to.min(s.unwrap_or(0));
    }
    Ok((from, to))
}

/// Verifies `range` of `service`'s chain in `pool`. An intact log gives a report without a
/// problem; a broken one names the first broken row. Errors are for a log that could not be
/// read at all.
pub async fn verify(
    pool: &PgPool,
    keys: &dyn KeySource,
    service: &str,
    range: &VerifyRange,
) -> Result<VerifyReport, AuditError> {
    verify_with(pool, keys, service, range, &[]).await
}

/// [`verify`], also holding the chain to `shipped`: checkpoints kept outside the database (the
/// sink's JSON lines, or any copy of them, read with [`super::sink::read_checkpoints`]). Someone
/// who can write the database can cut the tail, rewind the head and delete the stored
/// checkpoints, or rewrite rows and re-link the chain; a shipped checkpoint past the end is then
/// [`ProblemKind::Truncated`], one whose row has another hash [`ProblemKind::CheckpointMismatch`],
/// and a forged one [`ProblemKind::BadCheckpoint`].
pub async fn verify_with(
    pool: &PgPool,
    keys: &dyn KeySource,
    service: &str,
    range: &VerifyRange,
    shipped: &[Checkpoint],
) -> Result<VerifyReport, AuditError> {
    // One snapshot for everything read: rows, head and checkpoints committed while the walk runs
    // would otherwise look like rows beyond the head or checkpoints past the end.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let conn: &mut PgConnection = &mut tx;
    let (head_seq, head_hash) = chain::head(conn).await?;
    let (from, to) = resolve_range(conn, range, head_seq).await?;
    // Only an open-ended walk reaches the head, so only then can the tail be judged.
    let to_end = range.to_seq.is_none() && range.to_time.is_none();
    let mut report = VerifyReport {
        service: service.to_owned(),
        from_seq: from,
        to_seq: to,
        rows_checked: 0,
        checkpoints_checked: 0,
        shipped_checkpoints_checked: 0,
        head_seq,
        last_checkpoint_seq: None,
        problem: None,
        sealing: None,
    };
    // The stored checkpoints and the shipped ones, oldest first (stored first at one seq).
    let mut checkpoints: Vec<(Source, Checkpoint)> = checkpoint::since(conn, from)
        .await?
        .into_iter()
        .map(|cp| (Source::Stored, cp))
        .chain(
            shipped
                .iter()
                .filter(|cp| cp.seq >= from)
                .map(|cp| (Source::Shipped, cp.clone())),
        )
        .filter(|(_, cp)| to_end || cp.seq <= to)
        .collect();
    checkpoints.sort_by_key(|(source, cp)| (cp.seq, *source));
    let mut hashes_at: HashMap<i64, Vec<u8>> = checkpoints
        .iter()
        .map(|(_, cp)| (cp.seq, Vec::new()))
        .collect();

    let mut first_problem: Option<Problem> = None;
    let mut prev_hash = if from <= 1 {
        GENESIS_HASH.to_vec()
    } else {
        let prev: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT hash FROM carehub_platform.audit_events WHERE seq = $1")
                .bind(from - 1)
                .fetch_optional(&mut *conn)
                .await?;
        match prev {
            Some(h) => h,
            None => {
                first_problem = Some(Problem {
                    seq: from - 1,
                    kind: ProblemKind::Missing,
                    detail: format!("row {} (the link into the range) is missing", from - 1),
                });
                Vec::new()
            }
        }
    };

    let mut expected = from;
    let mut last_seen: Option<i64> = None;
    'walk: while first_problem.is_none() && expected <= to {
        let sql = format!(
            "SELECT {} FROM carehub_platform.audit_events WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3",
            chain::COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(expected)
            .bind(to)
            .bind(BATCH)
            .fetch_all(&mut *conn)
            .await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let stored = match chain::from_row(row) {
                Ok(r) => r,
                Err(AuditError::Corrupt { seq, reason }) => {
                    first_problem = Some(Problem {
                        seq,
                        kind: ProblemKind::Corrupt,
                        detail: reason,
                    });
                    break 'walk;
                }
                Err(e) => return Err(e),
            };
            let seq = stored.seq;
            let problem = if seq != expected {
                Some(Problem {
                    seq: expected,
                    kind: ProblemKind::Missing,
                    detail: format!("row {expected} is missing (deleted); the next row is {seq}"),
                })
            } else if chain::event_hash(seq, &stored.event, &stored.client, &stored.prev_hash)
                != stored.hash
            {
                Some(Problem {
                    seq,
                    kind: ProblemKind::Altered,
                    detail: format!(
                        "row {seq} (event {}) does not match its hash: edited, or moved from another position",
                        stored.event.event_id
                    ),
                })
            } else if stored.prev_hash != prev_hash {
                Some(Problem {
                    seq,
                    kind: ProblemKind::BrokenLink,
                    detail: format!(
                        "row {seq} does not link to row {}: rows reordered, replaced or inserted",
                        seq - 1
                    ),
                })
            } else {
                None
            };
            if problem.is_some() {
                first_problem = problem;
                break 'walk;
            }
            if let Some(h) = hashes_at.get_mut(&seq) {
                h.clone_from(&stored.hash);
            }
            prev_hash = stored.hash;
            last_seen = Some(seq);
            report.rows_checked += 1;
            expected = seq + 1;
        }
    }

    if first_problem.is_none() && expected <= to {
        first_problem = Some(Problem {
            seq: expected,
            kind: if to_end {
                ProblemKind::Truncated
            } else {
                ProblemKind::Missing
            },
            detail: format!(
                "row {expected} is missing: the log ends at {} but the chain head is at {head_seq}",
                expected - 1
            ),
        });
    }
    if first_problem.is_none() && to_end {
        first_problem = check_head(conn, head_seq, &head_hash, last_seen, &prev_hash).await?;
    }
    if first_problem.is_none() {
        let last_row = last_seen.unwrap_or(from - 1);
        for (source, cp) in &checkpoints {
            report.checkpoints_checked += 1;
            if *source == Source::Shipped {
                report.shipped_checkpoints_checked += 1;
            }
            let source = source.as_str();
            let valid = match checkpoint::signature_valid(keys, service, cp) {
                Ok(v) => v,
                Err(AuditError::Key(e)) => {
                    first_problem = Some(Problem {
                        seq: cp.seq,
                        kind: ProblemKind::BadCheckpoint,
                        detail: format!(
                            "{source} checkpoint at row {} cannot be checked: {e}",
                            cp.seq
                        ),
                    });
                    break;
                }
                Err(e) => return Err(e),
            };
            if !valid {
                first_problem = Some(Problem {
                    seq: cp.seq,
                    kind: ProblemKind::BadCheckpoint,
                    detail: format!(
                        "{source} checkpoint at row {} has an invalid signature",
                        cp.seq
                    ),
                });
                break;
            }
            if cp.seq > last_row {
                first_problem = Some(Problem {
                    seq: last_row + 1,
                    kind: ProblemKind::Truncated,
                    detail: format!(
                        "rows {}..={} were removed: a {source} checkpoint signed at {} covers row {} but the log ends at {last_row}",
                        last_row + 1,
                        cp.seq,
                        cp.signed_at.to_rfc3339(),
                        cp.seq
                    ),
                });
                break;
            }
            if hashes_at.get(&cp.seq).is_some_and(|h| *h != cp.hash) {
                first_problem = Some(Problem {
                    seq: cp.seq,
                    kind: ProblemKind::CheckpointMismatch,
                    detail: format!(
                        "row {} does not have the hash its signed {source} checkpoint names ({}): the chain was rewritten",
                        cp.seq,
                        to_hex(&cp.hash)
                    ),
                });
                break;
            }
            report.last_checkpoint_seq = Some(cp.seq);
        }
    }
    tx.rollback().await?;
    report.problem = first_problem;
    Ok(report)
}

async fn check_head(
    conn: &mut PgConnection,
    head_seq: i64,
    head_hash: &[u8],
    last_seen: Option<i64>,
    last_hash: &[u8],
) -> Result<Option<Problem>, AuditError> {
    let max: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM carehub_platform.audit_events")
        .fetch_one(conn)
        .await?;
    if let Some(max) = max.filter(|m| *m > head_seq) {
        return Ok(Some(Problem {
            seq: head_seq + 1,
            kind: ProblemKind::BeyondHead,
            detail: format!(
                "rows {}..={max} lie beyond the chain head at {head_seq}: inserted",
                head_seq + 1
            ),
        }));
    }
    if last_seen == Some(head_seq) && last_hash != head_hash {
        return Ok(Some(Problem {
            seq: head_seq,
            kind: ProblemKind::BrokenLink,
            detail: format!("row {head_seq} does not have the hash the chain head records"),
        }));
    }
    Ok(None)
}
