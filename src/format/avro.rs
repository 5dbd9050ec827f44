//! Avro: a Confluent-framed datum decoded by `apache-avro` with its
//! writer's schema, then written as JSON text ([`super::text`]) with every
//! logical type (and every Connect `connect.name` type Debezium's Avro
//! output carries) spelled out unambiguously.
//!
//! `apache-avro` keeps logical types but drops the custom properties of
//! primitive types, so the schema's JSON is also read here into a
//! [`Shape`] tree that walks alongside the decoded value: it gives each
//! decimal its scale and each `connect.name` its [`Semantic`].

use std::collections::HashMap;

use apache_avro::types::Value;
use apache_avro::Schema;
use serde_json::Value as Json;

use super::semantic::Semantic;
use super::text;

/// A compiled Avro writer's schema.
#[derive(Debug)]
pub(crate) struct AvroSchema {
    schema: Schema,
    /// The referenced schemas, whose names `schema` may use.
    referenced: Vec<Schema>,
    shapes: Shapes,
}

#[derive(Debug)]
struct Shapes {
    root: Shape,
    /// Named types (records, enums, fixed) by index, so recursive schemas
    /// terminate.
    named: Vec<Shape>,
}

#[derive(Debug, Clone)]
enum Shape {
    Leaf(Option<Semantic>),
    Decimal(i64),
    Record(Vec<Shape>, Option<Semantic>),
    Array(Box<Shape>),
    Map(Box<Shape>),
    Union(Vec<Shape>),
    Named(usize),
}

impl AvroSchema {
    /// Parses the writer's schema, with the texts of the schemas it
    /// references (Confluent schema references) for its named types.
    pub(crate) fn compile(text: &str, references: &[String]) -> Result<AvroSchema, String> {
        let (schema, referenced) = if references.is_empty() {
            Schema::parse_str(text).map(|s| (s, Vec::new()))
        } else {
            Schema::parse_str_with_list(text, references)
        }
        .map_err(|e| format!("not a valid Avro schema: {e}"))?;
        let mut names = HashMap::new();
        let mut named = Vec::new();
        for reference in references {
            let json: Json = serde_json::from_str(reference).map_err(|e| format!("a referenced schema: {e}"))?;
            shape(&json, None, &mut names, &mut named);
        }
        let json: Json = serde_json::from_str(text).map_err(|e| format!("not a valid Avro schema: {e}"))?;
        let root = shape(&json, None, &mut names, &mut named);
        Ok(AvroSchema {
            schema,
            referenced,
            shapes: Shapes { root, named },
        })
    }

    /// Decodes one datum (the bytes after the Confluent header) into JSON text.
    pub(crate) fn to_json(&self, mut datum: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let value = if self.referenced.is_empty() {
            apache_avro::from_avro_datum(&self.schema, &mut datum, None)
        } else {
            apache_avro::from_avro_datum_schemata(&self.schema, self.referenced.iter().collect(), &mut datum, None)
        }
        .map_err(|e| format!("the Avro datum does not decode with its writer's schema: {e}"))?;
        if !datum.is_empty() {
            return Err(format!(
                "the Avro datum has {} bytes left over after decoding with its writer's schema",
                datum.len()
            ));
        }
        self.shapes.write(out, &value, &self.shapes.root)
    }
}

/// A top-level field of a record schema as a column: its name and the SQL
/// type `auto_create`/`auto_evolve` give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldColumn {
    pub name: String,
    pub sql_type: String,
}

/// Asserts `got` is exactly the columns `want` (name, SQL type), in order.
#[cfg(test)]
#[track_caller]
pub(crate) fn assert_columns(got: Vec<FieldColumn>, want: &[(&str, &str)]) {
    let got: Vec<(&str, &str)> = got.iter().map(|c| (c.name.as_str(), c.sql_type.as_str())).collect();
    assert_eq!(got, want);
}

/// The columns of an Avro record schema: one per top-level field, typed as
/// sluice writes the field (see [`sql_type`]).
pub(crate) fn columns(text: &str) -> Result<Vec<FieldColumn>, String> {
    let json: Json = serde_json::from_str(text).map_err(|e| format!("not a valid Avro schema: {e}"))?;
    record_columns(&json)
}

