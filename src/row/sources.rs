//! Where a column's value comes from: a JSON pointer into the record value
//! or into its key, or the record's metadata (`@topic`, `@partition`,
//! `@offset`, `@timestamp`, `@key`, `@header:name`, `@headers`, a constant).
//! [`RecordRef`] is the record these sources read.

use serde_json::Value;

use crate::mapping::{ColumnSource, PgType};
use crate::row::convert::write_value;
use crate::row::copy_text::{has_nul, push_hex_bytea, push_i64, push_json, push_text, push_uuid, Conv, NulByte, NULL};
use crate::row::numeric::{parse_int_in, push_numeric, NumError};
use crate::row::project::JsonRef;
use crate::row::show::{json_error, show_bytes, show_str, unsupported};
use crate::row::time::{push_timestamp, OutOfRange};

/// A borrowed view of a Kafka record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The Debezium event's `source` block (JSON), for `@source` columns.
    pub source: Option<&'a [u8]>,
    /// The record's headers in order; empty unless a column reads them
    /// ([`RowEncoder::reads_headers`](crate::row::RowEncoder::reads_headers)).
    pub headers: &'a [HeaderRef<'a>],
}

/// A Kafka header: its name and value (`None` for a null header).
pub type HeaderRef<'a> = (&'a str, Option<&'a [u8]>);

/// A column's JSON pointer (RFC 6901), split and unescaped once when the
/// encoder is built rather than on every record.
#[derive(Debug, Clone)]
pub(super) enum Path {
    /// The column reads metadata, not the value.
    Meta,
    Whole,
    Tokens(Box<[Token]>),
    /// A pointer without a leading `/`; like `Value::pointer`, it never matches.
    Nothing,
}

#[derive(Debug, Clone)]
pub(super) struct Token {
    key: Box<str>,
    /// The token as an array index, by the same rule as `Value::pointer`
    /// (no sign, no leading zeros).
    index: Option<usize>,
}

impl Token {
    pub(super) fn key(&self) -> &str {
        &self.key
    }

    pub(super) fn index(&self) -> Option<usize> {
        self.index
    }
}

impl Path {
    pub(super) fn compile(source: &ColumnSource) -> Self {
        let (ColumnSource::Pointer(p) | ColumnSource::KeyPointer(p) | ColumnSource::Source(p)) = source else {
            return Self::Meta;
        };
        // "/" is the whole value in the mapping language (see `ColumnSource::parse`),
        // even though RFC 6901 would read it as the key "".
        if p.is_empty() || p == "/" {
            return Self::Whole;
        }
        let Some(rest) = p.strip_prefix('/') else {
            return Self::Nothing;
        };
        let tokens = rest
            .split('/')
            .map(|raw| {
                let key = if raw.contains('~') {
                    raw.replace("~1", "/").replace("~0", "~")
                } else {
                    raw.to_owned()
                };
                let index = if key.starts_with('+') || (key.starts_with('0') && key.len() > 1) {
                    None
                } else {
                    key.parse().ok()
                };
                Token {
                    key: key.into_boxed_str(),
                    index,
                }
            })
            .collect();
        Self::Tokens(tokens)
    }

    pub(super) fn resolve<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        match self {
            Self::Whole => Some(doc),
            Self::Tokens(tokens) => resolve_tokens(doc, tokens),
            Self::Meta | Self::Nothing => None,
        }
    }
}

/// What `tokens` reach in `doc`, by the rules of `Value::pointer`.
pub(super) fn resolve_tokens<'v>(doc: &'v Value, tokens: &[Token]) -> Option<&'v Value> {
    tokens.iter().try_fold(doc, |cur, t| match cur {
        Value::Object(m) => m.get(&*t.key),
        Value::Array(a) => t.index.and_then(|i| a.get(i)),
        _ => None,
    })
}

/// A metadata column (anything but a JSON pointer).
pub(super) fn write_meta(out: &mut Vec<u8>, source: &ColumnSource, rec: &RecordRef<'_>, ty: PgType) -> Conv {
    match source {
        ColumnSource::Topic => write_topic(out, rec.topic, ty),
        ColumnSource::Partition => write_partition(out, rec.partition, ty),
        ColumnSource::Offset => write_offset(out, rec.offset, ty),
        ColumnSource::Timestamp => write_timestamp_meta(out, rec.timestamp_ms, ty),
        ColumnSource::Key => write_raw(out, rec.key, ty, "@key"),
        ColumnSource::Header(name) => {
            let value = rec.headers.iter().rev().find(|(n, _)| n == name).and_then(|(_, v)| *v);
            write_raw(out, value, ty, &format!("@header:{name}"))
        }
        ColumnSource::Headers => write_headers(out, rec.headers, ty),
        ColumnSource::Const(text) => {
            push_text(out, text).map_err(|NulByte| "the constant contains a NUL character".to_owned())
        }
        ColumnSource::Pointer(_) | ColumnSource::KeyPointer(_) | ColumnSource::Source(_) => {
            unreachable!("pointers are resolved by the caller")
        }
    }
}

