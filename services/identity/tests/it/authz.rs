//! Identity's authorization, checked through the test kit (`carehub_testkit::authz`):
//!
//! - every RPC of the services identity mounts (IdentityService, IdentityInternal, AuditLog)
//!   has a policy rule, and the check fails when one is missing;
//! - the full matrix: every RPC called as every kind of caller — no user, each role on their
//!   own and on another user's data, the operator CLI, another carehub service, a workload
//!   nobody named — and the outcome compared with the table below. The table is kept by hand on
//!   purpose: opening an RPC to another caller in `policy.rs` must fail here, not silently
//!   follow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use carehub_identity::domain::account::Account;
use carehub_platform::auth::Role as PRole;
use carehub_proto::audit::v1::audit_log_client::AuditLogClient;
use carehub_proto::audit::v1::{list_events_request, ListEventsRequest, VerifyChainRequest};
use carehub_proto::identity::v1::identity_internal_client::IdentityInternalClient;
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::*;
use carehub_proto::FILE_DESCRIPTOR_SET;
use carehub_testkit::authz::{
    self, assert_every_rpc_has_a_rule, rpc_paths, CallerKind, Matrix, Outcome, Whose,
};
use carehub_testkit::{with_key, with_token};
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{self, patient_request, TestApp, PASSWORD};

const PUBLIC: &str = "carehub.identity.v1.IdentityService";
const INTERNAL: &str = "carehub.identity.v1.IdentityInternal";
const AUDIT_LOG: &str = "carehub.audit.v1.AuditLog";
/// Every service identity mounts.
const MOUNTED: [&str; 3] = [PUBLIC, INTERNAL, AUDIT_LOG];

/// The policies identity serves with: its own, and the platform's for AuditLog.
fn policies() -> (
    carehub_platform::auth::Policy,
    carehub_platform::auth::Policy,
) {
    (
        carehub_identity::api::policy::policy(),
        carehub_platform::audit::service::policy(),
    )
}

#[test]
fn every_rpc_identity_mounts_has_a_policy_rule() {
    let (identity, audit) = policies();
    assert_every_rpc_has_a_rule(FILE_DESCRIPTOR_SET, &MOUNTED, &[&identity, &audit]);
}

#[test]
fn an_rpc_without_a_rule_fails_the_check() {
    let (identity, audit) = policies();
    let gap = authz::without_rule(&identity, "/carehub.identity.v1.IdentityService/GetUser");
    assert_eq!(
        authz::rpcs_without_rule(FILE_DESCRIPTOR_SET, &MOUNTED, &[&gap, &audit]),
        ["/carehub.identity.v1.IdentityService/GetUser"]
    );
    let failed = std::panic::catch_unwind(|| {
        assert_every_rpc_has_a_rule(FILE_DESCRIPTOR_SET, &MOUNTED, &[&gap, &audit])
    });
    assert!(failed.is_err(), "a policy without GetUser passed the check");
}

/// The columns of the matrix.
fn callers() -> Vec<CallerKind> {
    use Whose::{Other, Own};
    vec![
        CallerKind::workload("gateway, no user", "gateway"),
        CallerKind::user("patient", "gateway", PRole::Patient, Own),
        CallerKind::user("patient on another", "gateway", PRole::Patient, Other),
        CallerKind::user("provider", "gateway", PRole::Provider, Own),
        CallerKind::user("provider on another", "gateway", PRole::Provider, Other),
        CallerKind::user("staff", "gateway", PRole::Staff, Own),
        CallerKind::user("staff on another", "gateway", PRole::Staff, Other),
        CallerKind::user("billing", "gateway", PRole::Billing, Own),
        CallerKind::user("billing on another", "gateway", PRole::Billing, Other),
        CallerKind::user("admin", "gateway", PRole::Admin, Own),
        CallerKind::user("admin on another", "gateway", PRole::Admin, Other),
        CallerKind::user("admin through admin-cli", "admin-cli", PRole::Admin, Other),
        CallerKind::workload("records (a service)", "records"),
        CallerKind::workload("messaging (a service)", "messaging"),
        CallerKind::user(
            "unknown workload with an admin",
            "intruder",
            PRole::Admin,
            Own,
        ),
    ]
}

