//! Debezium's change-event envelope (`envelope = "debezium"`): `op` `c`,
//! `r` (snapshot read) and `u` upsert the `after` image; `d` deletes by the
//! key, read from `before` or else from the Kafka key; the tombstone
//! Debezium writes after a delete is skipped; `source` is what `@source`
//! columns read.
//!
//! Debezium's JSON comes with or without Kafka Connect's
//! `{"schema": …, "payload": …}` wrapper. With it, the schema names decide
//! what numbers mean ([`Semantic`]) and the payload is rewritten with those
//! spelled out; without it the payload is read as it is, and the row
//! encoder refuses bare numbers in temporal columns (days? milliseconds?
//! microseconds? only a schema can tell). Debezium's Avro output arrives
//! here already rewritten by [`super::avro`].
//!
//! Events a sink cannot apply are refused with the reason: schema-change
//! and transaction-metadata events (their topics must not feed a
//! pipeline), heartbeats, truncates and logical-decoding messages.

use std::borrow::Cow;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value as Json;

use super::semantic::Semantic;
use super::text;

/// What one change event asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change<'a> {
    /// Insert or update this row image; `source` is the event's `source` block.
    Upsert {
        after: Cow<'a, [u8]>,
        source: Option<Cow<'a, [u8]>>,
    },
    /// Delete the row these key columns identify: the `before` image, or
    /// (`None`: Debezium sent none) the Kafka key.
    Delete { before: Option<Cow<'a, [u8]>> },
    /// The tombstone after a delete: nothing to do.
    Skip,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    schema: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(borrow)]
    before: Option<&'a RawValue>,
    #[serde(borrow)]
    after: Option<&'a RawValue>,
    #[serde(borrow)]
    source: Option<&'a RawValue>,
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ddl: Option<&'a RawValue>,
    #[serde(borrow, rename = "tableChanges")]
    table_changes: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    data_collections: Option<&'a RawValue>,
}

/// Reads a change event. `value` is the decoded record value (`None`: a
/// tombstone); `connect_json` says it is Connect JSON, which may carry a
/// `schema`.
pub(crate) fn change(value: Option<Cow<'_, [u8]>>, connect_json: bool) -> Result<Change<'_>, String> {
    let Some(value) = value else {
        return Ok(Change::Skip);
    };
    match value {
        Cow::Borrowed(doc) => read(doc, connect_json, &|s| Cow::Borrowed(s)),
        Cow::Owned(doc) => read(&doc, connect_json, &|s| Cow::Owned(s.to_vec())),
    }
}

fn read<'d, 'a>(
    doc: &'d [u8],
    connect_json: bool,
    keep: &dyn Fn(&'d [u8]) -> Cow<'a, [u8]>,
) -> Result<Change<'a>, String> {
    let text = std::str::from_utf8(doc).map_err(|e| format!("the change event is not valid UTF-8: {e}"))?;
    let event: Event<'d> =
        serde_json::from_str(text).map_err(|e| format!("the change event is not a JSON object: {e}"))?;
    if connect_json && event.op.is_none() {
        if let (Some(schema), Some(payload)) = (event.schema, event.payload) {
            // Connect JSON with its schema: rewrite the payload with the
            // schema's meaning spelled out, then read that.
            let rewritten = with_schema(schema, payload)?;
            if rewritten.as_slice() == b"null" {
                return Ok(Change::Skip);
            }
            return read(&rewritten, false, &|s| Cow::Owned(s.to_vec()));
        }
    }
    let op = match event.op.as_deref() {
        Some(op) => op,
        None if event.ddl.is_some() || event.table_changes.is_some() => {
            return Err(
                "a Debezium schema-change event: the schema-change topic must not feed a pipeline \
                        (list only the table topics)"
                    .to_owned(),
            )
        }
        None if event.status.is_some() || event.data_collections.is_some() => {
            return Err(
                "a Debezium transaction-metadata event: the transaction topic must not feed a pipeline".to_owned(),
            )
        }
        None => return Err("not a Debezium change event: it has no `op`".to_owned()),
    };
    match op {
        "c" | "r" | "u" => {
            let after = event
                .after
                .ok_or_else(|| format!("a Debezium {op:?} event without an `after` image"))?;
            Ok(Change::Upsert {
                after: keep(after.get().as_bytes()),
                source: event.source.map(|s| keep(s.get().as_bytes())),
            })
        }
        "d" => Ok(Change::Delete {
            before: event.before.map(|b| keep(b.get().as_bytes())),
        }),
        "t" => Err("a Debezium truncate event: sluice does not apply truncates".to_owned()),
        "m" => Err("a Debezium logical-decoding message: there is no row to write".to_owned()),
        other => Err(format!("a Debezium event with an unknown op {other:?}")),
    }
}

/// A Connect JSON payload rewritten by its schema (see [`render`]).
fn with_schema(schema: &RawValue, payload: &RawValue) -> Result<Vec<u8>, String> {
    let schema: Json = serde_json::from_str(schema.get()).map_err(|e| format!("the event's schema: {e}"))?;
    let payload: Json = serde_json::from_str(payload.get()).map_err(|e| format!("the event's payload: {e}"))?;
    let mut out = Vec::with_capacity(payload.to_string().len());
    render(&mut out, &schema, &payload)?;
    Ok(out)
}

/// Rewrites a Connect JSON key (`{"schema", "payload"}`) to its payload
/// by the same rules; any other key is returned as it is.
pub(crate) fn connect_key(key: Cow<'_, [u8]>) -> Result<Cow<'_, [u8]>, String> {
    #[derive(Deserialize)]
    struct Wrapped<'a> {
        #[serde(borrow)]
        schema: Option<&'a RawValue>,
        #[serde(borrow)]
        payload: Option<&'a RawValue>,
    }
    let rewritten = match serde_json::from_slice::<Wrapped<'_>>(&key) {
        Ok(Wrapped {
            schema: Some(schema),
            payload: Some(payload),
        }) => with_schema(schema, payload)?,
        _ => return Ok(key),
    };
    Ok(Cow::Owned(rewritten))
}

