//! Billing's audit event kinds: its part of the shared vocabulary (`platform::audit::kind`).
//! Every event billing writes has one of these kinds; the README's table is checked against
//! [`VOCABULARY`] by a test. Everything about a patient's payments is filed under the patient
//! (purpose: payment); the price list under no one.

use carehub_platform::audit::{Action, Kind, Vocabulary};

const PATIENT: &str = "the patient";
const NONE: &str = "none (the price list holds no patient data)";

pub const PAYMENT_METHOD_ADD: Kind = Kind::new(
    "billing.payment_method.add",
    Action::Create,
    "a card (processor token) was added for a patient (AddPaymentMethod)",
    PATIENT,
);
pub const PAYMENT_METHOD_READ: Kind = Kind::new(
    "billing.payment_method.read",
    Action::Read,
    "a patient's payment methods were listed (ListPaymentMethods)",
    PATIENT,
);
pub const PAYMENT_METHOD_REMOVE: Kind = Kind::new(
    "billing.payment_method.remove",
    Action::Delete,
    "a payment method was detached and forgotten (RemovePaymentMethod)",
    PATIENT,
);
pub const PRICE_SET: Kind = Kind::new(
    "billing.price.set",
    Action::Update,
    "a price of the price list was set (SetPrice)",
    NONE,
);
pub const INVOICE_CREATE: Kind = Kind::new(
    "billing.invoice.create",
    Action::Create,
    "an invoice was created, from a booked appointment or by billing staff (CreateInvoice)",
    PATIENT,
);
pub const INVOICE_CHANGE: Kind = Kind::new(
    "billing.invoice.change",
    Action::Update,
    "an invoice was finalized, voided, charged a fee or marked paid",
    PATIENT,
);
pub const INVOICE_READ: Kind = Kind::new(
    "billing.invoice.read",
    Action::Read,
    "an invoice was read (GetInvoice; ListInvoices: one per invoice)",
    PATIENT,
);
pub const PAYMENT_START: Kind = Kind::new(
    "billing.payment.start",
    Action::Create,
    "a payment intent was stored before the processor was called (PayInvoice)",
    PATIENT,
);
pub const PAYMENT_SETTLE: Kind = Kind::new(
    "billing.payment.settle",
    Action::Update,
    "a payment's outcome was recorded: by the call, a retry, the reconciler or a processor event",
    PATIENT,
);
pub const PAYMENT_READ: Kind = Kind::new(
    "billing.payment.read",
    Action::Read,
    "a payment, receipt or statement was read (GetPayment, GetReceipt, GetStatement)",
    PATIENT,
);
pub const REFUND_START: Kind = Kind::new(
    "billing.refund.start",
    Action::Create,
    "a refund intent was stored before the processor was called (RefundPayment)",
    PATIENT,
);
pub const REFUND_SETTLE: Kind = Kind::new(
    "billing.refund.settle",
    Action::Update,
    "a refund's outcome was recorded: by the call, a retry, the reconciler or a processor event",
    PATIENT,
);

/// Every kind billing writes.
pub const VOCABULARY: Vocabulary = Vocabulary {
    prefix: "billing",
    kinds: &[
        PAYMENT_METHOD_ADD,
        PAYMENT_METHOD_READ,
        PAYMENT_METHOD_REMOVE,
        PRICE_SET,
        INVOICE_CREATE,
        INVOICE_CHANGE,
        INVOICE_READ,
        PAYMENT_START,
        PAYMENT_SETTLE,
        PAYMENT_READ,
        REFUND_START,
        REFUND_SETTLE,
    ],
};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_vocabulary_is_well_formed() {
        assert_eq!(VOCABULARY.problems(), Vec::<String>::new());
    }

    /// The README's table lists every kind, with the action it records.
    #[test]
    fn the_readme_documents_every_kind() {
        let missing = VOCABULARY.undocumented_in(include_str!("../../../../README.md"));
        assert!(missing.is_empty(), "README lacks audit kinds {missing:?}");
    }
}
