//! The dead-letter store: `sluice.dead_letters`.
//!
//! A record that can never become a row is kept here with its raw bytes and
//! the precise reason, instead of stalling the pipeline or vanishing. Dead
//! letters are inserted in the flush transaction that advances the offsets
//! covering them, so — like rows — each one is stored exactly once: a
//! rolled-back flush stores none, a retried or re-delivered one cannot store
//! it twice (`ON CONFLICT DO NOTHING` on the record's coordinates).
//!
//! Two classes: `decode` (refused before the database: invalid JSON or
//! UTF-8, a value of the wrong type or out of the column's range, a record
//! above `max_record_bytes`) and `data` (refused by the database with an
//! SQLSTATE of class 22 or 23: NOT NULL, CHECK, unique, foreign key, …; or
//! a NOT NULL, `varchar(n)` or `numeric(p,s)` violation the encoder found
//! first, with the SQLSTATE Postgres would raise).

use std::fmt;

use sqlx::PgConnection;

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

    /// The dead letter of a consumed record: `error` from the encoder, or
    /// `None` when the value is above `max_record_bytes` (not decoded).
    pub fn of_message<M: rdkafka::Message>(msg: &M, error: Option<&DecodeError>, max_record_bytes: usize) -> Self {
        let headers = message_headers(msg);
        match (error, msg.payload()) {
            (Some(error), value) => Self::decode(msg.key(), value, headers, error, max_record_bytes),
            (None, Some(value)) => Self::oversized(msg.key(), value, headers, max_record_bytes),
            (None, None) => Self::decode(
                msg.key(),
                None,
                headers,
                &DecodeError::for_record("null value (tombstone)"),
                max_record_bytes,
            ),
        }
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

/// A consumed record's headers, as [`headers_json`] stores them.
pub fn message_headers<M: rdkafka::Message>(msg: &M) -> Box<str> {
    use rdkafka::message::Headers;
    match msg.headers() {
        Some(h) => headers_json(h.iter().map(|h| (h.key, h.value))),
        None => headers_json(std::iter::empty()),
    }
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
fn no_nul(s: &str) -> String {
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

/// Inserts dead letters of `pipeline` in the caller's transaction, one
/// statement for all of them. A record already stored (re-delivered after a
/// fence or a crash) is skipped. Returns how many were inserted.
pub async fn insert(tx: &mut PgConnection, pipeline: &str, letters: &[Stored<'_>]) -> Result<u64, sqlx::Error> {
    if letters.is_empty() {
        return Ok(0);
    }
    let n = letters.len();
    let (mut topics, mut partitions, mut offsets, mut timestamps) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut keys, mut values, mut headers) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut classes, mut sqlstates, mut errors) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for s in letters {
        topics.push(s.topic);
        partitions.push(s.partition);
        offsets.push(s.offset);
        timestamps.push(s.timestamp_ms);
        keys.push(s.letter.key.as_deref());
        values.push(s.letter.value.as_deref());
        headers.push(&*s.letter.headers);
        classes.push(s.letter.class.as_str());
        sqlstates.push(s.letter.sqlstate.as_deref());
        errors.push(no_nul(&s.letter.error));
    }
    let result = sqlx::query(
        "INSERT INTO sluice.dead_letters \
           (pipeline, topic, partition, \"offset\", kafka_timestamp, key, value, headers, error_class, sqlstate, error) \
         SELECT $1, t, p, o, to_timestamp(ts::float8 / 1000), k, v, h::jsonb, c, s, e \
         FROM UNNEST($2::text[], $3::int4[], $4::int8[], $5::int8[], $6::bytea[], $7::bytea[], $8::text[], \
                     $9::text[], $10::text[], $11::text[]) AS u(t, p, o, ts, k, v, h, c, s, e) \
         ON CONFLICT (pipeline, topic, partition, \"offset\") DO NOTHING",
    )
    .bind(pipeline)
    .bind(topics)
    .bind(partitions)
    .bind(offsets)
    .bind(timestamps)
    .bind(keys)
    .bind(values)
    .bind(headers)
    .bind(classes)
    .bind(sqlstates)
    .bind(errors)
    .execute(&mut *tx)
    .await?;
    Ok(result.rows_affected())
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
