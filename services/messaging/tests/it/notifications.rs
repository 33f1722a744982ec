//! Notifications: SendNotification from the other services, the ledger's word on SMS, quiet
//! hours in the recipient's zone, deduplication, and the real adapters against servers run by
//! the test — a Twilio-compatible REST API (form, basic auth, 201/429/400/500) and an SMTP
//! server that receives the email, whose body must carry no PHI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use carehub_identity::store::preferences::PrefsUpdate;
use carehub_messaging::config::MessagingConfig;
use carehub_messaging::notify::channels::Channel as Medium;
use carehub_messaging::notify::settings::{EmailChannelKind, SmsChannelKind, SmtpTls};
use carehub_platform::auth::Role;
use carehub_proto::messaging::v1::*;
use chrono::{TimeZone as _, Timelike as _, Utc};
use secrecy::SecretString;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tonic::Code;

use crate::common::{self, as_user, assert_status, keyed, Suite, User};
use crate::sms::{
    eventually, give_phone, number, set_prefs, set_time_zone, text, verify_email, webhook, TOKEN,
};

const SID: &str = "ACtest0001";
const SENDER: &str = "+15550009999";

fn request(
    user: &User,
    template: Template,
    channels: &[Channel],
    key: &str,
) -> SendNotificationRequest {
    SendNotificationRequest {
        user_id: user.id.clone(),
        template: template as i32,
        channels: channels.iter().map(|c| *c as i32).collect(),
        urgent: false,
        params: Default::default(),
        idempotency_key: key.to_owned(),
        address: String::new(),
    }
}

fn with_params(mut r: SendNotificationRequest, params: &[(&str, &str)]) -> SendNotificationRequest {
    r.params = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    r
}

async fn send(suite: &Suite, workload: &str, r: SendNotificationRequest) -> Notification {
    suite
        .internal(workload)
        .await
        .send_notification(r)
        .await
        .unwrap()
        .into_inner()
}

