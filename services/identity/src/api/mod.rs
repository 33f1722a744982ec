//! The gRPC surface of identity: proto <-> domain, authorization, idempotency. No SQL here.
//!
//! The generated service traits are implemented once, below, by delegating each RPC to the
//! module that owns it:
//! - accounts: `registration` (self-registration, contact verification codes), `profile` (own
//!   profile, consents, communication preferences), `admin` (admin-created users, reading any
//!   account, suspension/reactivation/termination); `accounts` holds what they share;
//! - credentials: `login` (password login, throttling, lockout, device PINs), `mfa` (TOTP,
//!   recovery codes, the login challenge), `password` (reset, change), `sessions` (opening,
//!   refresh, logout, listing, revocation); `credentials` holds what they share;
//! - `internal`: what other services ask for (signing keys, revocations, user lookup).
//!
//! `policy` says who may call what; `convert` holds shared proto encodings.
//!
//! RPCs whose answer carries a secret (tokens, TOTP secrets, recovery codes, device secrets) run
//! in a plain transaction: an idempotency record would keep that secret in clear. The other
//! mutating RPCs go through `idempotency::run`.

pub mod accounts;
pub mod admin;
pub mod convert;
pub mod credentials;
pub mod internal;
pub mod login;
pub mod mfa;
pub mod password;
pub mod policy;
pub mod profile;
pub mod registration;
pub(crate) mod security;
pub mod sessions;

use std::sync::Arc;

use carehub_proto::identity::v1::identity_internal_server::IdentityInternal;
use carehub_proto::identity::v1::identity_service_server::IdentityService;
use carehub_proto::identity::v1::*;
use tonic::{Request, Response, Status};

use crate::AppState;

