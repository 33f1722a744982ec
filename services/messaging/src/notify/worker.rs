//! The delivery worker, one per replica: claims due deliveries (`FOR UPDATE SKIP LOCKED`, with
//! a lease), sends each through its channel's adapter, and records the outcome: sent; retried
//! later with exponential backoff and jitter (kept out of the recipient's quiet hours unless
//! urgent); failed once the attempts run out or the provider refuses for good; or skipped when
//! the number opted out since the notification was accepted.
//!
//! Delivery is at least once: a replica that dies after the provider accepted a message but
//! before it recorded so sends it again when its lease ends. Providers' own deduplication does
//! not exist for SMS; a rare duplicate text beats a lost verification code.

use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::Utc;
use chrono_tz::Tz;

use super::channels::{Channel, Outgoing, SendError};
use super::ledger;
use super::plan::sms_refusal;
use super::quiet::QuietHours;
use super::templates::{self, Params, Template};
use crate::error::{MessagingError, Result};
use crate::store::notifications::{self as store, Claimed, Settled};
use crate::store::sealed;
use crate::AppState;

/// Starts this replica's worker. It holds the state weakly and stops once the service is gone.
pub fn spawn(state: &Arc<AppState>) {
    let weak: Weak<AppState> = Arc::downgrade(state);
    let wake = state.notifications.wake_handle();
    let every = Duration::from_millis(state.notifications.settings().poll_interval_ms.max(10));
    tokio::spawn(async move {
        let mut failures: u32 = 0;
        loop {
            let (claimed, batch) = {
                let Some(state) = weak.upgrade() else { return };
                if state.pool.is_closed() {
                    return;
                }
                let batch = state.notifications.settings().batch_size;
                match round(&state).await {
                    Ok(n) => {
                        failures = 0;
                        (n, batch)
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        if failures.is_power_of_two() {
                            tracing::warn!(error = %e, failures, "notification delivery round failed");
                        }
                        (0, batch)
                    }
                }
            };
            // A full batch: more are probably due.
            if claimed >= usize::try_from(batch).unwrap_or(usize::MAX) {
                continue;
            }
            let pause = every.saturating_mul(1 << failures.min(6));
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    });
}

/// Claims and settles one batch; how many were claimed.
pub async fn round(state: &AppState) -> Result<usize> {
    let settings = state.notifications.settings();
    let timeout = Duration::from_millis(settings.send_timeout_ms);
    let claimed = store::claim_due(
        &state.pool,
        i64::from(settings.batch_size),
        timeout.saturating_mul(3),
    )
    .await?;
    let n = claimed.len();
    futures::future::join_all(claimed.iter().map(|c| deliver(state, c))).await;
    Ok(n)
}

/// What one attempt came to.
enum Attempt {
    Sent(Option<String>),
    Skipped(&'static str),
    Failed(String),
    Retry(SendError),
}

async fn deliver(state: &AppState, c: &Claimed) {
    let attempt = match attempt(state, c).await {
        Ok(a) => a,
        // Keys or the database were unavailable: worth another attempt like any outage.
        Err(MessagingError::Crypto(e)) if !unreadable(&e) => {
            Attempt::Retry(SendError::transient("keys_unavailable"))
        }
        Err(MessagingError::Crypto(_)) => Attempt::Failed("unreadable".to_owned()),
        Err(MessagingError::Db(_)) => Attempt::Retry(SendError::transient("database")),
        Err(_) => Attempt::Failed("internal".to_owned()),
    };
    let settings = state.notifications.settings();
    let outcome = match &attempt {
        Attempt::Sent(r) => Settled::Sent {
            provider_ref: r.as_deref(),
        },
        Attempt::Skipped(why) => Settled::Skipped { reason: why },
        Attempt::Failed(code) => Settled::Failed { reason: code },
        Attempt::Retry(e) => {
            let attempts = u32::try_from(c.attempts).unwrap_or(u32::MAX);
            if matches!(e, SendError::Permanent { .. }) || attempts >= settings.max_attempts {
                Settled::Failed { reason: e.code() }
            } else {
                let mut wait = backoff(
                    settings.backoff_base_ms,
                    settings.backoff_max_secs,
                    attempts,
                );
                if let SendError::Transient {
                    retry_after: Some(after),
                    ..
                } = e
                {
                    wait = wait.max(*after);
                }
                let mut at = Utc::now()
                    + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1));
                if !c.urgent {
                    let quiet = QuietHours::new(
                        &c.time_zone,
                        i32::from(c.quiet_start),
                        i32::from(c.quiet_end),
                    );
                    at = quiet.deferred_until(at).unwrap_or(at);
                }
                Settled::Retry {
                    at,
                    reason: e.code(),
                }
            }
        }
    };
    let (status, code) = match &outcome {
        Settled::Sent { .. } => ("sent", None),
        Settled::Skipped { reason } => ("skipped", Some(*reason)),
        Settled::Failed { reason } => ("failed", Some(*reason)),
        Settled::Retry { reason, .. } => ("retry", Some(*reason)),
    };
    match store::settle(&state.pool, c, &outcome).await {
        Ok(true) => tracing::info!(
            notification_id = %c.notification_id,
            delivery_id = %c.id,
            channel = %c.channel,
            attempt = c.attempts,
            status,
            reason = code,
            "notification delivery attempted"
        ),
        Ok(false) => tracing::warn!(
            delivery_id = %c.id,
            "notification delivery outcome dropped: its lease ended and another worker took it"
        ),
        Err(e) => tracing::warn!(
            delivery_id = %c.id,
            error = %e,
            "notification delivery outcome not recorded; it will be attempted again"
        ),
    }
}

