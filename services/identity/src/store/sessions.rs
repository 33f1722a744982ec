//! SQL of credentials, login throttling, sessions, refresh tokens, MFA, password resets,
//! device PINs and the revocation feed.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

/// What login and credential checks need of a user (no PHI: nothing to decrypt on login).
#[derive(Clone, Debug, FromRow)]
pub struct Credentials {
    pub id: Uuid,
    pub role: String,
    pub status: String,
    pub password_hash: String,
    pub password_changed_at: DateTime<Utc>,
    pub password_change_required: bool,
    pub totp_secret: Option<Vec<u8>>,
    pub totp_pending_secret: Option<Vec<u8>>,
    pub totp_last_step: Option<i64>,
    pub sessions_revoked_before: Option<DateTime<Utc>>,
}

const CREDENTIAL_COLUMNS: &str = "id, role, status, password_hash, password_changed_at, \
     password_change_required, totp_secret, totp_pending_secret, totp_last_step, sessions_revoked_before";

/// The user whose email has one of these blind indexes
/// ([`crate::store::sealed::email_candidates`]: one per held blind-index key version).
pub async fn credentials_by_email(
    conn: &mut PgConnection,
    email_index: &[Vec<u8>],
) -> Result<Option<Credentials>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM users WHERE email_bidx = ANY($1)"
    ))
    .bind(email_index)
    .fetch_optional(conn)
    .await
}

/// A user's credentials; `for_update` locks the row until the transaction ends.
pub async fn credentials_by_id(
    conn: &mut PgConnection,
    id: Uuid,
    for_update: bool,
) -> Result<Option<Credentials>, sqlx::Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    sqlx::query_as(&format!(
        "SELECT {CREDENTIAL_COLUMNS} FROM users WHERE id = $1{lock}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// The database clock.
pub async fn db_now(conn: &mut PgConnection) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT now()").fetch_one(conn).await
}

// ---------------------------------------------------------------------------------------------
// Login throttling

/// A throttle row right after an attempt reserved its place.
#[derive(Clone, Debug, FromRow)]
pub struct ThrottleRow {
    pub consecutive_failures: i32,
    pub window_start: DateTime<Utc>,
    pub window_failures: i32,
    /// The lock in force when the attempt arrived (this statement does not move it).
    pub locked_until: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
}

/// Reserves an attempt's place in `key`'s counters before its password is checked, in one
/// atomic statement that keeps the row locked until the caller's transaction ends: the
/// attempt counts as a consecutive failure and in the current window (`window_secs` long; a
/// new window starts when it ended) until [`release_attempt`] gives the place back after a
/// correct password. Concurrent attempts therefore see each other's places, so no burst gets
/// more checks than the policy allows.
pub async fn reserve_attempt(
    conn: &mut PgConnection,
    key: &str,
    window_secs: i64,
) -> Result<ThrottleRow, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO login_throttle AS t
             (key, consecutive_failures, total_failures, window_start, window_failures, updated_at)
         VALUES ($1, 1, 0, now(), 1, now())
         ON CONFLICT (key) DO UPDATE SET
             consecutive_failures = t.consecutive_failures + 1,
             window_start = CASE WHEN t.window_start <= now() - make_interval(secs => $2)
                                 THEN now() ELSE t.window_start END,
             window_failures = CASE WHEN t.window_start <= now() - make_interval(secs => $2)
                                    THEN 1 ELSE t.window_failures + 1 END,
             updated_at = now()
         RETURNING consecutive_failures, window_start, window_failures, locked_until, now() AS now",
    )
    .bind(key)
    .bind(window_secs as f64)
    .fetch_one(conn)
    .await
}

