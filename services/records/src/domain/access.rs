//! Who may do what to a chart. A caller reaches a patient's chart in one of three ways —
//! as the patient, as an active care-team member, or through an open break-glass access — and
//! each way allows some actions; a role alone reaches nothing. Pure functions: the store says
//! how the caller reaches the chart, this module decides.

use carehub_platform::audit::Purpose;
use carehub_platform::auth::{Role, UserCaller};
use uuid::Uuid;

use super::content::Kind;
use crate::error::{RecordsError, Result};

/// A care-team member's role on the team (taken from identity when they joined).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeamRole {
    Provider,
    Staff,
}

impl TeamRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TeamRole::Provider => "provider",
            TeamRole::Staff => "staff",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "provider" => Some(TeamRole::Provider),
            "staff" => Some(TeamRole::Staff),
            _ => None,
        }
    }

    /// The team role of a user with `role` in identity; other roles cannot join a team.
    pub fn of(role: Role) -> Option<Self> {
        match role {
            Role::Provider => Some(TeamRole::Provider),
            Role::Staff => Some(TeamRole::Staff),
            _ => None,
        }
    }
}

/// How the caller reaches one patient's chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The patient, on their own chart.
    Patient,
    /// An active member of the patient's care team.
    Team(TeamRole),
    /// A provider outside the team with an open break-glass access: read only.
    BreakGlass,
}

/// What the store knows about the caller and this patient.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Relation {
    /// The caller's active care-team role for the patient, if any.
    pub team_role: Option<TeamRole>,
    /// Whether the caller holds an unexpired break-glass access to the patient.
    pub break_glass_open: bool,
}

/// How `user` reaches `patient`'s chart given `relation`, or NOT_ON_CARE_TEAM. The token's
/// role must agree with the way in: a patient's token reaches only its own chart, a
/// membership counts only for a provider's or staff member's token, break-glass only for a
/// provider's.
pub fn access(user: &UserCaller, patient: Uuid, relation: Relation) -> Result<Access> {
    if user.user_id == patient && user.has_role(Role::Patient) {
        return Ok(Access::Patient);
    }
    if let Some(team_role) = relation.team_role {
        let token_agrees = match team_role {
            TeamRole::Provider => user.has_role(Role::Provider),
            TeamRole::Staff => user.has_role(Role::Staff),
        };
        if token_agrees {
            return Ok(Access::Team(team_role));
        }
    }
    if relation.break_glass_open && user.has_role(Role::Provider) {
        return Ok(Access::BreakGlass);
    }
    Err(RecordsError::NotOnCareTeam {
        patient: patient.to_string(),
    })
}

/// Only the patient: for what they alone do with their chart (grants, amendment requests,
/// the accounting of disclosures, the access log). NOT_ON_CARE_TEAM for anyone else.
pub fn own_chart(user: &UserCaller, patient: Uuid) -> Result<()> {
    match access(user, patient, Relation::default())? {
        Access::Patient => Ok(()),
        _ => Err(RecordsError::NotOnCareTeam {
            patient: patient.to_string(),
        }),
    }
}

/// The purpose of use an access is audited with.
pub fn purpose(access: Access) -> Purpose {
    match access {
        Access::Patient => Purpose::PatientRequest,
        Access::Team(_) => Purpose::Treatment,
        Access::BreakGlass => Purpose::BreakGlass,
    }
}

/// Whether `access` may add or change an entry of `kind`: the patient their own conditions,
/// medications and allergies (lab results come from a lab or a clinician); care-team
/// providers and staff any kind; a break-glass access nothing.
pub fn may_write(access: Access, kind: Kind) -> Result<()> {
    let allowed = match access {
        Access::Patient => kind.patient_editable(),
        Access::Team(_) => true,
        Access::BreakGlass => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(RecordsError::PermissionDenied(match access {
            Access::BreakGlass => "a break-glass access reads the chart only".to_owned(),
            _ => format!("{} entries are entered by the care team", kind.as_str()),
        }))
    }
}

/// Only a care-team provider checks and confirms entries.
pub fn may_verify(access: Access) -> Result<()> {
    if access == Access::Team(TeamRole::Provider) {
        Ok(())
    } else {
        Err(RecordsError::PermissionDenied(
            "only a provider on the care team verifies entries".to_owned(),
        ))
    }
}

