//! The audit scenarios (issue 12), against a scratch database with the platform's tables on the
//! PostgreSQL of `--database-url` (the one pgbench measures):
//!
//! - `audit-read`: the echo service of the baseline, each answer waiting for its read event
//!   (group commit, as `Call::read`), a sequencer sealing them: compared with echo itself, the
//!   same read with auditing off.
//! - `audit-write`: a single-row insert and its audit event in one transaction (the event
//!   queued, no shared lock), with the sequencer sealing meanwhile — compared with pgbench's
//!   single-row insert on the same server.
//! - `audit-write-locked`: the same transaction with the append the platform used before the
//!   queue (the chain-head row locked `FOR UPDATE` by every writer until its commit): today's
//!   audited-commit ceiling, measured in the same run.
//!
//! All three talk to PostgreSQL over `--pgbench-clients` connections. The scratch database is
//! verified (the chain must be intact) and dropped at the end.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use carehub_platform::audit::{self, chain, sequencer, Action, AuditEvent, Purpose};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgPool};
use uuid::Uuid;

use super::engine::{Op, OpFuture};

/// A scratch database with the platform schema and a table of rows to insert.
pub struct Scratch {
    admin_url: String,
    name: String,
    pub pool: PgPool,
}

impl Scratch {
    pub async fn create(admin_url: &str, connections: usize) -> anyhow::Result<Scratch> {
        let name = format!("carehub_loadgen_audit_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .context("connecting to --database-url")?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let options: PgConnectOptions = admin_url.parse()?;
        // The services' own pool settings, so that the audited write is measured as they run it.
        let size = u32::try_from(connections.max(2)).unwrap_or(16);
        let pool = carehub_platform::db::pool_options(size, size)
            .connect_with(options.database(&name))
            .await?;
        static NONE: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;
        carehub_platform::db::migrate(&pool, &NONE).await?;
        sqlx::query(
            "CREATE TABLE loadgen_items (id uuid PRIMARY KEY, v integer NOT NULL,
                at timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&pool)
        .await?;
        Ok(Scratch {
            admin_url: admin_url.to_owned(),
            name,
            pool,
        })
    }

    /// Queued events and the age of the oldest, right now.
    pub async fn queue(&self) -> Option<audit::QueueState> {
        sequencer::queue_state(&self.pool).await.ok()
    }

    /// Seals what is left, verifies the chain and drops the database. The chain must be intact:
    /// sealed by racing writers and sequencers, it is the benchmark's own correctness check.
    pub async fn finish(self) -> anyhow::Result<u64> {
        audit::seal_all(&self.pool).await?;
        let report = audit::verify(
            &self.pool,
            &carehub_platform::keys::StaticKeys::generate(),
            "loadgen",
            &audit::VerifyRange::default(),
        )
        .await?;
        self.pool.close().await;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        match report.problem {
            None => Ok(report.rows_checked),
            Some(p) => anyhow::bail!("the benchmark's audit chain is broken: {p}"),
        }
    }
}

/// Runs the background sequencer on the load generator's runtime until the handle is dropped.
pub struct Sealing(tokio::task::JoinHandle<()>);

impl Sealing {
    pub fn start(pool: &PgPool) -> Sealing {
        Sealing(tokio::spawn(
            sequencer::Sequencer {
                service: "loadgen",
                pool: pool.clone(),
                batch: sequencer::DEFAULT_BATCH,
                interval: Duration::from_millis(50),
                metrics: None,
            }
            .run(),
        ))
    }
}

impl Drop for Sealing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn event(id: Uuid) -> AuditEvent {
    let mut e = AuditEvent::new(
        "loadgen.item.create",
        Action::Create,
        Purpose::Operations,
        "item",
        id,
    )
    .subject(id)
    .actor_user(id)
    .actor_role("provider");
    // The locked-head baseline stores none of these; both appends must hash alike.
    (e.request_id, e.trace_id, e.span_id) = (None, None, None);
    e
}

fn unavailable(e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::unavailable(e.to_string())
}

/// How an audited write appends its event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Append {
    /// `audit::record`: one queue row, no shared lock.
    Queued,
    /// The append before the queue: lock the chain head, link, insert, move the head — one
    /// statement, the lock held until commit.
    LockedHead,
}

/// One single-row insert and its audit event, in one transaction.
pub fn write_op(pool: PgPool, append: Append) -> Op {
    let pool = Arc::new(pool);
    Arc::new(move |seq| -> OpFuture {
        let pool = pool.clone();
        Box::pin(async move {
            let id = Uuid::now_v7();
            let mut tx = pool.begin().await.map_err(unavailable)?;
            sqlx::query("INSERT INTO loadgen_items (id, v) VALUES ($1, $2)")
                .bind(id)
                .bind((seq % 1_000_000) as i32)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            let e = event(id);
            match append {
                Append::Queued => audit::record(&mut tx, &e).await.map_err(unavailable)?,
                Append::LockedHead => locked_head_append(&mut tx, &e).await.map_err(unavailable)?,
            }
            tx.commit().await.map_err(unavailable)
        })
    })
}

/// The platform's append before issue 12 (kept here as the baseline it is measured against):
/// the writer locks the head row and holds it until its transaction ends.
async fn locked_head_append(
    conn: &mut sqlx::PgConnection,
    event: &AuditEvent,
) -> Result<(), sqlx::Error> {
    let client = audit::SealedClient::default();
    sqlx::query(
        "WITH head AS (
            SELECT seq + 1 AS seq, hash AS prev
              FROM carehub_platform.audit_chain_head WHERE one FOR UPDATE
         ), new AS (
            SELECT seq, prev, sha256($1 || int8send(seq) || $2 || prev) AS hash FROM head
         ), ins AS (
            INSERT INTO carehub_platform.audit_events (seq, event_id, occurred_at, kind, action,
                outcome, purpose, actor_user_id, actor_role, entity_type, entity_id, subject_id,
                prev_hash, hash)
            SELECT seq, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, prev, hash FROM new
            RETURNING seq, hash
         )
         UPDATE carehub_platform.audit_chain_head h SET seq = ins.seq, hash = ins.hash
           FROM ins WHERE h.one",
    )
    .bind(chain::EVENT_DOMAIN)
    .bind(chain::body_bytes(event, &client))
    .bind(event.event_id)
    .bind(event.occurred_at)
    .bind(&event.kind)
    .bind(event.action.as_str())
    .bind(event.outcome.as_str())
    .bind(event.purpose.as_str())
    .bind(event.actor_user_id)
    .bind(&event.actor_role)
    .bind(&event.entity_type)
    .bind(&event.entity_id)
    .bind(event.subject_id)
    .execute(conn)
    .await?;
    Ok(())
}
