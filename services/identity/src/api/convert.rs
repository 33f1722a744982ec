//! proto <-> domain conversions shared by the handlers.

use carehub_platform::auth::Role;
use carehub_proto::identity::v1 as pb;

use crate::domain::account::{Account, AccountStatus};
use crate::domain::validation as val;

pub use carehub_platform::timestamps::{opt_to_proto as opt_timestamp, to_proto as timestamp};

pub fn role_to_pb(r: Role) -> pb::Role {
    match r {
        Role::Patient => pb::Role::Patient,
        Role::Provider => pb::Role::Provider,
        Role::Staff => pb::Role::Staff,
        Role::Billing => pb::Role::Billing,
        Role::Admin => pb::Role::Admin,
    }
}

pub fn role_from_pb(r: pb::Role) -> Option<Role> {
    match r {
        pb::Role::Unspecified => None,
        pb::Role::Patient => Some(Role::Patient),
        pb::Role::Provider => Some(Role::Provider),
        pb::Role::Staff => Some(Role::Staff),
        pb::Role::Billing => Some(Role::Billing),
        pb::Role::Admin => Some(Role::Admin),
    }
}

pub fn status_to_pb(s: AccountStatus) -> pb::AccountStatus {
    match s {
        AccountStatus::Active => pb::AccountStatus::Active,
        AccountStatus::Suspended => pb::AccountStatus::Suspended,
        AccountStatus::Terminated => pb::AccountStatus::Terminated,
    }
}

/// The few facts other services get about an account (LookupUser, RequestAccountAction).
pub fn summary_to_pb(a: &Account) -> pb::UserSummary {
    pb::UserSummary {
        user_id: a.id.to_string(),
        roles: vec![role_to_pb(a.role) as i32],
        status: status_to_pb(a.status) as i32,
        display_name: a.display_name(),
        time_zone: a.time_zone.clone(),
    }
}

/// The proto form of an account.
pub fn user_to_pb(a: &Account) -> pb::User {
    pb::User {
        user_id: a.id.to_string(),
        roles: vec![role_to_pb(a.role) as i32],
        status: status_to_pb(a.status) as i32,
        email: a.email.clone(),
        email_verified: a.email_verified_at.is_some(),
        phone: a.phone.clone().unwrap_or_default(),
        phone_verified: a.phone_verified_at.is_some(),
        given_name: a.given_name.clone(),
        family_name: a.family_name.clone(),
        date_of_birth: a.date_of_birth.map(val::date_to_pb),
        time_zone: a.time_zone.clone(),
        mfa_enabled: a.mfa_enabled,
        password_change_required: a.password_change_required,
        create_time: Some(timestamp(a.created_at)),
        update_time: Some(timestamp(a.updated_at)),
    }
}
