//! Typed settings, figment layering and cross-field validation.
//!
//! # Layering
//!
//! 1. built-in defaults (the serde defaults below, also in `config/example.toml`);
//! 2. the TOML file given by `--config` or `SLUICE_CONFIG`;
//! 3. environment variables: `SLUICE_` prefix, `__` between levels, e.g.
//!    `SLUICE_POSTGRES__URL`, `SLUICE_KAFKA__BROKERS`,
//!    `SLUICE_KAFKA__PROPERTIES__SECURITY_PROTOCOL` (see [`sources`] for how
//!    property names map). `SLUICE_CONFIG`, `SLUICE_LOG` and other
//!    single-level tooling variables are not config keys and are ignored
//!    here; see [`sources::is_config_var`].
//!
//! Unknown keys are errors at every level (a misspelt key silently falling
//! back to its default is the worst kind of config bug). Every error is a
//! [`ConfigError`] naming the key path, what was expected and what was found,
//! and where the value came from. Cross-field rules are checked at load by
//! [`Config::validate`].
//!
//! Secrets (the Postgres password, librdkafka passwords and keys) never
//! appear in `Debug` output: see [`PostgresConfig::redacted_url`] and
//! [`KafkaConfig::redacted_properties`].

mod bytesize;
mod error;
mod kafka;
mod pipeline;
mod postgres;
mod schema_registry;
pub mod sources;
pub mod telemetry;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

pub use bytesize::{ByteSize, ParseByteSizeError};
pub use error::ConfigError;
use error::{issue_to_error, issue_with_origin, key, Issue, Seg};
pub use kafka::{KafkaConfig, OffsetReset, OnOffsetOutOfRange, Prefetch, RebalanceProtocol};
pub use pipeline::{ErrorsConfig, PipelineConfig, Strategy, TableNameTooLong, Tolerance, WriteMode, TOPIC_PLACEHOLDER};
pub use postgres::{BreakerConfig, PostgresConfig, SslMode};
pub use schema_registry::SchemaRegistryConfig;
use sources::{FlattenProperties, SluiceEnv};
pub use telemetry::{OtlpProtocol, TelemetryConfig};

/// sluice's whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Kafka cluster and consumer group to read from.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// The database to write into.
    #[serde(default)]
    pub postgres: PostgresConfig,
    /// How long a graceful shutdown may spend flushing before it gives up
    /// (what is not flushed is not committed, and is re-read by the next
    /// owner of the partition). Default `"30s"`.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long `sluice run` keeps trying a Postgres or Kafka it cannot
    /// reach at start (backoff from 0.5 s to 10 s, a WARN per attempt)
    /// before it exits 1. Default `"5m"`.
    #[serde(default = "default_startup_timeout", with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// The topic → table mappings. Required, at least one.
    pub pipelines: Vec<PipelineConfig>,
    /// Metrics, traces, health and status endpoints.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The circuit breaker around database writes.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// The Schema Registry of `avro`, `protobuf` and `json_schema` records.
    #[serde(default)]
    pub schema_registry: SchemaRegistryConfig,
}

/// `shutdown_timeout` when unset (deployment artefacts size their stop
/// timeouts from it).
pub fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

pub(crate) fn default_startup_timeout() -> Duration {
    Duration::from_secs(300)
}

impl Config {
    /// The layered providers: defaults (serde) → `path` (TOML; when given) →
    /// `SLUICE_*` environment variables.
    pub fn figment(path: Option<&Path>) -> Figment {
        let mut figment = Figment::new();
        if let Some(path) = path {
            // `file_exact`: the path the operator named, not a search of the
            // parent directories for a file with the same name.
            figment = figment.merge(FlattenProperties(Toml::file_exact(path)));
        }
        figment.merge(SluiceEnv)
    }

