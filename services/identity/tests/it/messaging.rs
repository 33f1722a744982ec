#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Identity's side of messaging (real Postgres, real mTLS, calls made as the `messaging`
//! workload): RequestAccountAction on the admin status path, GetContact (verified addresses only,
//! audited), ApplySmsConsent from the SMS ledger (verified holders, newer changes only, no echo),
//! sms_notifications changes sent to messaging through the outbox, and the `messaging` notifier
//! writing codes and reset links to the outbox with the code, sealed.

use crate::common;

use carehub_identity::events::ACCOUNT_EVENT_SUBSCRIBERS;
use carehub_platform::crypto::ServiceSealer;
use carehub_proto::identity::v1::*;
use carehub_proto::messaging::v1 as msg;
use common::{assert_status, patient_request, TestApp, PASSWORD};
use tonic::Code;
use uuid::Uuid;

const APPLY_SMS_PREFERENCE: &str = "/carehub.messaging.v1.MessagingInternal/ApplySmsPreference";
const SEND_NOTIFICATION: &str = "/carehub.messaging.v1.MessagingInternal/SendNotification";
const APPLY_ACCOUNT_EVENT: &str = "/carehub.common.v1.AccountEvents/ApplyAccountEvent";

/// One outbox row, its payload opened.
struct Row {
    target: String,
    bytes: Vec<u8>,
}

/// The outbox rows for `method`, oldest first, payloads opened with identity's keys.
async fn outbox(app: &TestApp, method: &str) -> Vec<Row> {
    let rows: Vec<(Uuid, String, Vec<u8>)> = sqlx::query_as(
        "SELECT id, target, payload FROM carehub_platform.outbox WHERE method = $1
         ORDER BY created_at, id",
    )
    .bind(method)
    .fetch_all(app.pool())
    .await
    .unwrap();
    let sealer = ServiceSealer::new(
        b"carehub outbox payloads v1",
        app.state().key_source.clone(),
    );
    rows.into_iter()
        .map(|(id, target, payload)| Row {
            target,
            bytes: sealer.open(id.as_bytes(), &payload).unwrap(),
        })
        .collect()
}

fn decode<M: prost::Message + Default>(row: &Row) -> M {
    M::decode(row.bytes.as_slice()).unwrap()
}

#[derive(Debug, sqlx::FromRow)]
struct Event {
    kind: String,
    purpose: String,
    actor_user_id: Option<Uuid>,
    actor_role: Option<String>,
    actor_workload: Option<String>,
    subject_id: Option<Uuid>,
}

async fn last_seq(app: &TestApp) -> i64 {
    carehub_platform::audit::seal_all(app.pool()).await.unwrap();
    sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM carehub_platform.audit_events")
        .fetch_one(app.pool())
        .await
        .unwrap()
}

async fn events_after(app: &TestApp, seq: i64) -> Vec<Event> {
    carehub_platform::audit::seal_all(app.pool()).await.unwrap();
    sqlx::query_as(
        "SELECT kind, purpose, actor_user_id, actor_role, actor_workload, subject_id
         FROM carehub_platform.audit_events WHERE seq > $1 ORDER BY seq",
    )
    .bind(seq)
    .fetch_all(app.pool())
    .await
    .unwrap()
}

