//! Identity's PHI through platform::crypto: every name, date of birth, email and phone, and the
//! IP address and user agent a session was opened from, and free text that can carry personal
//! or health data (an admin's `users.status_reason`, a user's `device_pins.device_name`), is
//! stored as a ciphertext under the user's data key (subject = the user id, row = the row's id),
//! and email and phone are looked up through blind indexes (email at login and registration,
//! phone when messaging's SMS ledger reports a keyword from a number). Login-throttle keys are
//! keyed hashes of the email or source address.
//!
//! Encryption may reserve or create a data key on its own pooled connection; the user's first
//! key is made at registration, later writes and every read with a cached key touch no key
//! table.

use carehub_platform::crypto::{Envelope, Field, Normalization};
use chrono::NaiveDate;
use uuid::Uuid;

use crate::error::{IdentityError, Result};

/// Blind-index scope of `users.email`.
pub const EMAIL_INDEX: &str = "users.email";
/// Blind-index scope of `users.phone` (E.164; not unique: a household may share a number).
pub const PHONE_INDEX: &str = "users.phone";
/// Blind-index scope of login-throttle keys (so that they are not an unkeyed email hash).
pub const THROTTLE_INDEX: &str = "login_throttle.account";
/// Blind-index scope of per-source login-throttle keys (so that the table holds no IP address).
pub const SOURCE_THROTTLE_INDEX: &str = "login_throttle.source";

/// The blind index stored with a (lower-cased) email, under the current key.
pub fn email_index(crypto: &Envelope, email: &str) -> Result<Vec<u8>> {
    Ok(crypto
        .blind_index()
        .compute(EMAIL_INDEX, Normalization::CaseInsensitive, email)?)
}

/// Every blind index an email may be stored under (one per held key version).
pub fn email_candidates(crypto: &Envelope, email: &str) -> Result<Vec<Vec<u8>>> {
    Ok(crypto
        .blind_index()
        .candidates(EMAIL_INDEX, Normalization::CaseInsensitive, email)?)
}

/// The blind index stored with an E.164 phone, under the current key.
pub fn phone_index(crypto: &Envelope, phone: &str) -> Result<Vec<u8>> {
    Ok(crypto
        .blind_index()
        .compute(PHONE_INDEX, Normalization::Phone, phone)?)
}

/// Every blind index a phone may be stored under (one per held key version).
pub fn phone_candidates(crypto: &Envelope, phone: &str) -> Result<Vec<Vec<u8>>> {
    Ok(crypto
        .blind_index()
        .candidates(PHONE_INDEX, Normalization::Phone, phone)?)
}

/// Throttle key of an email address (whether or not an account has it): keyed, so that the
/// throttle table reveals no address.
pub fn account_throttle_key(crypto: &Envelope, email: &str) -> Result<String> {
    let index =
        crypto
            .blind_index()
            .compute(THROTTLE_INDEX, Normalization::CaseInsensitive, email)?;
    Ok(format!("acct:{}", data_encoding::HEXLOWER.encode(&index)))
}

/// Throttle key of a source (IP) address: keyed like the account key, so that the throttle
/// table holds no address. Case-insensitive, so that one IPv6 address written in upper and
/// lower case counts once.
pub fn source_throttle_key(crypto: &Envelope, ip: &str) -> Result<String> {
    let index =
        crypto
            .blind_index()
            .compute(SOURCE_THROTTLE_INDEX, Normalization::CaseInsensitive, ip)?;
    Ok(format!("src:{}", data_encoding::HEXLOWER.encode(&index)))
}

/// Encrypts `value` for `table.column` of row `row` belonging to `user`.
pub async fn seal(
    crypto: &Envelope,
    table: &str,
    column: &str,
    row: Uuid,
    user: Uuid,
    value: &str,
) -> Result<Vec<u8>> {
    let (row, user) = (row.to_string(), user.to_string());
    Ok(crypto
        .encrypt_str(&Field::new(table, column, &row, &user), value)
        .await?)
}

pub async fn open(
    crypto: &Envelope,
    table: &str,
    column: &str,
    row: Uuid,
    user: Uuid,
    ciphertext: &[u8],
) -> Result<String> {
    let (row, user) = (row.to_string(), user.to_string());
    Ok(crypto
        .decrypt_string(&Field::new(table, column, &row, &user), ciphertext)
        .await?)
}

pub async fn seal_opt(
    crypto: &Envelope,
    table: &str,
    column: &str,
    row: Uuid,
    user: Uuid,
    value: Option<&str>,
) -> Result<Option<Vec<u8>>> {
    match value {
        Some(v) => Ok(Some(seal(crypto, table, column, row, user, v).await?)),
        None => Ok(None),
    }
}

pub async fn open_opt(
    crypto: &Envelope,
    table: &str,
    column: &str,
    row: Uuid,
    user: Uuid,
    ciphertext: Option<&[u8]>,
) -> Result<Option<String>> {
    match ciphertext {
        Some(ct) => Ok(Some(open(crypto, table, column, row, user, ct).await?)),
        None => Ok(None),
    }
}

/// A `users` column of user `id`.
pub async fn seal_user(crypto: &Envelope, id: Uuid, column: &str, value: &str) -> Result<Vec<u8>> {
    seal(crypto, "users", column, id, id, value).await
}

pub async fn seal_user_opt(
    crypto: &Envelope,
    id: Uuid,
    column: &str,
    value: Option<&str>,
) -> Result<Option<Vec<u8>>> {
    match value {
        Some(v) => Ok(Some(seal_user(crypto, id, column, v).await?)),
        None => Ok(None),
    }
}

pub async fn open_user(crypto: &Envelope, id: Uuid, column: &str, ct: &[u8]) -> Result<String> {
    open(crypto, "users", column, id, id, ct).await
}

pub async fn open_user_opt(
    crypto: &Envelope,
    id: Uuid,
    column: &str,
    ct: Option<&[u8]>,
) -> Result<Option<String>> {
    match ct {
        Some(ct) => Ok(Some(open_user(crypto, id, column, ct).await?)),
        None => Ok(None),
    }
}

/// Dates are sealed as `YYYY-MM-DD`.
pub async fn seal_date(
    crypto: &Envelope,
    id: Uuid,
    column: &str,
    date: Option<NaiveDate>,
) -> Result<Option<Vec<u8>>> {
    let text = date.map(|d| d.format("%Y-%m-%d").to_string());
    seal_user_opt(crypto, id, column, text.as_deref()).await
}

pub async fn open_date(
    crypto: &Envelope,
    id: Uuid,
    column: &str,
    ct: Option<&[u8]>,
) -> Result<Option<NaiveDate>> {
    match open_user_opt(crypto, id, column, ct).await? {
        Some(text) => NaiveDate::parse_from_str(&text, "%Y-%m-%d")
            .map(Some)
            .map_err(|_| IdentityError::Internal(format!("user {id}: {column} is not a date"))),
        None => Ok(None),
    }
}
