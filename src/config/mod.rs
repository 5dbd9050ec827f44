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

use crate::mapping::ColumnSource;

pub use bytesize::{ByteSize, ParseByteSizeError};
pub use error::ConfigError;
use error::{issue_to_error, issue_with_origin, key, Issue, Seg};
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
    /// The topic → table mappings. Required, at least one.
    pub pipelines: Vec<PipelineConfig>,
    /// Metrics, traces, health and status endpoints.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The circuit breaker around database writes.
    #[serde(default)]
    pub breaker: BreakerConfig,
}

/// Where sluice starts a partition that has no offset stored in Postgres
/// (`sluice.offsets`). Once a partition has a stored offset, this is not
/// consulted: the stored offset wins over Kafka's committed one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    /// The oldest record still retained: nothing already in the topic is skipped.
    #[default]
    Earliest,
    /// Only records produced after the partition is first assigned.
    Latest,
}

impl OffsetReset {
    /// The configured value (librdkafka's own `auto.offset.reset` is always
    /// `error`: see [`KafkaConfig::consumer_properties`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

impl fmt::Display for OffsetReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What sluice does with a partition whose stored offset (`sluice.offsets`)
/// lies outside the log the broker holds: below its start (retention
/// deleted records sluice never wrote) or above its end (the topic was
/// deleted and re-created). Either way records are missing or about to be
/// skipped, so it is always an ERROR and counted
/// (`sluice_offset_out_of_range_total`); this only chooses what follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOffsetOutOfRange {
    /// Stop the partition's pipeline: nothing more of it commits, its
    /// stored offsets stay as they are and `/readyz` fails until an
    /// operator decides (moves the offset, or picks a skip below) and
    /// restarts sluice. The other pipelines keep running.
    #[default]
    Stop,
    /// Continue from the oldest record the log still holds.
    Earliest,
    /// Continue from the end of the log: every record it holds is skipped.
    Latest,
}

impl OnOffsetOutOfRange {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

/// The Kafka side: cluster, consumer group, librdkafka passthrough.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` bootstrap brokers (librdkafka
    /// `bootstrap.servers`). Default `"127.0.0.1:9092"`.
    #[serde(deserialize_with = "lenient_string")]
    pub brokers: String,
    /// The consumer group; also the first column of the `sluice.offsets` key,
    /// so two deployments with different groups keep separate positions.
    /// Default `"sluice"`.
    #[serde(deserialize_with = "lenient_string")]
    pub group_id: String,
    /// Where to start a partition that has no offset stored in Postgres:
    /// `"earliest"` or `"latest"`. Default `"earliest"`.
    pub auto_offset_reset: OffsetReset,
    /// What to do when a partition's stored offset is outside the log on the
    /// broker (below its start: retention deleted the records; above its
    /// end: the topic was re-created): `"stop"` stops the partition's
    /// pipeline until an operator acts, `"earliest"` / `"latest"` skip to
    /// the log's start / end. Always an ERROR and counted. Default `"stop"`.
    pub on_offset_out_of_range: OnOffsetOutOfRange,
    /// How long the group coordinator waits for a heartbeat before it evicts
    /// this member and rebalances (librdkafka `session.timeout.ms`).
    /// Default `"10s"`.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Extra librdkafka consumer properties passed through as-is
    /// (`security.protocol`, `sasl.*`, `ssl.*`, `client.id`, ...). Properties
    /// sluice sets or owns are refused; see [`Config::validate`]. Default empty.
    #[serde(deserialize_with = "lenient_properties")]
    pub properties: BTreeMap<String, String>,
    /// Memory librdkafka may use for prefetched records. Half bounds the
    /// local consumer queue (`queued.max.messages.kbytes`), half one fetch
    /// response per broker (`fetch.max.bytes`); at least 4MiB. Default `"16MiB"`.
    pub prefetch_bytes: ByteSize,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            group_id: "sluice".to_owned(),
            auto_offset_reset: OffsetReset::Earliest,
            on_offset_out_of_range: OnOffsetOutOfRange::Stop,
            session_timeout: Duration::from_secs(10),
            properties: BTreeMap::new(),
            prefetch_bytes: ByteSize::mib(16),
        }
    }
}

