//! Who may call each messaging RPC: which workloads (mTLS identity) and which users (roles). The
//! roles here are necessary, never sufficient: every conversation RPC also needs the caller to
//! be a participant (`domain::participants`), which only the handler can know.

use carehub_platform::auth::{Policy, Role, UserRule};

const PUBLIC: &str = "carehub.messaging.v1.MessagingService";
const INTERNAL: &str = "carehub.messaging.v1.MessagingInternal";
const ACCOUNT_EVENTS: &str = "carehub.common.v1.AccountEvents";

/// The gateway; end-user RPCs arrive through it.
const GATEWAY: &[&str] = &["gateway"];
/// The services that notify users through messaging (messaging itself: new-message alerts,
/// through its own outbox).
const NOTIFIERS: &[&str] = &["identity", "scheduling", "records", "billing", "messaging"];

fn users(roles: &[Role]) -> UserRule {
    UserRule::Authenticated {
        roles: roles.to_vec(),
        allow_pending_password_change: false,
    }
}

/// The roles that take part in conversations.
const PARTICIPANTS: &[Role] = &[Role::Patient, Role::Provider, Role::Staff];
/// The roles that review abuse.
const REVIEWERS: &[Role] = &[Role::Staff, Role::Admin];

pub fn policy() -> Policy {
    let mut p = Policy::new();
    for m in [
        "CreateConversation",
        "GetConversation",
        "ListConversations",
        "SendMessage",
        "RetractMessage",
        "ListEvents",
        "MarkRead",
        "StreamEvents",
        "UploadAttachment",
        "DownloadAttachment",
        "ReportMessage",
    ] {
        p = p.rule(PUBLIC, m, GATEWAY, users(PARTICIPANTS));
    }
    for m in [
        "ListReports",
        "ResolveReport",
        "BlockSender",
        "UnblockSender",
    ] {
        p = p.rule(PUBLIC, m, GATEWAY, users(REVIEWERS));
    }
    p = p.rule(
        PUBLIC,
        "GetVideoJoinToken",
        GATEWAY,
        users(&[Role::Patient, Role::Provider]),
    );
    // A user reads or opts in their own number (checked with identity); staff any number.
    for m in ["GetSmsConsent", "RecordSmsOptIn"] {
        p = p.rule(
            PUBLIC,
            m,
            GATEWAY,
            users(&[Role::Patient, Role::Provider, Role::Staff, Role::Admin]),
        );
    }
    for m in ["SendNotification", "GetNotification"] {
        p = p.rule(INTERNAL, m, NOTIFIERS, UserRule::WorkloadOnly);
    }
    p = p.rule(
        INTERNAL,
        "ApplySmsPreference",
        &["identity"],
        UserRule::WorkloadOnly,
    );
    p = p.rule(
        INTERNAL,
        "UpsertVideoVisit",
        &["scheduling"],
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
