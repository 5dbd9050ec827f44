//! [`RowEncoder`]: one record in, one COPY text line out, or a
//! [`DecodeError`] that sidelines that one record. Upsert mode adds the
//! `_sluice_delete` flag and turns tombstones into delete lines keyed by
//! the Kafka key.

use std::fmt;

use serde_json::Value;

use crate::mapping::{ColumnSource, PgType};
use crate::row::constraints;
use crate::row::convert::{ambiguous_timestamp, write_json_value, write_value};
use crate::row::copy_text::{push_text, NulByte, NULL};
use crate::row::keys::field_ranges;
use crate::row::plan::{ColumnPlan, UniqueKey};
use crate::row::project::{raw_fits_jsonb, JsonRef, Lookup, Need};
use crate::row::show::json_error;
use crate::row::sources::{write_key_pointer, write_meta, Path, RecordRef};

/// Why a record could not become a row.
///
/// `column` is `None` for whole-record problems (invalid JSON, invalid UTF-8,
/// null value). For column problems built by this module, `reason` starts
/// with the column's SQL type in parentheses, e.g. `(numeric): expected a
/// number, found "abc"`, so that the `Display` form reads
/// ``column `amount` (numeric): expected a number, found "abc"``.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{}", Describe(self))]
pub struct DecodeError {
    pub column: Option<String>,
    pub reason: String,
    /// The SQLSTATE Postgres would raise, when the record breaks a
    /// constraint of the live table checked ahead of it ([`Constraints`](crate::row::Constraints)).
    pub sqlstate: Option<&'static str>,
}

impl DecodeError {
    /// A whole-record problem; displays as `record: {reason}`.
    pub fn for_record(reason: impl Into<String>) -> Self {
        Self {
            column: None,
            reason: reason.into(),
            sqlstate: None,
        }
    }

    /// A problem converting one column; displays as
    /// ``column `{name}` ({sql type}): {reason}``.
    pub fn for_column(name: &str, type_name: &str, reason: impl fmt::Display) -> Self {
        Self {
            column: Some(name.to_owned()),
            reason: format!("({type_name}): {reason}"),
            sqlstate: None,
        }
    }

    /// A constraint of the live table the column's value breaks.
    fn constraint(name: &str, type_name: &str, sqlstate: &'static str, reason: impl fmt::Display) -> Self {
        Self {
            sqlstate: Some(sqlstate),
            ..Self::for_column(name, type_name, reason)
        }
    }
}

struct Describe<'a>(&'a DecodeError);

impl fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = &self.0.reason;
        match &self.0.column {
            None => write!(f, "record: {reason}"),
            // Errors from `for_column` already carry "(type): ".
            Some(c) if reason.starts_with('(') => write!(f, "column `{c}` {reason}"),
            Some(c) => write!(f, "column `{c}`: {reason}"),
        }
    }
}

/// Encodes records as COPY text lines for a fixed list of columns.
#[derive(Debug, Clone)]
pub struct RowEncoder {
    columns: Vec<ColumnPlan>,
    /// Parallel to `columns`; JSON pointers split and unescaped once here
    /// instead of on every record.
    paths: Vec<Path>,
    reads_value: bool,
    /// What of the record value to parse: only what the pointers reach.
    need: Need,
    /// Parallel to `columns`: where a pointer column finds its value in
    /// what [`Need::parse`] keeps.
    lookups: Vec<Option<Lookup>>,
    /// Parallel to `columns`: the column is the whole value as `jsonb`, so
    /// it takes the record's own text where that means the same to Postgres
    /// (which normalizes jsonb) instead of a parse serialized again.
    raw_whole: Vec<bool>,
    reads_headers: bool,
    upsert: Option<Upsert>,
    /// The table's unique keys whose columns are all mapped (insert mode
    /// uses them to find duplicates within a batch before Postgres does).
    unique_keys: Vec<UniqueKey>,
    /// Whether a bare JSON number in a timestamp column is read as epoch
    /// milliseconds (schemaless JSON). When the records come with a schema
    /// the schema decides (its types arrive as text), and a bare number is
    /// refused: it could be seconds, milliseconds, microseconds or days.
    epoch_millis: bool,
}

/// Upsert mode: the columns that identify a row, and what a tombstone does.
#[derive(Debug, Clone)]
struct Upsert {
    /// Indexes into `columns`, in the configured key order.
    key: Box<[usize]>,
    delete_on_tombstone: bool,
    /// Index into `columns` of the version column ("update only if newer").
    version: Option<usize>,
}

/// An upsert key or version column that does not fit the mapped columns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpsertError {
    #[error("key column `{0}` is not a mapped column")]
    KeyNotMapped(String),
    #[error("version column `{0}` is not a mapped column")]
    VersionNotMapped(String),
    #[error("a version column needs upsert mode")]
    VersionWithoutUpsert,
    #[error("version column `{0}` is a key column")]
    VersionIsKey(String),
}

