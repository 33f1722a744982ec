//! Errors of the Vault connection, mapped from `vaultrs`'s: each names the Vault path and none
//! carries a secret value.

use vaultrs::error::ClientError;

/// What went wrong talking to Vault. Messages name the path and never carry secret values.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("vault: permission denied on `{path}` (check the service's Vault policy)")]
    Denied { path: String },
    #[error("vault: nothing at `{path}`")]
    NotFound { path: String },
    #[error("vault is sealed")]
    Sealed,
    #[error("vault: check-and-set conflict writing `{path}` (someone else changed it)")]
    CasConflict { path: String },
    #[error("vault: login at `auth/{mount}` failed: {reason}")]
    Login { mount: String, reason: String },
    #[error("vault: `{path}` answered HTTP {code}: {}", .errors.join("; "))]
    Api {
        path: String,
        code: u16,
        errors: Vec<String>,
    },
    #[error("vault unreachable at `{path}`: {reason}")]
    Unreachable { path: String, reason: String },
    #[error("vault configuration: {0}")]
    Config(String),
    #[error("vault: unexpected answer from `{path}`: {reason}")]
    Malformed { path: String, reason: String },
}

impl VaultError {
    pub(crate) fn from_client(path: &str, err: ClientError) -> Self {
        let path = path.to_owned();
        match err {
            ClientError::APIError { code: 403, .. } => VaultError::Denied { path },
            ClientError::APIError { code: 404, .. } => VaultError::NotFound { path },
            ClientError::APIError { code: 503, errors }
                if errors.iter().any(|e| e.contains("sealed")) =>
            {
                VaultError::Sealed
            }
            ClientError::APIError { code: 400, errors }
                if errors.iter().any(|e| e.contains("check-and-set")) =>
            {
                VaultError::CasConflict { path }
            }
            ClientError::APIError { code, errors } => VaultError::Api { path, code, errors },
            ClientError::ResponseDataEmptyError | ClientError::ResponseEmptyError => {
                VaultError::NotFound { path }
            }
            ClientError::JsonParseError { source } => VaultError::Malformed {
                path,
                reason: source.to_string(),
            },
            // Connection refused, timeouts, and non-JSON error pages (a proxy in front of Vault).
            ClientError::RestClientError { source } => VaultError::Unreachable {
                path,
                reason: error_chain(&source),
            },
            other => VaultError::Unreachable {
                path,
                reason: error_chain(&other),
            },
        }
    }

    /// True when retrying later may help (Vault down, sealed, slow); false for answers that
    /// will not change by themselves (denied, missing, malformed).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            VaultError::Sealed
                | VaultError::Unreachable { .. }
                | VaultError::Api { code: 500.., .. }
        )
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
