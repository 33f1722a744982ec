//! SendNotification and GetNotification (MessagingInternal): identity, scheduling, records and
//! billing notify users here.
//!
//! SendNotification is deduplicated by (calling workload, `idempotency_key`), a unique
//! constraint: a retry answers the notification the first call stored (its read audited), and
//! the same key with another request is refused. A new notification asks identity who the
//! recipient is (GetContact), plans one delivery per channel (`notify::plan`), and stores the
//! notification (parameters sealed: codes and links are secrets), its deliveries (addresses
//! sealed) and its audit event in one transaction; the worker sends what is due.

use std::collections::BTreeSet;

use carehub_platform::audit::{AuditEvent, Kind, Purpose};
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::{self, FieldViolations};
use carehub_proto::common::v1::ErrorReason;
use carehub_proto::identity::v1::{AccountStatus, Contact};
use carehub_proto::messaging::v1::*;
use chrono::Utc;
use tonic::Code;
use uuid::Uuid;

use super::convert::ts;
use super::kinds;
use crate::error::{checked, MessagingError, Result};
use crate::notify::channels::Channel as Medium;
use crate::notify::ledger::{self, Consent};
use crate::notify::plan::{self, Ask, Outcome, Recipient};
use crate::notify::quiet::QuietHours;
use crate::notify::templates::{self, Params, Template};
use crate::store::notifications::{self as store, DeliveryRow, NewDelivery, NotificationRow};
use crate::store::sealed;
use crate::AppState;

/// A request, checked.
struct Checked {
    user: Uuid,
    template: Template,
    /// Without repeats, in the caller's order.
    channels: Vec<Medium>,
    urgent: bool,
    params: Params,
    key: String,
    address: Option<String>,
}

fn is_email(s: &str) -> bool {
    s.len() <= 254
        && s.split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && s.bytes().all(|b| b.is_ascii_graphic())
}

fn check(r: &SendNotificationRequest) -> Result<Checked> {
    let mut v = FieldViolations::new();
    let user = v.require_uuid("user_id", &r.user_id);
    let template = Template::from_pb(r.template);
    v.check(
        template.is_some(),
        "template",
        "must be a TEMPLATE other than UNSPECIFIED",
    );
    v.require_len(&r.idempotency_key, "idempotency_key", 1, 128);
    v.check(
        r.idempotency_key.bytes().all(|b| b.is_ascii_graphic()),
        "idempotency_key",
        "must be visible ASCII",
    );
    let mut channels = Vec::new();
    for (i, c) in r.channels.iter().enumerate() {
        match Medium::from_pb(*c) {
            Some(c) if !channels.contains(&c) => channels.push(c),
            Some(_) => {}
            None => v.add(
                &format!("channels[{i}]"),
                "must be a CHANNEL other than UNSPECIFIED",
            ),
        }
    }
    let params = template.and_then(|t| templates::check_params(t, &r.params, &mut v));
    let address = (!r.address.is_empty()).then(|| r.address.clone());
    if let Some(a) = &address {
        v.check(
            crate::notify::phone::is_e164(a) || is_email(a),
            "address",
            "must be an E.164 phone number or an email address",
        );
        v.check(
            template.is_some_and(Template::requested_by_user),
            "address",
            "is only for verification codes and password reset links",
        );
    }
    v.finish()?;
    Ok(Checked {
        user: checked(user)?,
        template: checked(template)?,
        channels,
        urgent: r.urgent,
        params: checked(params)?,
        key: r.idempotency_key.clone(),
        address,
    })
}

fn status_pb(s: &str) -> DeliveryStatus {
    match s {
        "pending" => DeliveryStatus::Pending,
        "sent" => DeliveryStatus::Sent,
        "skipped" => DeliveryStatus::Skipped,
        "failed" => DeliveryStatus::Failed,
        _ => DeliveryStatus::Unspecified,
    }
}