async fn get(suite: &Suite, workload: &str, id: &str) -> Notification {
    suite
        .internal(workload)
        .await
        .get_notification(GetNotificationRequest {
            notification_id: id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn delivery(n: &Notification, channel: Channel) -> Delivery {
    n.deliveries
        .iter()
        .find(|d| d.channel == channel as i32)
        .cloned()
        .unwrap_or_else(|| panic!("no {channel:?} delivery in {n:?}"))
}

/// Waits until `channel`'s delivery of `id` is `status`; answers the notification.
async fn settled(
    suite: &Suite,
    workload: &str,
    id: &str,
    channel: Channel,
    status: DeliveryStatus,
) -> Notification {
    eventually(&format!("{channel:?} delivery {status:?}"), || async {
        delivery(&get(suite, workload, id).await, channel).status == status as i32
    })
    .await;
    get(suite, workload, id).await
}

fn sandbox(suite: &Suite, id: &str) -> Vec<carehub_messaging::notify::channels::SandboxMessage> {
    suite
        .messaging
        .handle()
        .state
        .notifications
        .sandbox()
        .sent_for(id.parse().unwrap())
}

/// Whether `needle` appears in clear in any value of `column` of `table`.
async fn in_clear(suite: &Suite, table: &str, column: &str, needle: &str) -> bool {
    sqlx::query_scalar::<_, bool>(&format!(
        "SELECT EXISTS (SELECT 1 FROM {table}
                         WHERE position(convert_to($1, 'UTF8') in {column}) > 0)"
    ))
    .bind(needle)
    .fetch_one(suite.pool())
    .await
    .unwrap()
}

fn tomorrow() -> String {
    (Utc::now() + chrono::Duration::days(1))
        .with_nanosecond(0)
        .unwrap()
        .to_rfc3339()
}

#[tokio::test]
async fn a_reminder_to_an_opted_out_number_is_not_sent_and_the_reason_is_recorded() {
    let suite = common::spawn_with(webhook).await;
    let patient = suite.user(Role::Patient, "pat").await;
    let phone = number();
    give_phone(&suite, &patient, &phone, true).await;
    verify_email(&suite, &patient).await;
    let (status, _) = text(&suite, &phone, "STOP").await;
    assert_eq!(status, 200);

    let start = tomorrow();
    let n = send(
        &suite,
        "scheduling",
        with_params(
            request(
                &patient,
                Template::AppointmentReminder,
                &[Channel::Sms, Channel::Email],
                "reminder-appt-1",
            ),
            &[("start_time", &start)],
        ),
    )
    .await;
    let sms = delivery(&n, Channel::Sms);
    assert_eq!(sms.status, DeliveryStatus::Skipped as i32);
    assert_eq!(sms.skip_reason, "sms_opted_out");
    assert_eq!(sms.attempts, 0);
    // The email still goes.
    let n = settled(
        &suite,
        "scheduling",
        &n.id,
        Channel::Email,
        DeliveryStatus::Sent,
    )
    .await;
    assert_eq!(delivery(&n, Channel::Sms).skip_reason, "sms_opted_out");
    let sent = sandbox(&suite, &n.id);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].channel, Medium::Email);
    assert_eq!(sent[0].to, patient.email);
    assert!(sent[0].body.starts_with("Reminder: you have a visit on"));
    let reason: String = sqlx::query_scalar(
        "SELECT reason FROM notification_deliveries d JOIN notifications n
             ON n.id = d.notification_id
          WHERE n.idempotency_key = 'reminder-appt-1' AND d.channel = 'sms'",
    )
    .fetch_one(suite.pool())
    .await
    .unwrap();
    assert_eq!(reason, "sms_opted_out");

    // A reminder accepted while the number could be texted, waiting out the quiet hours when
    // the STOP arrives, is not sent either: the worker asks the ledger again.
    let other = suite.user(Role::Patient, "other").await;
    let phone2 = number();
    give_phone(&suite, &other, &phone2, true).await;
    let hour = Utc::now().hour() as i32;
    set_prefs(
        &suite,
        &other,
        PrefsUpdate {
            quiet_hours_start: Some(hour as i16),
            quiet_hours_end: Some(((hour + 2) % 24) as i16),
            ..PrefsUpdate::default()
        },
    )
    .await;
    let n = send(
        &suite,
        "scheduling",
        with_params(
            request(
                &other,
                Template::AppointmentReminder,
                &[Channel::Sms],
                "reminder-appt-2",
            ),
            &[("start_time", &start)],
        ),
    )
    .await;
    assert_eq!(delivery(&n, Channel::Sms).skip_reason, "quiet_hours");
    text(&suite, &phone2, "STOP").await;
    sqlx::query(
        "UPDATE notification_deliveries SET next_attempt_at = now() WHERE status = 'pending'",
    )
    .execute(suite.pool())
    .await
    .unwrap();
    suite.messaging.handle().state.notifications.wake();
    let n = settled(
        &suite,
        "scheduling",
        &n.id,
        Channel::Sms,
        DeliveryStatus::Skipped,
    )
    .await;
    assert_eq!(delivery(&n, Channel::Sms).skip_reason, "sms_opted_out");
    assert!(sandbox(&suite, &n.id).is_empty());
    suite.shutdown().await;
}

/// One email as the test's SMTP server received it.
#[derive(Clone, Debug, Default)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: String,
}

