//! Telemetry: OpenTelemetry metrics and traces, and the flush events that
//! feed them. Depends only on plain data ([`crate::model`], [`crate::config`]):
//! the pipelines, the Kafka and the Postgres side record into it, and the
//! application layer ([`crate::app`]) registers the observable instruments
//! that read the pipelines and serves `/metrics`.
//!
//! One metrics layer: every instrument is created with the OpenTelemetry
//! API on one meter provider, which has up to two readers — a periodic one
//! that pushes over OTLP, and a manual one that `/metrics` renders as
//! Prometheus text ([`prometheus`]). Nothing is recorded per record:
//! counters and gauges are observable instruments that read the pipelines'
//! atomics and buffer state when a reader collects, and the flush-level
//! telemetry — one span, the duration, batch-size and end-to-end latency
//! histograms — is recorded once per flush by [`Flushes::record`].

pub mod lag;
pub mod metrics;
pub mod otlp;
pub mod prometheus;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::trace::{
    Link, Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::{info, warn};

use crate::config::Config;
use crate::mapping::TableRef;
use crate::model::{ErrorClass, TraceParent};

/// What became of a flush attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOutcome {
    Committed,
    Failed(ErrorClass),
}

impl FlushOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            FlushOutcome::Committed => "committed",
            FlushOutcome::Failed(_) => "failed",
        }
    }
}

/// One flush attempt, as telemetry sees it: the log line's and the span's
/// fields, and the inputs of the per-flush histograms.
#[derive(Debug, Clone, Copy)]
pub struct FlushEvent<'a> {
    pub pipeline: &'a str,
    /// The table (or `{topic}` template) the pipeline writes.
    pub table: &'a TableRef,
    pub partitions: usize,
    pub duration: Duration,
    pub outcome: FlushOutcome,
}

/// What telemetry needs of one row of a flushed batch.
#[derive(Debug, Clone, Copy)]
pub struct RowFacts<'a> {
    /// Its encoded size.
    pub bytes: usize,
    /// Its Kafka timestamp (end-to-end latency).
    pub timestamp_ms: Option<i64>,
    /// Its producer's trace context (a span link).
    pub trace: Option<&'a TraceParent>,
}

/// The most links a flush span carries (the SDK's default span limit).
const MAX_LINKS: usize = 128;

/// What a batch holds, in one pass over its rows.
#[derive(Debug, Default, PartialEq)]
struct BatchFacts {
    rows: u64,
    bytes: u64,
    oldest_timestamp_ms: Option<i64>,
    traces: Vec<TraceParent>,
}

impl BatchFacts {
    fn of<'a>(rows: impl Iterator<Item = RowFacts<'a>>, want_traces: bool) -> BatchFacts {
        let mut facts = BatchFacts::default();
        let mut seen = HashSet::new();
        for row in rows {
            facts.rows += 1;
            facts.bytes += row.bytes as u64;
            if let Some(ts) = row.timestamp_ms.filter(|ts| *ts >= 0) {
                facts.oldest_timestamp_ms = Some(facts.oldest_timestamp_ms.map_or(ts, |o| o.min(ts)));
            }
            if let Some(t) = row.trace {
                if want_traces && facts.traces.len() < MAX_LINKS && seen.insert(*t) {
                    facts.traces.push(*t);
                }
            }
        }
        facts
    }
}

/// The last flush of a pipeline, for `/status`.
#[derive(Debug, Clone)]
pub struct LastFlush {
    pub at: SystemTime,
    pub outcome: FlushOutcome,
    pub rows: u64,
    pub bytes: u64,
    pub partitions: usize,
    pub duration: Duration,
}

/// The last flush per pipeline name.
pub type FlushLog = Mutex<HashMap<String, LastFlush>>;

/// The instruments and tracer flush events record into.
#[derive(Debug)]
struct Recorder {
    flush_duration: Histogram<f64>,
    batch_rows: Histogram<u64>,
    end_to_end: Histogram<f64>,
    flushes: Counter<u64>,
    tracer: Option<SdkTracer>,
}

/// Where the writers record their flushes: handed to each writer by the
/// application ([`Telemetry::flushes`]). Without instruments (`sluice
/// check`, tests, telemetry off) it only keeps the last flush for `/status`.
#[derive(Debug, Clone, Default)]
pub struct Flushes {
    recorder: Option<Arc<Recorder>>,
    last: Arc<FlushLog>,
}

impl Flushes {
    /// The last flush of each pipeline, for `/status`.
    pub fn last(&self) -> HashMap<String, LastFlush> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether flush spans are exported, so that records' producer trace
    /// contexts are worth reading (each read parses the record's headers).
    pub fn wants_traces(&self) -> bool {
        self.recorder.as_ref().is_some_and(|r| r.tracer.is_some())
    }

