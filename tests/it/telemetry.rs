//! Observability end to end: OTLP export to an in-test receiver that speaks
//! OTLP/HTTP (protobuf bodies decoded with opentelemetry-proto), the
//! `/metrics`, `/status`, `/readyz` endpoints, readiness across a database
//! outage, and the Grafana dashboard and alert rules against `/metrics`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, HistogramDataPoint, Metric};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

// ---------------------------------------------------------------- receiver

/// What the in-test OTLP/HTTP receiver got, in arrival order.
#[derive(Default)]
pub(crate) struct Received {
    pub(crate) metrics: Vec<ExportMetricsServiceRequest>,
    pub(crate) traces: Vec<ExportTraceServiceRequest>,
    pub(crate) authorization: Vec<String>,
}

pub(crate) type Shared = Arc<Mutex<Received>>;

fn authorization(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn receive_metrics(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Vec<u8> {
    let request = ExportMetricsServiceRequest::decode(body).expect("an OTLP metrics request");
    let mut r = s.lock().unwrap();
    r.authorization.extend(authorization(&headers));
    r.metrics.push(request);
    ExportMetricsServiceResponse::default().encode_to_vec()
}

async fn receive_traces(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP traces request");
    let mut r = s.lock().unwrap();
    r.authorization.extend(authorization(&headers));
    r.traces.push(request);
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// A unary gRPC answer: one length-prefixed message, then the
/// `grpc-status` trailer.
struct GrpcReply {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for GrpcReply {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let frame = match (self.data.take(), self.trailers.take()) {
            (Some(data), trailers) => {
                self.trailers = trailers;
                Some(Ok(http_body::Frame::data(data)))
            }
            (None, Some(trailers)) => Some(Ok(http_body::Frame::trailers(trailers))),
            (None, None) => None,
        };
        std::task::Poll::Ready(frame)
    }
}

fn grpc_reply(message: Vec<u8>) -> axum::response::Response {
    let mut framed = vec![0u8];
    framed.extend((message.len() as u32).to_be_bytes());
    framed.extend(message);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    axum::response::Response::builder()
        .header("content-type", "application/grpc")
        .body(axum::body::Body::new(GrpcReply {
            data: Some(framed.into()),
            trailers: Some(trailers),
        }))
        .unwrap()
}

/// The message of a (not compressed) gRPC request body.
fn grpc_message(body: &Bytes) -> &[u8] {
    assert_eq!(body[0], 0, "compressed gRPC message");
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    &body[5..5 + len]
}

async fn grpc_metrics(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    let request = ExportMetricsServiceRequest::decode(grpc_message(&body)).expect("an OTLP metrics request");
    let mut r = s.lock().unwrap();
    r.authorization.extend(authorization(&headers));
    r.metrics.push(request);
    grpc_reply(ExportMetricsServiceResponse::default().encode_to_vec())
}

async fn grpc_traces(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    let request = ExportTraceServiceRequest::decode(grpc_message(&body)).expect("an OTLP traces request");
    let mut r = s.lock().unwrap();
    r.authorization.extend(authorization(&headers));
    r.traces.push(request);
    grpc_reply(ExportTraceServiceResponse::default().encode_to_vec())
}

/// An OTLP receiver on a free port: OTLP/HTTP (`/v1/metrics`,
/// `/v1/traces`) and OTLP/gRPC (the collector services' `Export`, over
/// HTTP/2 without TLS).
pub(crate) async fn start_receiver() -> (SocketAddr, Shared) {
    let shared = Shared::default();
    let app = Router::new()
        .route("/v1/metrics", post(receive_metrics))
        .route("/v1/traces", post(receive_traces))
        .route(
            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            post(grpc_metrics),
        )
        .route(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            post(grpc_traces),
        )
        .with_state(shared.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, shared)
}

fn text_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            any_value::Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        })
}

pub(crate) fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::IntValue(i) => Some(*i),
            _ => None,
        })
}

fn matches(attrs: &[KeyValue], want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| text_attr(attrs, k).as_deref() == Some(*v))
}

/// The metric `name` in the latest export (each export is one consistent
/// collection of every instrument).
fn latest_metric(r: &Received, name: &str) -> Option<Metric> {
    let last = r.metrics.last()?;
    last.resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .find(|m| m.name == name)
        .cloned()
}

