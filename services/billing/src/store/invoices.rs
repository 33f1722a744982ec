//! Invoices, their lines and their numbers.

use chrono::{DateTime, Datelike, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::invoice::Line;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct InvoiceRow {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub appointment_id: Option<Uuid>,
    pub status: String,
    pub number_year: Option<i32>,
    pub number: Option<i64>,
    pub currency: String,
    pub total_minor: i64,
    pub amount_paid_minor: i64,
    pub amount_refunded_minor: i64,
    pub create_time: DateTime<Utc>,
    pub finalize_time: Option<DateTime<Utc>>,
    pub paid_time: Option<DateTime<Utc>>,
    pub void_time: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LineRow {
    pub invoice_id: Uuid,
    pub position: i32,
    pub kind: String,
    pub price_code: String,
    pub description: String,
    pub quantity: i32,
    pub unit_amount_minor: i64,
    pub amount_minor: i64,
}

const INVOICE: &str = "SELECT id, patient_id, appointment_id, status, number_year, number, currency, total_minor, amount_paid_minor, amount_refunded_minor, create_time, finalize_time, paid_time, void_time FROM invoices";

pub async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<InvoiceRow>> {
    sqlx::query_as(&format!("{INVOICE} WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// The invoice, locked for the rest of the transaction.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<InvoiceRow>> {
    sqlx::query_as(&format!("{INVOICE} WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

pub async fn lock_by_appointment(
    conn: &mut PgConnection,
    appointment: Uuid,
) -> sqlx::Result<Option<InvoiceRow>> {
    sqlx::query_as(&format!("{INVOICE} WHERE appointment_id = $1 FOR UPDATE"))
        .bind(appointment)
        .fetch_optional(conn)
        .await
}

pub async fn lines(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<LineRow>> {
    sqlx::query_as(
        "SELECT invoice_id, position, kind, price_code, description, quantity, unit_amount_minor, amount_minor
         FROM invoice_lines WHERE invoice_id = ANY($1) ORDER BY invoice_id, position",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// A new draft (or, with `appointment` None, a draft to finalize at once) with its lines.
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    patient: Uuid,
    appointment: Option<Uuid>,
    currency: &str,
    lines: &[Line],
    total: i64,
) -> sqlx::Result<InvoiceRow> {
    let row: InvoiceRow = sqlx::query_as(
        "INSERT INTO invoices (id, patient_id, appointment_id, status, currency, total_minor)
         VALUES ($1, $2, $3, 'draft', $4, $5)
         RETURNING id, patient_id, appointment_id, status, number_year, number, currency, total_minor, amount_paid_minor, amount_refunded_minor, create_time, finalize_time, paid_time, void_time",
    )
    .bind(id)
    .bind(patient)
    .bind(appointment)
    .bind(currency)
    .bind(total)
    .fetch_one(&mut *conn)
    .await?;
    put_lines(conn, id, lines).await?;
    Ok(row)
}

async fn put_lines(conn: &mut PgConnection, id: Uuid, lines: &[Line]) -> sqlx::Result<()> {
    for (position, l) in lines.iter().enumerate() {
        sqlx::query(
            "INSERT INTO invoice_lines (invoice_id, position, kind, price_code, description, quantity, unit_amount_minor, amount_minor)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(l.kind.as_str())
        .bind(&l.price_code)
        .bind(&l.description)
        .bind(l.quantity)
        .bind(l.unit_amount_minor)
        .bind(l.amount_minor().unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Replaces a draft's lines (a fee instead of the visit).
pub async fn replace_lines(
    conn: &mut PgConnection,
    id: Uuid,
    lines: &[Line],
    total: i64,
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM invoice_lines WHERE invoice_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    put_lines(conn, id, lines).await?;
    sqlx::query("UPDATE invoices SET total_minor = $2 WHERE id = $1")
        .bind(id)
        .bind(total)
        .execute(conn)
        .await?;
    Ok(())
}

/// Numbers a draft and makes it payable (paid at once when it totals nothing). The year's
/// counter row stays locked until the transaction ends, so numbers are gap-free: a rolled-back
/// finalization gives its number back.
pub async fn finalize(
    conn: &mut PgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> sqlx::Result<InvoiceRow> {
    let year = now.year();
    let number: i64 = sqlx::query_scalar(
        "INSERT INTO invoice_numbers (year, last_number) VALUES ($1, 1)
         ON CONFLICT (year) DO UPDATE SET last_number = invoice_numbers.last_number + 1
         RETURNING last_number",
    )
    .bind(year)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query_as(
        "UPDATE invoices SET number_year = $2, number = $3, finalize_time = $4,
             status = CASE WHEN total_minor = 0 THEN 'paid' ELSE 'open' END,
             paid_time = CASE WHEN total_minor = 0 THEN $4 END
         WHERE id = $1 AND status = 'draft'
         RETURNING id, patient_id, appointment_id, status, number_year, number, currency, total_minor, amount_paid_minor, amount_refunded_minor, create_time, finalize_time, paid_time, void_time",
    )
    .bind(id)
    .bind(year)
    .bind(number)
    .bind(now)
    .fetch_one(conn)
    .await
}

pub async fn void(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<InvoiceRow> {
    sqlx::query_as(
        "UPDATE invoices SET status = 'void', void_time = now() WHERE id = $1
         RETURNING id, patient_id, appointment_id, status, number_year, number, currency, total_minor, amount_paid_minor, amount_refunded_minor, create_time, finalize_time, paid_time, void_time",
    )
    .bind(id)
    .fetch_one(conn)
    .await
}

/// Books a capture: paid grows, and an open invoice paid in full becomes paid.
pub async fn add_captured(conn: &mut PgConnection, id: Uuid, captured: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE invoices SET amount_paid_minor = amount_paid_minor + $2,
             status = CASE WHEN status = 'open' AND amount_paid_minor + $2 >= total_minor THEN 'paid' ELSE status END,
             paid_time = CASE WHEN status = 'open' AND amount_paid_minor + $2 >= total_minor THEN now() ELSE paid_time END
         WHERE id = $1",
    )
    .bind(id)
    .bind(captured)
    .execute(conn)
    .await?;
    Ok(())
}

/// Books a refund: paid shrinks, refunded grows; the status stays (a refund is a credit).
pub async fn add_refunded(conn: &mut PgConnection, id: Uuid, amount: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE invoices SET amount_paid_minor = amount_paid_minor - $2,
             amount_refunded_minor = amount_refunded_minor + $2 WHERE id = $1",
    )
    .bind(id)
    .bind(amount)
    .execute(conn)
    .await?;
    Ok(())
}

/// What payments still in flight hold of the invoice.
pub async fn reserved(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT COALESCE(SUM(amount_minor), 0)::bigint FROM payments
         WHERE invoice_id = $1 AND status IN ('pending', 'processing', 'requires_action')",
    )
    .bind(id)
    .fetch_one(conn)
    .await
}

/// Newest first, after the cursor (create_time, id).
pub async fn list(
    conn: &mut PgConnection,
    patient: Option<Uuid>,
    status: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> sqlx::Result<Vec<InvoiceRow>> {
    let (after_time, after_id) = after.unzip();
    sqlx::query_as(&format!(
        "{INVOICE} WHERE ($1::uuid IS NULL OR patient_id = $1) AND ($2::text IS NULL OR status = $2)
           AND ($3::timestamptz IS NULL OR (create_time, id) < ($3, $4))
         ORDER BY create_time DESC, id DESC LIMIT $5"
    ))
    .bind(patient)
    .bind(status)
    .bind(after_time)
    .bind(after_id)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The patient's invoices finalized in [start, end), in `currency`, oldest first (statements).
pub async fn finalized_between(
    conn: &mut PgConnection,
    patient: Uuid,
    currency: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> sqlx::Result<Vec<InvoiceRow>> {
    sqlx::query_as(&format!(
        "{INVOICE} WHERE patient_id = $1 AND currency = $2 AND finalize_time >= $3 AND finalize_time < $4
           AND status <> 'void'
         ORDER BY finalize_time, id"
    ))
    .bind(patient)
    .bind(currency)
    .bind(start)
    .bind(end)
    .fetch_all(conn)
    .await
}

/// The patient's balance before `before`: finalized totals minus captures plus refunds.
pub async fn balance_before(
    conn: &mut PgConnection,
    patient: Uuid,
    currency: &str,
    before: DateTime<Utc>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT (COALESCE((SELECT SUM(total_minor) FROM invoices WHERE patient_id = $1 AND currency = $2
                    AND status <> 'void' AND finalize_time < $3), 0)
               - COALESCE((SELECT SUM(captured_minor) FROM payments WHERE patient_id = $1 AND currency = $2
                    AND status = 'succeeded' AND succeeded_time < $3), 0)
               + COALESCE((SELECT SUM(amount_minor) FROM refunds WHERE patient_id = $1 AND currency = $2
                    AND status = 'succeeded' AND succeeded_time < $3), 0))::bigint",
    )
    .bind(patient)
    .bind(currency)
    .bind(before)
    .fetch_one(conn)
    .await
}

/// Invoices whose paid amount is not captured minus refunded (the ledger invariant).
pub async fn ledger_violations(conn: &mut PgConnection) -> sqlx::Result<Vec<(Uuid, i64, i64)>> {
    sqlx::query_as(
        "SELECT i.id, i.amount_paid_minor,
                (COALESCE(p.captured, 0) - COALESCE(r.refunded, 0))::bigint
         FROM invoices i
         LEFT JOIN (SELECT invoice_id, SUM(captured_minor) AS captured FROM payments GROUP BY invoice_id) p
                ON p.invoice_id = i.id
         LEFT JOIN (SELECT invoice_id, SUM(amount_minor) AS refunded FROM refunds WHERE status = 'succeeded'
                    GROUP BY invoice_id) r ON r.invoice_id = i.id
         WHERE i.amount_paid_minor <> COALESCE(p.captured, 0) - COALESCE(r.refunded, 0)
            OR i.amount_paid_minor > i.total_minor
         ORDER BY i.id",
    )
    .fetch_all(conn)
    .await
}
