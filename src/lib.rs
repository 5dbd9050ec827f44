//! sluice: a Kafka → PostgreSQL connector that pauses partitions instead of
//! growing memory and writes every record into Postgres exactly once.
//!
//! # Layout
//!
//! - [`config`]: typed settings, figment layering (defaults → TOML → `SLUICE_*` env), validation.
//! - [`mapping`]: the mapping language: column sources and the Postgres types sluice writes.
//! - [`kafka`]: the consumer loop, rebalance handling, offset arithmetic.
//! - [`pipeline`]: per-mapping bounded buffer, the pause/resume decision, and the sans-IO core
//!   (`pipeline::core`: admission, refusal and re-read, epochs, which records a flush covers and
//!   the gap check) that the consumer loop and the writer only carry out.
//! - [`row`]: the pure record → COPY text row encoder (plan, sources, conversions, constraints, unique-key hashes).
//! - [`sink`]: the batch writer (COPY or upsert + fenced offsets), schema checks, error classes,
//!   dead letters (store, bisection of refused batches, Kafka DLQ topic, `sluice dlq` replay).
//! - [`telemetry`]: OpenTelemetry metrics and traces (OTLP), the metric set, flush events, lag, readiness.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`, `/status`.
//! - [`service`]: wiring for `run`, `check` and `migrate`.
//!
//! # Delivery semantics
//!
//! Exactly-once into Postgres. Each flush writes its rows and advances the
//! source offsets they cover (`sluice.offsets`) in one transaction. The
//! offset update is conditional on the stored position still being the one
//! the batch started from, so a revoked instance that is still writing (a
//! zombie) rolls back instead of duplicating, and a batch whose records do
//! not chain, per partition, from that stored position is never committed
//! (the partition is re-read instead). On assignment a partition
//! starts from the offset stored in Postgres; Kafka's committed offsets are
//! written after each flush for lag tooling only. A record that can never
//! be written (undecodable, or refused by the table with SQLSTATE class 22
//! or 23) goes to `sluice.dead_letters` in that same transaction, so it too
//! is stored exactly once and its offset advances in order; the optional
//! Kafka dead-letter topic is at-least-once. In `mode = "upsert"` the
//! staging COPY and the upsert run in that same transaction: a crash
//! before COMMIT leaves neither rows nor offsets, and the re-read records
//! apply the same last record per key, so the table converges to the state
//! of the highest offset per key (which orders a key's records only within
//! a partition: a table fed from more than one topic needs a `version`,
//! checked when the config loads). A stored offset outside the log on the
//! broker is never moved silently: by default the pipeline stops
//! (`kafka.on_offset_out_of_range`).

pub mod config;
pub mod http;
pub mod kafka;
#[cfg(test)]
mod layering;
pub mod mapping;
pub mod pipeline;
pub mod row;
pub mod service;
pub mod sink;
pub mod telemetry;
