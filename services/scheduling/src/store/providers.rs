//! The provider directory, visit types, weekly windows and exceptions.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::Result;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ProviderRow {
    pub provider_id: Uuid,
    pub time_zone: String,
    pub specialties: Vec<String>,
    pub license_states: Vec<String>,
    pub languages: Vec<String>,
    pub accepting_new_patients: bool,
    pub visit_type_ids: Vec<Uuid>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct VisitTypeRow {
    pub id: Uuid,
    pub name: String,
    pub duration_minutes: i32,
    pub buffer_minutes: i32,
    pub modality: String,
    pub price_code: String,
    pub intake_form: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct WindowRow {
    pub provider_id: Uuid,
    pub weekday: i16,
    pub start_minute: i16,
    pub end_minute: i16,
    pub visit_type_ids: Vec<Uuid>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ExceptionRow {
    pub id: Uuid,
    pub provider_id: Uuid,
    pub kind: String,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
}

const PROVIDER_COLUMNS: &str = "provider_id, time_zone, specialties, license_states, languages,
    accepting_new_patients, visit_type_ids, updated_at";

pub async fn put_provider(conn: &mut PgConnection, p: &ProviderRow) -> Result<ProviderRow> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO providers ({PROVIDER_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, now())
         ON CONFLICT (provider_id) DO UPDATE SET
            time_zone = EXCLUDED.time_zone, specialties = EXCLUDED.specialties,
            license_states = EXCLUDED.license_states, languages = EXCLUDED.languages,
            accepting_new_patients = EXCLUDED.accepting_new_patients,
            visit_type_ids = EXCLUDED.visit_type_ids, updated_at = now()
         RETURNING {PROVIDER_COLUMNS}"
    ))
    .bind(p.provider_id)
    .bind(&p.time_zone)
    .bind(&p.specialties)
    .bind(&p.license_states)
    .bind(&p.languages)
    .bind(p.accepting_new_patients)
    .bind(&p.visit_type_ids)
    .fetch_one(conn)
    .await?)
}

pub async fn provider(conn: &mut PgConnection, id: Uuid) -> Result<Option<ProviderRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {PROVIDER_COLUMNS} FROM providers WHERE provider_id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// What a slot search filters providers by (`None`: any).
pub struct ProviderFilter<'a> {
    pub visit_type: Uuid,
    pub specialty: Option<&'a str>,
    pub state: Option<&'a str>,
    pub language: Option<&'a str>,
    pub only: &'a [Uuid],
    pub limit: i64,
}

/// Providers that offer the visit type and match the filter, by id.
pub async fn matching(conn: &mut PgConnection, f: &ProviderFilter<'_>) -> Result<Vec<ProviderRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {PROVIDER_COLUMNS} FROM providers
          WHERE $1 = ANY (visit_type_ids)
            AND ($2::text IS NULL OR specialties @> ARRAY[$2::text])
            AND ($3::text IS NULL OR license_states @> ARRAY[$3::text])
            AND ($4::text IS NULL OR languages @> ARRAY[$4::text])
            AND (cardinality($5::uuid[]) = 0 OR provider_id = ANY ($5))
          ORDER BY provider_id
          LIMIT $6"
    ))
    .bind(f.visit_type)
    .bind(f.specialty)
    .bind(f.state)
    .bind(f.language)
    .bind(f.only)
    .bind(f.limit)
    .fetch_all(conn)
    .await?)
}

const VISIT_TYPE_COLUMNS: &str =
    "id, name, duration_minutes, buffer_minutes, modality, price_code, intake_form, created_at";

pub async fn insert_visit_type(conn: &mut PgConnection, v: &VisitTypeRow) -> Result<VisitTypeRow> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO visit_types ({VISIT_TYPE_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, now()) RETURNING {VISIT_TYPE_COLUMNS}"
    ))
    .bind(v.id)
    .bind(&v.name)
    .bind(v.duration_minutes)
    .bind(v.buffer_minutes)
    .bind(&v.modality)
    .bind(&v.price_code)
    .bind(&v.intake_form)
    .fetch_one(conn)
    .await?)
}

pub async fn visit_type(conn: &mut PgConnection, id: Uuid) -> Result<Option<VisitTypeRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {VISIT_TYPE_COLUMNS} FROM visit_types WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Which of `ids` exist.
pub async fn existing_visit_types(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<Uuid>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM visit_types WHERE id = ANY ($1)")
            .bind(ids)
            .fetch_all(conn)
            .await?,
    )
}

