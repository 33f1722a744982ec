#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Login, MFA, PIN, refresh, logout, sessions, passwords and keys over real mTLS and Postgres.

use crate::common;

use std::time::Duration;

use carehub_identity::domain::totp;
use carehub_platform::auth::Role;
use carehub_platform::jwt;
use carehub_proto::common::v1::PageRequest;
use carehub_proto::identity::v1::*;
use common::{assert_status, with_key, with_token, TestApp, PASSWORD};
use tonic::Code;

const NEW_PASSWORD: &str = "a brand new sturdy passphrase";

fn req_from_gateway<T>(msg: T, ip: &str, ua: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("x-forwarded-for", ip.parse().unwrap());
    r.metadata_mut()
        .insert("x-forwarded-user-agent", ua.parse().unwrap());
    r
}

fn login_req(email: &str, password: &str) -> LoginRequest {
    LoginRequest {
        email: email.to_owned(),
        password: password.to_owned(),
    }
}

async fn try_login(
    app: &TestApp,
    email: &str,
    password: &str,
) -> Result<LoginResponse, tonic::Status> {
    app.public("gateway")
        .await
        .login(login_req(email, password))
        .await
        .map(|r| r.into_inner())
}

async fn list(app: &TestApp, token: &str) -> Result<ListSessionsResponse, tonic::Status> {
    app.public("gateway")
        .await
        .list_sessions(app.with_token(ListSessionsRequest { page: None }, token))
        .await
        .map(|r| r.into_inner())
}

fn claims(app: &TestApp, token: &str) -> jwt::AccessClaims {
    let state = app.state();
    let kid = jwt::key_id(token).unwrap();
    let key = state.keys.verifying_key(&kid).unwrap();
    jwt::verify(
        token,
        &key,
        &state.auth.issuer,
        &state.auth.audience,
        chrono::Utc::now().timestamp(),
    )
    .unwrap()
}