/// Writes `v` as JSON, with every value whose schema has a semantic name
/// spelled out (see [`Semantic`]).
fn render(out: &mut Vec<u8>, schema: &Json, v: &Json) -> Result<(), String> {
    if v.is_null() {
        out.extend_from_slice(b"null");
        return Ok(());
    }
    let name = schema.get("name").and_then(Json::as_str);
    if let Some(semantic) = name.and_then(|n| Semantic::named(n, schema.get("parameters"))) {
        let field = schema.get("field").and_then(Json::as_str).unwrap_or("a value");
        let why = |e: String| format!("`{field}` ({}): {e}", name.unwrap_or_default());
        return match (semantic, v) {
            (Semantic::VariableScaleDecimal, Json::Object(o)) => {
                let scale = o.get("scale").and_then(Json::as_i64);
                let bytes = o.get("value").and_then(Json::as_str).map(base64_bytes);
                match (scale, bytes) {
                    (Some(scale), Some(Ok(b))) => text::decimal(out, &b, scale).map_err(why),
                    _ => Err(why("expected {\"scale\": int, \"value\": base64}".to_owned())),
                }
            }
            (Semantic::Decimal { .. }, Json::String(b64)) => {
                semantic.bytes(out, &base64_bytes(b64).map_err(why)?).map_err(why)
            }
            (Semantic::Json, Json::String(s)) => semantic.string(out, s).map_err(why),
            (_, Json::Number(n)) => {
                let i: i64 = n
                    .as_str()
                    .parse()
                    .map_err(|_| why(format!("expected an integer, found {n}")))?;
                semantic.integer(out, i).map_err(why)
            }
            _ => Err(why(format!("unexpected value {v}"))),
        };
    }
    match (schema.get("type").and_then(Json::as_str), v) {
        (Some("struct"), Json::Object(o)) => {
            out.push(b'{');
            let fields = schema
                .get("fields")
                .and_then(Json::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut first = true;
            for field in fields {
                let Some(name) = field.get("field").and_then(Json::as_str) else {
                    continue;
                };
                if !first {
                    out.push(b',');
                }
                first = false;
                text::string(out, name);
                out.push(b':');
                render(out, field, o.get(name).unwrap_or(&Json::Null))?;
            }
            out.push(b'}');
            Ok(())
        }
        (Some("array"), Json::Array(items)) => {
            let item = schema.get("items").unwrap_or(&Json::Null);
            out.push(b'[');
            for (k, v) in items.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                render(out, item, v)?;
            }
            out.push(b']');
            Ok(())
        }
        (Some("map"), Json::Object(o)) => {
            let values = schema.get("values").unwrap_or(&Json::Null);
            out.push(b'{');
            for (k, (key, v)) in o.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                text::string(out, key);
                out.push(b':');
                render(out, values, v)?;
            }
            out.push(b'}');
            Ok(())
        }
        _ => serde_json::to_writer(&mut *out, v).map_err(|e| e.to_string()),
    }
}

