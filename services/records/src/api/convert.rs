//! Proto encodings shared by records' handlers.

use carehub_platform::errors::FieldViolations;
use carehub_proto::records::v1 as pb;
use chrono::{DateTime, Utc};

use crate::domain::access::TeamRole;
use crate::domain::content::Kind;
use crate::domain::sensitivity::Label;
use crate::error::{RecordsError, Result};
use crate::store::entries::{Source, VersionRow};
use crate::store::team::MemberRow;

pub fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// The etag of a version: opaque to clients, changes with every version.
pub fn etag(version: i64) -> String {
    format!("v{version}")
}

/// The version an etag names (a violation of `field` when it is not one of ours).
pub fn check_etag(v: &mut FieldViolations, field: &str, etag: &str) -> Option<i64> {
    match etag.strip_prefix('v').and_then(|n| n.parse::<i64>().ok()) {
        Some(n) if n >= 1 && etag.len() <= 20 => Some(n),
        _ if etag.is_empty() => {
            v.add(
                field,
                "is required: the etag of the version this change is based on",
            );
            None
        }
        _ => {
            v.add(field, "is not an etag this service issued");
            None
        }
    }
}

fn source_to_pb(s: Source) -> pb::Source {
    match s {
        Source::Patient => pb::Source::Patient,
        Source::Provider => pb::Source::Provider,
        Source::Staff => pb::Source::Staff,
        Source::Integration => pb::Source::Integration,
    }
}

/// The proto of a version whose content is already open.
pub fn entry_to_pb(
    row: &VersionRow,
    content: pb::EntryContent,
    labels: &[Label],
) -> Result<pb::Entry> {
    let kind = Kind::parse(&row.kind).ok_or_else(|| {
        RecordsError::Internal(format!("entry {} has an unknown kind", row.entry_id))
    })?;
    let source = Source::parse(&row.source).ok_or_else(|| {
        RecordsError::Internal(format!("entry {} has an unknown source", row.entry_id))
    })?;
    Ok(pb::Entry {
        id: row.entry_id.to_string(),
        patient_id: row.patient_id.to_string(),
        kind: kind.to_pb() as i32,
        content: Some(content),
        version: row.version,
        etag: etag(row.version),
        provenance: Some(pb::Provenance {
            source: source_to_pb(source) as i32,
            entered_by: row.entered_by.map(|u| u.to_string()).unwrap_or_default(),
            enter_time: Some(ts(row.entered_at)),
            verified_by: row.verified_by.map(|u| u.to_string()).unwrap_or_default(),
            verify_time: row.verified_at.map(ts),
        }),
        create_time: Some(ts(row.created_at)),
        labels: labels.iter().map(|l| l.to_pb() as i32).collect(),
    })
}

pub fn team_to_pb(patient: uuid::Uuid, rows: &[MemberRow]) -> pb::CareTeam {
    pb::CareTeam {
        patient_id: patient.to_string(),
        members: rows
            .iter()
            .map(|m| pb::CareTeamMember {
                user_id: m.member_id.to_string(),
                role: match TeamRole::parse(&m.member_role) {
                    Some(TeamRole::Provider) => pb::TeamRole::Provider,
                    Some(TeamRole::Staff) => pb::TeamRole::Staff,
                    None => pb::TeamRole::Unspecified,
                } as i32,
                start_time: Some(ts(m.started_at)),
                end_time: m.ended_at.map(ts),
                added_by: m.added_by.to_string(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn etags_name_versions_and_nothing_else() {
        let mut v = FieldViolations::new();
        assert_eq!(check_etag(&mut v, "etag", &etag(7)), Some(7));
        for bad in [
            "",
            "7",
            "v0",
            "v-1",
            "vx",
            "W/\"v1\"",
            "v99999999999999999999",
        ] {
            assert_eq!(check_etag(&mut v, "etag", bad), None, "{bad}");
        }
        assert_eq!(v.fields().count(), 7);
    }
}
