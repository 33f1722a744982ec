#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Identity's gRPC port speaks mTLS only: a client without a certificate, with a certificate
//! from another CA, or in plaintext never reaches a handler (and writes nothing).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use carehub_platform::client;
use carehub_platform::devcerts::DevPki;
use carehub_platform::tls::{self, TlsStore};
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use common::*;

async fn register_over(channel: tonic::transport::Channel, email: &str) -> Result<(), String> {
    IdentityServiceClient::new(channel)
        .register_patient(patient_request(email, "correct horse battery staple"))
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

async fn try_with_config(
    app: &TestApp,
    config: Arc<rustls::ClientConfig>,
    email: &str,
) -> Result<(), String> {
    let channel = client::connect_with_client_config(
        &format!("https://{}", app.grpc_addr),
        config,
        "identity",
    )
    .await
    .map_err(|e| format!("{e:#}"))?;
    register_over(channel.into_inner(), email).await
}

#[tokio::test]
async fn only_clients_with_a_certificate_from_our_ca_get_through() {
    let app = spawn().await;

    // Positive control: the gateway's certificate from our CA works.
    register_over(app.channel("gateway").await, "ok@example.com")
        .await
        .unwrap();

    // No client certificate.
    let mut roots = rustls::RootCertStore::empty();
    for ca in tls::parse_certs(app.pki().ca_pem.as_bytes()).unwrap() {
        roots.add(ca).unwrap();
    }
    let mut no_cert = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    no_cert.alpn_protocols = vec![b"h2".to_vec()];
    assert!(
        try_with_config(&app, Arc::new(no_cert), "nocert@example.com")
            .await
            .is_err()
    );

    // A "gateway" certificate issued by another CA.
    let rogue = DevPki::new(TRUST_DOMAIN).unwrap().issue("gateway").unwrap();
    let rogue_store = TlsStore::from_pem(
        &rogue.cert_pem,
        &rogue.key_pem,
        &app.pki().ca_pem,
        TRUST_DOMAIN,
    )
    .unwrap();
    assert!(try_with_config(
        &app,
        rogue_store.client_config().unwrap(),
        "rogue@example.com"
    )
    .await
    .is_err());

    // Plaintext HTTP/2.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5));
    let plain_result = match plain.connect().await {
        Err(e) => Err(e.to_string()),
        Ok(channel) => register_over(channel, "plain@example.com").await,
    };
    assert!(plain_result.is_err());

    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(users, 1, "only the positive control registered");
    app.shutdown().await;
}

/// Identity's admin RPCs: only an admin may call them (through the gateway or the operator
/// CLI). Kept by hand on purpose: opening one of them to another role in `policy.rs` must fail
/// this test, not silently shrink a list derived from the policy.
const ADMIN_RPCS: [&str; 4] = [
    "CreateUser",
    "SuspendUser",
    "ReactivateUser",
    "TerminateUser",
];
/// Internal RPCs that only named carehub services may call (never the gateway, whoever the
/// user behind it is).
const SERVICE_ONLY_RPCS: [&str; 2] = ["ListRevocations", "LookupUser"];

/// Calls an admin RPC with a well-formed request about `target`, as the holder of `token`.
async fn call_admin_rpc(
    app: &TestApp,
    rpc: &str,
    token: &str,
    target: &str,
    n: usize,
) -> Result<(), tonic::Status> {
    use carehub_proto::identity::v1::*;
    let mut c = app.public("gateway").await;
    let reason = "policy matrix".to_owned();
    let user_id = target.to_owned();
    let key = format!("matrix-key-{n:04}");
    match rpc {
        "CreateUser" => c
            .create_user(with_key(
                app.with_token(
                    CreateUserRequest {
                        email: format!("created-{n}@example.org"),
                        role: Role::Staff as i32,
                        given_name: "Sam".into(),
                        family_name: "Staff".into(),
                        ..CreateUserRequest::default()
                    },
                    token,
                ),
                &key,
            ))
            .await
            .map(drop),
        "SuspendUser" => c
            .suspend_user(with_key(
                app.with_token(SuspendUserRequest { user_id, reason }, token),
                &key,
            ))
            .await
            .map(drop),
        "ReactivateUser" => c
            .reactivate_user(with_key(
                app.with_token(ReactivateUserRequest { user_id, reason }, token),
                &key,
            ))
            .await
            .map(drop),
        "TerminateUser" => c
            .terminate_user(with_key(
                app.with_token(TerminateUserRequest { user_id, reason }, token),
                &key,
            ))
            .await
            .map(drop),
        other => panic!("no call for {other}"),
    }
}

#[tokio::test]
async fn admin_and_internal_rpcs_refuse_every_other_role() {
    use carehub_platform::auth::{Role, UserRule};
    use carehub_proto::identity::v1::{ListRevocationsRequest, LookupUserRequest};

    // The table covers every admin-only rule of the policy (a new admin RPC must join it).
    let policy = carehub_identity::api::policy::policy();
    let mut admin_only: Vec<String> = policy
        .paths()
        .filter(|p| {
            matches!(&policy.get(p).unwrap().user,
                UserRule::Authenticated { roles, .. } if roles.contains(&Role::Admin))
        })
        .map(str::to_owned)
        .collect();
    admin_only.sort();
    let mut expected: Vec<String> = ADMIN_RPCS
        .iter()
        .map(|m| format!("/carehub.identity.v1.IdentityService/{m}"))
        .collect();
    expected.sort();
    assert_eq!(
        admin_only, expected,
        "admin RPCs in policy.rs vs this table"
    );

    let app = spawn().await;
    let admin = app.create_admin().await;
    let admin_token = app.token_for(&admin).await;
    let target = app.register_patient("target@example.org", PASSWORD).await;
    let mut tokens = Vec::new();
    for role in [Role::Staff, Role::Provider, Role::Billing, Role::Patient] {
        let account = app
            .create_user_with_role(&format!("{role}@example.org"), role, PASSWORD)
            .await;
        tokens.push((role, app.token_for(&account).await));
    }
    let users_before = app.count("users").await;

    let mut n = 0;
    for rpc in ADMIN_RPCS {
        for (role, token) in &tokens {
            n += 1;
            let e = call_admin_rpc(&app, rpc, token, &target.user_id, n)
                .await
                .expect_err(&format!("{role} called {rpc}"));
            assert_eq!(
                e.code(),
                tonic::Code::PermissionDenied,
                "{role} {rpc}: {e:?}"
            );
            assert_eq!(
                carehub_platform::errors::details_of(&e).reason.as_deref(),
                Some("ROLE_NOT_ALLOWED"),
                "{role} {rpc}: {e:?}"
            );
        }
    }
    // Nothing happened to the target, and nobody was created.
    assert_eq!(app.count("users").await, users_before);
    let status: String = sqlx::query_scalar("SELECT status FROM users WHERE id = $1::uuid")
        .bind(&target.user_id)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(status, "active");

    // Service-only internal RPCs refuse the gateway whoever the user is (admin included), and
    // answer a named service.
    tokens.push((Role::Admin, admin_token.clone()));
    for rpc in SERVICE_ONLY_RPCS {
        for (role, token) in &tokens {
            let mut c = app.internal("gateway").await;
            let e = match rpc {
                "ListRevocations" => c
                    .list_revocations(app.with_token(ListRevocationsRequest { since: None }, token))
                    .await
                    .map(drop),
                _ => c
                    .lookup_user(app.with_token(
                        LookupUserRequest {
                            user_id: target.user_id.clone(),
                        },
                        token,
                    ))
                    .await
                    .map(drop),
            }
            .expect_err(&format!("the gateway with a {role} token called {rpc}"));
            assert_eq!(
                e.code(),
                tonic::Code::PermissionDenied,
                "{role} {rpc}: {e:?}"
            );
            assert_eq!(
                carehub_platform::errors::details_of(&e).reason.as_deref(),
                Some("WORKLOAD_NOT_ALLOWED"),
                "{role} {rpc}: {e:?}"
            );
        }
    }
    let mut records = app.internal("records").await;
    records
        .list_revocations(ListRevocationsRequest { since: None })
        .await
        .unwrap();
    records
        .lookup_user(LookupUserRequest {
            user_id: target.user_id.clone(),
        })
        .await
        .unwrap();

    // Positive control: the same requests succeed for an admin (so the refusals above are the
    // policy's, not a malformed request's).
    for rpc in [
        "CreateUser",
        "SuspendUser",
        "ReactivateUser",
        "TerminateUser",
    ] {
        n += 1;
        call_admin_rpc(&app, rpc, &admin_token, &target.user_id, n)
            .await
            .unwrap_or_else(|e| panic!("admin {rpc}: {e:?}"));
    }
    app.shutdown().await;
}
