//! Record formats end to end: records made by the *official* Confluent
//! serializers (Python `confluent-kafka`, `tests/support/produce.py`)
//! against a registry-compatible server (`tests/support/registry.py`),
//! and Debezium change events (`tests/fixtures/debezium`), checked in the
//! table value by value.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::harness::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where `scripts/services.sh` installed confluent-kafka and friends.
pub(crate) fn python_path() -> String {
    std::env::var("SLUICE_TEST_PYTHONPATH").expect(
        "SLUICE_TEST_PYTHONPATH is not set: run the tests with scripts/test.sh, which installs the Python serializers",
    )
}

/// The registry-compatible server, killed on drop.
pub(crate) struct Registry {
    child: Child,
    pub(crate) url: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        Self::start_with(&[])
    }

    /// A registry that answers only requests with HTTP basic auth as `user` and `password`.
    pub(crate) fn start_with_auth(user: &str, password: &str) -> Registry {
        Self::start_with(&["--user", user, "--password", password])
    }

    fn start_with(args: &[&str]) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port_file = dir.path().join("port");
        let child = Command::new("python3")
            .arg(root().join("tests/support/registry.py"))
            .args(["--port", "0", "--port-file"])
            .arg(&port_file)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tests/support/registry.py");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                if let Ok(p) = p.trim().parse::<u16>() {
                    break p;
                }
            }
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Registry {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    fn post(&self, path: &str, body: &Value) -> String {
        let addr = self.url.trim_start_matches("http://");
        let body = body.to_string();
        let mut s = std::net::TcpStream::connect(addr).expect("connect to the registry");
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    }

    fn outage(&self, down: bool) {
        let answer = self.post("/_test/outage", &json!({"down": down, "mode": "503"}));
        assert!(answer.starts_with("HTTP/1.") && answer.contains(" 200 "), "{answer}");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Produces with `tests/support/produce.py` (the official serializers).
pub(crate) fn produce_spec(spec: &Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spec.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    let out = Command::new("python3")
        .arg(root().join("tests/support/produce.py"))
        .arg(&path)
        .env("PYTHONPATH", python_path())
        .output()
        .expect("run tests/support/produce.py");
    assert!(
        out.status.success(),
        "produce.py failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn text_rows(pool: &PgPool, sql: &str) -> Vec<Vec<Option<String>>> {
    use sqlx::Row as _;
    let rows = sqlx::query(sql).fetch_all(pool).await.expect(sql);
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.try_get::<Option<String>, _>(i).unwrap())
                .collect()
        })
        .collect()
}

async fn dead_letters(pool: &PgPool, topic: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT error FROM sluice.dead_letters WHERE topic = $1 ORDER BY \"offset\"")
        .bind(topic)
        .fetch_all(pool)
        .await
        .expect("dead letters")
}

fn registry_config(registry: &Registry) -> String {
    format!("\n[schema_registry]\nurl = \"{}\"\n", registry.url)
}

pub(crate) const ORDER_V1: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
  {"name":"id","type":"long"},
  {"name":"name","type":"string"},
  {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
  {"name":"born","type":{"type":"int","logicalType":"date"}},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-micros"}},
  {"name":"lts","type":{"type":"long","logicalType":"local-timestamp-millis"}},
  {"name":"t","type":{"type":"long","logicalType":"time-micros"}},
  {"name":"uid","type":{"type":"string","logicalType":"uuid"}},
  {"name":"tags","type":{"type":"array","items":"string"}},
  {"name":"raw","type":"bytes"}]}"#;

fn order_v2() -> String {
    ORDER_V1.replace(
        r#"{"name":"raw","type":"bytes"}]"#,
        r#"{"name":"raw","type":"bytes"},{"name":"note","type":["null","string"],"default":null}]"#,
    )
}

pub(crate) fn order(i: u64, v2: bool) -> Value {
    let sign = if i % 2 == 1 { "-" } else { "" };
    let mut v = json!({
        "id": i,
        "name": format!("n{i}\ttab"),
        "price": {"$decimal": format!("{sign}{i}.{:02}", i % 100)},
        "born": {"$date": if i % 2 == 0 { "1969-07-20" } else { "2024-02-29" }},
        "ts": {"$timestamp": "2024-01-02T03:04:05.123456Z"},
        "lts": {"$local_timestamp": "2024-01-02T03:04:05.123"},
        "t": {"$time": "23:59:59.999999"},
        "uid": {"$uuid": "67e55044-10b1-426f-9247-bb680e5fe0c8"},
        "tags": ["a", "é"],
        "raw": {"$bytes": "AP8="},
    });
    if v2 {
        v["note"] = if i % 3 == 0 {
            Value::Null
        } else {
            json!(format!("note {i}"))
        };
    }
    v
}

fn orders_spec(
    services: &Services,
    registry: &Registry,
    topic: &str,
    schema: &str,
    range: std::ops::Range<u64>,
) -> Value {
    let v2 = schema.contains("note");
    json!({
        "brokers": services.brokers,
        "topic": topic,
        "registry": {"url": registry.url},
        "key": {"format": "string"},
        "value": {"format": "avro", "schema": schema},
        "records": range.map(|i| json!({"key": format!("key-{i}"), "value": order(i, v2), "partition": (i % 3) as i32})).collect::<Vec<_>>(),
    })
}

/// Avro records of two schema versions land value by value; a registry
/// outage while sluice meets a schema it has not cached holds the
/// pipeline (nothing dead-lettered for it) until the registry is back;
/// records the registry cannot explain are dead letters with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_records_land_value_by_value_across_schema_versions_and_a_registry_outage() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let registry = Registry::start();
    let topic = unique("avro");
    let table = unique("avro_t");
    let group = unique("avro_g");
    create_topic(&services.brokers, &topic, 3).await;
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, name text, price numeric(10,2), born date, ts timestamptz, \
         lts timestamp, t time, uid uuid, tags jsonb, raw bytea, note text, k text)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let columns = r#"id = "/id"