/// Counts one failed attempt (refused, or a wrong password) in `key`'s total, in the
/// transaction that records its audit event: the total and the audit trail agree.
pub async fn count_failure(conn: &mut PgConnection, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE login_throttle SET total_failures = total_failures + 1, updated_at = now()
         WHERE key = $1",
    )
    .bind(key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Lifts `key`'s lock if it still ends at `until` (nobody extended it); whether it did.
pub async fn lift_lock(
    conn: &mut PgConnection,
    key: &str,
    until: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let lifted = sqlx::query(
        "UPDATE login_throttle SET locked_until = NULL, updated_at = now()
         WHERE key = $1 AND locked_until = $2",
    )
    .bind(key)
    .bind(until)
    .execute(conn)
    .await?;
    Ok(lifted.rows_affected() == 1)
}

/// A correct password: the attempt's reserved place is given back and the consecutive-failure
/// streak ends. The attempt held place `reserved` of the streak; places reserved after it
/// (guesses still in flight) stay counted.
pub async fn release_attempt(
    conn: &mut PgConnection,
    key: &str,
    window_start: DateTime<Utc>,
    reserved: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE login_throttle SET consecutive_failures = GREATEST(consecutive_failures - $3, 0),
             window_failures = CASE WHEN window_start = $2 THEN GREATEST(window_failures - 1, 0)
                                    ELSE window_failures END,
             updated_at = now()
         WHERE key = $1",
    )
    .bind(key)
    .bind(window_start)
    .bind(reserved)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves `locked_until` of `key` to `until` unless it is already later.
pub async fn extend_lock(
    conn: &mut PgConnection,
    key: &str,
    until: DateTime<Utc>,
) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE login_throttle
         SET locked_until = GREATEST(COALESCE(locked_until, $2), $2), updated_at = now()
         WHERE key = $1 RETURNING locked_until",
    )
    .bind(key)
    .bind(until)
    .fetch_one(conn)
    .await
}

/// Whether a `login_throttle` row holds nothing the throttle still needs (`$1` source window,
/// `$2` account window, `$3` streak retention, in seconds): no lock in force; its window has
/// ended (a budget still counting is kept: the source's minute, the account's hour, whose
/// hourly lock ends with it); and no consecutive-failure streak still remembered — a source's
/// streak decides nothing, an account's is kept until it has been idle for `$3`. Deleting such
/// a row changes no decision except that an account's idle streak restarts.
const THROTTLE_STALE: &str = "(t.locked_until IS NULL OR t.locked_until <= now())
     AND t.window_start <= now() - make_interval(secs => CASE WHEN t.key LIKE 'src:%'
                                                          THEN $1 ELSE $2 END)
     AND (t.key LIKE 'src:%' OR t.consecutive_failures = 0
          OR t.updated_at <= now() - make_interval(secs => $3))";

/// Deletes at most `batch` stale `login_throttle` rows ([`THROTTLE_STALE`]), in one short
/// statement that skips rows a login holds; the number deleted. The condition is checked
/// again on each row as it is deleted, so a row an attempt touched meanwhile is kept.
pub async fn purge_login_throttle_batch(
    conn: &mut PgConnection,
    source_window_secs: i64,
    account_window_secs: i64,
    retention_secs: i64,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let sql = format!(
        "DELETE FROM login_throttle AS t
         WHERE t.key IN (SELECT t.key FROM login_throttle AS t WHERE {THROTTLE_STALE}
                         LIMIT $4 FOR UPDATE SKIP LOCKED)
           AND {THROTTLE_STALE}"
    );
    Ok(sqlx::query(&sql)
        .bind(source_window_secs as f64)
        .bind(account_window_secs as f64)
        .bind(retention_secs as f64)
        .bind(batch)
        .execute(conn)
        .await?
        .rows_affected())
}

/// Rows one purge statement deletes at most.
pub const THROTTLE_PURGE_BATCH: i64 = 1000;
/// Statements one purge run issues at most (so a run is bounded; the next run goes on).
pub const THROTTLE_PURGE_MAX_BATCHES: u32 = 100;

/// One purge run: stale `login_throttle` rows deleted in batches of `batch` (each its own
/// short statement, so no run holds locks for long), until a batch comes back short or
/// `max_batches` have run; the number deleted.
pub async fn purge_login_throttle(
    pool: &sqlx::PgPool,
    retention_secs: i64,
    batch: i64,
    max_batches: u32,
) -> Result<u64, sqlx::Error> {
    use crate::domain::throttle::{ACCOUNT_WINDOW_SECS, SOURCE_WINDOW_SECS};
    // A retention beyond a century is "forever" (and keeps `now() - interval` in range).
    let retention_secs = retention_secs.clamp(0, 100 * 366 * 86_400);
    let mut purged = 0;
    for _ in 0..max_batches {
        let mut conn = pool.acquire().await?;
        let n = purge_login_throttle_batch(
            &mut conn,
            SOURCE_WINDOW_SECS,
            ACCOUNT_WINDOW_SECS,
            retention_secs,
            batch,
        )
        .await?;
        drop(conn);
        purged += n;
        if n < u64::try_from(batch).unwrap_or(0) {
            break;
        }
    }
    Ok(purged)
}

// ---------------------------------------------------------------------------------------------
// Sessions and refresh tokens

