//! The live table schema, and checking a mapping against it.

use sqlx::PgPool;

use crate::mapping::{ColumnSource, PgType, TableRef};
use crate::row::{CheckExpr, ColumnPlan, Constraints, Labels, Limit};

/// A column as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveColumn {
    pub name: String,
    /// The type name (`pg_type.typname`), domains resolved to their base type.
    pub type_name: String,
    pub not_null: bool,
    /// `pg_attribute.atttypmod`: `varchar(n)`'s length, `numeric(p,s)`'s
    /// precision and scale; -1 for none.
    pub typmod: i32,
    /// The table has BEFORE INSERT or UPDATE row triggers, which may change
    /// a row before its constraints are checked.
    pub table_has_before_triggers: bool,
    /// The column's collation compares bytes (every default one does).
    pub deterministic: bool,
    /// CHECK constraints on this column alone: (name, definition as
    /// `pg_get_constraintdef` shows it).
    pub checks: Vec<(String, String)>,
    /// For an enum type, its labels in order (empty otherwise): the column
    /// is written as text and a value must be one of them. For an array of
    /// an enum, the element type's labels.
    pub enum_labels: Vec<String>,
    /// For an array column, its element type's name (domains resolved);
    /// `type_name` is then the array type's (`_int4`).
    pub array_of: Option<String>,
}

/// Reads the table's columns; `None` when the table does not exist.
pub async fn live_columns(pool: &PgPool, table: &TableRef) -> Result<Option<Vec<LiveColumn>>, sqlx::Error> {
    let exists: Option<i64> = sqlx::query_scalar(
        "SELECT 1::int8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
    )
    .bind(&table.schema)
    .bind(&table.name)
    .fetch_optional(pool)
    .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let triggers: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2 AND NOT g.tgisinternal \
           AND (g.tgtype & 1) = 1 AND (g.tgtype & 2) = 2 AND (g.tgtype & (4 | 16)) <> 0)",
    )
    .bind(&table.schema)
    .bind(&table.name)
    .fetch_one(pool)
    .await?;
    let checks: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT a.attname::text, k.conname::text, pg_get_constraintdef(k.oid) \
         FROM pg_constraint k \
         JOIN pg_class c ON c.oid = k.conrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1] \
         WHERE n.nspname = $1 AND c.relname = $2 AND k.contype = 'c' AND cardinality(k.conkey) = 1",
    )
    .bind(&table.schema)
    .bind(&table.name)
    .fetch_all(pool)
    .await?;
    // `rt` is the column's type with a domain resolved; `et` its element
    // type when it is an array (and `ebt` that one's base, for a domain).
    // (name, type, not null, typmod, deterministic, enum labels, array element type)
    type Row = (String, String, bool, i32, bool, Vec<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT a.attname::text, rt.typname::text, \
                a.attnotnull, a.atttypmod, COALESCE(co.collisdeterministic, true), \
                COALESCE((SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e \
                          WHERE e.enumtypid = COALESCE(NULLIF(et.typbasetype, 0), et.oid, rt.oid)), '{}'), \
                (CASE WHEN et.typtype = 'd' THEN ebt.typname ELSE et.typname END)::text \
         FROM pg_attribute a \
         JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_type t ON t.oid = a.atttypid \
         JOIN pg_type rt ON rt.oid = COALESCE(NULLIF(t.typbasetype, 0), t.oid) \
         LEFT JOIN pg_type et ON et.oid = rt.typelem AND rt.typcategory = 'A' AND rt.typlen = -1 \
                              AND et.typarray = rt.oid \
         LEFT JOIN pg_type ebt ON ebt.oid = et.typbasetype \
         LEFT JOIN pg_collation co ON co.oid = a.attcollation \
         WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
    )
    .bind(&table.schema)
    .bind(&table.name)
    .fetch_all(pool)
    .await?;
    Ok(Some(
        rows.into_iter()
            .map(
                |(name, type_name, not_null, typmod, deterministic, enum_labels, array_of)| LiveColumn {
                    checks: checks
                        .iter()
                        .filter(|(column, _, _)| *column == name)
                        .map(|(_, con, def)| (con.clone(), def.clone()))
                        .collect(),
                    name,
                    type_name,
                    not_null,
                    typmod,
                    table_has_before_triggers: triggers,
                    deterministic,
                    enum_labels,
                    array_of,
                },
            )
            .collect(),
    ))
}

