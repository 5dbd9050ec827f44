//! The SQL text of a pipeline's writes (run by [`crate::postgres::upsert`]): plain COPY for `mode = "insert"`, and
//! for `mode = "upsert"` COPY into a staging table, then one statement that
//! applies the batch to the target table.
//!
//! # Upsert
//!
//! Each flush transaction creates `pg_temp.sluice_stage` (`ON COMMIT DROP`,
//! the mapped columns' types without their constraints, plus
//! `_sluice_delete` and `_sluice_ord`), COPYs the batch into it and runs
//!
//! ```sql
//! WITH last AS (SELECT DISTINCT ON (key) * FROM stage ORDER BY key, _sluice_ord DESC),
//!      deleted AS (DELETE FROM target t USING last WHERE last._sluice_delete AND t.key = last.key)
//! INSERT INTO target (cols) SELECT cols FROM last WHERE NOT last._sluice_delete
//! ON CONFLICT (key) DO UPDATE SET col = EXCLUDED.col, ...
//! ```
//!
//! so per key only the batch's last record counts: a row upserts, a
//! tombstone deletes. `_sluice_ord` is the record's position in the batch:
//! batches hold each partition's records in offset order, and a key lives
//! in one partition, so the last position is the highest offset. The DELETE
//! and the INSERT touch disjoint keys, so running them in one statement (one
//! snapshot) is safe. Batches apply in offset order, and so do the parts of
//! a batch the writer splits to isolate refused rows: applying them one after
//! the other ends in the same state as applying the whole batch.
//!
//! A staging table per flush (instead of one per session, `ON COMMIT DELETE
//! ROWS`) costs a catalog entry per flush, but never goes stale when the
//! target table is altered, and leaves nothing behind in pooled sessions.

use crate::mapping::{quote_ident, TableRef};
use crate::row::RowEncoder;

/// The staging table's name (with a number per target), as Postgres names
/// it in COPY error contexts.
pub const STAGE: &str = "sluice_stage";

/// The statements of one pipeline's writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteSql {
    Insert { copy: String },
    Upsert(UpsertSql),
}

/// The statements of an upsert flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpsertSql {
    /// The staging table's name (unqualified, unquoted).
    pub stage: String,
    /// Creates the staging table for this transaction.
    pub create: String,
    /// COPY into the staging table: the mapped columns, `_sluice_delete`, `_sluice_ord`.
    pub copy: String,
    /// Applies what is staged to the target table.
    pub apply: String,
    /// Empties the staging table, between the parts of a split batch.
    pub clear: String,
}

impl WriteSql {
    /// The statements for `table`, the encoder's columns and mode.
    pub fn new(table: &TableRef, encoder: &RowEncoder) -> WriteSql {
        Self::with_stage(table, encoder, 0)
    }

    /// As [`WriteSql::new`], with staging table number `stage` (distinct
    /// among the tables one transaction writes).
    pub fn with_stage(table: &TableRef, encoder: &RowEncoder, stage: usize) -> WriteSql {
        let columns: Vec<&str> = encoder.columns().iter().map(|c| c.name.as_str()).collect();
        match encoder.key_columns() {
            Some(key) => {
                let stage = match stage {
                    0 => STAGE.to_owned(),
                    n => format!("{STAGE}_{n}"),
                };
                WriteSql::Upsert(UpsertSql::staged(
                    table,
                    &columns,
                    &key,
                    encoder.version_column(),
                    &stage,
                ))
            }
            None => WriteSql::Insert {
                copy: format!(
                    "COPY {} ({}) FROM STDIN WITH (FORMAT text)",
                    table.quoted(),
                    quoted_list(&columns)
                ),
            },
        }
    }

    /// The relation named in the COPY's error context (for its line hints).
    pub fn copy_target<'a>(&'a self, table: &'a TableRef) -> &'a str {
        match self {
            WriteSql::Insert { .. } => &table.name,
            WriteSql::Upsert(sql) => &sql.stage,
        }
    }

