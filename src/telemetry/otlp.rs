//! OTLP export settings and exporters.
//!
//! Each setting comes from `[telemetry]` when set there, else from the
//! standard variable: `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`. The exporters themselves also read
//! `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_EXPORTER_OTLP_TIMEOUT`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use opentelemetry::KeyValue;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
use opentelemetry_otlp::tonic_types::transport::ClientTlsConfig;
use opentelemetry_otlp::{
    ExporterBuildError, MetricExporter, Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::Resource;
use tonic::metadata::{MetadataKey, MetadataValue};

use crate::config::telemetry::{is_off, validate_endpoint};
use crate::config::{OtlpProtocol, TelemetryConfig};

/// Where and how to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Otlp {
    /// The gRPC URL, or the HTTP base URL (signal paths are appended).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub headers: BTreeMap<String, String>,
}

/// The OTLP settings from the config, falling back to `env`; `None` when
/// OTLP is off. An error names the bad setting.
pub fn resolve(config: &TelemetryConfig, env: impl Fn(&str) -> Option<String>) -> Result<Option<Otlp>, String> {
    let protocol = match config.otlp_protocol {
        Some(p) => p,
        None => match env("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref().map(str::trim) {
            None | Some("") | Some("grpc") => OtlpProtocol::Grpc,
            Some("http/protobuf") | Some("http") => OtlpProtocol::Http,
            Some(other) => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported; use grpc or http/protobuf"
                ))
            }
        },
    };
    let endpoint = match config.otlp_endpoint.as_deref() {
        Some(e) if is_off(e) => return Ok(None),
        Some(e) => e.trim().to_owned(),
        None => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(e) if !e.trim().is_empty() => {
                let e = e.trim().to_owned();
                validate_endpoint(&e, Some(protocol)).map_err(|why| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {why}"))?;
                e
            }
            _ => return Ok(None),
        },
    };
    validate_endpoint(&endpoint, Some(protocol))
        .map_err(|why| format!("config key `telemetry.otlp_endpoint`: {why}"))?;
    Ok(Some(Otlp {
        endpoint,
        protocol,
        headers: config.otlp_headers.clone(),
    }))
}

/// The resource attributes: `OTEL_RESOURCE_ATTRIBUTES`, overlaid with the
/// config's; `service.name` from the config, `OTEL_SERVICE_NAME`, the
/// attributes, or `"sluice"`; `service.version` unless given.
pub fn resource_attributes(config: &TelemetryConfig, env: impl Fn(&str) -> Option<String>) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    if let Some(list) = env("OTEL_RESOURCE_ATTRIBUTES") {
        for pair in list.split(',') {
            if let Some((k, v)) = pair.split_once('=') {
                let (k, v) = (percent_decode(k.trim()), percent_decode(v.trim()));
                if !k.is_empty() {
                    attrs.insert(k, v);
                }
            }
        }
    }
    attrs.extend(config.resource_attributes.clone());
    let service = config
        .service_name
        .clone()
        .or_else(|| env("OTEL_SERVICE_NAME").filter(|s| !s.trim().is_empty()))
        .or_else(|| attrs.get("service.name").cloned())
        .unwrap_or_else(|| "sluice".to_owned());
    attrs.insert("service.name".to_owned(), service);
    attrs
        .entry("service.version".to_owned())
        .or_insert_with(|| env!("CARGO_PKG_VERSION").to_owned());
    attrs
}

pub fn resource(config: &TelemetryConfig, env: impl Fn(&str) -> Option<String>) -> Resource {
    Resource::builder_empty()
        .with_attributes(
            resource_attributes(config, env)
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v)),
        )
        .build()
}

/// `%XX` escapes, as the OTel spec allows in `OTEL_RESOURCE_ATTRIBUTES`.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How long one export may take (connect, send, answer).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

fn http_url(base: &str, signal: &str) -> String {
    format!("{}/v1/{signal}", base.trim_end_matches('/'))
}

fn metadata(headers: &BTreeMap<String, String>) -> Result<MetadataMap, ExporterBuildError> {
    let mut map = MetadataMap::new();
    for (k, v) in headers {
        let bad =
            |what: &str| ExporterBuildError::InvalidConfiguration(format!("telemetry.otlp_headers: bad {what} {k:?}"));
        let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()).map_err(|_| bad("header name"))?;
        let value = MetadataValue::try_from(v.as_str()).map_err(|_| bad("value for header"))?;
        map.insert(key, value);
    }
    Ok(map)
}

fn is_https(endpoint: &str) -> bool {
    endpoint.trim().to_ascii_lowercase().starts_with("https://")
}

