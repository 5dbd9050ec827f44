//! The mapping language end to end: the Kafka key (raw, or a JSON pointer
//! into a JSON key), headers (one, or all as jsonb), metadata and constants
//! as columns; a constant the column's type can't take is refused up front.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

use crate::harness::*;

/// A record to produce: key, value, headers (name, value).
type Record = (String, String, Vec<(String, Option<String>)>);

/// Produces `(key, value, headers)` records to partition 0 of `topic`.
fn produce_with_headers(brokers: &str, topic: &str, records: &[Record]) {
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("acks", "all")
        .create()
        .expect("producer");
    for (key, value, headers) in records {
        let mut owned = OwnedHeaders::new();
        for (name, v) in headers {
            owned = owned.insert(Header {
                key: name,
                value: v.as_deref(),
            });
        }
        let record = BaseRecord::to(topic)
            .key(key)
            .payload(value)
            .partition(0)
            .headers(owned);
        send_retrying(&producer, record);
    }
    producer.flush(Duration::from_secs(60)).expect("producer flush");
}

const COLUMNS: &str = r#"
tenant = "@key/tenant"
kid = "@key/id"
raw_key = "@key"
trace = "@header:trace-id"
all_headers = "@headers"
region = "=eu-west"
weight = "=7"
v = "/v"
kafka_topic = "@topic"
"#;

