//! Access tokens: issuing, verifying (for identity's own RPCs) and publishing keys as JWKS.
//! Owned by the sessions work; this stub keeps the crate compiling until it lands.

use std::sync::Arc;

use carehub_platform::auth::{TokenVerifier, UserCaller};
use tonic::Status;

use crate::AppState;

pub struct LocalVerifier {
    #[allow(dead_code)]
    state: Arc<AppState>,
}

impl LocalVerifier {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

#[async_trait::async_trait]
impl TokenVerifier for LocalVerifier {
    async fn verify(&self, _token: &str) -> Result<UserCaller, Status> {
        Err(Status::unimplemented("token verification"))
    }
}

pub fn jwks_router(_state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
}