/// Idempotency scope of an IdentityService RPC: its gRPC path.
fn scope(method: &str) -> String {
    format!("/carehub.identity.v1.IdentityService/{method}")
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
        registration::register_patient(&self.state, req).await
    }
    async fn create_user(
        &self,
        req: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        admin::create_user(&self.state, req).await
    }
    async fn send_verification_code(
        &self,
        req: Request<SendVerificationCodeRequest>,
    ) -> Result<Response<SendVerificationCodeResponse>, Status> {
        registration::send_verification_code(&self.state, req).await
    }
    async fn verify_contact(
        &self,
        req: Request<VerifyContactRequest>,
    ) -> Result<Response<User>, Status> {
        registration::verify_contact(&self.state, req).await
    }
    async fn get_profile(&self, req: Request<GetProfileRequest>) -> Result<Response<User>, Status> {
        profile::get_profile(&self.state, req).await
    }
    async fn update_profile(
        &self,
        req: Request<UpdateProfileRequest>,
    ) -> Result<Response<User>, Status> {
        profile::update_profile(&self.state, req).await
    }
    async fn get_user(&self, req: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        admin::get_user(&self.state, req).await
    }
    async fn suspend_user(
        &self,
        req: Request<SuspendUserRequest>,
    ) -> Result<Response<User>, Status> {
        admin::suspend_user(&self.state, req).await
    }
    async fn reactivate_user(
        &self,
        req: Request<ReactivateUserRequest>,
    ) -> Result<Response<User>, Status> {
        admin::reactivate_user(&self.state, req).await
    }
    async fn terminate_user(
        &self,
        req: Request<TerminateUserRequest>,
    ) -> Result<Response<User>, Status> {
        admin::terminate_user(&self.state, req).await
    }
    async fn get_consents(
        &self,
        req: Request<GetConsentsRequest>,
    ) -> Result<Response<Consents>, Status> {
        profile::get_consents(&self.state, req).await
    }
    async fn update_consents(
        &self,
        req: Request<UpdateConsentsRequest>,
    ) -> Result<Response<Consents>, Status> {
        profile::update_consents(&self.state, req).await
    }
    async fn get_communication_preferences(
        &self,
        req: Request<GetCommunicationPreferencesRequest>,
    ) -> Result<Response<CommunicationPreferences>, Status> {
        profile::get_communication_preferences(&self.state, req).await
    }
    async fn update_communication_preferences(
        &self,
        req: Request<UpdateCommunicationPreferencesRequest>,
    ) -> Result<Response<CommunicationPreferences>, Status> {
        profile::update_communication_preferences(&self.state, req).await
    }
    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        login::login(&self.state, req).await
    }
    async fn complete_mfa_challenge(
        &self,
        req: Request<CompleteMfaChallengeRequest>,
    ) -> Result<Response<AuthTokens>, Status> {
        mfa::complete_mfa_challenge(&self.state, req).await
    }
    async fn refresh_session(
        &self,
        req: Request<RefreshSessionRequest>,
    ) -> Result<Response<AuthTokens>, Status> {
        sessions::refresh_session(&self.state, req).await
    }
    async fn logout(&self, req: Request<LogoutRequest>) -> Result<Response<()>, Status> {
        sessions::logout(&self.state, req).await
    }
    async fn list_sessions(
        &self,
        req: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        sessions::list_sessions(&self.state, req).await
    }
    async fn revoke_session(
        &self,
        req: Request<RevokeSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        sessions::revoke_session(&self.state, req).await
    }
    async fn request_password_reset(
        &self,
        req: Request<RequestPasswordResetRequest>,
    ) -> Result<Response<()>, Status> {
        password::request_password_reset(&self.state, req).await
    }
    async fn reset_password(
        &self,
        req: Request<ResetPasswordRequest>,
    ) -> Result<Response<()>, Status> {
        password::reset_password(&self.state, req).await
    }
    async fn change_password(
        &self,
        req: Request<ChangePasswordRequest>,
    ) -> Result<Response<()>, Status> {
        password::change_password(&self.state, req).await
    }
    async fn enroll_totp(
        &self,
        req: Request<EnrollTotpRequest>,
    ) -> Result<Response<EnrollTotpResponse>, Status> {
        mfa::enroll_totp(&self.state, req).await
    }
    async fn confirm_totp(
        &self,
        req: Request<ConfirmTotpRequest>,
    ) -> Result<Response<ConfirmTotpResponse>, Status> {
        mfa::confirm_totp(&self.state, req).await
    }
    async fn disable_totp(&self, req: Request<DisableTotpRequest>) -> Result<Response<()>, Status> {
        mfa::disable_totp(&self.state, req).await
    }
    async fn enroll_device_pin(
        &self,
        req: Request<EnrollDevicePinRequest>,
    ) -> Result<Response<EnrollDevicePinResponse>, Status> {
        login::enroll_device_pin(&self.state, req).await
    }
    async fn unlock_with_pin(
        &self,
        req: Request<UnlockWithPinRequest>,
    ) -> Result<Response<AuthTokens>, Status> {
        login::unlock_with_pin(&self.state, req).await
    }
    async fn list_signing_keys(
        &self,
        req: Request<ListSigningKeysRequest>,
    ) -> Result<Response<ListSigningKeysResponse>, Status> {
        internal::list_signing_keys(&self.state, req).await
    }
}

#[tonic::async_trait]
impl IdentityInternal for IdentityApi {
    async fn list_signing_keys(
        &self,
        req: Request<ListSigningKeysRequest>,
    ) -> Result<Response<ListSigningKeysResponse>, Status> {
        internal::list_signing_keys(&self.state, req).await
    }
    async fn list_revocations(
        &self,
        req: Request<ListRevocationsRequest>,
    ) -> Result<Response<ListRevocationsResponse>, Status> {
        internal::list_revocations(&self.state, req).await
    }
    async fn lookup_user(
        &self,
        req: Request<LookupUserRequest>,
    ) -> Result<Response<UserSummary>, Status> {
        internal::lookup_user(&self.state, req).await
    }
}
