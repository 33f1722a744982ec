//! proto <-> domain conversions shared by the handlers.

use carehub_platform::auth::Role;
use carehub_proto::identity::v1 as pb;
use chrono::{DateTime, Utc};

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn opt_timestamp(t: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    t.map(timestamp)
}

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
