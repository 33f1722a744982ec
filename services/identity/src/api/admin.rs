//! Admin actions on accounts: creating users (with a one-time password), reading any account,
//! and suspension, reactivation and termination.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use carehub_platform::audit::Action;
use carehub_platform::auth::{caller, Role};
use carehub_platform::errors::FieldViolations;
use carehub_platform::idempotency;
use carehub_proto::identity::v1 as pb;
use carehub_proto::identity::v1::*;
use chrono::Utc;
use prost::Message;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::accounts::{caller_user_id, checked, on_locked_account, Outbox};
use super::scope;
use crate::api::convert::{role_from_pb, user_to_pb};
use crate::domain::account::{self, ConsentChange, NewAccount, StatusAction};
use crate::domain::validation as val;
use crate::error::IdentityError;
use crate::notify::{Channel, Notification, NotificationKind};
use crate::store::accounts as store;
use crate::AppState;

pub async fn create_user(
    state: &AppState,
    req: Request<CreateUserRequest>,
) -> Result<Response<CreateUserResponse>, Status> {
    let caller = caller(&req)?;
    caller_user_id(&caller)?;
    let key = idempotency::key_of(&req)?;
    let r = req.into_inner();
    let today = Utc::now().date_naive();

    let mut v = FieldViolations::new();
    let email = val::check_email(&mut v, "email", &r.email);
    let role = pb::Role::try_from(r.role).ok().and_then(role_from_pb);
    if role.is_none() {
        v.add(
            "role",
            "must be one of ROLE_PATIENT, ROLE_PROVIDER, ROLE_STAFF, ROLE_BILLING, ROLE_ADMIN",
        );
    }
    let given = val::check_name(&mut v, "given_name", &r.given_name);
    let family = val::check_name(&mut v, "family_name", &r.family_name);
    let phone = val::check_optional_phone(&mut v, "phone", &r.phone);
    let tz = val::check_time_zone(&mut v, "time_zone", &r.time_zone);
    let dob = if r.date_of_birth.is_some() || role == Some(Role::Patient) {
        val::check_date_of_birth(
            &mut v,
            "date_of_birth",
            r.date_of_birth.as_ref(),
            today,
            false,
        )
        .map(Some)
    } else {
        Some(None)
    };
    v.finish()?;

    let one_time = account::new_one_time_password();
    let password_hash = state
        .hasher
        .hash_async(one_time.clone())
        .await
        .map_err(|e| Status::from(IdentityError::from(e)))?;
    let new = NewAccount {
        id: Uuid::now_v7(),
        role: checked(role)?,
        email: checked(email)?,
        phone: checked(phone)?,
        given_name: checked(given)?,
        family_name: checked(family)?,
        date_of_birth: checked(dob)?,
        time_zone: checked(tz)?,
        password_hash,
        password_change_required: true,
    };
    let ran = Arc::new(AtomicBool::new(false));
    let ran_in = ran.clone();
    let crypto = state.crypto.clone();
    let event =
        super::security::account(&caller, "identity.account.create", Action::Create, new.id);
    // The stored (replayable) answer never holds the one-time password: it is a credential.
    let mut resp = idempotency::run(
        &state.idempotency,
        &scope("CreateUser"),
        &caller.actor_key(),
        key.as_deref(),
        &r,
        move |tx| {
            Box::pin(async move {
                let a = store::insert_user(tx, &crypto, &new).await?;
                store::insert_consents(tx, a.id, &ConsentChange::default()).await?;
                store::insert_prefs(tx, a.id, false).await?;
                super::security::record(tx, event).await?;
                ran_in.store(true, Ordering::SeqCst);
                Ok::<_, IdentityError>(CreateUserResponse {
                    user: Some(user_to_pb(&a)),
                    one_time_password: String::new(),
                })
            })
        },
    )
    .await?;
    if ran.load(Ordering::SeqCst) {
        resp.one_time_password = one_time;
        if let Some(u) = &resp.user {
            tracing::info!(user_id = %u.user_id, by = %caller.actor_key(), "user created by an admin");
            if let Ok(id) = Uuid::parse_str(&u.user_id) {
                let outbox = Outbox::default();
                outbox.push(Notification {
                    user_id: id,
                    channel: Channel::Email,
                    destination: u.email.clone(),
                    kind: NotificationKind::AccountCreated,
                });
                outbox.deliver(state).await;
            }
        }
    }
    Ok(Response::new(resp))
}

