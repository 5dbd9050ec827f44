//! The metric set: names, units, labels, and the instruments behind them.
//!
//! Instrument names are the final Prometheus names (`_total` on counters,
//! the unit in the name), so OTLP backends and `/metrics` show the same
//! names; Prometheus' own OTLP translation keeps them as they are.
//!
//! Counters and gauges are observable: their callbacks read the
//! pipelines' atomics and buffers when a reader collects (every export and
//! every scrape), never per record. The histograms and the flush counter
//! are recorded once per flush by [`super::FlushEvent`].

use opentelemetry::metrics::{Counter, Histogram, Meter};

/// How a metric is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct MetricInfo {
    pub name: &'static str,
    pub kind: Kind,
    /// UCUM, as OpenTelemetry wants it: `s`, `By`, `1`, `{record}`.
    pub unit: &'static str,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

macro_rules! metric {
    ($id:ident, $name:literal, $kind:ident, $unit:literal, [$($label:literal),*], $help:literal) => {
        pub const $id: MetricInfo = MetricInfo {
            name: $name,
            kind: Kind::$kind,
            unit: $unit,
            labels: &[$($label),*],
            help: $help,
        };
    };
}

metric!(
    CONSUMED,
    "sluice_records_consumed_total",
    Counter,
    "{record}",
    ["pipeline"],
    "Records read from Kafka and accepted into the pipeline (buffered or deliberately dropped)."
);
metric!(
    WRITTEN,
    "sluice_records_written_total",
    Counter,
    "{record}",
    ["pipeline", "table"],
    "Rows committed to Postgres."
);
metric!(DROPPED, "sluice_records_dropped_total", Counter, "{record}", ["pipeline", "reason"],
    "Records whose offsets advanced without a row: shed by the pipeline's strategy (reason = drop_oldest, drop_newest, sample). Undecodable records are dead-lettered, not dropped.");
metric!(
    DEAD_LETTERED,
    "sluice_records_dead_lettered_total",
    Counter,
    "{record}",
    ["pipeline"],
    "Records written to the dead-letter store."
);
metric!(
    DLQ_PRODUCE_FAILURES,
    "sluice_dlq_produce_failures_total",
    Counter,
    "{flush}",
    ["pipeline"],
    "Flush attempts that failed producing dead letters to errors.dlq_topic (rolled back and retried; not a database failure)."
);
metric!(
    FLUSHES,
    "sluice_flushes_total",
    Counter,
    "{flush}",
    ["pipeline", "outcome"],
    "Flush attempts by outcome (committed, failed)."
);
metric!(
    FENCED,
    "sluice_fenced_partitions_total",
    Counter,
    "{partition}",
    ["pipeline"],
    "Partitions whose flush was fenced (another owner moved the stored offset) and re-read."
);
metric!(
    GAPS,
    "sluice_offset_gaps_total",
    Counter,
    "{partition}",
    ["pipeline"],
    "Partitions left out of a flush because their records did not start at the stored offset (it would have committed a hole) and re-read instead. Always 0 unless sluice has a bug."
);
metric!(
    OUT_OF_RANGE,
    "sluice_offset_out_of_range_total",
    Counter,
    "{partition}",
    ["pipeline"],
    "Partitions whose position (the stored offset) was outside the log on the broker, below its start or above its end; kafka.on_offset_out_of_range says what followed."
);
metric!(
    BUFFER_RECORDS,
    "sluice_buffer_records",
    Gauge,
    "{record}",
    ["pipeline"],
    "Records held by the pipeline buffer, in flight included."
);
metric!(
    BUFFER_BYTES,
    "sluice_buffer_bytes",
    Gauge,
    "By",
    ["pipeline"],
    "Bytes held by the pipeline buffer, in flight and bookkeeping included."
);
metric!(
    BUFFER_UTILIZATION,
    "sluice_buffer_utilization",
    Gauge,
    "1",
    ["pipeline"],
    "max(bytes / max_buffer_bytes, records / max_buffer_records)."
);
metric!(
    BACKPRESSURE_STATE,
    "sluice_backpressure_state",
    Gauge,
    "1",
    ["pipeline", "state"],
    "Backpressure state: 0 NORMAL, 1 ELEVATED, 2 CRITICAL, 3 BLOCKED, 4 DRAINING (the state label names it)."
);
metric!(
    PAUSED_PARTITIONS,
    "sluice_paused_partitions",
    Gauge,
    "{partition}",
    ["pipeline"],
    "Partitions of the pipeline paused for backpressure or shutdown."
);
metric!(
    ASSIGNED_PARTITIONS,
    "sluice_assigned_partitions",
    Gauge,
    "{partition}",
    ["pipeline"],
    "Partitions of the pipeline assigned to this instance."
);
metric!(
    FLUSH_DURATION,
    "sluice_flush_duration_seconds",
    Histogram,
    "s",
    ["pipeline", "outcome"],
    "Duration of one flush transaction (offsets, COPY, commit)."
);
metric!(
    BATCH_ROWS,
    "sluice_batch_rows",
    Histogram,
    "{row}",
    ["pipeline"],
    "Rows per committed flush."
);
metric!(
    FLUSH_INTERVAL,
    "sluice_flush_interval_seconds",
    Gauge,
    "s",
    ["pipeline"],
    "The flush interval in force."
);
metric!(
    BREAKER_STATE,
    "sluice_breaker_state",
    Gauge,
    "1",
    ["pipeline", "state"],
    "Database circuit breaker: 0 CLOSED, 1 HALF_OPEN, 2 OPEN (the state label names it)."
);
metric!(
    CONSUMER_LAG,
    "sluice_consumer_lag",
    Gauge,
    "{record}",
    ["pipeline", "topic", "partition"],
    "Records not yet in Postgres: high watermark minus the stored position, per assigned partition."
);
metric!(
    END_TO_END,
    "sluice_end_to_end_latency_seconds",
    Histogram,
    "s",
    ["pipeline"],
    "Per committed flush: commit time minus the oldest Kafka timestamp in the batch."
);

