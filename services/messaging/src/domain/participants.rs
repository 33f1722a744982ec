//! Who is in a conversation. A care conversation is between its patient and whoever is on the
//! patient's care team right now (records keeps the team); a staff conversation is between the
//! providers and staff it was opened with. The token's role must agree with the way in: a
//! patient's token reaches only its own care conversations, a team membership counts only for a
//! provider's or staff member's token. Nothing else opens a conversation: not a role alone,
//! not having posted there before.

use carehub_platform::audit::Purpose;
use carehub_platform::auth::{Role, UserCaller};
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConversationKind {
    Care,
    Staff,
}

impl ConversationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationKind::Care => "care",
            ConversationKind::Staff => "staff",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "care" => Some(ConversationKind::Care),
            "staff" => Some(ConversationKind::Staff),
            _ => None,
        }
    }
}

/// A care-team member's role, as records reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeamRole {
    Provider,
    Staff,
}

impl TeamRole {
    /// The token role a member of this team role must hold.
    pub fn token_role(self) -> Role {
        match self {
            TeamRole::Provider => Role::Provider,
            TeamRole::Staff => Role::Staff,
        }
    }
}

/// An active member of a patient's care team.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TeamMember {
    pub user: Uuid,
    pub role: TeamRole,
}

/// What decides who is in a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roster {
    /// The patient and their care team's active members.
    Care {
        patient: Uuid,
        team: Vec<TeamMember>,
    },
    /// The members named at creation.
    Staff { members: Vec<Uuid> },
}

/// How the caller takes part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Patient,
    TeamMember(TeamRole),
    StaffMember,
}

impl Standing {
    /// The purpose of use the caller's reads and writes are audited with.
    pub fn purpose(self) -> Purpose {
        match self {
            Standing::Patient => Purpose::PatientRequest,
            Standing::TeamMember(_) => Purpose::Treatment,
            Standing::StaffMember => Purpose::Operations,
        }
    }
}

/// How `user` stands in a conversation with `roster`, or `None`: not a participant.
pub fn standing(user: &UserCaller, roster: &Roster) -> Option<Standing> {
    match roster {
        Roster::Care { patient, team } => {
            if user.user_id == *patient {
                return user.has_role(Role::Patient).then_some(Standing::Patient);
            }
            team.iter()
                .find(|m| m.user == user.user_id)
                .filter(|m| user.has_role(m.role.token_role()))
                .map(|m| Standing::TeamMember(m.role))
        }
        Roster::Staff { members } => (members.contains(&user.user_id)
            && (user.has_role(Role::Provider) || user.has_role(Role::Staff)))
        .then_some(Standing::StaffMember),
    }
}

/// Everyone a conversation's events concern (new-message alerts, a stream's audience).
pub fn everyone(roster: &Roster) -> Vec<Uuid> {
    match roster {
        Roster::Care { patient, team } => std::iter::once(*patient)
            .chain(team.iter().map(|m| m.user))
            .collect(),
        Roster::Staff { members } => members.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn caller(id: Uuid, role: Role) -> UserCaller {
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

    #[test]
    fn a_care_conversation_is_its_patient_and_the_active_team_with_matching_roles() {
        let (patient, provider, staff, outsider) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let roster = Roster::Care {
            patient,
            team: vec![
                TeamMember {
                    user: provider,
                    role: TeamRole::Provider,
                },
                TeamMember {
                    user: staff,
                    role: TeamRole::Staff,
                },
            ],
        };
        assert_eq!(
            standing(&caller(patient, Role::Patient), &roster),
            Some(Standing::Patient)
        );
        assert_eq!(
            standing(&caller(provider, Role::Provider), &roster),
            Some(Standing::TeamMember(TeamRole::Provider))
        );
        assert_eq!(
            standing(&caller(staff, Role::Staff), &roster),
            Some(Standing::TeamMember(TeamRole::Staff))
        );
        // A role alone opens nothing; a token whose role disagrees with the membership neither.
        assert_eq!(standing(&caller(outsider, Role::Provider), &roster), None);
        assert_eq!(standing(&caller(staff, Role::Provider), &roster), None);
        assert_eq!(standing(&caller(patient, Role::Provider), &roster), None);
        assert_eq!(standing(&caller(provider, Role::Admin), &roster), None);
        assert_eq!(everyone(&roster), vec![patient, provider, staff]);
    }

    /// The stored kind decides whose roster applies: it must read back as written, and an
    /// unknown one must not read as a care conversation.
    #[test]
    fn kinds_read_back_as_stored() {
        for kind in [ConversationKind::Care, ConversationKind::Staff] {
            assert_eq!(ConversationKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ConversationKind::Care.as_str(), "care");
        assert_eq!(ConversationKind::Staff.as_str(), "staff");
        assert_eq!(ConversationKind::parse("Care"), None);
        assert_eq!(ConversationKind::parse(""), None);
    }

    #[test]
    fn a_staff_conversation_is_its_members_acting_as_provider_or_staff() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let roster = Roster::Staff {
            members: vec![a, b],
        };
        assert_eq!(
            standing(&caller(a, Role::Provider), &roster),
            Some(Standing::StaffMember)
        );
        assert_eq!(
            standing(&caller(b, Role::Staff), &roster),
            Some(Standing::StaffMember)
        );
        assert_eq!(standing(&caller(c, Role::Staff), &roster), None);
        assert_eq!(standing(&caller(a, Role::Patient), &roster), None);
        assert_eq!(Standing::StaffMember.purpose(), Purpose::Operations);
        assert_eq!(Standing::Patient.purpose(), Purpose::PatientRequest);
    }
}