pub async fn list_visit_types(
    conn: &mut PgConnection,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<VisitTypeRow>> {
    let (at, id) = after.unzip();
    Ok(sqlx::query_as(&format!(
        "SELECT {VISIT_TYPE_COLUMNS} FROM visit_types
          WHERE $1::timestamptz IS NULL OR (created_at, id) > ($1, $2)
          ORDER BY created_at, id LIMIT $3"
    ))
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Replaces the provider's windows (the provider row is locked first, so two replacements
/// run one after the other instead of interleaving their rows).
pub async fn replace_windows(
    conn: &mut PgConnection,
    provider: Uuid,
    windows: &[WindowRow],
) -> Result<DateTime<Utc>> {
    let updated: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE providers SET updated_at = now() WHERE provider_id = $1 RETURNING updated_at",
    )
    .bind(provider)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM weekly_windows WHERE provider_id = $1")
        .bind(provider)
        .execute(&mut *conn)
        .await?;
    for (i, w) in windows.iter().enumerate() {
        sqlx::query(
            "INSERT INTO weekly_windows
                (provider_id, ordinal, weekday, start_minute, end_minute, visit_type_ids)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(provider)
        .bind(i32::try_from(i).unwrap_or(i32::MAX))
        .bind(w.weekday)
        .bind(w.start_minute)
        .bind(w.end_minute)
        .bind(&w.visit_type_ids)
        .execute(&mut *conn)
        .await?;
    }
    Ok(updated)
}

/// The windows of `providers`, in each provider's order.
pub async fn windows(conn: &mut PgConnection, providers: &[Uuid]) -> Result<Vec<WindowRow>> {
    Ok(sqlx::query_as(
        "SELECT provider_id, weekday, start_minute, end_minute, visit_type_ids
           FROM weekly_windows WHERE provider_id = ANY ($1) ORDER BY provider_id, ordinal",
    )
    .bind(providers)
    .fetch_all(conn)
    .await?)
}

const EXCEPTION_COLUMNS: &str =
    "id, provider_id, kind, lower(during) AS start_time, upper(during) AS end_time";

pub async fn insert_exception(
    conn: &mut PgConnection,
    e: &ExceptionRow,
    created_by: Uuid,
) -> Result<ExceptionRow> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO availability_exceptions (id, provider_id, kind, during, created_by)
         VALUES ($1, $2, $3, tstzrange($4, $5), $6) RETURNING {EXCEPTION_COLUMNS}"
    ))
    .bind(e.id)
    .bind(e.provider_id)
    .bind(&e.kind)
    .bind(e.start_time)
    .bind(e.end_time)
    .bind(created_by)
    .fetch_one(conn)
    .await?)
}

pub async fn exception(conn: &mut PgConnection, id: Uuid) -> Result<Option<ExceptionRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {EXCEPTION_COLUMNS} FROM availability_exceptions WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

pub async fn delete_exception(conn: &mut PgConnection, id: Uuid) -> Result<bool> {
    Ok(
        sqlx::query("DELETE FROM availability_exceptions WHERE id = $1")
            .bind(id)
            .execute(conn)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Exceptions of `providers` overlapping [from, to).
pub async fn exceptions_between(
    conn: &mut PgConnection,
    providers: &[Uuid],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<ExceptionRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {EXCEPTION_COLUMNS} FROM availability_exceptions
          WHERE provider_id = ANY ($1) AND during && tstzrange($2, $3)
          ORDER BY provider_id, lower(during)"
    ))
    .bind(providers)
    .bind(from)
    .bind(to)
    .fetch_all(conn)
    .await?)
}

/// A provider's exceptions that end after `end_after`, by start.
pub async fn list_exceptions(
    conn: &mut PgConnection,
    provider: Uuid,
    end_after: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<ExceptionRow>> {
    let (at, id) = after.unzip();
    Ok(sqlx::query_as(&format!(
        "SELECT {EXCEPTION_COLUMNS} FROM availability_exceptions
          WHERE provider_id = $1 AND upper(during) > $2
            AND ($3::timestamptz IS NULL OR (lower(during), id) > ($3, $4))
          ORDER BY lower(during), id LIMIT $5"
    ))
    .bind(provider)
    .bind(end_after)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Clears a provider's weekly windows (a terminated account): no search offers them again.
pub async fn clear_windows(conn: &mut PgConnection, provider: Uuid) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM weekly_windows WHERE provider_id = $1")
            .bind(provider)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}
