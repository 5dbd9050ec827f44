//! Turns one Kafka record into one line of PostgreSQL `COPY ... FROM STDIN`
//! *text* format.
//!
//! This is the per-record hot path, so the encoder writes digits and escaped
//! bytes straight into the caller's buffer and only allocates to parse the
//! record value (once) and to build error messages.
//!
//! Every conversion is checked here rather than left to Postgres: a value the
//! server would reject fails the whole COPY batch, whereas a [`DecodeError`]
//! only sidelines the one record.

use std::fmt;
use std::io;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use chrono::{DateTime, Datelike, NaiveDate, Timelike};
use serde_json::Value;

use crate::mapping::{ColumnSource, PgType};
use crate::sink::check::SimpleCheck;

/// One column of the target table: name, where its value comes from, its
/// live Postgres type, and what the table forbids that sluice checks first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPlan {
    pub name: String,
    pub source: ColumnSource,
    pub ty: PgType,
    pub constraints: Constraints,
}

impl ColumnPlan {
    /// A column with no constraints checked ahead of Postgres.
    pub fn new(name: impl Into<String>, source: ColumnSource, ty: PgType) -> Self {
        Self {
            name: name.into(),
            source,
            ty,
            constraints: Constraints::default(),
        }
    }
}

/// Constraints of a live column that the encoder checks before Postgres
/// does. A row breaking one would fail its whole COPY batch, to be isolated
/// by re-copying parts of it (see `sink::bisect`); checked here, the record
/// is set aside alone. It is reported with the SQLSTATE Postgres would raise,
/// as a `data` dead letter. Empty when the table has BEFORE row triggers,
/// which may change a row before the constraints apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Constraints {
    /// `NOT NULL`: SQLSTATE 23502.
    pub not_null: bool,
    /// A length or precision limit of the type: SQLSTATE 22001 or 22003.
    pub limit: Option<Limit>,
    /// CHECKs comparing this column with a constant: SQLSTATE 23514.
    pub checks: Vec<SimpleCheck>,
}

impl Constraints {
    /// Whether there is nothing to check.
    pub fn is_empty(&self) -> bool {
        !self.not_null && self.limit.is_none() && self.checks.is_empty()
    }
}

/// A type modifier sluice checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `numeric(precision, scale)`, with `0 <= scale <= precision`.
    Numeric { precision: u16, scale: u16 },
    /// `varchar(n)` or `char(n)`: at most `n` characters, not counting
    /// trailing spaces beyond `n` (Postgres drops those).
    Chars(u32),
}

impl Limit {
    /// The limit of a column from `pg_attribute.atttypmod`; `None` when the
    /// type has none sluice checks (or an unusual one, left to Postgres).
    pub fn from_typmod(type_name: &str, typmod: i32) -> Option<Limit> {
        // VARHDRSZ
        let t = typmod.checked_sub(4).filter(|t| *t >= 0)?;
        match type_name {
            "varchar" | "bpchar" => Some(Limit::Chars(t as u32)),
            "numeric" => {
                let precision = ((t >> 16) & 0xffff) as u16;
                // Postgres 15+ stores the scale as 11-bit two's complement;
                // negative scales and scales above the precision are left to it.
                let raw = t & 0x7ff;
                let scale = if raw & 0x400 != 0 { raw - 0x800 } else { raw };
                (precision >= 1 && (0..=i32::from(precision)).contains(&scale)).then_some(Limit::Numeric {
                    precision,
                    scale: scale as u16,
                })
            }
            _ => None,
        }
    }
}

/// A borrowed view of a Kafka record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The record's headers in order; empty unless a column reads them
    /// ([`RowEncoder::reads_headers`]).
    pub headers: &'a [HeaderRef<'a>],
}