metric!(
    REBALANCES,
    "sluice_rebalances_total",
    Counter,
    "{rebalance}",
    ["event"],
    "Rebalance callbacks of this member: assigned (partitions added; cooperative rebalances may add none), revoked (partitions taken away, after flushing what of them the writers committed within kafka.revoke_timeout), lost (the assignment was lost: session timeout or a failed rebalance; nothing flushed)."
);
metric!(
    REBALANCE_SECONDS,
    "sluice_rebalance_duration_seconds_total",
    Counter,
    "s",
    ["event"],
    "Time spent in rebalance callbacks, by event: reading stored offsets (assigned), flushing the revoked partitions (revoked). Intake waits meanwhile."
);
metric!(
    GROUP_GENERATION,
    "sluice_consumer_group_generation",
    Gauge,
    "1",
    [],
    "The consumer group generation this member's assignment belongs to (-1 before it joined)."
);
metric!(
    SCHEMA_REQUESTS,
    "sluice_schema_registry_requests_total",
    Counter,
    "1",
    ["outcome"],
    "Schema Registry lookups by outcome: fetched (a schema, cached from then on), not_found (its records are dead letters), unavailable (its records wait). Only cache misses ask the registry."
);
metric!(
    SCHEMA_CACHED,
    "sluice_schema_registry_cached_schemas",
    Gauge,
    "1",
    [],
    "Writer's schemas in the cache (at most schema_registry.cache_capacity)."
);

/// Every metric sluice exports, in `/metrics` order.
pub const CATALOGUE: &[MetricInfo] = &[
    CONSUMED,
    WRITTEN,
    DROPPED,
    DEAD_LETTERED,
    DLQ_PRODUCE_FAILURES,
    FLUSHES,
    FENCED,
    GAPS,
    OUT_OF_RANGE,
    BUFFER_RECORDS,
    BUFFER_BYTES,
    BUFFER_UTILIZATION,
    BACKPRESSURE_STATE,
    PAUSED_PARTITIONS,
    ASSIGNED_PARTITIONS,
    FLUSH_DURATION,
    BATCH_ROWS,
    FLUSH_INTERVAL,
    BREAKER_STATE,
    CONSUMER_LAG,
    END_TO_END,
    REBALANCES,
    REBALANCE_SECONDS,
    GROUP_GENERATION,
    SCHEMA_REQUESTS,
    SCHEMA_CACHED,
];

const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
const ROWS_BUCKETS: &[f64] = &[
    1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 50000.0, 100000.0,
];

pub fn flush_duration(meter: &Meter) -> Histogram<f64> {
    meter
        .f64_histogram(FLUSH_DURATION.name)
        .with_description(FLUSH_DURATION.help)
        .with_unit(FLUSH_DURATION.unit)
        .with_boundaries(SECONDS_BUCKETS.to_vec())
        .build()
}

pub fn batch_rows(meter: &Meter) -> Histogram<u64> {
    meter
        .u64_histogram(BATCH_ROWS.name)
        .with_description(BATCH_ROWS.help)
        .with_unit(BATCH_ROWS.unit)
        .with_boundaries(ROWS_BUCKETS.to_vec())
        .build()
}

pub fn end_to_end_latency(meter: &Meter) -> Histogram<f64> {
    meter
        .f64_histogram(END_TO_END.name)
        .with_description(END_TO_END.help)
        .with_unit(END_TO_END.unit)
        .with_boundaries(LATENCY_BUCKETS.to_vec())
        .build()
}

pub fn flushes(meter: &Meter) -> Counter<u64> {
    meter
        .u64_counter(FLUSHES.name)
        .with_description(FLUSHES.help)
        .with_unit(FLUSHES.unit)
        .build()
}
