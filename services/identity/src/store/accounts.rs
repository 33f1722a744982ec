//! SQL of accounts: users, verification codes, consents, communication preferences.

use carehub_platform::auth::Role;
use carehub_platform::crypto::Envelope;
use carehub_platform::errors::FieldViolations;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::account::{self, Account, AccountStatus, ConsentChange, Contact, NewAccount};
use crate::domain::password::PasswordHasher;
use crate::domain::validation;
use crate::error::{IdentityError, Result};
use crate::store::sealed;
// Consents and preferences moved to their own file; callers keep using `store::accounts::*`.
pub use crate::store::preferences::*;

const USER_COLUMNS: &str = "id, role, status, email, email_verified_at, phone, phone_verified_at, \
    given_name, family_name, date_of_birth, time_zone, (totp_secret IS NOT NULL) AS mfa_enabled, \
    password_change_required, created_at, updated_at";

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    role: String,
    status: String,
    email: Vec<u8>,
    email_verified_at: Option<DateTime<Utc>>,
    phone: Option<Vec<u8>>,
    phone_verified_at: Option<DateTime<Utc>>,
    given_name: Vec<u8>,
    family_name: Vec<u8>,
    date_of_birth: Option<Vec<u8>>,
    time_zone: String,
    mfa_enabled: bool,
    password_change_required: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Decrypts a user row into the domain type.
async fn account(crypto: &Envelope, r: UserRow) -> Result<Account> {
    let id = r.id;
    Ok(Account {
        id,
        role: Role::parse(&r.role)
            .ok_or_else(|| IdentityError::Internal(format!("user {id} has an unknown role")))?,
        status: AccountStatus::parse(&r.status)
            .ok_or_else(|| IdentityError::Internal(format!("user {id} has an unknown status")))?,
        email: sealed::open_user(crypto, id, "email", &r.email).await?,
        email_verified_at: r.email_verified_at,
        phone: sealed::open_user_opt(crypto, id, "phone", r.phone.as_deref()).await?,
        phone_verified_at: r.phone_verified_at,
        given_name: sealed::open_user(crypto, id, "given_name", &r.given_name).await?,
        family_name: sealed::open_user(crypto, id, "family_name", &r.family_name).await?,
        date_of_birth: sealed::open_date(crypto, id, "date_of_birth", r.date_of_birth.as_deref())
            .await?,
        time_zone: r.time_zone,
        mfa_enabled: r.mfa_enabled,
        password_change_required: r.password_change_required,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

async fn account_opt(crypto: &Envelope, row: Option<UserRow>) -> Result<Option<Account>> {
    match row {
        Some(r) => Ok(Some(account(crypto, r).await?)),
        None => Ok(None),
    }
}

/// Whether another user holds this email under any blind-index key version. The unique index
/// covers the current version (and concurrent inserts); this covers rows written before the
/// blind-index key was rotated.
async fn email_taken(
    conn: &mut PgConnection,
    crypto: &Envelope,
    email: &str,
    id: Uuid,
) -> Result<bool> {
    let candidates = sealed::email_candidates(crypto, email)?;
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM users WHERE email_bidx = ANY($1) AND id <> $2)",
    )
    .bind(candidates)
    .bind(id)
    .fetch_one(&mut *conn)
    .await?)
}

/// Inserts a user (ALREADY_EXISTS when the email is taken).
pub async fn insert_user(
    conn: &mut PgConnection,
    crypto: &Envelope,
    new: &NewAccount,
) -> Result<Account> {
    let id = new.id;
    if email_taken(conn, crypto, &new.email, id).await? {
        return Err(IdentityError::EmailTaken);
    }
    let email = sealed::seal_user(crypto, id, "email", &new.email).await?;
    let email_bidx = sealed::email_index(crypto, &new.email)?;
    let phone = sealed::seal_user_opt(crypto, id, "phone", new.phone.as_deref()).await?;
    let phone_bidx = match &new.phone {
        Some(p) => Some(sealed::phone_index(crypto, p)?),
        None => None,
    };
    let given = sealed::seal_user(crypto, id, "given_name", &new.given_name).await?;
    let family = sealed::seal_user(crypto, id, "family_name", &new.family_name).await?;
    let dob = sealed::seal_date(crypto, id, "date_of_birth", new.date_of_birth).await?;
    let row: UserRow = sqlx::query_as(&format!(
        "INSERT INTO users (id, role, email, email_bidx, phone, given_name, family_name,
                            date_of_birth, time_zone, password_hash, password_change_required,
                            phone_bidx)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         RETURNING {USER_COLUMNS}"
    ))
    .bind(id)
    .bind(new.role.as_str())
    .bind(email)
    .bind(email_bidx)
    .bind(phone)
    .bind(given)
    .bind(family)
    .bind(dob)
    .bind(&new.time_zone)
    .bind(&new.password_hash)
    .bind(new.password_change_required)
    .bind(phone_bidx)
    .fetch_one(&mut *conn)
    .await?;
    account(crypto, row).await
}

