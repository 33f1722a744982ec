//! Scheduling's audit event kinds: its part of the shared vocabulary (`platform::audit::kind`).
//! Every event scheduling writes has one of these kinds; the README's table is checked against
//! [`VOCABULARY`] by a test. Appointment, hold, consultation and intake events are filed under
//! the patient; directory and availability events under no one.

use carehub_platform::audit::{Action, Kind, Vocabulary};

const PATIENT: &str = "the patient";
const NONE: &str = "none (the provider directory holds no patient data)";

pub const PROVIDER_CHANGE: Kind = Kind::new(
    "scheduling.provider.change",
    Action::Update,
    "a provider's directory entry, weekly windows or exceptions changed (PutProvider, SetWeeklyAvailability, Add/DeleteAvailabilityException)",
    NONE,
);
pub const VISIT_TYPE_CREATE: Kind = Kind::new(
    "scheduling.visit_type.create",
    Action::Create,
    "a visit type was created (CreateVisitType)",
    NONE,
);
pub const HOLD_CREATE: Kind = Kind::new(
    "scheduling.hold.create",
    Action::Create,
    "a slot was held for a patient (CreateHold)",
    PATIENT,
);
pub const HOLD_RELEASE: Kind = Kind::new(
    "scheduling.hold.release",
    Action::Update,
    "a hold was released (ReleaseHold)",
    PATIENT,
);
pub const APPOINTMENT_BOOK: Kind = Kind::new(
    "scheduling.appointment.book",
    Action::Create,
    "an appointment was booked or requested (BookAppointment, AcceptConsultationRequest)",
    PATIENT,
);
pub const APPOINTMENT_READ: Kind = Kind::new(
    "scheduling.appointment.read",
    Action::Read,
    "an appointment was read (GetAppointment; ListAppointments: one per appointment; a calendar feed: one per feed served)",
    PATIENT,
);
pub const APPOINTMENT_CHANGE: Kind = Kind::new(
    "scheduling.appointment.change",
    Action::Update,
    "an appointment was cancelled, rescheduled, confirmed, checked in, started, completed or marked no-show",
    PATIENT,
);
pub const INTAKE_SUBMIT: Kind = Kind::new(
    "scheduling.intake.submit",
    Action::Create,
    "a patient submitted intake answers, handed to records (SubmitIntake)",
    PATIENT,
);
pub const CONSULTATION_CREATE: Kind = Kind::new(
    "scheduling.consultation.create",
    Action::Create,
    "a consultation was requested (RequestConsultation)",
    PATIENT,
);
pub const CONSULTATION_READ: Kind = Kind::new(
    "scheduling.consultation.read",
    Action::Read,
    "a consultation request was read (GetConsultationRequest; ListConsultationRequests: one per request)",
    PATIENT,
);
pub const CONSULTATION_DECIDE: Kind = Kind::new(
    "scheduling.consultation.decide",
    Action::Update,
    "staff accepted or declined a consultation request",
    PATIENT,
);
pub const FEED_CHANGE: Kind = Kind::new(
    "scheduling.feed.change",
    Action::Update,
    "a calendar feed URL was created or revoked (CreateCalendarFeed, RevokeCalendarFeed)",
    "the feed's owner when a patient; none for a provider",
);
pub const REMINDER_SEND: Kind = Kind::new(
    "scheduling.reminder.send",
    Action::Create,
    "a due reminder was handed to messaging (the reminder worker)",
    PATIENT,
);

/// Every kind scheduling writes.
pub const VOCABULARY: Vocabulary = Vocabulary {
    prefix: "scheduling",
    kinds: &[
        PROVIDER_CHANGE,
        VISIT_TYPE_CREATE,
        HOLD_CREATE,
        HOLD_RELEASE,
        APPOINTMENT_BOOK,
        APPOINTMENT_READ,
        APPOINTMENT_CHANGE,
        INTAKE_SUBMIT,
        CONSULTATION_CREATE,
        CONSULTATION_READ,
        CONSULTATION_DECIDE,
        FEED_CHANGE,
        REMINDER_SEND,
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
