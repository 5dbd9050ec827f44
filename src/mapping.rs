//! The mapping language: where a column's value comes from ([`ColumnSource`])
//! and which Postgres types sluice can write ([`PgType`]).
//!
//! Column specs in the config are strings:
//!
//! | spec | meaning |
//! | --- | --- |
//! | `"/"` or `""` | the whole record value (JSON) |
//! | `"/a/b"` | RFC 6901 JSON pointer into the record value |
//! | `"@topic"` `"@partition"` `"@offset"` `"@timestamp"` `"@key"` | record metadata |
//! | `"@key/a/b"` | JSON pointer into the Kafka key parsed as JSON |
//! | `"@header:name"` | one header's value (the last one of that name) |
//! | `"@headers"` | all headers as a JSON object (name → value) |
//! | `"@source"`, `"@source/a"` | the Debezium event's `source` block, or a JSON pointer into it (`envelope = "debezium"`) |
//! | `"=text"` | the constant `text`, read by Postgres as the column's type |

use std::fmt;

/// Where a column's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnSource {
    /// JSON pointer into the record value; `""` is the whole value.
    Pointer(String),
    Topic,
    Partition,
    Offset,
    /// The Kafka record timestamp (milliseconds since the epoch).
    Timestamp,
    /// The raw Kafka key.
    Key,
    /// JSON pointer into the Kafka key parsed as JSON (`"/"` for all of it).
    KeyPointer(String),
    /// One header's raw value; the last one when the name repeats.
    Header(String),
    /// Every header as a JSON object.
    Headers,
    /// JSON pointer into a Debezium event's `source` block (`""`: all of it).
    Source(String),
    /// A constant, in Postgres' text input form for the column's type.
    Const(String),
}

/// A column spec or a column type that does not parse; says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "expected a JSON pointer starting with \"/\" (\"/\" for the whole value), one of @topic, @partition, \
         @offset, @timestamp, @key, @headers, \"@key/<pointer>\", \"@header:<name>\", @source, \
         \"@source/<pointer>\", or a constant \"=<value>\"; found {0:?}"
    )]
    Source(String),
    #[error(
        "expected one of text, varchar(n), char(n), smallint, integer, bigint, real, double precision, numeric, \
         numeric(p), numeric(p,s), boolean, timestamptz, timestamp, date, time, time(p), timetz, interval, uuid, json, \
         jsonb, bytea, inet, cidr, macaddr, or an array of one of them (`integer[]`); found {0:?}"
    )]
    SqlType(String),
    #[error("unbalanced parentheses in {0:?}")]
    Parentheses(String),
    #[error("bad type modifier in {0:?}")]
    Modifier(String),
    #[error("type modifiers not valid for {ty}: {spec:?}")]
    Modifiers { ty: &'static str, spec: String },
}

impl ColumnSource {
    /// Parses a column spec; the error says what was expected.
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        match spec {
            "" | "/" => Ok(Self::Pointer(String::new())),
            "@topic" => Ok(Self::Topic),
            "@partition" => Ok(Self::Partition),
            "@offset" => Ok(Self::Offset),
            "@timestamp" => Ok(Self::Timestamp),
            "@key" => Ok(Self::Key),
            "@headers" => Ok(Self::Headers),
            "@source" | "@source/" => Ok(Self::Source(String::new())),
            s if s.starts_with("@source/") => Ok(Self::Source(s["@source".len()..].to_owned())),
            s if s.starts_with('/') => Ok(Self::Pointer(s.to_owned())),
            s if s.starts_with("@key/") => Ok(Self::KeyPointer(s["@key".len()..].to_owned())),
            s if s.starts_with("@header:") && s.len() > "@header:".len() => {
                Ok(Self::Header(s["@header:".len()..].to_owned()))
            }
            s if s.starts_with('=') => Ok(Self::Const(s[1..].to_owned())),
            other => Err(SpecError::Source(other.to_owned())),
        }
    }
}