/// Who may see and change a patient's care team: the patient, an active member, or an admin
/// (admins manage teams but never open charts).
pub fn may_manage_team(user: &UserCaller, patient: Uuid, relation: Relation) -> Result<()> {
    if user.has_role(Role::Admin) {
        return Ok(());
    }
    match access(user, patient, relation)? {
        Access::Patient | Access::Team(_) => Ok(()),
        Access::BreakGlass => Err(RecordsError::PermissionDenied(
            "a break-glass access does not manage the care team".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn user(id: Uuid, role: Role) -> UserCaller {
        UserCaller {
            user_id: id,
            session_id: Uuid::now_v7(),
            roles: vec![role],
            amr: vec!["pwd".into()],
            issued_at: 0,
            expires_at: 0,
            password_change_required: false,
        }
    }

    const NONE: Relation = Relation {
        team_role: None,
        break_glass_open: false,
    };

    fn on_team(role: TeamRole) -> Relation {
        Relation {
            team_role: Some(role),
            break_glass_open: false,
        }
    }

    const GLASS: Relation = Relation {
        team_role: None,
        break_glass_open: true,
    };

    #[test]
    fn a_role_alone_reaches_no_chart() {
        let patient = Uuid::now_v7();
        for role in Role::ALL {
            let e = access(&user(Uuid::now_v7(), role), patient, NONE).unwrap_err();
            assert!(matches!(e, RecordsError::NotOnCareTeam { .. }), "{role:?}");
        }
    }

    #[test]
    fn the_patient_reaches_their_own_chart_only() {
        let patient = Uuid::now_v7();
        assert_eq!(
            access(&user(patient, Role::Patient), patient, NONE).unwrap(),
            Access::Patient
        );
        // The same id with another role is not the patient.
        assert!(access(&user(patient, Role::Provider), patient, NONE).is_err());
    }

    #[test]
    fn membership_counts_only_for_the_role_it_was_given() {
        let patient = Uuid::now_v7();
        let provider = user(Uuid::now_v7(), Role::Provider);
        let staff = user(Uuid::now_v7(), Role::Staff);
        assert_eq!(
            access(&provider, patient, on_team(TeamRole::Provider)).unwrap(),
            Access::Team(TeamRole::Provider)
        );
        assert_eq!(
            access(&staff, patient, on_team(TeamRole::Staff)).unwrap(),
            Access::Team(TeamRole::Staff)
        );
        assert!(access(&staff, patient, on_team(TeamRole::Provider)).is_err());
        assert!(access(&provider, patient, on_team(TeamRole::Staff)).is_err());
        let billing = user(Uuid::now_v7(), Role::Billing);
        assert!(access(&billing, patient, on_team(TeamRole::Staff)).is_err());
    }

    #[test]
    fn break_glass_is_for_providers_and_reads_only() {
        let patient = Uuid::now_v7();
        let provider = user(Uuid::now_v7(), Role::Provider);
        let a = access(&provider, patient, GLASS).unwrap();
        assert_eq!(a, Access::BreakGlass);
        assert_eq!(purpose(a), Purpose::BreakGlass);
        assert!(may_write(a, Kind::Condition).is_err());
        assert!(may_verify(a).is_err());
        for role in [Role::Staff, Role::Billing, Role::Admin, Role::Patient] {
            assert!(access(&user(Uuid::now_v7(), role), patient, GLASS).is_err());
        }
        // A membership wins over a break-glass access held at the same time.
        let both = Relation {
            team_role: Some(TeamRole::Provider),
            break_glass_open: true,
        };
        assert_eq!(
            access(&provider, patient, both).unwrap(),
            Access::Team(TeamRole::Provider)
        );
    }

    #[test]
    fn writes_and_verification_follow_the_way_in() {
        for kind in [Kind::Condition, Kind::Medication, Kind::Allergy] {
            assert!(may_write(Access::Patient, kind).is_ok(), "{kind:?}");
        }
        assert!(may_write(Access::Patient, Kind::LabResult).is_err());
        for kind in Kind::ALL {
            assert!(may_write(Access::Team(TeamRole::Staff), kind).is_ok());
            assert!(may_write(Access::Team(TeamRole::Provider), kind).is_ok());
        }
        assert!(may_verify(Access::Team(TeamRole::Provider)).is_ok());
        assert!(may_verify(Access::Team(TeamRole::Staff)).is_err());
        assert!(may_verify(Access::Patient).is_err());
        assert_eq!(purpose(Access::Patient), Purpose::PatientRequest);
        assert_eq!(purpose(Access::Team(TeamRole::Staff)), Purpose::Treatment);
    }

    #[test]
    fn admins_manage_teams_without_opening_charts() {
        let patient = Uuid::now_v7();
        let admin = user(Uuid::now_v7(), Role::Admin);
        assert!(may_manage_team(&admin, patient, NONE).is_ok());
        assert!(access(&admin, patient, NONE).is_err());
        assert!(may_manage_team(&user(patient, Role::Patient), patient, NONE).is_ok());
        let provider = user(Uuid::now_v7(), Role::Provider);
        assert!(may_manage_team(&provider, patient, on_team(TeamRole::Provider)).is_ok());
        assert!(may_manage_team(&provider, patient, GLASS).is_err());
        assert!(may_manage_team(&provider, patient, NONE).is_err());
    }
}
