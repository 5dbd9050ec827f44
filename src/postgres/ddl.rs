//! `auto_create` and `auto_evolve`: the only DDL sluice runs on a
//! pipeline's table. A missing table is created from the mapping (the
//! `key` columns of upsert mode as its primary key); a missing mapped column
//! is added, nullable. Nothing is ever dropped or altered.
//!
//! Several sluice processes may start at once against one database, so the
//! DDL runs in a transaction holding an advisory lock on the table's name,
//! and with `IF NOT EXISTS`: the first creates, the others find it done.

use sqlx::PgPool;

use crate::mapping::{quote_ident, TableRef};
use crate::postgres::schema::LiveColumn;

/// A column as `auto_create`/`auto_evolve` would make it: name and SQL
/// type (canonical, from `mapping::parse_sql_type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    pub sql_type: String,
}

/// `CREATE TABLE IF NOT EXISTS` for the mapping; `key` (may be empty)
/// becomes the primary key.
pub fn create_table_sql(table: &TableRef, columns: &[ColumnDef], key: &[String]) -> String {
    let mut parts: Vec<String> = columns
        .iter()
        .map(|c| format!("{} {}", quote_ident(&c.name), c.sql_type))
        .collect();
    if !key.is_empty() {
        let key: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
        parts.push(format!("PRIMARY KEY ({})", key.join(", ")));
    }
    format!("CREATE TABLE IF NOT EXISTS {} ({})", table.quoted(), parts.join(", "))
}

/// `ALTER TABLE ... ADD COLUMN IF NOT EXISTS` for one column.
pub fn add_column_sql(table: &TableRef, column: &ColumnDef) -> String {
    format!(
        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
        table.quoted(),
        quote_ident(&column.name),
        column.sql_type
    )
}

/// The statements that would bring `table` (live state `live`, `None` when
/// missing) to the mapping, as far as `auto_create`/`auto_evolve` allow.
pub fn plan(
    table: &TableRef,
    live: Option<&[LiveColumn]>,
    columns: &[ColumnDef],
    key: &[String],
    auto_create: bool,
    auto_evolve: bool,
) -> Vec<String> {
    match live {
        None if auto_create => vec![create_table_sql(table, columns, key)],
        None => Vec::new(),
        Some(_) if !auto_evolve => Vec::new(),
        Some(live) => columns
            .iter()
            .filter(|c| !live.iter().any(|l| l.name == c.name))
            .map(|c| add_column_sql(table, c))
            .collect(),
    }
}

/// Runs `statements` (from [`plan`]) in one transaction, serialized with
/// any other sluice doing DDL on the same table.
pub async fn apply(pool: &PgPool, table: &TableRef, statements: &[String]) -> Result<(), sqlx::Error> {
    if statements.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("sluice.ddl:{}", table.quoted()))
        .execute(&mut *tx)
        .await?;
    for statement in statements {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TableRef {
        TableRef {
            schema: "public".into(),
            name: "Ev\"ents".into(),
        }
    }

    fn cols() -> Vec<ColumnDef> {
        vec![
            ColumnDef {
                name: "id".into(),
                sql_type: "bigint".into(),
            },
            ColumnDef {
                name: "doc".into(),
                sql_type: "jsonb".into(),
            },
        ]
    }

    fn live(names: &[&str]) -> Vec<LiveColumn> {
        names
            .iter()
            .map(|n| LiveColumn {
                name: (*n).into(),
                type_name: "int8".into(),
                not_null: false,
                typmod: -1,
                table_has_before_triggers: false,
                deterministic: true,
                checks: Vec::new(),
                enum_labels: Vec::new(),
                array_of: None,
            })
            .collect()
    }

    #[test]
    fn creates_with_the_key_as_primary_key() {
        assert_eq!(
            plan(&table(), None, &cols(), &["id".into()], true, false),
            vec!["CREATE TABLE IF NOT EXISTS \"public\".\"Ev\"\"ents\" (\"id\" bigint, \"doc\" jsonb, PRIMARY KEY (\"id\"))"]
        );
        assert_eq!(
            plan(&table(), None, &cols(), &[], true, false),
            vec!["CREATE TABLE IF NOT EXISTS \"public\".\"Ev\"\"ents\" (\"id\" bigint, \"doc\" jsonb)"]
        );
        assert!(
            plan(&table(), None, &cols(), &[], false, true).is_empty(),
            "no auto_create"
        );
    }

    #[test]
    fn evolves_only_missing_columns() {
        let l = live(&["id", "other"]);
        assert_eq!(
            plan(&table(), Some(&l), &cols(), &[], false, true),
            vec!["ALTER TABLE \"public\".\"Ev\"\"ents\" ADD COLUMN IF NOT EXISTS \"doc\" jsonb"]
        );
        assert!(
            plan(&table(), Some(&l), &cols(), &[], true, false).is_empty(),
            "no auto_evolve"
        );
        let all = live(&["id", "doc"]);
        assert!(plan(&table(), Some(&all), &cols(), &[], true, true).is_empty());
    }
}
