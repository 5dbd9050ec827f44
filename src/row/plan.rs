//! What the encoder is told about the target table: its columns in order
//! ([`ColumnPlan`]), the constraints of each that are checked before
//! Postgres does ([`Constraints`], [`Limit`]), and its unique keys
//! ([`UniqueKey`]). Plain data, built by the schema check from the live
//! table.

use crate::mapping::{ColumnSource, PgType};
use crate::row::check_expr::CheckExpr;

/// One column of the target table: name, where its value comes from, its
/// live Postgres type, and what the table forbids that sluice checks first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPlan {
    pub name: String,
    pub source: ColumnSource,
    /// The column's type; for an array column, its elements' type.
    pub ty: PgType,
    /// An array of `ty` (`integer[]`, of any number of dimensions): the
    /// value must be a JSON array (of arrays, rectangular), each element
    /// converted as into a `ty` column. For an array, `constraints.limit`
    /// and `constraints.labels` apply to each element.
    pub array: bool,
    pub constraints: Constraints,
}

impl ColumnPlan {
    /// A column with no constraints checked ahead of Postgres.
    pub fn new(name: impl Into<String>, source: ColumnSource, ty: PgType) -> Self {
        Self {
            name: name.into(),
            source,
            ty,
            array: false,
            constraints: Constraints::default(),
        }
    }

    /// An array column of `elem`, with no constraints checked ahead of Postgres.
    pub fn array_of(name: impl Into<String>, source: ColumnSource, elem: PgType) -> Self {
        Self {
            array: true,
            ..Self::new(name, source, elem)
        }
    }

    /// The column's SQL type name, for messages and casts: `integer`, `integer[]`.
    pub fn type_name(&self) -> std::borrow::Cow<'static, str> {
        match self.array {
            false => self.ty.sql_name().into(),
            true => format!("{}[]", self.ty.sql_name()).into(),
        }
    }
}

/// Constraints of a live column that the encoder checks before Postgres
/// does. A row breaking one would fail its whole COPY batch, to be isolated
/// by re-copying parts of it (see `postgres::bisect`); checked here, the record
/// is set aside alone. It is reported with the SQLSTATE Postgres would raise,
/// as a `data` dead letter. Empty when the table has BEFORE row triggers,
/// which may change a row before the constraints apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Constraints {
    /// `NOT NULL`: SQLSTATE 23502.
    pub not_null: bool,
    /// A length or precision limit of the type: SQLSTATE 22001 or 22003.
    pub limit: Option<Limit>,
    /// CHECKs comparing this column with a constant: SQLSTATE 23514.
    pub check_exprs: Vec<CheckExpr>,
    /// An enum type's labels: a value must be one of them (SQLSTATE 22P02).
    pub labels: Option<Labels>,
}

impl Constraints {
    /// Whether there is nothing to check.
    pub fn is_empty(&self) -> bool {
        !self.not_null && self.limit.is_none() && self.check_exprs.is_empty() && self.labels.is_none()
    }
}

/// An enum type's name and labels, kept as COPY text fields (so a written
/// field compares byte for byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    pub type_name: String,
    pub fields: Vec<Vec<u8>>,
}

impl Labels {
    pub fn new(type_name: &str, labels: &[String]) -> Labels {
        let fields = labels
            .iter()
            .map(|l| {
                let mut field = Vec::with_capacity(l.len());
                // A label never holds NUL (Postgres text cannot).
                let _ = crate::row::copy_text::push_text(&mut field, l);
                field
            })
            .collect();
        Labels {
            type_name: type_name.to_owned(),
            fields,
        }
    }
}

/// A type modifier sluice checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `numeric(precision, scale)`, with `0 <= scale <= precision`.
    Numeric { precision: u16, scale: u16 },
    /// `varchar(n)` or `char(n)`: at most `n` characters, not counting
    /// trailing spaces beyond `n` (Postgres drops those).
    Chars(u32),
}

impl Limit {
    /// The limit of a column from `pg_attribute.atttypmod`; `None` when the
    /// type has none sluice checks (or an unusual one, left to Postgres).
    pub fn from_typmod(type_name: &str, typmod: i32) -> Option<Limit> {
        // VARHDRSZ
        let t = typmod.checked_sub(4).filter(|t| *t >= 0)?;
        match type_name {
            "varchar" | "bpchar" => Some(Limit::Chars(t as u32)),
            "numeric" => {
                let precision = ((t >> 16) & 0xffff) as u16;
                // Postgres 15+ stores the scale as 11-bit two's complement;
                // negative scales and scales above the precision are left to it.
                let raw = t & 0x7ff;
                let scale = if raw & 0x400 != 0 { raw - 0x800 } else { raw };
                (precision >= 1 && (0..=i32::from(precision)).contains(&scale)).then_some(Limit::Numeric {
                    precision,
                    scale: scale as u16,
                })
            }
            _ => None,
        }
    }
}

/// A unique index (or primary key) of the live table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueKey {
    /// The index's name, as Postgres names it in 23505 errors.
    pub name: String,
    /// Indexes into the encoder's columns, in the index's column order.
    pub columns: Vec<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typmods() {
        assert_eq!(Limit::from_typmod("varchar", 14), Some(Limit::Chars(10)));
        assert_eq!(Limit::from_typmod("bpchar", 5), Some(Limit::Chars(1)));
        assert_eq!(Limit::from_typmod("varchar", -1), None);
        assert_eq!(
            Limit::from_typmod("numeric", ((8 << 16) | 2) + 4),
            Some(Limit::Numeric { precision: 8, scale: 2 })
        );
        // numeric(3,-2) (Postgres 15+) is left to Postgres.
        assert_eq!(Limit::from_typmod("numeric", ((3 << 16) | (0x800 - 2)) + 4), None);
        assert_eq!(Limit::from_typmod("numeric", -1), None);
        assert_eq!(Limit::from_typmod("int4", -1), None);
    }
}
