//! Who may call each billing RPC: which workloads (mTLS identity) and which users (roles).
//! The roles are necessary, never sufficient: a patient acts only on their own billing data
//! (`api::access`), which only the handler can know. Providers and staff have no billing RPC:
//! minimum necessary.

use carehub_platform::auth::{Policy, Role, UserRule};

const PUBLIC: &str = "carehub.billing.v1.BillingService";
const APPOINTMENT_EVENTS: &str = "carehub.common.v1.AppointmentEvents";

/// The gateway; end-user RPCs arrive through it.
const GATEWAY: &[&str] = &["gateway"];

fn users(roles: &[Role]) -> UserRule {
    UserRule::Authenticated {
        roles: roles.to_vec(),
        allow_pending_password_change: false,
    }
}

/// The patient (their own data), and the billing office.
const PAYERS: &[Role] = &[Role::Patient, Role::Billing, Role::Admin];
/// The billing office: prices, manual invoices, voids, refunds.
const OFFICE: &[Role] = &[Role::Billing, Role::Admin];
const EVERYONE: &[Role] = &[
    Role::Patient,
    Role::Provider,
    Role::Staff,
    Role::Billing,
    Role::Admin,
];

pub fn policy() -> Policy {
    let mut p = Policy::new();
    let mut rule = |m: &str, roles: &[Role]| {
        p = std::mem::take(&mut p).rule(PUBLIC, m, GATEWAY, users(roles));
    };
    for m in [
        "AddPaymentMethod",
        "ListPaymentMethods",
        "RemovePaymentMethod",
        "GetInvoice",
        "ListInvoices",
        "PayInvoice",
        "GetPayment",
        "GetReceipt",
        "GetStatement",
    ] {
        rule(m, PAYERS);
    }
    for m in ["SetPrice", "CreateInvoice", "VoidInvoice", "RefundPayment"] {
        rule(m, OFFICE);
    }
    rule("ListPrices", EVERYONE);
    // Scheduling's outbox delivers appointment events here.
    p.rule(
        APPOINTMENT_EVENTS,
        "ApplyAppointmentEvent",
        &["scheduling"],
        UserRule::WorkloadOnly,
    )
}