impl fmt::Display for ColumnSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pointer(p) if p.is_empty() => f.write_str("/"),
            Self::Pointer(p) => f.write_str(p),
            Self::Topic => f.write_str("@topic"),
            Self::Partition => f.write_str("@partition"),
            Self::Offset => f.write_str("@offset"),
            Self::Timestamp => f.write_str("@timestamp"),
            Self::Key => f.write_str("@key"),
            Self::KeyPointer(p) => write!(f, "@key{p}"),
            Self::Header(name) => write!(f, "@header:{name}"),
            Self::Headers => f.write_str("@headers"),
            Self::Source(p) if p.is_empty() => f.write_str("@source"),
            Self::Source(p) => write!(f, "@source{p}"),
            Self::Const(c) => write!(f, "={c}"),
        }
    }
}

/// The Postgres column types sluice writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PgType {
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
}

impl PgType {
    /// Maps `pg_type.typname` (as in `information_schema.columns.udt_name`)
    /// to a supported type; `None` for types sluice cannot write.
    pub fn from_udt_name(name: &str) -> Option<Self> {
        Some(match name {
            "text" | "varchar" | "bpchar" | "name" | "citext" => Self::Text,
            "int2" => Self::Int2,
            "int4" => Self::Int4,
            "int8" => Self::Int8,
            "float4" => Self::Float4,
            "float8" => Self::Float8,
            "numeric" => Self::Numeric,
            "bool" => Self::Bool,
            "timestamptz" => Self::Timestamptz,
            "timestamp" => Self::Timestamp,
            "date" => Self::Date,
            "uuid" => Self::Uuid,
            "json" => Self::Json,
            "jsonb" => Self::Jsonb,
            "bytea" => Self::Bytea,
            "time" => Self::Time,
            "timetz" => Self::Timetz,
            "interval" => Self::Interval,
            "inet" => Self::Inet,
            "cidr" => Self::Cidr,
            "macaddr" => Self::Macaddr,
            _ => return None,
        })
    }

    /// `timestamptz` or `timestamp`.
    pub fn is_timestamp(self) -> bool {
        matches!(self, PgType::Timestamptz | PgType::Timestamp)
    }

    /// Whether values from `source` can ever convert to this type; the
    /// error says why not. Used by `sluice check` and at start-up.
    pub fn accepts(self, source: &ColumnSource) -> Result<(), String> {
        use PgType::*;
        let ok = match source {
            // JSON values convert at run time; a mismatch there is a record error.
            ColumnSource::Pointer(_) | ColumnSource::KeyPointer(_) | ColumnSource::Source(_) => true,
            // Checked against the live type by Postgres at start-up.
            ColumnSource::Const(_) => true,
            ColumnSource::Headers => matches!(self, Json | Jsonb | Text),
            ColumnSource::Topic => matches!(self, Text),
            ColumnSource::Partition | ColumnSource::Offset => {
                matches!(self, Int8 | Numeric | Text) || (self == Int4 && source == &ColumnSource::Partition)
            }
            ColumnSource::Timestamp => matches!(self, Timestamptz | Timestamp | Int8 | Numeric | Text),
            ColumnSource::Key | ColumnSource::Header(_) => {
                matches!(self, Text | Bytea | Json | Jsonb | Uuid | Int8 | Int4 | Numeric)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{source} cannot be written to a column of type {}",
                self.sql_name()
            ))
        }
    }

    /// The SQL name, for messages and `auto_create`.
    pub fn sql_name(self) -> &'static str {
        use PgType::*;
        match self {
            Text => "text",
            Int2 => "smallint",
            Int4 => "integer",
            Int8 => "bigint",
            Float4 => "real",
            Float8 => "double precision",
            Numeric => "numeric",
            Bool => "boolean",
            Timestamptz => "timestamptz",
            Timestamp => "timestamp",
            Date => "date",
            Uuid => "uuid",
            Json => "json",
            Jsonb => "jsonb",
            Bytea => "bytea",
            Time => "time",
            Timetz => "timetz",
            Interval => "interval",
            Inet => "inet",
            Cidr => "cidr",
            Macaddr => "macaddr",
        }
    }
}

