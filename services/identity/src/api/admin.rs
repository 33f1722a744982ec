//! Admin actions on accounts: creating users (with a one-time password), reading any account,
//! and suspension, reactivation and termination — whose one path ([`change_status`]) also
//! serves messaging's RequestAccountAction.

use carehub_platform::audit::{AuditEvent, Purpose};
use carehub_platform::auth::Role;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::identity::v1 as pb;
use carehub_proto::identity::v1::*;
use chrono::Utc;
use prost::Message;
use uuid::Uuid;

use super::accounts::{checked, lock_account, Outbox};
use super::kinds;
use crate::api::convert::{role_from_pb, user_to_pb};
use crate::domain::account::{self, Account, ConsentChange, NewAccount, StatusAction};
use crate::domain::validation as val;
use crate::error::{IdentityError, Result};
use crate::notify::{Channel, Notification, NotificationKind};
use crate::store::accounts as store;
use crate::AppState;

pub async fn create_user(
    state: &AppState,
    call: &Call,
    r: CreateUserRequest,
) -> Result<CreateUserResponse> {
    call.user()?;
    call.idempotency_key()?;
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
    let password_hash = state.hasher.hash_async(one_time.clone()).await?;
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
    let event = super::security::account(&call.caller, kinds::ACCOUNT_CREATE, new.id);
    // The stored (replayable) answer never holds the one-time password: it is a credential.
    let ran = call
        .mutate(&state.idempotency, &r, async |tx| {
            let a = store::insert_user(tx, &state.crypto, &new).await?;
            store::insert_consents(tx, a.id, &ConsentChange::default()).await?;
            store::insert_prefs(tx, a.id, false).await?;
            let answer = CreateUserResponse {
                user: Some(user_to_pb(&a)),
                one_time_password: String::new(),
            };
            Ok::<_, IdentityError>(Change::new(answer, event))
        })
        .await?;
    let mut resp = ran.answer;
    if !ran.replayed {
        resp.one_time_password = one_time;
        if let Some(u) = &resp.user {
            tracing::info!(user_id = %u.user_id, by = %call.caller.actor_key(), "user created by an admin");
            if let Ok(id) = Uuid::parse_str(&u.user_id) {
                let outbox = Outbox::new(state);
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
    Ok(resp)
}

/// Reading an account: one's own (purpose PATIENT_REQUEST), or, for admin and staff, anyone's
/// (purpose OPERATIONS).
pub async fn get_user(state: &AppState, call: &Call, r: GetUserRequest) -> Result<User> {
    let me = call.user()?;
    let mut v = FieldViolations::new();
    let target = val::check_uuid(&mut v, "user_id", &r.user_id);
    v.finish()?;
    let target = checked(target)?;
    let own = target == me.user_id;
    if !own && !me.has_role(Role::Admin) && !me.has_role(Role::Staff) {
        return Err(IdentityError::PermissionDenied(format!(
            "user {} may only read their own account",
            me.user_id
        )));
    }
    let a = {
        let mut conn = state.pool.acquire().await?;
        store::require_user(&mut conn, &state.crypto, target).await?
    };
    let purpose = if own {
        Purpose::PatientRequest
    } else {
        Purpose::Operations
    };
    let read = call.event(kinds::USER_READ, purpose, "user", target, target);
    call.read(&state.pool, read, user_to_pb(&a)).await
}

// ---- status changes ----

/// A status change as its caller asked for it: an admin (SuspendUser, ReactivateUser,
/// TerminateUser) or messaging acting on an abuse report (IdentityInternal.RequestAccountAction).
pub(super) struct StatusChange {
    pub target: Uuid,
    pub action: StatusAction,
    /// Why, stored sealed on the account (an admin's free text, or "abuse report <id>").
    pub reason: String,
    /// Who decided (`users.status_changed_by`): the admin, or the staff member who resolved the
    /// report.
    pub by: Uuid,
    /// The change's audit event.
    pub event: AuditEvent,
    /// An account already in the action's status: `Some(read)` answers it as it is, with `read`
    /// recorded for the answer (a retried delivery must not fail); `None` refuses it
    /// (FAILED_PRECONDITION), as an admin's own repeated action is.
    pub already: Option<AuditEvent>,
}

/// The one path of every status change: the account locked, the state machine
/// ([`StatusAction::apply`]), the status with its sealed reason, the `AccountStatusChanged`
/// outbox event, session revocation, and the audit event, in one transaction through
/// [`Call::mutate`] (a retry with the same idempotency key answers the first answer); then the
/// account's sessions leave this replica's cache. `answer` encodes the account for the caller.
pub(super) async fn change_status<Req: Message, Resp: Message + Default>(
    state: &AppState,
    call: &Call,
    request: &Req,
    change: StatusChange,
    answer: fn(&Account) -> Resp,
) -> Result<Resp> {
    let StatusChange {
        target,
        action,
        reason,
        by,
        event,
        already,
    } = change;
    if target == by && action != StatusAction::Reactivate {
        return Err(IdentityError::Conflict {
            kind: "SELF",
            subject: target.to_string(),
            description: "a user cannot suspend or terminate their own account".to_owned(),
        });
    }
    let mut changed = false;
    let ran = call
        .mutate(&state.idempotency, request, async |tx| {
            let a = lock_account(tx, &state.crypto, target).await?;
            if a.status == action.target() {
                if let Some(read) = already {
                    return Ok(Change::new(answer(&a), read));
                }
            }
            let next = action
                .apply(a.status)
                .map_err(|why| IdentityError::Conflict {
                    kind: "ACCOUNT_STATUS",
                    subject: target.to_string(),
                    description: why.to_owned(),
                })?;
            let a = store::set_status(tx, &state.crypto, target, next, &reason, by).await?;
            crate::events::account_status_changed(tx, &state.outbox, &a).await?;
            if action.revokes_sessions() {
                crate::store::revocation::revoke_user_sessions(
                    tx,
                    target,
                    action.revoke_reason(),
                    None,
                )
                .await?;
            }
            changed = true;
            Ok::<_, IdentityError>(Change::new(answer(&a), event))
        })
        .await;
    // A status change (and the revocation that comes with a suspension or termination) takes
    // effect in this replica's session cache before the call answers, whatever the outcome.
    state.session_cache.evict_user(target);
    let ran = ran?;
    if changed {
        tracing::info!(user_id = %target, by = %by, workload = %call.caller.workload, action = ?action, "account status changed");
    }
    Ok(ran.answer)
}

/// Suspend, reactivate and terminate by an admin share everything but the action and where
/// their two fields (`user_id`, `reason`) sit in the request.
async fn admin_change_status<Req: Message>(
    state: &AppState,
    call: &Call,
    request: &Req,
    action: StatusAction,
    fields: fn(&Req) -> (&str, &str),
) -> Result<User> {
    call.idempotency_key()?;
    let (user_id, reason) = fields(request);
    let admin = call.user()?.user_id;
    let mut v = FieldViolations::new();
    let target = val::check_uuid(&mut v, "user_id", user_id);
    let reason = val::check_reason(&mut v, "reason", reason);
    v.finish()?;
    let (target, reason) = (checked(target)?, checked(reason)?);
    let kind = match action {
        StatusAction::Suspend => kinds::ACCOUNT_SUSPEND,
        StatusAction::Reactivate => kinds::ACCOUNT_REACTIVATE,
        StatusAction::Terminate => kinds::ACCOUNT_TERMINATE,
    };
    let change = StatusChange {
        target,
        action,
        reason,
        by: admin,
        event: super::security::account(&call.caller, kind, target),
        already: None,
    };
    change_status(state, call, request, change, user_to_pb).await
}

pub async fn suspend_user(state: &AppState, call: &Call, r: SuspendUserRequest) -> Result<User> {
    admin_change_status(state, call, &r, StatusAction::Suspend, |r| {
        (&r.user_id, &r.reason)
    })
    .await
}

pub async fn reactivate_user(
    state: &AppState,
    call: &Call,
    r: ReactivateUserRequest,
) -> Result<User> {
    admin_change_status(state, call, &r, StatusAction::Reactivate, |r| {
        (&r.user_id, &r.reason)
    })
    .await
}

pub async fn terminate_user(
    state: &AppState,
    call: &Call,
    r: TerminateUserRequest,
) -> Result<User> {
    admin_change_status(state, call, &r, StatusAction::Terminate, |r| {
        (&r.user_id, &r.reason)
    })
    .await
}
