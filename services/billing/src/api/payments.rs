//! Charges that never happen twice (Stripe's semantics): every PayInvoice takes an
//! idempotency key; the intent is stored (pending, leased to the call) before the processor is
//! called, with a processor idempotency key derived from its id; the outcome is recorded in a
//! second transaction. A retry with the same key returns the stored payment, the same key with
//! other parameters is refused, and a key whose call still holds the lease is refused as in
//! use. When the processor's answer is lost (timeout, crash between its success and our
//! commit), the intent stays pending: the next retry, or the reconciler once the lease ran out,
//! asks the processor again with the same key, and the processor answers from its record of
//! the first request: one payment, never two.

use carehub_platform::audit::{self, Outcome, Purpose};
use carehub_platform::call::Call;
use carehub_platform::errors::{self, FieldViolations};
use carehub_proto::billing::v1::*;
use prost::Message;
use uuid::Uuid;

use crate::api::access::may_see;
use crate::api::convert::payment_to_pb;
use crate::api::intents::{existing, Begin};
use crate::api::invoices::status_of;
use crate::api::kinds;
use crate::api::validate;
use crate::domain::invoice::{payable, Status};
use crate::error::{checked, BillingError, Result};
use crate::processor::{ChargeOutcome, ChargeRequest, ChargeStatus, ProcessorError};
use crate::store::customers;
use crate::store::intents::{self, Intents};
use crate::store::invoices;
use crate::store::payments::{self as store, PaymentRow};
use crate::AppState;

/// Whether an idempotency key is required and present.
pub fn required_key(call: &Call) -> Result<&str> {
    call.idempotency_key()?.ok_or_else(|| {
        BillingError::Status(errors::invalid_field(
            carehub_platform::idempotency::HEADER,
            "is required: every charge and refund takes an idempotency key",
        ))
    })
}

pub async fn pay(state: &AppState, call: &Call, r: PayInvoiceRequest) -> Result<Payment> {
    let mut v = FieldViolations::new();
    validate::no_card_data(
        &mut v,
        &[
            ("invoice_id", &r.invoice_id),
            ("payment_method_id", &r.payment_method_id),
        ],
        &["payment_method_id"],
    );
    if !v.is_empty() {
        return Err(v.into_status().into());
    }
    let user = call.user()?;
    let key = required_key(call)?;
    let invoice = validate::id(&mut v, "invoice_id", &r.invoice_id);
    let method = validate::optional_id(&mut v, "payment_method_id", &r.payment_method_id);
    validate::amount(&mut v, "amount_minor", r.amount_minor, true);
    v.finish()?;
    let invoice = checked(invoice)?;
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
            invoice,
            method,
            r.amount_minor,
        )
        .await
        {
            // Two first calls with one key raced to insert: the loser reads the winner's row.
            Err(BillingError::Db(sqlx::Error::Database(d)))
                if d.code().as_deref() == Some("23505") && attempt < 3 => {}
            other => break other?,
        }
    };
    let row = match begun {
        Begin::Answer(row) => {
            may_see(user, row.patient_id)?;
            call.mark_audited();
            return Ok(payment_to_pb(&row));
        }
        Begin::Drive(row) => row,
    };
    // A retry that takes over an old intent only looks it up, as the reconciler does: the
    // processor may have forgotten the key.
    let resend_within = chrono::Duration::hours(i64::from(state.settings.resend_within_hours));
    let resend = chrono::Utc::now() - row.create_time < resend_within;
    let settled = drive(state, &row, resend, Some(call)).await?;
    Ok(payment_to_pb(&settled))
}

