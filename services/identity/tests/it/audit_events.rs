#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Identity's security events land in its audit trail (real Postgres, real mTLS): logins
//! (success, failure, unknown account, lockout), MFA enrollment, password change, logout,
//! suspension, consent changes; a refused change records nothing; the chain verifies; the
//! AuditLog is mounted and callable by `records` only.

use crate::common;

use carehub_platform::audit::{self, VerifyRange};
use carehub_proto::audit::v1::audit_log_client::AuditLogClient;
use carehub_proto::audit::v1::{list_events_request::Filter, ListEventsRequest};
use carehub_proto::identity::v1::*;
use common::{PASSWORD, *};
use tonic::Code;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
struct Row {
    kind: String,
    outcome: String,
    outcome_reason: Option<String>,
    entity_type: String,
    actor_user_id: Option<Uuid>,
    subject_id: Option<Uuid>,
    purpose: String,
}

/// The chain's events, once everything queued is sealed.
async fn events(app: &TestApp) -> Vec<Row> {
    carehub_platform::audit::seal_all(app.pool()).await.unwrap();
    sqlx::query_as(
        "SELECT kind, outcome, outcome_reason, entity_type, actor_user_id, subject_id, purpose
         FROM carehub_platform.audit_events ORDER BY seq",
    )
    .fetch_all(app.pool())
    .await
    .unwrap()
}

async fn kinds_since(app: &TestApp, before: usize) -> Vec<(String, String)> {
    events(app)
        .await
        .into_iter()
        .skip(before)
        .map(|r| (r.kind, r.outcome))
        .collect()
}

fn pair(kind: &str, outcome: &str) -> (String, String) {
    (kind.to_owned(), outcome.to_owned())
}

