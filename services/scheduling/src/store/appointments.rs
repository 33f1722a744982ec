//! Slot claims, holds and appointments.
//!
//! A claim is what takes a provider's (and a patient's) time; the exclusion constraints of
//! `slot_claims` refuse an overlapping one with SQLSTATE 23P01, which [`crate::error`] turns
//! into SLOT_TAKEN or PATIENT_BUSY. A hold past its expiry keeps its claim until released:
//! every new claim first releases the stale holds it overlaps, in its own transaction.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;

/// The time a claim takes: the visit [start, end) and the buffer after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// `end` plus the visit type's buffer.
    pub blocked_end: DateTime<Utc>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct HoldRow {
    pub id: Uuid,
    pub provider_id: Uuid,
    pub patient_id: Uuid,
    pub visit_type_id: Uuid,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub status: String,
    pub created_by: Uuid,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AppointmentRow {
    pub id: Uuid,
    pub claim_id: Uuid,
    pub provider_id: Uuid,
    pub patient_id: Uuid,
    pub visit_type_id: Uuid,
    pub modality: String,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub status: String,
    pub intake_form: Option<String>,
    pub intake_status: String,
    pub reason: Option<Vec<u8>>,
    pub cancel_reason: Option<String>,
    pub cancel_note: Option<Vec<u8>>,
    pub late_cancellation: bool,
    pub reschedule_count: i32,
    pub consultation_request_id: Option<Uuid>,
    pub revision: i64,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Releases the stale holds that overlap `span` for `provider` or `patient`, so that a new
/// claim is refused only by live ones.
pub async fn release_stale_holds(
    conn: &mut PgConnection,
    provider: Uuid,
    patient: Uuid,
    span: Span,
) -> Result<()> {
    sqlx::query(
        "WITH stale AS (
            UPDATE slot_claims SET active = false
             WHERE active AND hold_expires_at IS NOT NULL AND hold_expires_at <= now()
               AND ((provider_id = $1 AND blocked && tstzrange($3, $5))
                 OR (patient_id = $2 AND visit && tstzrange($3, $4)))
            RETURNING id)
         UPDATE holds SET status = 'expired'
          WHERE id IN (SELECT id FROM stale) AND status = 'active'",
    )
    .bind(provider)
    .bind(patient)
    .bind(span.start)
    .bind(span.end)
    .bind(span.blocked_end)
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes `span` for `provider` and `patient` (SLOT_TAKEN or PATIENT_BUSY when something live
/// overlaps). `hold_minutes`: a hold's lifetime; `None`: an appointment's claim.
pub async fn claim(
    conn: &mut PgConnection,
    id: Uuid,
    provider: Uuid,
    patient: Uuid,
    span: Span,
    hold_minutes: Option<i32>,
) -> Result<Option<DateTime<Utc>>> {
    lock_provider(conn, provider).await?;
    release_stale_holds(conn, provider, patient, span).await?;
    Ok(sqlx::query_scalar(
        "INSERT INTO slot_claims (id, provider_id, patient_id, visit, blocked, hold_expires_at)
         VALUES ($1, $2, $3, tstzrange($4, $5), tstzrange($4, $6),
                 CASE WHEN $7::int IS NULL THEN NULL ELSE now() + make_interval(mins => $7) END)
         RETURNING hold_expires_at",
    )
    .bind(id)
    .bind(provider)
    .bind(patient)
    .bind(span.start)
    .bind(span.end)
    .bind(span.blocked_end)
    .bind(hold_minutes)
    .fetch_one(conn)
    .await?)
}

/// Moves claim `id` to `span` in one statement: the constraint sees only the new span, so the
/// new time is taken and the old one released together, or nothing changes.
pub async fn move_claim(
    conn: &mut PgConnection,
    id: Uuid,
    patient: Uuid,
    provider: Uuid,
    span: Span,
) -> Result<()> {
    lock_provider(conn, provider).await?;
    release_stale_holds(conn, provider, patient, span).await?;
    sqlx::query(
        "UPDATE slot_claims SET visit = tstzrange($2, $3), blocked = tstzrange($2, $4)
          WHERE id = $1 AND active",
    )
    .bind(id)
    .bind(span.start)
    .bind(span.end)
    .bind(span.blocked_end)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn release_claim(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("UPDATE slot_claims SET active = false WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// A hold's claim becomes an appointment's: it no longer lapses.
pub async fn keep_claim(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("UPDATE slot_claims SET hold_expires_at = NULL WHERE id = $1 AND active")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

const HOLD_COLUMNS: &str = "id, provider_id, patient_id, visit_type_id, start_time, end_time,
    expires_at, status, created_by";

pub async fn insert_hold(conn: &mut PgConnection, h: &HoldRow) -> Result<HoldRow> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO holds ({HOLD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING {HOLD_COLUMNS}"
    ))
    .bind(h.id)
    .bind(h.provider_id)
    .bind(h.patient_id)
    .bind(h.visit_type_id)
    .bind(h.start_time)
    .bind(h.end_time)
    .bind(h.expires_at)
    .bind(&h.status)
    .bind(h.created_by)
    .fetch_one(conn)
    .await?)
}

/// Hold `id`, locked for the caller's transaction when `lock`. A lapsed active hold reads as
/// expired.
pub async fn hold(conn: &mut PgConnection, id: Uuid, lock: bool) -> Result<Option<HoldRow>> {
    let lock = if lock { "FOR UPDATE" } else { "" };
    Ok(sqlx::query_as(&format!(
        "SELECT id, provider_id, patient_id, visit_type_id, start_time, end_time, expires_at,
                CASE WHEN status = 'active' AND expires_at <= now() THEN 'expired' ELSE status END
                    AS status,
                created_by
           FROM holds WHERE id = $1 {lock}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

pub async fn set_hold_status(conn: &mut PgConnection, id: Uuid, status: &str) -> Result<()> {
    sqlx::query("UPDATE holds SET status = $2 WHERE id = $1")
        .bind(id)
        .bind(status)
        .execute(conn)
        .await?;
    Ok(())
}

/// Releases up to `limit` lapsed holds (the sweeper; writers release the ones in their way).
pub async fn sweep_expired_holds(conn: &mut PgConnection, limit: i64) -> Result<u64> {
    Ok(sqlx::query(
        "WITH stale AS (
            UPDATE slot_claims SET active = false
             WHERE id IN (SELECT id FROM slot_claims
                           WHERE active AND hold_expires_at IS NOT NULL AND hold_expires_at <= now()
                           ORDER BY hold_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
            RETURNING id)
         UPDATE holds SET status = 'expired' WHERE id IN (SELECT id FROM stale) AND status = 'active'",
    )
    .bind(limit)
    .execute(conn)
    .await?
    .rows_affected())
}

/// The blocked spans (visit and buffer) of live claims of `providers` overlapping [from, to).
pub async fn busy(
    conn: &mut PgConnection,
    providers: &[Uuid],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(Uuid, DateTime<Utc>, DateTime<Utc>)>> {
    Ok(sqlx::query_as(
        "SELECT provider_id, lower(blocked), upper(blocked) FROM slot_claims
          WHERE active AND provider_id = ANY ($1) AND blocked && tstzrange($2, $3)
            AND (hold_expires_at IS NULL OR hold_expires_at > now())",
    )
    .bind(providers)
    .bind(from)
    .bind(to)
    .fetch_all(conn)
    .await?)
}

const APPOINTMENT_COLUMNS: &str = "id, claim_id, provider_id, patient_id, visit_type_id, modality,
    start_time, end_time, status, intake_form, intake_status, reason, cancel_reason, cancel_note,
    late_cancellation, reschedule_count, consultation_request_id, revision, created_by,
    created_at, updated_at";

pub async fn insert_appointment(
    conn: &mut PgConnection,
    a: &AppointmentRow,
) -> Result<AppointmentRow> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO appointments ({APPOINTMENT_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, 1,
                 $18, now(), now())
         RETURNING {APPOINTMENT_COLUMNS}"
    ))
    .bind(a.id)
    .bind(a.claim_id)
    .bind(a.provider_id)
    .bind(a.patient_id)
    .bind(a.visit_type_id)
    .bind(&a.modality)
    .bind(a.start_time)
    .bind(a.end_time)
    .bind(&a.status)
    .bind(&a.intake_form)
    .bind(&a.intake_status)
    .bind(&a.reason)
    .bind(&a.cancel_reason)
    .bind(&a.cancel_note)
    .bind(a.late_cancellation)
    .bind(a.reschedule_count)
    .bind(a.consultation_request_id)
    .bind(a.created_by)
    .fetch_one(conn)
    .await?)
}

/// Appointment `id`, locked for the caller's transaction when `lock` (every change locks it
/// first, so changes of one appointment run one after the other).
pub async fn appointment(
    conn: &mut PgConnection,
    id: Uuid,
    lock: bool,
) -> Result<Option<AppointmentRow>> {
    let lock = if lock { "FOR UPDATE" } else { "" };
    Ok(sqlx::query_as(&format!(
        "SELECT {APPOINTMENT_COLUMNS} FROM appointments WHERE id = $1 {lock}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Writes the changeable fields of `a` and moves its revision on.
pub async fn save_appointment(
    conn: &mut PgConnection,
    a: &AppointmentRow,
) -> Result<AppointmentRow> {
    Ok(sqlx::query_as(&format!(
        "UPDATE appointments SET start_time = $2, end_time = $3, status = $4, intake_status = $5,
                cancel_reason = $6, cancel_note = $7, late_cancellation = $8,
                reschedule_count = $9, revision = revision + 1, updated_at = now()
          WHERE id = $1 RETURNING {APPOINTMENT_COLUMNS}"
    ))
    .bind(a.id)
    .bind(a.start_time)
    .bind(a.end_time)
    .bind(&a.status)
    .bind(&a.intake_status)
    .bind(&a.cancel_reason)
    .bind(&a.cancel_note)
    .bind(a.late_cancellation)
    .bind(a.reschedule_count)
    .fetch_one(conn)
    .await?)
}

/// Whose appointments a listing reads.
#[derive(Clone, Copy, Debug)]
pub enum Whose {
    Patient(Uuid),
    Provider(Uuid),
}

pub async fn list(
    conn: &mut PgConnection,
    whose: Whose,
    end_after: Option<DateTime<Utc>>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<AppointmentRow>> {
    let (column, id) = match whose {
        Whose::Patient(id) => ("patient_id", id),
        Whose::Provider(id) => ("provider_id", id),
    };
    let (at, last) = after.unzip();
    Ok(sqlx::query_as(&format!(
        "SELECT {APPOINTMENT_COLUMNS} FROM appointments
          WHERE {column} = $1 AND ($2::timestamptz IS NULL OR end_time > $2)
            AND ($3::timestamptz IS NULL OR (start_time, id) > ($3, $4))
          ORDER BY start_time, id LIMIT $5"
    ))
    .bind(id)
    .bind(end_after)
    .bind(at)
    .bind(last)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Which of `providers` have had an appointment with `patient` (booked at some point).
pub async fn seen_by(
    conn: &mut PgConnection,
    patient: Uuid,
    providers: &[Uuid],
) -> Result<Vec<Uuid>> {
    if providers.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT provider_id FROM appointments
          WHERE patient_id = $1 AND provider_id = ANY ($2) AND status <> 'requested'",
    )
    .bind(patient)
    .bind(providers)
    .fetch_all(conn)
    .await?)
}

/// Serializes the claims of one patient until the caller's transaction ends, so that counting
/// their holds or appointments and adding one cannot be raced.
pub async fn lock_patient(conn: &mut PgConnection, patient: Uuid) -> Result<()> {
    // The key is the id's last 8 bytes, random in a v7 id (the first ones are its creation
    // time); a collision only makes two patients wait for each other.
    let bytes = patient.as_bytes();
    let mut key = [0u8; 8];
    key.copy_from_slice(&bytes[8..16]);
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(i64::from_be_bytes(key))
        .execute(conn)
        .await?;
    Ok(())
}

/// The patient's live holds.
pub async fn live_holds(conn: &mut PgConnection, patient: Uuid) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM slot_claims
          WHERE patient_id = $1 AND active AND hold_expires_at > now()",
    )
    .bind(patient)
    .fetch_one(conn)
    .await?)
}

/// The patient's upcoming appointments (not yet ended, in an active state).
pub async fn upcoming(conn: &mut PgConnection, patient: Uuid) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM appointments
          WHERE patient_id = $1 AND end_time > now()
            AND status IN ('requested', 'booked', 'checked_in', 'in_progress')",
    )
    .bind(patient)
    .fetch_one(conn)
    .await?)
}

/// Serializes one provider's claims until the caller's transaction ends. Without it, two
/// transactions inserting overlapping claims at once each wait for the other's uncommitted row
/// in the exclusion constraint, and PostgreSQL aborts one as a deadlock after
/// `deadlock_timeout` (found by the load generator's booking storm: 15-31 per 10 s, each after
/// a second's stall). Queued behind the lock, the second gets 23P01 (SLOT_TAKEN) at once.
/// Taken after [`lock_patient`] where both are taken: always patient, then provider. Advisory
/// keys of two 32-bit halves are a key space of their own, apart from `lock_patient`'s.
pub async fn lock_provider(conn: &mut PgConnection, provider: Uuid) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(7002, hashtext($1::text))")
        .bind(provider)
        .execute(conn)
        .await?;
    Ok(())
}
