//! The row encoder: one Kafka record in, one line of PostgreSQL
//! `COPY ... FROM STDIN` *text* format out.
//!
//! # What a row is
//!
//! A [`RowEncoder`] holds the [`ColumnPlan`] of a target table: for each
//! column its name, where its value comes from (a JSON pointer into the
//! record's value or key, or the record's metadata: see
//! [`ColumnSource`](crate::mapping::ColumnSource)), its live Postgres type,
//! and the [`Constraints`] of the live column that are checked here first.
//! Encoding a [`RecordRef`] appends exactly one line to the caller's
//! buffer, or leaves the buffer as it was and returns a [`DecodeError`].
//!
//! Every conversion is checked here rather than left to Postgres: a value
//! the server would reject fails the whole COPY batch, whereas a
//! [`DecodeError`] only sidelines the one record.
//!
//! # COPY text format
//!
//! Columns are tab-separated in plan order, NULL is `\N`, and the line ends
//! in `\n`. Inside a field, backslash, newline, carriage return and tab are
//! written as `\\`, `\n`, `\r` and `\t`; NUL cannot be written at all (no
//! Postgres text type stores it). In upsert mode one more column,
//! `_sluice_delete`, is `f` for a row and `t` for a tombstone's delete.
//!
//! This is the per-record hot path, so digits and escaped bytes go straight
//! into the caller's buffer; the only allocations are parsing the parts of
//! the record value the columns read (once) and building error messages.
//!
//! # Layering
//!
//! `row` is at the bottom, next to [`crate::mapping`]: it imports only that
//! and std or external crates, never `model`, `kafka`, `postgres`,
//! `pipeline`, `telemetry` or `config`, so those can all build on it.
//! Inside, imports run downward only:
//!
//! ```text
//! statements                  the SQL text of a target's writes (COPY, upsert through a stage)
//! encoder                     RowEncoder, DecodeError; upsert and tombstone lines
//! project                     parse only what the pointers reach (project::fast, serde_json); the whole value as jsonb text
//! sources   constraints       pointer and metadata columns, RecordRef; NOT NULL, length, precision, CHECK
//! convert   plan    keys      JSON value -> column; ColumnPlan and friends; unique-key hashes
//! check_expr                  `column op constant` CHECK expressions
//! numeric  time  show  copy_text   Decimal and numbers; dates; values in messages; COPY escaping
//! ```

mod check_expr;
mod constraints;
mod convert;
mod copy_text;
mod encoder;
mod keys;
mod numeric;
mod plan;
mod project;
mod show;
mod sources;
pub mod statements;
#[cfg(test)]
mod testing;
mod time;

pub use check_expr::CheckExpr;
pub use encoder::{DecodeError, RowEncoder, UpsertError};
pub(crate) use keys::{field_ranges, key_fields};
pub use keys::{key_hashes, key_hashes_of_fields, RecentKeys};
pub use plan::{ColumnPlan, Constraints, Labels, Limit, UniqueKey};
pub use sources::{header_value_json, HeaderRef, RecordRef};
