#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The session cache (`carehub_identity::session_cache`): a repeated authenticated call is
//! verified from memory (counted on `/metrics`), revocations in this replica take effect at
//! once, another replica's within milliseconds (listener) or the TTL (no listener), no entry
//! outlives its session, and the cache stays bounded.

use crate::common;

use std::time::{Duration, Instant};

use carehub_identity::config::IdentityConfig;
use carehub_identity::session_cache::{CHECKS_METRIC, ENTRIES_METRIC, EVICTIONS_METRIC};
use carehub_platform::auth::Role;
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::*;
use common::{assert_status, with_key, with_token, TestApp, PASSWORD};
use tonic::transport::Channel;
use tonic::Code;

const MEMORY: &str = "source=\"memory\"";
const DB: &str = "source=\"db\"";

/// Long enough that an entry never ends by age during a test: whatever ends it early is what
/// the test is about.
const LONG_TTL_MS: u64 = 10_000;

fn long_ttl(listen: bool) -> impl FnOnce(&mut IdentityConfig) {
    move |c: &mut IdentityConfig| {
        c.identity.session_cache_ttl_ms = LONG_TTL_MS;
        c.identity.session_cache_listen = listen;
    }
}

async fn profile(
    c: &mut IdentityServiceClient<Channel>,
    token: &str,
) -> Result<User, tonic::Status> {
    c.get_profile(with_token(tonic::Request::new(GetProfileRequest {}), token))
        .await
        .map(|r| r.into_inner())
}

/// Reads the profile until a read is answered from memory (the first fills the cache):
/// panics if none is within a few tries.
async fn warm(app: &TestApp, c: &mut IdentityServiceClient<Channel>, token: &str) {
    let before = app.metric(CHECKS_METRIC, MEMORY).await;
    for _ in 0..5 {
        profile(c, token).await.expect("the session is usable");
        if app.metric(CHECKS_METRIC, MEMORY).await > before {
            return;
        }
    }
    panic!("no read of the session was answered from memory");
}