    /// Loads the layered configuration and validates it. A `path` that does
    /// not exist is an error (figment would silently skip it).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(path) = path {
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => {
                    return Err(ConfigError::new(
                        "",
                        format!("config file {} is not a file", path.display()),
                    ))
                }
                Err(e) => {
                    return Err(ConfigError::new(
                        "",
                        format!("cannot read config file {}: {e}", path.display()),
                    ))
                }
            }
        }
        Self::from_figment(Self::figment(path))
    }

    /// Extracts and validates; errors name the key and, when known, where the
    /// value came from.
    pub fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(|e| error::from_figment(e, &figment))?;
        config
            .first_issue()
            .map_err(|issue| issue_with_origin(issue, &figment))?;
        Ok(config)
    }

    /// Every cross-field rule: value ranges, pipeline names, one pipeline per
    /// topic, column specs, buffer limits against batch limits, watermarks,
    /// and the librdkafka properties sluice refuses to pass through. Returns
    /// the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.first_issue().map_err(issue_to_error)
    }

    /// The librdkafka consumer properties: the passthrough
    /// `kafka.properties` overlaid with the ones sluice sets itself
    /// (`bootstrap.servers`, `group.id`, `session.timeout.ms`,
    /// `enable.auto.commit=false`, `enable.auto.offset.store=false`,
    /// `auto.offset.reset=error`, and `partition.assignment.strategy` =
    /// `range,roundrobin` unless the user chose an eager one).
    pub fn consumer_properties(&self) -> BTreeMap<String, String> {
        let mut props = self.kafka.consumer_properties();
        // Topics matching a pattern are found on metadata refreshes;
        // librdkafka's default (5 minutes) is slow to notice a new topic.
        if self
            .pipelines
            .iter()
            .any(|p| p.topics.iter().any(|t| t.starts_with('^')))
        {
            props
                .entry("topic.metadata.refresh.interval.ms".to_owned())
                .or_insert_with(|| "30000".to_owned());
        }
        props
    }

    fn first_issue(&self) -> Result<(), Issue> {
        self.kafka.validate()?;
        self.postgres.validate()?;
        self.breaker.validate()?;
        self.telemetry.validate()?;
        self.schema_registry.validate()?;
        if self.pipelines.is_empty() {
            return Err((vec![key("pipelines")], "at least one pipeline is required".to_owned()));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut topics: HashMap<&str, usize> = HashMap::new();
        for (i, pipeline) in self.pipelines.iter().enumerate() {
            let at = |field: &str| vec![key("pipelines"), Seg::Index(i), key(field)];
            pipeline.validate(&at)?;
            for (field, format) in [
                ("value_format", pipeline.value_format),
                ("key_format", pipeline.key_format),
            ] {
                if format.uses_registry() && self.schema_registry.url.is_none() {
                    return Err((
                        at(field),
                        format!(
                            "{:?} records name their schema in a Schema Registry: set schema_registry.url",
                            format.as_str()
                        ),
                    ));
                }
            }
            if let Some(first) = names.insert(&pipeline.name, i) {
                return Err((
                    at("name"),
                    format!(
                        "pipeline name {:?} is already used by pipelines[{first}]",
                        pipeline.name
                    ),
                ));
            }
            for (t, topic) in pipeline.topics.iter().enumerate() {
                if let Some(owner) = topics.insert(topic, i) {
                    let mut path = at("topics");
                    path.push(Seg::Index(t));
                    let message = if owner == i {
                        format!("topic {topic:?} is listed twice")
                    } else {
                        // One owner per partition: two pipelines storing
                        // offsets for the same partition would each skip
                        // records the other has not written.
                        format!(
                            "topic {topic:?} already feeds pipeline {:?} (pipelines[{owner}]); \
                             a topic may feed only one pipeline",
                            self.pipelines[owner].name
                        )
                    };
                    return Err((path, message));
                }
            }
        }
        // A dead-letter topic that a pipeline reads would feed its own failures back in.
        for (i, pipeline) in self.pipelines.iter().enumerate() {
            if let Some(dlq) = &pipeline.errors.dlq_topic {
                let matching = self.pipelines.iter().find(|p| {
                    p.topics
                        .iter()
                        .filter(|t| t.starts_with('^'))
                        .any(|t| regex::Regex::new(t).is_ok_and(|re| re.is_match(dlq)))
                });
                if let Some(reader) = matching {
                    return Err((
                        vec![key("pipelines"), Seg::Index(i), key("errors"), key("dlq_topic")],
                        format!(
                            "topic {dlq:?} matches a topic pattern of pipeline {:?}; a dead-letter topic must not be consumed",
                            reader.name
                        ),
                    ));
                }
                if let Some(&owner) = topics.get(dlq.as_str()) {
                    return Err((
                        vec![key("pipelines"), Seg::Index(i), key("errors"), key("dlq_topic")],
                        format!(
                            "topic {dlq:?} is read by pipeline {:?}; a dead-letter topic must not be consumed",
                            self.pipelines[owner].name
                        ),
                    ));
                }
            }
        }
        self.validate_upsert_sources()
    }
}

/// A string, also accepting a number or boolean as its text: an environment
/// variable is always text, but `SLUICE_KAFKA__GROUP_ID=42` reaches serde as
/// an integer.
fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    deserializer.deserialize_any(LenientString)
}

/// [`lenient_string`] for an optional key.
fn lenient_opt_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    lenient_string(deserializer).map(Some)
}

/// `kafka.properties`: librdkafka takes every value as text, so
/// `"statistics.interval.ms" = 5000` and `"enable.ssl.certificate.verification" = false`
/// are accepted as `"5000"` and `"false"`.
fn lenient_properties<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct Text(String);
    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(LenientString).map(Text)
        }
    }
    let map = BTreeMap::<String, Text>::deserialize(deserializer)?;
    Ok(map.into_iter().map(|(k, Text(v))| (k, v)).collect())
}

struct LenientString;

impl Visitor<'_> for LenientString {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_char<E: de::Error>(self, v: char) -> Result<String, E> {
        Ok(v.to_string())
    }
}