/// The user, if any.
pub async fn get_user(
    conn: &mut PgConnection,
    crypto: &Envelope,
    id: Uuid,
) -> Result<Option<Account>> {
    let row: Option<UserRow> =
        sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    account_opt(crypto, row).await
}

/// The user, locked for update until the transaction ends.
pub async fn lock_user(
    conn: &mut PgConnection,
    crypto: &Envelope,
    id: Uuid,
) -> Result<Option<Account>> {
    let row: Option<UserRow> = sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    account_opt(crypto, row).await
}

/// The role of user `id`, if any (nothing decrypted).
pub async fn role_of(conn: &mut PgConnection, id: Uuid) -> Result<Option<Role>> {
    let role: Option<String> = sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    role.map(|r| {
        Role::parse(&r)
            .ok_or_else(|| IdentityError::Internal(format!("user {id} has an unknown role")))
    })
    .transpose()
}

/// The user or NOT_FOUND.
pub async fn require_user(conn: &mut PgConnection, crypto: &Envelope, id: Uuid) -> Result<Account> {
    get_user(conn, crypto, id)
        .await?
        .ok_or_else(|| IdentityError::NotFound {
            what: "user",
            id: id.to_string(),
        })
}

/// Profile fields to change; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct ProfileUpdate {
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    /// `Some(None)` removes the phone.
    pub phone: Option<Option<String>>,
    pub time_zone: Option<String>,
    pub email: Option<String>,
}

/// Applies `u`; a changed email or phone loses its verified mark. The comparison with the
/// current values happens here, on the decrypted row locked for the transaction.
pub async fn update_profile(
    conn: &mut PgConnection,
    crypto: &Envelope,
    id: Uuid,
    u: &ProfileUpdate,
) -> Result<Account> {
    let current = lock_user(conn, crypto, id)
        .await?
        .ok_or_else(|| IdentityError::NotFound {
            what: "user",
            id: id.to_string(),
        })?;
    let email_changed = u.email.as_ref().is_some_and(|e| *e != current.email);
    let phone_changed = u.phone.as_ref().is_some_and(|p| *p != current.phone);
    let email = match (&u.email, email_changed) {
        (Some(e), true) if email_taken(conn, crypto, e, id).await? => {
            return Err(IdentityError::EmailTaken)
        }
        (Some(e), true) => Some((
            sealed::seal_user(crypto, id, "email", e).await?,
            sealed::email_index(crypto, e)?,
        )),
        _ => None,
    };
    let phone = match (&u.phone, phone_changed) {
        (Some(p), true) => Some(sealed::seal_user_opt(crypto, id, "phone", p.as_deref()).await?),
        _ => None,
    };
    let phone_bidx = match (&u.phone, phone_changed) {
        (Some(Some(p)), true) => Some(sealed::phone_index(crypto, p)?),
        _ => None,
    };
    let given = sealed::seal_user_opt(crypto, id, "given_name", u.given_name.as_deref()).await?;
    let family = sealed::seal_user_opt(crypto, id, "family_name", u.family_name.as_deref()).await?;
    let (email_ct, email_bidx) = email.unzip();
    let row: UserRow = sqlx::query_as(&format!(
        "UPDATE users SET
            given_name = COALESCE($2, given_name),
            family_name = COALESCE($3, family_name),
            phone_verified_at = CASE WHEN $4 THEN NULL ELSE phone_verified_at END,
            phone = CASE WHEN $4 THEN $5 ELSE phone END,
            phone_bidx = CASE WHEN $4 THEN $9 ELSE phone_bidx END,
            time_zone = COALESCE($6, time_zone),
            email_verified_at = CASE WHEN $7::bytea IS NOT NULL THEN NULL ELSE email_verified_at END,
            email = COALESCE($7, email),
            email_bidx = COALESCE($8, email_bidx),
            updated_at = now()
         WHERE id = $1
         RETURNING {USER_COLUMNS}"
    ))
    .bind(id)
    .bind(given)
    .bind(family)
    .bind(phone.is_some())
    .bind(phone.flatten())
    .bind(&u.time_zone)
    .bind(email_ct)
    .bind(email_bidx)
    .bind(phone_bidx)
    .fetch_one(&mut *conn)
    .await?;
    account(crypto, row).await
}

