#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Bad input to every accounts RPC: INVALID_ARGUMENT naming each bad field, and nothing written.

use crate::common;

use carehub_proto::common::v1::Date;
use carehub_proto::identity::v1::*;
use common::{patient_request, TestApp, PASSWORD};
use tonic::Code;

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

/// Asserts INVALID_ARGUMENT naming exactly `fields` (in any order) and unchanged row counts.
async fn rejected<T: std::fmt::Debug>(
    app: &TestApp,
    before: &[(&'static str, i64)],
    result: Result<tonic::Response<T>, tonic::Status>,
    fields: &[&str],
    case: &str,
) {
    let e = result.expect_err(case);
    assert_eq!(e.code(), Code::InvalidArgument, "{case}: {e:?}");
    let d = carehub_platform::errors::details_of(&e);
    let mut got: Vec<String> = d.field_violations.into_iter().map(|(f, _)| f).collect();
    got.sort();
    let mut want: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
    want.sort();
    assert_eq!(got, want, "{case}: {e:?}");
    assert!(
        !e.message().contains('@'),
        "{case}: no PHI in messages: {}",
        e.message()
    );
    assert_eq!(app.counts().await, before, "{case}: nothing may be written");
}

#[tokio::test]
async fn register_patient_bad_input() {
    let app = common::spawn().await;
    let mut c = app.public("gateway").await;
    let before = app.counts().await;
    let ok = || patient_request("ann@example.org", PASSWORD);
    let cases: Vec<(&str, RegisterPatientRequest, Vec<&str>)> = vec![
        (
            "empty request",
            RegisterPatientRequest::default(),
            vec![
                "email",
                "password",
                "given_name",
                "family_name",
                "date_of_birth",
                "accepted_terms_version",
                "accepted_privacy_version",
            ],
        ),
        (
            "email without @",
            RegisterPatientRequest {
                email: "ann.example.org".into(),
                ..ok()
            },
            vec!["email"],
        ),
        (
            "email too long",
            RegisterPatientRequest {
                email: format!("{}@x.org", "a".repeat(250)),
                ..ok()
            },
            vec!["email"],
        ),
        (
            "password too long",
            RegisterPatientRequest {
                password: "p".repeat(129),
                ..ok()
            },
            vec!["password"],
        ),
        (
            "phone not E.164",
            RegisterPatientRequest {
                phone: "555-1234".into(),
                ..ok()
            },
            vec!["phone"],
        ),
        (
            "phone too long",
            RegisterPatientRequest {
                phone: format!("+1{}", "5".repeat(20)),
                ..ok()
            },
            vec!["phone"],
        ),
        (
            "name too long",
            RegisterPatientRequest {
                given_name: "n".repeat(101),
                ..ok()
            },
            vec!["given_name"],
        ),
        (
            "blank family name",
            RegisterPatientRequest {
                family_name: "   ".into(),
                ..ok()
            },
            vec!["family_name"],
        ),
        (
            "date 31 Feb",
            RegisterPatientRequest {
                date_of_birth: Some(Date {
                    year: 1990,
                    month: 2,
                    day: 31,
                }),
                ..ok()
            },
            vec!["date_of_birth.day"],
        ),
        (
            "month 13",
            RegisterPatientRequest {
                date_of_birth: Some(Date {
                    year: 1990,
                    month: 13,
                    day: 1,
                }),
                ..ok()
            },
            vec!["date_of_birth.month"],
        ),
        (
            "year 0",
            RegisterPatientRequest {
                date_of_birth: Some(Date {
                    year: 0,
                    month: 1,
                    day: 1,
                }),
                ..ok()
            },
            vec!["date_of_birth.year"],
        ),
        (
            "future birth",
            RegisterPatientRequest {
                date_of_birth: Some(Date {
                    year: 9000,
                    month: 1,
                    day: 1,
                }),
                ..ok()
            },
            vec!["date_of_birth"],
        ),
        (
            "bad zone",
            RegisterPatientRequest {
                time_zone: "Mars/Base".into(),
                ..ok()
            },
            vec!["time_zone"],
        ),
        (
            "zone too long",
            RegisterPatientRequest {
                time_zone: "Z".repeat(1000),
                ..ok()
            },
            vec!["time_zone"],
        ),
        (
            "terms version too long",
            RegisterPatientRequest {
                accepted_terms_version: "v".repeat(33),
                ..ok()
            },
            vec!["accepted_terms_version"],
        ),
        (
            "sms without phone",
            RegisterPatientRequest {
                sms_opt_in: true,
                ..ok()
            },
            vec!["sms_opt_in"],
        ),
    ];
    for (case, req, fields) in cases {
        rejected(&app, &before, c.register_patient(req).await, &fields, case).await;
    }
    // A malformed idempotency key.
    rejected(
        &app,
        &before,
        c.register_patient(app.with_key(ok(), "short")).await,
        &["idempotency-key"],
        "short key",
    )
    .await;
    app.shutdown().await;
}

#[tokio::test]
async fn admin_rpcs_bad_input() {
    let app = common::spawn().await;
    let mut c = app.public("gateway").await;
    let admin = app.create_admin().await;
    let token = app.token_for(&admin).await;
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let before = app.counts().await;

    let ok = || CreateUserRequest {
        email: "doc@example.org".into(),
        role: Role::Provider as i32,
        given_name: "Dana".into(),
        family_name: "Doctor".into(),
        phone: String::new(),
        time_zone: String::new(),
        date_of_birth: None,
    };
    let cases: Vec<(&str, CreateUserRequest, Vec<&str>)> = vec![
        (
            "empty",
            CreateUserRequest::default(),
            vec!["email", "role", "given_name", "family_name"],
        ),
        (
            "unknown role",
            CreateUserRequest { role: 42, ..ok() },
            vec!["role"],
        ),
        (
            "bad phone",
            CreateUserRequest {
                phone: "+1".into(),
                ..ok()
            },
            vec!["phone"],
        ),
        (
            "bad zone",
            CreateUserRequest {
                time_zone: "Nowhere".into(),
                ..ok()
            },
            vec!["time_zone"],
        ),
        (
            "bad dob",
            CreateUserRequest {
                date_of_birth: Some(Date {
                    year: 2001,
                    month: 4,
                    day: 31,
                }),
                ..ok()
            },
            vec!["date_of_birth.day"],
        ),
        (
            "patient without dob",
            CreateUserRequest {
                role: Role::Patient as i32,
                ..ok()
            },
            vec!["date_of_birth"],
        ),
        (
            "name too long",
            CreateUserRequest {
                family_name: "f".repeat(101),
                ..ok()
            },
            vec!["family_name"],
        ),
    ];
    for (case, req, fields) in cases {
        rejected(
            &app,
            &before,
            c.create_user(app.with_token(req, &token)).await,
            &fields,
            case,
        )
        .await;
    }

    let id_cases: Vec<(&str, String, String, Vec<&str>)> = vec![
        (
            "missing both",
            String::new(),
            String::new(),
            vec!["user_id", "reason"],
        ),
        ("not a uuid", "user-1".into(), "r".into(), vec!["user_id"]),
        ("huge id", "a".repeat(10_000), "r".into(), vec!["user_id"]),
        (
            "reason too long",
            ann.user_id.clone(),
            "r".repeat(501),
            vec!["reason"],
        ),
        (
            "blank reason",
            ann.user_id.clone(),
            "   ".into(),
            vec!["reason"],
        ),
    ];
    for (case, user_id, reason, fields) in id_cases {
        let r = c
            .suspend_user(app.with_token(
                SuspendUserRequest {
                    user_id: user_id.clone(),
                    reason: reason.clone(),
                },
                &token,
            ))
            .await;
        rejected(&app, &before, r, &fields, &format!("suspend: {case}")).await;
        let r = c
            .reactivate_user(app.with_token(
                ReactivateUserRequest {
                    user_id: user_id.clone(),
                    reason: reason.clone(),
                },
                &token,
            ))
            .await;
        rejected(&app, &before, r, &fields, &format!("reactivate: {case}")).await;
        let r = c
            .terminate_user(app.with_token(TerminateUserRequest { user_id, reason }, &token))
            .await;
        rejected(&app, &before, r, &fields, &format!("terminate: {case}")).await;
    }

    for (case, id) in [
        ("empty", String::new()),
        ("malformed", "1234".to_owned()),
        ("huge", "9".repeat(5000)),
    ] {
        let r = c
            .get_user(app.with_token(
                GetUserRequest {
                    user_id: id.clone(),
                },
                &token,
            ))
            .await;
        rejected(&app, &before, r, &["user_id"], &format!("get_user: {case}")).await;
        let r = app
            .internal("records")
            .await
            .lookup_user(LookupUserRequest { user_id: id })
            .await;
        rejected(
            &app,
            &before,
            r,
            &["user_id"],
            &format!("lookup_user: {case}"),
        )
        .await;
    }
    app.shutdown().await;
}

#[tokio::test]
async fn self_service_bad_input() {
    let app = common::spawn().await;
    let mut c = app.public("gateway").await;
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let token = app.token_for(&app.account(&ann.user_id).await).await;
    let before = app.counts().await;

    // Verification codes.
    for (case, channel) in [("unspecified channel", 0), ("unknown channel", 9)] {
        let r = c
            .send_verification_code(app.with_token(SendVerificationCodeRequest { channel }, &token))
            .await;
        rejected(&app, &before, r, &["channel"], case).await;
    }
    let verify_cases: Vec<(&str, i32, String, Vec<&str>)> = vec![
        ("empty", 0, String::new(), vec!["channel", "code"]),
        (
            "short code",
            ContactChannel::Email as i32,
            "12345".into(),
            vec!["code"],
        ),
        (
            "letters",
            ContactChannel::Email as i32,
            "12a456".into(),
            vec!["code"],
        ),
        (
            "huge code",
            ContactChannel::Email as i32,
            "1".repeat(100_000),
            vec!["code"],
        ),
    ];
    for (case, channel, code, fields) in verify_cases {
        let r = c
            .verify_contact(app.with_token(VerifyContactRequest { channel, code }, &token))
            .await;
        rejected(&app, &before, r, &fields, case).await;
    }

    // Profile.
    let profile_cases: Vec<(&str, UpdateProfileRequest, Vec<&str>)> = vec![
        (
            "no mask",
            UpdateProfileRequest {
                user: Some(User::default()),
                update_mask: None,
            },
            vec!["update_mask"],
        ),
        (
            "unknown path",
            UpdateProfileRequest {
                user: Some(User::default()),
                update_mask: mask(&["status"]),
            },
            vec!["update_mask"],
        ),
        (
            "no user",
            UpdateProfileRequest {
                user: None,
                update_mask: mask(&["given_name"]),
            },
            vec!["user"],
        ),
        (
            "bad values",
            UpdateProfileRequest {
                user: Some(User {
                    given_name: String::new(),
                    family_name: "f".repeat(101),
                    phone: "12345".into(),
                    time_zone: "Atlantis/City".into(),
                    email: "nope".into(),
                    ..User::default()
                }),
                update_mask: mask(&["given_name", "family_name", "phone", "time_zone", "email"]),
            },
            vec![
                "user.given_name",
                "user.family_name",
                "user.phone",
                "user.time_zone",
                "user.email",
            ],
        ),
    ];
    for (case, req, fields) in profile_cases {
        rejected(
            &app,
            &before,
            c.update_profile(app.with_token(req, &token)).await,
            &fields,
            case,
        )
        .await;
    }

    // Consents.
    let r = c
        .update_consents(app.with_token(
            UpdateConsentsRequest {
                accept_terms_version: "t".repeat(33),
                accept_privacy_version: "has space".into(),
                marketing_opt_in: Some(true),
                sms_opt_in: None,
            },
            &token,
        ))
        .await;
    rejected(
        &app,
        &before,
        r,
        &["accept_terms_version", "accept_privacy_version"],
        "consents",
    )
    .await;

    // Communication preferences.
    let prefs_cases: Vec<(&str, UpdateCommunicationPreferencesRequest, Vec<&str>)> = vec![
        (
            "no mask",
            UpdateCommunicationPreferencesRequest {
                preferences: Some(CommunicationPreferences::default()),
                update_mask: None,
            },
            vec!["update_mask"],
        ),
        (
            "unknown path",
            UpdateCommunicationPreferencesRequest {
                preferences: Some(CommunicationPreferences::default()),
                update_mask: mask(&["user_id"]),
            },
            vec!["update_mask"],
        ),
        (
            "no preferences",
            UpdateCommunicationPreferencesRequest {
                preferences: None,
                update_mask: mask(&["language"]),
            },
            vec!["preferences"],
        ),
        (
            "bad values",
            UpdateCommunicationPreferencesRequest {
                preferences: Some(CommunicationPreferences {
                    language: "x".repeat(36),
                    quiet_hours_start: 24,
                    quiet_hours_end: -1,
                    ..CommunicationPreferences::default()
                }),
                update_mask: mask(&["language", "quiet_hours_start", "quiet_hours_end"]),
            },
            vec![
                "preferences.language",
                "preferences.quiet_hours_start",
                "preferences.quiet_hours_end",
            ],
        ),
        (
            "language too short",
            UpdateCommunicationPreferencesRequest {
                preferences: Some(CommunicationPreferences {
                    language: "e".into(),
                    ..CommunicationPreferences::default()
                }),
                update_mask: mask(&["language"]),
            },
            vec!["preferences.language"],
        ),
    ];
    for (case, req, fields) in prefs_cases {
        rejected(
            &app,
            &before,
            c.update_communication_preferences(app.with_token(req, &token))
                .await,
            &fields,
            case,
        )
        .await;
    }
    app.shutdown().await;
}