impl RowEncoder {
    pub fn new(columns: Vec<ColumnPlan>) -> Self {
        let paths: Vec<Path> = columns.iter().map(|c| Path::compile(&c.source)).collect();
        let reads_value = columns.iter().any(|c| matches!(c.source, ColumnSource::Pointer(_)));
        let reads_headers = columns
            .iter()
            .any(|c| matches!(c.source, ColumnSource::Header(_) | ColumnSource::Headers));
        let raw_whole: Vec<bool> = columns
            .iter()
            .zip(&paths)
            .map(|(c, p)| {
                matches!(c.source, ColumnSource::Pointer(_))
                    && matches!(p, Path::Whole)
                    && c.ty == PgType::Jsonb
                    && !c.array
            })
            .collect();
        // Key pointers read the key, and a raw whole-value column the text.
        let value_paths: Vec<Path> = columns
            .iter()
            .zip(&paths)
            .zip(&raw_whole)
            .map(|((c, p), raw)| match c.source {
                ColumnSource::Pointer(_) if !raw => p.clone(),
                _ => Path::Meta,
            })
            .collect();
        let (need, lookups) = Need::of(&value_paths);
        Self {
            columns,
            paths,
            reads_value,
            need,
            lookups,
            raw_whole,
            reads_headers,
            upsert: None,
            unique_keys: Vec::new(),
            epoch_millis: true,
        }
    }

    /// Whether a bare number in a `timestamptz`/`timestamp` column is epoch
    /// milliseconds (`true`, the default: schemaless JSON) or refused as
    /// ambiguous (`false`: formats with a schema, the Debezium envelope).
    pub fn with_epoch_millis(mut self, yes: bool) -> Self {
        self.epoch_millis = yes;
        self
    }

    /// Switches to upsert mode: every line gets one more column, the
    /// `_sluice_delete` flag (`f` for a row, `t` for a tombstone's delete),
    /// a key column may not be NULL, and with `delete_on_tombstone` a
    /// tombstone becomes a delete line whose key columns come from the Kafka
    /// key (see [`RowEncoder::encode`]). The error names a key column that is
    /// not among the columns.
    pub fn with_upsert(mut self, key: &[String], delete_on_tombstone: bool) -> Result<Self, UpsertError> {
        let key = key
            .iter()
            .map(|k| {
                self.columns
                    .iter()
                    .position(|c| &c.name == k)
                    .ok_or_else(|| UpsertError::KeyNotMapped(k.clone()))
            })
            .collect::<Result<_, _>>()?;
        self.upsert = Some(Upsert {
            key,
            delete_on_tombstone,
            version: None,
        });
        Ok(self)
    }

    /// In upsert mode, names the version column: rows only replace older
    /// versions, and a record's version must not be null. The error names a
    /// column that is not mapped, or a key column.
    pub fn with_version(mut self, column: &str) -> Result<Self, UpsertError> {
        let index = self
            .columns
            .iter()
            .position(|c| c.name == column)
            .ok_or_else(|| UpsertError::VersionNotMapped(column.to_owned()))?;
        let upsert = self.upsert.as_mut().ok_or(UpsertError::VersionWithoutUpsert)?;
        if upsert.key.contains(&index) {
            return Err(UpsertError::VersionIsKey(column.to_owned()));
        }
        upsert.version = Some(index);
        Ok(self)
    }

    /// Sets the table's unique keys (see [`UniqueKey`]); names of columns
    /// that are not mapped make that key unusable, so it is skipped.
    pub fn with_unique_keys(mut self, keys: &[(String, Vec<String>)]) -> Self {
        self.unique_keys = keys
            .iter()
            .filter_map(|(name, cols)| {
                let columns = cols
                    .iter()
                    .map(|c| self.columns.iter().position(|p| &p.name == c))
                    .collect::<Option<Vec<usize>>>()?;
                Some(UniqueKey {
                    name: name.clone(),
                    columns,
                })
            })
            .collect();
        self
    }

    /// The unique keys set by [`RowEncoder::with_unique_keys`].
    pub fn unique_keys(&self) -> &[UniqueKey] {
        &self.unique_keys
    }

    /// In upsert mode with a version column, its name.
    pub fn version_column(&self) -> Option<&str> {
        let index = self.upsert.as_ref()?.version?;
        Some(self.columns[index].name.as_str())
    }

    pub fn columns(&self) -> &[ColumnPlan] {
        &self.columns
    }

    /// In upsert mode, the key columns in the configured order.
    pub fn key_columns(&self) -> Option<Vec<&str>> {
        let upsert = self.upsert.as_ref()?;
        Some(upsert.key.iter().map(|&i| self.columns[i].name.as_str()).collect())
    }