/// The accounts whose verified phone is `phone` (E.164), locked until the transaction ends (in
/// id order, like every lock of several accounts), found through the phone's blind index under
/// every held key version and confirmed on the decrypted number (an index only narrows). A
/// number changed since it was verified is not verified.
pub async fn lock_users_with_verified_phone(
    conn: &mut PgConnection,
    crypto: &Envelope,
    phone: &str,
) -> Result<Vec<Uuid>> {
    let candidates = sealed::phone_candidates(crypto, phone)?;
    let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT id, phone FROM users
         WHERE phone_bidx = ANY($1) AND phone IS NOT NULL AND phone_verified_at IS NOT NULL
         ORDER BY id FOR UPDATE",
    )
    .bind(candidates)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, ciphertext) in rows {
        match sealed::open_user(crypto, id, "phone", &ciphertext).await {
            Ok(p) if p == phone => out.push(id),
            Ok(_) => {}
            // A shredded account holds no number any more; one bad row must not block the rest.
            Err(e) if unreadable(&e) => {
                tracing::warn!(user_id = %id, error = %e, "phone unreadable; account skipped");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// A ciphertext that will never open (shredded, altered, foreign), as opposed to keys or a
/// database that are unavailable for now.
fn unreadable(e: &IdentityError) -> bool {
    use carehub_platform::crypto::CryptoError as C;
    matches!(
        e,
        IdentityError::Crypto(
            C::Shredded { .. }
                | C::Malformed { .. }
                | C::Authentication { .. }
                | C::UnknownDataKey { .. }
                | C::Unwrap { .. }
        )
    )
}

/// Rows the phone-index backfill reads at once.
const PHONE_BACKFILL_BATCH: i64 = 500;

/// Gives every phone written before `users.phone_bidx` existed its blind index (the key is
/// outside the database, so the migration could not). Runs when identity starts, before it
/// serves; a replica starting at the same time writes the same values. A row whose phone will
/// never decrypt (a crypto-shredded account) is skipped and logged by id. Returns the rows filled.
pub async fn backfill_phone_index(pool: &PgPool, crypto: &Envelope) -> Result<u64> {
    let mut filled = 0;
    let mut after = Uuid::nil();
    loop {
        let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
            "SELECT id, phone FROM users
             WHERE phone IS NOT NULL AND phone_bidx IS NULL AND id > $1
             ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(PHONE_BACKFILL_BATCH)
        .fetch_all(pool)
        .await?;
        let Some((last, _)) = rows.last() else {
            return Ok(filled);
        };
        after = *last;
        for (id, ciphertext) in rows {
            let index = match sealed::open_user(crypto, id, "phone", &ciphertext).await {
                Ok(phone) => sealed::phone_index(crypto, &phone)?,
                Err(e) if unreadable(&e) => {
                    tracing::warn!(user_id = %id, error = %e, "phone not indexed: unreadable");
                    continue;
                }
                // Keys or database unavailable: starting without the index would miss numbers.
                Err(e) => return Err(e),
            };
            // Only if the phone is still the one read: a concurrent change wrote its own index.
            filled += sqlx::query(
                "UPDATE users SET phone_bidx = $2
                 WHERE id = $1 AND phone = $3 AND phone_bidx IS NULL",
            )
            .bind(id)
            .bind(index)
            .bind(&ciphertext)
            .execute(pool)
            .await?
            .rows_affected();
        }
    }
}

/// Sets the status (with who, why and when). The caller evicts the user's sessions from its
/// own session cache once the transaction has ended.
pub async fn set_status(
    conn: &mut PgConnection,
    crypto: &Envelope,
    id: Uuid,
    status: AccountStatus,
    reason: &str,
    by: Uuid,
) -> Result<Account> {
    // Free text an admin typed: it can name the person or their health, so it is sealed under
    // the user's data key like the rest of their PHI.
    let reason = super::sealed::seal_user(crypto, id, "status_reason", reason).await?;
    let row: UserRow = sqlx::query_as(&format!(
        "UPDATE users SET status = $2, status_reason = $3, status_changed_at = now(),
                          status_changed_by = $4, updated_at = now()
         WHERE id = $1
         RETURNING {USER_COLUMNS}"
    ))
    .bind(id)
    .bind(status.as_str())
    .bind(reason)
    .bind(by)
    .fetch_one(&mut *conn)
    .await?;
    // Other replicas stop answering this user's sessions from memory when this commits.
    crate::session_cache::notify_user(conn, id).await?;
    account(crypto, row).await
}

/// Marks `channel` verified when it still holds `destination`. Returns the user.
pub async fn mark_verified(
    conn: &mut PgConnection,
    crypto: &Envelope,
    id: Uuid,
    channel: Contact,
    destination: &str,
) -> Result<Option<Account>> {
    let Some(current) = lock_user(conn, crypto, id).await? else {
        return Ok(None);
    };
    let holds = match channel {
        Contact::Email => current.email == destination,
        Contact::Phone => current.phone.as_deref() == Some(destination),
    };
    if !holds {
        return Ok(None);
    }
    let sql = match channel {
        Contact::Email => format!(
            "UPDATE users SET email_verified_at = now(), updated_at = now()
             WHERE id = $1 RETURNING {USER_COLUMNS}"
        ),
        Contact::Phone => format!(
            "UPDATE users SET phone_verified_at = now(), updated_at = now()
             WHERE id = $1 RETURNING {USER_COLUMNS}"
        ),
    };
    let row: Option<UserRow> = sqlx::query_as(&sql)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    account_opt(crypto, row).await
}

// ---- verification codes ----

/// Stores a code's hash for `destination`, valid `ttl_secs`; returns its expiry.
pub async fn insert_verification_code(
    conn: &mut PgConnection,
    crypto: &Envelope,
    user_id: Uuid,
    channel: Contact,
    destination: &str,
    code_hash: &[u8],
    ttl_secs: u64,
) -> Result<DateTime<Utc>> {
    let ttl = i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2);
    let id = Uuid::now_v7();
    let destination = sealed::seal(
        crypto,
        "verification_codes",
        "destination",
        id,
        user_id,
        destination,
    )
    .await?;
    let expires: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO verification_codes (id, user_id, channel, destination, code_hash, expires_at)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6::double precision))
         RETURNING expires_at",
    )
    .bind(id)
    .bind(user_id)
    .bind(channel.as_str())
    .bind(destination)
    .bind(code_hash)
    .bind(ttl as f64)
    .fetch_one(&mut *conn)
    .await?;
    Ok(expires)
}