    /// Appends an encoded row to COPY data; upsert rows get their ordering
    /// position (`_sluice_ord`) as the last column.
    pub fn frame(&self, out: &mut Vec<u8>, row: &[u8], ord: usize) {
        match self {
            WriteSql::Insert { .. } => out.extend_from_slice(row),
            WriteSql::Upsert(_) => {
                out.extend_from_slice(row.strip_suffix(b"\n").unwrap_or(row));
                out.push(b'\t');
                out.extend_from_slice(ord.to_string().as_bytes());
                out.push(b'\n');
            }
        }
    }
}

impl UpsertSql {
    /// `columns` are the mapped columns in COPY order; `key` is a non-empty
    /// subset of them; `version`, if any, another one of them.
    pub fn new(table: &TableRef, columns: &[&str], key: &[&str], version: Option<&str>) -> UpsertSql {
        Self::staged(table, columns, key, version, STAGE)
    }

    /// As [`UpsertSql::new`], staging in `pg_temp.{stage_name}`.
    pub fn staged(
        table: &TableRef,
        columns: &[&str],
        key: &[&str],
        version: Option<&str>,
        stage_name: &str,
    ) -> UpsertSql {
        let target = table.quoted();
        let stage = format!("pg_temp.{}", quote_ident(stage_name));
        let cols = quoted_list(columns);
        let keys = quoted_list(key);
        let create = format!(
            "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {cols}, NULL::boolean AS \"_sluice_delete\", \
             NULL::bigint AS \"_sluice_ord\" FROM {target} WITH NO DATA",
            quote_ident(stage_name)
        );
        let copy = format!("COPY {stage} ({cols}, \"_sluice_delete\", \"_sluice_ord\") FROM STDIN WITH (FORMAT text)");
        let matches: Vec<String> = key
            .iter()
            .map(|k| format!("t.{q} = last.{q}", q = quote_ident(k)))
            .collect();
        let updates: Vec<String> = columns
            .iter()
            .filter(|c| !key.contains(c))
            .map(|c| format!("{q} = EXCLUDED.{q}", q = quote_ident(c)))
            .collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let last_cols: Vec<String> = columns.iter().map(|c| format!("last.{}", quote_ident(c))).collect();
        let apply = match version {
            // Per key the batch's last record counts: a row upserts, a
            // tombstone deletes.
            None => format!(
                "WITH last AS (SELECT DISTINCT ON ({keys}) * FROM {stage} ORDER BY {keys}, \"_sluice_ord\" DESC), \
                 deleted AS (DELETE FROM {target} t USING last WHERE last.\"_sluice_delete\" AND {}) \
                 INSERT INTO {target} AS t ({cols}) SELECT {} FROM last WHERE NOT last.\"_sluice_delete\" \
                 ON CONFLICT ({keys}) {on_conflict}",
                matches.join(" AND "),
                last_cols.join(", ")
            ),
            // With a version: a key with a tombstone in the batch is deleted
            // first (its stored version no longer counts); then, per key,
            // the greatest version among the records after its last
            // tombstone is upserted, replacing only an older stored version.
            // Two statements, so the upsert sees the delete.
            Some(v) => {
                let v = quote_ident(v);
                let tomb_matches: Vec<String> = key
                    .iter()
                    .map(|k| format!("t.{q} = d.{q}", q = quote_ident(k)))
                    .collect();
                format!(
                    "DELETE FROM {target} t USING (SELECT DISTINCT {keys} FROM {stage} WHERE \"_sluice_delete\") d \
                     WHERE {}; \
                     WITH last AS (SELECT DISTINCT ON ({keys}) * FROM (SELECT *, max(\"_sluice_ord\") FILTER \
                     (WHERE \"_sluice_delete\") OVER (PARTITION BY {keys}) AS \"_sluice_tomb\" FROM {stage}) s \
                     WHERE NOT \"_sluice_delete\" AND (\"_sluice_tomb\" IS NULL OR \"_sluice_ord\" > \"_sluice_tomb\") \
                     ORDER BY {keys}, {v} DESC NULLS LAST, \"_sluice_ord\" DESC) \
                     INSERT INTO {target} AS t ({cols}) SELECT {} FROM last \
                     ON CONFLICT ({keys}) {on_conflict} WHERE t.{v} IS NULL OR EXCLUDED.{v} > t.{v}",
                    tomb_matches.join(" AND "),
                    last_cols.join(", ")
                )
            }
        };
        let clear = format!("DELETE FROM {stage}");
        UpsertSql {
            stage: stage_name.to_owned(),
            create,
            copy,
            apply,
            clear,
        }
    }
}

