//! Who may call each scheduling RPC: which workloads (mTLS identity) and which users (roles).
//! The roles here are necessary, never sufficient: a patient acts only on their own
//! appointments, a provider only on their own schedule (`api::access`), which only the handler
//! can know.

use carehub_platform::auth::{Policy, Role, UserRule};

const PUBLIC: &str = "carehub.scheduling.v1.SchedulingService";
const ACCOUNT_EVENTS: &str = "carehub.common.v1.AccountEvents";

/// The gateway; end-user RPCs arrive through it.
const GATEWAY: &[&str] = &["gateway"];

fn users(roles: &[Role]) -> UserRule {
    UserRule::Authenticated {
        roles: roles.to_vec(),
        allow_pending_password_change: false,
    }
}

const EVERYONE: &[Role] = &[
    Role::Patient,
    Role::Provider,
    Role::Staff,
    Role::Billing,
    Role::Admin,
];
/// Who keeps a provider's calendar: the provider, the front desk, administrators.
const CALENDAR_KEEPERS: &[Role] = &[Role::Provider, Role::Staff, Role::Admin];
/// Who books for a patient: the patient, or staff for them.
const BOOKERS: &[Role] = &[Role::Patient, Role::Staff];
/// Whose appointments they are: the patient, the provider, and staff who run the schedule.
const PARTIES: &[Role] = &[Role::Patient, Role::Provider, Role::Staff];
/// Who runs the visit: the provider and staff.
const CLINIC: &[Role] = &[Role::Provider, Role::Staff];

pub fn policy() -> Policy {
    let mut p = Policy::new();
    let mut rule = |m: &str, roles: &[Role]| {
        p = std::mem::take(&mut p).rule(PUBLIC, m, GATEWAY, users(roles));
    };
    rule("PutProvider", CALENDAR_KEEPERS);
    rule("GetProvider", EVERYONE);
    rule("CreateVisitType", &[Role::Staff, Role::Admin]);
    rule("ListVisitTypes", EVERYONE);
    for m in [
        "SetWeeklyAvailability",
        "GetWeeklyAvailability",
        "AddAvailabilityException",
        "DeleteAvailabilityException",
        "ListAvailabilityExceptions",
    ] {
        rule(m, CALENDAR_KEEPERS);
    }
    rule("SearchSlots", PARTIES);
    for m in ["CreateHold", "ReleaseHold", "BookAppointment"] {
        rule(m, BOOKERS);
    }
    for m in [
        "GetAppointment",
        "ListAppointments",
        "CancelAppointment",
        "RescheduleAppointment",
        "CheckInAppointment",
    ] {
        rule(m, PARTIES);
    }
    for m in [
        "ConfirmAppointment",
        "StartAppointment",
        "CompleteAppointment",
        "MarkNoShow",
    ] {
        rule(m, CLINIC);
    }
    rule("SubmitIntake", &[Role::Patient]);
    rule("RequestConsultation", BOOKERS);
    rule("GetConsultationRequest", BOOKERS);
    rule("ListConsultationRequests", BOOKERS);
    rule("AcceptConsultationRequest", &[Role::Staff]);
    rule("DeclineConsultationRequest", &[Role::Staff]);
    for m in [
        "CreateCalendarFeed",
        "ListCalendarFeeds",
        "RevokeCalendarFeed",
    ] {
        rule(m, &[Role::Patient, Role::Provider]);
    }
    // Identity's outbox delivers account events here.
    p.rule(
        ACCOUNT_EVENTS,
        "ApplyAccountEvent",
        &["identity"],
        UserRule::WorkloadOnly,
    )
}
