//! A dead letter: a record that will not become a row, with what is kept of
//! it (stored in `sluice.dead_letters` by [`crate::postgres::dead_letters`],
//! produced to the dead-letter topic by [`crate::kafka::dead_letter_topic`]).
//!
//! Two classes: `decode` (refused before the database: invalid JSON or
//! UTF-8, a value of the wrong type or out of the column's range, a record
//! above `max_record_bytes`) and `data` (refused by the database with an
//! SQLSTATE of class 22 or 23: NOT NULL, CHECK, unique, foreign key, …; or
//! a NOT NULL, `varchar(n)` or `numeric(p,s)` violation the encoder found
//! first, with the SQLSTATE Postgres would raise).

use std::fmt;

use crate::row::{header_value_json, DecodeError};

/// Why a record is a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterClass {
    /// The record could not be turned into a row.
    Decode,
    /// The database refused the row (SQLSTATE class 22 or 23).
    Data,
}

impl DeadLetterClass {
    /// The value stored in `error_class`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterClass::Decode => "decode",
            DeadLetterClass::Data => "data",
        }
    }
}

impl fmt::Display for DeadLetterClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record that will not become a row, with what is stored of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub key: Option<Box<[u8]>>,
    /// The raw value (at most `max_record_bytes` of it); `None` for a
    /// tombstone or when the raw record could not be read back.
    pub value: Option<Box<[u8]>>,
    /// The headers as a JSON array (see [`headers_json`]).
    pub headers: Box<str>,
    pub class: DeadLetterClass,
    pub sqlstate: Option<Box<str>>,
    pub error: Box<str>,
}

impl DeadLetter {
    /// A record the encoder refused; `value` and `key` are stored up to
    /// `max_record_bytes` each. A constraint of the live table checked by
    /// the encoder (NOT NULL, a length or precision) is a `data` dead letter
    /// with the SQLSTATE Postgres would have raised.
    pub fn decode(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Box<str>,
        error: &DecodeError,
        max_record_bytes: usize,
    ) -> DeadLetter {
        DeadLetter {
            key: key.map(|k| capped(k, max_record_bytes)),
            value: value.map(|v| capped(v, max_record_bytes)),
            headers,
            class: match error.sqlstate {
                Some(_) => DeadLetterClass::Data,
                None => DeadLetterClass::Decode,
            },
            sqlstate: error.sqlstate.map(Box::from),
            error: error.to_string().into(),
        }
    }

    /// A record whose value is above `max_record_bytes`: not decoded, and
    /// stored truncated to its first `max_record_bytes` bytes, so one huge
    /// record cannot blow the buffer.
    pub fn oversized(key: Option<&[u8]>, value: &[u8], headers: Box<str>, max_record_bytes: usize) -> DeadLetter {
        let error = DecodeError::for_record(format!(
            "value is {} bytes, above max_record_bytes ({max_record_bytes}); stored truncated to its first \
             {max_record_bytes} bytes",
            value.len()
        ));
        Self::decode(key, Some(value), headers, &error, max_record_bytes)
    }

    /// Bytes this dead letter holds, charged to the pipeline buffer.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<DeadLetter>()
            + self.key.as_ref().map_or(0, |k| k.len())
            + self.value.as_ref().map_or(0, |v| v.len())
            + self.headers.len()
            + self.sqlstate.as_ref().map_or(0, |s| s.len())
            + self.error.len()
    }
}