/// Why a mapping does not fit the live table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("pipeline `{pipeline}`: table {table} does not exist")]
    MissingTable { pipeline: String, table: String },
    #[error("pipeline `{pipeline}`: column `{column}` does not exist in table {table}")]
    MissingColumn {
        pipeline: String,
        table: String,
        column: String,
    },
    #[error("pipeline `{pipeline}`: column `{column}` has type {type_name}, which sluice cannot write")]
    UnsupportedType {
        pipeline: String,
        column: String,
        type_name: String,
    },
    #[error(
        "pipeline `{pipeline}` (pipelines[{index}].key): table {table} has no primary key or unique index \
         on exactly ({key}), which mode = \"upsert\" needs for ON CONFLICT (it must be valid, not \
         deferrable, not partial, without expressions)"
    )]
    NoUniqueKey {
        pipeline: String,
        index: usize,
        table: String,
        key: String,
    },
    /// The table name a topic makes (`{topic}`) is too long.
    #[error("{0}")]
    TableName(crate::config::TableNameTooLong),
    /// A setting of the pipeline that does not fit (the upsert key or
    /// version column).
    #[error("pipeline `{pipeline}`: {reason}")]
    Invalid { pipeline: String, reason: String },
    #[error("pipeline `{pipeline}`: column `{column}` ({type_name}): {reason}")]
    Incompatible {
        pipeline: String,
        column: String,
        type_name: String,
        reason: String,
    },
}

/// Matches the mapped columns to the live ones; reports every problem, not
/// only the first, so one `sluice check` run shows them all.
pub fn plan_columns(
    pipeline: &str,
    table: &TableRef,
    mapping: &[(String, ColumnSource)],
    live: Option<&[LiveColumn]>,
) -> Result<Vec<ColumnPlan>, Vec<MappingError>> {
    let Some(live) = live else {
        return Err(vec![MappingError::MissingTable {
            pipeline: pipeline.into(),
            table: table.to_string(),
        }]);
    };
    let mut plan = Vec::with_capacity(mapping.len());
    let mut errors = Vec::new();
    for (column, source) in mapping {
        let Some(col) = live.iter().find(|c| &c.name == column) else {
            errors.push(MappingError::MissingColumn {
                pipeline: pipeline.into(),
                table: table.to_string(),
                column: column.clone(),
            });
            continue;
        };
        // An enum is written as text, checked against its labels; an array
        // by its element type.
        let udt = match (&col.array_of, col.enum_labels.is_empty()) {
            (_, false) => "text",
            (Some(elem), true) => elem.as_str(),
            (None, true) => col.type_name.as_str(),
        };
        let Some(ty) = PgType::from_udt_name(udt) else {
            errors.push(MappingError::UnsupportedType {
                pipeline: pipeline.into(),
                column: column.clone(),
                type_name: col.type_name.clone(),
            });
            continue;
        };
        let array = col.array_of.is_some();
        let accepted = match source {
            ColumnSource::Pointer(_) | ColumnSource::KeyPointer(_) | ColumnSource::Source(_) if array => Ok(()),
            // (Not a constant: its elements could not be checked as the
            // elements of a JSON array are.)
            _ if array => Err(format!(
                "{source} cannot be written to an array column ({}[]): an array takes a JSON array from \
                 a JSON pointer",
                ty.sql_name()
            )),
            _ => ty.accepts(source),
        };
        if let Err(reason) = accepted {
            errors.push(MappingError::Incompatible {
                pipeline: pipeline.into(),
                column: column.clone(),
                type_name: col.type_name.clone(),
                reason,
            });
            continue;
        }
        plan.push(ColumnPlan {
            name: column.clone(),
            source: source.clone(),
            ty,
            array,
            constraints: constraints_of(col, ty),
        });
    }
    if errors.is_empty() {
        Ok(plan)
    } else {
        Err(errors)
    }
}