/// Polls until `token` is refused with `reason` (panics after `deadline`); how long it took.
async fn refused_within(
    c: &mut IdentityServiceClient<Channel>,
    token: &str,
    code: Code,
    reason: &str,
    deadline: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        match profile(c, token).await {
            Err(e) => {
                assert_status(&e, code, Some(reason));
                return start.elapsed();
            }
            Ok(_) => assert!(
                start.elapsed() < deadline,
                "the session was still accepted after {deadline:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_second_read_is_verified_from_memory() {
    let app = common::spawn_with(long_ttl(true)).await;
    app.register_patient("ann@example.org", PASSWORD).await;
    let t = app.login("ann@example.org", PASSWORD).await;
    let mut c = app.public("gateway").await;
    assert_eq!(app.metric(CHECKS_METRIC, "").await, 0.0);

    profile(&mut c, &t.access_token).await.unwrap();
    assert_eq!(
        app.metric(CHECKS_METRIC, DB).await,
        1.0,
        "first read: the database"
    );
    assert_eq!(app.metric(CHECKS_METRIC, MEMORY).await, 0.0);
    assert_eq!(app.metric(ENTRIES_METRIC, "").await, 1.0);

    for n in 1..=3 {
        profile(&mut c, &t.access_token).await.unwrap();
        assert_eq!(
            app.metric(CHECKS_METRIC, DB).await,
            1.0,
            "read {n} after the first did not query the sessions table"
        );
        assert_eq!(app.metric(CHECKS_METRIC, MEMORY).await, f64::from(n));
    }
    app.shutdown().await;
}

/// Every revocation this replica makes ends the session in its own cache before it answers.
/// The listener is off and entries would otherwise live 10 s: only the eviction in the
/// revoking code path can make these refusals immediate.
#[tokio::test]
async fn revocations_in_this_replica_take_effect_at_once_on_a_warm_cache() {
    let app = common::spawn_with(long_ttl(false)).await;
    let mut c = app.public("gateway").await;
    let user = app.register_patient("bo@example.org", PASSWORD).await;

    // Logout.
    let t = app.login("bo@example.org", PASSWORD).await;
    warm(&app, &mut c, &t.access_token).await;
    c.logout(with_key(
        with_token(tonic::Request::new(LogoutRequest {}), &t.access_token),
        "cache-logout-1",
    ))
    .await
    .unwrap();
    let e = profile(&mut c, &t.access_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));

    // RevokeSession of another of the user's sessions.
    let victim = app.login("bo@example.org", PASSWORD).await;
    let me = app.login("bo@example.org", PASSWORD).await;
    warm(&app, &mut c, &victim.access_token).await;
    c.revoke_session(with_key(
        with_token(
            tonic::Request::new(RevokeSessionRequest {
                session_id: victim.session_id.clone(),
            }),
            &me.access_token,
        ),
        "cache-revoke-1",
    ))
    .await
    .unwrap();
    let e = profile(&mut c, &victim.access_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));

    // A reused refresh token ends the session.
    let t = app.login("bo@example.org", PASSWORD).await;
    let rotated = c
        .refresh_session(RefreshSessionRequest {
            refresh_token: t.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    warm(&app, &mut c, &rotated.access_token).await;
    let e = c
        .refresh_session(RefreshSessionRequest {
            refresh_token: t.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("REFRESH_TOKEN_REUSED"));
    let e = profile(&mut c, &rotated.access_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));

    // A password change ends the user's other sessions, not the current one.
    let other = app.login("bo@example.org", PASSWORD).await;
    warm(&app, &mut c, &other.access_token).await;
    warm(&app, &mut c, &me.access_token).await;
    let new_password = "a brand new sturdy passphrase";
    c.change_password(with_key(
        with_token(
            tonic::Request::new(ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: new_password.into(),
            }),
            &me.access_token,
        ),
        "cache-password-1",
    ))
    .await
    .unwrap();
    let e = profile(&mut c, &other.access_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));
    profile(&mut c, &me.access_token).await.unwrap();

    // A password reset ends every session.
    warm(&app, &mut c, &me.access_token).await;
    c.request_password_reset(RequestPasswordResetRequest {
        email: "bo@example.org".into(),
    })
    .await
    .unwrap();
    let uid = uuid::Uuid::parse_str(&user.user_id).unwrap();
    let reset_token = app.sandbox().last_reset_token(uid).expect("reset token");
    c.reset_password(ResetPasswordRequest {
        reset_token,
        new_password: PASSWORD.into(),
    })
    .await
    .unwrap();
    let e = profile(&mut c, &me.access_token).await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));

    // A suspension ends every session of the user.
    let t = app.login("bo@example.org", PASSWORD).await;
    warm(&app, &mut c, &t.access_token).await;
    let (_, admin) = app.admin_token().await;
    c.suspend_user(with_key(
        with_token(
            tonic::Request::new(SuspendUserRequest {
                user_id: user.user_id.clone(),
                reason: "investigation".into(),
            }),
            &admin,
        ),
        "cache-suspend-1",
    ))
    .await
    .unwrap();
    let e = profile(&mut c, &t.access_token).await.unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("ACCOUNT_DISABLED"));
    app.shutdown().await;
}

/// A logout and a suspension made through another replica reach this one's cache through
/// `identity_revocations` long before its 10 s entries would end.
#[tokio::test]
async fn another_replicas_revocations_arrive_through_the_listener() {
    let app = common::spawn_with(long_ttl(true)).await;
    let replica = app.start_replica(long_ttl(true)).await;
    let mut c = app.public("gateway").await;
    let mut other = replica.public();
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    app.register_patient("cy@example.org", PASSWORD).await;
    let (_, admin) = app.admin_token().await;

    let t = app.login("cy@example.org", PASSWORD).await;
    warm(&app, &mut c, &t.access_token).await;
    other
        .logout(with_key(
            with_token(tonic::Request::new(LogoutRequest {}), &t.access_token),
            "replica-logout-1",
        ))
        .await
        .unwrap();
    let took = refused_within(
        &mut c,
        &t.access_token,
        Code::Unauthenticated,
        "SESSION_EXPIRED",
        Duration::from_secs(5),
    )
    .await;
    eprintln!("logout on the other replica seen after {took:?}");

    let t = app.login("ann@example.org", PASSWORD).await;
    warm(&app, &mut c, &t.access_token).await;
    other
        .suspend_user(with_key(
            with_token(
                tonic::Request::new(SuspendUserRequest {
                    user_id: ann.user_id.clone(),
                    reason: "investigation".into(),
                }),
                &admin,
            ),
            "replica-suspend-1",
        ))
        .await
        .unwrap();
    let took = refused_within(
        &mut c,
        &t.access_token,
        Code::PermissionDenied,
        "ACCOUNT_DISABLED",
        Duration::from_secs(5),
    )
    .await;
    eprintln!("suspension on the other replica seen after {took:?}");
    replica.shutdown().await;
    app.shutdown().await;
}

