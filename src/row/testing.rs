//! Helpers shared by the unit tests of `row`: records, one-column
//! encoders, and proptest strategies for JSON values.

use proptest::prelude::*;
use serde_json::Value;

use crate::mapping::{ColumnSource, PgType};
use crate::row::{ColumnPlan, DecodeError, RecordRef, RowEncoder};
use PgType::*;

pub(super) const ALL_TYPES: [PgType; 21] = [
    Text,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Bool,
    Timestamptz,
    Timestamp,
    Date,
    Uuid,
    Json,
    Jsonb,
    Bytea,
    Time,
    Timetz,
    Interval,
    Inet,
    Cidr,
    Macaddr,
];

pub(super) fn col(name: &str, spec: &str, ty: PgType) -> ColumnPlan {
    ColumnPlan::new(name, ColumnSource::parse(spec).unwrap(), ty)
}

pub(super) fn rec<'a>(value: Option<&'a [u8]>, key: Option<&'a [u8]>) -> RecordRef<'a> {
    RecordRef {
        topic: "orders",
        partition: 3,
        offset: 42,
        timestamp_ms: Some(1_704_164_645_123),
        key,
        value,
        source: None,
        headers: &[],
    }
}

pub(super) fn line(enc: &RowEncoder, r: &RecordRef<'_>) -> Result<String, DecodeError> {
    let mut out = Vec::new();
    enc.encode(r, &mut out)?;
    let s = String::from_utf8(out).unwrap();
    Ok(s.strip_suffix('\n').expect("line ends in \\n").to_owned())
}

/// Encodes `{"x": <json>}` into a single `ty` column reading `/x`.
pub(super) fn conv(ty: PgType, json: &str) -> Result<String, DecodeError> {
    let enc = RowEncoder::new(vec![col("c", "/x", ty)]);
    let doc = format!("{{\"x\":{json}}}");
    line(&enc, &rec(Some(doc.as_bytes()), None))
}

/// Encodes `{"x": <json>}` into one array-of-`ty` column reading `/x`.
pub(super) fn conv_array(ty: PgType, json: &str) -> Result<String, DecodeError> {
    let enc = RowEncoder::new(vec![ColumnPlan::array_of("c", ColumnSource::parse("/x").unwrap(), ty)]);
    let doc = format!("{{\"x\":{json}}}");
    line(&enc, &rec(Some(doc.as_bytes()), None))
}

pub(super) fn ok(ty: PgType, json: &str) -> String {
    conv(ty, json).unwrap_or_else(|e| panic!("{ty:?} {json}: {e}"))
}

#[track_caller]
pub(super) fn err(ty: PgType, json: &str) -> String {
    match conv(ty, json) {
        Ok(s) => panic!("{ty:?} {json}: expected an error, got {s:?}"),
        Err(e) => {
            assert_eq!(e.column.as_deref(), Some("c"));
            e.to_string()
        }
    }
}

pub(super) fn key_conv(ty: PgType, key: Option<&[u8]>) -> Result<String, DecodeError> {
    let enc = RowEncoder::new(vec![col("k", "@key", ty)]);
    line(&enc, &rec(None, key))
}

pub(super) fn meta(spec: &str, ty: PgType, r: &RecordRef<'_>) -> Result<String, DecodeError> {
    line(&RowEncoder::new(vec![col("m", spec, ty)]), r)
}

pub(super) fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\x00\\t\\n\\r\\\\\"a-z é😀\u{2028}]{0,12}",
        "-?[0-9]{1,25}(\\.[0-9]{0,5})?([eE][+-]?[0-9]{1,4})?",
        // Mostly plausible dates and times, with edge values mixed in.
        concat!(
            "[0-9]{4}-(0[1-9]|1[0-2])-(0[0-9]|[12][0-9]|3[012])",
            "([Tt ]([01][0-9]|2[0-4]):[0-5][0-9]:[0-6][0-9](\\.[0-9]{0,10})?",
            "(Z|[+-][01][0-9]:[0-5][0-9])?)?",
        ),
        "(?i)(nan|infinity|-infinity|inf|true|false)",
        "[A-Za-z0-9+/]{0,16}={0,2}",
        "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-f]{31,33}",
    ]
}

pub(super) fn arb_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i16>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        "-?(0|[1-9][0-9]{0,45})(\\.[0-9]{1,30})?([eE][+-]?[0-9]{1,6})?"
            .prop_map(|s| Value::Number(s.parse().expect("valid JSON number"))),
    ]
}

pub(super) fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => arb_number(),
        4 => arb_string().prop_map(Value::String),
    ]
}

pub(super) fn arb_json() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(arb_string(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Undoes COPY text escaping of one field.
pub(super) fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut it = field.iter();
    while let Some(&b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match it.next() {
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'\\') => b'\\',
            other => panic!("unexpected escape {other:?}"),
        });
    }
    out
}
