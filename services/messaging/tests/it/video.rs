//! Video visits: scheduling records a visit (UpsertVideoVisit), its participants get join tokens
//! (GetVideoJoinToken) within the window, nobody else and never once it is cancelled. Every
//! token is checked by PyPI livekit-api 1.2.2's TokenVerifier (scripts/livekit/verify.py,
//! installed pinned by scripts/livekit/install.sh on first use) with the API secret derived
//! from messaging's keys the way an operator derives it for the SFU: room, identity, grants,
//! expiry — and the checker is shown to refuse what it should.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use carehub_platform::auth::Role;
use carehub_proto::messaging::v1::*;
use chrono::{DateTime, Duration, Utc};
use prost::Message as _;
use tonic::Code;

use crate::common::{self, as_user, assert_status, with_key, Suite, User};

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/livekit")
}

/// Where the checker is installed (once per test process).
fn checker() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(scripts().join("install.sh")).output().unwrap();
        assert!(
            out.status.success(),
            "installing livekit-api: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// The API secret the SFU is given for messaging's `api_key`: derived from the keys messaging
/// runs with, read afresh from its key file as an operator's tool reads them.
async fn sfu_secret(suite: &Suite) -> String {
    let config = suite.messaging.env.platform_config();
    let keys = carehub_platform::keys::from_config("messaging", &config)
        .await
        .unwrap();
    let api_key = &suite.messaging.handle().state.settings.video.api_key;
    carehub_messaging::video::api_secret(&keys, api_key)
        .unwrap()
        .to_string()
}

/// What livekit-api's TokenVerifier says of `token`, expected to be `identity`'s in `room`
/// until `expires`: (all checks passed, the checker's report).
fn verify(
    suite: &Suite,
    secret: &str,
    token: &str,
    room: &str,
    identity: &str,
    expires: i64,
) -> (bool, String) {
    use std::io::Write as _;
    let api_key = &suite.messaging.handle().state.settings.video.api_key;
    let mut child = Command::new(checker().join("venv/bin/python"))
        .arg(scripts().join("verify.py"))
        .args(["--api-key", api_key, "--room", room, "--identity", identity])
        .args(["--expires", &expires.to_string(), "--max-ttl", "3600"])
        .env("LIVEKIT_API_SECRET", secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    carehub_platform::timestamps::to_proto(t)
}

fn visit(
    appointment: &str,
    patient: &User,
    provider: &User,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
) -> VideoVisit {
    VideoVisit {
        appointment_id: appointment.to_owned(),
        patient_id: patient.id.clone(),
        provider_id: provider.id.clone(),
        start_time: Some(ts(start)),
        end_time: Some(ts(end)),
        cancelled: false,
        room: String::new(),
        revision: 0,
    }
}

/// Scheduling's UpsertVideoVisit, with an idempotency key (named by `key`) as its outbox sends
/// one.
async fn upsert(suite: &Suite, visit: VideoVisit, key: &str) -> Result<VideoVisit, tonic::Status> {
    suite
        .internal("scheduling")
        .await
        .upsert_video_visit(with_key(
            tonic::Request::new(UpsertVideoVisitRequest { visit: Some(visit) }),
            &format!("outbox-{key}"),
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn token(
    suite: &Suite,
    user: &User,
    appointment: &str,
) -> Result<VideoJoinToken, tonic::Status> {
    suite
        .public()
        .await
        .get_video_join_token(as_user(
            user,
            GetVideoJoinTokenRequest {
                appointment_id: appointment.to_owned(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// `google.rpc.Status` and `PreconditionFailure`, as far as the test reads them.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct PreconditionFailure {
    #[prost(message, repeated, tag = "1")]
    violations: Vec<Violation>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Violation {
    #[prost(string, tag = "1")]
    r#type: String,
    #[prost(string, tag = "2")]
    subject: String,
}

/// FAILED_PRECONDITION naming `kind` about `subject`.
fn assert_precondition(status: &tonic::Status, kind: &str, subject: &str) {
    assert_status(status, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    let details = RpcStatus::decode(status.details()).unwrap();
    let violations: Vec<(String, String)> = details
        .details
        .iter()
        .filter(|any| any.type_url.ends_with("google.rpc.PreconditionFailure"))
        .flat_map(|any| {
            PreconditionFailure::decode(any.value.as_slice())
                .unwrap()
                .violations
        })
        .map(|v| (v.r#type, v.subject))
        .collect();
    assert_eq!(
        violations,
        [(kind.to_owned(), subject.to_owned())],
        "{status:?}"
    );
}

fn appointment() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A visit happening now: both participants get tokens that livekit-api accepts for their own
/// identity, in the visit's room, with every grant, expiring at the window's close (before the
/// hour is up); nobody else gets one; each issue is audited under the patient.
#[tokio::test]
async fn video_tokens_for_both_participants_pass_livekit_and_no_one_else_gets_one() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let provider = suite.user(Role::Provider, "doc").await;
    let stranger = suite.user(Role::Patient, "other").await;
    let other_doc = suite.user(Role::Provider, "otherdoc").await;
    let now = Utc::now();
    let (start, end) = (now - Duration::minutes(5), now + Duration::minutes(25));
    let id = appointment();
    let stored = upsert(
        &suite,
        visit(&id, &patient, &provider, (start, end)),
        "up-1",
    )
    .await
    .unwrap();
    assert_eq!(stored.appointment_id, id);
    assert!(!stored.cancelled);
    // The room says nothing about the appointment, its patient or its provider.
    assert!(stored.room.starts_with("visit-"), "{}", stored.room);
    for id_part in [&id, &patient.id, &provider.id] {
        assert!(!stored.room.contains(&id_part[..8]), "{}", stored.room);
    }

    let secret = sfu_secret(&suite).await;
    let close = (end + Duration::minutes(15)).timestamp();
    for who in [&patient, &provider] {
        let t = token(&suite, who, &id).await.unwrap();
        assert_eq!(t.room, stored.room);
        assert_eq!(t.url, suite.messaging.handle().state.settings.video.url);
        let expires = t.expire_time.unwrap().seconds;
        assert_eq!(expires, close, "cut at the visit's end plus the window");
        let (ok, report) = verify(&suite, &secret, &t.token, &t.room, &who.id, expires);
        assert!(ok, "{report}");
        // The checker fails when it should: the token is not the other participant's.
        let other = if who.id == patient.id {
            &provider
        } else {
            &patient
        };
        let (ok, report) = verify(&suite, &secret, &t.token, &t.room, &other.id, expires);
        assert!(!ok && report.contains("identity"), "{report}");
    }

    for who in [&stranger, &other_doc] {
        let e = token(&suite, who, &id).await.unwrap_err();
        assert_status(&e, Code::PermissionDenied, Some("NOT_A_PARTICIPANT"));
    }
    let e = token(&suite, &patient, &appointment()).await.unwrap_err();
    assert_status(&e, Code::NotFound, Some("RESOURCE_NOT_FOUND"));
    let e = token(&suite, &patient, "not-a-uuid").await.unwrap_err();
    assert_eq!(
        assert_status(&e, Code::InvalidArgument, None),
        ["appointment_id"]
    );

    let audit = suite.audit().await;
    let of = |kind: &str| -> Vec<_> {
        audit
            .iter()
            .filter(|(k, ..)| k == kind)
            .map(|(_, purpose, subject, actor)| (purpose.clone(), subject.clone(), actor.clone()))
            .collect()
    };
    assert_eq!(
        of("messaging.video_visit.upsert"),
        [("treatment".to_owned(), Some(patient.id.clone()), None)]
    );
    assert_eq!(
        of("messaging.video_token.issue"),
        [&patient, &provider].map(|who| (
            "treatment".to_owned(),
            Some(patient.id.clone()),
            Some(who.id.clone())
        ))
    );
    suite.shutdown().await;
}

/// Tokens only within [start - 15 min, end + 15 min]: a visit in two hours and one that ended an
/// hour ago get none (VISIT_WINDOW); one starting in ten minutes does, for the full hour.
#[tokio::test]
async fn video_tokens_are_refused_outside_the_visit_window() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let provider = suite.user(Role::Provider, "doc").await;
    let now = Utc::now();
    let later = appointment();
    let (start, end) = (now + Duration::hours(2), now + Duration::minutes(150));
    upsert(
        &suite,
        visit(&later, &patient, &provider, (start, end)),
        "later",
    )
    .await
    .unwrap();
    let past = appointment();
    let (start, end) = (now - Duration::minutes(90), now - Duration::hours(1));
    upsert(
        &suite,
        visit(&past, &patient, &provider, (start, end)),
        "past",
    )
    .await
    .unwrap();
    for id in [&later, &past] {
        for who in [&patient, &provider] {
            let e = token(&suite, who, id).await.unwrap_err();
            assert_precondition(&e, "VISIT_WINDOW", id);
        }
    }

    let soon = appointment();
    let (start, end) = (now + Duration::minutes(10), now + Duration::minutes(70));
    upsert(
        &suite,
        visit(&soon, &patient, &provider, (start, end)),
        "soon",
    )
    .await
    .unwrap();
    let t = token(&suite, &patient, &soon).await.unwrap();
    let expires = t.expire_time.unwrap().seconds;
    // A full hour: now + ttl comes before end + window.
    let hour = (now + Duration::hours(1)).timestamp();
    assert!((hour..=hour + 5).contains(&expires), "{expires} vs {hour}");
    let secret = sfu_secret(&suite).await;
    let (ok, report) = verify(&suite, &secret, &t.token, &t.room, &patient.id, expires);
    assert!(ok, "{report}");
    suite.shutdown().await;
}

/// A cancelled visit gets no more tokens (VISIT_CANCELLED), and a late delivery of an earlier
/// change does not reopen it.
#[tokio::test]
async fn video_tokens_are_refused_after_cancellation() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let provider = suite.user(Role::Provider, "doc").await;
    let stranger = suite.user(Role::Patient, "other").await;
    let now = Utc::now();
    let id = appointment();
    let times = (now - Duration::minutes(1), now + Duration::minutes(30));
    let live = visit(&id, &patient, &provider, times);
    upsert(&suite, live.clone(), "created").await.unwrap();
    token(&suite, &patient, &id).await.unwrap();

    let cancelled = upsert(
        &suite,
        VideoVisit {
            cancelled: true,
            ..live.clone()
        },
        "cancelled",
    )
    .await
    .unwrap();
    assert!(cancelled.cancelled);
    for who in [&patient, &provider] {
        let e = token(&suite, who, &id).await.unwrap_err();
        assert_precondition(&e, "VISIT_CANCELLED", &id);
    }
    // Someone else learns nothing about the visit's state.
    let e = token(&suite, &stranger, &id).await.unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("NOT_A_PARTICIPANT"));

    // A delivery of the visit as it was before, arriving late, changes nothing.
    let late = upsert(&suite, live, "moved-earlier").await.unwrap();
    assert!(late.cancelled);
    assert_eq!(late.room, cancelled.room);
    let e = token(&suite, &patient, &id).await.unwrap_err();
    assert_precondition(&e, "VISIT_CANCELLED", &id);
    suite.shutdown().await;
}

/// Revisions order scheduling's changes: its cancellation (revision 2) applied, then the change
/// before it (revision 1, not cancelled) delivered late — a retry the cancellation overtook,
/// under its own outbox id — is ignored: the visit stays cancelled and no token is issued. Not
/// only for cancellations: a late older move leaves the later one standing. An unversioned
/// upsert (revision 0) is always applied and keeps the stored revision.
#[tokio::test]
async fn video_visit_upserts_older_than_the_stored_revision_are_ignored() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let provider = suite.user(Role::Provider, "doc").await;
    let now = Utc::now();
    let times = (now - Duration::minutes(1), now + Duration::minutes(30));

    let id = appointment();
    let cancelled = upsert(
        &suite,
        VideoVisit {
            cancelled: true,
            revision: 2,
            ..visit(&id, &patient, &provider, times)
        },
        "a-rev-2",
    )
    .await
    .unwrap();
    assert!(cancelled.cancelled);
    assert_eq!(cancelled.revision, 2);
    let late = upsert(
        &suite,
        VideoVisit {
            revision: 1,
            ..visit(&id, &patient, &provider, times)
        },
        "a-rev-1",
    )
    .await
    .unwrap();
    assert_eq!(late, cancelled, "the stored visit, unchanged");
    for who in [&patient, &provider] {
        let e = token(&suite, who, &id).await.unwrap_err();
        assert_precondition(&e, "VISIT_CANCELLED", &id);
    }

    let id = appointment();
    let booked = VideoVisit {
        revision: 3,
        ..visit(&id, &patient, &provider, times)
    };
    upsert(&suite, booked.clone(), "b-rev-3").await.unwrap();
    let moved = upsert(
        &suite,
        VideoVisit {
            start_time: Some(ts(now + Duration::hours(3))),
            end_time: Some(ts(now + Duration::minutes(200))),
            revision: 4,
            ..booked.clone()
        },
        "b-rev-4",
    )
    .await
    .unwrap();
    assert_eq!(moved.revision, 4);
    // Revision 3 again, as a retry under another outbox id: not above the stored 4.
    let late = upsert(&suite, booked.clone(), "b-rev-3-late")
        .await
        .unwrap();
    assert_eq!(late, moved);
    let e = token(&suite, &patient, &id).await.unwrap_err();
    assert_precondition(&e, "VISIT_WINDOW", &id);
    let unversioned = upsert(
        &suite,
        VideoVisit {
            revision: 0,
            ..booked.clone()
        },
        "b-unversioned",
    )
    .await
    .unwrap();
    assert_eq!(
        unversioned.start_time.map(|t| t.seconds),
        booked.start_time.map(|t| t.seconds)
    );
    assert_eq!(unversioned.revision, 4);
    token(&suite, &patient, &id).await.unwrap();

    let e = upsert(
        &suite,
        VideoVisit {
            revision: -1,
            ..booked
        },
        "b-negative",
    )
    .await
    .unwrap_err();
    assert_eq!(
        assert_status(&e, Code::InvalidArgument, None),
        ["visit.revision"]
    );
    suite.shutdown().await;
}

/// UpsertVideoVisit: field-named validation, the scheduling workload only, one answer per
/// idempotency key, a moved visit keeps its room, and an appointment's patient never changes.
#[tokio::test]
async fn video_visit_upsert_validates_and_is_idempotent() {
    let suite = common::spawn().await;
    let patient = suite.user(Role::Patient, "pat").await;
    let provider = suite.user(Role::Provider, "doc").await;
    let now = Utc::now();
    let id = appointment();

    let mut bad = visit(&id, &patient, &provider, (now, now - Duration::minutes(1)));
    bad.appointment_id = "nope".into();
    bad.provider_id = patient.id.clone();
    let e = upsert(&suite, bad, "bad").await.unwrap_err();
    let mut fields = assert_status(&e, Code::InvalidArgument, None);
    fields.sort();
    assert_eq!(
        fields,
        [
            "visit.appointment_id",
            "visit.end_time",
            "visit.provider_id"
        ]
    );
    let mut missing = visit(&id, &patient, &provider, (now, now));
    missing.start_time = None;
    missing.patient_id = String::new();
    let e = upsert(&suite, missing, "missing").await.unwrap_err();
    let mut fields = assert_status(&e, Code::InvalidArgument, None);
    fields.sort();
    assert_eq!(fields, ["visit.patient_id", "visit.start_time"]);
    let long = visit(&id, &patient, &provider, (now, now + Duration::hours(25)));
    let e = upsert(&suite, long, "long").await.unwrap_err();
    assert_eq!(
        assert_status(&e, Code::InvalidArgument, None),
        ["visit.end_time"]
    );
    let e = suite
        .internal("scheduling")
        .await
        .upsert_video_visit(UpsertVideoVisitRequest { visit: None })
        .await
        .unwrap_err();
    assert_eq!(assert_status(&e, Code::InvalidArgument, None), ["visit"]);

    // Only scheduling records visits.
    let v = visit(&id, &patient, &provider, (now, now + Duration::minutes(30)));
    let e = suite
        .internal("records")
        .await
        .upsert_video_visit(with_key(
            tonic::Request::new(UpsertVideoVisitRequest {
                visit: Some(v.clone()),
            }),
            "outbox-records",
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, None);

    let first = upsert(&suite, v.clone(), "k1").await.unwrap();
    assert_eq!(upsert(&suite, v.clone(), "k1").await.unwrap(), first);
    let moved = VideoVisit {
        start_time: Some(ts(now + Duration::hours(3))),
        end_time: Some(ts(now + Duration::minutes(200))),
        ..v.clone()
    };
    // The same key with another request is refused; a new key moves the visit, same room.
    assert!(upsert(&suite, moved.clone(), "k1").await.is_err());
    let after = upsert(&suite, moved.clone(), "k2").await.unwrap();
    assert_eq!(after.room, first.room);
    // Stored to the microsecond (Postgres timestamptz).
    assert_eq!(
        after.start_time.map(|t| t.seconds),
        moved.start_time.map(|t| t.seconds)
    );
    let e = token(&suite, &patient, &id).await.unwrap_err();
    assert_precondition(&e, "VISIT_WINDOW", &id);

    let other = suite.user(Role::Patient, "other").await;
    let e = upsert(
        &suite,
        VideoVisit {
            patient_id: other.id.clone(),
            ..moved
        },
        "k3",
    )
    .await
    .unwrap_err();
    assert_precondition(&e, "VISIT_PATIENT", &id);
    suite.shutdown().await;
}