fn public(m: &str) -> String {
    format!("/{PUBLIC}/{m}")
}

fn internal(m: &str) -> String {
    format!("/{INTERNAL}/{m}")
}

fn audit(m: &str) -> String {
    format!("/{AUDIT_LOG}/{m}")
}

/// The table. Columns as in [`callers`]: no user | patient, on another | provider, on another |
/// staff, on another | billing, on another | admin, on another | admin-cli | records | messaging |
/// unknown.
/// `.` allowed, `W` workload not allowed, `R` role not allowed, `T` no (valid) token,
/// `n` allowed but NOT_FOUND (another user's session does not exist for the caller),
/// `-` not applicable (the RPC concerns no other user).
fn matrix() -> Matrix {
    let mut m = Matrix::new(callers()).legend('n', Outcome::Refused(Code::NotFound));
    // Before signing in: the gateway only, with or without a user.
    for rpc in [
        "RegisterPatient",
        "Login",
        "CompleteMfaChallenge",
        "RefreshSession",
        "RequestPasswordReset",
        "ResetPassword",
        "UnlockWithPin",
    ] {
        m = m.row(&public(rpc), ". .- .- .- .- .- W W W W");
    }
    m = m.row(&public("ListSigningKeys"), ". .- .- .- .- .- W . . W");
    // A signed-in user of any role, about themselves (a pending password change allowed for
    // the first three).
    for rpc in [
        "ChangePassword",
        "GetProfile",
        "Logout",
        "SendVerificationCode",
        "VerifyContact",
        "ListSessions",
        "EnrollTotp",
        "ConfirmTotp",
        "DisableTotp",
        "EnrollDevicePin",
        "UpdateProfile",
        "GetConsents",
        "UpdateConsents",
        "GetCommunicationPreferences",
        "UpdateCommunicationPreferences",
    ] {
        m = m.row(&public(rpc), "T .- .- .- .- .- W W W W");
    }
    // Another user's session is not found; another user's account only for staff and admins.
    m = m.row(&public("RevokeSession"), "T .n .n .n .n .n W W W W");
    m = m.row(&public("GetUser"), "T .R .R .. .R .. W W W W");
    // Admin actions: admins through the gateway or the operator CLI.
    m = m.row(&public("CreateUser"), "T R- R- R- R- .- . W W W");
    for rpc in ["SuspendUser", "ReactivateUser", "TerminateUser"] {
        m = m.row(&public(rpc), "T RR RR RR RR .. . W W W");
    }
    // Internal: named services (and the gateway for the keys), never for a user.
    m = m.row(&internal("ListSigningKeys"), ". .- .- .- .- .- W . . W");
    m = m.row(&internal("ListRevocations"), "W W- W- W- W- W- W . . W");
    m = m.row(&internal("LookupUser"), "W WW WW WW WW WW W . . W");
    // Messaging's own: contact data, account actions on abuse reports, SMS keywords.
    for rpc in ["RequestAccountAction", "GetContact", "ApplySmsConsent"] {
        m = m.row(&internal(rpc), "W WW WW WW WW WW W W . W");
    }
    // The audit trail: records and the operator CLI.
    for rpc in ["ListEvents", "VerifyChain"] {
        m = m.row(&audit(rpc), "W W- W- W- W- W- . . W W");
    }
    m
}

#[test]
fn the_matrix_has_a_row_for_every_rpc() {
    let rpcs: Vec<String> = MOUNTED
        .iter()
        .flat_map(|s| rpc_paths(FILE_DESCRIPTOR_SET, s))
        .collect();
    matrix().assert_covers(&rpcs);
}

