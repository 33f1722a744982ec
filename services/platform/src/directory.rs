//! Who a user is, asked of identity (`IdentityInternal.LookupUser`, over mTLS as the calling
//! service): records checks that a care-team member is an active provider or staff member and
//! that a chart belongs to a patient; messaging checks who joins a staff conversation.

use crate::auth::Role;
use crate::client::ServiceChannel;
use crate::errors;
use carehub_proto::common::v1::ErrorReason;
use carehub_proto::identity::v1::identity_internal_client::IdentityInternalClient;
use carehub_proto::identity::v1::{self as id_pb, LookupUserRequest};
use tonic::{Code, Status};
use uuid::Uuid;

#[derive(Clone)]
pub struct Directory {
    client: IdentityInternalClient<ServiceChannel>,
    channel: ServiceChannel,
}

/// What a service needs to know about a user.
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
    pub async fn person(&self, id: Uuid, what: &'static str) -> Result<Person, Status> {
        let mut client = self.client.clone();
        let answer = client
            .lookup_user(LookupUserRequest {
                user_id: id.to_string(),
            })
            .await;
        let summary = match answer {
            Ok(a) => a.into_inner(),
            Err(s) if s.code() == Code::NotFound => {
                return Err(errors::not_found(what, &id.to_string()))
            }
            Err(s) => {
                tracing::warn!(code = ?s.code(), "identity could not look a user up");
                return Err(errors::retry_after(
                    Code::Unavailable,
                    ErrorReason::Unavailable,
                    "identity is unavailable; retry",
                    std::time::Duration::from_secs(1),
                ));
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
            .ok_or_else(|| {
                tracing::error!(user_id = %id, "identity answered a user without a known role");
                errors::internal("directory")
            })?;
        Ok(Person {
            role,
            active: summary.status == id_pb::AccountStatus::Active as i32,
            display_name: summary.display_name,
        })
    }
}
