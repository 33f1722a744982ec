//! The gRPC surface of identity: proto <-> domain, authorization, idempotency. No SQL here.
//!
//! The generated service traits are implemented once, below: each RPC gets its per-call context
//! ([`Call`]), runs its handler, and the handler's [`IdentityError`] becomes a `tonic::Status`
//! here and nowhere else. The handlers live in the module that owns them:
//! - accounts: `registration` (self-registration, contact verification codes), `profile` (own
//!   profile, consents, communication preferences), `admin` (admin-created users, reading any
//!   account, suspension/reactivation/termination); `accounts` holds what they share;
//! - credentials: `login` (password login, throttling, lockout, device PINs), `mfa` (TOTP,
//!   recovery codes, the login challenge), `password` (reset, change), `sessions` (opening,
//!   refresh, logout, listing, revocation); `credentials` holds what they share;
//! - `internal`: what other services ask for (signing keys, revocations, user lookup);
//!   `messaging`: what only messaging asks for (account actions on abuse reports, contact data
//!   for notifications, SMS keywords from its consent ledger).
//!
//! `policy` says who may call what; `convert` holds shared proto encodings; `kinds` is
//! identity's audit vocabulary and `security` builds its security events.
//!
//! Every handler has one shape: `(state, call, request) -> Result<answer, IdentityError>`.
//! Mutating RPCs go through [`Call::mutate`] (change, audit events and stored answer in one
//! transaction; retries replay), or [`Call::mutate_secret`] when the answer carries a secret
//! (tokens, TOTP secrets, recovery codes, device secrets: an idempotency record would keep it in
//! clear). Reading RPCs that return personal data answer through [`Call::read`], which records
//! the read first. Login, refresh, MFA completion and PIN unlock commit attempt counters and
//! failure events even when they refuse, so they run their own transactions.

pub mod accounts;
pub mod admin;
pub mod convert;
pub mod credentials;
pub mod internal;
pub mod kinds;
pub mod login;
pub mod messaging;
pub mod mfa;
pub mod password;
pub mod policy;
pub mod profile;
pub mod registration;
pub(crate) mod security;
pub mod sessions;

use std::sync::Arc;

use carehub_platform::call::{Audited, Call};
use carehub_proto::identity::v1::identity_internal_server::IdentityInternal;
use carehub_proto::identity::v1::identity_service_server::IdentityService;
use carehub_proto::identity::v1::*;
use tonic::{Request, Response, Status};

use crate::error::IdentityError;
use crate::AppState;

// The RPCs whose successful answers may leave no audit event, and why. Every other RPC is
// `Audited::Always`: it returns or changes personal data.
const REFRESH: Audited = Audited::Exempt(
    "rotates the refresh token of a session whose opening was audited; reuse is audited",
);
const RESET_REQUEST: Audited = Audited::Exempt(
    "answers nothing; a token sent to an existing account is audited in its transaction",
);
const PUBLIC_KEYS: Audited = Audited::Exempt("public signing keys only");
const REVOCATIONS: Audited = Audited::Exempt("session and user ids with instants only");
const SMS_CONSENT: Audited = Audited::Exempt(
    "answers only the ids of the accounts it changed, each change audited; a number no verified \
     account holds, or an older keyword, changes nothing",
);

/// Runs `$handler` for the call `$req`: builds the call's context (the RPC's path comes from
/// the request), decodes the request, refuses an answer that `$audited` says must be audited
/// but was not, and maps the handler's error to a `Status` (the one place identity does).
macro_rules! rpc {
    ($self:ident, $req:ident, $audited:expr, $handler:path) => {{
        let call = Call::new(&$req)?;
        let answer: Result<_, IdentityError> =
            $handler(&$self.state, &call, $req.into_inner()).await;
        call.check_audited($audited, answer)
            .map(Response::new)
            .map_err(Status::from)
    }};
}