    /// Whether any column reads the record value (so tombstones and
    /// non-JSON values are errors).
    pub fn reads_value(&self) -> bool {
        self.reads_value
    }

    /// Whether a line may read the Kafka key: a `@key` or `"@key/…"` column,
    /// or upsert mode with `delete_on_tombstone` (a delete's key columns
    /// come from the key). A caller that has to decode keys may skip it
    /// otherwise.
    /// What a JSON value read for `col` is written as: its type, whether an
    /// array of it, and whether a bare number into a timestamp is epoch ms.
    fn target(&self, col: &ColumnPlan) -> (PgType, bool, bool) {
        (col.ty, col.array, self.epoch_millis)
    }

    pub fn reads_key(&self) -> bool {
        self.upsert.as_ref().is_some_and(|u| u.delete_on_tombstone)
            || self
                .columns
                .iter()
                .any(|c| matches!(c.source, ColumnSource::Key | ColumnSource::KeyPointer(_)))
    }

    /// Whether any column reads the record's headers (so the caller must
    /// pass them in [`RecordRef::headers`]).
    pub fn reads_headers(&self) -> bool {
        self.reads_headers
    }

    /// Appends exactly one line of PostgreSQL COPY *text* format (columns
    /// tab-separated in `columns` order, `\N` for NULL, terminated by `'\n'`)
    /// to `out`. On error `out` is left exactly as it was.
    ///
    /// In upsert mode the line ends with the `_sluice_delete` flag, and a
    /// tombstone (null value) with `delete_on_tombstone` encodes as a delete:
    /// non-key columns NULL, key columns from the Kafka key. A key column
    /// whose source is a JSON pointer `/x` into the value takes `/x` from the
    /// key parsed as JSON; a key that is not a JSON object or array (not
    /// JSON at all, or a scalar) is the value of a single key column.
    pub fn encode(&self, rec: &RecordRef<'_>, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        self.encode_into(rec, out, None)
    }

    /// [`RowEncoder::encode`], noting as it goes each field's byte range
    /// (from the line's start, without tab or newline) into `fields`,
    /// which is cleared first: what [`crate::row::field_ranges`] would
    /// find in the line, without splitting it again. `fields` is
    /// unspecified after an error.
    pub fn encode_noting_fields(
        &self,
        rec: &RecordRef<'_>,
        out: &mut Vec<u8>,
        fields: &mut Vec<(usize, usize)>,
    ) -> Result<(), DecodeError> {
        fields.clear();
        self.encode_into(rec, out, Some(fields))
    }

    fn encode_into(
        &self,
        rec: &RecordRef<'_>,
        out: &mut Vec<u8>,
        fields: Option<&mut Vec<(usize, usize)>>,
    ) -> Result<(), DecodeError> {
        let start = out.len();
        let result = match &self.upsert {
            Some(u) if u.delete_on_tombstone && rec.value.is_none() => self.encode_delete(u, rec, out).inspect(|()| {
                if let Some(fields) = fields {
                    field_ranges(&out[start..], fields);
                }
            }),
            _ => self.encode_line(rec, out, fields),
        };
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn encode_line(
        &self,
        rec: &RecordRef<'_>,
        out: &mut Vec<u8>,
        mut fields: Option<&mut Vec<(usize, usize)>>,
    ) -> Result<(), DecodeError> {
        let start = out.len();
        // No slots cost nothing when no column reads the value.
        let (slots, text, verbatim) = if self.reads_value {
            let text = value_text(rec.value)?;
            let parsed = self
                .need
                .parse(text)
                .map_err(|e| DecodeError::for_record(json_error("invalid JSON", &e)))?;
            (parsed.slots, text, parsed.verbatim)
        } else {
            (Vec::new(), "", false)
        };
        for (i, (col, path)) in self.columns.iter().zip(&self.paths).enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            let at = out.len();
            let written = match &col.source {
                ColumnSource::Pointer(_) if self.raw_whole[i] => write_whole_jsonb(out, text, verbatim)?,
                ColumnSource::Pointer(_) => match self.lookups[i].as_ref().and_then(|l| l.find(&slots)) {
                    None | Some(JsonRef::Null) => {
                        out.extend_from_slice(NULL);
                        Ok(())
                    }
                    // (A date never takes a bare number: see `convert`.)
                    Some(JsonRef::Number(n)) if !self.epoch_millis && col.ty.is_timestamp() && !col.array => {
                        Err(ambiguous_timestamp(n, col.ty))
                    }
                    Some(v) => write_value(out, v, col.ty, col.array, self.epoch_millis),
                },
                ColumnSource::KeyPointer(_) => write_key_pointer(out, path, rec.key, self.target(col), "@key"),
                ColumnSource::Source(_) => write_key_pointer(out, path, rec.source, self.target(col), "@source"),
                other => write_meta(out, other, rec, col.ty),
            };
            written.map_err(|reason| DecodeError::for_column(&col.name, &col.type_name(), reason))?;
            if let Some(fields) = fields.as_deref_mut() {
                fields.push((at - start, out.len() - start));
            }
            if !col.constraints.is_empty() {
                constraints::enforce(col, &out[at..])
                    .map_err(|v| DecodeError::constraint(&col.name, &col.type_name(), v.sqlstate, v.reason))?;
            }
            if let Some(u) = &self.upsert {
                // NULL never equals NULL: such a row could never be updated
                // or deleted by key, and DISTINCT ON would merge unrelated ones.
                if &out[at..] == NULL && u.key.contains(&i) {
                    return Err(DecodeError::for_column(
                        &col.name,
                        &col.type_name(),
                        "a key column must not be null",
                    ));
                }
                if &out[at..] == NULL && u.version == Some(i) {
                    return Err(DecodeError::for_column(
                        &col.name,
                        &col.type_name(),
                        "the version column must not be null",
                    ));
                }
            }
        }
        if self.upsert.is_some() {
            out.extend_from_slice(b"\tf");
            if let Some(fields) = fields {
                fields.push((out.len() - 1 - start, out.len() - start));
            }
        }
        out.push(b'\n');
        Ok(())
    }

