//! Kafka Connect and Debezium semantic types: a plain `int`, `long`,
//! `string`, `bytes` or struct whose schema *name* says what it means
//! (`io.debezium.time.Date` is days since the epoch, `MicroTimestamp` is
//! microseconds of a wall-clock time, …). Debezium's JSON carries the name
//! in its `schema` block, its Avro output in `connect.name`; both decode
//! through [`Semantic`], so a day count can never be read as milliseconds.

use super::text;

/// What a named Connect type means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Semantic {
    /// Days since 1970-01-01 (`io.debezium.time.Date`, Connect `Date`).
    Date,
    /// A time of day in milliseconds (`io.debezium.time.Time`, Connect `Time`).
    TimeMillis,
    /// … in microseconds (`io.debezium.time.MicroTime`).
    TimeMicros,
    /// … in nanoseconds (`io.debezium.time.NanoTime`).
    TimeNanos,
    /// A wall-clock time without a zone, in milliseconds since the epoch
    /// (`io.debezium.time.Timestamp`).
    LocalMillis,
    /// … in microseconds (`io.debezium.time.MicroTimestamp`).
    LocalMicros,
    /// … in nanoseconds (`io.debezium.time.NanoTimestamp`).
    LocalNanos,
    /// An instant in milliseconds since the epoch (Connect `Timestamp`, a
    /// `java.util.Date`).
    InstantMillis,
    /// Big-endian two's-complement unscaled bytes with a fixed scale
    /// (Connect `Decimal`).
    Decimal { scale: i64 },
    /// A struct `{scale, value}` (`io.debezium.data.VariableScaleDecimal`).
    VariableScaleDecimal,
    /// A string holding a JSON document (`io.debezium.data.Json`): written
    /// as that document, so a `jsonb` column gets the object, not a string.
    Json,
}

impl Semantic {
    /// The semantic type of a Connect schema name, with its parameters
    /// (Connect JSON's `parameters`, Avro's `connect.parameters`: the
    /// Decimal's `scale`, a string or a number). Names that need no
    /// conversion (`ZonedTimestamp`, `Uuid`, `Enum`, …: already text that
    /// means what it says) are `None`.
    pub(super) fn named(name: &str, parameters: Option<&serde_json::Value>) -> Option<Semantic> {
        let scale = parameters
            .and_then(|p| p.get("scale"))
            .and_then(|s| s.as_str().and_then(|s| s.parse().ok()).or_else(|| s.as_i64()));
        Some(match name {
            "io.debezium.time.Date" | "org.apache.kafka.connect.data.Date" => Semantic::Date,
            "io.debezium.time.Time" | "org.apache.kafka.connect.data.Time" => Semantic::TimeMillis,
            "io.debezium.time.MicroTime" => Semantic::TimeMicros,
            "io.debezium.time.NanoTime" => Semantic::TimeNanos,
            "io.debezium.time.Timestamp" => Semantic::LocalMillis,
            "io.debezium.time.MicroTimestamp" => Semantic::LocalMicros,
            "io.debezium.time.NanoTimestamp" => Semantic::LocalNanos,
            "org.apache.kafka.connect.data.Timestamp" => Semantic::InstantMillis,
            "org.apache.kafka.connect.data.Decimal" => Semantic::Decimal {
                scale: scale.unwrap_or(0),
            },
            "io.debezium.data.VariableScaleDecimal" => Semantic::VariableScaleDecimal,
            "io.debezium.data.Json" => Semantic::Json,
            _ => return None,
        })
    }

    /// Writes an integer of this type; `Err` when the type is not an
    /// integer type or the value is out of range.
    pub(super) fn integer(self, out: &mut Vec<u8>, v: i64) -> Result<(), String> {
        match self {
            Semantic::Date => text::date(out, v),
            Semantic::TimeMillis => text::time_of_day(out, v, 3),
            Semantic::TimeMicros => text::time_of_day(out, v, 6),
            Semantic::TimeNanos => text::time_of_day(out, v, 9),
            Semantic::LocalMillis => text::timestamp(out, v, 3, false),
            Semantic::LocalMicros => text::timestamp(out, v, 6, false),
            Semantic::LocalNanos => text::timestamp(out, v, 9, false),
            Semantic::InstantMillis => text::timestamp(out, v, 3, true),
            other => Err(format!("{other:?} is not carried in an integer")),
        }
    }

    /// Writes bytes of this type (a Connect `Decimal`).
    pub(super) fn bytes(self, out: &mut Vec<u8>, b: &[u8]) -> Result<(), String> {
        match self {
            Semantic::Decimal { scale } => text::decimal(out, b, scale),
            other => Err(format!("{other:?} is not carried in bytes")),
        }
    }

    /// Writes a string of this type (`io.debezium.data.Json`).
    pub(super) fn string(self, out: &mut Vec<u8>, s: &str) -> Result<(), String> {
        match self {
            Semantic::Json => {
                let doc: &serde_json::value::RawValue =
                    serde_json::from_str(s).map_err(|e| format!("an io.debezium.data.Json value is not JSON: {e}"))?;
                out.extend_from_slice(doc.get().as_bytes());
                Ok(())
            }
            other => Err(format!("{other:?} is not carried in a string")),
        }
    }
}