/// The columns of a Debezium change event's Avro schema (its `Envelope`):
/// one per field of the row record that `before` and `after` carry.
pub(crate) fn debezium_columns(text: &str) -> Result<Vec<FieldColumn>, String> {
    let json: Json = serde_json::from_str(text).map_err(|e| format!("not a valid Avro schema: {e}"))?;
    let fields = json.get("fields").and_then(Json::as_array);
    // The row record is defined inline at its first use (`before`), and
    // named by reference at the second (`after`).
    let row = fields
        .into_iter()
        .flatten()
        .filter(|f| matches!(f.get("name").and_then(Json::as_str), Some("before" | "after")))
        .filter_map(|f| match f.get("type") {
            Some(Json::Array(branches)) => branches.iter().find(|b| b.is_object()),
            Some(t @ Json::Object(_)) => Some(t),
            _ => None,
        })
        .next()
        .ok_or_else(|| {
            "the schema is not a Debezium change event's (no `before`/`after` record: is this the topic of a \
             Debezium connector with the Avro converter?)"
                .to_owned()
        })?;
    record_columns(row)
}

fn record_columns(json: &Json) -> Result<Vec<FieldColumn>, String> {
    let fields = match (json.get("type").and_then(Json::as_str), json.get("fields")) {
        (Some("record"), Some(Json::Array(fields))) => fields,
        _ => return Err("the schema is not a record: it has no fields to be columns".to_owned()),
    };
    fields
        .iter()
        .map(|f| {
            let name = f.get("name").and_then(Json::as_str).ok_or("a field without a name")?;
            Ok(FieldColumn {
                name: name.to_owned(),
                sql_type: sql_type(f.get("type").unwrap_or(&Json::Null)),
            })
        })
        .collect()
}

/// The SQL type a field of this Avro type is written as: what its JSON
/// text converts to faithfully. A nullable union is its other branch;
/// records, maps, arrays and other unions are `jsonb`.
fn sql_type(ty: &Json) -> String {
    let decimal = |o: &serde_json::Map<String, Json>| match (
        o.get("precision").and_then(Json::as_u64),
        o.get("scale").and_then(Json::as_u64),
    ) {
        (Some(p), s) if (1..=1000).contains(&p) && s.unwrap_or(0) <= p => format!("numeric({p},{})", s.unwrap_or(0)),
        _ => "numeric".to_owned(),
    };
    match ty {
        Json::String(name) => match name.as_str() {
            "boolean" => "boolean",
            "int" => "integer",
            "long" => "bigint",
            "float" => "real",
            "double" => "double precision",
            "bytes" => "bytea",
            "string" => "text",
            // A named type: records are jsonb, an enum's or fixed's name is
            // not known here without its definition; jsonb holds either.
            _ => "jsonb",
        }
        .to_owned(),
        Json::Array(branches) => {
            let other: Vec<&Json> = branches.iter().filter(|b| b.as_str() != Some("null")).collect();
            match other.as_slice() {
                [one] => sql_type(one),
                _ => "jsonb".to_owned(),
            }
        }
        Json::Object(o) => {
            let connect = o.get("connect.name").and_then(Json::as_str);
            let logical = o.get("logicalType").and_then(Json::as_str);
            let by_name = match connect {
                Some("io.debezium.time.Date" | "org.apache.kafka.connect.data.Date") => Some("date"),
                Some("io.debezium.time.Time" | "io.debezium.time.MicroTime" | "io.debezium.time.NanoTime")
                | Some("org.apache.kafka.connect.data.Time") => Some("time"),
                Some("io.debezium.time.Timestamp" | "io.debezium.time.MicroTimestamp")
                | Some("io.debezium.time.NanoTimestamp") => Some("timestamp"),
                Some("org.apache.kafka.connect.data.Timestamp" | "io.debezium.time.ZonedTimestamp") => {
                    Some("timestamptz")
                }
                Some("io.debezium.data.VariableScaleDecimal") => Some("numeric"),
                Some("io.debezium.data.Json") => Some("jsonb"),
                Some("io.debezium.data.Uuid") => Some("uuid"),
                _ => None,
            };
            if let Some(t) = by_name {
                return t.to_owned();
            }
            match (o.get("type"), logical) {
                (_, Some("decimal")) => decimal(o),
                (_, Some("date")) => "date".to_owned(),
                (_, Some("time-millis" | "time-micros")) => "time".to_owned(),
                (_, Some("timestamp-millis" | "timestamp-micros" | "timestamp-nanos")) => "timestamptz".to_owned(),
                (_, Some("local-timestamp-millis" | "local-timestamp-micros" | "local-timestamp-nanos")) => {
                    "timestamp".to_owned()
                }
                (_, Some("uuid")) => "uuid".to_owned(),
                (_, Some("duration")) => "interval".to_owned(),
                (Some(Json::String(t)), _) if t == "enum" => "text".to_owned(),
                (Some(Json::String(t)), _) if t == "fixed" => "bytea".to_owned(),
                (Some(Json::String(t)), _) if matches!(t.as_str(), "record" | "map" | "array") => "jsonb".to_owned(),
                (Some(inner), _) => sql_type(inner),
                (None, _) => "jsonb".to_owned(),
            }
        }
        _ => "jsonb".to_owned(),
    }
}