pub fn metric_exporter(otlp: &Otlp, runtime: tokio::runtime::Handle) -> Result<MetricExporter, ExporterBuildError> {
    match otlp.protocol {
        OtlpProtocol::Grpc => {
            let mut builder = MetricExporter::builder()
                .with_tonic()
                .with_endpoint(otlp.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .with_metadata(metadata(&otlp.headers)?);
            if is_https(&otlp.endpoint) {
                builder = builder.with_tls_config(ClientTlsConfig::new().with_webpki_roots());
            }
            builder.build()
        }
        OtlpProtocol::Http => MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(http_url(&otlp.endpoint, "metrics"))
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(otlp.headers.clone().into_iter().collect::<HashMap<_, _>>())
            .with_http_client(RuntimeHttpClient::new(runtime))
            .build(),
    }
}

pub fn span_exporter(otlp: &Otlp, runtime: tokio::runtime::Handle) -> Result<SpanExporter, ExporterBuildError> {
    match otlp.protocol {
        OtlpProtocol::Grpc => {
            let mut builder = SpanExporter::builder()
                .with_tonic()
                .with_endpoint(otlp.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .with_metadata(metadata(&otlp.headers)?);
            if is_https(&otlp.endpoint) {
                builder = builder.with_tls_config(ClientTlsConfig::new().with_webpki_roots());
            }
            builder.build()
        }
        OtlpProtocol::Http => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(http_url(&otlp.endpoint, "traces"))
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(otlp.headers.clone().into_iter().collect::<HashMap<_, _>>())
            .with_http_client(RuntimeHttpClient::new(runtime))
            .build(),
    }
}

/// The hyper client, driven on sluice's Tokio runtime.
///
/// The SDK exports from threads of its own (the periodic reader's and the
/// batch span processor's), outside any runtime; hyper needs one for its
/// connections and timers. Each request runs as a task on the runtime and
/// the exporter thread waits for it.
#[derive(Debug, Clone)]
struct RuntimeHttpClient {
    inner: opentelemetry_http::hyper::HyperClient,
    runtime: tokio::runtime::Handle,
}

impl RuntimeHttpClient {
    fn new(runtime: tokio::runtime::Handle) -> Self {
        Self {
            inner: opentelemetry_http::hyper::HyperClient::with_default_connector(EXPORT_TIMEOUT, None),
            runtime,
        }
    }
}

#[async_trait]
impl HttpClient for RuntimeHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let inner = self.inner.clone();
        self.runtime
            .spawn(async move { inner.send_bytes(request).await })
            .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn otlp_is_off_unless_an_endpoint_is_configured_or_in_the_environment() {
        let config = TelemetryConfig::default();
        assert_eq!(resolve(&config, env(&[])).unwrap(), None);
        let from_env = resolve(
            &config,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(from_env.endpoint, "http://collector:4318");
        assert_eq!(from_env.protocol, OtlpProtocol::Http);
        let off = TelemetryConfig {
            otlp_endpoint: Some("off".into()),
            ..TelemetryConfig::default()
        };
        assert_eq!(
            resolve(&off, env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")])).unwrap(),
            None
        );
    }

    #[test]
    fn the_config_wins_over_the_environment() {
        let config = TelemetryConfig {
            otlp_endpoint: Some("http://mine:4317".into()),
            otlp_protocol: Some(OtlpProtocol::Grpc),
            otlp_headers: [("x-api-key".to_owned(), "secret".to_owned())].into(),
            ..TelemetryConfig::default()
        };
        let otlp = resolve(
            &config,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://theirs:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(otlp.endpoint, "http://mine:4317");
        assert_eq!(otlp.protocol, OtlpProtocol::Grpc);
        assert_eq!(otlp.headers["x-api-key"], "secret");
        assert!(resolve(
            &TelemetryConfig::default(),
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
            ])
        )
        .is_err());
        assert!(resolve(
            &TelemetryConfig::default(),
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")])
        )
        .is_err());
    }

    #[test]
    fn resource_attributes_layer_environment_then_config() {
        let vars = &[
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod, team=data%2Cplatform,service.name=from-attrs",
            ),
            ("OTEL_SERVICE_NAME", "from-env"),
        ];
        let config = TelemetryConfig {
            resource_attributes: [("team".to_owned(), "ingest".to_owned())].into(),
            ..TelemetryConfig::default()
        };
        let attrs = resource_attributes(&config, env(vars));
        assert_eq!(attrs["deployment.environment"], "prod");
        assert_eq!(attrs["team"], "ingest", "the config wins");
        assert_eq!(attrs["service.name"], "from-env");
        assert_eq!(attrs["service.version"], env!("CARGO_PKG_VERSION"));
        let named = TelemetryConfig {
            service_name: Some("orders-sink".into()),
            ..TelemetryConfig::default()
        };
        assert_eq!(resource_attributes(&named, env(vars))["service.name"], "orders-sink");
        assert_eq!(
            resource_attributes(&TelemetryConfig::default(), env(&[]))["service.name"],
            "sluice"
        );
        assert_eq!(
            resource_attributes(
                &TelemetryConfig::default(),
                env(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=attrs")])
            )["service.name"],
            "attrs"
        );
        assert_eq!(percent_decode("a%2Cb%zz%4"), "a,b%zz%4");
    }

    #[test]
    fn http_signal_urls_are_appended_to_the_base() {
        assert_eq!(http_url("http://c:4318", "metrics"), "http://c:4318/v1/metrics");
        assert_eq!(http_url("http://c:4318/", "traces"), "http://c:4318/v1/traces");
    }
}
