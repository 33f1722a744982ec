//! What the account handlers (registration, profile, admin) share: the account lock that starts
//! a change, the notification outbox and `checked`.
//!
//! Every account handler: validate every field → authorize (ownership; the auth layer already
//! checked roles and workloads) → one transaction through `Call::mutate` (a read through
//! `Call::read`) → encode. Codes are staged with the notifier in that transaction (the
//! `messaging` notifier writes its outbox row there); what it did not write is delivered after
//! the commit.

use std::sync::{Arc, Mutex};

use carehub_platform::crypto::Envelope;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::account::Account;
use crate::error::IdentityError;
use crate::notify::{Notification, Notifier, Staged};
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

/// A change's notifications: staged with the notifier in the change's transaction, and those
/// it did not write there delivered once the transaction committed (nothing when an idempotent
/// retry replayed the first answer).
#[derive(Clone)]
pub(super) struct Outbox {
    notifier: Arc<dyn Notifier>,
    after_commit: Arc<Mutex<Vec<Notification>>>,
}

impl Outbox {
    pub(super) fn new(state: &AppState) -> Self {
        Outbox {
            notifier: state.notifier.clone(),
            after_commit: Arc::default(),
        }
    }

    /// Hands `n` to the notifier in the transaction `tx` that stores its code or token; an error
    /// fails the change.
    pub(super) async fn stage(
        &self,
        tx: &mut PgConnection,
        n: Notification,
    ) -> Result<(), IdentityError> {
        if self.notifier.stage(tx, &n).await? == Staged::AfterCommit {
            self.push(n);
        }
        Ok(())
    }

    /// A notice with no transaction of its own to join, delivered after the commit.
    pub(super) fn push(&self, n: Notification) {
        if let Ok(mut v) = self.after_commit.lock() {
            v.push(n);
        }
    }

    pub(super) async fn deliver(self, state: &AppState) {
        let pending = self
            .after_commit
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
