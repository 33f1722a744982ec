//! sessions
use carehub_proto::identity::v1::*;
use tonic::{Request, Response, Status};
use crate::AppState;

pub async fn login(_state: &AppState, _req: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
    Err(Status::unimplemented("login"))
}

pub async fn complete_mfa_challenge(_state: &AppState, _req: Request<CompleteMfaChallengeRequest>) -> Result<Response<AuthTokens>, Status> {
    Err(Status::unimplemented("complete_mfa_challenge"))
}

pub async fn refresh_session(_state: &AppState, _req: Request<RefreshSessionRequest>) -> Result<Response<AuthTokens>, Status> {
    Err(Status::unimplemented("refresh_session"))
}

pub async fn logout(_state: &AppState, _req: Request<LogoutRequest>) -> Result<Response<()>, Status> {
    Err(Status::unimplemented("logout"))
}

pub async fn list_sessions(_state: &AppState, _req: Request<ListSessionsRequest>) -> Result<Response<ListSessionsResponse>, Status> {
    Err(Status::unimplemented("list_sessions"))
}

pub async fn revoke_session(_state: &AppState, _req: Request<RevokeSessionRequest>) -> Result<Response<Session>, Status> {
    Err(Status::unimplemented("revoke_session"))
}

pub async fn request_password_reset(_state: &AppState, _req: Request<RequestPasswordResetRequest>) -> Result<Response<()>, Status> {
    Err(Status::unimplemented("request_password_reset"))
}

pub async fn reset_password(_state: &AppState, _req: Request<ResetPasswordRequest>) -> Result<Response<()>, Status> {
    Err(Status::unimplemented("reset_password"))
}

pub async fn change_password(_state: &AppState, _req: Request<ChangePasswordRequest>) -> Result<Response<()>, Status> {
    Err(Status::unimplemented("change_password"))
}

pub async fn enroll_totp(_state: &AppState, _req: Request<EnrollTotpRequest>) -> Result<Response<EnrollTotpResponse>, Status> {
    Err(Status::unimplemented("enroll_totp"))
}

pub async fn confirm_totp(_state: &AppState, _req: Request<ConfirmTotpRequest>) -> Result<Response<ConfirmTotpResponse>, Status> {
    Err(Status::unimplemented("confirm_totp"))
}

pub async fn disable_totp(_state: &AppState, _req: Request<DisableTotpRequest>) -> Result<Response<()>, Status> {
    Err(Status::unimplemented("disable_totp"))
}

pub async fn enroll_device_pin(_state: &AppState, _req: Request<EnrollDevicePinRequest>) -> Result<Response<EnrollDevicePinResponse>, Status> {
    Err(Status::unimplemented("enroll_device_pin"))
}

pub async fn unlock_with_pin(_state: &AppState, _req: Request<UnlockWithPinRequest>) -> Result<Response<AuthTokens>, Status> {
    Err(Status::unimplemented("unlock_with_pin"))
}

pub async fn list_signing_keys(_state: &AppState, _req: Request<ListSigningKeysRequest>) -> Result<Response<ListSigningKeysResponse>, Status> {
    Err(Status::unimplemented("list_signing_keys"))
}

pub async fn list_revocations(_state: &AppState, _req: Request<ListRevocationsRequest>) -> Result<Response<ListRevocationsResponse>, Status> {
    Err(Status::unimplemented("list_revocations"))
}
