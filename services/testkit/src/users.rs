//! Signed-in users: tokens come from identity (its public API through the gateway), whatever
//! service is under test.

use carehub_platform::auth::Role;
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::{login_response, AuthTokens, LoginRequest};

/// Every role, in the order the kit signs them in.
pub const ROLES: [Role; 5] = Role::ALL;

/// A user signed in for a test.
#[derive(Clone, Debug)]
pub struct SignedIn {
    pub role: Role,
    pub user_id: String,
    pub email: String,
    /// The access token (`authorization: Bearer <token>`).
    pub token: String,
}

/// Logs in through identity's `Login` on `channel` (an mTLS channel as the gateway); panics
/// unless tokens come back (a user with MFA gets a challenge instead).
pub async fn login<T>(channel: T, email: &str, password: &str) -> AuthTokens
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let resp = IdentityServiceClient::new(channel)
        .login(LoginRequest {
            email: email.to_owned(),
            password: password.to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("Login of {email}: {e:?}"))
        .into_inner();
    match resp.result {
        Some(login_response::Result::Tokens(t)) => t,
        other => panic!("login of {email} did not return tokens: {other:?}"),
    }
}

/// Signs in one user of each role: `create(role, email)` makes the account (with
/// [`crate::PASSWORD`]) and answers its id; `sign_in(email)` answers an access token.
pub async fn sign_in_every_role<C, CF, S, SF>(tag: &str, create: C, sign_in: S) -> Vec<SignedIn>
where
    C: Fn(Role, String) -> CF,
    CF: std::future::Future<Output = String>,
    S: Fn(String) -> SF,
    SF: std::future::Future<Output = String>,
{
    let mut out = Vec::new();
    for role in ROLES {
        let email = format!("{tag}-{role}@example.org");
        let user_id = create(role, email.clone()).await;
        let token = sign_in(email.clone()).await;
        out.push(SignedIn {
            role,
            user_id,
            email,
            token,
        });
    }
    out
}