    /// A tombstone in upsert mode: the delete line of its key.
    fn encode_delete(&self, upsert: &Upsert, rec: &RecordRef<'_>, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let raw = rec
            .key
            .ok_or_else(|| DecodeError::for_record("tombstone without a key: no row to delete"))?;
        let key = TombstoneKey::parse(raw);
        for (i, (col, path)) in self.columns.iter().zip(&self.paths).enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            if !upsert.key.contains(&i) {
                out.extend_from_slice(NULL);
                continue;
            }
            let at = out.len();
            let written = match &col.source {
                ColumnSource::Pointer(pointer) => match (&key, path.resolve(key.doc())) {
                    (TombstoneKey::Structured(_), Some(v)) => {
                        write_value(out, JsonRef::of(v), col.ty, col.array, self.epoch_millis)
                    }
                    (TombstoneKey::Structured(_), None) => Err(format!(
                        "the tombstone's JSON key has nothing at {:?}",
                        show_pointer(pointer)
                    )),
                    (TombstoneKey::Scalar(v), _) if upsert.key.len() == 1 => {
                        write_value(out, JsonRef::of(v), col.ty, col.array, self.epoch_millis)
                    }
                    (TombstoneKey::Scalar(_), _) => Err(format!(
                        "the tombstone's key is not a JSON object, so it cannot give the {} key columns",
                        upsert.key.len()
                    )),
                    (TombstoneKey::NotUtf8(e), _) => Err(format!("the tombstone's key is not valid UTF-8: {e}")),
                },
                ColumnSource::KeyPointer(_) => write_key_pointer(out, path, rec.key, self.target(col), "@key"),
                ColumnSource::Source(_) => write_key_pointer(out, path, rec.source, self.target(col), "@source"),
                other => write_meta(out, other, rec, col.ty),
            };
            written.map_err(|reason| DecodeError::for_column(&col.name, &col.type_name(), reason))?;
            if &out[at..] == NULL {
                return Err(DecodeError::for_column(
                    &col.name,
                    &col.type_name(),
                    "a key column must not be null (from the tombstone's key)",
                ));
            }
        }
        out.extend_from_slice(b"\tt\n");
        Ok(())
    }
}

/// A tombstone's Kafka key, read for its key columns.
#[derive(Debug)]
enum TombstoneKey {
    /// A JSON object or array: JSON pointers resolve in it.
    Structured(Value),
    /// A JSON scalar, or a key that is not JSON (as a string): the value of
    /// a single key column.
    Scalar(Value),
    NotUtf8(std::str::Utf8Error),
}

impl TombstoneKey {
    fn parse(raw: &[u8]) -> TombstoneKey {
        let text = match std::str::from_utf8(raw) {
            Ok(text) => text,
            Err(e) => return TombstoneKey::NotUtf8(e),
        };
        match serde_json::from_str::<Value>(text) {
            Ok(v @ (Value::Object(_) | Value::Array(_))) => TombstoneKey::Structured(v),
            Ok(v) => TombstoneKey::Scalar(v),
            Err(_) => TombstoneKey::Scalar(Value::String(text.to_owned())),
        }
    }

    fn doc(&self) -> &Value {
        match self {
            TombstoneKey::Structured(v) => v,
            _ => &Value::Null,
        }
    }
}

fn show_pointer(p: &str) -> &str {
    if p.is_empty() {
        "/"
    } else {
        p
    }
}

