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
}

impl ColumnSource {
    /// Parses a column spec; the error says what was expected.
    pub fn parse(spec: &str) -> Result<Self, String> {
        match spec {
            "" | "/" => Ok(Self::Pointer(String::new())),
            "@topic" => Ok(Self::Topic),
            "@partition" => Ok(Self::Partition),
            "@offset" => Ok(Self::Offset),
            "@timestamp" => Ok(Self::Timestamp),
            "@key" => Ok(Self::Key),
            s if s.starts_with('/') => Ok(Self::Pointer(s.to_owned())),
            other => Err(format!(
                "expected a JSON pointer starting with \"/\" (\"/\" for the whole value) or one of \
                 @topic, @partition, @offset, @timestamp, @key; found {other:?}"
            )),
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
            _ => return None,
        })
    }

    /// Whether values from `source` can ever convert to this type; the
    /// error says why not. Used by `sluice check` and at start-up.
    pub fn accepts(self, source: &ColumnSource) -> Result<(), String> {
        use PgType::*;
        let ok = match source {
            // JSON values convert at run time; a mismatch there is a record error.
            ColumnSource::Pointer(_) => true,
            ColumnSource::Topic => matches!(self, Text),
            ColumnSource::Partition | ColumnSource::Offset => {
                matches!(self, Int8 | Numeric | Text) || (self == Int4 && source == &ColumnSource::Partition)
            }
            ColumnSource::Timestamp => matches!(self, Timestamptz | Timestamp | Int8 | Numeric | Text),
            ColumnSource::Key => matches!(self, Text | Bytea | Json | Jsonb | Uuid | Int8 | Int4 | Numeric),
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
        }
    }
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
        assert!(ColumnSource::parse("id").unwrap_err().contains("JSON pointer"));
        assert!(ColumnSource::parse("@nope").is_err());
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
