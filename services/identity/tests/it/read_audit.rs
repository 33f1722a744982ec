#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Every identity RPC that returns or changes personal data leaves an audit event naming who
//! (actor user or workload), whose data (subject) and why (purpose); a read whose event cannot
//! be recorded is refused, never answered (real Postgres, real mTLS).

use crate::common;

use crate::common::{PASSWORD, *};
use carehub_platform::auth::Role as PRole;
use carehub_proto::identity::v1::*;
use tonic::Code;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
struct Event {
    kind: String,
    action: String,
    purpose: String,
    outcome: String,
    actor_user_id: Option<Uuid>,
    actor_workload: Option<String>,
    entity_type: String,
    entity_id: String,
    subject_id: Option<Uuid>,
    request_id: Option<String>,
}

async fn max_seq(app: &TestApp) -> i64 {
    carehub_platform::audit::seal_all(app.pool()).await.unwrap();
    sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM carehub_platform.audit_events")
        .fetch_one(app.pool())
        .await
        .unwrap()
}

/// The events written after `seq`, oldest first.
async fn events_after(app: &TestApp, seq: i64) -> Vec<Event> {
    carehub_platform::audit::seal_all(app.pool()).await.unwrap();
    sqlx::query_as(
        "SELECT kind, action, purpose, outcome, actor_user_id, actor_workload, entity_type,
                entity_id, subject_id, request_id
         FROM carehub_platform.audit_events WHERE seq > $1 ORDER BY seq",
    )
    .bind(seq)
    .fetch_all(app.pool())
    .await
    .unwrap()
}

/// The one event written after `seq` (the call under test wrote exactly one).
async fn only_event_after(app: &TestApp, seq: i64) -> Event {
    let mut events = events_after(app, seq).await;
    assert_eq!(events.len(), 1, "expected one event, got {events:?}");
    events.remove(0)
}

fn with_request_id<T>(mut req: tonic::Request<T>, id: &str) -> tonic::Request<T> {
    req.metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    req
}

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap()
}

