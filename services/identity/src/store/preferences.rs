//! SQL of consents and communication preferences (no PHI: versions, flags, language).

use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::account::{CommPrefs, ConsentChange, ConsentState};
use crate::error::Result;
use chrono::{DateTime, Utc};

// ---- consents ----

#[derive(sqlx::FromRow)]
struct ConsentRow {
    user_id: Uuid,
    terms_version: Option<String>,
    terms_accepted_at: Option<DateTime<Utc>>,
    privacy_version: Option<String>,
    privacy_accepted_at: Option<DateTime<Utc>>,
    marketing_opt_in: bool,
    marketing_updated_at: Option<DateTime<Utc>>,
    sms_opt_in: bool,
    sms_updated_at: Option<DateTime<Utc>>,
}

impl From<ConsentRow> for ConsentState {
    fn from(r: ConsentRow) -> Self {
        ConsentState {
            user_id: r.user_id,
            terms_version: r.terms_version,
            terms_accepted_at: r.terms_accepted_at,
            privacy_version: r.privacy_version,
            privacy_accepted_at: r.privacy_accepted_at,
            marketing_opt_in: r.marketing_opt_in,
            marketing_updated_at: r.marketing_updated_at,
            sms_opt_in: r.sms_opt_in,
            sms_updated_at: r.sms_updated_at,
        }
    }
}

const CONSENT_COLUMNS: &str = "user_id, terms_version, terms_accepted_at, privacy_version, \
    privacy_accepted_at, marketing_opt_in, marketing_updated_at, sms_opt_in, sms_updated_at";

/// Creates the consents row of a new user (all defaults) and records `change` on it.
pub async fn insert_consents(
    conn: &mut PgConnection,
    user_id: Uuid,
    change: &ConsentChange,
) -> Result<ConsentState> {
    update_consents(conn, user_id, change).await
}

/// The consents of `user_id` (defaults when no row exists).
pub async fn get_consents(conn: &mut PgConnection, user_id: Uuid) -> Result<ConsentState> {
    let row: Option<ConsentRow> = sqlx::query_as(&format!(
        "SELECT {CONSENT_COLUMNS} FROM consents WHERE user_id = $1"
    ))
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(ConsentState::from).unwrap_or(ConsentState {
        user_id,
        ..ConsentState::default()
    }))
}

/// Records `change` on the consents row (created when missing) and appends one consent_events
/// row per decision.
pub async fn update_consents(
    conn: &mut PgConnection,
    user_id: Uuid,
    change: &ConsentChange,
) -> Result<ConsentState> {
    sqlx::query("INSERT INTO consents (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    let row: ConsentRow = sqlx::query_as(&format!(
        "UPDATE consents SET
            terms_version = COALESCE($2, terms_version),
            terms_accepted_at = CASE WHEN $2::text IS NULL THEN terms_accepted_at ELSE now() END,
            privacy_version = COALESCE($3, privacy_version),
            privacy_accepted_at = CASE WHEN $3::text IS NULL THEN privacy_accepted_at ELSE now() END,
            marketing_opt_in = COALESCE($4, marketing_opt_in),
            marketing_updated_at = CASE WHEN $4::boolean IS NULL THEN marketing_updated_at ELSE now() END,
            sms_opt_in = COALESCE($5, sms_opt_in),
            sms_updated_at = CASE WHEN $5::boolean IS NULL THEN sms_updated_at ELSE now() END
         WHERE user_id = $1
         RETURNING {CONSENT_COLUMNS}"
    ))
    .bind(user_id)
    .bind(&change.terms_version)
    .bind(&change.privacy_version)
    .bind(change.marketing_opt_in)
    .bind(change.sms_opt_in)
    .fetch_one(&mut *conn)
    .await?;
    for (kind, value) in change.events() {
        sqlx::query(
            "INSERT INTO consent_events (id, user_id, kind, value) VALUES ($1, $2, $3, $4)",
        )
        .bind(Uuid::now_v7())
        .bind(user_id)
        .bind(kind)
        .bind(value)
        .execute(&mut *conn)
        .await?;
    }
    Ok(row.into())
}

// ---- communication preferences ----

#[derive(sqlx::FromRow)]
struct PrefsRow {
    user_id: Uuid,
    email_notifications: bool,
    sms_notifications: bool,
    push_notifications: bool,
    language: String,
    quiet_hours_start: i16,
    quiet_hours_end: i16,
    sms_notifications_changed_at: Option<DateTime<Utc>>,
}

impl From<PrefsRow> for CommPrefs {
    fn from(r: PrefsRow) -> Self {
        CommPrefs {
            user_id: r.user_id,
            email_notifications: r.email_notifications,
            sms_notifications: r.sms_notifications,
            push_notifications: r.push_notifications,
            language: r.language,
            quiet_hours_start: r.quiet_hours_start,
            quiet_hours_end: r.quiet_hours_end,
            sms_notifications_changed_at: r.sms_notifications_changed_at,
        }
    }
}

