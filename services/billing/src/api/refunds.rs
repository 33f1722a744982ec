//! Refunds (billing office): partial or full, never more than captured minus what is already
//! refunded or being refunded. The same intent-first shape as payments: stored pending before
//! the processor is called, with a processor idempotency key derived from its id, settled in a
//! second transaction, re-driven by a retry or the reconciler when the answer was lost.

use carehub_platform::audit::{self, Outcome, Purpose};
use carehub_platform::call::Call;
use carehub_platform::errors::FieldViolations;
use carehub_proto::billing::v1::*;
use prost::Message;
use uuid::Uuid;

use crate::api::convert::{refund_reason, refund_to_pb};
use crate::api::intents::{existing, Begin};
use crate::api::kinds;
use crate::api::payments::required_key;
use crate::api::validate;
use crate::error::{checked, BillingError, Result};
use crate::processor::{ProcessorError, RefundOutcome, RefundRequest, RefundStatus};
use crate::store::intents::{self, Intents};
use crate::store::refunds::{self as store, RefundRow};
use crate::store::{invoices, payments};
use crate::AppState;

pub async fn refund(state: &AppState, call: &Call, r: RefundPaymentRequest) -> Result<Refund> {
    let mut v = FieldViolations::new();
    validate::no_card_data(&mut v, &[("payment_id", &r.payment_id)], &[]);
    if !v.is_empty() {
        return Err(v.into_status().into());
    }
    call.user()?;
    let key = required_key(call)?;
    let payment = validate::id(&mut v, "payment_id", &r.payment_id);
    validate::amount(&mut v, "amount_minor", r.amount_minor, true);
    let reason = RefundReason::try_from(r.reason)
        .ok()
        .and_then(refund_reason);
    if reason.is_none() {
        v.add("reason", "must be a RefundReason other than UNSPECIFIED");
    }
    v.finish()?;
    let (payment, reason) = (checked(payment)?, checked(reason)?);
    let actor = call.caller.actor_key();
    let hash = validate::request_hash(&call.rpc, &r.encode_to_vec());
    let mut attempt = 0;
    let begun = loop {
        attempt += 1;
        match begin(
            state,
            call,
            &actor,
            key,
            &hash,
            payment,
            r.amount_minor,
            reason,
        )
        .await
        {
            Err(BillingError::Db(sqlx::Error::Database(d)))
                if d.code().as_deref() == Some("23505") && attempt < 3 => {}
            other => break other?,
        }
    };
    let row = match begun {
        Begin::Answer(row) => {
            call.mark_audited();
            return Ok(refund_to_pb(&row));
        }
        Begin::Drive(row) => row,
    };
    Ok(refund_to_pb(&drive(state, &row, Some(call)).await?))
}

#[allow(clippy::too_many_arguments)]
async fn begin(
    state: &AppState,
    call: &Call,
    actor: &str,
    key: &str,
    hash: &[u8],
    payment_id: Uuid,
    amount_asked: i64,
    reason: &str,
) -> Result<Begin<RefundRow>> {
    let lease = state.settings.intent_lease_secs;
    let mut tx = state.pool.begin().await?;
    let found = store::by_key(&mut tx, actor, key).await?;
    if let Some(begun) = existing(&mut tx, found, hash, lease).await? {
        tx.commit().await?;
        return begun;
    }
    let payment = payments::lock(&mut tx, payment_id)
        .await?
        .ok_or(BillingError::NotFound {
            what: "payment",
            id: payment_id.to_string(),
        })?;
    // A first call with this key may have committed while this one waited for the payment.
    let found = store::by_key(&mut tx, actor, key).await?;
    if let Some(begun) = existing(&mut tx, found, hash, lease).await? {
        tx.commit().await?;
        return begun;
    }
    if payment.status != "succeeded" {
        return Err(BillingError::State {
            what: "payment",
            id: payment_id.to_string(),
            state: "not succeeded",
            action: "refund it",
        });
    }
    let reserved = store::reserved(&mut tx, payment_id).await?;
    let refundable = payment.captured_minor - payment.refunded_minor - reserved;
    let amount = if amount_asked == 0 {
        refundable
    } else {
        amount_asked
    };
    if amount <= 0 || amount > refundable {
        return Err(BillingError::ExceedsBalance {
            asked: amount.max(amount_asked),
            what: "refundable amount (captured less refunded and refunds in flight)",
            left: refundable.max(0),
        });
    }
    let id = Uuid::now_v7();
    let row = store::insert(
        &mut tx,
        id,
        actor,
        key,
        hash,
        payment_id,
        payment.invoice_id,
        payment.patient_id,
        &payment.currency,
        amount,
        reason,
        lease,
    )
    .await?;
    audit::record(
        &mut tx,
        &call.event(
            kinds::REFUND_START,
            Purpose::Payment,
            "refund",
            id,
            payment.patient_id,
        ),
    )
    .await?;
    tx.commit().await?;
    call.mark_audited();
    Ok(Begin::Drive(row))
}