/// Enough of SMTP (RFC 5321) for one client: EHLO/HELO, MAIL FROM, RCPT TO, DATA, RSET, NOOP,
/// QUIT. Every accepted message lands in the returned list.
async fn smtp_server() -> (u16, Arc<Mutex<Vec<Mail>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let inbox: Arc<Mutex<Vec<Mail>>> = Arc::default();
    let shared = inbox.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let inbox = shared.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let mut mail = Mail::default();
                write
                    .write_all(b"220 carehub-test ESMTP\r\n")
                    .await
                    .unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") {
                        b"250-carehub-test\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("HELO") || upper == "NOOP" {
                        b"250 OK\r\n"
                    } else if upper.starts_with("MAIL FROM:") {
                        mail.from = line[10..].trim().to_owned();
                        b"250 OK\r\n"
                    } else if upper.starts_with("RCPT TO:") {
                        let to = line[8..].trim().trim_start_matches('<');
                        mail.to.push(to.trim_end_matches('>').to_owned());
                        b"250 OK\r\n"
                    } else if upper == "DATA" {
                        write
                            .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                            .await
                            .unwrap();
                        let mut data = String::new();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l == "." {
                                break;
                            }
                            // Dot-stuffing (RFC 5321 4.5.2).
                            data.push_str(l.strip_prefix('.').unwrap_or(&l));
                            data.push_str("\r\n");
                        }
                        mail.data = data;
                        inbox.lock().unwrap().push(std::mem::take(&mut mail));
                        b"250 2.0.0 queued\r\n"
                    } else if upper == "RSET" {
                        mail = Mail::default();
                        b"250 OK\r\n"
                    } else if upper == "QUIT" {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        break;
                    } else {
                        b"502 not implemented\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, inbox)
}

#[tokio::test]
async fn smtp_delivery_to_an_in_test_server_carries_no_phi() {
    let (port, inbox) = smtp_server().await;
    let suite = common::spawn_with(move |c: &mut MessagingConfig| {
        webhook(c);
        let n = &mut c.messaging.notifications;
        n.channels.email = EmailChannelKind::Smtp;
        n.smtp.host = Some("127.0.0.1".into());
        n.smtp.port = port;
        n.smtp.tls = SmtpTls::None;
        n.smtp.from = "carehub <no-reply@carehub.test>".into();
    })
    .await;
    let (patient, provider, _staff, conversation) = suite.care().await;
    verify_email(&suite, &patient).await;
    // What the alert is about: a message whose content is PHI.
    suite
        .send(
            &provider,
            &conversation,
            "Your biopsy came back positive for melanoma",
        )
        .await;

    let n = send(
        &suite,
        "scheduling",
        request(
            &patient,
            Template::NewMessage,
            &[Channel::Email],
            "new-message-1",
        ),
    )
    .await;
    let n = settled(
        &suite,
        "scheduling",
        &n.id,
        Channel::Email,
        DeliveryStatus::Sent,
    )
    .await;
    assert_eq!(delivery(&n, Channel::Email).attempts, 1);

    let mails = inbox.lock().unwrap().clone();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let mail = &mails[0];
    assert_eq!(mail.to, vec![patient.email.clone()]);
    assert!(mail.from.contains("no-reply@carehub.test"), "{}", mail.from);
    let (headers, body) = mail.data.split_once("\r\n\r\n").expect("headers and body");
    assert!(
        headers.contains(&format!("To: {}", patient.email)),
        "{headers}"
    );
    assert!(
        headers.contains("Subject: New message from your care team"),
        "{headers}"
    );
    assert!(headers.contains("text/plain"), "{headers}");
    assert_eq!(
        body.trim_end(),
        "You have a new message from your care team. Sign in to carehub to read it."
    );
    // No message content, no conversation subject, no names, no address in the body.
    for phi in [
        "biopsy",
        "melanoma",
        "dosage",
        "Test",
        "User",
        patient.email.as_str(),
    ] {
        assert!(!body.contains(phi), "{phi} in the body: {body}");
    }
    for phi in ["biopsy", "melanoma", "dosage"] {
        assert!(!mail.data.contains(phi), "{phi} in the mail: {}", mail.data);
    }
    // Nothing went to the sandbox, and the address is sealed at rest.
    assert!(sandbox(&suite, &n.id).is_empty());
    assert!(!in_clear(&suite, "notification_deliveries", "address", &patient.email).await);
    suite.shutdown().await;
}

/// What the test's Twilio saw: the Authorization header and the form, per request.
type Seen = Arc<Mutex<Vec<(Option<String>, Vec<(String, String)>)>>>;

#[derive(Clone)]
struct FakeTwilio {
    seen: Seen,
    /// The statuses to answer, in order; 201 once they run out.
    script: Arc<Mutex<VecDeque<u16>>>,
}