/// A JSON pointer into the Kafka key parsed as JSON (or into another JSON
/// document beside the value: `what` names it, `@key` or `@source`); NULL
/// when there is no such document or nothing at the pointer.
pub(super) fn write_key_pointer(
    out: &mut Vec<u8>,
    path: &Path,
    key: Option<&[u8]>,
    (ty, array, bare_timestamps): (PgType, bool, bool),
    what: &str,
) -> Conv {
    let Some(key) = key else {
        out.extend_from_slice(NULL);
        return Ok(());
    };
    let text = std::str::from_utf8(key).map_err(|e| format!("{what} is not valid UTF-8: {e}"))?;
    let doc: Value = serde_json::from_str(text).map_err(|e| json_error(&format!("{what} is not valid JSON"), &e))?;
    match path.resolve(&doc) {
        None | Some(Value::Null) => {
            out.extend_from_slice(NULL);
            Ok(())
        }
        Some(v) => write_value(out, JsonRef::of(v), ty, array, bare_timestamps),
    }
}

/// A header's value as JSON: a string when it is UTF-8, `{"base64": …}`
/// when not, `null` for a null header (as `@headers` and the dead-letter
/// store show them).
pub fn header_value_json(value: Option<&[u8]>) -> Value {
    use base64::Engine as _;
    match value {
        None => Value::Null,
        Some(v) => match std::str::from_utf8(v) {
            Ok(s) => Value::String(s.to_owned()),
            Err(_) => serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(v) }),
        },
    }
}

