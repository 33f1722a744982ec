#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Accounts RPCs against a real identity server (real Postgres, real mTLS).

use crate::common;

use carehub_platform::auth::Role as PRole;
use carehub_proto::common::v1::Date;
use carehub_proto::identity::v1::*;
use common::{assert_status, patient_request, PASSWORD};
use tonic::Code;

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

#[tokio::test]
async fn register_patient_creates_everything_and_sends_codes() {
    let app = common::spawn().await;
    let mut c = app.public("gateway").await;
    let mut req = patient_request("Ann@Example.org", PASSWORD);
    req.phone = "+15551234567".into();
    req.sms_opt_in = true;
    req.marketing_opt_in = true;
    let user = c.register_patient(req).await.unwrap().into_inner();
    assert_eq!(user.email, "ann@example.org");
    assert_eq!(user.roles, vec![Role::Patient as i32]);
    assert_eq!(user.status, AccountStatus::Active as i32);
    assert!(!user.email_verified && !user.phone_verified);
    assert_eq!(user.phone, "+15551234567");
    assert_eq!(user.time_zone, "America/New_York");
    assert_eq!(
        user.date_of_birth,
        Some(Date {
            year: 1990,
            month: 5,
            day: 17
        })
    );
    assert!(!user.password_change_required);

    assert_eq!(app.count("users").await, 1);
    assert_eq!(app.count("consents").await, 1);
    assert_eq!(app.count("consent_events").await, 4);
    assert_eq!(app.count("communication_preferences").await, 1);
    assert_eq!(app.count("verification_codes").await, 2);
    let email_code = app.last_email_code(&user.user_id).expect("email code sent");
    let sms_code = app.last_sms_code(&user.user_id).expect("sms code sent");
    assert_eq!(email_code.len(), 6);
    assert_eq!(sms_code.len(), 6);
    // Only hashes are stored.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT code_hash FROM verification_codes")
        .fetch_all(app.pool())
        .await
        .unwrap();
    assert!(stored
        .iter()
        .all(|h| h.len() == 32 && h != email_code.as_bytes()));
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));

    // Consents and preferences as registered.
    let token = app.token_for(&app.account(&user.user_id).await).await;
    let consents = c
        .get_consents(app.with_token(GetConsentsRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(consents.accepted_terms_version, "2025-01");
    assert_eq!(consents.accepted_privacy_version, "2025-01");
    assert!(consents.marketing_opt_in && consents.sms_opt_in);
    assert!(consents.terms_accept_time.is_some() && consents.sms_update_time.is_some());
    let prefs = c
        .get_communication_preferences(
            app.with_token(GetCommunicationPreferencesRequest {}, &token),
        )
        .await
        .unwrap()
        .into_inner();
    assert!(prefs.sms_notifications && prefs.email_notifications);
    assert_eq!(prefs.language, "en-US");

    // Verify both contacts.
    let u = c
        .verify_contact(app.with_token(
            VerifyContactRequest {
                channel: ContactChannel::Email as i32,
                code: email_code,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(u.email_verified && !u.phone_verified);
    let u = c
        .verify_contact(app.with_token(
            VerifyContactRequest {
                channel: ContactChannel::Phone as i32,
                code: sms_code,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(u.email_verified && u.phone_verified);
    app.shutdown().await;
}

#[tokio::test]
async fn register_patient_errors() {
    let app = common::spawn().await;
    let mut c = app.public("gateway").await;

    // Underage: 18 years minus one day.
    let today = chrono::Utc::now().date_naive();
    let seventeen = today
        .checked_sub_months(chrono::Months::new(18 * 12))
        .unwrap()
        .succ_opt()
        .unwrap();
    let mut req = patient_request("kid@example.org", PASSWORD);
    req.date_of_birth = Some(carehub_identity::domain::validation::date_to_pb(seventeen));
    let e = c.register_patient(req).await.unwrap_err();
    assert_eq!(
        assert_status(&e, Code::InvalidArgument, Some("UNDERAGE")),
        ["date_of_birth"]
    );
    // Exactly 18 today is fine.
    let mut req = patient_request("adult@example.org", PASSWORD);
    let eighteen = today
        .checked_sub_months(chrono::Months::new(18 * 12))
        .unwrap();
    req.date_of_birth = Some(carehub_identity::domain::validation::date_to_pb(eighteen));
    c.register_patient(req).await.unwrap();

    // Password policy: too short, too common.
    for bad in ["short", "Password1234", &"x".repeat(129)] {
        let e = c
            .register_patient(patient_request("pw@example.org", bad))
            .await
            .unwrap_err();
        assert_eq!(
            assert_status(&e, Code::InvalidArgument, Some("PASSWORD_POLICY")),
            ["password"]
        );
    }

    // Duplicate email, whatever its case.
    app.register_patient("dup@example.org", PASSWORD).await;
    let e = c
        .register_patient(patient_request("DUP@example.org", PASSWORD))
        .await
        .unwrap_err();
    assert_status(&e, Code::AlreadyExists, Some("ALREADY_EXISTS"));

    // SMS consent needs a phone.
    let mut req = patient_request("sms@example.org", PASSWORD);
    req.sms_opt_in = true;
    let e = c.register_patient(req).await.unwrap_err();
    assert_eq!(
        assert_status(&e, Code::InvalidArgument, Some("INVALID_FIELD")),
        ["sms_opt_in"]
    );

    // A workload that is not on the policy list.
    let mut billing = app.public("billing").await;
    let e = billing
        .register_patient(patient_request("b@example.org", PASSWORD))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("WORKLOAD_NOT_ALLOWED"));

    assert_eq!(app.count("users").await, 2);
    app.shutdown().await;
}

#[tokio::test]
async fn register_patient_is_idempotent() {
    let app = common::spawn().await;
    let mut c = app.public("gateway").await;
    let key = "register-0001-abcdef";
    let first = c
        .register_patient(app.with_key(patient_request("idem@example.org", PASSWORD), key))
        .await
        .unwrap()
        .into_inner();
    let second = c
        .register_patient(app.with_key(patient_request("idem@example.org", PASSWORD), key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.user_id, second.user_id);
    assert_eq!(app.count("users").await, 1);
    // One code only: the replay sent nothing.
    assert_eq!(app.count("verification_codes").await, 1);
    assert_eq!(app.sandbox().sent().len(), 1);

    let e = c
        .register_patient(app.with_key(patient_request("other@example.org", PASSWORD), key))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, Some("IDEMPOTENCY_KEY_REUSED"));
    assert_eq!(app.count("users").await, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn verification_codes_are_single_use_and_limited() {
    let app = common::spawn().await;
    let mut c = app.public("gateway").await;
    let user = app.register_patient("v@example.org", PASSWORD).await;
    let token = app.token_for(&app.account(&user.user_id).await).await;
    let code = app.last_email_code(&user.user_id).unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let verify = |code: &str| {
        app.with_token(
            VerifyContactRequest {
                channel: ContactChannel::Email as i32,
                code: code.to_owned(),
            },
            &token,
        )
    };

    let e = c.verify_contact(verify(wrong)).await.unwrap_err();
    assert_eq!(
        assert_status(&e, Code::InvalidArgument, Some("CODE_INVALID")),
        ["code"]
    );
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM verification_codes")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(attempts, 1, "a wrong attempt is counted");
    let u = c.verify_contact(verify(&code)).await.unwrap().into_inner();
    assert!(u.email_verified);
    // Used once; not again.
    let e = c.verify_contact(verify(&code)).await.unwrap_err();
    assert_status(&e, Code::InvalidArgument, Some("CODE_INVALID"));

    // A fresh code dies after five wrong attempts.
    let sent = c
        .send_verification_code(app.with_token(
            SendVerificationCodeRequest {
                channel: ContactChannel::Email as i32,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let expire = sent.expire_time.unwrap().seconds - chrono::Utc::now().timestamp();
    assert!((590..=600).contains(&expire), "expires in {expire}s");
    let code = app.last_email_code(&user.user_id).unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        c.verify_contact(verify(wrong)).await.unwrap_err();
    }
    let e = c.verify_contact(verify(&code)).await.unwrap_err();
    assert_status(&e, Code::InvalidArgument, Some("CODE_INVALID"));

    // An expired code fails.
    c.send_verification_code(app.with_token(
        SendVerificationCodeRequest {
            channel: ContactChannel::Email as i32,
        },
        &token,
    ))
    .await
    .unwrap();
    let code = app.last_email_code(&user.user_id).unwrap();
    sqlx::query("UPDATE verification_codes SET expires_at = now() - interval '1 second'")
        .execute(app.pool())
        .await
        .unwrap();
    let e = c.verify_contact(verify(&code)).await.unwrap_err();
    assert_status(&e, Code::InvalidArgument, Some("CODE_INVALID"));

    // No phone on file: nothing to send to.
    let e = c
        .send_verification_code(app.with_token(
            SendVerificationCodeRequest {
                channel: ContactChannel::Phone as i32,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    app.shutdown().await;
}

#[tokio::test]
async fn profile_read_and_update() {
    let app = common::spawn().await;
    let mut c = app.public("gateway").await;
    let user = app.register_patient("p@example.org", PASSWORD).await;
    let token = app.token_for(&app.account(&user.user_id).await).await;
    let code = app.last_email_code(&user.user_id).unwrap();
    c.verify_contact(app.with_token(
        VerifyContactRequest {
            channel: ContactChannel::Email as i32,
            code,
        },
        &token,
    ))
    .await
    .unwrap();

    let me = c
        .get_profile(app.with_token(GetProfileRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.user_id, user.user_id);
    assert!(me.email_verified);

    let update = UpdateProfileRequest {
        user: Some(User {
            given_name: "Anna".into(),
            family_name: "ignored".into(),
            email: "New@Example.org".into(),
            phone: "+4930123456".into(),
            time_zone: "Europe/Berlin".into(),
            ..User::default()
        }),
        update_mask: mask(&["given_name", "email", "phone", "time_zone"]),
    };
    let u = c
        .update_profile(app.with_token(update, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.given_name, "Anna");
    assert_eq!(u.family_name, "Example");
    assert_eq!(u.email, "new@example.org");
    assert_eq!(u.phone, "+4930123456");
    assert_eq!(u.time_zone, "Europe/Berlin");
    assert!(!u.email_verified && !u.phone_verified);
    let sent = app.sandbox().sent();
    let last_two: Vec<_> = sent
        .iter()
        .rev()
        .take(2)
        .map(|n| n.destination.clone())
        .collect();
    assert!(last_two.contains(&"new@example.org".to_owned()));
    assert!(last_two.contains(&"+4930123456".to_owned()));
    // The new email verifies with its new code.
    let code = app.last_email_code(&user.user_id).unwrap();
    let u = c
        .verify_contact(app.with_token(
            VerifyContactRequest {
                channel: ContactChannel::Email as i32,
                code,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(u.email_verified);

    // Unknown mask path.
    let e = c
        .update_profile(app.with_token(
            UpdateProfileRequest {
                user: Some(User::default()),
                update_mask: mask(&["roles"]),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        assert_status(&e, Code::InvalidArgument, None),
        ["update_mask"]
    );

    // Taking someone else's email.
    app.register_patient("taken@example.org", PASSWORD).await;
    let e = c
        .update_profile(app.with_token(
            UpdateProfileRequest {
                user: Some(User {
                    email: "taken@example.org".into(),
                    ..User::default()
                }),
                update_mask: mask(&["email"]),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::AlreadyExists, Some("ALREADY_EXISTS"));
    app.shutdown().await;
}

#[tokio::test]
async fn get_user_and_lookup() {
    let app = common::spawn().await;
    let mut c = app.public("gateway").await;
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let bob = app.register_patient("bob@example.org", PASSWORD).await;
    let ann_token = app.token_for(&app.account(&ann.user_id).await).await;
    let staff = app
        .create_user_with_role("staff@carehub.test", PRole::Staff, PASSWORD)
        .await;
    let staff_token = app.token_for(&staff).await;

    let me = c
        .get_user(app.with_token(
            GetUserRequest {
                user_id: ann.user_id.clone(),
            },
            &ann_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.email, "ann@example.org");
    let e = c
        .get_user(app.with_token(
            GetUserRequest {
                user_id: bob.user_id.clone(),
            },
            &ann_token,
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("ROLE_NOT_ALLOWED"));
    let other = c
        .get_user(app.with_token(
            GetUserRequest {
                user_id: bob.user_id.clone(),
            },
            &staff_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.user_id, bob.user_id);
    let e = c
        .get_user(app.with_token(
            GetUserRequest {
                user_id: uuid::Uuid::now_v7().to_string(),
            },
            &staff_token,
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::NotFound, Some("RESOURCE_NOT_FOUND"));

    // Internal lookup, for named services only.
    let mut internal = app.internal("scheduling").await;
    let s = internal
        .lookup_user(LookupUserRequest {
            user_id: ann.user_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.display_name, "Ann Example");
    assert_eq!(s.roles, vec![Role::Patient as i32]);
    assert_eq!(s.status, AccountStatus::Active as i32);
    assert_eq!(s.time_zone, "America/New_York");
    let e = internal
        .lookup_user(LookupUserRequest {
            user_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_status(&e, Code::NotFound, None);
    let e = app
        .internal("gateway")
        .await
        .lookup_user(LookupUserRequest {
            user_id: ann.user_id.clone(),
        })
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("WORKLOAD_NOT_ALLOWED"));
    app.shutdown().await;
}

#[tokio::test]
async fn admin_creates_users() {
    let app = common::spawn().await;
    let mut c = app.public("gateway").await;
    let admin = app.create_admin().await;
    let admin_token = app.token_for(&admin).await;
    let req = CreateUserRequest {
        email: "Doc@Clinic.example".into(),
        role: Role::Provider as i32,
        given_name: "Dana".into(),
        family_name: "Doctor".into(),
        phone: String::new(),
        time_zone: "America/Chicago".into(),
        date_of_birth: None,
    };
    let resp = c
        .create_user(common::with_key(
            app.with_token(req.clone(), &admin_token),
            "create-doc-0001",
        ))
        .await
        .unwrap()
        .into_inner();
    let user = resp.user.unwrap();
    assert_eq!(user.roles, vec![Role::Provider as i32]);
    assert_eq!(user.email, "doc@clinic.example");
    assert!(user.password_change_required);
    assert!(resp.one_time_password.len() >= 16);
    let account = app.account(&user.user_id).await;
    assert!(account.password_change_required);
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(account.id)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert!(app
        .state()
        .hasher
        .verify(&resp.one_time_password, Some(&hash)));
    // The stored idempotent answer does not keep the one-time password.
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT response FROM carehub_platform.idempotency_keys")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert!(!stored
        .windows(resp.one_time_password.len())
        .any(|w| w == resp.one_time_password.as_bytes()));
    // Same key again: same user, no second row.
    let mut r = tonic::Request::new(req.clone());
    r = common::with_key(common::with_token(r, &admin_token), "create-doc-0001");
    let again = c.create_user(r).await.unwrap().into_inner();
    assert_eq!(again.user.unwrap().user_id, user.user_id);
    assert_eq!(app.count("users").await, 2);

    // A patient may not create users.
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let ann_token = app.token_for(&app.account(&ann.user_id).await).await;
    let e = c
        .create_user(app.with_token(
            CreateUserRequest {
                email: "x@example.org".into(),
                ..req.clone()
            },
            &ann_token,
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, Some("ROLE_NOT_ALLOWED"));
    // Duplicate email.
    let e = c
        .create_user(app.with_token(req.clone(), &admin_token))
        .await
        .unwrap_err();
    assert_status(&e, Code::AlreadyExists, None);
    // A patient account needs a date of birth.
    let e = c
        .create_user(app.with_token(
            CreateUserRequest {
                email: "pat@example.org".into(),
                role: Role::Patient as i32,
                ..req.clone()
            },
            &admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        assert_status(&e, Code::InvalidArgument, None),
        ["date_of_birth"]
    );
    app.shutdown().await;
}

#[tokio::test]
async fn suspension_reactivation_termination() {
    let app = common::spawn().await;
    let mut c = app.public("gateway").await;
    let admin = app.create_admin().await;
    let admin_token = app.token_for(&admin).await;
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let account = app.account(&ann.user_id).await;
    let ann_token = app.token_for(&account).await;
    let _second = app.token_for(&account).await;
    c.get_profile(app.with_token(GetProfileRequest {}, &ann_token))
        .await
        .unwrap();

    let reason = || "terms violation".to_owned();
    // Reactivating an active user is a state conflict.
    let e = c
        .reactivate_user(app.with_token(
            ReactivateUserRequest {
                user_id: ann.user_id.clone(),
                reason: reason(),
            },
            &admin_token,
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    // An admin cannot suspend themself.
    let e = c
        .suspend_user(app.with_token(
            SuspendUserRequest {
                user_id: admin.id.to_string(),
                reason: reason(),
            },
            &admin_token,
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::FailedPrecondition, None);
    // A patient cannot suspend anyone.
    let e = c
        .suspend_user(app.with_token(
            SuspendUserRequest {
                user_id: admin.id.to_string(),
                reason: reason(),
            },
            &ann_token,
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::PermissionDenied, None);

    let u = c
        .suspend_user(app.with_token(
            SuspendUserRequest {
                user_id: ann.user_id.clone(),
                reason: reason(),
            },
            &admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.status, AccountStatus::Suspended as i32);
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(account.id)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(live, 0, "every session of the suspended user is revoked");
    let published: i64 = sqlx::query_scalar("SELECT count(*) FROM revocations WHERE user_id = $1")
        .bind(account.id)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(published, 1);
    let (why, by): (Vec<u8>, uuid::Uuid) =
        sqlx::query_as("SELECT status_reason, status_changed_by FROM users WHERE id = $1")
            .bind(account.id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    // Stored sealed under the user's data key (free text can name the person or their health).
    let why = carehub_identity::store::sealed::open(
        &app.state().crypto,
        "users",
        "status_reason",
        account.id,
        account.id,
        &why,
    )
    .await
    .unwrap();
    assert_eq!((why.as_str(), by), ("terms violation", admin.id));
    // The suspended user's token no longer works.
    let e = c
        .get_profile(app.with_token(GetProfileRequest {}, &ann_token))
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated),
        "{e:?}"
    );
    // Suspending again: conflict.
    let e = c
        .suspend_user(app.with_token(
            SuspendUserRequest {
                user_id: ann.user_id.clone(),
                reason: reason(),
            },
            &admin_token,
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::FailedPrecondition, Some("STATE_CONFLICT"));

    let u = c
        .reactivate_user(app.with_token(
            ReactivateUserRequest {
                user_id: ann.user_id.clone(),
                reason: "appeal granted".into(),
            },
            &admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.status, AccountStatus::Active as i32);
    let fresh = app.token_for(&app.account(&ann.user_id).await).await;
    c.get_profile(app.with_token(GetProfileRequest {}, &fresh))
        .await
        .unwrap();

    let u = c
        .terminate_user(app.with_token(
            TerminateUserRequest {
                user_id: ann.user_id.clone(),
                reason: reason(),
            },
            &admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.status, AccountStatus::Terminated as i32);
    for action in 0..3 {
        let e = match action {
            0 => c
                .reactivate_user(app.with_token(
                    ReactivateUserRequest {
                        user_id: ann.user_id.clone(),
                        reason: reason(),
                    },
                    &admin_token,
                ))
                .await
                .unwrap_err(),
            1 => c
                .suspend_user(app.with_token(
                    SuspendUserRequest {
                        user_id: ann.user_id.clone(),
                        reason: reason(),
                    },
                    &admin_token,
                ))
                .await
                .unwrap_err(),
            _ => c
                .terminate_user(app.with_token(
                    TerminateUserRequest {
                        user_id: ann.user_id.clone(),
                        reason: reason(),
                    },
                    &admin_token,
                ))
                .await
                .unwrap_err(),
        };
        assert_status(&e, Code::FailedPrecondition, Some("STATE_CONFLICT"));
    }
    // Unknown user.
    let e = c
        .suspend_user(app.with_token(
            SuspendUserRequest {
                user_id: uuid::Uuid::now_v7().to_string(),
                reason: reason(),
            },
            &admin_token,
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::NotFound, None);
    app.shutdown().await;
}

#[tokio::test]
async fn consents_and_preferences() {
    let app = common::spawn().await;
    let mut c = app.public("gateway").await;
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let token = app.token_for(&app.account(&ann.user_id).await).await;
    let events_before = app.count("consent_events").await;

    let consents = c
        .update_consents(app.with_token(
            UpdateConsentsRequest {
                accept_terms_version: "2026-01".into(),
                accept_privacy_version: String::new(),
                marketing_opt_in: Some(true),
                sms_opt_in: None,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(consents.accepted_terms_version, "2026-01");
    assert_eq!(consents.accepted_privacy_version, "2025-01");
    assert!(consents.marketing_opt_in && !consents.sms_opt_in);
    assert_eq!(app.count("consent_events").await, events_before + 2);
    let got = c
        .get_consents(app.with_token(GetConsentsRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, consents);
    // SMS consent needs a phone on the account.
    let e = c
        .update_consents(app.with_token(
            UpdateConsentsRequest {
                sms_opt_in: Some(true),
                ..UpdateConsentsRequest::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_status(&e, Code::FailedPrecondition, None);
    assert_eq!(app.count("consent_events").await, events_before + 2);

    let prefs = c
        .update_communication_preferences(app.with_token(
            UpdateCommunicationPreferencesRequest {
                preferences: Some(CommunicationPreferences {
                    push_notifications: false,
                    language: "es-MX".into(),
                    quiet_hours_start: 22,
                    quiet_hours_end: 7,
                    email_notifications: false,
                    ..CommunicationPreferences::default()
                }),
                update_mask: mask(&[
                    "push_notifications",
                    "language",
                    "quiet_hours_start",
                    "quiet_hours_end",
                ]),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!prefs.push_notifications);
    assert!(prefs.email_notifications, "not in the mask: unchanged");
    assert_eq!(prefs.language, "es-MX");
    assert_eq!((prefs.quiet_hours_start, prefs.quiet_hours_end), (22, 7));
    let got = c
        .get_communication_preferences(
            app.with_token(GetCommunicationPreferencesRequest {}, &token),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, prefs);
    app.shutdown().await;
}

#[tokio::test]
async fn suspension_ends_logged_in_sessions() {
    let app = common::spawn().await;
    let mut c = app.public("gateway").await;
    let (_, admin_token) = app.admin_token().await;
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let t1 = app.login("ann@example.org", PASSWORD).await;
    let t2 = app.login("ann@example.org", PASSWORD).await;
    for t in [&t1, &t2] {
        c.get_profile(app.with_token(GetProfileRequest {}, &t.access_token))
            .await
            .unwrap();
    }
    c.suspend_user(app.with_token(
        SuspendUserRequest {
            user_id: ann.user_id.clone(),
            reason: "fraud investigation".into(),
        },
        &admin_token,
    ))
    .await
    .unwrap();
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sessions WHERE user_id = $1::uuid AND revoked_at IS NULL",
    )
    .bind(&ann.user_id)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(live, 0);
    for t in [&t1, &t2] {
        let e = c
            .get_profile(app.with_token(GetProfileRequest {}, &t.access_token))
            .await
            .unwrap_err();
        assert!(
            matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated),
            "{e:?}"
        );
    }
    // A suspended account cannot log in.
    let e = c
        .login(LoginRequest {
            email: "ann@example.org".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated),
        "{e:?}"
    );
    c.reactivate_user(app.with_token(
        ReactivateUserRequest {
            user_id: ann.user_id.clone(),
            reason: "cleared".into(),
        },
        &admin_token,
    ))
    .await
    .unwrap();
    let t3 = app.login("ann@example.org", PASSWORD).await;
    c.get_profile(app.with_token(GetProfileRequest {}, &t3.access_token))
        .await
        .unwrap();

    // An admin-created account logs in with its one-time password and must change it.
    let created = c
        .create_user(app.with_token(
            CreateUserRequest {
                email: "staff@example.org".into(),
                role: Role::Staff as i32,
                given_name: "Sam".into(),
                family_name: "Staff".into(),
                ..CreateUserRequest::default()
            },
            &admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let t = app
        .login("staff@example.org", &created.one_time_password)
        .await;
    assert!(t.password_change_required);
    app.shutdown().await;
}
