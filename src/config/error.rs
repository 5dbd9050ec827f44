//! [`ConfigError`] and the translation of figment's errors into it: every
//! error names the key path (`pipelines[0].columns.amount`,
//! `kafka.properties."enable.auto.commit"`), what was expected, what was
//! found and, when known, where the value came from.

use std::fmt;

use figment::error::{Actual, Kind};
use figment::value::Value;
use figment::{Figment, Metadata, Source};

use super::sources::{env_var_name, ENV_METADATA_NAME};

/// A configuration problem: which key, and what is wrong with it.
///
/// `key` is a path such as `kafka.brokers`, `pipelines[0].columns.amount` or
/// `kafka.properties."enable.auto.commit"`; it is empty for problems with the
/// file as a whole (unreadable, not valid TOML).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.key, .message))]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn render(key: &str, message: &str) -> String {
    if key.is_empty() {
        format!("config: {message}")
    } else {
        format!("config key `{key}`: {message}")
    }
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A key path under construction, e.g. by validation.
pub(crate) fn key(name: &str) -> Seg {
    Seg::Key(name.to_owned())
}

/// Renders `[kafka, properties, enable.auto.commit]` as
/// `kafka.properties."enable.auto.commit"`: keys that are not plain
/// identifiers are quoted, as TOML would need them.
pub(crate) fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
        }
    }
    out
}

/// A validation problem, before its origin is known.
pub(crate) type Issue = (Vec<Seg>, String);

pub(crate) fn issue_to_error((path, message): Issue) -> ConfigError {
    ConfigError::new(render_path(&path), message)
}

/// Like [`issue_to_error`], adding where the offending value came from.
pub(crate) fn issue_with_origin((path, message): Issue, figment: &Figment) -> ConfigError {
    let root = figment.find_value("").ok();
    let message = match origin_of(figment, root.as_ref(), &path) {
        Some(origin) => format!("{message} (from {origin})"),
        None => message,
    };
    ConfigError::new(render_path(&path), message)
}

/// Converts a figment extraction error into a [`ConfigError`].
pub(crate) fn from_figment(err: figment::Error, figment: &Figment) -> ConfigError {
    let others = err.count() - 1;
    let mut names = err.path.clone();
    // serde reports an unknown or missing field against the table that holds
    // it; the operator needs the field itself in the key path.
    let field: Option<&str> = match &err.kind {
        Kind::UnknownField(name, _) => Some(name),
        Kind::MissingField(name) => Some(name),
        _ => None,
    };
    if let Some(name) = field {
        if names.last().map(String::as_str) != Some(name) {
            names.push(name.to_owned());
        }
    }
    let root = figment.find_value("").ok();
    let path = classify(&names, root.as_ref());

    // The value of a secret key is never echoed, whatever is wrong with it.
    let mut message = if is_secret_path(&path) {
        describe_kind_hiding_value(&err.kind)
    } else {
        describe_kind(&err.kind)
    };
    let origin = match &err.metadata {
        Some(md) => Some(describe_origin(md, &path)),
        None => origin_of(figment, root.as_ref(), &path),
    };
    if let Some(origin) = origin {
        message.push_str(&format!(" (from {origin})"));
    }
    if others > 0 {
        message.push_str(&format!(" (and {others} more error(s))"));
    }
    ConfigError::new(render_path(&path), message)
}

/// Turns figment's string path into segments, using the merged value to
/// tell array indices (`pipelines[0]`) from map keys that happen to be
/// numeric (a column named `2024`).
fn classify(names: &[String], root: Option<&Value>) -> Vec<Seg> {
    let mut cur = root;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        match (cur, name.parse::<usize>()) {
            (Some(Value::Array(_, items)), Ok(i)) => {
                out.push(Seg::Index(i));
                cur = items.get(i);
            }
            (Some(Value::Dict(_, dict)), _) => {
                out.push(Seg::Key(name.clone()));
                cur = dict.get(name);
            }
            // Off the end of the data (a missing key): no way to tell, and
            // only `pipelines` and `topics` are arrays of this shape.
            (_, Ok(i)) if matches!(out.last(), Some(Seg::Key(k)) if k == "pipelines" || k == "topics") => {
                out.push(Seg::Index(i));
                cur = None;
            }
            _ => {
                out.push(Seg::Key(name.clone()));
                cur = None;
            }
        }
    }
    out
}

/// The value at `path` in the merged data, or its nearest existing ancestor.
fn find<'v>(root: Option<&'v Value>, path: &[Seg]) -> Option<&'v Value> {
    let mut cur = root?;
    for seg in path {
        let next = match (seg, cur) {
            (Seg::Key(k), Value::Dict(_, dict)) => dict.get(k),
            (Seg::Index(i), Value::Array(_, items)) => items.get(*i),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => break,
        }
    }
    Some(cur)
}

/// Where the value at `path` (or its nearest ancestor) was set, if a
/// provider set it.
fn origin_of(figment: &Figment, root: Option<&Value>, path: &[Seg]) -> Option<String> {
    let md = figment.get_metadata(find(root, path)?.tag())?;
    Some(describe_origin(md, path))
}

fn describe_origin(md: &Metadata, path: &[Seg]) -> String {
    if md.name == ENV_METADATA_NAME {
        let keys: Vec<String> = path
            .iter()
            .map(|seg| match seg {
                Seg::Key(k) => k.clone(),
                Seg::Index(i) => i.to_string(),
            })
            .collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        return format!("environment variable {}", env_var_name(&keys));
    }
    match &md.source {
        Some(Source::File(path)) => format!("file {}", path.display()),
        _ => md.name.to_string(),
    }
}