#[derive(Clone, Debug, FromRow)]
pub struct SessionRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Ciphertext of the client's IP address (`sessions.ip_address`, row = the session id,
    /// subject = the user id: [`crate::store::sealed`]).
    pub ip_address: Option<Vec<u8>>,
    /// Ciphertext of the client's user agent, like `ip_address`.
    pub user_agent: Option<Vec<u8>>,
    pub auth_methods: Vec<String>,
    pub device_id: Option<Uuid>,
    pub password_change_required: bool,
}

const SESSION_COLUMNS: &str = "id, user_id, created_at, last_seen_at, expires_at, revoked_at, \
     ip_address, user_agent, auth_methods, device_id, password_change_required";

pub struct NewSession<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    /// Ciphertexts, sealed for this session's row and user.
    pub ip_address: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    pub auth_methods: &'a [&'a str],
    pub device_id: Option<Uuid>,
    pub password_change_required: bool,
    pub lifetime_secs: i64,
}

pub async fn insert_session(
    conn: &mut PgConnection,
    s: &NewSession<'_>,
) -> Result<SessionRow, sqlx::Error> {
    let methods: Vec<String> = s.auth_methods.iter().map(|m| (*m).to_owned()).collect();
    sqlx::query_as(&format!(
        "INSERT INTO sessions (id, user_id, expires_at, ip_address, user_agent, auth_methods,
                               device_id, password_change_required)
         VALUES ($1, $2, now() + make_interval(secs => $3), $4, $5, $6, $7, $8)
         RETURNING {SESSION_COLUMNS}"
    ))
    .bind(s.id)
    .bind(s.user_id)
    .bind(s.lifetime_secs as f64)
    .bind(s.ip_address)
    .bind(s.user_agent)
    .bind(methods)
    .bind(s.device_id)
    .bind(s.password_change_required)
    .fetch_one(conn)
    .await
}

/// A session, locked for the rest of the transaction.
pub async fn session_for_update(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// One of `user_id`'s sessions.
pub async fn session_of_user(
    conn: &mut PgConnection,
    id: Uuid,
    user_id: Uuid,
) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1 AND user_id = $2"
    ))
    .bind(id)
    .bind(user_id)
    .fetch_optional(conn)
    .await
}

/// Records a token issuance on the session (the idle timeout counts from here).
pub async fn touch_session(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sessions SET last_seen_at = now() WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn clear_session_password_change(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sessions SET password_change_required = false WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn insert_refresh_token(
    conn: &mut PgConnection,
    token_hash: &[u8],
    session_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2)")
        .bind(token_hash)
        .bind(session_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// It was unspent and is spent now.
    Spent(Uuid),
    /// It had been spent before: a reuse.
    AlreadySpent(Uuid),
    Unknown,
}

/// Spends a refresh token atomically: of two concurrent presentations exactly one wins.
pub async fn spend_refresh_token(
    conn: &mut PgConnection,
    token_hash: &[u8],
) -> Result<Spend, sqlx::Error> {
    let spent: Option<Uuid> = sqlx::query_scalar(
        "UPDATE refresh_tokens SET spent_at = now()
         WHERE token_hash = $1 AND spent_at IS NULL RETURNING session_id",
    )
    .bind(token_hash)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = spent {
        return Ok(Spend::Spent(id));
    }
    let known: Option<Uuid> =
        sqlx::query_scalar("SELECT session_id FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(conn)
            .await?;
    Ok(known.map_or(Spend::Unknown, Spend::AlreadySpent))
}

/// What the token verifier checks of a session and its user.
#[derive(Clone, Debug, FromRow)]
pub struct SessionCheck {
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub role: String,
    pub status: String,
    pub sessions_revoked_before: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
}

pub async fn session_check(
    conn: &mut PgConnection,
    session_id: Uuid,
) -> Result<Option<SessionCheck>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.user_id, s.created_at, s.last_seen_at, s.expires_at, s.revoked_at,
                u.role, u.status, u.sessions_revoked_before, now() AS now
         FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.id = $1",
    )
    .bind(session_id)
    .fetch_optional(conn)
    .await
}

/// A session in a listing, with whether it is still usable.
#[derive(Clone, Debug, FromRow)]
pub struct ListedSession {
    #[sqlx(flatten)]
    pub session: SessionRow,
    pub active: bool,
}

/// Position after which the next page starts: (active, created_at, id), in listing order
/// (active first, newest first).
pub type SessionCursor = (bool, DateTime<Utc>, Uuid);

/// A page of `user_id`'s sessions, active first, newest first.
pub async fn list_sessions(
    conn: &mut PgConnection,
    user_id: Uuid,
    idle_secs: i64,
    after: Option<SessionCursor>,
    limit: i64,
) -> Result<Vec<ListedSession>, sqlx::Error> {
    let (a, t, id) = match after {
        Some((a, t, id)) => (Some(a), Some(t), Some(id)),
        None => (None, None, None),
    };
    sqlx::query_as(
        "SELECT * FROM (
             SELECT s.id, s.user_id, s.created_at, s.last_seen_at, s.expires_at, s.revoked_at,
                    s.ip_address, s.user_agent, s.auth_methods, s.device_id,
                    s.password_change_required,
                    (s.revoked_at IS NULL AND s.expires_at > now()
                     AND s.last_seen_at > now() - make_interval(secs => $2)
                     AND (u.sessions_revoked_before IS NULL
                          OR s.created_at > u.sessions_revoked_before)) AS active
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.user_id = $1
         ) x
         WHERE $3::boolean IS NULL OR (x.active, x.created_at, x.id) < ($3, $4, $5)
         ORDER BY x.active DESC, x.created_at DESC, x.id DESC
         LIMIT $6",
    )
    .bind(user_id)
    .bind(idle_secs as f64)
    .bind(a)
    .bind(t)
    .bind(id)
    .bind(limit)
    .fetch_all(conn)
    .await
}

