//! Record formats: the bytes of a Kafka key or value → the JSON text the
//! row encoder reads.
//!
//! | format | on the wire | becomes |
//! | --- | --- | --- |
//! | `json` | JSON text | itself (no copy) |
//! | `avro` | Confluent framing: magic `0`, schema id (4 bytes, big-endian), Avro binary datum | JSON text, logical types spelled out ([`avro`]) |
//! | `protobuf` | framing, message indexes, Protobuf message | canonical proto3 JSON ([`protobuf`]) |
//! | `json_schema` | framing, JSON text | the JSON text after the framing |
//! | `string`, `bytes` (keys only) | anything | itself |
//!
//! Writer's schemas come by id through [`Schemas`] (a bounded cache in
//! front of a [`SchemaSource`], the registry client). With
//! `envelope = "debezium"` the decoded value is then read as a Debezium
//! change event ([`debezium`]).
//!
//! # Layering
//!
//! `format` is at the bottom with `mapping`: it imports nothing of the
//! crate. The registry client that implements [`SchemaSource`] is a shell
//! (`crate::registry`), wired in by `app`.

mod avro;
mod debezium;
mod json_schema;
mod protobuf;
mod schemas;
mod semantic;
mod text;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;

pub use avro::FieldColumn;
pub use schemas::{
    FetchError, RegisteredSchema, RegistryView, SchemaKind, SchemaSource, SchemaStats, Schemas, FIRST_BACKOFF,
    MAX_BACKOFF,
};

/// How a record's key or value is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Schemaless JSON (the default).
    #[default]
    Json,
    /// Avro in the Confluent wire format, schema from the registry.
    Avro,
    /// Protobuf in the Confluent wire format, schema from the registry.
    Protobuf,
    /// JSON in the Confluent wire format, schema from the registry.
    JsonSchema,
    /// UTF-8 text (keys only).
    String,
    /// Raw bytes (keys only).
    Bytes,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Avro => "avro",
            Format::Protobuf => "protobuf",
            Format::JsonSchema => "json_schema",
            Format::String => "string",
            Format::Bytes => "bytes",
        }
    }

    /// Whether records carry a schema id and need the registry.
    pub fn uses_registry(self) -> bool {
        matches!(self, Format::Avro | Format::Protobuf | Format::JsonSchema)
    }

    /// Whether the decoded bytes are JSON (so JSON pointers reach into them).
    pub fn is_json(self) -> bool {
        !matches!(self, Format::String | Format::Bytes)
    }
}

/// What the record value is wrapped in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    /// The value is the row.
    #[default]
    None,
    /// A Debezium change event (see [`debezium`]).
    Debezium,
}

impl Envelope {
    pub fn as_str(self) -> &'static str {
        match self {
            Envelope::None => "none",
            Envelope::Debezium => "debezium",
        }
    }
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Its schema cannot be had now (the registry is unreachable): the
    /// record must wait, not be dead-lettered. Try again at `until`.
    #[error("{why}")]
    Unavailable { until: Instant, why: String },
    /// The record itself is bad: a dead letter with this reason.
    #[error("{0}")]
    Record(String),
}

/// A record decoded for the row encoder.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The key (JSON text for schema formats; a string key unquoted).
    pub key: Option<Cow<'a, [u8]>>,
    /// The row's JSON text; `None` for a tombstone, or for a Debezium
    /// delete (then `key` holds the key columns).
    pub value: Option<Cow<'a, [u8]>>,
    /// The Debezium `source` block, for `@source` columns.
    pub source: Option<Cow<'a, [u8]>>,
    /// Nothing to write (the tombstone after a Debezium delete).
    pub skip: bool,
    /// The id of the writer's schema of the value, for a registry format.
    pub value_schema: Option<u32>,
}

/// A pipeline's decoding: the key and value formats, the envelope, and
/// the schemas (present whenever a format needs the registry).
#[derive(Clone, Default)]
pub struct Decoder {
    pub key: Format,
    pub value: Format,
    pub envelope: Envelope,
    schemas: Option<Arc<Schemas>>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("key", &self.key)
            .field("value", &self.value)
            .field("envelope", &self.envelope)
            .finish_non_exhaustive()
    }
}