/// Implements both generated services over the shared state.
#[derive(Clone)]
pub struct IdentityApi {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    async fn register_patient(
        &self,
        req: Request<RegisterPatientRequest>,
    ) -> Result<Response<User>, Status> {
        rpc!(self, req, Audited::Always, registration::register_patient)
    }
    async fn create_user(
        &self,
        req: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        rpc!(self, req, Audited::Always, admin::create_user)
    }
    async fn send_verification_code(
        &self,
        req: Request<SendVerificationCodeRequest>,
    ) -> Result<Response<SendVerificationCodeResponse>, Status> {
        rpc!(
            self,
            req,
            Audited::Always,
            registration::send_verification_code
        )
    }
    async fn verify_contact(
        &self,
        req: Request<VerifyContactRequest>,
    ) -> Result<Response<User>, Status> {
        rpc!(self, req, Audited::Always, registration::verify_contact)
    }
    async fn get_profile(&self, req: Request<GetProfileRequest>) -> Result<Response<User>, Status> {
        rpc!(self, req, Audited::Always, profile::get_profile)
    }
    async fn update_profile(
        &self,
        req: Request<UpdateProfileRequest>,
    ) -> Result<Response<User>, Status> {
        rpc!(self, req, Audited::Always, profile::update_profile)
    }
    async fn get_user(&self, req: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        rpc!(self, req, Audited::Always, admin::get_user)
    }
    async fn suspend_user(
        &self,
        req: Request<SuspendUserRequest>,
    ) -> Result<Response<User>, Status> {
        rpc!(self, req, Audited::Always, admin::suspend_user)
    }
    async fn reactivate_user(
        &self,
        req: Request<ReactivateUserRequest>,
    ) -> Result<Response<User>, Status> {
        rpc!(self, req, Audited::Always, admin::reactivate_user)
    }
    async fn terminate_user(
        &self,
        req: Request<TerminateUserRequest>,
    ) -> Result<Response<User>, Status> {
        rpc!(self, req, Audited::Always, admin::terminate_user)
    }
    async fn get_consents(
        &self,
        req: Request<GetConsentsRequest>,
    ) -> Result<Response<Consents>, Status> {
        rpc!(self, req, Audited::Always, profile::get_consents)
    }
    async fn update_consents(
        &self,
        req: Request<UpdateConsentsRequest>,
    ) -> Result<Response<Consents>, Status> {
        rpc!(self, req, Audited::Always, profile::update_consents)
    }
    async fn get_communication_preferences(
        &self,
        req: Request<GetCommunicationPreferencesRequest>,
    ) -> Result<Response<CommunicationPreferences>, Status> {
        rpc!(
            self,
            req,
            Audited::Always,
            profile::get_communication_preferences
        )
    }
    async fn update_communication_preferences(
        &self,
        req: Request<UpdateCommunicationPreferencesRequest>,
    ) -> Result<Response<CommunicationPreferences>, Status> {
        rpc!(
            self,
            req,
            Audited::Always,
            profile::update_communication_preferences
        )
    }
    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        rpc!(self, req, Audited::Always, login::login)
    }
    async fn complete_mfa_challenge(
        &self,
        req: Request<CompleteMfaChallengeRequest>,
    ) -> Result<Response<AuthTokens>, Status> {
        rpc!(self, req, Audited::Always, mfa::complete_mfa_challenge)
    }
    async fn refresh_session(
        &self,
        req: Request<RefreshSessionRequest>,
    ) -> Result<Response<AuthTokens>, Status> {
        rpc!(self, req, REFRESH, sessions::refresh_session)
    }
    async fn logout(&self, req: Request<LogoutRequest>) -> Result<Response<()>, Status> {
        rpc!(self, req, Audited::Always, sessions::logout)
    }
    async fn list_sessions(
        &self,
        req: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        rpc!(self, req, Audited::Always, sessions::list_sessions)
    }
    async fn revoke_session(
        &self,
        req: Request<RevokeSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        rpc!(self, req, Audited::Always, sessions::revoke_session)
    }
    async fn request_password_reset(
        &self,
        req: Request<RequestPasswordResetRequest>,
    ) -> Result<Response<()>, Status> {
        rpc!(self, req, RESET_REQUEST, password::request_password_reset)
    }
    async fn reset_password(
        &self,
        req: Request<ResetPasswordRequest>,
    ) -> Result<Response<()>, Status> {
        rpc!(self, req, Audited::Always, password::reset_password)
    }
    async fn change_password(
        &self,
        req: Request<ChangePasswordRequest>,
    ) -> Result<Response<()>, Status> {
        rpc!(self, req, Audited::Always, password::change_password)
    }
    async fn enroll_totp(
        &self,
        req: Request<EnrollTotpRequest>,
    ) -> Result<Response<EnrollTotpResponse>, Status> {
        rpc!(self, req, Audited::Always, mfa::enroll_totp)
    }
    async fn confirm_totp(
        &self,
        req: Request<ConfirmTotpRequest>,
    ) -> Result<Response<ConfirmTotpResponse>, Status> {
        rpc!(self, req, Audited::Always, mfa::confirm_totp)
    }
    async fn disable_totp(&self, req: Request<DisableTotpRequest>) -> Result<Response<()>, Status> {
        rpc!(self, req, Audited::Always, mfa::disable_totp)
    }
    async fn enroll_device_pin(
        &self,
        req: Request<EnrollDevicePinRequest>,
    ) -> Result<Response<EnrollDevicePinResponse>, Status> {
        rpc!(self, req, Audited::Always, login::enroll_device_pin)
    }
    async fn unlock_with_pin(
        &self,
        req: Request<UnlockWithPinRequest>,
    ) -> Result<Response<AuthTokens>, Status> {
        rpc!(self, req, Audited::Always, login::unlock_with_pin)
    }
    async fn list_signing_keys(
        &self,
        req: Request<ListSigningKeysRequest>,
    ) -> Result<Response<ListSigningKeysResponse>, Status> {
        rpc!(self, req, PUBLIC_KEYS, internal::list_signing_keys)
    }
}

#[tonic::async_trait]
impl IdentityInternal for IdentityApi {
    async fn list_signing_keys(
        &self,
        req: Request<ListSigningKeysRequest>,
    ) -> Result<Response<ListSigningKeysResponse>, Status> {
        rpc!(self, req, PUBLIC_KEYS, internal::list_signing_keys)
    }
    async fn list_revocations(
        &self,
        req: Request<ListRevocationsRequest>,
    ) -> Result<Response<ListRevocationsResponse>, Status> {
        rpc!(self, req, REVOCATIONS, internal::list_revocations)
    }
    async fn lookup_user(
        &self,
        req: Request<LookupUserRequest>,
    ) -> Result<Response<UserSummary>, Status> {
        rpc!(self, req, Audited::Always, internal::lookup_user)
    }
    async fn request_account_action(
        &self,
        req: Request<RequestAccountActionRequest>,
    ) -> Result<Response<UserSummary>, Status> {
        rpc!(
            self,
            req,
            Audited::Always,
            messaging::request_account_action
        )
    }
    async fn get_contact(
        &self,
        req: Request<GetContactRequest>,
    ) -> Result<Response<Contact>, Status> {
        rpc!(self, req, Audited::Always, messaging::get_contact)
    }
    async fn apply_sms_consent(
        &self,
        req: Request<ApplySmsConsentRequest>,
    ) -> Result<Response<ApplySmsConsentResponse>, Status> {
        rpc!(self, req, SMS_CONSENT, messaging::apply_sms_consent)
    }
}