const PREFS_COLUMNS: &str = "user_id, email_notifications, sms_notifications, push_notifications, \
    language, quiet_hours_start, quiet_hours_end, sms_notifications_changed_at";

/// Creates the preferences row of a new user with defaults (`sms` turns SMS notifications on).
pub async fn insert_prefs(conn: &mut PgConnection, user_id: Uuid, sms: bool) -> Result<CommPrefs> {
    let row: PrefsRow = sqlx::query_as(&format!(
        "INSERT INTO communication_preferences (user_id, sms_notifications) VALUES ($1, $2)
         RETURNING {PREFS_COLUMNS}"
    ))
    .bind(user_id)
    .bind(sms)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.into())
}

/// The preferences of `user_id` (created with defaults when missing).
pub async fn get_prefs(conn: &mut PgConnection, user_id: Uuid) -> Result<CommPrefs> {
    let row: Option<PrefsRow> = sqlx::query_as(&format!(
        "SELECT {PREFS_COLUMNS} FROM communication_preferences WHERE user_id = $1"
    ))
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some(r) => r.into(),
        None => CommPrefs {
            user_id,
            email_notifications: true,
            sms_notifications: false,
            push_notifications: true,
            language: "en-US".to_owned(),
            quiet_hours_start: 0,
            quiet_hours_end: 0,
            sms_notifications_changed_at: None,
        },
    })
}

/// Preference fields to change; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct PrefsUpdate {
    pub email_notifications: Option<bool>,
    pub sms_notifications: Option<bool>,
    pub push_notifications: Option<bool>,
    pub language: Option<String>,
    pub quiet_hours_start: Option<i16>,
    pub quiet_hours_end: Option<i16>,
}

/// Applies `u`; a change of `sms_notifications` stamps its decision time.
pub async fn update_prefs(
    conn: &mut PgConnection,
    user_id: Uuid,
    u: &PrefsUpdate,
) -> Result<CommPrefs> {
    sqlx::query("INSERT INTO communication_preferences (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    let row: PrefsRow = sqlx::query_as(&format!(
        "UPDATE communication_preferences SET
            email_notifications = COALESCE($2, email_notifications),
            sms_notifications_changed_at = CASE
                WHEN $3::boolean IS DISTINCT FROM sms_notifications AND $3::boolean IS NOT NULL
                THEN now() ELSE sms_notifications_changed_at END,
            sms_notifications = COALESCE($3, sms_notifications),
            push_notifications = COALESCE($4, push_notifications),
            language = COALESCE($5, language),
            quiet_hours_start = COALESCE($6, quiet_hours_start),
            quiet_hours_end = COALESCE($7, quiet_hours_end),
            updated_at = now()
         WHERE user_id = $1
         RETURNING {PREFS_COLUMNS}"
    ))
    .bind(user_id)
    .bind(u.email_notifications)
    .bind(u.sms_notifications)
    .bind(u.push_notifications)
    .bind(&u.language)
    .bind(u.quiet_hours_start)
    .bind(u.quiet_hours_end)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.into())
}

/// The preferences of `user_ids`, locked until the transaction ends, in id order (so that two
/// transactions locking overlapping sets cannot deadlock). A missing row is created with the
/// defaults and no decision time.
pub async fn lock_prefs(conn: &mut PgConnection, user_ids: &[Uuid]) -> Result<Vec<CommPrefs>> {
    sqlx::query(
        "INSERT INTO communication_preferences (user_id, sms_notifications_changed_at)
         SELECT unnest($1::uuid[]), NULL
         ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_ids)
    .execute(&mut *conn)
    .await?;
    let rows: Vec<PrefsRow> = sqlx::query_as(&format!(
        "SELECT {PREFS_COLUMNS} FROM communication_preferences WHERE user_id = ANY($1)
         ORDER BY user_id FOR UPDATE"
    ))
    .bind(user_ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(CommPrefs::from).collect())
}

/// Records an SMS decision that messaging's ledger made at `decided_at`: `sms_notifications`
/// becomes `allowed` and its decision time `decided_at` (the ledger's time, not ours, so that an
/// older delivery arriving later is recognised as older). The caller checked that the decision
/// is newer than the standing one, on the row it locked.
pub async fn set_sms_decision(
    conn: &mut PgConnection,
    user_id: Uuid,
    allowed: bool,
    decided_at: DateTime<Utc>,
) -> Result<CommPrefs> {
    let row: PrefsRow = sqlx::query_as(&format!(
        "UPDATE communication_preferences SET
            updated_at = CASE WHEN sms_notifications <> $2 THEN now() ELSE updated_at END,
            sms_notifications = $2,
            sms_notifications_changed_at = $3
         WHERE user_id = $1
         RETURNING {PREFS_COLUMNS}"
    ))
    .bind(user_id)
    .bind(allowed)
    .bind(decided_at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.into())
}