async fn messages(
    State(t): State<FakeTwilio>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    t.seen.lock().unwrap().push((auth, form));
    let status = t.script.lock().unwrap().pop_front().unwrap_or(201);
    let json = |s: &str| ([("content-type", "application/json")], s.to_owned());
    match status {
        201 => (
            StatusCode::CREATED,
            json(r#"{"sid": "SM0123456789abcdef0123456789abcdef", "status": "queued"}"#),
        )
            .into_response(),
        429 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "0")],
            json(r#"{"code": 20429, "message": "Too Many Requests"}"#),
        )
            .into_response(),
        400 => (
            StatusCode::BAD_REQUEST,
            json(r#"{"code": 21211, "message": "The 'To' number is not a valid phone number."}"#),
        )
            .into_response(),
        other => (
            StatusCode::from_u16(other).unwrap(),
            json(r#"{"message": "internal"}"#),
        )
            .into_response(),
    }
}

async fn twilio_server(script: &[u16]) -> (String, FakeTwilio) {
    let t = FakeTwilio {
        seen: Arc::default(),
        script: Arc::new(Mutex::new(script.iter().copied().collect())),
    };
    let app = axum::Router::new()
        .route(
            &format!("/2010-04-01/Accounts/{SID}/Messages.json"),
            axum::routing::post(messages),
        )
        .with_state(t.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, t)
}

fn twilio(base: String) -> impl FnOnce(&mut MessagingConfig) {
    move |c| {
        webhook(c);
        let n = &mut c.messaging.notifications;
        n.channels.sms = SmsChannelKind::Twilio;
        n.twilio.base_url = base;
        n.twilio.account_sid = Some(SID.into());
        n.twilio.auth_token = Some(SecretString::from(TOKEN.to_owned()));
        n.twilio.from = Some(SENDER.into());
        n.max_attempts = 3;
        n.backoff_base_ms = 50;
        n.backoff_max_secs = 1;
    }
}

#[tokio::test]
async fn twilio_adapter_posts_the_form_with_basic_auth_and_retries_a_500() {
    let (base, twilio_api) = twilio_server(&[500, 201]).await;
    let suite = common::spawn_with(twilio(base)).await;
    let patient = suite.user(Role::Patient, "pat").await;
    let phone = number();
    give_phone(&suite, &patient, &phone, true).await;

    let mut r = with_params(
        request(
            &patient,
            Template::VerificationCode,
            &[Channel::Sms],
            "identity-code-0001",
        ),
        &[("code", "493817")],
    );
    r.urgent = true;
    let n = send(&suite, "identity", r).await;
    let n = settled(
        &suite,
        "identity",
        &n.id,
        Channel::Sms,
        DeliveryStatus::Sent,
    )
    .await;
    let sms = delivery(&n, Channel::Sms);
    assert_eq!(sms.attempts, 2, "the 500 was retried");
    assert!(sms.sent_time.is_some());

    let seen = twilio_api.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let basic = format!(
        "Basic {}",
        data_encoding::BASE64.encode(format!("{SID}:{TOKEN}").as_bytes())
    );
    for (auth, form) in &seen {
        assert_eq!(auth.as_deref(), Some(basic.as_str()));
        let field = |k: &str| {
            form.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(field("To"), Some(phone.clone()));
        assert_eq!(field("From").as_deref(), Some(SENDER));
        assert_eq!(
            field("Body").as_deref(),
            Some("Your carehub verification code is 493817. Do not share it with anyone.")
        );
    }
    // The real channel was used, and the code and the number are sealed at rest.
    assert!(sandbox(&suite, &n.id).is_empty());
    assert!(!in_clear(&suite, "notifications", "params", "493817").await);
    assert!(!in_clear(&suite, "notification_deliveries", "address", &phone).await);
    suite.shutdown().await;
}

#[tokio::test]
async fn twilio_refusals_fail_at_once_throttling_waits_and_outages_run_out() {
    let (base, twilio_api) = twilio_server(&[400, 429, 201, 500, 500, 500]).await;
    let suite = common::spawn_with(twilio(base)).await;
    let patient = suite.user(Role::Patient, "pat").await;
    give_phone(&suite, &patient, &number(), true).await;
    let code = |key: &str| {
        let mut r = with_params(
            request(&patient, Template::VerificationCode, &[Channel::Sms], key),
            &[("code", "1234")],
        );
        r.urgent = true;
        r
    };

    // 400: the provider refuses the request itself; no retry.
    let n = send(&suite, "identity", code("identity-code-0400")).await;
    let n = settled(
        &suite,
        "identity",
        &n.id,
        Channel::Sms,
        DeliveryStatus::Failed,
    )
    .await;
    let d = delivery(&n, Channel::Sms);
    assert_eq!((d.attempts, d.skip_reason.as_str()), (1, "twilio_21211"));

    // 429 then 201: throttled, then sent.
    let n = send(&suite, "identity", code("identity-code-0429")).await;
    let n = settled(
        &suite,
        "identity",
        &n.id,
        Channel::Sms,
        DeliveryStatus::Sent,
    )
    .await;
    assert_eq!(delivery(&n, Channel::Sms).attempts, 2);

    // 500 three times: failed once max_attempts (3) are used.
    let n = send(&suite, "identity", code("identity-code-0500")).await;
    let n = settled(
        &suite,
        "identity",
        &n.id,
        Channel::Sms,
        DeliveryStatus::Failed,
    )
    .await;
    let d = delivery(&n, Channel::Sms);
    assert_eq!((d.attempts, d.skip_reason.as_str()), (3, "http_500"));
    assert_eq!(twilio_api.seen.lock().unwrap().len(), 6);
    suite.shutdown().await;
}

#[tokio::test]
async fn one_key_answers_one_notification() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let r = request(
        &patient,
        Template::NewMessage,
        &[Channel::Push],
        "alert-0001",
    );
    let first = send(&suite, "scheduling", r.clone()).await;
    let again = send(&suite, "scheduling", r.clone()).await;
    assert_eq!(first.id, again.id);

    // Concurrent retries of a new key: one notification.
    let r2 = request(
        &patient,
        Template::NewMessage,
        &[Channel::Push],
        "alert-0002",
    );
    let answers =
        futures::future::join_all((0..6).map(|_| send(&suite, "scheduling", r2.clone()))).await;
    assert!(answers.iter().all(|a| a.id == answers[0].id));
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notifications WHERE idempotency_key = 'alert-0002'",
    )
    .fetch_one(suite.pool())
    .await
    .unwrap();
    assert_eq!(rows, 1);

    // The same key for another notification is refused; another service's key is its own.
    let err = suite
        .internal("scheduling")
        .await
        .send_notification(request(
            &patient,
            Template::Promotion,
            &[Channel::Push],
            "alert-0001",
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, Some("IDEMPOTENCY_KEY_REUSED"));
    let billing = send(&suite, "billing", r).await;
    assert_ne!(billing.id, first.id);

    // Sent once.
    settled(
        &suite,
        "scheduling",
        &first.id,
        Channel::Push,
        DeliveryStatus::Sent,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sandbox(&suite, &first.id).len(), 1);
    suite.shutdown().await;
}

#[tokio::test]
async fn quiet_hours_defer_non_urgent_notifications_in_the_recipients_zone() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let zone = chrono_tz::Asia::Kathmandu;
    set_time_zone(&suite, &patient, "Asia/Kathmandu").await;
    let local = Utc::now().with_timezone(&zone);
    let start = local.hour();
    let end = (start + 2) % 24;
    set_prefs(
        &suite,
        &patient,
        PrefsUpdate {
            quiet_hours_start: Some(start as i16),
            quiet_hours_end: Some(end as i16),
            ..PrefsUpdate::default()
        },
    )
    .await;
    let n = send(
        &suite,
        "scheduling",
        request(
            &patient,
            Template::NewMessage,
            &[Channel::Push],
            "quiet-0001",
        ),
    )
    .await;
    let push = delivery(&n, Channel::Push);
    assert_eq!(push.status, DeliveryStatus::Pending as i32);
    assert_eq!(push.skip_reason, "quiet_hours");
    let day = if end < start {
        local.date_naive().succ_opt().unwrap()
    } else {
        local.date_naive()
    };
    let expected = zone
        .from_local_datetime(&day.and_hms_opt(end, 0, 0).unwrap())
        .earliest()
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(
        push.next_attempt_time.unwrap().seconds,
        expected.timestamp(),
        "deferred to {end}:00 in Kathmandu"
    );

    // A code is urgent: it goes now.
    let mut code = with_params(
        request(
            &patient,
            Template::VerificationCode,
            &[Channel::Push],
            "quiet-0002",
        ),
        &[("code", "8812")],
    );
    code.urgent = true;
    let c = send(&suite, "identity", code).await;
    settled(
        &suite,
        "identity",
        &c.id,
        Channel::Push,
        DeliveryStatus::Sent,
    )
    .await;
    assert_eq!(sandbox(&suite, &c.id).len(), 1);
    let n = get(&suite, "scheduling", &n.id).await;
    assert_eq!(
        delivery(&n, Channel::Push).status,
        DeliveryStatus::Pending as i32
    );
    assert!(sandbox(&suite, &n.id).is_empty());
    suite.shutdown().await;
}