/// The Confluent framing: magic byte 0, then the schema id.
fn framing(bytes: &[u8]) -> Result<(u32, &[u8]), String> {
    match bytes {
        [0, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        [0, ..] => Err(format!(
            "{} bytes are too short for the Confluent wire format (magic byte and a 4-byte schema id)",
            bytes.len()
        )),
        [] => Err("an empty record is not in the Confluent wire format".to_owned()),
        [magic, ..] => Err(format!(
            "not in the Confluent wire format: the first byte is {magic:#04x}, not the magic byte 0x00"
        )),
    }
}

impl Decoder {
    /// `schemas` must be given when a format uses the registry (the
    /// configuration refuses such a pipeline without `[schema_registry]`).
    pub fn new(key: Format, value: Format, envelope: Envelope, schemas: Option<Arc<Schemas>>) -> Decoder {
        assert!(
            schemas.is_some() || !(key.uses_registry() || value.uses_registry()),
            "a registry format without a schema registry"
        );
        Decoder {
            key,
            value,
            envelope,
            schemas,
        }
    }

    /// Whether records go to the encoder as they are (schemaless JSON,
    /// no envelope): the consumer skips [`Decoder::decode`] then.
    pub fn is_plain(&self) -> bool {
        !self.key.uses_registry() && self.value == Format::Json && self.envelope == Envelope::None
    }

    /// Decodes a record's key and value; `now` dates a registry failure.
    /// `needs_key: false` (no column reads the key, no delete needs it)
    /// leaves a key in a registry format undecoded, as `None`.
    pub fn decode<'a>(
        &self,
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
        needs_key: bool,
        now: Instant,
    ) -> Result<Decoded<'a>, FormatError> {
        let key = match key {
            Some(_) if !needs_key && self.key.uses_registry() => None,
            Some(k) if self.key.uses_registry() => Some(unquote(self.registered(self.key, k, now)?)),
            Some(k) if self.envelope == Envelope::Debezium && self.key == Format::Json => {
                Some(debezium::connect_key(Cow::Borrowed(k)).map_err(|e| FormatError::Record(format!("key: {e}")))?)
            }
            other => other.map(Cow::Borrowed),
        };
        let (value, value_schema) = match value {
            Some(v) if self.value.uses_registry() => {
                let (id, decoded) = self.registered_with_id(self.value, v, now)?;
                (Some(decoded), Some(id))
            }
            other => (other.map(Cow::Borrowed), None),
        };
        match self.envelope {
            Envelope::None => Ok(Decoded {
                key,
                value,
                source: None,
                skip: false,
                value_schema,
            }),
            Envelope::Debezium => Ok(
                match debezium::change(value, self.value == Format::Json).map_err(FormatError::Record)? {
                    debezium::Change::Upsert { after, source } => Decoded {
                        key,
                        value: Some(after),
                        source,
                        skip: false,
                        value_schema,
                    },
                    // A delete: the key columns from `before`, else the Kafka key.
                    debezium::Change::Delete { before } => Decoded {
                        key: Some(before.or(key).ok_or_else(|| {
                            FormatError::Record("a Debezium delete with neither a `before` image nor a key".to_owned())
                        })?),
                        value_schema,
                        ..Decoded::default()
                    },
                    debezium::Change::Skip => Decoded {
                        key,
                        skip: true,
                        ..Decoded::default()
                    },
                },
            ),
        }
    }

    /// Bytes in the Confluent wire format, decoded with their writer's schema.
    fn registered<'a>(&self, format: Format, bytes: &'a [u8], now: Instant) -> Result<Cow<'a, [u8]>, FormatError> {
        self.registered_with_id(format, bytes, now).map(|(_, decoded)| decoded)
    }

    /// [`registered`](Self::registered), and the writer's schema id.
    fn registered_with_id<'a>(
        &self,
        format: Format,
        bytes: &'a [u8],
        now: Instant,
    ) -> Result<(u32, Cow<'a, [u8]>), FormatError> {
        let (id, payload) = framing(bytes).map_err(FormatError::Record)?;
        let schemas = self.schemas.as_ref().expect("checked in Decoder::new");
        let compiled = schemas.get(id, format, now)?;
        let mut out = Vec::with_capacity(payload.len() * 2);
        match &*compiled {
            schemas::Compiled::Avro(schema) => schema.to_json(payload, &mut out),
            schemas::Compiled::Protobuf(schema) => schema.to_json(payload, &mut out),
            schemas::Compiled::Json => return Ok((id, Cow::Borrowed(payload))),
        }
        .map_err(|e| FormatError::Record(format!("schema id {id}: {e}")))?;
        Ok((id, Cow::Owned(out)))
    }

    /// The columns the value schema `id` gives (see [`columns_of`]); `None`
    /// when it is not cached.
    pub fn value_columns(&self, id: u32) -> Option<Result<Vec<FieldColumn>, String>> {
        let schema = self.schemas.as_ref()?.served(id)?;
        Some(columns_of(&schema, self.envelope))
    }

    /// The registry's state, when this decoder uses one.
    pub fn schemas(&self) -> Option<&Arc<Schemas>> {
        self.schemas.as_ref()
    }
}

