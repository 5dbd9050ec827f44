//! CHECK expressions of the simple kind, `column op constant`, evaluated by
//! the encoder before Postgres does ([`CheckExpr`]).
//!
//! A row breaking a CHECK fails its whole COPY, and isolating it costs
//! re-copying part of the batch (see `postgres::bisect`). The common CHECKs
//! compare one column with a constant (`score >= 0`, `name <> ''`); those
//! are read from the live table and evaluated on each encoded value, so
//! such a record is set aside alone with SQLSTATE 23514, as Postgres would.
//!
//! Only what can be decided exactly is decided: a number column compared
//! with a number, and a text column tested for (in)equality with a string
//! under a deterministic collation. A NULL passes (a CHECK fails only when
//! false). Anything else — other shapes, functions, other types, values
//! that don't parse — is left to Postgres.

use std::cmp::Ordering;

use crate::mapping::PgType;
use crate::row::copy_text::copy_unescaped;
use crate::row::numeric::Decimal;

/// `column op constant`, from one CHECK constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckExpr {
    /// The constraint's name, for the message.
    pub name: String,
    /// The expression as Postgres shows it, for the message.
    pub shown: String,
    op: Op,
    constant: Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Constant {
    Number(String),
    Text(String),
}

impl CheckExpr {
    /// Reads `pg_get_constraintdef` output such as `CHECK ((score >= 0))`
    /// or `CHECK (((name)::text <> ''::text)) NOT VALID` for a constraint
    /// on `column` of type `ty`; `None` for anything this module does not
    /// decide. `deterministic`: the column's collation compares bytes.
    pub fn parse(name: &str, column: &str, ty: PgType, deterministic: bool, def: &str) -> Option<CheckExpr> {
        let def = def.trim();
        let def = def.strip_suffix(" NOT VALID").unwrap_or(def);
        let inner = def.strip_prefix("CHECK ((")?.strip_suffix("))")?;
        let (lhs, op, rhs) = split_op(inner)?;
        if strip_cast(lhs.trim()) != quoted_ident(column) && strip_cast(lhs.trim()) != column {
            return None;
        }
        let constant = parse_constant(rhs.trim())?;
        let numeric = matches!(
            ty,
            PgType::Int2 | PgType::Int4 | PgType::Int8 | PgType::Numeric | PgType::Float4 | PgType::Float8
        );
        let fits = match &constant {
            Constant::Number(n) => numeric && Decimal::parse(n).is_some(),
            Constant::Text(_) => ty == PgType::Text && deterministic && matches!(op, Op::Eq | Op::Ne),
        };
        fits.then(|| CheckExpr {
            name: name.to_owned(),
            shown: inner.to_owned(),
            op,
            constant,
        })
    }

    /// Whether `encoded` (one column in COPY text form, not NULL) makes
    /// the CHECK false. Undecidable values pass.
    pub fn violated(&self, encoded: &[u8]) -> bool {
        let ordering = match &self.constant {
            Constant::Number(n) => {
                let (Ok(value), Some(constant)) = (std::str::from_utf8(encoded), Decimal::parse(n)) else {
                    return false;
                };
                // NaN and infinities are left to Postgres.
                let Some(value) = Decimal::parse(value) else {
                    return false;
                };
                value.cmp_value(&constant)
            }
            Constant::Text(t) => {
                if copy_unescaped(encoded).eq(t.bytes()) {
                    Ordering::Equal
                } else {
                    // Only = and <> are accepted for text: any inequality will do.
                    Ordering::Less
                }
            }
        };
        let holds = match self.op {
            Op::Eq => ordering == Ordering::Equal,
            Op::Ne => ordering != Ordering::Equal,
            Op::Lt => ordering == Ordering::Less,
            Op::Le => ordering != Ordering::Greater,
            Op::Gt => ordering == Ordering::Greater,
            Op::Ge => ordering != Ordering::Less,
        };
        !holds
    }
}

