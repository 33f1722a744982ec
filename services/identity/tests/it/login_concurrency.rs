#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Logins under attack: parallel attempts are counted before they are checked (a lockout
//! cannot be raced), password hashing is a bounded resource (a storm is refused at once with
//! RetryInfo, other RPCs keep working, memory stays bounded), and every counted failure is
//! audited.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::*;
use common::{assert_status, PASSWORD};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A login as a well-behaved client makes it: UNAVAILABLE (hashing at capacity) must carry
/// RetryInfo, and is retried after it.
pub(crate) async fn login_retrying(
    c: &mut IdentityServiceClient<Channel>,
    req: LoginRequest,
    ip: Option<&str>,
) -> Result<LoginResponse, Status> {
    loop {
        let mut r = tonic::Request::new(req.clone());
        if let Some(ip) = ip {
            r.metadata_mut()
                .insert("x-forwarded-for", ip.parse().unwrap());
        }
        match c.login(r).await {
            Err(e) if e.code() == Code::Unavailable => {
                let d = carehub_platform::errors::details_of(&e);
                assert_eq!(d.reason.as_deref(), Some("UNAVAILABLE"), "{e:?}");
                let retry = d.retry_after.expect("UNAVAILABLE carries RetryInfo");
                tokio::time::sleep(retry.min(Duration::from_millis(200))).await;
            }
            other => return other.map(tonic::Response::into_inner),
        }
    }
}

/// What a burst of concurrent guesses at one account got: wrong passwords refused as
/// INVALID_CREDENTIALS (checked) or ACCOUNT_LOCKED (refused unchecked), and the right password,
/// sent last, as `Ok` or its refusal reason. Panics when a wrong password signs in or a refusal
/// is anything else.
pub(crate) struct Burst {
    pub invalid: usize,
    pub locked: usize,
    pub right_one: Result<(), String>,
}

/// `n` logins at once to `email` (from `ip` when given), the right password last.
pub(crate) async fn guess_burst(
    client: &IdentityServiceClient<Channel>,
    email: &str,
    n: usize,
    ip: Option<&'static str>,
) -> Burst {
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut c = client.clone();
        let email = email.to_owned();
        let password = if i + 1 == n {
            PASSWORD.to_owned()
        } else {
            format!("wrong guess number {i}")
        };
        tasks.push(tokio::spawn(async move {
            let r = login_retrying(
                &mut c,
                LoginRequest {
                    email,
                    password: password.clone(),
                },
                ip,
            )
            .await;
            (password == PASSWORD, r)
        }));
    }
    let (mut invalid, mut locked, mut right_one) = (0, 0, None);
    for t in tasks {
        let (is_right, r) = t.await.unwrap();
        match &r {
            Ok(_) => assert!(is_right, "a wrong password signed in"),
            Err(e) => {
                assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
                match reason(e).as_str() {
                    "INVALID_CREDENTIALS" => invalid += 1,
                    "ACCOUNT_LOCKED" => locked += 1,
                    other => panic!("unexpected reason {other}"),
                }
            }
        }
        if is_right {
            right_one = Some(r.map(|_| ()).map_err(|e| reason(&e)));
        }
    }
    Burst {
        invalid,
        locked,
        right_one: right_one.expect("the right password was sent"),
    }
}

pub(crate) fn reason(e: &Status) -> String {
    carehub_platform::errors::details_of(e)
        .reason
        .unwrap_or_default()
}

pub(crate) async fn throttle_row(app: &common::TestApp, email: &str) -> (i32, i64, i32) {
    sqlx::query_as(
        "SELECT consecutive_failures, total_failures, window_failures FROM login_throttle WHERE key = $1",
    )
    .bind(
        carehub_identity::store::sealed::account_throttle_key(&app.state().crypto, email)
            .unwrap(),
    )
    .fetch_one(app.pool())
    .await
    .unwrap()
}