async fn refresh(app: &TestApp, refresh_token: &str) -> Result<AuthTokens, tonic::Status> {
    app.public("gateway")
        .await
        .refresh_session(RefreshSessionRequest {
            refresh_token: refresh_token.to_owned(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn login_refresh_reuse_and_logout() {
    let app = common::spawn().await;
    let user = app.register_patient("ann@example.org", PASSWORD).await;

    // Login through the gateway keeps the forwarded address and user agent.
    let resp = app
        .public("gateway")
        .await
        .login(req_from_gateway(
            login_req("Ann@Example.org", PASSWORD),
            "203.0.113.7",
            "CareApp/1.0",
        ))
        .await
        .unwrap()
        .into_inner();
    let Some(login_response::Result::Tokens(t)) = resp.result else {
        panic!("expected tokens")
    };
    assert_eq!(t.user_id, user.user_id);
    assert!(!t.password_change_required);
    let c = claims(&app, &t.access_token);
    assert_eq!(c.sub, user.user_id);
    assert_eq!(c.sid, t.session_id);
    assert_eq!(c.roles, ["patient"]);
    assert_eq!(c.amr, ["pwd"]);
    assert!(c.exp - c.iat <= 600 && c.exp > c.iat);
    // Only the hash of the refresh token is stored.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM refresh_tokens")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(
        stored,
        carehub_identity::domain::tokens::hash(&t.refresh_token)
    );

    let sessions = list(&app, &t.access_token).await.unwrap().sessions;
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    assert!(s.current && s.active);
    assert_eq!(s.ip_address, "203.0.113.7");
    assert_eq!(s.user_agent, "CareApp/1.0");
    assert_eq!(s.auth_methods, [AuthMethod::Password as i32]);

    // Refresh rotates; the new tokens work.
    let t2 = refresh(&app, &t.refresh_token).await.unwrap();
    assert_eq!(t2.session_id, t.session_id);
    assert_ne!(t2.refresh_token, t.refresh_token);
    list(&app, &t2.access_token).await.unwrap();

    // Presenting the spent refresh token again revokes the whole session.
    let e = refresh(&app, &t.refresh_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("REFRESH_TOKEN_REUSED"));
    let e = list(&app, &t2.access_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));
    let e = refresh(&app, &t2.refresh_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));
    // Unknown refresh token.
    let e = refresh(&app, "bm90LWEtcmVhbC10b2tlbg").await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("UNAUTHENTICATED_TOKEN"));

    // Logout ends the session: its access token and refresh token stop working.
    let t3 = app.login("ann@example.org", PASSWORD).await;
    // Used twice first, so that the logout must empty the session cache too.
    list(&app, &t3.access_token).await.unwrap();
    list(&app, &t3.access_token).await.unwrap();
    app.public("gateway")
        .await
        .logout(with_key(
            app.with_token(LogoutRequest {}, &t3.access_token),
            "logout-key-1",
        ))
        .await
        .unwrap();
    let e = list(&app, &t3.access_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));
    let e = refresh(&app, &t3.refresh_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));

    // The revocation feed names both sessions, for other services.
    let feed = app
        .internal("records")
        .await
        .list_revocations(ListRevocationsRequest { since: None })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = feed
        .revocations
        .iter()
        .filter_map(|r| match &r.target {
            Some(revocation::Target::SessionId(s)) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert!(
        ids.contains(&t.session_id) && ids.contains(&t3.session_id),
        "{ids:?}"
    );
    assert!(feed.as_of.is_some());
    // The feed is internal: the gateway may not read it.
    let e = app
        .internal("gateway")
        .await
        .list_revocations(ListRevocationsRequest { since: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    app.shutdown().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_email_look_alike() {
    let app = common::spawn().await;
    app.register_patient("bob@example.org", PASSWORD).await;
    let e1 = try_login(&app, "bob@example.org", "not the right password")
        .await
        .unwrap_err();
    let e2 = try_login(&app, "nobody@example.org", "not the right password")
        .await
        .unwrap_err();
    assert_status(&e1, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    assert_status(&e2, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    assert_eq!(e1.message(), e2.message());
    // Both were counted under hashed keys; no email is stored in the throttle table.
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM login_throttle ORDER BY key")
        .fetch_all(app.pool())
        .await
        .unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys
        .iter()
        .all(|k| k.starts_with("acct:") && !k.contains('@')));
    // A success resets the consecutive failures.
    app.login("bob@example.org", PASSWORD).await;
    let n: i32 =
        sqlx::query_scalar("SELECT consecutive_failures FROM login_throttle WHERE key = $1")
            .bind(
                carehub_identity::store::sealed::account_throttle_key(
                    &app.state().crypto,
                    "bob@example.org",
                )
                .unwrap(),
            )
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(n, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn lockout_hourly_cap_and_source_throttle() {
    let app = common::spawn_with(|c| {
        c.identity.lockout_free_attempts = 50;
        c.identity.max_failures_per_hour = 3;
        c.identity.max_failures_per_source_per_minute = 4;
    })
    .await;
    app.register_patient("cat@example.org", PASSWORD).await;
    for _ in 0..3 {
        let e = try_login(&app, "cat@example.org", "wrong wrong wrong")
            .await
            .unwrap_err();
        assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    }
    // The hourly cap is reached: locked for the rest of the hour, even with the right password.
    let e = try_login(&app, "cat@example.org", PASSWORD)
        .await
        .unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("ACCOUNT_LOCKED"));
    let retry = carehub_platform::errors::details_of(&e)
        .retry_after
        .unwrap();
    assert!(
        retry > Duration::from_secs(3000) && retry <= Duration::from_secs(3600),
        "{retry:?}"
    );
    let (total, window): (i64, i32) =
        sqlx::query_as("SELECT total_failures, window_failures FROM login_throttle WHERE key = $1")
            .bind(
                carehub_identity::store::sealed::account_throttle_key(
                    &app.state().crypto,
                    "cat@example.org",
                )
                .unwrap(),
            )
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!((total, window), (4, 4), "the refused attempt counts too");

    // Per source: more than 4 failures a minute from one address is throttled.
    let mut c = app.public("gateway").await;
    for i in 0..4 {
        let e = c
            .login(req_from_gateway(
                login_req(&format!("x{i}@example.org"), "wrong wrong wrong"),
                "198.51.100.4",
                "ua",
            ))
            .await
            .unwrap_err();
        assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    }
    let e = c
        .login(req_from_gateway(
            login_req("y@example.org", "wrong wrong wrong"),
            "198.51.100.4",
            "ua",
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::ResourceExhausted, Some("RATE_LIMITED"));
    let e = c
        .login(req_from_gateway(
            login_req("z@example.org", "wrong wrong wrong"),
            "198.51.100.4",
            "ua",
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::ResourceExhausted, Some("RATE_LIMITED"));
    assert!(carehub_platform::errors::details_of(&e)
        .retry_after
        .is_some());
    // Another address is not affected.
    let e = c
        .login(req_from_gateway(
            login_req("y@example.org", "wrong wrong wrong"),
            "198.51.100.5",
            "ua",
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    app.shutdown().await;
}

#[tokio::test]
async fn exponential_delay_after_free_attempts() {
    let app = common::spawn_with(|c| {
        c.identity.lockout_free_attempts = 2;
        c.identity.lockout_max_delay_secs = 60;
    })
    .await;
    app.register_patient("dan@example.org", PASSWORD).await;
    for _ in 0..2 {
        let e = try_login(&app, "dan@example.org", "wrong wrong wrong")
            .await
            .unwrap_err();
        assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    }
    // Two failures: the next attempt must wait 1 s (2^0).
    let e = try_login(&app, "dan@example.org", PASSWORD)
        .await
        .unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("ACCOUNT_LOCKED"));
    let retry = carehub_platform::errors::details_of(&e)
        .retry_after
        .unwrap();
    // The refused attempt counted as a third failure: now 2 s.
    assert!(retry <= Duration::from_secs(2), "{retry:?}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    app.login("dan@example.org", PASSWORD).await;
    app.shutdown().await;
}

#[tokio::test]
async fn sessions_are_listed_paged_and_revoked() {
    let app = common::spawn().await;
    app.register_patient("eve@example.org", PASSWORD).await;
    let other = app.register_patient("fay@example.org", PASSWORD).await;
    let _ = other;
    let a = app.login("eve@example.org", PASSWORD).await;
    let b = app.login("eve@example.org", PASSWORD).await;
    let c = app.login("eve@example.org", PASSWORD).await;
    let f = app.login("fay@example.org", PASSWORD).await;
    let mut client = app.public("gateway").await;

    // Revoke the oldest: it is listed last (active first, newest first).
    let revoked = client
        .revoke_session(app.with_token(
            RevokeSessionRequest {
                session_id: a.session_id.clone(),
            },
            &c.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!revoked.active && revoked.revoke_time.is_some());
    let e = list(&app, &a.access_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));

    let page1 = client
        .list_sessions(app.with_token(
            ListSessionsRequest {
                page: Some(PageRequest {
                    page_size: 2,
                    page_token: String::new(),
                }),
            },
            &c.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let ids1: Vec<_> = page1
        .sessions
        .iter()
        .map(|s| s.session_id.clone())
        .collect();
    assert_eq!(ids1, [c.session_id.clone(), b.session_id.clone()]);
    assert!(page1.sessions[0].current && !page1.sessions[1].current);
    let token = page1.page.unwrap().next_page_token;
    assert!(!token.is_empty());
    let page2 = client
        .list_sessions(app.with_token(
            ListSessionsRequest {
                page: Some(PageRequest {
                    page_size: 2,
                    page_token: token,
                }),
            },
            &c.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.sessions.len(), 1);
    assert_eq!(page2.sessions[0].session_id, a.session_id);
    assert!(!page2.sessions[0].active);
    assert!(page2.page.unwrap().next_page_token.is_empty());

    // Someone else's session is not found.
    let e = client
        .revoke_session(app.with_token(
            RevokeSessionRequest {
                session_id: f.session_id.clone(),
            },
            &c.access_token,
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::NotFound, Some("RESOURCE_NOT_FOUND"));
    list(&app, &f.access_token).await.unwrap();
    // Bad paging input.
    let e = client
        .list_sessions(app.with_token(
            ListSessionsRequest {
                page: Some(PageRequest {
                    page_size: -1,
                    page_token: "garbage!".into(),
                }),
            },
            &c.access_token,
        ))
        .await
        .unwrap_err();
    let fields = assert_status(&e, Code::InvalidArgument, Some("INVALID_FIELD"));
    assert_eq!(fields, ["page.page_size", "page.page_token"]);
    app.shutdown().await;
}

#[tokio::test]
async fn password_reset_revokes_everything() {
    let app = common::spawn().await;
    let user = app.register_patient("gus@example.org", PASSWORD).await;
    let before = app.login("gus@example.org", PASSWORD).await;
    let mut c = app.public("gateway").await;

    // Unknown email: OK, nothing sent, nothing stored.
    c.request_password_reset(RequestPasswordResetRequest {
        email: "nobody@example.org".into(),
    })
    .await
    .unwrap();
    assert_eq!(app.count("password_resets").await, 0);

    c.request_password_reset(app.with_key(
        RequestPasswordResetRequest {
            email: "GUS@example.org".into(),
        },
        "reset-key-0001",
    ))
    .await
    .unwrap();
    let uid = uuid::Uuid::parse_str(&user.user_id).unwrap();
    let token = app
        .sandbox()
        .last_reset_token(uid)
        .expect("reset token sent");
    // A replay of the same request sends nothing new.
    c.request_password_reset(app.with_key(
        RequestPasswordResetRequest {
            email: "GUS@example.org".into(),
        },
        "reset-key-0001",
    ))
    .await
    .unwrap();
    assert_eq!(app.count("password_resets").await, 1);
    // The token is stored only hashed.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM password_resets WHERE token_hash = $1")
        .bind(carehub_identity::domain::tokens::hash(&token))
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);

    // Policy applies to the new password.
    let e = c
        .reset_password(ResetPasswordRequest {
            reset_token: token.clone(),
            new_password: "short".into(),
        })
        .await
        .unwrap_err();
    let fields = assert_status(&e, Code::InvalidArgument, Some("PASSWORD_POLICY"));
    assert_eq!(fields, ["new_password"]);

    c.reset_password(ResetPasswordRequest {
        reset_token: token.clone(),
        new_password: NEW_PASSWORD.into(),
    })
    .await
    .unwrap();
    // Every session is revoked.
    let e = list(&app, &before.access_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));
    // Single use.
    let e = c
        .reset_password(ResetPasswordRequest {
            reset_token: token,
            new_password: "yet another fine passphrase".into(),
        })
        .await
        .unwrap_err();
    let fields = assert_status(&e, Code::InvalidArgument, Some("CODE_INVALID"));
    assert_eq!(fields, ["reset_token"]);
    let e = try_login(&app, "gus@example.org", PASSWORD)
        .await
        .unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    let after = app.login("gus@example.org", NEW_PASSWORD).await;
    list(&app, &after.access_token).await.unwrap();

    // An expired token does not work.
    c.request_password_reset(RequestPasswordResetRequest {
        email: "gus@example.org".into(),
    })
    .await
    .unwrap();
    let token = app.sandbox().last_reset_token(uid).unwrap();
    sqlx::query(
        "UPDATE password_resets SET expires_at = now() - interval '1 second' WHERE used_at IS NULL",
    )
    .execute(app.pool())
    .await
    .unwrap();
    let e = c
        .reset_password(ResetPasswordRequest {
            reset_token: token,
            new_password: "yet another fine passphrase".into(),
        })
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, Some("CODE_INVALID"));
    app.shutdown().await;
}

#[tokio::test]
async fn change_password_keeps_only_the_current_session() {
    let app = common::spawn().await;
    app.register_patient("hal@example.org", PASSWORD).await;
    let other = app.login("hal@example.org", PASSWORD).await;
    let me = app.login("hal@example.org", PASSWORD).await;
    let mut c = app.public("gateway").await;
    let e = c
        .change_password(app.with_token(
            ChangePasswordRequest {
                current_password: "not my password at all".into(),
                new_password: NEW_PASSWORD.into(),
            },
            &me.access_token,
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    let e = c
        .change_password(app.with_token(
            ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: "password1234".into(),
            },
            &me.access_token,
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, Some("PASSWORD_POLICY"));
    c.change_password(with_key(
        app.with_token(
            ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: NEW_PASSWORD.into(),
            },
            &me.access_token,
        ),
        "change-key-001",
    ))
    .await
    .unwrap();
    // A retry with the same key replays the answer.
    c.change_password(with_key(
        app.with_token(
            ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: NEW_PASSWORD.into(),
            },
            &me.access_token,
        ),
        "change-key-001",
    ))
    .await
    .unwrap();
    list(&app, &me.access_token).await.unwrap();
    let e = list(&app, &other.access_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));
    app.login("hal@example.org", NEW_PASSWORD).await;
    app.shutdown().await;
}

#[tokio::test]
async fn password_age_policy_forces_a_change() {
    let app = common::spawn_with(|c| {
        c.identity
            .password_max_age_days
            .insert("patient".into(), 90);
    })
    .await;
    let user = app.register_patient("ivy@example.org", PASSWORD).await;
    sqlx::query(
        "UPDATE users SET password_changed_at = now() - interval '91 days' WHERE id = $1::uuid",
    )
    .bind(&user.user_id)
    .execute(app.pool())
    .await
    .unwrap();
    let t = app.login("ivy@example.org", PASSWORD).await;
    assert!(t.password_change_required);
    assert!(claims(&app, &t.access_token).pcr);
    let e = list(&app, &t.access_token).await.unwrap_err();
    assert_status(&e, Code::FailedPrecondition, Some("PASSWORD_EXPIRED"));
    app.public("gateway")
        .await
        .change_password(app.with_token(
            ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: NEW_PASSWORD.into(),
            },
            &t.access_token,
        ))
        .await
        .unwrap();
    // The refreshed token of the same session is free again.
    let t2 = refresh(&app, &t.refresh_token).await.unwrap();
    assert!(!t2.password_change_required);
    list(&app, &t2.access_token).await.unwrap();
    app.shutdown().await;
}

#[tokio::test]
async fn totp_enrollment_challenge_and_recovery_codes() {
    let app = common::spawn().await;
    let user = app.register_patient("jo@example.org", PASSWORD).await;
    let t = app.login("jo@example.org", PASSWORD).await;
    let mut c = app.public("gateway").await;

    // Confirming before enrolling is a state conflict.
    let e = c
        .confirm_totp(app.with_token(
            ConfirmTotpRequest {
                totp_code: "123456".into(),
            },
            &t.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    let enrolled = c
        .enroll_totp(app.with_token(EnrollTotpRequest {}, &t.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(enrolled.otpauth_uri.contains(&user.user_id));
    assert!(!enrolled.otpauth_uri.contains("jo@example.org"));
    let secret = totp::decode_secret(&enrolled.secret).unwrap();
    let now = chrono::Utc::now().timestamp();
    let wrong = if totp::code_at(&secret, now) == "000000" {
        "111111"
    } else {
        "000000"
    };
    let e = c
        .confirm_totp(app.with_token(
            ConfirmTotpRequest {
                totp_code: wrong.into(),
            },
            &t.access_token,
        ))
        .await
        .unwrap_err();
    let fields = assert_status(&e, Code::InvalidArgument, Some("CODE_INVALID"));
    assert_eq!(fields, ["totp_code"]);
    let codes = c
        .confirm_totp(app.with_token(
            ConfirmTotpRequest {
                totp_code: totp::code_at(&secret, now),
            },
            &t.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .recovery_codes;
    assert_eq!(codes.len(), 10);
    assert_eq!(app.count("recovery_codes").await, 10);
    let e = c
        .enroll_totp(app.with_token(EnrollTotpRequest {}, &t.access_token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Login now needs a second factor.
    let challenge = |resp: LoginResponse| match resp.result {
        Some(login_response::Result::MfaChallenge(ch)) => ch.challenge_token,
        other => panic!("expected a challenge, got {other:?}"),
    };
    let ch = challenge(try_login(&app, "jo@example.org", PASSWORD).await.unwrap());
    let complete =
        |token: &str, code: complete_mfa_challenge_request::Code| CompleteMfaChallengeRequest {
            challenge_token: token.to_owned(),
            code: Some(code),
        };
    let e = c
        .complete_mfa_challenge(complete(
            &ch,
            complete_mfa_challenge_request::Code::TotpCode(wrong.into()),
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("MFA_REQUIRED"));
    // The step used at confirmation cannot be replayed; the next step (clock drift) works.
    let replay = c
        .complete_mfa_challenge(complete(
            &ch,
            complete_mfa_challenge_request::Code::TotpCode(totp::code_at(&secret, now)),
        ))
        .await
        .unwrap_err();
    assert_status(&replay, Code::Unauthenticated, Some("MFA_REQUIRED"));
    let next = totp::code_at(&secret, now + totp::STEP_SECS);
    let tokens = c
        .complete_mfa_challenge(complete(
            &ch,
            complete_mfa_challenge_request::Code::TotpCode(next.clone()),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(claims(&app, &tokens.access_token).amr, ["pwd", "otp"]);
    // The challenge was single use.
    let e = c
        .complete_mfa_challenge(complete(
            &ch,
            complete_mfa_challenge_request::Code::TotpCode(next),
        ))
        .await
        .unwrap_err();
    let fields = assert_status(&e, Code::InvalidArgument, Some("CODE_INVALID"));
    assert_eq!(fields, ["challenge_token"]);

    // A recovery code works once.
    let ch = challenge(try_login(&app, "jo@example.org", PASSWORD).await.unwrap());
    let rc = tokens_code(&codes[0]);
    let tokens = c
        .complete_mfa_challenge(complete(
            &ch,
            complete_mfa_challenge_request::Code::RecoveryCode(rc.clone()),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(claims(&app, &tokens.access_token).amr, ["pwd", "rc"]);
    let ch = challenge(try_login(&app, "jo@example.org", PASSWORD).await.unwrap());
    let e = c
        .complete_mfa_challenge(complete(
            &ch,
            complete_mfa_challenge_request::Code::RecoveryCode(rc),
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("MFA_REQUIRED"));
    // Five attempts per challenge, then it is dead.
    for _ in 0..4 {
        let e = c
            .complete_mfa_challenge(complete(
                &ch,
                complete_mfa_challenge_request::Code::TotpCode(wrong.into()),
            ))
            .await
            .unwrap_err();
        assert_status(&e, Code::Unauthenticated, Some("MFA_REQUIRED"));
    }
    let e = c
        .complete_mfa_challenge(complete(
            &ch,
            complete_mfa_challenge_request::Code::RecoveryCode(codes[1].clone()),
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, Some("CODE_INVALID"));

    // Disabling needs the password and a code.
    let disable = |password: &str, code: disable_totp_request::Code| DisableTotpRequest {
        current_password: password.to_owned(),
        code: Some(code),
    };
    let e = c
        .disable_totp(app.with_token(
            disable(
                "wrong password here",
                disable_totp_request::Code::RecoveryCode(codes[2].clone()),
            ),
            &tokens.access_token,
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    c.disable_totp(app.with_token(
        disable(
            PASSWORD,
            disable_totp_request::Code::RecoveryCode(codes[2].clone()),
        ),
        &tokens.access_token,
    ))
    .await
    .unwrap();
    assert_eq!(app.count("recovery_codes").await, 0);
    app.login("jo@example.org", PASSWORD).await;
    app.shutdown().await;
}

/// Recovery codes are accepted in upper case and without the dash, too.
fn tokens_code(code: &str) -> String {
    code.replace('-', "").to_uppercase()
}

#[tokio::test]
async fn device_pin_unlock_and_revocation_after_five_failures() {
    let app = common::spawn().await;
    app.register_patient("kim@example.org", PASSWORD).await;
    let t = app.login("kim@example.org", PASSWORD).await;
    let mut c = app.public("gateway").await;
    let device = app.enroll_device_pin(&t.access_token, "482916").await;
    let unlock = |secret: &str, pin: &str| UnlockWithPinRequest {
        device_id: device.device_id.clone(),
        device_secret: secret.to_owned(),
        pin: pin.to_owned(),
    };
    let tokens = c
        .unlock_with_pin(unlock(&device.device_secret, "482916"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(claims(&app, &tokens.access_token).amr, ["pin"]);
    assert_ne!(tokens.session_id, t.session_id);
    list(&app, &tokens.access_token).await.unwrap();
    // The PIN alone (wrong device secret) is useless.
    let e = c
        .unlock_with_pin(unlock("c29tZS1vdGhlci1zZWNyZXQ", "482916"))
        .await
        .unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    for _ in 0..5 {
        let e = c
            .unlock_with_pin(unlock(&device.device_secret, "000000"))
            .await
            .unwrap_err();
        assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    }
    // Five wrong PINs in a row revoked the credential: the right PIN no longer works.
    let e = c
        .unlock_with_pin(unlock(&device.device_secret, "482916"))
        .await
        .unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    app.shutdown().await;
}

#[tokio::test]
async fn suspended_users_tokens_are_rejected_at_once() {
    let app = common::spawn().await;
    let user = app.register_patient("lee@example.org", PASSWORD).await;
    let t = app.login("lee@example.org", PASSWORD).await;
    // Used twice first: the second use is verified from the session cache, which the
    // suspension must empty.
    list(&app, &t.access_token).await.unwrap();
    list(&app, &t.access_token).await.unwrap();
    let (_, admin) = app.admin_token().await;
    app.public("gateway")
        .await
        .suspend_user(app.with_token(
            SuspendUserRequest {
                user_id: user.user_id.clone(),
                reason: "investigation".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let e = list(&app, &t.access_token).await.unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("ACCOUNT_DISABLED"));
    let e = refresh(&app, &t.refresh_token).await.unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("ACCOUNT_DISABLED"));
    let e = try_login(&app, "lee@example.org", PASSWORD)
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("ACCOUNT_DISABLED"));
    // A wrong password still says nothing about the account state.
    let e = try_login(&app, "lee@example.org", "wrong wrong wrong")
        .await
        .unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    let feed = app
        .internal("scheduling")
        .await
        .list_revocations(ListRevocationsRequest { since: None })
        .await
        .unwrap()
        .into_inner();
    assert!(feed
        .revocations
        .iter()
        .any(|r| r.target == Some(revocation::Target::UserId(user.user_id.clone()))));
    app.shutdown().await;
}

#[tokio::test]
async fn idle_timeout_ends_sessions() {
    let app = common::spawn_with(|c| {
        c.identity
            .idle_timeout_secs
            .insert(Role::Patient.as_str().into(), 2);
    })
    .await;
    app.register_patient("max@example.org", PASSWORD).await;
    let t = app.login("max@example.org", PASSWORD).await;
    let c = claims(&app, &t.access_token);
    assert!(
        c.exp - c.iat <= 2,
        "access token never outlives the idle timeout"
    );
    list(&app, &t.access_token).await.unwrap();
    let t2 = refresh(&app, &t.refresh_token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let e = list(&app, &t2.access_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));
    let e = refresh(&app, &t2.refresh_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));
    app.shutdown().await;
}

#[tokio::test]
async fn absolute_lifetime_ends_sessions() {
    let app = common::spawn().await;
    app.register_patient("ned@example.org", PASSWORD).await;
    let t = app.login("ned@example.org", PASSWORD).await;
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .execute(app.pool())
        .await
        .unwrap();
    let e = list(&app, &t.access_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));
    let e = refresh(&app, &t.refresh_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));
    app.shutdown().await;
}

#[tokio::test]
async fn signing_keys_are_published() {
    let app = common::spawn().await;
    app.register_patient("oli@example.org", PASSWORD).await;
    let t = app.login("oli@example.org", PASSWORD).await;
    let public = app
        .public("gateway")
        .await
        .list_signing_keys(ListSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let internal = app
        .internal("billing")
        .await
        .list_signing_keys(ListSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(public, internal);
    assert_eq!(public.keys.len(), 1);
    let k = &public.keys[0];
    assert_eq!(
        (k.kty.as_str(), k.crv.as_str(), k.alg.as_str()),
        ("OKP", "Ed25519", "EdDSA")
    );
    assert_eq!(jwt::key_id(&t.access_token).unwrap(), k.kid);
    let key = jwt::key_from_jwk_x(&k.x).unwrap();
    let state = app.state();
    jwt::verify(
        &t.access_token,
        &key,
        &state.auth.issuer,
        &state.auth.audience,
        chrono::Utc::now().timestamp(),
    )
    .unwrap();
    app.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_refused_and_writes_nothing() {
    let app = common::spawn().await;
    app.register_patient("pat@example.org", PASSWORD).await;
    let t = app.login("pat@example.org", PASSWORD).await;
    let before = app.counts().await;
    let throttle_before = app.count("login_throttle").await;
    let mut c = app.public("gateway").await;
    let fields = |e: tonic::Status| assert_status(&e, Code::InvalidArgument, None);

    let e = c.login(login_req("", "")).await.unwrap_err();
    assert_eq!(fields(e), ["email", "password"]);
    let e = c
        .login(login_req("no-at-sign", &"x".repeat(129)))
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["email", "password"]);
    let e = c
        .complete_mfa_challenge(CompleteMfaChallengeRequest {
            challenge_token: "bad token".into(),
            code: None,
        })
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["challenge_token", "totp_code"]);
    let e = c
        .complete_mfa_challenge(CompleteMfaChallengeRequest {
            challenge_token: "x".repeat(513),
            code: Some(complete_mfa_challenge_request::Code::RecoveryCode(
                "nope".into(),
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["challenge_token", "recovery_code"]);
    let e = c
        .refresh_session(RefreshSessionRequest {
            refresh_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["refresh_token"]);
    let e = c
        .revoke_session(app.with_token(
            RevokeSessionRequest {
                session_id: "not-a-uuid".into(),
            },
            &t.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["session_id"]);
    let e = c
        .request_password_reset(RequestPasswordResetRequest {
            email: "x".repeat(300),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["email"]);
    let e = c
        .reset_password(ResetPasswordRequest {
            reset_token: "x".repeat(600),
            new_password: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["reset_token", "new_password"]);
    let e = c
        .change_password(app.with_token(
            ChangePasswordRequest {
                current_password: String::new(),
                new_password: "x".repeat(200),
            },
            &t.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["current_password", "new_password"]);
    let e = c
        .confirm_totp(app.with_token(
            ConfirmTotpRequest {
                totp_code: "12345a".into(),
            },
            &t.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["totp_code"]);
    let e = c
        .disable_totp(app.with_token(
            DisableTotpRequest {
                current_password: String::new(),
                code: Some(disable_totp_request::Code::TotpCode("1".into())),
            },
            &t.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["current_password", "totp_code"]);
    let e = c
        .enroll_device_pin(app.with_token(
            EnrollDevicePinRequest {
                pin: "12ab".into(),
                device_name: "d".repeat(65),
            },
            &t.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["pin", "device_name"]);
    let e = c
        .unlock_with_pin(UnlockWithPinRequest {
            device_id: "nope".into(),
            device_secret: String::new(),
            pin: "1234567890123".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["device_id", "device_secret", "pin"]);
    let e = app
        .internal("records")
        .await
        .list_revocations(ListRevocationsRequest {
            since: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: -5,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["since"]);
    // A malformed idempotency key is refused too.
    let e = c
        .logout(with_key(
            with_token(tonic::Request::new(LogoutRequest {}), &t.access_token),
            "short",
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(e), ["idempotency-key"]);

    assert_eq!(app.counts().await, before);
    assert_eq!(app.count("login_throttle").await, throttle_before);
    app.shutdown().await;
}
