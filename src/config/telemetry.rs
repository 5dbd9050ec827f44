//! `[telemetry]`: the HTTP server (`/metrics`, `/healthz`, `/readyz`,
//! `/status`) and OpenTelemetry export over OTLP.
//!
//! OTLP is off unless an endpoint is configured here or in
//! `OTEL_EXPORTER_OTLP_ENDPOINT`. Keys left unset here fall back to the
//! standard `OTEL_*` variables; see `telemetry::otlp` for the
//! resolution.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::error::{key, Issue};
use super::lenient_string;

/// Observability settings.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Where the HTTP server listens (`host:port`) for `/metrics`
    /// (Prometheus text), `/healthz`, `/readyz` and `/status`. `""` or
    /// `"off"` disables it. Default `"127.0.0.1:9464"`.
    #[serde(deserialize_with = "lenient_string")]
    pub http_addr: String,
    /// The OTLP collector. For `grpc`, its URL (`http://collector:4317`);
    /// for `http`, the base URL (`http://collector:4318`), to which
    /// `/v1/metrics` and `/v1/traces` are appended. Unset: the
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` variable; unset too: no OTLP export.
    /// `""` or `"off"` disables OTLP even when the variable is set.
    /// Default unset.
    pub otlp_endpoint: Option<String>,
    /// `"grpc"` or `"http"` (OTLP/HTTP with protobuf bodies; `http://` only,
    /// use `grpc` for TLS). Unset: `OTEL_EXPORTER_OTLP_PROTOCOL`
    /// (`grpc` or `http/protobuf`), else `"grpc"`.
    pub otlp_protocol: Option<OtlpProtocol>,
    /// Headers (gRPC metadata) sent with every export, e.g. an API key.
    /// Secrets: shown as `***`. Those in `OTEL_EXPORTER_OTLP_HEADERS` are
    /// sent too (the exporter reads that variable itself). Default empty.
    #[serde(deserialize_with = "flat_string_map")]
    pub otlp_headers: BTreeMap<String, String>,
    /// Resource attributes of everything exported (`"deployment.environment"
    /// = "prod"`), over those in `OTEL_RESOURCE_ATTRIBUTES`. Default empty.
    #[serde(deserialize_with = "flat_string_map")]
    pub resource_attributes: BTreeMap<String, String>,
    /// `service.name` of everything exported. Unset: `OTEL_SERVICE_NAME`,
    /// then `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else `"sluice"`.
    pub service_name: Option<String>,
    /// How often metrics are pushed over OTLP, and the longest a finished
    /// flush span waits before it is sent. Default `"10s"`.
    #[serde(with = "humantime_serde")]
    pub export_interval: Duration,
    /// How often consumer lag (high watermark − stored position) is
    /// measured for each assigned partition: one metadata request per
    /// partition, on a client of its own. Default `"5s"`.
    #[serde(with = "humantime_serde")]
    pub lag_interval: Duration,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (usually port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (usually port 4318).
    #[serde(alias = "http/protobuf")]
    Http,
}

impl OtlpProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::Http => "http",
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:9464".to_owned(),
            otlp_endpoint: None,
            otlp_protocol: None,
            otlp_headers: BTreeMap::new(),
            resource_attributes: BTreeMap::new(),
            service_name: None,
            export_interval: Duration::from_secs(10),
            lag_interval: Duration::from_secs(5),
        }
    }
}

/// Whether a setting that can be switched off is: `""` or `"off"`.
pub fn is_off(value: &str) -> bool {
    let v = value.trim();
    v.is_empty() || v.eq_ignore_ascii_case("off")
}

impl TelemetryConfig {
    /// The HTTP server's address, `None` when it is disabled. Validation
    /// has checked that it parses.
    pub fn http_socket_addr(&self) -> Option<SocketAddr> {
        if is_off(&self.http_addr) {
            return None;
        }
        self.http_addr.trim().parse().ok()
    }

    /// [`otlp_headers`](Self::otlp_headers) with every value as `***`.
    pub fn redacted_headers(&self) -> BTreeMap<String, String> {
        self.otlp_headers
            .keys()
            .map(|k| (k.clone(), "***".to_owned()))
            .collect()
    }