pub async fn get_user(
    state: &AppState,
    req: Request<GetUserRequest>,
) -> Result<Response<User>, Status> {
    let caller = caller(&req)?;
    let me = caller.user()?.clone();
    let r = req.into_inner();
    let mut v = FieldViolations::new();
    let target = val::check_uuid(&mut v, "user_id", &r.user_id);
    v.finish()?;
    let target = checked(target)?;
    if target != me.user_id && !me.has_role(Role::Admin) && !me.has_role(Role::Staff) {
        return Err(IdentityError::PermissionDenied(format!(
            "user {} may only read their own account",
            me.user_id
        ))
        .into());
    }
    let mut conn = state.pool.acquire().await.map_err(IdentityError::from)?;
    let a = store::require_user(&mut conn, &state.crypto, target).await?;
    Ok(Response::new(user_to_pb(&a)))
}

// ---- admin status actions ----

/// Suspend, reactivate and terminate share everything but the RPC name, the action and where
/// their two fields (`user_id`, `reason`) sit in the request.
async fn change_status<Req: Message>(
    state: &AppState,
    req: Request<Req>,
    method: &str,
    action: StatusAction,
    fields: fn(&Req) -> (&str, &str),
) -> Result<Response<User>, Status> {
    let caller = &caller(&req)?;
    let key = idempotency::key_of(&req)?;
    let request = &req.into_inner();
    let (user_id, reason) = fields(request);
    let admin = caller_user_id(caller)?;
    let mut v = FieldViolations::new();
    let target = val::check_uuid(&mut v, "user_id", user_id);
    let reason = val::check_reason(&mut v, "reason", reason);
    v.finish()?;
    let (target, reason) = (checked(target)?, checked(reason)?);
    if target == admin && action != StatusAction::Reactivate {
        return Err(IdentityError::Conflict {
            kind: "SELF",
            subject: target.to_string(),
            description: "an admin cannot suspend or terminate their own account".to_owned(),
        }
        .into());
    }
    let crypto = state.crypto.clone();
    let kind = match action {
        StatusAction::Suspend => "identity.account.suspend",
        StatusAction::Reactivate => "identity.account.reactivate",
        StatusAction::Terminate => "identity.account.terminate",
    };
    let event = super::security::account(caller, kind, Action::Update, target);
    let outbox = carehub_platform::outbox::Outbox::new(state.key_source.clone());
    let user = on_locked_account(
        state,
        method,
        caller,
        key.as_deref(),
        request,
        target,
        move |tx, a| {
            Box::pin(async move {
                let next = action
                    .apply(a.status)
                    .map_err(|why| IdentityError::Conflict {
                        kind: "ACCOUNT_STATUS",
                        subject: target.to_string(),
                        description: why.to_owned(),
                    })?;
                let a = store::set_status(tx, &crypto, target, next, &reason, admin).await?;
                crate::events::account_status_changed(tx, &outbox, &a).await?;
                if action.revokes_sessions() {
                    crate::store::revocation::revoke_user_sessions(
                        tx,
                        target,
                        action.revoke_reason(),
                        None,
                    )
                    .await?;
                }
                super::security::record(tx, event).await?;
                Ok::<_, IdentityError>(user_to_pb(&a))
            })
        },
    )
    .await?;
    tracing::info!(user_id = %target, by = %admin, action = ?action, "account status changed");
    Ok(Response::new(user))
}

pub async fn suspend_user(
    state: &AppState,
    req: Request<SuspendUserRequest>,
) -> Result<Response<User>, Status> {
    change_status(state, req, "SuspendUser", StatusAction::Suspend, |r| {
        (&r.user_id, &r.reason)
    })
    .await
}

pub async fn reactivate_user(
    state: &AppState,
    req: Request<ReactivateUserRequest>,
) -> Result<Response<User>, Status> {
    change_status(
        state,
        req,
        "ReactivateUser",
        StatusAction::Reactivate,
        |r| (&r.user_id, &r.reason),
    )
    .await
}

pub async fn terminate_user(
    state: &AppState,
    req: Request<TerminateUserRequest>,
) -> Result<Response<User>, Status> {
    change_status(state, req, "TerminateUser", StatusAction::Terminate, |r| {
        (&r.user_id, &r.reason)
    })
    .await
}