fn quoted_list(names: &[&str]) -> String {
    names.iter().map(|n| quote_ident(n)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{ColumnSource, PgType};
    use crate::row::ColumnPlan;

    fn table() -> TableRef {
        TableRef {
            schema: "My Schema".into(),
            name: "or\"ders".into(),
        }
    }

    #[test]
    fn upsert_statements_quote_every_identifier() {
        let sql = UpsertSql::new(&table(), &["id", "Region", "v\"x"], &["id", "Region"], None);
        assert_eq!(
            sql.create,
            "CREATE TEMP TABLE \"sluice_stage\" ON COMMIT DROP AS SELECT \"id\", \"Region\", \"v\"\"x\", \
             NULL::boolean AS \"_sluice_delete\", NULL::bigint AS \"_sluice_ord\" \
             FROM \"My Schema\".\"or\"\"ders\" WITH NO DATA"
        );
        assert_eq!(
            sql.copy,
            "COPY pg_temp.\"sluice_stage\" (\"id\", \"Region\", \"v\"\"x\", \"_sluice_delete\", \"_sluice_ord\") \
             FROM STDIN WITH (FORMAT text)"
        );
        assert_eq!(
            sql.apply,
            "WITH last AS (SELECT DISTINCT ON (\"id\", \"Region\") * FROM pg_temp.\"sluice_stage\" \
             ORDER BY \"id\", \"Region\", \"_sluice_ord\" DESC), \
             deleted AS (DELETE FROM \"My Schema\".\"or\"\"ders\" t USING last WHERE last.\"_sluice_delete\" \
             AND t.\"id\" = last.\"id\" AND t.\"Region\" = last.\"Region\") \
             INSERT INTO \"My Schema\".\"or\"\"ders\" AS t (\"id\", \"Region\", \"v\"\"x\") \
             SELECT last.\"id\", last.\"Region\", last.\"v\"\"x\" FROM last WHERE NOT last.\"_sluice_delete\" \
             ON CONFLICT (\"id\", \"Region\") DO UPDATE SET \"v\"\"x\" = EXCLUDED.\"v\"\"x\""
        );
        assert_eq!(sql.clear, "DELETE FROM pg_temp.\"sluice_stage\"");
    }

    #[test]
    fn a_table_of_only_key_columns_does_nothing_on_conflict() {
        let sql = UpsertSql::new(&table(), &["id"], &["id"], None);
        assert!(sql.apply.ends_with("ON CONFLICT (\"id\") DO NOTHING"), "{}", sql.apply);
    }

    #[test]
    fn modes_and_framing() {
        let columns = vec![
            ColumnPlan::new("id", ColumnSource::Pointer("/id".into()), PgType::Int8),
            ColumnPlan::new("v", ColumnSource::Pointer("/v".into()), PgType::Int8),
        ];
        let insert = WriteSql::new(&table(), &RowEncoder::new(columns.clone()));
        assert_eq!(
            insert,
            WriteSql::Insert {
                copy: "COPY \"My Schema\".\"or\"\"ders\" (\"id\", \"v\") FROM STDIN WITH (FORMAT text)".into()
            }
        );
        let mut out = Vec::new();
        insert.frame(&mut out, b"1\t2\n", 5);
        assert_eq!(out, b"1\t2\n");
        assert_eq!(insert.copy_target(&table()), "or\"ders");

        let encoder = RowEncoder::new(columns).with_upsert(&["id".into()], true).unwrap();
        let upsert = WriteSql::new(&table(), &encoder);
        assert!(matches!(&upsert, WriteSql::Upsert(sql) if sql.apply.contains("ON CONFLICT (\"id\")")));
        let mut out = Vec::new();
        upsert.frame(&mut out, b"1\t2\tf\n", 5);
        upsert.frame(&mut out, b"3\t\\N\tt\n", 6);
        assert_eq!(out, b"1\t2\tf\t5\n3\t\\N\tt\t6\n");
        assert_eq!(upsert.copy_target(&table()), STAGE);
    }
}