    /// Records one flush attempt of `rows`: one span, the histograms, the
    /// flush counter and the last-flush entry of `/status`.
    pub fn record<'a>(&self, event: FlushEvent<'_>, rows: impl Iterator<Item = RowFacts<'a>>) {
        let want_traces = self.wants_traces();
        let facts = BatchFacts::of(rows, want_traces);
        let end = SystemTime::now();
        if let Some(recorder) = &self.recorder {
            recorder.record(&event, &facts, end);
        }
        let last = LastFlush {
            at: end,
            outcome: event.outcome,
            rows: facts.rows,
            bytes: facts.bytes,
            partitions: event.partitions,
            duration: event.duration,
        };
        let mut log = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match log.get_mut(event.pipeline) {
            Some(slot) => *slot = last,
            None => {
                log.insert(event.pipeline.to_owned(), last);
            }
        }
    }
}

impl Recorder {
    fn record(&self, event: &FlushEvent<'_>, facts: &BatchFacts, end: SystemTime) {
        let pipeline = KeyValue::new("pipeline", event.pipeline.to_owned());
        let outcome = KeyValue::new("outcome", event.outcome.as_str());
        self.flush_duration
            .record(event.duration.as_secs_f64(), &[pipeline.clone(), outcome.clone()]);
        self.flushes.add(1, &[pipeline.clone(), outcome.clone()]);
        if event.outcome == FlushOutcome::Committed {
            self.batch_rows.record(facts.rows, std::slice::from_ref(&pipeline));
            if let Some(oldest) = facts.oldest_timestamp_ms {
                let now_ms = end
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as i64;
                let latency = (now_ms - oldest).max(0) as f64 / 1000.0;
                self.end_to_end.record(latency, std::slice::from_ref(&pipeline));
            }
        }
        if let Some(tracer) = &self.tracer {
            let mut attributes = vec![
                pipeline,
                KeyValue::new("table", event.table.to_string()),
                KeyValue::new("rows", facts.rows as i64),
                KeyValue::new("bytes", facts.bytes as i64),
                KeyValue::new("partitions", event.partitions as i64),
                outcome,
            ];
            if let FlushOutcome::Failed(class) = event.outcome {
                attributes.push(KeyValue::new("error.type", class.as_str()));
            }
            let links = facts
                .traces
                .iter()
                .map(|t| Link::with_context(span_context(t)))
                .collect();
            let mut span = tracer.build(
                SpanBuilder::from_name("flush")
                    .with_kind(SpanKind::Consumer)
                    .with_start_time(end.checked_sub(event.duration).unwrap_or(end))
                    .with_attributes(attributes)
                    .with_links(links),
            );
            if let FlushOutcome::Failed(class) = event.outcome {
                span.set_status(Status::error(class.as_str()));
            }
            span.end_with_timestamp(end);
        }
    }
}

/// The OpenTelemetry span context of a producer's trace parent.
fn span_context(t: &TraceParent) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(t.trace_id),
        SpanId::from_bytes(t.span_id),
        TraceFlags::new(t.flags),
        true,
        TraceState::NONE,
    )
}

/// The running telemetry: the providers and exporters. The application
/// registers the observable instruments on [`Telemetry::meter`], hands
/// [`Telemetry::flushes`] to the writers and serves [`Telemetry::prometheus`].
/// [`Telemetry::shutdown`] flushes the exporters.
pub struct Telemetry {
    meter_provider: Option<SdkMeterProvider>,
    tracer_provider: Option<SdkTracerProvider>,
    prometheus: Option<prometheus::PrometheusEndpoint>,
    flushes: Flushes,
}

/// How long shutdown waits for the exporters' last export.
const EXPORT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

