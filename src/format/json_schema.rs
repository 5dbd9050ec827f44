//! JSON Schema, as registered for `json_schema` topics: the columns its
//! object's properties give a pipeline that omits `columns`.

use serde_json::{Map, Value as Json};

use super::avro::FieldColumn;

/// One column per property of the schema's root object (a root `$ref` to
/// a local definition followed), typed as sluice writes the property (see
/// [`sql_type`]).
pub(crate) fn columns(text: &str) -> Result<Vec<FieldColumn>, String> {
    let root: Json = serde_json::from_str(text).map_err(|e| format!("not a valid JSON Schema: {e}"))?;
    let object = resolve(&root, &root)?;
    let properties = match object.get("properties") {
        Some(Json::Object(p)) if is_object(object) => p,
        _ => {
            return Err(
                "the schema does not describe an object with `properties`: it has no fields to be columns".to_owned(),
            )
        }
    };
    properties
        .iter()
        .map(|(name, property)| {
            Ok(FieldColumn {
                name: name.clone(),
                sql_type: sql_type(resolve(&root, property)?).to_owned(),
            })
        })
        .collect()
}

fn is_object(schema: &Map<String, Json>) -> bool {
    match schema.get("type") {
        None => true,
        Some(Json::String(t)) => t == "object",
        Some(Json::Array(types)) => types.iter().any(|t| t == "object"),
        Some(_) => false,
    }
}

/// A schema with a local `$ref` (`#/definitions/…`, `#/$defs/…`) followed
/// (a few levels at most: a cycle is an error).
fn resolve<'a>(root: &'a Json, schema: &'a Json) -> Result<&'a Map<String, Json>, String> {
    let mut at = schema;
    for _ in 0..16 {
        let object = match at {
            Json::Object(o) => o,
            // `true` allows anything: no type to go by.
            _ => return Ok(EMPTY.get_or_init(Map::new)),
        };
        match object.get("$ref").and_then(Json::as_str) {
            None => return Ok(object),
            Some(reference) => {
                let pointer = reference.strip_prefix('#').ok_or_else(|| {
                    format!("the schema refers to {reference:?}, outside itself: columns need a self-contained schema")
                })?;
                at = root
                    .pointer(pointer)
                    .ok_or_else(|| format!("the schema's $ref {reference:?} points at nothing"))?;
            }
        }
    }
    Err("the schema's $refs go round in a cycle".to_owned())
}

static EMPTY: std::sync::OnceLock<Map<String, Json>> = std::sync::OnceLock::new();

/// The SQL type of a property: its one non-null `type` (with `format`
/// for strings, or Kafka Connect's `connect.type` annotation when there);
/// objects, arrays, several types and compositions (`oneOf`, …) are
/// `jsonb`. A JSON `number` is `numeric`: the digits as the producer wrote them.
fn sql_type(schema: &Map<String, Json>) -> &'static str {
    let connect = schema.get("connect.type").and_then(Json::as_str);
    match connect {
        Some("int8" | "int16") => return "smallint",
        Some("int32") => return "integer",
        Some("int64") => return "bigint",
        Some("float32") => return "real",
        Some("float64") => return "double precision",
        Some("bytes") => return "bytea",
        _ => {}
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Json::String(t)) => vec![t.as_str()],
        Some(Json::Array(ts)) => ts.iter().filter_map(Json::as_str).filter(|t| *t != "null").collect(),
        _ => Vec::new(),
    };
    match types.as_slice() {
        ["integer"] => "bigint",
        ["number"] => "numeric",
        ["boolean"] => "boolean",
        ["string"] => match schema.get("format").and_then(Json::as_str) {
            Some("date") => "date",
            Some("date-time") => "timestamptz",
            // RFC 3339 `full-time` carries an offset.
            Some("time") => "timetz",
            Some("uuid") => "uuid",
            Some("ipv4" | "ipv6") => "inet",
            Some("duration") => "interval",
            _ => "text",
        },
        _ => "jsonb",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_become_typed_columns() {
        let schema = r##"{
          "$schema": "http://json-schema.org/draft-07/schema#",
          "$ref": "#/definitions/Person",
          "definitions": {
            "Person": {"type": "object", "properties": {
              "id": {"type": "integer"},
              "name": {"type": ["null", "string"]},
              "born": {"type": "string", "format": "date"},
              "at": {"type": "string", "format": "date-time"},
              "wake": {"type": "string", "format": "time"},
              "uid": {"type": "string", "format": "uuid"},
              "ip": {"type": "string", "format": "ipv6"},
              "every": {"type": "string", "format": "duration"},
              "amount": {"type": "number"},
              "ratio": {"type": "number", "connect.type": "float64"},
              "small": {"type": "integer", "connect.type": "int16"},
              "ok": {"type": "boolean"},
              "meta": {"type": "object"},
              "tags": {"type": "array", "items": {"type": "string"}},
              "either": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
              "two": {"type": ["string", "integer"]},
              "address": {"$ref": "#/definitions/Address"},
              "zip": {"$ref": "#/definitions/Zip"}
            }},
            "Address": {"type": "object"},
            "Zip": {"type": "string"}
          }
        }"##;
        let mut want = [
            ("id", "bigint"),
            ("name", "text"),
            ("born", "date"),
            ("at", "timestamptz"),
            ("wake", "timetz"),
            ("uid", "uuid"),
            ("ip", "inet"),
            ("every", "interval"),
            ("amount", "numeric"),
            ("ratio", "double precision"),
            ("small", "smallint"),
            ("ok", "boolean"),
            ("meta", "jsonb"),
            ("tags", "jsonb"),
            ("either", "jsonb"),
            ("two", "jsonb"),
            ("address", "jsonb"),
            ("zip", "text"),
        ];
        // serde_json's map keeps its keys sorted.
        want.sort();
        crate::format::avro::assert_columns(columns(schema).unwrap(), &want);
    }

    #[test]
    fn a_schema_without_properties_or_with_an_outside_ref_is_refused() {
        assert!(columns(r#"{"type": "string"}"#).unwrap_err().contains("no fields"));
        assert!(columns(r#"{"type": "object"}"#).unwrap_err().contains("no fields"));
        assert!(columns(r#"{"$ref": "other.json#/x"}"#)
            .unwrap_err()
            .contains("outside itself"));
        assert!(columns(r##"{"$ref": "#/a", "a": {"$ref": "#/a"}}"##)
            .unwrap_err()
            .contains("cycle"));
        assert!(columns("{").unwrap_err().contains("not a valid JSON Schema"));
    }
}
