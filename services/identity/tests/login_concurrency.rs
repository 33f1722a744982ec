#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Parallel attempts are counted exactly: the throttle counters move in one atomic statement.

mod common;

use carehub_proto::identity::v1::*;
use common::{assert_status, PASSWORD};
use tonic::Code;

#[tokio::test]
async fn fifty_parallel_wrong_logins_are_all_counted_and_lock_the_account() {
    let app = common::spawn().await;
    app.register_patient("racer@example.org", PASSWORD).await;
    let client = app.public("gateway").await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.login(LoginRequest {
                email: "racer@example.org".into(),
                password: "definitely the wrong one".into(),
            })
            .await
            .unwrap_err()
        }));
    }
    for t in tasks {
        let e = t.await.unwrap();
        let reason = carehub_platform::errors::details_of(&e).reason.unwrap();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(
            reason == "INVALID_CREDENTIALS" || reason == "ACCOUNT_LOCKED",
            "{reason}"
        );
    }
    let (consecutive, total, window): (i32, i64, i32) = sqlx::query_as(
        "SELECT consecutive_failures, total_failures, window_failures FROM login_throttle WHERE key = $1",
    )
    .bind(
        carehub_identity::store::sealed::account_throttle_key(
            &app.state().crypto,
            "racer@example.org",
        )
        .unwrap(),
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!((consecutive, total, window), (50, 50, 50));

    // Locked: even the right password is refused, with a time to retry.
    let e = client
        .clone()
        .login(LoginRequest {
            email: "racer@example.org".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("ACCOUNT_LOCKED"));
    let retry = carehub_platform::errors::details_of(&e)
        .retry_after
        .unwrap();
    assert!(retry.as_secs() >= 60, "{retry:?}");
    assert_eq!(app.count("sessions").await, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn parallel_refreshes_with_one_token_end_the_session() {
    let app = common::spawn().await;
    app.register_patient("twin@example.org", PASSWORD).await;
    let t = app.login("twin@example.org", PASSWORD).await;
    let client = app.public("gateway").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = client.clone();
        let refresh_token = t.refresh_token.clone();
        tasks.push(tokio::spawn(async move {
            c.refresh_session(RefreshSessionRequest { refresh_token })
                .await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                let reason = carehub_platform::errors::details_of(&e).reason.unwrap();
                assert!(reason == "REFRESH_TOKEN_REUSED", "{e:?}");
            }
        }
    }
    assert_eq!(ok, 1, "exactly one presentation spends the token");
    let revoked: bool =
        sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM sessions WHERE id = $1::uuid")
            .bind(&t.session_id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert!(revoked);
    app.shutdown().await;
}
