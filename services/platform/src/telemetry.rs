//! Logs and traces.
//!
//! [`init`] installs, once per process, a `tracing` subscriber with
//! - an `EnvFilter` from `log_filter`,
//! - JSON log lines (or pretty ones for development) carrying the `trace_id` and `span_id`
//!   of the current span,
//! - a `tracing-opentelemetry` layer: spans get OpenTelemetry ids always (so ids are logged
//!   and propagated), and are exported by an OTLP/gRPC batch exporter when `otlp_endpoint` is
//!   set, sampled `ParentBased(TraceIdRatioBased(sample_ratio))`, resource
//!   `service.name=carehub-<service>`;
//!
//! and sets the global W3C TraceContext propagator. The server and client layers use
//! [`extract_context`] / [`inject_context`] to carry `traceparent` in gRPC metadata.
//!
//! Never put PHI in span fields or log messages: ids only.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::{OpenTelemetrySpanExt as _, OtelData};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;

use crate::config::{LogFormat, TelemetryConfig};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Returned by [`init`]; call [`TelemetryGuard::shutdown`] after the server has drained.
#[derive(Debug)]
#[must_use = "call shutdown() after the server drained, or spans are lost"]
pub struct TelemetryGuard {
    /// Only the guard of the call that installed telemetry shuts the provider down.
    owner: bool,
}

impl TelemetryGuard {
    /// Exports what is buffered and, for the guard that installed telemetry, shuts the
    /// exporter down; gives up after `timeout`.
    pub async fn shutdown_with_timeout(self, timeout: Duration) {
        let Some(provider) = PROVIDER.get().cloned() else {
            return;
        };
        let owner = self.owner;
        let work = tokio::task::spawn_blocking(move || {
            if owner {
                provider.shutdown_with_timeout(timeout)
            } else {
                provider.force_flush()
            }
        });
        match tokio::time::timeout(timeout + Duration::from_millis(500), work).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => eprintln!("telemetry shutdown: {err}"),
            Ok(Err(err)) => eprintln!("telemetry shutdown: {err}"),
            Err(_) => eprintln!("telemetry shutdown timed out after {timeout:?}"),
        }
    }

    /// [`TelemetryGuard::shutdown_with_timeout`] with 5 seconds.
    pub async fn shutdown(self) {
        self.shutdown_with_timeout(Duration::from_secs(5)).await;
    }
}

/// Exports the spans buffered so far (no-op when telemetry is not initialized). Safe to call
/// from async code: the blocking flush runs off the runtime's worker threads.
pub async fn flush() {
    let Some(provider) = PROVIDER.get().cloned() else {
        return;
    };
    let work = tokio::task::spawn_blocking(move || provider.force_flush());
    match tokio::time::timeout(Duration::from_secs(5), work).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => tracing::debug!(error = %err, "trace flush failed"),
        Ok(Err(err)) => tracing::debug!(error = %err, "trace flush failed"),
        Err(_) => tracing::debug!("trace flush timed out"),
    }
}

/// Installs logging and tracing for the process. The first call wins; later calls (several
/// services in one process, tests) change nothing and return a guard that only flushes.
///
/// Must be called inside a Tokio runtime when `otlp_endpoint` is set (the exporter's channel
/// is spawned on it).
pub fn init(service_name: &str, cfg: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    if PROVIDER.get().is_some() {
        return Ok(TelemetryGuard { owner: false });
    }
    let resource = Resource::builder()
        .with_service_name(format!("carehub-{service_name}"))
        .build();
    let ratio = cfg.sample_ratio.clamp(0.0, 1.0);
    let mut builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))));
    if let Some(endpoint) = cfg.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(10))
            .build()
            .context("building the OTLP span exporter")?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    if PROVIDER.set(provider.clone()).is_err() {
        // Lost a race with another init: keep the winner.
        drop(provider);
        return Ok(TelemetryGuard { owner: false });
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer("carehub");

    // The log filter applies to log output only; spans at INFO and above are traced whatever
    // the log level.
    let filter = EnvFilter::try_new(&cfg.log_filter)
        .with_context(|| format!("invalid log filter {:?}", cfg.log_filter))?;
    let fmt_layer = match cfg.log_format {
        LogFormat::Json => json_log_layer(std::io::stdout).with_filter(filter).boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .pretty()
            .with_filter(filter)
            .boxed(),
    };
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(LevelFilter::INFO);
    if let Err(err) = tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel)
        .try_init()
    {
        // Someone else (a test harness) installed a subscriber first.
        eprintln!("telemetry: a global tracing subscriber was already set: {err}");
    }
    Ok(TelemetryGuard { owner: true })
}