/// Every header as a JSON object, name → value: the value as a string when
/// it is UTF-8, `{"base64": …}` when not, `null` for a null header; the last
/// one wins when a name repeats.
fn write_headers(out: &mut Vec<u8>, headers: &[HeaderRef<'_>], ty: PgType) -> Conv {
    if !matches!(ty, PgType::Json | PgType::Jsonb | PgType::Text) {
        return Err(unsupported("@headers", ty));
    }
    let mut object = serde_json::Map::new();
    for (name, value) in headers {
        object.insert((*name).to_owned(), header_value_json(*value));
    }
    let v = Value::Object(object);
    if has_nul(&v) {
        return Err("@headers contain a NUL character (\\u0000), which Postgres cannot store".to_owned());
    }
    push_json(out, &v)
}

fn write_topic(out: &mut Vec<u8>, topic: &str, ty: PgType) -> Conv {
    if ty != PgType::Text {
        return Err(unsupported("@topic", ty));
    }
    push_text(out, topic).map_err(|NulByte| "@topic contains a NUL character".to_owned())
}

fn write_partition(out: &mut Vec<u8>, partition: i32, ty: PgType) -> Conv {
    use PgType::*;
    match ty {
        Int2 if i16::try_from(partition).is_err() => Err(format!("@partition {partition} is out of range")),
        Int2 | Int4 | Int8 | Numeric | Text => {
            push_i64(out, partition.into());
            Ok(())
        }
        _ => Err(unsupported("@partition", ty)),
    }
}

fn write_offset(out: &mut Vec<u8>, offset: i64, ty: PgType) -> Conv {
    use PgType::*;
    match ty {
        Int4 if i32::try_from(offset).is_err() => Err(format!("@offset {offset} is out of range")),
        Int4 | Int8 | Numeric | Text => {
            push_i64(out, offset);
            Ok(())
        }
        _ => Err(unsupported("@offset", ty)),
    }
}

fn write_timestamp_meta(out: &mut Vec<u8>, ts: Option<i64>, ty: PgType) -> Conv {
    use PgType::*;
    // The type is checked before the NULL shortcut so a bad mapping fails on
    // the first record, not on the first one that happens to have a timestamp.
    if !matches!(ty, Timestamptz | Timestamp | Int8 | Numeric | Text) {
        return Err(unsupported("@timestamp", ty));
    }
    let Some(ms) = ts else {
        out.extend_from_slice(NULL);
        return Ok(());
    };
    match ty {
        Timestamptz | Timestamp => ms
            .checked_mul(1000)
            .ok_or(OutOfRange)
            .and_then(|micros| push_timestamp(out, micros, ty == Timestamptz))
            .map_err(|OutOfRange| format!("@timestamp {ms} is out of range")),
        _ => {
            push_i64(out, ms);
            Ok(())
        }
    }
}

/// Raw bytes (the key, or a header's value) into a column: bytea as they
/// are; text, JSON, UUID and numbers parsed from UTF-8. `what` names the
/// source in messages.
fn write_raw(out: &mut Vec<u8>, key: Option<&[u8]>, ty: PgType, what: &str) -> Conv {
    use PgType::*;
    if !matches!(ty, Text | Bytea | Json | Jsonb | Uuid | Int8 | Int4 | Numeric) {
        return Err(unsupported(what, ty));
    }
    let Some(key) = key else {
        out.extend_from_slice(NULL);
        return Ok(());
    };
    if ty == Bytea {
        push_hex_bytea(out, key);
        return Ok(());
    }
    if ty == Uuid {
        let u = uuid::Uuid::try_parse_ascii(key)
            .map_err(|_| format!("expected a UUID, found {what} {}", show_bytes(key)))?;
        push_uuid(out, u);
        return Ok(());
    }
    let text = std::str::from_utf8(key).map_err(|e| format!("{what} is not valid UTF-8: {e}"))?;
    match ty {
        Text => push_text(out, text).map_err(|NulByte| format!("{what} {} contains a NUL character", show_str(text))),
        Json | Jsonb => {
            let v: Value =
                serde_json::from_str(text).map_err(|e| json_error(&format!("{what} is not valid JSON"), &e))?;
            if has_nul(&v) {
                return Err(format!(
                    "{what} contains a NUL character (\\u0000), which Postgres cannot store"
                ));
            }
            push_json(out, &v)
        }
        Int4 | Int8 => {
            let i = parse_int_in(text, ty).map_err(|e| match e {
                NumError::Invalid => format!("expected an integer, found {what} {}", show_str(text)),
                NumError::OutOfRange => format!("{what} {} is out of range", show_str(text)),
            })?;
            push_i64(out, i);
            Ok(())
        }
        _ => push_numeric(out, text).map_err(|e| match e {
            NumError::Invalid => format!("expected a number, found {what} {}", show_str(text)),
            NumError::OutOfRange => format!("{what} {} is out of range", show_str(text)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::PgType::*;
    use crate::row::testing::*;
    use crate::row::{ColumnPlan, RowEncoder};

    #[test]
    fn missing_and_null_are_sql_null() {
        for ty in ALL_TYPES {
            assert_eq!(ok(ty, "null"), r"\N", "{ty:?}");
            let enc = RowEncoder::new(vec![col("c", "/nope/deeper", ty)]);
            assert_eq!(line(&enc, &rec(Some(b"{\"x\":1}"), None)).unwrap(), r"\N");
        }
        // Walking through a scalar or past an array's end finds nothing.
        let enc = RowEncoder::new(vec![col("a", "/x/y", Text), col("b", "/arr/5", Text)]);
        let out = line(&enc, &rec(Some(br#"{"x":1,"arr":[1]}"#), None)).unwrap();
        assert_eq!(out, "\\N\t\\N");
    }

    #[test]
    fn pointers_follow_rfc6901() {
        let doc = br#"{"a/b":{"m~n":["zero","one"]},"arr":[10,20],"01":"s"}"#;
        let enc = RowEncoder::new(vec![
            col("a", "/a~1b/m~0n/1", Text),
            col("b", "/arr/0", Int4),
            col("c", "/arr/01", Int4),
            col("d", "/01", Text),
        ]);
        assert_eq!(line(&enc, &rec(Some(doc), None)).unwrap(), "one\t10\t\\N\ts");
        // A pointer without the leading slash never matches (like Value::pointer).
        let enc = RowEncoder::new(vec![ColumnPlan::new("x", ColumnSource::Pointer("arr".into()), Text)]);
        assert_eq!(line(&enc, &rec(Some(doc), None)).unwrap(), r"\N");
    }

    #[test]
    fn whole_document() {
        let doc = br#"{ "b" : [1, 2.50, "x\ty"], "a" : null }"#;
        for spec in ["/", ""] {
            let enc = RowEncoder::new(vec![col("j", spec, Jsonb), col("t", spec, Text)]);
            let out = line(&enc, &rec(Some(doc), None)).unwrap();
            // jsonb takes the record's own text (Postgres normalizes it to
            // the same value); text gets the compact serialization.
            let own = r#"{ "b" : [1, 2.50, "x\\ty"], "a" : null }"#;
            let compact = r#"{"a":null,"b":[1,2.50,"x\\ty"]}"#;
            assert_eq!(out, format!("{own}\t{compact}"));
        }
        let enc = RowEncoder::new(vec![ColumnPlan::new("n", ColumnSource::Pointer("/".into()), Int8)]);
        assert_eq!(line(&enc, &rec(Some(b"17"), None)).unwrap(), "17");
        assert_eq!(line(&enc, &rec(Some(b"null"), None)).unwrap(), r"\N");
    }

    // --- metadata ---------------------------------------------------------------------

    #[test]
    fn metadata() {
        let r = rec(None, None);
        assert_eq!(meta("@topic", Text, &r).unwrap(), "orders");
        assert!(meta("@topic", Int4, &r)
            .unwrap_err()
            .reason
            .contains("@topic cannot be written"));
        let tabbed = RecordRef { topic: "a\tb", ..r };
        assert_eq!(meta("@topic", Text, &tabbed).unwrap(), r"a\tb");

        for ty in [Int2, Int4, Int8, Numeric, Text] {
            assert_eq!(meta("@partition", ty, &r).unwrap(), "3");
        }
        let big = RecordRef {
            partition: 40_000,
            offset: 1 << 40,
            ..r
        };
        assert!(meta("@partition", Int2, &big)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert!(meta("@partition", Bool, &r).is_err());

        for ty in [Int4, Int8, Numeric, Text] {
            assert_eq!(meta("@offset", ty, &r).unwrap(), "42");
        }
        assert_eq!(meta("@offset", Int8, &big).unwrap(), "1099511627776");
        assert!(meta("@offset", Int4, &big)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert!(meta("@offset", Timestamptz, &r).is_err());

        assert_eq!(
            meta("@timestamp", Timestamptz, &r).unwrap(),
            "2024-01-02T03:04:05.123000Z"
        );
        assert_eq!(meta("@timestamp", Timestamp, &r).unwrap(), "2024-01-02 03:04:05.123000");
        for ty in [Int8, Numeric, Text] {
            assert_eq!(meta("@timestamp", ty, &r).unwrap(), "1704164645123");
        }
        let no_ts = RecordRef {
            timestamp_ms: None,
            ..r
        };
        assert_eq!(meta("@timestamp", Timestamptz, &no_ts).unwrap(), r"\N");
        assert!(meta("@timestamp", Date, &no_ts).is_err(), "type checked even for NULL");
        let far = RecordRef {
            timestamp_ms: Some(i64::MAX),
            ..r
        };
        assert!(meta("@timestamp", Timestamptz, &far)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
    }

    #[test]
    fn keys() {
        assert_eq!(key_conv(Text, Some(b"user\t1")).unwrap(), r"user\t1");
        assert_eq!(key_conv(Bytea, Some(b"\x00\x01\xfe")).unwrap(), r"\\x0001fe");
        assert_eq!(key_conv(Jsonb, Some(br#"{ "id" : 5 }"#)).unwrap(), r#"{"id":5}"#);
        assert_eq!(key_conv(Json, Some(b"\"a\\\\b\"")).unwrap(), r#""a\\\\b""#);
        assert_eq!(
            key_conv(Uuid, Some(b"67E55044-10B1-426F-9247-BB680E5FE0C8")).unwrap(),
            "67e55044-10b1-426f-9247-bb680e5fe0c8"
        );
        assert_eq!(key_conv(Int8, Some(b"-12")).unwrap(), "-12");
        assert_eq!(key_conv(Int4, Some(b"12")).unwrap(), "12");
        assert_eq!(key_conv(Numeric, Some(b"12.50")).unwrap(), "12.50");
        for ty in [Text, Bytea, Json, Jsonb, Uuid, Int8, Int4, Numeric] {
            assert_eq!(key_conv(ty, None).unwrap(), r"\N", "{ty:?}");
        }
    }

    #[test]
    fn key_rejections() {
        let reason = |ty, k: &[u8]| key_conv(ty, Some(k)).unwrap_err().to_string();
        assert!(reason(Text, b"\xff").contains("(text): @key is not valid UTF-8"));
        assert!(reason(Text, b"a\0b").contains("NUL"));
        assert!(reason(Jsonb, b"{").contains("@key is not valid JSON at line 1 column 1"));
        assert!(reason(Jsonb, br#""\u0000""#).contains("NUL"));
        assert!(reason(Uuid, b"nope").contains("expected a UUID"));
        assert!(reason(Int4, b"abc").contains("expected an integer"));
        assert!(reason(Int4, b"3000000000").contains("out of range"));
        assert!(reason(Int8, b"1.5").contains("expected an integer"));
        assert!(reason(Numeric, b"1,5").contains("expected a number"));
        for ty in [Int2, Float4, Float8, Bool, Timestamptz, Timestamp, Date] {
            assert!(reason(ty, b"1").contains("@key cannot be written"), "{ty:?}");
            assert!(key_conv(ty, None).is_err(), "{ty:?}");
        }
    }
}
