//! Whose data a caller may act on. The policy table lets roles in; these rules narrow them to
//! their own: a patient to their own appointments, holds and requests; a provider to their own
//! schedule and calendar; staff (the front desk) to any patient's appointments, for operations.
//! Administrators keep the directory and calendars but never see an appointment.

use carehub_platform::audit::Purpose;
use carehub_platform::auth::{Role, UserCaller};
use carehub_platform::directory::Person;
use carehub_platform::errors::FieldViolations;
use uuid::Uuid;

use crate::error::{Result, SchedulingError};
use crate::AppState;

/// Whom a booking-type request is for, before anyone is asked: a patient's own id (the field
/// empty or theirs; anyone else's is PERMISSION_DENIED), or, for staff, the id the field names
/// (`Named`), still to be checked with identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whom {
    Own(Uuid),
    Named(Uuid),
}

pub fn whom(user: &UserCaller, field: &str, value: &str) -> Result<Whom> {
    if user.has_role(Role::Patient) {
        if value.is_empty() || value == user.user_id.to_string() {
            return Ok(Whom::Own(user.user_id));
        }
        return Err(SchedulingError::PermissionDenied(format!(
            "a patient acts only for themselves ({field})"
        )));
    }
    let mut v = FieldViolations::new();
    let id = v.require_uuid(field, value);
    v.finish()?;
    Ok(Whom::Named(crate::error::checked(id)?))
}

/// Whether identity's `person` (user `id`) can be booked for: an active patient.
pub fn bookable(id: Uuid, person: &Person) -> Result<Uuid> {
    if person.role != Role::Patient || !person.active {
        return Err(SchedulingError::State {
            what: "user",
            id: id.to_string(),
            state: "not an active patient",
            action: "book for them",
        });
    }
    Ok(id)
}

/// The patient a booking-type request is for: a patient's own (the field empty or theirs),
/// or, for staff, the active patient the field names (checked with identity).
pub async fn patient_for(
    state: &AppState,
    user: &UserCaller,
    field: &str,
    value: &str,
) -> Result<Uuid> {
    match whom(user, field, value)? {
        Whom::Own(id) => Ok(id),
        Whom::Named(id) => bookable(id, &state.directory.person(id, "patient").await?),
    }
}

/// Why the caller may see an appointment (or hold, or request) of `patient` with `provider`,
/// or PERMISSION_DENIED.
pub fn party(user: &UserCaller, patient: Uuid, provider: Option<Uuid>) -> Result<Purpose> {
    if user.has_role(Role::Patient) && user.user_id == patient {
        return Ok(Purpose::PatientRequest);
    }
    if user.has_role(Role::Provider) && Some(user.user_id) == provider {
        return Ok(Purpose::Treatment);
    }
    if user.has_role(Role::Staff) {
        return Ok(Purpose::Operations);
    }
    Err(SchedulingError::PermissionDenied(
        "the caller is not a party to this appointment".to_owned(),
    ))
}

/// Whether the caller keeps `provider`'s calendar: the provider, staff, administrators.
pub fn keeps_calendar(user: &UserCaller, provider: Uuid) -> Result<()> {
    if user.has_role(Role::Staff) || user.has_role(Role::Admin) || user.user_id == provider {
        return Ok(());
    }
    Err(SchedulingError::PermissionDenied(
        "a provider keeps only their own calendar".to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn user(role: Role) -> UserCaller {
        UserCaller {
            user_id: Uuid::now_v7(),
            session_id: Uuid::now_v7(),
            roles: vec![role],
            amr: vec![],
            issued_at: 0,
            expires_at: 0,
            password_change_required: false,
        }
    }

    #[test]
    fn parties_are_the_patient_the_provider_and_staff_only() {
        let patient = user(Role::Patient);
        let provider = user(Role::Provider);
        let other = Uuid::now_v7();
        assert_eq!(
            party(&patient, patient.user_id, Some(other)).unwrap(),
            Purpose::PatientRequest
        );
        assert_eq!(
            party(&provider, other, Some(provider.user_id)).unwrap(),
            Purpose::Treatment
        );
        assert_eq!(
            party(&user(Role::Staff), other, Some(other)).unwrap(),
            Purpose::Operations
        );
        for u in [
            user(Role::Patient),
            user(Role::Provider),
            user(Role::Admin),
            user(Role::Billing),
        ] {
            assert!(party(&u, other, Some(other)).is_err(), "{:?}", u.roles);
        }
        // A provider is not a party by being a patient's provider elsewhere.
        assert!(party(&provider, other, None).is_err());
    }

    #[test]
    fn a_patient_books_for_themselves_and_staff_name_whom() {
        let patient = user(Role::Patient);
        let me = patient.user_id.to_string();
        assert_eq!(
            whom(&patient, "patient_id", "").unwrap(),
            Whom::Own(patient.user_id)
        );
        assert_eq!(
            whom(&patient, "patient_id", &me).unwrap(),
            Whom::Own(patient.user_id)
        );
        let other = Uuid::now_v7();
        let refused = whom(&patient, "patient_id", &other.to_string()).unwrap_err();
        assert!(
            matches!(refused, SchedulingError::PermissionDenied(_)),
            "{refused:?}"
        );
        let staff = user(Role::Staff);
        assert_eq!(
            whom(&staff, "patient_id", &other.to_string()).unwrap(),
            Whom::Named(other)
        );
        // Staff must name someone; a malformed id is a bad argument, not their own.
        for bad in ["", "not-a-uuid"] {
            let e = whom(&staff, "patient_id", bad).unwrap_err();
            assert!(matches!(e, SchedulingError::Status(_)), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn only_an_active_patient_can_be_booked_for() {
        let id = Uuid::now_v7();
        let person = |role, active| Person {
            role,
            active,
            display_name: "A B".into(),
        };
        assert_eq!(bookable(id, &person(Role::Patient, true)).unwrap(), id);
        for (role, active) in [
            (Role::Patient, false),
            (Role::Provider, true),
            (Role::Staff, true),
        ] {
            let e = bookable(id, &person(role, active)).unwrap_err();
            assert!(
                matches!(e, SchedulingError::State { .. }),
                "{role:?} {active}"
            );
        }
    }

    #[test]
    fn a_provider_keeps_only_their_own_calendar() {
        let provider = user(Role::Provider);
        assert!(keeps_calendar(&provider, provider.user_id).is_ok());
        assert!(keeps_calendar(&provider, Uuid::now_v7()).is_err());
        assert!(keeps_calendar(&user(Role::Staff), Uuid::now_v7()).is_ok());
        assert!(keeps_calendar(&user(Role::Admin), Uuid::now_v7()).is_ok());
        assert!(keeps_calendar(&user(Role::Patient), Uuid::now_v7()).is_err());
    }
}