/// The record value as text, to be parsed as JSON.
fn value_text(value: Option<&[u8]>) -> Result<&str, DecodeError> {
    let bytes = value.ok_or_else(|| DecodeError::for_record("null value (tombstone)"))?;
    // Checked up front so the message names the real problem; serde_json
    // would report stray bytes as a JSON syntax error. The SIMD check says
    // only whether; std's names where, for the message.
    match simdutf8::basic::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(_) => {
            std::str::from_utf8(bytes).map_err(|e| DecodeError::for_record(format!("value is not valid UTF-8: {e}")))
        }
    }
}

/// The whole record value (valid JSON) into a `jsonb` column: as its own
/// text when that means the same to Postgres ([`raw_fits_jsonb`]), else
/// parsed whole and serialized again, as for any other JSON column. A JSON
/// `null` is NULL either way.
///
/// The outer error is the record's (not JSON after all, as the full parse
/// decides), the inner one the column's. A `verbatim` text (the
/// projection's word: [`Parsed::verbatim`](crate::row::project::Parsed::verbatim)) is copied as it is.
fn write_whole_jsonb(out: &mut Vec<u8>, text: &str, verbatim: bool) -> Result<Result<(), String>, DecodeError> {
    let trimmed = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
    if trimmed == "null" {
        out.extend_from_slice(NULL);
        return Ok(Ok(()));
    }
    if verbatim {
        out.extend_from_slice(trimmed.as_bytes());
        return Ok(Ok(()));
    }
    if raw_fits_jsonb(trimmed) {
        // Parsed JSON holds no raw NUL byte.
        return Ok(push_text(out, trimmed).map_err(|NulByte| "contains a NUL byte".to_owned()));
    }
    let doc: Value = serde_json::from_str(text).map_err(|e| DecodeError::for_record(json_error("invalid JSON", &e)))?;
    Ok(write_json_value(out, &doc, PgType::Jsonb))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::mapping::PgType::*;
    use crate::row::testing::*;

    #[test]
    fn whole_value_jsonb_takes_the_parse_where_its_own_text_could_mean_otherwise() {
        let enc = RowEncoder::new(vec![col("doc", "/", Jsonb), col("id", "/id", Int8)]);
        let encode = |v: &str| line(&enc, &rec(Some(v.as_bytes()), None));
        // As it is: Postgres normalizes it.
        assert_eq!(
            encode(r#" {"id": 1, "b": [1, 2.50]} "#).unwrap(),
            "{\"id\": 1, \"b\": [1, 2.50]}\t1"
        );
        assert_eq!(encode("null").unwrap(), "\\N\t\\N");
        // A non-ASCII escape goes as UTF-8 (a SQL_ASCII database refuses the escape).
        assert_eq!(
            encode(r#"{"id": 2, "n": "\u00e9"}"#).unwrap(),
            "{\"id\":2,\"n\":\"é\"}\t2"
        );
        // What the parse refuses is refused as before: NUL for the column, a
        // lone surrogate or too deep a nesting for the record.
        let nul = encode(r#"{"id": 3, "n": "\u0000"}"#).unwrap_err();
        assert_eq!(nul.column.as_deref(), Some("doc"));
        assert!(nul.to_string().contains("NUL"), "{nul}");
        let lone = encode(r#"{"id": 4, "n": "\ud800"}"#).unwrap_err();
        assert_eq!(lone.column, None, "{lone}");
        // Whitespace COPY must escape, and an escape's backslash, are
        // escaped (the text is not verbatim).
        assert_eq!(encode("{\"id\":\t6}").unwrap(), "{\"id\":\\t6}\t6");
        assert_eq!(encode("{\"id\":\n6}").unwrap(), "{\"id\":\\n6}\t6");
        assert_eq!(
            encode(r#"{"id": 7, "s": "a\"b"}"#).unwrap(),
            r#"{"id": 7, "s": "a\\"b"}"#.to_owned() + "\t7"
        );
        let deep = format!(r#"{{"id": 5, "n": {}{}}}"#, "[".repeat(127), "]".repeat(127));
        assert!(encode(&deep).unwrap_err().to_string().contains("invalid JSON"));
    }

    #[test]
    fn multi_column_layout() {
        let enc = RowEncoder::new(vec![
            col("id", "/id", Int8),
            col("name", "/name", Text),
            col("missing", "/nope", Int4),
            col("topic", "@topic", Text),
            col("partition", "@partition", Int4),
            col("offset", "@offset", Int8),
            col("ts", "@timestamp", Timestamptz),
            col("key", "@key", Text),
        ]);
        let mut out = b"previous line\n".to_vec();
        enc.encode(&rec(Some(br#"{"id":7,"name":"a\tb"}"#), Some(b"k1")), &mut out)
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "previous line\n7\ta\\tb\t\\N\torders\t3\t42\t2024-01-02T03:04:05.123000Z\tk1\n"
        );
        assert_eq!(enc.columns().len(), 8);
        assert!(enc.reads_value());
    }

    #[test]
    fn no_columns_is_an_empty_line() {
        let enc = RowEncoder::new(vec![]);
        assert_eq!(line(&enc, &rec(None, None)).unwrap(), "");
    }

    // --- whole-record errors -------------------------------------------------

    #[test]
    fn record_errors() {
        let enc = RowEncoder::new(vec![col("a", "/a", Text)]);
        let e = enc.encode(&rec(None, None), &mut Vec::new()).unwrap_err();
        assert_eq!(e, DecodeError::for_record("null value (tombstone)"));
        assert_eq!(e.to_string(), "record: null value (tombstone)");

        let e = enc.encode(&rec(Some(b"{\"a\": }"), None), &mut Vec::new()).unwrap_err();
        assert_eq!(e.column, None);
        assert_eq!(e.to_string(), "record: invalid JSON at line 1 column 7: expected value");

        let e = enc.encode(&rec(Some(b"\"\xff\""), None), &mut Vec::new()).unwrap_err();
        assert_eq!(e.column, None);
        assert!(e.reason.starts_with("value is not valid UTF-8"), "{e}");

        let e = enc.encode(&rec(Some(b"{} {}"), None), &mut Vec::new()).unwrap_err();
        assert!(e.reason.contains("trailing characters"), "{e}");
    }

    #[test]
    fn value_is_ignored_when_no_column_reads_it() {
        let enc = RowEncoder::new(vec![col("o", "@offset", Int8), col("k", "@key", Text)]);
        assert!(!enc.reads_value());
        assert_eq!(line(&enc, &rec(None, Some(b"k"))).unwrap(), "42\tk");
        assert_eq!(line(&enc, &rec(Some(b"not json \xff"), None)).unwrap(), "42\t\\N");
    }

    #[test]
    fn error_leaves_output_unchanged() {
        let enc = RowEncoder::new(vec![col("a", "/a", Text), col("b", "/b", Int2), col("c", "/c", Text)]);
        let mut out = b"kept\n".to_vec();
        let e = enc
            .encode(&rec(Some(br#"{"a":"written first","b":70000}"#), None), &mut out)
            .unwrap_err();
        assert_eq!(out, b"kept\n");
        assert_eq!(e.column.as_deref(), Some("b"));
        assert_eq!(e.to_string(), "column `b` (smallint): 70000 is out of range");
        // And whole-record errors too.
        enc.encode(&rec(Some(b"["), None), &mut out).unwrap_err();
        enc.encode(&rec(None, None), &mut out).unwrap_err();
        assert_eq!(out, b"kept\n");
    }

    #[test]
    fn display_forms() {
        let e = DecodeError::for_column("amount", "numeric", "expected a number, found \"abc\"");
        assert_eq!(
            e.to_string(),
            "column `amount` (numeric): expected a number, found \"abc\""
        );
        let e = DecodeError {
            column: Some("x".into()),
            reason: "bad".into(),
            sqlstate: None,
        };
        assert_eq!(e.to_string(), "column `x`: bad");
        assert_eq!(
            conv(Numeric, r#""abc""#).unwrap_err().to_string(),
            "column `c` (numeric): expected a number, found \"abc\""
        );
    }

    // --- property tests ----------------------------------------------------------------

    /// Every type at `/x`, at the whole value, and from the key; plus metadata.
    fn everything() -> Vec<ColumnPlan> {
        let mut cols = Vec::new();
        for ty in ALL_TYPES {
            cols.push(col("x", "/x", ty));
            cols.push(col("whole", "/", ty));
            cols.push(col("key", "@key", ty));
            cols.push(col("ts", "@timestamp", ty));
            cols.push(col("p", "@partition", ty));
            cols.push(col("o", "@offset", ty));
            cols.push(col("t", "@topic", ty));
        }
        cols
    }

    /// Checks the line invariants and that a failed encode leaves `out` alone.
    fn assert_line_shape(enc: &RowEncoder, r: &RecordRef<'_>) -> Result<bool, TestCaseError> {
        let prefix = b"prefix\n";
        let mut out = prefix.to_vec();
        let mut fields = vec![(7, 7)];
        match enc.encode_noting_fields(r, &mut out, &mut fields) {
            Ok(()) => {
                let line = &out[prefix.len()..];
                let mut split = Vec::new();
                field_ranges(line, &mut split);
                prop_assert_eq!(&fields, &split);
                prop_assert_eq!(line.last(), Some(&b'\n'));
                let body = &line[..line.len() - 1];
                prop_assert!(!body.contains(&b'\n') && !body.contains(&b'\r'));
                prop_assert!(!body.contains(&0));
                let tabs = body.iter().filter(|&&b| b == b'\t').count();
                prop_assert_eq!(tabs, enc.columns().len() - 1);
                prop_assert!(std::str::from_utf8(body).is_ok());
                Ok(true)
            }
            Err(_) => {
                prop_assert_eq!(&out[..], &prefix[..]);
                Ok(false)
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(
            value in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
            key in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
            ts in prop::option::of(any::<i64>()),
            partition in any::<i32>(),
            offset in any::<i64>(),
        ) {
            let r = RecordRef {
                topic: "t\tn",
                partition,
                offset,
                timestamp_ms: ts,
                key: key.as_deref(),
                value: value.as_deref(),
                source: None,
                headers: &[],
            };
            let all = everything();
            assert_line_shape(&RowEncoder::new(all.clone()), &r)?;
            // One column at a time, so later columns are reached too.
            for c in all {
                assert_line_shape(&RowEncoder::new(vec![c]), &r)?;
            }
        }

        #[test]
        fn arbitrary_json_encodes_to_one_line(
            // Scalars are weighted up so typed columns succeed often enough
            // for the line checks to bite.
            v in prop_oneof![3 => arb_leaf(), 1 => arb_json()],
            key in prop_oneof![3 => arb_leaf(), 1 => arb_json()],
        ) {
            let doc = serde_json::to_vec(&serde_json::json!({ "x": v })).unwrap();
            let key_bytes = serde_json::to_vec(&key).unwrap();
            let r = RecordRef {
                topic: "top\tic\n",
                partition: 1,
                offset: 2,
                timestamp_ms: Some(3),
                key: Some(&key_bytes),
                value: Some(&doc),
                source: None,
                headers: &[],
            };
            assert_line_shape(&RowEncoder::new(everything()), &r)?;
            for ty in ALL_TYPES {
                let enc = RowEncoder::new(vec![
                    col("x", "/x", ty),
                    col("whole", "/", Text),
                    col("topic", "@topic", Text),
                    col("ts", "@timestamp", Timestamptz),
                ]);
                if assert_line_shape(&enc, &r)? {
                    // The whole-document column round-trips through COPY escaping.
                    let mut out = Vec::new();
                    enc.encode(&r, &mut out).unwrap();
                    let whole = out[..out.len() - 1].split(|&b| b == b'\t').nth(1).unwrap();
                    let reparsed: Value = serde_json::from_slice(&unescape(whole)).unwrap();
                    prop_assert_eq!(reparsed, serde_json::json!({ "x": v.clone() }));
                }
                assert_line_shape(&RowEncoder::new(vec![col("key", "@key", ty)]), &r)?;
                let with_key = RowEncoder::new(vec![col("x", "/x", ty), col("key", "@key", ty)]);
                assert_line_shape(&with_key, &r)?;
            }
        }
    }

    fn upsert_encoder(key: &[&str]) -> RowEncoder {
        let key: Vec<String> = key.iter().map(|k| k.to_string()).collect();
        RowEncoder::new(vec![
            col("id", "/id", Int8),
            col("region", "/region", Text),
            col("v", "/v", Int8),
            col("src", "@offset", Int8),
        ])
        .with_upsert(&key, true)
        .unwrap()
    }

    #[test]
    fn upsert_lines_carry_the_delete_flag() {
        let enc = upsert_encoder(&["id"]);
        assert_eq!(enc.key_columns(), Some(vec!["id"]));
        let r = rec(Some(br#"{"id": 7, "region": "eu", "v": 3}"#), Some(b"7"));
        assert_eq!(line(&enc, &r).unwrap(), "7\teu\t3\t42\tf");
        let insert = RowEncoder::new(enc.columns().to_vec());
        assert_eq!(insert.key_columns(), None);
        assert_eq!(line(&insert, &r).unwrap(), "7\teu\t3\t42");
        // The fields noted while encoding are the line's, the flag and a
        // tombstone's delete line included.
        for r in [r, rec(None, Some(b"8"))] {
            let (mut out, mut fields, mut split) = (b"x\n".to_vec(), Vec::new(), Vec::new());
            enc.encode_noting_fields(&r, &mut out, &mut fields).unwrap();
            field_ranges(&out[2..], &mut split);
            assert_eq!(fields, split);
            assert_eq!(fields.len(), 5);
        }
    }

    #[test]
    fn upsert_key_columns_must_not_be_null() {
        let enc = upsert_encoder(&["id", "region"]);
        let r = rec(Some(br#"{"id": 7, "v": 3}"#), None);
        let err = line(&enc, &r).unwrap_err();
        assert_eq!(err.to_string(), "column `region` (text): a key column must not be null");
        assert!(RowEncoder::new(vec![col("id", "/id", Int8)])
            .with_upsert(&["nope".to_owned()], true)
            .is_err_and(|e| e == UpsertError::KeyNotMapped("nope".into())));
    }

    #[test]
    fn tombstones_become_deletes_keyed_by_the_kafka_key() {
        let enc = upsert_encoder(&["id"]);
        // A scalar JSON key, a JSON string key, a key that is not JSON.
        assert_eq!(line(&enc, &rec(None, Some(b"7"))).unwrap(), "7\t\\N\t\\N\t\\N\tt");
        assert_eq!(line(&enc, &rec(None, Some(br#""8""#))).unwrap(), "8\t\\N\t\\N\t\\N\tt");
        let text = RowEncoder::new(vec![col("name", "/name", Text), col("v", "/v", Int8)])
            .with_upsert(&["name".to_owned()], true)
            .unwrap();
        assert_eq!(line(&text, &rec(None, Some(b"bob"))).unwrap(), "bob\t\\N\tt");
        // A JSON object key: pointers resolve in it.
        assert_eq!(
            line(&enc, &rec(None, Some(br#"{"id": 9, "other": 1}"#))).unwrap(),
            "9\t\\N\t\\N\t\\N\tt"
        );
        let two = upsert_encoder(&["id", "region"]);
        assert_eq!(
            line(&two, &rec(None, Some(br#"{"id": 9, "region": "us"}"#))).unwrap(),
            "9\tus\t\\N\t\\N\tt"
        );
        // Metadata key columns come from the tombstone itself.
        let by_offset = upsert_encoder(&["src"]);
        assert_eq!(
            line(&by_offset, &rec(None, Some(b"k"))).unwrap(),
            "\\N\t\\N\t\\N\t42\tt"
        );
    }

    #[test]
    fn tombstones_that_name_no_row_are_errors() {
        let enc = upsert_encoder(&["id"]);
        assert_eq!(
            line(&enc, &rec(None, None)).unwrap_err().to_string(),
            "record: tombstone without a key: no row to delete"
        );
        let err = line(&enc, &rec(None, Some(br#"{"other": 1}"#)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nothing at \"/id\""), "{err}");
        let err = line(&enc, &rec(None, Some(b"abc"))).unwrap_err().to_string();
        assert!(err.starts_with("column `id` (bigint): expected an integer"), "{err}");
        let two = upsert_encoder(&["id", "region"]);
        let err = line(&two, &rec(None, Some(b"7"))).unwrap_err().to_string();
        assert!(err.contains("cannot give the 2 key columns"), "{err}");
        let err = line(&enc, &rec(None, Some(b"null"))).unwrap_err().to_string();
        assert!(err.contains("must not be null"), "{err}");
        let mut out = b"keep".to_vec();
        assert!(enc.encode(&rec(None, Some(b"\xff")), &mut out).is_err());
        assert_eq!(out, b"keep", "an error leaves the output as it was");
    }

    #[test]
    fn tombstones_stay_errors_without_delete_on_tombstone() {
        let enc = RowEncoder::new(vec![col("id", "/id", Int8)])
            .with_upsert(&["id".to_owned()], false)
            .unwrap();
        assert_eq!(
            line(&enc, &rec(None, Some(b"7"))).unwrap_err().to_string(),
            "record: null value (tombstone)"
        );
    }

    #[test]
    fn with_a_schema_a_bare_number_in_a_temporal_column_is_refused() {
        let cols = vec![
            col("ts", "/ts", Timestamptz),
            col("d", "/d", Date),
            col("n", "/n", Int8),
        ];
        let doc = br#"{"ts":1704164645123,"n":5}"#;
        let r = RecordRef {
            value: Some(&doc[..]),
            ..rec(None, None)
        };
        // Schemaless JSON: epoch milliseconds, as documented.
        assert_eq!(
            line(&RowEncoder::new(cols.clone()), &r).unwrap(),
            "2024-01-02T03:04:05.123000Z\t\\N\t5"
        );
        let strict = RowEncoder::new(cols).with_epoch_millis(false);
        let e = line(&strict, &r).unwrap_err().to_string();
        assert!(
            e.contains("column `ts` (timestamptz): a bare number (1704164645123) is ambiguous"),
            "{e}"
        );
        // What a schema spelled out still converts.
        let doc = br#"{"ts":"2024-01-02T03:04:05.123Z","d":"1969-07-20","n":5}"#;
        let r = RecordRef {
            value: Some(&doc[..]),
            ..rec(None, None)
        };
        assert_eq!(line(&strict, &r).unwrap(), "2024-01-02T03:04:05.123000Z\t1969-07-20\t5");
    }

    #[test]
    fn reads_key_says_whether_a_line_may_need_the_key() {
        assert!(!RowEncoder::new(vec![col("v", "/v", Text)]).reads_key());
        assert!(RowEncoder::new(vec![col("k", "@key", Text)]).reads_key());
        assert!(RowEncoder::new(vec![col("k", "@key/id", Int8)]).reads_key());
        let upsert = RowEncoder::new(vec![col("id", "/id", Int8)]);
        assert!(upsert
            .clone()
            .with_upsert(&["id".to_owned()], true)
            .unwrap()
            .reads_key());
        assert!(!upsert.with_upsert(&["id".to_owned()], false).unwrap().reads_key());
    }
}