/// Without the listener, another replica's revocation is seen once the entry's TTL ends.
#[tokio::test]
async fn without_the_listener_another_replicas_revocation_is_seen_within_the_ttl() {
    const TTL_MS: u64 = 1000;
    let no_listener = |c: &mut IdentityConfig| {
        c.identity.session_cache_ttl_ms = TTL_MS;
        c.identity.session_cache_listen = false;
    };
    let app = common::spawn_with(no_listener).await;
    let replica = app.start_replica(no_listener).await;
    let mut c = app.public("gateway").await;
    app.register_patient("di@example.org", PASSWORD).await;
    let t = app.login("di@example.org", PASSWORD).await;
    warm(&app, &mut c, &t.access_token).await;
    replica
        .public()
        .logout(with_key(
            with_token(tonic::Request::new(LogoutRequest {}), &t.access_token),
            "replica-logout-2",
        ))
        .await
        .unwrap();
    // The TTL plus a generous margin for a loaded machine; an entry that ignored its TTL
    // would live as long as the session (12 h).
    let took = refused_within(
        &mut c,
        &t.access_token,
        Code::Unauthenticated,
        "SESSION_EXPIRED",
        Duration::from_millis(TTL_MS) + Duration::from_secs(4),
    )
    .await;
    eprintln!("logout on the other replica seen after {took:?} without the listener");
    replica.shutdown().await;
    app.shutdown().await;
}

/// An entry never answers past the session's `expires_at`, although its TTL is longer and the
/// access token is still within its lifetime's leeway.
#[tokio::test]
async fn the_cache_never_accepts_a_session_past_its_expires_at() {
    let app = common::spawn_with(|c| {
        long_ttl(true)(c);
        c.identity.session_lifetime_secs = 3;
        c.identity.access_token_ttl_secs = 3;
    })
    .await;
    app.register_patient("ed@example.org", PASSWORD).await;
    let t = app.login("ed@example.org", PASSWORD).await;
    let mut c = app.public("gateway").await;
    let expires_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT expires_at FROM sessions WHERE id = $1::uuid")
            .bind(&t.session_id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    warm(&app, &mut c, &t.access_token).await;
    let mut accepted = 0;
    loop {
        let sent = chrono::Utc::now();
        match profile(&mut c, &t.access_token).await {
            Ok(_) => {
                accepted += 1;
                assert!(
                    sent < expires_at,
                    "accepted a read sent {} ms after the session expired",
                    (sent - expires_at).num_milliseconds()
                );
            }
            Err(e) => {
                assert_status(&e, Code::Unauthenticated, Some("SESSION_EXPIRED"));
                break;
            }
        }
        assert!(
            sent < expires_at + chrono::Duration::seconds(8),
            "never refused"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(accepted > 0, "the session was usable until it expired");
    assert!(app.metric(CHECKS_METRIC, MEMORY).await > 0.0);
    app.shutdown().await;
}

/// A storm of distinct valid sessions never holds more than `session_cache_max_entries`, and a
/// full cache still takes new sessions (evicting others).
#[tokio::test]
async fn the_cache_stays_bounded() {
    const MAX: u64 = 4;
    const SESSIONS: usize = 12;
    let app = common::spawn_with(|c| {
        long_ttl(true)(c);
        c.identity.session_cache_max_entries = MAX;
    })
    .await;
    let mut c = app.public("gateway").await;
    let account = app
        .create_user_with_role("fay@example.org", Role::Patient, PASSWORD)
        .await;
    let mut last = String::new();
    for _ in 0..SESSIONS {
        last = app.token_for(&account).await;
        profile(&mut c, &last).await.unwrap();
        assert!(app.state().session_cache.len() <= MAX as usize);
    }
    assert!(app.metric(ENTRIES_METRIC, "").await <= MAX as f64);
    assert_eq!(app.metric(CHECKS_METRIC, DB).await, SESSIONS as f64);
    assert!(
        app.metric(EVICTIONS_METRIC, "reason=\"full\"").await >= (SESSIONS as u64 - MAX) as f64,
        "a full cache evicts"
    );
    let memory = app.metric(CHECKS_METRIC, MEMORY).await;
    profile(&mut c, &last).await.unwrap();
    assert_eq!(
        app.metric(CHECKS_METRIC, MEMORY).await,
        memory + 1.0,
        "the newest session was cached although the cache was full"
    );
    app.shutdown().await;
}
