//! `/metrics`: the meter provider's manual reader, rendered as Prometheus
//! text exposition format 0.0.4.
//!
//! Rendered here rather than through `opentelemetry-prometheus` (which its
//! maintainers discontinued, and which depends on the unmaintained
//! `protobuf` crate): the names are already Prometheus names, so rendering
//! is a straight walk over the collected data.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};

use super::metrics::{Kind, CATALOGUE};

/// Lets the provider own a reader that `/metrics` also holds.
#[derive(Debug, Clone)]
pub struct SharedReader(pub Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// The `/metrics` handler's side of the reader.
#[derive(Debug, Clone)]
pub struct PrometheusEndpoint {
    reader: Arc<ManualReader>,
}

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl PrometheusEndpoint {
    pub fn new(reader: Arc<ManualReader>) -> Self {
        Self { reader }
    }

    /// Collects (running the observable callbacks) and renders.
    pub fn render(&self) -> String {
        let mut rm = ResourceMetrics::default();
        if let Err(err) = self.reader.collect(&mut rm) {
            tracing::warn!(error = %err, "collecting metrics failed");
        }
        render(&rm)
    }
}

/// Renders every metric of [`CATALOGUE`] (its `# HELP` and `# TYPE` even
/// before it has samples), then any other collected metric.
pub fn render(rm: &ResourceMetrics) -> String {
    let mut collected: BTreeMap<&str, &Metric> = BTreeMap::new();
    for scope in rm.scope_metrics() {
        for metric in scope.metrics() {
            collected.insert(metric.name(), metric);
        }
    }
    let mut out = String::new();
    for info in CATALOGUE {
        let metric = collected.remove(info.name);
        header(&mut out, info.name, info.help, info.kind.as_str());
        if let Some(metric) = metric {
            samples(&mut out, metric);
        }
    }
    for (name, metric) in collected {
        let kind = match metric.data() {
            AggregatedMetrics::F64(d) => kind_of(d),
            AggregatedMetrics::U64(d) => kind_of(d),
            AggregatedMetrics::I64(d) => kind_of(d),
        };
        header(&mut out, name, metric.description(), kind.as_str());
        samples(&mut out, metric);
    }
    out
}

fn kind_of<T>(data: &MetricData<T>) -> Kind {
    match data {
        MetricData::Sum(s) if s.is_monotonic() => Kind::Counter,
        MetricData::Histogram(_) => Kind::Histogram,
        _ => Kind::Gauge,
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A value as Prometheus spells it.
trait PromValue: Copy {
    fn text(self) -> String;
}

impl PromValue for u64 {
    fn text(self) -> String {
        self.to_string()
    }
}

impl PromValue for i64 {
    fn text(self) -> String {
        self.to_string()
    }
}

impl PromValue for f64 {
    fn text(self) -> String {
        if self.is_nan() {
            "NaN".to_owned()
        } else if self.is_infinite() {
            if self > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
        } else {
            self.to_string()
        }
    }
}

fn samples(out: &mut String, metric: &Metric) {
    match metric.data() {
        AggregatedMetrics::F64(d) => data_samples(out, metric.name(), d),
        AggregatedMetrics::U64(d) => data_samples(out, metric.name(), d),
        AggregatedMetrics::I64(d) => data_samples(out, metric.name(), d),
    }
}

fn data_samples<T: PromValue>(out: &mut String, name: &str, data: &MetricData<T>) {
    // Sorted by labels, so that scrapes are stable and diffable.
    let mut lines: Vec<(String, String)> = Vec::new();
    match data {
        MetricData::Gauge(g) => {
            for p in g.data_points() {
                lines.push((
                    labels(p.attributes(), None),
                    format!("{name}{} {}", labels(p.attributes(), None), p.value().text()),
                ));
            }
        }
        MetricData::Sum(s) => {
            for p in s.data_points() {
                lines.push((
                    labels(p.attributes(), None),
                    format!("{name}{} {}", labels(p.attributes(), None), p.value().text()),
                ));
            }
        }
        MetricData::Histogram(h) => {
            for p in h.data_points() {
                let key = labels(p.attributes(), None);
                let mut text = String::new();
                let mut cumulative = 0u64;
                let bounds: Vec<f64> = p.bounds().collect();
                for (i, count) in p.bucket_counts().enumerate() {
                    cumulative += count;
                    let le = bounds.get(i).map_or_else(|| "+Inf".to_owned(), |b| b.text());
                    let _ = writeln!(text, "{name}_bucket{} {cumulative}", labels(p.attributes(), Some(&le)));
                }
                let _ = writeln!(text, "{name}_sum{key} {}", p.sum().text());
                let _ = write!(text, "{name}_count{key} {}", p.count());
                lines.push((key, text));
            }
        }
        // Not used by sluice's instruments; no Prometheus equivalent.
        MetricData::ExponentialHistogram(_) => {}
    }
    lines.sort();
    for (_, line) in lines {
        out.push_str(&line);
        out.push('\n');
    }
}

/// `{a="x",b="y"}` (sorted by name), with `le` last for buckets; empty
/// when there are no labels.
fn labels<'a>(attributes: impl Iterator<Item = &'a KeyValue>, le: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = attributes
        .map(|kv| (sanitize(kv.key.as_str()), kv.value.as_str().into_owned()))
        .collect();
    pairs.sort();
    if let Some(le) = le {
        pairs.push(("le".to_owned(), le.to_owned()));
    }
    if pairs.is_empty() {
        return String::new();
    }
    let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    format!("{{{}}}", body.join(","))
}

/// Label names are `[a-zA-Z_][a-zA-Z0-9_]*`.
fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    #[test]
    fn renders_counters_gauges_and_cumulative_histogram_buckets() {
        let reader = Arc::new(ManualReader::builder().build());
        let provider = SdkMeterProvider::builder()
            .with_reader(SharedReader(reader.clone()))
            .build();
        let meter = provider.meter("test");
        let rows = super::super::metrics::batch_rows(&meter);
        let attrs = [KeyValue::new("pipeline", "orders")];
        rows.record(5, &attrs);
        rows.record(50, &attrs);
        rows.record(5000, &attrs);
        let _consumed = meter
            .u64_observable_counter("sluice_records_consumed_total")
            .with_callback(|o| o.observe(42, &[KeyValue::new("pipeline", "a \"quoted\" \\ name")]))
            .build();
        let _other = meter
            .f64_observable_gauge("not_in_catalogue")
            .with_description("extra")
            .with_callback(|o| o.observe(0.5, &[KeyValue::new("dotted.key", "v")]))
            .build();
        let text = PrometheusEndpoint::new(reader).render();

        assert!(
            text.contains("# TYPE sluice_records_consumed_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_records_consumed_total{pipeline=\"a \\\"quoted\\\" \\\\ name\"} 42\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE sluice_batch_rows histogram\n"), "{text}");
        assert!(
            text.contains("sluice_batch_rows_bucket{pipeline=\"orders\",le=\"1\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_batch_rows_bucket{pipeline=\"orders\",le=\"10\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_batch_rows_bucket{pipeline=\"orders\",le=\"100\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_batch_rows_bucket{pipeline=\"orders\",le=\"5000\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_batch_rows_bucket{pipeline=\"orders\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_batch_rows_sum{pipeline=\"orders\"} 5055\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_batch_rows_count{pipeline=\"orders\"} 3\n"),
            "{text}"
        );
        // Every catalogued metric is declared, with or without samples.
        for info in CATALOGUE {
            assert!(
                text.contains(&format!("# TYPE {} {}\n", info.name, info.kind.as_str())),
                "{}",
                info.name
            );
        }
        assert!(
            text.contains("# TYPE not_in_catalogue gauge\nnot_in_catalogue{dotted_key=\"v\"} 0.5\n"),
            "{text}"
        );
    }
}
