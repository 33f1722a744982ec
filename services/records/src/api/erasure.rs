//! Erasure by crypto-shredding: identity's account events schedule it for a terminated
//! account, an operator for a minor's data or on request (`carehub records erase`), and the
//! eraser destroys the patient's data keys once the legal hold ends. Every chart entry, grant
//! label and break-glass reason of the patient is then unreadable for good, in every copy
//! (backups included); the rows stay, ids and instants only. Each step is audited, ids only.

use carehub_platform::audit::{self, AuditEvent, Purpose};
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::identity::v1::{AccountStatus, AccountStatusChanged};
use uuid::Uuid;

use super::kinds;
use crate::error::{RecordsError, Result};
use crate::store::erasures::{self, Reason};
use crate::AppState;

/// Identity's account event (through its outbox, the delivery's outbox id as idempotency
/// key): a terminated account's chart is scheduled for erasure after the legal hold; other
/// statuses change nothing here (tokens of suspended accounts are refused by the verifier).
pub async fn apply_account_event(
    state: &AppState,
    call: &Call,
    r: AccountStatusChanged,
) -> Result<()> {
    let mut v = FieldViolations::new();
    let user = v.require_uuid("user_id", &r.user_id);
    v.check(
        AccountStatus::try_from(r.status).is_ok_and(|s| s != AccountStatus::Unspecified),
        "status",
        "must be an account status",
    );
    v.finish()?;
    let user = crate::error::checked(user)?;
    if r.status != AccountStatus::Terminated as i32 {
        return Ok(());
    }
    let hold = state.settings.erasure_hold_days;
    call.mutate(&state.idempotency, &r, async |conn| {
        let event = scheduled_event(call, user, Reason::AccountTerminated);
        if erasures::schedule(conn, user, Reason::AccountTerminated, hold).await? {
            Ok::<_, RecordsError>(Change::new((), event))
        } else {
            Ok(Change::unaudited(()))
        }
    })
    .await?;
    Ok(())
}

fn scheduled_event(call: &Call, patient: Uuid, reason: Reason) -> AuditEvent {
    call.event(
        kinds::ERASURE_SCHEDULE,
        Purpose::Operations,
        "erasure",
        patient,
        patient,
    )
    .outcome(
        audit::Outcome::Success,
        Some(&reason.as_str().to_uppercase()),
    )
}

/// Schedules `patient`'s erasure for `reason` outside an RPC (the operator's command), due
/// after `hold_days`, or at once with `now`; audited as the operator CLI. An erasure already
/// scheduled stands (`now` brings it forward). Returns when it is due; the running records
/// service erases it within `records.erasure_check_secs` of that.
pub async fn schedule(
    pool: &sqlx::PgPool,
    hold_days: u32,
    patient: Uuid,
    reason: Reason,
    now: bool,
) -> Result<chrono::DateTime<chrono::Utc>> {
    let mut tx = pool.begin().await?;
    let hold = if now { 0 } else { hold_days };
    if erasures::schedule(&mut tx, patient, reason, hold).await? {
        let mut event = AuditEvent::of(
            kinds::ERASURE_SCHEDULE,
            Purpose::Operations,
            "erasure",
            patient,
        )
        .subject(patient)
        .outcome(
            audit::Outcome::Success,
            Some(&reason.as_str().to_uppercase()),
        );
        event.actor_workload = Some("admin-cli".to_owned());
        audit::record(&mut tx, &event).await?;
    }
    if now {
        erasures::make_due(&mut tx, patient).await?;
    }
    let due = erasures::due_at(&mut tx, patient).await?;
    tx.commit().await?;
    Ok(due)
}

/// Erases every patient whose hold has ended: their data keys destroyed, the row marked and
/// the erasure audited in one transaction (a crash between the shredding and the commit
/// shreds again next time: shredding is idempotent). Returns how many were erased.
pub async fn erase_due(state: &AppState) -> Result<usize> {
    let mut erased = 0;
    loop {
        let mut tx = state.pool.begin().await?;
        let Some(due) = erasures::next_due(&mut tx).await? else {
            tx.commit().await?;
            return Ok(erased);
        };
        let patient = due.patient_id;
        state.crypto.shred(&patient.to_string()).await?;
        erasures::mark_erased(&mut tx, patient).await?;
        let mut event =
            AuditEvent::of(kinds::ERASURE_DONE, Purpose::Operations, "erasure", patient)
                .subject(patient)
                .outcome(audit::Outcome::Success, Some(&due.reason.to_uppercase()));
        event.actor_workload = Some("records".to_owned());
        audit::record(&mut tx, &event).await?;
        tx.commit().await?;
        tracing::info!(patient = %patient, reason = %due.reason, "chart erased (data keys destroyed)");
        erased += 1;
    }
}

/// Runs [`erase_due`] every `every` until the state is dropped with the server.
pub fn spawn_eraser(state: &std::sync::Arc<AppState>, every: std::time::Duration) {
    let weak = std::sync::Arc::downgrade(state);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(state) = weak.upgrade() else { break };
            if let Err(e) = erase_due(&state).await {
                tracing::warn!(error = %e, "erasing due charts failed; retrying");
            }
        }
    });
}
