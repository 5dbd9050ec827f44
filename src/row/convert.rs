//! A JSON value into a column of each supported Postgres type, written as
//! one COPY text field. Every conversion is checked here rather than left to
//! Postgres, which would fail the whole COPY batch on one bad value.

use chrono::DateTime;
use serde_json::Value;

use crate::mapping::PgType;
use crate::row::copy_text::{
    has_nul, push_base64_bytea, push_bool, push_i64, push_json, push_text, push_uuid, Conv, NulByte, NULL,
};
use crate::row::numeric::{parse_int, parse_int_in, push_float, push_numeric, NumError};
use crate::row::project::JsonRef;
use crate::row::show::{expected, nul_in, out_of_range, show};
use crate::row::time::{parse_date, parse_naive_micros, parse_rfc3339_micros, push_date, push_timestamp, OutOfRange};

pub(super) fn write_json_value(out: &mut Vec<u8>, v: &Value, ty: PgType) -> Conv {
    write_json(out, JsonRef::of(v), ty)
}

/// A JSON value into a column of `ty`, or into an array of `ty` when
/// `array`; `bare_timestamps` says whether a bare number into a timestamp
/// element means epoch milliseconds (schemaless JSON) or is refused.
pub(super) fn write_value(out: &mut Vec<u8>, v: JsonRef<'_>, ty: PgType, array: bool, bare_timestamps: bool) -> Conv {
    match (array, v) {
        (false, _) | (true, JsonRef::Null) => write_json(out, v, ty),
        (true, JsonRef::Nested(Value::Array(items))) => {
            // json/jsonb elements are JSON values, arrays among them: one
            // dimension. Other element types nest as dimensions.
            let nested = !matches!(ty, PgType::Json | PgType::Jsonb);
            if nested {
                check_shape(items)?;
            }
            let mut scratch = Vec::new();
            write_array_level(out, items, ty, nested, bare_timestamps, &mut scratch)
        }
        (true, _) => Err(expected("a JSON array", v)),
    }
}

/// Postgres' limit on an array's dimensions (`MAXDIM`).
const MAX_DIMENSIONS: usize = 6;

/// Checks that nested arrays are rectangular, as Postgres' multidimensional
/// arrays must be: the first elements, followed down, give every
/// dimension's length, and every value must be an array above the last
/// dimension, a non-array in it, and every array as long as its dimension.
/// At most [`MAX_DIMENSIONS`].
fn check_shape(items: &[Value]) -> Result<(), String> {
    let mut shape = vec![items.len()];
    let mut first = items.first();
    while let Some(Value::Array(inner)) = first {
        shape.push(inner.len());
        first = inner.first();
    }
    if shape.len() > MAX_DIMENSIONS {
        return Err(format!(
            "arrays nested {} deep: a Postgres array has at most {MAX_DIMENSIONS} dimensions",
            shape.len()
        ));
    }
    if shape.len() > 1 && shape.contains(&0) {
        return Err("an empty nested array: Postgres has no empty dimension inside an array".into());
    }
    fn level(items: &[Value], depth: usize, shape: &[usize]) -> Result<(), String> {
        if items.len() != shape[depth] {
            return Err(format!(
                "nested arrays of different lengths ({} and {}): a Postgres array must be rectangular",
                shape[depth],
                items.len()
            ));
        }
        let last = depth + 1 == shape.len();
        for item in items {
            match (item, last) {
                (Value::Array(inner), false) => level(inner, depth + 1, shape)?,
                (Value::Array(_), true) | (_, false) => {
                    return Err(
                        "nested arrays of different depths, or arrays mixed with other values: a Postgres array \
                         must be rectangular"
                            .into(),
                    )
                }
                (_, true) => {}
            }
        }
        Ok(())
    }
    level(items, 0, &shape)
}

fn write_array_level(
    out: &mut Vec<u8>,
    items: &[Value],
    ty: PgType,
    nested: bool,
    bare_timestamps: bool,
    scratch: &mut Vec<u8>,
) -> Conv {
    out.push(b'{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match item {
            Value::Array(inner) if nested => write_array_level(out, inner, ty, nested, bare_timestamps, scratch)?,
            Value::Null => out.extend_from_slice(b"NULL"),
            Value::Number(n) if !bare_timestamps && ty.is_timestamp() => {
                return Err(format!("element {i}: {}", ambiguous_timestamp(n.as_str(), ty)))
            }
            other => {
                scratch.clear();
                write_json(scratch, JsonRef::of(other), ty).map_err(|e| format!("element {i}: {e}"))?;
                push_array_element(out, scratch);
            }
        }
    }
    out.push(b'}');
    Ok(())
}

