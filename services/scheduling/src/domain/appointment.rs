//! An appointment's life: its states, the transitions allowed between them, who may act on it,
//! and the late-cancellation rule.
//!
//! ```text
//! requested --confirm--> booked --check in--> checked_in --start--> in_progress --complete--> completed
//!     |                    |   \________________________/    \
//!     +------cancel--------+---------cancel-------------+     no_show (booked or checked in)
//! ```
//! Active states (requested, booked, checked in, in progress) hold the slot; the others
//! released it. Anything not drawn is refused (FAILED_PRECONDITION, STATE_CONFLICT).

use chrono::{DateTime, Duration, Utc};

macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// As stored.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

text_enum!(
    /// Where an appointment is in its life.
    Status {
        Requested => "requested",
        Booked => "booked",
        CheckedIn => "checked_in",
        InProgress => "in_progress",
        Completed => "completed",
        Cancelled => "cancelled",
        NoShow => "no_show",
    }
);

text_enum!(
    /// How the visit happens.
    Modality { Telehealth => "telehealth", InPerson => "in_person" }
);

text_enum!(
    /// Whether the visit type's intake form was filled in.
    IntakeStatus { NotRequired => "not_required", Pending => "pending", Submitted => "submitted" }
);

text_enum!(
    CancelReason {
        PatientRequest => "patient_request",
        ProviderUnavailable => "provider_unavailable",
        SchedulingError => "scheduling_error",
        Other => "other",
    }
);

/// What is done to an appointment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Confirm,
    CheckIn,
    Start,
    Complete,
    NoShow,
    Cancel,
    Reschedule,
    SubmitIntake,
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Confirm => "confirm",
            Action::CheckIn => "check in",
            Action::Start => "start",
            Action::Complete => "complete",
            Action::NoShow => "mark as no-show",
            Action::Cancel => "cancel",
            Action::Reschedule => "reschedule",
            Action::SubmitIntake => "submit intake",
        }
    }
}

impl Status {
    /// Whether the appointment holds its slot.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Status::Requested | Status::Booked | Status::CheckedIn | Status::InProgress
        )
    }

    /// The state `action` leads to from `self`, or `None` when the action is not allowed.
    /// Reschedule and intake keep the state.
    pub fn after(self, action: Action) -> Option<Status> {
        use Action as A;
        use Status as S;
        match (self, action) {
            (S::Requested, A::Confirm) => Some(S::Booked),
            (S::Booked, A::CheckIn) => Some(S::CheckedIn),
            (S::CheckedIn, A::Start) => Some(S::InProgress),
            (S::InProgress, A::Complete) => Some(S::Completed),
            (S::Booked | S::CheckedIn, A::NoShow) => Some(S::NoShow),
            (S::Requested | S::Booked | S::CheckedIn, A::Cancel) => Some(S::Cancelled),
            (S::Requested | S::Booked, A::Reschedule) => Some(self),
            (S::Requested | S::Booked | S::CheckedIn, A::SubmitIntake) => Some(self),
            _ => None,
        }
    }
}

/// Whether a cancellation at `now` of a visit starting at `start` is late under a notice of
/// `notice_hours`.
pub fn is_late_cancellation(start: DateTime<Utc>, now: DateTime<Utc>, notice_hours: u32) -> bool {
    start - now < Duration::hours(i64::from(notice_hours))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The whole table: every (state, action) pair, with the expected outcome.
    #[test]
    fn the_transition_table_is_exactly_the_drawn_one() {
        use Action as A;
        use Status as S;
        let allowed: &[(Status, Action, Status)] = &[
            (S::Requested, A::Confirm, S::Booked),
            (S::Requested, A::Cancel, S::Cancelled),
            (S::Requested, A::Reschedule, S::Requested),
            (S::Requested, A::SubmitIntake, S::Requested),
            (S::Booked, A::CheckIn, S::CheckedIn),
            (S::Booked, A::NoShow, S::NoShow),
            (S::Booked, A::Cancel, S::Cancelled),
            (S::Booked, A::Reschedule, S::Booked),
            (S::Booked, A::SubmitIntake, S::Booked),
            (S::CheckedIn, A::Start, S::InProgress),
            (S::CheckedIn, A::NoShow, S::NoShow),
            (S::CheckedIn, A::Cancel, S::Cancelled),
            (S::CheckedIn, A::SubmitIntake, S::CheckedIn),
            (S::InProgress, A::Complete, S::Completed),
        ];
        let actions = [
            A::Confirm,
            A::CheckIn,
            A::Start,
            A::Complete,
            A::NoShow,
            A::Cancel,
            A::Reschedule,
            A::SubmitIntake,
        ];
        for &from in Status::ALL {
            for action in actions {
                let expected = allowed
                    .iter()
                    .find(|(f, a, _)| *f == from && *a == action)
                    .map(|(_, _, to)| *to);
                assert_eq!(from.after(action), expected, "{from:?} --{action:?}-->");
            }
        }
    }

    /// Refusals name the action in words (STATE_CONFLICT's message).
    #[test]
    fn every_action_has_its_own_verb() {
        let verbs = [
            (Action::Confirm, "confirm"),
            (Action::CheckIn, "check in"),
            (Action::Start, "start"),
            (Action::Complete, "complete"),
            (Action::NoShow, "mark as no-show"),
            (Action::Cancel, "cancel"),
            (Action::Reschedule, "reschedule"),
            (Action::SubmitIntake, "submit intake"),
        ];
        for (action, verb) in verbs {
            assert_eq!(action.verb(), verb);
        }
    }

    #[test]
    fn only_the_four_open_states_hold_the_slot() {
        let active: Vec<_> = Status::ALL.iter().filter(|s| s.is_active()).collect();
        assert_eq!(
            active,
            [
                &Status::Requested,
                &Status::Booked,
                &Status::CheckedIn,
                &Status::InProgress
            ]
        );
    }

    #[test]
    fn states_read_back_as_stored() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(*s));
        }
        for m in Modality::ALL {
            assert_eq!(Modality::parse(m.as_str()), Some(*m));
        }
        for i in IntakeStatus::ALL {
            assert_eq!(IntakeStatus::parse(i.as_str()), Some(*i));
        }
        for c in CancelReason::ALL {
            assert_eq!(CancelReason::parse(c.as_str()), Some(*c));
        }
        assert_eq!(Status::parse("BOOKED"), None);
        assert_eq!(Status::Booked.as_str(), "booked");
        assert_eq!(Status::NoShow.as_str(), "no_show");
    }

    #[test]
    fn a_cancellation_inside_the_notice_is_late() {
        let start = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert!(is_late_cancellation(start, start - Duration::hours(23), 24));
        assert!(!is_late_cancellation(
            start,
            start - Duration::hours(24),
            24
        ));
        assert!(!is_late_cancellation(
            start,
            start - Duration::hours(25),
            24
        ));
        assert!(!is_late_cancellation(
            start,
            start - Duration::minutes(1),
            0
        ));
    }
}
