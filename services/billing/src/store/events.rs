//! Events received from elsewhere, each applied once: scheduling's appointment events and the
//! processor's webhook events.

use sqlx::PgConnection;
use uuid::Uuid;

/// Records an appointment event; false when it was applied before.
pub async fn claim_appointment_event(
    conn: &mut PgConnection,
    event_id: &str,
    appointment: Uuid,
    kind: &str,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "INSERT INTO appointment_events (event_id, appointment_id, kind) VALUES ($1, $2, $3)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(appointment)
    .bind(kind)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Whether a processor event was applied before (a replay or a redelivery).
pub async fn processor_event_seen(conn: &mut PgConnection, event_id: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM processor_events WHERE event_id = $1)")
        .bind(event_id)
        .fetch_one(conn)
        .await
}

/// Records a processor event once it was applied (applying is idempotent, so two deliveries
/// racing both apply and one records).
pub async fn record_processor_event(
    conn: &mut PgConnection,
    event_id: &str,
    kind: &str,
    created: i64,
    outcome: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO processor_events (event_id, kind, created, outcome) VALUES ($1, $2, $3, $4)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(kind)
    .bind(created)
    .bind(outcome)
    .execute(conn)
    .await?;
    Ok(())
}