/// One element of an array literal, from its COPY text form `field`: a
/// double-quoted element (`"` and `\` escaped with a backslash), then
/// COPY-escaped again. A COPY escape in `field` (`\t`) stays as it is: the
/// character it stands for needs no quoting inside double quotes.
fn push_array_element(out: &mut Vec<u8>, field: &[u8]) {
    out.push(b'"');
    let mut i = 0;
    while i < field.len() {
        match field[i] {
            // `\\` in COPY text is one backslash, quoted as two: four.
            b'\\' if field.get(i + 1) == Some(&b'\\') => {
                out.extend_from_slice(b"\\\\\\\\");
                i += 2;
            }
            b'\\' => {
                out.extend_from_slice(&field[i..(i + 2).min(field.len())]);
                i += 2;
            }
            // A quote, escaped for the literal (one backslash, COPY-escaped).
            b'"' => {
                out.extend_from_slice(b"\\\\\"");
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out.push(b'"');
}

/// Why a bare number into a timestamp is refused when the record's schema
/// does not say what it counts.
pub(super) fn ambiguous_timestamp(n: &str, ty: PgType) -> String {
    format!(
        "a bare number ({n}) is ambiguous for a {} column (seconds? milliseconds? microseconds?): \
         the record's schema does not say what it means",
        ty.sql_name()
    )
}

pub(super) fn write_json(out: &mut Vec<u8>, v: JsonRef<'_>, ty: PgType) -> Conv {
    use PgType::*;
    match (ty, v) {
        (_, JsonRef::Null) => {
            out.extend_from_slice(NULL);
            Ok(())
        }
        (Text, JsonRef::Str(s)) => push_text(out, s).map_err(|NulByte| nul_in(v)),
        (Text, JsonRef::Number(n)) => {
            // arbitrary_precision keeps the producer's exact digits.
            out.extend_from_slice(n.as_bytes());
            Ok(())
        }
        (Text, JsonRef::Bool(b)) => {
            out.extend_from_slice(if b { b"true" } else { b"false" });
            Ok(())
        }
        // The JSON text of an object holds NUL only as the six characters
        // `\u0000`, which text columns store fine.
        (Text, JsonRef::Nested(nested)) => push_json(out, nested),
        (Int2 | Int4 | Int8, _) => {
            let text = match v {
                JsonRef::Number(n) => n,
                JsonRef::Str(s) => s,
                _ => return Err(expected("an integer", v)),
            };
            let i = parse_int_in(text, ty).map_err(|e| match e {
                NumError::Invalid => expected("an integer", v),
                NumError::OutOfRange => out_of_range(v),
            })?;
            push_i64(out, i);
            Ok(())
        }
        (Float4 | Float8, JsonRef::Number(n) | JsonRef::Str(n)) => {
            push_float(out, n, ty == Float4).map_err(|e| num_error(e, "a number", v))
        }
        (Float4 | Float8, _) => Err(expected("a number", v)),
        (Numeric, JsonRef::Number(n) | JsonRef::Str(n)) => {
            push_numeric(out, n).map_err(|e| num_error(e, "a number", v))
        }
        (Numeric, _) => Err(expected("a number", v)),
        (Bool, JsonRef::Bool(b)) => {
            push_bool(out, b);
            Ok(())
        }
        (Bool, JsonRef::Str(s)) if s.eq_ignore_ascii_case("true") => {
            push_bool(out, true);
            Ok(())
        }
        (Bool, JsonRef::Str(s)) if s.eq_ignore_ascii_case("false") => {
            push_bool(out, false);
            Ok(())
        }
        (Bool, _) => Err(expected("true or false", v)),
        (Timestamptz | Timestamp, _) => write_json_timestamp(out, v, ty == Timestamptz),
        (Date, _) => write_json_date(out, v),
        (Uuid, JsonRef::Str(s)) => match uuid::Uuid::try_parse(s) {
            Ok(u) => {
                push_uuid(out, u);
                Ok(())
            }
            Err(_) => Err(expected("a UUID", v)),
        },
        (Uuid, _) => Err(expected("a UUID string", v)),
        (Json | Jsonb, _) => {
            let nul = match v {
                JsonRef::Str(s) => s.contains('\0'),
                JsonRef::Nested(nested) => has_nul(nested),
                _ => false,
            };
            if nul {
                return Err(format!(
                    "{} contains a NUL character (\\u0000), which Postgres cannot store",
                    show(v)
                ));
            }
            match v {
                // A number's text is already JSON, exactly as written.
                JsonRef::Number(n) => push_text(out, n).map_err(|NulByte| nul_in(v)),
                JsonRef::Str(s) => push_json(out, s),
                JsonRef::Bool(b) => push_json(out, &b),
                JsonRef::Nested(nested) => push_json(out, nested),
                JsonRef::Null => unreachable!("written as NULL above"),
            }
        }
        (Bytea, JsonRef::Str(s)) => {
            push_base64_bytea(out, s).map_err(|e| format!("{} is not valid base64: {e}", show(v)))
        }
        (Bytea, _) => Err(expected("a base64 string", v)),
        (Time | Timetz | Interval | Inet | Cidr | Macaddr, JsonRef::Str(s)) => {
            let valid = match ty {
                Time => time_of_day(s).is_some(),
                Timetz => time_with_zone(s),
                Interval => interval(s),
                Inet => network(s, false),
                Cidr => network(s, true),
                _ => mac_address(s),
            };
            if !valid {
                return Err(expected(text_form(ty), v));
            }
            push_text(out, s).map_err(|NulByte| nul_in(v))
        }
        // A bare number would need a unit (seconds? milliseconds?), and
        // addresses are never numbers.
        (Time | Timetz | Interval | Inet | Cidr | Macaddr, _) => Err(expected(text_form(ty), v)),
    }
}

/// What a string into one of the text-checked types must look like.
fn text_form(ty: PgType) -> &'static str {
    match ty {
        PgType::Time => "a time of day string (HH:MM:SS[.fraction])",
        PgType::Timetz => "a time of day with an offset (HH:MM:SS[.fraction]+HH[:MM] or Z)",
        PgType::Interval => "an interval string (ISO 8601 such as \"P1DT2H\", or \"1 day 02:00:00\")",
        PgType::Inet => "an IP address, optionally with a /prefix",
        PgType::Cidr => "a network address (IP/prefix, no bits set right of the prefix)",
        _ => "a MAC address (six hex pairs separated by ':' or '-')",
    }
}

/// `HH:MM:SS[.fraction]` (Postgres also takes `24:00:00`).
fn time_of_day(s: &str) -> Option<()> {
    if s == "24:00:00" {
        return Some(());
    }
    let b = s.as_bytes();
    if b.len() < 8 || b[2] != b':' || b[5] != b':' || !matches!(b.get(8), None | Some(b'.')) {
        return None;
    }
    if b.len() > 8 && (b.len() == 9 || !b[9..].iter().all(u8::is_ascii_digit)) {
        return None;
    }
    chrono::NaiveTime::parse_from_str(&s[..8], "%H:%M:%S").ok().map(|_| ())
}

/// A time of day, then `Z` or an offset `±HH`, `±HH:MM` or `±HHMM`.
fn time_with_zone(s: &str) -> bool {
    if let Some(time) = s.strip_suffix('Z') {
        return time_of_day(time).is_some();
    }
    let Some(at) = s.rfind(['+', '-']) else {
        return false;
    };
    let (time, zone) = s.split_at(at);
    let zone = zone[1..].replace(':', "");
    let hours_minutes = zone.len() == 2 || zone.len() == 4;
    time_of_day(time).is_some()
        && hours_minutes
        && zone.bytes().all(|b| b.is_ascii_digit())
        && zone[..2].parse::<u32>().is_ok_and(|h| h <= 15)
        && zone
            .get(2..)
            .is_none_or(|m| m.is_empty() || m.parse::<u32>().is_ok_and(|m| m < 60))
}

/// ISO 8601 (`P1Y2M3DT4H5M6.5S`, `PT0.003S`) or Postgres' own form
/// (`1 year 2 mons 3 days 04:05:06.5`, `-1 day`, `02:00:00`).
fn interval(s: &str) -> bool {
    static ISO: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    static POSTGRES: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let iso = ISO.get_or_init(|| {
        regex::Regex::new(r"^-?P(?:\d+Y)?(?:\d+M)?(?:\d+W)?(?:\d+D)?(?:T(?:\d+H)?(?:\d+M)?(?:\d+(?:\.\d+)?S)?)?$")
            .expect("a valid regex")
    });
    let postgres = POSTGRES.get_or_init(|| {
        regex::Regex::new(
            r"^(?:[+-]?\d+(?:\.\d+)? (?:years?|mons?|months?|weeks?|days?|hours?|mins?|minutes?|secs?|seconds?) ?)*(?:[+-]?\d+:\d{2}(?::\d{2}(?:\.\d+)?)?)?$",
        )
        .expect("a valid regex")
    });
    let s = s.trim();
    !s.is_empty() && s != "P" && s != "PT" && !s.ends_with('T') && (iso.is_match(s) || postgres.is_match(s))
}

/// `address[/prefix]`; `cidr` also refuses bits set right of the prefix.
fn network(s: &str, cidr: bool) -> bool {
    let (address, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let Ok(ip) = address.parse::<std::net::IpAddr>() else {
        return false;
    };
    let width = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix.map(str::parse::<u32>) {
        None => width,
        Some(Ok(p)) if p <= width => p,
        Some(_) => return false,
    };
    if !cidr || prefix == width {
        return true;
    }
    let bits: u128 = match ip {
        std::net::IpAddr::V4(v4) => u32::from(v4).into(),
        std::net::IpAddr::V6(v6) => v6.into(),
    };
    bits & ((1u128 << (width - prefix)) - 1) == 0
}

/// Six hex pairs separated by `:` or `-` (or twelve hex digits).
fn mac_address(s: &str) -> bool {
    let hex = |part: &str| part.len() == 2 && part.bytes().all(|b| b.is_ascii_hexdigit());
    match s.len() {
        12 => s.bytes().all(|b| b.is_ascii_hexdigit()),
        17 => [':', '-'].iter().any(|sep| {
            let parts: Vec<&str> = s.split(*sep).collect();
            parts.len() == 6 && parts.iter().all(|p| hex(p))
        }),
        _ => false,
    }
}

fn write_json_timestamp(out: &mut Vec<u8>, v: JsonRef<'_>, with_zone: bool) -> Conv {
    let what = if with_zone {
        "an RFC 3339 timestamp or epoch milliseconds"
    } else {
        "an RFC 3339 or ISO 8601 timestamp, or epoch milliseconds"
    };
    let micros = match v {
        JsonRef::Str(s) => {
            // A naive time is only unambiguous for a column without a zone.
            let parsed = parse_rfc3339_micros(s).or_else(|| (!with_zone).then(|| parse_naive_micros(s)).flatten());
            parsed.ok_or_else(|| expected(what, v))?
        }
        JsonRef::Number(n) => {
            let ms = parse_int(n).map_err(|e| num_error(e, what, v))?;
            ms.checked_mul(1000).ok_or_else(|| out_of_range(v))?
        }
        _ => return Err(expected(what, v)),
    };
    push_timestamp(out, micros, with_zone).map_err(|OutOfRange| out_of_range(v))
}

fn write_json_date(out: &mut Vec<u8>, v: JsonRef<'_>) -> Conv {
    const WHAT: &str = "a date (YYYY-MM-DD) or an RFC 3339 timestamp";
    let date = match v {
        JsonRef::Str(s) => parse_date(s.as_bytes())
            .or_else(|| DateTime::parse_from_rfc3339(s).ok().map(|dt| dt.naive_utc().date()))
            .ok_or_else(|| expected(WHAT, v))?,
        // Days since the epoch (Avro, Debezium) or epoch milliseconds? A
        // guess would put a day count on 1970-01-01. Formats with a schema
        // arrive here as "YYYY-MM-DD".
        JsonRef::Number(n) => {
            return Err(format!(
                "a bare number ({n}) is ambiguous for a date (days or milliseconds since the epoch?): \
                 expected {WHAT}"
            ))
        }
        _ => return Err(expected(WHAT, v)),
    };
    push_date(out, date).map_err(|OutOfRange| out_of_range(v))
}

fn num_error(e: NumError, what: &str, v: JsonRef<'_>) -> String {
    match e {
        NumError::Invalid => expected(what, v),
        NumError::OutOfRange => out_of_range(v),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use crate::mapping::PgType::*;
    use crate::row::copy_text::has_nul;
    use crate::row::testing::*;
    use crate::row::{RecordRef, RowEncoder};

    #[test]
    fn text_conversions() {
        assert_eq!(ok(Text, r#""héllo""#), "héllo");
        assert_eq!(ok(Text, "12.50"), "12.50");
        assert_eq!(
            ok(Text, "123456789012345678901234567890"),
            "123456789012345678901234567890"
        );
        assert_eq!(ok(Text, "true"), "true");
        assert_eq!(ok(Text, "false"), "false");
        assert_eq!(ok(Text, r#"{"b":1,"a":[1, 2]}"#), r#"{"a":[1,2],"b":1}"#);
        assert_eq!(ok(Text, r#""""#), "");
    }

    #[test]
    fn text_rejects_nul() {
        let e = err(Text, r#""a\u0000b""#);
        assert!(e.contains("NUL"), "{e}");
        assert!(e.starts_with("column `c` (text): "), "{e}");
        // Inside an object the NUL is only the escape text, which text can hold.
        assert_eq!(ok(Text, r#"{"a":"\u0000"}"#), r#"{"a":"\\u0000"}"#);
    }

    // --- bool --------------------------------------------------------------------

    #[test]
    fn bools() {
        assert_eq!(ok(Bool, "true"), "t");
        assert_eq!(ok(Bool, "false"), "f");
        assert_eq!(ok(Bool, r#""TRUE""#), "t");
        assert_eq!(ok(Bool, r#""False""#), "f");
        assert!(err(Bool, "1").contains("(boolean): expected true or false, found 1"));
        assert!(err(Bool, r#""yes""#).contains("expected true or false"));
        assert!(err(Bool, r#""t""#).contains("expected true or false"));
        assert!(err(Bool, "[]").contains("expected true or false"));
    }

    // --- uuid, json ----------------------------------------------------------------

    #[test]
    fn uuids() {
        let want = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        assert_eq!(ok(Uuid, r#""67E55044-10B1-426F-9247-BB680E5FE0C8""#), want);
        assert_eq!(ok(Uuid, r#""67e5504410b1426f9247bb680e5fe0c8""#), want);
        assert_eq!(ok(Uuid, r#""{67e55044-10b1-426f-9247-bb680e5fe0c8}""#), want);
        assert!(err(Uuid, r#""67e55044-10b1-426f-9247""#).contains("(uuid): expected a UUID"));
        assert!(err(Uuid, "12").contains("expected a UUID string"));
    }

    #[test]
    fn json_columns() {
        for ty in [Json, Jsonb] {
            assert_eq!(
                ok(ty, r#" { "b" : 1 , "a" : [ true, null ] } "#),
                r#"{"a":[true,null],"b":1}"#
            );
            assert_eq!(ok(ty, r#""str""#), r#""str""#);
            assert_eq!(ok(ty, "1.000"), "1.000");
            assert_eq!(ok(ty, "false"), "false");
            assert_eq!(ok(ty, r#""tab\there""#), r#""tab\\there""#);
            assert_eq!(ok(ty, r#""é😀""#), r#""é😀""#);
            assert!(err(ty, r#"{"a":["\u0000"]}"#).contains("NUL"));
            assert!(err(ty, r#"{"k\u0000":1}"#).contains("NUL"));
        }
    }

    #[test]
    fn text_checked_types() {
        assert_eq!(ok(Time, r#""23:59:59.999999""#), "23:59:59.999999");
        assert_eq!(ok(Time, r#""08:30:00""#), "08:30:00");
        assert!(err(Time, r#""25:00:00""#).contains("(time): expected a time of day string"));
        assert!(err(Time, r#""08:30:00.""#).contains("expected a time of day"));
        assert!(
            err(Time, "30600123").contains("expected a time of day"),
            "a bare number needs a unit"
        );
        assert_eq!(ok(Timetz, r#""08:30:00.5+02:00""#), "08:30:00.5+02:00");
        assert_eq!(ok(Timetz, r#""08:30:00Z""#), "08:30:00Z");
        assert!(err(Timetz, r#""08:30:00""#).contains("with an offset"));
        for good in [
            "P1Y2M3DT4H5M6.5S",
            "PT0.003S",
            "-P1D",
            "1 day 02:00:00",
            "3 mons",
            "02:00:00",
            "-1 days",
        ] {
            assert_eq!(ok(Interval, &format!("{good:?}")), good);
        }
        for bad in ["P", "PT", "1 fortnight", "abc", ""] {
            assert!(
                err(Interval, &format!("{bad:?}")).contains("expected an interval"),
                "{bad}"
            );
        }
        assert!(err(Interval, "3600").contains("expected an interval"));
        assert_eq!(ok(Inet, r#""192.168.0.1/24""#), "192.168.0.1/24");
        assert_eq!(ok(Inet, r#""::1""#), "::1");
        assert!(err(Inet, r#""300.1.1.1""#).contains("expected an IP address"));
        assert!(err(Inet, r#""10.0.0.1/33""#).contains("expected an IP address"));
        assert_eq!(ok(Cidr, r#""10.1.0.0/16""#), "10.1.0.0/16");
        assert_eq!(ok(Cidr, r#""2001:db8::/32""#), "2001:db8::/32");
        assert!(err(Cidr, r#""10.1.2.0/16""#).contains("no bits set right of the prefix"));
        assert_eq!(ok(Macaddr, r#""08:00:2b:01:02:03""#), "08:00:2b:01:02:03");
        assert_eq!(ok(Macaddr, r#""08-00-2B-01-02-03""#), "08-00-2B-01-02-03");
        assert!(err(Macaddr, r#""08:00:2b:01:02""#).contains("expected a MAC address"));
    }

    #[test]
    fn arrays() {
        let a = |ty, json: &str| conv_array(ty, json).unwrap_or_else(|e| panic!("{json}: {e}"));
        let bad = |ty, json: &str| conv_array(ty, json).unwrap_err().to_string();
        assert_eq!(a(Int4, "[1, 2, null]"), "{\"1\",\"2\",NULL}");
        assert_eq!(a(Int4, "[]"), "{}");
        assert_eq!(a(Int4, "null"), "\\N");
        assert_eq!(a(Int8, "[[1,2],[3,4]]"), "{{\"1\",\"2\"},{\"3\",\"4\"}}");
        // Quotes and backslashes escaped for the literal, then for COPY;
        // a tab stays a COPY escape inside the quotes.
        assert_eq!(
            a(Text, r#"["a\"b", "c\\d", "e\tf", "", "NULL", "{x,y}"]"#),
            r#"{"a\\"b","c\\\\d","e\tf","","NULL","{x,y}"}"#
        );
        assert_eq!(a(Numeric, r#"[1.50, "2"]"#), "{\"1.50\",\"2\"}");
        assert_eq!(a(Date, r#"["2024-01-02"]"#), "{\"2024-01-02\"}");
        // bytea's `\x…` text: its backslash quoted for the literal, then COPY-escaped.
        assert_eq!(a(Bytea, r#"["AP8=", null]"#), r#"{"\\\\x00ff",NULL}"#);
        assert_eq!(a(Bool, "[true, false]"), "{\"t\",\"f\"}");
        assert_eq!(a(Inet, r#"["10.0.0.1/8"]"#), "{\"10.0.0.1/8\"}");
        assert_eq!(
            a(Uuid, r#"["67E55044-10B1-426F-9247-BB680E5FE0C8"]"#),
            "{\"67e55044-10b1-426f-9247-bb680e5fe0c8\"}"
        );
        // json elements are JSON values, arrays among them: one dimension.
        assert_eq!(
            a(Jsonb, r#"[{"k":"v\"w"}, [1,2], null, "s"]"#),
            r#"{"{\\"k\\":\\"v\\\\\\"w\\"}","[1,2]",NULL,"\\"s\\""}"#
        );
        let e = bad(Int4, r#"[1, "x"]"#);
        assert!(
            e.starts_with("column `c` (integer[]): element 1: expected an integer"),
            "{e}"
        );
        assert!(bad(Int4, "5").contains("(integer[]): expected a JSON array, found 5"));
        assert!(bad(Int4, r#"{"a":1}"#).contains("expected a JSON array"));
        assert!(bad(Int4, "[[1,2],[3]]").contains("must be rectangular"));
        assert!(bad(Int4, "[[1,2],3]").contains("must be rectangular"));
        assert!(bad(Int4, "[[[1]],[2]]").contains("must be rectangular"));
        assert!(bad(Int4, "[[1,2],[[3],[4]]]").contains("must be rectangular"));
        assert!(bad(Int4, "[[1,2],[[3,4],[5,6]]]").contains("must be rectangular"));
        assert!(bad(Int4, "[1,[2]]").contains("must be rectangular"));
        assert!(bad(Int4, "[[],[]]").contains("empty nested array"));
        assert!(bad(Int4, "[[1],[]]").contains("different lengths"));
        assert_eq!(a(Int4, "[[[[[[1]]]]]]"), "{{{{{{\"1\"}}}}}}");
        assert!(bad(Int4, "[[[[[[[1]]]]]]]").contains("at most 6 dimensions"));
        assert!(bad(Text, r#"["a\u0000"]"#).contains("NUL"));
        // Schemaless JSON reads a bare number into a timestamp as epoch ms.
        assert_eq!(a(Timestamptz, "[0]"), "{\"1970-01-01T00:00:00Z\"}");
    }

    #[test]
    fn array_elements_keep_the_columns_limit_and_labels() {
        use crate::row::{Labels, Limit};
        let enc = |constraints: crate::row::Constraints| {
            let mut c = crate::row::ColumnPlan::array_of("c", crate::mapping::ColumnSource::parse("/x").unwrap(), Text);
            c.constraints = constraints;
            RowEncoder::new(vec![c])
        };
        let run = |enc: &RowEncoder, json: &str| {
            let doc = format!("{{\"x\":{json}}}");
            line(enc, &rec(Some(doc.as_bytes()), None))
        };
        let limited = enc(crate::row::Constraints {
            limit: Some(Limit::Chars(3)),
            ..Default::default()
        });
        assert_eq!(
            run(&limited, r#"["abc", null, "a\"\\"]"#).unwrap(),
            r#"{"abc",NULL,"a\\"\\\\"}"#
        );
        let e = run(&limited, r#"["abc", "abcd"]"#).unwrap_err();
        assert_eq!(e.sqlstate, Some("22001"), "{e}");
        assert!(
            e.to_string()
                .contains("\"abcd\" is longer than the column's 3 characters"),
            "{e}"
        );
        let labelled = enc(crate::row::Constraints {
            labels: Some(Labels::new("mood", &["ok".to_owned(), "sad \"x\"".to_owned()])),
            not_null: true,
            ..Default::default()
        });
        assert!(run(&labelled, r#"["ok", "sad \"x\"", null]"#).is_ok());
        let e = run(&labelled, r#"["ok", "happy"]"#).unwrap_err();
        assert_eq!(e.sqlstate, Some("22P02"), "{e}");
        assert!(e.to_string().contains("\"happy\" is not a label of enum mood"), "{e}");
        assert_eq!(run(&labelled, "null").unwrap_err().sqlstate, Some("23502"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn json_column_round_trips(v in arb_json()) {
            let doc = serde_json::to_vec(&v).unwrap();
            let r = RecordRef { value: Some(&doc), ..rec(None, None) };
            let enc = RowEncoder::new(vec![col("j", "/", Jsonb)]);
            let mut out = Vec::new();
            match enc.encode(&r, &mut out) {
                Ok(()) if v.is_null() => prop_assert_eq!(&out[..], b"\\N\n"),
                Ok(()) => {
                    let field = unescape(&out[..out.len() - 1]);
                    let reparsed: Value = serde_json::from_slice(&field).unwrap();
                    prop_assert_eq!(reparsed, v);
                }
                Err(e) => {
                    prop_assert!(has_nul(&v), "{}", e);
                }
            }
        }

    }
}
