//! Who a user is, asked of identity (`IdentityInternal.LookupUser`, over mTLS as `records`):
//! a care-team member must be an active provider or staff member, and a chart belongs to an
//! active patient.

use carehub_platform::auth::Role;
use carehub_platform::client::ServiceChannel;
use carehub_platform::errors;
use carehub_proto::common::v1::ErrorReason;
use carehub_proto::identity::v1::identity_internal_client::IdentityInternalClient;
use carehub_proto::identity::v1::{self as id_pb, LookupUserRequest};
use tonic::Code;
use uuid::Uuid;

use crate::error::{RecordsError, Result};

#[derive(Clone)]
pub struct Directory {
    client: IdentityInternalClient<ServiceChannel>,
    channel: ServiceChannel,
}

/// What records needs to know about a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    pub role: Role,
    pub active: bool,
    /// "Given Family".
    pub display_name: String,
}

impl Directory {
    pub fn new(channel: ServiceChannel) -> Self {
        Directory {
            client: IdentityInternalClient::new(channel.clone()),
            channel,
        }
    }

    /// The channel to identity (its AuditLog is served there too).
    pub fn channel(&self) -> ServiceChannel {
        self.channel.clone()
    }

    /// The user `id` (NOT_FOUND naming `what` when identity has no such user; UNAVAILABLE
    /// when identity cannot answer).
    pub async fn person(&self, id: Uuid, what: &'static str) -> Result<Person> {
        let mut client = self.client.clone();
        let answer = client
            .lookup_user(LookupUserRequest {
                user_id: id.to_string(),
            })
            .await;
        let summary = match answer {
            Ok(a) => a.into_inner(),
            Err(s) if s.code() == Code::NotFound => {
                return Err(RecordsError::NotFound {
                    what,
                    id: id.to_string(),
                })
            }
            Err(s) => {
                tracing::warn!(code = ?s.code(), "identity could not look a user up");
                return Err(RecordsError::Status(errors::retry_after(
                    Code::Unavailable,
                    ErrorReason::Unavailable,
                    "identity is unavailable; retry",
                    std::time::Duration::from_secs(1),
                )));
            }
        };
        let role = summary
            .roles
            .first()
            .and_then(|r| id_pb::Role::try_from(*r).ok())
            .and_then(|r| match r {
                id_pb::Role::Patient => Some(Role::Patient),
                id_pb::Role::Provider => Some(Role::Provider),
                id_pb::Role::Staff => Some(Role::Staff),
                id_pb::Role::Billing => Some(Role::Billing),
                id_pb::Role::Admin => Some(Role::Admin),
                id_pb::Role::Unspecified => None,
            })
            .ok_or_else(|| RecordsError::Internal(format!("user {id} has no known role")))?;
        Ok(Person {
            role,
            active: summary.status == id_pb::AccountStatus::Active as i32,
            display_name: summary.display_name,
        })
    }
}
