#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Identity's PHI at rest: the database holds no plaintext name, date of birth, email, phone,
//! client IP address, user agent or personal free text (raw rows of every table of identity's
//! schema and of the platform schema, audit trail included, read back), login and uniqueness by
//! email work
//! through the blind index, also after the blind-index key is rotated, and a ciphertext moved
//! to another user's row is refused.

use crate::common;

use carehub_identity::domain::totp;
use carehub_platform::keys::KeyName;
use carehub_proto::identity::v1::*;
use common::{assert_status, patient_request, RotatingKeys, PASSWORD};
use tonic::Code;

/// The end user's address and user agent, as the gateway forwards them.
const CLIENT_IP: &str = "203.0.113.77";
const CLIENT_UA: &str = "TestBrowser/9.1";

fn from_client<T>(msg: T) -> tonic::Request<T> {
    forwarded(tonic::Request::new(msg))
}

/// `r` as the gateway forwards it from the end user's browser.
fn forwarded<T>(mut r: tonic::Request<T>) -> tonic::Request<T> {
    r.metadata_mut()
        .insert("x-forwarded-for", CLIENT_IP.parse().unwrap());
    r.metadata_mut()
        .insert("x-forwarded-user-agent", CLIENT_UA.parse().unwrap());
    r
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn the_database_holds_no_plaintext_phi() {
    let app = common::spawn().await;
    let mut req = patient_request("Zelda.Quill@Example.org", PASSWORD);
    req.given_name = "Zelda".into();
    req.family_name = "Quillfeather".into();
    req.phone = "+15550104477".into();
    // With an idempotency key: the stored answer (which echoes the PHI) is sealed too.
    let user = app
        .public("gateway")
        .await
        .register_patient(forwarded(app.with_key(req, "register-patient-0001")))
        .await
        .unwrap()
        .into_inner();
    // Through the API everything reads back in clear, from cached keys: reading PHI costs no
    // key-table query (and the key source answers from memory, so no Vault call either).
    let token = app
        .login("zelda.quill@example.org", PASSWORD)
        .await
        .access_token;
    let before = app.state().crypto.counters();
    for _ in 0..3 {
        let me = app
            .public("gateway")
            .await
            .get_profile(app.with_token(GetProfileRequest {}, &token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(me.given_name, "Zelda");
    }
    assert_eq!(app.state().crypto.counters(), before);
    assert_eq!(user.email, "zelda.quill@example.org");
    assert_eq!(user.family_name, "Quillfeather");
    assert_eq!(user.phone, "+15550104477");

    // A login from the end user's browser through the gateway: the session keeps the address
    // and user agent, and the user sees them in ListSessions.
    let mut gateway = app.public("gateway").await;
    let login = |password: &str| {
        from_client(LoginRequest {
            email: "zelda.quill@example.org".into(),
            password: password.into(),
        })
    };
    let resp = gateway.login(login(PASSWORD)).await.unwrap().into_inner();
    let Some(login_response::Result::Tokens(t)) = resp.result else {
        panic!("expected tokens")
    };
    let sessions = gateway
        .list_sessions(app.with_token(ListSessionsRequest { page: None }, &t.access_token))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let s = sessions.iter().find(|s| s.current).unwrap();
    assert_eq!(
        (s.ip_address.as_str(), s.user_agent.as_str()),
        (CLIENT_IP, CLIENT_UA)
    );
    // A failed attempt from there counts against the source (login_throttle) ...
    let e = gateway
        .login(login("not the password at all"))
        .await
        .unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    let throttled: Vec<String> =
        sqlx::query_scalar("SELECT key FROM login_throttle WHERE key LIKE 'src:%'")
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(throttled.len(), 1, "{throttled:?}");
    // ... and with TOTP on, a login from there leaves a pending challenge (mfa_challenges).
    let enrolled = gateway
        .enroll_totp(app.with_token(EnrollTotpRequest {}, &t.access_token))
        .await
        .unwrap()
        .into_inner();
    let secret = totp::decode_secret(&enrolled.secret).unwrap();
    gateway
        .confirm_totp(app.with_token(
            ConfirmTotpRequest {
                totp_code: totp::code_at(&secret, chrono::Utc::now().timestamp()),
            },
            &t.access_token,
        ))
        .await
        .unwrap();
    let resp = gateway.login(login(PASSWORD)).await.unwrap().into_inner();
    assert!(matches!(
        resp.result,
        Some(login_response::Result::MfaChallenge(_))
    ));
    assert_eq!(app.count("mfa_challenges").await, 1);

    // A profile update, consents, a device PIN, all from the browser.
    let updated = gateway
        .update_profile(forwarded(app.with_token(
            UpdateProfileRequest {
                user: Some(User {
                    family_name: "Marchbanks".into(),
                    phone: "+15550109988".into(),
                    ..User::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["family_name".into(), "phone".into()],
                }),
            },
            &t.access_token,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.family_name, "Marchbanks");
    gateway
        .update_consents(forwarded(app.with_token(
            UpdateConsentsRequest {
                accept_terms_version: "2026-01".into(),
                marketing_opt_in: Some(true),
                sms_opt_in: Some(true),
                ..UpdateConsentsRequest::default()
            },
            &t.access_token,
        )))
        .await
        .unwrap();
    gateway
        .enroll_device_pin(forwarded(app.with_token(
            EnrollDevicePinRequest {
                pin: "482913".into(),
                device_name: "Zelda's Pixel 9".into(),
            },
            &t.access_token,
        )))
        .await
        .unwrap();
    assert_eq!(app.count("device_pins").await, 1);
    // An admin, at the gateway too, suspends the account with a reason naming the person and
    // their health.
    let (_, admin_token) = app.admin_token().await;
    gateway
        .suspend_user(forwarded(app.with_token(
            SuspendUserRequest {
                user_id: user.user_id.clone(),
                reason:
                    "Zelda Quillfeather (HIV clinic) threatened staff, call +15550104477".into(),
            },
            &admin_token,
        )))
        .await
        .unwrap();
    let reason: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT status_reason FROM users WHERE id = $1::uuid")
            .bind(&user.user_id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert!(
        reason.is_some_and(|r| r.len() > 60),
        "the reason is kept, sealed"
    );
    // The audit trail recorded those calls with the client's address and user agent (sealed).
    carehub_platform::audit::seal_all(app.pool()).await.unwrap();
    let (audited, with_client): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE source_ip IS NOT NULL AND user_agent IS NOT NULL)
         FROM carehub_platform.audit_events",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert!(
        with_client >= 6 && audited >= with_client,
        "{audited} {with_client}"
    );
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT kind FROM carehub_platform.audit_events")
            .fetch_all(app.pool())
            .await
            .unwrap();
    for kind in [
        "identity.account.suspend",
        "identity.device_pin.enroll",
        "identity.consent.update",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} not in {kinds:?}");
    }

    // Every column of every table of identity's schema and of the platform's, as Postgres text
    // (bytea as hex): tables added later are covered without touching this test.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)
           FROM information_schema.tables
         WHERE table_schema IN ('public', 'carehub_platform') AND table_type = 'BASE TABLE'
         ORDER BY 1",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    for t in [
        "public.sessions",
        "public.mfa_challenges",
        "public.login_throttle",
        "public.users",
        "public.device_pins",
        "public.consent_events",
        "carehub_platform.audit_events",
        "carehub_platform.audit_queue",
        "carehub_platform.idempotency_keys",
        "carehub_platform.data_keys",
    ] {
        assert!(tables.iter().any(|x| x == t), "{t} missing from {tables:?}");
    }
    let mut dump = String::new();
    for table in &tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM {table} t"))
                .fetch_all(app.pool())
                .await
                .unwrap();
        dump.push_str(&rows.join("\n"));
        dump.push('\n');
    }
    assert!(dump.contains(&user.user_id), "the dump reads the rows");
    for secret in [
        "zelda",
        "Zelda",
        "quill",
        "Quillfeather",
        "5550104477",
        "1990-05-17",
        "example.org",
        CLIENT_IP,
        "113.77",
        CLIENT_UA,
        "TestBrowser",
        "Marchbanks",
        "5550109988",
        "HIV",
        "threatened",
        "Pixel",
    ] {
        assert!(!dump.contains(secret), "{secret} stored in clear: {dump}");
    }
    // The hex form of the plaintext is not there either (bytea is dumped as hex).
    for secret in [
        "quillfeather",
        "Quillfeather",
        "Marchbanks",
        "5550104477",
        CLIENT_IP,
        CLIENT_UA,
        "HIV clinic",
        "Zelda's Pixel",
    ] {
        assert!(!dump.contains(&hex(secret)), "{secret} stored as bytes");
    }

    // One data key for the user, wrapped, in the platform schema.
    let (keys, wrapped_len): (i64, Option<i32>) = sqlx::query_as(
        "SELECT count(*), max(length(wrapped_key)) FROM carehub_platform.data_keys
         WHERE service = 'identity' AND subject = $1",
    )
    .bind(&user.user_id)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!((keys, wrapped_len), (1, Some(60)));
    app.shutdown().await;
}

#[tokio::test]
async fn login_and_uniqueness_by_email_go_through_the_blind_index() {
    let keys = RotatingKeys::new();
    let app = common::spawn_with_keys(keys.clone(), |_| {}).await;
    app.register_patient("Mixed.Case@Example.org", PASSWORD)
        .await;
    app.login("mixed.case@EXAMPLE.org", PASSWORD).await;

    let e = app
        .public("gateway")
        .await
        .register_patient(patient_request("MIXED.case@example.ORG", PASSWORD))
        .await
        .unwrap_err();
    assert_status(&e, Code::AlreadyExists, Some("ALREADY_EXISTS"));

    // A new blind-index key: old rows are still found and still count for uniqueness.
    assert_eq!(keys.rotate(KeyName::BlindIndex), 2);
    app.login("Mixed.Case@example.org", PASSWORD).await;
    let e = app
        .public("gateway")
        .await
        .register_patient(patient_request("mixed.case@example.org", PASSWORD))
        .await
        .unwrap_err();
    assert_status(&e, Code::AlreadyExists, Some("ALREADY_EXISTS"));
    app.register_patient("second@example.org", PASSWORD).await;
    app.login("SECOND@example.org", PASSWORD).await;
    let versions: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT email_bidx FROM users ORDER BY created_at")
            .fetch_all(app.pool())
            .await
            .unwrap();
    let versions: Vec<Option<u32>> = versions
        .iter()
        .map(|i| carehub_platform::crypto::BlindIndexer::version_of(i))
        .collect();
    assert_eq!(versions, vec![Some(1), Some(2)]);

    // A wrong email is just invalid credentials.
    let e = app
        .public("gateway")
        .await
        .login(LoginRequest {
            email: "nobody@example.org".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_status(&e, Code::Unauthenticated, Some("INVALID_CREDENTIALS"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_user_is_refused() {
    let app = common::spawn().await;
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let bob = app.register_patient("bob@example.org", PASSWORD).await;
    // Copy Ann's encrypted family name onto Bob's row.
    sqlx::query(
        "UPDATE users SET family_name = (SELECT family_name FROM users WHERE id = $1::uuid)
         WHERE id = $2::uuid",
    )
    .bind(&ann.user_id)
    .bind(&bob.user_id)
    .execute(app.pool())
    .await
    .unwrap();
    let token = app.login("bob@example.org", PASSWORD).await.access_token;
    let e = app
        .public("gateway")
        .await
        .get_profile(app.with_token(GetProfileRequest {}, &token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(!e.message().contains("Example"), "no PHI in errors: {e:?}");
    // Ann is untouched.
    let token = app.login("ann@example.org", PASSWORD).await.access_token;
    let me = app
        .public("gateway")
        .await
        .get_profile(app.with_token(GetProfileRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.family_name, "Example");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registrations_do_not_starve_on_key_creation() {
    // Every registration holds a transaction and creates the user's data key: with the
    // service's pool this small, key work on that same pool would wait for itself.
    let app = common::spawn_with(|c| c.server.database.max_connections = 2).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = app.public("gateway").await;
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            client
                .register_patient(patient_request(&format!("burst{i}@example.org"), PASSWORD))
                .await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(app.count("users").await, 8);
    app.shutdown().await;
}
