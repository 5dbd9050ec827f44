//! `[[pipelines]]`: one topic → table mapping each, with its buffer,
//! flush, write mode and error handling settings, their per-pipeline
//! validation, and the rule on upsert tables fed from several topics.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::error::{issue_to_error, key, Issue, Seg};
use super::{ByteSize, Config, ConfigError};
use crate::format::{Envelope, Format};
use crate::mapping::ColumnSource;

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
    /// Required, non-empty — except with `value_format = "avro"`, no
    /// envelope, one named topic and one table, where omitting it maps
    /// every top-level field of the topic's latest value schema
    /// (`<topic>-value`) to the column of the same name, typed from the
    /// schema for `auto_create`/`auto_evolve` (`column_types` overrides).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Column name → SQL type, for `auto_create` and `auto_evolve` (e.g.
    /// `"bigint"`, `"numeric(12,2)"`, `"varchar(40)"`). A mapped column not
    /// named here gets the default of its source: `jsonb` for JSON pointers
    /// and `@headers`, `integer` for `@partition`, `bigint` for `@offset`,
    /// `timestamptz` for `@timestamp`, `text` otherwise. Default: empty.
    #[serde(default)]
    pub column_types: BTreeMap<String, String>,
    /// Set when planning filled `columns` in from the value schema (not a
    /// config key): the pipeline keeps [`columns_from_schema`](Self::columns_from_schema).
    #[serde(skip)]
    pub schema_filled: bool,
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
    /// Where the adaptive flush interval starts (kept within `min_interval`
    /// ..= `max_interval`; a partial batch is flushed an interval after its
    /// oldest record arrived at the latest, sooner once the consumer has
    /// handed it over). Greater than zero. Default `"5ms"` (`min_interval`'s
    /// default): from the first record on, light traffic lands promptly;
    /// slow flushes lengthen the interval.
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
    /// Lower bound of the adaptive flush interval. Default `"5ms"`: at light
    /// load a record waits at most this long in the buffer, none after a
    /// quiet spell (up to 200 transactions a second per writer lane while
    /// records trickle in).
    #[serde(default = "default_min_interval", with = "humantime_serde")]
    pub min_interval: Duration,
    /// Upper bound of the adaptive flush interval. Default `"5s"`.
    #[serde(default = "default_max_interval", with = "humantime_serde")]
    pub max_interval: Duration,
    /// Flush transactions in flight at once, each on its own connection and
    /// over its own share of the pipeline's partitions (a topic's partitions
    /// are dealt to the writers in turn), so a partition still has one batch
    /// in flight and commits in offset order. 1 to 64. Default 2.
    #[serde(default = "default_writers")]
    pub writers: usize,
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
    /// How record values are encoded: `json` (schemaless JSON), or, in the
    /// Confluent wire format with the writer's schema in the Schema
    /// Registry, `avro`, `protobuf` or `json_schema`. Default `json`.
    #[serde(default)]
    pub value_format: Format,
    /// How record keys are encoded: as `value_format`, or `string` (UTF-8
    /// text) or `bytes`. `"@key/<pointer>"` needs a JSON-shaped key (not
    /// `string` or `bytes`). Default `json`.
    #[serde(default)]
    pub key_format: Format,
    /// `none`: the value is the row. `debezium`: the value is a Debezium
    /// change event (JSON with or without its Connect schema, or Avro):
    /// `c`, `r` and `u` upsert `after`, `d` deletes by `before` or the key,
    /// the tombstone after a delete is skipped, and `"@source/<pointer>"`
    /// columns read the event's `source` block. Needs `mode = "upsert"`.
    /// Default `none`.
    #[serde(default)]
    pub envelope: Envelope,
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

/// A table name made from a topic name (`{topic}`) that Postgres would
/// truncate silently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("table name {name:?} for topic {topic:?} is longer than {MAX_IDENTIFIER_BYTES} bytes")]
pub struct TableNameTooLong {
    pub name: String,
    pub topic: String,
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
            schema_filled: false,
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
            writers: default_writers(),
            strategy: Strategy::default(),
            sample_rate: default_sample_rate(),
            max_record_bytes: default_max_record_bytes(),
            errors: ErrorsConfig::default(),
            mode: WriteMode::default(),
            key: Vec::new(),
            delete_on_tombstone: None,
            version: None,
            value_format: Format::Json,
            key_format: Format::Json,
            envelope: Envelope::None,
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

    /// `columns` is omitted, to be taken from the latest value schema of
    /// the pipeline's one topic (`<topic>-value`) when it is planned: an
    /// Avro, Protobuf or JSON Schema one, or a Debezium change event's Avro
    /// schema (its row's fields).
    pub fn columns_from_schema(&self) -> bool {
        let schema = match self.envelope {
            Envelope::None => self.value_format.uses_registry(),
            Envelope::Debezium => self.value_format == Format::Avro,
        };
        (self.columns.is_empty() || self.schema_filled)
            && schema
            && matches!(self.topics.as_slice(), [t] if !t.starts_with('^'))
            && !self.table_per_topic()
    }