/// How many codes were sent to `user_id` on `channel` within the last hour.
pub async fn codes_sent_last_hour(
    conn: &mut PgConnection,
    user_id: Uuid,
    channel: Contact,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM verification_codes
         WHERE user_id = $1 AND channel = $2 AND created_at > now() - interval '1 hour'",
    )
    .bind(user_id)
    .bind(channel.as_str())
    .fetch_one(&mut *conn)
    .await?)
}

/// The newest code of `user_id` on `channel` that can still be used, locked.
#[derive(Debug)]
pub struct LiveCode {
    pub id: Uuid,
    pub destination: String,
    pub code_hash: Vec<u8>,
    pub attempts: i32,
}

pub async fn lock_live_code(
    conn: &mut PgConnection,
    crypto: &Envelope,
    user_id: Uuid,
    channel: Contact,
) -> Result<Option<LiveCode>> {
    let row: Option<(Uuid, Vec<u8>, Vec<u8>, i32)> = sqlx::query_as(
        "SELECT id, destination, code_hash, attempts FROM verification_codes
         WHERE user_id = $1 AND channel = $2 AND used_at IS NULL AND expires_at > now()
         ORDER BY created_at DESC, id DESC LIMIT 1
         FOR UPDATE",
    )
    .bind(user_id)
    .bind(channel.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some((id, destination, code_hash, attempts)) = row else {
        return Ok(None);
    };
    let destination = sealed::open(
        crypto,
        "verification_codes",
        "destination",
        id,
        user_id,
        &destination,
    )
    .await?;
    Ok(Some(LiveCode {
        id,
        destination,
        code_hash,
        attempts,
    }))
}

/// Marks a code used; false when it already was.
pub async fn use_code(conn: &mut PgConnection, id: Uuid) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE verification_codes SET used_at = now() WHERE id = $1 AND used_at IS NULL",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1)
}