/// The shape of a schema's JSON (see the module docs).
fn shape(json: &Json, namespace: Option<&str>, names: &mut HashMap<String, usize>, named: &mut Vec<Shape>) -> Shape {
    match json {
        Json::String(name) => match name.as_str() {
            "null" | "boolean" | "int" | "long" | "float" | "double" | "bytes" | "string" => Shape::Leaf(None),
            other => {
                let full = full_name(other, namespace);
                names
                    .get(&full)
                    .or_else(|| names.get(other))
                    .map_or(Shape::Leaf(None), |&i| Shape::Named(i))
            }
        },
        Json::Array(branches) => Shape::Union(branches.iter().map(|b| shape(b, namespace, names, named)).collect()),
        Json::Object(o) => {
            let semantic = o
                .get("connect.name")
                .and_then(Json::as_str)
                .and_then(|n| Semantic::named(n, o.get("connect.parameters")));
            let scale = o.get("scale").and_then(Json::as_i64).unwrap_or(0);
            let logical = o.get("logicalType").and_then(Json::as_str);
            let ty = o.get("type");
            match ty.and_then(Json::as_str) {
                Some(kind @ ("record" | "error" | "enum" | "fixed")) => {
                    let name = o.get("name").and_then(Json::as_str).unwrap_or("");
                    let own_ns = o.get("namespace").and_then(Json::as_str).or(namespace);
                    let full = full_name(name, own_ns);
                    let ns = full.rsplit_once('.').map(|(ns, _)| ns.to_owned());
                    let index = named.len();
                    named.push(Shape::Leaf(None));
                    names.insert(full, index);
                    named[index] = match kind {
                        "fixed" if logical == Some("decimal") => Shape::Decimal(scale),
                        "fixed" | "enum" => Shape::Leaf(semantic),
                        _ => {
                            let fields = o
                                .get("fields")
                                .and_then(Json::as_array)
                                .map(|fields| {
                                    fields
                                        .iter()
                                        .map(|f| {
                                            f.get("type")
                                                .map_or(Shape::Leaf(None), |t| shape(t, ns.as_deref(), names, named))
                                        })
                                        .collect()
                                })
                                .unwrap_or_default();
                            Shape::Record(fields, semantic)
                        }
                    };
                    Shape::Named(index)
                }
                Some("array") => Shape::Array(Box::new(
                    o.get("items")
                        .map_or(Shape::Leaf(None), |i| shape(i, namespace, names, named)),
                )),
                Some("map") => Shape::Map(Box::new(
                    o.get("values")
                        .map_or(Shape::Leaf(None), |v| shape(v, namespace, names, named)),
                )),
                Some("bytes") if logical == Some("decimal") => Shape::Decimal(scale),
                Some(_) => Shape::Leaf(semantic),
                // `{"type": {...}}` or `{"type": [...]}`: the type is nested.
                None => ty.map_or(Shape::Leaf(None), |t| shape(t, namespace, names, named)),
            }
        }
        _ => Shape::Leaf(None),
    }
}