name = "/name"
price = "/price"
born = "/born"
ts = "/ts"
lts = "/lts"
t = "/t"
uid = "/uid"
tags = "/tags"
raw = "/raw"
note = "/note"
k = "@key""#;
    let extra = "value_format = \"avro\"\nkey_format = \"string\"";
    let cfg = config(&services, &group, &topic, &table, columns, extra) + &registry_config(&registry);
    produce_spec(&orders_spec(&services, &registry, &topic, ORDER_V1, 0..200));
    // Two records the registry cannot explain: an unknown schema id, and
    // bytes that are not in the wire format at all.
    produce_records(&services.brokers, &topic, 0..2, 0, |i| match i {
        0 => ("bad".to_owned(), Some("\u{0}\u{0}\u{0}\u{27}\u{f}xyz".to_owned()), 0),
        _ => ("bad".to_owned(), Some("{\"id\": 1}".to_owned()), 1),
    });
    let mut first = Sluice::start(&cfg);
    await_rows(&pool, &table, 200, Duration::from_secs(60), || first.log_text()).await;
    let dead = eventually(Duration::from_secs(20), || async {
        dead_letters(&pool, &topic).await.len() == 2
    })
    .await;
    assert!(
        dead,
        "dead letters: {:?}\n{}",
        dead_letters(&pool, &topic).await,
        first.log_text()
    );
    let mut reasons = dead_letters(&pool, &topic).await;
    reasons.sort();
    assert!(
        reasons[0].contains("not in the Confluent wire format: the first byte is 0x7b"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("schema id 9999 is not in the schema registry"),
        "{reasons:?}"
    );
    // One schema fetched and cached, one id the registry does not know.
    let registry_status = first.status().expect("/status")["schema_registry"].clone();
    assert_eq!(registry_status["available"], true, "{registry_status}");
    assert_eq!(registry_status["cached_schemas"], 1, "{registry_status}");
    assert_eq!(
        registry_status["requests"],
        json!({"fetched": 1, "not_found": 1, "unavailable": 0}),
        "{registry_status}"
    );
    let metrics = http_get(&first.http_addr().unwrap(), "/metrics")
        .await
        .expect("/metrics")
        .1;
    assert!(
        metrics.contains("sluice_schema_registry_requests_total{outcome=\"fetched\"} 1\n"),
        "{metrics}"
    );
    first.sigterm();
    first.wait_timeout(Duration::from_secs(30)).expect("stops on SIGTERM");

    // Version 2 (a new optional field, a new schema id) while sluice is
    // down; then the registry goes down and sluice starts again.
    produce_spec(&orders_spec(&services, &registry, &topic, &order_v2(), 200..400));
    registry.outage(true);
    let second = first.restart("second.log");
    let held = eventually(Duration::from_secs(30), || async {
        second.log_text().matches("schema unavailable").count() >= 2
    })
    .await;
    assert!(held, "no hold was logged:\n{}", second.log_text());
    assert_eq!(
        count(&pool, &table).await,
        200,
        "nothing is written while the schema is unavailable"
    );
    let status = second.status().expect("/status");
    assert_eq!(status["schema_registry"]["available"], false, "{status}");
    assert!(
        status["unready_reasons"].as_array().unwrap().iter().any(|r| r
            .as_str()
            .unwrap()
            .starts_with("schema registry unavailable: schema id ")),
        "{status}"
    );
    assert_eq!(
        dead_letters(&pool, &topic).await.len(),
        2,
        "nothing is dead-lettered for an outage"
    );
    registry.outage(false);
    await_rows(&pool, &table, 400, Duration::from_secs(60), || second.log_text()).await;
    let settled = eventually(Duration::from_secs(20), || async {
        stored_offsets(&pool, &group, &topic)
            .await
            .iter()
            .map(|(_, o)| *o)
            .sum::<i64>()
            == 402
    })
    .await;
    assert!(
        settled,
        "stored offsets: {:?}",
        stored_offsets(&pool, &group, &topic).await
    );
    assert_eq!(count(&pool, &table).await, 400);
    assert_eq!(dead_letters(&pool, &topic).await.len(), 2);
    // After the outage: the version-2 schema fetched once, and only once.
    let registry_status = second.status().expect("/status")["schema_registry"].clone();
    assert_eq!(registry_status["available"], true, "{registry_status}");
    assert_eq!(registry_status["cached_schemas"], 1, "{registry_status}");
    assert_eq!(registry_status["requests"]["fetched"], 1, "{registry_status}");
    assert_eq!(registry_status["requests"]["not_found"], 0, "{registry_status}");

    let rows = text_rows(
        &pool,
        &format!(
            "SELECT id::text, name, price::text, born::text, (ts AT TIME ZONE 'UTC')::text, lts::text, t::text, uid::text, \
             tags::text, raw::text, note, k FROM {table} WHERE id IN (0, 7, 300, 301) ORDER BY {table}.id"
        ),
    )
    .await;
    let s = |v: &str| Some(v.to_owned());
    let common = |id: &str, name: &str, price: &str, born: &str, note: Option<String>, k: &str| {
        vec![
            s(id),
            s(name),
            s(price),
            s(born),
            s("2024-01-02 03:04:05.123456"),
            s("2024-01-02 03:04:05.123"),
            s("23:59:59.999999"),
            s("67e55044-10b1-426f-9247-bb680e5fe0c8"),
            s(r#"["a", "é"]"#),
            s("\\x00ff"),
            note,
            s(k),
        ]
    };
    assert_eq!(
        rows,
        vec![
            common("0", "n0\ttab", "0.00", "1969-07-20", None, "key-0"),
            common("7", "n7\ttab", "-7.07", "2024-02-29", None, "key-7"),
            common("300", "n300\ttab", "300.00", "1969-07-20", None, "key-300"),
            common("301", "n301\ttab", "-301.01", "2024-02-29", s("note 301"), "key-301"),
        ]
    );
    let notes: i64 = sqlx::query_scalar(&format!("SELECT count(note) FROM {table}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(notes, (200..400).filter(|i| i % 3 != 0).count() as i64);
    second.sigterm();
}

/// Debezium change events — JSON with its Connect schema, JSON without,
/// and Avro — applied as upserts: snapshot reads, creates, an update, a
/// delete and its tombstone; every temporal and decimal type checked in
/// the table against `tests/fixtures/debezium/expected.json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_change_events_apply_value_by_value() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let registry = Registry::start();
    let fixtures = root().join("tests/fixtures/debezium");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("expected.json")).unwrap()).unwrap();
    let typed = &expected["typed"];
    let lines = |name: &str| -> Vec<Value> {
        std::fs::read_to_string(fixtures.join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let ddl = |table: &str| {
        format!(
            "CREATE TABLE {table} (id integer PRIMARY KEY, name text, price numeric(10,2), amount numeric, born date, \
             t_ms time(3), t_us time, ts_ms timestamp(3), ts_us timestamp, ts_tz timestamptz, doc jsonb, uid uuid, \
             flag boolean, big bigint, src_lsn bigint, src_ts timestamptz)"
        )
    };
    let columns = r#"id = "/id"
name = "/name"
price = "/price"
amount = "/amount"
born = "/born"
t_ms = "/t_ms"
t_us = "/t_us"
ts_ms = "/ts_ms"
ts_us = "/ts_us"
ts_tz = "/ts_tz"
doc = "/doc"
uid = "/uid"
flag = "/flag"
big = "/big"
src_lsn = "@source/lsn""#;
    let mut runs = Vec::new();
    for variant in ["json-schema", "avro"] {
        let topic = unique(&format!("dbz_{}", variant.replace('-', "_")));
        let table = unique("dbz_t");
        let group = unique("dbz_g");
        create_topic(&services.brokers, &topic, 1).await;
        sqlx::query(&ddl(&table)).execute(&pool).await.unwrap();
        let mut extra = "mode = \"upsert\"\nkey = [\"id\"]\nenvelope = \"debezium\"".to_owned();
        if variant == "avro" {
            let schemas: Value =
                serde_json::from_str(&std::fs::read_to_string(fixtures.join("typed.avsc.json")).unwrap()).unwrap();
            let records: Vec<Value> = lines("typed.avro-records.jsonl")
                .into_iter()
                .map(|r| json!({"key": r["key"], "value": r["value"], "partition": 0}))
                .collect();
            produce_spec(&json!({
                "brokers": services.brokers,
                "topic": topic,
                "registry": {"url": registry.url},
                "key": {"format": "avro", "schema": schemas["key_schema"].to_string()},
                "value": {"format": "avro", "schema": schemas["value_schema"].to_string()},
                "records": records,
            }));
            extra += "\nvalue_format = \"avro\"\nkey_format = \"avro\"";
        } else {
            let events = lines("typed.json-schema.jsonl");
            produce_records(&services.brokers, &topic, 0..events.len() as u64, 0, |i| {
                let e = &events[i as usize];
                (
                    e["key"].to_string(),
                    (!e["value"].is_null()).then(|| e["value"].to_string()),
                    0,
                )
            });
        }
        let cfg = config(&services, &group, &topic, &table, columns, &extra) + &registry_config(&registry);
        let sluice = Sluice::start(&cfg);
        runs.push((topic, table, group, sluice));
    }
    let events = lines("typed.json-schema.jsonl").len() as i64;
    for (topic, table, group, sluice) in &runs {
        let settled = eventually(Duration::from_secs(60), || async {
            stored_offsets(&pool, group, topic)
                .await
                .iter()
                .map(|(_, o)| *o)
                .sum::<i64>()
                == events
        })
        .await;
        assert!(
            settled,
            "{topic}: stored {:?}\n{}",
            stored_offsets(&pool, group, topic).await,
            sluice.log_text()
        );
        assert_eq!(dead_letters(&pool, topic).await, Vec::<String>::new(), "{topic}");
        let got = text_rows(
            &pool,
            &format!(
                "SELECT id::text, name, price::text, amount::text, born::text, t_ms::text, t_us::text, \
                 ts_ms::text, ts_us::text, (ts_tz AT TIME ZONE 'UTC')::text || '+00', doc::text, uid::text, \
                 CASE WHEN flag THEN 't' WHEN NOT flag THEN 'f' END, big::text, src_lsn::text FROM {table} ORDER BY {table}.id"
            ),
        )
        .await;
        let want: Vec<Vec<Option<String>>> = typed["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut row: Vec<Option<String>> = [
                    "id", "name", "price", "amount", "born", "t_ms", "t_us", "ts_ms", "ts_us", "ts_tz", "doc", "uid",
                    "flag", "big",
                ]
                .iter()
                .map(|c| r[*c].as_str().map(str::to_owned))
                .collect();
                row.push(Some(r["@source"]["lsn"].to_string()));
                row
            })
            .collect();
        assert_eq!(got, want, "{topic}:\n{}", sluice.log_text());
        sluice.sigterm();
    }
}

