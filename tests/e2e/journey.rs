//! The `carehub demo` journey against the five services: it completes, the booking's trace
//! spans scheduling, records and messaging (the outbox carries it on), every audit chain
//! verifies at the end, and every metric the chart's alerts and dashboard name is exported.

use std::time::Duration;

use carehub::demo::journey::{Collect, STEPS};
use carehub_e2e::Suite;
use carehub_testkit::otlp::{attr, hex};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// Waits (up to 30 s) until the receiver holds a server span of trace `trace_id` from each of
/// `services`, told apart by `rpc.service` (`carehub.<service>.v1.*`): the five services share
/// the process's one tracer, hence one resource.
async fn assert_trace_spans(suite: &Suite, trace_id: &str, services: &[&str]) {
    carehub_e2e::eventually(
        &format!("server spans of trace {trace_id} from {services:?}"),
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            carehub_platform::telemetry::flush().await;
            let seen: Vec<(String, String)> = suite
                .otlp
                .snapshot()
                .into_iter()
                .filter(|(_, s)| hex(&s.trace_id) == trace_id && s.kind == SpanKind::Server as i32)
                .map(|(_, s)| {
                    (
                        attr(&s.attributes, "rpc.service").unwrap_or_default(),
                        s.name,
                    )
                })
                .collect();
            let missing: Vec<&&str> = services
                .iter()
                .filter(|svc| {
                    !seen
                        .iter()
                        .any(|(rpc, _)| rpc.starts_with(&format!("carehub.{svc}.v1.")))
                })
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "no span from {missing:?}; server spans of the trace: {seen:?}"
                ))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_across_five_services() {
    if !carehub_testkit::process::in_own_process("journey::journey_across_five_services") {
        return;
    }
    let suite = Suite::start().await;
    let target = suite.demo_target().await;
    let mut steps = Collect::default();
    let outcome = match carehub::demo::journey::run(&target, &mut steps).await {
        Ok(outcome) => outcome,
        Err(failed) => panic!("the journey failed: {failed}\nsteps done: {:#?}", steps.0),
    };
    assert_eq!(steps.0.len(), STEPS.len(), "steps reported: {:#?}", steps.0);
    assert_eq!(
        outcome.booking_trace_id.len(),
        32,
        "booking trace id {:?}",
        outcome.booking_trace_id
    );

    assert_trace_spans(
        &suite,
        &outcome.booking_trace_id,
        &["scheduling", "records", "messaging"],
    )
    .await;

    // Every cross-service effect of the journey was delivered: none pending, none dead.
    suite.eventually_all_delivered().await;

    // Intact, and anchored: checkpoints are signed a moment after the rows they cover.
    let reports = carehub_e2e::eventually(
        "every audit chain verified with a signed checkpoint",
        Duration::from_secs(20),
        Duration::from_millis(500),
        || async {
            let reports = suite.verify_audit().await;
            for (service, report) in carehub_e2e::suite::SERVICES.iter().zip(&reports) {
                assert!(report.is_intact(), "{service}'s audit chain: {report:?}");
                assert!(
                    report.rows_checked > 0,
                    "{service} audited nothing: {report:?}"
                );
            }
            let unsigned: Vec<&str> = carehub_e2e::suite::SERVICES
                .iter()
                .zip(&reports)
                .filter(|(_, r)| r.checkpoints_checked == 0)
                .map(|(s, _)| *s)
                .collect();
            if unsigned.is_empty() {
                Ok(reports)
            } else {
                Err(format!("no checkpoint yet: {unsigned:?}"))
            }
        },
    )
    .await;
    assert_eq!(reports.len(), 5);

    // Every metric the chart's alerts and dashboard name is exported by a running service.
    let metrics = suite.metrics().await;
    let unknown = carehub_testkit::promql::unknown_chart_metrics(
        &carehub_testkit::promql::chart_dir(),
        &metrics,
    );
    assert!(
        unknown.is_empty(),
        "the chart uses metrics no service exports: {unknown:#?}"
    );
    suite.shutdown().await;
}
