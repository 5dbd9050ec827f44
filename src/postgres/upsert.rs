//! Running a pipeline's write statements ([`crate::row::statements`]) in a
//! flush transaction, and reading the unique keys an upsert relies on.

use sqlx::{Executor as _, PgConnection, PgPool};

use crate::mapping::TableRef;
use crate::row::statements::WriteSql;

/// Once per transaction, before the first [`write`].
pub async fn prepare(sql: &WriteSql, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    if let WriteSql::Upsert(sql) = sql {
        tx.execute(sql.create.as_str()).await?;
    }
    Ok(())
}

/// Writes framed COPY data into the table.
pub async fn write(sql: &WriteSql, tx: &mut PgConnection, data: &[u8]) -> Result<(), sqlx::Error> {
    match sql {
        WriteSql::Insert { copy } => copy_in(tx, copy, data).await,
        WriteSql::Upsert(sql) => {
            copy_in(tx, &sql.copy, data).await?;
            tx.execute(sql.apply.as_str()).await?;
            Ok(())
        }
    }
}

/// After a successful [`write`] that another will follow in the same transaction.
pub async fn reset(sql: &WriteSql, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    if let WriteSql::Upsert(sql) = sql {
        tx.execute(sql.clear.as_str()).await?;
    }
    Ok(())
}

async fn copy_in(tx: &mut PgConnection, copy_statement: &str, data: &[u8]) -> Result<(), sqlx::Error> {
    let mut copy = tx.copy_in_raw(copy_statement).await?;
    copy.send(data).await?;
    copy.finish().await?;
    Ok(())
}

/// Whether `table` has a primary key or unique index that `ON CONFLICT
/// (key)` can use: valid, immediate (not deferrable), not partial, no
/// expressions, and its key columns exactly `key` (in any order).
pub async fn has_unique_key(pool: &PgPool, table: &TableRef, key: &[String]) -> Result<bool, sqlx::Error> {
    // Byte order on both sides (Rust's and collation "C").
    let mut wanted: Vec<String> = key.to_vec();
    wanted.sort();
    sqlx::query_scalar(
        "SELECT EXISTS ( \
           SELECT 1 FROM pg_index i \
           JOIN pg_class c ON c.oid = i.indrelid \
           JOIN pg_namespace n ON n.oid = c.relnamespace \
           WHERE n.nspname = $1 AND c.relname = $2 \
             AND i.indisunique AND i.indisvalid AND i.indimmediate \
             AND i.indpred IS NULL AND i.indexprs IS NULL \
             AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text COLLATE \"C\") \
                  FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                  WHERE k.n <= i.indnkeyatts) = $3::text[])",
    )
    .bind(&table.schema)
    .bind(&table.name)
    .bind(&wanted)
    .fetch_one(pool)
    .await
}

/// The table's usable unique keys for spotting duplicates ahead of
/// Postgres: valid, immediate, not partial, no expressions. Each is (index
/// name, key columns in index order). The caller skips them for a table
/// with BEFORE row triggers, which could change the key.
pub async fn unique_keys(pool: &PgPool, table: &TableRef) -> Result<Vec<(String, Vec<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT ic.relname::text, \
                (SELECT array_agg(a.attname::text ORDER BY k.n) \
                 FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE k.n <= i.indnkeyatts) \
         FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indrelid \
         JOIN pg_class ic ON ic.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2 \
           AND i.indisunique AND i.indisvalid AND i.indimmediate \
           AND i.indpred IS NULL AND i.indexprs IS NULL",
    )
    .bind(&table.schema)
    .bind(&table.name)
    .fetch_all(pool)
    .await
}