/// Runs one pipeline over `records` (already produced to `topic`) until
/// its stored offsets cover `total` records; returns the rows of `select`.
async fn land(
    services: &Services,
    pool: &PgPool,
    registry: &Registry,
    (topic, table, columns, extra): (&str, &str, &str, &str),
    total: i64,
    select: &str,
) -> Vec<Vec<Option<String>>> {
    let group = unique("fmt_g");
    let cfg = config(services, &group, topic, table, columns, extra) + &registry_config(registry);
    let sluice = Sluice::start(&cfg);
    let settled = eventually(Duration::from_secs(60), || async {
        stored_offsets(pool, &group, topic)
            .await
            .iter()
            .map(|(_, o)| *o)
            .sum::<i64>()
            == total
    })
    .await;
    assert!(
        settled,
        "{topic}: stored {:?}\n{}",
        stored_offsets(pool, &group, topic).await,
        sluice.log_text()
    );
    sluice.sigterm();
    text_rows(pool, select).await
}

const ORDER_PROTO: &str = r#"
syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";
import "common/money.proto";
message Other { string x = 1; }
message Order {
  int64 id = 1;
  string name = 2;
  repeated string tags = 3;
  enum Status { NEW = 0; PAID = 1; }
  Status status = 4;
  google.protobuf.Timestamp at = 5;
  message Line { int32 qty = 1; string sku = 2; }
  Line line = 6;
  bytes raw = 7;
  common.Money price = 8;
  uint64 big = 9;
}
"#;

