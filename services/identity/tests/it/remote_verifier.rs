//! The platform's RemoteVerifier — what every other service uses to check identity's tokens —
//! against a real identity over mTLS: keys fetched on demand, revocations (logout, suspension)
//! reaching the other service within the promised bound, and failing closed when identity's
//! feed goes quiet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::future::Future;
use std::time::{Duration, Instant};

use carehub_platform::auth::{Authorizer, Policy, RemoteVerifier, Role, TokenVerifier, UserRule};
use carehub_platform::client::ServiceChannel;
use carehub_platform::jwt::{self, AccessClaims};
use carehub_platform::tls::{PeerInfo, TlsStore};
use carehub_proto::identity::v1::{
    revocation, GetProfileRequest, ListRevocationsRequest, LogoutRequest, RefreshSessionRequest,
    SuspendUserRequest, TerminateUserRequest,
};
use common::{TestApp, PASSWORD, TRUST_DOMAIN};
use tonic::Code;

/// The revocation bound the platform promises (DESIGN.md §4, Foundation issue).
const REVOCATION_BOUND: Duration = Duration::from_secs(60);

/// A channel to identity as another service would open it: mTLS with its own workload cert.
async fn channel_as(app: &TestApp, workload: &str) -> ServiceChannel {
    let cert = app.pki().issue(workload).unwrap();
    let store = TlsStore::from_pem(
        &cert.cert_pem,
        &cert.key_pem,
        &app.pki().ca_pem,
        TRUST_DOMAIN,
    )
    .unwrap();
    carehub_platform::client::connect(&format!("https://{}", app.grpc_addr), &store, "identity")
        .await
        .unwrap()
}

async fn verifier(app: &TestApp, poll: Duration, staleness: Duration) -> RemoteVerifier {
    RemoteVerifier::with_intervals(
        channel_as(app, "records").await,
        &app.state().auth,
        poll,
        staleness,
    )
}