#[tokio::test]
async fn requests_are_checked() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let ok = request(
        &patient,
        Template::NewMessage,
        &[Channel::Push],
        "check-0001",
    );
    let cases: Vec<(SendNotificationRequest, &str)> = vec![
        (
            SendNotificationRequest {
                user_id: "nope".into(),
                ..ok.clone()
            },
            "user_id",
        ),
        (
            SendNotificationRequest {
                template: 0,
                ..ok.clone()
            },
            "template",
        ),
        (
            SendNotificationRequest {
                idempotency_key: String::new(),
                ..ok.clone()
            },
            "idempotency_key",
        ),
        (
            SendNotificationRequest {
                channels: vec![0],
                ..ok.clone()
            },
            "channels[0]",
        ),
        (with_params(ok.clone(), &[("name", "Ann")]), "params[name]"),
        (
            request(
                &patient,
                Template::VerificationCode,
                &[Channel::Sms],
                "check-2",
            ),
            "params[code]",
        ),
        (
            SendNotificationRequest {
                address: "+15550100000".into(),
                ..ok.clone()
            },
            "address",
        ),
    ];
    for (r, field) in cases {
        let err = suite
            .internal("scheduling")
            .await
            .send_notification(r)
            .await
            .unwrap_err();
        let fields = assert_status(&err, Code::InvalidArgument, None);
        assert!(fields.iter().any(|f| f == field), "{field}: {fields:?}");
    }
    let err = suite
        .internal("scheduling")
        .await
        .send_notification(SendNotificationRequest {
            user_id: uuid::Uuid::now_v7().to_string(),
            ..ok.clone()
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, None);
    // Not for end users, nor for the gateway.
    let err = suite
        .internal("gateway")
        .await
        .send_notification(as_user(&patient, ok))
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, None);
    suite.shutdown().await;
}