const MONEY_PROTO: &str = r#"
syntax = "proto3";
package common;
message Money { string currency = 1; int64 units = 2; }
"#;

/// Protobuf by the official `ProtobufSerializer` (the second message of
/// the file, so the message indexes matter; an import registered as a
/// schema reference; a well-known type): every field checked in the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_records_land_value_by_value() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let registry = Registry::start();
    let topic = unique("proto");
    let table = unique("proto_t");
    create_topic(&services.brokers, &topic, 2).await;
    // A Protobuf enum into a Postgres enum: checked against its labels.
    sqlx::query(&format!("CREATE TYPE {table}_status AS ENUM ('NEW', 'PAID')"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, name text, tags jsonb, status {table}_status, at timestamptz, \
         qty integer, line jsonb, raw bytea, price jsonb, big numeric, k text)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let records: Vec<Value> = (0..50u64)
        .map(|i| {
            let mut v = json!({
                "id": i.to_string(),
                "name": format!("o{i}"),
                "tags": ["x", "ü"],
                "status": if i % 2 == 0 { "NEW" } else { "PAID" },
                "at": "2024-01-02T03:04:05.123456Z",
                "line": {"qty": i, "sku": "s-1"},
                "raw": "AP8=",
                "price": {"currency": "EUR", "units": (i * 100).to_string()},
                "big": "18446744073709551615",
            });
            if i == 7 {
                // Unset fields: proto3 defaults, an absent message is NULL.
                v = json!({"id": "7"});
            }
            json!({"key": format!("k{i}"), "value": v, "partition": (i % 2) as i32})
        })
        .collect();
    produce_spec(&json!({
        "brokers": services.brokers,
        "topic": topic,
        "registry": {"url": registry.url},
        "key": {"format": "string"},
        "value": {"format": "protobuf", "schema": ORDER_PROTO, "message": "shop.Order",
                  "imports": {"common/money.proto": MONEY_PROTO}},
        "records": records,
    }));
    let columns = r#"id = "/id"
name = "/name"
tags = "/tags"
status = "/status"
at = "/at"
qty = "/line/qty"
line = "/line"
raw = "/raw"
price = "/price"
big = "/big"
k = "@key""#;
    let rows = land(
        &services,
        &pool,
        &registry,
        (
            &topic,
            &table,
            columns,
            "value_format = \"protobuf\"\nkey_format = \"string\"",
        ),
        50,
        &format!(
            "SELECT id::text, name, tags::text, status::text, (at AT TIME ZONE 'UTC')::text, qty::text, line::text, \
             raw::text, price::text, big::text, k FROM {table} WHERE id IN (6, 7) ORDER BY {table}.id"
        ),
    )
    .await;
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        rows,
        vec![
            vec![
                s("6"),
                s("o6"),
                s(r#"["x", "ü"]"#),
                s("NEW"),
                s("2024-01-02 03:04:05.123456"),
                s("6"),
                s(r#"{"qty": 6, "sku": "s-1"}"#),
                s("\\x00ff"),
                s(r#"{"units": 600, "currency": "EUR"}"#),
                s("18446744073709551615"),
                s("k6"),
            ],
            vec![
                s("7"),
                s(""),
                s("[]"),
                s("NEW"),
                None,
                None,
                None,
                s("\\x"),
                None,
                s("0"),
                s("k7"),
            ],
        ]
    );
    assert_eq!(count(&pool, &table).await, 50);
    assert_eq!(dead_letters(&pool, &topic).await, Vec::<String>::new());
}

/// JSON Schema by the official `JSONSerializer`: the framing is dropped and
/// the JSON read as usual; a date string lands as a date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_records_land_value_by_value() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let registry = Registry::start();
    let topic = unique("jsch");
    let table = unique("jsch_t");
    create_topic(&services.brokers, &topic, 1).await;
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, name text, born date, amount numeric(12,3), meta jsonb, \
         every interval, ip inet, net cidr, mac macaddr, at timetz)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let schema = r#"{"$schema":"http://json-schema.org/draft-07/schema#","title":"Person","type":"object",
        "properties":{"id":{"type":"integer"},"name":{"type":"string"},"born":{"type":"string","format":"date"},
        "amount":{"type":"number"},"meta":{"type":"object"},"every":{"type":"string"},"ip":{"type":"string"},
        "net":{"type":"string"},"mac":{"type":"string"},"at":{"type":"string"}},"required":["id"]}"#;
    let records: Vec<Value> = (0..20u64)
        .map(|i| {
            json!({"key": {"id": i}, "value": {"id": i, "name": format!("p\"{i}"), "born": "1969-07-20",
                "amount": 1234.5 + i as f64, "meta": {"a": [i, null]}, "every": "P1DT2H", "ip": "10.0.0.1/8",
                "net": "10.0.0.0/8", "mac": "08-00-2B-01-02-03", "at": "08:30:00.5+02:00"}})
        })
        .collect();
    produce_spec(&json!({
        "brokers": services.brokers,
        "topic": topic,
        "registry": {"url": registry.url},
        "key": {"format": "json"},
        "value": {"format": "json_schema", "schema": schema},
        "records": records,
    }));
    let rows = land(
        &services,
        &pool,
        &registry,
        (
            &topic,
            &table,
            "id = \"@key/id\"\nname = \"/name\"\nborn = \"/born\"\namount = \"/amount\"\nmeta = \"/meta\"\n\
             every = \"/every\"\nip = \"/ip\"\nnet = \"/net\"\nmac = \"/mac\"\nat = \"/at\"",
            "value_format = \"json_schema\"",
        ),
        20,
        &format!(
            "SELECT id::text, name, born::text, amount::text, meta::text, every::text, ip::text, net::text, \
             mac::text, at::text FROM {table} WHERE id = 3"
        ),
    )
    .await;
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        rows,
        vec![vec![
            s("3"),
            s("p\"3"),
            s("1969-07-20"),
            s("1237.500"),
            s(r#"{"a": [3, null]}"#),
            s("1 day 02:00:00"),
            s("10.0.0.1/8"),
            s("10.0.0.0/8"),
            s("08:00:2b:01:02:03"),
            s("08:30:00.5+02"),
        ]]
    );
    assert_eq!(count(&pool, &table).await, 20);
    assert_eq!(dead_letters(&pool, &topic).await, Vec::<String>::new());
}

