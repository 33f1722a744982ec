//! Passwords: reset by emailed token, and change by the signed-in user. Either revokes sessions.

use std::sync::{Arc, Mutex};

use carehub_platform::audit::Action;
use carehub_platform::auth;
use carehub_platform::errors::FieldViolations;
use carehub_platform::idempotency;
use carehub_proto::common::v1::ErrorReason;
use carehub_proto::identity::v1::*;
use futures::future::BoxFuture;
use sqlx::PgConnection;
use tonic::{Request, Response};
use uuid::Uuid;

use super::credentials::{
    check_own_password, check_secret, check_token, confirm_checked_password, is_active,
    lock_own_credentials, secs, signed_in, Reply, PASSWORD_MAX,
};
use super::{scope, security};
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

pub async fn request_password_reset(
    state: &AppState,
    req: Request<RequestPasswordResetRequest>,
) -> Reply<()> {
    request_reset_inner(state, req).await?;
    Ok(Response::new(()))
}

async fn request_reset_inner(
    state: &AppState,
    req: Request<RequestPasswordResetRequest>,
) -> Result<()> {
    let caller = auth::caller(&req)?;
    let key = idempotency::key_of(&req)?;
    let mut v = FieldViolations::new();
    let email = validation::check_email(&mut v, "email", &req.get_ref().email);
    v.finish()?;
    let email = email.unwrap_or_default();
    let email_index = crate::store::sealed::email_candidates(&state.crypto, &email)?;
    let ttl = secs(state.settings.password_reset_ttl_secs);
    // The token leaves the transaction only to be sent after the commit; a replayed request
    // sends nothing again.
    let outbox: Arc<Mutex<Option<Notification>>> = Arc::default();
    let slot = outbox.clone();
    idempotency::run(
        &state.idempotency,
        &scope("RequestPasswordReset"),
        "anon",
        key.as_deref(),
        req.get_ref(),
        move |conn: &mut PgConnection| -> BoxFuture<'_, Result<()>> {
            Box::pin(async move {
                let Some(cred) = store::credentials_by_email(conn, &email_index).await? else {
                    return Ok(());
                };
                if !is_active(&cred) {
                    return Ok(());
                }
                let token = tokens::new_token();
                store::insert_password_reset(conn, &tokens::hash(&token), cred.id, ttl).await?;
                let event = security::account(
                    &caller,
                    "identity.password.reset_request",
                    Action::Execute,
                    cred.id,
                );
                security::record(conn, event).await?;
                if let Ok(mut s) = slot.lock() {
                    *s = Some(Notification {
                        user_id: cred.id,
                        channel: Channel::Email,
                        // The address asked for: the account was found by its blind index.
                        destination: email.clone(),
                        kind: NotificationKind::PasswordReset { token },
                    });
                }
                Ok(())
            })
        },
    )
    .await?;
    let pending = outbox.lock().ok().and_then(|mut s| s.take());
    if let Some(n) = pending {
        let user_id = n.user_id;
        if let Err(e) = state.notifier.send(n).await {
            tracing::warn!(user_id = %user_id, error = %e, "password-reset notification not sent");
        }
    }
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

pub async fn reset_password(state: &AppState, req: Request<ResetPasswordRequest>) -> Reply<()> {
    reset_password_inner(state, req).await?;
    Ok(Response::new(()))
}

async fn reset_password_inner(state: &AppState, req: Request<ResetPasswordRequest>) -> Result<()> {
    let caller = auth::caller(&req)?;
    let key = idempotency::key_of(&req)?;
    let r = req.get_ref();
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
    let changed: Arc<Mutex<Option<Uuid>>> = Arc::default();
    let slot = changed.clone();
    idempotency::run(
        &state.idempotency,
        &scope("ResetPassword"),
        "anon",
        key.as_deref(),
        req.get_ref(),
        move |conn: &mut PgConnection| -> BoxFuture<'_, Result<()>> {
            Box::pin(async move {
                let user_id = store::consume_password_reset(conn, &token_hash)
                    .await?
                    .ok_or(IdentityError::CodeInvalid {
                        field: "reset_token",
                    })?;
                let phc = phc.ok_or(IdentityError::CodeInvalid {
                    field: "reset_token",
                })?;
                store::set_password(conn, user_id, &phc).await?;
                revocation::revoke_user_sessions(conn, user_id, "password_reset", None).await?;
                let event =
                    security::account(&caller, "identity.password.reset", Action::Update, user_id);
                security::record(conn, event).await?;
                if let Ok(mut s) = slot.lock() {
                    *s = Some(user_id);
                }
                Ok(())
            })
        },
    )
    .await?;
    let user = changed.lock().ok().and_then(|mut s| s.take());
    if let Some(user_id) = user {
        tracing::info!(user_id = %user_id, "password reset; every session revoked");
        notify_password_changed(state, user_id).await;
    }
    Ok(())
}

pub async fn change_password(state: &AppState, req: Request<ChangePasswordRequest>) -> Reply<()> {
    change_password_inner(state, req).await?;
    Ok(Response::new(()))
}

async fn change_password_inner(
    state: &AppState,
    req: Request<ChangePasswordRequest>,
) -> Result<()> {
    let caller = auth::caller(&req)?;
    let user = signed_in(&caller)?;
    let key = idempotency::key_of(&req)?;
    let r = req.get_ref();
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
    let event = security::account(&caller, "identity.password.change", Action::Update, user_id);
    idempotency::run(
        &state.idempotency,
        &scope("ChangePassword"),
        &caller.actor_key(),
        key.as_deref(),
        req.get_ref(),
        move |conn: &mut PgConnection| -> BoxFuture<'_, Result<()>> {
            Box::pin(async move {
                let cred = lock_own_credentials(conn, user_id).await?;
                confirm_checked_password(&cred, checked.as_deref())?;
                let phc = phc.ok_or(IdentityError::InvalidCredentials)?;
                store::set_password(conn, user_id, &phc).await?;
                store::clear_session_password_change(conn, session_id).await?;
                revocation::revoke_user_sessions(
                    conn,
                    user_id,
                    "password_changed",
                    Some(session_id),
                )
                .await?;
                security::record(conn, event).await?;
                Ok(())
            })
        },
    )
    .await?;
    tracing::info!(user_id = %user_id, "password changed; other sessions revoked");
    notify_password_changed(state, user_id).await;
    Ok(())
}
