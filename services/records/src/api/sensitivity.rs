//! The patient's grants of labelled entries to care-team members. Only the patient grants,
//! revokes and lists; a grant goes to an active member of their team.

use carehub_platform::audit::Purpose;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::records::v1::*;
use sqlx::PgConnection;
use uuid::Uuid;

use super::convert::ts;
use super::kinds;
use crate::domain::access;
use crate::domain::sensitivity::{self, Label};
use crate::error::{checked, RecordsError, Result};
use crate::store::grants::{self, GrantRow};
use crate::store::{self, sealed};
use crate::AppState;

/// The active grants with their labels opened.
async fn opened(
    state: &AppState,
    conn: &mut PgConnection,
    patient: Uuid,
    grantee: Option<Uuid>,
) -> Result<Vec<(GrantRow, Label)>> {
    let mut out = Vec::new();
    for g in grants::active(conn, patient, grantee).await? {
        let label = sealed::open_label(&state.crypto, patient, g.id, &g.label).await?;
        out.push((g, label));
    }
    Ok(out)
}

fn to_pb(patient: Uuid, grants: &[(GrantRow, Label)]) -> SensitiveAccessGrants {
    SensitiveAccessGrants {
        patient_id: patient.to_string(),
        grants: grants
            .iter()
            .map(|(g, label)| SensitiveAccessGrant {
                user_id: g.grantee_id.to_string(),
                label: label.to_pb() as i32,
                grant_time: Some(ts(g.granted_at)),
            })
            .collect(),
    }
}

fn request(patient_id: &str, user_id: &str, label: i32) -> Result<(Uuid, Uuid, Label)> {
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", patient_id);
    let user = v.require_uuid("user_id", user_id);
    let label = sensitivity::check_label(&mut v, "label", label);
    v.finish()?;
    Ok((checked(patient)?, checked(user)?, checked(label)?))
}

pub async fn grant(
    state: &AppState,
    call: &Call,
    r: GrantSensitiveAccessRequest,
) -> Result<SensitiveAccessGrants> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let (patient, grantee, label) = request(&r.patient_id, &r.user_id, r.label)?;
    access::own_chart(&user, patient)?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            if store::relation(conn, grantee, patient)
                .await?
                .team_role
                .is_none()
            {
                return Err(RecordsError::Conflict {
                    kind: "CARE_TEAM",
                    subject: grantee.to_string(),
                    description: format!("user {grantee} is not on the patient's care team"),
                });
            }
            grants::lock_member(conn, patient, grantee).await?;
            let held = opened(state, conn, patient, Some(grantee)).await?;
            let event = if held.iter().any(|(_, l)| *l == label) {
                // Already granted: the answer only shows the grants.
                call.event(
                    kinds::SENSITIVE_GRANTS_READ,
                    Purpose::PatientRequest,
                    "sensitivity_grants",
                    patient,
                    patient,
                )
            } else {
                let id = Uuid::now_v7();
                let sealed = sealed::seal_label(&state.crypto, patient, id, label).await?;
                grants::insert(conn, id, patient, grantee, &sealed).await?;
                call.event(
                    kinds::SENSITIVE_GRANT,
                    Purpose::PatientRequest,
                    "sensitivity_grant",
                    id,
                    patient,
                )
            };
            let all = opened(state, conn, patient, None).await?;
            Ok::<_, RecordsError>(Change::new(to_pb(patient, &all), event))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn revoke(
    state: &AppState,
    call: &Call,
    r: RevokeSensitiveAccessRequest,
) -> Result<SensitiveAccessGrants> {
    let user = call.user()?.clone();
    call.idempotency_key()?;
    let (patient, grantee, label) = request(&r.patient_id, &r.user_id, r.label)?;
    access::own_chart(&user, patient)?;
    let ran = call
        .mutate(&state.idempotency, &r, async |conn| {
            grants::lock_member(conn, patient, grantee).await?;
            let held = opened(state, conn, patient, Some(grantee)).await?;
            let Some((g, _)) = held.iter().find(|(_, l)| *l == label) else {
                return Err(RecordsError::NotFound {
                    what: "sensitive access grant",
                    id: grantee.to_string(),
                });
            };
            grants::revoke(conn, g.id).await?;
            let event = call.event(
                kinds::SENSITIVE_REVOKE,
                Purpose::PatientRequest,
                "sensitivity_grant",
                g.id,
                patient,
            );
            let all = opened(state, conn, patient, None).await?;
            Ok::<_, RecordsError>(Change::new(to_pb(patient, &all), event))
        })
        .await?;
    Ok(ran.answer)
}

pub async fn list(
    state: &AppState,
    call: &Call,
    r: ListSensitiveAccessGrantsRequest,
) -> Result<SensitiveAccessGrants> {
    let user = call.user()?;
    let mut v = FieldViolations::new();
    let patient = v.require_uuid("patient_id", &r.patient_id);
    v.finish()?;
    let patient = checked(patient)?;
    access::own_chart(user, patient)?;
    let all = {
        let mut conn = state.pool.acquire().await?;
        opened(state, &mut conn, patient, None).await?
    };
    let read = call.event(
        kinds::SENSITIVE_GRANTS_READ,
        Purpose::PatientRequest,
        "sensitivity_grants",
        patient,
        patient,
    );
    call.read(&state.pool, read, to_pb(patient, &all)).await
}