#[tokio::test]
async fn notifications_are_read_by_their_sender_and_audited() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let n = send(
        &suite,
        "scheduling",
        request(&patient, Template::NewMessage, &[], "audit-0001"),
    )
    .await;
    assert_eq!(n.deliveries.len(), 3, "every channel when none is named");
    // Identity's defaults: SMS off (and no verified phone), email without a verified address.
    assert_eq!(delivery(&n, Channel::Sms).skip_reason, "preference_off");
    assert_eq!(
        delivery(&n, Channel::Email).skip_reason,
        "no_verified_email"
    );
    assert_eq!(get(&suite, "scheduling", &n.id).await.id, n.id);
    let err = suite
        .internal("billing")
        .await
        .get_notification(GetNotificationRequest {
            notification_id: n.id.clone(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, None);
    let events = suite.audit().await;
    let of = |kind: &str| {
        events
            .iter()
            .filter(|(k, _, subject, _)| {
                k == kind && subject.as_deref() == Some(patient.id.as_str())
            })
            .count()
    };
    assert_eq!(of("messaging.notification.send"), 1);
    assert_eq!(of("messaging.notification.read"), 1);
    suite.shutdown().await;
}

#[tokio::test]
async fn promotions_need_an_opt_in() {
    let suite = common::spawn_with(webhook).await;
    let patient = suite.user(Role::Patient, "pat").await;
    let phone = number();
    give_phone(&suite, &patient, &phone, true).await;
    let n = send(
        &suite,
        "billing",
        request(&patient, Template::Promotion, &[Channel::Sms], "promo-0001"),
    )
    .await;
    assert_eq!(delivery(&n, Channel::Sms).skip_reason, "sms_no_opt_in");
    suite
        .public()
        .await
        .record_sms_opt_in(keyed(
            &patient,
            RecordSmsOptInRequest {
                phone_number: phone.clone(),
                source: "web-form".into(),
            },
            "promo-optin-01",
        ))
        .await
        .unwrap();
    let n = send(
        &suite,
        "billing",
        request(&patient, Template::Promotion, &[Channel::Sms], "promo-0002"),
    )
    .await;
    settled(&suite, "billing", &n.id, Channel::Sms, DeliveryStatus::Sent).await;
    let sent = sandbox(&suite, &n.id);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, phone);
    assert!(
        sent[0].body.ends_with("Reply STOP to opt out."),
        "{}",
        sent[0].body
    );
    suite.shutdown().await;
}