impl KafkaConfig {
    /// [`properties`](Self::properties) with the values of secret-looking
    /// properties (passwords, secrets, private keys) replaced by `***`; for
    /// logs and `/status`.
    pub fn redacted_properties(&self) -> BTreeMap<String, String> {
        self.properties
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_property(k) {
                    "***".to_owned()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// The librdkafka consumer properties: see [`Config::consumer_properties`].
    pub fn consumer_properties(&self) -> BTreeMap<String, String> {
        let mut props = self.properties.clone();
        // A user-chosen eager strategy is kept; validation refuses cooperative
        // ones, and this never hands one to librdkafka even if unvalidated.
        let strategy = match props.get(ASSIGNMENT_STRATEGY) {
            Some(s) if !s.to_ascii_lowercase().contains("cooperative") => s.clone(),
            _ => DEFAULT_ASSIGNMENT_STRATEGY.to_owned(),
        };
        let owned = [
            ("bootstrap.servers", self.brokers.clone()),
            ("group.id", self.group_id.clone()),
            ("session.timeout.ms", self.session_timeout.as_millis().to_string()),
            // Offsets are committed by sluice after each Postgres transaction;
            // auto-commit would acknowledge records that are not yet in the
            // table, and the automatic store would let it.
            ("enable.auto.commit", "false".to_owned()),
            ("enable.auto.offset.store", "false".to_owned()),
            // sluice positions every partition itself (the stored offset, or
            // `auto_offset_reset` as an explicit beginning/end), so librdkafka's
            // reset only ever fires for a position outside the log, and would
            // then move it silently. "error" reports it instead, and the
            // consumer loop applies `on_offset_out_of_range`.
            ("auto.offset.reset", "error".to_owned()),
            (ASSIGNMENT_STRATEGY, strategy),
            // Prefetch is part of the memory budget: see `Prefetch`.
            (
                "queued.max.messages.kbytes",
                (self.prefetch().queue_bytes / 1024).to_string(),
            ),
            ("fetch.max.bytes", self.prefetch().fetch_bytes.to_string()),
            (
                "max.partition.fetch.bytes",
                self.prefetch().partition_fetch_bytes.to_string(),
            ),
        ];
        for (k, v) in owned {
            props.insert(k.to_owned(), v);
        }
        // When its local queue is over `queued.max.messages.kbytes` (small
        // here: it is part of the memory budget), librdkafka postpones the
        // partition's next fetch by this much; its default, 1 s, idles the
        // partition long after the queue drained (measured: a 5 MB record
        // stalled a partition ~0.7 s; at 50 ms the poison corpus's three
        // 5 MB records still idled intake 30 – 60 ms, at 10 ms 13 – 18 ms).
        // The wait is a local timer, not a request. A default, so it can be
        // overridden.
        props
            .entry("fetch.queue.backoff.ms".to_owned())
            .or_insert_with(|| "10".to_owned());
        props
    }
}

/// librdkafka's prefetch limits, derived from `kafka.prefetch_bytes`.
///
/// Worst case, prefetched records take `queue_bytes` in the consumer queue
/// plus one fetch response of `fetch_bytes` per broker being fetched from
/// (librdkafka may overshoot the queue limit by one fetch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefetch {
    pub queue_bytes: u64,
    pub fetch_bytes: u64,
    pub partition_fetch_bytes: u64,
}

/// librdkafka refuses a `fetch.max.bytes` below `message.max.bytes` (1,000,000 by default).
const MIN_FETCH_BYTES: u64 = 1_000_000;

impl KafkaConfig {
    pub fn prefetch(&self) -> Prefetch {
        let half = self.prefetch_bytes.bytes() / 2;
        let fetch_bytes = half.max(MIN_FETCH_BYTES);
        Prefetch {
            queue_bytes: half.max(1024),
            fetch_bytes,
            // 1 MiB per partition keeps partitions interleaved in a fetch
            // (with the whole fetch for one partition, a backlog is read a
            // partition at a time). The cost: a record above 1 MiB makes
            // librdkafka grow its request in steps, one fetch round each
            // (measured: ~0.7 s for a 5 MB record, bench/RESULTS.md).
            partition_fetch_bytes: fetch_bytes.min(1024 * 1024),
        }
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("auto_offset_reset", &self.auto_offset_reset)
            .field("on_offset_out_of_range", &self.on_offset_out_of_range)
            .field("session_timeout", &self.session_timeout)
            .field("properties", &self.redacted_properties())
            .field("prefetch_bytes", &self.prefetch_bytes)
            .finish()
    }
}

/// The Postgres side.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL, `postgres://user:password@host:port/dbname?options`.
    /// A secret: `Debug` shows [`redacted_url`](Self::redacted_url).
    /// Default `"postgres://postgres@127.0.0.1:5432/postgres"`.
    #[serde(deserialize_with = "lenient_string")]
    pub url: String,
    /// Connections in the pool, shared by all pipelines' writers. At least 1.
    /// Default 4.
    pub pool_size: u32,
    /// How long to wait for a connection (connect or pool checkout) before
    /// the attempt counts as a transient failure. Default `"10s"`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` for sluice's sessions: a statement
    /// running longer is cancelled (a transient failure, retried). Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Client-side limit on one flush transaction, for when the server
    /// cannot even cancel (a network blackhole). Also the sessions'
    /// `idle_in_transaction_session_timeout`, so the server ends a
    /// transaction the network cut off and frees its locks. Default `"60s"`.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// TLS: `disable`, `allow`, `prefer`, `require`, `verify-ca` or
    /// `verify-full` (libpq's meanings). Overrides `sslmode` in the URL when
    /// set. Default: unset (the URL's, else `prefer`).
    pub sslmode: Option<SslMode>,
    /// PEM file with the root certificate(s) to verify the server with
    /// (`verify-ca` / `verify-full`). Default: unset (system roots).
    pub ssl_root_cert: Option<std::path::PathBuf>,
}

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The circuit breaker around every pipeline's database writes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive transient failures (connection lost or refused, timeouts,
    /// serialization failures, …) that open the breaker. Default 3.
    pub failure_threshold: u32,
    /// How long the breaker stays open the first time; doubles with each
    /// consecutive opening, with ±20 % jitter. Default `"1s"`.
    #[serde(with = "humantime_serde")]
    pub open_duration: Duration,
    /// Cap of the growing open duration. Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub max_open_duration: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            open_duration: Duration::from_secs(1),
            max_open_duration: Duration::from_secs(30),
        }
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
            sslmode: None,
            ssl_root_cert: None,
        }
    }
}

impl PostgresConfig {
    /// The URL with its password replaced by `***` (in the user info and in a
    /// `password=` query parameter), for logs and `/status`. A value that is
    /// not a URL is replaced entirely, since where its password is cannot be
    /// told.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted_url())
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("sslmode", &self.sslmode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .finish()
    }
}

