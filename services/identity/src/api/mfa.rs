//! MFA: TOTP enrollment, confirmation (which hands out recovery codes) and disabling, and the
//! challenge that completes a login of an account with TOTP.

use carehub_platform::audit::Outcome;
use carehub_platform::call::{Call, Change};
use carehub_platform::errors::FieldViolations;
use carehub_proto::common::v1::ErrorReason;
use carehub_proto::identity::v1::*;
use chrono::Utc;
use uuid::Uuid;

use super::credentials::{
    check_own_password, check_secret, check_token, confirm_checked_password, is_active,
    lock_own_credentials, PASSWORD_MAX,
};
use super::sessions::open_session;
use super::{kinds, security};
use crate::domain::{tokens, totp};
use crate::error::{IdentityError, Result};
use crate::store::sessions as store;
use crate::AppState;

/// Wrong codes an MFA challenge survives.
const MFA_MAX_ATTEMPTS: i32 = 5;

fn check_totp_code(v: &mut FieldViolations, field: &str, value: &str) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if !totp::is_code_format(value) {
        v.add(field, "must be exactly 6 digits");
    }
}

fn check_recovery_code(v: &mut FieldViolations, field: &str, value: &str) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if value.len() > 64 || tokens::normalize_recovery_code(value).is_none() {
        v.add(field, "is not a recovery code (xxxxx-xxxxx)");
    }
}

fn conflict(kind: &'static str, user_id: Uuid, description: &str) -> IdentityError {
    IdentityError::Conflict {
        kind,
        subject: user_id.to_string(),
        description: description.to_owned(),
    }
}

/// The second factor of a login. Its own transaction: the attempt is counted, and a wrong
/// code recorded with it, even when the call is refused.
pub async fn complete_mfa_challenge(
    state: &AppState,
    call: &Call,
    r: CompleteMfaChallengeRequest,
) -> Result<AuthTokens> {
    use complete_mfa_challenge_request::Code;
    let caller = &call.caller;
    let mut v = FieldViolations::new();
    check_token(&mut v, "challenge_token", &r.challenge_token);
    match &r.code {
        None => v.add("totp_code", "a totp_code or a recovery_code is required"),
        Some(Code::TotpCode(c)) => check_totp_code(&mut v, "totp_code", c),
        Some(Code::RecoveryCode(c)) => check_recovery_code(&mut v, "recovery_code", c),
    }
    v.finish()?;
    let Some(code) = r.code else {
        return Err(IdentityError::Internal("validated code missing".into()));
    };
    let challenge_hash = tokens::hash(&r.challenge_token);
    let invalid = IdentityError::CodeInvalid {
        field: "challenge_token",
    };

    // The attempt is counted, its code checked and a wrong code recorded in one transaction
    // (the check is cheap: the challenge row stays locked only while it runs, and concurrent
    // attempts on one challenge take turns): a counted failure is always audited, and an
    // audited one always counted. An attempt refused before its code is checked (account
    // disabled, TOTP gone, challenge used meanwhile) is rolled back: no code was tried.
    let mut tx = state.pool.begin().await?;
    let Some(challenge) =
        store::attempt_mfa_challenge(&mut tx, &challenge_hash, MFA_MAX_ATTEMPTS).await?
    else {
        return Err(invalid);
    };
    let Some(cred) = store::credentials_by_id(&mut tx, challenge.user_id, false).await? else {
        return Err(invalid);
    };
    if !is_active(&cred) {
        return Err(IdentityError::AccountDisabled);
    }
    let Some(secret) = cred.totp_secret.clone() else {
        return Err(invalid);
    };

    let second_factor: Result<[&str; 2]> = async {
        Ok(match &code {
            Code::TotpCode(c) => {
                let step = totp::verify(&secret, c, Utc::now().timestamp(), cred.totp_last_step)
                    .ok_or(IdentityError::MfaCodeWrong)?;
                if !store::advance_totp_step(&mut tx, cred.id, step).await? {
                    return Err(IdentityError::MfaCodeWrong);
                }
                ["pwd", "otp"]
            }
            Code::RecoveryCode(c) => {
                let hash = tokens::hash_recovery_code(c).ok_or(IdentityError::MfaCodeWrong)?;
                if !store::use_recovery_code(&mut tx, cred.id, &hash).await? {
                    return Err(IdentityError::MfaCodeWrong);
                }
                ["pwd", "rc"]
            }
        })
    }
    .await;
    let amr = match second_factor {
        Ok(amr) => amr,
        Err(IdentityError::MfaCodeWrong) => {
            // A wrong code changed nothing but the attempt count: count and event commit
            // together.
            let event = security::account(caller, kinds::LOGIN_MFA, cred.id);
            let event = security::failed(event, Outcome::MinorFailure, ErrorReason::MfaRequired);
            security::record(&mut tx, event).await?;
            tx.commit().await?;
            return Err(IdentityError::MfaCodeWrong);
        }
        // The check could not run (a database error): rolled back, neither counted nor audited.
        Err(e) => return Err(e),
    };
    if !store::consume_mfa_challenge(&mut tx, &challenge_hash).await? {
        return Err(invalid);
    }
    let tokens = open_session(state, &mut tx, &cred, &amr, caller, None).await?;
    tx.commit().await?;
    // The session's opening was recorded in that transaction.
    call.mark_audited();
    tracing::info!(user_id = %challenge.user_id, attempts = challenge.attempts, "mfa challenge completed");
    Ok(tokens)
}