/// Whether the value at `path` is, or holds, a secret: the Postgres URL,
/// the registry password, the OTLP headers, a secret-looking librdkafka
/// property (or the properties table as a whole).
fn is_secret_path(path: &[Seg]) -> bool {
    let keys: Vec<&str> = path
        .iter()
        .map(|seg| match seg {
            Seg::Key(k) => k.as_str(),
            Seg::Index(_) => "",
        })
        .collect();
    match keys.as_slice() {
        ["postgres", "url", ..] | ["schema_registry", "password", ..] | ["telemetry", "otlp_headers", ..] => true,
        ["kafka", "properties"] => true,
        ["kafka", "properties", name, ..] => super::kafka::is_secret_property(name),
        _ => false,
    }
}

/// [`describe_kind`] without the offending value: only its kind.
fn describe_kind_hiding_value(kind: &Kind) -> String {
    let kind_of = |actual: &Actual| match actual {
        Actual::Bool(_) => "a boolean".to_owned(),
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer".to_owned(),
        Actual::Float(_) => "a float".to_owned(),
        Actual::Char(_) | Actual::Str(_) => "a string".to_owned(),
        other => describe_actual(other),
    };
    match kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => format!(
            "expected {}, found {} (not shown: a secret)",
            friendly_expected(expected),
            kind_of(actual)
        ),
        Kind::UnknownVariant(_, expected) => {
            format!(
                "expected one of: {} (the value is not shown: a secret)",
                expected.join(", ")
            )
        }
        Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "integer out of range (not shown: a secret)".to_owned(),
        other => describe_kind(other),
    }
}

/// A TOML parse error without the quoted source line: the line may be the
/// one with a password on it. What is left names the line and column, and
/// what is wrong there.
fn without_source_snippet(msg: &str) -> String {
    let snippet = |line: &str| {
        let t = line.trim_start();
        let t = t.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start();
        t.starts_with('|')
    };
    msg.lines()
        .filter(|l| !snippet(l) && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

/// "expected X, found Y", in words an operator reads.
fn describe_kind(kind: &Kind) -> String {
    match kind {
        // TOML parse errors end in a newline, after the offending line.
        Kind::Message(msg) => without_source_snippet(msg),
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!(
                "expected {}, found {}",
                friendly_expected(expected),
                describe_actual(actual)
            )
        }
        Kind::InvalidLength(len, expected) => format!("expected {expected}, found {len} element(s)"),
        Kind::UnknownVariant(found, expected) => {
            format!("expected one of: {}; found {found:?}", expected.join(", "))
        }
        Kind::UnknownField(_, []) => "unknown key; this table takes no keys".to_owned(),
        Kind::UnknownField(_, expected) => format!("unknown key; expected one of: {}", expected.join(", ")),
        Kind::MissingField(_) => "missing; this key is required".to_owned(),
        Kind::DuplicateField(_) => "given more than once".to_owned(),
        Kind::ISizeOutOfRange(v) => format!("expected an integer in range, found {v}"),
        Kind::USizeOutOfRange(v) => format!("expected an unsigned integer in range, found {v}"),
        Kind::Unsupported(actual) => format!("unsupported value: {}", describe_actual(actual)),
        Kind::UnsupportedKey(actual, expected) => {
            format!("expected {expected} keys, found {}", describe_actual(actual))
        }
    }
}

/// serde names Rust types ("u32", "struct KafkaConfig"); say it in TOML terms.
fn friendly_expected(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "an unsigned integer".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" | "bool" => "a boolean (true or false)".to_owned(),
        "a sequence" => "an array".to_owned(),
        "a map" => "a table".to_owned(),
        "a duration" => "a duration such as \"30s\", \"200ms\" or \"1m 30s\"".to_owned(),
        s if s.starts_with("struct ") => "a table".to_owned(),
        s => s.to_owned(),
    }
}

fn describe_actual(actual: &Actual) -> String {
    struct Shown<'a>(&'a Actual);
    impl fmt::Display for Shown<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                Actual::Bool(v) => write!(f, "boolean {v}"),
                Actual::Unsigned(v) => write!(f, "integer {v}"),
                Actual::Signed(v) => write!(f, "integer {v}"),
                Actual::Float(v) => write!(f, "float {v}"),
                Actual::Char(v) => write!(f, "character {v:?}"),
                Actual::Str(v) => write!(f, "string {v:?}"),
                Actual::Bytes(_) => f.write_str("bytes"),
                Actual::Unit | Actual::Option => f.write_str("an empty value"),
                Actual::Map => f.write_str("a table"),
                Actual::Seq => f.write_str("an array"),
                other => write!(f, "{other}"),
            }
        }
    }
    Shown(actual).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_paths_like_toml_keys() {
        let p = [key("kafka"), key("properties"), key("enable.auto.commit")];
        assert_eq!(render_path(&p), r#"kafka.properties."enable.auto.commit""#);
        let p = [key("pipelines"), Seg::Index(0), key("columns"), key("amount")];
        assert_eq!(render_path(&p), "pipelines[0].columns.amount");
        let p = [key("pipelines"), Seg::Index(2), key("topics"), Seg::Index(1)];
        assert_eq!(render_path(&p), "pipelines[2].topics[1]");
        let p = [key("pipelines"), Seg::Index(0), key("columns"), key("two words")];
        assert_eq!(render_path(&p), r#"pipelines[0].columns."two words""#);
    }

    #[test]
    fn file_level_errors_have_no_key() {
        assert_eq!(ConfigError::new("", "bad").to_string(), "config: bad");
        assert_eq!(
            ConfigError::new("kafka.brokers", "bad").to_string(),
            "config key `kafka.brokers`: bad"
        );
    }
}