#[allow(clippy::too_many_arguments)]
async fn begin(
    state: &AppState,
    call: &Call,
    actor: &str,
    key: &str,
    hash: &[u8],
    invoice_id: Uuid,
    method: Option<Uuid>,
    amount_asked: i64,
) -> Result<Begin<PaymentRow>> {
    let lease = state.settings.intent_lease_secs;
    let user = call.user()?;
    let mut tx = state.pool.begin().await?;
    let found = store::by_key(&mut tx, actor, key).await?;
    if let Some(begun) = existing(&mut tx, found, hash, lease).await? {
        tx.commit().await?;
        return begun;
    }
    let invoice = invoices::lock(&mut tx, invoice_id)
        .await?
        .ok_or(BillingError::NotFound {
            what: "invoice",
            id: invoice_id.to_string(),
        })?;
    // A first call with this key may have committed while this one waited for the invoice.
    let found = store::by_key(&mut tx, actor, key).await?;
    if let Some(begun) = existing(&mut tx, found, hash, lease).await? {
        tx.commit().await?;
        return begun;
    }
    may_see(user, invoice.patient_id)?;
    let status = status_of(&invoice)?;
    if status != Status::Open {
        return Err(BillingError::State {
            what: "invoice",
            id: invoice_id.to_string(),
            state: match status {
                Status::Draft => "a draft (not finalized yet)",
                Status::Paid => "paid",
                _ => "void",
            },
            action: "pay it",
        });
    }
    let method = match method {
        Some(id) => customers::method(&mut tx, id)
            .await?
            .filter(|m| m.patient_id == invoice.patient_id && m.removed_time.is_none())
            .ok_or(BillingError::NotFound {
                what: "payment method",
                id: id.to_string(),
            })?,
        None => customers::default_method(&mut tx, invoice.patient_id)
            .await?
            .ok_or(BillingError::State {
                what: "patient",
                id: invoice.patient_id.to_string(),
                state: "without a payment method",
                action: "pay with the default one",
            })?,
    };
    let due = invoice.total_minor - invoice.amount_paid_minor;
    let reserved = invoices::reserved(&mut tx, invoice_id).await?;
    let amount = if amount_asked == 0 {
        due - reserved
    } else {
        amount_asked
    };
    if !payable(amount, due, reserved) {
        return Err(BillingError::ExceedsBalance {
            asked: amount.max(amount_asked),
            what: "amount due less payments in flight",
            left: (due - reserved).max(0),
        });
    }
    let id = Uuid::now_v7();
    let row = store::insert(
        &mut tx,
        id,
        actor,
        key,
        hash,
        invoice_id,
        invoice.patient_id,
        method.id,
        &invoice.currency,
        amount,
        state.processor.name(),
        lease,
    )
    .await?;
    audit::record(
        &mut tx,
        &call.event(
            kinds::PAYMENT_START,
            Purpose::Payment,
            "payment",
            id,
            invoice.patient_id,
        ),
    )
    .await?;
    tx.commit().await?;
    call.mark_audited();
    Ok(Begin::Drive(row))
}

/// Asks the processor about an intent this caller holds and records the answer. `resend`:
/// charge again with the intent's key (the processor answers a repeat from its record);
/// otherwise only look the charge up (the key may have expired at the processor). An
/// unanswered call gives the lease back and fails with OutcomeUnknown.
pub async fn drive(
    state: &AppState,
    row: &PaymentRow,
    resend: bool,
    call: Option<&Call>,
) -> Result<PaymentRow> {
    let answer = ask(state, row, resend).await;
    match answer {
        Ok(Some(outcome)) => settle(state, row.id, &outcome, None, call).await,
        Ok(None) => {
            // Never reached the processor, and too old to send now: it will not be charged.
            let failed = ChargeOutcome {
                processor_payment_id: String::new(),
                status: ChargeStatus::Failed {
                    code: "abandoned".to_owned(),
                },
                captured_minor: 0,
            };
            settle(state, row.id, &failed, None, call).await
        }
        Err(BillingError::ProcessorRejected(code)) => {
            let failed = ChargeOutcome {
                processor_payment_id: String::new(),
                status: ChargeStatus::Failed { code },
                captured_minor: 0,
            };
            settle(state, row.id, &failed, None, call).await
        }
        // Nothing learnt (the processor did not answer, or our keys or database failed before
        // asking): give the lease back so that a retry or the reconciler asks again at once.
        Err(e) => {
            let mut conn = state.pool.acquire().await?;
            intents::release(&mut conn, Intents::Payments, row.id).await?;
            Err(e)
        }
    }
}

async fn ask(state: &AppState, row: &PaymentRow, resend: bool) -> Result<Option<ChargeOutcome>> {
    if !resend {
        return Ok(state.processor.find_charge(row.id).await?);
    }
    let (customer, method) = {
        let mut conn = state.pool.acquire().await?;
        let customer = customers::customer(&mut conn, row.patient_id)
            .await?
            .ok_or_else(|| BillingError::Internal(format!("payment {} has no customer", row.id)))?;
        let method = customers::method(&mut conn, row.payment_method_id)
            .await?
            .ok_or_else(|| BillingError::Internal(format!("payment {} has no method", row.id)))?;
        (customer, method)
    };
    let customer = state
        .crypto
        .open_cell(
            row.patient_id,
            ("customers", "processor_customer_id", customer.id),
            &customer.processor_customer_id,
        )
        .await?;
    let method = state
        .crypto
        .open_cell(
            row.patient_id,
            ("payment_methods", "processor_method_id", method.id),
            &method.processor_method_id,
        )
        .await?;
    let key = format!("carehub-payment-{}", row.id);
    let outcome = state
        .processor
        .charge(&ChargeRequest {
            idempotency_key: &key,
            payment_id: row.id,
            customer: &customer,
            payment_method: &method,
            amount_minor: row.amount_minor,
            currency: &row.currency,
        })
        .await;
    match outcome {
        Ok(o) => Ok(Some(o)),
        Err(ProcessorError::Rejected { code }) => Err(BillingError::ProcessorRejected(code)),
        Err(e) => Err(e.into()),
    }
}

