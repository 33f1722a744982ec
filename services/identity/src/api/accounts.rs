//! accounts
use carehub_proto::identity::v1::*;
use tonic::{Request, Response, Status};
use crate::AppState;

pub async fn register_patient(_state: &AppState, _req: Request<RegisterPatientRequest>) -> Result<Response<User>, Status> {
    Err(Status::unimplemented("register_patient"))
}

pub async fn create_user(_state: &AppState, _req: Request<CreateUserRequest>) -> Result<Response<CreateUserResponse>, Status> {
    Err(Status::unimplemented("create_user"))
}

pub async fn send_verification_code(_state: &AppState, _req: Request<SendVerificationCodeRequest>) -> Result<Response<SendVerificationCodeResponse>, Status> {
    Err(Status::unimplemented("send_verification_code"))
}

pub async fn verify_contact(_state: &AppState, _req: Request<VerifyContactRequest>) -> Result<Response<User>, Status> {
    Err(Status::unimplemented("verify_contact"))
}

pub async fn get_profile(_state: &AppState, _req: Request<GetProfileRequest>) -> Result<Response<User>, Status> {
    Err(Status::unimplemented("get_profile"))
}

pub async fn update_profile(_state: &AppState, _req: Request<UpdateProfileRequest>) -> Result<Response<User>, Status> {
    Err(Status::unimplemented("update_profile"))
}

pub async fn get_user(_state: &AppState, _req: Request<GetUserRequest>) -> Result<Response<User>, Status> {
    Err(Status::unimplemented("get_user"))
}

pub async fn suspend_user(_state: &AppState, _req: Request<SuspendUserRequest>) -> Result<Response<User>, Status> {
    Err(Status::unimplemented("suspend_user"))
}

pub async fn reactivate_user(_state: &AppState, _req: Request<ReactivateUserRequest>) -> Result<Response<User>, Status> {
    Err(Status::unimplemented("reactivate_user"))
}

pub async fn terminate_user(_state: &AppState, _req: Request<TerminateUserRequest>) -> Result<Response<User>, Status> {
    Err(Status::unimplemented("terminate_user"))
}

pub async fn get_consents(_state: &AppState, _req: Request<GetConsentsRequest>) -> Result<Response<Consents>, Status> {
    Err(Status::unimplemented("get_consents"))
}

pub async fn update_consents(_state: &AppState, _req: Request<UpdateConsentsRequest>) -> Result<Response<Consents>, Status> {
    Err(Status::unimplemented("update_consents"))
}

pub async fn get_communication_preferences(_state: &AppState, _req: Request<GetCommunicationPreferencesRequest>) -> Result<Response<CommunicationPreferences>, Status> {
    Err(Status::unimplemented("get_communication_preferences"))
}

pub async fn update_communication_preferences(_state: &AppState, _req: Request<UpdateCommunicationPreferencesRequest>) -> Result<Response<CommunicationPreferences>, Status> {
    Err(Status::unimplemented("update_communication_preferences"))
}

pub async fn lookup_user(_state: &AppState, _req: Request<LookupUserRequest>) -> Result<Response<UserSummary>, Status> {
    Err(Status::unimplemented("lookup_user"))
}
