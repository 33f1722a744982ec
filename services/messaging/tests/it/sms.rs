//! The SMS consent ledger: carrier keywords through the signed webhook (STOP, START, HELP and
//! the other keywords), forged signatures refused, the ledger read and written through the API
//! by those allowed to, and identity's communication preferences agreeing with it in both
//! directions (through the two services' outboxes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use carehub_identity::domain::account::Contact as IdContact;
use carehub_identity::store::accounts::{self as id_accounts, ProfileUpdate};
use carehub_identity::store::preferences::{self as id_prefs, PrefsUpdate};
use carehub_messaging::config::MessagingConfig;
use carehub_platform::auth::Role;
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::{
    CommunicationPreferences, UpdateCommunicationPreferencesRequest,
};
use carehub_proto::messaging::v1::*;
use hmac::{Hmac, Mac};
use secrecy::SecretString;
use sha1::Sha1;
use tonic::Code;

use crate::common::{self, as_user, assert_status, keyed, Suite, User};

pub const TOKEN: &str = "test-twilio-auth-token-5f2c0e";
pub const PUBLIC_URL: &str = "https://carehub.test/webhooks/twilio/sms";

/// The webhook verified with [`TOKEN`] at [`PUBLIC_URL`]; a fast delivery worker.
pub fn webhook(c: &mut MessagingConfig) {
    let n = &mut c.messaging.notifications;
    n.twilio.auth_token = Some(SecretString::from(TOKEN.to_owned()));
    n.webhook_public_url = Some(PUBLIC_URL.to_owned());
    n.poll_interval_ms = 50;
    n.backoff_base_ms = 50;
}

/// Twilio's scheme, written here from its documentation rather than taken from the service:
/// base64(HMAC-SHA1(token, url + every parameter's name and value, sorted by name)).
pub fn twilio_signature(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = url.to_owned();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = Hmac::<Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    data_encoding::BASE64.encode(&mac.finalize().into_bytes())
}

/// POSTs `params` form-encoded to the webhook with `signature` (none: no header).
pub async fn post_webhook(
    suite: &Suite,
    params: &[(&str, &str)],
    signature: Option<String>,
) -> (u16, String) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish();
    // reqwest is built without a default crypto provider (carehub installs ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut req = reqwest::Client::new()
        .post(format!(
            "http://{}/webhooks/twilio/sms",
            suite.messaging.admin_addr
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(s) = signature {
        req = req.header("X-Twilio-Signature", s);
    }
    let answer = req.send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap())
}

/// What Twilio posts for an inbound SMS `body` from `from`.
fn inbound<'a>(from: &'a str, body: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AccountSid", "ACtest"),
        ("ApiVersion", "2010-04-01"),
        ("Body", body),
        ("From", from),
        ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
        ("NumMedia", "0"),
        ("To", "+15550009999"),
    ]
}

/// `body` texted from `from`, correctly signed.
pub async fn text(suite: &Suite, from: &str, body: &str) -> (u16, String) {
    let params = inbound(from, body);
    let sig = twilio_signature(TOKEN, PUBLIC_URL, &params);
    post_webhook(suite, &params, Some(sig)).await
}

/// A number no other test uses.
pub fn number() -> String {
    format!("+1555{:07}", rand::random::<u32>() % 10_000_000)
}

/// Gives `user` the verified phone `phone` in identity, with SMS notifications `sms`.
pub async fn give_phone(suite: &Suite, user: &User, phone: &str, sms: bool) {
    let state = &suite.identity.handle().state;
    let id = user.id.parse().unwrap();
    let mut conn = state.pool.acquire().await.unwrap();
    id_accounts::update_profile(
        &mut conn,
        &state.crypto,
        id,
        &ProfileUpdate {
            phone: Some(Some(phone.to_owned())),
            ..ProfileUpdate::default()
        },
    )
    .await
    .unwrap();
    id_accounts::mark_verified(&mut conn, &state.crypto, id, IdContact::Phone, phone)
        .await
        .unwrap()
        .expect("phone verified");
    set_prefs(
        suite,
        user,
        PrefsUpdate {
            sms_notifications: Some(sms),
            ..PrefsUpdate::default()
        },
    )
    .await;
}

/// Marks `user`'s email verified in identity.
pub async fn verify_email(suite: &Suite, user: &User) {
    let state = &suite.identity.handle().state;
    let mut conn = state.pool.acquire().await.unwrap();
    id_accounts::mark_verified(
        &mut conn,
        &state.crypto,
        user.id.parse().unwrap(),
        IdContact::Email,
        &user.email,
    )
    .await
    .unwrap()
    .expect("email verified");
}

