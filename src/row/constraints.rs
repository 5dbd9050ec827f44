//! The live table's constraints, enforced on each encoded value before
//! Postgres does: NOT NULL (23502), a `varchar(n)`/`char(n)` length
//! (22001), a `numeric(p, s)` precision (22003) and simple CHECK
//! expressions (23514, see [`CheckExpr`](crate::row::CheckExpr)). A row
//! breaking one would fail its whole COPY batch; caught here, the record is
//! set aside alone with the SQLSTATE Postgres would raise.

use crate::row::copy_text::{copy_unescaped, NULL};
use crate::row::numeric::Decimal;
use crate::row::plan::{ColumnPlan, Limit};
use crate::row::show::{show_bytes, show_str, SHOW_CHARS};

/// A constraint an encoded value breaks: the SQLSTATE Postgres would raise
/// and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Violation {
    pub sqlstate: &'static str,
    pub reason: String,
}

impl Violation {
    fn new(sqlstate: &'static str, reason: String) -> Self {
        Self { sqlstate, reason }
    }
}

/// Checks an encoded column value (COPY text) against the live column's
/// constraints, the way Postgres would on insert.
pub(super) fn enforce(col: &ColumnPlan, encoded: &[u8]) -> Result<(), Violation> {
    if encoded == NULL {
        return match col.constraints.not_null {
            true => Err(Violation::new(
                "23502",
                format!("null value in column \"{}\" violates its not-null constraint", col.name),
            )),
            false => Ok(()),
        };
    }
    if col.array {
        // NULL elements are allowed (Postgres has no per-element NOT NULL);
        // the type's limit and an enum's labels hold for every element.
        if col.constraints.labels.is_none() && col.constraints.limit.is_none() {
            return Ok(());
        }
        let mut element = Vec::new();
        let mut at = 0;
        while let Some(next) = next_element(encoded, at, &mut element) {
            at = next;
            if element.as_slice() != NULL {
                enforce_value(col, &element)?;
            }
        }
        return Ok(());
    }
    enforce_value(col, encoded)
}

/// The next element of an array literal as `write_value` writes it
/// (elements double-quoted, or `NULL`; braces for dimensions), from byte
/// `at`: its COPY text into `element` (`\N` for NULL); the position after
/// it, or `None` at the end.
fn next_element(literal: &[u8], mut at: usize, element: &mut Vec<u8>) -> Option<usize> {
    element.clear();
    while at < literal.len() && matches!(literal[at], b'{' | b'}' | b',') {
        at += 1;
    }
    if at >= literal.len() {
        return None;
    }
    if literal[at..].starts_with(b"NULL") {
        element.extend_from_slice(NULL);
        return Some(at + 4);
    }
    // A quoted element: undo the literal's escapes, keep COPY's.
    at += 1;
    while at < literal.len() {
        match literal[at] {
            b'"' => return Some(at + 1),
            b'\\' if literal[at + 1..].starts_with(b"\\\\\\") => {
                element.extend_from_slice(b"\\\\");
                at += 4;
            }
            b'\\' if literal[at + 1..].starts_with(b"\\\"") => {
                element.push(b'"');
                at += 3;
            }
            b'\\' => {
                element.extend_from_slice(&literal[at..(at + 2).min(literal.len())]);
                at += 2;
            }
            b => {
                element.push(b);
                at += 1;
            }
        }
    }
    Some(at)
}

