//! Telemetry: OpenTelemetry metrics and traces, and the named events that
//! feed them.
//!
//! One metrics layer: every instrument is created with the OpenTelemetry
//! API on one meter provider, which has up to two readers — a periodic one
//! that pushes over OTLP, and a manual one that `/metrics` renders as
//! Prometheus text ([`prometheus`]). Nothing is recorded per record:
//! counters and gauges are observable instruments that read the pipelines'
//! atomics and buffer state when a reader collects ([`metrics`]), and the
//! flush-level telemetry — one span, the duration, batch-size and
//! end-to-end latency histograms — is recorded once per flush by
//! [`FlushEvent::emit`].
//!
//! `Counters::dead_lettered` is added to by the writer when a flush with
//! dead letters commits; `Pipeline::breaker_state` is set by the breaker.

pub mod health;
pub mod lag;
pub mod metrics;
pub mod otlp;
pub mod prometheus;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use opentelemetry::metrics::{Counter, Histogram, MeterProvider as _};
use opentelemetry::trace::{
    Link, Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use rdkafka::message::{Headers, Message};
use tracing::{info, warn};

use crate::config::Config;
use crate::pipeline::buffer::{Batch, Entry};
use crate::pipeline::Pipeline;
use crate::sink::error::ErrorClass;
pub use status::Observed;

/// A producer's W3C trace context (`traceparent` header), parsed at intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Parses `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`
    /// (future versions may append fields). `None` for anything invalid,
    /// including the all-zero ids the spec forbids.
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        let value = value.trim_ascii();
        if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
            return None;
        }
        let version = hex::<1>(&value[0..2])?[0];
        if version == 0xff || (version == 0 && value.len() != 55) {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let trace_id = hex::<16>(&value[3..35])?;
        let span_id = hex::<8>(&value[36..52])?;
        let flags = hex::<1>(&value[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::NONE,
        )
    }
}

/// Lowercase hex (the spec's only form) into `N` bytes.
fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// The record's trace context, when it carries a valid `traceparent`
/// header. Allocates only then.
pub fn trace_parent<M: Message>(msg: &M) -> Option<Box<TraceParent>> {
    let headers = msg.headers()?;
    let header = headers.iter().find(|h| h.key.eq_ignore_ascii_case("traceparent"))?;
    TraceParent::parse(header.value?).map(Box::new)
}

/// What flush telemetry needs of a record, taken at intake: its Kafka
/// timestamp (end-to-end latency) and producer trace context (span links).
#[derive(Debug, Default)]
pub struct RecordMeta {
    pub timestamp_ms: Option<i64>,
    pub trace: Option<Box<TraceParent>>,
}

impl RecordMeta {
    pub fn of<M: Message>(msg: &M) -> RecordMeta {
        RecordMeta {
            timestamp_ms: msg.timestamp().to_millis(),
            trace: trace_parent(msg),
        }
    }
}

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
#[derive(Debug)]
pub struct FlushEvent<'a> {
    pub pipeline: &'a Pipeline,
    /// The batch's entries (rows and drop markers).
    pub entries: &'a [Entry],
    pub partitions: usize,
    pub duration: Duration,
    pub outcome: FlushOutcome,
}

/// The writer's call when a flush committed.
pub fn flush_committed(pipeline: &Pipeline, batch: &Batch, partitions: usize, duration: Duration) {
    FlushEvent {
        pipeline,
        entries: &batch.entries,
        partitions,
        duration,
        outcome: FlushOutcome::Committed,
    }
    .emit();
}

/// The writer's call when a flush attempt failed (it is retried).
pub fn flush_failed(pipeline: &Pipeline, batch: &Batch, partitions: usize, duration: Duration, class: ErrorClass) {
    FlushEvent {
        pipeline,
        entries: &batch.entries,
        partitions,
        duration,
        outcome: FlushOutcome::Failed(class),
    }
    .emit();
}

/// The most links a flush span carries (the SDK's default span limit).
const MAX_LINKS: usize = 128;

/// What a batch holds, in one pass over its entries.
#[derive(Debug, Default, PartialEq)]
struct BatchFacts {
    rows: u64,
    bytes: u64,
    oldest_timestamp_ms: Option<i64>,
    traces: Vec<TraceParent>,
}

