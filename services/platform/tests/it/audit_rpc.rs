#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `carehub.audit.v1.AuditLog` as every service mounts it (`ServiceHost::with_audit`), over real
//! mTLS against a real PostgreSQL: only `records` and `admin-cli` may call it, whatever the
//! service's own policy says; events carry the caller, the gateway-forwarded address and the
//! request id; listing pages; verification over the RPC finds tampering.

use crate::common;

use std::sync::Arc;

use carehub_platform::audit::checkpoint;
use carehub_platform::auth::{AuthLayer, Authorizer, Policy, TokenVerifier, UserCaller, UserRule};
use carehub_platform::client;
use carehub_platform::db::TestDatabase;
use carehub_platform::devcerts::DevPki;
use carehub_platform::keys::StaticKeys;
use carehub_platform::server::ServiceHost;
use carehub_platform::tls::TlsStore;
use carehub_proto::audit::v1::audit_log_client::AuditLogClient;
use carehub_proto::audit::v1::{
    list_events_request::Filter, ListEventsRequest, VerifyChainRequest,
};
use carehub_proto::common::v1::PageRequest;
use common::audited::{self, Audited};
use common::*;
use sqlx::migrate::Migrator;
use tonic::Code;
use tonic_types::StatusExt as _;
use uuid::Uuid;

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

struct NoTokens;

