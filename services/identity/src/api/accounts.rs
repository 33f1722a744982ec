//! What the account handlers (registration, profile, admin) share: the caller's user id, the
//! locked-account transaction, the notification outbox and `checked`.
//!
//! Every account handler: decode → validate every field → authorize (ownership; the auth layer
//! already checked roles and workloads) → one transaction (mutating RPCs through
//! `idempotency::run`) → encode. Codes are delivered through the notifier after the commit.

use std::sync::{Arc, Mutex};

use carehub_platform::auth::Caller;
use carehub_platform::errors;
use carehub_platform::idempotency;
use futures::future::BoxFuture;
use prost::Message;
use sqlx::PgConnection;
use tonic::Status;
use uuid::Uuid;

use super::scope;
use crate::domain::account::Account;
use crate::error::IdentityError;
use crate::notify::Notification;
use crate::store::accounts as store;
use crate::AppState;

/// A value that validation has vouched for (never `None` once `FieldViolations::finish` passed).
pub(super) fn checked<T>(value: Option<T>) -> Result<T, Status> {
    value.ok_or_else(|| errors::internal("validation"))
}

/// The signed-in caller's user id (UNAUTHENTICATED without an access token).
pub(super) fn caller_user_id(caller: &Caller) -> Result<Uuid, Status> {
    Ok(caller.user()?.user_id)
}

pub(super) fn user_not_found(id: Uuid) -> IdentityError {
    IdentityError::NotFound {
        what: "user",
        id: id.to_string(),
    }
}

/// Runs `op` as the IdentityService RPC `method` (once per idempotency `key`) on `user_id`'s
/// account, which stays locked until the commit: concurrent changes to one account serialize
/// instead of overwriting each other. NOT_FOUND when the account does not exist.
pub(super) async fn on_locked_account<Req, Resp, F>(
    state: &AppState,
    method: &str,
    caller: &Caller,
    key: Option<&str>,
    request: &Req,
    user_id: Uuid,
    op: F,
) -> Result<Resp, IdentityError>
where
    Req: Message,
    Resp: Message + Default + Send + 'static,
    F: for<'c> FnOnce(&'c mut PgConnection, Account) -> BoxFuture<'c, Result<Resp, IdentityError>>
        + Send
        + 'static,
{
    let crypto = state.crypto.clone();
    idempotency::run(
        &state.idempotency,
        &scope(method),
        &caller.actor_key(),
        key,
        request,
        move |tx| {
            Box::pin(async move {
                let account = store::lock_user(tx, &crypto, user_id)
                    .await?
                    .ok_or_else(|| user_not_found(user_id))?;
                op(tx, account).await
            })
        },
    )
    .await
}

/// Notifications to deliver once the transaction committed (nothing when an idempotent retry
/// replayed the first answer).
#[derive(Clone, Default)]
pub(super) struct Outbox(Arc<Mutex<Vec<Notification>>>);

impl Outbox {
    pub(super) fn push(&self, n: Notification) {
        if let Ok(mut v) = self.0.lock() {
            v.push(n);
        }
    }

    pub(super) async fn deliver(self, state: &AppState) {
        let pending = self
            .0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        for n in pending {
            let user_id = n.user_id;
            if let Err(e) = state.notifier.send(n).await {
                tracing::warn!(%user_id, error = %e, "notification not delivered");
            }
        }
    }
}
