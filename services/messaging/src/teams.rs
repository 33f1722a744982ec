//! Care teams, asked of records (`RecordsInternal.GetCareTeam`, over mTLS as `messaging`) and
//! kept for `messaging.care_team_cache_secs`: every read, send and delivery in a care
//! conversation checks the team, and a member who leaves it stops within that time. The cache
//! is bounded; when full, expired answers go first, then everything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carehub_platform::client::ServiceChannel;
use carehub_platform::errors;
use carehub_proto::common::v1::ErrorReason;
use carehub_proto::records::v1::records_internal_client::RecordsInternalClient;
use carehub_proto::records::v1::{GetCareTeamRequest, TeamRole as PbTeamRole};
use tonic::Code;
use uuid::Uuid;

use crate::domain::participants::{TeamMember, TeamRole};
use crate::error::{MessagingError, Result};

/// Patients whose team is kept at once.
const MAX_CACHED: usize = 10_000;

type Team = Arc<Vec<TeamMember>>;

pub struct CareTeams {
    client: RecordsInternalClient<ServiceChannel>,
    ttl: Duration,
    cache: Mutex<HashMap<Uuid, (Instant, Team)>>,
}

impl CareTeams {
    pub fn new(channel: ServiceChannel, ttl: Duration) -> Self {
        CareTeams {
            client: RecordsInternalClient::new(channel),
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The active members of `patient`'s team, at most `ttl` old.
    pub async fn team(&self, patient: Uuid) -> Result<Team> {
        let now = Instant::now();
        if let Some((at, team)) = self.lock().get(&patient) {
            if now.duration_since(*at) < self.ttl {
                return Ok(team.clone());
            }
        }
        let team = Arc::new(self.fetch(patient).await?);
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| now.duration_since(*at) < ttl);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(patient, (now, team.clone()));
        Ok(team)
    }

    /// Forgets `patient`'s team (a test changed it and wants the next check to ask again).
    pub fn forget(&self, patient: Uuid) {
        self.lock().remove(&patient);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (Instant, Team)>> {
        // A panic while holding the lock left a map that is still valid.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn fetch(&self, patient: Uuid) -> Result<Vec<TeamMember>> {
        let answer = self
            .client
            .clone()
            .get_care_team(GetCareTeamRequest {
                patient_id: patient.to_string(),
            })
            .await
            .map_err(|s| {
                tracing::warn!(code = ?s.code(), "records could not tell a care team");
                MessagingError::Status(errors::retry_after(
                    Code::Unavailable,
                    ErrorReason::Unavailable,
                    "records is unavailable; retry",
                    Duration::from_secs(1),
                ))
            })?
            .into_inner();
        Ok(answer
            .members
            .into_iter()
            .filter(|m| m.end_time.is_none())
            .filter_map(|m| {
                let role = match PbTeamRole::try_from(m.role).ok()? {
                    PbTeamRole::Provider => TeamRole::Provider,
                    PbTeamRole::Staff => TeamRole::Staff,
                    PbTeamRole::Unspecified => return None,
                };
                Some(TeamMember {
                    user: m.user_id.parse().ok()?,
                    role,
                })
            })
            .collect())
    }
}
