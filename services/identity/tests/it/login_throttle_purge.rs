#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The purge of `login_throttle`: rows of unknown emails and source addresses an attacker
//! tried are deleted once nothing of the throttle needs them; a lock in force, a budget still
//! counting and an account's recent failure streak are kept, and a purge running through a
//! burst of guesses lets none more through.

use crate::common;
use crate::login_concurrency::{audit_count, guess_burst, throttle_row, Burst};

use std::collections::BTreeSet;
use std::time::Duration;

use carehub_identity::store::sealed::{account_throttle_key, source_throttle_key};
use carehub_identity::store::sessions::{purge_login_throttle, THROTTLE_PURGE_MAX_BATCHES};
use carehub_proto::identity::v1::*;
use common::{assert_status, PASSWORD};
use tonic::Code;

const DAY: i64 = 86_400;

fn acct(app: &common::TestApp, email: &str) -> String {
    account_throttle_key(&app.state().crypto, email).unwrap()
}

fn src(app: &common::TestApp, ip: &str) -> String {
    source_throttle_key(&app.state().crypto, ip).unwrap()
}

/// A throttle row as time would have left it: its window started `window_age` seconds ago,
/// its last attempt was `idle` seconds ago, its lock ends `lock_in` seconds from now (negative:
/// ended).
async fn put(
    app: &common::TestApp,
    key: &str,
    consecutive: i32,
    window_age: i64,
    window_failures: i32,
    lock_in: Option<i64>,
    idle: i64,
) {
    sqlx::query(
        "INSERT INTO login_throttle
             (key, consecutive_failures, total_failures, window_start, window_failures,
              locked_until, updated_at)
         VALUES ($1, $2, $2, now() - make_interval(secs => $3), $4,
                 now() + make_interval(secs => $5), now() - make_interval(secs => $6))",
    )
    .bind(key)
    .bind(consecutive)
    .bind(window_age as f64)
    .bind(window_failures)
    .bind(lock_in.map(|s| s as f64))
    .bind(idle as f64)
    .execute(app.pool())
    .await
    .unwrap();
}

