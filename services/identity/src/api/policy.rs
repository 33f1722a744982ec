//! Who may call each identity RPC: which workloads (mTLS identity) and which users (roles).

use carehub_platform::auth::{Policy, Role, UserRule};

const PUBLIC: &str = "carehub.identity.v1.IdentityService";
const INTERNAL: &str = "carehub.identity.v1.IdentityInternal";

/// The gateway; end-user RPCs arrive through it.
const GATEWAY: &[&str] = &["gateway"];
/// carehub services that call identity on their own behalf.
const SERVICES: &[&str] = &["scheduling", "messaging", "records", "billing"];
/// Messaging alone.
const MESSAGING: &[&str] = &["messaging"];
/// The gateway and the operator CLI (admin actions).
const GATEWAY_AND_ADMIN_CLI: &[&str] = &["gateway", "admin-cli"];

fn user(roles: &[Role]) -> UserRule {
    UserRule::Authenticated {
        roles: roles.to_vec(),
        allow_pending_password_change: false,
    }
}

/// Any signed-in user, even one who must change their password first.
fn any_user_pending_ok() -> UserRule {
    UserRule::Authenticated {
        roles: vec![],
        allow_pending_password_change: true,
    }
}

pub fn policy() -> Policy {
    let mut p = Policy::new();
    for m in [
        "RegisterPatient",
        "Login",
        "CompleteMfaChallenge",
        "RefreshSession",
        "RequestPasswordReset",
        "ResetPassword",
        "UnlockWithPin",
    ] {
        p = p.rule(PUBLIC, m, GATEWAY, UserRule::Public);
    }
    let mut keys_callers = GATEWAY.to_vec();
    keys_callers.extend_from_slice(SERVICES);
    p = p.rule(PUBLIC, "ListSigningKeys", &keys_callers, UserRule::Public);

    for m in ["ChangePassword", "GetProfile", "Logout"] {
        p = p.rule(PUBLIC, m, GATEWAY, any_user_pending_ok());
    }
    for m in [
        "SendVerificationCode",
        "VerifyContact",
        "ListSessions",
        "RevokeSession",
        "EnrollTotp",
        "ConfirmTotp",
        "DisableTotp",
        "EnrollDevicePin",
        "UpdateProfile",
        "GetConsents",
        "UpdateConsents",
        "GetCommunicationPreferences",
        "UpdateCommunicationPreferences",
        // Anyone may read themselves; the handler limits others to admin and staff.
        "GetUser",
    ] {
        p = p.rule(PUBLIC, m, GATEWAY, user(&[]));
    }
    for m in [
        "CreateUser",
        "SuspendUser",
        "ReactivateUser",
        "TerminateUser",
    ] {
        p = p.rule(PUBLIC, m, GATEWAY_AND_ADMIN_CLI, user(&[Role::Admin]));
    }

    let mut internal_callers = SERVICES.to_vec();
    internal_callers.push("gateway");
    p = p.rule(
        INTERNAL,
        "ListSigningKeys",
        &internal_callers,
        UserRule::WorkloadOnly,
    );
    p = p.rule(
        INTERNAL,
        "ListRevocations",
        SERVICES,
        UserRule::WorkloadOnly,
    );
    p = p.rule(INTERNAL, "LookupUser", SERVICES, UserRule::WorkloadOnly);
    // Messaging's own needs: contact data is PHI no other service needs, and account actions
    // and SMS consent are decisions only messaging's reports and ledger make.
    for m in ["RequestAccountAction", "GetContact", "ApplySmsConsent"] {
        p = p.rule(INTERNAL, m, MESSAGING, UserRule::WorkloadOnly);
    }
    p
}
