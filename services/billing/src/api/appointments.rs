//! Scheduling's appointment events (through its outbox): an invoice per appointment, created
//! as a draft when it is booked and finalized, voided or turned into a fee as the visit ends
//! (`domain::invoice::step`). Each event applies once (by its event id, beside the delivery's
//! idempotency key), and since an invoice's state only moves forward and any event can create
//! the invoice, the order in which deliveries arrive does not matter.

use carehub_platform::audit::Purpose;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::scheduling::v1::{AppointmentEvent, AppointmentEventKind};
use chrono::Utc;
use uuid::Uuid;

use crate::api::invoices::status_of;
use crate::api::kinds;
use crate::api::validate;
use crate::domain::invoice::{self, PriceTerms, Step};
use crate::error::{checked, BillingError, Result};
use crate::store::{events, invoices, prices};
use crate::AppState;

fn kind_name(kind: AppointmentEventKind) -> &'static str {
    match kind {
        AppointmentEventKind::Booked => "booked",
        AppointmentEventKind::Cancelled => "cancelled",
        AppointmentEventKind::Completed => "completed",
        AppointmentEventKind::NoShow => "no_show",
        AppointmentEventKind::Rescheduled => "rescheduled",
        AppointmentEventKind::Unspecified => "unspecified",
    }
}

pub async fn apply(state: &AppState, call: &Call, e: AppointmentEvent) -> Result<()> {
    let mut v = FieldViolations::new();
    validate::no_card_data(
        &mut v,
        &[
            ("event_id", &e.event_id),
            ("appointment_id", &e.appointment_id),
            ("patient_id", &e.patient_id),
            ("provider_id", &e.provider_id),
            ("visit_type_id", &e.visit_type_id),
            ("price_code", &e.price_code),
        ],
        &[],
    );
    if !v.is_empty() {
        return Err(v.into_status().into());
    }
    v.require_len(&e.event_id, "event_id", 1, 128);
    let appointment = validate::id(&mut v, "appointment_id", &e.appointment_id);
    let patient = validate::id(&mut v, "patient_id", &e.patient_id);
    let kind = AppointmentEventKind::try_from(e.kind).unwrap_or(AppointmentEventKind::Unspecified);
    v.check(
        kind != AppointmentEventKind::Unspecified,
        "kind",
        "must be an AppointmentEventKind other than UNSPECIFIED",
    );
    validate::price_code(&mut v, "price_code", &e.price_code);
    v.finish()?;
    let (appointment, patient) = (checked(appointment)?, checked(patient)?);
    let currency = state.currency.code;
    call.mutate(&state.idempotency, &e, async |conn| {
        if !events::claim_appointment_event(conn, &e.event_id, appointment, kind_name(kind)).await? {
            return Ok(Change::unaudited(()));
        }
        let Some(price) = prices::get(conn, &e.price_code, currency).await? else {
            // An unpriced visit type bills nothing; billing staff can invoice it by hand.
            tracing::warn!(appointment_id = %appointment, price_code = %e.price_code, currency, "no price for the visit type: no invoice");
            return Ok(Change::unaudited(()));
        };
        let terms = PriceTerms {
            price_code: price.price_code.clone(),
            description: price.description.clone(),
            amount_minor: price.amount_minor,
            late_cancellation_fee_minor: price.late_cancellation_fee_minor,
            no_show_fee_minor: price.no_show_fee_minor,
        };
        let mut change = Change::unaudited(());
        let row = match invoices::lock_by_appointment(conn, appointment).await? {
            Some(row) => row,
            None => {
                let id = Uuid::now_v7();
                let line = terms.visit_line();
                let row = invoices::insert(conn, id, patient, Some(appointment), currency, &[line], terms.amount_minor).await?;
                change = change.with(call.event(kinds::INVOICE_CREATE, Purpose::Payment, "invoice", id, patient));
                row
            }
        };
        let status = status_of(&row)?;
        let changed = match invoice::step(kind, status, e.late_cancellation, &terms) {
            Step::Keep => false,
            Step::Finalize => {
                invoices::finalize(conn, row.id, Utc::now()).await?;
                true
            }
            Step::ChargeFee(line) => {
                let total = line.amount_minor().unwrap_or(0);
                invoices::replace_lines(conn, row.id, &[line], total).await?;
                invoices::finalize(conn, row.id, Utc::now()).await?;
                true
            }
            Step::Void => {
                invoices::void(conn, row.id).await?;
                true
            }
        };
        if changed {
            change = change.with(call.event(kinds::INVOICE_CHANGE, Purpose::Payment, "invoice", row.id, patient));
        }
        Ok::<_, BillingError>(change)
    })
    .await?;
    Ok(())
}