/// One topic → table mapping, with its own bounded buffer and writer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Unique name, `[A-Za-z0-9_-]+`; labels metrics, logs and dead letters.
    /// Required.
    pub name: String,
    /// The topics this pipeline consumes. Required, non-empty. A topic may
    /// feed only one pipeline, so each partition's offsets have one owner.
    /// An entry starting with `^` is a regular expression: every topic it
    /// matches, now or created later, feeds this pipeline, unless another
    /// pipeline names it or an earlier pipeline's pattern matches it.
    pub topics: Vec<String>,
    /// The target table, `"table"` (schema `public`) or `"schema.table"`.
    /// Used verbatim and quoted, so case matters. `{topic}` in it makes one
    /// table per topic (the topic name with characters other than letters,
    /// digits and `_` turned into `_`). Required.
    pub table: String,
    /// Column name → where its value comes from (a JSON pointer such as
    /// `"/customer/name"`, `"/"` for the whole value, `@topic`,
    /// `@partition`, `@offset`, `@timestamp`, `@key`, `"@key/<pointer>"`,
    /// `"@header:<name>"`, `@headers`, or a constant `"=<value>"`).
    /// Required, non-empty.
    pub columns: BTreeMap<String, String>,
    /// Column name → SQL type, for `auto_create` and `auto_evolve` (e.g.
    /// `"bigint"`, `"numeric(12,2)"`, `"varchar(40)"`). A mapped column not
    /// named here gets the default of its source: `jsonb` for JSON pointers
    /// and `@headers`, `integer` for `@partition`, `bigint` for `@offset`,
    /// `timestamptz` for `@timestamp`, `text` otherwise. Default: empty.
    #[serde(default)]
    pub column_types: BTreeMap<String, String>,
    /// Create the table when it does not exist, from `columns` and
    /// `column_types`, with the `key` columns (upsert mode) as its primary
    /// key. Default `false`: a missing table is a start-up error.
    #[serde(default)]
    pub auto_create: bool,
    /// Add mapped columns the table lacks (nullable, typed as for
    /// `auto_create`). Never drops or alters a column. Default `false`: a
    /// missing column is a start-up error.
    #[serde(default)]
    pub auto_evolve: bool,
    /// Flush when the batch has this many rows. At least 1. Default 10000.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Flush when the batch holds this many bytes of records. At least 1KiB.
    /// Default `"8MiB"`.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: ByteSize,
    /// Flush a non-empty batch at least this often, so light traffic still
    /// lands promptly. Greater than zero. Default `"200ms"`.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Buffer limit in records; with `max_buffer_bytes` it bounds memory.
    /// At least `batch_size`. Default 100000.
    #[serde(default = "default_max_buffer_records")]
    pub max_buffer_records: usize,
    /// Buffer limit in bytes. At least `batch_bytes`. Default `"64MiB"`.
    #[serde(default = "default_max_buffer_bytes")]
    pub max_buffer_bytes: ByteSize,
    /// Pause this pipeline's partitions when buffer utilization (the larger
    /// of the bytes and records fractions) reaches this. Default 0.8.
    #[serde(default = "default_high_watermark")]
    pub high_watermark: f64,
    /// Resume them once utilization is at or below this; the gap to
    /// `high_watermark` stops pause/resume flapping. `0 < low < high <= 1`.
    /// Default 0.5.
    #[serde(default = "default_low_watermark")]
    pub low_watermark: f64,
    /// The flush latency adaptive flushing aims for: slower flushes make the
    /// interval longer and batches smaller, faster ones the reverse.
    /// `flush_interval` is where the interval starts. Default `"1s"`.
    #[serde(default = "default_target_latency", with = "humantime_serde")]
    pub target_latency: Duration,
    /// Lower bound of the adaptive flush interval. Default `"20ms"`.
    #[serde(default = "default_min_interval", with = "humantime_serde")]
    pub min_interval: Duration,
    /// Upper bound of the adaptive flush interval. Default `"5s"`.
    #[serde(default = "default_max_interval", with = "humantime_serde")]
    pub max_interval: Duration,
    /// What to do when the buffer is full: `block` (pause the partitions;
    /// lossless), `drop_oldest`, `drop_newest`, or `sample` (keep 1 in
    /// `sample_rate` while the buffer is above the low watermark). Default `block`.
    #[serde(default)]
    pub strategy: Strategy,
    /// For `strategy = "sample"`: keep one record in this many while the
    /// buffer is not NORMAL; at least 2. Default 10.
    #[serde(default = "default_sample_rate")]
    pub sample_rate: u32,
    /// A record whose value is larger than this is dead-lettered without
    /// being decoded, and only its first `max_record_bytes` bytes are stored
    /// (the error gives the real length), so one huge record cannot blow the
    /// buffer. At least 1KiB, at most `max_buffer_bytes`. Default `"1MiB"`.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: ByteSize,
    /// What a record that can never be written (undecodable, or refused by
    /// the table's constraints) does to the pipeline.
    #[serde(default)]
    pub errors: ErrorsConfig,
    /// `insert` appends every record as a row (COPY). `upsert` keeps one row
    /// per `key`: the record with the highest offset per key wins, and
    /// tombstones delete (see `delete_on_tombstone`). Default `insert`.
    #[serde(default)]
    pub mode: WriteMode,
    /// For `mode = "upsert"` (required there, refused otherwise): the mapped
    /// columns that identify a row. The table must have a primary key or a
    /// non-deferrable, non-partial unique index on exactly these columns.
    #[serde(default)]
    pub key: Vec<String>,
    /// For `mode = "upsert"`: a record with a null value (a Kafka tombstone)
    /// deletes the row of its key. Key columns mapped from a JSON pointer
    /// `/x` take `/x` from the Kafka key parsed as JSON; a key that is not
    /// JSON, or a JSON scalar, is the value of a single key column. When
    /// `false`, a tombstone is dead-lettered as in `insert` mode. Default `true`.
    #[serde(default)]
    pub delete_on_tombstone: Option<bool>,
    /// For `mode = "upsert"`: a mapped, non-key column holding the record's
    /// version (a number or timestamp). A row is then only replaced by a
    /// record with a greater version ("update only if newer"); within a
    /// batch the greatest version per key wins (the last one on a tie), and
    /// a tombstone still deletes whatever came before it. A record with a
    /// null version is dead-lettered. Default: unset (the last offset wins).
    #[serde(default)]
    pub version: Option<String>,
}