/// A column type for `auto_create` and `auto_evolve`, in canonical SQL:
/// one of sluice's types, with a length for `varchar(n)`/`char(n)` and a
/// precision (and scale) for `numeric(p[,s])`. Only these exact forms are
/// accepted, since the text goes into DDL. The error says what was expected.
pub fn parse_sql_type(spec: &str) -> Result<String, SpecError> {
    // `T[]` (or `T[][]`, or the SQL standard's `T ARRAY`): an array of a
    // type below. Postgres does not enforce the number of dimensions.
    let trimmed = spec.trim();
    if let Some(elem) = trimmed.strip_suffix("[]").or_else(|| {
        trimmed
            .to_ascii_lowercase()
            .strip_suffix(" array")
            .map(|_| &trimmed[..trimmed.len() - 6])
    }) {
        let elem = elem.trim_end();
        let canonical = parse_sql_type(elem.trim_end_matches("[]").trim_end())?;
        return Ok(format!("{canonical}[]"));
    }
    let norm = trimmed.to_ascii_lowercase();
    let (base, args) = match norm.split_once('(') {
        Some((base, rest)) => {
            let inner = rest
                .strip_suffix(')')
                .ok_or_else(|| SpecError::Parentheses(spec.to_owned()))?;
            let args: Vec<u32> = inner
                .split(',')
                .map(|a| {
                    a.trim()
                        .parse::<u32>()
                        .map_err(|_| SpecError::Modifier(spec.to_owned()))
                })
                .collect::<Result<_, _>>()?;
            (base.trim().to_owned(), args)
        }
        None => (norm.clone(), Vec::new()),
    };
    let canonical = match base.as_str() {
        "text" => "text",
        "varchar" | "character varying" => "varchar",
        "char" | "character" | "bpchar" => "char",
        "smallint" | "int2" => "smallint",
        "integer" | "int" | "int4" => "integer",
        "bigint" | "int8" => "bigint",
        "real" | "float4" => "real",
        "double precision" | "float8" => "double precision",
        "numeric" | "decimal" => "numeric",
        "boolean" | "bool" => "boolean",
        "timestamptz" | "timestamp with time zone" => "timestamptz",
        "timestamp" | "timestamp without time zone" => "timestamp",
        "date" => "date",
        "uuid" => "uuid",
        "json" => "json",
        "jsonb" => "jsonb",
        "bytea" => "bytea",
        "time" | "time without time zone" => "time",
        "timetz" | "time with time zone" => "timetz",
        "interval" => "interval",
        "inet" => "inet",
        "cidr" => "cidr",
        "macaddr" => "macaddr",
        _ => return Err(SpecError::SqlType(spec.to_owned())),
    };
    let ok_args = match (canonical, args.as_slice()) {
        (_, []) => true,
        ("varchar" | "char", [n]) => (1..=10_485_760).contains(n),
        ("numeric", [p]) => (1..=1000).contains(p),
        ("numeric", [p, s]) => (1..=1000).contains(p) && s <= p,
        ("time" | "timetz", [p]) => *p <= 6,
        _ => false,
    };
    if !ok_args {
        return Err(SpecError::Modifiers {
            ty: canonical,
            spec: spec.to_owned(),
        });
    }
    Ok(match args.as_slice() {
        [] => canonical.to_owned(),
        [n] => format!("{canonical}({n})"),
        [p, s] => format!("{canonical}({p},{s})"),
        _ => unreachable!("at most two modifiers pass the check above"),
    })
}

impl ColumnSource {
    /// The column type `auto_create` and `auto_evolve` use when
    /// `column_types` names none: `jsonb` for JSON pointers (into the value
    /// the key or `@source`) and `@headers`, `integer` for `@partition`, `bigint` for
    /// `@offset`, `timestamptz` for `@timestamp`, `text` for the rest.
    pub fn default_sql_type(&self) -> &'static str {
        match self {
            Self::Pointer(_) | Self::KeyPointer(_) | Self::Source(_) | Self::Headers => "jsonb",
            Self::Partition => "integer",
            Self::Offset => "bigint",
            Self::Timestamp => "timestamptz",
            Self::Topic | Self::Key | Self::Header(_) | Self::Const(_) => "text",
        }
    }
}

