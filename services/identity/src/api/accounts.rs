//! What the account handlers (registration, profile, admin) share: the account lock that starts
//! a change, the notification outbox and `checked`.
//!
//! Every account handler: validate every field → authorize (ownership; the auth layer already
//! checked roles and workloads) → one transaction through `Call::mutate` (a read through
//! `Call::read`) → encode. Codes are delivered through the notifier after the commit.

use std::sync::{Arc, Mutex};

use carehub_platform::crypto::Envelope;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::account::Account;
use crate::error::IdentityError;
use crate::notify::Notification;
use crate::store::accounts as store;
use crate::AppState;

/// A value that validation has vouched for (never `None` once `FieldViolations::finish` passed).
pub(super) fn checked<T>(value: Option<T>) -> Result<T, IdentityError> {
    value.ok_or_else(|| IdentityError::Internal("validated value missing".to_owned()))
}

pub(super) fn user_not_found(id: Uuid) -> IdentityError {
    IdentityError::NotFound {
        what: "user",
        id: id.to_string(),
    }
}

/// Locks `user_id`'s account until the commit, as the first step of a change to it: concurrent
/// changes to one account serialize instead of overwriting each other. NOT_FOUND when the
/// account does not exist.
pub(super) async fn lock_account(
    tx: &mut PgConnection,
    crypto: &Envelope,
    user_id: Uuid,
) -> Result<Account, IdentityError> {
    store::lock_user(tx, crypto, user_id)
        .await?
        .ok_or_else(|| user_not_found(user_id))
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
