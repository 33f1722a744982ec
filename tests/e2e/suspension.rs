//! A patient suspended in identity is refused by every service within 60 s: identity at once
//! (it reads the account), the four others once their revocation poll has fetched identity's
//! feed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use carehub_e2e::flows::as_user;
use carehub_e2e::Suite;
use carehub_platform::auth::Role;
use carehub_proto::identity::v1::identity_service_client::IdentityServiceClient;
use carehub_proto::identity::v1::SuspendUserRequest;
use carehub_testkit::grpc::reason;
use tonic::{Code, Status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_patient_is_refused_by_every_service_within_60_s() {
    if !carehub_testkit::process::in_own_process(
        "suspension::suspended_patient_is_refused_by_every_service_within_60_s",
    ) {
        return;
    }
    let suite = Suite::start().await;
    let admin = suite.user(Role::Admin, "admin").await;
    let patient = suite.user(Role::Patient, "pat").await;
    for service in carehub_e2e::suite::SERVICES {
        if let Err(status) = suite.read_own(service, &patient).await {
            panic!("{service} refuses the active patient: {status:?}");
        }
    }

    IdentityServiceClient::new(suite.identity.channel("gateway").await)
        .suspend_user(as_user(
            &admin,
            SuspendUserRequest {
                user_id: patient.id.clone(),
                reason: "end-to-end test".into(),
            },
        ))
        .await
        .expect("SuspendUser");
    let suspended = Instant::now();

    // Identity reads the account on every call: refused at once.
    let status = suite
        .read_own("identity", &patient)
        .await
        .expect_err("identity still serves the suspended patient");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        reason(&status).as_deref(),
        Some("ACCOUNT_DISABLED"),
        "{status:?}"
    );

    // The others learn it from identity's revocation feed.
    let mut refused: BTreeMap<&str, (Duration, Status)> = BTreeMap::new();
    let others = ["records", "messaging", "scheduling", "billing"];
    while refused.len() < others.len() && suspended.elapsed() < Duration::from_secs(65) {
        for service in others {
            if refused.contains_key(service) {
                continue;
            }
            if let Err(status) = suite.read_own(service, &patient).await {
                refused.insert(service, (suspended.elapsed(), status));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for service in others {
        let (after, status) = refused
            .get(service)
            .unwrap_or_else(|| panic!("{service} still serves the suspended patient after 65 s"));
        eprintln!("{service} refused the suspended patient after {after:?}");
        assert!(
            *after <= Duration::from_secs(60),
            "{service} refused the suspended patient only after {after:?}"
        );
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{service}: {status:?}"
        );
        assert_eq!(
            reason(status).as_deref(),
            Some("UNAUTHENTICATED_TOKEN"),
            "{service}: {status:?}"
        );
    }
    // A refusal is not a blip: every service still refuses.
    for service in carehub_e2e::suite::SERVICES {
        assert!(
            suite.read_own(service, &patient).await.is_err(),
            "{service} serves the suspended patient again"
        );
    }
    suite.shutdown().await;
}
