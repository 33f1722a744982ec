//! Records' tables. SQL lives here and nowhere else; every value that can carry clinical or
//! personal content is sealed under the patient's data key before it reaches a table.

pub mod amendments;
pub mod break_glass;
pub mod disclosures;
pub mod documents;
pub mod entries;
pub mod erasures;
pub mod grants;
pub mod intake;
pub mod notes;
pub mod sealed;
pub mod team;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::access::{Relation, TeamRole};
use crate::error::Result;

/// How `user` stands to `patient`'s chart: their active care-team role, and whether they hold
/// an unexpired break-glass access. One round trip; answered before every chart access.
pub async fn relation(conn: &mut PgConnection, user: Uuid, patient: Uuid) -> Result<Relation> {
    let (team_role, break_glass_open): (Option<String>, bool) = sqlx::query_as(
        "SELECT (SELECT member_role FROM care_team_members
                  WHERE member_id = $1 AND patient_id = $2 AND ended_at IS NULL),
                EXISTS (SELECT 1 FROM break_glass_accesses
                         WHERE provider_id = $1 AND patient_id = $2 AND expires_at > now())",
    )
    .bind(user)
    .bind(patient)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Relation {
        team_role: team_role.as_deref().and_then(TeamRole::parse),
        break_glass_open,
    })
}