/// The columns a registered schema gives a pipeline that omits `columns`:
/// one per top-level field of an Avro record, of the first message of a
/// Protobuf file, of a JSON Schema object's properties, or of the row of a
/// Debezium change event (Avro), typed as sluice writes the field.
pub fn columns_of(schema: &RegisteredSchema, envelope: Envelope) -> Result<Vec<FieldColumn>, String> {
    match (schema.kind, envelope) {
        (SchemaKind::Avro, Envelope::None) => avro::columns(&schema.text),
        (SchemaKind::Avro, Envelope::Debezium) => avro::debezium_columns(&schema.text),
        (SchemaKind::Protobuf, Envelope::None) => protobuf::columns(&schema.text, &schema.references),
        (SchemaKind::Json, Envelope::None) => json_schema::columns(&schema.text),
        (other, Envelope::Debezium) => Err(format!(
            "columns of Debezium change events are taken from Avro schemas only; this subject's schema is {}",
            other.as_str()
        )),
    }
}

/// A key that decoded to a JSON string is that string's text, so `@key`
/// reads `abc`, not `"abc"`.
fn unquote(key: Cow<'_, [u8]>) -> Cow<'_, [u8]> {
    if key.first() == Some(&b'"') {
        if let Ok(s) = serde_json::from_slice::<String>(&key) {
            return Cow::Owned(s.into_bytes());
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicU64};

    use super::schemas::tests::{avro, Fixed};
    use super::*;

    fn framed(id: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend(id.to_be_bytes());
        v.extend(payload);
        v
    }

    fn decoder(key: Format, value: Format, envelope: Envelope, schemas: HashMap<u32, RegisteredSchema>) -> Decoder {
        let source = Fixed {
            schemas,
            down: Arc::new(AtomicBool::new(false)),
            calls: Arc::new(AtomicU64::new(0)),
        };
        Decoder::new(key, value, envelope, Some(Arc::new(Schemas::new(Box::new(source), 10))))
    }

    #[test]
    fn avro_values_and_keys_decode_to_json() {
        let value_schema = r#"{"type":"record","name":"V","fields":[{"name":"id","type":"long"},{"name":"born","type":{"type":"int","logicalType":"date"}}]}"#;
        let d = decoder(
            Format::Avro,
            Format::Avro,
            Envelope::None,
            [(1, avro(value_schema)), (2, avro(r#""string""#))].into(),
        );
        let value = framed(1, &[0x02, 0x02]);
        let key = framed(2, &[0x06, b'a', b'b', b'c']);
        let got = d.decode(Some(&key), Some(&value), true, Instant::now()).unwrap();
        assert_eq!(got.value.as_deref(), Some(&br#"{"id":1,"born":"1970-01-02"}"#[..]));
        assert_eq!(got.key.as_deref(), Some(&b"abc"[..]), "a string key is unquoted");
        // A key nothing reads is not decoded (not even its framing checked).
        let got = d
            .decode(Some(b"not framed"), Some(&value), false, Instant::now())
            .unwrap();
        assert_eq!(got.key, None);
        assert!(d
            .decode(Some(b"not framed"), Some(&value), true, Instant::now())
            .is_err());
        assert!(!d.is_plain());
    }

    #[test]
    fn bad_framing_and_unknown_ids_are_the_records_fault() {
        let d = decoder(Format::Json, Format::Avro, Envelope::None, HashMap::new());
        let now = Instant::now();
        for (bytes, want) in [
            (&b"{\"a\":1}"[..], "first byte is 0x7b"),
            (&[0u8, 0, 1][..], "too short"),
            (&[][..], "empty record"),
        ] {
            let Err(FormatError::Record(e)) = d.decode(None, Some(bytes), true, now) else {
                panic!("expected a record error")
            };
            assert!(e.contains(want), "{e}");
        }
        let Err(FormatError::Record(e)) = d.decode(None, Some(&framed(42, &[0])), true, now) else {
            panic!("expected a record error")
        };
        assert!(e.contains("schema id 42 is not in the schema registry"), "{e}");
        // A tombstone stays a tombstone.
        assert_eq!(d.decode(None, None, true, now).unwrap(), Decoded::default());
    }

    #[test]
    fn plain_json_is_not_touched_and_json_schema_drops_the_framing() {
        let plain = Decoder::default();
        assert!(plain.is_plain());
        let mut json = HashMap::new();
        json.insert(
            3,
            RegisteredSchema {
                kind: SchemaKind::Json,
                text: "{}".into(),
                references: Vec::new(),
            },
        );
        let d = decoder(Format::String, Format::JsonSchema, Envelope::None, json);
        let value = framed(3, br#"{"a":1}"#);
        let got = d.decode(Some(b"k"), Some(&value), true, Instant::now()).unwrap();
        assert!(matches!(got.value, Some(Cow::Borrowed(b)) if b == br#"{"a":1}"#));
        assert_eq!(got.key.as_deref(), Some(&b"k"[..]));
        // A JSON Schema id where Avro is expected.
        let d = decoder(
            Format::Json,
            Format::Avro,
            Envelope::None,
            [(
                3,
                RegisteredSchema {
                    kind: SchemaKind::Json,
                    text: "{}".into(),
                    references: Vec::new(),
                },
            )]
            .into(),
        );
        let Err(FormatError::Record(e)) = d.decode(None, Some(&value), true, Instant::now()) else {
            panic!()
        };
        assert!(e.contains("is a JSON schema, but the pipeline reads avro"), "{e}");
    }

    #[test]
    fn debezium_events_become_rows_deletes_and_skips() {
        let d = Decoder::new(Format::Json, Format::Json, Envelope::Debezium, None);
        let now = Instant::now();
        let key = br#"{"id":1}"#;
        let create = br#"{"before":null,"after":{"id":1},"source":{"lsn":1},"op":"r"}"#;
        let got = d.decode(Some(key), Some(create), true, now).unwrap();
        assert_eq!(got.value.as_deref(), Some(&br#"{"id":1}"#[..]));
        assert_eq!(got.source.as_deref(), Some(&br#"{"lsn":1}"#[..]));
        let delete = br#"{"before":null,"after":null,"op":"d"}"#;
        let got = d.decode(Some(key), Some(delete), true, now).unwrap();
        assert_eq!((got.value, got.key.as_deref()), (None, Some(&key[..])));
        assert!(d.decode(Some(key), None, true, now).unwrap().skip);
        let Err(FormatError::Record(e)) = d.decode(None, Some(delete), true, now) else {
            panic!("a delete without `before` or a key")
        };
        assert!(e.contains("neither a `before`"), "{e}");
    }
}