fn full_name(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_owned(),
    }
}

impl Shapes {
    fn resolve<'s>(&'s self, mut shape: &'s Shape) -> &'s Shape {
        while let Shape::Named(i) = shape {
            shape = &self.named[*i];
        }
        shape
    }

    fn write(&self, out: &mut Vec<u8>, value: &Value, shape: &Shape) -> Result<(), String> {
        let shape = self.resolve(shape);
        let semantic = match shape {
            Shape::Leaf(s) | Shape::Record(_, s) => *s,
            _ => None,
        };
        match value {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Int(i) => match semantic {
                Some(s) => s.integer(out, (*i).into())?,
                None => out.extend_from_slice(i.to_string().as_bytes()),
            },
            Value::Long(i) => match semantic {
                Some(s) => s.integer(out, *i)?,
                None => out.extend_from_slice(i.to_string().as_bytes()),
            },
            Value::Float(f) => text::float(out, (*f).into(), true),
            Value::Double(f) => text::float(out, *f, false),
            Value::Bytes(b) | Value::Fixed(_, b) => match (shape, semantic) {
                (Shape::Decimal(scale), _) => text::decimal(out, b, *scale)?,
                (_, Some(s)) => s.bytes(out, b)?,
                _ => text::bytes(out, b),
            },
            Value::String(s) => match semantic {
                Some(sem) => sem.string(out, s)?,
                None => text::string(out, s),
            },
            Value::Enum(_, symbol) => text::string(out, symbol),
            Value::Union(branch, inner) => {
                let branch_shape = match shape {
                    Shape::Union(branches) => branches.get(*branch as usize).unwrap_or(&Shape::Leaf(None)),
                    other => other,
                };
                self.write(out, inner, branch_shape)?;
            }
            Value::Array(items) => {
                let item = match shape {
                    Shape::Array(item) => item,
                    _ => &Shape::Leaf(None),
                };
                out.push(b'[');
                for (k, v) in items.iter().enumerate() {
                    if k > 0 {
                        out.push(b',');
                    }
                    self.write(out, v, item)?;
                }
                out.push(b']');
            }
            Value::Map(entries) => {
                let item = match shape {
                    Shape::Map(item) => item,
                    _ => &Shape::Leaf(None),
                };
                // Sorted: the same record always gives the same text.
                let mut keys: Vec<&String> = entries.keys().collect();
                keys.sort_unstable();
                out.push(b'{');
                for (k, key) in keys.into_iter().enumerate() {
                    if k > 0 {
                        out.push(b',');
                    }
                    text::string(out, key);
                    out.push(b':');
                    self.write(out, &entries[key], item)?;
                }
                out.push(b'}');
            }
            Value::Record(fields) if semantic == Some(Semantic::VariableScaleDecimal) => {
                let scale = fields.iter().find_map(|(n, v)| match (n.as_str(), v) {
                    ("scale", Value::Int(s)) => Some(i64::from(*s)),
                    _ => None,
                });
                let unscaled = fields.iter().find_map(|(n, v)| match (n.as_str(), v) {
                    ("value", Value::Bytes(b)) => Some(b.as_slice()),
                    _ => None,
                });
                match (scale, unscaled) {
                    (Some(scale), Some(b)) => text::decimal(out, b, scale)?,
                    _ => return Err("a VariableScaleDecimal without an int scale and bytes value".to_owned()),
                }
            }
            Value::Record(fields) => {
                let shapes: &[Shape] = match shape {
                    Shape::Record(shapes, _) => shapes,
                    _ => &[],
                };
                out.push(b'{');
                for (k, (name, v)) in fields.iter().enumerate() {
                    if k > 0 {
                        out.push(b',');
                    }
                    text::string(out, name);
                    out.push(b':');
                    self.write(out, v, shapes.get(k).unwrap_or(&Shape::Leaf(None)))?;
                }
                out.push(b'}');
            }
            Value::Date(days) => text::date(out, (*days).into())?,
            Value::Decimal(d) => {
                let scale = match shape {
                    Shape::Decimal(scale) => *scale,
                    _ => 0,
                };
                let bytes = Vec::<u8>::try_from(d).map_err(|e| format!("a decimal: {e}"))?;
                text::decimal(out, &bytes, scale)?;
            }
            Value::BigDecimal(d) => out.extend_from_slice(d.to_plain_string().as_bytes()),
            Value::TimeMillis(ms) => text::time_of_day(out, (*ms).into(), 3)?,
            Value::TimeMicros(us) => text::time_of_day(out, *us, 6)?,
            Value::TimestampMillis(v) => text::timestamp(out, *v, 3, true)?,
            Value::TimestampMicros(v) => text::timestamp(out, *v, 6, true)?,
            Value::TimestampNanos(v) => text::timestamp(out, *v, 9, true)?,
            Value::LocalTimestampMillis(v) => text::timestamp(out, *v, 3, false)?,
            Value::LocalTimestampMicros(v) => text::timestamp(out, *v, 6, false)?,
            Value::LocalTimestampNanos(v) => text::timestamp(out, *v, 9, false)?,
            Value::Duration(d) => {
                // ISO 8601, which Postgres' interval input reads.
                let (months, days, millis) = (u32::from(d.months()), u32::from(d.days()), u32::from(d.millis()));
                text::string(
                    out,
                    &format!("P{months}M{days}DT{}.{:03}S", millis / 1000, millis % 1000),
                );
            }
            Value::Uuid(u) => text::string(out, &u.to_string()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value;

    use super::*;

    fn datum(schema: &str, value: Value) -> Vec<u8> {
        let s = Schema::parse_str(schema).unwrap();
        apache_avro::to_avro_datum(&s, value).unwrap()
    }

    fn json(schema: &str, value: Value) -> String {
        let compiled = AvroSchema::compile(schema, &[]).unwrap();
        let mut out = Vec::new();
        compiled.to_json(&datum(schema, value), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn logical_types_are_spelled_out() {
        let schema = r#"{"type":"record","name":"T","namespace":"x","fields":[
            {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
            {"name":"born","type":{"type":"int","logicalType":"date"}},
            {"name":"t_ms","type":{"type":"int","logicalType":"time-millis"}},
            {"name":"t_us","type":{"type":"long","logicalType":"time-micros"}},
            {"name":"ts_ms","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"ts_us","type":{"type":"long","logicalType":"timestamp-micros"}},
            {"name":"lts","type":{"type":"long","logicalType":"local-timestamp-micros"}},
            {"name":"uid","type":{"type":"string","logicalType":"uuid"}},
            {"name":"opt","type":["null","string"],"default":null},
            {"name":"e","type":{"type":"enum","name":"Color","symbols":["RED","GREEN"]}},
            {"name":"tags","type":{"type":"array","items":"string"}},
            {"name":"m","type":{"type":"map","values":"long"}},
            {"name":"raw","type":"bytes"},
            {"name":"f","type":"float"},
            {"name":"fx","type":{"type":"fixed","name":"Money","size":4,"logicalType":"decimal","precision":8,"scale":3}}
        ]}"#;
        let uid = apache_avro::Uuid::parse_str("67e55044-10b1-426f-9247-bb680e5fe0c8").unwrap();
        let value = Value::Record(vec![
            (
                "price".into(),
                Value::Decimal(apache_avro::Decimal::from(vec![0xFBu8, 0x2E])),
            ),
            ("born".into(), Value::Date(-165)),
            ("t_ms".into(), Value::TimeMillis(3_723_004)),
            ("t_us".into(), Value::TimeMicros(86_399_999_999)),
            ("ts_ms".into(), Value::TimestampMillis(1_704_164_645_123)),
            ("ts_us".into(), Value::TimestampMicros(1_704_164_645_123_456)),
            ("lts".into(), Value::LocalTimestampMicros(1_704_164_645_000_001)),
            ("uid".into(), Value::Uuid(uid)),
            ("opt".into(), Value::Union(1, Box::new(Value::String("x\ty".into())))),
            ("e".into(), Value::Enum(1, "GREEN".into())),
            ("tags".into(), Value::Array(vec![Value::String("a".into())])),
            (
                "m".into(),
                Value::Map([("b".to_owned(), Value::Long(2)), ("a".to_owned(), Value::Long(1))].into()),
            ),
            ("raw".into(), Value::Bytes(vec![0, 255])),
            ("f".into(), Value::Float(0.1)),
            (
                "fx".into(),
                Value::Decimal(apache_avro::Decimal::from(vec![0u8, 0, 0x30, 0x39])),
            ),
        ]);
        assert_eq!(
            json(schema, value),
            r#"{"price":-12.34,"born":"1969-07-20","t_ms":"01:02:03.004","t_us":"23:59:59.999999","ts_ms":"2024-01-02T03:04:05.123Z","ts_us":"2024-01-02T03:04:05.123456Z","lts":"2024-01-02T03:04:05.000001","uid":"67e55044-10b1-426f-9247-bb680e5fe0c8","opt":"x\ty","e":"GREEN","tags":["a"],"m":{"a":1,"b":2},"raw":"AP8=","f":0.1,"fx":12.345}"#
        );
    }

    #[test]
    fn connect_names_decide_what_plain_numbers_mean() {
        // As Confluent's AvroConverter writes Debezium's types: plain int/long
        // with connect.name, the Decimal with logicalType and parameters.
        let schema = r#"{"type":"record","name":"Value","namespace":"dbserver1.inventory.typed","fields":[
            {"name":"born","type":[ "null", {"type":"int","connect.version":1,"connect.name":"io.debezium.time.Date"}],"default":null},
            {"name":"t_us","type":{"type":"long","connect.version":1,"connect.name":"io.debezium.time.MicroTime"}},
            {"name":"ts_ms","type":{"type":"long","connect.version":1,"connect.name":"io.debezium.time.Timestamp"}},
            {"name":"ts_ns","type":{"type":"long","connect.version":1,"connect.name":"io.debezium.time.NanoTimestamp"}},
            {"name":"amount","type":{"type":"record","name":"VariableScaleDecimal","namespace":"io.debezium.data","fields":[
                {"name":"scale","type":"int"},{"name":"value","type":"bytes"}],
                "connect.doc":"Variable scaled decimal","connect.version":1,"connect.name":"io.debezium.data.VariableScaleDecimal"}},
            {"name":"doc","type":{"type":"string","connect.version":1,"connect.name":"io.debezium.data.Json"}},
            {"name":"plain","type":"long"}
        ]}"#;
        let value = Value::Record(vec![
            ("born".into(), Value::Union(1, Box::new(Value::Int(19_724)))),
            ("t_us".into(), Value::Long(3_723_000_004)),
            ("ts_ms".into(), Value::Long(1_704_164_645_123)),
            ("ts_ns".into(), Value::Long(1_704_164_645_123_456_789)),
            (
                "amount".into(),
                Value::Record(vec![
                    ("scale".into(), Value::Int(3)),
                    ("value".into(), Value::Bytes(vec![0x30, 0x39])),
                ]),
            ),
            ("doc".into(), Value::String(r#"{"a": [1, "é"]}"#.into())),
            ("plain".into(), Value::Long(19_724)),
        ]);
        assert_eq!(
            json(schema, value),
            r#"{"born":"2024-01-02","t_us":"01:02:03.000004","ts_ms":"2024-01-02T03:04:05.123","ts_ns":"2024-01-02T03:04:05.123456789","amount":12.345,"doc":{"a": [1, "é"]},"plain":19724}"#
        );
    }

    #[test]
    fn recursive_and_referenced_names_resolve() {
        let node = r#"{"type":"record","name":"Node","namespace":"t","fields":[
            {"name":"v","type":{"type":"int","logicalType":"date"}},
            {"name":"next","type":["null","Node"],"default":null}]}"#;
        let value = Value::Record(vec![
            ("v".into(), Value::Date(0)),
            (
                "next".into(),
                Value::Union(
                    1,
                    Box::new(Value::Record(vec![
                        ("v".into(), Value::Date(1)),
                        ("next".into(), Value::Union(0, Box::new(Value::Null))),
                    ])),
                ),
            ),
        ]);
        assert_eq!(
            json(node, value),
            r#"{"v":"1970-01-01","next":{"v":"1970-01-02","next":null}}"#
        );
        // A schema naming a type from a referenced schema.
        let outer = r#"{"type":"record","name":"Outer","namespace":"t","fields":[{"name":"n","type":"t.Node"}]}"#;
        let compiled = AvroSchema::compile(outer, &[node.to_owned()]).unwrap();
        let (full, referenced) = Schema::parse_str_with_list(outer, [node]).unwrap();
        let bytes = apache_avro::to_avro_datum_schemata(
            &full,
            referenced.iter().collect(),
            Value::Record(vec![(
                "n".into(),
                Value::Record(vec![
                    ("v".into(), Value::Date(2)),
                    ("next".into(), Value::Union(0, Box::new(Value::Null))),
                ]),
            )]),
        )
        .unwrap();
        let mut out = Vec::new();
        compiled.to_json(&bytes, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"n":{"v":"1970-01-03","next":null}}"#
        );
    }

    #[test]
    fn top_level_fields_become_typed_columns() {
        let schema = r#"{"type":"record","name":"T","fields":[
            {"name":"id","type":"long"},
            {"name":"n","type":"int"},
            {"name":"name","type":["null","string"],"default":null},
            {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
            {"name":"born","type":{"type":"int","logicalType":"date"}},
            {"name":"t","type":{"type":"long","logicalType":"time-micros"}},
            {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"lts","type":{"type":"long","logicalType":"local-timestamp-micros"}},
            {"name":"uid","type":{"type":"string","logicalType":"uuid"}},
            {"name":"e","type":{"type":"enum","name":"E","symbols":["A"]}},
            {"name":"tags","type":{"type":"array","items":"string"}},
            {"name":"inner","type":{"type":"record","name":"I","fields":[]}},
            {"name":"either","type":["int","string"]},
            {"name":"raw","type":"bytes"},
            {"name":"ok","type":"boolean"},
            {"name":"d","type":"double"},
            {"name":"dbz","type":{"type":"int","connect.name":"io.debezium.time.Date"}}
        ]}"#;
        let want = [
            ("id", "bigint"),
            ("n", "integer"),
            ("name", "text"),
            ("price", "numeric(10,2)"),
            ("born", "date"),
            ("t", "time"),
            ("ts", "timestamptz"),
            ("lts", "timestamp"),
            ("uid", "uuid"),
            ("e", "text"),
            ("tags", "jsonb"),
            ("inner", "jsonb"),
            ("either", "jsonb"),
            ("raw", "bytea"),
            ("ok", "boolean"),
            ("d", "double precision"),
            ("dbz", "date"),
        ];
        assert_columns(columns(schema).unwrap(), &want);
        assert!(columns(r#""string""#).unwrap_err().contains("not a record"));
    }

    #[test]
    fn bad_data_is_an_error_not_a_panic() {
        let schema = r#"{"type":"record","name":"T","fields":[{"name":"s","type":"string"}]}"#;
        let compiled = AvroSchema::compile(schema, &[]).unwrap();
        let mut out = Vec::new();
        // A string length far beyond the datum.
        let e = compiled.to_json(&[0xfe, 0xff, 0xff, 0xff, 0x0f], &mut out).unwrap_err();
        assert!(e.contains("does not decode"), "{e}");
        let e = compiled.to_json(&[0x02, b'a', 0x00], &mut out).unwrap_err();
        assert!(e.contains("1 bytes left over"), "{e}");
        assert!(AvroSchema::compile("{", &[])
            .unwrap_err()
            .contains("not a valid Avro schema"));
    }
}