#[tokio::test]
async fn sandbox_messages_are_mirrored_to_the_sandbox_file_one_json_line_each() {
    let dir = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: the sandbox makes it.
    let path = dir.path().join("messaging/sandbox-outbox.jsonl");
    let configured = path.clone();
    let suite = common::spawn_with(move |c| {
        c.messaging.notifications.sandbox_file = Some(configured);
    })
    .await;
    let patient = suite.user(Role::Patient, "pat").await;
    let mut ids = Vec::new();
    for (key, code) in [("file-0001", "4417"), ("file-0002", "9051")] {
        let mut r = with_params(
            request(&patient, Template::VerificationCode, &[Channel::Push], key),
            &[("code", code)],
        );
        r.urgent = true;
        let n = send(&suite, "identity", r).await;
        settled(
            &suite,
            "identity",
            &n.id,
            Channel::Push,
            DeliveryStatus::Sent,
        )
        .await;
        ids.push((n.id, code));
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (line, (id, code)) in lines.iter().zip(&ids) {
        assert_eq!(line["channel"], "push");
        assert_eq!(line["notification_id"], id.as_str());
        let memory = sandbox(&suite, id);
        assert_eq!(memory.len(), 1);
        assert_eq!(line["to"], memory[0].to.as_str());
        assert_eq!(line["subject"], memory[0].subject.as_str());
        assert_eq!(line["body"], memory[0].body.as_str());
        assert!(line["body"].as_str().unwrap().contains(code), "{line}");
        assert!(
            chrono::DateTime::parse_from_rfc3339(line["at"].as_str().unwrap()).is_ok(),
            "{line}"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    suite.shutdown().await;
}

/// Every template the service knows can be stored: the table's CHECK names each stored code. A
/// template added without extending it failed every send with INTERNAL (identity's security
/// notices did, and stayed in identity's outbox).
#[tokio::test]
async fn every_template_code_is_allowed_by_the_notifications_table() {
    let suite = common::spawn().await;
    let check: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint
          WHERE conname = 'notifications_template_check'",
    )
    .fetch_one(suite.pool())
    .await
    .unwrap();
    let templates: Vec<_> = carehub_messaging::notify::templates::Template::all().collect();
    assert!(!templates.is_empty());
    for template in templates {
        let code = template.as_str();
        assert!(
            check.contains(&format!("'{code}'")),
            "notifications_template_check refuses {code}: {check}"
        );
    }
    suite.shutdown().await;
}