/// Debezium's JSON without its schema (`schemas.enable=false`): the
/// envelope applies (upserts, the delete, the skipped tombstone), text,
/// numbers, booleans, UUIDs and zoned timestamps land as they are — and a
/// bare day count into a `date` column is refused, never guessed: each
/// such event is a dead letter with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_json_without_its_schema_applies_and_refuses_bare_temporal_numbers() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let registry = Registry::start();
    let fixtures = root().join("tests/fixtures/debezium");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("expected.json")).unwrap()).unwrap();
    let events: Vec<Value> = std::fs::read_to_string(fixtures.join("typed.json.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let columns =
        "id = \"/id\"\nname = \"/name\"\nts_tz = \"/ts_tz\"\nuid = \"/uid\"\nflag = \"/flag\"\nbig = \"/big\"";
    let extra = "mode = \"upsert\"\nkey = [\"id\"]\nenvelope = \"debezium\"";
    let mut tables = Vec::new();
    for with_born in [false, true] {
        let topic = unique("dbz_plain");
        let table = unique("dbz_plain_t");
        create_topic(&services.brokers, &topic, 1).await;
        sqlx::query(&format!(
            "CREATE TABLE {table} (id integer PRIMARY KEY, name text, ts_tz timestamptz, uid uuid, flag boolean, \
             big bigint, born date)"
        ))
        .execute(&pool)
        .await
        .unwrap();
        produce_records(&services.brokers, &topic, 0..events.len() as u64, 0, |i| {
            let e = &events[i as usize];
            (
                e["key"].to_string(),
                (!e["value"].is_null()).then(|| e["value"].to_string()),
                0,
            )
        });
        let columns = match with_born {
            true => format!("{columns}\nborn = \"/born\""),
            false => columns.to_owned(),
        };
        let rows = land(
            &services,
            &pool,
            &registry,
            (&topic, &table, &columns, extra),
            events.len() as i64,
            &format!(
                "SELECT id::text, name, (ts_tz AT TIME ZONE 'UTC')::text || '+00', uid::text, \
                 CASE WHEN flag THEN 't' WHEN NOT flag THEN 'f' END, big::text FROM {table} ORDER BY {table}.id"
            ),
        )
        .await;
        tables.push((topic, rows));
    }
    let want: Vec<Vec<Option<String>>> = expected["typed"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            ["id", "name", "ts_tz", "uid", "flag", "big"]
                .iter()
                .map(|c| r[*c].as_str().map(str::to_owned))
                .collect()
        })
        .collect();
    let (plain_topic, plain_rows) = &tables[0];
    assert_eq!(plain_rows, &want);
    assert_eq!(dead_letters(&pool, plain_topic).await, Vec::<String>::new());
    // With `born` mapped: every row image carrying a day count is refused.
    let refused = events
        .iter()
        .filter(|e| {
            matches!(e["value"]["op"].as_str(), Some("c" | "r" | "u")) && e["value"]["after"]["born"].is_number()
        })
        .count();
    let (born_topic, _) = &tables[1];
    let reasons = dead_letters(&pool, born_topic).await;
    assert_eq!(reasons.len(), refused, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("column `born` (date): a bare number") && r.contains("days or milliseconds")),
        "{reasons:?}"
    );
}