// ---------------------------------------------------------------------------------------------
// TOTP

/// The answer carries the TOTP secret: never stored for replay.
pub async fn enroll_totp(
    state: &AppState,
    call: &Call,
    _r: EnrollTotpRequest,
) -> Result<EnrollTotpResponse> {
    let user_id = call.user()?.user_id;
    let event = security::account(&call.caller, kinds::MFA_ENROLL, user_id);
    call.mutate_secret(&state.pool, async |tx| {
        let cred = lock_own_credentials(tx, user_id).await?;
        if cred.totp_secret.is_some() {
            return Err(conflict(
                "MFA_ENABLED",
                user_id,
                "TOTP is already enabled; disable it first",
            ));
        }
        let secret = totp::generate_secret();
        store::set_pending_totp(tx, user_id, &secret).await?;
        let answer = EnrollTotpResponse {
            secret: totp::encode_secret(&secret),
            otpauth_uri: totp::otpauth_uri(&secret, &user_id.to_string()),
        };
        Ok(Change::new(answer, event))
    })
    .await
}

/// The answer carries the recovery codes: never stored for replay.
pub async fn confirm_totp(
    state: &AppState,
    call: &Call,
    r: ConfirmTotpRequest,
) -> Result<ConfirmTotpResponse> {
    let user_id = call.user()?.user_id;
    let mut v = FieldViolations::new();
    check_totp_code(&mut v, "totp_code", &r.totp_code);
    v.finish()?;
    let event = security::account(&call.caller, kinds::MFA_ENABLE, user_id);
    let answer = call
        .mutate_secret(&state.pool, async |tx| {
            let cred = lock_own_credentials(tx, user_id).await?;
            let Some(pending) = cred.totp_pending_secret else {
                return Err(conflict(
                    "TOTP_NOT_ENROLLED",
                    user_id,
                    "call EnrollTotp first",
                ));
            };
            let step = totp::verify(&pending, &r.totp_code, Utc::now().timestamp(), None)
                .ok_or(IdentityError::CodeInvalid { field: "totp_code" })?;
            if !store::activate_totp(tx, user_id, step).await? {
                return Err(conflict(
                    "TOTP_NOT_ENROLLED",
                    user_id,
                    "call EnrollTotp first",
                ));
            }
            let codes: Vec<String> = (0..tokens::RECOVERY_CODE_COUNT)
                .map(|_| tokens::new_recovery_code())
                .collect();
            let hashes: Vec<Vec<u8>> = codes
                .iter()
                .filter_map(|c| tokens::hash_recovery_code(c))
                .collect();
            store::replace_recovery_codes(tx, user_id, &hashes).await?;
            let answer = ConfirmTotpResponse {
                recovery_codes: codes,
            };
            Ok(Change::new(answer, event))
        })
        .await?;
    tracing::info!(user_id = %user_id, "totp enabled");
    Ok(answer)
}

pub async fn disable_totp(state: &AppState, call: &Call, r: DisableTotpRequest) -> Result<()> {
    use disable_totp_request::Code;
    let user = call.user()?;
    call.idempotency_key()?;
    let mut v = FieldViolations::new();
    check_secret(
        &mut v,
        "current_password",
        &r.current_password,
        PASSWORD_MAX,
    );
    match &r.code {
        None => v.add("totp_code", "a totp_code or a recovery_code is required"),
        Some(Code::TotpCode(c)) => check_totp_code(&mut v, "totp_code", c),
        Some(Code::RecoveryCode(c)) => check_recovery_code(&mut v, "recovery_code", c),
    }
    v.finish()?;
    let Some(code) = r.code.clone() else {
        return Err(IdentityError::Internal("validated code missing".into()));
    };
    let user_id = user.user_id;
    // argon2 before the transaction: no connection is held while it runs.
    let permit = state.hasher.admit()?;
    let checked =
        check_own_password(&state.pool, &permit, user_id, r.current_password.clone()).await?;
    drop(permit);
    let event = security::account(&call.caller, kinds::MFA_DISABLE, user_id);
    call.mutate(&state.idempotency, &r, async |conn| {
        let cred = lock_own_credentials(conn, user_id).await?;
        let Some(secret) = cred.totp_secret.clone() else {
            return Err(conflict("MFA_NOT_ENABLED", user_id, "TOTP is not enabled"));
        };
        confirm_checked_password(&cred, checked.as_deref())?;
        match code {
            Code::TotpCode(c) => {
                let step = totp::verify(&secret, &c, Utc::now().timestamp(), cred.totp_last_step)
                    .ok_or(IdentityError::CodeInvalid { field: "totp_code" })?;
                if !store::advance_totp_step(conn, user_id, step).await? {
                    return Err(IdentityError::CodeInvalid { field: "totp_code" });
                }
            }
            Code::RecoveryCode(c) => {
                let invalid = || IdentityError::CodeInvalid {
                    field: "recovery_code",
                };
                let hash = tokens::hash_recovery_code(&c).ok_or_else(invalid)?;
                if !store::use_recovery_code(conn, user_id, &hash).await? {
                    return Err(invalid());
                }
            }
        }
        store::disable_totp(conn, user_id).await?;
        Ok(Change::new((), event))
    })
    .await?;
    tracing::info!(user_id = %user_id, "totp disabled");
    Ok(())
}