#[tokio::test]
async fn a_user_of_every_role_signs_in_and_is_that_role() {
    let app = common::spawn().await;
    let users = app.sign_in_every_role("roles").await;
    assert_eq!(users.iter().map(|u| u.role).collect::<Vec<_>>(), PRole::ALL);
    let mut c = app.public("gateway").await;
    for u in &users {
        let me = c
            .get_profile(with_token(
                tonic::Request::new(GetProfileRequest {}),
                &u.token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(me.user_id, u.user_id);
        assert_eq!(me.email, u.email);
        let role = match u.role {
            PRole::Patient => Role::Patient,
            PRole::Provider => Role::Provider,
            PRole::Staff => Role::Staff,
            PRole::Billing => Role::Billing,
            PRole::Admin => Role::Admin,
        };
        assert_eq!(me.roles, [role as i32], "{}", u.role);
    }
    app.shutdown().await;
}

/// The caller's token, when it has a user, and an idempotency key on every call.
struct Meta {
    key: String,
    token: Option<String>,
}

impl Meta {
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let req = with_key(tonic::Request::new(msg), &self.key);
        match &self.token {
            Some(token) => with_token(req, token),
            None => req,
        }
    }
}

/// A user made for one call: the account, its session and access token.
struct Made {
    account: Account,
    session_id: String,
    token: String,
}

async fn make(app: &TestApp, role: PRole, email: String) -> Made {
    let account = app.create_user_with_role(&email, role, PASSWORD).await;
    let (session_id, token) = app.session_token_for(&account).await;
    Made {
        account,
        session_id: session_id.to_string(),
        token,
    }
}

/// Makes one call of the matrix. Every call gets users of its own (the caller and, when it acts
/// on another user or nobody signed in, a patient), so that no call depends on another's
/// effects (a suspension, a logout, a changed password).
async fn call(
    app: &TestApp,
    channels: &HashMap<&'static str, Channel>,
    rpc: &str,
    caller: &CallerKind,
    n: usize,
) -> Result<(), tonic::Status> {
    let me = match caller.user {
        Some(role) => Some(make(app, role, format!("m{n}-{role}@example.org")).await),
        None => None,
    };
    // Whom the request is about: the caller, or a patient of its own.
    let other = match (&me, caller.whose) {
        (Some(_), Whose::Own) => None,
        _ => Some(make(app, PRole::Patient, format!("s{n}@example.org")).await),
    };
    let subject = other.as_ref().or(me.as_ref()).expect("a subject");
    let channel = channels[caller.workload].clone();
    let meta = Meta {
        key: format!("matrix-{n:04}"),
        token: me.as_ref().map(|me| me.token.clone()),
    };
    let subject_id = subject.account.id.to_string();
    let (service, method) = rpc
        .trim_start_matches('/')
        .rsplit_once('/')
        .expect("/service/method");
    let mut c = IdentityServiceClient::new(channel.clone());
    match (service, method) {
        (PUBLIC, "RegisterPatient") => c
            .register_patient(meta.req(patient_request(&format!("r{n}@example.org"), PASSWORD)))
            .await
            .map(drop),
        (PUBLIC, "CreateUser") => c
            .create_user(meta.req(CreateUserRequest {
                email: format!("c{n}@example.org"),
                role: Role::Staff as i32,
                given_name: "Sam".into(),
                family_name: "Staff".into(),
                ..CreateUserRequest::default()
            }))
            .await
            .map(drop),
        (PUBLIC, "SendVerificationCode") => c
            .send_verification_code(meta.req(SendVerificationCodeRequest {
                channel: ContactChannel::Email as i32,
            }))
            .await
            .map(drop),
        (PUBLIC, "VerifyContact") => c
            .verify_contact(meta.req(VerifyContactRequest {
                channel: ContactChannel::Email as i32,
                code: "000000".into(),
            }))
            .await
            .map(drop),
        (PUBLIC, "Login") => c
            .login(meta.req(LoginRequest {
                email: subject.account.email.clone(),
                password: PASSWORD.into(),
            }))
            .await
            .map(drop),
        (PUBLIC, "CompleteMfaChallenge") => c
            .complete_mfa_challenge(meta.req(CompleteMfaChallengeRequest {
                challenge_token: String::new(),
                code: Some(complete_mfa_challenge_request::Code::TotpCode(
                    "000000".into(),
                )),
            }))
            .await
            .map(drop),
        (PUBLIC, "RefreshSession") => {
            let tokens = app.login(&subject.account.email, PASSWORD).await;
            c.refresh_session(meta.req(RefreshSessionRequest {
                refresh_token: tokens.refresh_token,
            }))
            .await
            .map(drop)
        }
        (PUBLIC, "Logout") => c.logout(meta.req(LogoutRequest {})).await.map(drop),
        (PUBLIC, "ListSessions") => c
            .list_sessions(meta.req(ListSessionsRequest { page: None }))
            .await
            .map(drop),
        (PUBLIC, "RevokeSession") => c
            .revoke_session(meta.req(RevokeSessionRequest {
                session_id: subject.session_id.clone(),
            }))
            .await
            .map(drop),
        (PUBLIC, "RequestPasswordReset") => c
            .request_password_reset(meta.req(RequestPasswordResetRequest {
                email: subject.account.email.clone(),
            }))
            .await
            .map(drop),
        (PUBLIC, "ResetPassword") => c
            .reset_password(meta.req(ResetPasswordRequest {
                reset_token: String::new(),
                new_password: "a brand new passphrase 42".into(),
            }))
            .await
            .map(drop),
        (PUBLIC, "ChangePassword") => c
            .change_password(meta.req(ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: "a brand new passphrase 42".into(),
            }))
            .await
            .map(drop),
        (PUBLIC, "EnrollTotp") => c
            .enroll_totp(meta.req(EnrollTotpRequest {}))
            .await
            .map(drop),
        (PUBLIC, "ConfirmTotp") => c
            .confirm_totp(meta.req(ConfirmTotpRequest {
                totp_code: "000000".into(),
            }))
            .await
            .map(drop),
        (PUBLIC, "DisableTotp") => c
            .disable_totp(meta.req(DisableTotpRequest {
                current_password: PASSWORD.into(),
                code: Some(disable_totp_request::Code::TotpCode("000000".into())),
            }))
            .await
            .map(drop),
        (PUBLIC, "EnrollDevicePin") => c
            .enroll_device_pin(meta.req(EnrollDevicePinRequest {
                pin: "482916".into(),
                device_name: "Pixel 9".into(),
            }))
            .await
            .map(drop),
        (PUBLIC, "UnlockWithPin") => {
            let device = app.enroll_device_pin(&subject.token, "482916").await;
            c.unlock_with_pin(meta.req(UnlockWithPinRequest {
                device_id: device.device_id,
                device_secret: device.device_secret,
                pin: "482916".into(),
            }))
            .await
            .map(drop)
        }
        (PUBLIC, "GetProfile") => c
            .get_profile(meta.req(GetProfileRequest {}))
            .await
            .map(drop),
        (PUBLIC, "UpdateProfile") => c
            .update_profile(meta.req(UpdateProfileRequest {
                user: Some(User {
                    given_name: "Pat".into(),
                    ..User::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["given_name".into()],
                }),
            }))
            .await
            .map(drop),
        (PUBLIC, "GetUser") => c
            .get_user(meta.req(GetUserRequest {
                user_id: subject_id,
            }))
            .await
            .map(drop),
        (PUBLIC, "SuspendUser") => c
            .suspend_user(meta.req(SuspendUserRequest {
                user_id: subject_id,
                reason: "authorization matrix".into(),
            }))
            .await
            .map(drop),
        (PUBLIC, "ReactivateUser") => c
            .reactivate_user(meta.req(ReactivateUserRequest {
                user_id: subject_id,
                reason: "authorization matrix".into(),
            }))
            .await
            .map(drop),
        (PUBLIC, "TerminateUser") => c
            .terminate_user(meta.req(TerminateUserRequest {
                user_id: subject_id,
                reason: "authorization matrix".into(),
            }))
            .await
            .map(drop),
        (PUBLIC, "GetConsents") => c
            .get_consents(meta.req(GetConsentsRequest {}))
            .await
            .map(drop),
        (PUBLIC, "UpdateConsents") => c
            .update_consents(meta.req(UpdateConsentsRequest {
                marketing_opt_in: Some(true),
                ..UpdateConsentsRequest::default()
            }))
            .await
            .map(drop),
        (PUBLIC, "GetCommunicationPreferences") => c
            .get_communication_preferences(meta.req(GetCommunicationPreferencesRequest {}))
            .await
            .map(drop),
        (PUBLIC, "UpdateCommunicationPreferences") => c
            .update_communication_preferences(meta.req(UpdateCommunicationPreferencesRequest {
                preferences: Some(CommunicationPreferences {
                    email_notifications: true,
                    ..CommunicationPreferences::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["email_notifications".into()],
                }),
            }))
            .await
            .map(drop),
        (PUBLIC, "ListSigningKeys") => c
            .list_signing_keys(meta.req(ListSigningKeysRequest {}))
            .await
            .map(drop),
        (INTERNAL, m) => {
            let mut c = IdentityInternalClient::new(channel);
            match m {
                "ListSigningKeys" => c
                    .list_signing_keys(meta.req(ListSigningKeysRequest {}))
                    .await
                    .map(drop),
                "ListRevocations" => c
                    .list_revocations(meta.req(ListRevocationsRequest { since: None }))
                    .await
                    .map(drop),
                "LookupUser" => c
                    .lookup_user(meta.req(LookupUserRequest {
                        user_id: subject_id,
                    }))
                    .await
                    .map(drop),
                "RequestAccountAction" => {
                    let staff = make(app, PRole::Staff, format!("rb{n}@example.org")).await;
                    c.request_account_action(meta.req(RequestAccountActionRequest {
                        user_id: subject_id,
                        action: AccountAction::Suspend as i32,
                        requested_by: staff.account.id.to_string(),
                        report_id: uuid::Uuid::now_v7().to_string(),
                    }))
                    .await
                    .map(drop)
                }
                "GetContact" => c
                    .get_contact(meta.req(GetContactRequest {
                        user_id: subject_id,
                    }))
                    .await
                    .map(drop),
                "ApplySmsConsent" => c
                    .apply_sms_consent(meta.req(ApplySmsConsentRequest {
                        phone_number: "+15555550100".into(),
                        sms_allowed: false,
                        change_time: Some(prost_types::Timestamp {
                            seconds: 1_700_000_000,
                            nanos: 0,
                        }),
                    }))
                    .await
                    .map(drop),
                other => panic!("no call for {INTERNAL}/{other}"),
            }
        }
        (AUDIT_LOG, m) => {
            let mut c = AuditLogClient::new(channel);
            match m {
                "ListEvents" => c
                    .list_events(meta.req(ListEventsRequest {
                        filter: Some(list_events_request::Filter::SubjectId(subject_id)),
                        ..ListEventsRequest::default()
                    }))
                    .await
                    .map(drop),
                "VerifyChain" => c
                    .verify_chain(meta.req(VerifyChainRequest::default()))
                    .await
                    .map(drop),
                other => panic!("no call for {AUDIT_LOG}/{other}"),
            }
        }
        (s, m) => panic!("no call for {s}/{m}"),
    }
}

#[tokio::test]
async fn identity_authorization_matrix() {
    let app = common::spawn().await;
    let matrix = matrix();
    let mut channels = HashMap::new();
    for caller in matrix.callers() {
        if !channels.contains_key(caller.workload) {
            channels.insert(caller.workload, app.channel(caller.workload).await);
        }
    }
    let users_before = app.count("users").await;
    let mut n = 0;
    let (app_ref, channels_ref) = (&app, &channels);
    matrix
        .run(|rpc, caller| {
            n += 1;
            let n = n;
            async move { call(app_ref, channels_ref, &rpc, &caller, n).await }
        })
        .await;
    // Every call ran (each made at least one user).
    assert!(app.count("users").await >= users_before + matrix.calls() as i64);
    app.shutdown().await;
}