/// Asks the processor to refund (again, with the same key) and records the answer; an
/// unanswered call gives the lease back and fails with OutcomeUnknown.
pub async fn drive(state: &AppState, row: &RefundRow, call: Option<&Call>) -> Result<RefundRow> {
    let processor_payment = {
        let mut conn = state.pool.acquire().await?;
        payments::get(&mut conn, row.payment_id)
            .await?
            .and_then(|p| p.processor_payment_id)
            .ok_or_else(|| {
                BillingError::Internal(format!("refund {}: payment has no processor id", row.id))
            })?
    };
    let key = format!("carehub-refund-{}", row.id);
    let answer = state
        .processor
        .refund(&RefundRequest {
            idempotency_key: &key,
            refund_id: row.id,
            processor_payment_id: &processor_payment,
            amount_minor: row.amount_minor,
        })
        .await;
    let outcome = match answer {
        Ok(o) => o,
        Err(ProcessorError::Rejected { code }) => RefundOutcome {
            processor_refund_id: String::new(),
            status: RefundStatus::Failed { code },
        },
        Err(e) => {
            let mut conn = state.pool.acquire().await?;
            intents::release(&mut conn, Intents::Refunds, row.id).await?;
            return Err(e.into());
        }
    };
    settle(state, row.id, &outcome, None, call).await
}

fn status_name(s: &RefundStatus) -> &'static str {
    match s {
        RefundStatus::Pending => "pending",
        RefundStatus::Succeeded => "succeeded",
        RefundStatus::Failed { .. } => "failed",
    }
}

/// Records a refund's outcome: a success moves money back on the payment and the invoice
/// exactly once, whoever reports it first; success and failure are final, older events lose.
pub async fn settle(
    state: &AppState,
    id: Uuid,
    outcome: &RefundOutcome,
    event_created: Option<i64>,
    call: Option<&Call>,
) -> Result<RefundRow> {
    let mut tx = state.pool.begin().await?;
    let row = store::lock(&mut tx, id)
        .await?
        .ok_or(BillingError::NotFound {
            what: "refund",
            id: id.to_string(),
        })?;
    let stale = match (row.status_event_created, event_created) {
        (Some(stored), Some(new)) => new < stored,
        _ => false,
    };
    if row.status != "pending" || stale {
        tx.commit().await?;
        if let Some(call) = call {
            call.mark_audited();
        }
        return Ok(row);
    }
    let status = status_name(&outcome.status);
    let failure = match &outcome.status {
        RefundStatus::Failed { code } => Some(code.as_str()),
        _ => None,
    };
    let processor_id = Some(outcome.processor_refund_id.as_str()).filter(|p| !p.is_empty());
    let settled = store::settle(&mut tx, id, status, failure, processor_id, event_created).await?;
    if outcome.status == RefundStatus::Succeeded {
        payments::add_refunded(&mut tx, row.payment_id, row.amount_minor).await?;
        invoices::add_refunded(&mut tx, row.invoice_id, row.amount_minor).await?;
    }
    let mut event = audit::AuditEvent::of(kinds::REFUND_SETTLE, Purpose::Payment, "refund", id)
        .subject(row.patient_id)
        .outcome(
            if failure.is_some() {
                Outcome::MinorFailure
            } else {
                Outcome::Success
            },
            Some(status),
        );
    if let Some(call) = call {
        event = event.caller(&call.caller);
    }
    audit::record(&mut tx, &event).await?;
    tx.commit().await?;
    if let Some(call) = call {
        call.mark_audited();
    }
    Ok(settled)
}
