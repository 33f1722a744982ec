#![allow(clippy::unwrap_used, clippy::expect_used)]
//! AuditLog's page tokens are bound to the filter they were issued for: the token of one
//! subject's listing sent with another subject (or another time range) is refused with
//! INVALID_ARGUMENT on `page.page_token`, never read as a position in the other listing.

use std::sync::Arc;

use crate::common::audited::{self, Audited};
use crate::common::*;
use carehub_platform::client;
use carehub_platform::db::TestDatabase;
use carehub_platform::devcerts::DevPki;
use carehub_platform::keys::StaticKeys;
use carehub_platform::paging::TokenError;
use carehub_platform::server::ServiceHost;
use carehub_platform::tls::TlsStore;
use carehub_proto::audit::v1::audit_log_client::AuditLogClient;
use carehub_proto::audit::v1::{list_events_request::Filter, ListEventsRequest};
use carehub_proto::common::v1::PageRequest;
use sqlx::migrate::Migrator;
use tonic::Code;
use uuid::Uuid;

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

fn by_subject(subject: Uuid, page_token: &str) -> ListEventsRequest {
    ListEventsRequest {
        filter: Some(Filter::SubjectId(subject.to_string())),
        start_time: None,
        end_time: None,
        page: Some(PageRequest {
            page_size: 1,
            page_token: page_token.to_owned(),
        }),
        newest_first: false,
    }
}

fn refused_token(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let d = carehub_platform::errors::details_of(status);
    assert_eq!(d.reason.as_deref(), Some("INVALID_FIELD"));
    assert_eq!(d.field_violations.len(), 1, "{status:?}");
    assert_eq!(d.field_violations[0].0, "page.page_token");
    d.field_violations[0].1.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_token_is_refused_with_another_filter() {
    let db = TestDatabase::new(&NO_MIGRATIONS).await.unwrap();
    audited::create_table(&db.pool).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(TRUST_DOMAIN).unwrap();
    let mut cfg = config_with_pki(dir.path(), &pki, "scheduling");
    cfg.audit.poll_interval_ms = 60_000;
    // No auth layer: the test service is touched by anyone; AuditLog still admits records only.
    let running = ServiceHost::new("scheduling", &cfg)
        .add_service(Audited {
            pool: db.pool.clone(),
        })
        .with_audit(db.pool.clone(), Arc::new(StaticKeys::generate()))
        .start(pending_forever())
        .await
        .unwrap();
    let records = {
        let id = pki.issue("records").unwrap();
        let store =
            TlsStore::from_pem(&id.cert_pem, &id.key_pem, &pki.ca_pem, TRUST_DOMAIN).unwrap();
        client::connect(
            &format!("https://{}", running.grpc_addr),
            &store,
            "localhost",
        )
        .await
        .unwrap()
    };
    let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
    for subject in [ann, ann, bob, bob] {
        audited::touch(records.clone(), subject).await.unwrap();
    }

    let mut log = AuditLogClient::new(records);
    let first = log
        .list_events(by_subject(ann, ""))
        .await
        .unwrap()
        .into_inner();
    let token = first.page.unwrap().next_page_token;
    assert!(!token.is_empty());
    let second = log
        .list_events(by_subject(ann, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.events.len(), 1);
    assert_eq!(second.events[0].subject_id, ann.to_string());

    // Another subject, or the same subject with another time range: refused.
    let err = log.list_events(by_subject(bob, &token)).await.unwrap_err();
    assert_eq!(refused_token(&err), TokenError::OtherFilter.to_string());
    let mut ranged = by_subject(ann, &token);
    ranged.start_time = Some(prost_types::Timestamp {
        seconds: 1,
        nanos: 0,
    });
    let err = log.list_events(ranged).await.unwrap_err();
    assert_eq!(refused_token(&err), TokenError::OtherFilter.to_string());
    running.shutdown().await.unwrap();
}