    /// `(schema, table)` for records of `topic`: `{topic}` replaced by the
    /// topic name with every character other than ASCII letters, digits and
    /// `_` turned into `_`. The error says when the name is too long for
    /// Postgres (63 bytes), which would otherwise truncate it silently.
    pub fn table_for(&self, topic: &str) -> Result<(String, String), TableNameTooLong> {
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
                return Err(TableNameTooLong {
                    name: part.clone(),
                    topic: topic.to_owned(),
                });
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

fn default_batch_size() -> usize {
    10_000
}
fn default_batch_bytes() -> ByteSize {
    ByteSize::mib(8)
}
fn default_flush_interval() -> Duration {
    Duration::from_millis(5)
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
    Duration::from_millis(5)
}
fn default_max_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_writers() -> usize {
    2
}
fn default_sample_rate() -> u32 {
    10
}
fn default_max_record_bytes() -> ByteSize {
    ByteSize::mib(1)
}

/// Postgres truncates longer identifiers (NAMEDATALEN - 1), which would
/// silently point a pipeline at a different table or column.
const MAX_IDENTIFIER_BYTES: usize = 63;
/// Kafka's limit on topic names.
const MAX_TOPIC_CHARS: usize = 249;

impl Config {
    /// Upsert mode without a `version` lets the highest offset win, and
    /// offsets order a key's records only within one partition. A table
    /// fed from more than one topic (several topics, a pattern, two
    /// pipelines, or two topics whose names map to the same `{topic}`
    /// table) can see a key's records in any order, so an older record
    /// could overwrite a newer one. Such a table needs a `version` (update
    /// only if newer: the same outcome in any order), the same column in
    /// every pipeline writing it.
    pub(super) fn validate_upsert_sources(&self) -> Result<(), Issue> {
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
}

impl PipelineConfig {
    /// `mode`, `key` and `delete_on_tombstone` agree with each other and with `columns`.
    fn validate_mode(&self, at: &dyn Fn(&str) -> Vec<Seg>) -> Result<(), Issue> {
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
                    // With columns from the schema, planning checks the key is a field.
                    if !self.columns.contains_key(column) && !self.columns_from_schema() {
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
                    if !self.columns.contains_key(version) && !self.columns_from_schema() {
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

    /// `value_format`, `key_format` and `envelope` agree with each other,
    /// with `mode` and with the column sources.
    fn validate_format(&self, at: &dyn Fn(&str) -> Vec<Seg>) -> Result<(), Issue> {
        if matches!(self.value_format, Format::String | Format::Bytes) {
            return Err((
                at("value_format"),
                format!(
                    "expected one of json, avro, protobuf, json_schema (string and bytes are for keys), found {:?}",
                    self.value_format.as_str()
                ),
            ));
        }
        // Specs that do not parse were refused by `validate` already.
        for (column, source) in self
            .columns
            .iter()
            .filter_map(|(c, spec)| Some((c, ColumnSource::parse(spec).ok()?)))
        {
            let mut path = at("columns");
            path.push(key(column));
            if matches!(source, ColumnSource::KeyPointer(_)) && !self.key_format.is_json() {
                return Err((
                    path,
                    format!(
                        "a JSON pointer into the key needs a JSON-shaped key, but key_format = {:?}",
                        self.key_format.as_str()
                    ),
                ));
            }
            if matches!(source, ColumnSource::Source(_)) && self.envelope != Envelope::Debezium {
                return Err((path, "@source columns need envelope = \"debezium\"".to_owned()));
            }
        }
        if self.envelope == Envelope::Debezium {
            if self.mode != WriteMode::Upsert {
                return Err((
                    at("envelope"),
                    "envelope = \"debezium\" applies changes by key: it needs mode = \"upsert\" and key".to_owned(),
                ));
            }
            if self.delete_on_tombstone == Some(false) {
                return Err((
                    at("delete_on_tombstone"),
                    "must not be false with envelope = \"debezium\": a delete event deletes".to_owned(),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn validate(&self, at: &dyn Fn(&str) -> Vec<Seg>) -> Result<(), Issue> {
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
        if self.columns.is_empty() && !self.columns_from_schema() {
            return Err((
                at("columns"),
                "at least one column is required (they may be omitted only with value_format = \"avro\", \
                 \"protobuf\" or \"json_schema\" (with envelope = \"debezium\": \"avro\"), one named topic and one \
                 table: each top-level field of the topic's latest value schema then becomes a column of the same \
                 name)"
                    .to_owned(),
            ));
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
                return Err((path, why.to_string()));
            }
        }
        for (column, ty) in &self.column_types {
            let mut path = at("column_types");
            path.push(key(column));
            // With columns from the schema, a type here overrides the schema's.
            if !self.columns.contains_key(column) && !self.columns_from_schema() {
                return Err((
                    path,
                    format!("{column:?} is not a mapped column (it must be in `columns`)"),
                ));
            }
            if let Err(why) = crate::mapping::parse_sql_type(ty) {
                return Err((path, why.to_string()));
            }
        }
        self.validate_mode(at)?;
        self.validate_format(at)?;
        if self.batch_size == 0 {
            return Err((at("batch_size"), "must be at least 1".to_owned()));
        }
        if !(1..=64).contains(&self.writers) {
            return Err((
                at("writers"),
                format!("must be between 1 and 64, found {}", self.writers),
            ));
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

/// `"a", "b"`, for messages.
fn quoted_list(items: &[&str]) -> String {
    items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ")
}