/// What the encoder checks ahead of Postgres for `col`: nothing when a
/// BEFORE trigger may still change the row.
fn constraints_of(col: &LiveColumn, ty: PgType) -> Constraints {
    if col.table_has_before_triggers {
        return Constraints::default();
    }
    // An array's typmod is its elements'; a CHECK on an array column is
    // left to Postgres.
    let element_type = col.array_of.as_deref().unwrap_or(&col.type_name);
    Constraints {
        not_null: col.not_null,
        limit: Limit::from_typmod(element_type, col.typmod),
        check_exprs: match col.array_of {
            Some(_) => Vec::new(),
            None => col
                .checks
                .iter()
                .filter_map(|(con, def)| CheckExpr::parse(con, &col.name, ty, col.deterministic, def))
                .collect(),
        },
        labels: (!col.enum_labels.is_empty()).then(|| Labels::new(element_type, &col.enum_labels)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::quote_ident;

    fn live() -> Vec<LiveColumn> {
        vec![
            LiveColumn {
                name: "id".into(),
                type_name: "int8".into(),
                not_null: true,
                typmod: -1,
                table_has_before_triggers: false,
                deterministic: true,
                checks: Vec::new(),
                enum_labels: Vec::new(),
                array_of: None,
            },
            LiveColumn {
                name: "doc".into(),
                type_name: "jsonb".into(),
                not_null: false,
                typmod: -1,
                table_has_before_triggers: false,
                deterministic: true,
                checks: Vec::new(),
                enum_labels: Vec::new(),
                array_of: None,
            },
            LiveColumn {
                name: "where".into(),
                type_name: "point".into(),
                not_null: false,
                typmod: -1,
                table_has_before_triggers: false,
                deterministic: true,
                checks: Vec::new(),
                enum_labels: Vec::new(),
                array_of: None,
            },
            LiveColumn {
                name: "flag".into(),
                type_name: "bool".into(),
                not_null: false,
                typmod: -1,
                table_has_before_triggers: false,
                deterministic: true,
                checks: Vec::new(),
                enum_labels: Vec::new(),
                array_of: None,
            },
        ]
    }

    #[test]
    fn reports_every_problem_by_name() {
        let table = TableRef {
            schema: "public".into(),
            name: "t".into(),
        };
        let mapping = vec![
            ("id".to_string(), ColumnSource::Pointer("/id".into())),
            ("missing".to_string(), ColumnSource::Pointer("/m".into())),
            ("where".to_string(), ColumnSource::Pointer("/w".into())),
            ("flag".to_string(), ColumnSource::Offset),
        ];
        let errors = plan_columns("orders", &table, &mapping, Some(&live())).unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text[0].contains("column `missing` does not exist in table public.t"));
        assert!(text[1].contains("column `where` has type point"));
        assert!(text[2].contains("column `flag` (bool)"));
    }

    #[test]
    fn array_columns_plan_by_their_element_type() {
        let table = TableRef {
            schema: "public".into(),
            name: "t".into(),
        };
        let array = |name: &str, type_name: &str, elem: &str, typmod: i32, labels: &[&str]| LiveColumn {
            name: name.into(),
            type_name: type_name.into(),
            not_null: false,
            typmod,
            table_has_before_triggers: false,
            deterministic: true,
            checks: vec![("positive".into(), format!("CHECK ((cardinality({name}) > 0))"))],
            enum_labels: labels.iter().map(|l| l.to_string()).collect(),
            array_of: Some(elem.into()),
        };
        let live = vec![
            array("codes", "_varchar", "varchar", 3 + 4, &[]),
            array("moods", "_mood", "mood", -1, &["ok", "sad"]),
            array("spots", "_point", "point", -1, &[]),
            array("offs", "_int8", "int8", -1, &[]),
        ];
        let mapping = vec![
            ("codes".to_string(), ColumnSource::Pointer("/c".into())),
            ("moods".to_string(), ColumnSource::Pointer("/m".into())),
        ];
        let plan = plan_columns("p", &table, &mapping, Some(&live)).unwrap();
        assert_eq!((plan[0].ty, plan[0].array), (PgType::Text, true));
        assert_eq!(plan[0].type_name(), "text[]");
        assert_eq!(plan[0].constraints.limit, Some(Limit::Chars(3)), "the elements' typmod");
        assert!(
            plan[0].constraints.check_exprs.is_empty(),
            "a CHECK on an array is Postgres'"
        );
        assert_eq!(
            plan[1].constraints.labels,
            Some(Labels::new("mood", &["ok".into(), "sad".into()]))
        );
        let errors = plan_columns(
            "p",
            &table,
            &[
                ("spots".to_string(), ColumnSource::Pointer("/s".into())),
                ("offs".to_string(), ColumnSource::Offset),
                ("codes".to_string(), ColumnSource::Const("{ab,cd}".into())),
            ],
            Some(&live),
        )
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text[0].contains("column `spots` has type _point"), "{text:?}");
        assert!(
            text[2].contains("={ab,cd} cannot be written to an array column (text[])"),
            "{text:?}"
        );
        assert!(
            text[1].contains("@offset cannot be written to an array column (bigint[])"),
            "{text:?}"
        );
    }

    #[test]
    fn missing_table() {
        let table = TableRef {
            schema: "public".into(),
            name: "nope".into(),
        };
        let errors = plan_columns("p", &table, &[], None).unwrap_err();
        assert_eq!(errors[0].to_string(), "pipeline `p`: table public.nope does not exist");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        let t = TableRef {
            schema: "Public".into(),
            name: "My Table".into(),
        };
        assert_eq!(t.quoted(), "\"Public\".\"My Table\"");
    }
}