async fn keys(app: &common::TestApp) -> BTreeSet<String> {
    sqlx::query_scalar("SELECT key FROM login_throttle")
        .fetch_all(app.pool())
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn wrong_login(app: &common::TestApp, email: &str, ip: &str) -> tonic::Status {
    let mut r = tonic::Request::new(LoginRequest {
        email: email.into(),
        password: "not the password at all".into(),
    });
    r.metadata_mut()
        .insert("x-forwarded-for", ip.parse().unwrap());
    app.public("gateway").await.login(r).await.unwrap_err()
}

async fn right_login(app: &common::TestApp, email: &str) -> Result<LoginResponse, tonic::Status> {
    app.public("gateway")
        .await
        .login(LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn stale_rows_are_purged_and_locks_budgets_and_recent_streaks_kept() {
    let app = common::spawn().await;
    let retention = i64::try_from(app.state().settings.login_throttle_retention_secs).unwrap();
    assert_eq!(retention, DAY, "the default");

    // Rows an attacker leaves: unknown emails tried from one address, through real logins,
    // then aged two days (as if the attacker had gone).
    let ghosts = [
        "ghost1@example.org",
        "ghost2@example.org",
        "ghost3@example.org",
    ];
    for g in ghosts {
        let e = wrong_login(&app, g, "198.51.100.7").await;
        assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    }
    let attacker: Vec<String> = ghosts
        .iter()
        .map(|g| acct(&app, g))
        .chain([src(&app, "198.51.100.7")])
        .collect();
    let present = keys(&app).await;
    assert!(attacker.iter().all(|k| present.contains(k)), "{present:?}");
    sqlx::query(
        "UPDATE login_throttle SET window_start = window_start - interval '2 days',
             updated_at = updated_at - interval '2 days',
             locked_until = locked_until - interval '2 days'
         WHERE key = ANY($1)",
    )
    .bind(&attacker)
    .execute(app.pool())
    .await
    .unwrap();

    // Stale: deleted.
    let stale_source = src(&app, "198.51.100.8"); // its minute ended two minutes ago
    put(&app, &stale_source, 300, 120, 300, Some(-60), 120).await;
    let old_streak = acct(&app, "old-streak@example.org"); // idle past the retention
    put(&app, &old_streak, 9, 2 * DAY, 9, Some(-DAY), 2 * DAY).await;
    let no_streak = acct(&app, "no-streak@example.org"); // a success ended its streak
    put(&app, &no_streak, 0, 2 * 3600, 3, None, 2 * 3600).await;

    // Still needed: kept.
    app.register_patient("locked@example.org", PASSWORD).await;
    let locked = acct(&app, "locked@example.org"); // a lock in force (window long over)
    put(&app, &locked, 20, 2 * DAY, 20, Some(600), 2 * DAY).await;
    app.register_patient("budget@example.org", PASSWORD).await;
    let budget = acct(&app, "budget@example.org"); // 99 of its 100 this hour, no streak
    put(&app, &budget, 0, 1800, 99, None, 1800).await;
    let recent_streak = acct(&app, "recent@example.org"); // idle 2 h, within the retention
    put(&app, &recent_streak, 7, 2 * 3600, 7, Some(-3600), 2 * 3600).await;
    let counting_source = src(&app, "198.51.100.9"); // its minute is still counting
    put(&app, &counting_source, 3, 30, 3, None, 30).await;
    let locked_source = src(&app, "198.51.100.10"); // a lock in force past its window
    put(&app, &locked_source, 1, 120, 1, Some(60), 120).await;

    // Batches of two: a run goes on until a batch comes back short.
    let purged = purge_login_throttle(app.pool(), retention, 2, THROTTLE_PURGE_MAX_BATCHES)
        .await
        .unwrap();
    assert_eq!(purged, attacker.len() as u64 + 3);
    let kept: BTreeSet<String> = [
        &locked,
        &budget,
        &recent_streak,
        &counting_source,
        &locked_source,
    ]
    .into_iter()
    .cloned()
    .collect();
    assert_eq!(keys(&app).await, kept);
    // A bounded run: one batch of one deletes one row at most.
    put(&app, &stale_source, 1, 120, 1, None, 120).await;
    put(&app, &old_streak, 9, 2 * DAY, 9, None, 2 * DAY).await;
    assert_eq!(
        purge_login_throttle(app.pool(), retention, 1, 1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        purge_login_throttle(app.pool(), retention, 1000, 1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        purge_login_throttle(app.pool(), retention, 1000, 1)
            .await
            .unwrap(),
        0
    );
    assert_eq!(keys(&app).await, kept);

    // The kept rows still rule: the lock holds against the right password ...
    let e = right_login(&app, "locked@example.org").await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("ACCOUNT_LOCKED"));
    // ... and the hour's budget goes on counting: its 100th failure locks the account for the
    // rest of the hour (about half an hour).
    let e = wrong_login(&app, "budget@example.org", "198.51.100.11").await;
    assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    let e = right_login(&app, "budget@example.org").await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("ACCOUNT_LOCKED"));
    let retry = carehub_platform::errors::details_of(&e)
        .retry_after
        .unwrap();
    assert!(
        retry > Duration::from_secs(1500) && retry <= Duration::from_secs(1800),
        "{retry:?}"
    );
    // A purged attacker row starts afresh, like a never-tried email.
    let e = wrong_login(&app, "ghost1@example.org", "198.51.100.12").await;
    assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    let (consecutive, _, window) = throttle_row(&app, "ghost1@example.org").await;
    assert_eq!((consecutive, window), (1, 1));
    app.shutdown().await;
}

#[tokio::test]
async fn identity_purges_in_the_background() {
    let app = common::spawn_with(|c| c.identity.login_throttle_purge_secs = 1).await;
    let stale = acct(&app, "gone@example.org");
    put(&app, &stale, 1, 2 * DAY, 1, None, 2 * DAY).await;
    let live = acct(&app, "live@example.org");
    put(&app, &live, 1, 60, 1, None, 60).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while keys(&app).await.contains(&stale) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stale row was not purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(keys(&app).await, BTreeSet::from([live]));
    app.shutdown().await;
}

#[tokio::test]
async fn a_purge_during_a_burst_of_guesses_lets_none_more_through() {
    let app = common::spawn().await;
    app.register_patient("burst@example.org", PASSWORD).await;
    let free = app.state().settings.lockout_free_attempts as usize;
    // The account's own row is stale as the burst begins (its last attempt two hours ago, a
    // success), and 20 000 stale rows keep the purge busy throughout.
    let key = acct(&app, "burst@example.org");
    put(&app, &key, 0, 2 * 3600, 1, None, 2 * 3600).await;
    sqlx::query(
        "INSERT INTO login_throttle (key, consecutive_failures, window_start, window_failures,
                                     updated_at)
         SELECT 'acct:stale' || g, 1, now() - interval '2 days', 1, now() - interval '2 days'
         FROM generate_series(1, 20000) g",
    )
    .execute(app.pool())
    .await
    .unwrap();

    // The most eager purge there can be: streaks forgotten at once (retention 0), small
    // batches, over and over until the burst is over.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let purger = {
        let pool = app.pool().clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut runs, mut purged) = (0u32, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || runs == 0 {
                purged += purge_login_throttle(&pool, 0, 50, 4).await.unwrap();
                runs += 1;
                tokio::task::yield_now().await;
            }
            (runs, purged)
        })
    };

    let client = app.public("gateway").await;
    let checks_before = app.state().hasher.verifications();
    // 100 guesses at once, the right password last.
    let Burst {
        invalid,
        locked: refused,
        right_one,
    } = guess_burst(&client, "burst@example.org", 100, Some("192.0.2.44")).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (runs, purged) = purger.await.unwrap();
    let checks = app.state().hasher.verifications() - checks_before;
    match right_one {
        Err(reason) => {
            assert_eq!(reason, "ACCOUNT_LOCKED");
            assert_eq!(checks, free as u64, "password checks");
            assert_eq!((invalid, refused), (free, 100 - free));
        }
        Ok(()) => {
            assert!(checks <= 2 * free as u64, "password checks: {checks}");
            assert_eq!(invalid + 1, checks as usize);
        }
    }
    assert!(runs > 1 && purged > 0, "runs {runs}, purged {purged}");

    // After the burst, and after yet another purge, the lock still holds and the streak and
    // every counted failure are still there.
    purge_login_throttle(app.pool(), 0, 1000, THROTTLE_PURGE_MAX_BATCHES)
        .await
        .unwrap();
    let stale_left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM login_throttle WHERE key LIKE 'acct:stale%'")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(stale_left, 0);
    let e = right_login(&app, "burst@example.org").await.unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("ACCOUNT_LOCKED"));
    let (consecutive, total, _) = throttle_row(&app, "burst@example.org").await;
    assert!(consecutive >= 100 - 2 * free as i32, "{consecutive}");
    assert_eq!(audit_count(&app, "identity.login", true).await, total);
    assert_eq!(audit_count(&app, "identity.login.lockout", true).await, 1);
    app.shutdown().await;
}
