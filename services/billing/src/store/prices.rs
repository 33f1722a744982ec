//! The price list.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PriceRow {
    pub price_code: String,
    pub currency: String,
    pub amount_minor: i64,
    pub description: String,
    pub late_cancellation_fee_minor: i64,
    pub no_show_fee_minor: i64,
    pub update_time: DateTime<Utc>,
}

const PRICE: &str = "SELECT price_code, currency, amount_minor, description, late_cancellation_fee_minor, no_show_fee_minor, update_time FROM prices";

pub async fn upsert(conn: &mut PgConnection, p: &PriceRow) -> sqlx::Result<PriceRow> {
    sqlx::query_as(
        "INSERT INTO prices (price_code, currency, amount_minor, description, late_cancellation_fee_minor, no_show_fee_minor)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (price_code, currency) DO UPDATE SET amount_minor = EXCLUDED.amount_minor,
             description = EXCLUDED.description,
             late_cancellation_fee_minor = EXCLUDED.late_cancellation_fee_minor,
             no_show_fee_minor = EXCLUDED.no_show_fee_minor, update_time = now()
         RETURNING price_code, currency, amount_minor, description, late_cancellation_fee_minor, no_show_fee_minor, update_time",
    )
    .bind(&p.price_code)
    .bind(&p.currency)
    .bind(p.amount_minor)
    .bind(&p.description)
    .bind(p.late_cancellation_fee_minor)
    .bind(p.no_show_fee_minor)
    .fetch_one(conn)
    .await
}

pub async fn get(
    conn: &mut PgConnection,
    code: &str,
    currency: &str,
) -> sqlx::Result<Option<PriceRow>> {
    sqlx::query_as(&format!("{PRICE} WHERE price_code = $1 AND currency = $2"))
        .bind(code)
        .bind(currency)
        .fetch_optional(conn)
        .await
}

/// A page of the list in (code, currency) order, from `offset`.
pub async fn list(conn: &mut PgConnection, offset: i64, limit: i64) -> sqlx::Result<Vec<PriceRow>> {
    sqlx::query_as(&format!(
        "{PRICE} ORDER BY price_code, currency OFFSET $1 LIMIT $2"
    ))
    .bind(offset)
    .bind(limit)
    .fetch_all(conn)
    .await
}