/// The current span's trace and span ids, hex, if it has an OpenTelemetry context.
pub fn current_ids() -> Option<(String, String)> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Reads `traceparent`/`tracestate` from request headers with the global propagator.
pub fn extract_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes the context of `span` as `traceparent`/`tracestate` into request headers.
pub fn inject_context(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The JSON log layer used by [`init`]: one object per line, with the current span's
/// `trace_id` and `span_id`.
pub fn json_log_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S> + Send + Sync
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
        .event_format(JsonWithTrace)
        .with_writer(writer)
}

/// One JSON object per line: timestamp, level, target, message, fields, the current span
/// (name and fields) and its `trace_id`/`span_id`.
struct JsonWithTrace;

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut line = serde_json::Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        let mut fields = JsonVisitor::default();
        event.record(&mut fields);
        if let Some(message) = fields.0.remove("message") {
            line.insert("message".into(), message);
        }
        if !fields.0.is_empty() {
            line.insert(
                "fields".into(),
                serde_json::Value::Object(fields.0.into_iter().collect()),
            );
        }
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        let mut ids = None;
        if let Some(span) = span {
            let mut obj = serde_json::Map::new();
            obj.insert("name".into(), span.name().into());
            let ext = span.extensions();
            if let Some(formatted) = ext.get::<FormattedFields<N>>() {
                if let Ok(serde_json::Value::Object(map)) =
                    serde_json::from_str::<serde_json::Value>(formatted.fields.as_str())
                {
                    obj.extend(map);
                }
            }
            if let Some(data) = ext.get::<OtelData>() {
                if let (Some(t), Some(s)) = (data.trace_id(), data.span_id()) {
                    ids = Some((t.to_string(), s.to_string()));
                }
            }
            line.insert("span".into(), serde_json::Value::Object(obj));
        }
        if ids.is_none() {
            let cx = opentelemetry::Context::current();
            let sc = cx.span().span_context().clone();
            if sc.is_valid() {
                ids = Some((sc.trace_id().to_string(), sc.span_id().to_string()));
            }
        }
        if let Some((trace_id, span_id)) = ids {
            line.insert("trace_id".into(), trace_id.into());
            line.insert("span_id".into(), span_id.into());
        }
        let text = serde_json::to_string(&line).map_err(|_| std::fmt::Error)?;
        writer.write_str(&text)?;
        writer.write_char('\n')
    }
}

#[derive(Default)]
struct JsonVisitor(BTreeMap<String, serde_json::Value>);

impl Visit for JsonVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_trace_and_span_ids_of_the_current_span() {
        let buf = Buf::default();
        let writer = buf.clone();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(json_log_layer(move || writer.clone()))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("work", request.id = "r-1");
            let _entered = span.enter();
            tracing::info!(user_id = 7, "did it");
            current_ids().unwrap()
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["message"], "did it", "{text}");
        assert_eq!(line["fields"]["user_id"], 7, "{text}");
        assert_eq!(line["span"]["name"], "work", "{text}");
        assert_eq!(line["span"]["request.id"], "r-1", "{text}");
        assert_eq!(line["trace_id"], trace_id.as_str(), "{text}");
        assert_eq!(line["span_id"], span_id.as_str(), "{text}");
        assert_eq!(trace_id.len(), 32);
    }
}