// ---------------------------------------------------------------------------------------------
// MFA challenges, TOTP and recovery codes

/// A pending second factor. The client's address and user agent are not kept: the session
/// that completing the challenge opens records those of the completing request.
pub async fn insert_mfa_challenge(
    conn: &mut PgConnection,
    token_hash: &[u8],
    user_id: Uuid,
    ttl_secs: i64,
) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO mfa_challenges (token_hash, user_id, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3))
         RETURNING expires_at",
    )
    .bind(token_hash)
    .bind(user_id)
    .bind(ttl_secs as f64)
    .fetch_one(conn)
    .await
}

#[derive(Clone, Debug, FromRow)]
pub struct ChallengeRow {
    pub user_id: Uuid,
    pub attempts: i32,
}

/// Counts an attempt on a live challenge (unused, unexpired, fewer than `max_attempts` so far);
/// `None` when there is no such challenge.
pub async fn attempt_mfa_challenge(
    conn: &mut PgConnection,
    token_hash: &[u8],
    max_attempts: i32,
) -> Result<Option<ChallengeRow>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE mfa_challenges SET attempts = attempts + 1
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() AND attempts < $2
         RETURNING user_id, attempts",
    )
    .bind(token_hash)
    .bind(max_attempts)
    .fetch_optional(conn)
    .await
}

/// Marks a challenge used; false when someone else used it first.
pub async fn consume_mfa_challenge(
    conn: &mut PgConnection,
    token_hash: &[u8],
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE mfa_challenges SET used_at = now() WHERE token_hash = $1 AND used_at IS NULL",
    )
    .bind(token_hash)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

pub async fn set_pending_totp(
    conn: &mut PgConnection,
    user_id: Uuid,
    secret: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET totp_pending_secret = $2, updated_at = now() WHERE id = $1")
        .bind(user_id)
        .bind(secret)
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes the pending secret the active one, accepted at `step`.
pub async fn activate_totp(
    conn: &mut PgConnection,
    user_id: Uuid,
    step: i64,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE users SET totp_secret = totp_pending_secret, totp_pending_secret = NULL,
                          totp_last_step = $2, updated_at = now()
         WHERE id = $1 AND totp_pending_secret IS NOT NULL",
    )
    .bind(user_id)
    .bind(step)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Records `step` as used; false when it (or a later step) was used already (a replay).
pub async fn advance_totp_step(
    conn: &mut PgConnection,
    user_id: Uuid,
    step: i64,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE users SET totp_last_step = $2
         WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
    )
    .bind(user_id)
    .bind(step)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

pub async fn disable_totp(conn: &mut PgConnection, user_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE users SET totp_secret = NULL, totp_pending_secret = NULL, totp_last_step = NULL,
                          updated_at = now()
         WHERE id = $1",
    )
    .bind(user_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn replace_recovery_codes(
    conn: &mut PgConnection,
    user_id: Uuid,
    hashes: &[Vec<u8>],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO recovery_codes (user_id, code_hash)
         SELECT $1, h FROM unnest($2::bytea[]) AS h ON CONFLICT DO NOTHING",
    )
    .bind(user_id)
    .bind(hashes)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks an unused recovery code used; false when there is none with that hash.
pub async fn use_recovery_code(
    conn: &mut PgConnection,
    user_id: Uuid,
    code_hash: &[u8],
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE recovery_codes SET used_at = now()
         WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
    )
    .bind(user_id)
    .bind(code_hash)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

// ---------------------------------------------------------------------------------------------
// Passwords

/// Sets a new password hash; the password counts as changed now and no change is pending.
pub async fn set_password(
    conn: &mut PgConnection,
    user_id: Uuid,
    password_hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE users SET password_hash = $2, password_changed_at = now(),
                          password_change_required = false, updated_at = now()
         WHERE id = $1",
    )
    .bind(user_id)
    .bind(password_hash)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn insert_password_reset(
    conn: &mut PgConnection,
    token_hash: &[u8],
    user_id: Uuid,
    ttl_secs: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO password_resets (token_hash, user_id, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3))",
    )
    .bind(token_hash)
    .bind(user_id)
    .bind(ttl_secs as f64)
    .execute(conn)
    .await?;
    Ok(())
}

