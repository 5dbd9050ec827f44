//! Postgres side: the batch writer with its COPY and
//! fenced offset commit (COPY, or upsert through a staging table), the
//! live-schema check and error classification.

pub mod bisect;
pub mod breaker;
pub mod ddl;
pub mod dead_letter;
pub mod dlq;
pub mod error;
pub mod flush_policy;
pub mod offset_store;
pub mod replay;
pub mod schema;
pub mod upsert;
pub mod writer;
