//! Processor customers and payment methods. Processor references and card details are sealed
//! under the patient's data key by the handlers; this module stores bytes.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CustomerRow {
    pub patient_id: Uuid,
    pub id: Uuid,
    pub processor: String,
    pub processor_customer_id: Vec<u8>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct MethodRow {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub processor_method_id: Vec<u8>,
    pub card: Vec<u8>,
    pub is_default: bool,
    pub create_time: DateTime<Utc>,
    pub removed_time: Option<DateTime<Utc>>,
}

pub async fn customer(conn: &mut PgConnection, patient: Uuid) -> sqlx::Result<Option<CustomerRow>> {
    sqlx::query_as("SELECT patient_id, id, processor, processor_customer_id FROM customers WHERE patient_id = $1")
        .bind(patient)
        .fetch_optional(conn)
        .await
}

/// Inserts the customer unless the patient has one (a concurrent first card): the stored one
/// wins either way.
pub async fn insert_customer(
    conn: &mut PgConnection,
    c: &CustomerRow,
) -> sqlx::Result<CustomerRow> {
    sqlx::query(
        "INSERT INTO customers (patient_id, id, processor, processor_customer_id)
         VALUES ($1, $2, $3, $4) ON CONFLICT (patient_id) DO NOTHING",
    )
    .bind(c.patient_id)
    .bind(c.id)
    .bind(&c.processor)
    .bind(&c.processor_customer_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as("SELECT patient_id, id, processor, processor_customer_id FROM customers WHERE patient_id = $1")
        .bind(c.patient_id)
        .fetch_one(conn)
        .await
}

const METHOD: &str =
    "SELECT id, patient_id, processor_method_id, card, is_default, create_time, removed_time FROM payment_methods";

pub async fn methods(conn: &mut PgConnection, patient: Uuid) -> sqlx::Result<Vec<MethodRow>> {
    sqlx::query_as(&format!(
        "{METHOD} WHERE patient_id = $1 AND removed_time IS NULL ORDER BY is_default DESC, create_time, id"
    ))
    .bind(patient)
    .fetch_all(conn)
    .await
}

pub async fn method(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<MethodRow>> {
    sqlx::query_as(&format!("{METHOD} WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

pub async fn default_method(
    conn: &mut PgConnection,
    patient: Uuid,
) -> sqlx::Result<Option<MethodRow>> {
    sqlx::query_as(&format!(
        "{METHOD} WHERE patient_id = $1 AND removed_time IS NULL AND is_default"
    ))
    .bind(patient)
    .fetch_optional(conn)
    .await
}

/// Locks the patient's customer row for the rest of the transaction and counts their active
/// methods: what a new method is checked against, so that concurrent adds cannot pass the cap.
pub async fn lock_and_count_methods(conn: &mut PgConnection, patient: Uuid) -> sqlx::Result<i64> {
    sqlx::query("SELECT 1 FROM customers WHERE patient_id = $1 FOR UPDATE")
        .bind(patient)
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar(
        "SELECT count(*) FROM payment_methods WHERE patient_id = $1 AND removed_time IS NULL",
    )
    .bind(patient)
    .fetch_one(conn)
    .await
}

/// Adds a method; it becomes the default when asked or when the patient has none. Takes the
/// customer row's lock so that two first cards cannot both become the default.
pub async fn insert_method(
    conn: &mut PgConnection,
    m: &MethodRow,
    make_default: bool,
) -> sqlx::Result<MethodRow> {
    sqlx::query("SELECT 1 FROM customers WHERE patient_id = $1 FOR UPDATE")
        .bind(m.patient_id)
        .execute(&mut *conn)
        .await?;
    let has_default: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM payment_methods WHERE patient_id = $1 AND is_default AND removed_time IS NULL)",
    )
    .bind(m.patient_id)
    .fetch_one(&mut *conn)
    .await?;
    let is_default = make_default || !has_default;
    if is_default && has_default {
        sqlx::query(
            "UPDATE payment_methods SET is_default = false WHERE patient_id = $1 AND is_default",
        )
        .bind(m.patient_id)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query_as(
        "INSERT INTO payment_methods (id, patient_id, processor_method_id, card, is_default)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING id, patient_id, processor_method_id, card, is_default, create_time, removed_time",
    )
    .bind(m.id)
    .bind(m.patient_id)
    .bind(&m.processor_method_id)
    .bind(&m.card)
    .bind(is_default)
    .fetch_one(conn)
    .await
}

/// Marks a method removed; the oldest remaining one becomes the default if it was.
pub async fn remove_method(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<MethodRow>> {
    let removed: Option<MethodRow> = sqlx::query_as(
        "UPDATE payment_methods SET removed_time = now(), is_default = false
         WHERE id = $1 AND removed_time IS NULL
         RETURNING id, patient_id, processor_method_id, card, is_default, create_time, removed_time",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(m) = &removed {
        sqlx::query(
            "UPDATE payment_methods SET is_default = true WHERE id = (
                 SELECT id FROM payment_methods WHERE patient_id = $1 AND removed_time IS NULL
                 ORDER BY create_time, id LIMIT 1)
             AND NOT EXISTS (SELECT 1 FROM payment_methods WHERE patient_id = $1 AND is_default AND removed_time IS NULL)",
        )
        .bind(m.patient_id)
        .execute(conn)
        .await?;
    }
    Ok(removed)
}