/// `mode`: how a pipeline's records become rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Every record is a new row (COPY into the table).
    #[default]
    Insert,
    /// One row per key, last offset wins (COPY into a temporary table, then
    /// `INSERT ... ON CONFLICT (key) DO UPDATE`); tombstones delete.
    Upsert,
}

impl WriteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::Insert => "insert",
            WriteMode::Upsert => "upsert",
        }
    }
}

/// A pipeline's handling of records that can never be written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ErrorsConfig {
    /// `all`: dead-letter the record into `sluice.dead_letters` (same
    /// transaction as the batch: exactly once) and carry on. `none`: stop
    /// the pipeline before it commits past the record: nothing more is
    /// written, its partitions pause, `/readyz` fails, an ERROR names the
    /// record. Default `all`.
    pub tolerance: Tolerance,
    /// Also produce every dead letter to this Kafka topic after its batch
    /// commits: key, value and headers as read, plus `sluice.*` error
    /// headers. At-least-once (a crash between the commit and the produce
    /// can lose or repeat one); `sluice.dead_letters` stays the record of
    /// truth. Must not be a topic any pipeline reads. Default: unset.
    pub dlq_topic: Option<String>,
}

/// `errors.tolerance`: whether a bad record is dead-lettered or stops the pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tolerance {
    /// Dead-letter and continue.
    #[default]
    All,
    /// Stop the pipeline at the first bad record.
    None,
}

/// A pipeline's answer to a full buffer. Only `block` is lossless; the
/// others shed load, and every record they drop is counted by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Pause the pipeline's partitions at the high watermark; nothing is dropped.
    #[default]
    Block,
    /// Evict the oldest buffered record (freshest wins).
    DropOldest,
    /// Discard the incoming record.
    DropNewest,
    /// Keep 1 in `sample_rate` while the buffer is above NORMAL.
    Sample,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Block => "block",
            Strategy::DropOldest => "drop_oldest",
            Strategy::DropNewest => "drop_newest",
            Strategy::Sample => "sample",
        }
    }
}

impl PipelineConfig {
    /// A pipeline with the required fields and every other field at its default.
    pub fn new(
        name: impl Into<String>,
        topics: Vec<String>,
        table: impl Into<String>,
        columns: BTreeMap<String, String>,
    ) -> Self {
        Self {
            name: name.into(),
            topics,
            table: table.into(),
            columns,
            column_types: BTreeMap::new(),
            auto_create: false,
            auto_evolve: false,
            batch_size: default_batch_size(),
            batch_bytes: default_batch_bytes(),
            flush_interval: default_flush_interval(),
            max_buffer_records: default_max_buffer_records(),
            max_buffer_bytes: default_max_buffer_bytes(),
            high_watermark: default_high_watermark(),
            low_watermark: default_low_watermark(),
            target_latency: default_target_latency(),
            min_interval: default_min_interval(),
            max_interval: default_max_interval(),
            strategy: Strategy::default(),
            sample_rate: default_sample_rate(),
            max_record_bytes: default_max_record_bytes(),
            errors: ErrorsConfig::default(),
            mode: WriteMode::default(),
            key: Vec::new(),
            delete_on_tombstone: None,
            version: None,
        }
    }

    /// Whether a tombstone deletes its key's row: upsert mode only, default on.
    pub fn deletes_on_tombstone(&self) -> bool {
        self.mode == WriteMode::Upsert && self.delete_on_tombstone.unwrap_or(true)
    }

    /// `(schema, table)`; the schema is `public` when `table` has none.
    pub fn table_ref(&self) -> (String, String) {
        match self.table.split_once('.') {
            Some((schema, table)) => (schema.to_owned(), table.to_owned()),
            None => ("public".to_owned(), self.table.clone()),
        }
    }

    /// Whether `table` holds `{topic}`: one table per topic.
    pub fn table_per_topic(&self) -> bool {
        self.table.contains(TOPIC_PLACEHOLDER)
    }

    /// `(schema, table)` for records of `topic`: `{topic}` replaced by the
    /// topic name with every character other than ASCII letters, digits and
    /// `_` turned into `_`. The error says when the name is too long for
    /// Postgres (63 bytes), which would otherwise truncate it silently.
    pub fn table_for(&self, topic: &str) -> Result<(String, String), String> {
        let clean: String = topic
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
            .collect();
        let (schema, table) = self.table_ref();
        let (schema, table) = (
            schema.replace(TOPIC_PLACEHOLDER, &clean),
            table.replace(TOPIC_PLACEHOLDER, &clean),
        );
        for part in [&schema, &table] {
            if part.len() > MAX_IDENTIFIER_BYTES {
                return Err(format!(
                    "table name {part:?} for topic {topic:?} is longer than {MAX_IDENTIFIER_BYTES} bytes"
                ));
            }
        }
        Ok((schema, table))
    }

