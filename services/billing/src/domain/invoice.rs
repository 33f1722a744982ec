//! Invoices: their states, lines, numbers, and what each appointment event does to one.
//!
//! An invoice is created as a draft when its appointment is booked and takes a number only
//! when it is finalized (the visit completed, a fee charged, or billing staff created it), so
//! that voided drafts leave no hole in the year's numbering. States only move forward
//! (draft → open → paid, draft → void, open → void while nothing is paid): whatever order
//! scheduling's events arrive in, the invoice ends where the last real step put it.

use carehub_proto::billing::v1 as pb;
use carehub_proto::scheduling::v1::AppointmentEventKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Draft,
    Open,
    Paid,
    Void,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Open => "open",
            Status::Paid => "paid",
            Status::Void => "void",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "draft" => Status::Draft,
            "open" => Status::Open,
            "paid" => Status::Paid,
            "void" => Status::Void,
            _ => return None,
        })
    }

    pub fn to_pb(self) -> pb::InvoiceStatus {
        match self {
            Status::Draft => pb::InvoiceStatus::Draft,
            Status::Open => pb::InvoiceStatus::Open,
            Status::Paid => pb::InvoiceStatus::Paid,
            Status::Void => pb::InvoiceStatus::Void,
        }
    }

    pub fn from_pb(s: pb::InvoiceStatus) -> Option<Status> {
        Some(match s {
            pb::InvoiceStatus::Unspecified => return None,
            pb::InvoiceStatus::Draft => Status::Draft,
            pb::InvoiceStatus::Open => Status::Open,
            pb::InvoiceStatus::Paid => Status::Paid,
            pb::InvoiceStatus::Void => Status::Void,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineKind {
    Visit,
    LateCancellationFee,
    NoShowFee,
    Manual,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Visit => "visit",
            LineKind::LateCancellationFee => "late_cancellation_fee",
            LineKind::NoShowFee => "no_show_fee",
            LineKind::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<LineKind> {
        Some(match s {
            "visit" => LineKind::Visit,
            "late_cancellation_fee" => LineKind::LateCancellationFee,
            "no_show_fee" => LineKind::NoShowFee,
            "manual" => LineKind::Manual,
            _ => return None,
        })
    }

    pub fn to_pb(self) -> pb::LineKind {
        match self {
            LineKind::Visit => pb::LineKind::Visit,
            LineKind::LateCancellationFee => pb::LineKind::LateCancellationFee,
            LineKind::NoShowFee => pb::LineKind::NoShowFee,
            LineKind::Manual => pb::LineKind::Manual,
        }
    }
}

/// One line of an invoice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub kind: LineKind,
    pub price_code: String,
    pub description: String,
    pub quantity: i32,
    pub unit_amount_minor: i64,
}

impl Line {
    /// quantity × unit amount; None on overflow.
    pub fn amount_minor(&self) -> Option<i64> {
        i64::from(self.quantity).checked_mul(self.unit_amount_minor)
    }
}

/// The sum of the lines; None on overflow.
pub fn total(lines: &[Line]) -> Option<i64> {
    lines
        .iter()
        .try_fold(0i64, |sum, l| sum.checked_add(l.amount_minor()?))
}

/// `2026-000123`: the year of finalization and the number within it.
pub fn number_text(year: i32, number: i64) -> String {
    format!("{year}-{number:06}")
}

/// What a price says about an appointment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceTerms {
    pub price_code: String,
    pub description: String,
    pub amount_minor: i64,
    pub late_cancellation_fee_minor: i64,
    pub no_show_fee_minor: i64,
}

impl PriceTerms {
    pub fn visit_line(&self) -> Line {
        Line {
            kind: LineKind::Visit,
            price_code: self.price_code.clone(),
            description: self.description.clone(),
            quantity: 1,
            unit_amount_minor: self.amount_minor,
        }
    }

    fn fee_line(&self, kind: LineKind, amount: i64) -> Line {
        let what = match kind {
            LineKind::NoShowFee => "No-show fee",
            _ => "Late cancellation fee",
        };
        Line {
            kind,
            price_code: self.price_code.clone(),
            description: format!("{what}: {}", self.description),
            quantity: 1,
            unit_amount_minor: amount,
        }
    }
}

/// What an appointment event does to the appointment's draft invoice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing (already past this point, or an event that bills nothing).
    Keep,
    /// Number it and make it payable with its lines as they are.
    Finalize,
    /// Replace the visit line by a fee line, then finalize.
    ChargeFee(Line),
    /// Nothing is owed.
    Void,
}