fn id(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap()
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> Option<prost_types::Timestamp> {
    Some(carehub_platform::timestamps::to_proto(t))
}

/// Registers a patient with `phone` and SMS notifications on; returns the user and a token.
async fn register_with_phone(app: &TestApp, email: &str, phone: &str) -> (User, String) {
    let user = app
        .public("gateway")
        .await
        .register_patient(RegisterPatientRequest {
            phone: phone.to_owned(),
            sms_opt_in: true,
            ..patient_request(email, PASSWORD)
        })
        .await
        .unwrap()
        .into_inner();
    let token = app.login(email, PASSWORD).await.access_token;
    (user, token)
}

/// Proves `channel` of `user` with the code the memory sandbox received.
async fn verify(app: &TestApp, user: &User, token: &str, channel: ContactChannel) {
    let code = match channel {
        ContactChannel::Phone => app.last_sms_code(&user.user_id),
        _ => app.last_email_code(&user.user_id),
    }
    .expect("a code was sent");
    let verified = app
        .public("gateway")
        .await
        .verify_contact(app.with_token(
            VerifyContactRequest {
                channel: channel as i32,
                code,
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(match channel {
        ContactChannel::Phone => verified.phone_verified,
        _ => verified.email_verified,
    });
}

async fn set_sms(app: &TestApp, token: &str, sms: bool) -> CommunicationPreferences {
    app.public("gateway")
        .await
        .update_communication_preferences(app.with_token(
            UpdateCommunicationPreferencesRequest {
                preferences: Some(CommunicationPreferences {
                    sms_notifications: sms,
                    ..CommunicationPreferences::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["sms_notifications".into()],
                }),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn prefs_of(app: &TestApp, token: &str) -> CommunicationPreferences {
    app.public("gateway")
        .await
        .get_communication_preferences(app.with_token(GetCommunicationPreferencesRequest {}, token))
        .await
        .unwrap()
        .into_inner()
}

fn action(
    user: &str,
    action: AccountAction,
    by: &str,
    report: &str,
) -> RequestAccountActionRequest {
    RequestAccountActionRequest {
        user_id: user.to_owned(),
        action: action as i32,
        requested_by: by.to_owned(),
        report_id: report.to_owned(),
    }
}

#[tokio::test]
async fn an_abuse_report_suspends_then_terminates_through_the_admin_path() {
    let app = common::spawn().await;
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let ann_token = app.login("ann@example.org", PASSWORD).await.access_token;
    let staff = app
        .create_user_with_role(
            "sam@example.org",
            carehub_platform::auth::Role::Staff,
            PASSWORD,
        )
        .await;
    let staff_id = staff.id.to_string();
    let report = Uuid::now_v7().to_string();
    let mut m = app.internal("messaging").await;

    let before = last_seq(&app).await;
    let suspend = action(&ann.user_id, AccountAction::Suspend, &staff_id, &report);
    let summary = m
        .request_account_action(app.with_key(suspend.clone(), "outbox-row-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.user_id, ann.user_id);
    assert_eq!(summary.status, AccountStatus::Suspended as i32);
    assert_eq!(summary.display_name, "Ann Example");
    assert_eq!(summary.roles, [Role::Patient as i32]);
    // The staff member is the actor, messaging the caller, Ann the subject.
    let events = events_after(&app, before).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.kind, "identity.account.suspend");
    assert_eq!(e.purpose, "security");
    assert_eq!(e.actor_user_id, Some(staff.id));
    assert_eq!(e.actor_role.as_deref(), Some("staff"));
    assert_eq!(e.actor_workload.as_deref(), Some("messaging"));
    assert_eq!(e.subject_id, Some(id(&ann.user_id)));
    // The account event went to every subscriber; the reason (ids only) is sealed; the staff
    // member is recorded as the one who decided.
    let events_out = outbox(&app, APPLY_ACCOUNT_EVENT).await;
    assert_eq!(events_out.len(), ACCOUNT_EVENT_SUBSCRIBERS.len());
    let changed: AccountStatusChanged = decode(&events_out[0]);
    assert_eq!(changed.status, AccountStatus::Suspended as i32);
    let (by, reason): (Option<Uuid>, Vec<u8>) =
        sqlx::query_as("SELECT status_changed_by, status_reason FROM users WHERE id = $1")
            .bind(id(&ann.user_id))
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(by, Some(staff.id));
    assert!(!String::from_utf8_lossy(&reason).contains(&report));
    // Ann's sessions ended with the suspension.
    let e = app
        .public("gateway")
        .await
        .get_profile(app.with_token(GetProfileRequest {}, &ann_token))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("ACCOUNT_DISABLED"));

    // The relay delivering the same row again gets the same answer and changes nothing.
    let before = last_seq(&app).await;
    let again = m
        .request_account_action(app.with_key(suspend.clone(), "outbox-row-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, summary);
    assert!(events_after(&app, before).await.is_empty());
    // Another report asking for the state the account is in: answered as it is, no second
    // status event or account event (only the read of the summary).
    let other = action(
        &ann.user_id,
        AccountAction::Suspend,
        &staff_id,
        &Uuid::now_v7().to_string(),
    );
    let same = m
        .request_account_action(app.with_key(other, "outbox-row-2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.status, AccountStatus::Suspended as i32);
    let kinds: Vec<String> = events_after(&app, before)
        .await
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["identity.user.lookup"]);
    assert_eq!(
        outbox(&app, APPLY_ACCOUNT_EVENT).await.len(),
        ACCOUNT_EVENT_SUBSCRIBERS.len()
    );

    // Terminating a suspended account works; suspending a terminated one does not.
    let before = last_seq(&app).await;
    let terminated = m
        .request_account_action(app.with_key(
            action(&ann.user_id, AccountAction::Terminate, &staff_id, &report),
            "outbox-row-3",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(terminated.status, AccountStatus::Terminated as i32);
    let kinds: Vec<String> = events_after(&app, before)
        .await
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["identity.account.terminate"]);
    assert_eq!(
        outbox(&app, APPLY_ACCOUNT_EVENT).await.len(),
        2 * ACCOUNT_EVENT_SUBSCRIBERS.len()
    );
    let e = m
        .request_account_action(app.with_key(
            action(&ann.user_id, AccountAction::Suspend, &staff_id, &report),
            "outbox-row-4",
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    assert_eq!(
        outbox(&app, APPLY_ACCOUNT_EVENT).await.len(),
        2 * ACCOUNT_EVENT_SUBSCRIBERS.len()
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_account_action_names_its_bad_fields_and_unknown_users() {
    let app = common::spawn().await;
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let staff = app
        .create_user_with_role(
            "sam@example.org",
            carehub_platform::auth::Role::Staff,
            PASSWORD,
        )
        .await
        .id
        .to_string();
    let bob = app.register_patient("bob@example.org", PASSWORD).await;
    let report = Uuid::now_v7().to_string();
    let mut m = app.internal("messaging").await;
    let before = app.counts().await;

    let e = m
        .request_account_action(RequestAccountActionRequest::default())
        .await
        .unwrap_err();
    let mut fields = assert_status(&e, Code::InvalidArgument, None);
    fields.sort();
    assert_eq!(fields, ["action", "report_id", "requested_by", "user_id"]);
    let e = m
        .request_account_action(action(
            &ann.user_id,
            AccountAction::Suspend,
            &staff,
            "report-7",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        assert_status(&e, Code::InvalidArgument, None),
        ["report_id"]
    );

    let nobody = Uuid::now_v7().to_string();
    let e = m
        .request_account_action(action(&nobody, AccountAction::Suspend, &staff, &report))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = m
        .request_account_action(action(
            &ann.user_id,
            AccountAction::Suspend,
            &nobody,
            &report,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // The acting user must be someone who may decide (staff or admin), and not the account.
    let e = m
        .request_account_action(action(
            &ann.user_id,
            AccountAction::Suspend,
            &bob.user_id,
            &report,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = m
        .request_account_action(action(&staff, AccountAction::Terminate, &staff, &report))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(!e.message().contains('@'));
    assert_eq!(app.counts().await, before, "nothing written");
    assert_eq!(outbox(&app, APPLY_ACCOUNT_EVENT).await.len(), 0);
    app.shutdown().await;
}

#[tokio::test]
async fn get_contact_answers_verified_addresses_and_records_the_read() {
    let app = common::spawn().await;
    let (ann, token) = register_with_phone(&app, "ann@example.org", "+15555550101").await;
    let mut m = app.internal("messaging").await;
    let get = || GetContactRequest {
        user_id: ann.user_id.clone(),
    };

    let before = last_seq(&app).await;
    let contact = m.get_contact(get()).await.unwrap().into_inner();
    assert_eq!(contact.user_id, ann.user_id);
    assert_eq!(contact.status, AccountStatus::Active as i32);
    assert_eq!(contact.time_zone, "America/New_York");
    assert_eq!(
        (contact.email.as_str(), contact.phone_number.as_str()),
        ("", "")
    );
    assert_eq!(contact.preferences, Some(prefs_of(&app, &token).await));
    assert!(contact.preferences.unwrap().sms_notifications);
    let events = events_after(&app, before).await;
    let e = &events[0];
    assert_eq!(e.kind, "identity.user.lookup");
    assert_eq!(e.purpose, "operations");
    assert_eq!(e.actor_workload.as_deref(), Some("messaging"));
    assert_eq!(e.subject_id, Some(id(&ann.user_id)));

    verify(&app, &ann, &token, ContactChannel::Email).await;
    let contact = m.get_contact(get()).await.unwrap().into_inner();
    assert_eq!(
        (contact.email.as_str(), contact.phone_number.as_str()),
        ("ann@example.org", "")
    );
    verify(&app, &ann, &token, ContactChannel::Phone).await;
    let contact = m.get_contact(get()).await.unwrap().into_inner();
    assert_eq!(contact.phone_number, "+15555550101");

    let e = m
        .get_contact(GetContactRequest {
            user_id: Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = m
        .get_contact(GetContactRequest {
            user_id: "ann@example.org".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(assert_status(&e, Code::InvalidArgument, None), ["user_id"]);
    assert!(!e.message().contains('@'));
    app.shutdown().await;
}

#[tokio::test]
async fn the_sms_ledger_sets_the_preference_of_verified_holders_only_and_is_not_echoed() {
    let app = common::spawn().await;
    let shared = "+15555550102";
    let (ann, ann_token) = register_with_phone(&app, "ann@example.org", shared).await;
    let (bob, bob_token) = register_with_phone(&app, "bob@example.org", shared).await;
    // Cat has the number unverified, Dan another number verified.
    let (_cat, cat_token) = register_with_phone(&app, "cat@example.org", shared).await;
    let (dan, dan_token) = register_with_phone(&app, "dan@example.org", "+15555550103").await;
    for (u, t) in [(&ann, &ann_token), (&bob, &bob_token), (&dan, &dan_token)] {
        verify(&app, u, t, ContactChannel::Phone).await;
    }
    let mut m = app.internal("messaging").await;
    let now = chrono::Utc::now();
    let keyword = |allowed: bool, at: chrono::DateTime<chrono::Utc>| ApplySmsConsentRequest {
        phone_number: shared.to_owned(),
        sms_allowed: allowed,
        change_time: ts(at),
    };

    // STOP: Ann's and Bob's preferences follow, each change audited.
    let before = last_seq(&app).await;
    let stop = keyword(false, now);
    let answer = m
        .apply_sms_consent(app.with_key(stop.clone(), "ledger-1"))
        .await
        .unwrap()
        .into_inner();
    let mut changed = answer.user_ids.clone();
    changed.sort();
    let mut expected = vec![ann.user_id.clone(), bob.user_id.clone()];
    expected.sort();
    assert_eq!(changed, expected);
    assert!(!prefs_of(&app, &ann_token).await.sms_notifications);
    assert!(!prefs_of(&app, &bob_token).await.sms_notifications);
    assert!(prefs_of(&app, &cat_token).await.sms_notifications);
    assert!(prefs_of(&app, &dan_token).await.sms_notifications);
    let mut events = events_after(&app, before).await;
    events.retain(|e| e.kind != "identity.preferences.read");
    assert_eq!(events.len(), 2, "{events:?}");
    for e in &events {
        assert_eq!(e.kind, "identity.preferences.update");
        assert_eq!(e.purpose, "operations");
        assert_eq!(e.actor_workload.as_deref(), Some("messaging"));
        assert!(expected.contains(&e.subject_id.unwrap().to_string()));
    }
    // Not sent back to messaging.
    assert!(outbox(&app, APPLY_SMS_PREFERENCE).await.is_empty());

    // The same delivery again: the same answer; the same keyword again: nothing changes.
    let again = m
        .apply_sms_consent(app.with_key(stop.clone(), "ledger-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, answer);
    let repeat = m
        .apply_sms_consent(app.with_key(stop, "ledger-2"))
        .await
        .unwrap();
    assert!(repeat.into_inner().user_ids.is_empty());
    // A START older than the STOP (a late delivery) is ignored.
    let late = m
        .apply_sms_consent(app.with_key(
            keyword(true, now - chrono::Duration::minutes(5)),
            "ledger-3",
        ))
        .await
        .unwrap();
    assert!(late.into_inner().user_ids.is_empty());
    assert!(!prefs_of(&app, &ann_token).await.sms_notifications);

    // Ann turns SMS back on herself: that choice goes to messaging, and a ledger keyword older
    // than it is ignored; a newer one applies.
    set_sms(&app, &ann_token, true).await;
    assert_eq!(outbox(&app, APPLY_SMS_PREFERENCE).await.len(), 1);
    let older = m
        .apply_sms_consent(app.with_key(
            keyword(false, now + chrono::Duration::milliseconds(1)),
            "ledger-4",
        ))
        .await
        .unwrap();
    assert!(older.into_inner().user_ids.is_empty());
    assert!(prefs_of(&app, &ann_token).await.sms_notifications);
    let newer = m
        .apply_sms_consent(app.with_key(keyword(false, chrono::Utc::now()), "ledger-5"))
        .await
        .unwrap();
    assert_eq!(newer.into_inner().user_ids, [ann.user_id.as_str()]);
    assert_eq!(outbox(&app, APPLY_SMS_PREFERENCE).await.len(), 1, "no echo");

    // A number nobody holds verified changes nothing.
    let none = m
        .apply_sms_consent(ApplySmsConsentRequest {
            phone_number: "+15555550199".into(),
            sms_allowed: false,
            change_time: ts(chrono::Utc::now()),
        })
        .await
        .unwrap();
    assert!(none.into_inner().user_ids.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn sms_consent_names_its_bad_fields() {
    let app = common::spawn().await;
    let mut m = app.internal("messaging").await;
    let before = app.counts().await;
    for (case, req, fields) in [
        (
            "empty",
            ApplySmsConsentRequest::default(),
            vec!["change_time", "phone_number"],
        ),
        (
            "not E.164",
            ApplySmsConsentRequest {
                phone_number: "555-0100".into(),
                sms_allowed: true,
                change_time: ts(chrono::Utc::now()),
            },
            vec!["phone_number"],
        ),
        (
            "bad time",
            ApplySmsConsentRequest {
                phone_number: "+15555550100".into(),
                sms_allowed: true,
                change_time: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
            },
            vec!["change_time"],
        ),
    ] {
        let e = m.apply_sms_consent(req).await.unwrap_err();
        let mut got = assert_status(&e, Code::InvalidArgument, None);
        got.sort();
        assert_eq!(got, fields, "{case}");
        assert!(
            !e.message().contains("555"),
            "{case}: no number in the message"
        );
    }
    assert_eq!(app.counts().await, before);
    app.shutdown().await;
}

#[tokio::test]
async fn an_sms_preference_change_reaches_messaging_through_the_outbox_and_only_a_change() {
    let app = common::spawn().await;
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let token = app.login("ann@example.org", PASSWORD).await.access_token;
    assert!(!prefs_of(&app, &token).await.sms_notifications);

    // Unchanged, or another field only: nothing for messaging.
    set_sms(&app, &token, false).await;
    app.public("gateway")
        .await
        .update_communication_preferences(app.with_token(
            UpdateCommunicationPreferencesRequest {
                preferences: Some(CommunicationPreferences {
                    language: "es-US".into(),
                    ..CommunicationPreferences::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["language".into()],
                }),
            },
            &token,
        ))
        .await
        .unwrap();
    assert!(outbox(&app, APPLY_SMS_PREFERENCE).await.is_empty());

    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    set_sms(&app, &token, true).await;
    let rows = outbox(&app, APPLY_SMS_PREFERENCE).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].target, "messaging");
    let req: msg::ApplySmsPreferenceRequest = decode(&rows[0]);
    assert_eq!(req.user_id, ann.user_id);
    assert!(req.sms_allowed);
    let at = carehub_platform::timestamps::from_proto(&req.change_time.unwrap()).unwrap();
    assert!(at > before && at <= chrono::Utc::now());
    // Setting it again is no change; turning it off is.
    set_sms(&app, &token, true).await;
    assert_eq!(outbox(&app, APPLY_SMS_PREFERENCE).await.len(), 1);
    set_sms(&app, &token, false).await;
    let rows = outbox(&app, APPLY_SMS_PREFERENCE).await;
    assert_eq!(rows.len(), 2);
    assert!(!decode::<msg::ApplySmsPreferenceRequest>(&rows[1]).sms_allowed);
    app.shutdown().await;
}

#[tokio::test]
async fn the_messaging_notifier_writes_codes_reset_links_and_notices_to_the_outbox_sealed() {
    let app = common::spawn_with(|c| {
        c.identity.notifier = carehub_identity::config::NotifierKind::Messaging;
        c.identity.password_reset_link = "https://app.example/reset#token={token}".into();
    })
    .await;
    // Registration sends an email code and an SMS code, each in the registering transaction.
    let ann = app
        .public("gateway")
        .await
        .register_patient(RegisterPatientRequest {
            phone: "+15555550104".into(),
            ..patient_request("ann@example.org", PASSWORD)
        })
        .await
        .unwrap()
        .into_inner();
    let rows = outbox(&app, SEND_NOTIFICATION).await;
    assert_eq!(rows.len(), 2);
    let sent: Vec<msg::SendNotificationRequest> = rows.iter().map(decode).collect();
    let sms = sent
        .iter()
        .find(|n| n.address == "+15555550104")
        .expect("the SMS code");
    assert_eq!(sms.channels, [msg::Channel::Sms as i32]);
    assert_eq!(sms.template, msg::Template::VerificationCode as i32);

    // SendVerificationCode: one more row, whose code is the one that verifies.
    let token = app.login("ann@example.org", PASSWORD).await.access_token;
    let mut c = app.public("gateway").await;
    c.send_verification_code(app.with_token(
        SendVerificationCodeRequest {
            channel: ContactChannel::Email as i32,
        },
        &token,
    ))
    .await
    .unwrap();
    let rows = outbox(&app, SEND_NOTIFICATION).await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.target == "messaging"));
    let n: msg::SendNotificationRequest = decode(&rows[2]);
    assert_eq!(n.template, msg::Template::VerificationCode as i32);
    assert!(n.urgent);
    assert_eq!(n.user_id, ann.user_id);
    assert_eq!(n.address, "ann@example.org");
    assert_eq!(n.channels, [msg::Channel::Email as i32]);
    assert!(!n.idempotency_key.is_empty());
    let keys: std::collections::HashSet<String> = rows
        .iter()
        .map(|r| decode::<msg::SendNotificationRequest>(r).idempotency_key)
        .collect();
    assert_eq!(keys.len(), 3, "one key per code");
    let code = n.params["code"].clone();
    assert_eq!(code.len(), 6);
    let verified = c
        .verify_contact(app.with_token(
            VerifyContactRequest {
                channel: ContactChannel::Email as i32,
                code: code.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.email_verified);

    // RequestPasswordReset: the link carries the token that resets.
    c.request_password_reset(RequestPasswordResetRequest {
        email: "ann@example.org".into(),
    })
    .await
    .unwrap();
    let rows = outbox(&app, SEND_NOTIFICATION).await;
    assert_eq!(rows.len(), 4);
    let n: msg::SendNotificationRequest = decode(&rows[3]);
    assert_eq!(n.template, msg::Template::PasswordReset as i32);
    assert!(n.urgent);
    assert_eq!(n.address, "ann@example.org");
    let link = n.params["link"].clone();
    let reset_token = link
        .strip_prefix("https://app.example/reset#token=")
        .expect("the configured link")
        .to_owned();
    c.reset_password(ResetPasswordRequest {
        reset_token: reset_token.clone(),
        new_password: "a brand new passphrase 42".into(),
    })
    .await
    .unwrap();
    // The security notice of the reset follows it, without a secret.
    let rows = outbox(&app, SEND_NOTIFICATION).await;
    assert_eq!(rows.len(), 5);
    let n: msg::SendNotificationRequest = decode(&rows[4]);
    assert_eq!(n.template, msg::Template::PasswordChanged as i32);
    assert_eq!(n.user_id, ann.user_id);
    assert!(n.params.is_empty());

    // A refused request (no code for a channel without an address) leaves no row.
    let bob = app.register_patient("bob@example.org", PASSWORD).await;
    let bob_token = app.login("bob@example.org", PASSWORD).await.access_token;
    let before = outbox(&app, SEND_NOTIFICATION).await.len();
    let e = c
        .send_verification_code(app.with_token(
            SendVerificationCodeRequest {
                channel: ContactChannel::Phone as i32,
            },
            &bob_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(outbox(&app, SEND_NOTIFICATION).await.len(), before);
    assert!(!bob.user_id.is_empty());

    // The secrets and addresses are nowhere in clear in the outbox table.
    let raw: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT convert_to(t::text, 'UTF8') || payload FROM carehub_platform.outbox t",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert!(!raw.is_empty());
    for row in &raw {
        let text = String::from_utf8_lossy(row);
        for secret in [
            code.as_str(),
            reset_token.as_str(),
            "ann@example.org",
            "+15555550104",
        ] {
            assert!(!text.contains(secret), "{secret} in clear in the outbox");
            assert!(!row.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
    }
    app.shutdown().await;
}

#[tokio::test]
async fn phones_stored_before_the_index_are_indexed_at_start() {
    let app = common::spawn().await;
    let (ann, token) = register_with_phone(&app, "ann@example.org", "+15555550105").await;
    verify(&app, &ann, &token, ContactChannel::Phone).await;
    let indexed: Option<Vec<u8>> = sqlx::query_scalar("SELECT phone_bidx FROM users WHERE id = $1")
        .bind(id(&ann.user_id))
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert!(indexed.is_some());
    // A row as the migration left it: a phone, no index.
    sqlx::query("UPDATE users SET phone_bidx = NULL WHERE id = $1")
        .bind(id(&ann.user_id))
        .execute(app.pool())
        .await
        .unwrap();
    let replica = app.start_replica(|_| {}).await;
    let refilled: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT phone_bidx FROM users WHERE id = $1")
            .bind(id(&ann.user_id))
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(refilled, indexed);
    replica.shutdown().await;
    // And the number is found again.
    let answer = app
        .internal("messaging")
        .await
        .apply_sms_consent(ApplySmsConsentRequest {
            phone_number: "+15555550105".into(),
            sms_allowed: false,
            change_time: ts(chrono::Utc::now()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.user_ids, [ann.user_id.as_str()]);
    app.shutdown().await;
}