fn notification_pb(n: &NotificationRow, deliveries: &[DeliveryRow]) -> Notification {
    Notification {
        id: n.id.to_string(),
        user_id: n.user_id.to_string(),
        template: Template::parse(&n.template).map_or(0, |t| t.to_pb() as i32),
        deliveries: deliveries
            .iter()
            .map(|d| Delivery {
                channel: Medium::parse(&d.channel).map_or(0, |c| c.to_pb() as i32),
                status: status_pb(&d.status) as i32,
                attempts: d.attempts,
                skip_reason: d.reason.clone().unwrap_or_default(),
                next_attempt_time: d.next_attempt_at.map(ts),
                sent_time: d.sent_at.map(ts),
            })
            .collect(),
        create_time: Some(ts(n.created_at)),
    }
}

fn event(call: &Call, kind: Kind, n: &NotificationRow) -> AuditEvent {
    call.event(kind, Purpose::Operations, "notification", n.id, n.user_id)
}

/// Refuses a key reused for another notification (the platform's rule for idempotency keys).
async fn same_request(state: &AppState, c: &Checked, stored: &NotificationRow) -> Result<()> {
    let reused = || {
        MessagingError::Status(errors::status(
            Code::InvalidArgument,
            ErrorReason::IdempotencyKeyReused,
            "idempotency_key was already used for another notification",
        ))
    };
    let channels: Vec<&str> = c.channels.iter().map(|m| m.as_str()).collect();
    if stored.user_id != c.user
        || stored.template != c.template.as_str()
        || stored.urgent != c.urgent
        || stored
            .channels
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
            != channels.into_iter().collect::<BTreeSet<_>>()
    {
        return Err(reused());
    }
    let params = sealed::open(
        &state.crypto,
        stored.user_id,
        ("notifications", "params", stored.id),
        &stored.params,
    )
    .await?;
    let params: Params = serde_json::from_str(&params)
        .map_err(|_| MessagingError::Internal("stored notification params are not JSON".into()))?;
    let address = match &stored.direct_address {
        Some(a) => Some(
            sealed::open(
                &state.crypto,
                stored.user_id,
                ("notifications", "direct_address", stored.id),
                a,
            )
            .await?,
        ),
        None => None,
    };
    if params != c.params || address != c.address {
        return Err(reused());
    }
    Ok(())
}

fn recipient(contact: &Contact) -> Recipient {
    let prefs = contact.preferences.clone().unwrap_or_default();
    Recipient {
        user_id: contact.user_id.clone(),
        active: contact.status == AccountStatus::Active as i32,
        email: contact.email.clone(),
        phone: contact.phone_number.clone(),
        sms: prefs.sms_notifications,
        email_on: prefs.email_notifications,
        push: prefs.push_notifications,
        quiet: QuietHours::new(
            &contact.time_zone,
            prefs.quiet_hours_start,
            prefs.quiet_hours_end,
        ),
    }
}