/// The step for event `kind` on an invoice in `status`, under `terms`.
pub fn step(
    kind: AppointmentEventKind,
    status: Status,
    late_cancellation: bool,
    terms: &PriceTerms,
) -> Step {
    if status != Status::Draft {
        // Finalized or voided already: later events change nothing (a cancelled visit cannot
        // complete, a completed one cannot be cancelled).
        return Step::Keep;
    }
    match kind {
        AppointmentEventKind::Completed => Step::Finalize,
        AppointmentEventKind::Cancelled
            if late_cancellation && terms.late_cancellation_fee_minor > 0 =>
        {
            Step::ChargeFee(terms.fee_line(
                LineKind::LateCancellationFee,
                terms.late_cancellation_fee_minor,
            ))
        }
        AppointmentEventKind::NoShow if terms.no_show_fee_minor > 0 => {
            Step::ChargeFee(terms.fee_line(LineKind::NoShowFee, terms.no_show_fee_minor))
        }
        AppointmentEventKind::Cancelled | AppointmentEventKind::NoShow => Step::Void,
        AppointmentEventKind::Booked
        | AppointmentEventKind::Rescheduled
        | AppointmentEventKind::Unspecified => Step::Keep,
    }
}

/// Whether a payment of `amount` fits an invoice with `due` left and `reserved` held by
/// payments still in flight.
pub fn payable(amount: i64, due: i64, reserved: i64) -> bool {
    amount > 0 && due.checked_sub(reserved).is_some_and(|left| amount <= left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(late: i64, no_show: i64) -> PriceTerms {
        PriceTerms {
            price_code: "video-30".into(),
            description: "Video visit".into(),
            amount_minor: 9000,
            late_cancellation_fee_minor: late,
            no_show_fee_minor: no_show,
        }
    }

    #[test]
    fn completion_finalizes_a_draft_and_nothing_else() {
        let t = terms(0, 0);
        assert_eq!(
            step(AppointmentEventKind::Completed, Status::Draft, false, &t),
            Step::Finalize
        );
        for s in [Status::Open, Status::Paid, Status::Void] {
            for k in [
                AppointmentEventKind::Completed,
                AppointmentEventKind::Cancelled,
                AppointmentEventKind::NoShow,
                AppointmentEventKind::Booked,
            ] {
                assert_eq!(
                    step(k, s, true, &terms(500, 500)),
                    Step::Keep,
                    "{k:?} on {s:?}"
                );
            }
        }
    }

    #[test]
    fn cancellation_voids_unless_late_with_a_fee() {
        let free = terms(0, 0);
        let fee = terms(2500, 4000);
        assert_eq!(
            step(AppointmentEventKind::Cancelled, Status::Draft, true, &free),
            Step::Void
        );
        assert_eq!(
            step(AppointmentEventKind::Cancelled, Status::Draft, false, &fee),
            Step::Void
        );
        match step(AppointmentEventKind::Cancelled, Status::Draft, true, &fee) {
            Step::ChargeFee(line) => {
                assert_eq!(line.kind, LineKind::LateCancellationFee);
                assert_eq!(line.amount_minor(), Some(2500));
            }
            other => panic!("{other:?}"),
        }
        match step(AppointmentEventKind::NoShow, Status::Draft, false, &fee) {
            Step::ChargeFee(line) => assert_eq!(line.amount_minor(), Some(4000)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            step(AppointmentEventKind::NoShow, Status::Draft, false, &free),
            Step::Void
        );
        assert_eq!(
            step(AppointmentEventKind::Booked, Status::Draft, false, &fee),
            Step::Keep
        );
        assert_eq!(
            step(
                AppointmentEventKind::Rescheduled,
                Status::Draft,
                false,
                &fee
            ),
            Step::Keep
        );
    }

    #[test]
    fn totals_and_numbers() {
        let mut l = terms(0, 0).visit_line();
        l.quantity = 3;
        assert_eq!(total(&[l.clone(), l.clone()]), Some(54_000));
        l.unit_amount_minor = i64::MAX;
        assert_eq!(total(&[l]), None);
        assert_eq!(number_text(2026, 123), "2026-000123");
        assert_eq!(number_text(2027, 1_234_567), "2027-1234567");
    }

    #[test]
    fn payments_fit_what_is_left() {
        assert!(payable(100, 100, 0));
        assert!(!payable(101, 100, 0));
        assert!(!payable(60, 100, 50));
        assert!(payable(50, 100, 50));
        assert!(!payable(0, 100, 0));
        assert!(!payable(1, 0, 0));
    }
}