/// A ciphertext that will never open (shredded subject, altered or foreign bytes), as opposed to
/// keys or a database that are unavailable for now.
fn unreadable(e: &carehub_platform::crypto::CryptoError) -> bool {
    use carehub_platform::crypto::CryptoError as C;
    matches!(
        e,
        C::Shredded { .. }
            | C::Malformed { .. }
            | C::Authentication { .. }
            | C::UnknownDataKey { .. }
            | C::Unwrap { .. }
    )
}

async fn attempt(state: &AppState, c: &Claimed) -> Result<Attempt> {
    let (Some(channel), Some(template)) =
        (Channel::parse(&c.channel), Template::parse(&c.template))
    else {
        return Ok(Attempt::Failed("internal".to_owned()));
    };
    let to = match (&c.address, channel) {
        (Some(sealed_address), _) => {
            sealed::open(
                &state.crypto,
                c.user_id,
                ("notification_deliveries", "address", c.id),
                sealed_address,
            )
            .await?
        }
        (None, Channel::Push) => c.user_id.to_string(),
        (None, _) => return Ok(Attempt::Failed("no_address".to_owned())),
    };
    if channel == Channel::Sms {
        // The number may have opted out since the notification was accepted (quiet hours,
        // retries): the ledger as it stands now decides.
        if let Some(why) = sms_refusal(template, ledger::current(state, &to).await?) {
            return Ok(Attempt::Skipped(why));
        }
    }
    let params: Params = {
        let json = sealed::open(
            &state.crypto,
            c.user_id,
            ("notifications", "params", c.notification_id),
            &c.params,
        )
        .await?;
        serde_json::from_str(&json).map_err(|_| {
            MessagingError::Internal("stored notification params are not JSON".into())
        })?
    };
    let tz = c.time_zone.parse::<Tz>().unwrap_or(Tz::UTC);
    let rendered = templates::render(template, &params, channel, tz);
    let message = Outgoing {
        notification: c.notification_id,
        to: &to,
        subject: &rendered.subject,
        body: &rendered.body,
    };
    let adapter = state.notifications.adapter(channel);
    let timeout = Duration::from_millis(state.notifications.settings().send_timeout_ms);
    Ok(
        match tokio::time::timeout(timeout, adapter.send(&message)).await {
            Ok(Ok(sent)) => Attempt::Sent(sent.provider_ref),
            Ok(Err(e)) => Attempt::Retry(e),
            Err(_) => Attempt::Retry(SendError::transient("timeout")),
        },
    )
}

/// The pause before retry number `failures` (1 after the first failure): `base · 2^(n-1)`
/// capped at `max_secs`, of which a random half is kept, so that deliveries that failed
/// together (a provider outage) do not all come back at once.
pub fn backoff(base_ms: u64, max_secs: u64, failures: u32) -> Duration {
    let cap = max_secs.saturating_mul(1000).max(1);
    let exp = base_ms
        .max(1)
        .saturating_mul(1u64 << failures.saturating_sub(1).min(40))
        .min(cap);
    let half = exp / 2;
    let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0..=exp - half);
    Duration::from_millis(half + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for n in 1..=4u32 {
            let d = backoff(1_000, 3_600, n).as_millis();
            let exp = 1_000u128 << (n - 1);
            assert!(d >= exp / 2 && d <= exp, "{n}: {d}");
        }
        assert!(backoff(1_000, 5, 30).as_millis() <= 5_000);
    }
}