#[async_trait::async_trait]
impl TokenVerifier for NoTokens {
    async fn verify(&self, _token: &str) -> Result<UserCaller, tonic::Status> {
        Err(tonic::Status::unauthenticated("no tokens in this test"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_is_for_records_and_admin_cli_only_and_serves_the_trail() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    audited::create_table(&db.pool).await;
    let keys = Arc::new(StaticKeys::generate());
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(TRUST_DOMAIN).unwrap();
    let mut cfg = config_with_pki(dir.path(), &pki, "scheduling");
    // No background checkpoint during the test: the one at the end comes from the shutdown.
    cfg.audit.poll_interval_ms = 60_000;
    // The service's own policy knows nothing of AuditLog and lets only the gateway touch.
    let authorizer = Arc::new(Authorizer {
        policy: Policy::new().rule(
            "test.Audited",
            "Touch",
            &["gateway"],
            UserRule::WorkloadOnly,
        ),
        verifier: Arc::new(NoTokens),
        gateway_workloads: vec!["gateway".into()],
    });
    let running = ServiceHost::new("scheduling", &cfg)
        .add_service(Audited {
            pool: db.pool.clone(),
        })
        .with_auth(AuthLayer::new(authorizer))
        .with_audit(db.pool.clone(), keys.clone())
        .start(pending_forever())
        .await
        .unwrap();
    let connect = |workload: &'static str| {
        let pki = &pki;
        let addr = running.grpc_addr;
        async move {
            let id = pki.issue(workload).unwrap();
            let store =
                TlsStore::from_pem(&id.cert_pem, &id.key_pem, &pki.ca_pem, TRUST_DOMAIN).unwrap();
            client::connect(&format!("https://{addr}"), &store, "localhost")
                .await
                .unwrap()
        }
    };
    let gateway = connect("gateway").await;
    let records = connect("records").await;
    let admin_cli = connect("admin-cli").await;
    let billing = connect("billing").await;

    let patient = Uuid::now_v7();
    assert_eq!(audited::touch(gateway.clone(), patient).await.unwrap(), 1);
    assert_eq!(audited::touch(gateway.clone(), patient).await.unwrap(), 2);
    assert_eq!(
        audited::touch(gateway.clone(), Uuid::now_v7())
            .await
            .unwrap(),
        3
    );
    // The AuditLog route opens nothing else: records may not touch.
    let err = audited::touch(records.clone(), patient).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let by_subject = |page_token: String| ListEventsRequest {
        filter: Some(Filter::SubjectId(patient.to_string())),
        start_time: None,
        end_time: None,
        page: Some(PageRequest {
            page_size: 1,
            page_token,
        }),
        newest_first: false,
    };
    // Neither the gateway nor another service may read the trail.
    for denied in [gateway.clone(), billing.clone()] {
        let err = AuditLogClient::new(denied)
            .list_events(by_subject(String::new()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        let err = AuditLogClient::new(billing.clone())
            .verify_chain(VerifyChainRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }

    // records pages through the patient's events, oldest first.
    let mut log = AuditLogClient::new(records.clone());
    let first = log
        .list_events(by_subject(String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.events.len(), 1);
    let token = first.page.unwrap().next_page_token;
    assert!(!token.is_empty());
    let second = log
        .list_events(by_subject(token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.events.len(), 1);
    assert!(second.page.unwrap().next_page_token.is_empty());
    let (a, b) = (&first.events[0], &second.events[0]);
    assert_eq!((a.seq, b.seq), (1, 2));
    assert_eq!(a.kind, "test.touch");
    assert_eq!(a.action, "create");
    assert_eq!(a.purpose, "treatment");
    assert_eq!(a.outcome, "success");
    assert_eq!(a.subject_id, patient.to_string());
    assert_eq!(a.actor_workload, "gateway");
    assert_eq!(a.source_ip, "203.0.113.7");
    assert_eq!(a.user_agent, "carehub-test/1.0");
    // ... which the table holds sealed only (opened above for the authorized reader).
    let raw: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(e)::text FROM carehub_platform.audit_events e")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(!raw.is_empty());
    for row in &raw {
        assert!(
            !row.contains("203.0.113.7") && !row.contains("carehub-test/1.0"),
            "{row}"
        );
    }
    assert!(!a.request_id.is_empty());
    assert_eq!(a.service, "scheduling");

    // Newest first, page by page (the token keeps the order it was issued in).
    let newest = |page_token: String| ListEventsRequest {
        newest_first: true,
        ..by_subject(page_token)
    };
    let first = log
        .list_events(newest(String::new()))
        .await
        .unwrap()
        .into_inner();
    let token = first.page.unwrap().next_page_token;
    let second = log
        .list_events(newest(token.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.events[0].seq, second.events[0].seq), (2, 1));
    assert!(second.page.unwrap().next_page_token.is_empty());
    let err = log.list_events(by_subject(token)).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "a newest-first token read oldest first"
    );
    assert_eq!(a.hash.len(), 64);

    // Bad requests name their fields.
    let err = log
        .list_events(ListEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, vec!["filter"]);
    let mut bad = by_subject("not-a-token".into());
    bad.filter = Some(Filter::ActorUserId("nope".into()));
    let err = log.list_events(bad).await.unwrap_err();
    let fields: Vec<String> = err
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, vec!["actor_user_id", "page.page_token"]);

    // Listing was itself recorded (3 touches + 4 successful listings), and verifies.
    carehub_platform::audit::seal_all(&db.pool).await.unwrap();
    let mut admin = AuditLogClient::new(admin_cli);
    let report = admin
        .verify_chain(VerifyChainRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(report.intact, "{report:?}");
    assert_eq!((report.rows_checked, report.head_seq), (7, 7));

    // Tampering as a superuser would: the append-only trigger is off for this transaction.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE carehub_platform.audit_events SET subject_id = $1 WHERE seq = 2")
        .bind(Uuid::now_v7())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let report = admin
        .verify_chain(VerifyChainRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!report.intact);
    let broken = report.broken.unwrap();
    assert_eq!(
        (broken.seq, broken.kind.as_str()),
        (2, "altered"),
        "{broken:?}"
    );

    // A clean shutdown signs the tail: nothing is left unsigned.
    running.shutdown().await.unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let last = checkpoint::latest(&mut conn).await.unwrap().unwrap();
    assert_eq!(last.seq, 7);
    drop(conn);
    db.drop_database().await.unwrap();
}
