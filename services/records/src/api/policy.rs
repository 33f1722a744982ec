//! Who may call each records RPC: which workloads (mTLS identity) and which users (roles). The
//! roles here are necessary, never sufficient: every chart RPC also needs the caller to reach
//! that patient's chart (`domain::access`), which only the handler can know.

use carehub_platform::auth::{Policy, Role, UserRule};

const PUBLIC: &str = "carehub.records.v1.RecordsService";
const INTERNAL: &str = "carehub.records.v1.RecordsInternal";
const ACCOUNT_EVENTS: &str = "carehub.common.v1.AccountEvents";

/// The gateway; end-user RPCs arrive through it.
const GATEWAY: &[&str] = &["gateway"];

fn users(roles: &[Role]) -> UserRule {
    UserRule::Authenticated {
        roles: roles.to_vec(),
        allow_pending_password_change: false,
    }
}

/// The roles that can stand in a chart relation (the patient, care-team members).
const CHART: &[Role] = &[Role::Patient, Role::Provider, Role::Staff];
/// Care-team management adds admins, who never open charts.
const TEAM: &[Role] = &[Role::Patient, Role::Provider, Role::Staff, Role::Admin];

pub fn policy() -> Policy {
    let mut p = Policy::new();
    for m in [
        "GetChart",
        "GetEntry",
        "ListEntryVersions",
        "CreateEntry",
        "UpdateEntry",
        "UploadDocument",
        "DownloadDocument",
        "ListDocuments",
        "ExportChart",
    ] {
        p = p.rule(PUBLIC, m, GATEWAY, users(CHART));
    }
    p = p.rule(PUBLIC, "VerifyEntry", GATEWAY, users(&[Role::Provider]));
    for m in ["RequestAmendment", "FileDisagreement", "ListDisclosures"] {
        p = p.rule(PUBLIC, m, GATEWAY, users(&[Role::Patient]));
    }
    for m in [
        "ExtendAmendment",
        "AcceptAmendment",
        "DenyAmendment",
        "FileRebuttal",
    ] {
        p = p.rule(PUBLIC, m, GATEWAY, users(&[Role::Provider]));
    }
    p = p.rule(PUBLIC, "ListAmendments", GATEWAY, users(CHART));
    for m in ["CreateNote", "UpdateNote", "SignNote", "AddNoteAddendum"] {
        p = p.rule(PUBLIC, m, GATEWAY, users(&[Role::Provider]));
    }
    p = p.rule(PUBLIC, "ListNotes", GATEWAY, users(CHART));
    p = p.rule(
        PUBLIC,
        "RecordDisclosure",
        GATEWAY,
        users(&[Role::Staff, Role::Admin]),
    );
    for m in ["ListCareTeam", "AddCareTeamMember", "RemoveCareTeamMember"] {
        p = p.rule(PUBLIC, m, GATEWAY, users(TEAM));
    }
    p = p.rule(PUBLIC, "BreakGlass", GATEWAY, users(&[Role::Provider]));
    p = p.rule(PUBLIC, "GetDemographics", GATEWAY, users(CHART));
    p = p.rule(
        PUBLIC,
        "UpdateDemographics",
        GATEWAY,
        users(&[Role::Patient, Role::Staff]),
    );
    p = p.rule(
        PUBLIC,
        "GetConditionAggregates",
        GATEWAY,
        users(&[Role::Admin]),
    );
    for m in [
        "GrantSensitiveAccess",
        "RevokeSensitiveAccess",
        "ListSensitiveAccessGrants",
        "GetAccessLog",
    ] {
        p = p.rule(PUBLIC, m, GATEWAY, users(&[Role::Patient]));
    }
    p = p.rule(
        PUBLIC,
        "ListBreakGlassAccesses",
        GATEWAY,
        users(&[Role::Admin]),
    );
    p = p.rule(
        INTERNAL,
        "AddBookedProvider",
        &["scheduling"],
        UserRule::WorkloadOnly,
    );
    p = p.rule(
        INTERNAL,
        "RecordIntakeResponse",
        &["scheduling"],
        UserRule::WorkloadOnly,
    );
    p = p.rule(
        INTERNAL,
        "GetCareTeam",
        &["messaging"],
        UserRule::WorkloadOnly,
    );
    // EHR and HIE feeds.
    p = p.rule(
        INTERNAL,
        "ImportFhirBundle",
        &["integration"],
        UserRule::WorkloadOnly,
    );
    // Identity's outbox delivers account events here.
    p.rule(
        ACCOUNT_EVENTS,
        "ApplyAccountEvent",
        &["identity"],
        UserRule::WorkloadOnly,
    )
}