/// A Kafka header: its name and value (`None` for a null header).
pub type HeaderRef<'a> = (&'a str, Option<&'a [u8]>);

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
    /// constraint of the live table checked ahead of it ([`Constraints`]).
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
    pub fn for_column(name: &str, ty: PgType, reason: impl fmt::Display) -> Self {
        Self {
            column: Some(name.to_owned()),
            reason: format!("({}): {reason}", ty.sql_name()),
            sqlstate: None,
        }
    }

    /// A constraint of the live table the column's value breaks.
    fn constraint(name: &str, ty: PgType, sqlstate: &'static str, reason: impl fmt::Display) -> Self {
        Self {
            sqlstate: Some(sqlstate),
            ..Self::for_column(name, ty, reason)
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
    reads_headers: bool,
    upsert: Option<Upsert>,
    /// The table's unique keys whose columns are all mapped (insert mode
    /// uses them to find duplicates within a batch before Postgres does).
    unique_keys: Vec<UniqueKey>,
}

/// A unique index (or primary key) of the live table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueKey {
    /// The index's name, as Postgres names it in 23505 errors.
    pub name: String,
    /// Indexes into the encoder's columns, in the index's column order.
    pub columns: Vec<usize>,
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

#[derive(Debug, Clone)]
enum Path {
    /// The column reads metadata, not the value.
    Meta,
    Whole,
    Tokens(Box<[Token]>),
    /// A pointer without a leading `/`; like `Value::pointer`, it never matches.
    Nothing,
}

#[derive(Debug, Clone)]
struct Token {
    key: Box<str>,
    /// The token as an array index, by the same rule as `Value::pointer`
    /// (no sign, no leading zeros).
    index: Option<usize>,
}

impl Path {
    fn compile(source: &ColumnSource) -> Self {
        let (ColumnSource::Pointer(p) | ColumnSource::KeyPointer(p)) = source else {
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

    fn resolve<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        match self {
            Self::Whole => Some(doc),
            Self::Tokens(tokens) => tokens.iter().try_fold(doc, |cur, t| match cur {
                Value::Object(m) => m.get(&*t.key),
                Value::Array(a) => t.index.and_then(|i| a.get(i)),
                _ => None,
            }),
            Self::Meta | Self::Nothing => None,
        }
    }
}

const NULL: &[u8] = b"\\N";

/// Per-column conversion result; the message is only built on failure.
type Conv = Result<(), String>;

impl RowEncoder {
    pub fn new(columns: Vec<ColumnPlan>) -> Self {
        let paths: Vec<Path> = columns.iter().map(|c| Path::compile(&c.source)).collect();
        let reads_value = columns.iter().any(|c| matches!(c.source, ColumnSource::Pointer(_)));
        let reads_headers = columns
            .iter()
            .any(|c| matches!(c.source, ColumnSource::Header(_) | ColumnSource::Headers));
        Self {
            columns,
            paths,
            reads_value,
            reads_headers,
            upsert: None,
            unique_keys: Vec::new(),
        }
    }

    /// Switches to upsert mode: every line gets one more column, the
    /// `_sluice_delete` flag (`f` for a row, `t` for a tombstone's delete),
    /// a key column may not be NULL, and with `delete_on_tombstone` a
    /// tombstone becomes a delete line whose key columns come from the Kafka
    /// key (see [`RowEncoder::encode`]). The error names a key column that is
    /// not among the columns.
    pub fn with_upsert(mut self, key: &[String], delete_on_tombstone: bool) -> Result<Self, String> {
        let key = key
            .iter()
            .map(|k| {
                self.columns
                    .iter()
                    .position(|c| &c.name == k)
                    .ok_or_else(|| format!("key column `{k}` is not a mapped column"))
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
    pub fn with_version(mut self, column: &str) -> Result<Self, String> {
        let index = self
            .columns
            .iter()
            .position(|c| c.name == column)
            .ok_or_else(|| format!("version column `{column}` is not a mapped column"))?;
        let upsert = self.upsert.as_mut().ok_or("a version column needs upsert mode")?;
        if upsert.key.contains(&index) {
            return Err(format!("version column `{column}` is a key column"));
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
        let start = out.len();
        let result = match &self.upsert {
            Some(u) if u.delete_on_tombstone && rec.value.is_none() => self.encode_delete(u, rec, out),
            _ => self.encode_line(rec, out),
        };
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn encode_line(&self, rec: &RecordRef<'_>, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        // `Value::Null` costs nothing when no column needs the document.
        let doc = if self.reads_value {
            parse_value(rec.value)?
        } else {
            Value::Null
        };
        for (i, (col, path)) in self.columns.iter().zip(&self.paths).enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            let at = out.len();
            let written = match &col.source {
                ColumnSource::Pointer(_) => match path.resolve(&doc) {
                    None | Some(Value::Null) => {
                        out.extend_from_slice(NULL);
                        Ok(())
                    }
                    Some(v) => write_json_value(out, v, col.ty),
                },
                ColumnSource::KeyPointer(_) => write_key_pointer(out, path, rec.key, col.ty),
                other => write_meta(out, other, rec, col.ty),
            };
            written.map_err(|reason| DecodeError::for_column(&col.name, col.ty, reason))?;
            if !col.constraints.is_empty() {
                check_constraints(col, &out[at..])?;
            }
            if let Some(u) = &self.upsert {
                // NULL never equals NULL: such a row could never be updated
                // or deleted by key, and DISTINCT ON would merge unrelated ones.
                if &out[at..] == NULL && u.key.contains(&i) {
                    return Err(DecodeError::for_column(
                        &col.name,
                        col.ty,
                        "a key column must not be null",
                    ));
                }
                if &out[at..] == NULL && u.version == Some(i) {
                    return Err(DecodeError::for_column(
                        &col.name,
                        col.ty,
                        "the version column must not be null",
                    ));
                }
            }
        }
        if self.upsert.is_some() {
            out.extend_from_slice(b"\tf");
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
                    (TombstoneKey::Structured(_), Some(v)) => write_json_value(out, v, col.ty),
                    (TombstoneKey::Structured(_), None) => Err(format!(
                        "the tombstone's JSON key has nothing at {:?}",
                        show_pointer(pointer)
                    )),
                    (TombstoneKey::Scalar(v), _) if upsert.key.len() == 1 => write_json_value(out, v, col.ty),
                    (TombstoneKey::Scalar(_), _) => Err(format!(
                        "the tombstone's key is not a JSON object, so it cannot give the {} key columns",
                        upsert.key.len()
                    )),
                    (TombstoneKey::NotUtf8(e), _) => Err(format!("the tombstone's key is not valid UTF-8: {e}")),
                },
                ColumnSource::KeyPointer(_) => write_key_pointer(out, path, rec.key, col.ty),
                other => write_meta(out, other, rec, col.ty),
            };
            written.map_err(|reason| DecodeError::for_column(&col.name, col.ty, reason))?;
            if &out[at..] == NULL {
                return Err(DecodeError::for_column(
                    &col.name,
                    col.ty,
                    "a key column must not be null (from the tombstone's key)",
                ));
            }
        }
        out.extend_from_slice(b"\tt\n");
        Ok(())
    }
}

/// Checks an encoded column value (COPY text) against the live column's
/// constraints, the way Postgres would on insert.
fn check_constraints(col: &ColumnPlan, encoded: &[u8]) -> Result<(), DecodeError> {
    if encoded == NULL {
        return match col.constraints.not_null {
            true => Err(DecodeError::constraint(
                &col.name,
                col.ty,
                "23502",
                format!("null value in column \"{}\" violates its not-null constraint", col.name),
            )),
            false => Ok(()),
        };
    }
    if let Some(check) = col.constraints.checks.iter().find(|c| c.violated(encoded)) {
        return Err(DecodeError::constraint(
            &col.name,
            col.ty,
            "23514",
            format!(
                "{} violates check constraint \"{}\" ({})",
                show_bytes(&unescape_head(encoded)),
                check.name,
                check.shown
            ),
        ));
    }
    match col.constraints.limit {
        None => Ok(()),
        Some(Limit::Chars(n)) => match chars_over(encoded, n as usize) {
            false => Ok(()),
            true => Err(DecodeError::constraint(
                &col.name,
                col.ty,
                "22001",
                format!(
                    "{} is longer than the column's {n} characters: value too long",
                    show_bytes(&unescape_head(encoded))
                ),
            )),
        },
        Some(Limit::Numeric { precision, scale }) => {
            // `push_numeric` wrote the literal as given (or NaN, which fits).
            let text = std::str::from_utf8(encoded).unwrap_or("");
            match Decimal::parse(text) {
                Some(d) if !d.fits_precision(precision, scale) => Err(DecodeError::constraint(
                    &col.name,
                    col.ty,
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

/// The bytes of one COPY text field with its escapes (`\t`, `\n`, `\r`,
/// `\\`) undone, as [`push_escaped`] wrote them; no allocation.
pub(crate) fn copy_unescaped(encoded: &[u8]) -> impl Iterator<Item = u8> + '_ {
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

/// A metadata column (anything but a JSON pointer).
fn write_meta(out: &mut Vec<u8>, source: &ColumnSource, rec: &RecordRef<'_>, ty: PgType) -> Conv {
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
        ColumnSource::Pointer(_) | ColumnSource::KeyPointer(_) => {
            unreachable!("pointers are resolved by the caller")
        }
    }
}

/// A JSON pointer into the Kafka key parsed as JSON; NULL when there is no
/// key or nothing at the pointer.
fn write_key_pointer(out: &mut Vec<u8>, path: &Path, key: Option<&[u8]>, ty: PgType) -> Conv {
    let Some(key) = key else {
        out.extend_from_slice(NULL);
        return Ok(());
    };
    let text = std::str::from_utf8(key).map_err(|e| format!("@key is not valid UTF-8: {e}"))?;
    let doc: Value = serde_json::from_str(text).map_err(|e| json_error("@key is not valid JSON", &e))?;
    match path.resolve(&doc) {
        None | Some(Value::Null) => {
            out.extend_from_slice(NULL);
            Ok(())
        }
        Some(v) => write_json_value(out, v, ty),
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

fn parse_value(value: Option<&[u8]>) -> Result<Value, DecodeError> {
    let bytes = value.ok_or_else(|| DecodeError::for_record("null value (tombstone)"))?;
    // Checked up front so the message names the real problem; serde_json
    // would report stray bytes as a JSON syntax error.
    let text =
        std::str::from_utf8(bytes).map_err(|e| DecodeError::for_record(format!("value is not valid UTF-8: {e}")))?;
    serde_json::from_str(text).map_err(|e| DecodeError::for_record(json_error("invalid JSON", &e)))
}

/// "invalid JSON at line 1 column 5: expected value" — serde_json puts the
/// position at the end; we want it next to the subject.
fn json_error(what: &str, e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match full.strip_suffix(&suffix) {
        Some(msg) => format!("{what} at line {} column {}: {msg}", e.line(), e.column()),
        None => format!("{what}: {full}"),
    }
}

// ---------------------------------------------------------------------------
// JSON value -> column

fn write_json_value(out: &mut Vec<u8>, v: &Value, ty: PgType) -> Conv {
    use PgType::*;
    match (ty, v) {
        (_, Value::Null) => {
            out.extend_from_slice(NULL);
            Ok(())
        }
        (Text, Value::String(s)) => push_text(out, s).map_err(|NulByte| nul_in(v)),
        (Text, Value::Number(n)) => {
            // arbitrary_precision keeps the producer's exact digits.
            out.extend_from_slice(n.as_str().as_bytes());
            Ok(())
        }
        (Text, Value::Bool(b)) => {
            out.extend_from_slice(if *b { b"true" } else { b"false" });
            Ok(())
        }
        // The JSON text of an object holds NUL only as the six characters
        // `\u0000`, which text columns store fine.
        (Text, _) => push_json(out, v),
        (Int2 | Int4 | Int8, _) => {
            let text = match v {
                Value::Number(n) => n.as_str(),
                Value::String(s) => s.as_str(),
                _ => return Err(expected("an integer", v)),
            };
            let i = parse_int_in(text, ty).map_err(|e| match e {
                NumError::Invalid => expected("an integer", v),
                NumError::OutOfRange => out_of_range(v),
            })?;
            push_i64(out, i);
            Ok(())
        }
        (Float4 | Float8, Value::Number(n)) => {
            push_float(out, n.as_str(), ty == Float4).map_err(|e| num_error(e, "a number", v))
        }
        (Float4 | Float8, Value::String(s)) => {
            push_float(out, s, ty == Float4).map_err(|e| num_error(e, "a number", v))
        }
        (Float4 | Float8, _) => Err(expected("a number", v)),
        (Numeric, Value::Number(n)) => push_numeric(out, n.as_str()).map_err(|e| num_error(e, "a number", v)),
        (Numeric, Value::String(s)) => push_numeric(out, s).map_err(|e| num_error(e, "a number", v)),
        (Numeric, _) => Err(expected("a number", v)),
        (Bool, Value::Bool(b)) => {
            push_bool(out, *b);
            Ok(())
        }
        (Bool, Value::String(s)) if s.eq_ignore_ascii_case("true") => {
            push_bool(out, true);
            Ok(())
        }
        (Bool, Value::String(s)) if s.eq_ignore_ascii_case("false") => {
            push_bool(out, false);
            Ok(())
        }
        (Bool, _) => Err(expected("true or false", v)),
        (Timestamptz | Timestamp, _) => write_json_timestamp(out, v, ty == Timestamptz),
        (Date, _) => write_json_date(out, v),
        (Uuid, Value::String(s)) => match uuid::Uuid::try_parse(s) {
            Ok(u) => {
                push_uuid(out, u);
                Ok(())
            }
            Err(_) => Err(expected("a UUID", v)),
        },
        (Uuid, _) => Err(expected("a UUID string", v)),
        (Json | Jsonb, _) => {
            if has_nul(v) {
                return Err(format!(
                    "{} contains a NUL character (\\u0000), which Postgres cannot store",
                    show(v)
                ));
            }
            push_json(out, v)
        }
        (Bytea, Value::String(s)) => {
            push_base64_bytea(out, s).map_err(|e| format!("{} is not valid base64: {e}", show(v)))
        }
        (Bytea, _) => Err(expected("a base64 string", v)),
    }
}

fn write_json_timestamp(out: &mut Vec<u8>, v: &Value, with_zone: bool) -> Conv {
    let what = if with_zone {
        "an RFC 3339 timestamp or epoch milliseconds"
    } else {
        "an RFC 3339 or ISO 8601 timestamp, or epoch milliseconds"
    };
    let micros = match v {
        Value::String(s) => {
            let parsed = match DateTime::parse_from_rfc3339(s) {
                Ok(dt) => rfc3339_micros(&dt),
                // A naive time is only unambiguous for a column without a zone.
                Err(_) if !with_zone => parse_naive_micros(s),
                Err(_) => None,
            };
            parsed.ok_or_else(|| expected(what, v))?
        }
        Value::Number(n) => {
            let ms = parse_int(n.as_str()).map_err(|e| num_error(e, what, v))?;
            ms.checked_mul(1000).ok_or_else(|| out_of_range(v))?
        }
        _ => return Err(expected(what, v)),
    };
    push_timestamp(out, micros, with_zone).map_err(|OutOfRange| out_of_range(v))
}

fn write_json_date(out: &mut Vec<u8>, v: &Value) -> Conv {
    const WHAT: &str = "a date (YYYY-MM-DD), an RFC 3339 timestamp or epoch milliseconds";
    let date = match v {
        Value::String(s) => parse_date(s.as_bytes())
            .or_else(|| DateTime::parse_from_rfc3339(s).ok().map(|dt| dt.naive_utc().date()))
            .ok_or_else(|| expected(WHAT, v))?,
        Value::Number(n) => {
            let ms = parse_int(n.as_str()).map_err(|e| num_error(e, WHAT, v))?;
            DateTime::from_timestamp_millis(ms)
                .ok_or_else(|| out_of_range(v))?
                .date_naive()
        }
        _ => return Err(expected(WHAT, v)),
    };
    push_date(out, date).map_err(|OutOfRange| out_of_range(v))
}

// ---------------------------------------------------------------------------
// Metadata -> column

fn unsupported(source: &str, ty: PgType) -> String {
    format!("{source} cannot be written to a column of type {}", ty.sql_name())
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

// ---------------------------------------------------------------------------
// Error messages

const SHOW_CHARS: usize = 64;

fn expected(what: &str, v: &Value) -> String {
    format!("expected {what}, found {}", show(v))
}

fn out_of_range(v: &Value) -> String {
    format!("{} is out of range", show(v))
}

fn nul_in(v: &Value) -> String {
    format!(
        "{} contains a NUL character (U+0000), which Postgres cannot store",
        show(v)
    )
}

fn num_error(e: NumError, what: &str, v: &Value) -> String {
    match e {
        NumError::Invalid => expected(what, v),
        NumError::OutOfRange => out_of_range(v),
    }
}

/// The value as compact JSON, cut to about [`SHOW_CHARS`] characters.
fn show(v: &Value) -> String {
    // Serialization stops once enough is written, so a huge document in the
    // wrong column does not cost a full copy just to build the message.
    // The cap in bytes always holds more than SHOW_CHARS characters, so a
    // character split at the cap is cut off again by `truncate_chars`.
    const CAP: usize = SHOW_CHARS * 4 + 4;
    struct Capped(Vec<u8>);
    impl io::Write for Capped {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let room = CAP - self.0.len();
            if room == 0 {
                return Err(io::Error::other("enough"));
            }
            self.0.extend_from_slice(&buf[..buf.len().min(room)]);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut capped = Capped(Vec::new());
    let _ = serde_json::to_writer(&mut capped, v);
    truncate_chars(String::from_utf8_lossy(&capped.0).into_owned())
}

fn show_str(s: &str) -> String {
    let head: String = s.chars().take(SHOW_CHARS + 1).collect();
    let quoted = format!("{head:?}");
    if head.len() < s.len() {
        truncate_chars(quoted)
    } else {
        quoted
    }
}

fn show_bytes(b: &[u8]) -> String {
    let head = &b[..b.len().min(SHOW_CHARS * 4)];
    show_str(&String::from_utf8_lossy(head))
}

fn truncate_chars(mut s: String) -> String {
    if let Some((cut, _)) = s.char_indices().nth(SHOW_CHARS) {
        s.truncate(cut);
        s.push('…');
    }
    s
}

// ---------------------------------------------------------------------------
// COPY text output

/// A string held U+0000, which no Postgres text-like type can store.
struct NulByte;

/// Appends `bytes` with COPY text escaping; fails on NUL.
fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), NulByte> {
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

fn push_text(out: &mut Vec<u8>, s: &str) -> Result<(), NulByte> {
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

fn push_json(out: &mut Vec<u8>, v: &Value) -> Conv {
    serde_json::to_writer(CopyEscaper(out), v).map_err(|e| format!("cannot serialize: {e}"))
}

/// Whether any string or object key holds U+0000; jsonb rejects `\u0000`
/// and we hold json to the same rule so a column can switch types safely.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.as_bytes().contains(&0),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.as_bytes().contains(&0) || has_nul(v)),
        _ => false,
    }
}

fn push_bool(out: &mut Vec<u8>, b: bool) {
    out.push(if b { b't' } else { b'f' });
}

fn push_i64(out: &mut Vec<u8>, v: i64) {
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

/// Zero-padded to `width` digits; `v` must fit.
fn push_padded(out: &mut Vec<u8>, mut v: u32, width: usize) {
    let mut buf = [b'0'; 10];
    for slot in buf[..width].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&buf[..width]);
}

fn push_uuid(out: &mut Vec<u8>, u: uuid::Uuid) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.extend_from_slice(u.hyphenated().encode_lower(&mut buf).as_bytes());
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// bytea hex format is `\x…`; its backslash must itself be escaped in COPY
/// text, hence two backslashes on the wire.
const BYTEA_PREFIX: &[u8] = b"\\\\x";

fn push_hex_bytea(out: &mut Vec<u8>, bytes: &[u8]) {
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

fn push_base64_bytea(out: &mut Vec<u8>, s: &str) -> Result<(), base64::DecodeSliceError> {
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

// ---------------------------------------------------------------------------
// Numbers

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumError {
    Invalid,
    OutOfRange,
}

/// Exponents are clamped here while parsing; anything this large is out of
/// range for every type, and the clamp keeps the arithmetic overflow-free.
const EXP_CAP: i64 = 1 << 40;

/// A decimal literal: optional sign, digits, optional fraction, optional
/// exponent (a superset of JSON's number grammar, matching what Postgres'
/// numeric and integer inputs accept).
pub(crate) struct Decimal<'a> {
    negative: bool,
    int: &'a [u8],
    frac: &'a [u8],
    exp: i64,
}

impl<'a> Decimal<'a> {
    pub(crate) fn parse(s: &'a str) -> Option<Self> {
        let b = s.as_bytes();
        let mut i = 0;
        let negative = match b.first() {
            Some(b'-') => {
                i = 1;
                true
            }
            Some(b'+') => {
                i = 1;
                false
            }
            _ => false,
        };
        let digits_from = |mut i: usize| {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let int_end = digits_from(i);
        let int = &b[i..int_end];
        i = int_end;
        let mut frac: &[u8] = &[];
        if b.get(i) == Some(&b'.') {
            let frac_end = digits_from(i + 1);
            frac = &b[i + 1..frac_end];
            i = frac_end;
        }
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut exp = 0i64;
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            let exp_negative = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let exp_end = digits_from(i);
            if exp_end == i {
                return None;
            }
            for &d in &b[i..exp_end] {
                exp = (exp * 10 + i64::from(d - b'0')).min(EXP_CAP);
            }
            if exp_negative {
                exp = -exp;
            }
            i = exp_end;
        }
        (i == b.len()).then_some(Self {
            negative,
            int,
            frac,
            exp,
        })
    }

    fn digit(&self, k: usize) -> u8 {
        match self.int.get(k) {
            Some(&d) => d,
            None => self.frac[k - self.int.len()],
        }
    }

    fn len(&self) -> usize {
        self.int.len() + self.frac.len()
    }

    /// Indexes (into int ++ frac) of the first and last non-zero digit;
    /// `None` when the value is zero.
    fn significant(&self) -> Option<(usize, usize)> {
        let first = (0..self.len()).find(|&k| self.digit(k) != b'0')?;
        let last = (first..self.len())
            .rev()
            .find(|&k| self.digit(k) != b'0')
            .unwrap_or(first);
        Some((first, last))
    }

    /// The exact integer value; `Invalid` if it has a non-zero fraction.
    fn to_i64(&self) -> Result<i64, NumError> {
        let Some((first, last)) = self.significant() else {
            return Ok(0);
        };
        // value = digits[first..=last] * 10^scale
        let scale = self.exp - self.frac.len() as i64 + (self.len() - 1 - last) as i64;
        if scale < 0 {
            return Err(NumError::Invalid);
        }
        if (last - first + 1) as i64 + scale > 19 {
            return Err(NumError::OutOfRange);
        }
        let mut v: i128 = 0;
        for k in first..=last {
            v = v * 10 + i128::from(self.digit(k) - b'0');
        }
        for _ in 0..scale {
            v *= 10;
        }
        if self.negative {
            v = -v;
        }
        i64::try_from(v).map_err(|_| NumError::OutOfRange)
    }

    /// Compares two values exactly (any number of digits, any exponent),
    /// without allocating: it runs once per record for a CHECK.
    pub(crate) fn cmp_value(&self, other: &Decimal<'_>) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        // Magnitudes: the exponent of the leading digit, then the
        // significant digits (no trailing zeros) in order.
        let magnitude = |a: &Decimal<'_>, (fa, la): (usize, usize), b: &Decimal<'_>, (fb, lb): (usize, usize)| {
            let lead = |d: &Decimal<'_>, first: usize| d.int.len() as i64 + d.exp - first as i64;
            lead(a, fa).cmp(&lead(b, fb)).then_with(|| {
                let da = (fa..=la).map(|k| a.digit(k));
                da.cmp((fb..=lb).map(|k| b.digit(k)))
            })
        };
        match (self.significant(), other.significant()) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) if other.negative => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) if self.negative => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(a), Some(b)) => match (self.negative, other.negative) {
                (false, true) => Ordering::Greater,
                (true, false) => Ordering::Less,
                (false, false) => magnitude(self, a, other, b),
                (true, true) => magnitude(other, b, self, a),
            },
        }
    }

    /// Whether the value, rounded to `scale` decimals (half away from zero,
    /// as Postgres does), has at most `precision - scale` digits before the
    /// point, so that `numeric(precision, scale)` takes it.
    fn fits_precision(&self, precision: u16, scale: u16) -> bool {
        let Some((first, _)) = self.significant() else {
            return true;
        };
        let len = self.len() as i64;
        // Digit k has weight 10^(point - 1 - k).
        let point = self.int.len() as i64 + self.exp;
        // The first digit rounded away.
        let round_at = point + i64::from(scale);
        let first = first as i64;
        if first >= round_at {
            // Every significant digit is rounded away: the result is 0 or
            // 10^-scale, which always fits.
            return true;
        }
        let mut int_digits = (point - first).max(0);
        let rounds_up = round_at < len && self.digit(round_at as usize) >= b'5';
        if rounds_up && (first..round_at).all(|k| self.digit(k as usize) == b'9') {
            // 99.995 -> 100.00: the carry adds a digit.
            int_digits = (point - first + 1).max(0);
        }
        int_digits <= i64::from(precision - scale)
    }

    /// Whether Postgres' numeric can hold the literal as written.
    fn fits_numeric(&self) -> bool {
        // Postgres up to 14 rejects exponents beyond ±1000 outright; newer
        // versions are laxer, but staying under the old bound works everywhere.
        if self.exp.abs() > 1000 {
            return false;
        }
        // Display scale (digits after the point, trailing zeros included) is
        // capped at 16383.
        if self.frac.len() as i64 - self.exp > 16383 {
            return false;
        }
        // At most 131072 digits before the point.
        match self.significant() {
            Some((first, _)) => self.int.len() as i64 - first as i64 + self.exp <= 131_072,
            None => true,
        }
    }
}

fn parse_int(s: &str) -> Result<i64, NumError> {
    // Plain integers are by far the common case.
    if let Ok(i) = s.parse::<i64>() {
        return Ok(i);
    }
    Decimal::parse(s).ok_or(NumError::Invalid)?.to_i64()
}

fn parse_int_in(s: &str, ty: PgType) -> Result<i64, NumError> {
    let i = parse_int(s)?;
    let fits = match ty {
        PgType::Int2 => i16::try_from(i).is_ok(),
        PgType::Int4 => i32::try_from(i).is_ok(),
        _ => true,
    };
    if fits {
        Ok(i)
    } else {
        Err(NumError::OutOfRange)
    }
}

fn push_numeric(out: &mut Vec<u8>, s: &str) -> Result<(), NumError> {
    if s.eq_ignore_ascii_case("nan") {
        out.extend_from_slice(b"NaN");
        return Ok(());
    }
    let d = Decimal::parse(s).ok_or(NumError::Invalid)?;
    if !d.fits_numeric() {
        return Err(NumError::OutOfRange);
    }
    // The literal is valid numeric input as written, so keep every digit.
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Parses `s` as a float of the column's width and writes Rust's shortest
/// round-trip form, which Postgres reads back to the same value.
fn push_float(out: &mut Vec<u8>, s: &str, single: bool) -> Result<(), NumError> {
    use std::io::Write as _;
    let (finite, zero, nan, negative) = if single {
        let f: f32 = s.parse().map_err(|_| NumError::Invalid)?;
        if f.is_finite() && f != 0.0 {
            let _ = write!(out, "{f:?}");
            return Ok(());
        }
        (f.is_finite(), f == 0.0, f.is_nan(), f.is_sign_negative())
    } else {
        let f: f64 = s.parse().map_err(|_| NumError::Invalid)?;
        if f.is_finite() && f != 0.0 {
            let _ = write!(out, "{f:?}");
            return Ok(());
        }
        (f.is_finite(), f == 0.0, f.is_nan(), f.is_sign_negative())
    };
    if finite && zero {
        // A non-zero literal that rounds to zero underflowed; Postgres
        // rejects it too, and writing 0 would silently change the data.
        let mantissa = s.split(['e', 'E']).next().unwrap_or("");
        if mantissa.bytes().any(|b| matches!(b, b'1'..=b'9')) {
            return Err(NumError::OutOfRange);
        }
        out.extend_from_slice(if negative { b"-0" } else { b"0" });
        return Ok(());
    }
    // Non-finite: a spelled-out NaN/Infinity (only possible from a string),
    // or a literal too large for the type.
    let spelled = s
        .trim_start_matches(['+', '-'])
        .starts_with(|c: char| c.is_ascii_alphabetic());
    if !spelled {
        return Err(NumError::OutOfRange);
    }
    out.extend_from_slice(match (nan, negative) {
        (true, _) => b"NaN".as_slice(),
        (false, true) => b"-Infinity",
        (false, false) => b"Infinity",
    });
    Ok(())
}

// ---------------------------------------------------------------------------
// Dates and times

/// Outside the years Postgres' ISO input accepts without an era suffix.
struct OutOfRange;

const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;
const MICROS_PER_SEC: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SEC;

/// Microseconds since the epoch, rounding nanoseconds half up (Postgres keeps
/// microseconds and rounds too). A leap second (`:60`) rolls into the next
/// minute, as in Postgres.
fn rfc3339_micros<Tz: chrono::TimeZone>(dt: &DateTime<Tz>) -> Option<i64> {
    let nanos = i64::from(dt.timestamp_subsec_nanos());
    dt.timestamp()
        .checked_mul(MICROS_PER_SEC)?
        .checked_add((nanos + 500) / 1000)
}

fn two_digits(b: &[u8], at: usize) -> Option<u32> {
    match b.get(at..at + 2)? {
        [h @ b'0'..=b'9', l @ b'0'..=b'9'] => Some(u32::from(h - b'0') * 10 + u32::from(l - b'0')),
        _ => None,
    }
}

/// Strictly `YYYY-MM-DD`.
fn parse_date(b: &[u8]) -> Option<NaiveDate> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = two_digits(b, 0)? * 100 + two_digits(b, 2)?;
    NaiveDate::from_ymd_opt(year as i32, two_digits(b, 5)?, two_digits(b, 8)?)
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.frac]` without an offset, as microseconds since
/// the epoch (the wall-clock time read as UTC).
fn parse_naive_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let date = parse_date(&b[..10])?;
    let (h, m, sec) = (two_digits(b, 11)?, two_digits(b, 14)?, two_digits(b, 17)?);
    // 60 is a leap second, accepted like the RFC 3339 path does.
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let frac = match &b[19..] {
        [] => 0,
        [b'.', digits @ ..] if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
            let mut v = 0i64;
            for k in 0..6 {
                v = v * 10 + digits.get(k).map_or(0, |d| i64::from(d - b'0'));
            }
            // Half up on the seventh digit, matching `rfc3339_micros`.
            v + i64::from(digits.get(6).is_some_and(|&d| d >= b'5'))
        }
        _ => return None,
    };
    let days = i64::from(date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE);
    let secs = i64::from((h * 60 + m) * 60 + sec);
    Some(days * MICROS_PER_DAY + secs * MICROS_PER_SEC + frac)
}

fn push_date(out: &mut Vec<u8>, d: NaiveDate) -> Result<(), OutOfRange> {
    // Year 0 and earlier need Postgres' "BC" syntax, and later than 9999 is
    // almost always a unit mistake (epoch micros sent as millis); refuse both.
    let year = u32::try_from(d.year()).map_err(|_| OutOfRange)?;
    if !(1..=9999).contains(&year) {
        return Err(OutOfRange);
    }
    push_padded(out, year, 4);
    out.push(b'-');
    push_padded(out, d.month(), 2);
    out.push(b'-');
    push_padded(out, d.day(), 2);
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` with a zone, `YYYY-MM-DD HH:MM:SS[.ffffff]`
/// without.
fn push_timestamp(out: &mut Vec<u8>, micros: i64, with_zone: bool) -> Result<(), OutOfRange> {
    let dt = DateTime::from_timestamp_micros(micros).ok_or(OutOfRange)?;
    let t = dt.naive_utc();
    push_date(out, t.date())?;
    out.push(if with_zone { b'T' } else { b' ' });
    push_padded(out, t.hour(), 2);
    out.push(b':');
    push_padded(out, t.minute(), 2);
    out.push(b':');
    push_padded(out, t.second(), 2);
    let frac = micros.rem_euclid(MICROS_PER_SEC) as u32;
    if frac != 0 {
        out.push(b'.');
        push_padded(out, frac, 6);
    }
    if with_zone {
        out.push(b'Z');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use PgType::*;

    const ALL_TYPES: [PgType; 15] = [
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
    ];

    fn col(name: &str, spec: &str, ty: PgType) -> ColumnPlan {
        ColumnPlan::new(name, ColumnSource::parse(spec).unwrap(), ty)
    }

    fn rec<'a>(value: Option<&'a [u8]>, key: Option<&'a [u8]>) -> RecordRef<'a> {
        RecordRef {
            topic: "orders",
            partition: 3,
            offset: 42,
            timestamp_ms: Some(1_704_164_645_123),
            key,
            value,
            headers: &[],
        }
    }

    fn line(enc: &RowEncoder, r: &RecordRef<'_>) -> Result<String, DecodeError> {
        let mut out = Vec::new();
        enc.encode(r, &mut out)?;
        let s = String::from_utf8(out).unwrap();
        Ok(s.strip_suffix('\n').expect("line ends in \\n").to_owned())
    }

    /// Encodes `{"x": <json>}` into a single `ty` column reading `/x`.
    fn conv(ty: PgType, json: &str) -> Result<String, DecodeError> {
        let enc = RowEncoder::new(vec![col("c", "/x", ty)]);
        let doc = format!("{{\"x\":{json}}}");
        line(&enc, &rec(Some(doc.as_bytes()), None))
    }

    fn ok(ty: PgType, json: &str) -> String {
        conv(ty, json).unwrap_or_else(|e| panic!("{ty:?} {json}: {e}"))
    }

    #[track_caller]
    fn err(ty: PgType, json: &str) -> String {
        match conv(ty, json) {
            Ok(s) => panic!("{ty:?} {json}: expected an error, got {s:?}"),
            Err(e) => {
                assert_eq!(e.column.as_deref(), Some("c"));
                e.to_string()
            }
        }
    }

    fn key_conv(ty: PgType, key: Option<&[u8]>) -> Result<String, DecodeError> {
        let enc = RowEncoder::new(vec![col("k", "@key", ty)]);
        line(&enc, &rec(None, key))
    }

    fn meta(spec: &str, ty: PgType, r: &RecordRef<'_>) -> Result<String, DecodeError> {
        line(&RowEncoder::new(vec![col("m", spec, ty)]), r)
    }

    // --- text & escaping ---------------------------------------------------

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
    fn text_rejects_nul() {
        let e = err(Text, r#""a\u0000b""#);
        assert!(e.contains("NUL"), "{e}");
        assert!(e.starts_with("column `c` (text): "), "{e}");
        // Inside an object the NUL is only the escape text, which text can hold.
        assert_eq!(ok(Text, r#"{"a":"\u0000"}"#), r#"{"a":"\\u0000"}"#);
    }

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
            let compact = r#"{"a":null,"b":[1,2.50,"x\\ty"]}"#;
            assert_eq!(out, format!("{compact}\t{compact}"));
        }
        let enc = RowEncoder::new(vec![ColumnPlan::new("n", ColumnSource::Pointer("/".into()), Int8)]);
        assert_eq!(line(&enc, &rec(Some(b"17"), None)).unwrap(), "17");
        assert_eq!(line(&enc, &rec(Some(b"null"), None)).unwrap(), r"\N");
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

    fn constrained(ty: PgType, constraints: Constraints) -> RowEncoder {
        RowEncoder::new(vec![ColumnPlan {
            constraints,
            ..col("c", "/x", ty)
        }])
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
                checks: vec![SimpleCheck::parse("t_x_check", "c", Int4, true, "CHECK ((c >= 0))").unwrap()],
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
        // An unconstrained column leaves it all to Postgres.
        assert!(conv(Numeric, "12345678.5").is_ok());
        assert_eq!(conv(Text, "null").unwrap(), r"\N");
    }

    #[test]
    fn numeric_precision_rounds_like_postgres() {
        let fits = |s: &str, p: u16, sc: u16| Decimal::parse(s).unwrap().fits_precision(p, sc);
        assert!(fits("0.995", 3, 2));
        assert!(!fits("0.995", 2, 2), "rounds to 1.00");
        assert!(fits("0.994", 2, 2));
        assert!(fits("0.0995", 2, 2), "rounds to 0.10");
        assert!(fits("0.4", 1, 0));
        assert!(fits("9.4", 1, 0));
        assert!(!fits("9.5", 1, 0), "rounds to 10");
        assert!(fits("00012.5", 3, 1));
        assert!(fits("123e-1", 3, 1));
        assert!(!fits("1234e-1", 3, 1));
        assert!(fits("0", 1, 1));
        assert!(fits("0.00000000004", 2, 2));
    }

    #[test]
    fn typmods() {
        assert_eq!(Limit::from_typmod("varchar", 14), Some(Limit::Chars(10)));
        assert_eq!(Limit::from_typmod("bpchar", 5), Some(Limit::Chars(1)));
        assert_eq!(Limit::from_typmod("varchar", -1), None);
        assert_eq!(
            Limit::from_typmod("numeric", ((8 << 16) | 2) + 4),
            Some(Limit::Numeric { precision: 8, scale: 2 })
        );
        // numeric(3,-2) (Postgres 15+) is left to Postgres.
        assert_eq!(Limit::from_typmod("numeric", ((3 << 16) | (0x800 - 2)) + 4), None);
        assert_eq!(Limit::from_typmod("numeric", -1), None);
        assert_eq!(Limit::from_typmod("int4", -1), None);
    }

    #[test]
    fn display_forms() {
        let e = DecodeError::for_column("amount", Numeric, "expected a number, found \"abc\"");
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

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = format!("\"{}\"", "é".repeat(500));
        let e = err(Int4, &long);
        assert!(e.chars().count() < 140, "{e}");
        assert!(e.ends_with('…'), "{e}");
        let big = format!("[{}]", vec!["1"; 100_000].join(","));
        let e = err(Bool, &big);
        assert!(e.len() < 200, "{e}");
    }

    // --- integers --------------------------------------------------------------

    #[test]
    fn integers() {
        assert_eq!(ok(Int2, "-32768"), "-32768");
        assert_eq!(ok(Int2, "32767"), "32767");
        assert_eq!(ok(Int4, "2147483647"), "2147483647");
        assert_eq!(ok(Int8, "-9223372036854775808"), "-9223372036854775808");
        assert_eq!(ok(Int8, "9223372036854775807"), "9223372036854775807");
        assert_eq!(ok(Int4, "5.0"), "5");
        assert_eq!(ok(Int4, "-0"), "0");
        assert_eq!(ok(Int4, "1e3"), "1000");
        assert_eq!(ok(Int4, "1.5e1"), "15");
        assert_eq!(ok(Int4, "1500e-2"), "15");
        assert_eq!(ok(Int8, "0.0e99999999999999"), "0");
        assert_eq!(ok(Int4, r#""123""#), "123");
        assert_eq!(ok(Int4, r#""-7""#), "-7");
        assert_eq!(ok(Int4, r#""+7""#), "7");
        assert_eq!(ok(Int8, r#""12.000""#), "12");
    }

    #[test]
    fn integer_rejections() {
        assert_eq!(err(Int2, "70000"), "column `c` (smallint): 70000 is out of range");
        assert!(err(Int2, "-32769").contains("out of range"));
        assert!(err(Int4, "2147483648").contains("(integer): 2147483648 is out of range"));
        assert!(err(Int8, "9223372036854775808").contains("out of range"));
        assert!(err(Int8, "1e19").contains("out of range"));
        assert!(err(Int8, "1e999999999999999999999").contains("out of range"));
        assert!(err(Int4, r#""99999999999""#).contains("out of range"));
        assert_eq!(err(Int4, "5.5"), "column `c` (integer): expected an integer, found 5.5");
        assert!(err(Int4, "1e-1").contains("expected an integer"));
        assert!(err(Int4, r#""abc""#).contains(r#"expected an integer, found "abc""#));
        assert!(err(Int4, r#"" 5""#).contains("expected an integer"));
        assert!(err(Int4, r#""""#).contains("expected an integer"));
        assert!(err(Int4, r#""0x10""#).contains("expected an integer"));
        assert!(err(Int4, "true").contains("expected an integer, found true"));
        assert!(err(Int4, "[1]").contains("expected an integer"));
        assert!(err(Int4, "{}").contains("expected an integer"));
    }

    // --- floats ------------------------------------------------------------------

    #[test]
    fn floats() {
        assert_eq!(ok(Float8, "1.5"), "1.5");
        assert_eq!(ok(Float8, "-2"), "-2.0");
        assert_eq!(ok(Float8, "1e300"), "1e300");
        assert_eq!(ok(Float8, "0.1000000000000000055511151231257827"), "0.1");
        assert_eq!(ok(Float8, "0"), "0");
        assert_eq!(ok(Float8, "-0.0"), "-0");
        assert_eq!(ok(Float8, "0e500"), "0");
        assert_eq!(ok(Float8, "5e-324"), "5e-324");
        assert_eq!(ok(Float4, "0.1"), "0.1");
        assert_eq!(ok(Float4, "3.4028235e38"), "3.4028235e38");
        assert_eq!(ok(Float8, r#""2.25""#), "2.25");
        assert_eq!(ok(Float8, r#""NaN""#), "NaN");
        assert_eq!(ok(Float8, r#""nan""#), "NaN");
        assert_eq!(ok(Float8, r#""Infinity""#), "Infinity");
        assert_eq!(ok(Float8, r#""-Infinity""#), "-Infinity");
        assert_eq!(ok(Float4, r#""-inf""#), "-Infinity");
    }

    #[test]
    fn float_rejections() {
        // serde_json spells exponents as `e+N`; Postgres reads that fine.
        assert_eq!(
            err(Float8, "1e400"),
            "column `c` (double precision): 1e+400 is out of range"
        );
        assert!(err(Float8, "-1e400").contains("out of range"));
        assert!(err(Float8, "1e-400").contains("out of range"));
        assert!(err(Float4, "1e39").contains("(real): 1e+39 is out of range"));
        assert!(err(Float4, "1e-50").contains("out of range"));
        assert!(err(Float4, r#""1e39""#).contains("out of range"));
        assert!(err(Float8, r#""abc""#).contains("expected a number"));
        assert!(err(Float8, r#""1,5""#).contains("expected a number"));
        assert!(err(Float8, "true").contains("expected a number"));
        assert!(err(Float8, "{}").contains("expected a number"));
    }

    // --- numeric -----------------------------------------------------------------

    #[test]
    fn numerics() {
        let big = "123456789012345678901234567890.000000000000000000001";
        assert_eq!(ok(Numeric, big), big);
        assert_eq!(ok(Numeric, "-1.50"), "-1.50");
        assert_eq!(ok(Numeric, "1E5"), "1e+5");
        assert_eq!(ok(Numeric, "1e1000"), "1e+1000");
        assert_eq!(ok(Numeric, r#""1E5""#), "1E5");
        assert_eq!(ok(Numeric, r#""12.340""#), "12.340");
        assert_eq!(ok(Numeric, r#""+.5""#), "+.5");
        assert_eq!(ok(Numeric, r#""5.""#), "5.");
        assert_eq!(ok(Numeric, r#""-7e-3""#), "-7e-3");
        assert_eq!(ok(Numeric, r#""NaN""#), "NaN");
        assert_eq!(ok(Numeric, r#""nan""#), "NaN");
    }

    #[test]
    fn numeric_rejections() {
        assert!(err(Numeric, r#""abc""#).contains(r#"expected a number, found "abc""#));
        assert!(err(Numeric, r#""""#).contains("expected a number"));
        assert!(err(Numeric, r#"".""#).contains("expected a number"));
        assert!(err(Numeric, r#""1e""#).contains("expected a number"));
        assert!(err(Numeric, r#""1 ""#).contains("expected a number"));
        assert!(err(Numeric, r#""Infinity""#).contains("expected a number"));
        assert!(err(Numeric, "true").contains("expected a number"));
        assert!(err(Numeric, "1e1001").contains("out of range"));
        assert!(err(Numeric, "1e-1001").contains("out of range"));
        let too_precise = format!("0.{}1", "0".repeat(16383));
        assert!(err(Numeric, &too_precise).contains("out of range"));
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

    // --- timestamps & dates ------------------------------------------------------

    #[test]
    fn timestamptz() {
        assert_eq!(
            ok(Timestamptz, r#""2024-01-02T03:04:05.123456Z""#),
            "2024-01-02T03:04:05.123456Z"
        );
        assert_eq!(
            ok(Timestamptz, r#""2024-01-02T05:04:05+02:00""#),
            "2024-01-02T03:04:05Z"
        );
        assert_eq!(
            ok(Timestamptz, r#""2024-01-01T23:30:00.5-05:00""#),
            "2024-01-02T04:30:00.500000Z"
        );
        // Nanoseconds round to microseconds, carrying into the next day.
        assert_eq!(
            ok(Timestamptz, r#""2024-01-02T23:59:59.9999996Z""#),
            "2024-01-03T00:00:00Z"
        );
        assert_eq!(
            ok(Timestamptz, r#""2024-01-02T03:04:05.1234564Z""#),
            "2024-01-02T03:04:05.123456Z"
        );
        assert_eq!(ok(Timestamptz, r#""2016-12-31T23:59:60Z""#), "2017-01-01T00:00:00Z");
        assert_eq!(ok(Timestamptz, "0"), "1970-01-01T00:00:00Z");
        assert_eq!(ok(Timestamptz, "1704164645123"), "2024-01-02T03:04:05.123000Z");
        assert_eq!(ok(Timestamptz, "-1"), "1969-12-31T23:59:59.999000Z");
        assert_eq!(ok(Timestamptz, r#""0001-01-01T00:00:00Z""#), "0001-01-01T00:00:00Z");
    }

    #[test]
    fn timestamptz_rejections() {
        let e = err(Timestamptz, r#""2024-01-02 03:04:05""#);
        assert!(
            e.contains("expected an RFC 3339 timestamp or epoch milliseconds"),
            "{e}"
        );
        assert!(err(Timestamptz, r#""2024-02-30T00:00:00Z""#).contains("expected"));
        assert!(err(Timestamptz, r#""yesterday""#).contains("expected"));
        assert!(err(Timestamptz, "1.5").contains("expected"));
        assert!(err(Timestamptz, "true").contains("expected"));
        assert!(err(Timestamptz, r#""0001-01-01T00:00:00+01:00""#).contains("out of range"));
        assert!(err(Timestamptz, "9223372036854775807").contains("out of range"));
        assert!(err(Timestamptz, "1e30").contains("out of range"));
        // Epoch microseconds mistaken for milliseconds land past year 9999.
        assert!(err(Timestamptz, "1704164645123000").contains("out of range"));
    }

    #[test]
    fn timestamp_without_zone() {
        assert_eq!(
            ok(Timestamp, r#""2024-01-02T05:04:05.25+02:00""#),
            "2024-01-02 03:04:05.250000"
        );
        assert_eq!(ok(Timestamp, r#""2024-01-02T03:04:05""#), "2024-01-02 03:04:05");
        assert_eq!(
            ok(Timestamp, r#""2024-01-02 03:04:05.123456789""#),
            "2024-01-02 03:04:05.123457"
        );
        assert_eq!(ok(Timestamp, r#""1900-02-28 23:59:59.9999999""#), "1900-03-01 00:00:00");
        assert_eq!(ok(Timestamp, "1704164645123"), "2024-01-02 03:04:05.123000");
        assert!(err(Timestamp, r#""2024-01-02T24:00:00""#).contains("expected"));
        assert!(err(Timestamp, r#""2024-01-02T03:04""#).contains("expected"));
        assert!(err(Timestamp, r#""2024-01-02T03:04:05.""#).contains("expected"));
        assert!(err(Timestamp, r#""2024-01-02T03:04:05x""#).contains("expected"));
        assert!(err(Timestamp, r#""0000-06-01 00:00:00""#).contains("out of range"));
        assert!(err(Timestamp, "[]").contains("expected"));
    }

    #[test]
    fn dates() {
        assert_eq!(ok(Date, r#""2024-02-29""#), "2024-02-29");
        assert_eq!(ok(Date, r#""2024-01-01T23:30:00-05:00""#), "2024-01-02");
        assert_eq!(ok(Date, "1704164645123"), "2024-01-02");
        assert_eq!(ok(Date, "-1"), "1969-12-31");
        assert!(err(Date, r#""2023-02-29""#).contains("expected a date"));
        assert!(err(Date, r#""2024-1-2""#).contains("expected a date"));
        assert!(err(Date, r#""2024-01-02T00:00:00""#).contains("expected a date"));
        assert!(err(Date, r#""0000-01-01""#).contains("out of range"));
        assert!(err(Date, "99999999999999999").contains("out of range"));
        assert!(err(Date, "1.5").contains("expected a date"));
        assert!(err(Date, "false").contains("expected a date"));
    }

    // --- uuid, json, bytea --------------------------------------------------------

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
    fn check_encode(enc: &RowEncoder, r: &RecordRef<'_>) -> Result<bool, TestCaseError> {
        let prefix = b"prefix\n";
        let mut out = prefix.to_vec();
        match enc.encode(r, &mut out) {
            Ok(()) => {
                let line = &out[prefix.len()..];
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

    fn arb_string() -> impl Strategy<Value = String> {
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

    fn arb_number() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i16>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
            "-?(0|[1-9][0-9]{0,45})(\\.[0-9]{1,30})?([eE][+-]?[0-9]{1,6})?"
                .prop_map(|s| Value::Number(s.parse().expect("valid JSON number"))),
        ]
    }

    fn arb_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            1 => Just(Value::Null),
            1 => any::<bool>().prop_map(Value::Bool),
            3 => arb_number(),
            4 => arb_string().prop_map(Value::String),
        ]
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        arb_leaf().prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(arb_string(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Undoes COPY text escaping of one field.
    fn unescape(field: &[u8]) -> Vec<u8> {
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
                headers: &[],
            };
            let all = everything();
            check_encode(&RowEncoder::new(all.clone()), &r)?;
            // One column at a time, so later columns are reached too.
            for c in all {
                check_encode(&RowEncoder::new(vec![c]), &r)?;
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
                headers: &[],
            };
            check_encode(&RowEncoder::new(everything()), &r)?;
            for ty in ALL_TYPES {
                let enc = RowEncoder::new(vec![
                    col("x", "/x", ty),
                    col("whole", "/", Text),
                    col("topic", "@topic", Text),
                    col("ts", "@timestamp", Timestamptz),
                ]);
                if check_encode(&enc, &r)? {
                    // The whole-document column round-trips through COPY escaping.
                    let mut out = Vec::new();
                    enc.encode(&r, &mut out).unwrap();
                    let whole = out[..out.len() - 1].split(|&b| b == b'\t').nth(1).unwrap();
                    let reparsed: Value = serde_json::from_slice(&unescape(whole)).unwrap();
                    prop_assert_eq!(reparsed, serde_json::json!({ "x": v.clone() }));
                }
                check_encode(&RowEncoder::new(vec![col("key", "@key", ty)]), &r)?;
                let with_key = RowEncoder::new(vec![col("x", "/x", ty), col("key", "@key", ty)]);
                check_encode(&with_key, &r)?;
            }
        }

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

        #[test]
        fn base64_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..100), pad in any::<bool>()) {
            use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
            let engine = if pad { &STANDARD } else { &STANDARD_NO_PAD };
            let got = ok(Bytea, &format!("\"{}\"", engine.encode(&bytes)));
            let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            prop_assert_eq!(got, format!("\\\\x{want}"));
        }

        #[test]
        fn integers_round_trip(i in any::<i64>()) {
            let s = ok(Int8, &i.to_string());
            prop_assert_eq!(s, i.to_string());
            let s = ok(Int8, &format!("\"{i}.000\""));
            prop_assert_eq!(s, i.to_string());
        }

        #[test]
        fn floats_round_trip(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            let s = ok(Float8, &format!("{f:e}"));
            prop_assert_eq!(s.parse::<f64>().unwrap().to_bits(), f.to_bits());
        }

        #[test]
        fn epoch_millis_agree_with_chrono(ms in -62_135_596_800_000i64..253_402_300_799_999) {
            let got = ok(Timestamptz, &ms.to_string());
            let parsed = DateTime::parse_from_rfc3339(&got).unwrap();
            prop_assert_eq!(parsed.timestamp_millis(), ms);
            let naive = ok(Timestamp, &ms.to_string());
            prop_assert_eq!(naive.replace(' ', "T") + "Z", got);
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
    }

    #[test]
    fn upsert_key_columns_must_not_be_null() {
        let enc = upsert_encoder(&["id", "region"]);
        let r = rec(Some(br#"{"id": 7, "v": 3}"#), None);
        let err = line(&enc, &r).unwrap_err();
        assert_eq!(err.to_string(), "column `region` (text): a key column must not be null");
        assert!(RowEncoder::new(vec![col("id", "/id", Int8)])
            .with_upsert(&["nope".to_owned()], true)
            .unwrap_err()
            .contains("`nope`"));
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
}