    pub(super) fn validate(&self) -> Result<(), Issue> {
        let at = |field: &str| vec![key("telemetry"), key(field)];
        if !is_off(&self.http_addr) && self.http_addr.trim().parse::<SocketAddr>().is_err() {
            return Err((
                at("http_addr"),
                format!(
                    "expected host:port with an IP address (\"127.0.0.1:9464\", \"0.0.0.0:9464\") or \"off\", found {:?}",
                    self.http_addr
                ),
            ));
        }
        if let Some(endpoint) = self.otlp_endpoint.as_deref().filter(|e| !is_off(e)) {
            validate_endpoint(endpoint, self.otlp_protocol).map_err(|why| (at("otlp_endpoint"), why))?;
        }
        for (name, value) in &self.otlp_headers {
            let mut path = at("otlp_headers");
            path.push(key(name));
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || !name.bytes().all(token) {
                return Err((path, "expected a header name (letters, digits, '-', ...)".to_owned()));
            }
            // The value is not echoed: it may be a secret.
            if value.bytes().any(|b| b.is_ascii_control() || !b.is_ascii()) {
                return Err((path, "the value must be printable ASCII".to_owned()));
            }
        }
        for name in self.resource_attributes.keys() {
            if name.trim().is_empty() {
                let mut path = at("resource_attributes");
                path.push(key(name));
                return Err((path, "attribute name must not be empty".to_owned()));
            }
        }
        if self.service_name.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err((at("service_name"), "must not be empty".to_owned()));
        }
        if self.export_interval.is_zero() {
            return Err((at("export_interval"), "must be greater than zero".to_owned()));
        }
        if self.lag_interval.is_zero() {
            return Err((at("lag_interval"), "must be greater than zero".to_owned()));
        }
        Ok(())
    }
}

/// An OTLP endpoint sluice can export to with `protocol` (`None`: not
/// known yet, the environment may choose).
pub fn validate_endpoint(endpoint: &str, protocol: Option<OtlpProtocol>) -> Result<(), String> {
    let lower = endpoint.trim().to_ascii_lowercase();
    let rest = if let Some(rest) = lower.strip_prefix("http://") {
        rest
    } else if let Some(rest) = lower.strip_prefix("https://") {
        if protocol == Some(OtlpProtocol::Http) {
            return Err(
                "otlp_protocol = \"http\" supports http:// endpoints only; use otlp_protocol = \"grpc\" for TLS"
                    .to_owned(),
            );
        }
        rest
    } else {
        return Err(format!(
            "expected a URL such as \"http://collector:4317\", found {endpoint:?}"
        ));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("the URL has no host: {endpoint:?}"));
    }
    Ok(())
}

impl fmt::Debug for TelemetryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryConfig")
            .field("http_addr", &self.http_addr)
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("otlp_protocol", &self.otlp_protocol)
            .field("otlp_headers", &self.redacted_headers())
            .field("resource_attributes", &self.resource_attributes)
            .field("service_name", &self.service_name)
            .field("export_interval", &self.export_interval)
            .field("lag_interval", &self.lag_interval)
            .finish()
    }
}

/// A table of strings whose names may contain dots. TOML reads
/// `deployment.environment = "prod"` as a nested table and the environment
/// (`SLUICE_TELEMETRY__RESOURCE_ATTRIBUTES__DEPLOYMENT.ENVIRONMENT`) nests at
/// the dots too; both become the one name `deployment.environment`. Numbers
/// and booleans are taken as their text.
fn flat_string_map<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error> {
    enum Node {
        Leaf(String),
        Table(Vec<(String, Node)>),
    }
    struct NodeVisitor;
    impl<'de> Visitor<'de> for NodeVisitor {
        type Value = Node;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a table of strings")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
            Ok(Node::Leaf(v.to_owned()))
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
            Ok(Node::Leaf(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
            Ok(Node::Leaf(v.to_string()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
            Ok(Node::Leaf(v.to_string()))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
            Ok(Node::Leaf(v.to_string()))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
            let mut entries = Vec::new();
            while let Some(k) = map.next_key::<String>()? {
                entries.push((k, map.next_value::<Node>()?));
            }
            Ok(Node::Table(entries))
        }
    }
    impl<'de> Deserialize<'de> for Node {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(NodeVisitor)
        }
    }
    fn flatten<E: de::Error>(
        prefix: &str,
        entries: Vec<(String, Node)>,
        out: &mut BTreeMap<String, String>,
    ) -> Result<(), E> {
        for (k, node) in entries {
            let name = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
            match node {
                Node::Leaf(v) => {
                    if out.insert(name.clone(), v).is_some() {
                        return Err(E::custom(format!("{name:?} is given twice")));
                    }
                }
                Node::Table(inner) => flatten(&name, inner, out)?,
            }
        }
        Ok(())
    }
    match Node::deserialize(deserializer)? {
        Node::Table(entries) => {
            let mut out = BTreeMap::new();
            flatten::<D::Error>("", entries, &mut out)?;
            Ok(out)
        }
        Node::Leaf(v) => Err(de::Error::invalid_type(de::Unexpected::Str(&v), &"a table")),
    }
}
