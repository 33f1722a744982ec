//! The chart's alerts and dashboard name only metrics the services export: the committed list
//! `charts/carehub/files/exported-metrics.txt`, which `scripts/check-chart.sh` checks every
//! alert and panel expression against, is exactly what the five services' `/metrics` name on a
//! fresh start (every family the alerts use is declared from startup, before its first event).
//!
//! After a change to the metrics, regenerate the list with
//! `CAREHUB_WRITE_EXPORTED_METRICS=1 cargo nextest run -p carehub --test it monitoring` and
//! review the diff.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use carehub_billing::config::BillingConfig;
use carehub_messaging::config::MessagingConfig;
use carehub_records::config::RecordsConfig;
use carehub_scheduling::config::SchedulingConfig;
use carehub_testkit::grpc::http_get;
use carehub_testkit::promql;
use carehub_testkit::service::TestService;

#[tokio::test(flavor = "multi_thread")]
async fn the_committed_metric_list_is_what_the_services_export() {
    let identity = TestService::start(&carehub_identity::SERVICE, |_| {}).await;
    let pki = identity.pki().clone();
    let idp = format!("https://{}", identity.grpc_addr);
    let records = TestService::start_with_pki(
        &carehub_records::SERVICE,
        pki.clone(),
        |c: &mut RecordsConfig| c.server.auth.identity_endpoint = Some(idp.clone()),
    )
    .await;
    let records_endpoint = format!("https://{}", records.grpc_addr);
    let messaging = TestService::start_with_pki(
        &carehub_messaging::SERVICE,
        pki.clone(),
        |c: &mut MessagingConfig| {
            c.server.auth.identity_endpoint = Some(idp.clone());
            c.messaging.records_endpoint = Some(records_endpoint);
        },
    )
    .await;
    let scheduling = TestService::start_with_pki(
        &carehub_scheduling::SERVICE,
        pki.clone(),
        |c: &mut SchedulingConfig| c.server.auth.identity_endpoint = Some(idp.clone()),
    )
    .await;
    let billing = TestService::start_with_pki(
        &carehub_billing::SERVICE,
        pki.clone(),
        |c: &mut BillingConfig| c.server.auth.identity_endpoint = Some(idp.clone()),
    )
    .await;

    let mut texts = Vec::new();
    for (name, admin) in [
        ("identity", identity.admin_addr),
        ("records", records.admin_addr),
        ("messaging", messaging.admin_addr),
        ("scheduling", scheduling.admin_addr),
        ("billing", billing.admin_addr),
    ] {
        let (status, text) = http_get(admin, "/metrics").await;
        assert_eq!(status, 200, "{name} /metrics: {text}");
        // What every service exports from its first scrape on: the platform's families.
        for family in [
            "carehub_grpc_server_requests_total",
            "carehub_key_cache_serving",
            "carehub_db_pool_in_use_connections",
            "carehub_tls_cert_not_after_timestamp_seconds",
            "carehub_audit_queue_oldest_age_seconds",
            "carehub_outbox_dead_letters",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{name} does not name {family}: {text}"
            );
        }
        texts.push(text);
    }
    let exported: BTreeSet<String> = texts
        .iter()
        .flat_map(|t| promql::exported_names(t))
        .collect();

    let chart = promql::chart_dir();
    let list = chart.join(promql::EXPORTED_FILE);
    if std::env::var_os("CAREHUB_WRITE_EXPORTED_METRICS").is_some() {
        let mut out = String::from(
            "# Metric names the five services export on /metrics from startup (`# TYPE` lines;\n\
             # a histogram adds _bucket, _sum, _count). Generated and kept true by\n\
             # `cargo test -p carehub --test it monitoring`; scripts/check-chart.sh refuses any\n\
             # alert or dashboard expression naming a metric that is not here.\n",
        );
        for name in &exported {
            out.push_str(name);
            out.push('\n');
        }
        std::fs::write(&list, out).unwrap();
    }
    let committed = promql::committed_exported_names(&chart).unwrap();
    let missing: Vec<_> = exported.difference(&committed).collect();
    let stale: Vec<_> = committed.difference(&exported).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "{} is out of date: exported but not listed {missing:?}; listed but not exported {stale:?} \
         (regenerate: CAREHUB_WRITE_EXPORTED_METRICS=1 cargo nextest run -p carehub --test it monitoring)",
        list.display()
    );

    // And the chart's alerts and panels use only those names (the live form of check-chart's check).
    let unknown = promql::unknown_chart_metrics(&chart, &texts);
    assert!(
        unknown.is_empty(),
        "the chart uses metrics no service exports: {unknown:?}"
    );
    let used = promql::chart_metric_names(&chart).unwrap();
    for signal in [
        "carehub_key_cache_serving",
        "carehub_key_cache_age_seconds",
        "carehub_audit_queue_oldest_age_seconds",
        "carehub_outbox_oldest_pending_age_seconds",
        "carehub_outbox_dead_letters",
        "carehub_grpc_server_errors_total",
        "carehub_grpc_server_handling_seconds_bucket",
        "carehub_tls_cert_not_after_timestamp_seconds",
        "carehub_db_pool_in_use_connections",
    ] {
        let users = used.get(signal).map(Vec::as_slice).unwrap_or_default();
        assert!(
            users.iter().any(|u| u.starts_with("alert "))
                && users.iter().any(|u| u.starts_with("panel ")),
            "{signal} needs an alert and a dashboard panel; used by {users:?}"
        );
    }

    billing.shutdown().await;
    scheduling.shutdown().await;
    messaging.shutdown().await;
    records.shutdown().await;
    identity.shutdown().await;
}