impl BatchFacts {
    fn of(entries: &[Entry], want_traces: bool) -> BatchFacts {
        let mut facts = BatchFacts::default();
        let mut seen = HashSet::new();
        for e in entries {
            let Some(row) = &e.row else { continue };
            facts.rows += 1;
            facts.bytes += row.len() as u64;
            if let Some(ts) = e.timestamp_ms.filter(|ts| *ts >= 0) {
                facts.oldest_timestamp_ms = Some(facts.oldest_timestamp_ms.map_or(ts, |o| o.min(ts)));
            }
            if let Some(t) = &e.trace {
                if want_traces && facts.traces.len() < MAX_LINKS && seen.insert(**t) {
                    facts.traces.push(**t);
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
struct Recorder {
    flush_duration: Histogram<f64>,
    batch_rows: Histogram<u64>,
    end_to_end: Histogram<f64>,
    flushes: Counter<u64>,
    tracer: Option<SdkTracer>,
    last_flush: Arc<FlushLog>,
}

/// Installed by [`Telemetry::start`]; without it (`check`, unit tests)
/// flush events only log.
static RECORDER: RwLock<Option<Arc<Recorder>>> = RwLock::new(None);

fn recorder() -> Option<Arc<Recorder>> {
    RECORDER.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl FlushEvent<'_> {
    /// Records the flush: one span, the histograms, the flush counter and
    /// the last-flush entry of `/status`.
    pub fn emit(self) {
        let recorder = recorder();
        let want_traces = recorder.as_ref().is_some_and(|r| r.tracer.is_some());
        let facts = BatchFacts::of(self.entries, want_traces);
        let name = self.pipeline.name.as_str();
        // The writer logs the flush (and a failure's error) itself.
        let Some(recorder) = recorder else { return };
        let end = SystemTime::now();
        let pipeline = KeyValue::new("pipeline", name.to_owned());
        let outcome = KeyValue::new("outcome", self.outcome.as_str());
        recorder
            .flush_duration
            .record(self.duration.as_secs_f64(), &[pipeline.clone(), outcome.clone()]);
        recorder.flushes.add(1, &[pipeline.clone(), outcome.clone()]);
        if self.outcome == FlushOutcome::Committed {
            recorder.batch_rows.record(facts.rows, std::slice::from_ref(&pipeline));
            if let Some(oldest) = facts.oldest_timestamp_ms {
                let now_ms = end
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as i64;
                let latency = (now_ms - oldest).max(0) as f64 / 1000.0;
                recorder.end_to_end.record(latency, std::slice::from_ref(&pipeline));
            }
        }
        if let Some(tracer) = &recorder.tracer {
            let mut attributes = vec![
                pipeline,
                KeyValue::new("table", self.pipeline.table.to_string()),
                KeyValue::new("rows", facts.rows as i64),
                KeyValue::new("bytes", facts.bytes as i64),
                KeyValue::new("partitions", self.partitions as i64),
                outcome,
            ];
            if let FlushOutcome::Failed(class) = self.outcome {
                attributes.push(KeyValue::new("error.type", class_name(class)));
            }
            let links = facts
                .traces
                .iter()
                .map(|t| Link::with_context(t.span_context()))
                .collect();
            let mut span = tracer.build(
                SpanBuilder::from_name("flush")
                    .with_kind(SpanKind::Consumer)
                    .with_start_time(end.checked_sub(self.duration).unwrap_or(end))
                    .with_attributes(attributes)
                    .with_links(links),
            );
            if let FlushOutcome::Failed(class) = self.outcome {
                span.set_status(Status::error(class_name(class)));
            }
            span.end_with_timestamp(end);
        }
        let last = LastFlush {
            at: end,
            outcome: self.outcome,
            rows: facts.rows,
            bytes: facts.bytes,
            partitions: self.partitions,
            duration: self.duration,
        };
        let mut log = recorder.last_flush.lock().unwrap_or_else(|e| e.into_inner());
        match log.get_mut(name) {
            Some(slot) => *slot = last,
            None => {
                log.insert(name.to_owned(), last);
            }
        }
    }
}

/// `transient`, `data`, `config`: the error class as a label value.
pub fn class_name(class: ErrorClass) -> String {
    format!("{class:?}").to_ascii_lowercase()
}

/// The running telemetry: providers, exporters and the background tasks
/// that feed `/readyz` and the lag gauge. [`Telemetry::shutdown`] flushes
/// the exporters.
pub struct Telemetry {
    meter_provider: Option<SdkMeterProvider>,
    tracer_provider: Option<SdkTracerProvider>,
    prometheus: Option<prometheus::PrometheusEndpoint>,
    /// Observable instruments live as long as these handles.
    _instruments: metrics::Instruments,
    stop: Arc<AtomicBool>,
    stop_http: Option<tokio::sync::oneshot::Sender<()>>,
    http: Option<tokio::task::JoinHandle<()>>,
    /// Where the HTTP server listens (the real port when configured as 0).
    pub http_addr: Option<std::net::SocketAddr>,
}

/// How long shutdown waits for the exporters' last export.
const EXPORT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

impl Telemetry {
    /// Builds the meter provider (with the Prometheus reader when the HTTP
    /// server is on, and the OTLP reader when an endpoint is configured),
    /// the tracer provider (OTLP only), the instruments, and starts the HTTP
    /// server, the lag poller and the database probe. Must run inside the
    /// Tokio runtime (the exporters' clients live on it).
    pub async fn start(config: &Config, observed: Arc<Observed>) -> anyhow::Result<Telemetry> {
        let telemetry = &config.telemetry;
        let env = |name: &str| std::env::var(name).ok();
        let otlp = otlp::resolve(telemetry, env).map_err(anyhow::Error::msg)?;
        let http_addr = telemetry.http_socket_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Handle::current();

        let resource = otlp::resource(telemetry, env);
        let mut meter_provider = None;
        let mut tracer_provider = None;
        let mut prometheus = None;
        let mut instruments = metrics::Instruments::default();
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
            instruments = metrics::register(&meter, observed.clone());
            let recorder = Recorder {
                flush_duration: metrics::flush_duration(&meter),
                batch_rows: metrics::batch_rows(&meter),
                end_to_end: metrics::end_to_end_latency(&meter),
                flushes: metrics::flushes(&meter),
                tracer: tracer_provider.as_ref().map(|p| p.tracer("sluice")),
                last_flush: observed.last_flush.clone(),
            };
            *RECORDER.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(recorder));
            meter_provider = Some(provider);
        }

        let mut bound = None;
        let (stop_http, http) = match http_addr {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding telemetry.http_addr {addr}"))?;
                let addr = listener.local_addr().unwrap_or(addr);
                let (tx, rx) = tokio::sync::oneshot::channel();
                let app = crate::http::router(observed.clone(), prometheus.clone());
                let task = tokio::spawn(async move {
                    let server = axum::serve(listener, app).with_graceful_shutdown(async {
                        let _ = rx.await;
                    });
                    if let Err(err) = server.await {
                        warn!(error = %err, "telemetry http server failed");
                    }
                });
                info!(%addr, "serving /metrics /healthz /readyz /status");
                bound = Some(addr);
                (Some(tx), Some(task))
            }
            None => (None, None),
        };

        lag::spawn_poller(
            observed.clone(),
            &config.consumer_properties(),
            telemetry.lag_interval,
            stop.clone(),
        )
        .context("starting the consumer lag poller")?;
        health::spawn_probe(&config.postgres, observed.db.clone(), stop.clone())
            .context("starting the postgres probe")?;

        Ok(Telemetry {
            meter_provider,
            tracer_provider,
            prometheus,
            _instruments: instruments,
            stop,
            stop_http,
            http,
            http_addr: bound,
        })
    }

    /// The `/metrics` text now (for tests and tools); `None` when the HTTP
    /// server is off.
    pub fn prometheus_text(&self) -> Option<String> {
        self.prometheus.as_ref().map(|p| p.render())
    }

    /// Stops the background tasks and the HTTP server, and gives the
    /// exporters up to 5 s to send what they hold. An unreachable collector
    /// cannot hold shutdown up longer.
    pub async fn shutdown(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(tx) = self.stop_http.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.http.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        *RECORDER.write().unwrap_or_else(|e| e.into_inner()) = None;
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
    use crate::kafka::{TopicId, Tp};

    const TP: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_a_w3c_traceparent() {
        let t = TraceParent::parse(TP).unwrap();
        assert_eq!(t.trace_id[0], 0x4b);
        assert_eq!(t.trace_id[15], 0x36);
        assert_eq!(t.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(t.flags, 1);
        let cx = t.span_context();
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

    fn entry(offset: i64, row: Option<&str>, ts: Option<i64>, trace: Option<TraceParent>) -> Entry {
        Entry {
            tp: Tp {
                topic: TopicId(0),
                partition: 0,
            },
            epoch: 1,
            from: offset,
            offset,
            row: row.map(|r| r.as_bytes().into()),
            timestamp_ms: ts,
            trace: trace.map(Box::new),
            dead_letter: None,
            raw: None,
        }
    }

    #[test]
    fn batch_facts_count_rows_and_keep_oldest_timestamp_and_distinct_traces() {
        let t = TraceParent::parse(TP).unwrap();
        let entries = [
            entry(0, Some("abc\n"), Some(2_000), Some(t)),
            entry(1, None, Some(1_000), Some(t)),
            entry(2, Some("de\n"), Some(1_500), Some(t)),
            entry(3, Some("f\n"), None, None),
        ];
        let facts = BatchFacts::of(&entries, true);
        assert_eq!(facts.rows, 3, "markers are not rows");
        assert_eq!(facts.bytes, 9);
        assert_eq!(
            facts.oldest_timestamp_ms,
            Some(1_500),
            "markers' timestamps don't count"
        );
        assert_eq!(facts.traces, vec![t], "one link per distinct context");
        assert!(BatchFacts::of(&entries, false).traces.is_empty());
    }
}