/// Uses a live reset token; returns its user. Every other pending token of the user dies too.
/// Whether `token_hash` is an unused, unexpired reset token (without using it).
pub async fn password_reset_is_valid(
    conn: &mut PgConnection,
    token_hash: &[u8],
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM password_resets
                        WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now())",
    )
    .bind(token_hash)
    .fetch_one(conn)
    .await
}

pub async fn consume_password_reset(
    conn: &mut PgConnection,
    token_hash: &[u8],
) -> Result<Option<Uuid>, sqlx::Error> {
    let user: Option<Uuid> = sqlx::query_scalar(
        "UPDATE password_resets SET used_at = now()
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
         RETURNING user_id",
    )
    .bind(token_hash)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(user_id) = user {
        sqlx::query(
            "UPDATE password_resets SET used_at = now() WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user_id)
        .execute(conn)
        .await?;
    }
    Ok(user)
}

// ---------------------------------------------------------------------------------------------
// Device PINs

/// `device_name` is the ciphertext of the user's name for the device (see
/// [`super::sealed::seal`], table `device_pins`, row = `id`, subject = `user_id`).
pub async fn insert_device_pin(
    conn: &mut PgConnection,
    id: Uuid,
    user_id: Uuid,
    device_name: &[u8],
    secret_hash: &[u8],
    pin_hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO device_pins (id, user_id, device_name, secret_hash, pin_hash)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(user_id)
    .bind(device_name)
    .bind(secret_hash)
    .bind(pin_hash)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Clone, Debug, FromRow)]
pub struct DevicePinRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub secret_hash: Vec<u8>,
    pub pin_hash: String,
    pub failed_attempts: i32,
}

/// A device credential that has not been revoked.
pub async fn live_device_pin(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<DevicePinRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, user_id, secret_hash, pin_hash, failed_attempts
         FROM device_pins WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Reserves a PIN attempt's place in the credential's failure count before the PIN is checked
/// (it counts as a failure until [`succeed_device_pin`]); the place, or `None` when the
/// credential is revoked.
pub async fn reserve_device_pin(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE device_pins SET failed_attempts = failed_attempts + 1
         WHERE id = $1 AND revoked_at IS NULL
         RETURNING failed_attempts",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Revokes the credential; true for the one call that did.
pub async fn revoke_device_pin(conn: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE device_pins SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// A right PIN at place `place`: its place and the failures before it are forgiven (places
/// reserved after it stay counted). False when the credential was revoked meanwhile.
pub async fn succeed_device_pin(
    conn: &mut PgConnection,
    id: Uuid,
    place: i32,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE device_pins SET failed_attempts = GREATEST(failed_attempts - $2, 0),
             last_used_at = now()
         WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(place)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

// ---------------------------------------------------------------------------------------------
// Revocation feed

#[derive(Clone, Debug, FromRow)]
pub struct RevocationRow {
    pub session_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub revoked_at: DateTime<Utc>,
}

/// Revocations at or after `since`, oldest first, and the database clock.
pub async fn revocations_since(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<RevocationRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT session_id, user_id, revoked_at FROM revocations
         WHERE revoked_at >= $1 ORDER BY revoked_at, id LIMIT $2",
    )
    .bind(since)
    .bind(limit)
    .fetch_all(conn)
    .await
}