/// `columns` omitted on an Avro pipeline: every top-level field of the
/// topic's latest value schema becomes a column of the same name,
/// `auto_create` types them from the schema, and when records of a second
/// schema version with a new optional field arrive while sluice runs, it
/// drains, `auto_evolve` adds the field as a nullable column, and every
/// record of the new version lands with its field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_come_from_the_avro_schema_and_a_new_field_adds_a_column() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let registry = Registry::start();
    let topic = unique("avro_cols");
    let table = unique("avro_cols_t");
    let group = unique("avro_cols_g");
    create_topic(&services.brokers, &topic, 3).await;
    produce_spec(&orders_spec(&services, &registry, &topic, ORDER_V1, 0..50));
    let extra = "value_format = \"avro\"\nkey_format = \"string\"\nauto_create = true\nauto_evolve = true";
    let cfg = config(&services, &group, &topic, &table, "", extra) + &registry_config(&registry);
    let first = Sluice::start(&cfg);
    await_rows(&pool, &table, 50, Duration::from_secs(60), || first.log_text()).await;
    let types = |pool: PgPool| {
        let table = table.clone();
        async move {
            text_rows(
                &pool,
                &format!(
                    "SELECT attname::text, format_type(atttypid, atttypmod), \
                     CASE WHEN attnotnull THEN 'not null' ELSE 'null' END FROM pg_attribute \
                     WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
                ),
            )
            .await
        }
    };
    let s = |v: &str| Some(v.to_owned());
    let column = |name: &str, ty: &str| vec![s(name), s(ty), s("null")];
    let v1 = vec![
        column("born", "date"),
        column("id", "bigint"),
        column("lts", "timestamp without time zone"),
        column("name", "text"),
        column("price", "numeric(10,2)"),
        column("raw", "bytea"),
        column("t", "time without time zone"),
        column("tags", "jsonb"),
        column("ts", "timestamp with time zone"),
        column("uid", "uuid"),
    ];
    assert_eq!(types(pool.clone()).await, v1, "{}", first.log_text());
    let row = text_rows(
        &pool,
        &format!(
            "SELECT price::text, born::text, (ts AT TIME ZONE 'UTC')::text, lts::text, t::text, tags::text, raw::text \
             FROM {table} WHERE id = 7"
        ),
    )
    .await;
    assert_eq!(
        row,
        vec![vec![
            s("-7.07"),
            s("2024-02-29"),
            s("2024-01-02 03:04:05.123456"),
            s("2024-01-02 03:04:05.123"),
            s("23:59:59.999999"),
            s(r#"["a", "é"]"#),
            s("\\x00ff"),
        ]]
    );
    // Version 2 (a new optional field) while sluice runs: no record of it
    // is written without its field. Sluice drains, plans again (the column
    // is added) and goes on, in the same process.
    produce_spec(&orders_spec(&services, &registry, &topic, &order_v2(), 50..100));
    await_rows(&pool, &table, 100, Duration::from_secs(60), || first.log_text()).await;
    let mut v2 = v1;
    v2.push(column("note", "text"));
    assert_eq!(types(pool.clone()).await, v2, "{}", first.log_text());
    let notes: i64 = sqlx::query_scalar(&format!("SELECT count(note) FROM {table}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        notes,
        (50..100).filter(|i| i % 3 != 0).count() as i64,
        "{}",
        first.log_text()
    );
    assert_eq!(count(&pool, &table).await, 100);
    assert_eq!(dead_letters(&pool, &topic).await, Vec::<String>::new());
    let log = first.log_text();
    assert_eq!(
        log.matches("new schema fields: draining to plan again").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("sluice running").count(), 2, "{log}");
    let settled = eventually(Duration::from_secs(20), || async {
        stored_offsets(&pool, &group, &topic)
            .await
            .iter()
            .map(|(_, o)| *o)
            .sum::<i64>()
            == 100
    })
    .await;
    assert!(settled, "{:?}", stored_offsets(&pool, &group, &topic).await);
    first.sigterm();
}

const BASKET: &str = r#"{"type": "record", "name": "Basket", "namespace": "shop", "fields": [
  {"name": "id", "type": "long"},
  {"name": "tags", "type": {"type": "array", "items": "string"}},
  {"name": "qty", "type": {"type": "array", "items": ["null", "int"]}},
  {"name": "prices", "type": {"type": "array", "items": {"type": "bytes", "logicalType": "decimal", "precision": 8, "scale": 2}}},
  {"name": "days", "type": {"type": "array", "items": {"type": "int", "logicalType": "date"}}},
  {"name": "ats", "type": {"type": "array", "items": {"type": "long", "logicalType": "timestamp-micros"}}},
  {"name": "grid", "type": {"type": "array", "items": {"type": "array", "items": "long"}}},
  {"name": "moods", "type": {"type": "array", "items": "string"}},
  {"name": "codes", "type": {"type": "array", "items": "string"}},
  {"name": "lines", "type": {"type": "array", "items": {"type": "record", "name": "Line",
     "fields": [{"name": "sku", "type": "string"}, {"name": "n", "type": "int"}]}}},
  {"name": "ids", "type": {"type": "array", "items": {"type": "string", "logicalType": "uuid"}}},
  {"name": "raws", "type": {"type": "array", "items": "bytes"}}
]}"#;

