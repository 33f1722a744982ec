//! The events identity publishes through the platform's transactional outbox
//! (`carehub_platform::outbox`).
//!
//! SMS preference: when a user turns `sms_notifications` on or off
//! (UpdateCommunicationPreferences, and only when the value changes), one row to messaging's
//! `MessagingInternal/ApplySmsPreference` so that its SMS consent ledger follows. A change that
//! came from that ledger (IdentityInternal.ApplySmsConsent) writes none: the two would echo each
//! other forever. Like every row for a target without an endpoint, it waits until
//! `[server.outbox.targets.messaging]` is configured.
//!
//! Account events: `account.suspended`, `account.reactivated` and
//! `account.terminated`, as `carehub.identity.v1.AccountStatusChanged` (ids, the new status and
//! the change time only: never the admin's reason text), delivered to
//! `carehub.common.v1.AccountEvents/ApplyAccountEvent` of every subscriber.
//!
//! The row is written in the status change's own transaction: the event exists exactly when
//! the change committed. One row per subscriber, so that one subscriber's outage or poison row
//! does not hold back the others. A subscriber without a configured endpoint
//! (`[server.outbox.targets.<name>]`; none by default) keeps its rows pending until it gets one:
//! the services that consume these events (records, messaging, scheduling) receive everything that happened
//! before they were deployed.

use carehub_platform::outbox::Outbox;
use carehub_proto::identity::v1::AccountStatusChanged;
use carehub_proto::messaging::v1::ApplySmsPreferenceRequest;
use sqlx::PgConnection;

use crate::api::convert::status_to_pb;
use crate::domain::account::{Account, AccountStatus, CommPrefs};
use crate::error::IdentityError;

/// The services that consume account events (outbox target names).
pub const ACCOUNT_EVENT_SUBSCRIBERS: [&str; 3] = ["records", "messaging", "scheduling"];

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

/// The outbox target of SMS preference changes.
pub const SMS_PREFERENCE_TARGET: &str = "messaging";

/// The RPC messaging applies them with.
pub const APPLY_SMS_PREFERENCE: &str = "/carehub.messaging.v1.MessagingInternal/ApplySmsPreference";

/// Puts the user's new `sms_notifications` choice into the outbox for messaging, in the
/// transaction `tx` that changed it (`prefs` as it now stands; its decision time is the change
/// time messaging orders deliveries by).
pub async fn sms_preference_changed(
    tx: &mut PgConnection,
    outbox: &Outbox,
    prefs: &CommPrefs,
) -> Result<(), IdentityError> {
    let change_time = prefs.sms_notifications_changed_at.ok_or_else(|| {
        IdentityError::Internal(format!(
            "user {}: sms_notifications changed without a decision time",
            prefs.user_id
        ))
    })?;
    let event = ApplySmsPreferenceRequest {
        user_id: prefs.user_id.to_string(),
        sms_allowed: prefs.sms_notifications,
        change_time: Some(carehub_platform::timestamps::to_proto(change_time)),
    };
    let id = outbox
        .enqueue(tx, SMS_PREFERENCE_TARGET, APPLY_SMS_PREFERENCE, &event)
        .await
        .map_err(tonic::Status::from)?;
    tracing::debug!(outbox.id = %id, user_id = %prefs.user_id, "SMS preference queued for messaging");
    Ok(())
}