/// A counter's or gauge's value for the labels `want`, in the latest export.
fn number(r: &Received, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let points = match latest_metric(r, name)?.data? {
        metric::Data::Sum(s) => s.data_points,
        metric::Data::Gauge(g) => g.data_points,
        _ => return None,
    };
    points
        .iter()
        .find(|p| matches(&p.attributes, want))
        .and_then(|p| match p.value? {
            number_data_point::Value::AsInt(i) => Some(i as f64),
            number_data_point::Value::AsDouble(d) => Some(d),
        })
}

fn histogram(r: &Received, name: &str, want: &[(&str, &str)]) -> Option<HistogramDataPoint> {
    match latest_metric(r, name)?.data? {
        metric::Data::Histogram(h) => h.data_points.into_iter().find(|p| matches(&p.attributes, want)),
        _ => None,
    }
}

/// Every `flush` span received, once each (by span id).
pub(crate) fn flush_spans(r: &Received) -> Vec<Span> {
    let mut seen = BTreeSet::new();
    r.traces
        .iter()
        .flat_map(|t| &t.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .filter(|s| s.name == "flush" && seen.insert(s.span_id.clone()))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------- helpers

/// A free local port for sluice's HTTP server.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

async fn get_json(addr: &str, path: &str) -> Option<(u16, Value)> {
    let (status, body) = http_get(addr, path).await?;
    Some((status, serde_json::from_str(&body).ok()?))
}

/// The URL with a password, and that password: the one it has, or one
/// added (the test server trusts local connections, so any password works).
fn with_password(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a postgres URL");
    let (userinfo, host) = rest.split_once('@').expect("a postgres URL with a user");
    match userinfo.split_once(':') {
        Some((_, pw)) => (url.to_owned(), pw.to_owned()),
        None => (
            format!("{scheme}://{userinfo}:s3cret-pg-pw@{host}"),
            "s3cret-pg-pw".to_owned(),
        ),
    }
}

fn telemetry_config(
    services: &Services,
    db_url: &str,
    group: &str,
    topic: &str,
    table: &str,
    telemetry: &str,
) -> String {
    format!(
        r#"
shutdown_timeout = "10s"

[kafka]
brokers = "{brokers}"
group_id = "{group}"
session_timeout = "6s"

[postgres]
url = "{db_url}"

[telemetry]
lag_interval = "500ms"
{telemetry}

[[pipelines]]
name = "p"
topics = ["{topic}"]
table = "{table}"
flush_interval = "100ms"
batch_size = 400

[pipelines.columns]
{ORDER_COLUMNS}
"#,
        brokers = services.brokers,
    )
}

/// Produces records `ids` with a `traceparent` header each (to partition `id % 2`).
fn produce_traced(brokers: &str, topic: &str, ids: &[u64], traceparents: &[String]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    for (id, tp) in ids.iter().zip(traceparents) {
        let key = id.to_string();
        let value = order_payload(*id);
        let headers = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(tp.as_str()),
        });
        producer
            .send(
                BaseRecord::to(topic)
                    .key(&key)
                    .payload(&value)
                    .partition((id % 2) as i32)
                    .headers(headers),
            )
            .map_err(|(e, _)| e)
            .expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

// ---------------------------------------------------------------- tests

const LOAD: u64 = 3_000;

/// A known load through sluice with OTLP/HTTP pointed at the in-test
/// receiver: the exported counters, histograms and flush spans carry the
/// exact figures; `/metrics`, `/status` and `/readyz` agree; no secret shows.
#[tokio::test(flavor = "multi_thread")]
async fn otlp_export_and_endpoints_report_a_known_load() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("otel"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 2).await;
    create_orders_table(&pool, &table).await;

    // Records 0..LOAD-3 plain, the last three with a producer trace context.
    let plain = LOAD - 3;
    let brokers = services.brokers.clone();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || produce(&brokers, &t, 2, 0..plain, 0, order_payload))
        .await
        .unwrap();
    let traced: Vec<u64> = (plain..LOAD).collect();
    let traceparents: Vec<String> = traced
        .iter()
        .map(|i| format!("00-{:032x}-{:016x}-01", 0xabc0_0000_u128 + u128::from(*i), 0x5000 + i))
        .collect();
    let (brokers, t, ids, tps) = (
        services.brokers.clone(),
        topic.clone(),
        traced.clone(),
        traceparents.clone(),
    );
    tokio::task::spawn_blocking(move || produce_traced(&brokers, &t, &ids, &tps))
        .await
        .unwrap();

    let (receiver, received) = start_receiver().await;
    let (db_url, pg_password) = with_password(&services.database_url);
    let otlp_secret = "Bearer otlp-it-secret";
    let cfg = telemetry_config(
        &services,
        &db_url,
        &group,
        &topic,
        &table,
        &format!(
            r#"otlp_endpoint = "http://{receiver}"
otlp_protocol = "http"
export_interval = "1s"
service_name = "sluice-it"
otlp_headers = {{ authorization = "{otlp_secret}" }}
resource_attributes = {{ "deployment.environment" = "it" }}"#
        ),
    );
    let http = free_addr();
    let sluice = Sluice::start_with_env(&cfg, &[("SLUICE_TELEMETRY__HTTP_ADDR", &http)]);

    await_rows(&pool, &table, LOAD, Duration::from_secs(120), || sluice.log_text()).await;

    // The exported counters reach the load, and one export is consistent:
    // as many committed flushes as batch-size and duration observations.
    let p = [("pipeline", "p")];
    let consistent = eventually(Duration::from_secs(30), || async {
        let r = received.lock().unwrap();
        let flushes = number(
            &r,
            "sluice_flushes_total",
            &[("pipeline", "p"), ("outcome", "committed")],
        );
        let rows = histogram(&r, "sluice_batch_rows", &p);
        number(&r, "sluice_records_written_total", &p) == Some(LOAD as f64)
            && rows.as_ref().map(|h| (h.sum, h.count)) == flushes.map(|f| (Some(LOAD as f64), f as u64))
            && flush_spans(&r).len() as f64 == flushes.unwrap_or(-1.0)
    })
    .await;
    let table_label = format!("public.{table}");
    let flushes = {
        let r = received.lock().unwrap();
        assert!(
            consistent,
            "exports never reached the load: written {:?}, flushes {:?}, batch rows {:?}, spans {}; log:\n{}",
            number(&r, "sluice_records_written_total", &p),
            number(
                &r,
                "sluice_flushes_total",
                &[("pipeline", "p"), ("outcome", "committed")]
            ),
            histogram(&r, "sluice_batch_rows", &p).map(|h| (h.count, h.sum)),
            flush_spans(&r).len(),
            sluice.log_text()
        );

        // Counters, with their labels.
        assert_eq!(number(&r, "sluice_records_consumed_total", &p), Some(LOAD as f64));
        assert_eq!(
            number(
                &r,
                "sluice_records_written_total",
                &[("pipeline", "p"), ("table", table_label.as_str())]
            ),
            Some(LOAD as f64)
        );
        assert_eq!(
            number(
                &r,
                "sluice_records_dropped_total",
                &[("pipeline", "p"), ("reason", "block")]
            ),
            Some(0.0)
        );
        assert_eq!(number(&r, "sluice_records_dead_lettered_total", &p), Some(0.0));
        assert_eq!(
            number(&r, "sluice_breaker_state", &[("pipeline", "p"), ("state", "CLOSED")]),
            Some(0.0)
        );
        // Adaptive flushing moves the interval; it is exported, and sane.
        let interval = number(&r, "sluice_flush_interval_seconds", &p).expect("flush interval exported");
        assert!(interval > 0.0 && interval < 60.0, "flush interval {interval}");
        assert_eq!(number(&r, "sluice_assigned_partitions", &p), Some(2.0));
        let flushes = number(
            &r,
            "sluice_flushes_total",
            &[("pipeline", "p"), ("outcome", "committed")],
        )
        .unwrap() as u64;
        // batch_size = 400: at least LOAD / 400 flushes.
        assert!(flushes >= LOAD.div_ceil(400), "{flushes} flushes");

        // Histograms: batch rows sum to the load; every flush timed; bucket
        // counts add up; end-to-end latency observed once per flush.
        let rows = histogram(&r, "sluice_batch_rows", &p).unwrap();
        assert_eq!((rows.count, rows.sum), (flushes, Some(LOAD as f64)));
        assert_eq!(rows.bucket_counts.iter().sum::<u64>(), flushes);
        assert_eq!(rows.explicit_bounds.len() + 1, rows.bucket_counts.len());
        assert!(rows.max.unwrap() <= 400.0, "no batch above batch_size: {:?}", rows.max);
        let duration = histogram(
            &r,
            "sluice_flush_duration_seconds",
            &[("pipeline", "p"), ("outcome", "committed")],
        )
        .unwrap();
        assert_eq!(duration.count, flushes);
        assert!(
            duration.sum.unwrap() > 0.0 && duration.max.unwrap() < 60.0,
            "{duration:?}"
        );
        let e2e = histogram(&r, "sluice_end_to_end_latency_seconds", &p).unwrap();
        assert_eq!(e2e.count, flushes, "one observation per committed flush");
        assert!(e2e.max.unwrap() > 0.0 && e2e.max.unwrap() < 600.0, "{e2e:?}");
        let duration_metric = latest_metric(&r, "sluice_flush_duration_seconds").unwrap();
        assert_eq!(duration_metric.unit, "s");

        // Resource and headers from the config.
        let resource = &r.metrics.last().unwrap().resource_metrics[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes;
        assert_eq!(text_attr(resource, "service.name").as_deref(), Some("sluice-it"));
        assert_eq!(text_attr(resource, "deployment.environment").as_deref(), Some("it"));
        assert!(r.authorization.iter().all(|a| a == otlp_secret) && !r.authorization.is_empty());

        // One span per flush, with its figures; links to the producers' contexts.
        let spans = flush_spans(&r);
        assert_eq!(spans.len() as u64, flushes);
        let mut span_rows = 0;
        for s in &spans {
            assert_eq!(text_attr(&s.attributes, "pipeline").as_deref(), Some("p"));
            assert_eq!(text_attr(&s.attributes, "table").as_deref(), Some(table_label.as_str()));
            assert_eq!(text_attr(&s.attributes, "outcome").as_deref(), Some("committed"));
            let rows = int_attr(&s.attributes, "rows").unwrap();
            assert!((1..=400).contains(&rows), "{rows}");
            assert!(
                int_attr(&s.attributes, "bytes").unwrap() > rows * 50,
                "a row is over 50 bytes"
            );
            assert!((1..=2).contains(&int_attr(&s.attributes, "partitions").unwrap()));
            assert!(s.end_time_unix_nano > s.start_time_unix_nano);
            span_rows += rows;
        }
        assert_eq!(span_rows, LOAD as i64);
        let links: BTreeSet<(String, String)> = spans
            .iter()
            .flat_map(|s| &s.links)
            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
            .collect();
        for tp in &traceparents {
            let parts: Vec<&str> = tp.split('-').collect();
            assert!(
                links.contains(&(parts[1].to_owned(), parts[2].to_owned())),
                "no flush span links to {tp}; links: {links:?}"
            );
        }
        assert_eq!(links.len(), traceparents.len(), "only traced records are linked");
        flushes
    };

    // Lag: both partitions measured, nothing left once all is written.
    let caught_up = eventually(Duration::from_secs(20), || async {
        let r = received.lock().unwrap();
        (0..2).all(|part| {
            number(
                &r,
                "sluice_consumer_lag",
                &[("pipeline", "p"), ("topic", &topic), ("partition", &part.to_string())],
            ) == Some(0.0)
        })
    })
    .await;
    assert!(caught_up, "consumer lag not reported as 0 for both partitions");

    // /metrics: the same figures in Prometheus text.
    let (status, metrics) = http_get(&http, "/metrics").await.expect("/metrics answers");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!("sluice_records_consumed_total{{pipeline=\"p\"}} {LOAD}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "sluice_records_written_total{{pipeline=\"p\",table=\"{table_label}\"}} {LOAD}\n"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("sluice_batch_rows_count{{pipeline=\"p\"}} {flushes}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("sluice_batch_rows_sum{{pipeline=\"p\"}} {LOAD}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_batch_rows_bucket{pipeline=\"p\",le=\"+Inf\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_backpressure_state{pipeline=\"p\",state=\"NORMAL\"} 0\n"),
        "{metrics}"
    );

    // /status and /readyz.
    let (status, doc) = get_json(&http, "/status").await.expect("/status answers");
    assert_eq!(status, 200);
    let pipeline = &doc["pipelines"][0];
    assert_eq!(pipeline["name"], "p");
    assert_eq!(pipeline["state"], "NORMAL");
    assert_eq!(pipeline["breaker"], "CLOSED");
    assert_eq!(pipeline["counters"]["consumed"], LOAD);
    assert_eq!(pipeline["counters"]["written"], LOAD);
    assert_eq!(pipeline["counters"]["flushes"], flushes);
    assert_eq!(pipeline["assigned_partitions"].as_array().unwrap().len(), 2);
    assert_eq!(pipeline["paused_partitions"].as_array().unwrap().len(), 0);
    assert_eq!(pipeline["last_flush"]["outcome"], "committed");
    assert_eq!(pipeline["lag"].as_array().unwrap().len(), 2);
    assert_eq!(pipeline["lag_total"], 0);
    assert_eq!(doc["ready"], true);
    assert_eq!(doc["postgres"]["reachable"], true);
    assert!(doc["postgres"]["url"].as_str().unwrap().contains(":***@"), "{doc}");
    let (status, ready) = get_json(&http, "/readyz").await.unwrap();
    assert_eq!((status, &ready["ready"]), (200, &Value::Bool(true)), "{ready}");
    assert_eq!(http_get(&http, "/healthz").await.unwrap().0, 200);

    // Secrets never appear.
    let status_text = doc.to_string();
    for text in [&metrics, &status_text] {
        assert!(!text.contains(&pg_password), "postgres password leaked");
        assert!(!text.contains("otlp-it-secret"), "OTLP header leaked");
    }
    assert!(
        !sluice.log_text().contains(&pg_password),
        "postgres password in the log"
    );
}

/// The same export over OTLP/gRPC: counters and one span per flush arrive,
/// with the configured metadata.
#[tokio::test(flavor = "multi_thread")]
async fn otlp_export_over_grpc() {
    const N: u64 = 500;
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("grpc"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 1).await;
    create_orders_table(&pool, &table).await;
    let brokers = services.brokers.clone();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || produce(&brokers, &t, 1, 0..N, 0, order_payload))
        .await
        .unwrap();

    let (receiver, received) = start_receiver().await;
    let cfg = telemetry_config(
        &services,
        &services.database_url,
        &group,
        &topic,
        &table,
        &format!(
            r#"otlp_endpoint = "http://{receiver}"
otlp_protocol = "grpc"
export_interval = "1s"
otlp_headers = {{ authorization = "Bearer grpc-it" }}"#
        ),
    );
    let sluice = Sluice::start_with_env(&cfg, &[("SLUICE_TELEMETRY__HTTP_ADDR", "off")]);
    await_rows(&pool, &table, N, Duration::from_secs(120), || sluice.log_text()).await;

    let p = [("pipeline", "p")];
    let exported = eventually(Duration::from_secs(30), || async {
        let r = received.lock().unwrap();
        let flushes = number(
            &r,
            "sluice_flushes_total",
            &[("pipeline", "p"), ("outcome", "committed")],
        );
        let spans = flush_spans(&r);
        let span_rows: i64 = spans.iter().filter_map(|s| int_attr(&s.attributes, "rows")).sum();
        number(&r, "sluice_records_written_total", &p) == Some(N as f64)
            && span_rows == N as i64
            && flushes == Some(spans.len() as f64)
    })
    .await;
    let r = received.lock().unwrap();
    assert!(
        exported,
        "written {:?}, flush spans {}; log:\n{}",
        number(&r, "sluice_records_written_total", &p),
        flush_spans(&r).len(),
        sluice.log_text()
    );
    assert_eq!(number(&r, "sluice_records_consumed_total", &p), Some(N as f64));
    assert_eq!(
        histogram(&r, "sluice_batch_rows", &p).and_then(|h| h.sum),
        Some(N as f64)
    );
    assert!(r.authorization.iter().all(|a| a == "Bearer grpc-it") && !r.authorization.is_empty());
    let resource = &r.metrics.last().unwrap().resource_metrics[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes;
    assert_eq!(text_attr(resource, "service.name").as_deref(), Some("sluice"));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A TCP proxy in front of Postgres that the test can cut (every open
/// connection dropped, new ones refused) and restore.
struct PgProxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
}

impl PgProxy {
    async fn start(upstream: String) -> PgProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let (cuts, _) = tokio::sync::watch::channel(0u64);
        let (accept_open, accept_cuts) = (open.clone(), cuts.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !accept_open.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let mut cut = accept_cuts.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        PgProxy { addr, open, cuts }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// `/readyz` is unready before partitions are assigned, ready once they
/// are, unready while Postgres is unreachable, and ready again after; the
/// rows produced during the outage land once it ends.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_assignment_and_database_reachability() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("ready"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 1).await;
    create_orders_table(&pool, &table).await;

    let (scheme, rest) = services.database_url.split_once("://").unwrap();
    let (userinfo, hostpath) = rest.rsplit_once('@').unwrap();
    let (hostport, path) = hostpath.split_once('/').unwrap();
    let upstream = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    let proxy = PgProxy::start(upstream).await;
    let via_proxy = format!("{scheme}://{userinfo}@{}/{path}", proxy.addr);

    let cfg = telemetry_config(&services, &via_proxy, &group, &topic, &table, "");
    let http = free_addr();
    let sluice = Sluice::start_with_env(&cfg, &[("SLUICE_TELEMETRY__HTTP_ADDR", &http)]);

    // Before the group assigns partitions (tansu answers a join after
    // ~session_timeout/2), /readyz says why it is not ready.
    let saw_unassigned = AtomicBool::new(false);
    let ready = eventually(Duration::from_secs(60), || async {
        match get_json(&http, "/readyz").await {
            Some((200, _)) => true,
            Some((503, body)) => {
                if body["reasons"].to_string().contains("no partitions assigned") {
                    saw_unassigned.store(true, Ordering::Relaxed);
                }
                false
            }
            _ => false,
        }
    })
    .await;
    assert!(ready, "never ready; log:\n{}", sluice.log_text());
    assert!(
        saw_unassigned.load(Ordering::Relaxed),
        "/readyz was not unready before the assignment"
    );

    let brokers = services.brokers.clone();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || produce(&brokers, &t, 1, 0..100, 0, order_payload))
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(60), || async { count(&pool, &table).await == 100 }).await);

    proxy.cut();
    let unready = eventually(Duration::from_secs(30), || async {
        matches!(get_json(&http, "/readyz").await,
            Some((503, body)) if body["reasons"].to_string().contains("postgres unreachable"))
    })
    .await;
    assert!(
        unready,
        "/readyz stayed ready with the database cut off; log:\n{}",
        sluice.log_text()
    );
    let (_, status) = get_json(&http, "/status").await.unwrap();
    assert_eq!(status["postgres"]["reachable"], false, "{status}");
    assert_eq!(status["ready"], false);
    assert_eq!(http_get(&http, "/healthz").await.unwrap().0, 200, "alive all the same");

    // Records produced during the outage wait in the buffer.
    let brokers = services.brokers.clone();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || produce(&brokers, &t, 1, 100..200, 0, order_payload))
        .await
        .unwrap();
    // Their flushes fail (and are retried): counted, and shown by /status.
    let failing = eventually(Duration::from_secs(30), || async {
        let failed = match http_get(&http, "/metrics").await {
            Some((200, m)) => m
                .lines()
                .find_map(|l| l.strip_prefix("sluice_flushes_total{outcome=\"failed\",pipeline=\"p\"} "))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0),
            _ => 0,
        };
        let last = get_json(&http, "/status")
            .await
            .map(|(_, s)| s["pipelines"][0]["last_flush"].clone());
        failed > 0
            && last
                .is_some_and(|l| l["outcome"] == "failed" && l["error"] == "transient" && l["rows"].as_u64() > Some(0))
    })
    .await;
    assert!(failing, "no failed flush reported; log:\n{}", sluice.log_text());
    assert_eq!(count(&pool, &table).await, 100, "nothing written while cut off");

    proxy.restore();
    let ready_again = eventually(Duration::from_secs(30), || async {
        matches!(get_json(&http, "/readyz").await, Some((200, _)))
    })
    .await;
    assert!(
        ready_again,
        "/readyz not ready after the database came back; log:\n{}",
        sluice.log_text()
    );
    let landed = eventually(Duration::from_secs(60), || async { count(&pool, &table).await == 200 }).await;
    assert!(
        landed,
        "{} rows after the outage; log:\n{}",
        count(&pool, &table).await,
        sluice.log_text()
    );
    let (_, status) = get_json(&http, "/status").await.unwrap();
    assert_eq!(status["postgres"]["reachable"], true, "{status}");
    assert_exactly_once(&pool, &table, 1, 200).await;
}

// ------------------------------------------------------ dashboard and alerts

/// Metric names `/metrics` exposes: declared ones, with a histogram's
/// `_bucket`, `_sum` and `_count` series.
fn exposed_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            names.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// `sluice_*` identifiers in a PromQL expression.
fn referenced(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("sluice_") {
        let start = i + at;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + expr[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len() - start);
        if boundary {
            out.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    out
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The Grafana dashboard and the alert rules are well-formed, cover what
/// operators need, and reference only metrics sluice's `/metrics` has.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_alert_rules_use_only_exported_metrics() {
    let services = Services::from_env();
    let (topic, group, table) = (unique("dash"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 1).await;
    create_orders_table(&services.pool().await, &table).await;
    let http = free_addr();
    let sluice = Sluice::start_with_env(
        &telemetry_config(&services, &services.database_url, &group, &topic, &table, ""),
        &[("SLUICE_TELEMETRY__HTTP_ADDR", &http)],
    );
    let scraped = Mutex::new(String::new());
    let up = eventually(Duration::from_secs(30), || async {
        match http_get(&http, "/metrics").await {
            Some((200, body)) => {
                *scraped.lock().unwrap() = body;
                true
            }
            _ => false,
        }
    })
    .await;
    let metrics = scraped.into_inner().unwrap();
    assert!(up, "/metrics never answered; log:\n{}", sluice.log_text());
    let exposed = exposed_names(&metrics);

    // Dashboard structure.
    let dashboard: Value = serde_json::from_str(&repo_file("deploy/grafana/sluice.json")).expect("dashboard JSON");
    assert_eq!(dashboard["uid"], "sluice-overview");
    assert!(dashboard["title"].is_string() && dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "pipeline"]);
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(u64, u64, u64, u64)> = Vec::new();
    let mut dashboard_refs = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id at {title}"
        );
        let g = &panel["gridPos"];
        let b = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(b.0 + b.2 <= 24, "{title} is wider than the grid");
        for o in &boxes {
            let overlap = b.0 < o.0 + o.2 && o.0 < b.0 + b.2 && b.1 < o.1 + o.3 && o.1 < b.1 + b.3;
            assert!(!overlap, "{title} overlaps another panel");
        }
        boxes.push(b);
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title} has no targets"));
        assert!(!targets.is_empty(), "{title} has no targets");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a target without expr"));
            assert!(
                expr.contains("$pipeline"),
                "{title}: {expr} ignores the pipeline variable"
            );
            let refs = referenced(expr);
            assert!(!refs.is_empty(), "{title}: {expr} uses no sluice metric");
            dashboard_refs.extend(refs);
        }
    }
    for needed in [
        "sluice_records_written_total",
        "sluice_records_consumed_total",
        "sluice_consumer_lag",
        "sluice_buffer_utilization",
        "sluice_backpressure_state",
        "sluice_breaker_state",
        "sluice_records_dropped_total",
        "sluice_records_dead_lettered_total",
        "sluice_flush_duration_seconds_bucket",
    ] {
        assert!(dashboard_refs.contains(needed), "the dashboard shows no {needed}");
    }

    // Alert rules structure.
    let docs = yaml_rust2::YamlLoader::load_from_str(&repo_file("deploy/prometheus/alerts.yml")).expect("alerts YAML");
    let groups = docs[0]["groups"].as_vec().expect("a groups list");
    let mut alert_refs = BTreeSet::new();
    let mut alerts = BTreeSet::new();
    for group in groups {
        assert!(group["name"].as_str().is_some());
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"].as_str().expect("every rule is an alert with a name");
            assert!(alerts.insert(name.to_owned()), "duplicate alert {name}");
            let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("{name} has no expr"));
            assert!(
                ["warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
                "{name}: severity"
            );
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}: summary");
            assert!(
                rule["annotations"]["description"].as_str().is_some(),
                "{name}: description"
            );
            if let Some(duration) = rule["for"].as_str() {
                assert!(humantime::parse_duration(duration).is_ok(), "{name}: for {duration}");
            }
            let refs = referenced(expr);
            assert!(!refs.is_empty(), "{name} uses no sluice metric");
            alert_refs.extend(refs);
        }
    }
    for needed in [
        "sluice_consumer_lag",
        "sluice_breaker_state",
        "sluice_records_dropped_total",
        "sluice_records_dead_lettered_total",
    ] {
        assert!(alert_refs.contains(needed), "no alert on {needed}");
    }

    // Everything they reference is in /metrics.
    for name in dashboard_refs.iter().chain(&alert_refs) {
        assert!(exposed.contains(name), "{name} is not in /metrics:\n{metrics}");
    }
}
