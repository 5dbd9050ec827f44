//! The Postgres side: the batch writer with its fenced offset commit (COPY,
//! or upsert through a staging table), the stored offsets, the dead-letter
//! store and its replay, the live-schema check, table DDL, the database
//! probe and error classification (into [`crate::model::ErrorClass`]). Never imports [`crate::kafka`]: what
//! it needs of Kafka comes through the pipeline's ports ([`crate::pipeline::ports`]).

pub mod bisect;
pub mod ddl;
pub mod dead_letters;
pub mod error;
pub mod health;
pub mod offset_store;
pub mod schema;
pub mod upsert;
pub mod writer;