#[tokio::test]
async fn security_events_are_recorded_with_the_change_and_the_chain_verifies() {
    let app = common::spawn_with(|cfg| cfg.identity.lockout_free_attempts = 2).await;
    let mut c = app.public("gateway").await;
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let ann_id = Uuid::parse_str(&ann.user_id).unwrap();
    let registered = events(&app).await;
    assert_eq!(registered.len(), 1);
    assert_eq!(
        (registered[0].kind.as_str(), registered[0].subject_id),
        ("identity.account.register", Some(ann_id))
    );

    // Wrong password: a failed login naming the account; an unknown email names none.
    let n = events(&app).await.len();
    let wrong = LoginRequest {
        email: "ann@example.org".into(),
        password: "not the password at all".into(),
    };
    let e = c.login(wrong.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    c.login(LoginRequest {
        email: "nobody@example.org".into(),
        password: "whatever whatever".into(),
    })
    .await
    .unwrap_err();
    let rows = events(&app).await;
    let failed = &rows[n];
    assert_eq!(
        (
            failed.kind.as_str(),
            failed.outcome.as_str(),
            failed.outcome_reason.as_deref()
        ),
        (
            "identity.login",
            "minor_failure",
            Some("INVALID_CREDENTIALS")
        )
    );
    assert_eq!(
        (failed.actor_user_id, failed.subject_id),
        (Some(ann_id), Some(ann_id))
    );
    assert_eq!(failed.purpose, "security");
    assert_eq!(
        (rows[n + 1].subject_id, rows[n + 1].actor_user_id),
        (None, None)
    );

    // Successful login: one event on the new session.
    let n = events(&app).await.len();
    let tokens = app.login("ann@example.org", PASSWORD).await;
    let rows = events(&app).await;
    assert_eq!(rows.len(), n + 1);
    assert_eq!(
        (
            rows[n].kind.as_str(),
            rows[n].outcome.as_str(),
            rows[n].entity_type.as_str()
        ),
        ("identity.login", "success", "session")
    );

    // A refused password change records nothing; an accepted one exactly one event.
    let n = events(&app).await.len();
    let e = c
        .change_password(app.with_token(
            ChangePasswordRequest {
                current_password: "not the password at all".into(),
                new_password: "a brand new passphrase here".into(),
            },
            &tokens.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(
        events(&app).await.len(),
        n,
        "a failed change leaves no event"
    );
    c.change_password(app.with_token(
        ChangePasswordRequest {
            current_password: PASSWORD.into(),
            new_password: "a brand new passphrase here".into(),
        },
        &tokens.access_token,
    ))
    .await
    .unwrap();
    assert_eq!(
        kinds_since(&app, n).await,
        vec![pair("identity.password.change", "success")]
    );

    // MFA enrollment, consents, logout.
    let n = events(&app).await.len();
    let tokens = app
        .login("ann@example.org", "a brand new passphrase here")
        .await;
    c.enroll_totp(app.with_token(EnrollTotpRequest {}, &tokens.access_token))
        .await
        .unwrap();
    c.update_consents(app.with_token(
        UpdateConsentsRequest {
            accept_terms_version: "2026-01".into(),
            accept_privacy_version: String::new(),
            marketing_opt_in: Some(true),
            sms_opt_in: None,
        },
        &tokens.access_token,
    ))
    .await
    .unwrap();
    c.logout(app.with_token(LogoutRequest {}, &tokens.access_token))
        .await
        .unwrap();
    assert_eq!(
        kinds_since(&app, n).await,
        vec![
            pair("identity.login", "success"),
            pair("identity.mfa.enroll", "success"),
            pair("identity.consent.update", "success"),
            pair("identity.session.logout", "success"),
        ]
    );

    // Suspension by an admin: the admin acts, ann is the subject.
    let admin = app.create_admin().await;
    let admin_token = app.token_for(&admin).await;
    let n = events(&app).await.len();
    c.suspend_user(app.with_token(
        SuspendUserRequest {
            user_id: ann.user_id.clone(),
            reason: "terms violation".into(),
        },
        &admin_token,
    ))
    .await
    .unwrap();
    let rows = events(&app).await;
    assert_eq!(rows.len(), n + 1);
    assert_eq!(rows[n].kind, "identity.account.suspend");
    assert_eq!(
        (rows[n].actor_user_id, rows[n].subject_id),
        (Some(admin.id), Some(ann_id))
    );

    // Repeated failures lock the account: one lockout event.
    app.register_patient("bob@example.org", PASSWORD).await;
    let bob = LoginRequest {
        email: "bob@example.org".into(),
        password: "not the password at all".into(),
    };
    for _ in 0..4 {
        let _ = c.login(bob.clone()).await;
    }
    let lockouts: Vec<_> = events(&app)
        .await
        .into_iter()
        .filter(|r| r.kind == "identity.login.lockout")
        .collect();
    assert_eq!(lockouts.len(), 1, "{lockouts:?}");
    assert_eq!(
        lockouts[0].outcome_reason.as_deref(),
        Some("ACCOUNT_LOCKED")
    );

    let state = app.state();
    let report = audit::verify(
        app.pool(),
        state.key_source.as_ref(),
        "identity",
        &VerifyRange::default(),
    )
    .await
    .unwrap();
    assert!(report.is_intact(), "{report:?}");

    // Identity mounts the AuditLog: records reads ann's security history; the gateway may not.
    let list = ListEventsRequest {
        filter: Some(Filter::SubjectId(ann.user_id.clone())),
        ..ListEventsRequest::default()
    };
    let e = AuditLogClient::new(app.channel("gateway").await)
        .list_events(list.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let listed = AuditLogClient::new(app.channel("records").await)
        .list_events(list)
        .await
        .unwrap()
        .into_inner();
    assert!(listed
        .events
        .iter()
        .any(|e| e.kind == "identity.account.suspend"));
    assert!(listed.events.iter().all(|e| e.subject_id == ann.user_id));
    // By actor: what the admin did.
    let by_admin = AuditLogClient::new(app.channel("admin-cli").await)
        .list_events(ListEventsRequest {
            filter: Some(Filter::ActorUserId(admin.id.to_string())),
            ..ListEventsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<&str> = by_admin.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, vec!["identity.account.suspend"]);
    app.shutdown().await;
}

/// Creates, in the database `url` names, the login role the chart gives the pods (issue 9;
/// README "Database roles"): `<database>_svc`, a member of `<database>_app` only, owning
/// nothing. Returns the role and `url` with that user.
async fn create_serving_role(url: &str) -> (String, String) {
    use sqlx::{ConnectOptions, Connection};
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let database = options.get_database().expect("a database name").to_owned();
    let login = format!("{database}_svc");
    let group = carehub_platform::db::app_role(&database);
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(&format!(
        "CREATE ROLE \"{login}\" LOGIN IN ROLE \"{group}\""
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let as_login = options.username(&login).to_url_lossy().to_string();
    (login, as_login)
}

/// The SQLSTATE and message of a refused statement.
fn refusal(err: sqlx::Error) -> (String, String) {
    let db = err.as_database_error().expect("a database error");
    (
        db.code().map(|c| c.into_owned()).unwrap_or_default(),
        db.message().to_owned(),
    )
}

/// What the chart deploys: the migrations ran as the tables' owner (here the test's superuser),
/// and identity serves as a login role that is only a member of "<database>_app". Its normal
/// work (register, failed and successful logins, profile, logout, an admin's suspension) works
/// and is audited; that role cannot update, delete or truncate audit rows, nor disable or drop
/// the append-only trigger (only the owner could).
#[tokio::test(flavor = "multi_thread")]
async fn identity_serves_as_a_member_of_the_app_group_that_cannot_rewrite_the_audit_trail() {
    use secrecy::ExposeSecret;
    let mut login = String::new();
    let mut login_url = String::new();
    let app = common::spawn_with(|cfg| {
        let owner = cfg.server.database.url.clone().expect("the test database");
        let (role, url) = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(create_serving_role(owner.expose_secret()))
        });
        cfg.server.database.url = Some(url.clone().into());
        (login, login_url) = (role, url);
    })
    .await;
    // The service's own pool connects as that role, not as the owner.
    let sessions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = current_database()",
    )
    .bind(&login)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert!(sessions >= 1, "identity does not connect as {login}");
    let owned: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = $1)
              + (SELECT count(*) FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE r.rolname = $1)",
    )
    .bind(&login)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(owned, 0, "{login} must own nothing");

    // The service's normal work, as that role.
    let mut c = app.public("gateway").await;
    let ann = app.register_patient("ann@example.org", PASSWORD).await;
    let e = c
        .login(LoginRequest {
            email: "ann@example.org".into(),
            password: "not the password at all".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let tokens = app.login("ann@example.org", PASSWORD).await;
    c.get_profile(app.with_token(GetProfileRequest {}, &tokens.access_token))
        .await
        .unwrap();
    c.logout(app.with_token(LogoutRequest {}, &tokens.access_token))
        .await
        .unwrap();
    let admin = app.create_admin().await;
    let admin_token = app.token_for(&admin).await;
    c.suspend_user(app.with_token(
        SuspendUserRequest {
            user_id: ann.user_id.clone(),
            reason: "terms violation".into(),
        },
        &admin_token,
    ))
    .await
    .unwrap();
    let kinds: Vec<(String, String)> = events(&app)
        .await
        .into_iter()
        .map(|r| (r.kind, r.outcome))
        .collect();
    for want in [
        pair("identity.account.register", "success"),
        pair("identity.login", "minor_failure"),
        pair("identity.login", "success"),
        pair("identity.session.logout", "success"),
        pair("identity.account.suspend", "success"),
    ] {
        assert!(kinds.contains(&want), "{want:?} not audited: {kinds:?}");
    }

    // That role cannot rewrite the trail: no privilege, and not the owner who could switch the
    // trigger off.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&login_url)
        .await
        .unwrap();
    for (sql, want) in [
        (
            "UPDATE carehub_platform.audit_events SET kind = 'x.y'",
            "permission denied for table audit_events",
        ),
        (
            "DELETE FROM carehub_platform.audit_events",
            "permission denied for table audit_events",
        ),
        (
            "TRUNCATE carehub_platform.audit_events",
            "permission denied for table audit_events",
        ),
        (
            "DELETE FROM carehub_platform.audit_checkpoints",
            "permission denied for table audit_checkpoints",
        ),
        (
            "ALTER TABLE carehub_platform.audit_events DISABLE TRIGGER audit_events_append_only",
            "must be owner of table audit_events",
        ),
        (
            "DROP TRIGGER audit_events_append_only ON carehub_platform.audit_events",
            "must be owner of relation audit_events",
        ),
    ] {
        let (code, message) = refusal(sqlx::query(sql).execute(&pool).await.unwrap_err());
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains(want), "{sql}: {message}");
    }
    // The serving role seals too (queue delete, head update) ...
    carehub_platform::audit::seal_all(&pool).await.unwrap();
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM carehub_platform.audit_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(audited as usize, kinds.len());
    pool.close().await;

    app.shutdown().await;
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let admin_pool = sqlx::PgPool::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("DROP ROLE IF EXISTS \"{login}\""))
        .execute(&admin_pool)
        .await
        .unwrap();
    admin_pool.close().await;
}
