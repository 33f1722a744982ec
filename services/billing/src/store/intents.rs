//! What payments and refunds share as intents stored before the processor is called: the
//! lease a call (or the reconciler) holds on a pending one while it talks to the processor.

use sqlx::PgConnection;
use uuid::Uuid;

/// Which intents: the two tables have the same lease columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intents {
    Payments,
    Refunds,
}

impl Intents {
    fn table(self) -> &'static str {
        match self {
            Intents::Payments => "payments",
            Intents::Refunds => "refunds",
        }
    }

    /// Pending intents the processor has answered for are settled by its events, not re-sent:
    /// a refund the processor reported pending has its id.
    fn unanswered(self) -> &'static str {
        match self {
            Intents::Payments => "",
            Intents::Refunds => " AND processor_refund_id IS NULL",
        }
    }
}

/// Takes over a pending intent whose lease ran out (or was given back); false when someone
/// else holds it or it is settled.
pub async fn claim(
    conn: &mut PgConnection,
    kind: Intents,
    id: Uuid,
    lease_secs: u64,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(&format!(
        "UPDATE {} SET locked_until = now() + make_interval(secs => $2)
         WHERE id = $1 AND status = 'pending' AND (locked_until IS NULL OR locked_until < now())",
        kind.table()
    ))
    .bind(id)
    .bind(lease_secs as f64)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Gives the lease back after a call that learnt nothing (a retry may take over at once).
pub async fn release(conn: &mut PgConnection, kind: Intents, id: Uuid) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "UPDATE {} SET locked_until = NULL WHERE id = $1 AND status = 'pending'",
        kind.table()
    ))
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Pending intents nobody holds and the processor has not answered for, oldest first.
pub async fn unsettled(
    conn: &mut PgConnection,
    kind: Intents,
    limit: i64,
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(&format!(
        "SELECT id FROM {} WHERE status = 'pending' AND (locked_until IS NULL OR locked_until < now()){}
         ORDER BY create_time LIMIT $1",
        kind.table(),
        kind.unanswered()
    ))
    .bind(limit)
    .fetch_all(conn)
    .await
}