#[tokio::test]
async fn every_read_of_personal_data_is_audited_with_actor_subject_and_purpose() {
    let app = common::spawn().await;
    let mut c = app.public("gateway").await;
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let ann_id = uuid(&ann.user_id);
    let tokens = app.login("ann@example.org", PASSWORD).await;
    let token = &tokens.access_token;

    // GetProfile: the holder reads their own account.
    let before = max_seq(&app).await;
    let req = with_request_id(
        app.with_token(GetProfileRequest {}, token),
        "read-audit-profile",
    );
    let me = c.get_profile(req).await.unwrap().into_inner();
    assert_eq!(me.user_id, ann.user_id);
    let e = only_event_after(&app, before).await;
    assert_eq!(
        (e.kind.as_str(), e.action.as_str(), e.purpose.as_str()),
        ("identity.profile.read", "read", "patient_request")
    );
    assert_eq!(
        (e.actor_user_id, e.subject_id),
        (Some(ann_id), Some(ann_id))
    );
    assert_eq!(e.actor_workload.as_deref(), Some("gateway"));
    assert_eq!(e.request_id.as_deref(), Some("read-audit-profile"));
    assert_eq!(e.outcome, "success");

    // GetConsents and GetCommunicationPreferences: the holder's own.
    let before = max_seq(&app).await;
    c.get_consents(app.with_token(GetConsentsRequest {}, token))
        .await
        .unwrap();
    let e = only_event_after(&app, before).await;
    assert_eq!(
        (
            e.kind.as_str(),
            e.purpose.as_str(),
            e.actor_user_id,
            e.subject_id
        ),
        (
            "identity.consent.read",
            "patient_request",
            Some(ann_id),
            Some(ann_id)
        )
    );
    let before = max_seq(&app).await;
    c.get_communication_preferences(app.with_token(GetCommunicationPreferencesRequest {}, token))
        .await
        .unwrap();
    let e = only_event_after(&app, before).await;
    assert_eq!(
        (
            e.kind.as_str(),
            e.purpose.as_str(),
            e.actor_user_id,
            e.subject_id
        ),
        (
            "identity.preferences.read",
            "patient_request",
            Some(ann_id),
            Some(ann_id)
        )
    );

    // ListSessions: addresses and user agents of the holder's sessions.
    let before = max_seq(&app).await;
    let listed = c
        .list_sessions(app.with_token(ListSessionsRequest { page: None }, token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sessions.len(), 1);
    let e = only_event_after(&app, before).await;
    assert_eq!(
        (e.kind.as_str(), e.action.as_str(), e.purpose.as_str()),
        ("identity.sessions.list", "read", "security")
    );
    assert_eq!(
        (e.actor_user_id, e.subject_id),
        (Some(ann_id), Some(ann_id))
    );
    assert_eq!(
        (e.entity_type.as_str(), e.entity_id.as_str()),
        ("user", ann.user_id.as_str())
    );

    // GetUser: the holder reading themselves, then an admin and a staff member reading them.
    let before = max_seq(&app).await;
    c.get_user(app.with_token(
        GetUserRequest {
            user_id: ann.user_id.clone(),
        },
        token,
    ))
    .await
    .unwrap();
    let e = only_event_after(&app, before).await;
    assert_eq!(
        (
            e.kind.as_str(),
            e.purpose.as_str(),
            e.actor_user_id,
            e.subject_id
        ),
        (
            "identity.user.read",
            "patient_request",
            Some(ann_id),
            Some(ann_id)
        )
    );
    let (admin, admin_token) = app.admin_token().await;
    let staff = app
        .create_user_with_role("staff@carehub.test", PRole::Staff, PASSWORD)
        .await;
    let staff_token = app.token_for(&staff).await;
    for (reader, reader_token) in [(admin.id, &admin_token), (staff.id, &staff_token)] {
        let before = max_seq(&app).await;
        let got = c
            .get_user(app.with_token(
                GetUserRequest {
                    user_id: ann.user_id.clone(),
                },
                reader_token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.email, "ann@example.org");
        let e = only_event_after(&app, before).await;
        assert_eq!(
            (e.kind.as_str(), e.action.as_str(), e.purpose.as_str()),
            ("identity.user.read", "read", "operations")
        );
        assert_eq!(
            (e.actor_user_id, e.subject_id),
            (Some(reader), Some(ann_id)),
            "the reader is the actor, the account holder the subject"
        );
        assert_eq!(e.entity_id, ann.user_id);
    }

    // LookupUser: another service, no user: the workload is the actor.
    let mut internal = app.internal("scheduling").await;
    let before = max_seq(&app).await;
    let summary = internal
        .lookup_user(LookupUserRequest {
            user_id: ann.user_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.user_id, ann.user_id);
    let e = only_event_after(&app, before).await;
    assert_eq!(
        (e.kind.as_str(), e.action.as_str(), e.purpose.as_str()),
        ("identity.user.lookup", "read", "operations")
    );
    assert_eq!(
        (e.actor_user_id, e.actor_workload.as_deref(), e.subject_id),
        (None, Some("scheduling"), Some(ann_id))
    );

    // A refused read (someone else's account, no admin or staff role) records no read.
    let bob = app.register_patient("bob@example.org", PASSWORD).await;
    let bob_token = app.token_for(&app.account(&bob.user_id).await).await;
    let before = max_seq(&app).await;
    let err = c
        .get_user(app.with_token(
            GetUserRequest {
                user_id: ann.user_id.clone(),
            },
            &bob_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(events_after(&app, before).await, Vec::<Event>::new());
    app.shutdown().await;
}

#[tokio::test]
async fn changes_of_personal_data_are_audited() {
    let app = common::spawn().await;
    let mut c = app.public("gateway").await;
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let ann_id = uuid(&ann.user_id);
    let token = app.login("ann@example.org", PASSWORD).await.access_token;

    // UpdateProfile: name, email, phone.
    let before = max_seq(&app).await;
    let updated = c
        .update_profile(app.with_token(
            UpdateProfileRequest {
                user: Some(User {
                    given_name: "Annie".into(),
                    email: "annie@example.org".into(),
                    phone: "+14155550123".into(),
                    ..User::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["given_name".into(), "email".into(), "phone".into()],
                }),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.given_name, "Annie");
    let e = only_event_after(&app, before).await;
    assert_eq!(
        (e.kind.as_str(), e.action.as_str(), e.purpose.as_str()),
        ("identity.profile.update", "update", "patient_request")
    );
    assert_eq!(
        (e.actor_user_id, e.subject_id),
        (Some(ann_id), Some(ann_id))
    );

    // A retry with the same key replays the answer and writes nothing more.
    let keyed = |token: &str| {
        with_key(
            app.with_token(
                UpdateCommunicationPreferencesRequest {
                    preferences: Some(CommunicationPreferences {
                        language: "fr".into(),
                        ..CommunicationPreferences::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["language".into()],
                    }),
                },
                token,
            ),
            "prefs-key-0001",
        )
    };
    let before = max_seq(&app).await;
    let first = c
        .update_communication_preferences(keyed(&token))
        .await
        .unwrap()
        .into_inner();
    let e = only_event_after(&app, before).await;
    assert_eq!(
        (
            e.kind.as_str(),
            e.purpose.as_str(),
            e.actor_user_id,
            e.subject_id
        ),
        (
            "identity.preferences.update",
            "patient_request",
            Some(ann_id),
            Some(ann_id)
        )
    );
    let seq = max_seq(&app).await;
    let again = c
        .update_communication_preferences(keyed(&token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(events_after(&app, seq).await, Vec::<Event>::new());

    // SendVerificationCode and VerifyContact.
    let before = max_seq(&app).await;
    c.send_verification_code(app.with_token(
        SendVerificationCodeRequest {
            channel: ContactChannel::Phone as i32,
        },
        &token,
    ))
    .await
    .unwrap();
    let e = only_event_after(&app, before).await;
    assert_eq!(
        (e.kind.as_str(), e.action.as_str(), e.subject_id),
        ("identity.contact.code_send", "execute", Some(ann_id))
    );
    let code = app.last_sms_code(&ann.user_id).unwrap();
    let before = max_seq(&app).await;
    c.verify_contact(app.with_token(
        VerifyContactRequest {
            channel: ContactChannel::Phone as i32,
            code,
        },
        &token,
    ))
    .await
    .unwrap();
    let e = only_event_after(&app, before).await;
    assert_eq!(
        (e.kind.as_str(), e.action.as_str(), e.subject_id),
        ("identity.contact.verify", "update", Some(ann_id))
    );
    app.shutdown().await;
}

/// Asserts `r` was refused because its audit event could not be recorded.
fn refused(what: &str, r: Result<(), tonic::Status>) {
    let err = r.expect_err(what);
    assert_status(&err, Code::Unavailable, Some("UNAVAILABLE"));
    assert!(
        err.message().contains("audit trail is unavailable"),
        "{what}: {err:?}"
    );
}

fn answered<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<(), tonic::Status> {
    r.map(|_| ())
}

/// Makes every audit append fail, as a full disk or a broken chain table would.
async fn break_the_audit_trail(app: &TestApp) {
    for sql in [
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'audit trail refused (test)'; END $$",
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON carehub_platform.audit_queue
         FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
    ] {
        sqlx::query(sql).execute(app.pool()).await.unwrap();
    }
}

#[tokio::test]
async fn a_read_that_cannot_be_audited_is_refused() {
    let app = common::spawn().await;
    let mut c = app.public("gateway").await;
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let tokens = app.login("ann@example.org", PASSWORD).await;
    let token = &tokens.access_token;
    let (_, admin_token) = app.admin_token().await;
    let mut internal = app.internal("records").await;
    let before = max_seq(&app).await;
    break_the_audit_trail(&app).await;

    refused(
        "GetProfile",
        answered(
            c.get_profile(app.with_token(GetProfileRequest {}, token))
                .await,
        ),
    );
    refused(
        "GetUser",
        answered(
            c.get_user(app.with_token(
                GetUserRequest {
                    user_id: ann.user_id.clone(),
                },
                &admin_token,
            ))
            .await,
        ),
    );
    refused(
        "GetConsents",
        answered(
            c.get_consents(app.with_token(GetConsentsRequest {}, token))
                .await,
        ),
    );
    refused(
        "GetCommunicationPreferences",
        answered(
            c.get_communication_preferences(
                app.with_token(GetCommunicationPreferencesRequest {}, token),
            )
            .await,
        ),
    );
    refused(
        "ListSessions",
        answered(
            c.list_sessions(app.with_token(ListSessionsRequest { page: None }, token))
                .await,
        ),
    );
    refused(
        "LookupUser",
        answered(
            internal
                .lookup_user(LookupUserRequest {
                    user_id: ann.user_id.clone(),
                })
                .await,
        ),
    );
    // A change is refused too, and rolled back with its event.
    refused(
        "UpdateProfile",
        answered(
            c.update_profile(app.with_token(
                UpdateProfileRequest {
                    user: Some(User {
                        given_name: "Annie".into(),
                        ..User::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["given_name".into()],
                    }),
                },
                token,
            ))
            .await,
        ),
    );
    assert_eq!(app.account(&ann.user_id).await.given_name, "Ann");
    assert_eq!(events_after(&app, before).await, Vec::<Event>::new());

    // Once the trail takes events again, the same read is answered and audited.
    sqlx::query("DROP TRIGGER refuse_audit ON carehub_platform.audit_queue")
        .execute(app.pool())
        .await
        .unwrap();
    c.get_profile(app.with_token(GetProfileRequest {}, token))
        .await
        .unwrap();
    assert_eq!(
        only_event_after(&app, before).await.kind,
        "identity.profile.read"
    );
    app.shutdown().await;
}