impl DeadLetter {
    /// Truncates what is stored so that [`DeadLetter::bytes`] is at most
    /// `budget` (at least ~1KiB): headers first, then the error text, key
    /// and value; the error says what was cut.
    pub fn shrink_to(&mut self, budget: usize) {
        if self.bytes() <= budget {
            return;
        }
        let before = (
            self.key.as_ref().map_or(0, |k| k.len()),
            self.value.as_ref().map_or(0, |v| v.len()),
            self.headers.len(),
        );
        self.headers = "[]".into();
        let mut error = String::from(&*self.error);
        if error.len() > 512 {
            let mut cut = 512;
            while !error.is_char_boundary(cut) {
                cut -= 1;
            }
            error.truncate(cut);
        }
        error.push_str(&format!(
            " (stored truncated to fit the buffer: key {} bytes, value {} bytes, headers {} bytes)",
            before.0, before.1, before.2
        ));
        self.error = error.into();
        let fixed = std::mem::size_of::<DeadLetter>()
            + self.headers.len()
            + self.sqlstate.as_ref().map_or(0, |s| s.len())
            + self.error.len();
        let mut room = budget.saturating_sub(fixed);
        for part in [&mut self.key, &mut self.value] {
            if let Some(bytes) = part.as_mut() {
                if bytes.len() > room / 2 {
                    *bytes = capped(bytes, room / 2);
                }
            }
        }
        room = room.saturating_sub(self.key.as_ref().map_or(0, |k| k.len()));
        if let Some(v) = self.value.as_mut() {
            if v.len() > room {
                *v = capped(v, room);
            }
        }
    }
}

fn capped(bytes: &[u8], max: usize) -> Box<[u8]> {
    Box::from(&bytes[..bytes.len().min(max)])
}

/// Record headers as stored in `headers`: a JSON array, in order, of
/// `{"key": k, "value": v}` where `v` is the value as a string when it is
/// UTF-8, `{"base64": …}` when not, and `null` for a null header.
pub fn headers_json<'a>(headers: impl Iterator<Item = (&'a str, Option<&'a [u8]>)>) -> Box<str> {
    let items: Vec<serde_json::Value> = headers
        .map(|(key, value)| {
            let value = match header_value_json(value) {
                serde_json::Value::String(s) => serde_json::Value::String(no_nul(&s)),
                other => other,
            };
            serde_json::json!({ "key": no_nul(key), "value": value })
        })
        .collect();
    if items.is_empty() {
        return "[]".into();
    }
    serde_json::Value::Array(items).to_string().into()
}

/// The headers stored by [`headers_json`], back as (name, value) pairs.
/// Anything unreadable is skipped.
pub fn headers_from_json(json: &str) -> Vec<(String, Option<Vec<u8>>)> {
    use base64::Engine as _;
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let key = item.get("key")?.as_str()?.to_owned();
            let value = match item.get("value")? {
                serde_json::Value::String(s) => Some(s.clone().into_bytes()),
                serde_json::Value::Object(o) => Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(o.get("base64")?.as_str()?)
                        .ok()?,
                ),
                _ => None,
            };
            Some((key, value))
        })
        .collect()
}

/// Postgres text and jsonb cannot hold NUL.
pub fn no_nul(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// One dead letter with the coordinates of its record.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub letter: &'a DeadLetter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_values_are_truncated_and_say_so() {
        let value = vec![b'x'; 5000];
        let d = DeadLetter::oversized(Some(b"k"), &value, "[]".into(), 1024);
        assert_eq!(d.value.as_deref().map(<[u8]>::len), Some(1024));
        assert_eq!(d.class, DeadLetterClass::Decode);
        assert!(d.error.contains("5000 bytes"), "{}", d.error);
        assert!(d.error.contains("max_record_bytes (1024)"), "{}", d.error);
        assert!(d.bytes() > 1024);
    }

    #[test]
    fn headers_keep_order_and_bytes() {
        let h = headers_json(
            [
                ("a", Some(&b"1"[..])),
                ("b", None),
                ("c\0", Some(&[0xff, 0x00][..])),
                ("a", Some(&b"2"[..])),
            ]
            .into_iter(),
        );
        let v: serde_json::Value = serde_json::from_str(&h).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"key": "a", "value": "1"},
                {"key": "b", "value": null},
                {"key": "c\u{FFFD}", "value": {"base64": "/wA="}},
                {"key": "a", "value": "2"},
            ])
        );
        assert_eq!(&*headers_json(std::iter::empty()), "[]");
    }
}
