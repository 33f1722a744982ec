//! Identity's account events (its outbox calls AccountEvents/ApplyAccountEvent). A terminated
//! account gives its time back: the patient's future appointments are cancelled (reason other)
//! and their holds released; a provider's future appointments are cancelled (reason provider
//! unavailable), with their effects (reminders stopped, video visits cancelled, billing told),
//! and the provider's weekly windows are cleared so that no search offers them again.
//! Suspension and reactivation change nothing here: a suspended user cannot sign in to act, and
//! their appointments wait for the outcome. Applying an event twice finds nothing left to do.

use carehub_platform::audit::{AuditEvent, Purpose};
use carehub_platform::call::Call;
use carehub_platform::errors::FieldViolations;
use carehub_proto::identity::v1::{AccountStatus, AccountStatusChanged};
use uuid::Uuid;

use super::{effects, kinds};
use crate::domain::appointment::{CancelReason, Status};
use crate::error::{checked, Result};
use crate::store::appointments::{self as store};
use crate::store::providers as providers_store;
use crate::AppState;

pub async fn apply_account_event(
    state: &AppState,
    call: &Call,
    e: AccountStatusChanged,
) -> Result<()> {
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let user = v.require_uuid("user_id", &e.user_id);
    let status = AccountStatus::try_from(e.status)
        .ok()
        .filter(|s| *s != AccountStatus::Unspecified);
    v.check(
        status.is_some(),
        "status",
        "must be an ACCOUNT_STATUS other than UNSPECIFIED",
    );
    v.finish()?;
    let (user, status) = (checked(user)?, checked(status)?);
    if status != AccountStatus::Terminated {
        return Ok(());
    }
    let mut tx = state.pool.begin().await?;
    let ids: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT id FROM appointments
          WHERE (patient_id = $1 OR provider_id = $1) AND start_time > now()
            AND status IN ('requested', 'booked', 'checked_in')
          ORDER BY start_time FOR UPDATE",
    )
    .bind(user)
    .fetch_all(&mut *tx)
    .await?;
    let mut events = Vec::new();
    for (id,) in &ids {
        let Some(mut a) = store::appointment(&mut tx, *id, true).await? else {
            continue;
        };
        let was_booked = Status::parse(&a.status) != Some(Status::Requested);
        let reason = if a.provider_id == user {
            CancelReason::ProviderUnavailable
        } else {
            CancelReason::Other
        };
        a.status = Status::Cancelled.as_str().to_owned();
        a.cancel_reason = Some(reason.as_str().to_owned());
        store::release_claim(&mut tx, a.claim_id).await?;
        let a = store::save_appointment(&mut tx, &a).await?;
        let price: String = sqlx::query_scalar("SELECT price_code FROM visit_types WHERE id = $1")
            .bind(a.visit_type_id)
            .fetch_one(&mut *tx)
            .await?;
        effects::cancelled(state, &mut tx, &a, was_booked, &price).await?;
        events.push(
            AuditEvent::of(
                kinds::APPOINTMENT_CHANGE,
                Purpose::Operations,
                "appointment",
                a.id,
            )
            .caller(&call.caller)
            .subject(a.patient_id),
        );
    }
    sqlx::query(
        "WITH released AS (
            UPDATE slot_claims SET active = false
             WHERE active AND patient_id = $1 AND hold_expires_at IS NOT NULL RETURNING id)
         UPDATE holds SET status = 'released' WHERE id IN (SELECT id FROM released)",
    )
    .bind(user)
    .execute(&mut *tx)
    .await?;
    providers_store::clear_windows(&mut tx, user).await?;
    for e in &events {
        carehub_platform::audit::record(&mut tx, e).await?;
    }
    tx.commit().await?;
    if !events.is_empty() {
        call.mark_audited();
    }
    tracing::info!(user_id = %user, cancelled = ids.len(), "account termination applied");
    Ok(())
}