/// Key pointers, one header, all headers, constants, topic and value side by side.
#[tokio::test(flavor = "multi_thread")]
async fn keys_headers_and_constants_become_columns() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("maps"), unique("g"), unique("mapped"));
    create_topic(&services.brokers, &topic, 1).await;
    sqlx::query(&format!(
        "CREATE TABLE {table} (tenant text, kid bigint, raw_key jsonb, trace text, all_headers jsonb, \
         region text, weight int NOT NULL, v text, kafka_topic text)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let records: Vec<_> = (0..50u64)
        .map(|i| {
            let key = format!(r#"{{"tenant":"t{}","id":{i}}}"#, i % 3);
            let mut headers = vec![("trace-id".to_owned(), Some(format!("tr{i}")))];
            if i == 0 {
                // A repeated name: the last one counts.
                headers.insert(0, ("trace-id".to_owned(), Some("old".to_owned())));
                headers.push(("empty".to_owned(), None));
            }
            if i % 2 == 1 {
                headers.push(("source".to_owned(), Some("odd".to_owned())));
            }
            (key, format!(r#"{{"v":"x{i}"}}"#), headers)
        })
        .collect();
    let (brokers, t) = (services.brokers.clone(), topic.clone());
    tokio::task::spawn_blocking(move || produce_with_headers(&brokers, &t, &records))
        .await
        .unwrap();
    let sluice = Sluice::start(&config(&services, &group, &topic, &table, COLUMNS, ""));
    await_rows(&pool, &table, 50, Duration::from_secs(60), || sluice.log_text()).await;

    type Row = (
        String,
        i64,
        serde_json::Value,
        String,
        serde_json::Value,
        String,
        i32,
        String,
        String,
    );
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT tenant, kid, raw_key, trace, all_headers, region, weight, v, kafka_topic FROM {table} ORDER BY kid"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 50);
    for (i, (tenant, kid, raw_key, trace, all, region, weight, v, kafka_topic)) in rows.into_iter().enumerate() {
        assert_eq!(tenant, format!("t{}", i % 3));
        assert_eq!(kid, i as i64);
        assert_eq!(raw_key, serde_json::json!({"tenant": format!("t{}", i % 3), "id": i}));
        assert_eq!(trace, format!("tr{i}"));
        let mut want = serde_json::json!({ "trace-id": format!("tr{i}") });
        if i == 0 {
            want["empty"] = serde_json::Value::Null;
        }
        if i % 2 == 1 {
            want["source"] = "odd".into();
        }
        assert_eq!(all, want, "row {i}");
        assert_eq!((region.as_str(), weight), ("eu-west", 7));
        assert_eq!(v, format!("x{i}"));
        assert_eq!(kafka_topic, topic);
    }
    let letters: i64 = sqlx::query_scalar("SELECT count(*) FROM sluice.dead_letters WHERE topic = $1")
        .bind(&topic)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(letters, 0);
}

/// A constant its column's type can't take is a mapping error at start-up
/// and in `sluice check`, naming the column and Postgres' reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_constant_the_column_cannot_take_is_refused() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("mapsbad"), unique("g"), unique("mapped"));
    sqlx::query(&format!("CREATE TABLE {table} (v text, weight int)"))
        .execute(&pool)
        .await
        .unwrap();
    let columns = "v = \"/v\"\nweight = \"=heavy\"";
    let (_dir, path) = write_config(&config(&services, &group, &topic, &table, columns, ""));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("column `weight` (integer): the constant \"heavy\" is not a valid integer"),
        "{stdout}"
    );
    assert!(stdout.contains("invalid input syntax"), "{stdout}");
}

/// `(column, data type as format_type shows it)` of `table`, in order.
async fn column_types(pool: &sqlx::PgPool, table: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
         WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// `auto_create`: `sluice check` shows the CREATE TABLE it would run and
/// changes nothing; `sluice run` creates the table from the mapping (typed
/// by `column_types` or by source, the upsert key as primary key) and
/// writes into it.
#[tokio::test(flavor = "multi_thread")]
async fn auto_create_makes_the_table_from_the_mapping() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("autoc"), unique("g"), unique("created"));
    create_topic(&services.brokers, &topic, 1).await;
    let columns = "id = \"/id\"\namount = \"/amount\"\nname = \"/name\"\ndoc = \"/\"\nat = \"@timestamp\"";
    let extra = "mode = \"upsert\"\nkey = [\"id\"]\nauto_create = true\n\
                 [pipelines.column_types]\nid = \"BIGINT\"\namount = \"numeric(10, 2)\"\nname = \"varchar(20)\"";
    let cfg = config(&services, &group, &topic, &table, columns, extra);
    let (_dir, path) = write_config(&cfg);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "CREATE TABLE IF NOT EXISTS \"public\".\"{table}\" (\"amount\" numeric(10,2), \"at\" timestamptz, \
             \"doc\" jsonb, \"id\" bigint, \"name\" varchar(20), PRIMARY KEY (\"id\"))"
        )),
        "{stdout}"
    );
    assert!(
        column_types_exist(&pool, &table).await.is_none(),
        "check changed nothing"
    );

    let (brokers, t) = (services.brokers.clone(), topic.clone());
    tokio::task::spawn_blocking(move || {
        produce(&brokers, &t, 1, 0..20, 0, |i| {
            format!(r#"{{"id":{},"amount":"{i}.5","name":"n{i}"}}"#, i % 10)
        })
    })
    .await
    .unwrap();
    let sluice = Sluice::start(&cfg);
    await_rows(&pool, &table, 10, Duration::from_secs(60), || sluice.log_text()).await;
    assert_eq!(
        column_types(&pool, &table).await,
        [
            ("amount", "numeric(10,2)"),
            ("at", "timestamp with time zone"),
            ("doc", "jsonb"),
            ("id", "bigint"),
            ("name", "character varying(20)"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let pk: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
         AND a.attnum = ANY(i.indkey) WHERE i.indrelid = $1::regclass AND i.indisprimary",
    )
    .bind(&table)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(pk, ["id"]);
    // Upsert by the created primary key: ids 0..9, each at its last value.
    await_stored_offsets(&pool, &group, &topic, &[(0, 20)], Duration::from_secs(30), || {
        sluice.log_text()
    })
    .await;
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as(&format!("SELECT id, amount::text, name FROM {table} ORDER BY id"))
            .fetch_all(&pool)
            .await
            .unwrap();
    let want: Vec<(i64, String, String)> = (10..20).map(|i| (i - 10, format!("{i}.50"), format!("n{i}"))).collect();
    assert_eq!(rows, want);
}

/// Whether `table` exists (its regclass), without failing when it doesn't.
async fn column_types_exist(pool: &sqlx::PgPool, table: &str) -> Option<String> {
    sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// id, legacy, name, kafka_offset.
type EvolvedRow = (i64, Option<String>, Option<String>, Option<i64>);

/// `auto_evolve`: mapped columns the table lacks are added (nullable,
/// typed), existing rows and columns are left alone; without it the same
/// mapping is refused at start-up, naming the column.
#[tokio::test(flavor = "multi_thread")]
async fn auto_evolve_adds_missing_columns() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("autoe"), unique("g"), unique("evolved"));
    create_topic(&services.brokers, &topic, 1).await;
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint NOT NULL, legacy text DEFAULT 'kept')"
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(&format!("INSERT INTO {table} (id) VALUES (-1)"))
        .execute(&pool)
        .await
        .unwrap();
    let columns = "id = \"/id\"\nname = \"/name\"\nkafka_offset = \"@offset\"";
    let (brokers, t) = (services.brokers.clone(), topic.clone());
    tokio::task::spawn_blocking(move || {
        produce(&brokers, &t, 1, 0..10, 0, |i| format!(r#"{{"id":{i},"name":"n{i}"}}"#))
    })
    .await
    .unwrap();

    // Without auto_evolve: refused, naming the missing column.
    let mut refused = Sluice::start(&config(&services, &group, &topic, &table, columns, ""));
    let status = refused.wait_timeout(Duration::from_secs(30)).expect("exits");
    assert!(!status.success());
    let log = refused.log_text();
    assert!(log.contains("column `name` does not exist"), "{log}");

    let extra = "auto_evolve = true\n[pipelines.column_types]\nname = \"text\"";
    let sluice = Sluice::start(&config(&services, &group, &topic, &table, columns, extra));
    await_rows(&pool, &table, 11, Duration::from_secs(60), || sluice.log_text()).await;
    assert_eq!(
        column_types(&pool, &table).await,
        [
            ("id", "bigint"),
            ("legacy", "text"),
            // Added in column-name order.
            ("kafka_offset", "bigint"),
            ("name", "text")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let rows: Vec<EvolvedRow> = sqlx::query_as(&format!(
        "SELECT id, legacy, name, kafka_offset FROM {table} ORDER BY id"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows[0],
        (-1, Some("kept".into()), None, None),
        "the old row is untouched"
    );
    assert_eq!(rows[1..].len(), 10);
    for (i, row) in rows[1..].iter().enumerate() {
        assert_eq!(
            row,
            &(i as i64, Some("kept".into()), Some(format!("n{i}")), Some(i as i64))
        );
    }
    assert!(sluice.log_text().contains("table changed to fit the mapping"));
}

/// A topic pattern fans out to a table per topic: `table = "{topic}"` with
/// `auto_create`. Topics that exist at start get their tables; a topic
/// created while sluice runs is discovered, gets its table, and its records
/// land there — each exactly once, with offsets stored per topic.
#[tokio::test(flavor = "multi_thread")]
async fn a_topic_pattern_fans_out_to_a_table_per_topic() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (prefix, group) = (unique("fan"), unique("g"));
    let topic = |name: &str| format!("{prefix}.{name}");
    let table = |name: &str| format!("{prefix}_{name}");
    for name in ["a", "b"] {
        create_topic(&services.brokers, &topic(name), 2).await;
    }
    let produce_to = |name: &'static str, n: u64| {
        let (brokers, t) = (services.brokers.clone(), topic(name));
        tokio::task::spawn_blocking(move || produce(&brokers, &t, 2, 0..n, 0, |i| format!(r#"{{"id":{i}}}"#)))
    };
    produce_to("a", 300).await.unwrap();
    produce_to("b", 200).await.unwrap();
    // `^prefix\..*` as a TOML string.
    let pattern = format!("^{prefix}\\\\..*");
    let columns = "id = \"/id\"\nsrc = \"@topic\"\nkafka_partition = \"@partition\"\nkafka_offset = \"@offset\"";
    let extra = "auto_create = true\n[pipelines.column_types]\nid = \"bigint\"";
    let cfg = config(&services, &group, &pattern, "{topic}", columns, extra)
        + "\n[kafka.properties]\n\"topic.metadata.refresh.interval.ms\" = \"1000\"\n";
    let sluice = Sluice::start(&cfg);
    await_rows(&pool, &table("a"), 300, Duration::from_secs(90), || sluice.log_text()).await;
    await_rows(&pool, &table("b"), 200, Duration::from_secs(30), || sluice.log_text()).await;

    // A new topic, created while sluice runs.
    create_topic(&services.brokers, &topic("c"), 2).await;
    produce_to("c", 150).await.unwrap();
    await_rows(&pool, &table("c"), 150, Duration::from_secs(90), || sluice.log_text()).await;
    produce_to("a", 300).await.unwrap();
    await_rows(&pool, &table("a"), 600, Duration::from_secs(60), || sluice.log_text()).await;

    for (name, n) in [("a", 600u64), ("b", 200), ("c", 150)] {
        let (rows, distinct, wrong_topic): (i64, i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)), count(*) FILTER (WHERE src <> $1) \
             FROM \"{}\"",
            table(name)
        ))
        .bind(topic(name))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            (rows, distinct, wrong_topic),
            (n as i64, n as i64, 0),
            "table of topic {name}"
        );
        let stored: i64 = stored_offsets(&pool, &group, &topic(name))
            .await
            .iter()
            .map(|(_, o)| o)
            .sum();
        assert_eq!(stored as u64, n, "offsets of topic {name}");
    }
    let log = sluice.log_text();
    assert!(log.contains("table planned for a new topic"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}