pub(crate) async fn audit_count(app: &common::TestApp, kind: &str, failed: bool) -> i64 {
    carehub_platform::audit::seal_all(app.pool()).await.unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FROM carehub_platform.audit_events
         WHERE kind = $1 AND (outcome <> 'success') = $2",
    )
    .bind(kind)
    .bind(failed)
    .fetch_one(app.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn fifty_parallel_wrong_logins_are_all_counted_and_lock_the_account() {
    let app = common::spawn().await;
    app.register_patient("racer@example.org", PASSWORD).await;
    let client = app.public("gateway").await;
    let checks_before = app.state().hasher.verifications();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            login_retrying(
                &mut c,
                LoginRequest {
                    email: "racer@example.org".into(),
                    password: "definitely the wrong one".into(),
                },
                None,
            )
            .await
            .unwrap_err()
        }));
    }
    let mut by_reason = BTreeMap::<String, usize>::new();
    for t in tasks {
        let e = t.await.unwrap();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        *by_reason.entry(reason(&e)).or_default() += 1;
    }
    // Five free attempts (the default) were checked; the fifth set the lock as it was
    // reserved, so the other 45 were refused unchecked.
    assert_eq!(
        by_reason.get("INVALID_CREDENTIALS"),
        Some(&5),
        "{by_reason:?}"
    );
    assert_eq!(by_reason.get("ACCOUNT_LOCKED"), Some(&45), "{by_reason:?}");
    assert_eq!(app.state().hasher.verifications() - checks_before, 5);
    assert_eq!(throttle_row(&app, "racer@example.org").await, (50, 50, 50));

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
async fn two_hundred_guesses_with_the_right_one_among_them_get_only_the_policy_checks() {
    let app = common::spawn().await;
    app.register_patient("target@example.org", PASSWORD).await;
    let client = app.public("gateway").await;
    let free = app.state().settings.lockout_free_attempts as usize;
    let checks_before = app.state().hasher.verifications();
    // The right password is sent last of 200: by the time it is reserved the account is
    // locked, and it must be refused without a check.
    let Burst {
        invalid,
        locked,
        right_one,
    } = guess_burst(&client, "target@example.org", 200, None).await;
    let checks = app.state().hasher.verifications() - checks_before;
    match right_one {
        // The right password was refused unchecked: exactly the free attempts were checked.
        Err(reason) => {
            assert_eq!(reason, "ACCOUNT_LOCKED");
            assert_eq!(checks, free as u64, "password checks");
            assert_eq!((invalid, locked), (free, 200 - free));
        }
        // It was reserved among the first places (and signed in): it gave back its place
        // and the ones before it, so at most `free` more were checked after it.
        Ok(()) => {
            assert!(checks <= 2 * free as u64, "password checks: {checks}");
            assert_eq!(invalid + 1, checks as usize);
        }
    }
    // The account is locked now: the right password is refused.
    let e = client
        .clone()
        .login(LoginRequest {
            email: "target@example.org".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("ACCOUNT_LOCKED"));
    // One lockout, one event; every counted failure audited.
    assert_eq!(audit_count(&app, "identity.login.lockout", true).await, 1);
    let (_, total, _) = throttle_row(&app, "target@example.org").await;
    assert_eq!(audit_count(&app, "identity.login", true).await, total);
    app.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_pin_guesses_gets_five_checks_and_revokes_the_device() {
    let app = common::spawn().await;
    app.register_patient("pin@example.org", PASSWORD).await;
    let t = app.login("pin@example.org", PASSWORD).await;
    let client = app.public("gateway").await;
    let device = app.enroll_device_pin(&t.access_token, "482916").await;
    let checks_before = app.state().hasher.verifications();
    let events_before = audit_count(&app, "identity.login", true).await;
    let mut tasks = Vec::new();
    // 60 guesses at once, the right PIN last.
    for i in 0..60 {
        let mut c = client.clone();
        let req = UnlockWithPinRequest {
            device_id: device.device_id.clone(),
            device_secret: device.device_secret.clone(),
            pin: if i == 59 {
                "482916".to_owned()
            } else {
                format!("{:06}", 100_000 + i)
            },
        };
        tasks.push(tokio::spawn(async move {
            loop {
                match c.unlock_with_pin(req.clone()).await {
                    Err(e) if e.code() == Code::Unavailable => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => return other,
                }
            }
        }));
    }
    for t in tasks {
        let e = t.await.unwrap().expect_err("every guess is refused");
        assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    }
    // Only the five places the limit allows were checked; the sixth revoked the credential.
    assert_eq!(app.state().hasher.verifications() - checks_before, 5);
    let (revoked, counted): (bool, i32) = sqlx::query_as(
        "SELECT revoked_at IS NOT NULL, failed_attempts FROM device_pins WHERE id = $1::uuid",
    )
    .bind(&device.device_id)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert!(revoked);
    // Every counted attempt is audited: failed unlocks, and the one revocation. (Attempts
    // that arrived after the revocation found no credential, like an unknown device.)
    assert_eq!(
        audit_count(&app, "identity.device_pin.revoke", true).await,
        1
    );
    assert_eq!(
        audit_count(&app, "identity.login", true).await - events_before + 1,
        i64::from(counted)
    );
    assert!(counted >= 6, "{counted}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_wrong_mfa_codes_is_counted_and_audited_alike() {
    use carehub_identity::domain::totp;
    let app = common::spawn().await;
    app.register_patient("otp@example.org", PASSWORD).await;
    let t = app.login("otp@example.org", PASSWORD).await;
    let client = app.public("gateway").await;
    let secret = client
        .clone()
        .enroll_totp(app.with_token(EnrollTotpRequest {}, &t.access_token))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let secret = totp::decode_secret(&secret).unwrap();
    let now = chrono::Utc::now().timestamp();
    client
        .clone()
        .confirm_totp(app.with_token(
            ConfirmTotpRequest {
                totp_code: totp::code_at(&secret, now),
            },
            &t.access_token,
        ))
        .await
        .unwrap();
    let challenge = mfa_challenge(&client, "otp@example.org").await;
    // A code no step around now (the burst takes well under a minute) accepts.
    let near: Vec<String> = (-3..=3)
        .map(|k| totp::code_at(&secret, now + k * totp::STEP_SECS))
        .collect();
    let wrong = (0..10)
        .map(|d| format!("{d}{d}{d}{d}{d}{d}"))
        .find(|c| !near.contains(c))
        .unwrap();
    let events_before = audit_count(&app, "identity.login.mfa", true).await;

    let mut tasks = Vec::new();
    for _ in 0..30 {
        let mut c = client.clone();
        let req = CompleteMfaChallengeRequest {
            challenge_token: challenge.clone(),
            code: Some(complete_mfa_challenge_request::Code::TotpCode(
                wrong.clone(),
            )),
        };
        tasks.push(tokio::spawn(async move {
            c.complete_mfa_challenge(req).await.unwrap_err()
        }));
    }
    let mut by_reason = BTreeMap::<String, usize>::new();
    for task in tasks {
        let e = task.await.unwrap();
        *by_reason.entry(reason(&e)).or_default() += 1;
    }
    // Five codes were checked (the challenge's limit); the rest found a dead challenge.
    assert_eq!(by_reason.get("MFA_REQUIRED"), Some(&5), "{by_reason:?}");
    assert_eq!(by_reason.get("CODE_INVALID"), Some(&25), "{by_reason:?}");
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM mfa_challenges")
        .fetch_one(app.pool())
        .await
        .unwrap();
    // Every counted attempt is audited, and every audited failure counted.
    assert_eq!(attempts, 5);
    assert_eq!(
        audit_count(&app, "identity.login.mfa", true).await - events_before,
        i64::from(attempts)
    );

    // The challenge is spent: even the right code is refused now, uncounted and unaudited.
    let e = client
        .clone()
        .complete_mfa_challenge(CompleteMfaChallengeRequest {
            challenge_token: challenge.clone(),
            code: Some(complete_mfa_challenge_request::Code::TotpCode(
                totp::code_at(&secret, chrono::Utc::now().timestamp()),
            )),
        })
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, Some("CODE_INVALID"));
    assert_eq!(
        audit_count(&app, "identity.login.mfa", true).await - events_before,
        5
    );
    assert_eq!(
        app.count("sessions").await,
        1,
        "only the first login's session"
    );

    // A wrong code whose failure cannot be audited is not counted either: the count and the
    // event commit together or not at all.
    let challenge = mfa_challenge(&client, "otp@example.org").await;
    for sql in [
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'audit trail refused (test)'; END $$",
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON carehub_platform.audit_queue
         FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
    ] {
        sqlx::query(sql).execute(app.pool()).await.unwrap();
    }
    let e = client
        .clone()
        .complete_mfa_challenge(CompleteMfaChallengeRequest {
            challenge_token: challenge,
            code: Some(complete_mfa_challenge_request::Code::TotpCode(wrong)),
        })
        .await
        .unwrap_err();
    assert_ne!(reason(&e), "MFA_REQUIRED", "{e:?}");
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM mfa_challenges ORDER BY created_at DESC LIMIT 1")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(
        attempts, 0,
        "a failure that could not be audited was counted"
    );
    app.shutdown().await;
}

/// A login of `email` (with TOTP on) with the right password: its challenge token.
async fn mfa_challenge(client: &IdentityServiceClient<Channel>, email: &str) -> String {
    match client
        .clone()
        .login(LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .result
    {
        Some(login_response::Result::MfaChallenge(ch)) => ch.challenge_token,
        other => panic!("expected a challenge, got {other:?}"),
    }
}

/// Resident memory of this test process (nextest runs each test in its own process).
fn resident_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

/// The bound the README states for identity's resident memory after a login storm (here with
/// the test client in the same process): the hashing threads' argon2 memory (19 MiB each, one
/// thread per core) plus the rest of the process.
const STORM_RSS_BOUND_MIB: u64 = 128;

#[tokio::test]
async fn a_login_storm_is_answered_bounded_and_audited_while_others_read() {
    // Bounds the process's resident memory: needs a process of its own (under `cargo test` too).
    if !carehub_testkit::process::in_own_process(
        "login_concurrency::a_login_storm_is_answered_bounded_and_audited_while_others_read",
    ) {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter("error")
        .try_init();
    let app = common::spawn().await;
    let accounts: Vec<String> = (0..10).map(|i| format!("storm{i}@example.org")).collect();
    for a in &accounts {
        app.register_patient(a, PASSWORD).await;
    }
    app.register_patient("reader@example.org", PASSWORD).await;
    let reader_token = app.login("reader@example.org", PASSWORD).await.access_token;
    let client = app.public("gateway").await;

    // A signed-in bystander reads their profile all through the storm.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let mut c = client.clone();
        let stop = stop.clone();
        let req = app.with_token(GetProfileRequest {}, &reader_token);
        let (meta, _, msg) = req.into_parts();
        tokio::spawn(async move {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                let r = tonic::Request::from_parts(meta.clone(), Default::default(), msg);
                c.get_profile(r).await.expect("the reader is served");
                reads += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            reads
        })
    };

    // 400 logins at once, from 40 addresses, over the ten accounts and unknown ones.
    let mut tasks = Vec::new();
    // Attempts refused at once because every hashing slot and the queue were taken.
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for i in 0..400usize {
        let mut c = client.clone();
        let email = if i % 8 == 7 {
            format!("ghost{i}@example.org")
        } else {
            accounts[i % accounts.len()].clone()
        };
        let password = if i % 50 == 0 {
            PASSWORD.to_owned()
        } else {
            format!("storm guess {i}")
        };
        let ip = format!("203.0.113.{}", i % 40);
        let busy = busy.clone();
        tasks.push(tokio::spawn(async move {
            // Attackers retry too: a few times, shortly after a refusal.
            let mut tries = 0;
            loop {
                let mut r = tonic::Request::new(LoginRequest {
                    email: email.clone(),
                    password: password.clone(),
                });
                r.metadata_mut()
                    .insert("x-forwarded-for", ip.parse().unwrap());
                let answer = c.login(r).await;
                tries += 1;
                match &answer {
                    Err(e) if e.code() == Code::Unavailable && tries < 20 => {
                        assert!(
                            carehub_platform::errors::details_of(e)
                                .retry_after
                                .is_some(),
                            "UNAVAILABLE without RetryInfo: {e:?}"
                        );
                        busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ => return answer,
                }
            }
        }));
    }
    let mut outcomes = BTreeMap::<String, usize>::new();
    for t in tasks {
        let key = match t.await.unwrap() {
            Ok(_) => "OK".to_owned(),
            Err(e) => {
                let d = carehub_platform::errors::details_of(&e);
                if e.code() == Code::Unavailable {
                    assert!(
                        d.retry_after.is_some(),
                        "UNAVAILABLE without RetryInfo: {e:?}"
                    );
                }
                format!("{:?}/{}", e.code(), d.reason.unwrap_or_default())
            }
        };
        *outcomes.entry(key).or_default() += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.await.unwrap();
    assert!(reads > 0);
    let allowed = [
        "OK",
        "Unauthenticated/INVALID_CREDENTIALS",
        "Unauthenticated/ACCOUNT_LOCKED",
        "ResourceExhausted/RATE_LIMITED",
        "Unavailable/UNAVAILABLE",
    ];
    for k in outcomes.keys() {
        assert!(
            allowed.contains(&k.as_str()),
            "unexpected answer {k}: {outcomes:?}"
        );
    }
    assert_eq!(outcomes.values().sum::<usize>(), 400);
    // Whether a refused attempt's retries later got through depends on the machine's speed;
    // that the storm overflowed the slots and queue at all does not.
    let refused_busy = busy.load(std::sync::atomic::Ordering::Relaxed)
        + outcomes
            .get("Unavailable/UNAVAILABLE")
            .copied()
            .unwrap_or(0);
    assert!(
        refused_busy > 0,
        "a storm of 400 exceeds the hashing slots and queue: {outcomes:?}"
    );

    // Every counted failure is audited: the totals of the account keys equal the failed
    // login events.
    let counted: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(total_failures), 0)::bigint FROM login_throttle WHERE key LIKE 'acct:%'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    let failures = outcomes
        .iter()
        .filter(|(k, _)| !k.starts_with("OK") && !k.starts_with("Unavailable"))
        .map(|(_, n)| *n as i64)
        .sum::<i64>();
    assert_eq!(counted, failures, "{outcomes:?}");
    assert_eq!(audit_count(&app, "identity.login", true).await, counted);

    let rss = resident_mib();
    eprintln!("storm answers: {outcomes:?}; resident memory afterwards: {rss} MiB");
    // The bound is the process's: it holds when this test has its process to itself, as under
    // nextest (scripts/test.sh, scripts/mutants.sh) and, under `cargo test`, in the child process
    // `in_own_process` ran it in (the binary's other tests would count too otherwise).
    if carehub_testkit::process::has_own_process() {
        assert!(
            rss < STORM_RSS_BOUND_MIB,
            "resident memory after the storm: {rss} MiB"
        );
    } else {
        eprintln!("resident-memory bound not checked: the test does not have its own process");
    }
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