    /// The parsed column specs, in column-name order.
    ///
    /// # Panics
    ///
    /// If a spec does not parse, which [`Config::load`] and
    /// [`Config::validate`] rule out; use
    /// [`try_column_sources`](Self::try_column_sources) for a config that
    /// has not been validated.
    pub fn column_sources(&self) -> Vec<(String, ColumnSource)> {
        match self.try_column_sources() {
            Ok(sources) => sources,
            Err(err) => panic!("column_sources on an unvalidated config: {err}"),
        }
    }

    /// The SQL type `auto_create`/`auto_evolve` give `column` (validated
    /// by [`Config::validate`]).
    pub fn column_sql_type(&self, column: &str, source: &ColumnSource) -> String {
        self.column_types
            .get(column)
            .and_then(|ty| crate::mapping::parse_sql_type(ty).ok())
            .unwrap_or_else(|| source.default_sql_type().to_owned())
    }

    /// The parsed column specs, in column-name order; the error's key is
    /// relative to the pipeline (`columns.amount`).
    pub fn try_column_sources(&self) -> Result<Vec<(String, ColumnSource)>, ConfigError> {
        self.columns
            .iter()
            .map(|(column, spec)| match ColumnSource::parse(spec) {
                Ok(source) => Ok((column.clone(), source)),
                Err(why) => Err(issue_to_error((
                    vec![key("columns"), key(column)],
                    format!("in pipeline {:?}: {why}", self.name),
                ))),
            })
            .collect()
    }
}

/// The placeholder of a per-topic table name.
pub const TOPIC_PLACEHOLDER: &str = "{topic}";

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_batch_size() -> usize {
    10_000
}
fn default_batch_bytes() -> ByteSize {
    ByteSize::mib(8)
}
fn default_flush_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_max_buffer_records() -> usize {
    100_000
}
fn default_max_buffer_bytes() -> ByteSize {
    ByteSize::mib(64)
}
fn default_high_watermark() -> f64 {
    0.8
}
fn default_low_watermark() -> f64 {
    0.5
}
fn default_target_latency() -> Duration {
    Duration::from_secs(1)
}
fn default_min_interval() -> Duration {
    Duration::from_millis(20)
}
fn default_max_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_sample_rate() -> u32 {
    10
}
fn default_max_record_bytes() -> ByteSize {
    ByteSize::mib(1)
}