/// Waits until `check` holds, failing the test after `bound`.
async fn eventually<F, Fut>(bound: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn logout_and_suspension_reach_another_service() {
    let app = common::spawn().await;
    let (_, admin_token) = app.admin_token().await;
    let user = app.register_patient("rosa@example.org", PASSWORD).await;
    let phone_token = app.login("rosa@example.org", PASSWORD).await.access_token;
    let laptop_token = app.login("rosa@example.org", PASSWORD).await.access_token;

    let verifier = verifier(&app, Duration::from_millis(200), Duration::from_secs(10)).await;
    let refresher = verifier.spawn_refresher();
    eventually(Duration::from_secs(20), "verifier ready", || {
        let v = verifier.clone();
        async move { v.is_ready() }
    })
    .await;

    let caller = verifier.verify(&phone_token).await.unwrap();
    assert_eq!(caller.user_id.to_string(), user.user_id);
    assert_eq!(caller.roles, vec![Role::Patient]);

    // The whole authorization decision another service makes, with this verifier behind it.
    let authorizer = Authorizer {
        policy: Policy::new().rule(
            "carehub.records.v1.RecordsService",
            "GetRecord",
            &["gateway"],
            UserRule::Authenticated {
                roles: vec![Role::Patient],
                allow_pending_password_change: false,
            },
        ),
        verifier: std::sync::Arc::new(verifier.clone()),
        gateway_workloads: vec!["gateway".to_owned()],
    };
    let peer = PeerInfo {
        remote_addr: None,
        workload: Some("gateway".to_owned()),
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {laptop_token}").parse().unwrap(),
    );
    let decided = authorizer
        .authorize(
            "/carehub.records.v1.RecordsService/GetRecord",
            Some(&peer),
            &headers,
        )
        .await
        .unwrap();
    assert_eq!(decided.user.unwrap().user_id, caller.user_id);

    // Logging out of the laptop ends that session everywhere; the phone's keeps working.
    app.public("gateway")
        .await
        .logout(app.with_token(LogoutRequest {}, &laptop_token))
        .await
        .unwrap();
    eventually(REVOCATION_BOUND, "logged-out session refused", || {
        let (v, t) = (verifier.clone(), laptop_token.clone());
        async move {
            v.verify(&t)
                .await
                .is_err_and(|e| e.code() == Code::Unauthenticated)
        }
    })
    .await;
    let e = authorizer
        .authorize(
            "/carehub.records.v1.RecordsService/GetRecord",
            Some(&peer),
            &headers,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    verifier.verify(&phone_token).await.unwrap();

    // Suspension revokes every token of the account.
    app.public("gateway")
        .await
        .suspend_user(app.with_token(
            SuspendUserRequest {
                user_id: user.user_id.clone(),
                reason: "chargeback fraud".to_owned(),
            },
            &admin_token,
        ))
        .await
        .unwrap();
    let took = eventually(REVOCATION_BOUND, "suspended account refused", || {
        let (v, t) = (verifier.clone(), phone_token.clone());
        async move {
            v.verify(&t)
                .await
                .is_err_and(|e| e.code() == Code::Unauthenticated)
        }
    })
    .await;
    println!("suspension reached the other service after {took:?}");
    // Another user's token is untouched.
    assert!(verifier.verify(&admin_token).await.is_ok());

    refresher.abort();
    app.shutdown().await;
}

#[tokio::test]
async fn keys_are_fetched_for_unknown_key_ids_and_foreign_keys_refused() {
    let app = common::spawn().await;
    app.register_patient("sven@example.org", PASSWORD).await;
    let token = app.login("sven@example.org", PASSWORD).await.access_token;

    // No keys fetched yet: the first token with identity's key id makes the verifier fetch.
    let verifier = verifier(&app, Duration::from_secs(1), Duration::from_secs(10)).await;
    assert!(
        !verifier.has_loaded(),
        "nothing loaded: the service must not be ready"
    );
    verifier.refresh_revocations().await.unwrap();
    assert!(!verifier.is_ready(), "no keys held yet");
    assert!(!verifier.has_loaded(), "a feed without keys is not loaded");
    verifier.verify(&token).await.unwrap();
    assert!(verifier.is_ready());
    assert!(verifier.has_loaded());

    // A well-formed token signed by someone else's key (claims copied from a real token).
    let genuine = jwt::verify(
        &token,
        &verifier_key(&app).await,
        &app.state().auth.issuer,
        &app.state().auth.audience,
        chrono::Utc::now().timestamp(),
    )
    .unwrap();
    let forged_claims = AccessClaims {
        roles: vec!["admin".to_owned()],
        ..genuine
    };
    let foreign = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let forged = jwt::sign(&forged_claims, "attacker-key", &foreign).unwrap();
    let e = verifier.verify(&forged).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("unknown key"), "{}", e.message());
    // Same key id as identity's, wrong signature.
    let kid = jwt::key_id(&token).unwrap();
    let forged = jwt::sign(&forged_claims, &kid, &foreign).unwrap();
    let e = verifier.verify(&forged).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    for garbage in ["", "a.b", "not-a-jwt.at.all", &"x".repeat(10_000)] {
        let e = verifier.verify(garbage).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{garbage:.20}");
    }
    app.shutdown().await;
}

/// Identity's current public key, read through the internal API like the verifier does.
async fn verifier_key(app: &TestApp) -> ed25519_dalek::VerifyingKey {
    let keys = app
        .internal("records")
        .await
        .list_signing_keys(carehub_proto::identity::v1::ListSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    jwt::key_from_jwk_x(&keys[0].x).unwrap()
}

#[tokio::test]
async fn tokens_are_refused_once_the_revocation_feed_is_stale() {
    let mut app = common::spawn().await;
    app.register_patient("tariq@example.org", PASSWORD).await;
    let token = app.login("tariq@example.org", PASSWORD).await.access_token;

    let verifier = verifier(&app, Duration::from_millis(100), Duration::from_secs(1)).await;
    let refresher = verifier.spawn_refresher();
    eventually(Duration::from_secs(20), "verifier ready", || {
        let v = verifier.clone();
        async move { v.is_ready() }
    })
    .await;
    verifier.verify(&token).await.unwrap();

    // Identity goes away: after the staleness limit the verifier no longer vouches for tokens.
    let identity = app.take_identity().unwrap();
    identity.server.shutdown().await.unwrap();
    eventually(Duration::from_secs(30), "stale feed refused", || {
        let (v, t) = (verifier.clone(), token.clone());
        async move {
            v.verify(&t)
                .await
                .is_err_and(|e| e.code() == Code::Unavailable)
        }
    })
    .await;
    assert!(!verifier.is_ready());
    // Readiness is gated on the first load only: an identity outage must not pull every replica
    // of every service out of its Service (tokens are refused above all the same).
    assert!(verifier.has_loaded());

    refresher.abort();
    identity.handle.state.pool.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_full_revocation_page_resumes_where_it_stopped() {
    let app = common::spawn().await;
    // More revocations than one answer carries, spread over the last minute.
    sqlx::query(
        "INSERT INTO revocations (session_id, revoked_at)
         SELECT gen_random_uuid(), now() - interval '60 seconds' + i * interval '1 millisecond'
         FROM generate_series(1, 10050) AS i",
    )
    .execute(app.pool())
    .await
    .unwrap();
    let mut internal = app.internal("records").await;
    let first = internal
        .list_revocations(ListRevocationsRequest { since: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.revocations.len(), 10_000);
    let last_time = first.revocations.last().unwrap().revoke_time;
    assert_eq!(first.as_of, last_time, "resume from the last row sent");
    let rest = internal
        .list_revocations(ListRevocationsRequest { since: first.as_of })
        .await
        .unwrap()
        .into_inner();
    // The boundary row comes again (`since` is inclusive); nothing is skipped.
    let seen: std::collections::HashSet<String> = first
        .revocations
        .iter()
        .chain(rest.revocations.iter())
        .filter_map(|r| match &r.target {
            Some(revocation::Target::SessionId(id)) => Some(id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(seen.len(), 10_050);

    // The verifier reads on past a full page before it calls its feed fresh.
    let verifier = verifier(&app, Duration::from_secs(1), Duration::from_secs(10)).await;
    let read = verifier.refresh_revocations().await.unwrap();
    assert!(read > 10_000, "read {read}");
    app.shutdown().await;
}

/// Suspension and termination end every session of the account, for identity and for every
/// other service: tokens refused (code and reason), sessions marked revoked, the account on
/// the revocation feed — the only thing another service learns it from.
#[tokio::test]
async fn suspension_and_termination_revoke_every_session() {
    let app = common::spawn().await;
    let admin = app.create_admin().await;
    let admin_token = app.token_for(&admin).await;
    for action in ["TerminateUser", "SuspendUser"] {
        let email = format!("{}@example.org", action.to_lowercase());
        let user = app.register_patient(&email, PASSWORD).await;
        let sessions = [
            app.login(&email, PASSWORD).await,
            app.login(&email, PASSWORD).await,
        ];
        // Another service's verifier, fed before the action: it accepts the tokens now.
        let verifier = verifier(&app, Duration::from_millis(100), Duration::from_secs(10)).await;
        verifier.refresh_revocations().await.unwrap();
        for s in &sessions {
            verifier.verify(&s.access_token).await.unwrap();
        }

        let mut c = app.public("gateway").await;
        let reason = "policy violation".to_owned();
        let user_id = user.user_id.clone();
        match action {
            "TerminateUser" => c
                .terminate_user(
                    app.with_token(TerminateUserRequest { user_id, reason }, &admin_token),
                )
                .await
                .map(drop),
            _ => c
                .suspend_user(app.with_token(SuspendUserRequest { user_id, reason }, &admin_token))
                .await
                .map(drop),
        }
        .unwrap_or_else(|e| panic!("{action}: {e:?}"));

        // Every session row is revoked.
        let rows: Vec<(uuid::Uuid, Option<chrono::DateTime<chrono::Utc>>)> =
            sqlx::query_as("SELECT id, revoked_at FROM sessions WHERE user_id = $1::uuid")
                .bind(&user.user_id)
                .fetch_all(app.pool())
                .await
                .unwrap();
        assert_eq!(rows.len(), 2, "{action}");
        for (id, revoked_at) in &rows {
            assert!(revoked_at.is_some(), "{action}: session {id} not revoked");
        }
        // The account is on the revocation feed other services read.
        let feed = app
            .internal("records")
            .await
            .list_revocations(ListRevocationsRequest { since: None })
            .await
            .unwrap()
            .into_inner();
        let on_feed = feed.revocations.iter().any(|r| match &r.target {
            Some(revocation::Target::UserId(u)) => *u == user.user_id,
            Some(revocation::Target::SessionId(s)) => sessions.iter().any(|t| t.session_id == *s),
            None => false,
        });
        assert!(
            on_feed,
            "{action}: the account is not on the feed: {feed:?}"
        );

        for s in &sessions {
            // Identity refuses the access token...
            let e = c
                .get_profile(app.with_token(GetProfileRequest {}, &s.access_token))
                .await
                .unwrap_err();
            common::assert_status(&e, Code::PermissionDenied, Some("ACCOUNT_DISABLED"));
            // ...and the refresh token...
            let e = c
                .refresh_session(RefreshSessionRequest {
                    refresh_token: s.refresh_token.clone(),
                })
                .await
                .unwrap_err();
            common::assert_status(&e, Code::PermissionDenied, Some("ACCOUNT_DISABLED"));
            // ...and so does another service, which knows only the feed.
            verifier.refresh_revocations().await.unwrap();
            let e = verifier.verify(&s.access_token).await.unwrap_err();
            common::assert_status(&e, Code::Unauthenticated, Some("UNAUTHENTICATED_TOKEN"));
        }
        // The admin's own session is untouched.
        verifier.verify(&admin_token).await.unwrap();
    }
    app.shutdown().await;
}