/// A non-NULL value (or array element) against the labels, checks and limit.
fn enforce_value(col: &ColumnPlan, encoded: &[u8]) -> Result<(), Violation> {
    if let Some(labels) = col
        .constraints
        .labels
        .as_ref()
        .filter(|l| !l.fields.iter().any(|f| f == encoded))
    {
        return Err(Violation::new(
            "22P02",
            format!(
                "{} is not a label of enum {} ({})",
                show_bytes(&unescape_head(encoded)),
                labels.type_name,
                labels
                    .fields
                    .iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if let Some(expr) = col.constraints.check_exprs.iter().find(|c| c.violated(encoded)) {
        return Err(Violation::new(
            "23514",
            format!(
                "{} violates check constraint \"{}\" ({})",
                show_bytes(&unescape_head(encoded)),
                expr.name,
                expr.shown
            ),
        ));
    }
    match col.constraints.limit {
        None => Ok(()),
        Some(Limit::Chars(n)) => match chars_over(encoded, n as usize) {
            false => Ok(()),
            true => Err(Violation::new(
                "22001",
                format!(
                    "{} is longer than the column's {n} characters: value too long",
                    show_bytes(&unescape_head(encoded))
                ),
            )),
        },
        Some(Limit::Numeric { precision, scale }) if surely_fits(encoded, precision.saturating_sub(scale)) => Ok(()),
        Some(Limit::Numeric { precision, scale }) => {
            // `push_numeric` wrote the literal as given (or NaN, which fits).
            let text = std::str::from_utf8(encoded).unwrap_or("");
            match Decimal::parse(text) {
                Some(d) if !d.fits_precision(precision, scale) => Err(Violation::new(
                    "22003",
                    format!(
                        "{} does not fit numeric({precision},{scale}): numeric field overflow (it must \
                         round to an absolute value below 10^{})",
                        show_str(text),
                        precision - scale
                    ),
                )),
                _ => Ok(()),
            }
        }
    }
}

/// Whether a plain decimal literal (`-?digits[.digits]`, what most
/// records hold) has fewer digits before the point than `room`, leading
/// zeros aside: it then fits whatever its rounding, which can add at most
/// one digit. `false` means "parse it and see" ([`Decimal::fits_precision`]).
fn surely_fits(encoded: &[u8], room: u16) -> bool {
    let digits = encoded.strip_prefix(b"-").unwrap_or(encoded);
    let int = memchr::memchr(b'.', digits).map_or(digits, |at| &digits[..at]);
    let frac = digits.get(int.len() + 1..).unwrap_or_default();
    let significant = int.len() - int.iter().take_while(|&&d| d == b'0').count();
    int.iter().chain(frac).all(u8::is_ascii_digit) && significant < usize::from(room)
}

/// Whether COPY-escaped text holds more than `n` characters, not counting
/// spaces after the `n`th (varchar and char drop those silently).
fn chars_over(encoded: &[u8], n: usize) -> bool {
    let mut count = 0;
    let mut i = 0;
    while i < encoded.len() {
        let b = encoded[i];
        // An escape (`\t`, `\\`, …) is one character in two bytes.
        let step = if b == b'\\' { 2 } else { 1 };
        if b & 0xC0 != 0x80 {
            count += 1;
            if count > n && b != b' ' {
                return true;
            }
        }
        i += step;
    }
    false
}

/// The start of COPY-escaped text, unescaped, for a message.
fn unescape_head(encoded: &[u8]) -> Vec<u8> {
    copy_unescaped(&encoded[..encoded.len().min(SHOW_CHARS * 4 + 2)]).collect()
}

#[cfg(test)]
mod tests {
    use crate::mapping::PgType;
    use crate::mapping::PgType::*;
    use crate::row::testing::*;
    use crate::row::{CheckExpr, ColumnPlan, Constraints, Limit, RowEncoder};

    fn constrained(ty: PgType, constraints: Constraints) -> RowEncoder {
        RowEncoder::new(vec![ColumnPlan {
            constraints,
            ..col("c", "/x", ty)
        }])
    }

    #[test]
    fn an_enum_takes_only_its_labels() {
        let labels = crate::row::Labels::new("mood", &["happy".to_owned(), "so\tso".to_owned()]);
        let enc = constrained(
            Text,
            Constraints {
                labels: Some(labels),
                ..Default::default()
            },
        );
        assert_eq!(line(&enc, &rec(Some(br#"{"x":"happy"}"#), None)).unwrap(), "happy");
        assert_eq!(line(&enc, &rec(Some(br#"{"x":"so\tso"}"#), None)).unwrap(), "so\\tso");
        assert_eq!(line(&enc, &rec(Some(br#"{"x":null}"#), None)).unwrap(), "\\N");
        let e = line(&enc, &rec(Some(br#"{"x":"sad"}"#), None)).unwrap_err();
        assert_eq!(e.sqlstate, Some("22P02"));
        assert!(
            e.to_string()
                .contains(r#""sad" is not a label of enum mood (happy, so\tso)"#),
            "{e}"
        );
    }

    #[test]
    fn live_constraints_are_checked_with_postgres_sqlstates() {
        let enc = constrained(
            Text,
            Constraints {
                not_null: true,
                ..Default::default()
            },
        );
        for doc in [&br#"{"x":null}"#[..], br#"{}"#] {
            let e = line(&enc, &rec(Some(doc), None)).unwrap_err();
            assert_eq!(e.sqlstate, Some("23502"));
            assert!(e.to_string().contains(r#"null value in column "c""#), "{e}");
        }
        assert_eq!(line(&enc, &rec(Some(br#"{"x":""}"#), None)).unwrap(), "");

        let enc = constrained(
            Text,
            Constraints {
                limit: Some(Limit::Chars(3)),
                ..Default::default()
            },
        );
        let ok = |doc: &str| line(&enc, &rec(Some(doc.as_bytes()), None));
        assert_eq!(ok(r#"{"x":"abc"}"#).unwrap(), "abc");
        assert_eq!(ok(r#"{"x":"héé"}"#).unwrap(), "héé", "characters, not bytes");
        assert_eq!(ok(r#"{"x":"a\tb"}"#).unwrap(), r"a\tb", "an escape is one character");
        assert_eq!(
            ok(r#"{"x":"abc   "}"#).unwrap(),
            "abc   ",
            "trailing spaces are dropped by Postgres"
        );
        assert_eq!(ok(r#"{"x":null}"#).unwrap(), r"\N");
        for long in [
            r#"{"x":"abcd"}"#,
            r#"{"x":"a\t\tb"}"#,
            r#"{"x":"abc  x"}"#,
            r#"{"x":1234}"#,
        ] {
            let e = ok(long).unwrap_err();
            assert_eq!(e.sqlstate, Some("22001"), "{long}");
            assert!(e.to_string().contains("longer than the column's 3 characters"), "{e}");
        }

        let enc = constrained(
            Numeric,
            Constraints {
                limit: Some(Limit::Numeric { precision: 8, scale: 2 }),
                ..Default::default()
            },
        );
        let num = |n: &str| line(&enc, &rec(Some(format!(r#"{{"x":{n}}}"#).as_bytes()), None));
        for fits in [
            "999999.99",
            "-999999.994",
            "0.001",
            "123456",
            "1e5",
            "\"NaN\"",
            "0",
            "99999999e-2",
        ] {
            assert!(num(fits).is_ok(), "{fits}: {:?}", num(fits));
        }
        for over in ["12345678.5", "999999.995", "-1000000", "1e6", "\"1234567\""] {
            let e = num(over).unwrap_err();
            assert_eq!(e.sqlstate, Some("22003"), "{over}");
            assert!(e.to_string().contains("numeric field overflow"), "{e}");
        }
        let enc = constrained(
            Int4,
            Constraints {
                check_exprs: vec![CheckExpr::parse("t_x_check", "c", Int4, true, "CHECK ((c >= 0))").unwrap()],
                ..Default::default()
            },
        );
        let e = line(&enc, &rec(Some(br#"{"x":-3}"#), None)).unwrap_err();
        assert_eq!(e.sqlstate, Some("23514"));
        assert!(
            e.to_string()
                .contains(r#"violates check constraint "t_x_check" (c >= 0)"#),
            "{e}"
        );
        assert_eq!(line(&enc, &rec(Some(br#"{"x":3}"#), None)).unwrap(), "3");
        assert_eq!(
            line(&enc, &rec(Some(br#"{"x":null}"#), None)).unwrap(),
            r"\N",
            "NULL passes a CHECK"
        );
        // The shortcut takes plain literals with room to spare, and only those.
        assert!(super::surely_fits(b"123.45", 4));
        assert!(super::surely_fits(b"-0012.5", 3));
        assert!(!super::surely_fits(b"999.99", 3));
        assert!(!super::surely_fits(b"1e2", 9));
        assert!(!super::surely_fits(b"NaN", 9));
        // An unconstrained column leaves it all to Postgres.
        assert!(conv(Numeric, "12345678.5").is_ok());
        assert_eq!(conv(Text, "null").unwrap(), r"\N");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// The shortcut never lets through what the full check refuses.
        #[test]
        fn a_numeric_that_surely_fits_fits(
            text in "-?0{0,2}[0-9]{0,9}(\\.[0-9]{0,4})?([eE][+-]?[0-9])?|NaN|-?[0-9.]{0,6}",
            precision in 1u16..12,
            scale in 0u16..12,
        ) {
            let scale = scale.min(precision);
            let fits = super::Decimal::parse(&text).is_none_or(|d| d.fits_precision(precision, scale));
            if super::surely_fits(text.as_bytes(), precision - scale) {
                proptest::prop_assert!(fits, "{} in numeric({},{})", text, precision, scale);
            }
        }
    }
}