/// Changes `user`'s preferences in identity's store directly (no event to messaging).
pub async fn set_prefs(suite: &Suite, user: &User, update: PrefsUpdate) {
    let state = &suite.identity.handle().state;
    let mut conn = state.pool.acquire().await.unwrap();
    id_prefs::update_prefs(&mut conn, user.id.parse().unwrap(), &update)
        .await
        .unwrap();
}

/// `user`'s time zone in identity.
pub async fn set_time_zone(suite: &Suite, user: &User, tz: &str) {
    let state = &suite.identity.handle().state;
    let mut conn = state.pool.acquire().await.unwrap();
    id_accounts::update_profile(
        &mut conn,
        &state.crypto,
        user.id.parse().unwrap(),
        &ProfileUpdate {
            time_zone: Some(tz.to_owned()),
            ..ProfileUpdate::default()
        },
    )
    .await
    .unwrap();
}

/// `user`'s `sms_notifications` in identity.
pub async fn identity_sms(suite: &Suite, user: &User) -> bool {
    let state = &suite.identity.handle().state;
    let mut conn = state.pool.acquire().await.unwrap();
    id_prefs::get_prefs(&mut conn, user.id.parse().unwrap())
        .await
        .unwrap()
        .sms_notifications
}

/// Polls `check` until it holds (10 s at most).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ledger of `phone` as `user` reads it.
pub async fn consent(suite: &Suite, user: &User, phone: &str) -> SmsConsent {
    suite
        .public()
        .await
        .get_sms_consent(as_user(
            user,
            GetSmsConsentRequest {
                phone_number: phone.to_owned(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

fn sources(c: &SmsConsent) -> Vec<(i32, String)> {
    c.history
        .iter()
        .map(|h| (h.state, h.source.clone()))
        .collect()
}

const OUT: i32 = SmsConsentState::OptedOut as i32;
const IN: i32 = SmsConsentState::OptedIn as i32;

async fn count(suite: &Suite, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(suite.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn stop_start_help_through_the_signed_webhook() {
    let suite = common::spawn_with(webhook).await;
    let patient = suite.user(Role::Patient, "pat").await;
    let staff = suite.user(Role::Staff, "staff").await;
    let phone = number();
    give_phone(&suite, &patient, &phone, true).await;

    // STOP: opted out at once, one confirmation.
    let (status, body) = text(&suite, &phone, "STOP").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<Message>"), "{body}");
    assert!(body.contains("unsubscribed"), "{body}");
    let c = consent(&suite, &staff, &phone).await;
    assert_eq!(c.state, OUT);
    assert_eq!(sources(&c), vec![(OUT, "webhook:STOP".to_owned())]);
    assert!(c.history[0].change_time.is_some());

    // A repeated STOP (any case, padded) changes nothing and confirms nothing.
    let (status, body) = text(&suite, &phone, "  stop ").await;
    assert_eq!(status, 200);
    assert!(!body.contains("<Message>"), "{body}");
    assert_eq!(consent(&suite, &staff, &phone).await.history.len(), 1);

    // Identity's preference follows the ledger (messaging's outbox → ApplySmsConsent).
    eventually("identity turns SMS off", || async {
        !identity_sms(&suite, &patient).await
    })
    .await;

    // HELP and INFO: the help text, nothing recorded.
    for word in ["HELP", "info"] {
        let (status, body) = text(&suite, &phone, word).await;
        assert_eq!(status, 200);
        assert!(body.contains("Reply STOP to unsubscribe"), "{body}");
        assert!(body.contains("Msg &amp; data rates"), "{body}");
    }
    assert_eq!(consent(&suite, &staff, &phone).await.history.len(), 1);

    // START: back in, one confirmation; identity follows.
    let (status, body) = text(&suite, &phone, "Start").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("<Message>") && body.contains("subscribed"),
        "{body}"
    );
    let c = consent(&suite, &staff, &phone).await;
    assert_eq!(c.state, IN);
    assert_eq!(
        sources(&c),
        vec![
            (OUT, "webhook:STOP".to_owned()),
            (IN, "webhook:START".to_owned())
        ]
    );
    eventually("identity turns SMS back on", || {
        identity_sms(&suite, &patient)
    })
    .await;
    let (_, body) = text(&suite, &phone, "YES").await;
    assert!(!body.contains("<Message>"), "already opted in: {body}");

    // The number is never in clear in the ledger; each change is on the audit trail.
    let clear: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sms_numbers
          WHERE position(convert_to($1, 'UTF8') in phone) > 0
             OR position(convert_to($1, 'UTF8') in phone_bidx) > 0",
    )
    .bind(&phone)
    .fetch_one(suite.pool())
    .await
    .unwrap();
    assert_eq!(clear, 0);
    let changes = suite
        .audit()
        .await
        .into_iter()
        .filter(|(kind, ..)| kind == "messaging.sms_consent.change")
        .count();
    assert_eq!(changes, 2);
    suite.shutdown().await;
}

#[tokio::test]
async fn forged_or_missing_signatures_are_refused_and_nothing_is_recorded() {
    let suite = common::spawn_with(webhook).await;
    let phone = number();
    let params = inbound(&phone, "STOP");
    let forged = [
        // No header.
        None,
        // Another account's token.
        Some(twilio_signature("someone-elses-token", PUBLIC_URL, &params)),
        // Signed for another URL.
        Some(twilio_signature(
            TOKEN,
            "https://evil.test/webhooks/twilio/sms",
            &params,
        )),
        // Signed for another body (START), sent with STOP.
        Some(twilio_signature(
            TOKEN,
            PUBLIC_URL,
            &inbound(&phone, "START"),
        )),
        // Not even base64.
        Some("forged!".to_owned()),
    ];
    for signature in forged {
        let (status, body) = post_webhook(&suite, &params, signature.clone()).await;
        assert_eq!(status, 403, "{signature:?}: {body}");
        assert!(!body.contains("<Message>"));
    }
    assert_eq!(count(&suite, "SELECT count(*) FROM sms_numbers").await, 0);
    assert_eq!(
        count(&suite, "SELECT count(*) FROM sms_consent_changes").await,
        0
    );
    assert_eq!(
        count(&suite, "SELECT count(*) FROM carehub_platform.outbox").await,
        0
    );
    // The same request correctly signed is accepted.
    let (status, _) = text(&suite, &phone, "STOP").await;
    assert_eq!(status, 200);
    assert_eq!(count(&suite, "SELECT count(*) FROM sms_numbers").await, 1);
    suite.shutdown().await;
}

#[tokio::test]
async fn every_opt_out_keyword_opts_out_and_other_texts_change_nothing() {
    let suite = common::spawn_with(webhook).await;
    let staff = suite.user(Role::Staff, "staff").await;
    for word in [
        "STOP",
        "stopall",
        "Unsubscribe",
        "CANCEL",
        "end",
        "QUIT",
        "revoke",
        "OPTOUT",
    ] {
        let phone = number();
        let (status, body) = text(&suite, &phone, word).await;
        assert_eq!(status, 200);
        assert!(body.contains("<Message>"), "{word}: {body}");
        let c = consent(&suite, &staff, &phone).await;
        assert_eq!(c.state, OUT, "{word}");
        assert_eq!(
            sources(&c),
            vec![(OUT, format!("webhook:{}", word.to_uppercase()))]
        );
    }
    // Not a single keyword: not ours to act on, and nothing of it is kept.
    let phone = number();
    for body in ["please stop texting me", "STOP NOW", "stopp", "", "Thanks!"] {
        let (status, answer) = text(&suite, &phone, body).await;
        assert_eq!(status, 200);
        assert!(!answer.contains("<Message>"), "{body}: {answer}");
    }
    assert_eq!(
        consent(&suite, &staff, &phone).await.state,
        SmsConsentState::None as i32
    );
    suite.shutdown().await;
}

#[tokio::test]
async fn the_ledger_is_read_by_staff_and_by_the_numbers_holder_only() {
    let suite = common::spawn_with(webhook).await;
    let patient = suite.user(Role::Patient, "pat").await;
    let other = suite.user(Role::Patient, "other").await;
    let provider = suite.user(Role::Provider, "doc").await;
    let admin = suite.user(Role::Admin, "admin").await;
    let phone = number();
    give_phone(&suite, &patient, &phone, true).await;
    text(&suite, &phone, "STOP").await;

    assert_eq!(consent(&suite, &patient, &phone).await.state, OUT);
    assert_eq!(consent(&suite, &admin, &phone).await.state, OUT);
    for intruder in [&other, &provider] {
        let err = suite
            .public()
            .await
            .get_sms_consent(as_user(
                intruder,
                GetSmsConsentRequest {
                    phone_number: phone.clone(),
                },
            ))
            .await
            .unwrap_err();
        assert_status(&err, Code::PermissionDenied, None);
    }
    let err = suite
        .public()
        .await
        .get_sms_consent(as_user(
            &admin,
            GetSmsConsentRequest {
                phone_number: "555-0100".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, None);
    // A number the ledger never heard of: no consent either way.
    let unknown = consent(&suite, &admin, &number()).await;
    assert_eq!(unknown.state, SmsConsentState::None as i32);
    assert!(unknown.history.is_empty());
    let reads = suite
        .audit()
        .await
        .into_iter()
        .filter(|(kind, ..)| kind == "messaging.sms_consent.read")
        .count();
    assert_eq!(reads, 3);
    suite.shutdown().await;
}

#[tokio::test]
async fn an_opt_in_is_recorded_with_its_source_and_identity_follows() {
    let suite = common::spawn_with(webhook).await;
    let patient = suite.user(Role::Patient, "pat").await;
    let staff = suite.user(Role::Staff, "staff").await;
    let phone = number();
    give_phone(&suite, &patient, &phone, false).await;

    let err = suite
        .public()
        .await
        .record_sms_opt_in(keyed(
            &patient,
            RecordSmsOptInRequest {
                phone_number: phone.clone(),
                source: String::new(),
            },
            "optin-key-0001",
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, None);

    let c = suite
        .public()
        .await
        .record_sms_opt_in(keyed(
            &patient,
            RecordSmsOptInRequest {
                phone_number: phone.clone(),
                source: "web-form".into(),
            },
            "optin-key-0002",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.state, IN);
    assert_eq!(sources(&c), vec![(IN, "web-form".to_owned())]);
    eventually("identity turns SMS on", || identity_sms(&suite, &patient)).await;

    // Staff record a paper consent for the same number: kept as evidence, state unchanged.
    let c = suite
        .public()
        .await
        .record_sms_opt_in(keyed(
            &staff,
            RecordSmsOptInRequest {
                phone_number: phone.clone(),
                source: "paper".into(),
            },
            "optin-key-0003",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        sources(&c),
        vec![(IN, "web-form".to_owned()), (IN, "paper".to_owned())]
    );
    // Another patient cannot opt this number in.
    let other = suite.user(Role::Patient, "other").await;
    let err = suite
        .public()
        .await
        .record_sms_opt_in(keyed(
            &other,
            RecordSmsOptInRequest {
                phone_number: phone.clone(),
                source: "web-form".into(),
            },
            "optin-key-0004",
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, None);
    suite.shutdown().await;
}

#[tokio::test]
async fn identity_preference_changes_reach_the_ledger_without_an_echo() {
    let suite = common::spawn_with(webhook).await;
    let patient = suite.user(Role::Patient, "pat").await;
    let staff = suite.user(Role::Staff, "staff").await;
    let phone = number();
    give_phone(&suite, &patient, &phone, false).await;

    let mut identity = IdentityServiceClient::new(suite.identity.channel("gateway").await);
    for (allowed, key) in [(true, "prefs-key-0001"), (false, "prefs-key-0002")] {
        identity
            .update_communication_preferences(keyed(
                &patient,
                UpdateCommunicationPreferencesRequest {
                    preferences: Some(CommunicationPreferences {
                        sms_notifications: allowed,
                        ..CommunicationPreferences::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["sms_notifications".into()],
                    }),
                },
                key,
            ))
            .await
            .unwrap();
        let want = if allowed { IN } else { OUT };
        eventually("the ledger follows identity", || async {
            consent(&suite, &staff, &phone).await.state == want
        })
        .await;
    }
    let c = consent(&suite, &staff, &phone).await;
    assert_eq!(
        sources(&c),
        vec![
            (IN, "identity-preferences".to_owned()),
            (OUT, "identity-preferences".to_owned())
        ]
    );
    // Nothing was sent back to identity: the change came from there.
    assert_eq!(
        count(
            &suite,
            "SELECT count(*) FROM carehub_platform.outbox WHERE method LIKE '%ApplySmsConsent'"
        )
        .await,
        0
    );

    // An older change arriving late is ignored.
    let old = prost_types::Timestamp {
        seconds: 1_000_000_000,
        nanos: 0,
    };
    let c = suite
        .internal("identity")
        .await
        .apply_sms_preference(common::with_key(
            tonic::Request::new(ApplySmsPreferenceRequest {
                user_id: patient.id.clone(),
                sms_allowed: true,
                change_time: Some(old),
            }),
            "0195e0b1-old-delivery",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.state, OUT);
    assert_eq!(c.history.len(), 2);
    // Only identity may call it.
    let err = suite
        .internal("scheduling")
        .await
        .apply_sms_preference(ApplySmsPreferenceRequest {
            user_id: patient.id.clone(),
            sms_allowed: true,
            change_time: Some(prost_types::Timestamp::default()),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, None);
    suite.shutdown().await;
}