/// A table, schema-qualified. Names are used exactly as written and always
/// quoted, so they are case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub schema: String,
    pub name: String,
}

impl TableRef {
    /// `"schema"."name"`, safe to splice into SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Quotes an identifier for SQL: `a"b` → `"a""b"`.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(ColumnSource::parse("/").unwrap(), ColumnSource::Pointer(String::new()));
        assert_eq!(
            ColumnSource::parse("/a/b").unwrap(),
            ColumnSource::Pointer("/a/b".into())
        );
        assert_eq!(ColumnSource::parse("@offset").unwrap(), ColumnSource::Offset);
        assert!(ColumnSource::parse("id")
            .unwrap_err()
            .to_string()
            .contains("JSON pointer"));
        assert!(ColumnSource::parse("@nope").is_err());
        assert_eq!(
            ColumnSource::parse("@key/a/0").unwrap(),
            ColumnSource::KeyPointer("/a/0".into())
        );
        assert_eq!(
            ColumnSource::parse("@key/").unwrap(),
            ColumnSource::KeyPointer("/".into())
        );
        assert_eq!(
            ColumnSource::parse("@header:trace-id").unwrap(),
            ColumnSource::Header("trace-id".into())
        );
        assert!(ColumnSource::parse("@header:").is_err());
        assert_eq!(ColumnSource::parse("@headers").unwrap(), ColumnSource::Headers);
        assert_eq!(
            ColumnSource::parse("=eu-west").unwrap(),
            ColumnSource::Const("eu-west".into())
        );
        assert_eq!(ColumnSource::parse("=").unwrap(), ColumnSource::Const(String::new()));
        for spec in ["@key/a", "@header:h", "@headers", "=x", "/a", "@offset"] {
            assert_eq!(ColumnSource::parse(spec).unwrap().to_string(), spec);
        }
    }

    #[test]
    fn sql_types_for_ddl() {
        assert_eq!(parse_sql_type("BIGINT").unwrap(), "bigint");
        assert_eq!(parse_sql_type("int").unwrap(), "integer");
        assert_eq!(parse_sql_type("numeric(12, 2)").unwrap(), "numeric(12,2)");
        assert_eq!(parse_sql_type("character varying(20)").unwrap(), "varchar(20)");
        assert_eq!(parse_sql_type("Timestamp With Time Zone").unwrap(), "timestamptz");
        assert!(parse_sql_type("numeric(2,3)").is_err());
        assert!(parse_sql_type("text(3)").is_err());
        assert!(parse_sql_type("point")
            .unwrap_err()
            .to_string()
            .contains("expected one of"));
        assert!(parse_sql_type("int); DROP TABLE x; --").is_err());
        assert!(parse_sql_type("varchar(0)").is_err());
        assert_eq!(parse_sql_type("INT[]").unwrap(), "integer[]");
        assert_eq!(parse_sql_type("varchar(5) []").unwrap(), "varchar(5)[]");
        assert_eq!(parse_sql_type("text[][]").unwrap(), "text[]");
        assert_eq!(parse_sql_type("numeric(8,2) ARRAY").unwrap(), "numeric(8,2)[]");
        assert!(parse_sql_type("point[]").is_err());
        assert!(parse_sql_type("[]").is_err());
        for (spec, ty) in [
            ("/a", "jsonb"),
            ("@offset", "bigint"),
            ("@timestamp", "timestamptz"),
            ("=x", "text"),
        ] {
            assert_eq!(ColumnSource::parse(spec).unwrap().default_sql_type(), ty);
        }
    }

    #[test]
    fn metadata_type_checks() {
        assert!(PgType::Int8.accepts(&ColumnSource::Offset).is_ok());
        assert!(PgType::Bool.accepts(&ColumnSource::Offset).is_err());
        assert!(PgType::Timestamptz.accepts(&ColumnSource::Timestamp).is_ok());
        assert!(PgType::Int4.accepts(&ColumnSource::Partition).is_ok());
        assert!(PgType::Int4.accepts(&ColumnSource::Offset).is_err());
    }
}