fn base64_bytes(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("not base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(c: &[u8]) -> String {
        String::from_utf8(c.to_vec()).unwrap()
    }

    #[test]
    fn ops_map_to_upserts_deletes_and_skips() {
        let create = br#"{"before":null,"after":{"id":1,"name":"a"},"source":{"ts_ms":5,"lsn":7},"op":"c","ts_ms":6}"#;
        let Change::Upsert { after, source } = change(Some(Cow::Borrowed(&create[..])), true).unwrap() else {
            panic!()
        };
        assert!(matches!(after, Cow::Borrowed(_)), "no copy without a schema");
        assert_eq!(text_of(&after), r#"{"id":1,"name":"a"}"#);
        assert_eq!(text_of(&source.unwrap()), r#"{"ts_ms":5,"lsn":7}"#);
        let delete = br#"{"before":{"id":1,"name":"a"},"after":null,"source":{},"op":"d"}"#;
        assert_eq!(
            change(Some(Cow::Borrowed(&delete[..])), true).unwrap(),
            Change::Delete {
                before: Some(Cow::Borrowed(&br#"{"id":1,"name":"a"}"#[..]))
            }
        );
        // Without `before`: the decoder falls back to the Kafka key.
        let delete = br#"{"before":null,"after":null,"op":"d"}"#;
        assert_eq!(
            change(Some(Cow::Borrowed(&delete[..])), true).unwrap(),
            Change::Delete { before: None }
        );
        assert_eq!(change(None, true).unwrap(), Change::Skip);
    }

    #[test]
    fn what_cannot_be_applied_is_refused_by_name() {
        let cases: [(&[u8], &str); 6] = [
            (br#"{"source":{},"ts_ms":1,"databaseName":"inventory","ddl":"CREATE TABLE t (id int)","tableChanges":[]}"#, "schema-change"),
            (br#"{"status":"BEGIN","id":"571:53195829","event_count":null,"data_collections":null,"ts_ms":1}"#, "transaction-metadata"),
            (br#"{"ts_ms":1}"#, "no `op`"),
            (br#"{"op":"t","source":{}}"#, "truncate"),
            (br#"{"op":"m","source":{}}"#, "logical-decoding message"),
            (br#"{"op":"c","after":null}"#, "without an `after`"),
        ];
        for (doc, want) in cases {
            let e = change(Some(Cow::Borrowed(doc)), true).unwrap_err();
            assert!(e.contains(want), "{e} should say {want}");
        }
        assert!(change(Some(Cow::Borrowed(&b"[1]"[..])), true)
            .unwrap_err()
            .contains("not a JSON object"));
    }

    #[test]
    fn a_connect_schema_decides_what_numbers_mean() {
        let event = br#"{"schema":{"type":"struct","name":"x.Envelope","fields":[
            {"type":"struct","optional":true,"name":"x.Value","field":"after","fields":[
              {"type":"int32","optional":false,"field":"id"},
              {"type":"int32","optional":true,"name":"io.debezium.time.Date","version":1,"field":"born"},
              {"type":"int64","optional":true,"name":"io.debezium.time.MicroTimestamp","version":1,"field":"ts_us"},
              {"type":"int64","optional":true,"name":"io.debezium.time.MicroTime","version":1,"field":"t_us"},
              {"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","version":1,
               "parameters":{"scale":"2","connect.decimal.precision":"10"},"field":"price"},
              {"type":"struct","optional":true,"name":"io.debezium.data.VariableScaleDecimal","version":1,
               "fields":[{"type":"int32","optional":false,"field":"scale"},{"type":"bytes","optional":false,"field":"value"}],
               "field":"amount"},
              {"type":"string","optional":true,"name":"io.debezium.data.Json","version":1,"field":"doc"},
              {"type":"string","optional":true,"name":"io.debezium.time.ZonedTimestamp","version":1,"field":"ts_tz"}
            ]},
            {"type":"struct","optional":false,"name":"io.debezium.connector.postgresql.Source","field":"source","fields":[
              {"type":"int64","optional":false,"field":"ts_ms"}]},
            {"type":"string","optional":false,"field":"op"}]},
          "payload":{"before":null,"after":{"id":1,"born":-165,"ts_us":1704164645123456,"t_us":86399999999,
            "price":"+y4=","amount":{"scale":3,"value":"MDk="},"doc":"{\"a\": 1}","ts_tz":"2024-01-02T03:04:05.123456Z"},
            "source":{"ts_ms":1704164645000},"op":"c"}}"#;
        let Change::Upsert { after, source } = change(Some(Cow::Borrowed(&event[..])), true).unwrap() else {
            panic!()
        };
        assert_eq!(
            text_of(&after),
            r#"{"id":1,"born":"1969-07-20","ts_us":"2024-01-02T03:04:05.123456","t_us":"23:59:59.999999","price":-12.34,"amount":12.345,"doc":{"a": 1},"ts_tz":"2024-01-02T03:04:05.123456Z"}"#
        );
        assert_eq!(text_of(&source.unwrap()), r#"{"ts_ms":1704164645000}"#);
        // The same wrapper on a key.
        let key = br#"{"schema":{"type":"struct","fields":[{"type":"int32","optional":false,"field":"id"}],"optional":false,"name":"x.Key"},"payload":{"id":1}}"#;
        assert_eq!(text_of(&connect_key(Cow::Borrowed(&key[..])).unwrap()), r#"{"id":1}"#);
        assert_eq!(text_of(&connect_key(Cow::Borrowed(&b"7"[..])).unwrap()), "7");
        // A bad semantic value names the field.
        let bad = br#"{"schema":{"type":"struct","fields":[{"type":"struct","field":"after","fields":[
            {"type":"int32","name":"io.debezium.time.Date","field":"born"}]},{"type":"string","field":"op"}]},
            "payload":{"after":{"born":"x"},"op":"c"}}"#;
        let e = change(Some(Cow::Borrowed(&bad[..])), true).unwrap_err();
        assert!(e.contains("`born` (io.debezium.time.Date)"), "{e}");
    }
}