const ASSIGNMENT_STRATEGY: &str = "partition.assignment.strategy";
/// Eager strategies only: see [`refused_property`].
const DEFAULT_ASSIGNMENT_STRATEGY: &str = "range,roundrobin";
/// Postgres truncates longer identifiers (NAMEDATALEN - 1), which would
/// silently point a pipeline at a different table or column.
const MAX_IDENTIFIER_BYTES: usize = 63;
/// Kafka's limit on topic names.
const MAX_TOPIC_CHARS: usize = 249;

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
        config.check().map_err(|issue| issue_with_origin(issue, &figment))?;
        Ok(config)
    }

    /// Every cross-field rule: value ranges, pipeline names, one pipeline per
    /// topic, column specs, buffer limits against batch limits, watermarks,
    /// and the librdkafka properties sluice refuses to pass through. Returns
    /// the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(issue_to_error)
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

    fn check(&self) -> Result<(), Issue> {
        self.check_kafka()?;
        self.check_postgres()?;
        self.telemetry.check()?;
        if self.pipelines.is_empty() {
            return Err((vec![key("pipelines")], "at least one pipeline is required".to_owned()));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut topics: HashMap<&str, usize> = HashMap::new();
        for (i, pipeline) in self.pipelines.iter().enumerate() {
            let at = |field: &str| vec![key("pipelines"), Seg::Index(i), key(field)];
            pipeline.check(&at)?;
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
        self.check_upsert_sources()
    }

    /// Upsert mode without a `version` lets the highest offset win, and
    /// offsets order a key's records only within one partition. A table
    /// fed from more than one topic (several topics, a pattern, two
    /// pipelines, or two topics whose names map to the same `{topic}`
    /// table) can see a key's records in any order, so an older record
    /// could overwrite a newer one. Such a table needs a `version` (update
    /// only if newer: the same outcome in any order), the same column in
    /// every pipeline writing it.
    fn check_upsert_sources(&self) -> Result<(), Issue> {
        let at = |i: usize| vec![key("pipelines"), Seg::Index(i), key("version")];
        // (schema, table) → the (pipeline, topic or pattern) feeding it, in config order.
        let mut sources: BTreeMap<(String, String), Vec<(usize, &str)>> = BTreeMap::new();
        let mut order = Vec::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            if p.mode != WriteMode::Upsert {
                continue;
            }
            for topic in &p.topics {
                let table = if !p.table_per_topic() {
                    p.table_ref()
                } else if topic.starts_with('^') {
                    // Every topic it matches gets a table of its own.
                    continue;
                } else {
                    match p.table_for(topic) {
                        Ok(table) => table,
                        // Refused when the topic's table is planned.
                        Err(_) => continue,
                    }
                };
                let feeding = sources.entry(table.clone()).or_default();
                if feeding.is_empty() {
                    order.push(table);
                }
                feeding.push((i, topic.as_str()));
            }
        }
        for table in order {
            let feeding = &sources[&table];
            if let [(_, topic)] = feeding.as_slice() {
                if !topic.starts_with('^') {
                    continue;
                }
            }
            let table = format!("{}.{}", table.0, table.1);
            let mut writers: Vec<usize> = feeding.iter().map(|(i, _)| *i).collect();
            writers.dedup();
            let why = "offsets order a key's records only within one partition, so an older record \
                       could overwrite a newer one; set `version` to a column that orders them \
                       (a row is then only replaced by a greater version)";
            if let [i] = writers.as_slice() {
                if self.pipelines[*i].version.is_none() {
                    let topics: Vec<&str> = feeding.iter().map(|(_, t)| *t).collect();
                    let from = match topics.iter().find(|t| t.starts_with('^')) {
                        Some(pattern) => format!("from the topic pattern {pattern:?} (every topic it matches)"),
                        None => format!("from more than one topic ({})", quoted_list(&topics)),
                    };
                    return Err((
                        at(*i),
                        format!(
                            "mode = \"upsert\" into table {table} {from} needs a version: {why}, \
                             or give each topic a table of its own with {TOPIC_PLACEHOLDER}"
                        ),
                    ));
                }
                continue;
            }
            let names: Vec<&str> = writers.iter().map(|i| self.pipelines[*i].name.as_str()).collect();
            let versions: Vec<Option<&String>> = writers.iter().map(|i| self.pipelines[*i].version.as_ref()).collect();
            if let Some(k) = versions.iter().position(Option::is_none) {
                return Err((
                    at(writers[k]),
                    format!(
                        "pipelines {} upsert into the same table {table}; each needs a version: {why}",
                        quoted_list(&names)
                    ),
                ));
            }
            if let Some(k) = versions.iter().position(|v| *v != versions[0]) {
                return Err((
                    at(writers[k]),
                    format!(
                        "pipelines {} upsert into the same table {table}, so they must order its rows by \
                         the same version column: {:?} has {:?}, {:?} has {:?}",
                        quoted_list(&names),
                        names[0],
                        versions[0].expect("checked above"),
                        names[k],
                        versions[k].expect("checked above"),
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_kafka(&self) -> Result<(), Issue> {
        let kafka = &self.kafka;
        let at = |field: &str| vec![key("kafka"), key(field)];
        if kafka.brokers.split(',').any(|b| b.trim().is_empty()) {
            return Err((
                at("brokers"),
                format!("expected comma-separated host:port entries, found {:?}", kafka.brokers),
            ));
        }
        if kafka.group_id.trim().is_empty() {
            return Err((at("group_id"), "must not be empty".to_owned()));
        }
        // librdkafka's range for session.timeout.ms.
        let ms = kafka.session_timeout.as_millis();
        if !(1..=3_600_000).contains(&ms) {
            return Err((
                at("session_timeout"),
                format!(
                    "expected between 1ms and 1h, found {}",
                    humantime::format_duration(kafka.session_timeout)
                ),
            ));
        }
        if kafka.prefetch_bytes < ByteSize::mib(4) {
            return Err((
                at("prefetch_bytes"),
                format!(
                    "must be at least 4MiB (librdkafka needs a 1MB fetch), found {}",
                    kafka.prefetch_bytes
                ),
            ));
        }
        for (name, value) in &kafka.properties {
            let path = vec![key("kafka"), key("properties"), key(name)];
            if name.trim().is_empty() {
                return Err((path, "property name must not be empty".to_owned()));
            }
            if let Some(why) = refused_property(name, value) {
                return Err((path, why));
            }
        }
        Ok(())
    }

    fn check_postgres(&self) -> Result<(), Issue> {
        let pg = &self.postgres;
        let at = |field: &str| vec![key("postgres"), key(field)];
        let scheme = pg.url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
            // The value is not echoed: it may hold a password.
            return Err((
                at("url"),
                "expected a URL such as postgres://user:password@host:5432/dbname".to_owned(),
            ));
        }
        if pg.pool_size == 0 {
            return Err((at("pool_size"), "must be at least 1".to_owned()));
        }
        if pg.connect_timeout.is_zero() {
            return Err((at("connect_timeout"), "must be greater than zero".to_owned()));
        }
        if pg.statement_timeout.is_zero() {
            return Err((at("statement_timeout"), "must be greater than zero".to_owned()));
        }
        if pg.write_timeout.is_zero() {
            return Err((at("write_timeout"), "must be greater than zero".to_owned()));
        }
        if let Some(cert) = &pg.ssl_root_cert {
            if !cert.is_file() {
                return Err((
                    at("ssl_root_cert"),
                    format!("{} is not a readable file", cert.display()),
                ));
            }
        }
        let b = &self.breaker;
        let at = |field: &str| vec![key("breaker"), key(field)];
        if b.failure_threshold == 0 {
            return Err((at("failure_threshold"), "must be at least 1".to_owned()));
        }
        if b.open_duration.is_zero() {
            return Err((at("open_duration"), "must be greater than zero".to_owned()));
        }
        if b.max_open_duration < b.open_duration {
            return Err((
                at("max_open_duration"),
                "must be at least breaker.open_duration".to_owned(),
            ));
        }
        Ok(())
    }
}

impl PipelineConfig {
    /// `mode`, `key` and `delete_on_tombstone` agree with each other and with `columns`.
    fn check_mode(&self, at: &dyn Fn(&str) -> Vec<Seg>) -> Result<(), Issue> {
        match self.mode {
            WriteMode::Insert => {
                if !self.key.is_empty() {
                    return Err((at("key"), "is only used with mode = \"upsert\"".to_owned()));
                }
                if self.delete_on_tombstone.is_some() {
                    return Err((
                        at("delete_on_tombstone"),
                        "is only used with mode = \"upsert\"".to_owned(),
                    ));
                }
                if self.version.is_some() {
                    return Err((at("version"), "is only used with mode = \"upsert\"".to_owned()));
                }
            }
            WriteMode::Upsert => {
                if self.key.is_empty() {
                    return Err((
                        at("key"),
                        "mode = \"upsert\" needs the key columns, e.g. key = [\"id\"]".to_owned(),
                    ));
                }
                for (k, column) in self.key.iter().enumerate() {
                    let mut path = at("key");
                    path.push(Seg::Index(k));
                    if !self.columns.contains_key(column) {
                        return Err((
                            path,
                            format!("{column:?} is not a mapped column (a key column must be in `columns`)"),
                        ));
                    }
                    if self.key[..k].contains(column) {
                        return Err((path, format!("{column:?} is listed twice")));
                    }
                }
                if let Some(version) = &self.version {
                    if !self.columns.contains_key(version) {
                        return Err((
                            at("version"),
                            format!("{version:?} is not a mapped column (the version column must be in `columns`)"),
                        ));
                    }
                    if self.key.contains(version) {
                        return Err((
                            at("version"),
                            format!("{version:?} is a key column; the version must not be"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn check(&self, at: &dyn Fn(&str) -> Vec<Seg>) -> Result<(), Issue> {
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err((
                at("name"),
                format!("expected letters, digits, '_' or '-', found {:?}", self.name),
            ));
        }
        if self.topics.is_empty() {
            return Err((at("topics"), "at least one topic is required".to_owned()));
        }
        for (t, topic) in self.topics.iter().enumerate() {
            let mut path = at("topics");
            path.push(Seg::Index(t));
            // librdkafka reads a name starting with '^' as a regex subscription.
            if topic.starts_with('^') {
                if let Err(err) = regex::Regex::new(topic) {
                    return Err((path, format!("not a valid regular expression: {err}")));
                }
                continue;
            }
            let legal = topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !legal || topic.is_empty() || topic.len() > MAX_TOPIC_CHARS || topic == "." || topic == ".." {
                return Err((
                    path,
                    format!(
                        "expected a Kafka topic name (1-249 of letters, digits, '.', '_', '-') or a pattern \
                         \"^regex\", found {topic:?}"
                    ),
                ));
            }
        }
        if self.table.replace(TOPIC_PLACEHOLDER, "t").contains(['{', '}']) {
            return Err((
                at("table"),
                format!(
                    "the only placeholder a table name may hold is {TOPIC_PLACEHOLDER}, found {:?}",
                    self.table
                ),
            ));
        }
        let template = self.table.replace(TOPIC_PLACEHOLDER, "t");
        let parts: Vec<&str> = template.split('.').collect();
        if parts.len() > 2
            || parts
                .iter()
                .any(|p| p.trim().is_empty() || p.len() > MAX_IDENTIFIER_BYTES || p.contains('\0'))
        {
            return Err((
                at("table"),
                format!(
                    "expected \"table\" or \"schema.table\" (each part 1-{MAX_IDENTIFIER_BYTES} bytes), found {:?}",
                    self.table
                ),
            ));
        }
        if self.columns.is_empty() {
            return Err((at("columns"), "at least one column is required".to_owned()));
        }
        for (column, spec) in &self.columns {
            let mut path = at("columns");
            path.push(key(column));
            if column.trim().is_empty() || column.len() > MAX_IDENTIFIER_BYTES || column.contains('\0') {
                return Err((
                    path,
                    format!("expected a column name of 1-{MAX_IDENTIFIER_BYTES} bytes, found {column:?}"),
                ));
            }
            if let Err(why) = ColumnSource::parse(spec) {
                return Err((path, why));
            }
        }
        for (column, ty) in &self.column_types {
            let mut path = at("column_types");
            path.push(key(column));
            if !self.columns.contains_key(column) {
                return Err((
                    path,
                    format!("{column:?} is not a mapped column (it must be in `columns`)"),
                ));
            }
            if let Err(why) = crate::mapping::parse_sql_type(ty) {
                return Err((path, why));
            }
        }
        self.check_mode(at)?;
        if self.batch_size == 0 {
            return Err((at("batch_size"), "must be at least 1".to_owned()));
        }
        if self.sample_rate < 2 {
            return Err((
                at("sample_rate"),
                format!("must be at least 2 (keep 1 in sample_rate), found {}", self.sample_rate),
            ));
        }
        if self.batch_bytes < ByteSize::kib(1) {
            return Err((
                at("batch_bytes"),
                format!("must be at least 1KiB, found {}", self.batch_bytes),
            ));
        }
        if self.flush_interval.is_zero() {
            return Err((at("flush_interval"), "must be greater than zero".to_owned()));
        }
        if self.target_latency.is_zero() {
            return Err((at("target_latency"), "must be greater than zero".to_owned()));
        }
        if self.min_interval.is_zero() || self.min_interval > self.max_interval {
            return Err((
                at("min_interval"),
                format!(
                    "must be greater than zero and at most max_interval ({}), found {}",
                    humantime::format_duration(self.max_interval),
                    humantime::format_duration(self.min_interval)
                ),
            ));
        }
        // The buffer must hold a full batch, or a size-triggered flush could
        // never fire and the pipeline would pause while under its batch limit.
        if self.max_buffer_records < self.batch_size {
            return Err((
                at("max_buffer_records"),
                format!(
                    "must be at least batch_size ({}), found {}",
                    self.batch_size, self.max_buffer_records
                ),
            ));
        }
        if self.max_buffer_bytes < self.batch_bytes {
            return Err((
                at("max_buffer_bytes"),
                format!(
                    "must be at least batch_bytes ({}), found {}",
                    self.batch_bytes, self.max_buffer_bytes
                ),
            ));
        }
        // A record's entry (its row, or its dead letter: value, key and
        // headers up to max_record_bytes each, or a row plus its raw copy)
        // must fit in half the buffer, whatever the escaping; see `Entry::fit`.
        if self.max_record_bytes < ByteSize::kib(1) || self.max_record_bytes.0 > self.max_buffer_bytes.0 / 4 {
            return Err((
                at("max_record_bytes"),
                format!(
                    "must be at least 1KiB and at most a quarter of max_buffer_bytes ({}), found {}",
                    self.max_buffer_bytes, self.max_record_bytes
                ),
            ));
        }
        if let Some(topic) = &self.errors.dlq_topic {
            let legal = topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !legal || topic.is_empty() || topic.len() > MAX_TOPIC_CHARS || topic == "." || topic == ".." {
                let mut path = at("errors");
                path.push(key("dlq_topic"));
                return Err((
                    path,
                    format!("expected a Kafka topic name (1-249 of letters, digits, '.', '_', '-'), found {topic:?}"),
                ));
            }
        }
        // TOML and the environment can spell NaN, which passes no comparison.
        let (low, high) = (self.low_watermark, self.high_watermark);
        if high.is_nan() || high <= 0.0 || high > 1.0 {
            return Err((
                at("high_watermark"),
                format!("expected a fraction in (0, 1], found {high}"),
            ));
        }
        if low.is_nan() || low <= 0.0 {
            return Err((at("low_watermark"), format!("must be greater than 0, found {low}")));
        }
        if low >= high {
            return Err((
                at("low_watermark"),
                format!(
                    "must be below high_watermark ({high}) so that resuming does not immediately pause again, \
                     found {low}"
                ),
            ));
        }
        Ok(())
    }
}

/// Why sluice refuses to pass a librdkafka property through, if it does.
/// Other properties (security, SASL, SSL, `client.id`, statistics, fetch
/// timing, `isolation.level`, `auto.commit.interval.ms` — harmless, since
/// auto-commit is off) pass through unchanged.
fn refused_property(name: &str, value: &str) -> Option<String> {
    let name = name.trim().to_ascii_lowercase();
    let value = value.trim().to_ascii_lowercase();
    let why = match name.as_str() {
        // `auto.commit.enable` is librdkafka's legacy topic-level alias.
        "enable.auto.commit" | "auto.commit.enable" => {
            "sluice commits offsets itself, after each Postgres transaction that makes the records durable; remove it"
        }
        "enable.auto.offset.store" => {
            "sluice owns offset storage (positions live in Postgres, in sluice.offsets, committed with the \
             rows); remove it"
        }
        "group.id" => "sluice sets it; use kafka.group_id instead",
        "bootstrap.servers" | "metadata.broker.list" => "sluice sets it; use kafka.brokers instead",
        "auto.offset.reset" => {
            "sluice sets it; use kafka.auto_offset_reset (where a partition with no stored offset starts) \
             and kafka.on_offset_out_of_range (what a stored offset outside the log does) instead"
        }
        "session.timeout.ms" => "sluice sets it; use kafka.session_timeout instead (a duration such as \"10s\")",
        "partition.assignment.strategy" if value.contains("cooperative") => {
            "sluice relies on the eager rebalance protocol: every rebalance revokes and reassigns all \
             partitions, so positions are re-read from Postgres; use \"range\" and/or \"roundrobin\" \
             (the default is \"range,roundrobin\")"
        }
        "group.protocol" if value == "consumer" => {
            "the \"consumer\" protocol (KIP-848) rebalances incrementally, but sluice relies on the eager \
             protocol: every rebalance revokes and reassigns all partitions, so positions are re-read from \
             Postgres; remove it or use \"classic\""
        }
        "enable.partition.eof" => "sluice's consumer loop does not handle partition EOF events; remove it",
        // Prefetch is part of the memory budget (DESIGN: bounded memory); it
        // is to be sized from the pipeline buffer limits, never set apart from
        // them, so one knob cannot undo the bound.
        "queued.max.messages.kbytes" | "fetch.max.bytes" | "max.partition.fetch.bytes" | "queued.min.messages" => {
            "sluice derives librdkafka's prefetch limits from kafka.prefetch_bytes so that resident memory \
             stays bounded; set kafka.prefetch_bytes instead"
        }
        _ => return None,
    };
    Some(format!("refused: {why}"))
}

/// `"a", "b"`, for messages.
fn quoted_list(items: &[&str]) -> String {
    items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ")
}

fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "ssl.key.pem",
        "ssl_key",
        "sasl.oauthbearer.config",
    ]
    .iter()
    .any(|s| name.contains(s))
}

fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return "***".to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end);
    // The user info ends at the last '@' of the authority, but a password
    // with an unencoded '/', '?' or '@' makes "the authority" ambiguous. The
    // last '@' anywhere is never before the real one, so the redacted span
    // always covers the password; an '@' in the query only hides too much.
    let at = rest.rfind('@');
    let (userinfo, after) = match at {
        Some(at) => (Some(&rest[..at]), &rest[at..]),
        None => (None, rest),
    };
    let mut out = scheme.to_owned();
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            Some((user, _password)) => {
                out.push_str(user);
                out.push_str(":***");
            }
            None => out.push_str(userinfo),
        }
    }
    match after.split_once('?') {
        Some((authority_path, query)) => {
            out.push_str(authority_path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                    _ => param.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(after),
    }
    out
}

/// A string, also accepting a number or boolean as its text: an environment
/// variable is always text, but `SLUICE_KAFKA__GROUP_ID=42` reaches serde as
/// an integer.
fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    deserializer.deserialize_any(LenientString)
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
