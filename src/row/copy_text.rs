//! PostgreSQL COPY *text* format, one field at a time: escaping
//! (`\\`, `\n`, `\r`, `\t`; NUL cannot be written), `\N` for NULL, and the
//! `push_*` writers of booleans, integers, UUIDs, JSON and bytea that
//! append straight to the row buffer. Also [`copy_unescaped`], the
//! allocation-free inverse of the escaping.

use std::io;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde_json::Value;

pub(super) const NULL: &[u8] = b"\\N";

/// Per-column conversion result; the message is only built on failure.
pub(super) type Conv = Result<(), String>;

/// A string held U+0000, which no Postgres text-like type can store.
pub(super) struct NulByte;

/// Appends `bytes` with COPY text escaping; fails on NUL.
fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), NulByte> {
    // Most fields need no escape (compact JSON holds none of these bytes
    // outside its escapes' backslashes): two vectorised scans, one copy.
    if memchr::memchr3(b'\\', b'\n', b'\t', bytes).is_none() && memchr::memchr2(b'\r', 0, bytes).is_none() {
        out.extend_from_slice(bytes);
        return Ok(());
    }
    out.reserve(bytes.len());
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8; 2] = match b {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0 => return Err(NulByte),
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    Ok(())
}

pub(super) fn push_text(out: &mut Vec<u8>, s: &str) -> Result<(), NulByte> {
    push_escaped(out, s.as_bytes())
}

/// Lets serde_json serialize straight into the row, escaping as it goes.
struct CopyEscaper<'a>(&'a mut Vec<u8>);

impl io::Write for CopyEscaper<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // serde_json always writes NUL as `\u0000`, so this cannot fail.
        push_escaped(self.0, buf).map_err(|NulByte| io::Error::other("NUL byte"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(super) fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) -> Conv {
    serde_json::to_writer(CopyEscaper(out), v).map_err(|e| format!("cannot serialize: {e}"))
}

/// Whether any string or object key holds U+0000; jsonb rejects `\u0000`
/// and we hold json to the same rule so a column can switch types safely.
pub(super) fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.as_bytes().contains(&0),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.as_bytes().contains(&0) || has_nul(v)),
        _ => false,
    }
}

pub(super) fn push_bool(out: &mut Vec<u8>, b: bool) {
    out.push(if b { b't' } else { b'f' });
}

pub(super) fn push_i64(out: &mut Vec<u8>, v: i64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[i..]);
}

pub(super) fn push_uuid(out: &mut Vec<u8>, u: uuid::Uuid) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.extend_from_slice(u.hyphenated().encode_lower(&mut buf).as_bytes());
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// bytea hex format is `\x…`; its backslash must itself be escaped in COPY
/// text, hence two backslashes on the wire.
const BYTEA_PREFIX: &[u8] = b"\\\\x";

pub(super) fn push_hex_bytea(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(BYTEA_PREFIX.len() + bytes.len() * 2);
    out.extend_from_slice(BYTEA_PREFIX);
    for &b in bytes {
        out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
    }
}

const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub(super) fn push_base64_bytea(out: &mut Vec<u8>, s: &str) -> Result<(), base64::DecodeSliceError> {
    out.extend_from_slice(BYTEA_PREFIX);
    let start = out.len();
    let est = base64::decoded_len_estimate(s.len());
    out.resize(start + 2 * est, 0);
    // Decode into the upper half of the reserved space, then expand to hex
    // front to back: the hex of byte i lands at [2i, 2i+2), which never
    // reaches an unread byte (at est+i+1 or later, as i < n <= est). This
    // avoids a temporary buffer for the decoded bytes.
    let n = BASE64.decode_slice(s, &mut out[start + est..])?;
    for i in 0..n {
        let b = out[start + est + i];
        out[start + 2 * i] = HEX[usize::from(b >> 4)];
        out[start + 2 * i + 1] = HEX[usize::from(b & 15)];
    }
    out.truncate(start + 2 * n);
    Ok(())
}

/// The bytes of one COPY text field with its escapes (`\t`, `\n`, `\r`,
/// `\\`) undone, as [`push_escaped`] wrote them; no allocation.
pub(super) fn copy_unescaped(encoded: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut bytes = encoded.iter();
    std::iter::from_fn(move || {
        let b = *bytes.next()?;
        if b != b'\\' {
            return Some(b);
        }
        Some(match *bytes.next()? {
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            other => other,
        })
    })
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use proptest::prelude::*;

    use crate::mapping::PgType::*;
    use crate::row::testing::*;

    #[test]
    fn copy_escaping() {
        assert_eq!(ok(Text, r#""a\tb\nc\rd\\e""#), r"a\tb\nc\rd\\e");
        // JSON escapes inside a document become literal backslashes, doubled.
        assert_eq!(ok(Json, r#"{"s":"a\nb\\"}"#), r#"{"s":"a\\nb\\\\"}"#);
        assert_eq!(ok(Text, r#"["\t"]"#), r#"["\\t"]"#);
        // Other control characters pass through raw; COPY does not care.
        assert_eq!(ok(Text, r#""\u0001""#), "\u{1}");
        assert_eq!(ok(Text, r#""\\N""#), r"\\N");
    }

    #[test]
    fn bytea() {
        assert_eq!(ok(Bytea, r#""AAEC/w==""#), r"\\x000102ff");
        assert_eq!(ok(Bytea, r#""AAEC/w""#), r"\\x000102ff");
        assert_eq!(ok(Bytea, r#""aGVsbG8gd29ybGQ=""#), r"\\x68656c6c6f20776f726c64");
        assert_eq!(ok(Bytea, r#""""#), r"\\x");
        assert!(err(Bytea, r#""AAEC_w==""#).contains("not valid base64"));
        assert!(err(Bytea, r#""A""#).contains("not valid base64"));
        assert!(err(Bytea, r#""AB==""#).contains("not valid base64"), "trailing bits");
        assert!(err(Bytea, "123").contains("expected a base64 string"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The fast path and the escaping loop write what escaping each
        /// character on its own would; NUL fails.
        #[test]
        fn escaping_matches_char_by_char(s in "[a\\\\\n\r\t\u{0}\u{1}é]{0,12}") {
            let mut out = Vec::new();
            let got = super::push_text(&mut out, &s);
            if s.contains('\0') {
                prop_assert!(got.is_err());
            } else {
                prop_assert!(got.is_ok());
                let want: String = s.chars().map(|c| match c {
                    '\\' => "\\\\".to_owned(),
                    '\n' => "\\n".to_owned(),
                    '\r' => "\\r".to_owned(),
                    '\t' => "\\t".to_owned(),
                    c => c.to_string(),
                }).collect();
                prop_assert_eq!(String::from_utf8(out).unwrap(), want);
            }
        }

        #[test]
        fn base64_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..100), pad in any::<bool>()) {
            use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
            let engine = if pad { &STANDARD } else { &STANDARD_NO_PAD };
            let got = ok(Bytea, &format!("\"{}\"", engine.encode(&bytes)));
            let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            prop_assert_eq!(got, format!("\\\\x{want}"));
        }

    }
}