pub async fn send(
    state: &AppState,
    call: &Call,
    r: SendNotificationRequest,
) -> Result<Notification> {
    call.idempotency_key()?;
    let c = check(&r)?;
    let workload = call.caller.workload.clone();
    let existing = {
        let mut conn = state.pool.acquire().await?;
        match store::find_by_key(&mut conn, &workload, &c.key).await? {
            Some(n) => Some((store::deliveries(&mut conn, n.id).await?, n)),
            None => None,
        }
    };
    if let Some((deliveries, n)) = existing {
        same_request(state, &c, &n).await?;
        let answer = notification_pb(&n, &deliveries);
        return call
            .read(
                &state.pool,
                event(call, kinds::NOTIFICATION_READ, &n),
                answer,
            )
            .await;
    }

    let contact = state.notifications.contact(c.user).await?;
    let to = recipient(&contact);
    let ask = Ask {
        template: c.template,
        channels: &c.channels,
        urgent: c.urgent,
        direct: c.address.as_deref(),
    };
    let sms_consent = match plan::address(&ask, &to, Medium::Sms) {
        Some(number) if ask.channels.is_empty() || ask.channels.contains(&Medium::Sms) => {
            ledger::current(state, &number).await?
        }
        _ => Consent::None,
    };
    let now = Utc::now();
    let planned = plan::plan(&ask, &to, sms_consent, now);

    let id = Uuid::now_v7();
    let params_json = serde_json::to_string(&c.params)
        .map_err(|_| MessagingError::Internal("notification params do not encode".into()))?;
    let params = sealed::seal(
        &state.crypto,
        c.user,
        ("notifications", "params", id),
        &params_json,
    )
    .await?;
    let direct_address = match &c.address {
        Some(a) => Some(
            sealed::seal(
                &state.crypto,
                c.user,
                ("notifications", "direct_address", id),
                a,
            )
            .await?,
        ),
        None => None,
    };
    let mut deliveries = Vec::with_capacity(planned.len());
    for p in &planned {
        let delivery = Uuid::now_v7();
        let address = match &p.address {
            Some(a) => Some(
                sealed::seal(
                    &state.crypto,
                    c.user,
                    ("notification_deliveries", "address", delivery),
                    a,
                )
                .await?,
            ),
            None => None,
        };
        let (status, reason, next_attempt_at) = match p.outcome {
            Outcome::Due { at, waits } => ("pending", waits, Some(at)),
            Outcome::Skipped(why) => ("skipped", Some(why), None),
        };
        deliveries.push(NewDelivery {
            id: delivery,
            notification_id: id,
            channel: p.channel.as_str(),
            status,
            reason,
            address,
            next_attempt_at,
        });
    }
    let row = NotificationRow {
        id,
        user_id: c.user,
        template: c.template.as_str().to_owned(),
        urgent: c.urgent,
        caller_workload: workload.clone(),
        idempotency_key: c.key.clone(),
        params,
        channels: c.channels.iter().map(|m| m.as_str().to_owned()).collect(),
        direct_address,
        time_zone: to.quiet.tz.name().to_owned(),
        // As resolved for this notification, so that a retry keeps the same window.
        quiet_start: i16::try_from(to.quiet.start).unwrap_or(0),
        quiet_end: i16::try_from(to.quiet.end).unwrap_or(0),
        created_at: now,
    };
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            if store::insert(conn, &row).await? {
                for d in &deliveries {
                    store::insert_delivery(conn, d).await?;
                }
                let stored = store::get(conn, id).await?.ok_or_else(|| {
                    MessagingError::Internal("a notification just stored is gone".into())
                })?;
                let answer = notification_pb(&stored, &store::deliveries(conn, id).await?);
                return Ok::<_, MessagingError>(Change::new(
                    answer,
                    event(call, kinds::NOTIFICATION_SEND, &stored),
                ));
            }
            // A concurrent call with the same key stored it first: answer that one.
            let stored = store::find_by_key(conn, &workload, &c.key)
                .await?
                .ok_or_else(|| {
                    MessagingError::Internal("a notification's key is taken by nothing".into())
                })?;
            same_request(state, &c, &stored).await?;
            let answer = notification_pb(&stored, &store::deliveries(conn, stored.id).await?);
            Ok(Change::new(
                answer,
                event(call, kinds::NOTIFICATION_READ, &stored),
            ))
        })
        .await?;
    let due_now = planned
        .iter()
        .any(|p| matches!(p.outcome, Outcome::Due { at, .. } if at <= now));
    if due_now {
        state.notifications.wake();
    }
    tracing::info!(
        notification_id = %ran.answer.id,
        template = c.template.as_str(),
        deliveries = planned.len(),
        replayed = ran.replayed,
        "notification accepted"
    );
    Ok(ran.answer)
}

pub async fn get(state: &AppState, call: &Call, r: GetNotificationRequest) -> Result<Notification> {
    let mut v = FieldViolations::new();
    let id = v.require_uuid("notification_id", &r.notification_id);
    v.finish()?;
    let id = checked(id)?;
    let not_found = || MessagingError::NotFound {
        what: "notification",
        id: id.to_string(),
    };
    let (n, deliveries) = {
        let mut conn = state.pool.acquire().await?;
        let n = store::get(&mut conn, id).await?.ok_or_else(not_found)?;
        // A service reads the notifications it sent, not another service's.
        if n.caller_workload != call.caller.workload {
            return Err(not_found());
        }
        let deliveries = store::deliveries(&mut conn, id).await?;
        (n, deliveries)
    };
    let answer = notification_pb(&n, &deliveries);
    call.read(
        &state.pool,
        event(call, kinds::NOTIFICATION_READ, &n),
        answer,
    )
    .await
}