impl Telemetry {
    /// Builds the meter provider (with the Prometheus reader when the HTTP
    /// server is on, and the OTLP reader when an endpoint is configured) and
    /// the tracer provider (OTLP only). Must run inside the Tokio runtime
    /// (the exporters' clients live on it).
    pub fn start(config: &Config) -> anyhow::Result<Telemetry> {
        let telemetry = &config.telemetry;
        let env = |name: &str| std::env::var(name).ok();
        let otlp = otlp::resolve(telemetry, env).map_err(anyhow::Error::msg)?;
        let http_addr = telemetry.http_socket_addr();
        let runtime = tokio::runtime::Handle::current();

        let resource = otlp::resource(telemetry, env);
        let mut meter_provider = None;
        let mut tracer_provider = None;
        let mut prometheus = None;
        let mut flushes = Flushes::default();
        if http_addr.is_some() || otlp.is_some() {
            let mut builder = SdkMeterProvider::builder().with_resource(resource.clone());
            if http_addr.is_some() {
                let reader = Arc::new(ManualReader::builder().build());
                builder = builder.with_reader(prometheus::SharedReader(reader.clone()));
                prometheus = Some(prometheus::PrometheusEndpoint::new(reader));
            }
            if let Some(otlp) = &otlp {
                let exporter =
                    otlp::metric_exporter(otlp, runtime.clone()).context("building the OTLP metric exporter")?;
                let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
                    .with_interval(telemetry.export_interval)
                    .build();
                builder = builder.with_reader(reader);
                let exporter = otlp::span_exporter(otlp, runtime.clone()).context("building the OTLP span exporter")?;
                let batch = opentelemetry_sdk::trace::BatchConfigBuilder::default()
                    .with_scheduled_delay(telemetry.export_interval)
                    .build();
                let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build();
                tracer_provider = Some(
                    SdkTracerProvider::builder()
                        .with_resource(resource.clone())
                        .with_span_processor(processor)
                        .build(),
                );
                info!(endpoint = %otlp.endpoint, protocol = otlp.protocol.as_str(), "exporting metrics and traces over OTLP");
            }
            let provider = builder.build();
            let meter = provider.meter("sluice");
            flushes.recorder = Some(Arc::new(Recorder {
                flush_duration: metrics::flush_duration(&meter),
                batch_rows: metrics::batch_rows(&meter),
                end_to_end: metrics::end_to_end_latency(&meter),
                flushes: metrics::flushes(&meter),
                tracer: tracer_provider.as_ref().map(|p| p.tracer("sluice")),
            }));
            meter_provider = Some(provider);
        }
        Ok(Telemetry {
            meter_provider,
            tracer_provider,
            prometheus,
            flushes,
        })
    }

    /// The meter the observable instruments register on; `None` when
    /// neither `/metrics` nor OTLP is on.
    pub fn meter(&self) -> Option<Meter> {
        self.meter_provider.as_ref().map(|p| p.meter("sluice"))
    }

    /// Where the writers record their flushes.
    pub fn flushes(&self) -> Flushes {
        self.flushes.clone()
    }

    /// The `/metrics` endpoint's reader, when the HTTP server is on.
    pub fn prometheus(&self) -> Option<prometheus::PrometheusEndpoint> {
        self.prometheus.clone()
    }

    /// The `/metrics` text now (for tests and tools); `None` when the HTTP
    /// server is off.
    pub fn prometheus_text(&self) -> Option<String> {
        self.prometheus.as_ref().map(|p| p.render())
    }

    /// Gives the exporters up to 5 s to send what they hold. An
    /// unreachable collector cannot hold shutdown up longer.
    pub async fn shutdown(mut self) {
        self.flushes.recorder = None;
        let (tracer, meter) = (self.tracer_provider.take(), self.meter_provider.take());
        if tracer.is_none() && meter.is_none() {
            return;
        }
        // Shutdown blocks until the last export ends; a detached thread keeps
        // a hung collector from blocking the runtime (or process exit).
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("sluice-otel-shutdown".into())
            .spawn(move || {
                if let Some(t) = tracer {
                    if let Err(err) = t.shutdown() {
                        warn!(error = %err, "flushing spans failed");
                    }
                }
                if let Some(m) = meter {
                    if let Err(err) = m.shutdown() {
                        warn!(error = %err, "flushing metrics failed");
                    }
                }
                let _ = done_tx.send(());
            });
        if spawned.is_ok() && tokio::time::timeout(EXPORT_SHUTDOWN_TIMEOUT, done_rx).await.is_err() {
            warn!("telemetry exporters did not finish within 5s; the last export may be lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_a_w3c_traceparent() {
        let t = TraceParent::parse(TP).unwrap();
        assert_eq!(t.trace_id[0], 0x4b);
        assert_eq!(t.trace_id[15], 0x36);
        assert_eq!(t.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(t.flags, 1);
        let cx = span_context(&t);
        assert!(cx.is_valid() && cx.is_remote() && cx.is_sampled());
        assert_eq!(cx.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn rejects_invalid_traceparents() {
        for bad in [
            &b""[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        // A later version may append fields.
        assert!(TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later").is_some());
    }

    #[test]
    fn batch_facts_count_rows_and_keep_oldest_timestamp_and_distinct_traces() {
        let t = TraceParent::parse(TP).unwrap();
        let row = |bytes, timestamp_ms, trace| RowFacts {
            bytes,
            timestamp_ms,
            trace,
        };
        let rows = [
            row(4, Some(2_000), Some(&t)),
            row(3, Some(1_500), Some(&t)),
            row(2, None, None),
        ];
        let facts = BatchFacts::of(rows.iter().copied(), true);
        assert_eq!(facts.rows, 3);
        assert_eq!(facts.bytes, 9);
        assert_eq!(facts.oldest_timestamp_ms, Some(1_500));
        assert_eq!(facts.traces, vec![t], "one link per distinct context");
        assert!(BatchFacts::of(rows.iter().copied(), false).traces.is_empty());
    }
}