/// Avro arrays into Postgres array columns of many element types (text
/// with quotes and commas, nullable ints, decimals, dates, timestamps, a
/// two-dimensional bigint array, an enum, varchar(3), jsonb of records,
/// uuid), value by value; an element over varchar(3), an element that is
/// not a label of the enum and a ragged two-dimensional array are dead
/// letters with Postgres' SQLSTATE or the reason, nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_arrays_land_in_postgres_array_columns() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let registry = Registry::start();
    let topic = unique("arr");
    let table = unique("arr_t");
    create_topic(&services.brokers, &topic, 2).await;
    sqlx::query(&format!("CREATE TYPE {table}_mood AS ENUM ('ok', 'sad')"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, tags text[], tags_doc jsonb, qty integer[], \
         prices numeric(8,2)[], days date[], ats timestamptz[], grid bigint[][], moods {table}_mood[], \
         codes varchar(3)[] NOT NULL, lines jsonb[], ids uuid[], raws bytea[])"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let records: Vec<Value> = (0..30u64)
        .map(|i| {
            let grid = if i == 7 {
                json!([[1, 2], [3]])
            } else {
                json!([[i, 1], [2, 3]])
            };
            let moods = if i == 6 {
                json!(["ok", "angry"])
            } else {
                json!(["ok", "sad"])
            };
            let codes = if i == 5 {
                json!(["abc", "abcd"])
            } else {
                json!(["ab", "a\"b"])
            };
            let (tags, qty) = if i == 8 {
                (json!([]), json!([1, null, 3]))
            } else {
                (json!(["a", "b,c", "q\"x\\y", "NULL"]), json!([i, 2]))
            };
            json!({"key": format!("k{i}"), "partition": (i % 2) as i32, "value": {
                "id": i,
                "tags": tags,
                "qty": qty,
                "prices": [{"$decimal": "12.50"}, {"$decimal": "-0.01"}],
                "days": [{"$date": "1969-07-20"}, {"$date": "2024-02-29"}],
                "ats": [{"$timestamp": "2024-01-02T03:04:05.123456+00:00"}],
                "grid": grid,
                "moods": moods,
                "codes": codes,
                "lines": [{"sku": "s\"1", "n": 1}, {"sku": "s2", "n": 2}],
                "ids": [{"$uuid": "67e55044-10b1-426f-9247-bb680e5fe0c8"}],
                "raws": [{"$bytes": "AP8="}, {"$bytes": ""}],
            }})
        })
        .collect();
    produce_spec(&json!({
        "brokers": services.brokers,
        "topic": topic,
        "registry": {"url": registry.url},
        "key": {"format": "string"},
        "value": {"format": "avro", "schema": BASKET},
        "records": records,
    }));
    let columns = r#"id = "/id"
tags = "/tags"
tags_doc = "/tags"
qty = "/qty"
prices = "/prices"
days = "/days"
ats = "/ats"
grid = "/grid"
moods = "/moods"
codes = "/codes"
lines = "/lines"
ids = "/ids"
raws = "/raws""#;
    let rows = land(
        &services,
        &pool,
        &registry,
        (
            &topic,
            &table,
            columns,
            "value_format = \"avro\"\nkey_format = \"string\"",
        ),
        30,
        &format!(
            "SELECT id::text, tags::text, tags_doc::text, qty::text, prices::text, days::text, \
             (SELECT array_agg(a AT TIME ZONE 'UTC')::text FROM unnest(ats) a), grid::text, \
             array_dims(grid), moods::text, codes::text, lines::text, ids::text, raws::text \
             FROM {table} WHERE id IN (3, 8) ORDER BY {table}.id"
        ),
    )
    .await;
    let s = |v: &str| Some(v.to_owned());
    let row = |id: &str, tags: &str, tags_doc: &str, qty: &str, grid: &str| {
        vec![
            s(id),
            s(tags),
            s(tags_doc),
            s(qty),
            s("{12.50,-0.01}"),
            s("{1969-07-20,2024-02-29}"),
            s("{\"2024-01-02 03:04:05.123456\"}"),
            s(grid),
            s("[1:2][1:2]"),
            s("{ok,sad}"),
            s(r#"{ab,"a\"b"}"#),
            s(r#"{"{\"n\": 1, \"sku\": \"s\\\"1\"}","{\"n\": 2, \"sku\": \"s2\"}"}"#),
            s("{67e55044-10b1-426f-9247-bb680e5fe0c8}"),
            s(r#"{"\\x00ff","\\x"}"#),
        ]
    };
    assert_eq!(
        rows,
        vec![
            row(
                "3",
                r#"{a,"b,c","q\"x\\y","NULL"}"#,
                r#"["a", "b,c", "q\"x\\y", "NULL"]"#,
                "{3,2}",
                "{{3,1},{2,3}}"
            ),
            row("8", "{}", "[]", "{1,NULL,3}", "{{8,1},{2,3}}"),
        ]
    );
    assert_eq!(count(&pool, &table).await, 27);
    let dead: Vec<(Option<String>, String)> =
        sqlx::query_as("SELECT sqlstate, error FROM sluice.dead_letters WHERE topic = $1 ORDER BY error")
            .bind(&topic)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(dead.len(), 3, "{dead:?}");
    let find = |column: &str| {
        dead.iter()
            .find(|(_, e)| e.contains(column))
            .unwrap_or_else(|| panic!("no dead letter for {column}: {dead:?}"))
    };
    let (state, error) = find("column `codes` (text[])");
    assert_eq!(state.as_deref(), Some("22001"), "{error}");
    assert!(
        error.contains("\"abcd\" is longer than the column's 3 characters"),
        "{error}"
    );
    let (state, error) = find("column `moods` (text[])");
    assert_eq!(state.as_deref(), Some("22P02"), "{error}");
    assert!(error.contains("\"angry\" is not a label of enum"), "{error}");
    let (state, error) = find("column `grid` (bigint[])");
    assert_eq!(state.as_deref(), None, "{error}");
    assert!(
        error.contains("nested arrays of different lengths (2 and 1)"),
        "{error}"
    );
}

const ITEM_PROTO: &str = r#"
syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";
message Item {
  int64 id = 1;
  string name = 2;
  repeated string tags = 3;
  google.protobuf.Timestamp at = 4;
  uint64 big = 5;
  double price = 6;
}
"#;

/// A pipeline may omit `columns` with a Protobuf, JSON Schema or Debezium
/// (Avro) value schema too: one sluice with three such pipelines creates
/// each table from its schema — the column types checked exactly — and
/// lands the rows value by value (the Debezium one against
/// `tests/fixtures/debezium/expected.json`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_come_from_protobuf_json_schema_and_debezium_schemas() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let registry = Registry::start();
    let fixtures = root().join("tests/fixtures/debezium");
    let group = unique("cols_g");
    let (proto_topic, proto_table) = (unique("cols_proto"), unique("cols_proto_t"));
    let (jsch_topic, jsch_table) = (unique("cols_jsch"), unique("cols_jsch_t"));
    let (dbz_topic, dbz_table) = (unique("cols_dbz"), unique("cols_dbz_t"));
    for topic in [&proto_topic, &jsch_topic, &dbz_topic] {
        create_topic(&services.brokers, topic, 1).await;
    }
    produce_spec(&json!({
        "brokers": services.brokers,
        "topic": proto_topic,
        "registry": {"url": registry.url},
        "key": {"format": "string"},
        "value": {"format": "protobuf", "schema": ITEM_PROTO, "message": "shop.Item"},
        "records": (0..10u64).map(|i| json!({"key": format!("k{i}"), "value": {
            "id": i.to_string(), "name": format!("item {i}"), "tags": ["a"], "at": "2024-01-02T03:04:05.5Z",
            "big": "18446744073709551615", "price": 1.25}})).collect::<Vec<_>>(),
    }));
    let person = r#"{"$schema":"http://json-schema.org/draft-07/schema#","title":"Person","type":"object",
        "properties":{"id":{"type":"integer"},"name":{"type":["null","string"]},"born":{"type":"string","format":"date"},
        "at":{"type":"string","format":"date-time"},"amount":{"type":"number"},"meta":{"type":"object"}},"required":["id"]}"#;
    produce_spec(&json!({
        "brokers": services.brokers,
        "topic": jsch_topic,
        "registry": {"url": registry.url},
        "key": {"format": "string"},
        "value": {"format": "json_schema", "schema": person},
        "records": (0..10u64).map(|i| json!({"key": format!("k{i}"), "value": {
            "id": i, "name": format!("p{i}"), "born": "1969-07-20", "at": "2024-01-02T03:04:05+02:00",
            "amount": 1.1,
            "meta": {"k": [i]}}})).collect::<Vec<_>>(),
    }));
    let schemas: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("typed.avsc.json")).unwrap()).unwrap();
    let events: Vec<Value> = std::fs::read_to_string(fixtures.join("typed.avro-records.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| json!({"key": r["key"], "value": r["value"], "partition": 0}))
        .collect();
    produce_spec(&json!({
        "brokers": services.brokers,
        "topic": dbz_topic,
        "registry": {"url": registry.url},
        "key": {"format": "avro", "schema": schemas["key_schema"].to_string()},
        "value": {"format": "avro", "schema": schemas["value_schema"].to_string()},
        "records": events,
    }));
    let cfg = format!(
        r#"
shutdown_timeout = "10s"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
session_timeout = "6s"
[postgres]
url = "{url}"
[schema_registry]
url = "{registry}"
[[pipelines]]
name = "proto"
topics = ["{proto_topic}"]
table = "{proto_table}"
flush_interval = "100ms"
value_format = "protobuf"
key_format = "string"
auto_create = true
[[pipelines]]
name = "jsch"
topics = ["{jsch_topic}"]
table = "{jsch_table}"
flush_interval = "100ms"
value_format = "json_schema"
key_format = "string"
auto_create = true
[[pipelines]]
name = "dbz"
topics = ["{dbz_topic}"]
table = "{dbz_table}"
flush_interval = "100ms"
value_format = "avro"
key_format = "avro"
envelope = "debezium"
mode = "upsert"
key = ["id"]
auto_create = true
"#,
        brokers = services.brokers,
        url = services.database_url,
        registry = registry.url,
    );
    let sluice = Sluice::start(&cfg);
    let settled = eventually(Duration::from_secs(60), || async {
        let mut total = 0;
        for topic in [&proto_topic, &jsch_topic, &dbz_topic] {
            total += stored_offsets(&pool, &group, topic)
                .await
                .iter()
                .map(|(_, o)| *o)
                .sum::<i64>();
        }
        total == 20 + events.len() as i64
    })
    .await;
    assert!(settled, "{}", sluice.log_text());
    sluice.sigterm();
    let types = |table: String| {
        let pool = pool.clone();
        async move {
            text_rows(
                &pool,
                &format!(
                    "SELECT attname::text || ' ' || format_type(atttypid, atttypmod) FROM pg_attribute \
                     WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attname"
                ),
            )
            .await
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect::<Vec<String>>()
        }
    };
    assert_eq!(
        types(proto_table.clone()).await,
        [
            "at timestamp with time zone",
            "big numeric",
            "id bigint",
            "name text",
            "price double precision",
            "tags jsonb"
        ]
    );
    assert_eq!(
        types(jsch_table.clone()).await,
        [
            "amount numeric",
            "at timestamp with time zone",
            "born date",
            "id bigint",
            "meta jsonb",
            "name text"
        ]
    );
    assert_eq!(
        types(dbz_table.clone()).await,
        [
            "amount numeric",
            "big bigint",
            "born date",
            "doc jsonb",
            "flag boolean",
            "id integer",
            "name text",
            "price numeric(10,2)",
            "t_ms time without time zone",
            "t_us time without time zone",
            "ts_ms timestamp without time zone",
            "ts_tz timestamp with time zone",
            "ts_us timestamp without time zone",
            "uid uuid"
        ]
    );
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        text_rows(
            &pool,
            &format!(
                "SELECT id::text, name, tags::text, (at AT TIME ZONE 'UTC')::text, big::text, price::text \
                 FROM {proto_table} WHERE id = 3"
            )
        )
        .await,
        vec![vec![
            s("3"),
            s("item 3"),
            s(r#"["a"]"#),
            s("2024-01-02 03:04:05.5"),
            s("18446744073709551615"),
            s("1.25")
        ]]
    );
    assert_eq!(
        text_rows(
            &pool,
            &format!(
                "SELECT id::text, name, born::text, (at AT TIME ZONE 'UTC')::text, amount::text, meta::text \
                 FROM {jsch_table} WHERE id = 3"
            )
        )
        .await,
        vec![vec![
            s("3"),
            s("p3"),
            s("1969-07-20"),
            s("2024-01-02 01:04:05"),
            s("1.1"),
            s(r#"{"k": [3]}"#)
        ]]
    );
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("expected.json")).unwrap()).unwrap();
    let names = [
        "id", "name", "price", "amount", "born", "t_ms", "t_us", "ts_ms", "ts_us", "ts_tz", "doc", "uid", "flag", "big",
    ];
    let want: Vec<Vec<Option<String>>> = expected["typed"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| names.iter().map(|c| r[*c].as_str().map(str::to_owned)).collect())
        .collect();
    let got = text_rows(
        &pool,
        &format!(
            "SELECT id::text, name, price::text, amount::text, born::text, t_ms::text, t_us::text, \
             ts_ms::text, ts_us::text, (ts_tz AT TIME ZONE 'UTC')::text || '+00', doc::text, uid::text, \
             CASE WHEN flag THEN 't' WHEN NOT flag THEN 'f' END, big::text FROM {dbz_table} ORDER BY {dbz_table}.id"
        ),
    )
    .await;
    assert_eq!(got, want, "{}", sluice.log_text());
    for topic in [&proto_topic, &jsch_topic, &dbz_topic] {
        assert_eq!(dead_letters(&pool, topic).await, Vec::<String>::new(), "{topic}");
    }
}
