//! Rows to protos, and the sealed card details' layout.

use carehub_platform::timestamps::{opt_to_proto, to_proto};
use carehub_proto::billing::v1 as pb;
use carehub_proto::common::v1::Money;
use serde::{Deserialize, Serialize};

use crate::domain::invoice::{number_text, LineKind, Status};
use crate::store::customers::MethodRow;
use crate::store::invoices::{InvoiceRow, LineRow};
use crate::store::payments::PaymentRow;
use crate::store::prices::PriceRow;
use crate::store::refunds::RefundRow;

/// What the processor said about a card, sealed as one JSON cell.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Card {
    pub brand: String,
    pub last4: String,
    pub exp_month: u32,
    pub exp_year: u32,
}

pub fn method_to_pb(m: &MethodRow, card: &Card) -> pb::PaymentMethod {
    pb::PaymentMethod {
        id: m.id.to_string(),
        patient_id: m.patient_id.to_string(),
        brand: card.brand.clone(),
        last4: card.last4.clone(),
        exp_month: i32::try_from(card.exp_month).unwrap_or_default(),
        exp_year: i32::try_from(card.exp_year).unwrap_or_default(),
        is_default: m.is_default,
        create_time: Some(to_proto(m.create_time)),
    }
}

pub fn money(currency: &str, amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: currency.to_owned(),
        amount_minor,
    })
}

pub fn price_to_pb(p: &PriceRow) -> pb::Price {
    pb::Price {
        price_code: p.price_code.clone(),
        price: money(&p.currency, p.amount_minor),
        description: p.description.clone(),
        late_cancellation_fee_minor: p.late_cancellation_fee_minor,
        no_show_fee_minor: p.no_show_fee_minor,
        update_time: Some(to_proto(p.update_time)),
    }
}

pub fn line_to_pb(l: &LineRow) -> pb::InvoiceLine {
    pb::InvoiceLine {
        kind: LineKind::parse(&l.kind).map_or(pb::LineKind::Unspecified, LineKind::to_pb) as i32,
        price_code: l.price_code.clone(),
        description: l.description.clone(),
        quantity: l.quantity,
        unit_amount_minor: l.unit_amount_minor,
        amount_minor: l.amount_minor,
    }
}

pub fn invoice_number(i: &InvoiceRow) -> String {
    match (i.number_year, i.number) {
        (Some(y), Some(n)) => number_text(y, n),
        _ => String::new(),
    }
}

pub fn invoice_to_pb(i: &InvoiceRow, lines: &[LineRow]) -> pb::Invoice {
    let status = Status::parse(&i.status);
    let due = if status == Some(Status::Open) {
        (i.total_minor - i.amount_paid_minor).max(0)
    } else {
        0
    };
    pb::Invoice {
        id: i.id.to_string(),
        number: invoice_number(i),
        patient_id: i.patient_id.to_string(),
        appointment_id: i.appointment_id.map(|a| a.to_string()).unwrap_or_default(),
        status: status.map_or(pb::InvoiceStatus::Unspecified, Status::to_pb) as i32,
        currency_code: i.currency.clone(),
        lines: lines
            .iter()
            .filter(|l| l.invoice_id == i.id)
            .map(line_to_pb)
            .collect(),
        total_minor: i.total_minor,
        amount_paid_minor: i.amount_paid_minor,
        amount_refunded_minor: i.amount_refunded_minor,
        amount_due_minor: due,
        create_time: Some(to_proto(i.create_time)),
        finalize_time: opt_to_proto(i.finalize_time),
        paid_time: opt_to_proto(i.paid_time),
        void_time: opt_to_proto(i.void_time),
    }
}

pub fn payment_status(s: &str) -> pb::PaymentStatus {
    match s {
        "pending" => pb::PaymentStatus::Pending,
        "processing" => pb::PaymentStatus::Processing,
        "requires_action" => pb::PaymentStatus::RequiresAction,
        "succeeded" => pb::PaymentStatus::Succeeded,
        "failed" => pb::PaymentStatus::Failed,
        _ => pb::PaymentStatus::Unspecified,
    }
}

pub fn payment_to_pb(p: &PaymentRow) -> pb::Payment {
    pb::Payment {
        id: p.id.to_string(),
        invoice_id: p.invoice_id.to_string(),
        patient_id: p.patient_id.to_string(),
        payment_method_id: p.payment_method_id.to_string(),
        amount: money(&p.currency, p.amount_minor),
        status: payment_status(&p.status) as i32,
        failure_code: p.failure_code.clone().unwrap_or_default(),
        amount_refunded_minor: p.refunded_minor,
        create_time: Some(to_proto(p.create_time)),
        update_time: Some(to_proto(p.update_time)),
    }
}

pub fn refund_reason(r: pb::RefundReason) -> Option<&'static str> {
    Some(match r {
        pb::RefundReason::Unspecified => return None,
        pb::RefundReason::RequestedByPatient => "requested_by_patient",
        pb::RefundReason::Duplicate => "duplicate",
        pb::RefundReason::ServiceNotRendered => "service_not_rendered",
        pb::RefundReason::BillingError => "billing_error",
    })
}

fn refund_reason_to_pb(s: &str) -> pb::RefundReason {
    match s {
        "requested_by_patient" => pb::RefundReason::RequestedByPatient,
        "duplicate" => pb::RefundReason::Duplicate,
        "service_not_rendered" => pb::RefundReason::ServiceNotRendered,
        "billing_error" => pb::RefundReason::BillingError,
        _ => pb::RefundReason::Unspecified,
    }
}

pub fn refund_to_pb(r: &RefundRow) -> pb::Refund {
    pb::Refund {
        id: r.id.to_string(),
        payment_id: r.payment_id.to_string(),
        invoice_id: r.invoice_id.to_string(),
        amount: money(&r.currency, r.amount_minor),
        status: match r.status.as_str() {
            "pending" => pb::RefundStatus::Pending,
            "succeeded" => pb::RefundStatus::Succeeded,
            "failed" => pb::RefundStatus::Failed,
            _ => pb::RefundStatus::Unspecified,
        } as i32,
        reason: refund_reason_to_pb(&r.reason) as i32,
        create_time: Some(to_proto(r.create_time)),
        update_time: Some(to_proto(r.update_time)),
    }
}
