//! Passwords: reset by emailed token, and change by the signed-in user. Either revokes sessions.

use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::common::v1::ErrorReason;
use carehub_proto::identity::v1::*;
use uuid::Uuid;

use super::accounts::Outbox;
use super::credentials::{
    check_own_password, check_secret, check_token, confirm_checked_password, is_active,
    lock_own_credentials, secs, PASSWORD_MAX,
};
use super::{kinds, security};
use crate::domain::{password, tokens, validation};
use crate::error::{IdentityError, Result};
use crate::notify::{Channel, Notification, NotificationKind};
use crate::store::revocation;
use crate::store::sessions as store;
use crate::AppState;

fn check_new_password(v: &mut FieldViolations, field: &str, value: &str) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if let Some(why) = password::policy_violation(value) {
        v.add_with_reason(field, why, ErrorReason::PasswordPolicy);
    }
}

/// Answers kept under one actor for everyone: nobody is signed in, and the answer is the
/// same empty one whether or not the email has an account.
pub async fn request_password_reset(
    state: &AppState,
    call: &Call,
    r: RequestPasswordResetRequest,
) -> Result<()> {
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let email = validation::check_email(&mut v, "email", &r.email);
    v.finish()?;
    let email = email.unwrap_or_default();
    let email_index = crate::store::sealed::email_candidates(&state.crypto, &email)?;
    let ttl = secs(state.settings.password_reset_ttl_secs);
    // The token's notification is staged in the transaction that stores the token (written
    // there by the messaging notifier, or sent after the commit by a sandbox); a replayed
    // request sends nothing again.
    let outbox = Outbox::new(state);
    call.mutate_as(&state.idempotency, "anon", &r, async |conn| {
        let Some(cred) = store::credentials_by_email(conn, &email_index).await? else {
            return Ok(Change::unaudited(()));
        };
        if !is_active(&cred) {
            return Ok(Change::unaudited(()));
        }
        let token = tokens::new_token();
        store::insert_password_reset(conn, &tokens::hash(&token), cred.id, ttl).await?;
        let event = security::account(&call.caller, kinds::PASSWORD_RESET_REQUEST, cred.id);
        let n = Notification {
            user_id: cred.id,
            channel: Channel::Email,
            // The address asked for: the account was found by its blind index.
            destination: email.clone(),
            kind: NotificationKind::PasswordReset { token },
        };
        outbox.stage(conn, n).await?;
        Ok::<_, IdentityError>(Change::new((), event))
    })
    .await?;
    outbox.deliver(state).await;
    Ok(())
}

async fn notify_password_changed(state: &AppState, user_id: Uuid) {
    let email = match state.pool.acquire().await {
        Ok(mut conn) => crate::store::accounts::get_user(&mut conn, &state.crypto, user_id)
            .await
            .ok()
            .flatten()
            .map(|a| a.email),
        Err(_) => None,
    };
    if let Some(destination) = email {
        let n = Notification {
            user_id,
            channel: Channel::Email,
            destination,
            kind: NotificationKind::PasswordChanged,
        };
        if let Err(e) = state.notifier.send(n).await {
            tracing::warn!(user_id = %user_id, error = %e, "password-changed notification not sent");
        }
    }
}

pub async fn reset_password(state: &AppState, call: &Call, r: ResetPasswordRequest) -> Result<()> {
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    check_token(&mut v, "reset_token", &r.reset_token);
    check_new_password(&mut v, "new_password", &r.new_password);
    v.finish()?;
    let token_hash = tokens::hash(&r.reset_token);
    // The new password is hashed before the transaction (no connection held while argon2
    // runs), and only for a token that is still valid.
    let permit = state.hasher.admit()?;
    let valid = {
        let mut conn = state.pool.acquire().await?;
        store::password_reset_is_valid(&mut conn, &token_hash).await?
    };
    let phc = if valid {
        Some(permit.hash(r.new_password.clone()).await?)
    } else {
        None
    };
    drop(permit);
    let mut changed: Option<Uuid> = None;
    let done = call
        .mutate_as(&state.idempotency, "anon", &r, async |conn| {
            let invalid = || IdentityError::CodeInvalid {
                field: "reset_token",
            };
            let user_id = store::consume_password_reset(conn, &token_hash)
                .await?
                .ok_or_else(invalid)?;
            let phc = phc.ok_or_else(invalid)?;
            store::set_password(conn, user_id, &phc).await?;
            revocation::revoke_user_sessions(conn, user_id, "password_reset", None).await?;
            let event = security::account(&call.caller, kinds::PASSWORD_RESET, user_id);
            changed = Some(user_id);
            Ok::<_, IdentityError>(Change::new((), event))
        })
        .await;
    // Before answering, whether or not the change committed (an eviction for nothing costs
    // one read).
    if let Some(user_id) = changed {
        state.session_cache.evict_user(user_id);
    }
    done?;
    if let Some(user_id) = changed {
        tracing::info!(user_id = %user_id, "password reset; every session revoked");
        notify_password_changed(state, user_id).await;
    }
    Ok(())
}

pub async fn change_password(
    state: &AppState,
    call: &Call,
    r: ChangePasswordRequest,
) -> Result<()> {
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    check_secret(
        &mut v,
        "current_password",
        &r.current_password,
        PASSWORD_MAX,
    );
    check_new_password(&mut v, "new_password", &r.new_password);
    if !r.new_password.is_empty() && r.new_password == r.current_password {
        v.add("new_password", "must differ from current_password");
    }
    v.finish()?;
    let (current, new) = (r.current_password.clone(), r.new_password.clone());
    let (user_id, session_id) = (user.user_id, user.session_id);
    // argon2 before the transaction: no connection is held while it runs. (A retry whose
    // first try succeeded fails this check and gets the stored answer from the store.)
    let permit = state.hasher.admit()?;
    let checked = check_own_password(&state.pool, &permit, user_id, current).await?;
    let phc = match checked {
        Some(_) => Some(permit.hash(new).await?),
        None => None,
    };
    drop(permit);
    let event = security::account(&call.caller, kinds::PASSWORD_CHANGE, user_id);
    let done = call
        .mutate(&state.idempotency, &r, async |conn| {
            let cred = lock_own_credentials(conn, user_id).await?;
            confirm_checked_password(&cred, checked.as_deref())?;
            let phc = phc.ok_or(IdentityError::InvalidCredentials)?;
            store::set_password(conn, user_id, &phc).await?;
            store::clear_session_password_change(conn, session_id).await?;
            revocation::revoke_user_sessions(conn, user_id, "password_changed", Some(session_id))
                .await?;
            Ok::<_, IdentityError>(Change::new((), event))
        })
        .await;
    // Before answering, whether or not the change committed.
    state.session_cache.evict_user(user_id);
    done?;
    tracing::info!(user_id = %user_id, "password changed; other sessions revoked");
    notify_password_changed(state, user_id).await;
    Ok(())
}