fn status_name(s: &ChargeStatus) -> &'static str {
    match s {
        ChargeStatus::Succeeded => "succeeded",
        ChargeStatus::Processing => "processing",
        ChargeStatus::RequiresAction => "requires_action",
        ChargeStatus::Failed { .. } => "failed",
    }
}

/// Whether an outcome (from a call, or a processor event created at `event_created`) may
/// replace the payment's stored state: success is final; otherwise an older event never
/// overrides a newer one, and a call's own answer always applies to a pending intent.
pub fn applies(
    stored_status: &str,
    stored_event: Option<i64>,
    new: &ChargeStatus,
    event_created: Option<i64>,
) -> bool {
    if stored_status == "succeeded" {
        return false;
    }
    if *new == ChargeStatus::Succeeded || stored_status == "pending" {
        return true;
    }
    match (stored_event, event_created) {
        (Some(stored), Some(new)) => new >= stored,
        (None, Some(_)) => true,
        // A call's answer after an event already moved it on: the event is newer.
        (Some(_), None) => false,
        (None, None) => true,
    }
}

/// Records `outcome` for payment `id` (its own transaction, with its audit event): captures
/// move the invoice toward paid exactly once, whoever reports them first.
pub async fn settle(
    state: &AppState,
    id: Uuid,
    outcome: &ChargeOutcome,
    event_created: Option<i64>,
    call: Option<&Call>,
) -> Result<PaymentRow> {
    let mut tx = state.pool.begin().await?;
    let row = store::lock(&mut tx, id)
        .await?
        .ok_or(BillingError::NotFound {
            what: "payment",
            id: id.to_string(),
        })?;
    if !applies(
        &row.status,
        row.status_event_created,
        &outcome.status,
        event_created,
    ) {
        tx.commit().await?;
        if let Some(call) = call {
            call.mark_audited();
        }
        return Ok(row);
    }
    let status = status_name(&outcome.status);
    let captured = if outcome.status == ChargeStatus::Succeeded {
        outcome.captured_minor.clamp(0, row.amount_minor)
    } else {
        0
    };
    let failure = match &outcome.status {
        ChargeStatus::Failed { code } => Some(code.as_str()),
        _ => None,
    };
    let processor_id = Some(outcome.processor_payment_id.as_str()).filter(|p| !p.is_empty());
    let settled = store::settle(
        &mut tx,
        id,
        status,
        failure,
        processor_id,
        captured,
        event_created,
    )
    .await?;
    if captured > 0 {
        invoices::add_captured(&mut tx, row.invoice_id, captured).await?;
    }
    let mut event = audit::AuditEvent::of(kinds::PAYMENT_SETTLE, Purpose::Payment, "payment", id)
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

pub async fn get(state: &AppState, call: &Call, r: GetPaymentRequest) -> Result<Payment> {
    let mut v = FieldViolations::new();
    validate::no_card_data(&mut v, &[("payment_id", &r.payment_id)], &[]);
    let id = validate::id(&mut v, "payment_id", &r.payment_id);
    v.finish()?;
    let user = call.user()?;
    let id = checked(id)?;
    let row = {
        let mut conn = state.pool.acquire().await?;
        store::get(&mut conn, id)
            .await?
            .ok_or(BillingError::NotFound {
                what: "payment",
                id: id.to_string(),
            })?
    };
    may_see(user, row.patient_id)?;
    call.read(
        &state.pool,
        call.event(
            kinds::PAYMENT_READ,
            Purpose::Payment,
            "payment",
            id,
            row.patient_id,
        ),
        payment_to_pb(&row),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_is_final_and_older_events_never_win() {
        let failed = ChargeStatus::Failed {
            code: "card_declined".into(),
        };
        assert!(!applies("succeeded", None, &failed, None));
        assert!(!applies(
            "succeeded",
            Some(1),
            &ChargeStatus::Processing,
            Some(9)
        ));
        assert!(applies("pending", None, &failed, None));
        assert!(applies(
            "failed",
            Some(10),
            &ChargeStatus::Succeeded,
            Some(5)
        ));
        assert!(applies("processing", Some(5), &failed, Some(6)));
        assert!(!applies(
            "failed",
            Some(6),
            &ChargeStatus::Processing,
            Some(5)
        ));
        assert!(!applies("requires_action", Some(6), &failed, None));
        assert!(applies("requires_action", None, &failed, None));
    }
}
