//! The account events identity publishes through the platform's transactional outbox
//! (`carehub_platform::outbox`): `account.suspended`, `account.reactivated` and
//! `account.terminated`, as `carehub.identity.v1.AccountStatusChanged` (ids, the new status and
//! the change time only: never the admin's reason text), delivered to
//! `carehub.common.v1.AccountEvents/ApplyAccountEvent` of every subscriber.
//!
//! The row is written in the status change's own transaction: the event exists exactly when
//! the change committed. One row per subscriber, so that one subscriber's outage or poison row
//! does not hold back the others. A subscriber without a configured endpoint
//! (`[server.outbox.targets.<name>]`; none by default) keeps its rows pending until it gets one:
//! the services that consume these events (records, messaging) receive everything that happened
//! before they were deployed.

use carehub_platform::outbox::Outbox;
use carehub_proto::identity::v1::AccountStatusChanged;
use sqlx::PgConnection;

use crate::api::convert::status_to_pb;
use crate::domain::account::{Account, AccountStatus};
use crate::error::IdentityError;

/// The services that consume account events (outbox target names).
pub const ACCOUNT_EVENT_SUBSCRIBERS: [&str; 2] = ["records", "messaging"];

/// The RPC every subscriber implements.
pub const APPLY_ACCOUNT_EVENT: &str = "/carehub.common.v1.AccountEvents/ApplyAccountEvent";

/// The event's name, as operators and logs call it.
pub fn event_name(status: AccountStatus) -> &'static str {
    match status {
        AccountStatus::Active => "account.reactivated",
        AccountStatus::Suspended => "account.suspended",
        AccountStatus::Terminated => "account.terminated",
    }
}

/// Puts the event of `account`'s new status into the outbox, in the caller's transaction `tx`
/// (the one that changed the status), for every subscriber.
pub async fn account_status_changed(
    tx: &mut PgConnection,
    outbox: &Outbox,
    account: &Account,
) -> Result<(), IdentityError> {
    let event = AccountStatusChanged {
        user_id: account.id.to_string(),
        status: status_to_pb(account.status) as i32,
        // set_status stamps updated_at with the transaction's now(): the change time.
        change_time: Some(carehub_platform::timestamps::to_proto(account.updated_at)),
    };
    for target in ACCOUNT_EVENT_SUBSCRIBERS {
        let id = outbox
            .enqueue(tx, target, APPLY_ACCOUNT_EVENT, &event)
            .await
            .map_err(tonic::Status::from)?;
        tracing::debug!(
            outbox.id = %id,
            outbox.target = target,
            user_id = %account.id,
            event = event_name(account.status),
            "account event queued"
        );
    }
    Ok(())
}