/// Counts a wrong attempt against a code (outside the failed request's transaction).
pub async fn record_failed_code_attempt(pool: &PgPool, id: Uuid) -> Result<()> {
    sqlx::query("UPDATE verification_codes SET attempts = attempts + 1 WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Ends every unused code of `user_id` on `channel` (after the address changed).
pub async fn expire_codes(conn: &mut PgConnection, user_id: Uuid, channel: Contact) -> Result<()> {
    sqlx::query(
        "UPDATE verification_codes SET expires_at = LEAST(expires_at, now())
         WHERE user_id = $1 AND channel = $2 AND used_at IS NULL",
    )
    .bind(user_id)
    .bind(channel.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// ---- accounts created outside the API ----

/// Creates an active account directly (the `carehub admin create` CLI for the first admin of a
/// fresh install, and tests), with its consents and preferences rows, in one transaction.
///
/// With `password: None` a one-time password is generated, returned once, and must be changed
/// at first login; with `Some(p)` the account uses `p` (which must satisfy the policy).
/// Errors: INVALID_ARGUMENT for a bad email/name/password, ALREADY_EXISTS for a taken email.
// The account's fields plus the three services it needs (pool, crypto, hasher); a struct for
// one CLI path would only move the list.
#[allow(clippy::too_many_arguments)]
pub async fn create_user_direct(
    pool: &PgPool,
    crypto: &Envelope,
    hasher: &PasswordHasher,
    email: &str,
    role: Role,
    given_name: &str,
    family_name: &str,
    password: Option<&str>,
) -> Result<(Account, Option<String>)> {
    let mut v = FieldViolations::new();
    let email = validation::check_email(&mut v, "email", email);
    let given = validation::check_name(&mut v, "given_name", given_name);
    let family = validation::check_name(&mut v, "family_name", family_name);
    if let Some(p) = password {
        validation::check_password(&mut v, "password", p);
    }
    v.finish()?;
    let (Some(email), Some(given_name), Some(family_name)) = (email, given, family) else {
        return Err(IdentityError::Internal("validation".to_owned()));
    };
    let (secret, one_time) = match password {
        Some(p) => (p.to_owned(), None),
        None => {
            let otp = account::new_one_time_password();
            (otp.clone(), Some(otp))
        }
    };
    let password_hash = hasher
        .hash_async(secret)
        .await
        .map_err(IdentityError::from)?;
    let new = NewAccount {
        id: Uuid::now_v7(),
        role,
        email,
        phone: None,
        given_name,
        family_name,
        date_of_birth: None,
        time_zone: "UTC".to_owned(),
        password_hash,
        password_change_required: one_time.is_some(),
    };
    let mut tx = pool.begin().await?;
    let account = insert_user(&mut tx, crypto, &new).await?;
    insert_consents(&mut tx, account.id, &ConsentChange::default()).await?;
    insert_prefs(&mut tx, account.id, false).await?;
    tx.commit().await?;
    Ok((account, one_time))
}

/// How many accounts of `role` exist (any status); for bootstrapping the first admin.
pub async fn count_by_role(pool: &PgPool, role: Role) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM users WHERE role = $1")
            .bind(role.as_str())
            .fetch_one(pool)
            .await?,
    )
}
