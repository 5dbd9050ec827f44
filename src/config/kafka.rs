//! `[kafka]`: the cluster, the consumer group and the librdkafka
//! consumer properties (the passthrough ones, the ones sluice owns and the
//! ones it refuses).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::error::{key, Issue};
#[cfg(doc)]
use super::Config;
use super::{lenient_properties, lenient_string, ByteSize};

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

/// How a rebalance moves partitions between the members of the group
/// (librdkafka's `partition.assignment.strategy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RebalanceProtocol {
    /// Incremental cooperative rebalancing (`cooperative-sticky`): a
    /// rebalance revokes only the partitions that move; the others keep
    /// flowing through it.
    #[default]
    Cooperative,
    /// Eager rebalancing (`range,roundrobin`, or the eager strategies of the
    /// `partition.assignment.strategy` property): every rebalance revokes
    /// every partition of every member, then assigns afresh.
    Eager,
}

impl RebalanceProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cooperative => "cooperative",
            Self::Eager => "eager",
        }
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
    /// Static group membership (librdkafka `group.instance.id`, KIP-345): a
    /// name unique to this member within the group and stable across its
    /// restarts, such as the pod name. A member that comes back under it
    /// within `session_timeout` takes its partitions back without a
    /// rebalance; a member that stops does not leave the group, so its
    /// partitions wait for it (or for `session_timeout`). Default none
    /// (dynamic membership).
    pub instance_id: Option<String>,
    /// `"cooperative"` (incremental: a rebalance revokes only the partitions
    /// that move) or `"eager"` (every rebalance revokes everything). All
    /// members of a group must use the same one. Default `"cooperative"`.
    pub rebalance_protocol: RebalanceProtocol,
    /// How long a revoke waits for the writers to commit what they hold of
    /// the revoked partitions before forgetting it (the next owner then
    /// re-reads it). Shorter than `session_timeout`. Default: half of
    /// `session_timeout`.
    #[serde(with = "humantime_serde")]
    pub revoke_timeout: Option<Duration>,
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
            instance_id: None,
            rebalance_protocol: RebalanceProtocol::Cooperative,
            revoke_timeout: None,
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
        // The protocol decides; a user-chosen eager strategy is kept under
        // the eager protocol (validation refuses one that contradicts it).
        let strategy = match (self.rebalance_protocol, props.get(ASSIGNMENT_STRATEGY)) {
            (RebalanceProtocol::Cooperative, _) => COOPERATIVE_STRATEGY.to_owned(),
            (RebalanceProtocol::Eager, Some(s)) if !s.to_ascii_lowercase().contains("cooperative") => s.clone(),
            (RebalanceProtocol::Eager, _) => EAGER_STRATEGY.to_owned(),
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
        if let Some(id) = &self.instance_id {
            props.insert("group.instance.id".to_owned(), id.clone());
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
            .field("instance_id", &self.instance_id)
            .field("rebalance_protocol", &self.rebalance_protocol)
            .field("revoke_timeout", &self.revoke_timeout)
            .field("properties", &self.redacted_properties())
            .field("prefetch_bytes", &self.prefetch_bytes)
            .finish()
    }
}

const ASSIGNMENT_STRATEGY: &str = "partition.assignment.strategy";
/// The strategy of `rebalance_protocol = "eager"` unless the property names others.
const EAGER_STRATEGY: &str = "range,roundrobin";
/// librdkafka's one cooperative strategy.
const COOPERATIVE_STRATEGY: &str = "cooperative-sticky";

impl KafkaConfig {
    /// How long a revoke waits for the writers (see [`KafkaConfig::revoke_timeout`]).
    pub fn revoke_timeout(&self) -> Duration {
        self.revoke_timeout.unwrap_or(self.session_timeout / 2)
    }
}

impl KafkaConfig {
    pub(super) fn validate(&self) -> Result<(), Issue> {
        let kafka = self;
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
        if kafka.instance_id.as_ref().is_some_and(|id| id.trim().is_empty()) {
            return Err((
                at("instance_id"),
                "must not be empty (leave it out for dynamic membership)".to_owned(),
            ));
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
        if let Some(revoke) = kafka.revoke_timeout {
            if revoke.is_zero() || revoke >= kafka.session_timeout {
                return Err((
                    at("revoke_timeout"),
                    format!(
                        "expected more than 0 and less than kafka.session_timeout ({}), found {}: a member \
                         flushing a revoke longer than that holds up the rebalance longer than a dead member would",
                        humantime::format_duration(kafka.session_timeout),
                        humantime::format_duration(revoke)
                    ),
                ));
            }
        }
        if let Some(ms) = kafka
            .properties
            .get("max.poll.interval.ms")
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            let revoke = kafka.revoke_timeout();
            if revoke.as_millis() >= u128::from(ms) {
                return Err((
                    vec![key("kafka"), key("properties"), key("max.poll.interval.ms")],
                    format!(
                        "must be more than kafka.revoke_timeout ({}), found {ms}: a revoke flushes inside \
                         the poll loop, and a member that does not poll for that long leaves the group",
                        humantime::format_duration(revoke)
                    ),
                ));
            }
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
            if name.trim().eq_ignore_ascii_case(ASSIGNMENT_STRATEGY) {
                if let Some(why) = contradicts_protocol(kafka.rebalance_protocol, value) {
                    return Err((path, why));
                }
            }
        }
        Ok(())
    }
}

/// Why a `partition.assignment.strategy` does not go with `protocol`, if
/// it does not (librdkafka cannot mix cooperative and eager strategies).
fn contradicts_protocol(protocol: RebalanceProtocol, value: &str) -> Option<String> {
    let strategies: Vec<String> = value.split(',').map(|s| s.trim().to_ascii_lowercase()).collect();
    let cooperative = strategies.iter().filter(|s| s.contains("cooperative")).count();
    match protocol {
        RebalanceProtocol::Cooperative if cooperative != strategies.len() => Some(format!(
            "refused: kafka.rebalance_protocol is \"cooperative\" (the default), whose strategy is \
             {COOPERATIVE_STRATEGY:?}; for {value:?} set kafka.rebalance_protocol = \"eager\", or remove the property"
        )),
        RebalanceProtocol::Eager if cooperative > 0 => Some(format!(
            "refused: {value:?} is a cooperative strategy, but kafka.rebalance_protocol is \"eager\"; \
             set kafka.rebalance_protocol = \"cooperative\" instead, or use \"range\" and/or \"roundrobin\""
        )),
        _ => None,
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
        "group.instance.id" => "sluice sets it; use kafka.instance_id instead",
        "bootstrap.servers" | "metadata.broker.list" => "sluice sets it; use kafka.brokers instead",
        "auto.offset.reset" => {
            "sluice sets it; use kafka.auto_offset_reset (where a partition with no stored offset starts) \
             and kafka.on_offset_out_of_range (what a stored offset outside the log does) instead"
        }
        "session.timeout.ms" => "sluice sets it; use kafka.session_timeout instead (a duration such as \"10s\")",
        "group.protocol" if value == "consumer" => {
            "sluice does not support the \"consumer\" group protocol (KIP-848) yet; remove it or use \
             \"classic\" (kafka.rebalance_protocol chooses cooperative or eager rebalancing within it)"
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

pub(super) fn is_secret_property(name: &str) -> bool {
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
