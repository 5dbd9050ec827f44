//! sluice: a Kafka → PostgreSQL connector that pauses partitions instead of
//! growing memory and writes every record into Postgres exactly once.
//!
//! # Layout and the layering rule
//!
//! Imports run one way: a module uses only modules of a lower layer, never
//! a sibling, never a higher one. `src/layering.rs` reads every `crate::`
//! path outside comments and test code (grouped `crate::{a, b}` too) and
//! fails the tests on an import against the rule or an import cycle.
//!
//! ```text
//! 6  app         wires it all: run, check, migrate, dlq; the assigner; /metrics /healthz /readyz /status
//! 5  kafka       postgres  registry   the sides; siblings that never import each other
//! 4  pipeline                  the sans-IO core, the buffer, backpressure, flush policy, the ports
//! 3  telemetry                 instruments, flush events, OTLP; depends on plain data only
//! 2  model                     ids, offsets, records, dead letters, error classes
//! 1  row         config        the record → row encoder and write statements; typed settings
//! 0  mapping     format        column sources, Postgres types, the target table; record formats
//! ```
//!
//! - [`mapping`]: the mapping language: column sources, the Postgres types sluice writes, [`mapping::TableRef`].
//! - [`format`]: record formats (JSON, Avro, Protobuf, JSON Schema in the Confluent wire format) →
//!   the JSON text the encoder reads, the Debezium envelope, the bounded schema cache and the
//!   registry's breaker ([`format::Decoder`], [`format::Schemas`]).
//! - [`row`]: the pure record → COPY text row encoder (plan, sources, conversions, constraints,
//!   unique-key hashes) and the SQL text of a pipeline's writes ([`row::statements`]).
//! - [`config`]: typed settings, figment layering (defaults → TOML → `SLUICE_*` env), validation;
//!   one file per section.
//! - [`model`]: plain data every layer shares: [`model::Tp`], [`model::NextOffset`] and the offset
//!   arithmetic, what is kept of a record ([`model::RecordMeta`], [`model::Raw`]),
//!   [`model::DeadLetter`], [`model::ErrorClass`].
//! - [`telemetry`]: OpenTelemetry instruments and flush events ([`telemetry::Flushes`]), OTLP and the
//!   Prometheus reader, the lag table.
//! - [`pipeline`]: per-mapping bounded buffer and its state ([`pipeline::PipelineState`]); the sans-IO
//!   core ([`pipeline::core`]: admission, refusal and re-read, pause/resume, epochs, assign/revoke,
//!   which records a flush covers from which stored position, the gap check, drain) that the
//!   consumer loop and the writer only carry out, and its deterministic simulation (`pipeline::sim`);
//!   backpressure states; the circuit breaker; adaptive flushing; the ports ([`pipeline::ports`]) through which the two
//!   sides and the application talk.
//! - [`kafka`]: the consumer loop (a thin shell over the core: polls, seeks, pauses, the rebalance
//!   callback), reading records back, the dead-letter topic, the lag poller.
//! - [`registry`]: the Schema Registry client ([`format::SchemaSource`] over blocking HTTP).
//! - [`postgres`]: the batch writer (COPY or upsert + fenced offsets, a shell over the core), stored
//!   offsets, the dead-letter store and replay, schema checks, DDL, the database probe, error
//!   classification.
//! - [`app`]: `run` (wiring and the shutdown drain), the assigner that plans tables and loads stored
//!   offsets off the rebalance callback, `check`, `dlq replay`, observation (`/status`, observable
//!   metrics) and the HTTP server.
//!
//! A trait or a command type lives in the lower layer and is implemented
//! or served by the higher one: [`pipeline::ports::ReadBack`] and
//! [`pipeline::ports::DeadLetterTopic`] are implemented in `kafka` and used
//! by the `postgres` writer; [`pipeline::ports::ConsumerCommand`] is sent
//! by the writer and served by the consumer loop;
//! [`pipeline::ports::AssignRequest`] is sent by the rebalance callback and
//! served by [`app::assigner`]. `ARCHITECTURE.md` walks one record from
//! poll to commit through these rooms.
//!
//! # Error policy
//!
//! - A bad config never starts: [`config::ConfigError`] names the key and
//!   what was expected (exit code 2).
//! - A bad record is never an error up the stack: the encoder's
//!   [`row::DecodeError`] makes it a dead letter with the reason, stored in
//!   the same transaction as the rows around it.
//! - A database error is classified once ([`postgres::error::classify`] into
//!   [`model::ErrorClass`]): transient → retried with backoff behind the
//!   circuit breaker; data → the refused rows are isolated and dead-lettered;
//!   config → the pipeline stops loudly (`/readyz` says why).
//! - Each layer returns typed errors (`thiserror`): `MappingError`,
//!   `PlanError`, `AssignError`, `DeadLetterTopicError`, `sqlx::Error`, …;
//!   `anyhow` only at the edge (`app::run`, `main`) to add context to a
//!   start-up failure.
//! - sluice stops rather than skip data it cannot place: a topic whose
//!   table cannot be planned, a stored offset outside the log
//!   (`kafka.on_offset_out_of_range = "stop"`), `errors.tolerance = "none"`.
//!   A batch that does not chain from its stored position (a bug) is never
//!   committed: logged at ERROR, counted (`sluice_offset_gaps_total`), re-read.
//!
//! # Glossary
//!
//! - **epoch**: one tenure of a partition in a pipeline — an assignment, or
//!   a re-read after a fence or a gap. Entries remember theirs; an entry of
//!   an older epoch is stale and never written.
//! - **covered**: the offsets a batch accounts for, `[first, last]` per
//!   partition ([`model::offsets::Covered`]): written as rows,
//!   dead-lettered, or deliberately dropped. The stored offset moves to one
//!   past `last` in the flush transaction.
//! - **span**: one partition's share of a batch: its epoch, what it covers,
//!   and the stored position it starts from ([`pipeline::Span`]).
//! - **fenced**: a flush whose offset update found the stored position
//!   moved (another owner wrote it): rolled back, the partition re-read
//!   from where it is now.
//! - **refusal**: under `strategy = "block"`, a record that does not fit the
//!   full buffer is neither taken nor covered; the partition is re-read from
//!   it after a seek.
//! - **marker**: a buffer entry without a row that accounts for offsets
//!   shed by a dropping strategy, so the stored offset can pass them.
//! - **stage**: the upsert staging table of a flush (`pg_temp.sluice_stage`,
//!   numbered per target within one transaction).
//! - **target**: where a pipeline's rows of one topic go — the table, the
//!   encoder planned against its live columns, and the statements that
//!   write it ([`pipeline::Target`]).
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

pub mod app;
pub mod config;
pub mod format;
pub mod kafka;
#[cfg(test)]
mod layering;
pub mod mapping;
pub mod model;
pub mod pipeline;
pub mod postgres;
pub mod registry;
pub mod row;
pub mod telemetry;
