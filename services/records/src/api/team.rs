//! Care teams: who is on a patient's team, joining (by the patient, a member, an admin, or
//! scheduling on a booking) and leaving. Members are looked up in identity before the
//! transaction: only an active provider or staff member joins, and only a patient's chart
//! has a team.

use carehub_platform::audit::Purpose;
use carehub_platform::auth::{Role, UserCaller};
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::records::v1::*;
use sqlx::PgConnection;
use uuid::Uuid;

use super::convert::team_to_pb;
use super::kinds;
use crate::domain::access::{self, Access, Relation, TeamRole};
use crate::error::{checked, RecordsError, Result};
use crate::store::{self, team};
use crate::AppState;

fn ids(patient_id: &str, user_id: &str, user_field: &str) -> Result<(Uuid, Uuid)> {
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", patient_id);
    let user = v.require_uuid(user_field, user_id);
    v.finish()?;
    Ok((checked(patient)?, checked(user)?))
}

/// Checks that `user` may see and change `patient`'s team; the purpose its access is
/// audited with.
async fn may_manage(conn: &mut PgConnection, user: &UserCaller, patient: Uuid) -> Result<Purpose> {
    let relation = if user.has_role(Role::Admin)
        || (user.user_id == patient && user.has_role(Role::Patient))
    {
        Relation::default()
    } else {
        store::relation(conn, user.user_id, patient).await?
    };
    access::may_manage_team(user, patient, relation)?;
    Ok(if user.has_role(Role::Admin) {
        Purpose::Operations
    } else {
        match access::access(user, patient, relation)? {
            Access::Patient => Purpose::PatientRequest,
            _ => Purpose::Treatment,
        }
    })
}

/// The patient must be one, and the member an active provider or staff member.
async fn check_people(state: &AppState, patient: Uuid, member: Uuid) -> Result<TeamRole> {
    let (p, m) = tokio::try_join!(
        state.directory.person(patient, "patient"),
        state.directory.person(member, "user"),
    )?;
    if p.role != Role::Patient {
        return Err(RecordsError::NotFound {
            what: "patient",
            id: patient.to_string(),
        });
    }
    let role = TeamRole::of(m.role).ok_or_else(|| RecordsError::Conflict {
        kind: "MEMBER_ROLE",
        subject: member.to_string(),
        description: format!("user {member} is not a provider or staff member"),
    })?;
    if !m.active {
        return Err(RecordsError::Conflict {
            kind: "MEMBER_STATUS",
            subject: member.to_string(),
            description: format!("user {member} is suspended or terminated"),
        });
    }
    Ok(role)
}

pub async fn list_care_team(
    state: &AppState,
    call: &Call,
    r: ListCareTeamRequest,
) -> Result<CareTeam> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    v.finish()?;
    let patient = checked(patient)?;
    let (purpose, rows) = {
        let mut conn = state.pool.acquire().await?;
        let purpose = may_manage(&mut conn, user, patient).await?;
        (purpose, team::list(&mut conn, patient).await?)
    };
    let read = call.event(
        kinds::CARE_TEAM_READ,
        purpose,
        "care_team",
        patient,
        patient,
    );
    call.read(&state.pool, read, team_to_pb(patient, &rows))
        .await
}

/// Adds `member` (of `role`) to `patient`'s team in the call's transaction; the events: the
/// addition, or only the read of the team when the member was already active.
async fn add(
    conn: &mut PgConnection,
    call: &Call,
    purpose: Purpose,
    (patient, member, role): (Uuid, Uuid, TeamRole),
    added_by: Uuid,
) -> Result<Change<CareTeam>> {
    let added = team::add(conn, patient, member, role, added_by).await?;
    let answer = team_to_pb(patient, &team::list(conn, patient).await?);
    let event = if added {
        call.event(
            kinds::CARE_TEAM_ADD,
            purpose,
            "care_team_member",
            member,
            patient,
        )
    } else {
        call.event(
            kinds::CARE_TEAM_READ,
            purpose,
            "care_team",
            patient,
            patient,
        )
    };
    Ok(Change::new(answer, event))
}

pub async fn add_care_team_member(
    state: &AppState,
    call: &Call,
    r: AddCareTeamMemberRequest,
) -> Result<CareTeam> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let (patient, member) = ids(&r.patient_id, &r.user_id, "user_id")?;
    // Who may ask is settled before identity is asked anything about the people named.
    {
        let mut conn = state.pool.acquire().await?;
        may_manage(&mut conn, &user, patient).await?;
    }
    let role = check_people(state, patient, member).await?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let purpose = may_manage(conn, &user, patient).await?;
            add(conn, call, purpose, (patient, member, role), user.user_id).await
        })
        .await?;
    Ok(ran.answer)
}

pub async fn remove_care_team_member(
    state: &AppState,
    call: &Call,
    r: RemoveCareTeamMemberRequest,
) -> Result<CareTeam> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let (patient, member) = ids(&r.patient_id, &r.user_id, "user_id")?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            let purpose = may_manage(conn, &user, patient).await?;
            if !team::remove(conn, patient, member, user.user_id).await? {
                return Err(RecordsError::NotFound {
                    what: "care team member",
                    id: member.to_string(),
                });
            }
            let answer = team_to_pb(patient, &team::list(conn, patient).await?);
            let event = call.event(
                kinds::CARE_TEAM_REMOVE,
                purpose,
                "care_team_member",
                member,
                patient,
            );
            Ok(Change::new(answer, event))
        })
        .await?;
    Ok(ran.answer)
}

/// Scheduling, on a booking: the booked provider joins the team (treatment).
pub async fn add_booked_provider(
    state: &AppState,
    call: &Call,
    r: AddBookedProviderRequest,
) -> Result<CareTeam> {
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    let provider = v.require_uuid("provider_id", &r.provider_id);
    let appointment = v.require_uuid("appointment_id", &r.appointment_id);
    v.finish()?;
    let (patient, provider, _appointment) =
        (checked(patient)?, checked(provider)?, checked(appointment)?);
    let role = check_people(state, patient, provider).await?;
    if role != TeamRole::Provider {
        return Err(RecordsError::Conflict {
            kind: "MEMBER_ROLE",
            subject: provider.to_string(),
            description: format!("user {provider} is not a provider"),
        });
    }
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            // Added by the provider themselves: the booking was theirs to accept.
            add(
                conn,
                call,
                Purpose::Treatment,
                (patient, provider, role),
                provider,
            )
            .await
        })
        .await?;
    Ok(ran.answer)
}

/// Messaging asks who is on a patient's team before a participant reads, sends or receives in
/// a care conversation, and whom to alert of a new message. Who treats whom is itself personal
/// data: the answer is audited as a read of the team, by the calling workload.
pub async fn get_care_team(
    state: &AppState,
    call: &Call,
    r: GetCareTeamRequest,
) -> Result<CareTeam> {
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    v.finish()?;
    let patient = checked(patient)?;
    let rows = {
        let mut conn = state.pool.acquire().await?;
        team::list(&mut conn, patient).await?
    };
    let read = call.event(
        kinds::CARE_TEAM_READ,
        Purpose::Operations,
        "care_team",
        patient,
        patient,
    );
    call.read(&state.pool, read, team_to_pb(patient, &rows))
        .await
}