/// Splits `lhs op rhs` at the first comparison operator outside quotes.
fn split_op(s: &str) -> Option<(&str, Op, &str)> {
    let b = s.as_bytes();
    let mut in_quote = false;
    for i in 0..b.len() {
        match b[i] {
            b'\'' => in_quote = !in_quote,
            b' ' if !in_quote => {
                for (text, op) in [
                    (" <> ", Op::Ne),
                    (" <= ", Op::Le),
                    (" >= ", Op::Ge),
                    (" = ", Op::Eq),
                    (" < ", Op::Lt),
                    (" > ", Op::Gt),
                ] {
                    if s[i..].starts_with(text) {
                        return Some((&s[..i], op, &s[i + text.len()..]));
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// `(name)::text` → `name`; anything else as is.
fn strip_cast(s: &str) -> &str {
    match s.strip_prefix('(').and_then(|r| r.split_once(")::")) {
        Some((inner, _)) => inner,
        None => s,
    }
}

fn quoted_ident(column: &str) -> String {
    format!("\"{}\"", column.replace('"', "\"\""))
}

/// `0`, `-1.5`, `(0)::numeric`, `'-1'::integer`, `''::text`,
/// `'a''b'::character varying`.
fn parse_constant(s: &str) -> Option<Constant> {
    if let Some(rest) = s.strip_prefix('\'') {
        // A quoted literal, then its cast.
        let mut text = String::new();
        let mut chars = rest.char_indices().peekable();
        let end = loop {
            let (i, c) = chars.next()?;
            if c == '\'' {
                if chars.peek().map(|(_, c)| *c) == Some('\'') {
                    chars.next();
                    text.push('\'');
                    continue;
                }
                break i;
            }
            text.push(c);
        };
        let cast = rest[end + 1..].strip_prefix("::")?;
        return match cast {
            "text" | "character varying" | "bpchar" | "character" => Some(Constant::Text(text)),
            "integer" | "bigint" | "smallint" | "numeric" | "real" | "double precision" => {
                let valid = Decimal::parse(&text).is_some();
                valid.then_some(Constant::Number(text))
            }
            _ => None,
        };
    }
    let bare = match s.strip_prefix('(').and_then(|r| r.split_once(")::")) {
        Some((inner, "numeric" | "integer" | "bigint" | "smallint" | "real" | "double precision")) => inner,
        Some(_) => return None,
        None => s,
    };
    Decimal::parse(bare).map(|_| Constant::Number(bare.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(column: &str, ty: PgType, def: &str) -> Option<CheckExpr> {
        CheckExpr::parse("c", column, ty, true, def)
    }

    #[test]
    fn numbers_compare_exactly() {
        let c = expr("score", PgType::Int4, "CHECK ((score >= 0))").unwrap();
        assert!(c.violated(b"-1"));
        assert!(!c.violated(b"0"));
        assert!(!c.violated(b"17"));
        let c = expr("amount", PgType::Numeric, "CHECK ((amount > (0)::numeric))").unwrap();
        assert!(c.violated(b"0.000"));
        assert!(c.violated(b"-0.5"));
        assert!(!c.violated(b"0.0001"));
        assert!(!c.violated(b"1e-30"));
        assert!(!c.violated(b"NaN"), "left to Postgres");
        let c = expr("q", PgType::Int8, "CHECK ((q < '-1'::integer)) NOT VALID").unwrap();
        assert!(c.violated(b"-1"));
        assert!(!c.violated(b"-2"));
        let c = expr("q", PgType::Float8, "CHECK ((q <> 2.50))").unwrap();
        assert!(c.violated(b"2.5"));
        assert!(!c.violated(b"2.5000001"));
        let c = expr("Big", PgType::Numeric, "CHECK ((\"Big\" <= 99999999999999999999.5))").unwrap();
        assert!(!c.violated(b"99999999999999999999.49"));
        assert!(c.violated(b"1e20"));
    }

    #[test]
    fn text_only_equality_under_deterministic_collations() {
        let c = expr("name", PgType::Text, "CHECK ((name <> ''::text))").unwrap();
        assert!(c.violated(b""));
        assert!(!c.violated(b"x"));
        let c = expr("name", PgType::Text, "CHECK (((name)::text <> 'it''s'::text))").unwrap();
        assert!(c.violated(b"it's"));
        assert!(!c.violated(b"its"));
        let c = expr("s", PgType::Text, "CHECK ((s = 'a\tb'::text))").unwrap();
        assert!(!c.violated(br"a\tb"), "compares the unescaped value");
        assert!(
            expr("name", PgType::Text, "CHECK ((name > 'm'::text))").is_none(),
            "ordering needs the collation"
        );
        assert!(CheckExpr::parse("c", "name", PgType::Text, false, "CHECK ((name <> ''::text))").is_none());
    }

    #[test]
    fn other_shapes_are_left_to_postgres() {
        for def in [
            "CHECK ((length(name) > 0))",
            "CHECK ((a > b))",
            "CHECK (((score >= 0) AND (score < 10)))",
            "CHECK ((score = ANY (ARRAY[1, 2])))",
            "CHECK ((other >= 0))",
            "CHECK ((score >= '1 day'::interval))",
        ] {
            assert!(expr("score", PgType::Int4, def).is_none(), "{def}");
        }
        assert!(expr("flag", PgType::Bool, "CHECK ((flag = true))").is_none());
        assert!(expr("n", PgType::Int4, "CHECK ((n <> ''::text))").is_none());
    }
}
